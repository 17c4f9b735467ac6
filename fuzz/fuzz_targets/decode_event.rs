//! The record decoder: any bytes from Kafka → an event or a typed error,
//! never a panic. The first input byte picks the topic the record came from
//! (main, each legacy topic, another, none) and whether "now" is fixed; the
//! rest is the record's value. An accepted event must re-validate and
//! round-trip through its own JSON (the oracle of
//! `crates/events/tests/decode_never_panics.rs`, here driven by coverage).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moonx_events::decode::{decode_event, DecodeError, DecodeOptions};
use moonx_events::validate::Validator;
use moonx_events::{CustomType, DataClassification, TypeRegistry, LEGACY_TOPICS, MAIN_TOPIC};
use std::sync::OnceLock;

/// The "now" of the shared vectors (2025-11-24T16:10:00Z).
const NOW_MS: u64 = 1_764_000_600_000;

const TOPICS: [Option<&str>; 7] = [
    Some(MAIN_TOPIC),
    Some(LEGACY_TOPICS[0]),
    Some(LEGACY_TOPICS[1]),
    Some(LEGACY_TOPICS[2]),
    Some(LEGACY_TOPICS[3]),
    Some("some.other.topic"),
    None,
];

/// Two custom types, so that the registry's paths are fuzzed too.
fn registry() -> &'static TypeRegistry {
    static R: OnceLock<TypeRegistry> = OnceLock::new();
    R.get_or_init(|| {
        let mut r = TypeRegistry::new();
        r.register(CustomType::new("reward.granted", DataClassification::Confidential)).unwrap();
        r.register(CustomType::new("market.opened", DataClassification::Public)).unwrap();
        r
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, bytes)) = input.split_first() else { return };
    let topic = TOPICS[usize::from(selector & 0x0f) % TOPICS.len()];
    let now_ms = if selector & 0x80 == 0 { Some(NOW_MS) } else { None };
    let registry = registry();
    for validate in [true, false] {
        let opts = DecodeOptions { registry, validate, now_ms, topic };
        match decode_event(bytes, &opts) {
            Ok(event) if validate => {
                let doc = serde_json::to_value(&event).expect("an event serializes");
                if let Err(e) = (Validator { registry, now_ms }).validate(&doc) {
                    panic!("decoded {event:?} but its JSON {doc} is invalid: {e:?}");
                }
                let again = serde_json::to_vec(&event).unwrap();
                let opts = DecodeOptions { topic: Some(MAIN_TOPIC), ..opts };
                assert_eq!(decode_event(&again, &opts), Ok(event), "an event does not round-trip");
            }
            Ok(_) => {}
            Err(e) => {
                assert!(["invalid_json", "invalid_event", "legacy_unmigratable"].contains(&e.code()));
                if let DecodeError::Invalid(errors) = &e {
                    assert!(!errors.is_empty(), "invalid_event without errors");
                }
                let _ = e.to_string();
            }
        }
    }
});
