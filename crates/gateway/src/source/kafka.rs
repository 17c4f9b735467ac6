//! The Kafka source: one consumer for the main topic (and, when enabled, the
//! legacy topics), with one worker task per partition feeding the pipeline
//! in that partition's order. Partitions run in parallel.
//!
//! Delivery semantics: **at least once**.
//!
//! * Each partition known at start-up gets its own librdkafka queue
//!   (`split_partition_queue`) and its own worker task. (A partition that
//!   appears later, or any record librdkafka still hands to the main queue,
//!   is processed by the main loop the same way, serially.)
//! * `enable.auto.offset.store=false`: librdkafka never marks a record done
//!   by itself. A worker records a record's offset only after the pipeline
//!   has *routed* it to the hub, or after its dead letter was acknowledged by
//!   the DLQ topic (`acks=all`). If the DLQ cannot be written for a
//!   transient reason, the worker retries and does not move on, so no later
//!   offset of *its* partition can be stored past the failed one; the other
//!   partitions go on, and `/health` names the held one. (A refusal retrying
//!   cannot change is answered with a fallback letter, then the worker moves
//!   on: see `pipeline::dead_letter`.)
//! * Stores are batched per worker (`PendingOffsets`): the latest processed
//!   offset of the partition is handed to librdkafka every 512 records,
//!   every 100 ms, when the partition is revoked, and before the final
//!   commit; a crash re-delivers at most that much more, never less.
//! * `enable.auto.commit=true` (every second) commits only *stored* offsets.
//! * On revoke (`pre_rebalance`), for each revoked partition: its worker is
//!   marked revoked and its DLQ wait cancelled (that record's offset stays
//!   unstored); then the worker's lock is taken, which waits for the record
//!   in hand to finish; its pending offset is stored; then everything
//!   stored is committed synchronously. A revoked worker processes no
//!   further record until its partition is assigned again. On shutdown the
//!   workers stop, store, and the consumer commits.
//! * Each worker processes its records one at a time in partition order, so
//!   the stored offset is always the end of a fully processed prefix of the
//!   partition.
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

use crate::pipeline::dead_letter::{DeadLetterWriter, DlqHealth};
use crate::pipeline::{Disposition, Pipeline, Record};
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
    workers: Arc<Workers>,
}

/// The per-partition workers' shared state, reachable from the rebalance callbacks.
pub struct Workers {
    gates: Mutex<std::collections::HashMap<(String, i32), Arc<WorkerGate>>>,
    /// Cancelled when this consumer stops; every DLQ wait is its child.
    stop: CancellationToken,
}

impl Workers {
    fn new(stop: CancellationToken) -> Workers {
        Workers { gates: Mutex::default(), stop }
    }

    fn gate(&self, topic: &str, partition: i32) -> Arc<WorkerGate> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| {
                Arc::new(WorkerGate {
                    pending: Default::default(),
                    revoked: AtomicBool::new(false),
                    cancel: Mutex::new(self.stop.child_token()),
                })
            })
            .clone()
    }
}

/// One partition's worker: its pending offset (locked while a record is
/// processed, so the revoke waits for the record in hand), whether the
/// partition is revoked, and the token that cancels a DLQ wait on revoke.
pub struct WorkerGate {
    pending: tokio::sync::Mutex<PendingOffsets>,
    revoked: AtomicBool,
    cancel: Mutex<CancellationToken>,
}

/// How long a revoke waits for a worker to finish the record in hand.
const REVOKE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

