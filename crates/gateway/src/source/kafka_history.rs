//! Kafka as the history of resume (SPEC 6.1): the records a resuming client
//! missed beyond the in-memory window, read from the partition itself.
//!
//! Guarantees:
//! * **Shared per partition.** Resumers of one partition queue up on it;
//!   one read pass serves every resumer waiting when it starts (it reads
//!   from the earliest `since` to the latest boundary, once). A reconnect
//!   storm costs a pass per partition, not a reader per client.
//! * **Bounded.** At most `RESUME_MAX_READERS` passes run at once (the
//!   `resume_kafka_readers_active` gauge); each resumer waits at most
//!   `RESUME_TIMEOUT_MS`, then is answered `recovered:false`.
//! * **Filtered before decoding.** A record is decoded only when its key is
//!   the userId of a waiting resumer (user events are keyed by userId), and
//!   then goes through the live pipeline's decode, handler and entitlement
//!   check (`Pipeline::replay`); the session then applies the hub's live
//!   delivery rule with the connection's identity.
//! * **Never a silent gap.** A resumer whose first missed offset is before
//!   the partition's log start (retention, deleted records) gets
//!   `BeforeLogStart`; a read that cannot finish gets an error; either way
//!   the client is told `recovered:false`.
//! * Readers are plain assigned consumers: no group membership, no commits.

use crate::deliver::resume::{History, HistoryError, HistoryFuture, HistoryRequest, Replayed, ResumeMetrics};
use crate::pipeline::Pipeline;
use crate::pipeline::Record;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};

type Reply = oneshot::Sender<Result<Vec<Replayed>, HistoryError>>;

struct Waiter {
    request: HistoryRequest,
    reply: Reply,
}

struct Inner {
    brokers: String,
    pipeline: Arc<Pipeline>,
    readers: Semaphore,
    timeout: Duration,
    metrics: ResumeMetrics,
    /// Resumers waiting, per partition; a key is present while that
    /// partition's pass task runs.
    waiting: Mutex<HashMap<(String, i32), Vec<Waiter>>>,
}

/// The shared readers; cheap to clone.
#[derive(Clone)]
pub struct KafkaHistory {
    inner: Arc<Inner>,
}

