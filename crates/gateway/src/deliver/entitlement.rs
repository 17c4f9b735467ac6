//! Who may receive what, now: the one rule, on one clock. The hub applies
//! it to every live delivery, every resume replay and the start of a
//! resume; the session applies it when a client subscribes. So a client is
//! never refused a subscription whose events it would then receive, nor
//! sent an event it could not subscribe to.
//!
//! The rule: `prices` (and any public event) is for anyone; a private
//! channel needs an identity whose token has not expired, and a user's
//! events go only to that user; `system` needs the admin role. Expiry is
//! judged on [`now_ms`] (coarse: tokens expire to the second). Revocation
//! is not judged here: the hub refuses a revoked token at authentication
//! and cuts off the connections it covers, so a revoked identity never
//! reaches this rule. Which audience an event may have at all is the
//! pipeline's classification rule (`pipeline::router`).

use super::auth::Identity;
use super::{Access, Audience, Channel};

/// The clock of every entitlement decision: at most ~10 ms old, read
/// without a system call (the hub reads it once per event).
pub fn now_ms() -> u64 {
    crate::telemetry::coarse_clock::now_ms()
}

/// The identity, while its token is valid at `now_ms`.
pub fn valid(identity: Option<&Identity>, now_ms: u64) -> Option<&Identity> {
    identity.filter(|i| i.expires_at_ms > now_ms)
}

/// Why a subscription is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A private channel, and no valid identity.
    Unauthenticated,
    /// `system`, and the identity is not an admin.
    NotAdmin,
}

/// May `identity` subscribe to `channel` at `now_ms`?
pub fn may_subscribe(identity: Option<&Identity>, channel: Channel, now_ms: u64) -> Result<(), Refusal> {
    match (channel.access(), valid(identity, now_ms)) {
        (Access::Anyone, _) => Ok(()),
        (_, None) => Err(Refusal::Unauthenticated),
        (Access::Admin, Some(i)) if !i.admin => Err(Refusal::NotAdmin),
        _ => Ok(()),
    }
}

/// May `identity` receive an event for `audience` at `now_ms`?
pub fn may_receive(identity: Option<&Identity>, audience: &Audience, now_ms: u64) -> bool {
    match audience {
        Audience::Everyone => true,
        Audience::User(u) => valid(identity, now_ms).is_some_and(|i| &i.user_id == u),
        Audience::Operators => valid(identity, now_ms).is_some_and(|i| i.admin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str, admin: bool, expires_at_ms: u64) -> Identity {
        Identity { user_id: user.into(), admin, expires_at_ms, issued_at_secs: None }
    }

    /// What one may subscribe to, one receives, and the other way round.
    #[test]
    fn subscribing_and_receiving_follow_the_same_rule() {
        let now = 1_000_000;
        let alice = who("alice", false, now + 1);
        let ops = who("ops", true, now + 1);
        let expired = who("alice", true, now);
        let cases: [(Option<&Identity>, Channel, Audience, bool); 8] = [
            (None, Channel::Prices, Audience::Everyone, true),
            (None, Channel::Orders, Audience::User("alice".into()), false),
            (Some(&alice), Channel::Orders, Audience::User("alice".into()), true),
            (Some(&alice), Channel::System, Audience::Operators, false),
            (Some(&ops), Channel::System, Audience::Operators, true),
            (Some(&expired), Channel::Orders, Audience::User("alice".into()), false),
            (Some(&expired), Channel::System, Audience::Operators, false),
            (Some(&expired), Channel::Prices, Audience::Everyone, true),
        ];
        for (identity, channel, audience, allowed) in cases {
            assert_eq!(may_subscribe(identity, channel, now).is_ok(), allowed, "{identity:?} subscribing to {channel:?}");
            assert_eq!(may_receive(identity, &audience, now), allowed, "{identity:?} receiving {audience:?}");
        }
        assert!(!may_receive(Some(&alice), &Audience::User("bob".into()), now), "another user's events");
        assert_eq!(may_subscribe(Some(&alice), Channel::System, now), Err(Refusal::NotAdmin));
        assert_eq!(may_subscribe(Some(&expired), Channel::Orders, now), Err(Refusal::Unauthenticated));
    }
}
