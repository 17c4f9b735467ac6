//! Validation: checks a JSON document against the envelope contract and
//! reports *every* error, each with a JSON Pointer path and a stable code.
//!
//! The rules live in one place, a walk over the JSON value driven by the field
//! tables below, so that structure and semantics (classification, ownership,
//! timestamp sanity, decimal strings) cannot disagree. `schema/` expresses the
//! same rules as JSON Schema; the vector tests keep the two in step.

use crate::decimal::is_decimal;
use crate::partition::partition_key;
use crate::{DataClassification, EventType, TypeRegistry};
use serde::Serialize;
use serde_json::{Map, Value};

/// Oldest acceptable `metadata.timestamp`: 2020-01-01T00:00:00Z.
pub const MIN_TIMESTAMP_MS: u64 = 1_577_836_800_000;
/// How far in the future a timestamp may be (clock skew between services).
pub const MAX_FUTURE_SKEW_MS: u64 = 5 * 60 * 1000;

/// Stable codes of validation errors (also used in DLQ records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A required field is absent.
    Required,
    /// A field has the wrong JSON type.
    Type,
    /// A string does not have the required format (UUID, decimal, version, non-empty).
    Format,
    /// A value outside its allowed set.
    Enum,
    /// `eventType` is neither built in nor registered.
    UnknownType,
    /// `dataClassification` below the type's default.
    ClassificationDowngrade,
    /// A confidential or restricted event without `userId`.
    OwnerRequired,
    /// `data.userId` differs from `metadata.userId`.
    OwnerMismatch,
    /// A timestamp before 2020 or too far in the future.
    Timestamp,
    /// `metadata.partition` differs from the partition-key strategy's key for
    /// the type (`partition::partition_key`): the record would be keyed
    /// into the wrong partition and lose per-user order.
    PartitionMismatch,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Required => "required",
            ErrorCode::Type => "type",
            ErrorCode::Format => "format",
            ErrorCode::Enum => "enum",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::ClassificationDowngrade => "classification_downgrade",
            ErrorCode::OwnerRequired => "owner_required",
            ErrorCode::OwnerMismatch => "owner_mismatch",
            ErrorCode::Timestamp => "timestamp",
            ErrorCode::PartitionMismatch => "partition_mismatch",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationError {
    /// JSON Pointer to the offending value, e.g. `/data/price`.
    pub path: String,
    pub code: ErrorCode,
    pub message: String,
}

/// All the errors of one document (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    pub fn iter(&self) -> impl Iterator<Item = &ValidationError> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn has(&self, code: ErrorCode) -> bool {
        self.0.iter().any(|e| e.code == code)
    }
}

impl std::fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", if e.path.is_empty() { "/" } else { &e.path }, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// What validation needs besides the document.
#[derive(Debug, Clone, Copy)]
pub struct Validator<'r> {
    pub registry: &'r TypeRegistry,
    /// "Now" for the future-timestamp check; `None` skips that check.
    pub now_ms: Option<u64>,
}

impl<'r> Validator<'r> {
    pub fn new(registry: &'r TypeRegistry) -> Self {
        Validator {
            registry,
            now_ms: Some(now_ms()),
        }
    }

