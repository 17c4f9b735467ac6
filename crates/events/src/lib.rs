//! The MoonX event model: every event that crosses the `moonx.ws.events` topic.
//!
//! This crate is pure data and rules, with no I/O, so that producers, the
//! gateway, fuzzers and other language implementations (through the shared
//! vectors in `schema/`) all agree on one contract:
//!
//! * [`EventEnvelope`] / [`EventMetadata`]: the wire shape (camelCase JSON).
//! * [`EventType`] and [`DataClassification`]: the discriminator and who may see it.
//! * [`payload`]: typed data for the 12 built-in types.
//! * [`EventFactory`]: builds valid events (ids, timestamps, defaults, partition key).
//! * [`validate`]: checks an event and reports *every* error, each with a JSON path.
//! * [`decode`]: bytes → event; never panics, whatever the bytes.
//! * [`borrowed`]: [`EventRef`], the event borrowed from the record's bytes
//!   (what the gateway's hot path decodes into).
//! * [`partition`]: the partition-key strategy that keeps per-user order.
//! * [`legacy`]: migration of pre-envelope messages from the legacy topics.
#![forbid(unsafe_code)]

pub mod borrowed;
pub mod classification;
pub mod decimal;
pub mod decode;
pub mod envelope;
pub mod event_type;
pub mod factory;
pub mod legacy;
pub mod partition;
pub mod payload;
pub mod registry;
mod str_visitor;
pub mod validate;

pub use classification::DataClassification;
pub use decimal::Decimal;
pub use borrowed::{DataRef, EventRef, MetadataRef};
pub use decode::{decode_event, decode_event_ref, DecodeError};
pub use envelope::{Event, EventEnvelope, EventMetadata};
pub use event_type::EventType;
pub use factory::{EventFactory, EventOptions};
pub use payload::EventData;
pub use registry::{CustomType, TypeRegistry};
pub use validate::{ValidationError, ValidationErrors};

/// Topic every producer writes to.
pub const MAIN_TOPIC: &str = "moonx.ws.events";
/// Dead-letter topic for records the gateway cannot process.
pub const DLQ_TOPIC: &str = "moonx.ws.events.dlq";
/// Pre-envelope topics whose messages are migrated by [`legacy`].
pub const LEGACY_TOPICS: [&str; 4] = [
    "moonx.price.updates",
    "moonx.order.updates",
    "moonx.portfolio.updates",
    "moonx.trade.updates",
];
