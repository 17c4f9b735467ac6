//! The revocations an instance must know before it serves: at start-up (in
//! Kafka mode) the main topic is read back over the revocation window and
//! every `session.revoked` event still in force is remembered by the hub,
//! so that an instance started after a revocation refuses the revoked
//! tokens like the others.
//!
//! The read-back assigns partitions directly (no consumer group, no offset
//! moved): from the offsets of `now - window` (`offsets_for_times`) to the
//! end offsets taken when it starts. Records are filtered by their
//! `eventType` header first; only records whose header names
//! `session.revoked`, or that have no such header and contain the type name,
//! are decoded. It is bounded in time ([`READ_BACK_TIMEOUT`]); when it cannot
//! finish (the broker is away) the gateway logs an error and serves anyway,
//! with the revocations it read (its consumer applies later ones as they come).

use crate::deliver::Hub;
use crate::kafka::headers;
use moonx_events::decode::{decode_event, DecodeOptions};
use moonx_events::{EventData, EventType, TypeRegistry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The longest the start-up read-back may take (metadata, offsets and
/// reading): a window of revocation traffic reads in far less, and an
/// unreachable broker must not hold start-up for long.
pub const READ_BACK_TIMEOUT: Duration = Duration::from_secs(15);

/// What the read-back found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadBack {
    /// Records read (of every type).
    pub records: u64,
    /// `session.revoked` events applied (still in force).
    pub revocations: u64,
}

/// Reads `topic` back over the hub's revocation window and applies every
/// `session.revoked` found. Blocking: run it on a blocking thread.
pub fn read_back(brokers: &str, topic: &str, hub: &Hub) -> anyhow::Result<ReadBack> {
    let deadline = Instant::now() + READ_BACK_TIMEOUT;
    let left = || deadline.saturating_duration_since(Instant::now());
    let consumer: BaseConsumer = crate::kafka::client_config(brokers)
        .set("group.id", "moonx-ws-revocation-read-back")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), left())?;
    let Some(t) = md.topics().first().filter(|t| t.error().is_none()) else {
        anyhow::bail!("topic {topic} not found");
    };
    let since_ms = moonx_events::validate::now_ms().saturating_sub(hub.revocation_window().as_millis() as u64);
    let mut by_time = TopicPartitionList::new();
    for p in t.partitions() {
        by_time.add_partition_offset(topic, p.id(), Offset::Offset(since_ms as i64))?;
    }
    let starts = consumer.offsets_for_times(by_time, left())?;
    // partition -> the end offset to reach.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for e in starts.elements() {
        let Offset::Offset(start) = e.offset() else { continue }; // nothing that recent
        let (_, high) = consumer.fetch_watermarks(topic, e.partition(), left())?;
        if start < high {
            ends.insert(e.partition(), high);
            assignment.add_partition_offset(topic, e.partition(), Offset::Offset(start))?;
        }
    }
    let mut found = ReadBack::default();
    if ends.is_empty() {
        return Ok(found);
    }
    consumer.assign(&assignment)?;
    let registry = TypeRegistry::new();
    let options = DecodeOptions { registry: &registry, validate: true, now_ms: None, topic: Some(topic) };
    let wanted = EventType::SessionRevoked.as_str();
    while !ends.is_empty() {
        if left().is_zero() {
            anyhow::bail!("reading back {topic} took longer than {} s", READ_BACK_TIMEOUT.as_secs());
        }
        let Some(m) = consumer.poll(left().min(Duration::from_millis(200))) else {
            // Nothing more to read: a partition whose position passed its end
            // (transaction markers and aborted records have offsets too) is done.
            if let Ok(positions) = consumer.position() {
                for e in positions.elements() {
                    if let (Offset::Offset(at), Some(&end)) = (e.offset(), ends.get(&e.partition()))
                        && at >= end
                    {
                        ends.remove(&e.partition());
                    }
                }
            }
            continue;
        };
        let m = m?;
        let Some(&end) = ends.get(&m.partition()) else { continue };
        if m.offset() >= end {
            ends.remove(&m.partition());
            continue;
        }
        found.records += 1;
        if m.offset() + 1 >= end {
            ends.remove(&m.partition());
        }
        let header = m.headers().and_then(|h| h.iter().find(|h| h.key == headers::EVENT_TYPE).map(|h| h.value));
        let Some(payload) = m.payload() else { continue };
        let candidate = match header {
            Some(Some(value)) => value == wanted.as_bytes(),
            // No header (another producer): only records that name the type are decoded.
            _ => payload.windows(wanted.len()).any(|w| w == wanted.as_bytes()),
        };
        if !candidate {
            continue;
        }
        match decode_event(payload, &options) {
            Ok(event) => {
                if let EventData::SessionRevoked(r) = &event.data {
                    hub.revoke_user(&r.user_id, r.revoked_at);
                    if hub.is_revoked(&r.user_id) {
                        found.revocations += 1;
                    }
                }
            }
            Err(e) => tracing::debug!(partition = m.partition(), offset = m.offset(), "read-back: record not decoded: {e}"),
        }
    }
    Ok(found)
}
