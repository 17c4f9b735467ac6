//! Per-connection duplicate suppression by `eventId`, in bounded memory:
//! the last `capacity` ids are remembered (a ring plus a set). A Kafka
//! redelivery after a restart arrives within seconds of the original, well
//! inside the window.

use std::collections::{HashSet, VecDeque};

pub struct RecentIds {
    /// Made at the first id: a connection that never receives an event
    /// (idle, or only replies) holds two words here, not the ring and set.
    window: Option<Box<Window>>,
    capacity: usize,
}

#[derive(Default)]
struct Window {
    order: VecDeque<u128>,
    seen: HashSet<u128>,
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        RecentIds { window: None, capacity }
    }

    /// `true` the first time an id is offered, `false` for a repeat.
    pub fn first_time(&mut self, id: u128) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let w = self.window.get_or_insert_with(Box::default);
        if !w.seen.insert(id) {
            return false;
        }
        w.order.push_back(id);
        if w.order.len() > self.capacity
            && let Some(old) = w.order.pop_front() {
                w.seen.remove(&old);
            }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let mut r = RecentIds::new(2);
        assert!(r.first_time(1));
        assert!(!r.first_time(1));
        assert!(r.first_time(2));
        assert!(r.first_time(3));
        assert!(r.first_time(1), "1 fell out of the window");
        assert!(r.window.as_ref().unwrap().seen.len() <= 2);
    }
}
