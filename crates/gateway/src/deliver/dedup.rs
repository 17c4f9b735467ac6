//! Per-connection duplicate suppression by `eventId`, in bounded memory:
//! the last `capacity` ids are remembered (a ring plus a set). A Kafka
//! redelivery after a restart arrives within seconds of the original, well
//! inside the window.

use std::collections::{HashSet, VecDeque};

pub struct RecentIds {
    order: VecDeque<u128>,
    seen: HashSet<u128>,
    capacity: usize,
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        RecentIds { order: VecDeque::new(), seen: HashSet::new(), capacity }
    }

    /// `true` the first time an id is offered, `false` for a repeat.
    pub fn first_time(&mut self, id: u128) -> bool {
        if self.capacity == 0 {
            return true;
        }
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
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
        assert!(r.seen.len() <= 2);
    }
}
