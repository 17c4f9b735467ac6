//! `moonx-ws tail`: decode and pretty-print the main topic (or the DLQ),
//! filtered by type, user or correlation id. It reads without a consumer
//! group (partitions are assigned directly), so it never moves anyone's
//! committed position. Invalid records are shown as invalid, with why.
//! Dead letters (`--dlq`) are shown with their reason, errors and original
//! bytes, read from the `dlq.*` headers and the record's value.

use crate::config::KafkaArgs;
use crate::pipeline::dead_letter;
use moonx_events::decode::{decode_event, DecodeOptions};
use moonx_events::{Event, TypeRegistry};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Only this event type (repeatable).
    #[arg(long = "type")]
    pub event_type: Vec<String>,
    #[arg(long)]
    pub user_id: Option<String>,
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Start at the oldest retained record instead of new ones.
    #[arg(long)]
    pub from_beginning: bool,
    /// Read the dead-letter topic instead.
    #[arg(long)]
    pub dlq: bool,
    /// Read another topic (a legacy one, say).
    #[arg(long, conflicts_with = "dlq")]
    pub topic: Option<String>,
    /// Stop after printing this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Stop after this many seconds without a matching record.
    #[arg(long)]
    pub idle_exit_secs: Option<u64>,
    /// One compact JSON object per line: {"topic","partition","offset","valid","event"|"error"}.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let topic = match (&args.topic, args.dlq) {
        (Some(t), _) => t.clone(),
        (None, true) => args.kafka.dlq_topic.clone(),
        (None, false) => args.kafka.main_topic.clone(),
    };
    let consumer: StreamConsumer = crate::kafka::client_config(&args.kafka.brokers)
        .set("group.id", "moonx-ws-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    assign_all(&consumer, &topic, args.from_beginning)?;
    let registry = TypeRegistry::new();
    let mut printed = 0u64;
    loop {
        if args.max.is_some_and(|m| printed >= m) {
            break;
        }
        let next = consumer.recv();
        let message = match args.idle_exit_secs {
            Some(s) => match tokio::time::timeout(Duration::from_secs(s), next).await {
                Ok(m) => m,
                Err(_) => break,
            },
            None => next.await,
        };
        let m = match message {
            Ok(m) => m,
            Err(e) => {
                eprintln!("warning: {e}");
                continue;
            }
        };
        let payload = m.payload().unwrap_or_default();
        let coords = format!("{} p{} @{}", m.topic(), m.partition(), m.offset());
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        if args.dlq {
            let record_headers = headers_of(&m);
            if !dlq_matches(&args, m.payload(), &record_headers) {
                continue;
            }
            let letter = dead_letter::view(m.key(), m.payload(), &record_headers);
            print_dead_letter(&args, &coords, &m, key.as_deref(), &letter);
        } else {
            match decode_event(payload, &DecodeOptions::new(&registry).topic(m.topic())) {
                Ok(event) => {
                    if !matches(&args, &event) {
                        continue;
                    }
                    print_record(&args, &coords, &m, key.as_deref(), true, &event, None);
                }
                Err(e) => {
                    if !args.event_type.is_empty() || args.user_id.is_some() || args.correlation_id.is_some() {
                        continue; // filters select valid events
                    }
                    let raw = Value::String(String::from_utf8_lossy(&payload[..payload.len().min(2000)]).into());
                    let why = serde_json::json!({"code": e.code(), "message": e.to_string(), "errors": e.validation_errors()});
                    print_record(&args, &coords, &m, key.as_deref(), false, &raw, Some(&why));
                }
            }
        }
        printed += 1;
    }
    Ok(ExitCode::SUCCESS)
}

fn assign_all(consumer: &StreamConsumer, topic: &str, from_beginning: bool) -> anyhow::Result<()> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(15))?;
    let t = md.topics().first().ok_or_else(|| anyhow::anyhow!("topic {topic} not found"))?;
    if let Some(err) = t.error() {
        anyhow::bail!("topic {topic}: {err:?} (run `moonx-ws create-topics`?)");
    }
    let mut tpl = TopicPartitionList::new();
    let start = if from_beginning { Offset::Beginning } else { Offset::End };
    for p in t.partitions() {
        tpl.add_partition_offset(topic, p.id(), start)?;
    }
    consumer.assign(&tpl)?;
    Ok(())
}

fn matches(args: &Args, e: &Event) -> bool {
    let m = &e.metadata;
    (args.event_type.is_empty() || args.event_type.iter().any(|t| t == m.event_type.as_str()))
        && args.user_id.as_ref().is_none_or(|u| m.user_id.as_ref() == Some(u))
        && args.correlation_id.as_ref().is_none_or(|c| &m.correlation_id == c)
}

