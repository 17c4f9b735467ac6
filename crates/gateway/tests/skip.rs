//! Skipping records nobody here needs (issue 11, item 3), against the real
//! broker, the real binary and real WebSocket clients.
//!
//! - Randomized: a dead-letter writer and a non-writer read one topic;
//!   random users (and operators) are connected to each; random prices,
//!   system, presence and private events, some keyed carelessly (a price
//!   keyed by a user, an order keyed by someone else, no key). Every client
//!   on each instance gets exactly what it is entitled to; the writer skips
//!   nothing; the non-writer's `events_skipped_total` is exactly the number
//!   of records the rule says have no local audience, counted here from the
//!   generated data. An operator who connects between two phases makes the
//!   presence events of the second phase undecidable without decoding.
//! - Resume: a user whose events were skipped while away reconnects with
//!   `since` and gets exactly those events (from Kafka: the in-memory window
//!   never held them), then live.
//! - The race: the user reconnects with `since` while their events stream
//!   in and are being skipped: every event after the position, in order, once.
//!
//! Waits are on counters and markers, never on silence.

mod common;

use common::ws::Client;
use common::*;
use moonx_events::Event;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);
const USERS: usize = 16;
const PHASE_1: usize = 1200;
const PHASE_2: usize = 600;

const PRIVATE: [&str; 6] = ["order.created", "order.updated", "order.cancelled", "portfolio.updated", "trade.executed", "trade.failed"];
const PRESENCE: [&str; 2] = ["user.connected", "user.disconnected"];
const SYSTEM: [&str; 2] = ["system.health_check", "system.error"];

fn private_channel(t: &str) -> &'static str {
    match t {
        "order.created" | "order.updated" | "order.cancelled" => "orders",
        "portfolio.updated" => "portfolio",
        _ => "trades",
    }
}

/// One produced record.
struct Produced {
    event: Event,
    key: Option<String>,
    phase: usize,
}

impl Produced {
    fn event_type(&self) -> &str {
        self.event.metadata.event_type.as_str()
    }

    fn owner(&self) -> Option<&str> {
        self.event.metadata.user_id.as_deref()
    }
}

