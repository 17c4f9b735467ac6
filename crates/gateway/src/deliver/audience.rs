//! Who could receive a private event on this instance, asked per record
//! without the hub's lock: the users with an authenticated connection here,
//! and whether any operator (admin identity) is connected. The pipeline of
//! an instance that does not write dead letters asks it to skip records
//! nobody here needs before decoding them (`pipeline::skip`, which argues
//! why no entitled record is skipped).
//!
//! Guarantees, all decided under one read/write lock:
//! - `join` (a user's first authenticated connection) takes the write lock
//!   and happens, in the hub, before any subscription of that connection
//!   can exist; `leave` (their last connection ends) likewise.
//! - [`LocalAudience::skip_if_absent`] checks the key and records the
//!   skipped offset under one read lock, so a skip is either fully before a
//!   `join` (and the joining user's snapshot of skipped offsets includes it)
//!   or after it (and then it saw the user and did not skip).
//! - Skipped offsets are kept per partition in a small table indexed by a
//!   hash of the key (collisions only raise the value), so that a user's
//!   snapshot at `join` ([`SkipMarks::before_join`]) bounds the offsets of
//!   *their* records skipped before they connected, and resume reads those
//!   from Kafka instead of trusting its in-memory window. The highest
//!   skipped offset of each partition ([`SkipMarks::through`]) tells resume
//!   how far this instance has handled the partition, skips included.
//!
//! Cost per skipped record: one uncontended-in-the-common-case read lock,
//! one hash-set probe, one relaxed store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Slots of skipped offsets per partition: 8 KiB each; a key's records land
/// in one slot, so a larger table means fewer users share a bound.
const SLOTS: usize = 1024;
/// A slot no skip has touched.
const NONE: i64 = -1;

/// The skipped offsets of one partition, by key slot.
struct Skipped {
    topic: Box<str>,
    partition: i32,
    /// The highest skipped offset of the partition.
    through: AtomicI64,
    slots: Box<[AtomicI64]>,
}

/// What resume needs to know about the skips of one partition, for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SkipMarks {
    /// The highest offset that may hold a record of the user skipped before
    /// they joined (`None`: none was, or they are not connected).
    pub before_join: Option<i64>,
    /// The highest offset skipped on the partition (`None`: none).
    pub through: Option<i64>,
}

/// A user's skipped-offset bound per partition (its index in `State::partitions`,
/// which only grows, and the offset), taken when they joined: 16 bytes a partition.
type MarksAtJoin = Box<[(u32, i64)]>;

#[derive(Default)]
struct State {
    /// Users with at least one authenticated connection here, each with the
    /// skipped offsets of their slot, per partition, when they joined.
    users: HashMap<Box<[u8]>, MarksAtJoin>,
    partitions: Vec<Skipped>,
}

/// The local audience (see the module comment).
#[derive(Default)]
pub struct LocalAudience {
    state: RwLock<State>,
    /// Connections with an admin identity (they receive internal events).
    operators: AtomicUsize,
}

/// The slot of a key: CRC-32 (hardware-accelerated, already used for partitioning).
fn slot_of(key: &[u8]) -> usize {
    crc32fast::hash(key) as usize % SLOTS
}

