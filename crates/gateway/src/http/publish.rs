//! `POST /api/events`: publish one event or a batch over HTTP.
//!
//! Each item is either a whole envelope (`{"metadata":…,"data":…}`), checked
//! as it is, or `{"type", "data", "userId"?, "correlationId"?,
//! "causationId"?, "source"?, "classification"?, "eventId"?}` built by the
//! factory. Every item is validated first; if any is invalid the response is
//! 400 with all the errors and nothing is published. Items are published in
//! order. A client-supplied `eventId` makes the call idempotent: an id
//! published before is answered from memory (the last 100,000 ids) with
//! `"duplicate": true` and not sent again.
//!
//! Authentication: an API key from `PUBLISH_API_KEYS`, as `Authorization:
//! Bearer <key>` or `X-API-Key: <key>`. The key is checked on the headers,
//! before a byte of the body is read: an unauthenticated request costs no
//! memory. The body is then read with a size cap (`PUBLISH_MAX_BODY_BYTES`,
//! 413 beyond it) and a time limit (`PUBLISH_BODY_TIMEOUT_MS`, 408 after).

use super::AppState;
use crate::kafka::producer::Delivered;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use moonx_events::decode::{decode_event, DecodeOptions};
use moonx_events::{DataClassification, DecodeError, Event, EventOptions, EventType, ValidationErrors};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

pub const MAX_BATCH: usize = 1000;
const IDEMPOTENCY_WINDOW: usize = 100_000;

/// How big a publish body may be and how long it may take to arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: std::time::Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        use crate::config::defaults;
        BodyLimits {
            max_bytes: defaults::PUBLISH_MAX_BODY_BYTES as usize,
            timeout: std::time::Duration::from_millis(defaults::PUBLISH_BODY_TIMEOUT_MS),
        }
    }
}

fn too_large(limits: &BodyLimits) -> Response {
    error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body exceeds {} bytes (PUBLISH_MAX_BODY_BYTES)", limits.max_bytes))
}

/// The body, within the limits: a declared length above the cap is refused
/// before reading, a body that grows past it as soon as it does.
async fn read_body(headers: &HeaderMap, body: Body, limits: &BodyLimits) -> Result<Bytes, Response> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return Err(too_large(limits));
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                tracing::debug!("publish body not read: {e}");
                error(StatusCode::BAD_REQUEST, "the request body could not be read")
            })?;
            if buf.len() + chunk.len() > limits.max_bytes {
                return Err(too_large(limits));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(limits.timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the body did not arrive within {} ms (PUBLISH_BODY_TIMEOUT_MS)", limits.timeout.as_millis()),
        )),
    }
}

/// Ids published with a client-supplied eventId, and where they went.
#[derive(Default)]
pub struct PublishedIds {
    map: HashMap<uuid::Uuid, Delivered>,
    order: VecDeque<uuid::Uuid>,
}

impl PublishedIds {
    fn get(&self, id: &uuid::Uuid) -> Option<Delivered> {
        self.map.get(id).copied()
    }

    fn insert(&mut self, id: uuid::Uuid, d: Delivered) {
        if self.map.insert(id, d).is_none() {
            self.order.push_back(id);
            if self.order.len() > IDEMPOTENCY_WINDOW
                && let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn authorized(keys: &[String], headers: &HeaderMap) -> bool {
    super::credentials::api_key(headers).is_some_and(|given| super::credentials::key_matches(keys, given))
}

pub async fn publish(State(app): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let Some(publisher) = &app.publisher else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "publishing needs a source: EVENT_PROCESSING_ENABLED is off");
    };
    if app.publish_keys.is_empty() {
        return error(StatusCode::NOT_FOUND, "the publish API is off: set PUBLISH_API_KEYS");
    }
    if !authorized(&app.publish_keys, &headers) {
        return error(StatusCode::UNAUTHORIZED, "a valid API key is required (Authorization: Bearer <key> or X-API-Key)");
    }
    let body = match read_body(&headers, body, &app.publish_body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let doc: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!("publish body is not JSON: {e}");
            return error(StatusCode::BAD_REQUEST, "the body is not JSON: send an event object or an array of them");
        }
    };
    let items = match doc {
        Value::Array(items) => items,
        one @ Value::Object(_) => vec![one],
        _ => return error(StatusCode::BAD_REQUEST, "the body must be an event object or an array of them"),
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return error(StatusCode::BAD_REQUEST, &format!("a batch holds 1 to {MAX_BATCH} events"));
    }

