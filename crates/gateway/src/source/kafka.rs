//! The Kafka source: one consumer for the main topic (and, when enabled, the
//! legacy topics), feeding the pipeline in order.
//!
//! Delivery semantics: **at least once**.
//!
//! * `enable.auto.offset.store=false`: librdkafka never marks a record done
//!   by itself. This loop stores a record's offset only after the pipeline
//!   has *routed* it to the hub, or after its dead letter was acknowledged by
//!   the DLQ topic (`acks=all`). If the DLQ cannot be written for a
//!   transient reason, the loop retries and does not move on, so no later
//!   offset can be stored past the failed one. (A refusal retrying cannot
//!   change is answered with a fallback letter, then the loop moves on: see
//!   `pipeline::dead_letter`.) Stores are batched (`PendingOffsets`): the latest processed
//!   offset per partition is handed to librdkafka every 512 records, every
//!   100 ms, and before the final commit; a crash re-delivers at most that
//!   much more, never less.
//! * `enable.auto.commit=true` (every second) commits only *stored* offsets;
//!   we also commit them synchronously when partitions are revoked and on
//!   shutdown.
//! * Records are processed one at a time in partition order, so the stored
//!   offset is always the end of a fully processed prefix of the partition.
//!
//! Hence a crash at any point loses nothing: every record after the last
//! committed offset is consumed again. The price is possible redelivery of
//! up to a second of records, which clients drop by `eventId`
//! (per-connection de-duplication in `deliver`).
//!
//! Each instance has its own consumer group (`<KAFKA_CONSUMER_GROUP_ID>-<instance id>`),
//! so every instance sees every partition. (Static membership was tried and
//! dropped: after a broker outage longer than the session timeout, the
//! rejoined member's commit is fenced, which is fatal in librdkafka.)
//!
//! If the broker is unreachable, librdkafka keeps reconnecting; the gateway
//! stays up with a 503 `/health` until the broker answers. Should the
//! consumer still hit a fatal error, it is closed and a new one created;
//! its uncommitted records are then consumed again.

use crate::pipeline::dead_letter::{DeadLetter, DeadLetterWriter, DlqHealth};
use crate::pipeline::{Outcome, Pipeline};
use crate::source::Record;
use crate::telemetry::Metrics;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::statistics::Statistics;
use rdkafka::Message;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// What `/health` needs to know about the consumer.
#[derive(Debug, Default)]
pub struct ConsumerStatus {
    /// At least one broker connection is up (from librdkafka statistics).
    pub connected: AtomicBool,
    pub assigned_partitions: AtomicI64,
    pub last_error: Mutex<Option<String>>,
    pub dlq: DlqHealth,
    /// The consumer group actually joined (`<KAFKA_CONSUMER_GROUP_ID>-<instance id>`), for `/health`.
    pub group: String,
    /// resume: where each assignment declares its topics' partition counts.
    pub streams: Arc<crate::deliver::resume::Streams>,
}

pub struct GatewayContext {
    metrics: Arc<Metrics>,
    status: Arc<ConsumerStatus>,
}

impl ClientContext for GatewayContext {
    fn stats(&self, stats: Statistics) {
        let up = stats.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
        self.status.connected.store(up, Ordering::Relaxed);
        self.metrics.consumer_connected.set(up as i64);
        self.metrics.consumer_lag.reset();
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // librdkafka reports -1 (internal UA partition) and -1 lags for partitions not consumed.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics.consumer_lag.with_label_values(&[topic.as_str(), &partition.to_string()]).set(p.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.status.connected.store(false, Ordering::Relaxed);
            self.metrics.consumer_connected.set(0);
        }
        tracing::warn!("kafka: {error}: {reason}");
        *self.status.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for GatewayContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Hand over exactly what was processed.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!("commit on revoke failed: {e}"),
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = consumer.assignment().map(|a| a.count() as i64).unwrap_or(0);
        self.status.assigned_partitions.store(assigned, Ordering::Relaxed);
        self.metrics.consumer_assigned_partitions.set(assigned);
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
        // resume: every instance is assigned every partition (its own group),
        // so the assignment gives each topic's partition count.
        if let Ok(assignment) = consumer.assignment() {
            let mut counts: std::collections::HashMap<String, i32> = std::collections::HashMap::new();
            for e in assignment.elements() {
                *counts.entry(e.topic().to_owned()).or_default() += 1;
            }
            for (topic, n) in counts {
                self.status.streams.set(&topic, crate::deliver::resume::Generation::Partitions(n));
            }
            // Where reading starts (the committed offsets): a partition that
            // stays quiet after a restart still has a live boundary.
            match consumer.committed_offsets(assignment, std::time::Duration::from_secs(2)) {
                Ok(committed) => {
                    for e in committed.elements() {
                        if let rdkafka::Offset::Offset(next) = e.offset() {
                            self.status.streams.set_start(e.topic(), e.partition(), next);
                        }
                    }
                }
                Err(e) => tracing::warn!("committed offsets unknown (resume on quiet partitions answers recovered:false): {e}"),
            }
        }
    }
}

