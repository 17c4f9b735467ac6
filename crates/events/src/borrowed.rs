//! The borrowed event model: what the decode hot path produces.
//!
//! [`EventRef`] mirrors [`crate::Event`] field for field, but its strings
//! borrow from the record's bytes ([`Text`], [`DecimalRef`]: a `Cow` that is
//! borrowed unless the JSON string had an escape), so decoding a record
//! allocates nothing per field. The structs are the owned model's twins: the
//! same field names, serde attributes and error messages, so the fast path
//! and the walker give one verdict (`tests/fast_path_agrees.rs`), and
//! [`EventRef::into_owned`] / [`EventRef::from`]`(&Event)` convert between
//! the two without loss (the `mirror!` conversions name every field, so the
//! compiler keeps the twins in step).

use crate::payload::{HealthStatus, OrderStatus, OrderType, Severity};
use crate::{payload, DataClassification, Decimal, Event, EventMetadata, EventType};
use serde::de::{DeserializeSeed, Error as _, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use uuid::Uuid;

/// A JSON string, borrowed from the input unless it had to be unescaped.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'a> Text<'a> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            // As `String`'s, so that error messages do not change.
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_string(TextVisitor)
    }
}

/// A [`Decimal`] string, borrowed: same grammar, same error messages.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct DecimalRef<'a>(Cow<'a, str>);

impl DecimalRef<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DecimalRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for DecimalRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for DecimalRef<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DecimalVisitor;
        fn checked<E: serde::de::Error>(s: Cow<'_, str>) -> Result<DecimalRef<'_>, E> {
            if crate::decimal::is_decimal(&s) {
                Ok(DecimalRef(s))
            } else {
                Err(E::custom(format!("{s:?} is not a decimal string")))
            }
        }
        impl<'de> Visitor<'de> for DecimalVisitor {
            type Value = DecimalRef<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<DecimalRef<'de>, E> {
                checked(Cow::Borrowed(s))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DecimalRef<'de>, E> {
                checked(Cow::Owned(s.to_owned()))
            }
        }
        d.deserialize_str(DecimalVisitor)
    }
}

/// The borrowed twin of [`EventMetadata`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", expecting = "struct EventMetadata")]
pub struct MetadataRef<'a> {
    #[serde(deserialize_with = "crate::envelope::canonical_uuid")]
    pub event_id: Uuid,
    pub event_type: EventType,
    #[serde(borrow)]
    pub event_version: Text<'a>,
    #[serde(borrow)]
    pub correlation_id: Text<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub causation_id: Option<Text<'a>>,
    pub timestamp: u64,
    #[serde(borrow)]
    pub source: Text<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub user_id: Option<Text<'a>>,
    pub data_classification: DataClassification,
    #[serde(borrow)]
    pub partition: Text<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub migrated_from: Option<Text<'a>>,
}

/// The borrowed twin of [`Event`]: metadata and typed data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRef<'a> {
    pub metadata: MetadataRef<'a>,
    pub data: DataRef<'a>,
}

impl EventRef<'_> {
    /// The owned event (moves what is already owned, copies what is borrowed).
    pub fn into_owned(self) -> Event {
        Event { metadata: self.metadata.into_owned(), data: self.data.into_owned() }
    }

    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }
}

impl<'a> From<&'a Event> for EventRef<'a> {
    fn from(e: &'a Event) -> Self {
        EventRef { metadata: Mirror::borrow_from(&e.metadata), data: Mirror::borrow_from(&e.data) }
    }
}

/// A borrowed type and its owned twin.
pub trait Mirror<'a>: Sized {
    type Owned: 'a;
    fn into_owned(self) -> Self::Owned;
    fn borrow_from(owned: &'a Self::Owned) -> Self;
}

impl<'a> Mirror<'a> for Text<'a> {
    type Owned = String;
    fn into_owned(self) -> String {
        self.0.into_owned()
    }
    fn borrow_from(owned: &'a String) -> Self {
        Text(Cow::Borrowed(owned))
    }
}

impl<'a> Mirror<'a> for DecimalRef<'a> {
    type Owned = Decimal;
    fn into_owned(self) -> Decimal {
        Decimal::from_checked(self.0.into_owned())
    }
    fn borrow_from(owned: &'a Decimal) -> Self {
        DecimalRef(Cow::Borrowed(owned.as_str()))
    }
}

