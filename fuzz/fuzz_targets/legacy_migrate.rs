//! Legacy migration: any JSON message from a legacy topic → an envelope
//! document or a `LegacyError`, never a panic. The first input byte picks
//! the topic; the rest is the message. A migrated document names the event
//! type its legacy `type` maps to, the topic it came from, and is the same
//! on a second migration (the eventId of a redelivered record is stable).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moonx_events::legacy::{map_legacy_type, migrate};
use moonx_events::{TypeRegistry, LEGACY_TOPICS};
use serde_json::Value;

const TOPICS: [Option<&str>; 6] = [
    Some(LEGACY_TOPICS[0]),
    Some(LEGACY_TOPICS[1]),
    Some(LEGACY_TOPICS[2]),
    Some(LEGACY_TOPICS[3]),
    Some("moonx.ws.events"),
    None,
];

fuzz_target!(|input: &[u8]| {
    let Some((&selector, bytes)) = input.split_first() else { return };
    let topic = TOPICS[usize::from(selector) % TOPICS.len()];
    let Ok(message) = serde_json::from_slice::<Value>(bytes) else { return };
    let registry = TypeRegistry::new();
    let Ok(doc) = migrate(&message, topic, &registry) else { return };
    let legacy_type = message["type"].as_str().expect("a migrated message had a string type");
    let event_type = map_legacy_type(legacy_type).expect("a migrated message had a known type");
    assert_eq!(doc["metadata"]["eventType"].as_str(), Some(event_type.as_str()));
    assert_eq!(doc["metadata"]["migratedFrom"].as_str(), Some(topic.unwrap_or("legacy")));
    assert!(doc["data"].is_object(), "data is not an object: {doc}");
    assert_eq!(migrate(&message, topic, &registry).as_ref(), Ok(&doc), "migration is not deterministic");
});