// librdkafka tuning of the consumer, and our own waits around it.
/// `auto.commit.interval.ms`: stored offsets are committed every second, so
/// a crash replays at most about a second of records (de-duplicated by eventId).
const AUTO_COMMIT_INTERVAL_MS: &str = "1000";
/// `session.timeout.ms`: a dead instance's partitions move after 10 s; long
/// enough that a GC-free but busy process is not thrown out by a slow poll.
const SESSION_TIMEOUT_MS: &str = "10000";
/// How long the assignment waits for the committed offsets (the live
/// boundary of quiet partitions); a broker slower than this only costs a resume.
const COMMITTED_OFFSETS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Pause before a consumer that could not be created is tried again.
const RECREATE_DELAY: std::time::Duration = std::time::Duration::from_secs(2);
/// How long we wait for a topic's partition list before subscribing.
const METADATA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often processed offsets are handed to librdkafka's offset store:
/// often enough that the auto-commit sees fresh offsets, rare enough to cost nothing.
const OFFSET_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs `f` to completion from a synchronous librdkafka callback.
fn wait_in_callback<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(f))
        }
        _ => futures::executor::block_on(f),
    }
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
            // Stop the revoked workers and store what they processed.
            for e in tpl.elements() {
                let gate = self.workers.gate(e.topic(), e.partition());
                gate.revoked.store(true, Ordering::SeqCst);
                gate.cancel.lock().unwrap_or_else(|p| p.into_inner()).cancel();
                let stored = wait_in_callback(async {
                    match tokio::time::timeout(REVOKE_WAIT, gate.pending.lock()).await {
                        Ok(mut pending) => {
                            pending.flush(consumer);
                            true
                        }
                        Err(_) => false,
                    }
                });
                if !stored {
                    tracing::warn!(topic = e.topic(), partition = e.partition(), "the worker did not stop in time; its last records will be consumed again");
                }
            }
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
            for e in tpl.elements() {
                let gate = self.workers.gate(e.topic(), e.partition());
                *gate.cancel.lock().unwrap_or_else(|p| p.into_inner()) = self.workers.stop.child_token();
                gate.revoked.store(false, Ordering::SeqCst);
            }
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
            match consumer.committed_offsets(assignment, COMMITTED_OFFSETS_TIMEOUT) {
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
    workers: Arc<Workers>,
) -> anyhow::Result<Arc<GatewayConsumer>> {
    let consumer: GatewayConsumer = crate::kafka::client_config(&settings.brokers)
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", AUTO_COMMIT_INTERVAL_MS)
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &settings.auto_offset_reset)
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .set("statistics.interval.ms", settings.stats_interval_ms.to_string())
        .set("enable.partition.eof", "false")
        .create_with_context(GatewayContext { metrics, status, workers })?;
    Ok(Arc::new(consumer))
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
    let dead_letters = Arc::new(dead_letters);
    let instance: Arc<str> = instance.into();
    while !shutdown.is_cancelled() {
        let stop = shutdown.child_token();
        let workers = Arc::new(Workers::new(stop.clone()));
        let consumer = match create_consumer(&settings, metrics.clone(), status.clone(), workers.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("cannot create the Kafka consumer: {e}");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(RECREATE_DELAY) => continue }
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        let ctx = Shared { pipeline: pipeline.clone(), dead_letters: dead_letters.clone(), status: status.clone(), instance: instance.clone() };
        // Split every known partition before subscribing, so none of its
        // records reaches the main queue first.
        for topic in &settings.topics {
            let partitions = match consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT) {
                Ok(m) => m.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect::<Vec<_>>(),
                Err(e) => {
                    tracing::warn!(topic, "partitions unknown, the main loop processes them serially: {e}");
                    Vec::new()
                }
            };
            for partition in partitions {
                if let Some(queue) = consumer.split_partition_queue(topic, partition) {
                    let gate = workers.gate(topic, partition);
                    tasks.spawn(worker(queue, consumer.clone(), gate, ctx.clone(), stop.clone()));
                }
            }
        }
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        if let Err(e) = consumer.subscribe(&topics) {
            tracing::error!("cannot subscribe: {e}");
        } else {
            consume(&consumer, &workers, &ctx, &stop).await;
        }
        stop.cancel();
        while tasks.join_next().await.is_some() {}
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

/// What every worker needs.
#[derive(Clone)]
struct Shared {
    pipeline: Arc<Pipeline>,
    dead_letters: Arc<DeadLetterWriter>,
    status: Arc<ConsumerStatus>,
    instance: Arc<str>,
}

/// Processed offsets not yet handed to librdkafka: the latest per partition.
/// (`rd_kafka_offset_store` takes locks and checks the assignment; once per
/// record it cost more than the pipeline itself.)
#[derive(Default)]
pub struct PendingOffsets {
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