impl<'a, T: Mirror<'a>> Mirror<'a> for Option<T> {
    type Owned = Option<T::Owned>;
    fn into_owned(self) -> Self::Owned {
        self.map(T::into_owned)
    }
    fn borrow_from(owned: &'a Self::Owned) -> Self {
        owned.as_ref().map(T::borrow_from)
    }
}

impl<'a, T: Mirror<'a>> Mirror<'a> for Vec<T> {
    type Owned = Vec<T::Owned>;
    fn into_owned(self) -> Self::Owned {
        self.into_iter().map(T::into_owned).collect()
    }
    fn borrow_from(owned: &'a Self::Owned) -> Self {
        owned.iter().map(T::borrow_from).collect()
    }
}

impl<'a> Mirror<'a> for Cow<'a, Map<String, Value>> {
    type Owned = Map<String, Value>;
    fn into_owned(self) -> Map<String, Value> {
        Cow::into_owned(self)
    }
    fn borrow_from(owned: &'a Map<String, Value>) -> Self {
        Cow::Borrowed(owned)
    }
}

/// Types that are the same in both models.
macro_rules! same {
    ($($t:ty),*) => {$(
        impl<'a> Mirror<'a> for $t {
            type Owned = $t;
            fn into_owned(self) -> $t { self }
            fn borrow_from(owned: &'a $t) -> $t { owned.clone() }
        }
    )*};
}
same!(u64, Uuid, EventType, DataClassification, OrderType, OrderStatus, HealthStatus, Severity);

/// The conversions of a struct and its owned twin, naming every field (a
/// field added to one side and not the other does not compile).
macro_rules! mirror {
    ($($borrowed:ident => $owned:path { $($f:ident),* $(,)? })*) => {$(
        impl<'a> Mirror<'a> for $borrowed<'a> {
            type Owned = $owned;
            fn into_owned(self) -> $owned {
                $owned { $($f: Mirror::into_owned(self.$f)),* }
            }
            fn borrow_from(o: &'a $owned) -> Self {
                $borrowed { $($f: Mirror::borrow_from(&o.$f)),* }
            }
        }
    )*};
}

mirror! {
    MetadataRef => EventMetadata { event_id, event_type, event_version, correlation_id, causation_id, timestamp, source, user_id, data_classification, partition, migrated_from }
    PriceUpdated => payload::PriceUpdated { token, chain_id, price, price_usd, change24h, volume24h }
    OrderCreated => payload::OrderCreated { order_id, user_id, token_in, token_out, amount_in, amount_out_expected, chain_id, order_type, status, limit_price }
    OrderUpdated => payload::OrderUpdated { order_id, user_id, status, previous_status, filled_amount, amount_out, tx_hash }
    OrderCancelled => payload::OrderCancelled { order_id, user_id, reason, cancelled_by }
    Holding => payload::Holding { token, chain_id, balance, value_usd }
    PortfolioUpdated => payload::PortfolioUpdated { user_id, total_value_usd, holdings, change24h }
    TradeExecuted => payload::TradeExecuted { trade_id, order_id, user_id, token_in, token_out, amount_in, amount_out, price, chain_id, tx_hash, fee }
    TradeFailed => payload::TradeFailed { order_id, user_id, token_in, token_out, amount_in, chain_id, reason, trade_id, error_code, tx_hash }
    UserConnected => payload::UserConnected { user_id, connection_id, instance_id }
    UserDisconnected => payload::UserDisconnected { user_id, connection_id, instance_id, reason, duration_ms }
    SessionRevoked => payload::SessionRevoked { user_id, revoked_at, reason, revoked_by, instance_id }
    SystemHealthCheck => payload::SystemHealthCheck { service, status, uptime_seconds, details }
    SystemError => payload::SystemError { service, error_code, message, severity, details }
}

/// `price.updated`: the latest price of a token on a chain. Public.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PriceUpdated<'a> {
    #[serde(borrow)]
    pub token: Text<'a>,
    pub chain_id: u64,
    #[serde(borrow)]
    pub price: DecimalRef<'a>,
    #[serde(borrow)]
    pub price_usd: DecimalRef<'a>,
    /// Relative change over 24 h; may be negative.
    #[serde(borrow)]
    pub change24h: DecimalRef<'a>,
    #[serde(borrow)]
    pub volume24h: DecimalRef<'a>,
}

