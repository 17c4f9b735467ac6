//! Dead letters: records the pipeline could not route, kept so that they can
//! be understood and replayed.
//!
//! The shape follows Kafka Connect's dead-letter-queue convention: a DLQ
//! record's **value is the original record's value, byte for byte** (stored
//! once; a tombstone stays a tombstone), its key and headers are the original
//! ones, and the failure travels in `dlq.*` headers (see [`headers`]). Every
//! header we add is bounded ([`MAX_MESSAGE_CHARS`], [`MAX_ERRORS`],
//! [`MAX_ERRORS_BYTES`], [`MAX_HEADER_TEXT_BYTES`]), so a dead letter is at
//! most the original record plus `kafka::admin::DLQ_HEADER_HEADROOM_BYTES`,
//! which `create-topics` adds to the DLQ topic's `max.message.bytes` (and the
//! DLQ producer to its `message.max.bytes`): any record the main topic
//! accepts yields a dead letter the DLQ accepts. `dlq.id`
//! (`topic/partition/offset`) identifies the failure: a redelivery after a
//! crash can write the same dead letter twice, and DLQ readers de-duplicate
//! by that id.
//!
//! Writing: while the DLQ cannot be written for a transient reason (broker
//! away, timeout), the source holds its position (the offset is not
//! stored), retrying with backoff, and `/health` reports it. A *permanent*
//! refusal (the record too large or invalid for the DLQ: retrying cannot
//! help) is never retried forever: a fallback letter is written instead,
//! with the same headers, `dlq.payload_truncated=<original size>` and the
//! first [`FALLBACK_PREFIX_BYTES`] of the value; it is counted
//! (`dlq_truncated_total`) and logged, and the source moves on. Should even
//! that be refused permanently, the failure is logged and counted
//! (`dlq_write_errors_total`) and the source moves on.
//!
//! With the DLQ disabled (`EVENT_DEAD_LETTER_QUEUE_ENABLED=false`) or on an
//! instance that is not the DLQ writer, nothing is written: the failure is
//! logged and counted in `events_failed_total{reason}`, and the offset moves on.

use super::Failure;
use crate::pipeline::Record;
use crate::telemetry::events::{DeadLetterRefused, DeadLetterTruncated, DeadLetterWriteFailed, DeadLetterWritten, InternalEvent};
use crate::telemetry::Metrics;
use base64::Engine as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Header names on DLQ records.
pub mod headers {
    pub const ID: &str = "dlq.id";
    pub const REASON: &str = "dlq.reason";
    pub const MESSAGE: &str = "dlq.message";
    /// JSON array of `{"path","code","message"}` (validation errors), bounded.
    pub const ERRORS: &str = "dlq.errors";
    /// How many validation errors did not fit in `dlq.errors`.
    pub const ERRORS_OMITTED: &str = "dlq.errors.omitted";
    pub const EVENT_TYPE: &str = "dlq.event_type";
    pub const EVENT_ID: &str = "dlq.event_id";
    pub const SOURCE_TOPIC: &str = "dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "dlq.source.offset";
    pub const SOURCE_TIMESTAMP: &str = "dlq.source.timestamp";
    /// The original key as text (lossy UTF-8), bounded; the record key is the original key itself.
    pub const SOURCE_KEY: &str = "dlq.source.key";
    pub const ATTEMPTS: &str = "dlq.attempts";
    pub const FAILED_AT: &str = "dlq.failed_at";
    pub const INSTANCE: &str = "dlq.instance";
    /// On a fallback letter only: the original value's size in bytes (the value holds a prefix).
    pub const PAYLOAD_TRUNCATED: &str = "dlq.payload_truncated";
}

/// `dlq.message` keeps at most this many characters (the error text is ours, short).
pub const MAX_MESSAGE_CHARS: usize = 1000;
/// `dlq.errors` lists at most this many errors (an envelope rarely has more than a dozen).
pub const MAX_ERRORS: usize = 50;
/// ... and at most this many bytes of JSON.
pub const MAX_ERRORS_BYTES: usize = 16 * 1024;
/// Other header texts from the record (event type, key) are cut to this many bytes.
pub const MAX_HEADER_TEXT_BYTES: usize = 1024;
/// A fallback letter keeps this much of the original value: enough to identify it.
pub const FALLBACK_PREFIX_BYTES: usize = 16 * 1024;
/// How long one write attempt waits for room in the producer's queue
/// before it counts as a transient failure (and is retried with backoff).
const SEND_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// A dead letter, ready to be written.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    pub key: Option<Vec<u8>>,
    /// The original record's headers.
    pub original_headers: Vec<(String, Option<Vec<u8>>)>,
    /// The original value (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
    pub failure: Failure,
    pub failed_at_ms: u64,
    /// The `dlq.*` headers, bounded, in order.
    pub dlq_headers: Vec<(&'static str, String)>,
}