/// The filters on a dead letter: the type from `dlq.event_type`; the user
/// and correlation id from the original value's metadata (or legacy
/// top-level fields), the correlation id also from the original
/// `correlationId` header.
fn dlq_matches(args: &Args, value: Option<&[u8]>, record_headers: &[(String, Option<Vec<u8>>)]) -> bool {
    let header = |name: &str| {
        record_headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.as_deref()).map(String::from_utf8_lossy)
    };
    if !args.event_type.is_empty() {
        let t = header(dead_letter::headers::EVENT_TYPE);
        if !args.event_type.iter().any(|want| t.as_deref() == Some(want.as_str())) {
            return false;
        }
    }
    if args.user_id.is_none() && args.correlation_id.is_none() {
        return true;
    }
    let doc: Value = value.and_then(|v| serde_json::from_slice(v).ok()).unwrap_or(Value::Null);
    let field = |name: &str| {
        doc.pointer(&format!("/metadata/{name}"))
            .or_else(|| doc.get(name))
            .or_else(|| doc.pointer(&format!("/data/{name}")))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let user_ok = args.user_id.as_ref().is_none_or(|u| field("userId").as_ref() == Some(u));
    let correlation_ok = args.correlation_id.as_ref().is_none_or(|c| {
        field("correlationId").as_ref() == Some(c)
            || header(crate::kafka::headers::CORRELATION_ID).as_deref() == Some(c.as_str())
    });
    user_ok && correlation_ok
}

fn headers_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Vec<(String, Option<Vec<u8>>)> {
    use rdkafka::message::Headers;
    m.headers()
        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
        .unwrap_or_default()
}

/// Prints a dead letter: why (reason, message, every listed error), where
/// from, and the original value (its size; the text, cut for the terminal).
fn print_dead_letter(args: &Args, coords: &str, m: &rdkafka::message::BorrowedMessage<'_>, key: Option<&str>, letter: &Value) {
    if args.json {
        print_record(args, coords, m, key, true, letter, None);
        return;
    }
    let s = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    println!("── {coords}  key={}  DEAD LETTER reason={}", key.unwrap_or("-"), s(&letter["reason"]));
    println!("   {}", s(&letter["message"]));
    for e in letter["errors"].as_array().into_iter().flatten() {
        println!("   {} [{}]: {}", s(&e["path"]), s(&e["code"]), s(&e["message"]));
    }
    if letter["errorsOmitted"].as_u64().unwrap_or(0) > 0 {
        println!("   … and {} more errors", letter["errorsOmitted"]);
    }
    let src = &letter["source"];
    println!(
        "   from {} p{} @{}  type={} eventId={} attempts={} instance={}",
        s(&src["topic"]), src["partition"], src["offset"], s(&letter["eventType"]), s(&letter["eventId"]),
        letter["attempts"], s(&letter["instance"])
    );
    match (&letter["payloadBytes"], &letter["payloadTruncatedFrom"]) {
        (Value::Null, _) => println!("   original: none (a tombstone)"),
        (n, Value::Null) => println!("   original: {n} bytes"),
        (n, from) => println!("   original: {from} bytes, of which the DLQ kept the first {n} (the rest was refused)"),
    }
    const SHOWN: usize = 2000;
    if let Some(text) = letter["payloadText"].as_str() {
        let end = (0..=SHOWN.min(text.len())).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        println!("{}{}", &text[..end], if end < text.len() { " …" } else { "" });
    } else if let Some(b64) = letter["payloadBase64"].as_str() {
        println!("   (not UTF-8) base64: {}{}", &b64[..b64.len().min(SHOWN)], if b64.len() > SHOWN { " …" } else { "" });
    }
}

fn print_record(
    args: &Args,
    coords: &str,
    m: &rdkafka::message::BorrowedMessage<'_>,
    key: Option<&str>,
    valid: bool,
    body: &impl serde::Serialize,
    error: Option<&Value>,
) {
    if args.json {
        let mut line = serde_json::json!({
            "topic": m.topic(), "partition": m.partition(), "offset": m.offset(), "key": key, "valid": valid,
        });
        line[if args.dlq { "deadLetter" } else if valid { "event" } else { "raw" }] = serde_json::to_value(body).unwrap_or_default();
        if let Some(e) = error {
            line["error"] = e.clone();
        }
        println!("{line}");
        return;
    }
    let status = if valid { String::new() } else { "  INVALID".to_owned() };
    println!("── {coords}  key={}{status}", key.unwrap_or("-"));
    if let Some(e) = error {
        println!("   {}", e["message"].as_str().unwrap_or_default());
    }
    println!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
}