impl LocalAudience {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// `user` has an authenticated connection here now (called by the hub
    /// before that connection can subscribe to anything private).
    pub fn join(&self, user: &str) {
        let mut st = self.write();
        let slot = slot_of(user.as_bytes());
        let snapshot = st
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32, p.slots[slot].load(Ordering::Relaxed)))
            .filter(|(_, offset)| *offset != NONE)
            .collect();
        st.users.insert(user.as_bytes().into(), snapshot);
    }

    /// `user`'s last connection here ended.
    pub fn leave(&self, user: &str) {
        self.write().users.remove(user.as_bytes());
    }

    /// An admin connection appeared (`true`) or went (`false`). Taken under
    /// the write lock so that it orders with skips as `join` does.
    pub fn operator(&self, joined: bool) {
        let _order = self.write();
        if joined {
            self.operators.fetch_add(1, Ordering::Relaxed);
        } else {
            self.operators.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn is_connected(&self, user: &str) -> bool {
        self.read().users.contains_key(user.as_bytes())
    }

    /// Skips the record at `topic/partition/offset` with `key` if no user of
    /// that key is connected here (and, when `needs_no_operator`, no operator
    /// either): records the skip and returns `true`. Under one read lock.
    pub fn skip_if_absent(&self, key: &[u8], needs_no_operator: bool, topic: &str, partition: i32, offset: i64) -> bool {
        {
            let st = self.read();
            if st.users.contains_key(key) || (needs_no_operator && self.operators.load(Ordering::Relaxed) > 0) {
                return false;
            }
            if let Some(p) = st.partitions.iter().find(|p| p.partition == partition && &*p.topic == topic) {
                p.slots[slot_of(key)].fetch_max(offset, Ordering::Relaxed);
                p.through.fetch_max(offset, Ordering::Relaxed);
                return true;
            }
        }
        // First skip on this partition: add its table, then decide again
        // (a user may have joined in between).
        {
            let mut st = self.write();
            if !st.partitions.iter().any(|p| p.partition == partition && &*p.topic == topic) {
                st.partitions.push(Skipped {
                    topic: topic.into(),
                    partition,
                    through: AtomicI64::new(NONE),
                    slots: (0..SLOTS).map(|_| AtomicI64::new(NONE)).collect(),
                });
            }
        }
        self.skip_if_absent(key, needs_no_operator, topic, partition, offset)
    }

    /// The skips of `topic/partition` as `user`'s resume sees them: it
    /// replays from Kafka when `since` is below `before_join`, and counts
    /// its live boundary as at least both marks.
    pub fn skip_marks(&self, user: &str, topic: &str, partition: i32) -> SkipMarks {
        let st = self.read();
        let Some(index) = st.partitions.iter().position(|p| p.partition == partition && &*p.topic == topic) else {
            return SkipMarks::default();
        };
        let before_join = st
            .users
            .get(user.as_bytes())
            .and_then(|marks| marks.iter().find(|(i, _)| *i as usize == index))
            .map(|(_, offset)| *offset);
        let through = Some(st.partitions[index].through.load(Ordering::Relaxed)).filter(|offset| *offset != NONE);
        SkipMarks { before_join, through }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_only_the_absent_and_remembers_it_for_the_user_who_joins() {
        let a = LocalAudience::default();
        a.join("alice");
        assert!(!a.skip_if_absent(b"alice", false, "t", 0, 5), "alice is here");
        assert!(a.skip_if_absent(b"bob", false, "t", 0, 6));
        assert!(a.skip_if_absent(b"bob", false, "t", 0, 9));
        assert!(a.skip_if_absent(b"carol", false, "t", 1, 3));
        assert_eq!(a.skip_marks("bob", "t", 0), SkipMarks { before_join: None, through: Some(9) }, "bob has not joined");
        a.join("bob");
        assert!(!a.skip_if_absent(b"bob", false, "t", 0, 10), "bob is here now");
        assert_eq!(a.skip_marks("bob", "t", 0).before_join, Some(9));
        assert_eq!(a.skip_marks("alice", "t", 0).before_join, None, "nothing skipped before alice joined");
        a.leave("bob");
        assert!(a.skip_if_absent(b"bob", false, "t", 0, 11));
        a.operator(true);
        assert!(!a.skip_if_absent(b"dave", true, "t", 0, 12), "an operator may receive it");
        assert!(a.skip_if_absent(b"dave", false, "t", 0, 12));
        a.operator(false);
        assert!(a.skip_if_absent(b"dave", true, "t", 0, 13));
    }

    /// The hub keeps the audience in step with identities: a user from their
    /// first authenticated connection to their last, an operator per admin
    /// connection.
    #[test]
    fn the_hub_maintains_it() {
        use crate::deliver::auth::Identity;
        use crate::deliver::{Hub, HubSettings};
        let hub = Hub::new(HubSettings::default(), std::sync::Arc::new(crate::telemetry::Metrics::new()));
        let audience = hub.local_audience();
        let who = |user: &str, admin: bool| Some(Identity { user_id: user.into(), admin, expires_at_ms: u64::MAX / 2, issued_at_secs: None });
        let (a1, a2, ops) = (hub.register().unwrap(), hub.register().unwrap(), hub.register().unwrap());
        let absent = |user: &[u8], operators_too: bool| audience.skip_if_absent(user, operators_too, "t", 0, 1);
        assert!(absent(b"alice", true));
        hub.set_identity(a1.id, who("alice", false)).unwrap();
        hub.set_identity(a2.id, who("alice", false)).unwrap();
        assert!(!absent(b"alice", false));
        hub.unregister(a1.id, "client closed");
        assert!(!absent(b"alice", false), "alice still has a connection");
        hub.set_identity(a2.id, who("bob", false)).unwrap();
        assert!(absent(b"alice", false) && !absent(b"bob", false), "the connection became bob's");
        hub.set_identity(a2.id, None).unwrap();
        assert!(absent(b"bob", false), "an expired identity leaves");
        hub.set_identity(ops.id, who("root", true)).unwrap();
        assert!(!absent(b"carol", true) && absent(b"carol", false), "an operator may receive presence events");
        hub.set_identity(ops.id, who("root", false)).unwrap();
        assert!(absent(b"carol", true), "no longer an admin");
        hub.set_identity(ops.id, who("root", true)).unwrap();
        hub.unregister(ops.id, "client closed");
        assert!(absent(b"carol", true) && absent(b"root", false), "the operator left");
    }
}
