//! Publishing events into the source the gateway reads: the Kafka main
//! topic, or the embedded bus. Used by the HTTP publish API, the presence
//! events and the demo feed.

use super::embedded::EmbeddedBus;
use crate::kafka::producer::{send_event, Delivered};
use moonx_events::Event;
use rdkafka::producer::FutureProducer;
use std::sync::Arc;

#[derive(Clone)]
pub enum Publisher {
    Kafka { producer: FutureProducer, topic: String },
    Embedded(Arc<EmbeddedBus>),
}

impl Publisher {
    /// Sends one event keyed by its partition key; returns where it landed.
    pub async fn publish(&self, event: &Event) -> anyhow::Result<Delivered> {
        match self {
            Publisher::Kafka { producer, topic } => send_event(producer, topic, event).await,
            Publisher::Embedded(bus) => bus.publish(Some(event.metadata.partition.as_bytes()), event.to_json_bytes()).await,
        }
    }
}
