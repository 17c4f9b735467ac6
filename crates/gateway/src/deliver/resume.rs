//! Stream positions and resume (SPEC 6.1): a client that reconnects with the
//! `pos` of the last event it got receives exactly what it missed on that
//! channel, then the live stream, with no gap and no duplicate at the seam;
//! or, when the server cannot prove that, `recovered:false` and live only.
//!
//! **Positions** are Kafka coordinates, so they mean the same on every
//! instance: `1.<topic>.<partition>.<offset>.<generation>`, where `<topic>`
//! is base64url (topic names may contain dots), and `<generation>` is `p<N>`
//! (the topic had N partitions when the record was routed: a changed count
//! moves users to other partitions, so an old position proves nothing) or
//! `e<hex>` (the embedded bus's epoch, drawn at process start: a restarted
//! dev server is another stream). Parsing is total: anything else is
//! [`PositionError`], never a panic.
//!
//! **The seam.** The hub keeps, per partition, the last offset `L` this
//! process has processed (routed or dead-lettered), updated under the hub
//! lock as the record is published. A resume reads `L` and registers the
//! subscription under that same lock, so every record after `L` reaches the
//! connection live and every record up to `L` comes from the replay
//! `(since, L]`. The session holds its live queue until the replay is
//! written, so order holds.
//!
//! **Skipped records** (an instance that does not write dead letters skips,
//! undecoded, what no local client may receive: `pipeline::skip`) count as
//! processed for `L`, and the window never held them: a resume whose
//! `since` is before the last record of its user's key that was skipped
//! before the user connected reads Kafka instead (`super::audience`).
//!
//! **Where the replay comes from.** First a bounded in-memory window per
//! partition of the private frames routed recently (the same `Arc`'d frames
//! the live path built, so the window costs the frames' bytes plus a few
//! words each); it answers when it covers `(since, L]` entirely. Beyond it,
//! a [`History`] (the shared per-partition Kafka readers of
//! `source::kafka_history`) reads the partition from `since + 1` to `L`,
//! filtered by record key before decoding, through the same pipeline.
//! Whatever the source, a replayed frame goes to the connection only if
//! [`super::hub`]'s live entitlement rule admits it with the connection's
//! identity at resume time.
//!
//! **When the answer is `recovered:false`**: a position that does not parse,
//! names another topic, generation or epoch, or a partition that the
//! connection's user is not keyed to; a partition this process has neither
//! processed a record of nor knows the committed start of (it cannot tell
//! what it skipped); a replay longer than `RESUME_MAX_EVENTS`; a position
//! more than `RESUME_MAX_SCAN_RECORDS` behind the live boundary, or before
//! the log start (retention or deleted records); a Kafka read that fails or
//! times out.

use super::frame::Outbound;
use super::Channel;
use crate::deliver::Route;
use base64::Engine as _;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Version tag of the position format.
const POSITION_VERSION: &str = "1";
/// Longest `since` accepted: a topic name (≤ 249 bytes) in base64 plus numbers.
pub const MAX_POSITION_LEN: usize = 400;

/// What makes a topic's offsets comparable across time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generation {
    /// A Kafka topic with this many partitions.
    Partitions(i32),
    /// The embedded bus of one process.
    Epoch(u64),
}

/// A record's place in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub generation: Generation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a stream position")]
pub struct PositionError;

impl Position {
    pub fn encode(&self) -> String {
        let topic = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.topic.as_bytes());
        let generation = match self.generation {
            Generation::Partitions(n) => format!("p{n}"),
            Generation::Epoch(e) => format!("e{e:x}"),
        };
        format!("{POSITION_VERSION}.{topic}.{}.{}.{generation}", self.partition, self.offset)
    }

    /// Total: any string gives a position or an error.
    pub fn parse(s: &str) -> Result<Position, PositionError> {
        if s.len() > MAX_POSITION_LEN {
            return Err(PositionError);
        }
        let parts: Vec<&str> = s.split('.').collect();
        let [version, topic, partition, offset, generation] = parts[..] else { return Err(PositionError) };
        if version != POSITION_VERSION {
            return Err(PositionError);
        }
        let topic = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(topic).map_err(|_| PositionError)?;
        let topic = String::from_utf8(topic).map_err(|_| PositionError)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if topic.is_empty() || !digits(partition) || !digits(offset) {
            return Err(PositionError);
        }
        let partition: i32 = partition.parse().map_err(|_| PositionError)?;
        let offset: i64 = offset.parse().map_err(|_| PositionError)?;
        let generation = match generation.split_at_checked(1) {
            Some(("p", n)) if digits(n) => Generation::Partitions(n.parse().ok().filter(|n| *n > 0).ok_or(PositionError)?),
            Some(("e", hex)) if !hex.is_empty() && hex.len() <= 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Generation::Epoch(u64::from_str_radix(hex, 16).map_err(|_| PositionError)?)
            }
            _ => return Err(PositionError),
        };
        Ok(Position { topic, partition, offset, generation })
    }
}

