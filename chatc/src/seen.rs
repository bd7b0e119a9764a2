//! The ids of messages already shown.
//!
//! The server delivers at least once (PROTOCOL.md §6): a message whose
//! confirmation was lost comes again at the next login with the same id, and
//! the person should see it only once. The set is bounded so that a client
//! left running for months does not grow without end.

use std::collections::{HashSet, VecDeque};

use chatcore::MessageId;

/// How many ids are remembered: far more than any redelivery can span.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// A bounded set of shown ids; the oldest shown are forgotten first.
#[derive(Debug)]
pub struct SeenIds {
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
    capacity: usize,
}

impl SeenIds {
    /// A set remembering at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        SeenIds {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `id`; returns false when it was already shown.
    pub fn first_time(&mut self, id: MessageId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

impl Default for SeenIds {
    fn default() -> Self {
        SeenIds::new(DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_dropped_and_old_ids_forgotten() {
        let mut s = SeenIds::new(2);
        assert!(s.first_time(1));
        assert!(!s.first_time(1));
        assert!(s.first_time(2));
        assert!(s.first_time(3)); // forgets 1
        assert!(!s.first_time(3));
        assert!(!s.first_time(2));
        assert!(s.first_time(1));
    }
}
