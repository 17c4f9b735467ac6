//! The gateway pipeline against the real broker: routing, dead letters,
//! at-least-once across SIGKILL and broker restarts, several instances,
//! legacy topics, the processing switch, and metrics that agree.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const USERS: usize = 17;

fn valid_event(n: usize) -> moonx_events::Event {
    sample_event(ALL_TYPES[n % ALL_TYPES.len()], &format!("user-{}", n % USERS), n)
}

/// A malformed record, its DLQ reason, and one validation code it must get.
type Malformed = (Vec<u8>, &'static str, Option<&'static str>);

/// 100 malformed records of five kinds, 20 each, with the DLQ reason (and
/// for invalid events, one validation code) each must get.
fn malformed(n: usize) -> Malformed {
    let ts = moonx_events::validate::now_ms();
    match n % 5 {
        0 => (vec![0xff, 0xfe, (n % 256) as u8, 0x00, 0x80], "invalid_json", None),
        1 => (format!("{{\"metadata\": {{\"eventType\": \"price.updated\", broken {n}").into_bytes(), "invalid_json", None),
        2 => {
            let mut e = serde_json::to_value(valid_event(n)).unwrap();
            e["data"] = json!({"token": "ETH", "chainId": "one", "price": "1e5"});
            e["metadata"]["eventType"] = json!("price.updated");
            e["metadata"]["dataClassification"] = json!("public");
            (e.to_string().into_bytes(), "invalid_event", Some("type"))
        }
        3 => {
            let mut e = serde_json::to_value(sample_event("order.created", "victim", n)).unwrap();
            e["metadata"]["dataClassification"] = json!("public");
            (e.to_string().into_bytes(), "invalid_event", Some("classification_downgrade"))
        }
        _ => {
            let msg = if n.is_multiple_of(2) { json!({"type": "order_teleported", "timestamp": ts}) } else { json!({"type": "price_update"}) };
            (msg.to_string().into_bytes(), "legacy_unmigratable", None)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_events_are_routed_once_and_malformed_records_dead_lettered_with_their_reason() {
    let topics = create_topics("mixed").await;
    let gw = Gateway::start(GatewayConfig::new(&topics));
    gw.wait_healthy().await;

    let producer = producer();
    let mut expected_ids = HashSet::new();
    let mut bad: HashMap<(i32, i64), Malformed> = HashMap::new();
    let mut malformed_sent = 0;
    for n in 0..1000 {
        let e = valid_event(n);
        expected_ids.insert(e.metadata.event_id.to_string());
        moonx_ws::kafka::producer::send_event(&producer, &topics.main, &e).await.unwrap();
        if n % 10 == 3 {
            let (bytes, reason, code) = malformed(malformed_sent);
            let key = format!("k{}", malformed_sent % 7);
            let at = send_raw(&producer, &topics.main, Some(&key), &bytes).await;
            bad.insert(at, (bytes, reason, code));
            malformed_sent += 1;
        }
    }
    assert_eq!(malformed_sent, 100);

    eventually("every valid event routed", Duration::from_secs(60), || async {
        let routed = gw.routed();
        let missing = expected_ids.iter().filter(|id| !routed.contains_key(*id)).count();
        if missing == 0 { Ok(()) } else { Err(format!("{missing} not routed yet")) }
    })
    .await;
    let routed = gw.routed();
    assert_eq!(routed.len(), 1000, "nothing but the valid events is routed");
    assert!(routed.values().all(|c| *c == 1), "each valid event routed exactly once without restarts");

    let letters = read_topic(&topics.dlq, 100, Duration::from_secs(60)).await;
    assert_eq!(letters.len(), 100, "every malformed record is in the DLQ");
    for (_, _, key, payload, headers) in &letters {
        // Kafka Connect's DLQ shape: the value is the original record, the failure is in dlq.* headers.
        let h: HashMap<&str, &str> =
            headers.iter().map(|(k, v)| (k.as_str(), std::str::from_utf8(v).expect("dlq headers are text"))).collect();
        let at: (i32, i64) = (h["dlq.source.partition"].parse().unwrap(), h["dlq.source.offset"].parse().unwrap());
        let (bytes, reason, code) = bad.get(&at).unwrap_or_else(|| panic!("unexpected dead letter {h:?}"));
        assert_eq!(payload, bytes, "the value is the original bytes, byte for byte");
        assert_eq!(h["dlq.reason"], *reason, "{h:?}");
        assert_eq!(h["dlq.source.topic"], topics.main);
        assert_eq!(h["dlq.attempts"], "1");
        assert_eq!(h["dlq.id"], format!("{}/{}/{}", topics.main, at.0, at.1));
        assert!(h["dlq.failed_at"].parse::<u64>().unwrap() > 1_700_000_000_000);
        assert!(!h["dlq.message"].is_empty());
        assert!(h["dlq.source.timestamp"].parse::<i64>().unwrap() > 1_700_000_000_000);
        if let Some(code) = code {
            let errors: Value = serde_json::from_str(h["dlq.errors"]).unwrap();
            let codes: Vec<&str> = errors.as_array().unwrap().iter().map(|e| e["code"].as_str().unwrap()).collect();
            assert!(codes.contains(code), "{codes:?} lacks {code}");
        }
        assert!(key.as_deref().unwrap().starts_with(b"k"), "original key kept");
        assert_eq!(h["dlq.source.key"].as_bytes(), key.as_deref().unwrap());
    }

    // The counters agree with what was produced.
    eventually("lag drops to zero", Duration::from_secs(20), || async {
        let m = gw.metrics().await;
        let lag = metric(&m, "moonx_ws_consumer_lag", &[("topic", &topics.main)]);
        let series = m.lines().filter(|l| l.starts_with("moonx_ws_consumer_lag{")).count();
        if lag == 0.0 && series == 6 { Ok(()) } else { Err(format!("lag {lag} over {series} series")) }
    })
    .await;
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_events_consumed_total", &[("topic", &topics.main)]), 1100.0);
    assert_eq!(metric(&m, "moonx_ws_events_processed_total", &[]), 1000.0);
    assert_eq!(metric(&m, "moonx_ws_events_processed_total", &[("event_type", "price.updated")]), 91.0);
    assert_eq!(metric(&m, "moonx_ws_events_failed_total", &[]), 100.0);
    assert_eq!(metric(&m, "moonx_ws_dlq_writes_total", &[("reason", "invalid_json")]), 40.0);
    assert_eq!(metric(&m, "moonx_ws_dlq_writes_total", &[("reason", "invalid_event")]), 40.0);
    assert_eq!(metric(&m, "moonx_ws_dlq_writes_total", &[("reason", "legacy_unmigratable")]), 20.0);
    assert_eq!(metric(&m, "moonx_ws_validation_failures_total", &[("code", "classification_downgrade")]), 20.0);
    assert_eq!(metric(&m, "moonx_ws_consumer_assigned_partitions", &[]), 6.0);
}

/// The end offsets of a topic summed over its partitions: how many records it ever got.
fn record_count(topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = moonx_ws::kafka::client_config(&brokers()).set("group.id", unique("wm")).create().unwrap();
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    md.topics()[0].partitions().iter().map(|p| consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).unwrap().1).sum()
}

/// Produces `count` valid events in the background at about `per_sec`.
fn produce_stream(topic: String, first: usize, count: usize, per_sec: u64) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let producer = producer();
        let mut ids = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_sec));
        for n in first..first + count {
            tick.tick().await;
            let e = valid_event(n);
            ids.push(e.metadata.event_id.to_string());
            moonx_ws::kafka::producer::send_event(&producer, &topic, &e).await.unwrap();
        }
        ids
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_loses_nothing() {
    let topics = create_topics("sigkill").await;
    let mut gw = Gateway::start(GatewayConfig::new(&topics));
    gw.wait_healthy().await;
    let stream = produce_stream(topics.main.clone(), 0, 3000, 1000);

    eventually("some events routed", Duration::from_secs(30), || async {
        let n = gw.routed().len();
        if n >= 600 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
    gw.restart(); // SIGKILL, then start again with the same instance id and audit log
    let ids = stream.await.unwrap();
    gw.wait_healthy().await;

    eventually("every event routed after the crash", Duration::from_secs(60), || async {
        let routed = gw.routed();
        let missing = ids.iter().filter(|id| !routed.contains_key(*id)).count();
        if missing == 0 { Ok(()) } else { Err(format!("{missing} missing")) }
    })
    .await;
    let routed = gw.routed();
    let duplicates = routed.values().filter(|c| **c > 1).count();
    eprintln!("sigkill: {} events, {} routed twice (redelivered after the crash)", ids.len(), duplicates);
    assert_eq!(routed.len(), 3000);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_commits_so_a_restart_redelivers_nothing() {
    let topics = create_topics("sigterm").await;
    let mut gw = Gateway::start(GatewayConfig::new(&topics));
    gw.wait_healthy().await;
    let ids = produce_stream(topics.main.clone(), 0, 200, 2000).await.unwrap();
    eventually("routed", Duration::from_secs(30), || async {
        if gw.routed().len() == 200 { Ok(()) } else { Err(format!("{}", gw.routed().len())) }
    })
    .await;
    let status = gw.terminate();
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");
    assert!(gw.logs().contains("offsets committed on shutdown"), "{}", gw.logs());

    gw.restart();
    gw.wait_healthy().await;
    let more = produce_stream(topics.main.clone(), 200, 10, 100).await.unwrap();
    eventually("the new events routed", Duration::from_secs(30), || async {
        let r = gw.routed();
        if more.iter().all(|id| r.contains_key(id)) { Ok(()) } else { Err("waiting".into()) }
    })
    .await;
    let routed = gw.routed();
    assert!(ids.iter().all(|id| routed[id] == 1), "an event processed before SIGTERM came again");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_each_route_every_event_and_one_writes_dead_letters() {
    let topics = create_topics("twoinst").await;
    let group = unique("shared");
    let a = Gateway::start(GatewayConfig { group: group.clone(), instance: "gw-a".into(), ..GatewayConfig::new(&topics) });
    let b = Gateway::start(GatewayConfig {
        group: group.clone(),
        instance: "gw-b".into(),
        // Skipping (tests/skip.rs) is off: this checks that b decodes and routes every record itself.
        extra_env: vec![("DLQ_WRITER", "false".into()), ("SKIP_WITHOUT_LOCAL_AUDIENCE", "false".into())],
        ..GatewayConfig::new(&topics)
    });
    a.wait_healthy().await;
    b.wait_healthy().await;
    let ids = produce_stream(topics.main.clone(), 0, 300, 3000).await.unwrap();
    let p = producer();
    for n in 0..5 {
        send_raw(&p, &topics.main, None, format!("not json {n}").as_bytes()).await;
    }
    for gw in [&a, &b] {
        eventually("instance routed every event", Duration::from_secs(60), || async {
            let r = gw.routed();
            let missing = ids.iter().filter(|id| !r.contains_key(*id)).count();
            let m = gw.metrics().await;
            let consumed = metric(&m, "moonx_ws_events_consumed_total", &[]);
            if missing == 0 && consumed == 305.0 { Ok(()) } else { Err(format!("{missing} missing, {consumed} consumed")) }
        })
        .await;
        assert_eq!(metric(&gw.metrics().await, "moonx_ws_consumer_assigned_partitions", &[]), 6.0, "every partition");
    }
    eventually("the writer wrote the five dead letters", Duration::from_secs(30), || async {
        let written = metric(&a.metrics().await, "moonx_ws_dlq_writes_total", &[]);
        let failed_b = metric(&b.metrics().await, "moonx_ws_events_failed_total", &[("reason", "invalid_json")]);
        if written == 5.0 && failed_b == 5.0 { Ok(()) } else { Err(format!("{written} written by a, {failed_b} failed on b")) }
    })
    .await;
    assert_eq!(metric(&b.metrics().await, "moonx_ws_dlq_writes_total", &[]), 0.0, "b is not a writer");
    // The topic's end offsets: exactly five records, one per failure, not one per instance.
    assert_eq!(record_count(&topics.dlq), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_topics_are_migrated_and_routed() {
    let topics = create_topics("legacy").await;
    let admin = moonx_ws::kafka::admin::Admin::connect(&brokers(), Duration::from_secs(30)).unwrap();
    let legacy: Vec<_> = moonx_ws::kafka::admin::topic_layout("x", "y").into_iter().skip(2).collect();
    admin.apply_layout(&legacy, 1, false).await.unwrap();

    let gw = Gateway::start(GatewayConfig {
        extra_env: vec![("KAFKA_LEGACY_TOPICS_ENABLED", "true".into())],
        ..GatewayConfig::new(&topics)
    });
    gw.wait_healthy().await;
    let tag = unique("legacy");
    let ts = moonx_events::validate::now_ms();
    let messages = [
        ("moonx.price.updates", json!({"type": "price_update", "timestamp": ts, "token": tag, "chainId": 1, "price": "1", "priceUsd": "1", "change24h": "0", "volume24h": "5"})),
        ("moonx.order.updates", json!({"type": "order_created", "timestamp": ts / 1000, "orderId": tag, "userId": "u-legacy", "tokenIn": "ETH", "tokenOut": "USDT",
            "amountIn": "1", "amountOutExpected": "3000", "chainId": 1, "orderType": "market", "status": "pending"})),
        ("moonx.portfolio.updates", json!({"type": "portfolio_update", "timestamp": ts, "data": {"userId": "u-legacy", "totalValueUsd": "10", "holdings": []}, "note": tag})),
        ("moonx.trade.updates", json!({"type": "trade_executed", "timestamp": ts, "tradeId": tag, "orderId": "o", "userId": "u-legacy", "tokenIn": "ETH",
            "tokenOut": "USDT", "amountIn": "1", "amountOut": "3000", "price": "3000", "chainId": 1, "txHash": "0xabc"})),
    ];
    let registry = moonx_events::TypeRegistry::new();
    let p = producer();
    let mut expected = Vec::new();
    for (topic, msg) in &messages {
        let bytes = msg.to_string().into_bytes();
        let doc = moonx_events::legacy::migrate(&serde_json::from_slice(&bytes).unwrap(), Some(topic), &registry).unwrap();
        expected.push((doc["metadata"]["eventId"].as_str().unwrap().to_owned(), doc["metadata"]["eventType"].as_str().unwrap().to_owned()));
        send_raw(&p, topic, Some("legacy"), &bytes).await;
    }
    // A type on the wrong legacy topic cannot be migrated.
    let wrong = json!({"type": "trade_executed", "timestamp": ts, "tradeId": tag}).to_string();
    let wrong_at = send_raw(&p, "moonx.price.updates", None, wrong.as_bytes()).await;

    eventually("legacy events routed", Duration::from_secs(60), || async {
        let r = gw.routed();
        let missing: Vec<_> = expected.iter().filter(|(id, _)| !r.contains_key(id)).collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("{missing:?}")) }
    })
    .await;
    let audit = std::fs::read_to_string(&gw.audit).unwrap();
    for (id, t) in &expected {
        let line: Value = audit.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).find(|v| v["eventId"] == *id).unwrap();
        assert_eq!(line["eventType"], *t);
    }
    // The legacy topics are shared and read from the earliest offset, so
    // older runs' unmigratable records are dead-lettered too: wait for this
    // run's letter itself, not for a count.
    eventually("the unmigratable record's dead letter names its source", Duration::from_secs(60), || async {
        // Read exactly as many dead letters as were written (no waiting for silence).
        let written = metric(&gw.metrics().await, "moonx_ws_dlq_writes_total", &[]) as usize;
        let letters = read_topic(&topics.dlq, written, Duration::from_secs(30)).await;
        if letters.len() != written {
            return Err(format!("{} of {written} letters read", letters.len()));
        }
        let found = letters.iter().any(|(_, _, _, _, headers)| {
            let h = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
            h("dlq.source.topic").as_deref() == Some("moonx.price.updates")
                && h("dlq.source.offset") == Some(wrong_at.1.to_string())
                && h("dlq.reason").as_deref() == Some("legacy_unmigratable")
        });
        if found { Ok(()) } else { Err(format!("not among the {written} letters yet")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_processing_disabled_nothing_is_consumed() {
    let topics = create_topics("off").await;
    let gw = Gateway::start(GatewayConfig { extra_env: vec![("EVENT_PROCESSING_ENABLED", "false".into())], ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    let (code, body) = http_get(&format!("{}/health", gw.base())).await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["processing"], "disabled");
    let ids = produce_stream(topics.main.clone(), 0, 20, 1000).await.unwrap();
    // A reference instance with processing on routes all 20: time enough for
    // the other to have consumed them, were it consuming.
    let reference = Gateway::start(GatewayConfig { instance: "reference".into(), ..GatewayConfig::new(&topics) });
    eventually("the reference instance routes the 20 events", Duration::from_secs(30), || async {
        let r = reference.routed();
        if ids.iter().all(|id| r.contains_key(id)) { Ok(()) } else { Err(format!("{} routed", r.len())) }
    })
    .await;
    assert!(gw.routed().is_empty());
    assert_eq!(metric(&gw.metrics().await, "moonx_ws_events_consumed_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_dlq_holds_the_offset_until_it_can_be_written() {
    let topics = create_topics("dlqdown").await;
    let mut gw = Gateway::start(GatewayConfig {
        // A topic name Kafka refuses: every dead-letter write fails.
        extra_env: vec![("EVENT_DEAD_LETTER_QUEUE_TOPIC", "no such topic!".into())],
        ..GatewayConfig::new(&topics)
    });
    gw.wait_healthy().await;
    let p = producer();
    send_raw(&p, &topics.main, Some("x"), b"garbage").await;
    let after = produce_stream(topics.main.clone(), 0, 5, 100).await.unwrap();
    eventually("health reports the DLQ", Duration::from_secs(30), || async {
        let (code, body) = http_get(&format!("{}/health", gw.base())).await.map_err(|e| e.to_string())?;
        if code == 503 && body.contains("dead-letter") { Ok(()) } else { Err(format!("{code} {body}")) }
    })
    .await;
    assert!(metric(&gw.metrics().await, "moonx_ws_dlq_write_errors_total", &[]) >= 1.0);

    // Fix the configuration and restart: the record's offset was never
    // committed, so it comes back and now reaches the DLQ; the events behind it follow.
    gw.set_env("EVENT_DEAD_LETTER_QUEUE_TOPIC", &topics.dlq);
    gw.restart();
    gw.wait_healthy().await;
    eventually("the events after it are routed", Duration::from_secs(30), || async {
        let r = gw.routed();
        if after.iter().all(|id| r.contains_key(id)) { Ok(()) } else { Err("waiting".into()) }
    })
    .await;
    let letters = read_topic(&topics.dlq, 1, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].3, b"garbage", "the dead letter's value is the original record");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_stream_loses_nothing() {
    // A broker of this test's own, so that restarting it disturbs no other test.
    let port: u16 = std::env::var("KAFKA_RESTART_TEST_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(19092);
    let broker = ExtraBroker::start(port);
    let topics = create_topics_on(&broker.brokers(), "restart").await;
    let gw = Gateway::start(GatewayConfig { extra_env: vec![("KAFKA_BROKERS", broker.brokers())], ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;

    let brokers = broker.brokers();
    let stream = {
        let topic = topics.main.clone();
        let brokers = brokers.clone();
        tokio::spawn(async move {
            let producer = producer_on(&brokers);
            let mut ids = Vec::new();
            for n in 0..600 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let e = valid_event(n);
                ids.push(e.metadata.event_id.to_string());
                // Delivery is awaited in the background: a send may wait out the restart.
                let p = producer.clone();
                let topic = topic.clone();
                tokio::spawn(async move { moonx_ws::kafka::producer::send_event(&p, &topic, &e).await.expect("delivered after the restart") });
            }
            rdkafka::producer::Producer::flush(&producer, Duration::from_secs(60)).unwrap();
            ids
        })
    };
    eventually("some events routed", Duration::from_secs(30), || async {
        let n = gw.routed().len();
        if n >= 150 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
    broker.run("stop");
    eventually("health turns 503 while the broker is away", Duration::from_secs(30), || async {
        let (code, body) = http_get(&format!("{}/health", gw.base())).await.map_err(|e| e.to_string())?;
        if code == 503 { Ok(()) } else { Err(format!("{code} {body}")) }
    })
    .await;
    broker.run("start");
    let ids = stream.await.unwrap();
    gw.wait_healthy().await;
    eventually("every event routed after the restart", Duration::from_secs(90), || async {
        let r = gw.routed();
        let missing = ids.iter().filter(|id| !r.contains_key(*id)).count();
        if missing == 0 { Ok(()) } else { Err(format!("{missing} missing")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_at_start_gives_a_degraded_health_not_a_crash() {
    let topics = Topics { main: "unused".into(), dlq: "unused.dlq".into() };
    let mut gw = Gateway::start(GatewayConfig { extra_env: vec![("KAFKA_BROKERS", "127.0.0.1:1".into())], ..GatewayConfig::new(&topics) });
    eventually("health says why", Duration::from_secs(20), || async {
        let (code, body) = http_get(&format!("{}/health", gw.base())).await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if code == 503 && v["reason"].as_str().unwrap_or_default().contains("no connection to the Kafka brokers") { Ok(()) } else { Err(body) }
    })
    .await;
    assert!(gw.child.as_mut().unwrap().try_wait().unwrap().is_none(), "still running, retrying");
    assert_eq!(gw.terminate().code(), Some(0));
}

/// Sends a valid event to one partition (keyed by its user, as producers do); returns its id.
async fn send_to_partition(p: &rdkafka::producer::FutureProducer, topic: &str, partition: i32, n: usize) -> String {
    let e = valid_event(n);
    let id = e.metadata.event_id.to_string();
    let payload = serde_json::to_vec(&e).unwrap();
    let key = format!("user-{}", n % USERS);
    let record = rdkafka::producer::FutureRecord::<str, [u8]>::to(topic).partition(partition).key(&key).payload(&payload);
    p.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("produce");
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_dlq_write_holds_only_its_own_partition() {
    const HELD: i32 = 3;
    let topics = create_topics("dlqonepart").await;
    let mut gw = Gateway::start(GatewayConfig {
        // A topic name Kafka refuses: every dead-letter write fails.
        extra_env: vec![("EVENT_DEAD_LETTER_QUEUE_TOPIC", "no such topic!".into())],
        ..GatewayConfig::new(&topics)
    });
    gw.wait_healthy().await;
    let p = producer();
    let garbage = rdkafka::producer::FutureRecord::<str, [u8]>::to(&topics.main).partition(HELD).key("x").payload(b"garbage");
    p.send(garbage, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("produce");
    let held_name = format!("{}/{HELD}", topics.main);
    eventually("health names the held partition", Duration::from_secs(30), || async {
        let (code, body) = http_get(&format!("{}/health", gw.base())).await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if code == 503 && v["dlq"]["failingPartitions"] == json!([held_name]) && v["reason"].as_str().unwrap_or_default().contains(&held_name) {
            Ok(())
        } else {
            Err(format!("{code} {body}"))
        }
    })
    .await;

    // Behind the held record first, then on every other partition.
    let mut held_ids = Vec::new();
    for n in 0..5 {
        held_ids.push(send_to_partition(&p, &topics.main, HELD, n).await);
    }
    let mut other_ids = Vec::new();
    for partition in (0..6).filter(|p| *p != HELD) {
        for n in 0..5 {
            other_ids.push(send_to_partition(&p, &topics.main, partition, 100 + partition as usize * 10 + n).await);
        }
    }
    eventually("the other five partitions keep delivering", Duration::from_secs(30), || async {
        let r = gw.routed();
        let missing = other_ids.iter().filter(|id| !r.contains_key(*id)).count();
        if missing == 0 { Ok(()) } else { Err(format!("{missing} missing")) }
    })
    .await;
    let r = gw.routed();
    assert!(held_ids.iter().all(|id| !r.contains_key(id)), "no event behind the held record was routed");
    let (code, body) = http_get(&format!("{}/health", gw.base())).await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(&held_name), "{body}");

    // Fix the DLQ and restart gracefully: the held record comes back, reaches
    // the DLQ, and the events behind it follow; nothing arrives twice.
    gw.terminate();
    gw.set_env("EVENT_DEAD_LETTER_QUEUE_TOPIC", &topics.dlq);
    gw.restart();
    gw.wait_healthy().await;
    eventually("the held partition's events are routed", Duration::from_secs(30), || async {
        let r = gw.routed();
        if held_ids.iter().all(|id| r.contains_key(id)) { Ok(()) } else { Err("waiting".into()) }
    })
    .await;
    let letters = read_topic(&topics.dlq, 1, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 1, "one dead letter; gateway log:\n{}", gw.logs());
    assert_eq!(letters[0].3, b"garbage");
    let r = gw.routed();
    for id in held_ids.iter().chain(&other_ids) {
        assert_eq!(r.get(id), Some(&1), "event {id} routed exactly once");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebalance_mid_stream_loses_nothing() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let topics = create_topics("rebalance").await;
    let gw = Gateway::start(GatewayConfig::new(&topics));
    gw.wait_healthy().await;
    let health = || async {
        let (_, body) = http_get(&format!("{}/health", gw.base())).await.map_err(|e| e.to_string())?;
        serde_json::from_str::<Value>(&body).map_err(|e| e.to_string())
    };
    let group = health().await.unwrap()["consumer"]["group"].as_str().expect("group").to_owned();

    let stream = {
        let topic = topics.main.clone();
        tokio::spawn(async move {
            let p = producer();
            let mut ids = Vec::new();
            for n in 0..600 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ids.push(send_to_partition(&p, &topic, (n % 6) as i32, n).await);
            }
            ids
        })
    };
    eventually("some events routed", Duration::from_secs(30), || async {
        let n = gw.routed().len();
        if n >= 100 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
    // A second member joins the group: it takes partitions (and never commits), then leaves.
    let intruder: StreamConsumer = moonx_ws::kafka::client_config(&brokers())
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .unwrap();
    intruder.subscribe(&[&topics.main]).unwrap();
    let serve = tokio::spawn(async move {
        loop {
            let _ = intruder.recv().await;
        }
    });
    eventually("the gateway gave partitions away", Duration::from_secs(60), || async {
        let a = health().await?["consumer"]["assignedPartitions"].as_i64().unwrap_or(-1);
        if (1..6).contains(&a) { Ok(()) } else { Err(format!("{a} assigned")) }
    })
    .await;
    serve.abort();
    let _ = serve.await; // drops the intruder: it leaves the group
    eventually("the gateway has every partition again", Duration::from_secs(60), || async {
        let a = health().await?["consumer"]["assignedPartitions"].as_i64().unwrap_or(-1);
        if a == 6 { Ok(()) } else { Err(format!("{a} assigned")) }
    })
    .await;
    let ids = stream.await.unwrap();
    eventually("every event routed", Duration::from_secs(60), || async {
        let r = gw.routed();
        let missing = ids.iter().filter(|id| !r.contains_key(*id)).count();
        if missing == 0 { Ok(()) } else { Err(format!("{missing} missing")) }
    })
    .await;
}
