//! What happens to each record: decode (and migrate legacy messages) →
//! validate → route to the hub, or fail with a typed reason and a dead
//! letter (`Pipeline::dispose`, the one place letters are written; a source
//! only learns whether to move its position on or hold the partition).
//!
//! The pipeline is the same whatever the source (Kafka or the embedded bus):
//! there is no second code path for any stage.
//!
//! A `session.revoked` event is also applied here, on every instance: the
//! user's connections its time covers are closed and the revocation is
//! remembered for the window (`Hub::revoke_user`), before it is routed to
//! the operators like any internal event.

pub mod audit;
pub mod dead_letter;
pub mod router;
pub mod skip;

use crate::deliver::Hub;
use crate::telemetry::events::{InternalEvent, RecordFailed};
use crate::telemetry::Metrics;
use moonx_events::decode::{decode_event_ref, DecodeOptions};
use moonx_events::{DataRef, DecodeError, EventRef, EventType, ValidationErrors};
use router::{HandlerError, Router};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One record as the pipeline sees it, borrowed from the source's buffer: the
/// pipeline's input contract, which every source fills.
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

/// Why a record was not routed. Codes are stable: they are the DLQ reasons
/// and the `reason` label of `events_failed_total`. The codes of a record
/// that does not decode are the decoder's own ([`DecodeError::code`]:
/// `invalid_json`, `invalid_event`, `legacy_unmigratable`), the same the
/// publish API, `tail` and `dlq replay` report: one code set, not a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// A record without a value (tombstone).
    EmptyRecord,
    /// The value does not decode into an event: the [`DecodeError::code`].
    Undecodable(&'static str),
    /// No handler is registered for the event type.
    NoHandler,
    /// The handler failed permanently, or transiently past the retry budget,
    /// or returned a route wider than the event's classification allows.
    HandlerFailed,
    /// A confidential or restricted event (effective classification) that
    /// names no owner: nobody may see it.
    NoAudience,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::EmptyRecord => "empty_record",
            FailureReason::Undecodable(code) => code,
            FailureReason::NoHandler => "no_handler",
            FailureReason::HandlerFailed => "handler_failed",
            FailureReason::NoAudience => "no_audience",
        }
    }
}

impl From<&DecodeError> for FailureReason {
    fn from(e: &DecodeError) -> Self {
        FailureReason::Undecodable(e.code())
    }
}

impl serde::Serialize for FailureReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A record the pipeline could not route, with everything the DLQ needs.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: FailureReason,
    /// Our own words (boxed: a failure travels in a `Result`, kept small).
    pub message: Box<str>,
    pub errors: Option<ValidationErrors>,
    pub attempts: u32,
    pub event_type: Option<String>,
    pub event_id: Option<String>,
}

impl Failure {
    fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        Failure { reason, message: message.into().into_boxed_str(), errors: None, attempts: 1, event_type: None, event_id: None }
    }

    fn for_event(mut self, event: &EventRef<'_>) -> Self {
        self.event_type = Some(event.metadata.event_type.to_string());
        self.event_id = Some(event.metadata.event_id.to_string());
        self
    }
}

/// The outcome of one record.
#[derive(Debug)]
pub enum Outcome {
    /// Routed to `deliveries` hub deliveries (0 is possible: a handler may
    /// decide an event goes nowhere).
    Routed { deliveries: usize },
    Failed(Failure),
    /// Not decoded: nobody on this instance could receive it (`skip`).
    Skipped(skip::SkipReason),
}

/// What a source does with its position after [`Pipeline::dispose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Routed, or its dead letter acknowledged: store the offset, go on.
    Done,
    /// Its dead letter is still unwritten (cancelled by a revoke or
    /// shutdown): store neither this offset nor any later one of the partition.
    Hold,
}

