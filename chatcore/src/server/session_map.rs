//! A map keyed by [`SessionId`], hashed for what those ids are.
//!
//! The core and its driver look a session up by id several times for every
//! line (the session that sent it, the one a message goes to, its queue,
//! its connection), and with the standard library's SipHash those lookups
//! were a tenth of the instructions chatd ran per message. SipHash guards a
//! map against keys chosen to collide; session ids are never chosen by a
//! peer, only counted up by [`Server::open_session`](crate::Server::open_session), so a multiplication that
//! spreads consecutive ids over the table is enough.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::api::SessionId;

/// A `HashMap` from [`SessionId`] with [`SessionIdHasher`].
pub type SessionMap<V> = HashMap<SessionId, V, BuildHasherDefault<SessionIdHasher>>;

/// Hashes a [`SessionId`] by one multiplication (Fibonacci hashing):
/// consecutive ids land in different buckets and differ in the top bits
/// the table compares first. Only for keys no peer chooses.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionIdHasher(u64);

/// 2^64 divided by the golden ratio, odd: multiplying by it is a bijection
/// that carries every bit of an id into the top bits of the hash.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for SessionIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(GOLDEN);
    }

    /// Not used by [`SessionId`], which hashes as one `u64`; any other key
    /// still gets a hash that depends on all of its bytes.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_ids_spread_over_buckets_and_top_bits() {
        let build = BuildHasherDefault::<SessionIdHasher>::default();
        let hashes: Vec<u64> = (1..=1024).map(|n| build.hash_one(SessionId(n))).collect();
        // The low bits pick the bucket: 1024 ids in 1024 buckets, no two
        // alike (the multiplication is a bijection on them).
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        assert_eq!(buckets.len(), 1024);
        // The top 7 bits are what the table compares first: all 128 used.
        let tops: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(tops.len(), 128);
    }

    #[test]
    fn a_map_finds_what_it_holds() {
        let mut map: SessionMap<u64> = SessionMap::default();
        for n in 0..10_000 {
            map.insert(SessionId(n), n * 2);
        }
        assert!((0..10_000).all(|n| map.get(&SessionId(n)) == Some(&(n * 2))));
        assert_eq!(map.get(&SessionId(10_000)), None);
    }
}
