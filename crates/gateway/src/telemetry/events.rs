//! Outcomes that are both logged and counted, as values (vector's
//! `internal_events`): each is built where it happens and `emit()`ted once,
//! and its `emit` writes the log line and moves the counter with the same
//! code (the `reason` label is the log's `reason` field), so the log and
//! `/metrics` cannot disagree. Outcomes of `deliver` whose series live
//! there have their values there too: `deliver::resume::ResumeOutcome`,
//! `deliver::session::Disconnect`.

use super::Metrics;
use std::fmt::Display;

/// An outcome that is logged and counted by one call.
pub trait InternalEvent {
    fn emit(self, metrics: &Metrics);
}

/// A record the pipeline could not route (`events_failed_total{event_type,reason}`).
pub struct RecordFailed<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// `FailureReason::as_str`.
    pub reason: &'static str,
    /// "unknown" when the record names no known type.
    pub event_type: &'a str,
    pub event_id: Option<&'a str>,
    pub attempts: u32,
    pub message: &'a str,
}

impl InternalEvent for RecordFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.events_failed.with_label_values(&[self.event_type, self.reason]).inc();
        tracing::warn!(
            topic = self.topic, partition = self.partition, offset = self.offset,
            reason = self.reason, eventType = self.event_type, eventId = self.event_id,
            attempts = self.attempts, "record not routed: {}", self.message
        );
    }
}

/// A dead letter written (`dlq_writes_total{reason}`): to the DLQ topic at
/// `at` (partition, offset), or kept in memory (the embedded bus) when `None`.
pub struct DeadLetterWritten<'a> {
    pub id: &'a str,
    pub reason: &'static str,
    pub at: Option<(i32, i64)>,
}

impl InternalEvent for DeadLetterWritten<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.dlq_writes.with_label_values(&[self.reason]).inc();
        match self.at {
            Some((partition, offset)) => tracing::info!(dlq.id = %self.id, reason = self.reason, partition, offset, "dead letter written"),
            None => tracing::info!(dlq.id = %self.id, reason = self.reason, "dead letter kept in memory"),
        }
    }
}

/// The DLQ refused a letter in full; a fallback was written (`dlq_truncated_total{reason}`).
pub struct DeadLetterTruncated<'a> {
    pub id: &'a str,
    pub reason: &'static str,
    pub original_bytes: usize,
}

impl InternalEvent for DeadLetterTruncated<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.dlq_truncated.with_label_values(&[self.reason]).inc();
        tracing::error!(
            dlq.id = %self.id, reason = self.reason, original_bytes = self.original_bytes,
            "the DLQ refused the dead letter in full; wrote a fallback letter without the whole value"
        );
    }
}

/// The DLQ refused a letter for good (too large, invalid): a smaller
/// fallback follows, or, when even that was refused, none (`dlq_write_errors_total`).
pub struct DeadLetterRefused<'a> {
    pub id: &'a str,
    pub reason: &'static str,
    pub error: &'a dyn Display,
    /// Whether a fallback letter is tried next.
    pub fallback_follows: bool,
}

impl InternalEvent for DeadLetterRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.dlq_write_errors.inc();
        if self.fallback_follows {
            tracing::warn!(dlq.id = %self.id, reason = self.reason, "the DLQ refused the dead letter permanently ({}); writing a fallback", self.error);
        } else {
            tracing::error!(dlq.id = %self.id, reason = self.reason, "the DLQ refuses even a headers-only dead letter ({}); moving on without one", self.error);
        }
    }
}

/// Writing a letter failed for a reason that may pass: its partition is
/// held (not moved on) while it is retried (`dlq_write_errors_total`).
pub struct DeadLetterWriteFailed<'a> {
    pub id: &'a str,
    pub reason: &'static str,
    /// `topic/partition`, as `/health` names it.
    pub partition: &'a str,
    pub error: &'a dyn Display,
}

impl InternalEvent for DeadLetterWriteFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.dlq_write_errors.inc();
        tracing::error!(
            dlq.id = %self.id, reason = self.reason, held = self.partition,
            "writing the dead letter failed, holding the offset: {}", self.error
        );
    }
}

/// A connection whose queue overflowed, cut off
/// (`slow_consumer_disconnects_total`, `frames_dropped_total{reason="slow_consumer"}`).
pub struct SlowConsumerCut {
    pub connection: u64,
}

impl SlowConsumerCut {
    pub const LABEL: &'static str = "slow_consumer";
}

impl InternalEvent for SlowConsumerCut {
    fn emit(self, metrics: &Metrics) {
        metrics.slow_consumer_disconnects.inc();
        metrics.frames_dropped.with_label_values(&[Self::LABEL]).inc();
        tracing::warn!(connection = self.connection, reason = Self::LABEL, "slow consumer: queue full, disconnecting");
    }
}

/// A token refused on a WebSocket connection (`auth_refusals_total{reason}`):
/// the client's own words are in its error frame; here the code only,
/// never the token.
pub struct AuthRefused {
    pub connection: u64,
    /// `AuthError::label`, or `revoked`, or `max_connections_per_user`.
    pub reason: &'static str,
}

impl InternalEvent for AuthRefused {
    fn emit(self, metrics: &Metrics) {
        metrics.auth_refusals.with_label_values(&[self.reason]).inc();
        // Debug: a hostile client can send refusals as fast as its rate limit allows.
        tracing::debug!(connection = self.connection, reason = self.reason, "token refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value moves its counter under the label it logs.
    #[test]
    fn each_outcome_counts_under_its_own_reason() {
        let m = Metrics::new();
        RecordFailed { topic: "t", partition: 0, offset: 1, reason: "invalid_json", event_type: "unknown", event_id: None, attempts: 1, message: "x" }.emit(&m);
        DeadLetterWritten { id: "t/0/1", reason: "invalid_json", at: Some((0, 7)) }.emit(&m);
        DeadLetterTruncated { id: "t/0/1", reason: "invalid_json", original_bytes: 10 }.emit(&m);
        DeadLetterRefused { id: "t/0/1", reason: "invalid_json", error: &"too large", fallback_follows: true }.emit(&m);
        DeadLetterWriteFailed { id: "t/0/1", reason: "invalid_json", partition: "t/0", error: &"broker down" }.emit(&m);
        SlowConsumerCut { connection: 3 }.emit(&m);
        AuthRefused { connection: 3, reason: "expired" }.emit(&m);
        assert_eq!(m.events_failed.with_label_values(&["unknown", "invalid_json"]).get(), 1);
        assert_eq!(m.dlq_writes.with_label_values(&["invalid_json"]).get(), 1);
        assert_eq!(m.dlq_truncated.with_label_values(&["invalid_json"]).get(), 1);
        assert_eq!(m.dlq_write_errors.get(), 2);
        assert_eq!(m.slow_consumer_disconnects.get(), 1);
        assert_eq!(m.frames_dropped.with_label_values(&["slow_consumer"]).get(), 1);
        assert_eq!(m.auth_refusals.with_label_values(&["expired"]).get(), 1);
    }
}
