//! HTTP: `GET /health`, `GET /metrics` (Prometheus text), the WebSocket
//! upgrade at `GET /ws`, the publish API (`POST /api/events`), and the
//! dashboard (`GET /`, fed by `GET /api/stats`), all on one port, served by
//! our own accept loop (`serve`: slots, reserve, header timeout).
//! Credentials are read one way everywhere (`credentials`); the operator
//! endpoints `GET /api/dead-letters`, `POST /api/sessions/revoke` and
//! `GET /api/connections` (`sessions`) need an admin JWT or an admin key.
//! An upgrade with a non-ASCII or repeated `Origin` is refused like a
//! foreign one, and malformed upgrades are answered in our words. The
//! upgrade handshake is ours (RFC 6455 4.2), so that it can accept
//! `permessage-deflate` (`deliver::socket`) when `WS_PERMESSAGE_DEFLATE` allows.

pub mod credentials;
pub mod publish;
pub mod serve;
pub mod sessions;

use crate::deliver::auth::Authenticator;
use crate::deliver::session::{self, Limits};
use crate::deliver::Hub;
use crate::pipeline::dead_letter::DeadLetter;
use crate::source::kafka::ConsumerStatus;
use crate::source::publish::Publisher;
use moonx_events::{EventFactory, TypeRegistry};
use crate::telemetry::Metrics;
use axum::extract::rejection::QueryRejection;
use crate::deliver::socket;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What feeds the pipeline, for `/health`.
#[derive(Clone)]
pub enum SourceHealth {
    Kafka(Arc<ConsumerStatus>),
    Embedded,
    /// `EVENT_PROCESSING_ENABLED=false`.
    Disabled,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub auth: Authenticator,
    pub limits: Arc<Limits>,
    pub allowed_origins: Arc<Vec<String>>,
    pub source: SourceHealth,
    pub shutdown: CancellationToken,
    pub instance: String,
    pub started: std::time::Instant,
    /// Where published events go (`None` when processing is disabled).
    pub publisher: Option<Publisher>,
    pub publish_keys: Arc<Vec<String>>,
    /// `ADMIN_API_KEYS`: open the operator endpoints (as does an admin JWT).
    pub admin_keys: Arc<Vec<String>>,
    /// Size and time limits of a publish body.
    pub publish_body: publish::BodyLimits,
    pub published_ids: Arc<publish::SharedPublishedIds>,
    pub registry: TypeRegistry,
    pub factory: Arc<EventFactory>,
    /// The embedded bus's recent dead letters.
    pub dead_letters: Option<Arc<std::sync::Mutex<std::collections::VecDeque<DeadLetter>>>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/ws", get(websocket))
        .route("/api/events", post(publish::publish))
        .route("/api/stats", get(stats))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/sessions/revoke", post(sessions::revoke))
        .route("/api/connections", get(sessions::connections))
        .with_state(state)
}

/// What a socket on a reserve slot gets (see `serve`): every connection slot
/// is taken, so only `/health` and `/metrics` answer.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(at_capacity)
        .with_state(state)
}

async fn at_capacity(State(app): State<AppState>, uri: axum::http::Uri) -> Response {
    if uri.path() == "/ws" {
        app.metrics.connections_rejected.with_label_values(&["max_connections"]).inc();
    }
    (StatusCode::SERVICE_UNAVAILABLE, "connection limit reached: only /health and /metrics answer").into_response()
}

const DASHBOARD: &str = include_str!("../../assets/dashboard.html");

async fn dashboard() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        DASHBOARD,
    )
        .into_response()
}

async fn stats(State(app): State<AppState>) -> Response {
    let mut body = app.metrics.stats();
    body["mode"] = json!(match app.source {
        SourceHealth::Kafka(_) => "kafka",
        SourceHealth::Embedded => "embedded",
        SourceHealth::Disabled => "disabled",
    });
    body["instance"] = json!(app.instance);
    body["uptimeSeconds"] = json!(app.started.elapsed().as_secs());
    Json(body).into_response()
}

