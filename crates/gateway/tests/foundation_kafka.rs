//! The foundation against the real broker: create-topics (idempotent,
//! drift), produce → consume round trips of every type, and per-user
//! partitioning and order.

mod common;

use common::*;
use moonx_events::decode::{decode_event, DecodeOptions};
use moonx_events::TypeRegistry;
use moonx_ws::kafka::admin::{topic_layout, Admin};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn create_topics_is_idempotent_and_configs_read_back_as_specified() {
    let main = unique("test.layout");
    let dlq = format!("{main}.dlq");
    let env = [("KAFKA_MAIN_TOPIC", main.as_str()), ("EVENT_DEAD_LETTER_QUEUE_TOPIC", dlq.as_str())];

    let (ok, first, err) = run_cli(&["create-topics"], &env);
    assert!(ok, "first create-topics failed: {err}");
    assert!(first.contains(&format!("created   {main} (partitions=6)")), "{first}");
    assert!(first.contains(&format!("created   {dlq} (partitions=2)")), "{first}");

    let (ok, second, err) = run_cli(&["create-topics", "--fail-on-drift"], &env);
    assert!(ok, "second create-topics failed: {err}");
    assert!(!second.contains("created"), "second run created something: {second}");
    assert_eq!(second.lines().filter(|l| l.contains("(matches the layout)")).count(), 6, "{second}");

    let admin = Admin::connect(&brokers(), Duration::from_secs(30)).unwrap();
    let existing = admin.existing_topics().unwrap();
    for spec in topic_layout(&main, &dlq) {
        assert_eq!(existing.get(&spec.name), Some(&spec.partitions), "partitions of {}", spec.name);
        let configs = admin.topic_configs(&spec.name).await.unwrap();
        for (k, v) in &spec.configs {
            assert_eq!(configs.get(*k), Some(v), "{}: {k}", spec.name);
        }
    }
    // The exact values of SPEC section 4, independently of topic_layout.
    let main_cfg = admin.topic_configs(&main).await.unwrap();
    for (k, v) in [("cleanup.policy", "delete"), ("retention.ms", "604800000"), ("compression.type", "gzip"), ("max.message.bytes", "1000000")] {
        assert_eq!(main_cfg[k], v, "{k}");
    }
    assert_eq!(admin.topic_configs(&dlq).await.unwrap()["retention.ms"], "2592000000");
    assert_eq!(existing[&main], 6);
    assert_eq!(existing[&dlq], 2);
}

#[tokio::test]
async fn create_topics_reports_and_fixes_drift() {
    let main = unique("test.drift");
    let dlq = format!("{main}.dlq");
    let env = [("KAFKA_MAIN_TOPIC", main.as_str()), ("EVENT_DEAD_LETTER_QUEUE_TOPIC", dlq.as_str())];
    assert!(run_cli(&["create-topics"], &env).0);
    // Someone changes the DLQ retention by hand.
    let (ok, _, err) = run_cli(&["create-topics"], &env);
    assert!(ok, "{err}");
    let admin = Admin::connect(&brokers(), Duration::from_secs(30)).unwrap();
    let client = moonx_ws::kafka::client_config(&brokers()).create::<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>>().unwrap();
    // An operator's own override (segment.ms) beside a drifted retention.ms.
    // AlterConfigs replaces the whole set, so send both as a person would.
    let dlq_max = moonx_ws::kafka::admin::DLQ_MAX_MESSAGE_BYTES.to_string();
    let alter = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(&dlq))
        .set("retention.ms", "1000")
        .set("segment.ms", "3600000")
        .set("max.message.bytes", &dlq_max);
    for r in client.alter_configs(&[alter], &rdkafka::admin::AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
    // And a main topic with more partitions than the layout (Kafka cannot remove them).
    let np = rdkafka::admin::NewPartitions::new(&main, 8);
    for r in client.create_partitions(&[np], &rdkafka::admin::AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
    eventually("the main topic has 8 partitions", Duration::from_secs(30), || async {
        match admin.existing_topics().map_err(|e| e.to_string())?.get(&main) {
            Some(8) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (ok, out, _) = run_cli(&["create-topics", "--fail-on-drift"], &env);
    assert!(!ok, "drift must fail with --fail-on-drift");
    assert!(out.contains(&format!("DRIFT      {dlq}: retention.ms is 1000 (expected 2592000000)")), "{out}");
    let (ok, out, err) = run_cli(&["create-topics", "--fix-drift"], &env);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("fixed      {dlq}: retention.ms is 1000")), "{out}");
    assert!(
        out.contains(&format!("DRIFT      {main}: partitions is 8 (expected 6): cannot fix, Kafka cannot remove partitions")),
        "{out}"
    );
    assert!(!out.contains(&format!("fixed      {main}:")), "extra partitions are never reported fixed: {out}");
    let configs = admin.topic_configs(&dlq).await.unwrap();
    assert_eq!(configs["retention.ms"], "2592000000");
    assert_eq!(configs["segment.ms"], "3600000", "--fix-drift must keep the topic's other overrides");
    // Still reported on the next run, and --fail-on-drift still fails for it.
    let (ok, out, _) = run_cli(&["create-topics", "--fail-on-drift"], &env);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("exists    {dlq} (matches the layout)")), "{out}");
}

