//! Protocol v1: JSON text frames (SPEC section 6).
//!
//! Client → server: `subscribe` (with an optional `tokens` filter on
//! `prices`), `unsubscribe`, `auth`, `ping`; any may carry an `id` that the
//! reply echoes. Server → client: `subscribed`, `unsubscribed`,
//! `authenticated` (our addition: the reply to `auth`), `event`, `error`,
//! `pong`. v1.1 (SPEC 6.1, backward compatible): `pos` on event frames,
//! `since` on `subscribe`, `recovered` and `missed` on its `subscribed`.

use super::Channel;
use serde::Deserialize;
use serde_json::{json, Value};

/// Longest token name in a `tokens` filter, in bytes: token symbols are a
/// few characters; a longer one is a mistake or an attack on the filter.
pub const MAX_FILTER_TOKEN_BYTES: usize = 32;

/// Stable error codes of `{"type":"error"}` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON, unknown message type, missing or mistyped field, frame too large.
    BadRequest,
    UnknownChannel,
    /// A private channel without a valid token (also: the token expired).
    Unauthorized,
    /// A valid token without the role the channel needs.
    Forbidden,
    RateLimited,
    /// The connection's queue overflowed; the server closes it.
    SlowConsumer,
    /// Too many subscriptions on one connection (our addition).
    LimitExceeded,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownChannel => "unknown_channel",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::LimitExceeded => "limit_exceeded",
        }
    }
}

