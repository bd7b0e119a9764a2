//! Flood control: a token bucket per session that delays commands, in
//! order, rather than dropping them.

use crate::config::FloodLimit;
use crate::time::Time;

/// Tokens are counted in thousandths so that refill needs no floats.
const TOKEN: u64 = 1000;

#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    level: u64,
    at: Time,
}

impl Bucket {
    /// A full bucket: a session may send `burst` commands at once.
    pub(crate) fn full(now: Time, limit: &FloodLimit) -> Self {
        Bucket {
            level: u64::from(limit.burst) * TOKEN,
            at: now,
        }
    }

    fn refill(&mut self, now: Time, limit: &FloodLimit) {
        let elapsed = now.unix_millis().saturating_sub(self.at.unix_millis());
        let cap = u64::from(limit.burst.max(1)) * TOKEN;
        // `per_second` tokens a second is `per_second` thousandths a millisecond.
        let gained = elapsed.saturating_mul(u64::from(limit.per_second));
        self.level = self.level.saturating_add(gained).min(cap);
        self.at = self.at.max(now);
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Time, limit: &FloodLimit) -> bool {
        self.refill(now, limit);
        if self.level >= TOKEN {
            self.level -= TOKEN;
            true
        } else {
            false
        }
    }

    /// When the next token will be there.
    pub(crate) fn next_token(&self, limit: &FloodLimit) -> Time {
        if self.level >= TOKEN {
            return self.at;
        }
        let missing = TOKEN - self.level;
        let per_ms = u64::from(limit.per_second.max(1));
        Time::from_unix_millis(self.at.unix_millis() + missing.div_ceil(per_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let limit = FloodLimit {
            burst: 3,
            per_second: 2,
            backlog: 10,
        };
        let t0 = Time::from_unix_secs(100);
        let mut b = Bucket::full(t0, &limit);
        assert!((0..3).all(|_| b.take(t0, &limit)));
        assert!(!b.take(t0, &limit));
        assert_eq!(
            b.next_token(&limit),
            t0 + std::time::Duration::from_millis(500)
        );
        assert!(!b.take(t0 + std::time::Duration::from_millis(499), &limit));
        assert!(b.take(t0 + std::time::Duration::from_millis(500), &limit));
        // A long pause refills only up to the burst.
        let later = t0 + std::time::Duration::from_secs(3600);
        assert!((0..3).all(|_| b.take(later, &limit)));
        assert!(!b.take(later, &limit));
    }
}
