//! User names: what the protocol accepts as one.

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
