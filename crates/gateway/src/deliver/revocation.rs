//! Revoked users: who had their sessions revoked (`POST /api/sessions/revoke`
//! or a `session.revoked` event), and since when. A token of a revoked user
//! whose `iat` is at or before the revocation, or that has no `iat`, is
//! refused until the revocation window has passed since the revocation
//! (wall-clock, so every instance, including one started later, agrees on
//! when it ends). Memory is bounded: expired entries are dropped as new ones
//! come, and at most [`MAX_REVOKED_USERS`] are remembered (beyond, the
//! oldest revocation is forgotten first, with a warning).

use super::auth::Identity;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;


/// Users remembered as revoked at most (an entry is a user id and two numbers).
pub const MAX_REVOKED_USERS: usize = 100_000;

/// The revoked users of this instance. Not thread-safe on its own: the hub
/// keeps it under its lock, so that a revocation and an authentication
/// cannot interleave.
#[derive(Debug)]
pub struct Revocations {
    window_ms: u64,
    /// user id -> the latest revocation time (ms since the epoch).
    revoked: HashMap<String, u64>,
    /// The same, oldest first: expiry and eviction without a scan.
    by_time: BTreeSet<(u64, String)>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations::new(Duration::from_secs(crate::config::defaults::REVOCATION_WINDOW_SECS))
    }
}

impl Revocations {
    pub fn new(window: Duration) -> Self {
        Revocations { window_ms: window.as_millis().min(u64::MAX as u128) as u64, revoked: HashMap::new(), by_time: BTreeSet::new() }
    }

    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// Remembers that `user_id`'s tokens issued at or before `at_ms` are
    /// refused. Returns `false` when the revocation is already over (older
    /// than the window): nothing is remembered.
    pub fn revoke(&mut self, user_id: &str, at_ms: u64, now_ms: u64) -> bool {
        if at_ms.saturating_add(self.window_ms) <= now_ms {
            return false;
        }
        while let Some((at, _)) = self.by_time.first()
            && at.saturating_add(self.window_ms) <= now_ms
        {
            let (_, user) = self.by_time.pop_first().expect("just seen");
            self.revoked.remove(&user);
        }
        if !self.revoked.contains_key(user_id)
            && self.revoked.len() >= MAX_REVOKED_USERS
            && let Some((_, oldest)) = self.by_time.pop_first()
        {
            tracing::warn!(limit = MAX_REVOKED_USERS, "too many revoked users: the oldest revocation is forgotten");
            self.revoked.remove(&oldest);
        }
        let previous = self.revoked.get(user_id).copied();
        let latest = previous.map_or(at_ms, |p| p.max(at_ms));
        if let Some(p) = previous {
            self.by_time.remove(&(p, user_id.to_owned()));
        }
        self.revoked.insert(user_id.to_owned(), latest);
        self.by_time.insert((latest, user_id.to_owned()));
        true
    }

    /// Whether `identity` falls under a revocation still in force: its user
    /// was revoked and its token was issued at or before that (or says not when).
    pub fn refuses(&self, identity: &Identity, now_ms: u64) -> bool {
        self.revoked_at(&identity.user_id, now_ms)
            .is_some_and(|at| identity.issued_at_secs.is_none_or(|iat| iat.saturating_mul(1000) <= at))
    }

    /// The user's revocation time, while in force.
    pub fn revoked_at(&self, user_id: &str, now_ms: u64) -> Option<u64> {
        self.revoked.get(user_id).copied().filter(|at| at.saturating_add(self.window_ms) > now_ms)
    }

    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str, iat: Option<u64>) -> Identity {
        Identity { user_id: user.into(), admin: false, expires_at_ms: u64::MAX, issued_at_secs: iat }
    }

    #[test]
    fn tokens_issued_before_are_refused_during_the_window_only() {
        let mut r = Revocations::new(Duration::from_secs(60));
        let at = 1_000_000_000;
        assert!(r.revoke("u", at, at));
        assert!(r.refuses(&who("u", Some(at / 1000 - 10)), at + 1));
        assert!(r.refuses(&who("u", Some(at / 1000)), at + 1), "iat at the revocation second");
        assert!(r.refuses(&who("u", None), at + 1), "no iat: refused during the window");
        assert!(!r.refuses(&who("u", Some(at / 1000 + 1)), at + 1), "issued after");
        assert!(!r.refuses(&who("v", None), at + 1), "another user");
        assert!(!r.refuses(&who("u", None), at + 60_000), "the window is over");
        assert!(!r.revoke("w", at, at + 60_000), "an expired revocation is not remembered");
        r.revoke("u", at - 5000, at);
        assert_eq!(r.revoked_at("u", at), Some(at), "the latest revocation wins");
    }

    #[test]
    fn memory_is_bounded() {
        let mut r = Revocations::new(Duration::from_secs(60));
        for i in 0..MAX_REVOKED_USERS + 10 {
            r.revoke(&format!("u{i}"), 1_000_000 + i as u64, 1_000_000);
        }
        assert_eq!(r.len(), MAX_REVOKED_USERS);
        assert!(r.revoked_at("u0", 1_000_000).is_none(), "the oldest went first");
        let later = 1_000_000 + (MAX_REVOKED_USERS as u64 + 10) + 60_000;
        r.revoke("late", later, later);
        assert_eq!(r.len(), 1, "expired entries are dropped");
    }
}
