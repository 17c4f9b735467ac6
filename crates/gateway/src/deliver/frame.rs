//! An event frame on its way to connections: built once per routed event
//! (`Hub::frame_of`) and shared by every recipient's queue, the resume
//! window and the latest-price cache (an `Arc`, so a queue slot is one
//! pointer). Its own module so that the hub and `resume`, which both hold
//! frames, depend on it and not on each other.

use super::Channel;
use axum::extract::ws::Utf8Bytes;
use std::sync::Arc;

/// A frame as queued: shared, never copied.
pub type Outbound = Arc<Frame>;

#[derive(Debug, Clone)]
pub struct Frame {
    pub event_id: u128,
    pub timestamp_ms: u64,
    pub channel: Channel,
    /// The record's offset in its partition, -1 when unknown (resume: the
    /// session skips live frames its client already has).
    pub offset: i64,
    pub frame: Utf8Bytes,
    /// `frame` compressed for permessage-deflate, made by the first
    /// connection that needs it and shared by the others (`socket::compressed_of`).
    pub deflated: std::sync::OnceLock<Option<bytes::Bytes>>,
}

/// Frame bytes as WebSocket text.
pub fn utf8(bytes: Vec<u8>) -> Utf8Bytes {
    // The frame is our own JSON around a decoded (hence UTF-8) envelope.
    Utf8Bytes::try_from(bytes::Bytes::from(bytes)).unwrap_or_else(|_| Utf8Bytes::from("{}"))
}
