//! User names: what the protocol accepts as one, and the hash maps looked
//! up by one.

use std::collections::{HashMap, HashSet};

/// How maps keyed by user name hash: foldhash, seeded per map. Every
/// private message looks its recipient up twice (is it an account, is it
/// online), and SipHash, the standard library's, cost about 150
/// instructions a lookup, a fortieth of a message; foldhash takes a name
/// eight bytes at a time. It does not claim SipHash's resistance to
/// collisions chosen by a peer, which these maps do not need: their names
/// are accounts', from the users file, and a name no account has collides
/// with nothing stored.
pub(crate) type NameHasher = foldhash::fast::RandomState;

/// A map keyed by user name (see [`NameHasher`]).
pub(crate) type NameMap<V> = HashMap<String, V, NameHasher>;

/// A set of user names (see [`NameHasher`]).
pub(crate) type NameSet = HashSet<String, NameHasher>;

/// The longest user name, in bytes.
pub const MAX_USER_NAME: usize = 32;

/// Names that can never be accounts, in any letter case, because
/// `broadcast` uses them as case-insensitive keywords (`broadcast all`,
/// `broadcast user ... message ...`).
pub const RESERVED_NAMES: [&str; 3] = ["all", "user", "message"];

/// Whether `name` is a valid user name: 1–32 of `A-Z a-z 0-9 _ . -`, and not
/// one of the [`RESERVED_NAMES`] in any letter case.
pub fn is_valid_user_name(name: &str) -> bool {
    is_name_syntax(name) && !RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// The character rule alone, without the reserved words.
pub(crate) fn is_name_syntax(name: &str) -> bool {
    (1..=MAX_USER_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        assert!(is_valid_user_name("alice"));
        assert!(is_valid_user_name("A.b_c-9"));
        assert!(is_valid_user_name(&"x".repeat(32)));
        assert!(!is_valid_user_name(&"x".repeat(33)));
        assert!(!is_valid_user_name(""));
        assert!(!is_valid_user_name("al ice"));
        assert!(!is_valid_user_name("é"));
        for r in RESERVED_NAMES {
            assert!(!is_valid_user_name(r));
        }
        // `broadcast user Message message hi` could not be read otherwise.
        assert!(!is_valid_user_name("Message"));
        assert!(is_valid_user_name("messages"));
    }
}
