//! The event factory: builds complete, valid envelopes from data.
//!
//! It fills what producers should not have to: a v7 `eventId`, the
//! `timestamp`, the type's default classification, a `correlationId` when
//! none is given, and the partition key. Every event it returns has passed
//! [`crate::validate`].

use crate::payload::*;
use crate::validate::{now_ms, Validator};
use crate::{
    partition::partition_key, DataClassification, Event, EventMetadata, EventType,
    TypeRegistry, ValidationErrors,
};

use serde_json::Value;
use uuid::Uuid;

/// Per-event options, all optional.
#[derive(Debug, Clone, Default)]
pub struct EventOptions {
    /// Owning user; taken from `data.userId` when not given.
    pub user_id: Option<String>,
    /// Generated (as a UUID) when not given.
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    /// Overrides the factory's source service.
    pub source: Option<String>,
    /// Defaults to [`DEFAULT_EVENT_VERSION`].
    pub event_version: Option<String>,
    /// Raises the classification above the type's default (never lowers: a
    /// lower value is reported by validation).
    pub classification: Option<DataClassification>,
}

impl EventOptions {
    pub fn user(user_id: impl Into<String>) -> Self {
        EventOptions { user_id: Some(user_id.into()), ..Default::default() }
    }
}

pub const DEFAULT_EVENT_VERSION: &str = "1.0";

/// Builds events for one producing service.
#[derive(Debug, Clone)]
pub struct EventFactory {
    source: String,
    registry: TypeRegistry,
}

impl Default for EventFactory {
    fn default() -> Self {
        EventFactory::new("moonx-ws")
    }
}

impl EventFactory {
    pub fn new(source: impl Into<String>) -> Self {
        EventFactory { source: source.into(), registry: TypeRegistry::new() }
    }

    pub fn with_registry(mut self, registry: TypeRegistry) -> Self {
        self.registry = registry;
        self
    }

    pub fn registry(&self) -> &TypeRegistry {
        &self.registry
    }

    /// Builds an event from a typed payload.
    pub fn create<P: Payload>(&self, data: P, options: EventOptions) -> Result<Event, ValidationErrors> {
        let json = serde_json::to_value(&data).expect("payloads always serialize");
        self.create_from_json(&P::EVENT_TYPE, json, options)
    }

    /// Builds an event of `event_type` from JSON data (the CLI's `produce`).
    pub fn create_from_json(
        &self,
        event_type: &EventType,
        data: Value,
        options: EventOptions,
    ) -> Result<Event, ValidationErrors> {
        let user_id = options
            .user_id
            .or_else(|| data.get("userId").and_then(Value::as_str).map(str::to_owned));
        let default = self.registry.default_classification(event_type);
        let event_id = Uuid::now_v7();
        let metadata = EventMetadata {
            event_id,
            event_type: event_type.clone(),
            event_version: options.event_version.unwrap_or_else(|| DEFAULT_EVENT_VERSION.into()),
            correlation_id: options.correlation_id.unwrap_or_else(|| Uuid::now_v7().to_string()),
            causation_id: options.causation_id,
            timestamp: now_ms(),
            source: options.source.unwrap_or_else(|| self.source.clone()),
            partition: partition_key(event_type, user_id.as_deref(), &self.registry),
            user_id,
            data_classification: options
                .classification
                .or(default)
                .unwrap_or(DataClassification::Restricted),
            migrated_from: None,
        };
        let doc = serde_json::json!({ "metadata": metadata, "data": data });
        Validator::new(&self.registry).validate(&doc)?;
        crate::decode::typed_from_valid(doc).map(crate::EventRef::into_owned).map_err(|e| ValidationErrors(vec![e]))
    }
}

macro_rules! helpers {
    ($($name:ident($payload:ident)),* $(,)?) => {
        $(
            #[doc = concat!("Builds a `", stringify!($payload), "` event with a default factory.")]
            pub fn $name(data: $payload, options: EventOptions) -> Result<Event, ValidationErrors> {
                EventFactory::default().create(data, options)
            }
        )*
    };
}

helpers! {
    create_price_updated_event(PriceUpdated),
    create_order_created_event(OrderCreated),
    create_order_updated_event(OrderUpdated),
    create_order_cancelled_event(OrderCancelled),
    create_portfolio_updated_event(PortfolioUpdated),
    create_trade_executed_event(TradeExecuted),
    create_trade_failed_event(TradeFailed),
    create_user_connected_event(UserConnected),
    create_user_disconnected_event(UserDisconnected),
    create_session_revoked_event(SessionRevoked),
    create_system_health_check_event(SystemHealthCheck),
    create_system_error_event(SystemError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decimal;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn fills_metadata_for_a_price() {
        let e = create_price_updated_event(
            PriceUpdated {
                token: "USDT".into(),
                chain_id: 1,
                price: d("1.0000"),
                price_usd: d("1.0000"),
                change24h: d("0.0001"),
                volume24h: d("1000000"),
            },
            EventOptions::default(),
        )
        .unwrap();
        assert_eq!(e.metadata.event_type, EventType::PriceUpdated);
        assert_eq!(e.metadata.data_classification, DataClassification::Public);
        assert_eq!(e.metadata.partition, "prices");
        assert_eq!(e.metadata.event_id.get_version_num(), 7);
        assert!(e.metadata.user_id.is_none());
    }

    #[test]
    fn takes_the_owner_from_the_data() {
        let e = create_order_created_event(
            OrderCreated {
                order_id: "order-123".into(),
                user_id: "user-456".into(),
                token_in: "ETH".into(),
                token_out: "USDT".into(),
                amount_in: d("1.0"),
                amount_out_expected: d("3000.0"),
                chain_id: 1,
                order_type: OrderType::Market,
                status: OrderStatus::Pending,
                limit_price: None,
            },
            EventOptions::default(),
        )
        .unwrap();
        assert_eq!(e.metadata.user_id.as_deref(), Some("user-456"));
        assert_eq!(e.metadata.partition, "user-456");
        assert_eq!(e.metadata.data_classification, DataClassification::Confidential);
    }

    #[test]
    fn refuses_a_downgrade_and_lists_every_error() {
        let f = EventFactory::default();
        let errs = f
            .create_from_json(
                &EventType::OrderCreated,
                serde_json::json!({"orderId": "", "tokenIn": "ETH"}),
                EventOptions { classification: Some(DataClassification::Public), ..Default::default() },
            )
            .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"/metadata/dataClassification"), "{paths:?}");
        assert!(paths.contains(&"/metadata/userId"), "{paths:?}");
        assert!(paths.contains(&"/data/orderId"), "{paths:?}");
        assert!(paths.contains(&"/data/amountIn"), "{paths:?}");
        assert!(errs.len() >= 8, "{errs}");
    }
}
