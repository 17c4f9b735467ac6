//! The WebSocket side: protocol v1 (`protocol`), authentication (`auth`),
//! the fan-out hub that decides who receives what (`hub`), and one task per
//! connection (`session`) over its WebSocket wire (`socket`, with
//! permessage-deflate); who had their sessions revoked (`revocation`).

pub mod audience;
pub mod auth;
pub mod dedup;
pub mod entitlement;
pub mod frame;
pub mod hub;
pub mod prices;
pub mod protocol;
pub mod revocation;
pub mod resume;
pub mod session;
pub mod socket;

pub use hub::{Hub, HubSettings};

/// Where a routed event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub channel: Channel,
    pub audience: Audience,
}

use serde::Serialize;

/// The channels of protocol v1. Private channels carry no user id: the
/// server scopes them to the authenticated user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Prices,
    Orders,
    Portfolio,
    Trades,
    System,
}

impl Channel {
    pub const ALL: [Channel; 5] = [Channel::Prices, Channel::Orders, Channel::Portfolio, Channel::Trades, Channel::System];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Prices => "prices",
            Channel::Orders => "orders",
            Channel::Portfolio => "portfolio",
            Channel::Trades => "trades",
            Channel::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Who may subscribe.
    pub fn access(self) -> Access {
        match self {
            Channel::Prices => Access::Anyone,
            Channel::Orders | Channel::Portfolio | Channel::Trades => Access::Authenticated,
            Channel::System => Access::Admin,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Anyone,
    Authenticated,
    Admin,
}

/// Who a routed event is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Audience {
    /// Every subscriber of the channel (public events only).
    Everyone,
    /// Connections authenticated as this user.
    User(String),
    /// Connections with the `admin` role.
    Operators,
}