#[tokio::test]
async fn every_type_round_trips_with_its_metadata_intact() {
    let topics = create_topics("roundtrip").await;
    let producer = producer();
    let mut sent = HashMap::new();
    for (n, t) in ALL_TYPES.iter().enumerate() {
        let event = sample_event(t, "user-rt", n);
        let d = moonx_ws::kafka::producer::send_event(&producer, &topics.main, &event).await.unwrap();
        sent.insert(event.metadata.event_id, (event, d));
    }
    let records = read_topic(&topics.main, ALL_TYPES.len(), Duration::from_secs(30)).await;
    assert_eq!(records.len(), ALL_TYPES.len());
    let registry = TypeRegistry::new();
    for (partition, offset, key, payload, headers) in records {
        let event = decode_event(&payload, &DecodeOptions::new(&registry)).expect("valid on the way back");
        let (original, delivered) = &sent[&event.metadata.event_id];
        assert_eq!(&event, original, "the whole event, metadata included, survives the trip");
        assert_eq!((partition, offset), (delivered.partition, delivered.offset));
        assert_eq!(key.as_deref(), Some(original.metadata.partition.as_bytes()), "keyed by partition key");
        let h: HashMap<_, _> = headers.into_iter().collect();
        assert_eq!(h["eventType"], original.metadata.event_type.as_str().as_bytes());
        assert_eq!(h["eventId"], original.metadata.event_id.to_string().as_bytes());
    }
}

#[tokio::test]
async fn the_cli_produces_what_tail_shows() {
    let topics = create_topics("cli").await;
    let env = [("KAFKA_MAIN_TOPIC", topics.main.as_str())];
    let data = r#"{"token":"ETH","chainId":1,"price":"3000.00","priceUsd":"3000.00","change24h":"0.05","volume24h":"1000000"}"#;
    let (ok, out, err) = run_cli(&["produce", "price.updated", data, "--correlation-id", "corr-1", "--json"], &env);
    assert!(ok, "{err}");
    let produced: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(produced["key"], "prices");

    // Invalid input is refused with its errors, and nothing is sent.
    let (ok, _, err) = run_cli(&["produce", "order.created", r#"{"orderId":"o1"}"#, "--classification", "public"], &env);
    assert!(!ok);
    assert!(err.contains("/metadata/dataClassification [classification_downgrade]"), "{err}");
    assert!(err.contains("/data/amountIn [required]"), "{err}");

    // A garbage record is shown as invalid, not crashed on.
    send_raw(&producer(), &topics.main, None, b"\xff\xfe not json").await;

    let (ok, out, err) = run_cli(&["tail", "--from-beginning", "--json", "--max", "2", "--idle-exit-secs", "20"], &env);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{out}");
    let valid = lines.iter().find(|l| l["valid"] == true).expect("the event");
    let m = &valid["event"]["metadata"];
    assert_eq!(m["eventId"], produced["eventId"]);
    assert_eq!(m["correlationId"], "corr-1");
    assert_eq!(m["dataClassification"], "public");
    assert_eq!(m["partition"], "prices");
    assert_eq!(valid["event"]["data"]["price"], "3000.00");
    let invalid = lines.iter().find(|l| l["valid"] == false).expect("the garbage");
    assert_eq!(invalid["error"]["code"], "invalid_json");

    // Filters: an order produced last is the first (and only) line of
    // `--type order.created`, so the price and the garbage before it were skipped.
    let order = r#"{"orderId":"o1","userId":"user-t","tokenIn":"ETH","tokenOut":"USDT","amountIn":"1","amountOutExpected":"3000","chainId":1,"orderType":"market","status":"pending"}"#;
    let (ok, out, err) = run_cli(&["produce", "order.created", order, "--json"], &env);
    assert!(ok, "{err}");
    let order_id = serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["eventId"].clone();
    let (ok, out, err) = run_cli(&["tail", "--from-beginning", "--json", "--type", "order.created", "--max", "1", "--idle-exit-secs", "20"], &env);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["event"]["metadata"]["eventId"], order_id);
}

#[tokio::test]
async fn a_users_events_share_one_partition_in_order() {
    let topics = create_topics("order").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    // Every one of these carries orderId "order-<n>": n is the production order.
    let types = ["order.created", "order.updated", "trade.executed", "trade.failed", "order.cancelled"];
    let mut lines = Vec::new();
    for n in 0..60 {
        let user = format!("user-{}", n % 3);
        let t = types[n % types.len()];
        let data = sample_data(t, &user, n);
        lines.push(serde_json::json!({"type": t, "data": data}).to_string());
    }
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (ok, _, err) = run_cli(&["produce", "--file", file.to_str().unwrap()], &[("KAFKA_MAIN_TOPIC", topics.main.as_str())]);
    assert!(ok, "{err}");

    let records = read_topic(&topics.main, 60, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 60);
    let registry = TypeRegistry::new();
    let mut by_user: HashMap<String, Vec<(i32, i64, u64)>> = HashMap::new();
    for (p, o, _, payload, _) in &records {
        let raw: serde_json::Value = serde_json::from_slice(payload).unwrap();
        let e = decode_event(payload, &DecodeOptions::new(&registry)).unwrap();
        let user = e.metadata.user_id.clone().unwrap();
        assert_eq!(e.metadata.partition, user);
        by_user.entry(user).or_default().push((*p, *o, raw["data"]["orderId"].as_str().unwrap().trim_start_matches("order-").parse::<u64>().unwrap()));
    }
    assert_eq!(by_user.len(), 3);
    for (user, mut recs) in by_user {
        let partitions: std::collections::HashSet<i32> = recs.iter().map(|r| r.0).collect();
        assert_eq!(partitions.len(), 1, "{user} spread over {partitions:?}");
        recs.sort_by_key(|r| r.1);
        let seqs: Vec<u64> = recs.iter().map(|r| r.2).collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "{user}'s events out of order in the partition");
        assert_eq!(seqs.len(), 20);
    }
}
