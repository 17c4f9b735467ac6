//! Migration of pre-envelope messages (`{ "type": …, "timestamp": …, … }`)
//! from the legacy topics into envelopes.
//!
//! | legacy topic | legacy `type` (case-insensitive; `_`, `-` and `.` alike) | event type |
//! |---|---|---|
//! | `moonx.price.updates` | `price_update`, `price_updated`, `price` | `price.updated` |
//! | `moonx.order.updates` | `order_created`, `order_create`, `order_new` | `order.created` |
//! | `moonx.order.updates` | `order_updated`, `order_update`, `order_status` | `order.updated` |
//! | `moonx.order.updates` | `order_cancelled`, `order_canceled`, `order_cancel` | `order.cancelled` |
//! | `moonx.portfolio.updates` | `portfolio_update`, `portfolio_updated`, `portfolio` | `portfolio.updated` |
//! | `moonx.trade.updates` | `trade_executed`, `trade_execute`, `trade_completed`, `trade` | `trade.executed` |
//! | `moonx.trade.updates` | `trade_failed`, `trade_fail` | `trade.failed` |
//!
//! Fields: `data` is the message's `data` object when it has one, else every
//! field but `type`, `timestamp`, `eventId`, `correlationId` and `source`.
//! `timestamp` is milliseconds (a number below 10^12 is taken as seconds; a
//! string of digits is accepted). `userId` comes from the message or its data.
//! `eventId` is the message's own if it is a UUID, else a UUID v5 of the
//! topic and the message, so that a redelivered legacy record gets the same
//! id and clients can drop the duplicate. `correlationId` defaults to the
//! eventId, `source` to `legacy:<topic>`, `eventVersion` to `1.0`, and
//! `migratedFrom` names the topic. Classification and partition key follow the
//! type's defaults. A message on one legacy topic with the type of another
//! is refused, as is any message without a known type or a usable timestamp.
//! The result is then validated like any other event.

use crate::partition::partition_key;
use crate::validate::is_canonical_uuid;
use crate::{EventType, TypeRegistry, LEGACY_TOPICS};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// Namespace of the v5 ids given to migrated messages (fixed forever).
pub const LEGACY_NAMESPACE: Uuid = Uuid::from_u128(0x6d6f6f6e_782d_7773_8c65_676163790001);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyError {
    #[error("a legacy message must be a JSON object")]
    NotAnObject,
    #[error("the legacy message has no \"type\"")]
    MissingType,
    #[error("legacy type {0:?} has no mapping to an event type")]
    UnknownType(String),
    #[error("legacy type {legacy_type:?} does not belong on topic {topic}")]
    WrongTopic { legacy_type: String, topic: String },
    #[error("the legacy message has no \"timestamp\"")]
    MissingTimestamp,
    #[error("legacy timestamp {0} is not a number of milliseconds or seconds")]
    BadTimestamp(String),
}

pub fn is_legacy_topic(topic: &str) -> bool {
    LEGACY_TOPICS.contains(&topic)
}

/// The event type a legacy `type` maps to (see the module table).
pub fn map_legacy_type(legacy_type: &str) -> Option<EventType> {
    let norm: String = legacy_type
        .trim()
        .chars()
        .map(|c| if c == '-' || c == '.' { '_' } else { c.to_ascii_lowercase() })
        .collect();
    Some(match norm.as_str() {
        "price_update" | "price_updated" | "price" => EventType::PriceUpdated,
        "order_created" | "order_create" | "order_new" => EventType::OrderCreated,
        "order_updated" | "order_update" | "order_status" => EventType::OrderUpdated,
        "order_cancelled" | "order_canceled" | "order_cancel" => EventType::OrderCancelled,
        "portfolio_update" | "portfolio_updated" | "portfolio" => EventType::PortfolioUpdated,
        "trade_executed" | "trade_execute" | "trade_completed" | "trade" => EventType::TradeExecuted,
        "trade_failed" | "trade_fail" => EventType::TradeFailed,
        _ => return None,
    })
}

