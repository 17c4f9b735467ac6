//! `moonx-ws dev` (the embedded bus), the HTTP publish API in both modes,
//! and the latest-price snapshot on subscribe.

mod common;

use common::ws::{token, Client};
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

const T5: Duration = Duration::from_secs(5);
/// For waits on the pipeline (generous: CI machines are loaded).
const T30: Duration = Duration::from_secs(30);
const KEY: &str = "test-key-1";

async fn post(url: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url).json(body).timeout(Duration::from_secs(10));
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let r = req.send().await.expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn price(token: &str, chain: u64, price: &str) -> Value {
    json!({"type": "price.updated", "data": {"token": token, "chainId": chain, "price": price, "priceUsd": price, "change24h": "0.01", "volume24h": "10"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_demo_runs_the_whole_pipeline_without_kafka() {
    let gw = Gateway::start_dev(&["--demo", "--demo-rate", "20"], vec![("KAFKA_BROKERS", "127.0.0.1:1".into())]);
    gw.wait_healthy().await;
    let (code, body) = http_get(&format!("{}/health", gw.base())).await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["mode"], "embedded");

    let mut user = Client::connect(&format!("{}?token={}", gw.ws_url(), token("demo-user", &[], 600))).await;
    assert_eq!(user.recv(T5).await.unwrap()["type"], "authenticated");
    user.subscribe("prices").await;
    user.subscribe("orders").await;
    let mut tokens = std::collections::HashSet::new();
    let mut order_seen = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (tokens.len() < 3 || !order_seen) && tokio::time::Instant::now() < deadline {
        let v = user.recv_type("event", Duration::from_secs(10)).await;
        match v["channel"].as_str().unwrap() {
            "prices" => {
                tokens.insert((v["event"]["data"]["token"].as_str().unwrap().to_owned(), v["event"]["data"]["chainId"].as_u64().unwrap()));
            }
            "orders" => {
                assert_eq!(v["event"]["metadata"]["userId"], "demo-user");
                order_seen = true;
            }
            other => panic!("unexpected channel {other}"),
        }
    }
    assert!(tokens.len() >= 3, "several tokens and chains: {tokens:?}");
    assert!(order_seen, "the demo user's orders arrive");
    // The same pipeline as with Kafka: it went through the router and the audit log.
    assert!(!gw.routed().is_empty());
    let stats: Value = serde_json::from_str(&http_get(&format!("{}/api/stats", gw.base())).await.unwrap().1).unwrap();
    assert_eq!(stats["mode"], "embedded");
    assert!(stats["eventsProcessed"]["price.updated"].as_u64().unwrap() > 0);
    assert_eq!(stats["connections"], 1);
    let page = http_get(&format!("{}/", gw.base())).await.unwrap();
    assert_eq!(page.0, 200);
    assert!(page.1.contains("<html") || page.1.contains("<!doctype") || page.1.contains("<!DOCTYPE"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_publish_api_validates_authenticates_and_is_idempotent() {
    let gw = Gateway::start_dev(&[], vec![("PUBLISH_API_KEYS", format!("other,{KEY}"))]);
    gw.wait_healthy().await;
    let url = format!("{}/api/events", gw.base());
    let mut client = Client::connect(&gw.ws_url()).await;
    client.subscribe("prices").await;

    assert_eq!(post(&url, None, &price("ETH", 1, "1")).await.0, 401);
    assert_eq!(post(&url, Some("wrong"), &price("ETH", 1, "1")).await.0, 401);

    // One bad item: 400 with every error, and nothing published.
    let batch = json!([price("ETH", 1, "1"), {"type": "order.created", "data": {"orderId": ""}, "classification": "public"}, {"type": "nope.never", "data": {}}]);
    let (code, body) = post(&url, Some(KEY), &batch).await;
    assert_eq!(code, 400, "{body}");
    let invalid = body["invalid"].as_array().unwrap();
    assert_eq!(invalid.iter().map(|i| i["index"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);
    let paths: Vec<&str> = invalid[0]["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"/metadata/dataClassification") && paths.contains(&"/data/orderId") && paths.contains(&"/metadata/userId"), "{paths:?}");
    assert_eq!(invalid[1]["errors"][0]["code"], "unknown_type");
    // (Nothing was published: checked below, as the first price the client
    // gets is the next batch's first.)

    // A batch, one with the client's own eventId, and a whole envelope.
    let id = uuid::Uuid::now_v7().to_string();
    let mut with_id = price("BTC", 1, "65000");
    with_id["eventId"] = json!(id);
    let envelope = serde_json::to_value(sample_event("price.updated", "", 2)).unwrap();
    let (code, body) = post(&url, Some(KEY), &json!([price("ETH", 1, "3000"), with_id.clone(), envelope.clone()])).await;
    assert_eq!(code, 200, "{body}");
    let published = body["published"].as_array().unwrap();
    assert_eq!(published.len(), 3);
    let offsets: Vec<i64> = published.iter().map(|p| p["offset"].as_i64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "published in order: {offsets:?}");
    assert_eq!(published[1]["eventId"], id);
    assert_eq!(published[2]["eventId"], envelope["metadata"]["eventId"]);

    // The same eventId again: answered from memory, not published twice.
    let (code, again) = post(&url, Some(KEY), &with_id).await;
    assert_eq!(code, 200);
    assert_eq!(again["published"][0]["duplicate"], true);
    assert_eq!(again["published"][0]["offset"], published[1]["offset"]);
    // Prices are one ordered stream: a marker published last comes after
    // anything the requests above put on the bus.
    let (code, body) = post(&url, Some(KEY), &price("SOL", 1, "150")).await;
    assert_eq!(code, 200, "{body}");
    let marker = body["published"][0]["eventId"].as_str().unwrap().to_owned();
    let got = client.events_until_marker(&marker, T30).await;
    let ids: Vec<&str> = got.iter().map(|f| f["event"]["metadata"]["eventId"].as_str().unwrap()).collect();
    let expected: Vec<&str> = published.iter().map(|p| p["eventId"].as_str().unwrap()).collect();
    assert_eq!(ids, expected, "the refused batch published nothing, the valid one everything once, the repeat nothing");

    // Dead letters of the embedded bus are visible over HTTP, to an admin.
    let r = reqwest::Client::new()
        .get(format!("{}/api/dead-letters", gw.base()))
        .bearer_auth(token("ops", &["admin"], 3600))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["deadLetters"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn in_kafka_mode_published_events_land_on_the_main_topic() {
    let topics = create_topics("publish").await;
    let gw = Gateway::start(GatewayConfig { extra_env: vec![("PUBLISH_API_KEYS", KEY.into())], ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    let (code, body) = post(&format!("{}/api/events", gw.base()), Some(KEY), &json!({"type": "order.created", "userId": "pat",
        "data": sample_data("order.created", "pat", 1), "correlationId": "c-42"})).await;
    assert_eq!(code, 200, "{body}");
    let p = &body["published"][0];
    let records = read_topic(&topics.main, 1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1);
    let (partition, offset, key, payload, _) = &records[0];
    assert_eq!((*partition as i64, *offset), (p["partition"].as_i64().unwrap(), p["offset"].as_i64().unwrap()));
    assert_eq!(key.as_deref(), Some(&b"pat"[..]), "keyed by userId");
    let v: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(v["metadata"]["correlationId"], "c-42");
    assert_eq!(v["metadata"]["eventId"], p["eventId"]);
}

/// The snapshot and the live stream meet with no gap and no duplicate,
/// even while prices are being published during the subscription.
#[tokio::test(flavor = "multi_thread")]
async fn a_price_subscriber_gets_a_snapshot_then_the_live_stream_without_gap_or_duplicate() {
    let gw = Gateway::start_dev(&[], vec![("PUBLISH_API_KEYS", KEY.into())]);
    gw.wait_healthy().await;
    let url = format!("{}/api/events", gw.base());
    let series = [("ETH", 1u64), ("ETH", 137), ("BTC", 1)];
    // Publish prices of the three series in order, in the background: some
    // before the clients subscribe (so there are snapshots), during their
    // subscribing, and 30 batches after (so the live stream follows).
    let subscribed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let url = url.clone();
        let subscribed = subscribed.clone();
        tokio::spawn(async move {
            let mut sent: HashMap<(String, u64), Vec<String>> = HashMap::new();
            let mut after_subscribing = None;
            for n in 0.. {
                assert!(n < 3000, "the clients did not subscribe while 3000 batches were published");
                let batch: Vec<Value> = series.iter().map(|(t, c)| price(t, *c, &format!("{}.{n:04}", 1000 + n))).collect();
                let (code, body) = post(&url, Some(KEY), &Value::Array(batch)).await;
                assert_eq!(code, 200, "{body}");
                for ((t, c), p) in series.iter().zip(body["published"].as_array().unwrap()) {
                    sent.entry((t.to_string(), *c)).or_default().push(p["eventId"].as_str().unwrap().to_owned());
                }
                if after_subscribing.is_none() && subscribed.load(std::sync::atomic::Ordering::SeqCst) {
                    after_subscribing = Some(n + 30);
                }
                if after_subscribing == Some(n) {
                    break;
                }
                // Pacing, so that subscribing happens amid the stream.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };
    // Every series has a latest price once three events went through.
    let processed = || async {
        let stats: Value = serde_json::from_str(&http_get(&format!("{}/api/stats", gw.base())).await.map_err(|e| e.to_string())?.1)
            .map_err(|e| e.to_string())?;
        let n = stats["eventsProcessed"]["price.updated"].as_u64().unwrap_or(0);
        if n >= series.len() as u64 { Ok(()) } else { Err(format!("{n} prices processed")) }
    };
    eventually("a price of every series went through", T30, processed).await;
    let mut all = Client::connect(&gw.ws_url()).await;
    all.subscribe("prices").await;
    let mut eth = Client::connect(&gw.ws_url()).await;
    eth.send_json(json!({"type": "subscribe", "channel": "prices", "tokens": ["ETH"]})).await;
    assert_eq!(eth.recv(T5).await.unwrap()["type"], "subscribed");
    subscribed.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = publisher.await.unwrap();
    // One ordered stream: a marker published last (ETH, passing both
    // filters) comes after every price above.
    let (code, body) = post(&url, Some(KEY), &price("ETH", 10, "1")).await;
    assert_eq!(code, 200, "{body}");
    let marker = body["published"][0]["eventId"].as_str().unwrap().to_owned();

    for (client, wanted) in [(&mut all, vec!["ETH", "BTC"]), (&mut eth, vec!["ETH"])] {
        let frames = client.events_until_marker(&marker, T30).await;
        let mut per_series: HashMap<(String, u64), Vec<(String, bool)>> = HashMap::new();
        for f in &frames {
            let d = &f["event"]["data"];
            per_series
                .entry((d["token"].as_str().unwrap().to_owned(), d["chainId"].as_u64().unwrap()))
                .or_default()
                .push((f["event"]["metadata"]["eventId"].as_str().unwrap().to_owned(), f["snapshot"] == true));
        }
        let expected_series: Vec<_> = series.iter().filter(|(t, _)| wanted.contains(t)).collect();
        assert_eq!(per_series.len(), expected_series.len(), "{:?}", per_series.keys());
        for (t, c) in expected_series {
            let got = &per_series[&(t.to_string(), *c)];
            let published = &sent[&(t.to_string(), *c)];
            assert!(got[0].1, "{t}/{c}: the first frame is the snapshot");
            assert!(got[1..].iter().all(|(_, s)| !s), "only one snapshot per series");
            let start = published.iter().position(|id| *id == got[0].0).expect("the snapshot is a published price");
            let ids: Vec<&String> = got.iter().map(|(id, _)| id).collect();
            let tail: Vec<&String> = published[start..].iter().collect();
            assert_eq!(ids, tail, "{t}/{c}: snapshot + live = the published sequence from the snapshot on, no gap, no duplicate");
        }
    }
}
