//! Resume without gaps (SPEC 6.1), against the real broker, the real binary
//! and real WebSocket clients: a client that reconnects with the `pos` of
//! the last event it got receives exactly what it missed, in order, then the
//! live stream with nothing lost and nothing twice, on any instance; and
//! `recovered:false` whenever the server cannot prove that.

mod common;

use common::ws::{order_numbers, Client};
use common::*;
use futures_util::future::join_all;
use moonx_ws::deliver::resume::{Partitioner, Position};
use rdkafka::producer::FutureProducer;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Produces `order.created` events of `user`, numbered `range` (the orderId
/// is `order-<n>`), in order; returns their eventIds.
async fn produce_orders(p: &FutureProducer, topic: &str, user: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let events: Vec<_> = range.map(|n| sample_event("order.created", user, n)).collect();
    // Sends are enqueued in poll order (join_all polls in order) on an
    // idempotent producer, so the partition keeps this order.
    let sends = events.iter().map(|e| moonx_ws::kafka::producer::send_event(p, topic, e));
    for r in join_all(sends).await {
        r.expect("produce");
    }
    events.iter().map(|e| e.metadata.event_id.to_string()).collect()
}

/// A few price events, to show that they do not disturb anything.
async fn produce_prices(p: &FutureProducer, topic: &str, n: usize) {
    let events: Vec<_> = (0..n).map(|i| sample_event("price.updated", "", i)).collect();
    for r in join_all(events.iter().map(|e| moonx_ws::kafka::producer::send_event(p, topic, e))).await {
        r.expect("produce");
    }
}

/// Reads `n` event frames, failing if they do not all come within `WAIT`.
async fn events(c: &mut Client, n: usize) -> Vec<Value> {
    c.events(n, WAIT).await
}


/// Subscribes with `since` and returns the `subscribed` reply.
async fn resume(c: &mut Client, channel: &str, since: &str) -> Value {
    c.send_json(json!({"type": "subscribe", "channel": channel, "since": since})).await;
    let reply = c.recv_type_or_error(WAIT).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["channel"], channel);
    reply
}

/// A ping answered after everything queued before it: proof that nothing
/// more was sent (the pong would come after any event frame).
async fn nothing_more(c: &mut Client) {
    c.send_json(json!({"type": "ping", "id": "fence"})).await;
    let v = c.recv(WAIT).await.expect("pong");
    assert_eq!(v["type"], "pong", "expected nothing before the pong, got {v}");
}

/// Waits until `gw` has routed every one of `ids` (its audit log).
async fn routed_all(gw: &Gateway, ids: &[String]) {
    let ids = ids.to_vec();
    eventually("the gateway routed the events", WAIT, || {
        let routed = gw.routed();
        let missing = ids.iter().filter(|id| !routed.contains_key(*id)).count();
        async move { if missing == 0 { Ok(()) } else { Err(format!("{missing} not yet routed")) } }
    })
    .await;
}

/// The client's first event, live, and its position.
async fn first_position(gw: &Gateway, p: &FutureProducer, topic: &str, user: &str) -> String {
    let mut c = Client::authed(&gw.ws_url(), user, &[]).await;
    c.subscribe("orders").await;
    produce_orders(p, topic, user, 0..1).await;
    let first = events(&mut c, 1).await;
    assert_eq!(order_numbers(&first), vec![0]);
    let pos = first[0]["pos"].as_str().expect("private frames carry pos").to_owned();
    let parsed = Position::parse(&pos).expect("a position of ours parses");
    assert_eq!(parsed.topic, topic);
    drop(c); // disconnect
    pos
}

