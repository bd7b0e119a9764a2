//! The connection limits (`max_connections`, `max_connections_per_ip`):
//! shared between the accept loop, which asks for a place, and the
//! connection tasks, which give it back when they end however they end.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Counts open connections, in total and per address.
#[derive(Debug)]
pub struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One open connection's place in the [`ConnLimiter`]; given back on drop,
/// so a connection task that ends any way (even aborted) frees its place.
#[derive(Debug)]
pub struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl ConnLimiter {
    /// A limiter for `max_total` connections, `max_per_ip` from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            max_total,
            max_per_ip,
            state: Mutex::new(LimiterState::default()),
        })
    }

    /// A place for one more connection from `ip`, if there is one.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnPermit> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let from_ip = s.per_ip.get(&ip).copied().unwrap_or(0);
        if s.total >= self.max_total || from_ip >= self.max_per_ip {
            return None;
        }
        s.total += 1;
        s.per_ip.insert(ip, from_ip + 1);
        Some(ConnPermit {
            limiter: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut s = self
            .limiter
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_per_address_and_in_total() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = l.try_acquire(a).unwrap();
        let _a2 = l.try_acquire(a).unwrap();
        assert!(l.try_acquire(a).is_none(), "per address");
        let _b1 = l.try_acquire(b).unwrap();
        assert!(l.try_acquire(c).is_none(), "in total");
        drop(a1);
        assert_eq!(l.open(), 2);
        let _c1 = l.try_acquire(c).unwrap();
        assert!(l.try_acquire(a).is_none());
    }
}
