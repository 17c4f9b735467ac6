//! `moonx-ws tail`: decode and pretty-print the main topic (or the DLQ),
//! filtered by type, user or correlation id. It reads without a consumer
//! group (partitions are assigned directly), so it never moves anyone's
//! committed position. Invalid records are shown as invalid, with why.

use crate::config::KafkaArgs;
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
            let body: Value = serde_json::from_slice(payload).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into()));
            if !dlq_matches(&args, &body) {
                continue;
            }
            print_record(&args, &coords, &m, key.as_deref(), true, &body, None);
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

fn dlq_matches(args: &Args, body: &Value) -> bool {
    let text = |k: &str| body.get(k).and_then(Value::as_str);
    args.event_type.is_empty() || args.event_type.iter().any(|t| Some(t.as_str()) == text("eventType"))
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