/// The embedded bus's most recent dead letters (newest last). They hold
/// whole payloads (user ids, orders): an admin credential is required.
async fn dead_letters(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_non_admin(&app, &headers) {
        return refused;
    }
    match &app.dead_letters {
        Some(letters) => {
            let l = letters.lock().unwrap_or_else(|p| p.into_inner());
            Json(json!({"deadLetters": l.iter().map(|d| d.to_json()).collect::<Vec<_>>()})).into_response()
        }
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "dead letters are in the Kafka DLQ topic: `moonx-ws tail --dlq`"}))).into_response(),
    }
}

enum AdminAccess {
    Granted,
    /// No credential, or one that is neither an admin key nor a valid JWT.
    Missing,
    /// A valid JWT without the admin role.
    Forbidden,
}

/// The answer to a request without admin access (401 or 403); `None` when granted.
fn refuse_non_admin(app: &AppState, headers: &HeaderMap) -> Option<Response> {
    match admin_access(app, headers) {
        AdminAccess::Granted => None,
        AdminAccess::Missing => Some((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "an admin credential is required: Authorization: Bearer <admin JWT or ADMIN_API_KEYS key>, or X-API-Key"})),
        )
            .into_response()),
        AdminAccess::Forbidden => Some((StatusCode::FORBIDDEN, Json(json!({"error": "this endpoint needs the admin role"}))).into_response()),
    }
}

/// An admin API key (`X-API-Key` or Bearer), or a Bearer JWT with the
/// `admin` role.
fn admin_access(app: &AppState, headers: &HeaderMap) -> AdminAccess {
    if credentials::api_key(headers).is_some_and(|k| credentials::key_matches(&app.admin_keys, k)) {
        return AdminAccess::Granted;
    }
    match credentials::bearer(headers).map(|t| app.auth.verify(t)) {
        Some(Ok(identity)) if identity.admin => AdminAccess::Granted,
        Some(Ok(_)) => AdminAccess::Forbidden,
        _ => AdminAccess::Missing,
    }
}

async fn health(State(app): State<AppState>) -> Response {
    let connections = app.hub.connection_count();
    let c = match &app.source {
        SourceHealth::Kafka(c) => c,
        SourceHealth::Embedded => {
            return (StatusCode::OK, Json(json!({"status": "ok", "processing": "enabled", "mode": "embedded", "connections": connections}))).into_response();
        }
        SourceHealth::Disabled => {
            return (StatusCode::OK, Json(json!({"status": "ok", "processing": "disabled", "connections": connections}))).into_response();
        }
    };
    let connected = c.connected.load(Ordering::Relaxed);
    let assigned = c.assigned_partitions.load(Ordering::Relaxed);
    let held = c.dlq.failing_partitions();
    let dlq_failing = !held.is_empty();
    let reason = if app.shutdown.is_cancelled() {
        Some("shutting down".to_owned())
    } else if !connected {
        let last = c.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some(format!("no connection to the Kafka brokers{}", last.map(|e| format!(" ({e})")).unwrap_or_default()))
    } else if assigned == 0 {
        Some("no partitions assigned yet".to_owned())
    } else if dlq_failing {
        Some(format!("the dead-letter topic cannot be written: consumption of {} is held", held.join(", ")))
    } else {
        None
    };
    let body = json!({
        "status": if reason.is_none() { "ok" } else { "unavailable" },
        "reason": reason,
        "processing": "enabled",
        "mode": "kafka",
        "consumer": {"group": c.group, "connected": connected, "assignedPartitions": assigned},
        "dlq": {"failing": dlq_failing, "failingPartitions": held},
        "connections": connections,
    });
    let code = if reason.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    // Gauges that mirror live state are refreshed here, at scrape time.
    app.metrics.connections_max.set(app.hub.max_connections() as i64);
    if let SourceHealth::Kafka(c) = &app.source {
        app.metrics.dlq_failing.set(c.dlq.is_failing() as i64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render()).into_response()
}

/// What is wrong with a WebSocket upgrade request (RFC 6455 4.2.1), if anything.
fn upgrade_refusal(method: &Method, headers: &HeaderMap) -> Option<&'static str> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if method != Method::GET {
        Some("not a GET")
    } else if !has_token(header::CONNECTION, "upgrade") {
        Some("no Connection: Upgrade")
    } else if !has_token(header::UPGRADE, "websocket") {
        Some("no Upgrade: websocket")
    } else if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        Some("Sec-WebSocket-Version is not 13")
    } else if headers.get(header::SEC_WEBSOCKET_KEY).is_none() {
        Some("no Sec-WebSocket-Key")
    } else {
        None
    }
}