/// The legacy topic that carried a type before the refactor.
pub fn legacy_topic_of(t: &EventType) -> Option<&'static str> {
    Some(match t {
        EventType::PriceUpdated => LEGACY_TOPICS[0],
        EventType::OrderCreated | EventType::OrderUpdated | EventType::OrderCancelled => LEGACY_TOPICS[1],
        EventType::PortfolioUpdated => LEGACY_TOPICS[2],
        EventType::TradeExecuted | EventType::TradeFailed => LEGACY_TOPICS[3],
        _ => return None,
    })
}

const RESERVED: [&str; 5] = ["type", "timestamp", "eventId", "correlationId", "source"];

/// Builds the envelope document of a legacy message (not yet validated).
pub fn migrate(msg: &Value, topic: Option<&str>, registry: &TypeRegistry) -> Result<Value, LegacyError> {
    let obj = msg.as_object().ok_or(LegacyError::NotAnObject)?;
    let legacy_type = obj.get("type").and_then(Value::as_str).ok_or(LegacyError::MissingType)?;
    let event_type = map_legacy_type(legacy_type).ok_or_else(|| LegacyError::UnknownType(legacy_type.into()))?;
    if let Some(topic) = topic.filter(|t| is_legacy_topic(t))
        && legacy_topic_of(&event_type) != Some(topic) {
            return Err(LegacyError::WrongTopic { legacy_type: legacy_type.into(), topic: topic.into() });
        }
    let timestamp = legacy_timestamp(obj.get("timestamp").ok_or(LegacyError::MissingTimestamp)?)?;

    let data: Map<String, Value> = match obj.get("data") {
        Some(Value::Object(d)) => d.clone(),
        _ => obj
            .iter()
            .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    let user_id = obj
        .get("userId")
        .or_else(|| data.get("userId"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let origin = topic.unwrap_or("legacy");
    let event_id = match obj.get("eventId").and_then(Value::as_str) {
        Some(id) if is_canonical_uuid(id) => id.to_owned(),
        _ => Uuid::new_v5(&LEGACY_NAMESPACE, format!("{origin}\n{msg}").as_bytes()).to_string(),
    };
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);

    let mut metadata = json!({
        "eventId": event_id,
        "eventType": event_type.as_str(),
        "eventVersion": "1.0",
        "correlationId": text("correlationId").unwrap_or_else(|| event_id.clone()),
        "timestamp": timestamp,
        "source": text("source").unwrap_or_else(|| format!("legacy:{origin}")),
        "dataClassification": registry.default_classification(&event_type).map(|c| c.as_str()),
        "partition": partition_key(&event_type, user_id.as_deref(), registry),
        "migratedFrom": origin,
    });
    if let Some(u) = user_id {
        metadata["userId"] = Value::String(u);
    }
    Ok(json!({ "metadata": metadata, "data": data }))
}

fn legacy_timestamp(v: &Value) -> Result<u64, LegacyError> {
    let n = match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0 && f.is_finite()).map(|f| f as u64)),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    };
    let n = n.ok_or_else(|| LegacyError::BadTimestamp(v.to_string()))?;
    Ok(if n < 1_000_000_000_000 { n.saturating_mul(1000) } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_price_message_deterministically() {
        let r = TypeRegistry::new();
        let msg = json!({"type":"price_update","timestamp":1764000000,"token":"ETH","chainId":1,
            "price":"3000","priceUsd":"3000","change24h":"0.1","volume24h":"5"});
        let a = migrate(&msg, Some("moonx.price.updates"), &r).unwrap();
        let b = migrate(&msg, Some("moonx.price.updates"), &r).unwrap();
        assert_eq!(a, b);
        assert_eq!(a["metadata"]["timestamp"], 1764000000000u64);
        assert_eq!(a["metadata"]["eventType"], "price.updated");
        assert_eq!(a["data"]["token"], "ETH");
        assert!(a["data"].get("type").is_none());
    }

    #[test]
    fn refuses_a_type_on_the_wrong_topic() {
        let r = TypeRegistry::new();
        let msg = json!({"type":"order_created","timestamp":1764000000000u64});
        assert!(matches!(
            migrate(&msg, Some("moonx.price.updates"), &r),
            Err(LegacyError::WrongTopic { .. })
        ));
    }
}