/// `order.created`: a user placed an order. Confidential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated<'a> {
    #[serde(borrow)]
    pub order_id: Text<'a>,
    #[serde(borrow)]
    pub user_id: Text<'a>,
    #[serde(borrow)]
    pub token_in: Text<'a>,
    #[serde(borrow)]
    pub token_out: Text<'a>,
    #[serde(borrow)]
    pub amount_in: DecimalRef<'a>,
    #[serde(borrow)]
    pub amount_out_expected: DecimalRef<'a>,
    pub chain_id: u64,
    pub order_type: OrderType,
    pub status: OrderStatus,
    /// Limit / trigger price, for the order types that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub limit_price: Option<DecimalRef<'a>>,
}

/// `order.updated`: an order changed status or was (partially) filled. Confidential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderUpdated<'a> {
    #[serde(borrow)]
    pub order_id: Text<'a>,
    #[serde(borrow)]
    pub user_id: Text<'a>,
    pub status: OrderStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<OrderStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub filled_amount: Option<DecimalRef<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub amount_out: Option<DecimalRef<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub tx_hash: Option<Text<'a>>,
}

/// `order.cancelled`: an order was cancelled by the user or the system. Confidential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled<'a> {
    #[serde(borrow)]
    pub order_id: Text<'a>,
    #[serde(borrow)]
    pub user_id: Text<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub reason: Option<Text<'a>>,
    /// Who cancelled: `"user"`, `"system"`, `"expiry"`…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub cancelled_by: Option<Text<'a>>,
}

/// One position of a portfolio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holding<'a> {
    #[serde(borrow)]
    pub token: Text<'a>,
    pub chain_id: u64,
    #[serde(borrow)]
    pub balance: DecimalRef<'a>,
    #[serde(borrow)]
    pub value_usd: DecimalRef<'a>,
}

/// `portfolio.updated`: a user's holdings and total value. Restricted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortfolioUpdated<'a> {
    #[serde(borrow)]
    pub user_id: Text<'a>,
    #[serde(borrow)]
    pub total_value_usd: DecimalRef<'a>,
    #[serde(deserialize_with = "crate::envelope::objects")]
    #[serde(borrow)]
    pub holdings: Vec<Holding<'a>>,
    /// Relative change over 24 h; may be negative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub change24h: Option<DecimalRef<'a>>,
}

/// `trade.executed`: a swap settled on chain. Confidential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TradeExecuted<'a> {
    #[serde(borrow)]
    pub trade_id: Text<'a>,
    #[serde(borrow)]
    pub order_id: Text<'a>,
    #[serde(borrow)]
    pub user_id: Text<'a>,
    #[serde(borrow)]
    pub token_in: Text<'a>,
    #[serde(borrow)]
    pub token_out: Text<'a>,
    #[serde(borrow)]
    pub amount_in: DecimalRef<'a>,
    #[serde(borrow)]
    pub amount_out: DecimalRef<'a>,
    /// Execution price, tokenOut per tokenIn.
    #[serde(borrow)]
    pub price: DecimalRef<'a>,
    pub chain_id: u64,
    #[serde(borrow)]
    pub tx_hash: Text<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub fee: Option<DecimalRef<'a>>,
}

/// `trade.failed`: a swap did not settle. Confidential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TradeFailed<'a> {
    #[serde(borrow)]
    pub order_id: Text<'a>,
    #[serde(borrow)]
    pub user_id: Text<'a>,
    #[serde(borrow)]
    pub token_in: Text<'a>,
    #[serde(borrow)]
    pub token_out: Text<'a>,
    #[serde(borrow)]
    pub amount_in: DecimalRef<'a>,
    pub chain_id: u64,
    /// Human-readable cause, e.g. "slippage exceeded".
    #[serde(borrow)]
    pub reason: Text<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub trade_id: Option<Text<'a>>,
    /// Machine-readable cause, e.g. "SLIPPAGE".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub error_code: Option<Text<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub tx_hash: Option<Text<'a>>,
}

/// `user.connected`: a user opened a WebSocket connection. Internal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserConnected<'a> {
    #[serde(borrow)]
    pub user_id: Text<'a>,
    #[serde(borrow)]
    pub connection_id: Text<'a>,
    /// The gateway instance that holds the connection.
    #[serde(borrow)]
    pub instance_id: Text<'a>,
}

