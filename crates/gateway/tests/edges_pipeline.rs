//! The pipeline's edges against the real broker and real sockets (issue 9):
//! entitlement with validation off, raised classifications, dead letters of
//! any size the main topic accepts, the DLQ switch, the `empty_record`,
//! `no_handler` and `no_audience` reasons, handler retries, and `tail`'s
//! filters on events and dead letters.

mod common;

use common::ws::Client;
use common::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const T10: Duration = Duration::from_secs(10);
const KEY: &str = "edges-key";

/// A dead letter as read back: key, value (`None`: a tombstone), headers.
struct Letter {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: HashMap<String, String>,
}

/// Reads `count` records of the DLQ (from the beginning), or panics after `timeout`.
async fn read_letters(topic: &str, count: usize, timeout: Duration) -> Vec<Letter> {
    let consumer: StreamConsumer = moonx_ws::kafka::client_config(&brokers())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => panic!("only {} of {count} dead letters in {topic} after {timeout:?}", out.len()),
        };
        let headers = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
            .unwrap_or_default();
        out.push(Letter { key: m.key().map(<[u8]>::to_vec), value: m.payload().map(<[u8]>::to_vec), headers });
    }
    out
}

/// The high watermark summed over a topic's partitions (how many records it ever got).
fn record_count(topic: &str) -> i64 {
    let consumer: StreamConsumer = moonx_ws::kafka::client_config(&brokers()).set("group.id", unique("wm")).create().unwrap();
    let md = consumer.fetch_metadata(Some(topic), T10).unwrap();
    md.topics()[0].partitions().iter().map(|p| consumer.fetch_watermarks(topic, p.id(), T10).unwrap().1).sum()
}

/// Event frames until the one with `marker` as eventId (included), or panics after `timeout`.
async fn events_until(c: &mut Client, marker: &str, timeout: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = c.recv(left).await.unwrap_or_else(|| panic!("no event {marker} within {timeout:?}; got {out:?}"));
        if v["type"] == "event" {
            let done = v["event"]["metadata"]["eventId"] == marker;
            out.push(v);
            if done {
                return out;
            }
        }
    }
}

fn ids_of(frames: &[Value]) -> HashSet<String> {
    frames.iter().filter_map(|f| f["event"]["metadata"]["eventId"].as_str().map(str::to_owned)).collect()
}