    fn flush<C: Consumer<GatewayContext>>(&mut self, consumer: &C) {
        for (topic, partition, offset) in self.latest.drain(..) {
            if let Err(e) = consumer.store_offset(&topic, partition, offset) {
                // The partition was revoked meanwhile; its new owner will redo the records.
                tracing::warn!(topic, partition, offset, "offset not stored: {e}");
            }
        }
        self.since_flush = 0;
    }
}

/// Processes one record: routed, or dead-lettered. Returns `false` if the
/// dead letter is still unwritten (revoke or shutdown): the offset must then
/// stay unstored.
async fn process_one(message: &BorrowedMessage<'_>, ctx: &Shared, cancel: &CancellationToken) -> bool {
    let record = Record {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key(),
        payload: message.payload(),
        timestamp_ms: message.timestamp().to_millis(),
    };
    let disposition =
        ctx.pipeline.dispose(&record, || headers_of(message), &ctx.dead_letters, &ctx.status.dlq, &ctx.instance, cancel).await;
    disposition == Disposition::Done
}

/// One partition's worker: its records in order, its own offsets.
async fn worker(
    queue: rdkafka::consumer::stream_consumer::StreamPartitionQueue<GatewayContext>,
    consumer: Arc<GatewayConsumer>,
    gate: Arc<WorkerGate>,
    ctx: Shared,
    stop: CancellationToken,
) {
    let mut flush_tick = tokio::time::interval(OFFSET_FLUSH_INTERVAL);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = flush_tick.tick() => {
                gate.pending.lock().await.flush(&*consumer);
                continue;
            }
            m = queue.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("consumer error: {e}");
                continue;
            }
        };
        let mut pending = gate.pending.lock().await;
        if gate.revoked.load(Ordering::SeqCst) {
            continue; // its new owner processes it
        }
        let cancel = gate.cancel.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !process_one(&message, &ctx, &cancel).await {
            // The dead letter is unwritten, so no later record of this
            // partition may be processed: revoked (the revoked flag skips the
            // rest until it is assigned again, from the committed offset) or
            // stopping.
            if gate.revoked.load(Ordering::SeqCst) {
                continue;
            }
            break;
        }
        pending.record(message.topic(), message.partition(), message.offset());
        if pending.since_flush >= PendingOffsets::FLUSH_EVERY {
            pending.flush(&*consumer);
        }
        drop(pending);
        drop(message);
        tokio::task::consume_budget().await;
    }
    gate.pending.lock().await.flush(&*consumer);
}

/// The main queue: serves rebalances and errors, and processes (serially)
/// any record of a partition that has no worker. Returns on shutdown or a
/// fatal error.
async fn consume(consumer: &Arc<GatewayConsumer>, workers: &Workers, ctx: &Shared, shutdown: &CancellationToken) {
    let mut flush_tick = tokio::time::interval(OFFSET_FLUSH_INTERVAL);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut touched: Vec<Arc<WorkerGate>> = Vec::new();
    loop {
        let message = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = flush_tick.tick(), if !touched.is_empty() => {
                for gate in touched.drain(..) {
                    gate.pending.lock().await.flush(&**consumer);
                }
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
        let gate = workers.gate(message.topic(), message.partition());
        let mut pending = gate.pending.lock().await;
        if gate.revoked.load(Ordering::SeqCst) {
            continue;
        }
        let cancel = gate.cancel.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !process_one(&message, ctx, &cancel).await {
            if gate.revoked.load(Ordering::SeqCst) {
                continue; // as in `worker`: nothing more of this partition until it is assigned again
            }
            break; // shutting down with the dead letter unwritten
        }
        pending.record(message.topic(), message.partition(), message.offset());
        if pending.since_flush >= PendingOffsets::FLUSH_EVERY {
            pending.flush(&**consumer);
        }
        drop(pending);
        if !touched.iter().any(|g| Arc::ptr_eq(g, &gate)) {
            touched.push(gate);
        }
        tokio::task::consume_budget().await;
    }
    for gate in touched {
        gate.pending.lock().await.flush(&**consumer);
    }
}

fn headers_of(message: &BorrowedMessage<'_>) -> Vec<(String, Option<Vec<u8>>)> {
    message
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
        .unwrap_or_default()
}
