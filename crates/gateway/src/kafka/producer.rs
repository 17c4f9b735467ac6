//! Producing events: keyed by their partition key (so a user's events stay in
//! one ordered partition), with headers that let tools filter undecoded.

use super::headers;
use moonx_events::Event;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotent producer that waits for all in-sync replicas: a retry can
/// neither duplicate nor reorder a user's events.
pub fn create_producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(producer_config(brokers).create()?)
}

/// `linger.ms`: records wait up to 2 ms to share a batch: batching under
/// load, for a latency nobody notices.
const LINGER_MS: &str = "2";
/// `compression.type`: gzip, the codec every Kafka client (and KafkaJS
/// without plugins) reads; JSON events shrink several times.
const COMPRESSION: &str = "gzip";
/// `message.timeout.ms`: a record not acknowledged in 30 s is reported
/// failed (then retried by our callers), rather than waiting forever.
const MESSAGE_TIMEOUT_MS: &str = "30000";
/// How long [`send_event`] waits for room in the producer queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// The settings every producer of events (or dead letters) shares.
fn producer_config(brokers: &str) -> rdkafka::ClientConfig {
    let mut c = super::client_config(brokers);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", LINGER_MS)
        .set("compression.type", COMPRESSION)
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS);
    c
}

/// The DLQ's producer: like [`create_producer`], but its `message.max.bytes`
/// fits the largest dead letter (see `admin::DLQ_MAX_MESSAGE_BYTES`), so a
/// record the main topic accepted is never refused by our own size check.
pub fn create_dlq_producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    let max = super::admin::DLQ_MAX_MESSAGE_BYTES.to_string();
    Ok(producer_config(brokers)
        .set("message.max.bytes", &max)
        .set("batch.size", &max)
        .create()?)
}

/// The headers of an event record.
pub fn event_headers(event: &Event) -> OwnedHeaders {
    let id = event.metadata.event_id.to_string();
    OwnedHeaders::new()
        .insert(Header { key: headers::EVENT_TYPE, value: Some(event.metadata.event_type.as_str()) })
        .insert(Header { key: headers::EVENT_ID, value: Some(id.as_str()) })
        .insert(Header { key: headers::CORRELATION_ID, value: Some(event.metadata.correlation_id.as_str()) })
        .insert(Header { key: headers::CONTENT_TYPE, value: Some("application/json") })
}

/// Sends one event and waits for the broker's acknowledgement.
pub async fn send_event(producer: &FutureProducer, topic: &str, event: &Event) -> anyhow::Result<Delivered> {
    let payload = event.to_json_bytes();
    let record = FutureRecord::to(topic)
        .key(event.metadata.partition.as_str())
        .payload(&payload)
        .headers(event_headers(event));
    let (partition, offset) = producer
        .send(record, QUEUE_TIMEOUT)
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| anyhow::anyhow!("producing {} to {topic}: {e}", event.metadata.event_id))?;
    Ok(Delivered { partition, offset })
}
