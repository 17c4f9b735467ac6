//! Type discrimination: a map from event type to handler.
//!
//! A handler turns an event into the routes it takes to clients: a channel
//! and an audience. Built-in handlers cover the 11 types (SPEC section 3);
//! custom types are registered through [`Router::register`]. Whatever a
//! handler returns, [`check_entitlement`] refuses a route that would show an
//! event to someone its classification does not allow.

use crate::deliver::{Audience, Channel};
use moonx_events::registry::RegistryError;
use moonx_events::{CustomType, DataClassification, Event, EventType, TypeRegistry};
use std::collections::HashMap;
use std::sync::Arc;

/// Where a routed event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub channel: Channel,
    pub audience: Audience,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (with backoff, a bounded number of times).
    #[error("transient handler error: {0}")]
    Transient(String),
    /// Retrying cannot help; the record goes to the DLQ.
    #[error("handler error: {0}")]
    Permanent(String),
}

pub type Handler = Arc<dyn Fn(&Event) -> Result<Vec<Route>, HandlerError> + Send + Sync>;

/// The handler map.
#[derive(Clone)]
pub struct Router {
    handlers: HashMap<EventType, Handler>,
    registry: TypeRegistry,
}

impl Default for Router {
    fn default() -> Self {
        Self::with_built_in_handlers()
    }
}

impl Router {
    /// A router with a handler for each of the 11 built-in types.
    pub fn with_built_in_handlers() -> Self {
        let mut handlers: HashMap<EventType, Handler> = HashMap::new();
        for t in EventType::BUILT_IN {
            let channel = built_in_channel(&t).expect("every built-in type has a channel");
            handlers.insert(t, Arc::new(move |e: &Event| Ok(vec![default_route(channel, e)])));
        }
        Router { handlers, registry: TypeRegistry::new() }
    }

    /// Registers a custom type and its handler (or replaces the handler of a
    /// built-in type when `custom` names one).
    pub fn register<F>(&mut self, custom: CustomType, handler: F) -> Result<(), RegistryError>
    where
        F: Fn(&Event) -> Result<Vec<Route>, HandlerError> + Send + Sync + 'static,
    {
        let event_type = EventType::parse(&custom.name);
        if event_type.is_built_in() {
            self.handlers.insert(event_type, Arc::new(handler));
            return Ok(());
        }
        self.registry.register(custom)?;
        self.handlers.insert(event_type, Arc::new(handler));
        Ok(())
    }

    pub fn handler(&self, t: &EventType) -> Option<&Handler> {
        self.handlers.get(t)
    }

    pub fn registry(&self) -> &TypeRegistry {
        &self.registry
    }
}

/// The channel of each built-in type (SPEC section 3).
pub fn built_in_channel(t: &EventType) -> Option<Channel> {
    Some(match t {
        EventType::PriceUpdated => Channel::Prices,
        EventType::OrderCreated | EventType::OrderUpdated | EventType::OrderCancelled => Channel::Orders,
        EventType::PortfolioUpdated => Channel::Portfolio,
        EventType::TradeExecuted | EventType::TradeFailed => Channel::Trades,
        EventType::UserConnected
        | EventType::UserDisconnected
        | EventType::SystemHealthCheck
        | EventType::SystemError => Channel::System,
        EventType::Custom(_) => return None,
    })
}

/// The audience an event's classification allows on a channel: everyone
/// for public, operators for internal, the owner for the rest.
pub fn default_route(channel: Channel, event: &Event) -> Route {
    let audience = match event.metadata.data_classification {
        DataClassification::Public => Audience::Everyone,
        DataClassification::Internal => Audience::Operators,
        DataClassification::Confidential | DataClassification::Restricted => {
            Audience::User(event.metadata.user_id.clone().unwrap_or_default())
        }
    };
    Route { channel, audience }
}

/// Refuses routes wider than the event's classification allows, whatever
/// the handler said: entitlement is the server's, not the handler's.
pub fn check_entitlement(event: &Event, routes: Vec<Route>) -> Result<Vec<Route>, HandlerError> {
    let class = event.metadata.data_classification;
    for r in &routes {
        let allowed = match (&r.audience, class) {
            (Audience::Everyone, DataClassification::Public) => true,
            (Audience::Everyone, _) => false,
            (Audience::Operators, _) => true,
            (Audience::User(u), DataClassification::Public | DataClassification::Internal) => !u.is_empty(),
            (Audience::User(u), _) => !u.is_empty() && event.metadata.user_id.as_deref() == Some(u.as_str()),
        };
        let channel_ok = !(r.channel == Channel::Prices && r.audience != Audience::Everyone)
            && (r.channel == Channel::System) == (r.audience == Audience::Operators);
        if !allowed || !channel_ok {
            return Err(HandlerError::Permanent(format!(
                "route {:?} to {:?} is not allowed for a {class} event",
                r.audience, r.channel
            )));
        }
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonx_events::{EventFactory, EventOptions};
    use serde_json::json;

    fn order() -> Event {
        EventFactory::default()
            .create_from_json(
                &EventType::OrderCreated,
                json!({"orderId":"o1","userId":"u1","tokenIn":"ETH","tokenOut":"USDT","amountIn":"1",
                       "amountOutExpected":"3000","chainId":1,"orderType":"market","status":"pending"}),
                EventOptions::default(),
            )
            .unwrap()
    }

    #[test]
    fn built_in_handlers_route_to_the_owner() {
        let r = Router::default();
        let e = order();
        let routes = r.handler(&e.metadata.event_type).unwrap()(&e).unwrap();
        assert_eq!(routes, vec![Route { channel: Channel::Orders, audience: Audience::User("u1".into()) }]);
    }

    #[test]
    fn a_leaky_route_is_refused() {
        let e = order();
        let leak = vec![Route { channel: Channel::Orders, audience: Audience::Everyone }];
        assert!(check_entitlement(&e, leak).is_err());
        let other_user = vec![Route { channel: Channel::Orders, audience: Audience::User("u2".into()) }];
        assert!(check_entitlement(&e, other_user).is_err());
    }
}
