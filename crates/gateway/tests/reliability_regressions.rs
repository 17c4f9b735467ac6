//! Regressions found by the chaos suite (RELIABILITY.md, issue 15), against
//! the real broker, the real binary and real WebSocket clients.

mod common;

use common::ws::{order_numbers, Client};
use common::*;
use futures_util::future::join_all;
use rdkafka::producer::FutureProducer;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Produces `order.created` events of `user` numbered `range` (orderId
/// `order-<n>`), in order on one idempotent producer.
async fn produce_orders(p: &FutureProducer, topic: &str, user: &str, range: std::ops::Range<usize>) {
    let events: Vec<_> = range.map(|n| sample_event("order.created", user, n)).collect();
    for r in join_all(events.iter().map(|e| moonx_ws::kafka::producer::send_event(p, topic, e))).await {
        r.expect("produce");
    }
}

/// Reads `n` event frames, failing if they do not all come within `WAIT`.
async fn events(c: &mut Client, n: usize) -> Vec<Value> {
    c.events(n, WAIT).await
}


/// The chaos suite's SIGKILL scenario: clients reconnect to the restarted
/// gateway before its consumer is assigned, and every resume is answered
/// `recovered:false` at once. The target: it waits for the assignment and
/// replays exactly what was missed.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "the wait for the assignment it needs was reverted: with it the full SIGKILL chaos run lost 1,238 deliveries (RELIABILITY.md, 'Fixed after this run')"]
async fn a_resume_that_arrives_before_the_restarted_gateway_is_assigned_waits_and_recovers() {
    let topics = create_topics("rel-kill-resume").await;
    // Presence off: a `user.connected` record of the user would move the seam.
    let mut gw = Gateway::start(GatewayConfig { extra_env: vec![("WS_PRESENCE_EVENTS", "false".into())], ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    let p = producer();
    let user = "kim";

    let mut c = Client::authed(&gw.ws_url(), user, &[]).await;
    c.subscribe("orders").await;
    produce_orders(&p, &topics.main, user, 0..5).await;
    let seen = events(&mut c, 5).await;
    assert_eq!(order_numbers(&seen), vec![0, 1, 2, 3, 4]);
    let pos = seen[4]["pos"].as_str().expect("private frames carry pos").to_owned();
    drop(c);

    gw.kill(); // SIGKILL
    produce_orders(&p, &topics.main, user, 5..25).await;
    produce_orders(&p, &topics.main, "someone-else", 0..20).await;
    gw.restart(); // returns once it listens: the consumer has not joined its group yet

    // Reconnect at once, as the chaos suite's clients do.
    let mut c = Client::authed(&gw.ws_url(), user, &[]).await;
    c.send_json(json!({"type": "subscribe", "channel": "orders", "since": pos})).await;
    let reply = c.recv_type_or_error(WAIT).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["recovered"], true, "{reply}");
    let got = events(&mut c, 20).await;
    assert_eq!(order_numbers(&got), (5..25).collect::<Vec<_>>(), "exactly the missed events, in order");
    // Nothing more (a duplicate, another user's event) before the pong.
    c.send_json(json!({"type": "ping", "id": "fence"})).await;
    let v = c.recv(WAIT).await.expect("pong");
    assert_eq!(v["type"], "pong", "expected nothing before the pong, got {v}");

    // The resume did arrive before the assignment and waited for it.
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_resume_partition_waits_total", &[("result", "ready")]), 1.0, "{m}");
    assert_eq!(metric(&m, "moonx_ws_resume_requests_total", &[("result", "recovered")]), 1.0, "{m}");

    // Live events follow with no gap.
    produce_orders(&p, &topics.main, user, 25..28).await;
    assert_eq!(order_numbers(&events(&mut c, 3).await), vec![25, 26, 27]);
}

/// Issue 15's recovery target, after the chaos suite's broker-unreachable
/// scenario: the broker away longer than the consumer's group session (so
/// the session expires and the consumer must rejoin), then back; the
/// gateway must be healthy and deliver a new event within 10 s of the
/// broker answering again.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_delivers_within_10_s_of_a_broker_back_from_an_outage_longer_than_the_session() {
    const RECOVERY_TARGET: Duration = Duration::from_secs(10);
    // A broker of this test's own, so that stopping it disturbs no other test.
    let port: u16 = std::env::var("KAFKA_RESTART_TEST_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(19092);
    let broker = ExtraBroker::start(port);
    let topics = create_topics_on(&broker.brokers(), "rel-outage").await;
    let gw = Gateway::start(GatewayConfig {
        extra_env: vec![("KAFKA_BROKERS", broker.brokers()), ("WS_PRESENCE_EVENTS", "false".into())],
        ..GatewayConfig::new(&topics)
    });
    gw.wait_healthy().await;
    let user = "lee";
    let mut c = Client::authed(&gw.ws_url(), user, &[]).await;
    c.subscribe("orders").await;
    let p = producer_on(&broker.brokers());
    produce_orders(&p, &topics.main, user, 0..1).await;
    assert_eq!(order_numbers(&events(&mut c, 1).await), vec![0]);
    drop(p);

    broker.run("stop");
    // Away until the consumer's session has expired (it revokes its partitions).
    eventually("the consumer's group session expires", Duration::from_secs(60), || async {
        if gw.logs().contains("partitions revoked") { Ok(()) } else { Err("still in its session".into()) }
    })
    .await;
    broker.run("start");
    let back = tokio::time::Instant::now();
    let p = producer_on(&broker.brokers());
    produce_orders(&p, &topics.main, user, 1..2).await;
    let left = RECOVERY_TARGET.saturating_sub(back.elapsed());
    let v = c.recv_type("event", left).await;
    assert_eq!(order_numbers(&[v]), vec![1], "the event produced after the outage");
    eventually("health is back", RECOVERY_TARGET.saturating_sub(back.elapsed()), || async {
        let (code, body) = http_get(&format!("{}/health", gw.base())).await.map_err(|e| e.to_string())?;
        if code == 200 { Ok(()) } else { Err(format!("{code} {body}")) }
    })
    .await;
}
