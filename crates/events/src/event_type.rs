//! The type discriminator: `metadata.eventType`.
//!
//! The 12 built-in types are enum variants; anything else is kept as
//! [`EventType::Custom`] and is valid only when registered in a
//! [`crate::TypeRegistry`].

use crate::DataClassification;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventType {
    PriceUpdated,
    OrderCreated,
    OrderUpdated,
    OrderCancelled,
    PortfolioUpdated,
    TradeExecuted,
    TradeFailed,
    UserConnected,
    UserDisconnected,
    /// An operator revoked a user's sessions (`POST /api/sessions/revoke`):
    /// every gateway instance closes the user's connections and refuses the
    /// user's tokens issued before it.
    SessionRevoked,
    SystemHealthCheck,
    SystemError,
    /// A type outside the built-in set; see [`crate::TypeRegistry`].
    Custom(String),
}

impl EventType {
    /// The built-in types, in the order of the specification.
    pub const BUILT_IN: [EventType; 12] = [
        EventType::PriceUpdated,
        EventType::OrderCreated,
        EventType::OrderUpdated,
        EventType::OrderCancelled,
        EventType::PortfolioUpdated,
        EventType::TradeExecuted,
        EventType::TradeFailed,
        EventType::UserConnected,
        EventType::UserDisconnected,
        EventType::SessionRevoked,
        EventType::SystemHealthCheck,
        EventType::SystemError,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            EventType::PriceUpdated => "price.updated",
            EventType::OrderCreated => "order.created",
            EventType::OrderUpdated => "order.updated",
            EventType::OrderCancelled => "order.cancelled",
            EventType::PortfolioUpdated => "portfolio.updated",
            EventType::TradeExecuted => "trade.executed",
            EventType::TradeFailed => "trade.failed",
            EventType::UserConnected => "user.connected",
            EventType::UserDisconnected => "user.disconnected",
            EventType::SessionRevoked => "session.revoked",
            EventType::SystemHealthCheck => "system.health_check",
            EventType::SystemError => "system.error",
            EventType::Custom(name) => name,
        }
    }

    /// Maps a name to a built-in type, or to `Custom` for any other name.
    pub fn parse(name: &str) -> EventType {
        // A match, not a search of `BUILT_IN` by value: the decode hot path
        // parses every event's type, and iterating the array moves it.
        match name {
            "price.updated" => EventType::PriceUpdated,
            "order.created" => EventType::OrderCreated,
            "order.updated" => EventType::OrderUpdated,
            "order.cancelled" => EventType::OrderCancelled,
            "portfolio.updated" => EventType::PortfolioUpdated,
            "trade.executed" => EventType::TradeExecuted,
            "trade.failed" => EventType::TradeFailed,
            "user.connected" => EventType::UserConnected,
            "user.disconnected" => EventType::UserDisconnected,
            "session.revoked" => EventType::SessionRevoked,
            "system.health_check" => EventType::SystemHealthCheck,
            "system.error" => EventType::SystemError,
            _ => EventType::Custom(name.to_owned()),
        }
    }

    pub fn is_built_in(&self) -> bool {
        !matches!(self, EventType::Custom(_))
    }

    /// The classification of the specification's table; `None` for custom
    /// types, whose default comes from the registry.
    pub fn default_classification(&self) -> Option<DataClassification> {
        use DataClassification::*;
        Some(match self {
            EventType::PriceUpdated => Public,
            EventType::OrderCreated
            | EventType::OrderUpdated
            | EventType::OrderCancelled
            | EventType::TradeExecuted
            | EventType::TradeFailed => Confidential,
            EventType::PortfolioUpdated => Restricted,
            EventType::UserConnected
            | EventType::UserDisconnected
            | EventType::SessionRevoked
            | EventType::SystemHealthCheck
            | EventType::SystemError => Internal,
            EventType::Custom(_) => return None,
        })
    }

    /// Events that belong to one user (orders, portfolio, trades, presence,
    /// revocation): keyed by userId, so they stay in the user's order.
    pub fn is_user_scoped(&self) -> bool {
        matches!(
            self,
            EventType::OrderCreated
                | EventType::OrderUpdated
                | EventType::OrderCancelled
                | EventType::PortfolioUpdated
                | EventType::TradeExecuted
                | EventType::TradeFailed
                | EventType::UserConnected
                | EventType::UserDisconnected
                | EventType::SessionRevoked
        )
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventType {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(EventType::parse(s))
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::str_visitor::from_str_with(d, "an event type name", |name| Ok(EventType::parse(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in EventType::BUILT_IN {
            assert_eq!(EventType::parse(t.as_str()), t);
        }
        assert_eq!(EventType::parse("x.y"), EventType::Custom("x.y".into()));
    }
}