async fn websocket(
    State(app): State<AppState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    mut request: axum::extract::Request,
) -> Response {
    let remote = peer.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr);
    let headers = request.headers();
    // Our words: the detail goes to the log.
    if let Some(why) = upgrade_refusal(request.method(), headers) {
        tracing::debug!("WebSocket upgrade refused: {why}");
        return (StatusCode::BAD_REQUEST, "this endpoint expects a WebSocket upgrade (GET with Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13)").into_response();
    }
    let Ok(Query(query)) = query else {
        return (StatusCode::BAD_REQUEST, "the query string cannot be read: use ?token=<JWT>").into_response();
    };
    // An Origin must be one visible-ASCII value: a second one, or bytes
    // that are not text, are not "no Origin" but a request to refuse.
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin_refusal = match (origins.next(), origins.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => Some("more than one Origin header"),
        (Some(o), None) => match o.to_str() {
            Err(_) => Some("the Origin header is not ASCII"),
            Ok(origin) if !origin_allowed(&app.allowed_origins, origin) => Some("origin not in ALLOWED_ORIGINS"),
            Ok(_) => None,
        },
    };
    if let Some(why) = origin_refusal {
        app.metrics.connections_rejected.with_label_values(&["origin"]).inc();
        tracing::warn!(origin = ?headers.get(header::ORIGIN), "WebSocket upgrade refused: {why}");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if app.hub.connection_count() >= app.hub.max_connections() {
        app.metrics.connections_rejected.with_label_values(&["max_connections"]).inc();
        return (StatusCode::SERVICE_UNAVAILABLE, "connection limit reached").into_response();
    }
    let token = query.get("token").cloned().or_else(|| credentials::bearer(headers).map(str::to_owned));
    let deflate = app.limits.permessage_deflate
        && socket::offers_deflate(headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS).iter().filter_map(|v| v.to_str().ok()));
    let accept = headers.get(header::SEC_WEBSOCKET_KEY).map(|k| tungstenite::handshake::derive_accept_key(k.as_bytes()));
    let Some(accept) = accept.and_then(|a| HeaderValue::from_str(&a).ok()) else {
        return (StatusCode::BAD_REQUEST, "this endpoint expects a WebSocket upgrade (GET with Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13)").into_response();
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded to a WebSocket").into_response();
    };
    // The session runs once hyper hands the socket over (after the 101 is
    // sent). Frames above the hard cap get close 1009 (see
    // `session::Disconnect`); those between the limit and the cap get an
    // error frame.
    // Only what the session needs goes into its task (it lives as long as the connection).
    let AppState { hub, auth, limits, shutdown, .. } = app;
    let upgrade = async move {
        match on_upgrade.await {
            Ok(upgraded) => Some(hyper_util::rt::TokioIo::new(upgraded)),
            Err(e) => {
                tracing::debug!("WebSocket upgrade failed: {e}");
                None
            }
        }
    };
    let task = session::run(upgrade, deflate, hub, auth, limits, token, shutdown, remote);
    tokio::spawn(task);
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if deflate {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(socket::DEFLATE_RESPONSE));
    }
    response
}

fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}