    /// Checks a whole envelope document.
    pub fn validate(&self, doc: &Value) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();
        self.walk_envelope(doc, &mut errs);
        errs.into_result()
    }

    fn walk_envelope(&self, doc: &Value, errs: &mut Errors) {
        let Some(root) = doc.as_object() else {
            errs.push("", ErrorCode::Type, "an event must be a JSON object");
            return;
        };
        let meta = required_object(root, "metadata", errs);
        if let Some(m) = meta {
            walk_fields(m, METADATA, "/metadata", errs);
        }
        let data = required_object(root, "data", errs);
        let Some(m) = meta else { return };

        let event_type = m.get("eventType").and_then(Value::as_str).map(EventType::parse);
        let default = event_type.as_ref().and_then(|t| self.registry.default_classification(t));
        if let (Some(t), None) = (&event_type, default) {
            errs.push(
                "/metadata/eventType",
                ErrorCode::UnknownType,
                format!("{t:?} is neither a built-in nor a registered event type"),
            );
        }
        if let (Some(t), Some(d)) = (&event_type, data)
            && let Some(fields) = data_fields(t) {
                walk_fields(d, fields, "/data", errs);
            }

        let facts = MetadataFacts {
            event_type: event_type.as_ref(),
            partition: m.get("partition").and_then(Value::as_str),
            default_classification: default,
            classification: m
                .get("dataClassification")
                .and_then(Value::as_str)
                .and_then(DataClassification::parse),
            user_id: m.get("userId").and_then(Value::as_str),
            data_user_id: data.and_then(|d| d.get("userId")).and_then(Value::as_str),
            timestamp: m.get("timestamp").and_then(Value::as_u64),
        };
        self.check_rules(&facts, errs);
    }

    fn check_rules(&self, f: &MetadataFacts, errs: &mut Errors) {
        if let (Some(given), Some(min)) = (f.classification, f.default_classification)
            && given < min {
                errs.push(
                    "/metadata/dataClassification",
                    ErrorCode::ClassificationDowngrade,
                    format!("{given} is below this type's default {min}; it may be raised, never lowered"),
                );
            }
        let effective = f.classification.max(f.default_classification);
        if effective.is_some_and(DataClassification::requires_owner) && f.user_id.is_none() {
            errs.push(
                "/metadata/userId",
                ErrorCode::OwnerRequired,
                "confidential and restricted events must carry the owning userId",
            );
        }
        if let (Some(owner), Some(named)) = (f.user_id, f.data_user_id)
            && owner != named {
                errs.push(
                    "/data/userId",
                    ErrorCode::OwnerMismatch,
                    format!("{named:?} differs from metadata.userId {owner:?}"),
                );
            }
        // Only for a known type and a non-empty partition (an empty one is
        // already a `format` error). The owner is metadata.userId, else
        // data.userId: what the factory and the legacy migration key by.
        if let (Some(t), Some(_), Some(given)) = (f.event_type, f.default_classification, f.partition)
            && !given.is_empty()
        {
            let non_empty = |s: &&str| !s.is_empty();
            let owner = f.user_id.filter(non_empty).or(f.data_user_id.filter(non_empty));
            let expected = partition_key(t, owner, self.registry);
            if given != expected {
                errs.push(
                    "/metadata/partition",
                    ErrorCode::PartitionMismatch,
                    format!("is {given:?}, but events of this type are keyed {expected:?} (the partition-key strategy)"),
                );
            }
        }
        if let Some(ts) = f.timestamp {
            if ts < MIN_TIMESTAMP_MS {
                errs.push(
                    "/metadata/timestamp",
                    ErrorCode::Timestamp,
                    "is before 2020-01-01; it must be milliseconds since the Unix epoch",
                );
            } else if let Some(now) = self.now_ms
                && ts > now.saturating_add(MAX_FUTURE_SKEW_MS) {
                    errs.push(
                        "/metadata/timestamp",
                        ErrorCode::Timestamp,
                        "is more than 5 minutes in the future",
                    );
                }
        }
    }
}

impl Validator<'_> {
    /// The fast path's check of an already typed event: `true` only if the
    /// walker would find no error either. It shares [`Self::check_rules`];
    /// what typing already guarantees (types, enums, decimal grammar,
    /// canonical UUID) is not checked again. Callers must fall back to
    /// [`Self::validate`] when this says `false`, for the verdict and errors.
    pub fn accepts_typed(&self, event: &crate::EventRef<'_>) -> bool {
        let m = &event.metadata;
        let text = |s: &str| !s.is_empty();
        let opt_text = |s: &Option<crate::borrowed::Text<'_>>| s.as_deref().is_none_or(text);
        let default = self.registry.default_classification(&m.event_type);
        if default.is_none()
            || !text(m.event_type.as_str())
            || !is_version(&m.event_version)
            || !text(&m.correlation_id)
            || !opt_text(&m.causation_id)
            || !text(&m.source)
            || !opt_text(&m.user_id)
            || !text(&m.partition)
            || !opt_text(&m.migrated_from)
            || !event.data.accepts_fields()
        {
            return false;
        }
        let facts = MetadataFacts {
            event_type: Some(&m.event_type),
            partition: Some(&m.partition),
            default_classification: default,
            classification: Some(m.data_classification),
            user_id: m.user_id.as_deref(),
            data_user_id: event.data.owner(),
            timestamp: Some(m.timestamp),
        };
        let mut errs = Errors::default();
        self.check_rules(&facts, &mut errs);
        errs.0.is_empty()
    }
}

/// `root[key]` when it is an object; otherwise the error that says why not.
fn required_object<'v>(root: &'v Map<String, Value>, key: &str, errs: &mut Errors) -> Option<&'v Map<String, Value>> {
    match root.get(key) {
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            errs.push(format!("/{key}"), ErrorCode::Type, "must be an object");
            None
        }
        None => {
            errs.push(format!("/{key}"), ErrorCode::Required, "is required");
            None
        }
    }
}

