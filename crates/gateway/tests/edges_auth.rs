//! The edges of authentication and delivery, tried as a hostile or careless
//! client would (issue 9, items 6, 8, 11–15, and untested paths): real
//! sockets, the real `moonx-ws` binary, and the real broker where Kafka is
//! part of the promise.

mod common;

use base64::Engine;
use common::ws::{token, Client};
use common::*;
use futures_util::future::join_all;
use moonx_ws::kafka::producer::send_event;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T5: Duration = Duration::from_secs(5);
const T30: Duration = Duration::from_secs(30);

async fn started(prefix: &str, extra_env: Vec<(&'static str, String)>) -> (Topics, Gateway) {
    let topics = create_topics(prefix).await;
    let gw = Gateway::start(GatewayConfig { extra_env, ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    (topics, gw)
}

/// `moonx-ws dev` (no Kafka: the promise under test does not involve it),
/// once it answers.
async fn dev(extra_env: Vec<(&'static str, String)>) -> Gateway {
    let gw = Gateway::start_dev(&[], extra_env);
    gw.wait_healthy().await;
    gw
}

fn now_secs() -> u64 {
    moonx_events::validate::now_ms() / 1000
}

/// A JWT with any header and claims, HS256-signed with the test secret
/// (what a forger who knows nothing else would send, or one who stole a
/// signature for different content).
fn forge(header: Value, claims: Value) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let message = format!("{}.{}", b64(&header), b64(&claims));
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

/// Phrases of serde, serde_json and jsonwebtoken that must never reach a client.
const LIBRARY_PHRASES: [&str; 9] =
    ["expected", "variant", "line 1", "column", "InvalidToken", "InvalidSignature", "Json(", "ErrorKind", "Error("];

fn assert_our_words(text: &str, ours: &[&str]) {
    for p in LIBRARY_PHRASES {
        assert!(!text.contains(p), "library phrasing {p:?} reached the client: {text}");
    }
    assert!(ours.contains(&text), "not one of our messages: {text:?}");
}

/// Sends raw bytes as an HTTP request and returns the status code of the answer.
async fn raw_status(port: u16, request: &[u8]) -> u16 {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    while !buf[..got].windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(T5, s.read(&mut buf[got..])).await.expect("an answer within 5 s").unwrap();
        assert!(n > 0, "closed without a status line");
        got += n;
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {line:?}"))
}

fn upgrade_request(extra_headers: &[&[u8]]) -> Vec<u8> {
    let mut r = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n".to_vec();
    for h in extra_headers {
        r.extend_from_slice(h);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r
}

// ---------------------------------------------------------------- item 6

/// A thousand anonymous clients with the widest filters allowed leave a
/// normal client's stream whole; a filter beyond the cap is refused.
#[tokio::test(flavor = "multi_thread")]
async fn wide_token_filters_are_capped_and_a_crowd_of_them_takes_nothing_from_a_normal_client() {
    let (topics, gw) = started("filters", vec![("WS_PRESENCE_EVENTS", "false".into())]).await;
    let url = gw.ws_url();
    let max_tokens = 64; // the documented default of WS_MAX_FILTER_TOKENS

    let mut probe = Client::connect(&url).await;
    let over: Vec<String> = (0..=max_tokens).map(|i| format!("t{i}")).collect();
    probe.send_json(json!({"type": "subscribe", "channel": "prices", "tokens": over, "id": 1})).await;
    let r = probe.recv(T5).await.unwrap();
    assert_eq!((r["type"].as_str(), r["code"].as_str(), r["id"].as_i64()), (Some("error"), Some("bad_request"), Some(1)), "{r}");
    assert!(r["message"].as_str().unwrap().contains("WS_MAX_FILTER_TOKENS"), "{r}");
    probe.send_json(json!({"type": "subscribe", "channel": "prices", "tokens": ["X".repeat(33)], "id": 2})).await;
    let r = probe.recv(T5).await.unwrap();
    assert_eq!((r["code"].as_str(), r["id"].as_i64()), (Some("bad_request"), Some(2)), "a 33-byte token: {r}");

    // The crowd: 1,000 connections, each with 64 tokens (63 that never
    // trade, plus SOL), none of them reading.
    let crowd_filter: Vec<String> = (0..max_tokens - 1).map(|i| format!("never{i}")).chain(["sol".to_owned()]).collect();
    let mut crowd = Vec::new();
    for _ in 0..20 {
        let batch = join_all((0..50).map(|_| {
            let (url, filter) = (url.clone(), crowd_filter.clone());
            async move {
                let mut c = Client::connect(&url).await;
                c.send_json(json!({"type": "subscribe", "channel": "prices", "tokens": filter})).await;
                let r = c.recv(T30).await.expect("a reply to subscribe");
                assert_eq!(r["type"], "subscribed", "{r}");
                c
            }
        }))
        .await;
        crowd.extend(batch);
    }
    // The hub records a subscription right after its reply is written: wait for it.
    gw.wait_metric("1,000 prices subscriptions", "moonx_ws_subscriptions", &[("channel", "prices")], T30, |v| v == 1000.0).await;

    let mut normal = Client::connect(&url).await;
    normal.subscribe("prices").await;
    let total = 400; // tokens ETH, BTC, USDT, SOL in turn
    let p = producer();
    let events: Vec<_> = (0..total).map(|n| sample_event("price.updated", "", n)).collect();
    for r in join_all(events.iter().map(|e| send_event(&p, &topics.main, e))).await {
        r.unwrap();
    }
    assert_eq!(normal.count_events(total, T30).await, total, "the normal client received every price");
    let sol: Vec<Value> = {
        let first = &mut crowd[0];
        let mut got = Vec::new();
        while got.len() < total / 4 {
            got.push(first.recv_type("event", T30).await);
        }
        got
    };
    assert!(sol.iter().all(|f| f["event"]["data"]["token"] == "SOL"), "a crowd member got only its filter's token");
    assert_eq!(metric(&gw.metrics().await, "moonx_ws_client_errors_total", &[("code", "bad_request")]), 2.0);
}

// ---------------------------------------------------------------- item 8

/// Reads `topic` from the start until `until` matches a record's value;
/// returns every value read.
async fn read_until(topic: &str, until: impl Fn(&Value) -> bool) -> Vec<Value> {
    let consumer: StreamConsumer = moonx_ws::kafka::client_config(&brokers())
        .set("group.id", unique("edges-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv()).await.expect("the awaited record within 60 s").unwrap();
        let v: Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(Value::Null);
        let done = until(&v);
        out.push(v);
        if done {
            return out;
        }
    }
}

/// One user opening and closing connections in a loop produces a bounded
/// number of presence events (at most two per WS_PRESENCE_GRACE_MS window:
/// README, "Presence"), and an operator still sees them arrive and leave.
#[tokio::test(flavor = "multi_thread")]
async fn connection_churn_of_one_user_yields_a_bounded_number_of_presence_events() {
    let grace = Duration::from_secs(2);
    let (topics, gw) = started("churn", vec![("WS_PRESENCE_GRACE_MS", grace.as_millis().to_string())]).await;
    let mut ops = Client::authed(&gw.ws_url(), "ops", &["admin"]).await;
    ops.subscribe("system").await;

    let url = format!("{}?token={}", gw.ws_url(), token("churner", &[], 3600));
    let started_at = Instant::now();
    let mut last_close_ms = 0;
    for _ in 0..300 {
        let mut c = Client::connect(&url).await;
        assert_eq!(c.recv(T5).await.unwrap()["type"], "authenticated");
        last_close_ms = moonx_events::validate::now_ms();
        c.ws.close(None).await.unwrap();
        while c.recv(T5).await.is_some() {}
    }
    let churn_span = started_at.elapsed();

    // The user is gone for good once a user.disconnected made after the
    // last close is out: it is the last presence event of the churn, and
    // the user's events share a partition, so everything before it is in.
    let of_churner = |v: &Value, t: &str| v["event"]["metadata"]["eventType"] == t && v["event"]["data"]["userId"] == "churner";
    let mut seen_by_ops = Vec::new();
    let disconnected = loop {
        let v = ops.recv_type("event", T30).await;
        if of_churner(&v, "user.connected") || of_churner(&v, "user.disconnected") {
            seen_by_ops.push(v["event"]["metadata"]["eventType"].as_str().unwrap().to_owned());
        }
        if of_churner(&v, "user.disconnected") && v["event"]["metadata"]["timestamp"].as_u64().unwrap() >= last_close_ms {
            break v;
        }
    };
    assert_eq!(seen_by_ops.first().map(String::as_str), Some("user.connected"), "the operator saw the first connect: {seen_by_ops:?}");

    let last_id = disconnected["event"]["metadata"]["eventId"].clone();
    let records = read_until(&topics.main, |v| v["metadata"]["eventId"] == last_id).await;
    let presence: Vec<&Value> = records
        .iter()
        .filter(|v| v["data"]["userId"] == "churner")
        .filter(|v| v["metadata"]["eventType"].as_str().is_some_and(|t| t.starts_with("user.")))
        .collect();
    // Each connect follows a disconnect that waited a full grace, so over a
    // span S there are at most 2 * (S / grace + 1) of them.
    let bound = 2 * (churn_span.as_millis() / grace.as_millis() + 1) as usize;
    assert!(
        presence.len() <= bound,
        "{} presence events for 300 connections in {churn_span:?} (bound {bound})",
        presence.len()
    );
    assert!(presence.len() >= 2, "the connect and the final disconnect are published");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_beyond_the_per_user_connection_limit_is_refused_and_closed() {
    let gw = dev(vec![("WS_MAX_CONNECTIONS_PER_USER", "2".into())]).await;
    let url = gw.ws_url();
    let _a = Client::authed(&url, "greedy", &[]).await;
    let _b = Client::authed(&url, "greedy", &[]).await;
    let _other = Client::authed(&url, "someone-else", &[]).await;

    let mut third = Client::connect(&url).await;
    third.send_json(json!({"type": "auth", "token": token("greedy", &[], 3600), "id": "x"})).await;
    let r = third.recv(T5).await.unwrap();
    assert_eq!((r["type"].as_str(), r["code"].as_str(), r["id"].as_str()), (Some("error"), Some("limit_exceeded"), Some("x")), "{r}");
    assert!(r["message"].as_str().unwrap().contains("WS_MAX_CONNECTIONS_PER_USER"), "{r}");
    assert!(third.recv(T5).await.is_none());
    assert_eq!(third.closed.as_ref().map(|c| c.0), Some(1008), "{:?}", third.closed);

    // The same through ?token= on the upgrade.
    let mut fourth = Client::connect(&format!("{url}?token={}", token("greedy", &[], 3600))).await;
    assert_eq!(fourth.recv(T5).await.unwrap()["code"], "limit_exceeded");
    assert!(fourth.recv(T5).await.is_none());
    assert_eq!(fourth.closed.as_ref().map(|c| c.0), Some(1008));
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_connections_rejected_total", &[("reason", "max_connections_per_user")]), 2.0);
}

// ---------------------------------------------------------------- items 11 and 14

const AUTH_MESSAGES: [&str; 9] = [
    "authentication is not configured on this server",
    "the token has expired",
    "the token is not valid yet (nbf is in the future)",
    "the token expires too far in the future: its exp exceeds the server's maximum token lifetime",
    "the token is not a well-formed JWT",
    "the token must be signed with HS256",
    "the token's signature does not verify",
    "the token needs a non-blank \"sub\" and a numeric \"exp\"",
    "the token has a \"crit\" header, which this server does not support",
];

/// Every forgery is refused as `unauthorized`, in our words.
#[tokio::test(flavor = "multi_thread")]
async fn jwt_forgeries_are_refused_in_our_words() {
    let gw = dev(vec![]).await;
    let mut c = Client::connect(&gw.ws_url()).await;
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let soon = now_secs() + 600;
    let forgeries = [
        ("nbf in the future", forge(hs.clone(), json!({"sub": "mallory", "exp": soon, "nbf": now_secs() + 300})), AUTH_MESSAGES[2]),
        ("a crit header", forge(json!({"alg": "HS256", "crit": ["exp"]}), json!({"sub": "mallory", "exp": soon})), AUTH_MESSAGES[8]),
        ("a blank sub", forge(hs.clone(), json!({"sub": "  \t ", "exp": soon})), AUTH_MESSAGES[7]),
        ("an empty sub", forge(hs.clone(), json!({"sub": "", "exp": soon})), AUTH_MESSAGES[7]),
        ("exp = u64::MAX", forge(hs.clone(), json!({"sub": "mallory", "exp": u64::MAX})), AUTH_MESSAGES[3]),
        ("alg none", forge(json!({"alg": "none"}), json!({"sub": "mallory", "exp": soon})), AUTH_MESSAGES[5]),
        ("alg HS512", forge(json!({"alg": "HS512"}), json!({"sub": "mallory", "exp": soon})), AUTH_MESSAGES[5]),
        ("a bad signature", format!("{}A", forge(hs.clone(), json!({"sub": "mallory", "exp": soon}))), AUTH_MESSAGES[6]),
        ("not a JWT", "a.b.c".to_owned(), AUTH_MESSAGES[4]),
        ("no exp", forge(hs.clone(), json!({"sub": "mallory"})), AUTH_MESSAGES[7]),
        ("a string exp", forge(hs.clone(), json!({"sub": "mallory", "exp": "tomorrow"})), AUTH_MESSAGES[7]),
    ];
    for (what, forged, message) in forgeries {
        c.send_json(json!({"type": "auth", "token": forged, "id": what})).await;
        let r = c.recv(T5).await.unwrap_or_else(|| panic!("{what}: no reply"));
        assert_eq!((r["type"].as_str(), r["code"].as_str(), r["id"].as_str()), (Some("error"), Some("unauthorized"), Some(what)), "{r}");
        assert_our_words(r["message"].as_str().unwrap(), &AUTH_MESSAGES);
        assert_eq!(r["message"], message, "{what}");
        // Still anonymous: private channels stay shut.
        c.send_json(json!({"type": "subscribe", "channel": "orders"})).await;
        assert_eq!(c.recv(T5).await.unwrap()["code"], "unauthorized", "{what} opened a private channel");
        // A good message, so that the errors in a row stay below the 1008 limit.
        c.send_json(json!({"type": "ping"})).await;
        assert_eq!(c.recv(T5).await.unwrap()["type"], "pong");
    }

    // A genuine token far ahead but within the lifetime: expiresAt is exact and JS-safe.
    let exp = now_secs() + 7 * 24 * 3600;
    c.send_json(json!({"type": "auth", "token": forge(hs, json!({"sub": "alice", "exp": exp}))})).await;
    let r = c.recv(T5).await.unwrap();
    assert_eq!(r["type"], "authenticated", "{r}");
    assert_eq!(r["expiresAt"].as_u64(), Some(exp * 1000));
    assert!(exp * 1000 <= moonx_ws::deliver::auth::JS_MAX_SAFE_INTEGER);
}

/// The known offenders of issue 9 get our sentences, never a library's.
#[tokio::test(flavor = "multi_thread")]
async fn error_texts_are_ours() {
    let gw = dev(vec![("WS_RATE_LIMIT_BURST", "1000".into()), ("PUBLISH_API_KEYS", "pub-key".into())]).await;
    let mut c = Client::connect(&gw.ws_url()).await;
    let none_alg = forge(json!({"alg": "none"}), json!({"sub": "x", "exp": now_secs() + 60}));
    let unknown_alg = forge(json!({"alg": "XYZ"}), json!({"sub": "x", "exp": now_secs() + 60}));
    let cases: [(String, &[&str]); 9] = [
        ("not json".into(), &["not JSON: send a JSON object such as {\"type\":\"ping\"}"]),
        ("{\"type\":".into(), &["not JSON: send a JSON object such as {\"type\":\"ping\"}"]),
        ("[1,2]".into(), &["a message must be a JSON object"]),
        (json!({"type": "dance"}).to_string(), &["unknown message type: use subscribe, unsubscribe, auth or ping"]),
        (json!({"type": 7}).to_string(), &["\"type\" must be a string"]),
        (json!({"type": "subscribe", "channel": "prices", "tokens": "ETH"}).to_string(), &["\"tokens\" must be an array of strings"]),
        (json!({"type": "auth", "token": none_alg}).to_string(), &AUTH_MESSAGES),
        (json!({"type": "auth", "token": unknown_alg}).to_string(), &AUTH_MESSAGES),
        (json!({"type": "auth", "token": "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln"}).to_string(), &AUTH_MESSAGES),
    ];
    for (frame, ours) in cases {
        c.send_text(&frame).await;
        let r = c.recv(T5).await.unwrap_or_else(|| panic!("no reply to {frame}"));
        assert_eq!(r["type"], "error", "{frame}: {r}");
        assert_our_words(r["message"].as_str().unwrap(), ours);
    }

    // HTTP: a plain GET of /ws is answered in our words too.
    let r = reqwest::get(format!("{}/ws", gw.base())).await.unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let body = r.text().await.unwrap();
    assert_our_words(
        &body,
        &["this endpoint expects a WebSocket upgrade (GET with Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13)"],
    );

    // The publish API: a body that is not JSON gets our words, not the parser's.
    let r = reqwest::Client::new()
        .post(format!("{}/api/events", gw.base()))
        .header("X-API-Key", "pub-key")
        .header("content-type", "application/json")
        .body("{\"type\": ")
        .timeout(T5)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_our_words(body["error"].as_str().unwrap(), &["the body is not JSON: send an event object or an array of them"]);
}

/// `Authorization: Bearer` on the upgrade, any case of the scheme.
#[tokio::test(flavor = "multi_thread")]
async fn the_upgrade_takes_a_bearer_token_in_any_case() {
    let gw = dev(vec![]).await;
    for (i, scheme) in ["Bearer", "bearer", "BEARER"].iter().enumerate() {
        let user = format!("bearer-{i}");
        let auth = format!("{scheme} {}", token(&user, &[], 3600));
        let mut c = Client::connect_with(&gw.ws_url(), &[("Authorization", &auth)]).await.unwrap();
        let r = c.recv(T5).await.unwrap();
        assert_eq!((r["type"].as_str(), r["userId"].as_str()), (Some("authenticated"), Some(user.as_str())), "{scheme}: {r}");
        c.subscribe("orders").await;
    }
}

/// The publish API takes `X-API-Key` and a Bearer key in any case.
#[tokio::test(flavor = "multi_thread")]
async fn the_publish_api_takes_x_api_key_and_a_bearer_key_in_any_case() {
    let gw = dev(vec![("PUBLISH_API_KEYS", "pub-key-1,pub-key-2".into())]).await;
    let http = reqwest::Client::new();
    let item = json!({"type": "price.updated", "data": sample_data("price.updated", "", 0)});
    let post = |headers: Vec<(&'static str, &'static str)>| {
        let mut r = http.post(format!("{}/api/events", gw.base())).json(&item).timeout(T5);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(vec![("X-API-Key", "pub-key-2")]).await, 200);
    assert_eq!(post(vec![("Authorization", "Bearer pub-key-1")]).await, 200);
    assert_eq!(post(vec![("Authorization", "bearer pub-key-1")]).await, 200);
    assert_eq!(post(vec![("X-API-Key", "wrong")]).await, 401);
    assert_eq!(post(vec![("Authorization", "Basic pub-key-1")]).await, 401);
    assert_eq!(post(vec![]).await, 401);
}

// ---------------------------------------------------------------- item 12

/// At RUST_LOG=trace, no token is in the log, however it was sent.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_not_logged_even_at_trace() {
    let gw = dev(vec![("RUST_LOG", "trace".into())]).await;
    let by_message = token("log-by-message", &[], 3600);
    let by_query = token("log-by-query", &[], 3600);
    let by_header = token("log-by-header", &[], 3600);

    let mut a = Client::connect(&gw.ws_url()).await;
    a.send_json(json!({"type": "auth", "token": by_message})).await;
    assert_eq!(a.recv(T5).await.unwrap()["type"], "authenticated");
    let mut b = Client::connect(&format!("{}?token={by_query}", gw.ws_url())).await;
    assert_eq!(b.recv(T5).await.unwrap()["type"], "authenticated");
    let mut c = Client::connect_with(&gw.ws_url(), &[("Authorization", &format!("Bearer {by_header}"))]).await.unwrap();
    assert_eq!(c.recv(T5).await.unwrap()["type"], "authenticated");
    for client in [&mut a, &mut b, &mut c] {
        client.send_json(json!({"type": "ping"})).await;
        assert_eq!(client.recv(T5).await.unwrap()["type"], "pong");
    }

    let log = gw.logs();
    for (how, t) in [("auth message", &by_message), ("?token=", &by_query), ("Authorization: Bearer", &by_header)] {
        // The signature alone would be enough to reuse a token elsewhere.
        let signature = t.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "the token sent by {how} is in the log");
    }
    // Evidence that trace logging was on: the trace line of each authentication.
    eventually("the trace lines of the three authentications", T5, || async {
        let log = gw.logs();
        let missing: Vec<&str> = ["log-by-message", "log-by-query", "log-by-header"]
            .into_iter()
            .filter(|u| !log.lines().any(|l| l.contains("TRACE") && l.contains("authenticated") && l.contains(u)))
            .collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("no TRACE line for {missing:?}")) }
    })
    .await;    let log = gw.logs();
    for t in [&by_message, &by_query, &by_header] {
        assert!(!log.contains(t.rsplit('.').next().unwrap()), "a token is in the log");
    }
}

// ---------------------------------------------------------------- item 13

#[tokio::test(flavor = "multi_thread")]
async fn a_non_ascii_or_repeated_origin_is_refused() {
    let gw = dev(vec![("ALLOWED_ORIGINS", "https://app.moonx.example".into())]).await;
    let allowed: &[u8] = b"Origin: https://app.moonx.example";
    assert_eq!(raw_status(gw.port, &upgrade_request(&[allowed])).await, 101, "the allowed origin");
    assert_eq!(raw_status(gw.port, &upgrade_request(&[])).await, 101, "no Origin: not a browser");
    assert_eq!(raw_status(gw.port, &upgrade_request(&["Origin: https://app.moonx.éxample".as_bytes()])).await, 403, "non-ASCII");
    assert_eq!(raw_status(gw.port, &upgrade_request(&[allowed, b"Origin: https://evil.example"])).await, 403, "two Origins");
    assert_eq!(raw_status(gw.port, &upgrade_request(&[allowed, allowed])).await, 403, "the same Origin twice");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "moonx_ws_connections_rejected_total", &[("reason", "origin")]), 3.0);
}

// ---------------------------------------------------------------- item 15

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_need_an_admin_credential() {
    let gw = dev(vec![("ADMIN_API_KEYS", "adm-key-1,adm-key-2".into()), ("PUBLISH_API_KEYS", "pub-key".into())]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/dead-letters", gw.base());
    let get = |header: Option<(&'static str, String)>| {
        let mut r = http.get(&url).timeout(T5);
        if let Some((k, v)) = header {
            r = r.header(k, v);
        }
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = get(None).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("deadLetters"));
    assert_eq!(get(Some(("X-API-Key", "pub-key".into()))).await.0, 401, "a publish key is not an admin key");
    assert_eq!(get(Some(("Authorization", "Bearer not-a-key".into()))).await.0, 401);
    let (status, body) = get(Some(("Authorization", format!("Bearer {}", token("carol", &[], 3600))))).await;
    assert_eq!(status, 403, "a valid non-admin JWT: {body}");
    assert!(!body.contains("deadLetters"));
    assert_eq!(get(Some(("Authorization", format!("Bearer {}", token("ops", &["admin"], -10))))).await.0, 401, "an expired admin JWT");

    for (k, v) in [
        ("Authorization", format!("Bearer {}", token("ops", &["admin"], 3600))),
        ("Authorization", format!("bearer {}", token("ops", &["admin"], 3600))),
        ("X-API-Key", "adm-key-2".to_owned()),
        ("Authorization", "Bearer adm-key-1".to_owned()),
    ] {
        let (status, body) = get(Some((k, v.clone()))).await;
        assert_eq!(status, 200, "{k}: {v}: {body}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["deadLetters"].is_array(), "{body}");
    }
}

// ---------------------------------------------------------------- untested paths

/// `LOG_FORMAT=json`: the routed line of an event carries its eventId and correlationId.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_event_and_correlation_ids() {
    let gw = dev(vec![("LOG_FORMAT", "json".into()), ("RUST_LOG", "info,moonx_ws=debug".into()), ("PUBLISH_API_KEYS", "k".into())]).await;
    let correlation = unique("corr");
    let item = json!({"type": "price.updated", "data": sample_data("price.updated", "", 1), "correlationId": correlation});
    let r = reqwest::Client::new().post(format!("{}/api/events", gw.base())).header("X-API-Key", "k").json(&item).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let event_id = body["published"][0]["eventId"].as_str().unwrap().to_owned();
    eventually("a JSON log line for the routed event", T30, || async {
        let log = gw.logs();
        let line = log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v["eventId"] == event_id.as_str());
        match line {
            Some(v) if v["correlationId"] == correlation.as_str() && v["message"] == "routed" => Ok(()),
            Some(v) => Err(format!("line without the ids: {v}")),
            None => Err("no JSON line names the eventId yet".into()),
        }
    })
    .await;
}

/// Runs `moonx-ws serve` expecting it to stop by itself; kills it (and
/// fails) if it is still running after 30 s. Returns (success, stderr).
fn serve_until_exit(env: &[(&str, &str)]) -> (bool, String) {
    let mut child = std::process::Command::new(bin())
        .arg("serve")
        .env("KAFKA_BROKERS", brokers())
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run moonx-ws");
    let deadline = Instant::now() + T30;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("moonx-ws serve with {env:?} did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.success(), err)
}

/// A bad value stops start-up, naming its variable.
#[test]
fn a_bad_setting_stops_start_up_naming_its_variable() {
    for (var, value) in [
        ("WS_MAX_FRAME_BYTES", "abc"),
        ("WS_MAX_FILTER_TOKENS", "0"),
        ("WS_MAX_CONNECTIONS_PER_USER", "-1"),
        ("WS_PRESENCE_GRACE_MS", "soon"),
        ("JWT_MAX_LIFETIME_SECS", "0"),
    ] {
        let (ok, err) = serve_until_exit(&[(var, value)]);
        assert!(!ok, "{var}={value} was accepted");
        assert!(err.contains(var), "{var}={value}: stderr does not name it:\n{err}");
    }
}

/// A one-partition topic: every record is processed in production order,
/// so a later record proves an earlier one has been dealt with.
async fn one_partition_topics(prefix: &str) -> Topics {
    use moonx_ws::kafka::admin::{topic_layout, Admin};
    let main = unique(&format!("test.{prefix}"));
    let dlq = format!("{main}.dlq");
    let admin = Admin::connect(&brokers(), T30).expect("admin client");
    let mut specs: Vec<_> = topic_layout(&main, &dlq).into_iter().take(2).collect();
    for s in &mut specs {
        s.partitions = 1;
    }
    admin.apply_layout(&specs, 1, false).await.expect("create topics");
    Topics { main, dlq }
}

/// When a token expires the client is told so, and from then on private
/// events stop while public ones go on. No timing window: after the
/// explicit expiry frame, a private event and then a public marker are
/// produced on one partition; the marker's arrival proves the private
/// event was routed before it, and it did not arrive.
#[tokio::test(flavor = "multi_thread")]
async fn after_the_expiry_frame_private_events_stop_and_public_ones_continue() {
    let topics = one_partition_topics("expiry").await;
    let gw = Gateway::start(GatewayConfig { extra_env: vec![("WS_PRESENCE_EVENTS", "false".into())], ..GatewayConfig::new(&topics) });
    gw.wait_healthy().await;
    // A control connection of the same user with a long-lived token.
    let mut control = Client::authed(&gw.ws_url(), "dave", &[]).await;
    control.subscribe("orders").await;
    let mut c = Client::connect(&format!("{}?token={}", gw.ws_url(), token("dave", &[], 6))).await;
    assert_eq!(c.recv(T5).await.unwrap()["type"], "authenticated");
    c.subscribe("orders").await;
    c.subscribe("prices").await;
    let p = producer();

    let expiry = c.recv_type("error", T30).await;
    assert_eq!(expiry["code"], "unauthorized", "{expiry}");
    assert!(expiry["message"].as_str().unwrap().contains("expired"), "{expiry}");

    let private_after = sample_event("order.created", "dave", 2);
    let marker = sample_event("price.updated", "", 3);
    send_event(&p, &topics.main, &private_after).await.unwrap();
    send_event(&p, &topics.main, &marker).await.unwrap();
    let mut after = Vec::new();
    loop {
        let v = c.recv_type("event", T30).await;
        let id = v["event"]["metadata"]["eventId"].as_str().unwrap().to_owned();
        after.push(id.clone());
        if id == marker.metadata.event_id.to_string() {
            break;
        }
    }
    assert_eq!(after, vec![marker.metadata.event_id.to_string()], "only the public marker arrived after expiry");
    let to_control = control.recv_type("event", T30).await;
    assert_eq!(to_control["event"]["metadata"]["eventId"], private_after.metadata.event_id.to_string(), "the private event was deliverable");
    c.send_json(json!({"type": "subscribe", "channel": "orders"})).await;
    assert_eq!(c.recv(T5).await.unwrap()["code"], "unauthorized");
}
