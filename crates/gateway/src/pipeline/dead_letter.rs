//! Dead letters: records the pipeline could not route, kept with everything
//! needed to understand and replay them.
//!
//! A DLQ record has the original key and headers, plus `dlq.*` headers with
//! the error; its value is a JSON document with the original bytes (base64,
//! and as text when they are UTF-8), the source topic / partition / offset,
//! the error code and message (and every validation error), the attempts,
//! and the time of failure. `dlq.id` (`topic/partition/offset`) identifies
//! the failure: a redelivery after a crash can write the same dead letter
//! twice, and DLQ readers de-duplicate by that id.
//!
//! The writer never gives up on its own: while the DLQ cannot be written the
//! source holds its position (the offset is not stored), retrying with
//! backoff, and `/health` reports it.

use super::Failure;
use crate::source::Record;
use crate::telemetry::Metrics;
use base64::Engine as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Header names on DLQ records.
pub mod headers {
    pub const ID: &str = "dlq.id";
    pub const REASON: &str = "dlq.reason";
    pub const MESSAGE: &str = "dlq.message";
    pub const SOURCE_TOPIC: &str = "dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "dlq.source.offset";
    pub const ATTEMPTS: &str = "dlq.attempts";
    pub const FAILED_AT: &str = "dlq.failed_at";
    pub const INSTANCE: &str = "dlq.instance";
}

/// A dead letter, ready to be written.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub body: serde_json::Value,
    pub failure: Failure,
    pub failed_at_ms: u64,
}

impl DeadLetter {
    pub fn new(record: &Record<'_>, headers: Vec<(String, Option<Vec<u8>>)>, failure: Failure, instance: &str) -> Self {
        let failed_at_ms = moonx_events::validate::now_ms();
        let id = format!("{}/{}/{}", record.topic, record.partition, record.offset);
        let payload = record.payload.unwrap_or_default();
        let text = std::str::from_utf8(payload).ok();
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({
            "id": id,
            "reason": failure.reason,
            "message": failure.message,
            "errors": failure.errors,
            "attempts": failure.attempts,
            "failedAt": failed_at_ms,
            "eventType": failure.event_type,
            "eventId": failure.event_id,
            "instance": instance,
            "source": {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp": record.timestamp_ms,
                "key": record.key.map(|k| String::from_utf8_lossy(k).into_owned()),
            },
            "payloadBase64": record.payload.map(|p| b64.encode(p)),
            "payloadText": text,
        });
        DeadLetter { id, key: record.key.map(<[u8]>::to_vec), headers, body, failure, failed_at_ms }
    }
}

/// Where dead letters go.
pub enum DeadLetterWriter {
    /// The DLQ topic.
    Kafka { producer: FutureProducer, topic: String, instance: String },
    /// The embedded bus keeps its most recent dead letters in memory.
    Memory { letters: Arc<std::sync::Mutex<std::collections::VecDeque<DeadLetter>>>, capacity: usize },
    /// DLQ disabled, or another instance is the writer: the failure is only
    /// logged and counted (as `dlq_writes_total{reason}` is not incremented,
    /// `events_failed_total` still shows it).
    Skip,
}

/// Whether the last DLQ write failed (for `/health`).
#[derive(Debug, Default)]
pub struct DlqHealth {
    pub failing: AtomicBool,
}

impl DeadLetterWriter {
    /// Writes the letter, retrying with backoff until it succeeds. Returns
    /// `false` only if `shutdown` fired first: the caller must then not
    /// store the record's offset.
    pub async fn write(
        &self,
        letter: &DeadLetter,
        metrics: &Metrics,
        health: &DlqHealth,
        shutdown: &CancellationToken,
    ) -> bool {
        let (producer, topic, instance) = match self {
            DeadLetterWriter::Kafka { producer, topic, instance } => (producer, topic, instance),
            DeadLetterWriter::Memory { letters, capacity } => {
                let mut l = letters.lock().unwrap_or_else(|p| p.into_inner());
                if l.len() >= *capacity {
                    l.pop_front();
                }
                l.push_back(letter.clone());
                metrics.dlq_writes.with_label_values(&[letter.failure.reason.as_str()]).inc();
                return true;
            }
            DeadLetterWriter::Skip => return true,
        };
        let body = serde_json::to_vec(&letter.body).expect("serializable");
        let mut backoff = Duration::from_millis(100);
        loop {
            let record = FutureRecord::to(topic)
                .payload(&body)
                .headers(dlq_headers(letter, instance));
            let record = match &letter.key {
                Some(k) => record.key(k.as_slice()),
                None => record.key(letter.id.as_bytes()),
            };
            match producer.send(record, Duration::from_secs(10)).await {
                Ok(d) => {
                    health.failing.store(false, Ordering::Relaxed);
                    metrics.dlq_writes.with_label_values(&[letter.failure.reason.as_str()]).inc();
                    tracing::info!(
                        dlq.id = %letter.id, reason = letter.failure.reason.as_str(),
                        partition = d.partition, offset = d.offset, "dead letter written"
                    );
                    return true;
                }
                Err((e, _)) => {
                    health.failing.store(true, Ordering::Relaxed);
                    metrics.dlq_write_errors.inc();
                    tracing::error!(dlq.id = %letter.id, "writing the dead letter failed, holding the offset: {e}");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

fn dlq_headers(letter: &DeadLetter, instance: &str) -> OwnedHeaders {
    let mut h = OwnedHeaders::new();
    for (k, v) in &letter.headers {
        h = h.insert(Header { key: k, value: v.as_deref() });
    }
    let source = &letter.body["source"];
    let text = |v: &serde_json::Value| v.to_string().trim_matches('"').to_owned();
    let fields = [
        (headers::ID, letter.id.clone()),
        (headers::REASON, letter.failure.reason.as_str().to_owned()),
        (headers::MESSAGE, letter.failure.message.chars().take(1000).collect()),
        (headers::SOURCE_TOPIC, text(&source["topic"])),
        (headers::SOURCE_PARTITION, text(&source["partition"])),
        (headers::SOURCE_OFFSET, text(&source["offset"])),
        (headers::ATTEMPTS, letter.failure.attempts.to_string()),
        (headers::FAILED_AT, letter.failed_at_ms.to_string()),
        (headers::INSTANCE, instance.to_owned()),
    ];
    for (k, v) in &fields {
        h = h.insert(Header { key: k, value: Some(v.as_bytes()) });
    }
    h
}

