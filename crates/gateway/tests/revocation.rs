//! Revocation on every instance (issue 13, part 2), against the real broker,
//! the real binary and real WebSocket clients: `POST /api/sessions/revoke`
//! cuts a user off on every instance within 1 s (close 4001 "session
//! revoked"), old tokens are refused everywhere (also by an instance started
//! afterwards, which reads the revocation back), a new token is accepted;
//! the API needs an admin; `GET /api/connections` lists a user's connections.

mod common;

use common::ws::{token, Client};
use common::{create_topics, eventually, Gateway, GatewayConfig, JWT_SECRET};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ADMIN_KEY: &str = "revocation-admin-key";
const PUBLISH_KEY: &str = "revocation-publish-key";
const SESSION_REVOKED: u16 = 4001;

fn now_secs() -> u64 {
    moonx_events::validate::now_ms() / 1000
}

/// A token with an `iat` (the common helper's tokens have none).
fn token_issued_at(user: &str, iat: u64) -> String {
    let claims = json!({"sub": user, "roles": [], "exp": now_secs() + 3600, "iat": iat});
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()))
        .unwrap()
}

fn start(topics: &common::Topics, instance: &str, extra: Vec<(&'static str, String)>) -> Gateway {
    let mut cfg = GatewayConfig::new(topics);
    cfg.instance = instance.into();
    cfg.extra_env = vec![("ADMIN_API_KEYS", ADMIN_KEY.into())];
    cfg.extra_env.extend(extra);
    Gateway::start(cfg)
}

async fn post_revoke(g: &Gateway, credential: Option<(&str, &str)>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("{}/api/sessions/revoke", g.base())).json(&body).timeout(Duration::from_secs(30));
    if let Some((name, value)) = credential {
        req = req.header(name, value);
    }
    let r = req.send().await.expect("revoke request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get_connections(g: &Gateway, credential: Option<(&str, &str)>, query: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("{}/api/connections{query}", g.base())).timeout(Duration::from_secs(5));
    if let Some((name, value)) = credential {
        req = req.header(name, value);
    }
    let r = req.send().await.expect("connections request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Connects with `?token=` and returns the server's answer to it.
async fn connect_with_token(g: &Gateway, token: &str) -> (Client, Value) {
    let mut c = Client::connect(&format!("{}?token={token}", g.ws_url())).await;
    let reply = c.recv(Duration::from_secs(10)).await.expect("an answer to the token");
    (c, reply)
}

async fn assert_refused_as_revoked(g: &Gateway, token: &str, what: &str) {
    let (mut c, reply) = connect_with_token(g, token).await;
    assert_eq!(reply["type"], "error", "{what}: {reply}");
    assert_eq!(reply["code"], "unauthorized", "{what}: {reply}");
    assert!(reply["message"].as_str().unwrap().contains("revoked"), "{what}: {reply}");
    // And it opens nothing private.
    c.send_json(json!({"type": "subscribe", "channel": "orders"})).await;
    let r = c.recv_type_or_error(Duration::from_secs(5)).await;
    assert_eq!(r["code"], "unauthorized", "{what}: {r}");
}

async fn assert_accepted(g: &Gateway, token: &str, user: &str, what: &str) {
    let (_c, reply) = connect_with_token(g, token).await;
    assert_eq!(reply["type"], "authenticated", "{what}: {reply}");
    assert_eq!(reply["userId"], user, "{what}");
}

async fn revoked_disconnects(g: &Gateway) -> f64 {
    common::metric(&g.metrics().await, "moonx_ws_disconnects_total", &[("reason", "revoked")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_cuts_the_user_off_on_every_instance_and_refuses_old_tokens() {
    let topics = create_topics("revocation").await;
    let a = start(&topics, "rev-a", vec![]);
    let b = start(&topics, "rev-b", vec![]);
    a.wait_healthy().await;
    b.wait_healthy().await;

    let user = format!("victim-{}", uuid::Uuid::new_v4().simple());
    // On A a token with an iat before the revocation, on B one without iat.
    let old_with_iat = token_issued_at(&user, now_secs() - 60);
    let old_without_iat = token(&user, &[], 3600);
    let (mut on_a, r) = connect_with_token(&a, &old_with_iat).await;
    assert_eq!(r["type"], "authenticated", "{r}");
    on_a.subscribe("orders").await;
    let (mut on_b, r) = connect_with_token(&b, &old_without_iat).await;
    assert_eq!(r["type"], "authenticated", "{r}");
    on_b.subscribe("orders").await;
    let mut bystander = Client::authed(&a.ws_url(), "bystander", &[]).await;
    bystander.subscribe("orders").await;

    // The listing: one connection of the user on each instance.
    let admin = Some(("X-API-Key", ADMIN_KEY));
    for (g, name) in [(&a, "A"), (&b, "B")] {
        let (status, listing) = get_connections(g, admin, &format!("?userId={user}")).await;
        assert_eq!(status, 200, "{name}: {listing}");
        let conns = listing["connections"].as_array().unwrap();
        assert_eq!(conns.len(), 1, "{name}: {listing}");
        assert_eq!(conns[0]["userId"], user.as_str());
        assert_eq!(conns[0]["subscriptions"], json!(["orders"]), "{name}: {listing}");
        assert!(conns[0]["remoteAddress"].as_str().unwrap().starts_with("127.0.0.1:"), "{name}: {listing}");
        let since = conns[0]["connectedAt"].as_u64().unwrap();
        assert!(since <= moonx_events::validate::now_ms() && since > moonx_events::validate::now_ms() - 120_000, "{name}: {listing}");
        assert!(conns[0]["connectionId"].is_u64(), "{name}: {listing}");
    }
    let (_, nobody) = get_connections(&a, admin, "?userId=nobody-at-all").await;
    assert_eq!(nobody["connections"], json!([]));

    // Both clients are read from now on; each records when its connection ended.
    let watch = |mut c: Client| {
        tokio::spawn(async move {
            c.read_until_closed(Duration::from_secs(20)).await;
            (Instant::now(), c.closed)
        })
    };
    let (watch_a, watch_b) = (watch(on_a), watch(on_b));

    let (status, answer) = post_revoke(&a, admin, json!({"userId": user, "reason": "account compromised"})).await;
    let answered = Instant::now();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["closedConnections"], 1, "{answer}");
    assert_eq!(answer["published"], true, "{answer}");
    let revoked_at = answer["revokedAt"].as_u64().unwrap();

    for (watcher, name) in [(watch_a, "A"), (watch_b, "B")] {
        let (ended, closed) = watcher.await.unwrap();
        assert_eq!(closed, Some((SESSION_REVOKED, "session revoked".to_owned())), "the client on {name}");
        let after = ended.saturating_duration_since(answered);
        assert!(after < Duration::from_secs(1), "the client on {name} was cut off {after:?} after the answer");
    }
    assert_eq!(revoked_disconnects(&a).await, 1.0);
    assert_eq!(revoked_disconnects(&b).await, 1.0);
    let (_, listing) = get_connections(&b, admin, &format!("?userId={user}")).await;
    assert_eq!(listing["connections"], json!([]), "nothing left on B");

    // Old tokens: refused on both instances, with or without iat.
    for (g, name) in [(&a, "A"), (&b, "B")] {
        assert_refused_as_revoked(g, &old_with_iat, &format!("old token with iat on {name}")).await;
        assert_refused_as_revoked(g, &old_without_iat, &format!("old token without iat on {name}")).await;
    }
    // The bystander was not touched.
    bystander.send_json(json!({"type": "ping", "id": "still-here"})).await;
    assert_eq!(bystander.recv_type("pong", Duration::from_secs(5)).await["id"], "still-here");

    // A token issued after the revocation (iat has one-second granularity:
    // wait for the next second) is accepted on both.
    eventually("the clock passes the revocation's second", Duration::from_secs(3), || async {
        if now_secs() * 1000 > revoked_at { Ok(()) } else { Err("same second".into()) }
    })
    .await;
    let fresh = token_issued_at(&user, now_secs());
    assert_accepted(&a, &fresh, &user, "new token on A").await;
    assert_accepted(&b, &fresh, &user, "new token on B").await;

    // An instance started after the revocation, whose consumer starts at the
    // end of the topic (so only the start-up read-back can tell it).
    let c = start(&topics, "rev-c", vec![("KAFKA_AUTO_OFFSET_RESET", "latest".into())]);
    c.wait_healthy().await;
    assert!(c.logs().contains("revocations read back"), "{}", c.logs());
    assert_refused_as_revoked(&c, &old_with_iat, "old token with iat on the late instance").await;
    assert_refused_as_revoked(&c, &old_without_iat, "old token without iat on the late instance").await;
    assert_accepted(&c, &fresh, &user, "new token on the late instance").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_api_needs_an_admin_and_checks_its_input() {
    let topics = create_topics("revocation-auth").await;
    let g = start(&topics, "rev-auth", vec![("PUBLISH_API_KEYS", PUBLISH_KEY.into())]);
    g.wait_healthy().await;
    let body = json!({"userId": "someone", "reason": "test"});

    let (status, answer) = post_revoke(&g, None, body.clone()).await;
    assert_eq!(status, 401, "no credential: {answer}");
    let (status, _) = post_revoke(&g, Some(("X-API-Key", "wrong-key")), body.clone()).await;
    assert_eq!(status, 401, "a wrong key");
    let user_jwt = format!("Bearer {}", token("plain-user", &[], 3600));
    let (status, answer) = post_revoke(&g, Some(("Authorization", &user_jwt)), body.clone()).await;
    assert_eq!(status, 403, "a non-admin JWT: {answer}");
    let (status, _) = get_connections(&g, None, "?userId=someone").await;
    assert_eq!(status, 401, "listing without a credential");
    let (status, _) = get_connections(&g, Some(("Authorization", &user_jwt)), "?userId=someone").await;
    assert_eq!(status, 403, "listing with a non-admin JWT");

    let admin_jwt = format!("Bearer {}", token("ops-admin", &["admin"], 3600));
    let admin = Some(("Authorization", admin_jwt.as_str()));
    let (status, answer) = post_revoke(&g, admin, body).await;
    assert_eq!(status, 200, "an admin JWT: {answer}");
    assert_eq!(answer["closedConnections"], 0, "{answer}");
    assert_eq!(answer["windowSecs"], 3600, "the default window: {answer}");
    for bad in [json!({"reason": "no user"}), json!({"userId": "   "}), json!({"userId": 42}), json!({"userId": "x".repeat(300)})] {
        let (status, answer) = post_revoke(&g, admin, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(!answer["error"].as_str().unwrap().contains("line 1"), "our words: {answer}");
    }
    let (status, answer) = get_connections(&g, admin, "").await;
    assert_eq!(status, 400, "listing without userId: {answer}");

    // A publish key cannot revoke: session.revoked is refused by the publish API.
    let forged = json!({"type": "session.revoked", "userId": "someone", "data": {"userId": "someone", "revokedAt": moonx_events::validate::now_ms()}});
    let r = reqwest::Client::new()
        .post(format!("{}/api/events", g.base()))
        .header("X-API-Key", PUBLISH_KEY)
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let answer: Value = r.json().await.unwrap();
    assert!(answer.to_string().contains("admin_only"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_bus_carries_the_revocation_too() {
    let g = Gateway::start_dev(&[], vec![("ADMIN_API_KEYS", ADMIN_KEY.into()), ("JWT_SECRET", JWT_SECRET.into())]);
    let user = "embedded-victim";
    let old = token(user, &[], 3600);
    let (c, r) = connect_with_token(&g, &old).await;
    assert_eq!(r["type"], "authenticated", "{r}");
    let watcher = tokio::spawn(async move {
        let mut c = c;
        c.read_until_closed(Duration::from_secs(20)).await;
        c.closed
    });
    let (status, answer) = post_revoke(&g, Some(("X-API-Key", ADMIN_KEY)), json!({"userId": user})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["published"], true, "{answer}");
    assert_eq!(watcher.await.unwrap(), Some((SESSION_REVOKED, "session revoked".to_owned())));
    // The bus delivered the event to the pipeline, which applied it again
    // (closing nothing more) and routed it to the operators.
    g.wait_metric("session.revoked processed", "moonx_ws_events_processed_total", &[("event_type", "session.revoked")], Duration::from_secs(10), |v| v >= 1.0)
        .await;
    assert_refused_as_revoked(&g, &old, "old token in embedded mode").await;
}