/// `user.disconnected`: a user's WebSocket connection closed. Internal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDisconnected<'a> {
    #[serde(borrow)]
    pub user_id: Text<'a>,
    #[serde(borrow)]
    pub connection_id: Text<'a>,
    #[serde(borrow)]
    pub instance_id: Text<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub reason: Option<Text<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// `session.revoked`: an operator revoked every session of a user. Every
/// gateway instance closes the user's connections and refuses the user's
/// tokens issued at or before `revokedAt` (and tokens without `iat`) for its
/// revocation window. Internal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRevoked<'a> {
    #[serde(borrow)]
    pub user_id: Text<'a>,
    /// Milliseconds since the epoch: tokens with `iat` at or before it are refused.
    pub revoked_at: u64,
    /// Why, in the operator's words (sent to the client in the close frame, cut to fit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub reason: Option<Text<'a>>,
    /// Who asked (the admin JWT's `sub`, or `api-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub revoked_by: Option<Text<'a>>,
    /// The instance that received the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub instance_id: Option<Text<'a>>,
}

/// `system.health_check`: a service reports its health. Internal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemHealthCheck<'a> {
    #[serde(borrow)]
    pub service: Text<'a>,
    pub status: HealthStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub details: Option<Cow<'a, Map<String, Value>>>,
}

/// `system.error`: a service reports an error. Internal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemError<'a> {
    #[serde(borrow)]
    pub service: Text<'a>,
    #[serde(borrow)]
    pub error_code: Text<'a>,
    #[serde(borrow)]
    pub message: Text<'a>,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub details: Option<Cow<'a, Map<String, Value>>>,
}


