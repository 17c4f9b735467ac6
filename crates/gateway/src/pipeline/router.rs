//! Type discrimination: a map from event type to handler.
//!
//! A handler turns an event into the routes it takes to clients: a channel
//! and an audience. Built-in handlers cover the 11 types (SPEC section 3);
//! custom types are registered through [`Router::register`]. Who may see an
//! event follows its *effective* classification ([`effective_classification`]:
//! the higher of the declared one and the type's minimum), whatever the
//! producer declared and whatever the settings; whatever a handler returns,
//! [`check_entitlement`] refuses a route wider than that allows.

use crate::deliver::{Audience, Channel};
use moonx_events::registry::RegistryError;
use moonx_events::{CustomType, DataClassification, Event, EventRef, EventType, TypeRegistry};
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::deliver::Route;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (with backoff, a bounded number of times).
    #[error("transient handler error: {0}")]
    Transient(String),
    /// Retrying cannot help; the record goes to the DLQ.
    #[error("handler error: {0}")]
    Permanent(String),
    /// The event's classification allows nobody to see it (a confidential
    /// or restricted event that names no owner). Permanent; its own DLQ reason.
    #[error("no possible audience: {0}")]
    NoAudience(String),
}

pub type Handler = Arc<dyn Fn(&Event) -> Result<Vec<Route>, HandlerError> + Send + Sync>;

/// What routes an event type: the server's default rule on the type's own
/// channel (built-in types), or a registered handler.
#[derive(Clone)]
enum Routing {
    Default(Channel),
    Custom(Handler),
}

/// The handler map.
#[derive(Clone)]
pub struct Router {
    handlers: HashMap<EventType, Routing>,
    registry: TypeRegistry,
}

impl Default for Router {
    fn default() -> Self {
        Self::with_built_in_handlers()
    }
}

impl Router {
    /// A router with a handler for each of the 12 built-in types.
    pub fn with_built_in_handlers() -> Self {
        let mut handlers = HashMap::new();
        for t in EventType::BUILT_IN {
            let channel = built_in_channel(&t).expect("every built-in type has a channel");
            handlers.insert(t, Routing::Default(channel));
        }
        Router { handlers, registry: TypeRegistry::new() }
    }

    /// Registers a custom type and its handler (or replaces the handler of a
    /// built-in type when `custom` names one; the built-in type keeps its
    /// minimum classification).
    pub fn register<F>(&mut self, custom: CustomType, handler: F) -> Result<(), RegistryError>
    where
        F: Fn(&Event) -> Result<Vec<Route>, HandlerError> + Send + Sync + 'static,
    {
        let event_type = EventType::parse(&custom.name);
        if !event_type.is_built_in() {
            self.registry.register(custom)?;
        }
        self.handlers.insert(event_type, Routing::Custom(Arc::new(handler)));
        Ok(())
    }

    pub fn has_handler(&self, t: &EventType) -> bool {
        self.handlers.contains_key(t)
    }

    /// Whether `t` is routed by the server's default rule (not a registered
    /// handler), so that its audience follows from its classification alone.
    pub fn uses_default_route(&self, t: &EventType) -> bool {
        matches!(self.handlers.get(t), Some(Routing::Default(_)))
    }

    /// The routes of an event, checked by [`check_entitlement`]; `None` when
    /// no handler is registered for its type. A registered handler gets the
    /// event as an owned [`Event`] (made here, off the built-in hot path).
    pub fn routes(&self, event: &EventRef<'_>) -> Option<Result<Vec<Route>, HandlerError>> {
        let routes = match self.handlers.get(&event.metadata.event_type)? {
            Routing::Default(channel) => default_route(*channel, event, &self.registry).map(|r| vec![r]),
            Routing::Custom(handler) => handler(&event.clone().into_owned()),
        };
        Some(routes.and_then(|routes| check_entitlement(event, routes, &self.registry)))
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
        | EventType::SessionRevoked
        | EventType::SystemHealthCheck
        | EventType::SystemError => Channel::System,
        EventType::Custom(_) => return None,
    })
}

/// The classification that decides who may see an event: the higher of the
/// declared one and the type's minimum (built-in types: SPEC section 3;
/// custom types: their registered default). It does not depend on the
/// producer's honesty nor on `EVENT_VALIDATION_ENABLED`. A type with no
/// known minimum counts as restricted.
pub fn effective_classification(event: &EventRef<'_>, registry: &TypeRegistry) -> DataClassification {
    match registry.default_classification(&event.metadata.event_type) {
        Some(minimum) => event.metadata.data_classification.max(minimum),
        None => DataClassification::Restricted,
    }
}