/// Settings of the processing stages.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub validate: bool,
    pub handler_max_attempts: u32,
    pub handler_retry_backoff: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        use crate::config::defaults;
        PipelineOptions {
            validate: defaults::EVENT_VALIDATION_ENABLED,
            handler_max_attempts: defaults::HANDLER_MAX_ATTEMPTS,
            handler_retry_backoff: Duration::from_millis(defaults::HANDLER_RETRY_BACKOFF_MS),
        }
    }
}

pub struct Pipeline {
    /// `events_processed_total` of each built-in type, resolved once
    /// (a label lookup per event hashes the label strings).
    processed_built_in: Vec<prometheus::IntCounter>,
    /// `events_consumed_total` of the first topic seen (a gateway consumes
    /// one topic), resolved once for the same reason.
    consumed_first_topic: std::sync::OnceLock<(Box<str>, prometheus::IntCounter)>,
    router: Router,
    hub: Hub,
    metrics: Arc<Metrics>,
    options: PipelineOptions,
    audit: Option<audit::AuditLog>,
    /// Set on an instance that does not write dead letters (`skip`).
    skip: Option<skip::Skip>,
}

impl Pipeline {
    pub fn new(
        router: Router,
        hub: Hub,
        metrics: Arc<Metrics>,
        options: PipelineOptions,
        audit: Option<audit::AuditLog>,
    ) -> Self {
        let processed_built_in =
            EventType::BUILT_IN.iter().map(|t| metrics.events_processed.with_label_values(&[t.as_str()])).collect();
        Pipeline { processed_built_in, consumed_first_topic: std::sync::OnceLock::new(), router, hub, metrics, options, audit, skip: None }
    }

