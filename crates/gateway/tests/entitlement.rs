//! The entitlement property, randomized (issue 9): three gateways read one
//! topic, with different settings (validation on, validation off, and an
//! in-process gateway with custom types whose validation is drawn at
//! random); 10,000+ events of every built-in and custom type with random
//! declared classifications (kept, raised, and downgraded) and owners;
//! clients of every identity with random subscriptions on each gateway.
//! Every client must receive exactly the events the rule (SPEC section 5,
//! written out independently below) entitles it to: none more, none missed.
//!
//! Waits are explicit: each client until it has its expected count, each
//! gateway until it has processed every record, then a final public marker
//! that every client reads up to (frames of one connection are in order, so
//! anything leaked is before the marker).

mod common;

use clap::Parser as _;
use common::ws::Client;
use common::*;
use moonx_events::{CustomType, DataClassification, Event, EventFactory, EventOptions, EventType};
use moonx_ws::deliver::{Audience, Channel};
use moonx_ws::pipeline::router::{HandlerError, Route, Router};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const EVENTS: usize = 10_000;

/// The custom types of the in-process gateway: name, minimum, and the route its handler returns.
const CUSTOM: [(&str, DataClassification); 4] = [
    ("reward.granted", DataClassification::Confidential), // → the owner on trades
    ("market.note", DataClassification::Public),          // → everyone on prices
    ("ops.alert", DataClassification::Internal),          // → operators on system
    ("reward.leaky", DataClassification::Confidential),   // → everyone on prices: always refused
];

#[derive(clap::Parser)]
struct ServeCli {
    #[command(flatten)]
    serve: moonx_ws::config::ServeArgs,
}

fn custom_router() -> Router {
    let mut router = Router::with_built_in_handlers();
    for (name, min) in CUSTOM {
        router
            .register(CustomType::new(name, min), move |e: &Event| {
                Ok(vec![match name {
                    "reward.granted" => {
                        let owner = e.metadata.user_id.clone().ok_or_else(|| HandlerError::Permanent("no owner".into()))?;
                        Route { channel: Channel::Trades, audience: Audience::User(owner) }
                    }
                    "ops.alert" => Route { channel: Channel::System, audience: Audience::Operators },
                    _ => Route { channel: Channel::Prices, audience: Audience::Everyone },
                }])
            })
            .unwrap();
    }
    router
}

/// What a gateway does with events, as far as the rule is concerned.
#[derive(Debug, Clone, Copy)]
struct Setting {
    validation: bool,
    custom_types: bool,
}

fn minimum(t: &EventType) -> DataClassification {
    t.default_classification()
        .or_else(|| CUSTOM.iter().find(|(n, _)| *n == t.as_str()).map(|(_, c)| *c))
        .expect("a known type")
}

/// The rule, written out independently of the router: the (channel, audience)
/// routes an event takes on a gateway with `s`, or none.
fn expected_routes(e: &Event, s: Setting) -> Vec<(&'static str, Audience)> {
    let t = &e.metadata.event_type;
    let declared = e.metadata.data_classification;
    if !t.is_built_in() && !s.custom_types {
        return vec![]; // unknown_type (validation on) or no_handler (off)
    }
    let min = minimum(t);
    let owner = e.metadata.user_id.clone();
    if s.validation && (declared < min || (declared.max(min) >= DataClassification::Confidential && owner.is_none())) {
        return vec![]; // invalid_event
    }
    let effective = declared.max(min);
    if effective >= DataClassification::Confidential && owner.is_none() {
        return vec![]; // no_audience
    }
    let own_channel = |t: &EventType| match t.as_str() {
        "price.updated" => "prices",
        "order.created" | "order.updated" | "order.cancelled" => "orders",
        "portfolio.updated" => "portfolio",
        "trade.executed" | "trade.failed" => "trades",
        _ => "system",
    };
    if t.is_built_in() {
        return vec![match effective {
            DataClassification::Public => (own_channel(t), Audience::Everyone),
            DataClassification::Internal => ("system", Audience::Operators),
            _ => (own_channel(t), Audience::User(owner.unwrap())),
        }];
    }
    // Custom handlers, and the server's check of what they return.
    match t.as_str() {
        "reward.granted" => vec![("trades", Audience::User(owner.unwrap()))],
        "market.note" if effective == DataClassification::Public => vec![("prices", Audience::Everyone)],
        "ops.alert" if effective <= DataClassification::Internal => vec![("system", Audience::Operators)],
        _ => vec![], // refused as wider than the classification: handler_failed
    }
}

