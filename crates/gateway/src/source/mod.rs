//! Sources: where records come from. The Kafka consumer (`kafka`) is the
//! production source, the embedded bus (`embedded`) the one of `moonx-ws
//! dev`; each hands every record to the pipeline in order and learns the
//! outcome before it moves its position. `publish` writes into either;
//! `revocations` reads the revocations still in force back at start-up.

pub mod embedded;
pub mod kafka;
pub mod kafka_history;
pub mod publish;
pub mod revocations;

/// One record as the pipeline sees it, borrowed from the source's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// Broker or producer timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}