struct MetadataFacts<'a> {
    event_type: Option<&'a EventType>,
    partition: Option<&'a str>,
    default_classification: Option<DataClassification>,
    classification: Option<DataClassification>,
    user_id: Option<&'a str>,
    data_user_id: Option<&'a str>,
    timestamp: Option<u64>,
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Errors(Vec<ValidationError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, code: ErrorCode, message: impl Into<String>) {
        self.0.push(ValidationError {
            path: path.into(),
            code,
            message: message.into(),
        });
    }

    fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// The JSON shape a field must have.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A non-empty string.
    Text,
    /// A canonical hyphenated UUID string.
    Uuid,
    /// `major.minor` or `major.minor.patch`.
    Version,
    /// A non-negative decimal string.
    Amount,
    /// A decimal string that may be negative (changes).
    SignedAmount,
    /// A non-negative integer.
    UInt,
    /// One of the listed strings.
    OneOf(&'static [&'static str]),
    /// Any JSON object.
    Object,
    /// An array whose items are objects with these fields.
    ArrayOf(&'static [Field]),
}

#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field { name, kind, required: true }
}
const fn opt(name: &'static str, kind: Kind) -> Field {
    Field { name, kind, required: false }
}

use Kind::*;

pub(crate) const CLASSIFICATIONS: &[&str] = &["public", "internal", "confidential", "restricted"];
pub(crate) const ORDER_TYPES: &[&str] = &["market", "limit", "stop_loss", "take_profit"];
pub(crate) const ORDER_STATUSES: &[&str] =
    &["pending", "open", "partially_filled", "filled", "cancelled", "failed", "expired"];
pub(crate) const HEALTH_STATUSES: &[&str] = &["healthy", "degraded", "unhealthy"];
pub(crate) const SEVERITIES: &[&str] = &["warning", "error", "critical"];

const METADATA: &[Field] = &[
    req("eventId", Uuid),
    req("eventType", Text),
    req("eventVersion", Version),
    req("correlationId", Text),
    opt("causationId", Text),
    req("timestamp", UInt),
    req("source", Text),
    opt("userId", Text),
    req("dataClassification", OneOf(CLASSIFICATIONS)),
    req("partition", Text),
    opt("migratedFrom", Text),
];

const PRICE_UPDATED: &[Field] = &[
    req("token", Text),
    req("chainId", UInt),
    req("price", Amount),
    req("priceUsd", Amount),
    req("change24h", SignedAmount),
    req("volume24h", Amount),
];
const ORDER_CREATED: &[Field] = &[
    req("orderId", Text),
    req("userId", Text),
    req("tokenIn", Text),
    req("tokenOut", Text),
    req("amountIn", Amount),
    req("amountOutExpected", Amount),
    req("chainId", UInt),
    req("orderType", OneOf(ORDER_TYPES)),
    req("status", OneOf(ORDER_STATUSES)),
    opt("limitPrice", Amount),
];
const ORDER_UPDATED: &[Field] = &[
    req("orderId", Text),
    req("userId", Text),
    req("status", OneOf(ORDER_STATUSES)),
    opt("previousStatus", OneOf(ORDER_STATUSES)),
    opt("filledAmount", Amount),
    opt("amountOut", Amount),
    opt("txHash", Text),
];
const ORDER_CANCELLED: &[Field] = &[
    req("orderId", Text),
    req("userId", Text),
    opt("reason", Text),
    opt("cancelledBy", Text),
];
const HOLDING: &[Field] = &[
    req("token", Text),
    req("chainId", UInt),
    req("balance", Amount),
    req("valueUsd", Amount),
];
const PORTFOLIO_UPDATED: &[Field] = &[
    req("userId", Text),
    req("totalValueUsd", Amount),
    req("holdings", ArrayOf(HOLDING)),
    opt("change24h", SignedAmount),
];
const TRADE_EXECUTED: &[Field] = &[
    req("tradeId", Text),
    req("orderId", Text),
    req("userId", Text),
    req("tokenIn", Text),
    req("tokenOut", Text),
    req("amountIn", Amount),
    req("amountOut", Amount),
    req("price", Amount),
    req("chainId", UInt),
    req("txHash", Text),
    opt("fee", Amount),
];
const TRADE_FAILED: &[Field] = &[
    req("orderId", Text),
    req("userId", Text),
    req("tokenIn", Text),
    req("tokenOut", Text),
    req("amountIn", Amount),
    req("chainId", UInt),
    req("reason", Text),
    opt("tradeId", Text),
    opt("errorCode", Text),
    opt("txHash", Text),
];
const USER_CONNECTED: &[Field] = &[
    req("userId", Text),
    req("connectionId", Text),
    req("instanceId", Text),
];
const USER_DISCONNECTED: &[Field] = &[
    req("userId", Text),
    req("connectionId", Text),
    req("instanceId", Text),
    opt("reason", Text),
    opt("durationMs", UInt),
];
const SESSION_REVOKED: &[Field] = &[
    req("userId", Text),
    req("revokedAt", UInt),
    opt("reason", Text),
    opt("revokedBy", Text),
    opt("instanceId", Text),
];
const SYSTEM_HEALTH_CHECK: &[Field] = &[
    req("service", Text),
    req("status", OneOf(HEALTH_STATUSES)),
    opt("uptimeSeconds", UInt),
    opt("details", Object),
];
const SYSTEM_ERROR: &[Field] = &[
    req("service", Text),
    req("errorCode", Text),
    req("message", Text),
    req("severity", OneOf(SEVERITIES)),
    opt("details", Object),
];

