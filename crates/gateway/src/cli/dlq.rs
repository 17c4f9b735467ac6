//! `moonx-ws dlq list|show|replay`: inspect dead letters and re-drive the
//! ones today's model accepts.
//!
//! The DLQ record format (Kafka Connect's convention): the value is the
//! original record value byte for byte, the key and the original headers are
//! kept, and the failure travels in `dlq.*` headers (`dlq.id` =
//! `topic/partition/offset`, `dlq.reason`, `dlq.message`, `dlq.errors`,
//! `dlq.source.*`, `dlq.attempts`, `dlq.failed_at`, `dlq.instance`,
//! `dlq.event_type`, `dlq.event_id`, `dlq.payload_truncated`). A missing
//! optional header is tolerated; letters of the earlier format (a JSON
//! document with `payloadBase64`) are read too.
//!
//! Guarantees of `replay`:
//! * Exactly once per replay group, also when killed at any moment: each
//!   batch of re-published records and the group's new position commit in
//!   one Kafka transaction (consume-transform-produce), so a killed run
//!   leaves an aborted transaction that readers (`isolation.level=
//!   read_committed`, librdkafka's default, as the gateway uses) never see,
//!   and a rerun resumes from the last committed position.
//! * Nothing is lost: a letter that still fails, is truncated, or is not
//!   selected by the filters stays unsettled and is considered again by the
//!   next replay of the group. The group's position per partition is the
//!   first unsettled letter; letters replayed beyond it are listed (as
//!   offset ranges) in the commit's metadata, so they are not published
//!   again.
//! * `--dry-run` publishes and commits nothing.
//! * A run reads up to the end of the DLQ as it was when the run started
//!   (letters written meanwhile wait for the next run), and every wait is
//!   bounded.

use crate::config::KafkaArgs;
use moonx_events::decode::{decode_event, DecodeOptions};
use moonx_events::TypeRegistry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::ExitCode;
use std::time::Duration;

/// Header names of the DLQ record format: the writer's own
/// (`pipeline::dead_letter::headers`), plus the one `replay` adds.
pub mod headers {
    pub use crate::pipeline::dead_letter::headers::*;
    /// Added by `replay` on the re-published record.
    pub const REPLAYED_FROM: &str = "dlq.replayed-from";
}

/// The default consumer group of `replay` (its progress).
pub const DEFAULT_REPLAY_GROUP: &str = "moonx-ws-dlq-replay";
/// Letters re-published per transaction: large enough to amortize the
/// commit, small enough that a killed run redoes little.
const REPLAY_BATCH: usize = 100;
/// Room for the offset ranges of letters replayed beyond an unsettled one
/// (Kafka's `offset.metadata.max.bytes` defaults to 4096).
const MAX_PROGRESS_METADATA: usize = 3500;
/// Letter ids remembered to recognise duplicate copies (the writer writes a
/// letter twice only around a crash, so copies are close together).
const RECENT_IDS: usize = 100_000;
/// Bound on every single broker call.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);
/// A partition that yields nothing for this long while behind its end is an error.
const READ_STALL: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Summary of the dead letters by reason and event type: counts, first and last time.
    List {
        #[command(flatten)]
        filters: Filters,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter (by its `dlq.id`, `topic/partition/offset`): its errors and the original bytes.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-validate each letter with today's model; re-publish the ones that pass (exactly once per group).
    Replay {
        #[command(flatten)]
        filters: Filters,
        /// Publish nothing, commit nothing: print what would happen.
        #[arg(long)]
        dry_run: bool,
        /// Where to re-publish (default: the main topic).
        #[arg(long)]
        to: Option<String>,
        /// The consumer group that stores the replay's progress.
        #[arg(long, default_value = DEFAULT_REPLAY_GROUP)]
        group: String,
        /// One JSON object per letter and a summary line.
        #[arg(long)]
        json: bool,
    },
}

/// Which letters a command considers.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filters {
    /// Only this reason (repeatable), e.g. invalid_event.
    #[arg(long)]
    pub reason: Vec<String>,
    /// Only this event type (repeatable).
    #[arg(long = "type")]
    pub event_type: Vec<String>,
    /// Failed at or after TIME: RFC 3339 (2026-11-29T03:00:00Z), epoch milliseconds, or an age (90s, 15m, 2h, 7d).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<u64>,
    /// Failed before TIME (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<u64>,
}