/// Where a record sits, as the source saw it.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// How producers spread keys over partitions, so that the server can tell
/// whether a position is on the partition of the connection's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioner {
    /// librdkafka's default (`consistent_random`): CRC-32 of the key. Our
    /// own producers (`produce`, the publish API, presence) use it.
    #[default]
    Consistent,
    /// The Java client's default: murmur2 of the key.
    Murmur2,
}

impl Partitioner {
    pub fn parse(s: &str) -> Option<Partitioner> {
        match s {
            "consistent" => Some(Partitioner::Consistent),
            "murmur2" => Some(Partitioner::Murmur2),
            _ => None,
        }
    }

    pub fn partition_of(self, key: &[u8], partitions: i32) -> i32 {
        if partitions <= 0 {
            return -1;
        }
        let hash = match self {
            Partitioner::Consistent => crc32fast::hash(key),
            Partitioner::Murmur2 => murmur2(key) & 0x7fff_ffff,
        };
        (hash % partitions as u32) as i32
    }
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The generation of each topic the source reads, set by the source (the
/// Kafka consumer on each assignment, the embedded bus at start). Frames of
/// a topic without one carry no `pos`.
#[derive(Debug, Default)]
pub struct Streams {
    generations: Mutex<HashMap<String, Generation>>,
    /// Where the source starts reading each partition (the committed
    /// offset), so that a partition with no record since start-up still has
    /// a live boundary: everything before it is history, everything from it
    /// comes live.
    starts: Mutex<HashMap<(String, i32), i64>>,
}

impl Streams {
    pub fn set(&self, topic: &str, generation: Generation) {
        self.generations.lock().unwrap_or_else(|p| p.into_inner()).insert(topic.to_owned(), generation);
    }

    pub fn set_start(&self, topic: &str, partition: i32, next_offset: i64) {
        self.starts.lock().unwrap_or_else(|p| p.into_inner()).insert((topic.to_owned(), partition), next_offset);
    }

    pub fn start_of(&self, topic: &str, partition: i32) -> Option<i64> {
        self.starts.lock().unwrap_or_else(|p| p.into_inner()).get(&(topic.to_owned(), partition)).copied()
    }

    pub fn get(&self, topic: &str) -> Option<Generation> {
        self.generations.lock().unwrap_or_else(|p| p.into_inner()).get(topic).copied()
    }

    /// The `pos` of a record, when its topic's generation is known.
    pub fn position_of(&self, at: &At<'_>) -> Option<String> {
        let generation = self.get(at.topic)?;
        Some(Position { topic: at.topic.to_owned(), partition: at.partition, offset: at.offset, generation }.encode())
    }
}

impl ResumeSettings {
    /// The settings of `RESUME_*` and `KAFKA_PARTITIONER`.
    pub fn from_args(args: &crate::config::ResumeArgs) -> Self {
        ResumeSettings {
            window_events: args.resume_window_events,
            window_bytes: args.resume_window_bytes,
            max_events: args.resume_max_events as usize,
            max_readers: args.resume_max_readers as usize,
            max_scan_records: args.resume_max_scan_records,
            timeout: Duration::from_millis(args.resume_timeout_ms),
            partitioner: Partitioner::parse(&args.partitioner).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ResumeSettings {
    pub window_events: usize,
    pub window_bytes: usize,
    pub max_events: usize,
    pub max_readers: usize,
    pub max_scan_records: u64,
    pub timeout: Duration,
    pub partitioner: Partitioner,
}

impl Default for ResumeSettings {
    fn default() -> Self {
        ResumeSettings {
            window_events: crate::config::defaults::RESUME_WINDOW_EVENTS,
            window_bytes: crate::config::defaults::RESUME_WINDOW_BYTES,
            max_events: crate::config::defaults::RESUME_MAX_EVENTS as usize,
            max_readers: crate::config::defaults::RESUME_MAX_READERS as usize,
            max_scan_records: crate::config::defaults::RESUME_MAX_SCAN_RECORDS,
            timeout: Duration::from_millis(crate::config::defaults::RESUME_TIMEOUT_MS),
            partitioner: Partitioner::Consistent,
        }
    }
}

/// One routed private frame in the window.
struct Entry {
    offset: i64,
    route: Route,
    frame: Outbound,
}

/// One partition as this process has seen it.
struct PartitionLog {
    /// Every record after this offset, up to `last`, was processed by this
    /// process and its private frames are in `entries`.
    covered_after: i64,
    /// `L`: the last offset processed.
    last: i64,
    entries: VecDeque<Entry>,
    bytes: usize,
}

/// The windows and live boundaries of every partition (kept in the hub's
/// state, under its lock).
#[derive(Default)]
pub struct Windows {
    partitions: HashMap<(String, i32), PartitionLog>,
}

impl Windows {
    fn log(&mut self, at: &At<'_>) -> &mut PartitionLog {
        // Called once per partition (callers `find` first: a key String per record would cost an allocation).
        let key = (at.topic.to_owned(), at.partition);
        self.partitions.entry(key).or_insert(PartitionLog {
            covered_after: at.offset - 1,
            last: at.offset - 1,
            entries: VecDeque::new(),
            bytes: 0,
        })
    }

    fn find(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionLog> {
        // Few partitions: a scan is cheaper than allocating a key.
        self.partitions.iter_mut().find(|((t, p), _)| *p == partition && t == topic).map(|(_, l)| l)
    }

    /// A partition the source starts reading at `next_offset`: nothing
    /// before it will come live (ignored once a record was seen).
    pub fn begin_at(&mut self, topic: &str, partition: i32, next_offset: i64) {
        if self.find(topic, partition).is_none() {
            self.log(&At { topic, partition, offset: next_offset });
        }
    }

    /// Notes that the record at `at` was processed. Returns whether it is
    /// new (a redelivered record is not windowed twice).
    pub fn observe(&mut self, at: &At<'_>) -> bool {
        let log = match self.find(at.topic, at.partition) {
            Some(l) => l,
            None => self.log(at),
        };
        // Equal: another route of the same record (a custom handler may give several).
        if at.offset < log.last || (at.offset == log.last && at.offset == log.covered_after) {
            return false;
        }
        log.last = at.offset;
        true
    }

    /// Keeps a private frame of the record at `at` (already observed).
    pub fn keep(&mut self, at: &At<'_>, route: &Route, frame: &Outbound, settings: &ResumeSettings) {
        if settings.window_events == 0 || settings.window_bytes == 0 {
            if let Some(log) = self.find(at.topic, at.partition) {
                log.covered_after = log.last;
            }
            return;
        }
        let Some(log) = self.find(at.topic, at.partition) else { return };
        log.bytes += frame.frame.len();
        log.entries.push_back(Entry { offset: at.offset, route: route.clone(), frame: frame.clone() });
        while log.entries.len() > settings.window_events || log.bytes > settings.window_bytes {
            let Some(old) = log.entries.pop_front() else { break };
            log.bytes -= old.frame.frame.len();
            // The window no longer proves anything at or before the evicted offset.
            log.covered_after = log.covered_after.max(old.offset);
        }
    }

    /// The live boundary `L` of a partition and whether the window covers
    /// `(since, L]`; `None` when this process has not processed the partition.
    pub fn boundary(&mut self, topic: &str, partition: i32, since: i64) -> Option<(i64, bool)> {
        let log = self.find(topic, partition)?;
        Some((log.last, since >= log.covered_after))
    }

    /// The windowed frames in `(since, until]` on `channel` that `admit` lets through.
    pub fn collect(
        &mut self,
        topic: &str,
        partition: i32,
        since: i64,
        until: i64,
        channel: Channel,
        mut admit: impl FnMut(&Route) -> bool,
    ) -> Vec<Outbound> {
        let Some(log) = self.find(topic, partition) else { return Vec::new() };
        let start = log.entries.partition_point(|e| e.offset <= since);
        log.entries
            .range(start..)
            .take_while(|e| e.offset <= until)
            .filter(|e| e.route.channel == channel && admit(&e.route))
            .map(|e| e.frame.clone())
            .collect()
    }
}

/// A replayed record: its routes and the frame, as the live path builds it.
pub struct Replayed {
    pub offset: i64,
    pub route: Route,
    pub frame: Outbound,
}

/// One resumer's share of a history read.
#[derive(Debug, Clone)]
pub struct HistoryRequest {
    pub topic: String,
    pub partition: i32,
    /// Exclusive.
    pub since: i64,
    /// Inclusive.
    pub until: i64,
    /// The record key of the user's events (their userId).
    pub key: String,
    pub max_events: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("the position is before the start of the log")]
    BeforeLogStart,
    #[error("more missed events than RESUME_MAX_EVENTS")]
    TooMany,
    #[error("the history read timed out")]
    Timeout,
    #[error("the history read failed")]
    Failed,
}

impl HistoryError {
    pub fn label(self) -> &'static str {
        match self {
            HistoryError::BeforeLogStart => "before_log_start",
            HistoryError::TooMany => "too_many",
            HistoryError::Timeout => "timeout",
            HistoryError::Failed => "read_failed",
        }
    }
}

pub type HistoryFuture = futures::future::BoxFuture<'static, Result<Vec<Replayed>, HistoryError>>;

/// Reads missed records beyond the window (implemented by the source).
pub trait History: Send + Sync {
    fn read(&self, request: HistoryRequest) -> HistoryFuture;
}

/// The series of `/metrics` about resume.
#[derive(Clone)]
pub struct ResumeMetrics {
    pub requests: IntCounterVec,
    pub events: IntCounterVec,
    pub seconds: Histogram,
    pub readers_active: IntGauge,
    pub reader_passes: prometheus::IntCounter,
}

impl ResumeMetrics {
    pub fn new(registry: &Registry) -> Self {
        let m = ResumeMetrics {
            requests: IntCounterVec::new(
                Opts::new("resume_requests_total", "Subscriptions with `since`, by result (recovered, or why not)."),
                &["result"],
            )
            .expect("valid metric"),
            events: IntCounterVec::new(Opts::new("resume_events_total", "Missed events replayed, by source (memory, kafka)."), &["source"])
                .expect("valid metric"),
            seconds: Histogram::with_opts(
                HistogramOpts::new("resume_seconds", "Time from a subscription with `since` to its replay being queued.")
                    .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )
            .expect("valid metric"),
            readers_active: IntGauge::new("resume_kafka_readers_active", "Kafka history readers running now (at most RESUME_MAX_READERS).")
                .expect("valid metric"),
            reader_passes: prometheus::IntCounter::new("resume_kafka_reader_passes_total", "Kafka history read passes (each serves every resumer of one partition waiting for it).")
                .expect("valid metric"),
        };
        for c in [Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>, Box::new(m.events.clone()), Box::new(m.seconds.clone()), Box::new(m.readers_active.clone()), Box::new(m.reader_passes.clone())] {
            // A second hub on the same registry (tests) keeps the first registration.
            let _ = registry.register(c);
        }
        m
    }
}

/// How one subscription with `since` ended up: served (with how many
/// missed events, from where) or not recovered (why). One value, one
/// `emit()`: the `result` label of `resume_requests_total` and the log
/// line's `result` are the same code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeOutcome {
    /// Replayed `events` missed events from `source` (`memory` or `kafka`).
    Recovered { source: &'static str, events: usize },
    /// Live only, and why (`invalid`, `too_old`, `timeout`, …).
    NotRecovered(&'static str),
}

impl ResumeOutcome {
    pub fn label(self) -> &'static str {
        match self {
            ResumeOutcome::Recovered { .. } => "recovered",
            ResumeOutcome::NotRecovered(why) => why,
        }
    }

    /// Counts and logs the outcome; `elapsed`, when given, joins `resume_seconds`.
    pub fn emit(self, metrics: &ResumeMetrics, connection: u64, channel: Channel, elapsed: Option<Duration>) {
        metrics.requests.with_label_values(&[self.label()]).inc();
        if let ResumeOutcome::Recovered { source, events } = self {
            metrics.events.with_label_values(&[source]).inc_by(events as u64);
        }
        if let Some(elapsed) = elapsed {
            metrics.seconds.observe(elapsed.as_secs_f64());
        }
        match self {
            ResumeOutcome::Recovered { source, events } => {
                tracing::debug!(connection, channel = channel.as_str(), result = self.label(), source, events, "resume served")
            }
            ResumeOutcome::NotRecovered(_) => {
                tracing::debug!(connection, channel = channel.as_str(), result = self.label(), "resume not recovered: live only")
            }
        }
    }
}

/// Everything resume needs beside the hub's state.
pub struct Resume {
    pub settings: ResumeSettings,
    pub streams: Arc<Streams>,
    pub history: Mutex<Option<Arc<dyn History>>>,
    pub metrics: ResumeMetrics,
}

impl Resume {
    pub fn history(&self) -> Option<Arc<dyn History>> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_topics_with_dots() {
        let p = Position { topic: "moonx.ws.events".into(), partition: 3, offset: 1234, generation: Generation::Partitions(6) };
        let s = p.encode();
        assert_eq!(s.split('.').count(), 5, "{s}");
        assert_eq!(Position::parse(&s), Ok(p));
        let e = Position { topic: "t".into(), partition: 0, offset: 0, generation: Generation::Epoch(u64::MAX) };
        assert_eq!(Position::parse(&e.encode()), Ok(e));
    }

    #[test]
    fn garbage_is_an_error() {
        for s in ["", "1", "1.....", "2.bW9vbng.0.1.p6", "1.bW9vbng.-1.1.p6", "1.bW9vbng.0.1.p0", "1.bW9vbng.0.1.x6", "1.!!.0.1.p6", "1.bW9vbng.0.99999999999999999999.p6"] {
            assert_eq!(Position::parse(s), Err(PositionError), "{s}");
        }
    }

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's own UtilsTest / DefaultPartitioner behaviour.
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
    }

    #[test]
    fn window_covers_only_what_it_kept() {
        let settings = ResumeSettings { window_events: 2, ..ResumeSettings::default() };
        let mut w = Windows::default();
        let route = Route { channel: Channel::Orders, audience: super::super::Audience::User("u".into()) };
        let frame: Outbound = Arc::new(super::super::frame::Frame {
            event_id: 1,
            timestamp_ms: 0,
            channel: Channel::Orders,
            offset: 0,
            frame: axum::extract::ws::Utf8Bytes::from("{}"),
            deflated: Default::default(),
        });
        for offset in 10..15 {
            let at = At { topic: "t", partition: 0, offset };
            assert!(w.observe(&at));
            w.keep(&at, &route, &frame, &settings);
        }
        assert!(!w.observe(&At { topic: "t", partition: 0, offset: 12 }), "a redelivery is not new");
        assert!(w.observe(&At { topic: "t", partition: 0, offset: 14 }), "another route of the last record");
        assert_eq!(w.boundary("t", 0, 12), Some((14, true)));
        assert_eq!(w.boundary("t", 0, 11), Some((14, false)), "offset 12 was evicted");
        assert_eq!(w.collect("t", 0, 12, 14, Channel::Orders, |_| true).len(), 2);
        assert_eq!(w.collect("t", 0, 12, 14, Channel::Trades, |_| true).len(), 0);
        assert_eq!(w.boundary("t", 1, 0), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_is_total(s in ".{0,120}") {
            let _ = Position::parse(&s);
        }

        #[test]
        fn encode_parse_round_trips(topic in "[a-zA-Z0-9._-]{1,60}", partition in 0i32.., offset in 0i64.., n in 1i32.., epoch in any::<u64>(), embedded in any::<bool>()) {
            let generation = if embedded { Generation::Epoch(epoch) } else { Generation::Partitions(n) };
            let p = Position { topic, partition, offset, generation };
            prop_assert_eq!(Position::parse(&p.encode()), Ok(p));
        }
    }
}