/// The borrowed twin of [`crate::EventData`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum DataRef<'a> {
    PriceUpdated(PriceUpdated<'a>),
    OrderCreated(OrderCreated<'a>),
    OrderUpdated(OrderUpdated<'a>),
    OrderCancelled(OrderCancelled<'a>),
    PortfolioUpdated(PortfolioUpdated<'a>),
    TradeExecuted(TradeExecuted<'a>),
    TradeFailed(TradeFailed<'a>),
    UserConnected(UserConnected<'a>),
    UserDisconnected(UserDisconnected<'a>),
    SessionRevoked(SessionRevoked<'a>),
    SystemHealthCheck(SystemHealthCheck<'a>),
    SystemError(SystemError<'a>),
    Custom(Cow<'a, Map<String, Value>>),
}

/// Decodes `data` as the payload of the type it is given (custom types: any
/// object). `objects_only`: refuse a JSON array where a struct is expected
/// (the fast path; serde's derive takes one, fields by position).
pub(crate) struct DataSeed<'t> {
    pub event_type: &'t EventType,
    pub objects_only: bool,
}

macro_rules! data_ref {
    ($($variant:ident => $owner:ident),* $(,)?) => {
        impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
            type Value = DataRef<'de>;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<DataRef<'de>, D::Error> {
                Ok(match (self.event_type, self.objects_only) {
                    $(
                        (EventType::$variant, false) => DataRef::$variant($variant::deserialize(d)?),
                        (EventType::$variant, true) => DataRef::$variant(crate::envelope::MapOnly::deserialize(d)?.0),
                    )*
                    (EventType::Custom(_), _) => DataRef::Custom(Cow::Owned(Map::deserialize(d)?)),
                })
            }
        }

        impl<'a> Mirror<'a> for DataRef<'a> {
            type Owned = crate::EventData;
            fn into_owned(self) -> crate::EventData {
                match self {
                    $(DataRef::$variant(p) => crate::EventData::$variant(p.into_owned()),)*
                    DataRef::Custom(m) => crate::EventData::Custom(m.into_owned()),
                }
            }
            fn borrow_from(owned: &'a crate::EventData) -> Self {
                match owned {
                    $(crate::EventData::$variant(p) => DataRef::$variant(Mirror::borrow_from(p)),)*
                    crate::EventData::Custom(m) => DataRef::Custom(Cow::Borrowed(m)),
                }
            }
        }

        impl DataRef<'_> {
            /// The user named inside the payload, for the types that carry one.
            pub fn owner(&self) -> Option<&str> {
                match self {
                    $(DataRef::$variant(p) => data_ref!(@owner p $owner),)*
                    DataRef::Custom(m) => m.get("userId").and_then(Value::as_str),
                }
            }
        }
    };
    (@owner $p:ident user) => { Some(&$p.user_id) };
    (@owner $p:ident none) => { { let _ = $p; None } };
}

data_ref! {
    PriceUpdated => none,
    OrderCreated => user,
    OrderUpdated => user,
    OrderCancelled => user,
    PortfolioUpdated => user,
    TradeExecuted => user,
    TradeFailed => user,
    UserConnected => user,
    UserDisconnected => user,
    SessionRevoked => user,
    SystemHealthCheck => none,
    SystemError => none,
}

/// Field checks the types cannot express, mirroring the `Text` (non-empty)
/// and `Amount` (no sign) kinds of `validate`'s field tables.
mod field_checks {
    use super::*;

    fn t(s: &Text<'_>) -> bool {
        !s.is_empty()
    }
    fn ot(s: &Option<Text<'_>>) -> bool {
        s.as_ref().is_none_or(t)
    }
    fn a(d: &DecimalRef<'_>) -> bool {
        !d.as_str().starts_with('-')
    }
    fn oa(d: &Option<DecimalRef<'_>>) -> bool {
        d.as_ref().is_none_or(a)
    }

    impl DataRef<'_> {
        /// `true` when every text field is non-empty and every amount unsigned.
        pub(crate) fn accepts_fields(&self) -> bool {
            match self {
                DataRef::PriceUpdated(p) => t(&p.token) && a(&p.price) && a(&p.price_usd) && a(&p.volume24h),
                DataRef::OrderCreated(o) => {
                    t(&o.order_id) && t(&o.user_id) && t(&o.token_in) && t(&o.token_out)
                        && a(&o.amount_in) && a(&o.amount_out_expected) && oa(&o.limit_price)
                }
                DataRef::OrderUpdated(o) => {
                    t(&o.order_id) && t(&o.user_id) && oa(&o.filled_amount) && oa(&o.amount_out) && ot(&o.tx_hash)
                }
                DataRef::OrderCancelled(o) => t(&o.order_id) && t(&o.user_id) && ot(&o.reason) && ot(&o.cancelled_by),
                DataRef::PortfolioUpdated(p) => {
                    t(&p.user_id)
                        && a(&p.total_value_usd)
                        && p.holdings.iter().all(|h| t(&h.token) && a(&h.balance) && a(&h.value_usd))
                }
                DataRef::TradeExecuted(x) => {
                    t(&x.trade_id) && t(&x.order_id) && t(&x.user_id) && t(&x.token_in) && t(&x.token_out)
                        && t(&x.tx_hash) && a(&x.amount_in) && a(&x.amount_out) && a(&x.price) && oa(&x.fee)
                }
                DataRef::TradeFailed(x) => {
                    t(&x.order_id) && t(&x.user_id) && t(&x.token_in) && t(&x.token_out) && t(&x.reason)
                        && a(&x.amount_in) && ot(&x.trade_id) && ot(&x.error_code) && ot(&x.tx_hash)
                }
                DataRef::UserConnected(u) => t(&u.user_id) && t(&u.connection_id) && t(&u.instance_id),
                DataRef::UserDisconnected(u) => {
                    t(&u.user_id) && t(&u.connection_id) && t(&u.instance_id) && ot(&u.reason)
                }
                DataRef::SessionRevoked(r) => {
                    t(&r.user_id) && ot(&r.reason) && ot(&r.revoked_by) && ot(&r.instance_id)
                }
                DataRef::SystemHealthCheck(h) => t(&h.service),
                DataRef::SystemError(e) => t(&e.service) && t(&e.error_code) && t(&e.message),
                DataRef::Custom(_) => true,
            }
        }
    }
}

/// The envelope in one pass over the record: `metadata` first (the usual
/// order), then `data` straight into the payload of its `eventType`. Only
/// when `data` comes first is it captured raw and parsed once `metadata` is
/// known. Unknown top-level keys are ignored; a repeated `metadata` or
/// `data` is an error (so the walker, which sees the whole document, judges).
pub(crate) struct EnvelopeSeed;

impl<'de> DeserializeSeed<'de> for EnvelopeSeed {
    type Value = EventRef<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<EventRef<'de>, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Key {
            Metadata,
            Data,
            #[serde(other)]
            Other,
        }
        struct EnvelopeVisitor;
        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = EventRef<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event envelope object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<EventRef<'de>, A::Error> {
                let mut metadata: Option<MetadataRef<'de>> = None;
                let mut data: Option<DataRef<'de>> = None;
                let mut data_first: Option<&'de serde_json::value::RawValue> = None;
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Metadata if metadata.is_some() => return Err(A::Error::duplicate_field("metadata")),
                        Key::Data if data.is_some() || data_first.is_some() => {
                            return Err(A::Error::duplicate_field("data"))
                        }
                        Key::Metadata => metadata = Some(map.next_value::<crate::envelope::MapOnly<_>>()?.0),
                        Key::Data => match &metadata {
                            Some(m) => {
                                data = Some(map.next_value_seed(DataSeed { event_type: &m.event_type, objects_only: true })?)
                            }
                            None => data_first = Some(map.next_value()?),
                        },
                        Key::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                let metadata = metadata.ok_or_else(|| A::Error::missing_field("metadata"))?;
                let data = match (data, data_first) {
                    (Some(data), _) => data,
                    (None, Some(raw)) => {
                        let seed = DataSeed { event_type: &metadata.event_type, objects_only: true };
                        let mut de = serde_json::Deserializer::from_str(raw.get());
                        seed.deserialize(&mut de).map_err(A::Error::custom)?
                    }
                    (None, None) => return Err(A::Error::missing_field("data")),
                };
                Ok(EventRef { metadata, data })
            }
        }
        d.deserialize_map(EnvelopeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_fast, DecodeOptions};
    use crate::TypeRegistry;

    const PRICE: &str = r#"{"metadata":{"eventId":"0193a4b2-7c1e-7d3f-9a42-5f8e2c6b1d07","eventType":"price.updated","eventVersion":"1.0","correlationId":"c-1","timestamp":1767225600000,"source":"price-service","dataClassification":"public","partition":"prices"},"data":{"token":"ETH","chainId":1,"price":"3021.45","priceUsd":"3021.45","change24h":"-1.28","volume24h":"1284537.5"}}"#;

    fn options(registry: &TypeRegistry) -> DecodeOptions<'_> {
        DecodeOptions { now_ms: Some(1_767_225_600_000), ..DecodeOptions::new(registry) }
    }

    fn is_borrowed(t: &Text<'_>) -> bool {
        matches!(t.0, Cow::Borrowed(_))
    }

    #[test]
    fn the_fast_path_borrows_every_string_from_the_record() {
        let registry = TypeRegistry::new();
        let event = decode_fast(PRICE.as_bytes(), &options(&registry)).expect("a valid price takes the fast path");
        let m = &event.metadata;
        assert!([&m.event_version, &m.correlation_id, &m.source, &m.partition].into_iter().all(is_borrowed));
        let DataRef::PriceUpdated(p) = &event.data else { panic!("a price: {:?}", event.data) };
        assert!(is_borrowed(&p.token));
        assert!(matches!(p.price.0, Cow::Borrowed("3021.45")));
    }

    #[test]
    fn data_before_metadata_and_escaped_strings_still_take_the_fast_path() {
        let registry = TypeRegistry::new();
        let expected = decode_fast(PRICE.as_bytes(), &options(&registry)).unwrap().into_owned();
        let doc: serde_json::Value = serde_json::from_str(PRICE).unwrap();
        let data_first = format!(r#"{{"data":{},"metadata":{}}}"#, doc["data"], doc["metadata"]);
        let event = decode_fast(data_first.as_bytes(), &options(&registry)).expect("data first");
        assert_eq!(event.into_owned(), expected);
        let escaped = PRICE.replace(r#""token":"ETH""#, r#""token":"E\u0054H""#);
        let event = decode_fast(escaped.as_bytes(), &options(&registry)).expect("an escape");
        let DataRef::PriceUpdated(p) = &event.data else { panic!("a price") };
        assert!(!is_borrowed(&p.token), "an escaped string is unescaped into an owned one");
        assert_eq!(event.into_owned(), expected);
    }

    #[test]
    fn owned_and_borrowed_convert_without_loss() {
        let registry = TypeRegistry::new();
        let owned = decode_fast(PRICE.as_bytes(), &options(&registry)).unwrap().into_owned();
        let borrowed = EventRef::from(&owned);
        assert_eq!(borrowed.to_json_bytes(), owned.to_json_bytes(), "the two serialize alike");
        assert_eq!(borrowed.into_owned(), owned);
    }
}