    /// Skips, before decoding, records nobody connected here could receive
    /// (`skip`; only for an instance that does not write dead letters).
    pub fn skip_without_local_audience(mut self) -> Self {
        self.skip = Some(skip::Skip::new(self.hub.local_audience(), &self.router, self.metrics.clone()));
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Decodes, validates and routes one record.
    /// Processes a record and, if it fails, writes its dead letter (see
    /// [`dead_letter::DeadLetterWriter::write`]): the one place that does so,
    /// whatever the source. `headers` gives the record's headers, read only
    /// for a letter. The source learns what to do with its position.
    pub async fn dispose(
        &self,
        record: &Record<'_>,
        headers: impl FnOnce() -> Vec<(String, Option<Vec<u8>>)>,
        dead_letters: &dead_letter::DeadLetterWriter,
        health: &dead_letter::DlqHealth,
        instance: &str,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Disposition {
        if let Outcome::Failed(failure) = self.process(record).await {
            let letter = dead_letter::DeadLetter::new(record, headers(), failure, instance);
            let partition = format!("{}/{}", record.topic, record.partition);
            if !dead_letters.write(&letter, &self.metrics, health, &partition, cancel).await {
                return Disposition::Hold;
            }
        }
        Disposition::Done
    }

    pub async fn process(&self, record: &Record<'_>) -> Outcome {
        if let Some(skip) = &self.skip
            && skip.should_skip(record)
        {
            return Outcome::Skipped(skip::SkipReason::NoLocalAudience);
        }
        // Timing every record would cost two clock reads per record: sample
        // 1 in 64 records of each worker thread.
        let started = sample_this_record().then(Instant::now);
        self.count_consumed(record.topic);
        let outcome = match self.decode(record) {
            Ok((event, original)) => self.route(record, &event, original).await,
            Err(failure) => Outcome::Failed(failure),
        };
        if let Some(started) = started {
            self.metrics.pipeline_seconds.observe(started.elapsed().as_secs_f64());
        }
        // resume: a record that reached no one still moves its partition's live boundary.
        if !matches!(outcome, Outcome::Routed { deliveries } if deliveries > 0) {
            self.hub.note_processed(at_of(record));
        }
        if let Outcome::Failed(f) = &outcome {
            RecordFailed {
                topic: record.topic,
                partition: record.partition,
                offset: record.offset,
                reason: f.reason.as_str(),
                event_type: f.event_type.as_deref().unwrap_or("unknown"),
                event_id: f.event_id.as_deref(),
                attempts: f.attempts,
                message: &f.message,
            }
            .emit(&self.metrics);
        }
        outcome
    }

    fn count_consumed(&self, topic: &str) {
        let (first, counter) = self
            .consumed_first_topic
            .get_or_init(|| (topic.into(), self.metrics.events_consumed.with_label_values(&[topic])));
        if **first == *topic {
            counter.inc();
        } else {
            self.metrics.events_consumed.with_label_values(&[topic]).inc();
        }
    }

    /// The event, borrowed from the record, and whether the record's bytes
    /// are the envelope as-is (so they can be forwarded without
    /// re-serializing).
    fn decode<'r>(&self, record: &Record<'r>) -> Result<(EventRef<'r>, bool), Failure> {
        let Some(payload) = record.payload else {
            return Err(Failure::new(FailureReason::EmptyRecord, "the record has no value"));
        };
        let options = DecodeOptions {
            registry: self.router.registry(),
            validate: self.options.validate,
            now_ms: Some(crate::telemetry::coarse_clock::now_ms()),
            topic: Some(record.topic),
        };
        match decode_event_ref(payload, &options) {
            Ok(event) => {
                let original = event.metadata.migrated_from.is_none();
                Ok((event, original))
            }
            Err(e) => {
                for err in e.validation_errors().into_iter().flat_map(|errs| errs.iter()) {
                    self.metrics.validation_failures.with_label_values(&[err.code.as_str()]).inc();
                }
                let mut failure = Failure::new(FailureReason::from(&e), e.to_string());
                failure.errors = e.validation_errors().cloned();
                let (event_type, event_id) = peek_ids(payload);
                failure.event_type = event_type.filter(|t| self.router.registry().is_known(&moonx_events::EventType::parse(t)));
                failure.event_id = event_id.filter(|id| uuid::Uuid::try_parse(id).is_ok());
                Err(failure)
            }
        }
    }

    async fn route(&self, record: &Record<'_>, event: &EventRef<'_>, original: bool) -> Outcome {
        if let DataRef::SessionRevoked(r) = &event.data {
            let closed = self.hub.revoke_user(&r.user_id, r.revoked_at);
            tracing::info!(user = %r.user_id, revokedAt = r.revoked_at, closed, eventId = %event.metadata.event_id, "session.revoked applied");
        }
        if !self.router.has_handler(&event.metadata.event_type) {
            return Outcome::Failed(
                Failure::new(FailureReason::NoHandler, format!("no handler for {}", event.metadata.event_type)).for_event(event),
            );
        }
        let mut attempt = 1;
        let routes = loop {
            match self.router.routes(event).expect("a handler is registered") {
                Ok(routes) => break routes,
                Err(HandlerError::Transient(msg)) if attempt < self.options.handler_max_attempts => {
                    self.metrics.handler_retries.with_label_values(&[event.metadata.event_type.as_str()]).inc();
                    tracing::debug!(eventId = %event.metadata.event_id, attempt, "transient handler error, retrying: {msg}");
                    tokio::time::sleep(self.options.handler_retry_backoff * 2u32.pow(attempt - 1)).await;
                    attempt += 1;
                }
                Err(e) => {
                    let reason = match e {
                        HandlerError::NoAudience(_) => FailureReason::NoAudience,
                        _ => FailureReason::HandlerFailed,
                    };
                    let mut f = Failure::new(reason, e.to_string()).for_event(event);
                    f.attempts = attempt;
                    return Outcome::Failed(f);
                }
            }
        };
        let payload = if original { record.payload } else { None };
        let deliveries = routes.len();
        for route in routes {
            if let Some(audit) = &self.audit {
                audit.record(record, event, &route);
            }
            self.hub.publish_at(route, event, payload, Some(at_of(record)));
        }
        match EventType::BUILT_IN.iter().position(|t| *t == event.metadata.event_type) {
            Some(i) => self.processed_built_in[i].inc(),
            None => self.metrics.events_processed.with_label_values(&[event.metadata.event_type.as_str()]).inc(),
        }
        tracing::debug!(
            eventId = %event.metadata.event_id, correlationId = %event.metadata.correlation_id,
            eventType = %event.metadata.event_type, deliveries, "routed"
        );
        Outcome::Routed { deliveries }
    }
}

/// Whether to time this record for `pipeline_seconds`: 1 in 64 per thread,
/// so that the histogram stays a fair sample without a clock read per record.
fn sample_this_record() -> bool {
    const SAMPLE_EVERY: u32 = 64;
    thread_local! {
        static SEEN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    SEEN.with(|seen| {
        let n = seen.get().wrapping_add(1);
        seen.set(n);
        n % SAMPLE_EVERY == 1
    })
}

// ---- resume (SPEC 6.1) ----

fn at_of<'a>(record: &Record<'a>) -> crate::deliver::resume::At<'a> {
    crate::deliver::resume::At { topic: record.topic, partition: record.partition, offset: record.offset }
}