/// A valid vector's input, with a fresh eventId.
fn vector(name: &str) -> Value {
    let path = format!("{}/../../schema/vectors/valid/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut input = v["input"].clone();
    input["metadata"]["eventId"] = json!(uuid::Uuid::new_v4().to_string());
    input
}

fn id(v: &Value) -> String {
    v["metadata"]["eventId"].as_str().unwrap().to_owned()
}

fn price_marker(n: usize) -> moonx_events::Event {
    sample_event("price.updated", "nobody", n)
}

async fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(url).json(body).header("X-API-Key", KEY).timeout(T10).send().await.expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn send_json(topic: &str, key: &str, v: &Value) -> (i32, i64) {
    send_raw(&producer(), topic, Some(key), v.to_string().as_bytes()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn with_validation_off_a_downgraded_order_reaches_only_its_owner_and_odd_records_get_their_reason() {
    let topics = create_topics("valoff").await;
    let gw = Gateway::start(GatewayConfig { extra_env: vec![("EVENT_VALIDATION_ENABLED", "false".into())], ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    let mut owner = Client::authed(&gw.ws_url(), "user-A", &[]).await;
    let mut other = Client::authed(&gw.ws_url(), "user-B", &[]).await;
    for c in [&mut owner, &mut other] {
        c.subscribe("prices").await;
        c.subscribe("orders").await;
    }
    // The issue's repro: user-A's order declared public.
    let mut order = serde_json::to_value(sample_event("order.created", "user-A", 1)).unwrap();
    order["metadata"]["dataClassification"] = json!("public");
    send_json(&topics.main, "user-A", &order).await;
    let got = events_until(&mut owner, &id(&order), T10 * 3).await;
    assert_eq!(got.last().unwrap()["channel"], "orders");
    // Anything leaked to user-B was queued with the owner's frame; a marker behind it shows it.
    let marker = price_marker(2);
    moonx_ws::kafka::producer::send_event(&producer(), &topics.main, &marker).await.unwrap();
    let seen = events_until(&mut other, &marker.metadata.event_id.to_string(), T10 * 3).await;
    assert!(!ids_of(&seen).contains(&id(&order)), "user-B received user-A's order: {seen:?}");
    assert_eq!(seen.len(), 1, "user-B gets only the marker: {seen:?}");

    // A tombstone, an unknown type (no handler: validation off lets it decode),
    // and a raised price without an owner (no possible audience).
    let p = producer();
    let tombstone = FutureRecord::<str, ()>::to(&topics.main).key("t-key");
    p.send(tombstone, T10).await.map_err(|(e, _)| e).unwrap();
    let mut unknown = serde_json::to_value(sample_event("price.updated", "x", 3)).unwrap();
    unknown["metadata"]["eventType"] = json!("reward.unknown");
    send_json(&topics.main, "u-key", &unknown).await;
    let mut ownerless = serde_json::to_value(sample_event("price.updated", "x", 4)).unwrap();
    ownerless["metadata"]["dataClassification"] = json!("confidential");
    send_json(&topics.main, "prices", &ownerless).await;

    let letters = read_letters(&topics.dlq, 3, Duration::from_secs(60)).await;
    let by_reason: HashMap<&str, &Letter> = letters.iter().map(|l| (l.headers["dlq.reason"].as_str(), l)).collect();
    let empty = by_reason["empty_record"];
    assert!(empty.value.is_none(), "a tombstone stays a tombstone in the DLQ");
    assert_eq!(empty.key.as_deref(), Some(&b"t-key"[..]));
    let no_handler = by_reason["no_handler"];
    assert_eq!(no_handler.value.as_deref(), Some(unknown.to_string().as_bytes()));
    assert_eq!(no_handler.headers["dlq.event_type"], "reward.unknown");
    assert_eq!(no_handler.headers["dlq.event_id"], id(&unknown));
    let no_audience = by_reason["no_audience"];
    assert_eq!(no_audience.value.as_deref(), Some(ownerless.to_string().as_bytes()));
    assert_eq!(no_audience.headers["dlq.event_type"], "price.updated");
    let m = gw.metrics().await;
    for reason in ["empty_record", "no_handler", "no_audience"] {
        assert_eq!(metric(&m, "moonx_ws_events_failed_total", &[("reason", reason)]), 1.0, "{reason}");
        assert_eq!(metric(&m, "moonx_ws_dlq_writes_total", &[("reason", reason)]), 1.0, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn raised_classifications_reach_exactly_their_audience_from_kafka_and_the_publish_api() {
    let topics = create_topics("raised").await;
    let gw = Gateway::start(GatewayConfig { extra_env: vec![("PUBLISH_API_KEYS", KEY.into())], ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    let url = gw.ws_url();
    let mut ops = Client::authed(&url, "ops", &["admin"]).await;
    let mut owner = Client::authed(&url, "user-456", &[]).await;
    let mut owner_admin = Client::authed(&url, "user-456", &["admin"]).await;
    let mut other = Client::authed(&url, "user-B", &[]).await;
    let mut anon = Client::connect(&url).await;
    for (c, channels) in [
        (&mut ops, &["prices", "system"][..]),
        (&mut owner, &["prices", "orders"]),
        (&mut owner_admin, &["prices", "system"]),
        (&mut other, &["prices", "orders"]),
        (&mut anon, &["prices"]),
    ] {
        for ch in channels {
            c.subscribe(ch).await;
        }
    }

    for via_api in [false, true] {
        let internal_price = vector("price.updated.raised-internal");
        let confidential_price = vector("price.updated.raised-confidential");
        let confidential_presence = vector("user.connected.raised-confidential");
        let sent = [&internal_price, &confidential_price, &confidential_presence];
        if via_api {
            let (code, body) = post(&format!("{}/api/events", gw.base()), &json!(sent)).await;
            assert_eq!(code, 200, "{body}");
        } else {
            for v in sent {
                send_json(&topics.main, v["metadata"]["partition"].as_str().unwrap(), v).await;
            }
        }
        // The one connection entitled to all three receives them first.
        let deadline = tokio::time::Instant::now() + T10 * 3;
        let mut frames = Vec::new();
        let wanted: HashSet<String> = sent.iter().map(|v| id(v)).collect();
        while !wanted.is_subset(&ids_of(&frames)) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = owner_admin.recv(left).await.unwrap_or_else(|| panic!("owner-admin did not get all three: {frames:?}"));
            if v["type"] == "event" {
                frames.push(v);
            }
        }
        let channel_of = |frames: &[Value], v: &Value| {
            frames.iter().find(|f| f["event"]["metadata"]["eventId"] == v["metadata"]["eventId"]).map(|f| f["channel"].clone())
        };
        assert_eq!(channel_of(&frames, &internal_price), Some(json!("system")), "internal goes to operators on system");
        assert_eq!(channel_of(&frames, &confidential_price), Some(json!("prices")), "confidential on the type's channel");
        assert_eq!(channel_of(&frames, &confidential_presence), Some(json!("system")));

        // A public marker behind them: every client reads up to it.
        let marker = serde_json::to_value(price_marker(10 + via_api as usize)).unwrap();
        if via_api {
            let (code, body) = post(&format!("{}/api/events", gw.base()), &marker).await;
            assert_eq!(code, 200, "{body}");
        } else {
            send_json(&topics.main, "prices", &marker).await;
        }
        let expected: [(&str, &mut Client, Vec<&Value>); 4] = [
            ("ops", &mut ops, vec![&internal_price]),
            ("owner", &mut owner, vec![&confidential_price]),
            ("other", &mut other, vec![]),
            ("anonymous", &mut anon, vec![]),
        ];
        for (who, c, entitled) in expected {
            let seen = ids_of(&events_until(c, &id(&marker), T10 * 3).await);
            for v in sent {
                assert_eq!(seen.contains(&id(v)), entitled.contains(&v), "{who} (via_api={via_api}): {}", v["metadata"]);
            }
        }
        events_until(&mut owner_admin, &id(&marker), T10 * 3).await;
    }

    // A raised event nobody may see is refused before anything is published.
    let mut ownerless = serde_json::to_value(price_marker(20)).unwrap();
    ownerless["metadata"]["dataClassification"] = json!("restricted");
    let (code, body) = post(&format!("{}/api/events", gw.base()), &ownerless).await;
    assert_eq!(code, 400, "{body}");
    // The publish API always validates, so the owner rule answers first.
    assert_eq!(body["invalid"][0]["errors"][0]["code"], "owner_required", "{body}");
    // Only public prices make the snapshot: a new subscriber gets the markers' tokens, never a raised price.
    let mut late = Client::authed(&url, "user-456", &[]).await;
    late.send_json(json!({"type": "subscribe", "channel": "prices"})).await;
    let mut snapshot = Vec::new();
    loop {
        let v = late.recv(T10).await.expect("subscribed");
        if v["type"] == "subscribed" {
            break;
        }
        snapshot.push(v);
    }
    // The snapshot is sent around the subscribe reply; read it up to a ping's pong.
    late.send_json(json!({"type": "ping"})).await;
    loop {
        let v = late.recv(T10).await.expect("pong");
        if v["type"] == "pong" {
            break;
        }
        snapshot.push(v);
    }
    assert!(!snapshot.is_empty(), "the markers' prices are in the snapshot");
    assert!(
        snapshot.iter().all(|f| f["event"]["metadata"]["dataClassification"] == "public"),
        "only public prices in the snapshot: {snapshot:?}"
    );
}

/// Bytes gzip cannot shrink (so the record really is that big on the wire).
fn incompressible(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_record_of_any_size_the_main_topic_accepts_is_dead_lettered_whole_and_nothing_stalls() {
    let topics = create_topics("bigdlq").await;
    let gw = Gateway::start(GatewayConfig::new(&topics));
    gw.wait_healthy().await;
    let p = producer();
    // The issue's repro: a 600 KB invalid event (valid JSON).
    let big = json!({"metadata": {"eventType": "price.updated", "userId": "user-3"}, "data": {"blob": "x".repeat(600_000)}})
        .to_string()
        .into_bytes();
    let big_at = send_raw(&p, &topics.main, Some("user-3"), &big).await;
    // And one just under the main topic's max.message.bytes (1,000,000), not even UTF-8.
    let huge = incompressible(990_000);
    let huge_at = send_raw(&p, &topics.main, Some("user-5"), &huge).await;
    // Valid events after them, on every partition (17 users, prices, system).
    let mut ids = Vec::new();
    for n in 0..120 {
        let e = sample_event(ALL_TYPES[n % ALL_TYPES.len()], &format!("user-{}", n % 17), n);
        ids.push(e.metadata.event_id.to_string());
        moonx_ws::kafka::producer::send_event(&p, &topics.main, &e).await.unwrap();
    }
    eventually("every valid event after the poison records routed", Duration::from_secs(60), || async {
        let r = gw.routed();
        let missing = ids.iter().filter(|id| !r.contains_key(*id)).count();
        if missing == 0 { Ok(()) } else { Err(format!("{missing} missing")) }
    })
    .await;
    let (code, body) = http_get(&format!("{}/health", gw.base())).await.unwrap();
    assert_eq!(code, 200, "{body}");

    let letters = read_letters(&topics.dlq, 2, Duration::from_secs(60)).await;
    for (at, original, reason) in [(big_at, &big, "invalid_event"), (huge_at, &huge, "invalid_json")] {
        let l = letters
            .iter()
            .find(|l| l.headers["dlq.source.offset"] == at.1.to_string() && l.headers["dlq.source.partition"] == at.0.to_string())
            .unwrap_or_else(|| panic!("no dead letter for {at:?}"));
        assert_eq!(l.headers["dlq.reason"], reason);
        assert!(l.value.as_deref() == Some(original.as_slice()), "the original {} bytes, byte for byte", original.len());
        assert!(!l.headers.contains_key("dlq.payload_truncated"));
    }
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_dlq_truncated_total", &[]), 0.0);
    assert_eq!(metric(&m, "moonx_ws_dlq_writes_total", &[]), 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_dlq_disabled_failures_are_counted_and_logged_and_the_offset_moves_on() {
    let topics = create_topics("dlqoff").await;
    let gw = Gateway::start(GatewayConfig { extra_env: vec![("EVENT_DEAD_LETTER_QUEUE_ENABLED", "false".into())], ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    let p = producer();
    let (partition, _) = send_raw(&p, &topics.main, Some("same-key"), b"garbage").await;
    let after = sample_event("order.created", "user-1", 1);
    let (after_partition, _) = send_raw(&p, &topics.main, Some("same-key"), &after.to_json_bytes()).await;
    assert_eq!(partition, after_partition);
    eventually("the event behind the failure is routed", Duration::from_secs(30), || async {
        if gw.routed().contains_key(&after.metadata.event_id.to_string()) { Ok(()) } else { Err("not yet".into()) }
    })
    .await;
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_events_failed_total", &[("reason", "invalid_json")]), 1.0);
    assert_eq!(metric(&m, "moonx_ws_dlq_writes_total", &[]), 0.0);
    assert_eq!(record_count(&topics.dlq), 0, "nothing written to the DLQ");
    assert!(gw.logs().contains("record not routed"), "the failure is logged");
    eventually("the consumer's position passes the failed record", Duration::from_secs(30), || async {
        let m = gw.metrics().await;
        let lag = metric(&m, "moonx_ws_consumer_lag", &[("topic", &topics.main), ("partition", &partition.to_string())]);
        let series = m.lines().filter(|l| l.starts_with("moonx_ws_consumer_lag{")).count();
        if lag == 0.0 && series > 0 { Ok(()) } else { Err(format!("lag {lag}")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_filters_events_and_dead_letters_by_user_and_correlation_id() {
    let topics = create_topics("tailf").await;
    let gw = Gateway::start(GatewayConfig::new(&topics));
    gw.wait_healthy().await;
    let p = producer();
    let mut valid: Vec<moonx_events::Event> = Vec::new();
    let mut invalid: Vec<Value> = Vec::new();
    for (n, user) in ["user-A", "user-B", "user-A"].into_iter().enumerate() {
        let mut e = sample_event("order.created", user, n);
        e.metadata.correlation_id = format!("corr-{user}");
        moonx_ws::kafka::producer::send_event(&p, &topics.main, &e).await.unwrap();
        valid.push(e);
        let mut bad = serde_json::to_value(sample_event("order.created", user, 10 + n)).unwrap();
        bad["metadata"]["dataClassification"] = json!("public");
        bad["metadata"]["correlationId"] = json!(format!("corr-{user}"));
        send_json(&topics.main, user, &bad).await;
        invalid.push(bad);
    }
    eventually("three dead letters written", Duration::from_secs(30), || async {
        let n = metric(&gw.metrics().await, "moonx_ws_dlq_writes_total", &[]);
        if n == 3.0 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
    let env = [("KAFKA_MAIN_TOPIC", topics.main.as_str()), ("EVENT_DEAD_LETTER_QUEUE_TOPIC", topics.dlq.as_str())];
    let tail = |extra: &[&str]| {
        let mut args = vec!["tail", "--from-beginning", "--json", "--idle-exit-secs", "20"];
        args.extend_from_slice(extra);
        let (ok, out, err) = run_cli(&args, &env);
        assert!(ok, "{err}");
        out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect::<Vec<_>>()
    };
    // user-A has 2 of 3 in each set: --max 2 stops on the explicit count, and a
    // filter that let user-B through would have shown user-B's within those 2.
    let ids = |lines: &[Value], at: &str| lines.iter().map(|l| l.pointer(at).unwrap().as_str().unwrap().to_owned()).collect::<HashSet<_>>();
    let a_valid: HashSet<String> = [0, 2].iter().map(|i| valid[*i].metadata.event_id.to_string()).collect();
    let a_invalid: HashSet<String> = [0, 2].iter().map(|i| id(&invalid[*i])).collect();
    assert_eq!(ids(&tail(&["--user-id", "user-A", "--max", "2"]), "/event/metadata/eventId"), a_valid);
    assert_eq!(ids(&tail(&["--correlation-id", "corr-user-A", "--max", "2"]), "/event/metadata/eventId"), a_valid);
    let dlq_user = tail(&["--dlq", "--user-id", "user-A", "--max", "2"]);
    assert_eq!(ids(&dlq_user, "/deadLetter/eventId"), a_invalid);
    for l in &dlq_user {
        assert_eq!(l["deadLetter"]["reason"], "invalid_event");
        assert_eq!(l["deadLetter"]["errors"][0]["code"], "classification_downgrade");
    }
    assert_eq!(ids(&tail(&["--dlq", "--correlation-id", "corr-user-A", "--max", "2"]), "/deadLetter/eventId"), a_invalid);
    // user-B's single dead letter, then the reader stops at --max 1 (user-A's later one is not shown).
    let b = tail(&["--dlq", "--correlation-id", "corr-user-B", "--max", "1"]);
    assert_eq!(ids(&b, "/deadLetter/eventId"), HashSet::from([id(&invalid[1])]));
    // The text form names the reason, the errors and the original size.
    let (ok, out, err) = run_cli(&["tail", "--dlq", "--from-beginning", "--max", "1", "--idle-exit-secs", "20", "--user-id", "user-B"], &env);
    assert!(ok, "{err}");
    assert!(out.contains("DEAD LETTER reason=invalid_event"), "{out}");
    assert!(out.contains("[classification_downgrade]"), "{out}");
    assert!(out.contains(&format!("original: {} bytes", invalid[1].to_string().len())), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_file_and_the_publish_api_refuse_a_partition_that_breaks_the_strategy() {
    let mut order = serde_json::to_value(sample_event("order.created", "user-p", 1)).unwrap();
    order["metadata"]["partition"] = json!("prices");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, format!("{order}\n")).unwrap();
    let topics = create_topics("partmis").await;
    let env = [("KAFKA_MAIN_TOPIC", topics.main.as_str())];
    let (ok, _, err) = run_cli(&["produce", "--file", file.to_str().unwrap()], &env);
    assert!(!ok, "produce --file must refuse it");
    assert!(err.contains("partition_mismatch"), "{err}");
    assert_eq!(record_count(&topics.main), 0, "nothing was sent");

    let gw = Gateway::start(GatewayConfig { extra_env: vec![("PUBLISH_API_KEYS", KEY.into())], ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    let (code, body) = post(&format!("{}/api/events", gw.base()), &order).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["invalid"][0]["errors"][0]["code"], "partition_mismatch", "{body}");
    assert_eq!(body["invalid"][0]["errors"][0]["path"], "/metadata/partition", "{body}");
    assert_eq!(record_count(&topics.main), 0, "nothing was published");
}

#[derive(clap::Parser)]
struct ServeCli {
    #[command(flatten)]
    serve: moonx_ws::config::ServeArgs,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transiently_failing_handler_is_retried_up_to_handler_max_attempts() {
    use clap::Parser as _;
    use moonx_events::{CustomType, DataClassification, EventFactory, EventOptions, EventType};
    use moonx_ws::deliver::{Audience, Channel};
    use moonx_ws::pipeline::router::{HandlerError, Route, Router};
    use std::sync::{Arc, Mutex};

    let topics = create_topics("retries").await;
    let group = unique("retries");
    let args = [
        "t", "--brokers", &brokers(), "--main-topic", &topics.main, "--dlq-topic", &topics.dlq, "--group-id", &group,
        "--instance-id", "r", "--auto-offset-reset", "earliest", "--handler-max-attempts", "4",
        "--handler-retry-backoff-ms", "1", "--host", "127.0.0.1", "--port", "0", "--jwt-secret", JWT_SECRET,
    ];
    let serve = ServeCli::try_parse_from(args).unwrap().serve;

    // `reward.flaky` fails transiently as many times as its data says, then routes to its owner.
    let attempts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut router = Router::with_built_in_handlers();
    let seen = attempts.clone();
    router
        .register(CustomType::new("reward.flaky", DataClassification::Confidential), move |event| {
            let mut seen = seen.lock().unwrap();
            let n = seen.entry(event.metadata.event_id.to_string()).or_insert(0);
            *n += 1;
            let failures = serde_json::to_value(&event.data).unwrap()["failures"].as_u64().unwrap();
            if *n <= failures {
                return Err(HandlerError::Transient(format!("attempt {n} of {failures} failing")));
            }
            let owner = event.metadata.user_id.clone().unwrap();
            Ok(vec![Route { channel: Channel::Trades, audience: Audience::User(owner) }])
        })
        .unwrap();
    let factory = EventFactory::new("rewards").with_registry(router.registry().clone());
    let flaky = |failures: u64| {
        factory
            .create_from_json(&EventType::parse("reward.flaky"), json!({"failures": failures}), EventOptions::user("user-7"))
            .unwrap()
    };

    let shutdown = tokio_util::sync::CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let gateway = moonx_ws::server::Gateway::new(serve).with_router(router);
    let task = tokio::spawn(gateway.run_with(shutdown.clone(), move |running| {
        let _ = ready_tx.send(running);
    }));
    let running = ready_rx.await.expect("the gateway starts");
    let base = format!("http://{}", running.addr);
    let mut client = Client::authed(&format!("ws://{}/ws", running.addr), "user-7", &[]).await;
    client.subscribe("trades").await;

    let recovers = flaky(2); // fails twice, routed on the third of 4 attempts
    let gives_up = flaky(10); // fails 4 times: dead-lettered with attempts=4
    let marker = flaky(0);
    let p = producer();
    for e in [&recovers, &gives_up, &marker] {
        moonx_ws::kafka::producer::send_event(&p, &topics.main, e).await.unwrap();
    }
    let frames = events_until(&mut client, &marker.metadata.event_id.to_string(), T10 * 3).await;
    assert_eq!(
        ids_of(&frames),
        HashSet::from([recovers.metadata.event_id.to_string(), marker.metadata.event_id.to_string()]),
        "{frames:?}"
    );
    let letters = read_letters(&topics.dlq, 1, Duration::from_secs(30)).await;
    assert_eq!(letters[0].headers["dlq.reason"], "handler_failed");
    assert_eq!(letters[0].headers["dlq.attempts"], "4");
    assert_eq!(letters[0].headers["dlq.event_id"], gives_up.metadata.event_id.to_string());
    assert_eq!(letters[0].value.as_deref(), Some(gives_up.to_json_bytes().as_slice()));
    let (_, m) = http_get(&format!("{base}/metrics")).await.unwrap();
    assert_eq!(metric(&m, "moonx_ws_handler_retries_total", &[("event_type", "reward.flaky")]), 5.0, "2 + 3 retries");
    assert_eq!(attempts.lock().unwrap()[&gives_up.metadata.event_id.to_string()], 4);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_the_dlq_refuses_for_good_becomes_a_bounded_fallback_letter_and_the_partition_moves_on() {
    let topics = create_topics("fallback").await;
    // A DLQ configured smaller than the layout says (drifted): a big dead letter is refused for good.
    let client = moonx_ws::kafka::client_config(&brokers()).create::<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>>().unwrap();
    let alter = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(&topics.dlq)).set("max.message.bytes", "50000");
    for r in client.alter_configs(&[alter], &rdkafka::admin::AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
    let admin = moonx_ws::kafka::admin::Admin::connect(&brokers(), T10).unwrap();
    eventually("the DLQ's limit is 50000", Duration::from_secs(30), || async {
        let c = admin.topic_configs(&topics.dlq).await.map_err(|e| e.to_string())?;
        if c.get("max.message.bytes").map(String::as_str) == Some("50000") { Ok(()) } else { Err(format!("{c:?}")) }
    })
    .await;
    let gw = Gateway::start(GatewayConfig::new(&topics));
    gw.wait_healthy().await;
    let p = producer();
    let poison = incompressible(600_000);
    let at = send_raw(&p, &topics.main, Some("user-9"), &poison).await;
    let after = sample_event("order.created", "user-9", 1);
    let after_at = send_raw(&p, &topics.main, Some("user-9"), &after.to_json_bytes()).await;
    assert_eq!(at.0, after_at.0, "same partition");
    eventually("the event behind the poison record is routed", Duration::from_secs(60), || async {
        if gw.routed().contains_key(&after.metadata.event_id.to_string()) { Ok(()) } else { Err("not yet".into()) }
    })
    .await;
    let letters = read_letters(&topics.dlq, 1, Duration::from_secs(30)).await;
    let l = &letters[0];
    assert_eq!(l.headers["dlq.reason"], "invalid_json");
    assert_eq!(l.headers["dlq.source.offset"], at.1.to_string());
    assert_eq!(l.headers["dlq.payload_truncated"], "600000");
    assert_eq!(l.value.as_deref(), Some(&poison[..moonx_ws::pipeline::dead_letter::FALLBACK_PREFIX_BYTES]), "a bounded prefix of the original");
    assert_eq!(l.key.as_deref(), Some(&b"user-9"[..]));
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_dlq_truncated_total", &[("reason", "invalid_json")]), 1.0);
    assert_eq!(metric(&m, "moonx_ws_dlq_writes_total", &[("reason", "invalid_json")]), 1.0);
    assert!(gw.logs().contains("fallback letter"), "the fallback is logged");
    let (code, body) = http_get(&format!("{}/health", gw.base())).await.unwrap();
    assert_eq!(code, 200, "{body}");
}