impl KafkaHistory {
    pub fn new(brokers: &str, pipeline: Arc<Pipeline>, max_readers: usize, timeout: Duration, metrics: ResumeMetrics) -> Self {
        KafkaHistory {
            inner: Arc::new(Inner {
                brokers: brokers.to_owned(),
                pipeline,
                readers: Semaphore::new(max_readers.max(1)),
                timeout,
                metrics,
                waiting: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl History for KafkaHistory {
    fn read(&self, request: HistoryRequest) -> HistoryFuture {
        let (reply, answer) = oneshot::channel();
        let key = (request.topic.clone(), request.partition);
        let start_pass = {
            let mut waiting = self.inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = !waiting.contains_key(&key);
            waiting.entry(key.clone()).or_default().push(Waiter { request, reply });
            fresh
        };
        if start_pass {
            tokio::spawn(passes(self.inner.clone(), key));
        }
        let timeout = self.inner.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(HistoryError::Failed),
                Err(_) => Err(HistoryError::Timeout),
            }
        })
    }
}

/// Runs passes over one partition until nobody waits for it.
async fn passes(inner: Arc<Inner>, key: (String, i32)) {
    loop {
        let Ok(permit) = inner.readers.acquire().await else { return };
        // Taken after the permit: everyone who queued meanwhile shares this pass.
        let batch = {
            let mut waiting = inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let batch = waiting.get_mut(&key).map(std::mem::take).unwrap_or_default();
            if batch.is_empty() {
                waiting.remove(&key);
                return;
            }
            batch
        };
        inner.metrics.readers_active.inc();
        inner.metrics.reader_passes.inc();
        let pass_inner = inner.clone();
        let (topic, partition) = key.clone();
        let requests: Vec<HistoryRequest> = batch.iter().map(|w| w.request.clone()).collect();
        let results = tokio::task::spawn_blocking(move || read_pass(&pass_inner, &topic, partition, &requests))
            .await
            .unwrap_or_else(|_| Vec::new());
        inner.metrics.readers_active.dec();
        drop(permit);
        let mut results = results.into_iter();
        for waiter in batch {
            let _ = waiter.reply.send(results.next().unwrap_or(Err(HistoryError::Failed)));
        }
    }
}

/// One pass: reads `topic`/`partition` from the earliest `since + 1` to the
/// latest `until` of `requests`, and answers each of them (same order).
fn read_pass(inner: &Inner, topic: &str, partition: i32, requests: &[HistoryRequest]) -> Vec<Result<Vec<Replayed>, HistoryError>> {
    let deadline = Instant::now() + inner.timeout;
    let mut answers: Vec<Result<Vec<Replayed>, HistoryError>> = requests.iter().map(|_| Ok(Vec::new())).collect();
    let fail_all = |e: HistoryError| requests.iter().map(|_| Err(e)).collect::<Vec<_>>();
    let consumer: BaseConsumer = match crate::kafka::client_config(&inner.brokers)
        .set("group.id", "moonx-ws-resume")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A position that retention removed meanwhile is an error, never a silent jump.
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "true")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(topic, partition, "resume reader not created: {e}");
            return fail_all(HistoryError::Failed);
        }
    };
    let (low, _high) = match consumer.fetch_watermarks(topic, partition, deadline.saturating_duration_since(Instant::now())) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(topic, partition, "resume reader: no watermarks: {e}");
            return fail_all(HistoryError::Failed);
        }
    };
    // Who is still being read for, by record key.
    let mut readable: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        if r.since + 1 < low {
            answers[i] = Err(HistoryError::BeforeLogStart);
        } else if r.since < r.until {
            readable.entry(r.key.as_str()).or_default().push(i);
        }
    }
    let Some(from) = readable.values().flatten().map(|&i| requests[i].since + 1).min() else { return answers };
    let until = readable.values().flatten().map(|&i| requests[i].until).max().unwrap_or(from);
    let mut tpl = TopicPartitionList::new();
    if tpl.add_partition_offset(topic, partition, Offset::Offset(from)).is_err() || consumer.assign(&tpl).is_err() {
        return fail_all(HistoryError::Failed);
    }
    let mut decoded = 0u64;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return fail_all(HistoryError::Timeout);
        }
        let message = match consumer.poll(left.min(Duration::from_millis(200))) {
            None => continue,
            // The end of the log before the boundary: records are missing (deleted meanwhile?).
            Some(Err(KafkaError::PartitionEOF(_))) => {
                tracing::warn!(topic, partition, from, until, "resume reader: end of the log before the live boundary");
                return fail_all(HistoryError::Failed);
            }
            Some(Err(e)) => {
                tracing::warn!(topic, partition, from, until, "resume reader: {e}");
                return fail_all(HistoryError::Failed);
            }
            Some(Ok(m)) => m,
        };
        let offset = message.offset();
        if offset > until {
            break;
        }
        // The key filter, before any decoding.
        let Some(waiters) = message.key().and_then(|k| std::str::from_utf8(k).ok()).and_then(|k| readable.get(k)) else {
            if offset == until {
                break;
            }
            continue;
        };
        let waiters: Vec<usize> = waiters
            .iter()
            .copied()
            .filter(|&i| requests[i].since < offset && offset <= requests[i].until && answers[i].is_ok())
            .collect();
        if !waiters.is_empty() {
            let record = Record {
                topic: message.topic(),
                partition: message.partition(),
                offset,
                key: message.key(),
                payload: message.payload(),
                timestamp_ms: message.timestamp().to_millis(),
            };
            decoded += 1;
            let replayed = match inner.pipeline.replay(&record) {
                Ok(r) => r,
                Err(e) => {
                    // Live may have delivered it after a retry: not provable.
                    tracing::warn!(topic, partition, offset, "resume reader: {e}");
                    for i in waiters {
                        answers[i] = Err(HistoryError::Failed);
                    }
                    continue;
                }
            };
            for i in waiters {
                let Ok(list) = &mut answers[i] else { continue };
                list.extend(replayed.iter().map(|r| Replayed { offset: r.offset, route: r.route.clone(), frame: r.frame.clone() }));
                if list.len() > requests[i].max_events {
                    answers[i] = Err(HistoryError::TooMany);
                }
            }
        }
        if offset >= until {
            break;
        }
    }
    tracing::debug!(topic, partition, from, until, resumers = requests.len(), decoded, "resume read pass");
    answers
}