/// The core scenario: disconnect after event 0, 500 of the user's events
/// (and others') while away, reconnect to `resumer` with `since`, while 100
/// more are produced: exactly 1..=600, in order, none twice.
async fn gapless(first: &Gateway, resumer: &Gateway, topic: &str, user: &str, between: impl AsyncFnOnce()) -> Value {
    let p = producer();
    let pos = first_position(first, &p, topic, user).await;
    between().await;
    produce_orders(&p, topic, &format!("{user}-other"), 0..200).await;
    produce_prices(&p, topic, 50).await;
    // The user's events last: the live boundary is the last missed event itself.
    let missed = produce_orders(&p, topic, user, 1..501).await;
    resumer.wait_healthy().await;
    routed_all(resumer, &missed).await;

    let mut c = Client::authed(&resumer.ws_url(), user, &[]).await;
    // The live stream keeps flowing (one event per 5 ms) while the client
    // resumes, so live events reach the connection during its replay.
    let (flowing, started) = tokio::sync::oneshot::channel();
    let live = tokio::spawn({
        let (p, topic, user) = (p.clone(), topic.to_owned(), user.to_owned());
        async move {
            let mut flowing = Some(flowing);
            for n in 501..601 {
                produce_orders(&p, &topic, &user, n..n + 1).await;
                if let Some(f) = flowing.take() {
                    let _ = f.send(());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    started.await.unwrap();
    let reply = resume(&mut c, "orders", &pos).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let n = reply["missed"].as_u64().unwrap();
    assert!((500..=600).contains(&n), "missed {n}");
    live.await.unwrap();
    let got = events(&mut c, 600).await;
    assert_eq!(order_numbers(&got), (1..601).collect::<Vec<_>>(), "exactly the missed events, in order, then live");
    assert!(got.iter().all(|f| f["pos"].is_string() && f["event"]["metadata"]["userId"] == user));
    nothing_more(&mut c).await;
    reply
}

/// Settings of the test gateways. Presence events are off: a
/// `user.connected` record keyed by the user would otherwise be the last
/// record of its partition, and the seam would never sit on a user's event.
fn resume_env(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = vec![("WS_PRESENCE_EVENTS", "false".into())];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnecting_with_since_gets_exactly_the_missed_events_then_live() {
    let topics = create_topics("resume-same").await;
    let gw = Gateway::start(GatewayConfig { extra_env: resume_env(&[]), ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    gapless(&gw, &gw, &topics.main, "ana", async || {}).await;
    let m = gw.metrics().await;
    assert!(metric(&m, "moonx_ws_resume_events_total", &[("source", "memory")]) >= 500.0, "{m}");
    assert_eq!(metric(&m, "moonx_ws_resume_requests_total", &[("result", "recovered")]), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_position_from_one_instance_resumes_exactly_on_another() {
    let topics = create_topics("resume-other").await;
    let a = Gateway::start(GatewayConfig { instance: "a".into(), extra_env: resume_env(&[]), ..GatewayConfig::new(&topics) });
    let b = Gateway::start(GatewayConfig { instance: "b".into(), extra_env: resume_env(&[]), ..GatewayConfig::new(&topics) });
    a.wait_healthy().await;
    b.wait_healthy().await;
    gapless(&a, &b, &topics.main, "bo", async || {}).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gap_beyond_the_window_is_read_from_kafka() {
    let topics = create_topics("resume-kafka").await;
    let gw = Gateway::start(GatewayConfig {
        extra_env: resume_env(&[("RESUME_WINDOW_EVENTS", "10")]),
        ..GatewayConfig::new(&topics)
    });
    gw.wait_healthy().await;
    gapless(&gw, &gw, &topics.main, "cy", async || {}).await;
    let m = gw.metrics().await;
    assert!(metric(&m, "moonx_ws_resume_events_total", &[("source", "kafka")]) >= 500.0, "{m}");
    assert!(metric(&m, "moonx_ws_resume_kafka_reader_passes_total", &[]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_works_after_the_gateway_was_killed_and_restarted() {
    let topics = create_topics("resume-kill").await;
    let mut gw = Gateway::start(GatewayConfig { extra_env: resume_env(&[]), ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    let p = producer();
    let pos = first_position(&gw, &p, &topics.main, "dee").await;
    gw.kill(); // SIGKILL
    let missed = produce_orders(&p, &topics.main, "dee", 1..501).await;
    produce_orders(&p, &topics.main, "someone-else", 0..100).await;
    gw.restart();
    gw.wait_healthy().await;
    routed_all(&gw, &missed).await;
    let mut c = Client::authed(&gw.ws_url(), "dee", &[]).await;
    let reply = resume(&mut c, "orders", &pos).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["missed"], 500);
    produce_orders(&p, &topics.main, "dee", 501..511).await;
    let got = events(&mut c, 510).await;
    assert_eq!(order_numbers(&got), (1..511).collect::<Vec<_>>());
    nothing_more(&mut c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_partition_resumes_after_a_restart() {
    let topics = create_topics("resume-quiet").await;
    let mut gw = Gateway::start(GatewayConfig { extra_env: resume_env(&[]), ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    let p = producer();
    let pos = first_position(&gw, &p, &topics.main, "hal").await;
    assert!(gw.terminate().success()); // commits what it processed
    gw.restart();
    gw.wait_healthy().await;
    // Nothing has been consumed since the restart: the committed offset is the boundary.
    let mut c = Client::authed(&gw.ws_url(), "hal", &[]).await;
    let reply = resume(&mut c, "orders", &pos).await;
    assert_eq!((reply["recovered"].clone(), reply["missed"].clone()), (json!(true), json!(0)), "{reply}");
    produce_orders(&p, &topics.main, "hal", 1..3).await;
    assert_eq!(order_numbers(&events(&mut c, 2).await), vec![1, 2]);
    nothing_more(&mut c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_position_too_far_behind_is_not_recovered_without_reading_kafka() {
    let topics = create_topics("resume-old").await;
    let gw = Gateway::start(GatewayConfig {
        extra_env: resume_env(&[("RESUME_WINDOW_EVENTS", "0"), ("RESUME_MAX_SCAN_RECORDS", "10")]),
        ..GatewayConfig::new(&topics)
    });
    gw.wait_healthy().await;
    let p = producer();
    let pos = first_position(&gw, &p, &topics.main, "ivy").await;
    routed_all(&gw, &produce_orders(&p, &topics.main, "ivy", 1..21).await).await;
    let mut c = Client::authed(&gw.ws_url(), "ivy", &[]).await;
    let reply = resume(&mut c, "orders", &pos).await;
    assert_eq!((reply["recovered"].clone(), reply["missed"].clone()), (json!(false), json!(0)), "{reply}");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_resume_requests_total", &[("result", "too_old")]), 1.0, "{m}");
    assert_eq!(metric(&m, "moonx_ws_resume_kafka_reader_passes_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_position_before_the_log_start_is_not_recovered() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let topics = create_topics("resume-deleted").await;
    // Everything from Kafka: the window would otherwise still hold the deleted records.
    let gw = Gateway::start(GatewayConfig { extra_env: resume_env(&[("RESUME_WINDOW_EVENTS", "0")]), ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    let p = producer();
    let pos = first_position(&gw, &p, &topics.main, "eve").await;
    let missed = produce_orders(&p, &topics.main, "eve", 1..21).await;
    routed_all(&gw, &missed).await;
    // Delete the partition's records up to the middle of the gap.
    let position = Position::parse(&pos).unwrap();
    let admin: AdminClient<DefaultClientContext> = moonx_ws::kafka::client_config(&brokers()).create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topics.main, position.partition, rdkafka::Offset::Offset(position.offset + 10)).unwrap();
    let deleted = admin.delete_records(&tpl, &AdminOptions::new()).await.expect("delete records");
    assert!(deleted.elements().iter().all(|e| e.error().is_ok()), "{deleted:?}");

    let mut c = Client::authed(&gw.ws_url(), "eve", &[]).await;
    let reply = resume(&mut c, "orders", &pos).await;
    assert_eq!((reply["recovered"].clone(), reply["missed"].clone()), (json!(false), json!(0)), "{reply}");
    // Live only.
    produce_orders(&p, &topics.main, "eve", 21..22).await;
    assert_eq!(order_numbers(&events(&mut c, 1).await), vec![21]);
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_resume_requests_total", &[("result", "before_log_start")]), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_forged_and_other_users_positions_are_not_recovered() {
    let topics = create_topics("resume-forged").await;
    let gw = Gateway::start(GatewayConfig { extra_env: resume_env(&[]), ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    let p = producer();
    let partitions = 6; // the layout of SPEC 4
    let me = "fay";
    let mine = Partitioner::Consistent.partition_of(me.as_bytes(), partitions);
    let users: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
    let elsewhere = users.iter().find(|u| Partitioner::Consistent.partition_of(u.as_bytes(), partitions) != mine).unwrap().clone();
    let beside = users.iter().find(|u| Partitioner::Consistent.partition_of(u.as_bytes(), partitions) == mine).unwrap().clone();
    let pos_mine = first_position(&gw, &p, &topics.main, me).await;
    let pos_elsewhere = first_position(&gw, &p, &topics.main, &elsewhere).await;
    let pos_beside = first_position(&gw, &p, &topics.main, &beside).await;
    let missed = [
        produce_orders(&p, &topics.main, &elsewhere, 1..11).await,
        produce_orders(&p, &topics.main, &beside, 1..11).await,
        produce_orders(&p, &topics.main, me, 1..4).await,
    ]
    .concat();
    routed_all(&gw, &missed).await;

    let mine_parsed = Position::parse(&pos_mine).unwrap();
    let other_topic = Position { topic: "another.topic".into(), ..mine_parsed.clone() }.encode();
    let other_generation = Position { generation: moonx_ws::deliver::resume::Generation::Partitions(12), ..mine_parsed.clone() }.encode();
    let far_ahead = Position { offset: mine_parsed.offset + 1_000_000, ..mine_parsed.clone() }.encode();
    for since in ["garbage", "", "1.....", &"9".repeat(5000), &other_topic, &other_generation, &far_ahead, &pos_elsewhere] {
        let mut c = Client::authed(&gw.ws_url(), me, &[]).await;
        let reply = resume(&mut c, "orders", since).await;
        assert_eq!((reply["recovered"].clone(), reply["missed"].clone()), (json!(false), json!(0)), "since {since:.60}: {reply}");
        nothing_more(&mut c).await;
    }
    // A position of someone on the same partition: only my own events come, never theirs.
    let mut c = Client::authed(&gw.ws_url(), me, &[]).await;
    let reply = resume(&mut c, "orders", &pos_beside).await;
    let n = reply["missed"].as_u64().unwrap() as usize;
    let got = events(&mut c, n).await;
    assert!(got.iter().all(|f| f["event"]["metadata"]["userId"] == me), "{got:?}");
    nothing_more(&mut c).await;
    // A non-string since is a bad request; the connection stays usable.
    c.send_json(json!({"type": "subscribe", "channel": "trades", "since": 5})).await;
    assert_eq!(c.recv_type_or_error(WAIT).await["code"], "bad_request");
    // Anonymous: no private channel, whatever since says.
    let mut anon = Client::connect(&gw.ws_url()).await;
    anon.send_json(json!({"type": "subscribe", "channel": "orders", "since": pos_mine})).await;
    assert_eq!(anon.recv_type_or_error(WAIT).await["code"], "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconnect_storm_is_served_by_bounded_shared_readers() {
    const CLIENTS: usize = 2_000;
    const MAX_READERS: &str = "2";
    let topics = create_topics("resume-storm").await;
    let gw = Gateway::start(GatewayConfig {
        // A small window: most of the storm is read from Kafka.
        extra_env: resume_env(&[("RESUME_WINDOW_EVENTS", "50"), ("RESUME_MAX_READERS", MAX_READERS), ("WS_MAX_CONNECTIONS", "10000")]),
        ..GatewayConfig::new(&topics)
    });
    gw.wait_healthy().await;
    let users: Vec<String> = (0..CLIENTS).map(|i| format!("storm-{i}")).collect();
    let url = gw.ws_url();
    // Everyone connects, gets one event (its position), and disconnects together.
    let mut clients = join_all(users.iter().map(|u| {
        let url = url.clone();
        async move {
            let mut c = Client::authed(&url, u, &[]).await;
            c.subscribe("orders").await;
            c
        }
    }))
    .await;
    let p = producer();
    let firsts: Vec<moonx_events::Event> = users.iter().map(|u| sample_event("order.created", u, 0)).collect();
    for r in join_all(firsts.iter().map(|e| moonx_ws::kafka::producer::send_event(&p, &topics.main, e))).await {
        r.unwrap();
    }
    let positions: Vec<String> = join_all(clients.iter_mut().map(|c| async move {
        let e = events(c, 1).await;
        e[0]["pos"].as_str().unwrap().to_owned()
    }))
    .await;
    drop(clients);

    // ~10 s of events while everyone is away: 3 per user, interleaved.
    let mut missed = Vec::new();
    for round in 1..4 {
        let batch: Vec<moonx_events::Event> = users.iter().map(|u| sample_event("order.created", u, round)).collect();
        for r in join_all(batch.iter().map(|e| moonx_ws::kafka::producer::send_event(&p, &topics.main, e))).await {
            r.unwrap();
        }
        missed.extend(batch.iter().map(|e| e.metadata.event_id.to_string()));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    routed_all(&gw, &missed).await;

    // A watcher samples the readers gauge throughout the storm.
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn({
        let base = gw.base();
        let stop = stop.clone();
        async move {
            let mut most = 0.0f64;
            while !stop.is_cancelled() {
                if let Ok((_, m)) = http_get(&format!("{base}/metrics")).await {
                    most = most.max(metric(&m, "moonx_ws_resume_kafka_readers_active", &[]));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most
        }
    });
    let started = std::time::Instant::now();
    let results = join_all(users.iter().zip(&positions).map(|(u, pos)| {
        let url = url.clone();
        async move {
            let mut c = Client::authed(&url, u, &[]).await;
            let reply = resume(&mut c, "orders", pos).await;
            let got = events(&mut c, 3).await;
            nothing_more(&mut c).await;
            (reply, order_numbers(&got))
        }
    }))
    .await;
    let took = started.elapsed();
    stop.cancel();
    let most_readers = watcher.await.unwrap();
    for (reply, got) in &results {
        assert_eq!((reply["recovered"].clone(), reply["missed"].clone()), (json!(true), json!(3)), "{reply}");
        assert_eq!(got, &vec![1, 2, 3]);
    }
    let m = gw.metrics().await;
    let passes = metric(&m, "moonx_ws_resume_kafka_reader_passes_total", &[]);
    eprintln!("storm: {CLIENTS} resumed in {took:?}; {passes} reader passes, at most {most_readers} readers at once");
    assert!(most_readers <= MAX_READERS.parse().unwrap(), "readers {most_readers}");
    assert!(metric(&m, "moonx_ws_resume_events_total", &[("source", "kafka")]) > 0.0, "{m}");
    assert!(passes < (CLIENTS / 4) as f64, "resumers of a partition share passes: {passes}");
    assert_eq!(metric(&m, "moonx_ws_slow_consumer_disconnects_total", &[]), 0.0);
    assert_eq!(http_get(&format!("{}/health", gw.base())).await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_mode_resumes_within_the_process_and_not_across_restarts() {
    const KEY: &str = "resume-key";
    let mut gw = Gateway::start_dev(&[], vec![("PUBLISH_API_KEYS", KEY.into())]);
    gw.wait_healthy().await;
    let publish = |base: String, range: std::ops::Range<usize>| async move {
        let batch: Vec<Value> = range.map(|n| serde_json::to_value(sample_event("order.created", "gus", n)).unwrap()).collect();
        let r = reqwest::Client::new()
            .post(format!("{base}/api/events"))
            .header("Authorization", format!("Bearer {KEY}"))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    };
    let mut c = Client::authed(&gw.ws_url(), "gus", &[]).await;
    c.subscribe("orders").await;
    publish(gw.base(), 0..1).await;
    let pos = events(&mut c, 1).await[0]["pos"].as_str().unwrap().to_owned();
    drop(c);
    publish(gw.base(), 1..21).await;
    let mut c = Client::authed(&gw.ws_url(), "gus", &[]).await;
    let reply = resume(&mut c, "orders", &pos).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let n = reply["missed"].as_u64().unwrap() as usize;
    let got = order_numbers(&events(&mut c, n).await);
    publish(gw.base(), 21..22).await;
    let rest = order_numbers(&events(&mut c, 21 - n).await);
    let all: Vec<usize> = got.into_iter().chain(rest).collect();
    assert_eq!(all, (1..22).collect::<Vec<_>>());
    drop(c);

    gw.restart();
    gw.wait_healthy().await;
    let mut c = Client::authed(&gw.ws_url(), "gus", &[]).await;
    let reply = resume(&mut c, "orders", &pos).await;
    assert_eq!((reply["recovered"].clone(), reply["missed"].clone()), (json!(false), json!(0)), "another epoch: {reply}");
}

/// A client that re-subscribes its channels at once (as the SDK and the
/// bench do after a reconnect), each with `since`, while the first waits for
/// Kafka: every channel gets its own `subscribed` reply, recovered, with
/// exactly its missed events, in the order the subscriptions were asked.
#[tokio::test(flavor = "multi_thread")]
async fn several_channels_resumed_at_once_from_kafka_each_get_their_missed_events() {
    let topics = create_topics("resume-many").await;
    let gw = Gateway::start(GatewayConfig { extra_env: resume_env(&[("RESUME_WINDOW_EVENTS", "1")]), ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    let p = producer();
    let user = "multi";
    // One live event per channel, to learn each channel's position.
    let mut c = Client::authed(&gw.ws_url(), user, &[]).await;
    for ch in ["orders", "trades", "portfolio"] {
        c.subscribe(ch).await;
    }
    let firsts = [
        sample_event("order.created", user, 0),
        sample_event("trade.executed", user, 0),
        sample_event("portfolio.updated", user, 0),
    ];
    for e in &firsts {
        moonx_ws::kafka::producer::send_event(&p, &topics.main, e).await.unwrap();
    }
    let mut pos = std::collections::HashMap::new();
    for f in events(&mut c, 3).await {
        pos.insert(f["channel"].as_str().unwrap().to_owned(), f["pos"].as_str().unwrap().to_owned());
    }
    drop(c);
    // Missed while away: 20 orders, 10 trades, 5 portfolio updates (the window holds 1).
    let mut missed: Vec<moonx_events::Event> = (1..21).map(|n| sample_event("order.created", user, n)).collect();
    missed.extend((1..11).map(|n| sample_event("trade.executed", user, n)));
    missed.extend((1..6).map(|n| sample_event("portfolio.updated", user, n)));
    for e in &missed {
        moonx_ws::kafka::producer::send_event(&p, &topics.main, e).await.unwrap();
    }
    routed_all(&gw, &missed.iter().map(|e| e.metadata.event_id.to_string()).collect::<Vec<_>>()).await;

    let mut c = Client::authed(&gw.ws_url(), user, &[]).await;
    for ch in ["orders", "trades", "portfolio"] {
        c.send_json(json!({"type": "subscribe", "channel": ch, "since": pos[ch]})).await;
    }
    let mut replies = Vec::new();
    let mut got: std::collections::HashMap<String, Vec<String>> = Default::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while replies.len() < 3 || got.values().map(Vec::len).sum::<usize>() < missed.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = c.recv(left).await.unwrap_or_else(|| panic!("replies {replies:?}, events {got:?}"));
        match v["type"].as_str() {
            Some("subscribed") => replies.push(v),
            Some("event") => got.entry(v["channel"].as_str().unwrap().to_owned()).or_default().push(v["event"]["metadata"]["eventId"].as_str().unwrap().to_owned()),
            _ => panic!("unexpected {v}"),
        }
    }
    let channels: Vec<&str> = replies.iter().map(|r| r["channel"].as_str().unwrap()).collect();
    assert_eq!(channels, ["orders", "trades", "portfolio"], "answered in the order asked");
    for (r, n) in replies.iter().zip([20, 10, 5]) {
        assert_eq!((r["recovered"].as_bool(), r["missed"].as_u64()), (Some(true), Some(n)), "{r}");
    }
    let ids = |t: &str| missed.iter().filter(|e| e.metadata.event_type.as_str() == t).map(|e| e.metadata.event_id.to_string()).collect::<Vec<_>>();
    assert_eq!(got["orders"], ids("order.created"));
    assert_eq!(got["trades"], ids("trade.executed"));
    assert_eq!(got["portfolio"], ids("portfolio.updated"));
    nothing_more(&mut c).await;
    let m = gw.metrics().await;
    assert!(metric(&m, "moonx_ws_resume_events_total", &[("source", "kafka")]) >= 30.0, "{m}");
}
