//! `moonx-ws produce`: build events with the factory, validate, send keyed
//! by partition key, and print where each landed. Invalid input is refused
//! with every error, and nothing is sent.

use crate::config::KafkaArgs;
use crate::kafka::producer::{create_producer, send_event};
use moonx_events::decode::{decode_event, DecodeOptions};
use moonx_events::{DataClassification, Event, EventFactory, EventOptions, EventType, TypeRegistry};
use serde_json::Value;
use std::io::BufRead;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Event type, e.g. price.updated (omit with --file).
    #[arg(required_unless_present = "file")]
    pub event_type: Option<String>,
    /// The event's data as JSON (omit with --file).
    #[arg(required_unless_present = "file")]
    pub data: Option<String>,
    #[arg(long)]
    pub user_id: Option<String>,
    #[arg(long)]
    pub correlation_id: Option<String>,
    #[arg(long)]
    pub causation_id: Option<String>,
    /// Producing service named in metadata.source.
    #[arg(long, default_value = "moonx-ws-cli")]
    pub source: String,
    /// Raise the classification above the type's default.
    #[arg(long, value_parser = parse_classification)]
    pub classification: Option<DataClassification>,
    /// Send this many events (each with its own eventId).
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// JSON lines: each `{"type":…,"data":{…},"userId"?,"correlationId"?,"causationId"?}`
    /// built by the factory, or a whole envelope `{"metadata":…,"data":…}` sent as is
    /// after validation. `-` reads standard input.
    #[arg(long, conflicts_with_all = ["event_type", "data"])]
    pub file: Option<std::path::PathBuf>,
    /// Print one JSON object per event instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_classification(s: &str) -> Result<DataClassification, String> {
    DataClassification::parse(s).ok_or_else(|| format!("{s:?} is not public, internal, confidential or restricted"))
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let factory = EventFactory::new(args.source.clone());
    let events = match &args.file {
        Some(path) => read_file(path, &factory)?,
        None => {
            let event_type = EventType::parse(args.event_type.as_deref().unwrap_or_default());
            let data_text = args.data.as_deref().unwrap_or_default();
            let data: Value = serde_json::from_str(data_text).map_err(|e| anyhow::anyhow!("DATA_JSON is not JSON: {e}"))?;
            let mut events = Vec::new();
            for _ in 0..args.count {
                let options = EventOptions {
                    user_id: args.user_id.clone(),
                    correlation_id: args.correlation_id.clone(),
                    causation_id: args.causation_id.clone(),
                    classification: args.classification,
                    ..Default::default()
                };
                events.push(factory.create_from_json(&event_type, data.clone(), options).map_err(refused)?);
            }
            events
        }
    };
    let producer = create_producer(&args.kafka.brokers)?;
    let sends = events.iter().map(|e| send_event(&producer, &args.kafka.main_topic, e));
    let results = futures::future::join_all(sends).await;
    let mut failed = 0;
    for (event, result) in events.iter().zip(results) {
        match result {
            Ok(d) if args.json => println!(
                "{}",
                serde_json::json!({"eventId": event.metadata.event_id, "eventType": event.metadata.event_type,
                    "key": event.metadata.partition, "partition": d.partition, "offset": d.offset})
            ),
            Ok(d) => println!(
                "sent {} {} key={} partition={} offset={}",
                event.metadata.event_type, event.metadata.event_id, event.metadata.partition, d.partition, d.offset
            ),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn refused(errors: moonx_events::ValidationErrors) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(|e| format!("  {} [{}]: {}", e.path, e.code.as_str(), e.message)).collect();
    anyhow::anyhow!("the event is invalid and was not sent:\n{}", lines.join("\n"))
}

fn read_file(path: &std::path::Path, factory: &EventFactory) -> anyhow::Result<Vec<Event>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?))
    };
    let registry = TypeRegistry::new();
    let mut events = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |e: anyhow::Error| anyhow::anyhow!("{}:{}: {e:#}", path.display(), n + 1);
        let v: Value = serde_json::from_str(&line).map_err(|e| at(e.into()))?;
        let event = if v.get("metadata").is_some() {
            decode_event(line.as_bytes(), &DecodeOptions::new(&registry)).map_err(|e| match e {
                moonx_events::DecodeError::Invalid(errors) => at(refused(errors)),
                other => at(other.into()),
            })?
        } else {
            let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            let event_type = text("type").ok_or_else(|| at(anyhow::anyhow!("missing \"type\"")))?;
            let options = EventOptions {
                user_id: text("userId"),
                correlation_id: text("correlationId"),
                causation_id: text("causationId"),
                ..Default::default()
            };
            let data = v.get("data").cloned().unwrap_or(Value::Null);
            factory.create_from_json(&EventType::parse(&event_type), data, options).map_err(|e| at(refused(e)))?
        };
        events.push(event);
    }
    Ok(events)
}
