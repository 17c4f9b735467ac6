//! Skip what nobody here needs, before decoding (issue 11, item 3).
//!
//! Every instance reads every record (SPEC 5), but an instance serves only
//! its own clients. One that does not write dead letters (`DLQ_WRITER=false`,
//! with `SKIP_WITHOUT_LOCAL_AUDIENCE` on) skips a record without decoding it
//! when all of these hold, looking only at the key and the raw bytes:
//!
//! 1. The record has a key, is not on a legacy topic, and its value holds
//!    no backslash and no `"type"` key: no JSON escape can hide or fake a
//!    key below, and the decoder cannot take the value for a legacy message.
//! 2. The value holds `"eventType"` exactly once, as a key whose string is
//!    one of the types whose audience is their owner alone under the
//!    server's default route ([`Router::uses_default_route`]): `order.*`,
//!    `portfolio.updated`, `trade.*` (confidential at least: the owner only),
//!    or `user.connected` / `user.disconnected` (internal: the operators;
//!    raised: the owner).
//! 3. The value holds `"userId"` at least once, and every time as a key
//!    whose string equals the record key.
//! 4. No connection here is authenticated as that user, and, for the
//!    presence types, no operator (admin) is connected
//!    ([`LocalAudience::skip_if_absent`]).
//!
//! A skipped record is counted (`events_skipped_total{reason}`, reason
//! [`SkipReason`]) and its offset is stored like a processed one. The
//! dead-letter writer skips nothing: it decodes and judges every record, so
//! no bad record goes unreported.
//!
//! **Why no record a connected client is entitled to is skipped.**
//! - Prices, `system.*`, `session.revoked` (applied to the hub on every
//!   instance), custom types and built-in types with a registered handler
//!   fail 2, whatever their key.
//! - If the record would decode, 1–3 make its type the peeked one (the only
//!   unescaped `eventType` key, so `metadata`'s) and its owner
//!   `metadata.userId` the record key, so its only possible routes are the
//!   owner (and, for presence, the operators), and 4 says none is here. If it
//!   would not decode, this instance would deliver nothing of it anyway.
//! - Races. The hub adds a user to the audience (`set_identity`) before that
//!   connection can hold any subscription, and the check of 4 and the record
//!   of the skip are one step under the audience's lock, which the join
//!   takes for writing. So every record skipped for a user was skipped
//!   before they joined, hence before any subscription of theirs:
//!   - without `since`, a subscription gets live events from its start; a
//!     record skipped before it is, like one routed before it, not among them;
//!   - with `since`, resume (`Hub::subscribe_resume`) counts its live
//!     boundary as at least every skipped offset of the partition, and reads
//!     the user's records skipped before the join (bounded per key by
//!     [`crate::deliver::audience::SkipMarks::before_join`]) from Kafka
//!     history, never from the in-memory window that did not keep them.
//!     Kafka history replays through the full decode, unaffected by skips.

use super::router::Router;
use super::Record;
use crate::deliver::audience::LocalAudience;
use crate::telemetry::Metrics;
use memchr::memmem::Finder;
use moonx_events::EventType;
use std::sync::{Arc, LazyLock, OnceLock};

/// Why a record was skipped: the `reason` label of `events_skipped_total`,
/// alongside [`super::FailureReason`]'s codes (and distinct from them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A private event whose owner (and, for presence, every operator) has
    /// no connection on this instance.
    NoLocalAudience,
}

impl SkipReason {
    pub const ALL: [SkipReason; 1] = [SkipReason::NoLocalAudience];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NoLocalAudience => "no_local_audience",
        }
    }
}

/// Types whose audience is the owner alone (`false`) or the owner and the
/// operators (`true`), under the default route.
const OWNED: [(EventType, bool); 8] = [
    (EventType::OrderCreated, false),
    (EventType::OrderUpdated, false),
    (EventType::OrderCancelled, false),
    (EventType::PortfolioUpdated, false),
    (EventType::TradeExecuted, false),
    (EventType::TradeFailed, false),
    (EventType::UserConnected, true),
    (EventType::UserDisconnected, true),
];

static EVENT_TYPE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"eventType\""));
static USER_ID_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"userId\""));
static TYPE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"type\""));

/// The skip check of one pipeline (see the module comment).
pub struct Skip {
    audience: Arc<LocalAudience>,
    /// The skippable type names, and whether operators could receive them.
    types: Vec<(Box<str>, bool)>,
    skipped: prometheus::IntCounter,
    /// `events_consumed_total` of the first topic seen (a label lookup per
    /// record would cost more than the skip itself).
    consumed: OnceLock<(Box<str>, prometheus::IntCounter)>,
    metrics: Arc<Metrics>,
}

impl Skip {
    pub fn new(audience: Arc<LocalAudience>, router: &Router, metrics: Arc<Metrics>) -> Self {
        let types = OWNED.iter().filter(|(t, _)| router.uses_default_route(t)).map(|(t, ops)| (t.as_str().into(), *ops)).collect();
        let skipped = metrics.events_skipped.with_label_values(&[SkipReason::NoLocalAudience.as_str()]);
        Skip { audience, types, skipped, consumed: OnceLock::new(), metrics }
    }