impl Filters {
    pub fn matches(&self, l: &Letter) -> bool {
        (self.reason.is_empty() || self.reason.iter().any(|r| r == &l.reason))
            && (self.event_type.is_empty() || l.event_type.as_ref().is_some_and(|t| self.event_type.contains(t)))
            && self.since.is_none_or(|s| l.failed_at_ms >= s)
            && self.until.is_none_or(|u| l.failed_at_ms < u)
    }
}

/// One dead letter, read back.
#[derive(Debug, Clone)]
pub struct Letter {
    pub id: String,
    pub reason: String,
    pub message: String,
    pub errors: Value,
    pub event_type: Option<String>,
    pub event_id: Option<String>,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub source_timestamp_ms: Option<u64>,
    pub attempts: Option<u32>,
    /// `dlq.failed_at`, else the DLQ record's timestamp.
    pub failed_at_ms: u64,
    pub instance: Option<String>,
    /// The original size when the value had to be cut (then it cannot be replayed).
    pub payload_truncated: Option<u64>,
    /// The original key and value.
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// The original headers (every header not starting with `dlq.`).
    pub original_headers: Vec<(String, Option<Vec<u8>>)>,
    pub dlq_partition: i32,
    pub dlq_offset: i64,
}

impl Letter {
    pub fn from_message(m: &BorrowedMessage<'_>) -> Letter {
        let mut dlq: HashMap<String, String> = HashMap::new();
        let mut original_headers = Vec::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                if h.key.starts_with("dlq.") {
                    dlq.insert(h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned());
                } else {
                    original_headers.push((h.key.to_owned(), h.value.map(<[u8]>::to_vec)));
                }
            }
        }
        let text = |k: &str| dlq.get(k).filter(|v| !v.is_empty()).cloned();
        let num = |k: &str| text(k).and_then(|v| v.parse::<u64>().ok());
        let record_ts = m.timestamp().to_millis().and_then(|t| u64::try_from(t).ok()).unwrap_or(0);
        let value = m.payload().unwrap_or_default().to_vec();
        let id = text(headers::ID).unwrap_or_else(|| format!("{}/{}/{}", m.topic(), m.partition(), m.offset()));
        let mut letter = Letter {
            reason: text(headers::REASON).unwrap_or_else(|| "unknown".into()),
            message: text(headers::MESSAGE).unwrap_or_default(),
            errors: text(headers::ERRORS).and_then(|e| serde_json::from_str(&e).ok()).unwrap_or(Value::Null),
            event_type: text(headers::EVENT_TYPE),
            event_id: text(headers::EVENT_ID),
            source_topic: text(headers::SOURCE_TOPIC),
            source_partition: text(headers::SOURCE_PARTITION).and_then(|v| v.parse().ok()),
            source_offset: text(headers::SOURCE_OFFSET).and_then(|v| v.parse().ok()),
            source_timestamp_ms: num(headers::SOURCE_TIMESTAMP),
            attempts: text(headers::ATTEMPTS).and_then(|v| v.parse().ok()),
            failed_at_ms: num(headers::FAILED_AT).unwrap_or(record_ts),
            instance: text(headers::INSTANCE),
            payload_truncated: num(headers::PAYLOAD_TRUNCATED),
            key: None,
            value,
            original_headers,
            dlq_partition: m.partition(),
            dlq_offset: m.offset(),
            id,
        };
        // The original key: `dlq.source.key` when present; a record keyed by
        // its own dlq.id had none.
        letter.key = match dlq.get(headers::SOURCE_KEY) {
            Some(k) => Some(k.as_bytes().to_vec()),
            None => m.key().filter(|k| *k != letter.id.as_bytes()).map(<[u8]>::to_vec),
        };
        if !dlq.contains_key(headers::ERRORS) {
            letter.adopt_earlier_format();
        }
        // The writer names the type only when the gateway knew it; an
        // unknown (custom) type is still in the original envelope.
        if letter.event_type.is_none() && letter.payload_truncated.is_none() {
            letter.event_type = serde_json::from_slice::<Value>(&letter.value)
                .ok()
                .and_then(|v| v.pointer("/metadata/eventType").and_then(Value::as_str).map(str::to_owned));
        }
        letter
    }

    /// The earlier format kept the original in a JSON document
    /// (`payloadBase64`, `errors`, `eventType`, `source`): unwrap it.
    fn adopt_earlier_format(&mut self) {
        use base64::Engine as _;
        let Ok(doc) = serde_json::from_slice::<Value>(&self.value) else { return };
        if doc.get("id").and_then(Value::as_str) != Some(self.id.as_str()) {
            return;
        }
        let original = match doc.get("payloadBase64") {
            Some(Value::String(b)) => match base64::engine::general_purpose::STANDARD.decode(b) {
                Ok(bytes) => bytes,
                Err(_) => return,
            },
            _ => Vec::new(),
        };
        self.value = original;
        self.errors = doc.get("errors").cloned().unwrap_or(Value::Null);
        if self.event_type.is_none() {
            self.event_type = doc.get("eventType").and_then(Value::as_str).map(str::to_owned);
        }
        if self.event_id.is_none() {
            self.event_id = doc.get("eventId").and_then(Value::as_str).map(str::to_owned);
        }
        let source = &doc["source"];
        self.source_timestamp_ms = self.source_timestamp_ms.or_else(|| source["timestamp"].as_u64());
        if let Some(k) = source["key"].as_str() {
            self.key = Some(k.as_bytes().to_vec());
        }
    }

    pub fn summary_json(&self) -> Value {
        json!({
            "id": self.id, "reason": self.reason, "message": self.message, "errors": self.errors,
            "eventType": self.event_type, "eventId": self.event_id, "attempts": self.attempts,
            "failedAt": self.failed_at_ms, "failedAtText": format_time(self.failed_at_ms), "instance": self.instance,
            "source": {"topic": self.source_topic, "partition": self.source_partition, "offset": self.source_offset,
                       "timestamp": self.source_timestamp_ms, "key": self.key.as_deref().map(String::from_utf8_lossy)},
            "payloadTruncated": self.payload_truncated,
            "dlq": {"partition": self.dlq_partition, "offset": self.dlq_offset},
        })
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Args { kafka, command } = args;
    match command {
        DlqCommand::List { filters, json } => list(&kafka, &filters, json).await,
        DlqCommand::Show { id, json } => show(&kafka, &id, json).await,
        DlqCommand::Replay { filters, dry_run, to, group, json } => {
            let options = ReplayOptions {
                brokers: kafka.brokers.clone(),
                dlq_topic: kafka.dlq_topic.clone(),
                to: to.unwrap_or(kafka.main_topic.clone()),
                group,
                filters,
                dry_run,
            };
            let registry = crate::pipeline::router::Router::with_built_in_handlers().registry().clone();
            let report = replay(&options, &registry, |line| print_outcome(line, json)).await?;
            if json {
                println!("{}", json!({"summary": report.summary()}));
            } else {
                println!("{}", report.summary_line(dry_run));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(kafka: &KafkaArgs, filters: &Filters, as_json: bool) -> anyhow::Result<ExitCode> {
    #[derive(Default)]
    struct Group {
        count: u64,
        first: u64,
        last: u64,
    }
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    let mut seen = RecentIds::default();
    let (mut total, mut duplicates) = (0u64, 0u64);
    let consumer = reader(&kafka.brokers, "moonx-ws-dlq-reader")?;
    let mut left: HashMap<i32, i64> = assign_from(&consumer, &kafka.dlq_topic, &HashMap::new())?.into_iter().collect();
    read_until(&consumer, &mut left, |m| {
        let l = Letter::from_message(m);
        if !filters.matches(&l) {
            return Ok(true);
        }
        if !seen.insert(&l.id) {
            duplicates += 1; // the writer may write a letter twice after a crash
            return Ok(true);
        }
        total += 1;
        let g = groups.entry((l.reason.clone(), l.event_type.clone().unwrap_or_else(|| "-".into()))).or_default();
        if g.count == 0 || l.failed_at_ms < g.first {
            g.first = l.failed_at_ms;
        }
        g.last = g.last.max(l.failed_at_ms);
        g.count += 1;
        Ok(true)
    })
    .await?;
    if as_json {
        let rows: Vec<Value> = groups
            .iter()
            .map(|((reason, t), g)| json!({"reason": reason, "eventType": t, "count": g.count, "first": g.first, "last": g.last,
                                           "firstText": format_time(g.first), "lastText": format_time(g.last)}))
            .collect();
        println!("{}", json!({"topic": kafka.dlq_topic, "total": total, "duplicatesSkipped": duplicates, "groups": rows}));
    } else {
        println!("{:<22} {:<28} {:>8}  {:<24} {:<24}", "REASON", "TYPE", "COUNT", "FIRST", "LAST");
        for ((reason, t), g) in &groups {
            println!("{reason:<22} {t:<28} {:>8}  {:<24} {:<24}", g.count, format_time(g.first), format_time(g.last));
        }
        println!("{total} dead letter(s) in {}{}", kafka.dlq_topic, if duplicates > 0 { format!(" ({duplicates} duplicate copies not counted)") } else { String::new() });
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(kafka: &KafkaArgs, id: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    use base64::Engine as _;
    let consumer = reader(&kafka.brokers, "moonx-ws-dlq-reader")?;
    let mut left: HashMap<i32, i64> = assign_from(&consumer, &kafka.dlq_topic, &HashMap::new())?.into_iter().collect();
    let mut found = None;
    read_until(&consumer, &mut left, |m| {
        let l = Letter::from_message(m);
        if l.id == id {
            found = Some(l);
            return Ok(false);
        }
        Ok(true)
    })
    .await?;
    let Some(l) = found else {
        eprintln!("no dead letter with id {id} in {}", kafka.dlq_topic);
        return Ok(ExitCode::from(1));
    };
    let mut doc = l.summary_json();
    doc["value"] = match std::str::from_utf8(&l.value) {
        Ok(t) => Value::String(t.to_owned()),
        Err(_) => Value::Null,
    };
    doc["valueBase64"] = Value::String(base64::engine::general_purpose::STANDARD.encode(&l.value));
    doc["headers"] = l
        .original_headers
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v.as_deref().map(String::from_utf8_lossy)}))
        .collect();
    if as_json {
        println!("{doc}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}  ({}, failed {} on {}, {} attempt(s))", l.id, l.reason, format_time(l.failed_at_ms),
        l.instance.as_deref().unwrap_or("?"), l.attempts.map_or("?".into(), |a| a.to_string()));
    println!("type:    {}", l.event_type.as_deref().unwrap_or("-"));
    println!("eventId: {}", l.event_id.as_deref().unwrap_or("-"));
    println!("key:     {}", l.key.as_deref().map(String::from_utf8_lossy).unwrap_or("-".into()));
    println!("message: {}", l.message);
    if let Some(errors) = l.errors.as_array() {
        for e in errors {
            println!("  {}  {}  {}", e["path"].as_str().unwrap_or(""), e["code"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or(""));
        }
    }
    if let Some(size) = l.payload_truncated {
        println!("TRUNCATED: the original was {size} bytes; {} kept", l.value.len());
    }
    println!("original value ({} bytes):", l.value.len());
    match std::str::from_utf8(&l.value) {
        Ok(t) => println!("{t}"),
        Err(_) => println!("(not UTF-8; base64) {}", doc["valueBase64"].as_str().unwrap_or_default()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The last `RECENT_IDS` ids seen, for de-duplication in bounded memory.
#[derive(Debug, Default)]
struct RecentIds {
    set: HashSet<String>,
    order: std::collections::VecDeque<String>,
}

impl RecentIds {
    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    /// `false` when already present.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= RECENT_IDS
            && let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

/// What `replay` does.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub brokers: String,
    pub dlq_topic: String,
    /// Where passing letters are re-published.
    pub to: String,
    /// The consumer group storing the progress.
    pub group: String,
    pub filters: Filters,
    pub dry_run: bool,
}

/// What happened to one letter.
#[derive(Debug, Clone)]
pub enum ReplayOutcome {
    /// Re-published (or, in a dry run, would be).
    Replayed { id: String, event_type: String, partition: Option<i32>, offset: Option<i64> },
    /// Still refused by today's model: stays in the DLQ.
    StillInvalid { id: String, reason: String, message: String, errors: Value },
    /// Cut by the writer: cannot be replayed; stays in the DLQ.
    Truncated { id: String, original_size: u64 },
}

impl ReplayOutcome {
    pub fn to_json(&self) -> Value {
        match self {
            ReplayOutcome::Replayed { id, event_type, partition, offset } =>
                json!({"id": id, "outcome": "replayed", "eventType": event_type, "partition": partition, "offset": offset}),
            ReplayOutcome::StillInvalid { id, reason, message, errors } =>
                json!({"id": id, "outcome": "still_invalid", "reason": reason, "message": message, "errors": errors}),
            ReplayOutcome::Truncated { id, original_size } =>
                json!({"id": id, "outcome": "truncated", "originalSize": original_size}),
        }
    }
}

fn print_outcome(o: &ReplayOutcome, as_json: bool) {
    if as_json {
        println!("{}", o.to_json());
        return;
    }
    match o {
        ReplayOutcome::Replayed { id, event_type, partition: Some(p), offset: Some(off) } => println!("replayed      {id}  {event_type}  -> p{p} @{off}"),
        ReplayOutcome::Replayed { id, event_type, .. } => println!("would replay  {id}  {event_type}"),
        ReplayOutcome::StillInvalid { id, reason, message, .. } => println!("still invalid {id}  {reason}: {message}"),
        ReplayOutcome::Truncated { id, original_size } => println!("truncated     {id}  (original {original_size} bytes): left in the DLQ"),
    }
}

/// Counts of one replay run.
#[derive(Debug, Default, Clone)]
pub struct ReplayReport {
    pub outcomes: Vec<ReplayOutcome>,
    /// Replayed by an earlier run of the group, or a duplicate copy of a letter replayed in this run.
    pub already_replayed: u64,
    /// Not selected by the filters (left for another run).
    pub filtered_out: u64,
}

impl ReplayReport {
    pub fn replayed(&self) -> usize {
        self.outcomes.iter().filter(|o| matches!(o, ReplayOutcome::Replayed { .. })).count()
    }
    pub fn still_invalid(&self) -> usize {
        self.outcomes.iter().filter(|o| matches!(o, ReplayOutcome::StillInvalid { .. })).count()
    }
    pub fn truncated(&self) -> usize {
        self.outcomes.iter().filter(|o| matches!(o, ReplayOutcome::Truncated { .. })).count()
    }
    pub fn summary(&self) -> Value {
        json!({"replayed": self.replayed(), "stillInvalid": self.still_invalid(), "truncated": self.truncated(),
               "alreadyReplayed": self.already_replayed, "filteredOut": self.filtered_out})
    }
    pub fn summary_line(&self, dry_run: bool) -> String {
        format!(
            "{} {}, {} still invalid, {} truncated, {} already replayed, {} not selected by the filters",
            if dry_run { "dry run: would replay" } else { "replayed" },
            self.replayed(), self.still_invalid(), self.truncated(), self.already_replayed, self.filtered_out
        )
    }
}

/// Offsets as inclusive ranges (start -> end), merged when adjacent: the
/// letters replayed beyond an unsettled one, in memory proportional to the
/// number of gaps, not of letters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct OffsetRanges(BTreeMap<i64, i64>);

impl OffsetRanges {
    fn contains(&self, o: i64) -> bool {
        self.0.range(..=o).next_back().is_some_and(|(_, &end)| end >= o)
    }

    fn insert(&mut self, o: i64) {
        if self.contains(o) {
            return;
        }
        let mut start = o;
        let mut end = o;
        if let Some((&s, &e)) = self.0.range(..o).next_back()
            && e + 1 == o {
                start = s;
            }
        if let Some(&e) = self.0.get(&(o + 1)) {
            self.0.remove(&(o + 1));
            end = e;
        }
        self.0.insert(start, end);
    }

    /// Drops every offset below `from`.
    fn keep_from(&mut self, from: i64) {
        let mut rest = self.0.split_off(&from);
        if let Some((_, &end)) = self.0.iter().next_back()
            && end >= from {
                rest.insert(from, end);
            }
        self.0 = rest;
    }

    /// `a-b,c,d-e`
    fn to_text(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
        parts.join(",")
    }

    fn parse(text: &str) -> OffsetRanges {
        let mut ranges = OffsetRanges::default();
        for range in text.split(',').filter(|r| !r.is_empty()).take(MAX_PROGRESS_METADATA) {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>())
                && a <= b {
                    ranges.0.insert(a, b);
                }
        }
        ranges
    }
}

/// Per partition of the DLQ: how far the group has settled it.
#[derive(Debug, Default, Clone)]
struct Progress {
    /// The group's committed offset: every letter before it is settled.
    next: i64,
    /// Letters at or after `next` that were already replayed.
    settled_beyond: OffsetRanges,
    /// Whether this run met an unsettled letter (then `next` stays there).
    blocked: bool,
}

impl Progress {
    fn from_commit(offset: Offset, metadata: &str) -> Progress {
        let next = match offset {
            Offset::Offset(o) => o,
            _ => 0,
        };
        let mut settled_beyond = OffsetRanges::parse(metadata.strip_prefix("replayed:").unwrap_or_default());
        settled_beyond.keep_from(next);
        Progress { next, settled_beyond, blocked: false }
    }

    fn settle(&mut self, offset: i64) {
        if self.blocked {
            self.settled_beyond.insert(offset);
        } else {
            self.next = offset + 1;
            self.settled_beyond.keep_from(self.next);
        }
    }

    fn leave(&mut self, offset: i64) {
        if !self.blocked {
            self.blocked = true;
            self.next = offset;
        }
    }

    /// The commit metadata: `replayed:a-b,c-d` ranges beyond `next`.
    fn metadata(&self) -> String {
        format!("replayed:{}", self.settled_beyond.to_text())
    }
}

/// Re-validates every letter of the DLQ (from the group's position to the
/// DLQ's end when the run started) with `registry` and re-publishes the ones
/// that pass, with their original key and headers plus `dlq.replayed-from`.
/// `on_outcome` sees each letter's outcome as it happens. A custom type
/// registered through the library API is known only in-process: pass that
/// router's `registry()`.
pub async fn replay(
    options: &ReplayOptions,
    registry: &TypeRegistry,
    mut on_outcome: impl FnMut(&ReplayOutcome),
) -> anyhow::Result<ReplayReport> {
    // The producer first: its `init_transactions` fences a killed run and
    // aborts its open transaction, whose pending offsets would otherwise
    // keep the group's position unstable (unreadable) until it times out.
    let producer = if options.dry_run { None } else { Some(transactional_producer(options)?) };
    let consumer = reader(&options.brokers, &options.group)?;
    let partitions = partitions_of(&consumer, &options.dlq_topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(&options.dlq_topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, BROKER_TIMEOUT).map_err(|e| {
        anyhow::anyhow!(
            "reading the position of group {}: {e} (another replay of this group running, or one killed less than a minute ago?)",
            options.group
        )
    })?;
    let mut progress: HashMap<i32, Progress> = HashMap::new();
    for e in committed.elements() {
        progress.insert(e.partition(), Progress::from_commit(e.offset(), e.metadata()));
    }
    let starts: HashMap<i32, i64> = progress.iter().map(|(p, pr)| (*p, pr.next)).collect();
    let ends = assign_from(&consumer, &options.dlq_topic, &starts)?;

    let group_metadata = consumer.group_metadata().ok_or_else(|| anyhow::anyhow!("no consumer group metadata for {}", options.group))?;
    let mut report = ReplayReport::default();
    let mut replayed_ids = RecentIds::default();
    let mut considered_ids = RecentIds::default();
    let mut batch: Vec<(String, String, Letter)> = Vec::new(); // (id, type, letter)
    let mut left: HashMap<i32, i64> = ends.into_iter().collect();
    // Batches of REPLAY_BATCH letters, in partition order: decide each, then
    // publish the passing ones and the new position in one transaction.
    loop {
        let mut pending: Vec<Letter> = Vec::new();
        read_until(&consumer, &mut left, |m| {
            pending.push(Letter::from_message(m));
            Ok(pending.len() < REPLAY_BATCH)
        })
        .await?;
        for l in pending {
            let pr = progress.entry(l.dlq_partition).or_default();
            if pr.settled_beyond.contains(l.dlq_offset) || replayed_ids.contains(&l.id) {
                report.already_replayed += 1;
                pr.settle(l.dlq_offset);
                continue;
            }
            // A second copy of a letter this run left unsettled: same fate, reported once.
            if !considered_ids.insert(&l.id) {
                pr.leave(l.dlq_offset);
                continue;
            }
            if !options.filters.matches(&l) {
                report.filtered_out += 1;
                pr.leave(l.dlq_offset);
                continue;
            }
            if let Some(size) = l.payload_truncated {
                pr.leave(l.dlq_offset);
                let o = ReplayOutcome::Truncated { id: l.id.clone(), original_size: size };
                on_outcome(&o);
                report.outcomes.push(o);
                continue;
            }
            let decode = DecodeOptions::new(registry);
            let decode = match l.source_topic.as_deref() {
                Some(t) => decode.topic(t),
                None => decode,
            };
            match decode_event(&l.value, &decode) {
                Ok(event) => {
                    pr.settle(l.dlq_offset);
                    replayed_ids.insert(&l.id);
                    batch.push((l.id.clone(), event.metadata.event_type.as_str().to_owned(), l));
                }
                Err(e) => {
                    pr.leave(l.dlq_offset);
                    let errors = e.validation_errors().map(|v| serde_json::to_value(v).unwrap_or_default()).unwrap_or(Value::Null);
                    let o = ReplayOutcome::StillInvalid { id: l.id.clone(), reason: e.code().to_owned(), message: e.to_string(), errors };
                    on_outcome(&o);
                    report.outcomes.push(o);
                }
            }
        }
        // The position must fit the commit's metadata; checked once per batch.
        if let Some((partition, pr)) = progress.iter().find(|(_, pr)| pr.metadata().len() > MAX_PROGRESS_METADATA) {
            anyhow::bail!(
                "partition {partition}: too many gaps between letters replayed beyond the unsettled one at offset {}; \
                 replay that one first (filters), or use another --group. Nothing of the last batch was published.",
                pr.next
            );
        }
        let outcomes = match &producer {
            None => batch
                .drain(..)
                .map(|(id, event_type, _)| ReplayOutcome::Replayed { id, event_type, partition: None, offset: None })
                .collect(),
            Some(producer) => publish_batch(producer, options, &mut batch, &progress, &group_metadata).await?,
        };
        for o in outcomes {
            on_outcome(&o);
            report.outcomes.push(o);
        }
        if left.is_empty() {
            break;
        }
    }
    Ok(report)
}

async fn publish_batch(
    producer: &FutureProducer,
    options: &ReplayOptions,
    batch: &mut Vec<(String, String, Letter)>,
    progress: &HashMap<i32, Progress>,
    group_metadata: &rdkafka::consumer::ConsumerGroupMetadata,
) -> anyhow::Result<Vec<ReplayOutcome>> {
    producer.begin_transaction()?;
    let sends = batch.iter().map(|(id, _, l)| {
        let mut h = OwnedHeaders::new();
        for (k, v) in &l.original_headers {
            h = h.insert(Header { key: k, value: v.as_deref() });
        }
        h = h.insert(Header { key: headers::REPLAYED_FROM, value: Some(id.as_bytes()) });
        let mut record = FutureRecord::<[u8], [u8]>::to(&options.to).payload(&l.value).headers(h);
        if let Some(k) = &l.key {
            record = record.key(k.as_slice());
        }
        producer.send(record, BROKER_TIMEOUT)
    });
    let results = futures::future::join_all(sends).await;
    let mut outcomes = Vec::new();
    for ((id, event_type, _), r) in batch.drain(..).zip(results) {
        match r {
            Ok(d) => outcomes.push(ReplayOutcome::Replayed { id, event_type, partition: Some(d.partition), offset: Some(d.offset) }),
            Err((e, _)) => {
                let _ = producer.abort_transaction(BROKER_TIMEOUT);
                anyhow::bail!("re-publishing {id} to {}: {e}; the batch was aborted, nothing of it is visible", options.to);
            }
        }
    }
    let mut offsets = TopicPartitionList::new();
    for (p, pr) in progress {
        offsets.add_partition_offset(&options.dlq_topic, *p, Offset::Offset(pr.next))?;
        if let Some(mut e) = offsets.find_partition(&options.dlq_topic, *p) {
            e.set_metadata(pr.metadata());
        }
    }
    producer.send_offsets_to_transaction(&offsets, group_metadata, BROKER_TIMEOUT)?;
    producer.commit_transaction(BROKER_TIMEOUT)?;
    Ok(outcomes)
}

fn transactional_producer(options: &ReplayOptions) -> anyhow::Result<FutureProducer> {
    // A stable transactional id per group and DLQ: a rerun fences a killed
    // run and aborts its open transaction.
    let producer: FutureProducer = crate::kafka::client_config(&options.brokers)
        .set("transactional.id", format!("{}::{}", options.group, options.dlq_topic))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "gzip")
        .set("message.timeout.ms", "30000")
        .create()?;
    producer.init_transactions(BROKER_TIMEOUT)?;
    Ok(producer)
}

fn reader(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(crate::kafka::client_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        .create()?)
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let md = consumer.fetch_metadata(Some(topic), BROKER_TIMEOUT)?;
    let t = md.topics().first().ok_or_else(|| anyhow::anyhow!("topic {topic} not found"))?;
    if let Some(err) = t.error() {
        anyhow::bail!("topic {topic}: {err:?} (EVENT_DEAD_LETTER_QUEUE_TOPIC; run `moonx-ws create-topics`?)");
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

/// Assigns every partition of `topic` at `starts` (default: the beginning)
/// and returns, per partition, the offset to read up to (the end now).
fn assign_from(consumer: &BaseConsumer, topic: &str, starts: &HashMap<i32, i64>) -> anyhow::Result<Vec<(i32, i64)>> {
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in partitions_of(consumer, topic)? {
        let (low, high) = consumer.fetch_watermarks(topic, p, BROKER_TIMEOUT)?;
        let start = starts.get(&p).copied().unwrap_or(low).max(low);
        if start < high {
            tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
            ends.push((p, high));
        }
    }
    consumer.assign(&tpl)?;
    Ok(ends)
}

/// Reads until every partition reached its end (`ends`) or `each` returns
/// `false`. Bounded: a partition that stays behind for `READ_STALL` is an error.
async fn read_until(
    consumer: &BaseConsumer,
    left: &mut HashMap<i32, i64>,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut last_progress = std::time::Instant::now();
    while !left.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last_progress = std::time::Instant::now();
                let (p, o) = (m.partition(), m.offset());
                let Some(&end) = left.get(&p) else { continue };
                if o >= end {
                    left.remove(&p);
                    continue;
                }
                if o + 1 >= end {
                    left.remove(&p);
                }
                if !each(&m)? {
                    return Ok(());
                }
            }
            Some(Err(e)) => tracing::warn!("reading the DLQ: {e}"),
            None => {
                // Transaction markers and aborted records occupy offsets
                // without being delivered: a partition whose position passed
                // its end is done.
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements() {
                        if let (Offset::Offset(o), Some(&end)) = (e.offset(), left.get(&e.partition()))
                            && o >= end {
                                left.remove(&e.partition());
                            }
                    }
                }
                if !left.is_empty() && last_progress.elapsed() > READ_STALL {
                    anyhow::bail!("reading the DLQ stalled for {READ_STALL:?} before its end (partitions {:?})", left.keys());
                }
            }
        }
    }
    Ok(())
}

/// RFC 3339 UTC (`2026-11-29T03:00:00Z`, fractions allowed), epoch
/// milliseconds, or an age before now (`90s`, `15m`, `2h`, `7d`).
pub fn parse_time(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    if let Some((n, unit)) = s.char_indices().last().map(|(i, c)| (&s[..i], c))
        && let Ok(n) = n.parse::<u64>() {
            let secs = match unit {
                's' => n,
                'm' => n * 60,
                'h' => n * 3600,
                'd' => n * 86_400,
                _ => return Err(format!("unknown unit in {s:?} (s, m, h or d)")),
            };
            return Ok(moonx_events::validate::now_ms().saturating_sub(secs * 1000));
        }
    parse_rfc3339(s).ok_or_else(|| format!("{s:?} is not a time: use 2026-11-29T03:00:00Z, epoch milliseconds, or an age like 2h"))
}

fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let ms_frac = format!("{frac:0<3}").get(..3)?.parse::<i64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 86_400 + h * 3600 + mi * 60 + se) * 1000) + ms_frac).ok()
}

/// Milliseconds since the epoch as RFC 3339 UTC, to the millisecond.
pub fn format_time(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_format_round_trip() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-29T03:00:00.250Z"), Some(1_795_921_200_250));
        assert_eq!(format_time(1_795_921_200_250), "2026-11-29T03:00:00.250Z");
        assert_eq!(parse_rfc3339("2024-02-29T23:59:59Z"), Some(1_709_251_199_000));
        assert_eq!(format_time(1_709_251_199_000), "2024-02-29T23:59:59.000Z");
        assert_eq!(parse_time("1795921200250"), Ok(1_795_921_200_250));
        let two_hours_ago = parse_time("2h").unwrap();
        let now = moonx_events::validate::now_ms();
        assert!((now - two_hours_ago).abs_diff(7_200_000) < 5_000);
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn offset_ranges_merge_and_parse_in_bounded_memory() {
        let mut r = OffsetRanges::default();
        for o in [5, 7, 6, 1, 2, 10] {
            r.insert(o);
        }
        assert_eq!(r.to_text(), "1-2,5-7,10");
        r.keep_from(6);
        assert_eq!(r.to_text(), "6-7,10");
        let huge = OffsetRanges::parse("0-9000000000000,x,5-3");
        assert_eq!(huge.to_text(), "0-9000000000000", "a huge range is two numbers, and junk is ignored");
        assert!(huge.contains(123_456_789));
    }

    #[test]
    fn progress_stops_at_the_first_unsettled_letter_and_remembers_what_was_replayed_beyond() {
        let mut p = Progress::from_commit(Offset::Offset(10), "");
        p.settle(10);
        p.settle(11);
        assert_eq!((p.next, p.metadata().as_str()), (12, "replayed:"));
        p.leave(12);
        p.settle(13);
        p.settle(14);
        p.settle(16);
        assert_eq!((p.next, p.metadata().as_str()), (12, "replayed:13-14,16"));
        let mut again = Progress::from_commit(Offset::Offset(12), &p.metadata());
        assert!(again.settled_beyond.contains(13) && again.settled_beyond.contains(16) && !again.settled_beyond.contains(15));
        again.settle(12); // the unsettled one passes now
        assert_eq!(again.next, 13);
    }
}