/// The owner named by `metadata.userId`, if any.
fn owner<'e>(event: &'e EventRef<'_>) -> Option<&'e str> {
    event.metadata.user_id.as_deref().filter(|u| !u.is_empty())
}

/// The widest audience the effective classification allows (SPEC section
/// 5): public → everyone on `channel`; internal → operators on `system`,
/// whatever the type's own channel; confidential/restricted → the owner on
/// `channel` (on `system` that is the owner's admin connections, since only
/// admins subscribe to it).
pub fn default_route(channel: Channel, event: &EventRef<'_>, registry: &TypeRegistry) -> Result<Route, HandlerError> {
    Ok(match effective_classification(event, registry) {
        DataClassification::Public => Route { channel, audience: Audience::Everyone },
        DataClassification::Internal => Route { channel: Channel::System, audience: Audience::Operators },
        c @ (DataClassification::Confidential | DataClassification::Restricted) => match owner(event) {
            Some(u) => Route { channel, audience: Audience::User(u.to_owned()) },
            None => return Err(no_owner(c)),
        },
    })
}

fn no_owner(c: DataClassification) -> HandlerError {
    HandlerError::NoAudience(format!("a {c} event must name its owner in metadata.userId"))
}

/// Whether anyone at all may see the event: `Err(NoAudience)` for a
/// confidential or restricted event without an owner (reachable with
/// validation off, or from a custom type).
pub fn check_audience(event: &EventRef<'_>, registry: &TypeRegistry) -> Result<(), HandlerError> {
    let class = effective_classification(event, registry);
    if class.requires_owner() && owner(event).is_none() {
        return Err(no_owner(class));
    }
    Ok(())
}

/// Refuses routes wider than the event's effective classification allows,
/// whatever the handler said: entitlement is the server's, not the handler's.
/// Public: anyone. Internal: operators (or one user's connections on
/// `system`, which only admins subscribe to). Confidential/restricted: the
/// owner only, on any channel but as that user.
pub fn check_entitlement(event: &EventRef<'_>, routes: Vec<Route>, registry: &TypeRegistry) -> Result<Vec<Route>, HandlerError> {
    check_audience(event, registry)?;
    let class = effective_classification(event, registry);
    for r in &routes {
        let allowed = match &r.audience {
            Audience::Everyone => class == DataClassification::Public,
            Audience::Operators => class <= DataClassification::Internal,
            Audience::User(u) => {
                !u.is_empty()
                    && match class {
                        DataClassification::Public => true,
                        DataClassification::Internal => r.channel == Channel::System,
                        DataClassification::Confidential | DataClassification::Restricted => owner(event) == Some(u.as_str()),
                    }
            }
        };
        // `system` is for operators, never everyone; `Operators` only exists on `system`.
        let channel_ok = match r.channel {
            Channel::System => r.audience != Audience::Everyone,
            _ => r.audience != Audience::Operators,
        };
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
        let routes = r.routes(&EventRef::from(&e)).unwrap().unwrap();
        assert_eq!(routes, vec![Route { channel: Channel::Orders, audience: Audience::User("u1".into()) }]);
    }

    #[test]
    fn a_downgraded_declaration_does_not_widen_the_audience() {
        let r = Router::default();
        let mut e = order();
        e.metadata.data_classification = DataClassification::Public;
        let routes = r.routes(&EventRef::from(&e)).unwrap().unwrap();
        assert_eq!(routes, vec![Route { channel: Channel::Orders, audience: Audience::User("u1".into()) }]);
        e.metadata.user_id = None;
        assert!(matches!(r.routes(&EventRef::from(&e)), Some(Err(HandlerError::NoAudience(_)))));
    }

    #[test]
    fn a_leaky_route_is_refused() {
        let e = order();
        let leak = vec![Route { channel: Channel::Orders, audience: Audience::Everyone }];
        let registry = TypeRegistry::new();
        assert!(check_entitlement(&EventRef::from(&e), leak, &registry).is_err());
        let other_user = vec![Route { channel: Channel::Orders, audience: Audience::User("u2".into()) }];
        assert!(check_entitlement(&EventRef::from(&e), other_user, &registry).is_err());
        let operators = vec![Route { channel: Channel::System, audience: Audience::Operators }];
        assert!(check_entitlement(&EventRef::from(&e), operators, &registry).is_err(), "confidential: the owner only");
    }
}
