//! Sources: where records come from. The Kafka consumer (`kafka`) is the
//! production source; each hands every record to the pipeline in order and
//! learns the outcome before it moves its position.

pub mod kafka;

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
