//! The envelope: technical `metadata` beside business `data`.

use crate::{DataClassification, EventData, EventType};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Technical facts about an event. JSON names are the seed's camelCase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMetadata {
    /// Unique id; the factory makes a v7 (time-ordered) UUID. Clients
    /// de-duplicate redeliveries by it. Only the canonical hyphenated form
    /// is accepted.
    #[serde(deserialize_with = "canonical_uuid")]
    pub event_id: Uuid,
    pub event_type: EventType,
    /// Schema version of `data`, `major.minor` (e.g. `"1.0"`).
    pub event_version: String,
    /// Ties together every event of one business flow across services.
    pub correlation_id: String,
    /// `eventId` of the event that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Producing service, e.g. `"price-service"`.
    pub source: String,
    /// The owning user; required for confidential and restricted events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub data_classification: DataClassification,
    /// The Kafka partition key (see [`crate::partition`]).
    pub partition: String,
    /// Further field: the legacy topic a migrated event came from, so
    /// operators can tell migrated events apart (absent on new events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrated_from: Option<String>,
}

/// An event: metadata plus data of type `T`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope<T> {
    pub metadata: EventMetadata,
    pub data: T,
}

/// An event whose data is any of the known payloads.
pub type Event = EventEnvelope<EventData>;

impl<T: Serialize> EventEnvelope<T> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an envelope always serializes")
    }

    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }
}

pub(crate) fn canonical_uuid<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
    crate::str_visitor::from_str_with(d, "a hyphenated UUID", |s| {
        if !crate::validate::is_canonical_uuid(s) {
            return Err("eventId must be a hyphenated UUID".to_owned());
        }
        Uuid::try_parse(s).map_err(|e| e.to_string())
    })
}

/// A struct that must come from a JSON object: serde's derived `Deserialize`
/// also takes an array (fields by position), which the contract does not.
/// Used by the fast decode path, so it can accept only what the walker does.
pub(crate) struct MapOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(ObjectVisitor(std::marker::PhantomData)).map(MapOnly)
    }
}

/// `Vec<T>` whose items must be JSON objects (see [`MapOnly`]).
pub(crate) fn objects<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Vec::<MapOnly<T>>::deserialize(d)?.into_iter().map(|m| m.0).collect())
}