impl Pipeline {
    /// A record read again for a resume: the same decode, handler and
    /// entitlement check as live, the frames built as live builds them,
    /// nothing published or counted as processed. A record that fails for
    /// good yields nothing (it was dead-lettered when it was live). A
    /// transient handler error is returned: live may have delivered the
    /// event after a retry, so the resume cannot prove it complete.
    pub fn replay(&self, record: &Record<'_>) -> Result<Vec<crate::deliver::resume::Replayed>, HandlerError> {
        let Ok((event, original)) = self.decode(record) else { return Ok(Vec::new()) };
        // The same routes as live (handler + entitlement).
        let routes = match self.router.routes(&event) {
            Some(Ok(routes)) => routes,
            Some(Err(e @ HandlerError::Transient(_))) => return Err(e),
            None | Some(Err(_)) => return Ok(Vec::new()),
        };
        let payload = if original { record.payload } else { None };
        let at = at_of(record);
        Ok(routes
            .into_iter()
            .map(|route| crate::deliver::resume::Replayed {
                offset: record.offset,
                frame: self.hub.frame_of(route.channel, &event, payload, Some(&at)),
                route,
            })
            .collect())
    }
}

/// Best-effort event type and id of an undecodable record, for the failure
/// label and the dead letter's headers (only ones that name a known type or
/// parse as a UUID are kept, so they are short).
fn peek_ids(payload: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Peek {
        metadata: PeekMeta,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct PeekMeta {
        event_type: Option<serde_json::Value>,
        event_id: Option<serde_json::Value>,
    }
    let text = |v: Option<serde_json::Value>| v.and_then(|v| v.as_str().map(str::to_owned));
    match serde_json::from_slice::<Peek>(payload) {
        Ok(p) => (text(p.metadata.event_type), text(p.metadata.event_id)),
        Err(_) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonx_events::decode::decode_event;
    use moonx_events::TypeRegistry;

    /// A record that does not decode fails with the decoder's own code, in
    /// the label, the dead letter's reason and the JSON alike.
    #[test]
    fn undecodable_records_fail_with_the_decoders_code() {
        let registry = TypeRegistry::new();
        let options = DecodeOptions::new(&registry);
        let legacy = DecodeError::Legacy(moonx_events::legacy::LegacyError::UnknownType("x".into()));
        let errors = [
            decode_event(b"not json", &options).unwrap_err(),
            decode_event(b"{\"metadata\":{}}", &options).unwrap_err(),
            legacy,
        ];
        let codes: Vec<&str> = errors.iter().map(|e| FailureReason::from(e).as_str()).collect();
        assert_eq!(codes, ["invalid_json", "invalid_event", "legacy_unmigratable"]);
        for e in &errors {
            assert_eq!(FailureReason::from(e).as_str(), e.code());
            assert_eq!(serde_json::to_value(FailureReason::from(e)).unwrap(), e.code());
        }
        assert_eq!(serde_json::to_value(FailureReason::NoAudience).unwrap(), "no_audience");
    }
}
