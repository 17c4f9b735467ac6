//! The partition-key strategy: which Kafka key an event is produced with.
//!
//! Kafka keeps order only within a partition, and a key always maps to the
//! same partition, so the key decides what stays ordered end to end:
//!
//! | event types | key | why |
//! |---|---|---|
//! | `order.*`, `portfolio.updated`, `trade.*` | `userId` | a user's events stay in order |
//! | `user.connected`, `user.disconnected` | `userId` | a user's presence stays in order |
//! | `session.revoked` | `userId` | ordered with the user's events |
//! | `price.updated` | `"prices"` | one ordered price stream |
//! | `system.*` | `"system"` | one ordered operator stream |
//! | registered custom types | their [`PartitionRule`] (default: `userId` for owned data, else the type name) | |
//! | anything else (unknown types) | `userId` if present, else the type name | |
//!
//! A user-scoped event without a userId (invalid anyway) falls back to the
//! type name, so the function is total.

use crate::registry::PartitionRule;
use crate::{EventType, TypeRegistry};

pub const PRICES_KEY: &str = "prices";
pub const SYSTEM_KEY: &str = "system";

pub fn partition_key(event_type: &EventType, user_id: Option<&str>, registry: &TypeRegistry) -> String {
    let by_user = || user_id.map_or_else(|| event_type.as_str().to_owned(), str::to_owned);
    match event_type {
        EventType::PriceUpdated => PRICES_KEY.to_owned(),
        EventType::SystemHealthCheck | EventType::SystemError => SYSTEM_KEY.to_owned(),
        t if t.is_user_scoped() => by_user(),
        EventType::Custom(name) => match registry.get(name).map(|c| &c.partition_rule) {
            Some(PartitionRule::Fixed(key)) => key.clone(),
            Some(PartitionRule::User) | None => by_user(),
        },
        _ => by_user(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CustomType, DataClassification};

    #[test]
    fn follows_the_table() {
        let r = TypeRegistry::new();
        let u = Some("user-1");
        assert_eq!(partition_key(&EventType::PriceUpdated, u, &r), "prices");
        assert_eq!(partition_key(&EventType::SystemError, None, &r), "system");
        assert_eq!(partition_key(&EventType::SystemHealthCheck, u, &r), "system");
        for t in [
            EventType::OrderCreated,
            EventType::OrderUpdated,
            EventType::OrderCancelled,
            EventType::PortfolioUpdated,
            EventType::TradeExecuted,
            EventType::TradeFailed,
            EventType::UserConnected,
            EventType::UserDisconnected,
            EventType::SessionRevoked,
        ] {
            assert_eq!(partition_key(&t, u, &r), "user-1", "{t}");
        }
        assert_eq!(partition_key(&EventType::OrderCreated, None, &r), "order.created");
    }

    #[test]
    fn custom_types_follow_their_rule() {
        let mut r = TypeRegistry::new();
        r.register(CustomType::new("reward.granted", DataClassification::Confidential)).unwrap();
        r.register(CustomType::new("market.opened", DataClassification::Public)).unwrap();
        let reward = EventType::parse("reward.granted");
        assert_eq!(partition_key(&reward, Some("u9"), &r), "u9");
        assert_eq!(partition_key(&EventType::parse("market.opened"), Some("u9"), &r), "market.opened");
    }
}