impl DeadLetter {
    pub fn new(record: &Record<'_>, original_headers: Vec<(String, Option<Vec<u8>>)>, failure: Failure, instance: &str) -> Self {
        let failed_at_ms = moonx_events::validate::now_ms();
        let id = format!("{}/{}/{}", record.topic, record.partition, record.offset);
        let mut h: Vec<(&'static str, String)> = vec![
            (headers::ID, id.clone()),
            (headers::REASON, failure.reason.as_str().to_owned()),
            (headers::MESSAGE, failure.message.chars().take(MAX_MESSAGE_CHARS).collect()),
        ];
        if let Some(errors) = &failure.errors {
            let (listed, omitted) = bounded_errors(errors);
            h.push((headers::ERRORS, listed));
            if omitted > 0 {
                h.push((headers::ERRORS_OMITTED, omitted.to_string()));
            }
        }
        if let Some(t) = &failure.event_type {
            h.push((headers::EVENT_TYPE, cut(t.as_bytes())));
        }
        if let Some(e) = &failure.event_id {
            h.push((headers::EVENT_ID, e.clone()));
        }
        h.push((headers::SOURCE_TOPIC, record.topic.to_owned()));
        h.push((headers::SOURCE_PARTITION, record.partition.to_string()));
        h.push((headers::SOURCE_OFFSET, record.offset.to_string()));
        if let Some(ts) = record.timestamp_ms {
            h.push((headers::SOURCE_TIMESTAMP, ts.to_string()));
        }
        if let Some(k) = record.key {
            h.push((headers::SOURCE_KEY, cut(k)));
        }
        h.push((headers::ATTEMPTS, failure.attempts.to_string()));
        h.push((headers::FAILED_AT, failed_at_ms.to_string()));
        h.push((headers::INSTANCE, cut(instance.as_bytes())));
        DeadLetter {
            id,
            key: record.key.map(<[u8]>::to_vec),
            original_headers,
            value: record.payload.map(<[u8]>::to_vec),
            failure,
            failed_at_ms,
            dlq_headers: h,
        }
    }

    /// Every header of the DLQ record: the original ones, then `dlq.*`.
    pub fn all_headers(&self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut all = self.original_headers.clone();
        all.extend(self.dlq_headers.iter().map(|(k, v)| ((*k).to_owned(), Some(v.as_bytes().to_vec()))));
        all
    }

    /// The JSON view of the letter (`GET /api/dead-letters`, `tail --dlq`):
    /// built exactly as from the DLQ record it is written as.
    pub fn to_json(&self) -> Value {
        view(self.key.as_deref(), self.value.as_deref(), &self.all_headers())
    }
}

/// The JSON view of a DLQ record (key, value, headers): the failure from the
/// `dlq.*` headers, the original headers, and the original value (as text
/// when it is UTF-8, else base64; `null` for a tombstone).
pub fn view(key: Option<&[u8]>, value: Option<&[u8]>, record_headers: &[(String, Option<Vec<u8>>)]) -> Value {
    let text_of = |name: &str| {
        record_headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let number = |name: &str| text_of(name).and_then(|t| t.parse::<i64>().ok());
    let errors: Value = text_of(headers::ERRORS).and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null);
    let originals: serde_json::Map<String, Value> = record_headers
        .iter()
        .filter(|(k, _)| !k.starts_with("dlq."))
        .map(|(k, v)| (k.clone(), v.as_deref().map_or(Value::Null, |v| Value::String(String::from_utf8_lossy(v).into_owned()))))
        .collect();
    let mut out = json!({
        "id": text_of(headers::ID),
        "reason": text_of(headers::REASON),
        "message": text_of(headers::MESSAGE),
        "errors": errors,
        "errorsOmitted": number(headers::ERRORS_OMITTED).unwrap_or(0),
        "eventType": text_of(headers::EVENT_TYPE),
        "eventId": text_of(headers::EVENT_ID),
        "attempts": number(headers::ATTEMPTS),
        "failedAt": number(headers::FAILED_AT),
        "instance": text_of(headers::INSTANCE),
        "source": {
            "topic": text_of(headers::SOURCE_TOPIC),
            "partition": number(headers::SOURCE_PARTITION),
            "offset": number(headers::SOURCE_OFFSET),
            "timestamp": number(headers::SOURCE_TIMESTAMP),
            "key": text_of(headers::SOURCE_KEY).or_else(|| key.map(|k| String::from_utf8_lossy(k).into_owned())),
        },
        "headers": originals,
        "payloadBytes": value.map(<[u8]>::len),
        "payloadTruncatedFrom": number(headers::PAYLOAD_TRUNCATED),
    });
    match value.map(std::str::from_utf8) {
        Some(Ok(text)) => out["payloadText"] = Value::String(text.to_owned()),
        Some(Err(_)) => {
            out["payloadBase64"] = Value::String(base64::engine::general_purpose::STANDARD.encode(value.unwrap_or_default()))
        }
        None => {}
    }
    out
}