pub type GatewayConsumer = StreamConsumer<GatewayContext>;

/// How to reach and read the topics.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub brokers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    pub stats_interval_ms: u64,
    /// Where a new group starts: `latest` (live feed) or `earliest`.
    pub auto_offset_reset: String,
}

pub fn create_consumer(
    settings: &ConsumerSettings,
    metrics: Arc<Metrics>,
    status: Arc<ConsumerStatus>,
) -> anyhow::Result<GatewayConsumer> {
    let consumer: GatewayConsumer = crate::kafka::client_config(&settings.brokers)
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &settings.auto_offset_reset)
        .set("session.timeout.ms", "10000")
        .set("statistics.interval.ms", settings.stats_interval_ms.to_string())
        .set("enable.partition.eof", "false")
        .create_with_context(GatewayContext { metrics, status })?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Consumes until `shutdown`, then commits what was processed. A consumer
/// that hits a fatal error is replaced by a new one.
pub async fn run(
    settings: ConsumerSettings,
    pipeline: Arc<Pipeline>,
    dead_letters: DeadLetterWriter,
    status: Arc<ConsumerStatus>,
    instance: String,
    shutdown: CancellationToken,
) {
    let metrics = pipeline.metrics().clone();
    while !shutdown.is_cancelled() {
        let consumer = match create_consumer(&settings, metrics.clone(), status.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("cannot create the Kafka consumer: {e}");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => continue }
            }
        };
        consume(&consumer, &pipeline, &dead_letters, &status, &instance, &shutdown).await;
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {
                if shutdown.is_cancelled() {
                    tracing::info!("offsets committed on shutdown")
                }
            }
            Err(e) => tracing::warn!("final commit failed: {e}"),
        }
        status.assigned_partitions.store(0, Ordering::Relaxed);
        metrics.consumer_assigned_partitions.set(0);
    }
}

/// Processed offsets not yet handed to librdkafka: the latest per partition.
/// (`rd_kafka_offset_store` takes locks and checks the assignment; once per
/// record it cost more than the pipeline itself.)
#[derive(Default)]
struct PendingOffsets {
    latest: Vec<(String, i32, i64)>,
    since_flush: usize,
}

impl PendingOffsets {
    const FLUSH_EVERY: usize = 512;

    fn record(&mut self, topic: &str, partition: i32, offset: i64) {
        match self.latest.iter_mut().find(|(t, p, _)| *p == partition && t == topic) {
            Some(entry) => entry.2 = offset,
            None => self.latest.push((topic.to_owned(), partition, offset)),
        }
        self.since_flush += 1;
    }

    fn flush(&mut self, consumer: &GatewayConsumer) {
        for (topic, partition, offset) in self.latest.drain(..) {
            if let Err(e) = consumer.store_offset(&topic, partition, offset) {
                // The partition was revoked meanwhile; its new owner will redo the records.
                tracing::warn!(topic, partition, offset, "offset not stored: {e}");
            }
        }
        self.since_flush = 0;
    }
}

/// The consume loop of one consumer; returns on shutdown or a fatal error.
async fn consume(
    consumer: &GatewayConsumer,
    pipeline: &Pipeline,
    dead_letters: &DeadLetterWriter,
    status: &ConsumerStatus,
    instance: &str,
    shutdown: &CancellationToken,
) {
    let metrics = pipeline.metrics();
    let mut pending = PendingOffsets::default();
    let mut flush_tick = tokio::time::interval(std::time::Duration::from_millis(100));
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = flush_tick.tick(), if !pending.latest.is_empty() => {
                pending.flush(consumer);
                continue;
            }
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                if let Some(fatal) = consumer.client().fatal_error() {
                    tracing::error!("fatal consumer error, recreating the consumer: {fatal:?}");
                    break;
                }
                tracing::warn!("consumer error: {e}");
                continue;
            }
        };
        let record = Record {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            payload: message.payload(),
            timestamp_ms: message.timestamp().to_millis(),
        };
        if let Outcome::Failed(failure) = pipeline.process(&record).await {
            let letter = DeadLetter::new(&record, headers_of(&message), failure, instance);
            if !dead_letters.write(&letter, metrics, &status.dlq, shutdown).await {
                break; // shutting down with the dead letter unwritten: keep its offset unstored
            }
        }
        pending.record(record.topic, record.partition, record.offset);
        drop(message);
        if pending.since_flush >= PendingOffsets::FLUSH_EVERY {
            pending.flush(consumer);
        }
        // librdkafka's queue is not a tokio resource, so a backlog would never
        // make this loop yield: give the sessions writing frames their turn.
        tokio::task::consume_budget().await;
    }
    // Everything recorded was processed; the caller commits right after.
    pending.flush(consumer);
}

fn headers_of(message: &BorrowedMessage<'_>) -> Vec<(String, Option<Vec<u8>>)> {
    message
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
        .unwrap_or_default()
}
