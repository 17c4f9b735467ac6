//! The operator's session API (admin JWT or `ADMIN_API_KEYS` key):
//!
//! - `POST /api/sessions/revoke {"userId", "reason"?}`: closes every
//!   connection of the user on this instance (close 4001 "session revoked")
//!   and refuses the user's tokens issued at or before now (and tokens
//!   without `iat`) for `REVOCATION_WINDOW_SECS`; then publishes a
//!   `session.revoked` event to the source (the Kafka main topic, or the
//!   embedded bus) so that every instance applies it, including instances
//!   started later within the window. It answers with the number of
//!   connections closed here. The revocation is in force here before the
//!   answer, whether or not publishing it succeeds (a failure is a 503 that
//!   says so).
//! - `GET /api/connections?userId=U`: the user's live connections here.
//!
//! The body is bounded (size and time) and its errors are in our words.

use super::AppState;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use moonx_events::payload::SessionRevoked;
use moonx_events::EventOptions;
use serde_json::json;
use std::collections::HashMap;

/// Largest revoke body: a user id and a reason fit many times over.
pub const MAX_REVOKE_BODY_BYTES: usize = 4096;
/// Longest user id accepted (JWT `sub` values are far shorter).
pub const MAX_USER_ID_BYTES: usize = 256;
/// Longest reason kept (it goes into the event and the log).
pub const MAX_REASON_BYTES: usize = 512;

fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message.into()}))).into_response()
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RevokeRequest {
    user_id: String,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn revoke(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if let Some(refused) = super::refuse_non_admin(&app, &headers) {
        return refused;
    }
    let read = tokio::time::timeout(app.publish_body.timeout, axum::body::to_bytes(body, MAX_REVOKE_BODY_BYTES)).await;
    let bytes = match read {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::debug!("revoke body not read: {e}");
            return (StatusCode::PAYLOAD_TOO_LARGE, Json(json!({"error": format!("the body must be at most {MAX_REVOKE_BODY_BYTES} bytes")})))
                .into_response();
        }
        Err(_) => return (StatusCode::REQUEST_TIMEOUT, Json(json!({"error": "the body did not arrive in time"}))).into_response(),
    };
    let request: RevokeRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("revoke body refused: {e}");
            return bad_request("expected a JSON object {\"userId\": string, \"reason\": string (optional)}");
        }
    };
    let user_id = request.user_id.trim();
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_BYTES {
        return bad_request(format!("userId must be a non-blank string of at most {MAX_USER_ID_BYTES} bytes"));
    }
    let reason = request.reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
        return bad_request(format!("reason must be at most {MAX_REASON_BYTES} bytes"));
    }
    let revoked_by = match super::credentials::bearer(&headers).map(|t| app.auth.verify(t)) {
        Some(Ok(admin)) => admin.user_id,
        _ => "api-key".to_owned(),
    };

    let revoked_at = moonx_events::validate::now_ms();
    let closed = app.hub.revoke_user(user_id, revoked_at);
    tracing::info!(user = %user_id, revokedBy = %revoked_by, reason = ?reason, closed, "sessions revoked");
    let mut body = json!({
        "userId": user_id,
        "revokedAt": revoked_at,
        "closedConnections": closed,
        "instance": app.instance,
        "windowSecs": app.hub.revocation_window().as_secs(),
    });
    let Some(publisher) = &app.publisher else {
        // EVENT_PROCESSING_ENABLED=false: nothing to publish to.
        body["published"] = json!(false);
        return (StatusCode::OK, Json(body)).into_response();
    };
    let payload = SessionRevoked {
        user_id: user_id.to_owned(),
        revoked_at,
        reason,
        revoked_by: Some(revoked_by),
        instance_id: Some(app.instance.clone()),
    };
    let event = match app.factory.create(payload, EventOptions::user(user_id)) {
        Ok(e) => e,
        Err(errs) => {
            tracing::warn!("session.revoked not valid: {errs}");
            body["published"] = json!(false);
            body["error"] = json!("revoked on this instance only: the revocation event could not be built");
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
    };
    match publisher.publish(&event).await {
        Ok(_) => {
            body["published"] = json!(true);
            body["eventId"] = json!(event.metadata.event_id.to_string());
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => {
            tracing::warn!("session.revoked not published: {e:#}");
            body["published"] = json!(false);
            body["error"] = json!("revoked on this instance only: publishing the revocation to the other instances failed; retry");
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

pub async fn connections(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    if let Some(refused) = super::refuse_non_admin(&app, &headers) {
        return refused;
    }
    let user_id = match query.as_ref().ok().and_then(|Query(q)| q.get("userId")).map(|u| u.trim()) {
        Some(u) if !u.is_empty() && u.len() <= MAX_USER_ID_BYTES => u.to_owned(),
        _ => return bad_request(format!("give the user: ?userId=<non-blank, at most {MAX_USER_ID_BYTES} bytes>")),
    };
    let list = app.hub.connections_of(&user_id);
    Json(json!({"userId": user_id, "instance": app.instance, "connections": list})).into_response()
}