/// A client and what it has received.
struct Conn {
    instance: usize,
    user: Option<String>,
    admin: bool,
    channels: HashSet<&'static str>,
    /// The first phase whose events it may receive.
    from_phase: usize,
    received: Arc<Mutex<Vec<String>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Conn {
    /// The rule (SPEC 3 and 5, declared classifications kept), written out
    /// independently of the server.
    fn entitled(&self, r: &Produced) -> bool {
        if r.phase < self.from_phase {
            return false;
        }
        let t = r.event_type();
        if t == "price.updated" {
            self.channels.contains("prices")
        } else if SYSTEM.contains(&t) || PRESENCE.contains(&t) {
            self.admin && self.channels.contains("system")
        } else {
            self.user.as_deref() == r.owner() && self.channels.contains(private_channel(t))
        }
    }
}

/// Connects a client, subscribes it, and reads its event ids until `marker`.
async fn connect(
    url: &str,
    instance: usize,
    user: Option<&str>,
    admin: bool,
    channels: &[&'static str],
    from_phase: usize,
    marker: String,
) -> Conn {
    let mut client = match user {
        Some(u) => Client::authed(url, u, if admin { &["admin"] } else { &[] }).await,
        None => Client::connect(url).await,
    };
    for ch in channels {
        client.subscribe(ch).await;
    }
    let received = Arc::new(Mutex::new(Vec::new()));
    let into = received.clone();
    let reader = tokio::spawn(async move {
        loop {
            let Some(v) = client.recv(WAIT * 2).await else {
                panic!("a client's connection ended or idled out (closed: {:?})", client.closed);
            };
            if v["type"] != "event" {
                continue;
            }
            let id = v["event"]["metadata"]["eventId"].as_str().unwrap().to_owned();
            if id == marker {
                return;
            }
            into.lock().unwrap().push(id);
        }
    });
    Conn { instance, user: user.map(str::to_owned), admin, channels: channels.iter().copied().collect(), from_phase, received, reader: Some(reader) }
}

fn random_events(rng: &mut impl Rng, n: usize, phase: usize, first: usize) -> Vec<Produced> {
    let user = |rng: &mut dyn rand::RngCore| format!("u{}", rng.random_range(0..USERS));
    (first..first + n)
        .map(|i| {
            let roll = rng.random_range(0..100);
            let (t, owner, key): (&str, String, Option<String>) = match roll {
                0..15 => ("price.updated", String::new(), Some("prices".into())),
                15..18 => ("price.updated", String::new(), Some(user(rng))), // careless: keyed by a user
                18..25 => (SYSTEM[rng.random_range(0..2)], String::new(), Some("system".into())),
                25..40 => {
                    let u = user(rng);
                    (PRESENCE[rng.random_range(0..2)], u.clone(), Some(u))
                }
                40..90 => {
                    let u = user(rng);
                    (PRIVATE[rng.random_range(0..PRIVATE.len())], u.clone(), Some(u))
                }
                90..96 => (PRIVATE[rng.random_range(0..PRIVATE.len())], user(rng), Some(user(rng))), // careless: keyed by someone else (or rightly, by chance)
                _ => (PRIVATE[rng.random_range(0..PRIVATE.len())], user(rng), None),
            };
            Produced { event: sample_event(t, &owner, i), key, phase }
        })
        .collect()
}

async fn produce(p: &rdkafka::producer::FutureProducer, topic: &str, records: &[Produced]) {
    for chunk in records.chunks(200) {
        let sends = chunk.iter().map(|r| {
            let bytes = r.event.to_json_bytes();
            async move { send_raw(p, topic, r.key.as_deref(), &bytes).await }
        });
        futures_util::future::join_all(sends).await;
    }
}

/// Whether the non-writer may skip `r` without decoding: a private or
/// presence event keyed by its owner, the owner not connected there, and,
/// for presence, no operator connected there either.
fn skippable(r: &Produced, users_here: &HashSet<String>, operator_here: bool) -> bool {
    let t = r.event_type();
    let owned_by_key = r.key.is_some() && r.key.as_deref() == r.owner();
    let owner_absent = r.owner().is_some_and(|o| !users_here.contains(o));
    owned_by_key
        && owner_absent
        && (PRIVATE.contains(&t) || (PRESENCE.contains(&t) && !operator_here))
}

async fn handled(gw: &Gateway) -> f64 {
    let m = gw.metrics().await;
    metric(&m, "moonx_ws_events_processed_total", &[])
        + metric(&m, "moonx_ws_events_failed_total", &[])
        + metric(&m, "moonx_ws_events_skipped_total", &[])
}

async fn wait_handled(gw: &Gateway, n: usize) {
    eventually(&format!("{n} records handled"), WAIT, || async {
        let done = handled(gw).await;
        if done == n as f64 { Ok(()) } else { Err(format!("{done} handled")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_writer_skips_exactly_the_records_nobody_connected_there_may_receive() {
    let seed: u64 = std::env::var("SKIP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("skip seed: {seed} (SKIP_SEED reproduces it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let topics = create_topics("skip").await;
    let env = |writer: bool| {
        vec![
            ("DLQ_WRITER", writer.to_string()),
            ("WS_PRESENCE_EVENTS", "false".into()),
            ("WS_QUEUE_CAPACITY", "100000".into()),
        ]
    };
    let writer = Gateway::start(GatewayConfig { extra_env: env(true), instance: "writer".into(), ..GatewayConfig::new(&topics) });
    let other = Gateway::start(GatewayConfig { extra_env: env(false), instance: "other".into(), ..GatewayConfig::new(&topics) });
    writer.wait_healthy().await;
    other.wait_healthy().await;
    let gateways = [&writer, &other];

    let marker = sample_event("price.updated", "", 0);
    let marker_id = marker.metadata.event_id.to_string();
    let mut conns = Vec::new();
    let mut users_on: [HashSet<String>; 2] = [HashSet::new(), HashSet::new()];
    for (instance, gw) in gateways.iter().enumerate() {
        conns.push(connect(&gw.ws_url(), instance, None, false, &["prices"], 1, marker_id.clone()).await);
        for u in 0..USERS {
            if !rng.random_bool(0.3) {
                continue;
            }
            let user = format!("u{u}");
            // Every client reads prices (the final marker is one); some connected
            // users subscribe to nothing private: connected is what counts.
            let channels: Vec<&'static str> =
                std::iter::once("prices").chain(["orders", "portfolio", "trades"].into_iter().filter(|_| rng.random_bool(0.6))).collect();
            conns.push(connect(&gw.ws_url(), instance, Some(&user), false, &channels, 1, marker_id.clone()).await);
            users_on[instance].insert(user);
        }
    }
    // The writer has an operator from the start; the non-writer gets one between the phases.
    conns.push(connect(&writer.ws_url(), 0, Some("ops-w"), true, &["prices", "system"], 1, marker_id.clone()).await);
    users_on[0].insert("ops-w".into());
    eprintln!("connected: writer {:?}, non-writer {:?}", users_on[0], users_on[1]);

    let p = producer();
    let phase_1 = random_events(&mut rng, PHASE_1, 1, 1);
    produce(&p, &topics.main, &phase_1).await;
    wait_handled(&other, PHASE_1).await;
    conns.push(connect(&other.ws_url(), 1, Some("ops-n"), true, &["prices", "system"], 2, marker_id.clone()).await);
    users_on[1].insert("ops-n".into());
    let phase_2 = random_events(&mut rng, PHASE_2, 2, 1 + PHASE_1);
    produce(&p, &topics.main, &phase_2).await;
    let records: Vec<Produced> = phase_1.into_iter().chain(phase_2).collect();

    let expected_skips = records.iter().filter(|r| skippable(r, &users_on[1], r.phase == 2)).count();
    eprintln!("{expected_skips} of {} records have no audience on the non-writer", records.len());
    for gw in gateways {
        wait_handled(gw, records.len()).await;
    }
    send_raw(&p, &topics.main, Some("prices"), &marker.to_json_bytes()).await;

    let mut violations = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        let reader = c.reader.take().expect("read once");
        tokio::time::timeout(WAIT, reader).await.expect("every client reads up to the marker").unwrap();
        let received = c.received.lock().unwrap();
        let got: HashSet<&String> = received.iter().collect();
        assert_eq!(got.len(), received.len(), "client {i} received a duplicate");
        let expected: HashSet<String> =
            records.iter().filter(|r| c.entitled(r)).map(|r| r.event.metadata.event_id.to_string()).collect();
        let describe = |id: &str| {
            records.iter().find(|r| r.event.metadata.event_id.to_string() == id).map(|r| (r.event_type().to_owned(), r.owner().map(str::to_owned), r.key.clone(), r.phase))
        };
        for id in received.iter().filter(|id| !expected.contains(*id)) {
            violations.push(format!("client {i} (instance {}, {:?}) got {id} it is not entitled to: {:?}", c.instance, c.user, describe(id)));
        }
        for id in expected.iter().filter(|id| !got.contains(id)) {
            violations.push(format!("client {i} (instance {}, {:?}, {:?}) missed {id}: {:?}", c.instance, c.user, c.channels, describe(id)));
        }
    }
    assert!(violations.is_empty(), "{} violations (seed {seed}):\n{}", violations.len(), violations.iter().take(40).cloned().collect::<Vec<_>>().join("\n"));

    let skipped = |m: &str| metric(m, "moonx_ws_events_skipped_total", &[("reason", "no_local_audience")]);
    assert_eq!(skipped(&writer.metrics().await), 0.0, "the dead-letter writer decodes everything");
    let m = other.metrics().await;
    assert!(expected_skips > 0, "the mix gave the non-writer nothing to skip (seed {seed})");
    assert_eq!(skipped(&m), expected_skips as f64, "skipped on the non-writer (seed {seed})");
    assert_eq!(metric(&m, "moonx_ws_events_consumed_total", &[]), (records.len() + 1) as f64, "skipped records still count as consumed");
    assert_eq!(metric(&m, "moonx_ws_events_failed_total", &[]), 0.0);
}

/// Reads `n` event frames.
async fn events(c: &mut Client, n: usize) -> Vec<Value> {
    c.events(n, WAIT).await
}

async fn produce_orders(p: &rdkafka::producer::FutureProducer, topic: &str, user: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let mut ids = Vec::new();
    for n in range {
        let e = sample_event("order.created", user, n);
        moonx_ws::kafka::producer::send_event(p, topic, &e).await.expect("produce");
        ids.push(e.metadata.event_id.to_string());
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_whose_events_were_skipped_gets_them_on_resume() {
    let topics = create_topics("skip-resume").await;
    let gw = Gateway::start(GatewayConfig {
        extra_env: vec![("DLQ_WRITER", "false".into()), ("WS_PRESENCE_EVENTS", "false".into())],
        ..GatewayConfig::new(&topics)
    });
    gw.wait_healthy().await;
    let p = producer();
    let user = "sam";

    // Connected: the first order comes live, with its position (and is kept in the window).
    let mut c = Client::authed(&gw.ws_url(), user, &[]).await;
    c.subscribe("orders").await;
    let first = produce_orders(&p, &topics.main, user, 0..1).await;
    let got = events(&mut c, 1).await;
    assert_eq!(got[0]["event"]["metadata"]["eventId"], first[0].as_str());
    let pos = got[0]["pos"].as_str().expect("private frames carry pos").to_owned();
    drop(c);
    gw.wait_metric("the user left", "moonx_ws_connections", &[], WAIT, |v| v == 0.0).await;

    // Away: their next orders have no audience here and are skipped.
    let missed = produce_orders(&p, &topics.main, user, 1..6).await;
    gw.wait_metric("the orders were skipped", "moonx_ws_events_skipped_total", &[("reason", "no_local_audience")], WAIT, |v| v == 5.0)
        .await;
    assert_eq!(metric(&gw.metrics().await, "moonx_ws_events_processed_total", &[]), 1.0, "only the first was decoded");

    // Back with `since`: exactly the skipped orders, in order, then live.
    let mut c = Client::authed(&gw.ws_url(), user, &[]).await;
    c.send_json(json!({"type": "subscribe", "channel": "orders", "since": pos})).await;
    let reply = c.recv_type_or_error(WAIT).await;
    assert_eq!((reply["type"].clone(), reply["recovered"].clone(), reply["missed"].clone()), (json!("subscribed"), json!(true), json!(5)), "{reply}");
    let live = produce_orders(&p, &topics.main, user, 6..7).await;
    let got: Vec<String> = events(&mut c, 6).await.iter().map(|f| f["event"]["metadata"]["eventId"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, missed.iter().chain(&live).cloned().collect::<Vec<_>>(), "the skipped events in order, then live");
    c.send_json(json!({"type": "ping", "id": "fence"})).await;
    assert_eq!(c.recv(WAIT).await.expect("pong")["type"], "pong", "nothing more");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_resume_events_total", &[("source", "kafka")]), 5.0, "read back from Kafka, not the window");
    assert_eq!(metric(&m, "moonx_ws_events_skipped_total", &[]), 5.0, "nothing skipped once the user was back");
}

/// The race of the module comment (`pipeline::skip`): the user reconnects
/// with `since` while their events stream in and are being skipped. Each
/// is either skipped before the join (and read back from Kafka) or comes
/// live after it: exactly every event after the position, in order, once.
#[tokio::test(flavor = "multi_thread")]
async fn reconnecting_while_ones_events_are_being_skipped_loses_and_repeats_nothing() {
    const STREAM: usize = 400;
    let topics = create_topics("skip-race").await;
    let gw = Gateway::start(GatewayConfig {
        extra_env: vec![("DLQ_WRITER", "false".into()), ("WS_PRESENCE_EVENTS", "false".into())],
        ..GatewayConfig::new(&topics)
    });
    gw.wait_healthy().await;
    let p = producer();
    let user = "rae";

    let mut c = Client::authed(&gw.ws_url(), user, &[]).await;
    c.subscribe("orders").await;
    produce_orders(&p, &topics.main, user, 0..1).await;
    let pos = events(&mut c, 1).await[0]["pos"].as_str().expect("pos").to_owned();
    drop(c);
    gw.wait_metric("the user left", "moonx_ws_connections", &[], WAIT, |v| v == 0.0).await;

    // The user's orders stream in, one at a time, in order.
    let stream = tokio::spawn({
        let (p, topic) = (p.clone(), topics.main.clone());
        async move {
            let mut ids = Vec::new();
            for n in 1..=STREAM {
                ids.extend(produce_orders(&p, &topic, user, n..n + 1).await);
            }
            ids
        }
    });
    // Back mid-stream, once skipping is under way.
    gw.wait_metric("skipping under way", "moonx_ws_events_skipped_total", &[], WAIT, |v| v >= 40.0).await;
    let mut c = Client::authed(&gw.ws_url(), user, &[]).await;
    c.send_json(json!({"type": "subscribe", "channel": "orders", "since": pos})).await;
    let reply = c.recv_type_or_error(WAIT).await;
    assert_eq!((reply["type"].clone(), reply["recovered"].clone()), (json!("subscribed"), json!(true)), "{reply}");
    let ids = stream.await.unwrap();
    assert!(reply["missed"].as_u64().unwrap() >= 40, "the ones skipped before the join are among the missed: {reply}");
    let got: Vec<String> = events(&mut c, STREAM).await.iter().map(|f| f["event"]["metadata"]["eventId"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, ids, "every event after the position, in order, once");
    c.send_json(json!({"type": "ping", "id": "fence"})).await;
    assert_eq!(c.recv(WAIT).await.expect("pong")["type"], "pong", "nothing more");
}