struct Conn {
    gateway: usize,
    user: Option<String>,
    admin: bool,
    channels: HashSet<&'static str>,
    received: Arc<Mutex<Vec<String>>>,
    marker_seen: Arc<Mutex<bool>>,
}

impl Conn {
    fn entitled(&self, routes: &[(&'static str, Audience)]) -> bool {
        routes.iter().any(|(channel, audience)| {
            self.channels.contains(channel)
                && match audience {
                    Audience::Everyone => true,
                    Audience::Operators => self.admin,
                    Audience::User(u) => self.user.as_deref() == Some(u.as_str()),
                }
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_client_gets_exactly_what_it_is_entitled_to_whatever_the_settings_and_the_producer_declare() {
    let seed: u64 = std::env::var("ENTITLEMENT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("entitlement seed: {seed} (ENTITLEMENT_SEED reproduces it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let topics = create_topics("entitle10k").await;

    // Three gateways on the same topic.
    let common_env = |validation: bool, dlq_writer: bool| {
        vec![
            ("EVENT_VALIDATION_ENABLED", validation.to_string()),
            ("WS_PRESENCE_EVENTS", "false".into()),
            ("WS_QUEUE_CAPACITY", "100000".into()),
            ("DLQ_WRITER", dlq_writer.to_string()),
        ]
    };
    let on = Gateway::start(GatewayConfig { extra_env: common_env(true, true), instance: "on".into(), ..GatewayConfig::new(&topics) });
    let off = Gateway::start(GatewayConfig { extra_env: common_env(false, false), instance: "off".into(), ..GatewayConfig::new(&topics) });
    let custom_validation = rng.random_bool(0.5);
    let group = unique("entitle-custom");
    let validation = custom_validation.to_string();
    let serve = ServeCli::try_parse_from([
        "t", "--brokers", &brokers(), "--main-topic", &topics.main, "--dlq-topic", &topics.dlq, "--group-id", &group,
        "--instance-id", "custom", "--auto-offset-reset", "earliest", "--host", "127.0.0.1", "--port", "0",
        "--jwt-secret", JWT_SECRET, "--validation", &validation, "--presence-events", "false", "--queue-capacity", "100000",
        "--dlq-writer", "false",
    ])
    .unwrap()
    .serve;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let in_process = tokio::spawn(moonx_ws::server::Gateway::new(serve).with_router(custom_router()).run_with(shutdown.clone(), move |r| {
        let _ = ready_tx.send(r);
    }));
    let running = ready_rx.await.expect("the in-process gateway starts");
    on.wait_healthy().await;
    off.wait_healthy().await;
    let settings = [
        Setting { validation: true, custom_types: false },
        Setting { validation: false, custom_types: false },
        Setting { validation: custom_validation, custom_types: true },
    ];
    eprintln!("settings: {settings:?}");
    let urls = [on.ws_url(), off.ws_url(), format!("ws://{}/ws", running.addr)];
    let metrics_urls = [format!("{}/metrics", on.base()), format!("{}/metrics", off.base()), format!("http://{}/metrics", running.addr)];

    // The final marker: a public price every client (all subscribe to prices) receives.
    let factory = EventFactory::new("entitlement-test").with_registry(custom_router().registry().clone());
    let marker = factory
        .create_from_json(&EventType::PriceUpdated, sample_data("price.updated", "-", 0), EventOptions::default())
        .unwrap();
    let marker_id = marker.metadata.event_id.to_string();

    // Clients of every identity on every gateway, with random subscriptions.
    let identities: [(Option<&str>, bool); 8] =
        [(None, false), (Some("u0"), false), (Some("u1"), false), (Some("u2"), false), (Some("ops"), true), (Some("u0"), true), (Some("u3"), true), (Some("u3"), false)];
    let mut conns = Vec::new();
    let mut readers = Vec::new();
    for (gateway, url) in urls.iter().enumerate() {
        for (user, admin) in identities {
            let mut client = match user {
                Some(u) => Client::authed(url, u, if admin { &["admin"] } else { &[] }).await,
                None => Client::connect(url).await,
            };
            let mut channels = HashSet::from(["prices"]);
            client.subscribe("prices").await;
            let allowed: &[&'static str] = match (user, admin) {
                (None, _) => &[],
                (Some(_), false) => &["orders", "portfolio", "trades"],
                (Some(_), true) => &["orders", "portfolio", "trades", "system"],
            };
            for ch in allowed {
                if rng.random_bool(0.6) {
                    client.subscribe(ch).await;
                    channels.insert(*ch);
                }
            }
            let received = Arc::new(Mutex::new(Vec::new()));
            let marker_seen = Arc::new(Mutex::new(false));
            let (r, m, marker_id) = (received.clone(), marker_seen.clone(), marker_id.clone());
            readers.push(tokio::spawn(async move {
                loop {
                    let Some(v) = client.recv(Duration::from_secs(300)).await else {
                        panic!("a client's connection ended or idled out (closed: {:?})", client.closed);
                    };
                    if v["type"] != "event" {
                        continue;
                    }
                    let id = v["event"]["metadata"]["eventId"].as_str().unwrap().to_owned();
                    if id == marker_id {
                        *m.lock().unwrap() = true;
                        return;
                    }
                    r.lock().unwrap().push(id);
                }
            }));
            conns.push(Conn { gateway, user: user.map(str::to_owned), admin, channels, received, marker_seen });
        }
    }

    // The events: every type, random owners (u4 has no client), random declarations.
    let types: Vec<EventType> =
        EventType::BUILT_IN
            .into_iter()
            // session.revoked also cuts its user off (tests/revocation.rs): not part of the delivery mix.
            .filter(|t| *t != EventType::SessionRevoked)
            .chain(CUSTOM.iter().map(|(n, _)| EventType::parse(n)))
            .collect();
    let users = ["u0", "u1", "u2", "u3", "u4"];
    let mut events = Vec::with_capacity(EVENTS);
    for n in 0..EVENTS {
        let t = types[rng.random_range(0..types.len())].clone();
        let user = users[rng.random_range(0..users.len())];
        let owned = minimum(&t) >= DataClassification::Confidential || t.is_user_scoped();
        let with_user = owned || rng.random_bool(0.5);
        let data = if t.is_built_in() { sample_data(t.as_str(), user, n) } else { json!({"n": n, "userId": user}) };
        let data = if !t.is_built_in() && !with_user { json!({"n": n}) } else { data };
        let options = if with_user { EventOptions::user(user) } else { EventOptions::default() };
        let mut e = factory.create_from_json(&t, data, options).unwrap_or_else(|errs| panic!("{t}: {errs}"));
        if rng.random_bool(0.5) {
            e.metadata.data_classification = DataClassification::ALL[rng.random_range(0..4)];
        }
        if t.is_user_scoped() && !t.as_str().starts_with("user.") {
            // orders, trades, portfolio always name their owner
        } else if rng.random_bool(0.1) {
            e.metadata.user_id = None; // presence without metadata.userId, a raised price without an owner
        }
        events.push(e);
    }
    let p = producer();
    for chunk in events.chunks(500) {
        let sends = chunk.iter().map(|e| {
            let bytes = e.to_json_bytes();
            let p = &p;
            let topic = &topics.main;
            async move { send_raw(p, topic, Some(e.metadata.partition.as_str()), &bytes).await }
        });
        futures_util::future::join_all(sends).await;
    }

    // The rule's verdict per client.
    let mut expected: Vec<HashSet<String>> = vec![HashSet::new(); conns.len()];
    for e in &events {
        for (gateway, s) in settings.iter().enumerate() {
            let routes = expected_routes(e, *s);
            for (i, c) in conns.iter().enumerate() {
                if c.gateway == gateway && c.entitled(&routes) {
                    expected[i].insert(e.metadata.event_id.to_string());
                }
            }
        }
    }
    let total: usize = expected.iter().map(HashSet::len).sum();
    eprintln!("{total} expected deliveries over {} clients", conns.len());
    assert!(total > 5_000, "the mix exercised little: {total}");

    eventually("every client has at least its expected count", Duration::from_secs(240), || async {
        let short: Vec<String> = conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let got = c.received.lock().unwrap().len();
                (got < expected[i].len()).then(|| format!("client {i}: {got}/{}", expected[i].len()))
            })
            .collect();
        if short.is_empty() { Ok(()) } else { Err(short.join(", ")) }
    })
    .await;
    eventually("every gateway has processed every record", Duration::from_secs(240), || async {
        for url in &metrics_urls {
            let (_, m) = http_get(url).await.map_err(|e| e.to_string())?;
            // Non-writers skip, undecoded, what no client of theirs may receive (tests/skip.rs).
            let done = metric(&m, "moonx_ws_events_processed_total", &[])
                + metric(&m, "moonx_ws_events_failed_total", &[])
                + metric(&m, "moonx_ws_events_skipped_total", &[]);
            if done < EVENTS as f64 {
                return Err(format!("{url}: {done}"));
            }
        }
        Ok(())
    })
    .await;
    send_raw(&p, &topics.main, Some("prices"), &marker.to_json_bytes()).await;
    eventually("every client has read up to the marker", Duration::from_secs(60), || async {
        let waiting = conns.iter().filter(|c| !*c.marker_seen.lock().unwrap()).count();
        if waiting == 0 { Ok(()) } else { Err(format!("{waiting} clients")) }
    })
    .await;
    for r in readers {
        r.await.unwrap();
    }

    let mut violations = Vec::new();
    for (i, c) in conns.iter().enumerate() {
        let received = c.received.lock().unwrap();
        let set: HashSet<&String> = received.iter().collect();
        if set.len() != received.len() {
            violations.push(format!("client {i} received a duplicate"));
        }
        for id in received.iter().filter(|id| !expected[i].contains(*id)) {
            let e = events.iter().find(|e| e.metadata.event_id.to_string() == *id);
            violations.push(format!(
                "client {i} (gateway {}, {:?}, admin {}, {:?}) received {id} it is not entitled to: {:?}",
                c.gateway, c.user, c.admin, c.channels, e.map(|e| (&e.metadata.event_type, e.metadata.data_classification, &e.metadata.user_id))
            ));
        }
        for id in expected[i].iter().filter(|id| !set.contains(id)) {
            violations.push(format!("client {i} (gateway {}, {:?}) missed {id}", c.gateway, c.user));
        }
    }
    assert!(violations.is_empty(), "{} violations (seed {seed}):\n{}", violations.len(), violations.iter().take(50).cloned().collect::<Vec<_>>().join("\n"));

    // Each gateway also refused what the rule says it refuses, for the reason it says.
    let (_, m) = http_get(&metrics_urls[1]).await.unwrap();
    assert!(metric(&m, "moonx_ws_events_failed_total", &[("reason", "no_handler")]) > 0.0, "custom types have no handler on `off`");
    assert!(metric(&m, "moonx_ws_events_failed_total", &[("reason", "no_audience")]) > 0.0, "ownerless raised events on `off`");
    let (_, m) = http_get(&metrics_urls[2]).await.unwrap();
    assert!(metric(&m, "moonx_ws_events_failed_total", &[("event_type", "reward.leaky"), ("reason", "handler_failed")]) > 0.0);
    shutdown.cancel();
    in_process.await.unwrap().unwrap();
}