/// The validation errors as a JSON array, cut to [`MAX_ERRORS`] entries and
/// [`MAX_ERRORS_BYTES`] bytes; and how many were left out.
fn bounded_errors(errors: &moonx_events::ValidationErrors) -> (String, usize) {
    let mut listed = Vec::new();
    let mut bytes = 2;
    for e in errors.iter().take(MAX_ERRORS) {
        let item = json!({"path": cut(e.path.as_bytes()), "code": e.code.as_str(), "message": cut(e.message.as_bytes())});
        let len = item.to_string().len() + 1;
        if bytes + len > MAX_ERRORS_BYTES {
            break;
        }
        bytes += len;
        listed.push(item);
    }
    let omitted = errors.len() - listed.len();
    (Value::Array(listed).to_string(), omitted)
}

/// Lossy text of at most [`MAX_HEADER_TEXT_BYTES`] bytes (cut on a character boundary).
fn cut(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= MAX_HEADER_TEXT_BYTES {
        return text.into_owned();
    }
    let mut end = MAX_HEADER_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Where dead letters go.
pub enum DeadLetterWriter {
    /// The DLQ topic (through a producer made by `kafka::producer::create_dlq_producer`).
    Kafka { producer: FutureProducer, topic: String, instance: String },
    /// The embedded bus keeps its most recent dead letters in memory.
    Memory { letters: Arc<std::sync::Mutex<std::collections::VecDeque<DeadLetter>>>, capacity: usize },
    /// DLQ disabled, or another instance is the writer: the failure is only
    /// logged and counted (`events_failed_total{reason}`; `dlq_writes_total`
    /// is not incremented), and the offset moves on.
    Skip,
}

/// Which partitions are held by a DLQ write that keeps failing (for
/// `/health`): each is named `topic/partition` while its writer retries.
#[derive(Debug, Default)]
pub struct DlqHealth {
    held: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl DlqHealth {
    fn set(&self, partition: &str, failing: bool) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if failing {
            held.insert(partition.to_owned());
        } else {
            held.remove(partition);
        }
    }

    /// The partition stopped waiting (written, moved on, or revoked).
    pub fn release(&self, partition: &str) {
        self.set(partition, false);
    }

    pub fn is_failing(&self) -> bool {
        !self.held.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// The held partitions, sorted.
    pub fn failing_partitions(&self) -> Vec<String> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

/// Refusals that retrying the same record cannot change: too large or
/// invalid for the topic (librdkafka's local size check included).
fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidTimestamp
                | RDKafkaErrorCode::UnsupportedForMessageFormat
                | RDKafkaErrorCode::InvalidArgument
        )
    )
}

/// What is actually sent for a letter: in full, or as a fallback.
enum Form {
    Full,
    /// Headers, a prefix of the value, `dlq.payload_truncated`.
    Prefix,
    /// `dlq.*` headers only, no value (when even the prefix was refused).
    HeadersOnly,
}

