//! WebSocket delivery end to end: real clients over real sockets, fed by
//! the real broker through `moonx-ws serve`.

mod common;

use common::ws::{token, Client};
use common::*;
use moonx_ws::kafka::producer::send_event;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

const T5: Duration = Duration::from_secs(5);
/// For waits on the broker and the pipeline (generous: CI machines are loaded).
const T30: Duration = Duration::from_secs(30);

async fn started(prefix: &str, extra_env: Vec<(&'static str, String)>) -> (Topics, Gateway) {
    let topics = create_topics(prefix).await;
    let gw = Gateway::start(GatewayConfig { extra_env, ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    (topics, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_client_flow_receives_a_produced_price() {
    let (topics, gw) = started("seedflow", vec![]).await;
    let mut client = Client::connect(&gw.ws_url()).await;
    client.send_json(json!({"type": "subscribe", "channel": "prices", "id": "s1"})).await;
    let reply = client.recv(T5).await.unwrap();
    assert_eq!(reply, json!({"type": "subscribed", "channel": "prices", "id": "s1"}));

    let data = r#"{"token":"ETH","chainId":1,"price":"3000.00","priceUsd":"3000.00","change24h":"0.05","volume24h":"1000000"}"#;
    let (ok, out, err) = run_cli(&["produce", "price.updated", data, "--json"], &[("KAFKA_MAIN_TOPIC", &topics.main)]);
    assert!(ok, "{err}");
    let produced: Value = serde_json::from_str(out.trim()).unwrap();
    let frame = client.recv_type("event", Duration::from_secs(15)).await;
    assert_eq!(frame["channel"], "prices");
    assert_eq!(frame["event"]["metadata"]["eventId"], produced["eventId"]);
    assert_eq!(frame["event"]["data"]["price"], "3000.00");
    assert!(frame.get("snapshot").is_none());

    // A later subscriber first gets the latest price as a snapshot.
    let mut late = Client::connect(&gw.ws_url()).await;
    late.subscribe("prices").await;
    let snap = late.recv_type("event", T5).await;
    assert_eq!(snap["snapshot"], true);
    assert_eq!(snap["event"]["metadata"]["eventId"], produced["eventId"]);

    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_frames_sent_total", &[("channel", "prices")]), 1.0);
    assert_eq!(metric(&m, "moonx_ws_connections", &[]), 2.0);
    assert_eq!(metric(&m, "moonx_ws_subscriptions", &[("channel", "prices")]), 2.0);
    assert!(metric(&m, "moonx_ws_end_to_end_latency_seconds_count", &[("channel", "prices")]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn private_events_reach_their_owner_only() {
    let (topics, gw) = started("private", vec![("WS_PRESENCE_EVENTS", "false".into())]).await;
    let url = gw.ws_url();
    let mut alice = Client::authed(&url, "alice", &[]).await;
    let mut bob = Client::authed(&url, "bob", &[]).await;
    let mut anon = Client::connect(&url).await;
    let mut admin = Client::authed(&url, "ops", &["admin"]).await;
    for c in [&mut alice, &mut bob] {
        for ch in ["orders", "portfolio", "trades", "prices"] {
            c.subscribe(ch).await;
        }
    }
    anon.subscribe("prices").await;
    admin.subscribe("system").await;

    let p = producer();
    for (n, t) in ALL_TYPES.iter().enumerate() {
        send_event(&p, &topics.main, &sample_event(t, "alice", n)).await.unwrap();
    }
    // The events sit on three partitions: once all were offered to the
    // clients' queues, a ping's pong comes after every frame they made.
    gw.wait_events_processed(ALL_TYPES.len()).await;
    let mut got = Vec::new();
    for (who, c) in [("alice", &mut alice), ("bob", &mut bob), ("anon", &mut anon), ("ops", &mut admin)] {
        let frames = c.frames_until_pong(who, T30).await;
        let mut types: Vec<String> = frames
            .iter()
            .map(|f| {
                assert_eq!(f["type"], "event", "{who}: only events before the pong: {f}");
                f["event"]["metadata"]["eventType"].as_str().unwrap().to_owned()
            })
            .collect();
        types.sort();
        got.push(types);
    }
    let sorted = |v: &[&str]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(got[0], sorted(&["price.updated", "order.created", "order.updated", "order.cancelled", "portfolio.updated", "trade.executed", "trade.failed"]), "alice: each of hers once");
    assert_eq!(got[1], sorted(&["price.updated"]), "bob sees nothing of alice's");
    assert_eq!(got[2], sorted(&["price.updated"]), "anonymous: prices only");
    assert_eq!(got[3], sorted(&["user.connected", "user.disconnected", "system.health_check", "system.error"]), "operators: system only");
}

// The randomized entitlement property lives in `entitlement.rs` (three
// gateways, random settings and classifications, 10,000 events, waits on counts).

#[tokio::test(flavor = "multi_thread")]
async fn every_error_code_is_sent_and_the_connection_stays_usable() {
    let (_topics, gw) = started(
        "errors",
        vec![("WS_MAX_SUBSCRIPTIONS", "2".into()), ("WS_MAX_FRAME_BYTES", "512".into()), ("WS_PRESENCE_EVENTS", "false".into())],
    )
    .await;
    let url = gw.ws_url();
    let mut c = Client::connect(&url).await;
    let expect = |code: &'static str| move |v: Value| assert_eq!((v["type"].as_str(), v["code"].as_str()), (Some("error"), Some(code)), "{v}");

    c.send_text("not json").await;
    expect("bad_request")(c.recv(T5).await.unwrap());
    c.send_json(json!({"type": "dance", "id": 9})).await;
    let v = c.recv(T5).await.unwrap();
    assert_eq!(v["id"], 9, "the id is echoed on errors too");
    expect("bad_request")(v);
    c.send_json(json!({"type": "subscribe"})).await;
    expect("bad_request")(c.recv(T5).await.unwrap());
    c.send_text(&format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(600))).await;
    let v = c.recv(T5).await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("WS_MAX_FRAME_BYTES"), "{v}");
    expect("bad_request")(v);
    c.send_json(json!({"type": "subscribe", "channel": "weather"})).await;
    expect("unknown_channel")(c.recv(T5).await.unwrap());
    c.send_json(json!({"type": "subscribe", "channel": "orders"})).await;
    expect("unauthorized")(c.recv(T5).await.unwrap());
    c.send_json(json!({"type": "auth", "token": "not.a.jwt"})).await;
    expect("unauthorized")(c.recv(T5).await.unwrap());
    c.send_json(json!({"type": "auth", "token": token("carol", &[], -10)})).await;
    let v = c.recv(T5).await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("expired"), "{v}");
    expect("unauthorized")(v);
    c.send_json(json!({"type": "auth", "token": token("carol", &[], 3600), "id": "a"})).await;
    let v = c.recv(T5).await.unwrap();
    assert_eq!((v["type"].as_str(), v["id"].as_str()), (Some("authenticated"), Some("a")));
    c.send_json(json!({"type": "subscribe", "channel": "system"})).await;
    expect("forbidden")(c.recv(T5).await.unwrap());
    c.subscribe("orders").await;
    c.subscribe("trades").await;
    c.send_json(json!({"type": "subscribe", "channel": "portfolio"})).await;
    expect("limit_exceeded")(c.recv(T5).await.unwrap());
    c.send_json(json!({"type": "unsubscribe", "channel": "trades", "id": 3})).await;
    assert_eq!(c.recv(T5).await.unwrap(), json!({"type": "unsubscribed", "channel": "trades", "id": 3}));
    c.subscribe("portfolio").await;
    c.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(c.recv(T5).await.unwrap(), json!({"type": "pong", "id": "p"}));

    // rate_limited: a burst far above the limit (default burst 40).
    let mut r = Client::connect(&url).await;
    for _ in 0..60 {
        r.send_json(json!({"type": "ping"})).await;
    }
    let mut codes = HashMap::new();
    for _ in 0..60 {
        let v = r.recv(T5).await.unwrap();
        *codes.entry(v["code"].as_str().unwrap_or(v["type"].as_str().unwrap()).to_owned()).or_insert(0) += 1;
    }
    assert!(codes.get("rate_limited").copied().unwrap_or(0) >= 15, "{codes:?}");
    assert!(codes.get("pong").copied().unwrap_or(0) >= 40, "{codes:?}");

    // Persistent misbehaviour closes the connection (1008).
    let mut bad = Client::connect(&url).await;
    for _ in 0..25 {
        bad.send_text("{").await;
    }
    let replies = bad.read_until_closed(T30).await;
    assert_eq!(replies.len(), 20, "one error per invalid message up to the limit (20): {replies:?}");
    assert!(replies.iter().all(|r| r["code"] == "bad_request"), "{replies:?}");
    let (code, reason) = bad.closed.clone().expect("a close frame, not just the end of the connection");
    assert_eq!(code, 1008, "{reason}");
    assert!(!reason.is_empty(), "the close says why");

    let m = gw.metrics().await;
    for code in ["bad_request", "unknown_channel", "unauthorized", "forbidden", "rate_limited", "limit_exceeded"] {
        assert!(metric(&m, "moonx_ws_client_errors_total", &[("code", code)]) >= 1.0, "{code}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn origins_and_the_connection_limit_are_enforced_at_upgrade() {
    let (_topics, gw) = started(
        "origin",
        vec![("ALLOWED_ORIGINS", "https://app.moonx.example".into()), ("WS_MAX_CONNECTIONS", "2".into())],
    )
    .await;
    let url = gw.ws_url();
    let refused = Client::connect_with(&url, &[("Origin", "https://evil.example")]).await;
    assert!(matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 403), "{:?}", refused.err());
    let _ok = Client::connect_with(&url, &[("Origin", "https://app.moonx.example")]).await.expect("allowed origin");
    let _second = Client::connect(&url).await; // no Origin: not a browser
    eventually("both registered", T5, || async {
        let c = metric(&gw.metrics().await, "moonx_ws_connections", &[]);
        if c == 2.0 { Ok(()) } else { Err(format!("{c}")) }
    })
    .await;
    let third = Client::connect_with(&url, &[]).await;
    assert!(matches!(third, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 503), "{:?}", third.err());
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_connections_rejected_total", &[("reason", "origin")]), 1.0);
    assert_eq!(metric(&m, "moonx_ws_connections_rejected_total", &[("reason", "max_connections")]), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_client_is_cut_off_and_the_others_keep_receiving() {
    let (topics, gw) = started("slow", vec![("WS_QUEUE_CAPACITY", "4096".into())]).await;
    let url = gw.ws_url();
    let mut stalled = Client::connect_small_buffer(&url).await;
    stalled.subscribe("prices").await;
    let mut healthy = Client::connect(&url).await;
    healthy.subscribe("prices").await;

    // Enough frames to fill the stalled client's socket buffers and then its
    // queue, at a steady rate a reading client keeps up with.
    let total = 30_000;
    let p = producer();
    let topic = topics.main.clone();
    let producing = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for chunk in (0..total).collect::<Vec<_>>().chunks(50) {
            tick.tick().await;
            let events: Vec<_> = chunk.iter().map(|n| sample_event("price.updated", "", *n)).collect();
            let sends = events.iter().map(|e| send_event(&p, &topic, e));
            for r in futures_util::future::join_all(sends).await {
                r.unwrap();
            }
        }
    });
    // The healthy client reads all along, in its own task.
    let reading = tokio::spawn(async move {
        healthy.expect_event_count(total, Duration::from_secs(180)).await;
        healthy // still connected: counted below
    });
    // The stalled client reads nothing until the server gave up on it.
    gw.wait_metric("the stalled client is cut off", "moonx_ws_slow_consumer_disconnects_total", &[], Duration::from_secs(120), |v| {
        v >= 1.0
    })
    .await;

    // Reading at last, it gets what was already on its way, then the
    // slow_consumer error, then the close 3008 (README: close codes).
    let frames = stalled.read_until_closed(Duration::from_secs(60)).await;
    let replies: Vec<&Value> = frames.iter().filter(|f| f["type"] != "event").collect();
    assert_eq!(replies.len(), 1, "one frame besides events: {replies:?}");
    assert_eq!((replies[0]["type"].as_str(), replies[0]["code"].as_str()), (Some("error"), Some("slow_consumer")), "{}", replies[0]);
    assert_eq!(frames.last(), Some(replies[0]), "the error is the last frame");
    assert_eq!(stalled.closed, Some((3008, "slow consumer: queue overflowed".to_owned())), "after {} frames", frames.len());

    let _healthy = reading.await.expect("the healthy client received every frame");
    producing.await.unwrap();
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_slow_consumer_disconnects_total", &[]), 1.0, "only the stalled client");
    assert!(metric(&m, "moonx_ws_frames_dropped_total", &[("reason", "slow_consumer")]) >= 1.0);
    gw.wait_metric("the stalled connection is gone", "moonx_ws_connections", &[], T5, |c| c == 1.0).await;
}

// Token expiry: `edges_auth::after_the_expiry_frame_private_events_stop_and_public_ones_continue`
// (waits on the expiry frame and a marker, not on a timing window).

#[tokio::test(flavor = "multi_thread")]
async fn operators_see_presence_events() {
    let (_topics, gw) = started("presence", vec![]).await;
    let mut ops = Client::authed(&gw.ws_url(), "ops", &["admin"]).await;
    ops.subscribe("system").await;
    let erin = Client::authed(&gw.ws_url(), "erin", &[]).await;
    let seen = |v: &Value, t: &str| v["event"]["metadata"]["eventType"] == t && v["event"]["data"]["userId"] == "erin";
    loop {
        let v = ops.recv_type("event", Duration::from_secs(15)).await;
        if seen(&v, "user.connected") {
            assert_eq!(v["event"]["metadata"]["partition"], "erin", "keyed by userId");
            assert_eq!(v["event"]["data"]["instanceId"], "a");
            break;
        }
    }
    drop(erin);
    loop {
        let v = ops.recv_type("event", Duration::from_secs(15)).await;
        if seen(&v, "user.disconnected") {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_event_reaches_a_client_once_and_the_tokens_filter_applies() {
    let (topics, gw) = started("dedup", vec![]).await;
    let mut all = Client::connect(&gw.ws_url()).await;
    all.subscribe("prices").await;
    let mut eth = Client::connect(&gw.ws_url()).await;
    eth.send_json(json!({"type": "subscribe", "channel": "prices", "tokens": ["eth"]})).await;
    assert_eq!(eth.recv(T5).await.unwrap()["tokens"], json!(["eth"]));
    let p = producer();
    let e = sample_event("price.updated", "", 0); // ETH
    let btc = sample_event("price.updated", "", 1); // BTC
    let marker = sample_event("price.updated", "", 4); // ETH, another chain: both clients get it
    send_event(&p, &topics.main, &e).await.unwrap();
    send_event(&p, &topics.main, &e).await.unwrap(); // the same eventId again, as after a crash
    send_event(&p, &topics.main, &btc).await.unwrap();
    // Prices share one partition: the marker comes after everything above.
    send_event(&p, &topics.main, &marker).await.unwrap();
    let marker = marker.metadata.event_id.to_string();
    let ids = |frames: Vec<Value>| -> Vec<String> {
        frames.iter().map(|f| f["event"]["metadata"]["eventId"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(all.events_until_marker(&marker, T30).await), vec![e.metadata.event_id.to_string(), btc.metadata.event_id.to_string()]);
    assert_eq!(ids(eth.events_until_marker(&marker, T30).await), vec![e.metadata.event_id.to_string()], "ETH only, once");
    assert!(metric(&gw.metrics().await, "moonx_ws_duplicates_suppressed_total", &[]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_two_instances_a_client_on_each_receives_every_price() {
    let topics = create_topics("twows").await;
    let group = unique("ws");
    let a = Gateway::start(GatewayConfig { group: group.clone(), instance: "ws-a".into(), ..GatewayConfig::new(&topics) });
    let b = Gateway::start(GatewayConfig { group, instance: "ws-b".into(), ..GatewayConfig::new(&topics) });
    a.wait_healthy().await;
    b.wait_healthy().await;
    let mut ca = Client::connect(&a.ws_url()).await;
    let mut cb = Client::connect(&b.ws_url()).await;
    ca.subscribe("prices").await;
    cb.subscribe("prices").await;
    let p = producer();
    let mut ids = Vec::new();
    for n in 0..50 {
        let e = sample_event("price.updated", "", n);
        ids.push(e.metadata.event_id.to_string());
        send_event(&p, &topics.main, &e).await.unwrap();
    }
    // Prices share one partition: the marker comes after the 50.
    let marker = sample_event("price.updated", "", 50);
    send_event(&p, &topics.main, &marker).await.unwrap();
    for c in [&mut ca, &mut cb] {
        let got: Vec<String> = c
            .events_until_marker(&marker.metadata.event_id.to_string(), T30)
            .await
            .iter()
            .map(|f| {
                assert!(f.get("snapshot").is_none(), "no price existed at subscription: {f}");
                f["event"]["metadata"]["eventId"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(got, ids, "every price once, in order");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_frames_get_replies_and_never_break_the_connection() {
    let (_topics, gw) = started("fuzz", vec![("WS_RATE_LIMIT_PER_SEC", "100000".into()), ("WS_RATE_LIMIT_BURST", "100000".into())]).await;
    let mut c = Client::connect(&gw.ws_url()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let pieces = ["{", "}", "\"type\"", ":", "\"subscribe\"", "\"channel\"", "\"prices\"", ",", "[", "]", "null", "1", "\"auth\"", "\"token\"", "\"id\"", "\"\\u0000\"", "\u{1F600}"];
    for i in 0..300 {
        let frame: String = if i % 3 == 0 {
            (0..rng.random_range(1..20)).map(|_| pieces[rng.random_range(0..pieces.len())]).collect()
        } else {
            (0..rng.random_range(0..64)).map(|_| rng.random_range(0x20u8..0x7f) as char).collect()
        };
        c.send_text(&frame).await;
        let reply = c.recv(T5).await.unwrap_or_else(|| panic!("no reply to {frame:?} (closed {:?})", c.closed));
        assert!(["error", "subscribed", "pong", "unsubscribed"].contains(&reply["type"].as_str().unwrap()), "{reply}");
        if reply["type"] == "error" {
            // Reset the misbehaviour counter with a good message now and then.
            c.send_json(json!({"type": "ping"})).await;
            assert_eq!(c.recv(T5).await.unwrap()["type"], "pong");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_clients_with_going_away() {
    let (_topics, mut gw) = started("goaway", vec![]).await;
    let mut c = Client::connect(&gw.ws_url()).await;
    c.subscribe("prices").await;
    let status = gw.terminate();
    assert!(status.success());
    let frames = c.read_until_closed(T30).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(c.closed.as_ref().map(|c| c.0), Some(1001), "{:?}", c.closed);
}