    /// Whether `record` has no audience here; when so, it is counted as
    /// consumed and skipped, and must not be decoded.
    pub fn should_skip(&self, record: &Record<'_>) -> bool {
        let (Some(key), Some(value)) = (record.key, record.payload) else { return false };
        let Some(operators_too) = self.owned_by(key, value, record.topic) else { return false };
        if !self.audience.skip_if_absent(key, operators_too, record.topic, record.partition, record.offset) {
            return false;
        }
        self.skipped.inc();
        let (topic, consumed) = self
            .consumed
            .get_or_init(|| (record.topic.into(), self.metrics.events_consumed.with_label_values(&[record.topic])));
        if **topic == *record.topic {
            consumed.inc();
        } else {
            self.metrics.events_consumed.with_label_values(&[record.topic]).inc();
        }
        true
    }

    /// Conditions 1–3: `Some(operators could receive it)` when the record is,
    /// if anything, a skippable type owned by `key`.
    fn owned_by(&self, key: &[u8], value: &[u8], topic: &str) -> Option<bool> {
        if key.is_empty() || moonx_events::legacy::is_legacy_topic(topic) || memchr::memchr(b'\\', value).is_some() {
            return None;
        }
        if TYPE_KEY.find(value).is_some() {
            return None;
        }
        let mut types = EVENT_TYPE_KEY.find_iter(value);
        let at = types.next()?;
        if types.next().is_some() {
            return None;
        }
        let event_type = string_after_key(&value[at + EVENT_TYPE_KEY.needle().len()..])?;
        let operators_too = self.types.iter().find(|(name, _)| name.as_bytes() == event_type)?.1;
        let mut owners = USER_ID_KEY.find_iter(value).peekable();
        owners.peek()?;
        for at in owners {
            if string_after_key(&value[at + USER_ID_KEY.needle().len()..])? != key {
                return None;
            }
        }
        Some(operators_too)
    }
}

/// The string of a key whose closing quote ends just before `rest`
/// (`: "value"`, JSON whitespace allowed); `None` if a string does not follow.
/// Only sound on values without backslashes (no escapes inside strings).
fn string_after_key(rest: &[u8]) -> Option<&[u8]> {
    let ws = |s: &[u8]| -> usize { s.iter().take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')).count() };
    let rest = &rest[ws(rest)..];
    let rest = rest.strip_prefix(b":")?;
    let rest = &rest[ws(rest)..];
    let rest = rest.strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn skip() -> Skip {
        Skip::new(Arc::new(LocalAudience::default()), &Router::default(), Arc::new(Metrics::new()))
    }

    fn envelope(event_type: &str, user: &str, data: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"metadata": {"eventType": event_type, "userId": user, "partition": user}, "data": data})).unwrap()
    }

    #[test]
    fn only_owned_types_whose_every_user_id_is_the_key() {
        let s = skip();
        let order = envelope("order.created", "u1", json!({"userId": "u1", "orderId": "o"}));
        assert_eq!(s.owned_by(b"u1", &order, "moonx.ws.events"), Some(false));
        assert_eq!(s.owned_by(b"u2", &order, "moonx.ws.events"), None, "mis-keyed: the owner is not the key");
        assert_eq!(s.owned_by(b"u1", &order, "moonx.price.updates"), None, "legacy topic");
        let presence = envelope("user.connected", "u1", json!({"userId": "u1"}));
        assert_eq!(s.owned_by(b"u1", &presence, "t"), Some(true));
        for (name, value) in [
            ("price", envelope("price.updated", "u1", json!({"token": "ETH"}))),
            ("system", envelope("system.error", "u1", json!({}))),
            ("revocation", envelope("session.revoked", "u1", json!({"userId": "u1"}))),
            ("custom", envelope("reward.granted", "u1", json!({}))),
            ("owner elsewhere", envelope("order.created", "u1", json!({"userId": "u2"}))),
            ("escaped", envelope("order.created", "u1", json!({"note": "a\"b"}))),
            ("legacy-shaped", envelope("order.created", "u1", json!({"type": "x"}))),
            ("second eventType", envelope("order.created", "u1", json!({"eventType": "price.updated"}))),
            ("no owner", serde_json::to_vec(&json!({"metadata": {"eventType": "order.created"}})).unwrap()),
            ("userId as a value", envelope("order.created", "u1", json!({"note": "userId"}))),
        ] {
            assert_eq!(s.owned_by(b"u1", &value, "t"), None, "{name}");
        }
        let spaced = br#"{ "metadata" : { "eventType" :	"trade.failed" , "userId"
            : "u1" } }"#;
        assert_eq!(s.owned_by(b"u1", spaced, "t"), Some(false), "JSON whitespace");
    }

    #[test]
    fn a_registered_handler_makes_its_type_unskippable() {
        let mut router = Router::default();
        router
            .register(moonx_events::CustomType::new("order.created", moonx_events::DataClassification::Confidential), |_| Ok(vec![]))
            .unwrap();
        let s = Skip::new(Arc::new(LocalAudience::default()), &router, Arc::new(Metrics::new()));
        let order = envelope("order.created", "u1", json!({"userId": "u1"}));
        assert_eq!(s.owned_by(b"u1", &order, "t"), None);
        assert_eq!(s.owned_by(b"u1", &envelope("order.updated", "u1", json!({})), "t"), Some(false));
    }
}