/// WebSocket close codes the server uses.
pub mod close_code {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Persistent misbehaviour (too many errors in a row).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame above the hard size cap.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The client could not keep up (same code as Centrifugo's "slow").
    pub const SLOW_CONSUMER: u16 = 3008;
    /// An operator revoked the user's sessions (private range 4000-4999):
    /// reconnecting with the same token is refused, a new token works.
    pub const SESSION_REVOKED: u16 = 4001;
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `since`: the `pos` of the last event the client got (resume, SPEC 6.1).
    Subscribe { channel: String, tokens: Option<Vec<String>>, since: Option<String> },
    Unsubscribe { channel: String },
    Auth { token: String },
    Ping,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientMessage {
    pub id: Option<Value>,
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
    pub id: Option<Value>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>, id: Option<Value>) -> Self {
        ProtocolError { code, message: message.into(), id }
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: Option<Value>,
    id: Option<Value>,
    channel: Option<Value>,
    tokens: Option<Value>,
    token: Option<Value>,
    since: Option<Value>,
}

/// Parses one client text frame.
pub fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
    let raw: Raw = match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => serde_json::from_value(v).map_err(|e| {
            tracing::debug!("client message not understood: {e}");
            ProtocolError::new(ErrorCode::BadRequest, "the message's fields cannot be read", None)
        })?,
        Ok(_) => return Err(ProtocolError::new(ErrorCode::BadRequest, "a message must be a JSON object", None)),
        Err(e) => {
            // The parser's wording ("expected value at line 1 …") stays in the log.
            tracing::debug!("client message is not JSON: {e}");
            return Err(ProtocolError::new(ErrorCode::BadRequest, "not JSON: send a JSON object such as {\"type\":\"ping\"}", None));
        }
    };
    let id = raw.id.filter(|v| v.is_string() || v.is_number());
    let bad = |msg: &str| ProtocolError::new(ErrorCode::BadRequest, msg, id.clone());
    let string_field = |v: Option<Value>, name: &str| match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(bad(&format!("\"{name}\" must be a non-empty string"))),
        None => Err(bad(&format!("missing \"{name}\""))),
    };
    let kind = match raw.kind {
        Some(Value::String(k)) => k,
        Some(_) => return Err(bad("\"type\" must be a string")),
        None => return Err(bad("missing \"type\"")),
    };
    let request = match kind.as_str() {
        "subscribe" => {
            let channel = string_field(raw.channel, "channel")?;
            let tokens = match raw.tokens {
                None | Some(Value::Null) => None,
                Some(Value::Array(items)) => Some(
                    items
                        .into_iter()
                        .map(|t| match t {
                            Value::String(s) if s.len() > MAX_FILTER_TOKEN_BYTES => {
                                Err(bad(&format!("a token in \"tokens\" is at most {MAX_FILTER_TOKEN_BYTES} bytes")))
                            }
                            Value::String(s) if !s.is_empty() => Ok(s),
                            _ => Err(bad("\"tokens\" must be an array of non-empty strings")),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                Some(_) => return Err(bad("\"tokens\" must be an array of strings")),
            };
            let since = match raw.since {
                None | Some(Value::Null) => None,
                // Any string: an unusable one is answered `recovered:false`, not an error.
                Some(Value::String(s)) => Some(s),
                Some(_) => return Err(bad("\"since\" must be a string (the pos of the last event you got)")),
            };
            Request::Subscribe { channel, tokens, since }
        }
        "unsubscribe" => Request::Unsubscribe { channel: string_field(raw.channel, "channel")? },
        "auth" => Request::Auth { token: string_field(raw.token, "token")? },
        "ping" => Request::Ping,
        _ => return Err(bad("unknown message type: use subscribe, unsubscribe, auth or ping")),
    };
    Ok(ClientMessage { id, request })
}

fn with_id(mut v: Value, id: &Option<Value>) -> String {
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    v.to_string()
}

pub fn subscribed(channel: Channel, tokens: Option<&[String]>, id: &Option<Value>) -> String {
    let mut v = json!({"type": "subscribed", "channel": channel.as_str()});
    if let Some(t) = tokens {
        v["tokens"] = json!(t);
    }
    with_id(v, id)
}

/// The reply to a subscription with `since`.
pub fn subscribed_resumed(channel: Channel, recovered: bool, missed: usize, id: &Option<Value>) -> String {
    with_id(json!({"type": "subscribed", "channel": channel.as_str(), "recovered": recovered, "missed": missed}), id)
}

pub fn unsubscribed(channel: Channel, id: &Option<Value>) -> String {
    with_id(json!({"type": "unsubscribed", "channel": channel.as_str()}), id)
}

pub fn authenticated(user_id: &str, admin: bool, expires_at_ms: u64, id: &Option<Value>) -> String {
    with_id(json!({"type": "authenticated", "userId": user_id, "admin": admin, "expiresAt": expires_at_ms}), id)
}

pub fn pong(id: &Option<Value>) -> String {
    with_id(json!({"type": "pong"}), id)
}

pub fn error(code: ErrorCode, message: &str, id: &Option<Value>) -> String {
    with_id(json!({"type": "error", "code": code.as_str(), "message": message}), id)
}

/// The event frame, built once per event and shared by every recipient:
/// the envelope bytes are spliced in as they are.
pub fn event_frame(channel: Channel, envelope_json: &[u8]) -> Vec<u8> {
    event_frame_at(channel, envelope_json, None)
}

/// [`event_frame`] with the record's stream position (`"pos"`, SPEC 6.1),
/// spliced in before the envelope. A position is our own base64url and
/// digits, so it needs no escaping.
pub fn event_frame_at(channel: Channel, envelope_json: &[u8], pos: Option<&str>) -> Vec<u8> {
    let channel = channel.as_str().as_bytes();
    let mut out = Vec::with_capacity(envelope_json.len() + 64 + pos.map_or(0, str::len));
    out.extend_from_slice(b"{\"type\":\"event\",\"channel\":\"");
    out.extend_from_slice(channel);
    if let Some(pos) = pos {
        out.extend_from_slice(b"\",\"pos\":\"");
        out.extend_from_slice(pos.as_bytes());
    }
    out.extend_from_slice(b"\",\"event\":");
    out.extend_from_slice(envelope_json);
    out.push(b'}');
    out
}

/// The snapshot version of a live event frame: the same bytes with
/// `"snapshot":true` after the channel (built only when someone subscribes).
pub fn snapshot_of(live_frame: &[u8]) -> Vec<u8> {
    const EVENT_KEY: &[u8] = b"\"event\":";
    let at = memchr::memmem::find(live_frame, EVENT_KEY).unwrap_or(live_frame.len());
    let mut out = Vec::with_capacity(live_frame.len() + 16);
    out.extend_from_slice(&live_frame[..at]);
    out.extend_from_slice(b"\"snapshot\":true,");
    out.extend_from_slice(&live_frame[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_shape_and_echoes_ids() {
        let m = parse(r#"{"type":"subscribe","channel":"prices","id":7}"#).unwrap();
        assert_eq!(m.request, Request::Subscribe { channel: "prices".into(), tokens: None, since: None });
        let r = parse(r#"{"type":"subscribe","channel":"orders","since":"1.x.0.1.p6"}"#).unwrap();
        assert_eq!(r.request, Request::Subscribe { channel: "orders".into(), tokens: None, since: Some("1.x.0.1.p6".into()) });
        assert_eq!(parse(r#"{"type":"subscribe","channel":"orders","since":7}"#).unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(pong(&m.id), r#"{"id":7,"type":"pong"}"#);
    }

    #[test]
    fn names_what_is_wrong() {
        let e = parse(r#"{"type":"subscribe","id":"a"}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, Some(json!("a"))));
        assert!(e.message.contains("channel"));
        assert_eq!(parse("nope").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(parse(r#"{"type":"dance"}"#).unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(parse(r#"{"type":"subscribe","channel":"prices","tokens":[1]}"#).unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn event_frames_are_valid_json() {
        let live = event_frame(Channel::Prices, br#"{"metadata":{},"data":{"event":1}}"#);
        let v: Value = serde_json::from_slice(&live).unwrap();
        assert_eq!(v, json!({"type": "event", "channel": "prices", "event": {"metadata": {}, "data": {"event": 1}}}));
        let with_pos = event_frame_at(Channel::Orders, br#"{"metadata":{}}"#, Some("1.eA.0.5.p6"));
        let v: Value = serde_json::from_slice(&with_pos).unwrap();
        assert_eq!(v, json!({"type": "event", "channel": "orders", "pos": "1.eA.0.5.p6", "event": {"metadata": {}}}));
        let snap = snapshot_of(&live);
        assert_eq!(
            std::str::from_utf8(&snap).unwrap(),
            r#"{"type":"event","channel":"prices","snapshot":true,"event":{"metadata":{},"data":{"event":1}}}"#,
            "the snapshot frame is the live frame marked, nothing else"
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text gets a message or a typed error, never a panic; errors
        /// from a message with a usable id echo it.
        #[test]
        fn parse_is_total(text in ".{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn json_shaped_frames_get_a_verdict(kind in prop::option::of("[a-z]{0,12}"), channel in prop::option::of(".{0,10}"), id in any::<u32>()) {
            let mut v = serde_json::json!({"id": id});
            if let Some(k) = &kind { v["type"] = json!(k); }
            if let Some(c) = &channel { v["channel"] = json!(c); }
            match parse(&v.to_string()) {
                Ok(m) => prop_assert_eq!(m.id, Some(json!(id))),
                Err(e) => {
                    prop_assert_eq!(e.code, ErrorCode::BadRequest);
                    prop_assert_eq!(e.id, Some(json!(id)));
                }
            }
        }
    }
}