impl DeadLetterWriter {
    /// Writes the letter, retrying transient failures with backoff until it
    /// succeeds, holding only `partition` (named `topic/partition` in
    /// `health` while it fails). Returns `false` only if `shutdown` fired
    /// first: the caller must then not store the record's offset.
    pub async fn write(
        &self,
        letter: &DeadLetter,
        metrics: &Metrics,
        health: &DlqHealth,
        partition: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        let (producer, topic) = match self {
            DeadLetterWriter::Kafka { producer, topic, .. } => (producer, topic),
            DeadLetterWriter::Memory { letters, capacity } => {
                let mut l = letters.lock().unwrap_or_else(|p| p.into_inner());
                if l.len() >= *capacity {
                    l.pop_front();
                }
                l.push_back(letter.clone());
                DeadLetterWritten { id: &letter.id, reason: letter.failure.reason.as_str(), at: None }.emit(metrics);
                return true;
            }
            DeadLetterWriter::Skip => return true,
        };
        let reason = letter.failure.reason.as_str();
        let mut form = Form::Full;
        let mut backoff = Duration::from_millis(100);
        loop {
            let original_size = letter.value.as_ref().map_or(0, Vec::len);
            let (value, headers): (Option<&[u8]>, OwnedHeaders) = match form {
                Form::Full => (letter.value.as_deref(), owned_headers(letter, true, None)),
                Form::Prefix => (
                    letter.value.as_deref().map(|v| &v[..v.len().min(FALLBACK_PREFIX_BYTES)]),
                    owned_headers(letter, true, Some(original_size)),
                ),
                Form::HeadersOnly => (None, owned_headers(letter, false, Some(original_size))),
            };
            let mut record = FutureRecord::to(topic).headers(headers);
            if let Some(v) = value {
                record = record.payload(v);
            }
            let record = match &letter.key {
                Some(k) => record.key(k.as_slice()),
                None => record.key(letter.id.as_bytes()),
            };
            match producer.send(record, SEND_QUEUE_TIMEOUT).await {
                Ok(d) => {
                    health.set(partition, false);
                    if !matches!(form, Form::Full) {
                        DeadLetterTruncated { id: &letter.id, reason, original_bytes: original_size }.emit(metrics);
                    }
                    DeadLetterWritten { id: &letter.id, reason, at: Some((d.partition, d.offset)) }.emit(metrics);
                    return true;
                }
                Err((e, _)) if is_permanent(&e) => {
                    let next = match form {
                        Form::Full => Some(Form::Prefix),
                        Form::Prefix => Some(Form::HeadersOnly),
                        Form::HeadersOnly => None,
                    };
                    DeadLetterRefused { id: &letter.id, reason, error: &e, fallback_follows: next.is_some() }.emit(metrics);
                    let Some(next) = next else {
                        health.set(partition, false);
                        return true;
                    };
                    form = next;
                    continue;
                }
                Err((e, _)) => {
                    health.set(partition, true);
                    DeadLetterWriteFailed { id: &letter.id, reason, partition, error: &e }.emit(metrics);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    health.set(partition, false);
                    return false;
                }
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

fn owned_headers(letter: &DeadLetter, with_originals: bool, truncated_from: Option<usize>) -> OwnedHeaders {
    let mut h = OwnedHeaders::new();
    if with_originals {
        for (k, v) in &letter.original_headers {
            h = h.insert(Header { key: k, value: v.as_deref() });
        }
    }
    for (k, v) in &letter.dlq_headers {
        h = h.insert(Header { key: k, value: Some(v.as_bytes()) });
    }
    if let Some(size) = truncated_from {
        h = h.insert(Header { key: headers::PAYLOAD_TRUNCATED, value: Some(size.to_string().as_bytes()) });
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Failure, FailureReason};
    use moonx_events::validate::{ErrorCode, ValidationError};
    use moonx_events::ValidationErrors;

    fn failure(errors: usize, message_len: usize) -> Failure {
        let errors = ValidationErrors(
            (0..errors)
                .map(|i| ValidationError { path: format!("/data/f{i}"), code: ErrorCode::Required, message: "x".repeat(message_len) })
                .collect(),
        );
        Failure {
            reason: FailureReason::from(&moonx_events::DecodeError::Invalid(errors.clone())),
            message: "m".repeat(5000).into(),
            errors: Some(errors),
            attempts: 1,
            event_type: Some("t".repeat(5000)),
            event_id: None,
        }
    }

    fn record(payload: &[u8]) -> Record<'_> {
        Record { topic: "main", partition: 3, offset: 42, key: Some(b"user-1"), payload: Some(payload), timestamp_ms: Some(7) }
    }

    #[test]
    fn the_value_is_the_original_and_every_header_is_bounded() {
        let payload = vec![b'{'; 600_000];
        let letter = DeadLetter::new(&record(&payload), vec![("h".into(), Some(b"v".to_vec()))], failure(10_000, 500), "gw");
        assert_eq!(letter.value.as_deref(), Some(payload.as_slice()));
        let dlq_bytes: usize = letter.dlq_headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(dlq_bytes < crate::kafka::admin::DLQ_HEADER_HEADROOM_BYTES / 2, "{dlq_bytes}");
        let view = letter.to_json();
        let listed = view["errors"].as_array().unwrap().len();
        assert!(listed > 0 && listed <= MAX_ERRORS);
        assert_eq!(view["errorsOmitted"], 10_000 - listed);
        assert_eq!(view["source"]["offset"], 42);
        assert_eq!(view["source"]["key"], "user-1");
        assert_eq!(view["headers"]["h"], "v");
        assert_eq!(view["payloadBytes"], 600_000);
        assert_eq!(view["payloadText"].as_str().unwrap().len(), 600_000);
    }

    #[test]
    fn a_tombstone_stays_a_tombstone() {
        let r = Record { payload: None, ..record(b"") };
        let letter = DeadLetter::new(&r, vec![], failure(0, 0), "gw");
        assert!(letter.value.is_none());
        assert!(letter.to_json()["payloadBytes"].is_null());
    }
}
