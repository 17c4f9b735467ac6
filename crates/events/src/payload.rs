//! Typed `data` for the 12 built-in event types.
//!
//! Field names are the seed's camelCase. Amounts are [`Decimal`] strings.
//! Unknown fields are ignored on decode (forward compatibility: a producer may
//! add a field before every consumer knows it); the gateway forwards the
//! original bytes, so clients still see them.

use crate::{Decimal, EventType};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A payload type bound to its event type, for the typed factory API.
pub trait Payload: Serialize + Into<EventData> {
    const EVENT_TYPE: EventType;
    /// The owning user named inside the payload, if the type has one.
    fn owner(&self) -> Option<&str> {
        None
    }
}

/// `price.updated`: the latest price of a token on a chain. Public.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PriceUpdated {
    pub token: String,
    pub chain_id: u64,
    pub price: Decimal,
    pub price_usd: Decimal,
    /// Relative change over 24 h; may be negative.
    pub change24h: Decimal,
    pub volume24h: Decimal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderType {
    Market,
    Limit,
    StopLoss,
    TakeProfit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Open,
    PartiallyFilled,
    Filled,
    Cancelled,
    Failed,
    Expired,
}

/// `order.created`: a user placed an order. Confidential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub order_id: String,
    pub user_id: String,
    pub token_in: String,
    pub token_out: String,
    pub amount_in: Decimal,
    pub amount_out_expected: Decimal,
    pub chain_id: u64,
    pub order_type: OrderType,
    pub status: OrderStatus,
    /// Limit / trigger price, for the order types that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_price: Option<Decimal>,
}

/// `order.updated`: an order changed status or was (partially) filled. Confidential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderUpdated {
    pub order_id: String,
    pub user_id: String,
    pub status: OrderStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<OrderStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filled_amount: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_out: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_hash: Option<String>,
}

/// `order.cancelled`: an order was cancelled by the user or the system. Confidential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    pub order_id: String,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who cancelled: `"user"`, `"system"`, `"expiry"`…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
}

/// One position of a portfolio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holding {
    pub token: String,
    pub chain_id: u64,
    pub balance: Decimal,
    pub value_usd: Decimal,
}

/// `portfolio.updated`: a user's holdings and total value. Restricted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortfolioUpdated {
    pub user_id: String,
    pub total_value_usd: Decimal,
    #[serde(deserialize_with = "crate::envelope::objects")]
    pub holdings: Vec<Holding>,
    /// Relative change over 24 h; may be negative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change24h: Option<Decimal>,
}

/// `trade.executed`: a swap settled on chain. Confidential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TradeExecuted {
    pub trade_id: String,
    pub order_id: String,
    pub user_id: String,
    pub token_in: String,
    pub token_out: String,
    pub amount_in: Decimal,
    pub amount_out: Decimal,
    /// Execution price, tokenOut per tokenIn.
    pub price: Decimal,
    pub chain_id: u64,
    pub tx_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee: Option<Decimal>,
}

/// `trade.failed`: a swap did not settle. Confidential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TradeFailed {
    pub order_id: String,
    pub user_id: String,
    pub token_in: String,
    pub token_out: String,
    pub amount_in: Decimal,
    pub chain_id: u64,
    /// Human-readable cause, e.g. "slippage exceeded".
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_id: Option<String>,
    /// Machine-readable cause, e.g. "SLIPPAGE".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_hash: Option<String>,
}

/// `user.connected`: a user opened a WebSocket connection. Internal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserConnected {
    pub user_id: String,
    pub connection_id: String,
    /// The gateway instance that holds the connection.
    pub instance_id: String,
}

/// `user.disconnected`: a user's WebSocket connection closed. Internal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDisconnected {
    pub user_id: String,
    pub connection_id: String,
    pub instance_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// `session.revoked`: an operator revoked every session of a user. Every
/// gateway instance closes the user's connections and refuses the user's
/// tokens issued at or before `revokedAt` (and tokens without `iat`) for its
/// revocation window. Internal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRevoked {
    pub user_id: String,
    /// Milliseconds since the epoch: tokens with `iat` at or before it are refused.
    pub revoked_at: u64,
    /// Why, in the operator's words (sent to the client in the close frame, cut to fit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who asked (the admin JWT's `sub`, or `api-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    /// The instance that received the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

/// `system.health_check`: a service reports its health. Internal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemHealthCheck {
    pub service: String,
    pub status: HealthStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
    Critical,
}

/// `system.error`: a service reports an error. Internal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemError {
    pub service: String,
    pub error_code: String,
    pub message: String,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Map<String, Value>>,
}

/// The `data` of any event: one variant per built-in type, or a JSON object
/// for a registered custom type.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EventData {
    PriceUpdated(PriceUpdated),
    OrderCreated(OrderCreated),
    OrderUpdated(OrderUpdated),
    OrderCancelled(OrderCancelled),
    PortfolioUpdated(PortfolioUpdated),
    TradeExecuted(TradeExecuted),
    TradeFailed(TradeFailed),
    UserConnected(UserConnected),
    UserDisconnected(UserDisconnected),
    SessionRevoked(SessionRevoked),
    SystemHealthCheck(SystemHealthCheck),
    SystemError(SystemError),
    Custom(Map<String, Value>),
}

macro_rules! payloads {
    ($($variant:ident => $owner:ident),* $(,)?) => {
        $(
            impl From<$variant> for EventData {
                fn from(p: $variant) -> Self { EventData::$variant(p) }
            }
            impl Payload for $variant {
                const EVENT_TYPE: EventType = EventType::$variant;
                fn owner(&self) -> Option<&str> { payloads!(@owner self $owner) }
            }
        )*

        impl EventData {
            /// Decodes `data` as the payload of `event_type` (custom types: any object).
            pub fn from_value(event_type: &EventType, data: Value) -> serde_json::Result<EventData> {
                Ok(match event_type {
                    $(EventType::$variant => EventData::$variant(serde_json::from_value(data)?),)*
                    EventType::Custom(_) => EventData::Custom(serde_json::from_value(data)?),
                })
            }

            /// The user named inside the payload, for the types that carry one.
            pub fn owner(&self) -> Option<&str> {
                match self {
                    $(EventData::$variant(p) => p.owner(),)*
                    EventData::Custom(m) => m.get("userId").and_then(Value::as_str),
                }
            }
        }
    };
    (@owner $s:ident user) => { Some(&$s.user_id) };
    (@owner $s:ident none) => { None };
}

payloads! {
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
