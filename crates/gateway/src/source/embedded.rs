//! The embedded bus: an in-process, in-memory topic for `moonx-ws dev`, so
//! the gateway can be tried without Kafka. Records go through exactly the
//! same pipeline as Kafka records; dead letters are kept in memory.
//!
//! Delivery semantics: at-most-once across restarts (nothing is persisted),
//! in order within the process: one queue, offsets assigned in publish order.
//! It is a way to try the gateway, not a replacement for Kafka.

use crate::kafka::producer::Delivered;
use crate::pipeline::dead_letter::{DeadLetterWriter, DlqHealth};
use crate::pipeline::{Disposition, Pipeline, Record};
use std::sync::Arc;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

/// One record on the bus.
#[derive(Debug, Clone)]
pub struct BusRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// The writing end of the bus.
pub struct EmbeddedBus {
    topic: String,
    sender: Mutex<(mpsc::Sender<BusRecord>, i64)>,
}

impl EmbeddedBus {
    /// A bus with room for `capacity` unprocessed records (publishers wait beyond it).
    pub fn new(topic: &str, capacity: usize) -> (Arc<EmbeddedBus>, mpsc::Receiver<BusRecord>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Arc::new(EmbeddedBus { topic: topic.into(), sender: Mutex::new((tx, 0)) }), rx)
    }

    /// Appends a record; offsets follow publish order.
    pub async fn publish(&self, key: Option<&[u8]>, payload: Vec<u8>) -> anyhow::Result<Delivered> {
        let mut guard = self.sender.lock().await;
        let offset = guard.1;
        let record = BusRecord {
            topic: self.topic.clone(),
            key: key.map(<[u8]>::to_vec),
            payload,
            offset,
            timestamp_ms: moonx_events::validate::now_ms() as i64,
        };
        guard.0.send(record).await.map_err(|_| anyhow::anyhow!("the embedded bus is closed"))?;
        guard.1 += 1;
        Ok(Delivered { partition: 0, offset })
    }
}

/// Feeds the bus into the pipeline until `shutdown`.
pub async fn run(
    mut records: mpsc::Receiver<BusRecord>,
    pipeline: Arc<Pipeline>,
    dead_letters: DeadLetterWriter,
    instance: String,
    shutdown: CancellationToken,
) {
    let health = DlqHealth::default();
    loop {
        let r = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = records.recv() => match r { Some(r) => r, None => break },
        };
        let record = Record {
            topic: &r.topic,
            partition: 0,
            offset: r.offset,
            key: r.key.as_deref(),
            payload: Some(&r.payload),
            timestamp_ms: Some(r.timestamp_ms),
        };
        // Memory letters never fail: a hold only means shutdown.
        if pipeline.dispose(&record, Vec::new, &dead_letters, &health, &instance, &shutdown).await == Disposition::Hold {
            break;
        }
        tokio::task::consume_budget().await;
    }
}