/// The data table of a built-in type; `None` for custom types (any object).
fn data_fields(t: &EventType) -> Option<&'static [Field]> {
    Some(match t {
        EventType::PriceUpdated => PRICE_UPDATED,
        EventType::OrderCreated => ORDER_CREATED,
        EventType::OrderUpdated => ORDER_UPDATED,
        EventType::OrderCancelled => ORDER_CANCELLED,
        EventType::PortfolioUpdated => PORTFOLIO_UPDATED,
        EventType::TradeExecuted => TRADE_EXECUTED,
        EventType::TradeFailed => TRADE_FAILED,
        EventType::UserConnected => USER_CONNECTED,
        EventType::UserDisconnected => USER_DISCONNECTED,
        EventType::SessionRevoked => SESSION_REVOKED,
        EventType::SystemHealthCheck => SYSTEM_HEALTH_CHECK,
        EventType::SystemError => SYSTEM_ERROR,
        EventType::Custom(_) => return None,
    })
}

fn walk_fields(obj: &Map<String, Value>, fields: &[Field], at: &str, errs: &mut Errors) {
    for f in fields {
        let path = format!("{at}/{}", f.name);
        match obj.get(f.name) {
            None if f.required => errs.push(path, ErrorCode::Required, "is required"),
            None => {}
            Some(v) => check_kind(v, f.kind, &path, errs),
        }
    }
}

fn check_kind(v: &Value, kind: Kind, path: &str, errs: &mut Errors) {
    let expect_string = |errs: &mut Errors| -> Option<&str> {
        let s = v.as_str();
        if s.is_none() {
            errs.push(path, ErrorCode::Type, "must be a string");
        }
        s
    };
    match kind {
        Text => {
            if expect_string(errs).is_some_and(str::is_empty) {
                errs.push(path, ErrorCode::Format, "must not be empty");
            }
        }
        Uuid => {
            if expect_string(errs).is_some_and(|s| !is_canonical_uuid(s)) {
                errs.push(path, ErrorCode::Format, "must be a UUID (8-4-4-4-12 hex digits)");
            }
        }
        Version => {
            if expect_string(errs).is_some_and(|s| !is_version(s)) {
                errs.push(path, ErrorCode::Format, "must be a version like \"1.0\"");
            }
        }
        Amount => {
            if expect_string(errs).is_some_and(|s| !is_decimal(s) || s.starts_with('-')) {
                errs.push(path, ErrorCode::Format, "must be a non-negative decimal string like \"3000.00\"");
            }
        }
        SignedAmount => {
            if expect_string(errs).is_some_and(|s| !is_decimal(s)) {
                errs.push(path, ErrorCode::Format, "must be a decimal string like \"-0.05\"");
            }
        }
        UInt => {
            if v.as_u64().is_none() {
                errs.push(path, ErrorCode::Type, "must be a non-negative integer");
            }
        }
        OneOf(allowed) => {
            if expect_string(errs).is_some_and(|s| !allowed.contains(&s)) {
                errs.push(path, ErrorCode::Enum, format!("must be one of {}", allowed.join(", ")));
            }
        }
        Object => {
            if !v.is_object() {
                errs.push(path, ErrorCode::Type, "must be an object");
            }
        }
        ArrayOf(item) => match v.as_array() {
            None => errs.push(path, ErrorCode::Type, "must be an array"),
            Some(items) => {
                for (i, it) in items.iter().enumerate() {
                    let at = format!("{path}/{i}");
                    match it.as_object() {
                        Some(o) => walk_fields(o, item, &at, errs),
                        None => errs.push(at, ErrorCode::Type, "must be an object"),
                    }
                }
            }
        },
    }
}

pub(crate) fn is_canonical_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn is_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    (2..=3).contains(&parts.len())
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}