    let mut events = Vec::with_capacity(items.len());
    let mut failures = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match build(&app, item) {
            Ok(e) => events.push(e),
            Err(errors) => failures.push(json!({"index": index, "errors": errors})),
        }
    }
    if !failures.is_empty() {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid events: nothing was published", "invalid": failures}))).into_response();
    }

    let mut published = Vec::with_capacity(events.len());
    for (event, client_id) in events {
        let seen = client_id.then(|| app.published_ids.lock().unwrap_or_else(|p| p.into_inner()).get(&event.metadata.event_id)).flatten();
        let (delivered, duplicate) = match seen {
            Some(d) => (d, true),
            None => match publisher.publish(&event).await {
                Ok(d) => {
                    if client_id {
                        app.published_ids.lock().unwrap_or_else(|p| p.into_inner()).insert(event.metadata.event_id, d);
                    }
                    (d, false)
                }
                Err(e) => {
                    tracing::error!(eventId = %event.metadata.event_id, "publish failed: {e:#}");
                    return (
                        StatusCode::BAD_GATEWAY,
                        Json(json!({"error": "publishing failed: the event stream did not acknowledge the event; the ones listed were published", "published": published})),
                    )
                        .into_response();
                }
            },
        };
        published.push(json!({
            "eventId": event.metadata.event_id, "eventType": event.metadata.event_type,
            "partition": delivered.partition, "offset": delivered.offset, "duplicate": duplicate,
        }));
    }
    (StatusCode::OK, Json(json!({"published": published}))).into_response()
}

/// The event of one item, and whether the client chose its eventId.
fn build(app: &AppState, item: Value) -> Result<(Event, bool), Value> {
    let errs = |e: ValidationErrors| serde_json::to_value(e).unwrap_or_default();
    let one = |path: &str, code: &str, message: String| json!([{"path": path, "code": code, "message": message}]);
    if item.get("metadata").is_some() {
        let bytes = serde_json::to_vec(&item).expect("serializable");
        let options = DecodeOptions::new(&app.registry);
        return match decode_event(&bytes, &options) {
            Ok(e) => audience_check(app, e).map(|e| (e, true)),
            Err(DecodeError::Invalid(e)) => Err(errs(e)),
            Err(other) => {
                tracing::debug!("publish item not decodable: {other}");
                Err(one("", other.code(), "the item cannot be read as an event envelope".into()))
            }
        };
    }
    let text = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_owned);
    let Some(event_type) = text("type") else {
        return Err(one("/type", "required", "an item needs \"type\" and \"data\", or a whole envelope".into()));
    };
    let classification = match text("classification") {
        None => None,
        Some(c) => Some(DataClassification::parse(&c).ok_or_else(|| one("/classification", "enum", format!("{c:?} is not a classification")))?),
    };
    let event_id = match item.get("eventId") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|s| uuid::Uuid::try_parse(s).ok())
                .ok_or_else(|| one("/eventId", "format", "must be a UUID".into()))?,
        ),
    };
    let options = EventOptions {
        user_id: text("userId"),
        correlation_id: text("correlationId"),
        causation_id: text("causationId"),
        source: text("source").or_else(|| Some("http-api".into())),
        classification,
        ..Default::default()
    };
    let data = item.get("data").cloned().unwrap_or(Value::Null);
    let mut event = app.factory.create_from_json(&EventType::parse(&event_type), data, options).map_err(errs)?;
    if let Some(id) = event_id {
        event.metadata.event_id = id;
    }
    let event = audience_check(app, event)?;
    Ok((event, event_id.is_some()))
}

/// Refuses an event nobody may see (the pipeline would dead-letter it as
/// `no_audience`), and `session.revoked` (admins revoke through their own
/// endpoint): client errors, answered before anything is published.
fn audience_check(app: &AppState, event: Event) -> Result<Event, Value> {
    // A publish key must not be a way to revoke anyone's sessions.
    if event.metadata.event_type == EventType::SessionRevoked {
        return Err(json!([{"path": "/metadata/eventType", "code": "admin_only",
            "message": "session.revoked is published by POST /api/sessions/revoke, with an admin credential"}]));
    }
    match crate::pipeline::router::check_audience(&moonx_events::EventRef::from(&event), &app.registry) {
        Ok(()) => Ok(event),
        Err(e) => Err(json!([{"path": "/metadata/userId", "code": "no_audience", "message": e.to_string()}])),
    }
}

pub type SharedPublishedIds = Mutex<PublishedIds>;
