//! Accounts and the users file ([PROTOCOL.md §10](crate::protocol#10-the-users-file)).

use std::collections::BTreeMap;

use thiserror::Error;

use crate::names::{is_name_syntax, NameSet, RESERVED_NAMES};

/// How an account's password is stored.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Plain text, compared as is.
    Plain(String),
    /// An argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    Argon2id(String),
}

impl std::fmt::Debug for Credential {
    /// Never prints the secret itself, so logs of a `Debug` value stay safe.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Plain(_) => f.write_str("Plain(..)"),
            Credential::Argon2id(_) => f.write_str("Argon2id(..)"),
        }
    }
}

impl Credential {
    /// Whether the password is stored as plain text.
    pub fn is_plain(&self) -> bool {
        matches!(self, Credential::Plain(_))
    }

    /// Compares a plain-text credential with `password` in time that does
    /// not depend on where they differ; `None` for a hashed credential,
    /// which only the driver can verify.
    pub fn verify_plain(&self, password: &str) -> Option<bool> {
        match self {
            Credential::Plain(p) => Some(constant_time_eq(p.as_bytes(), password.as_bytes())),
            Credential::Argon2id(_) => None,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// A line of the users file that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("users file line {line}: {reason}")]
pub struct UsersFileError {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// The accounts the server knows. There is no sign-up: they come from the
/// users file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accounts {
    by_name: BTreeMap<String, Credential>,
    /// The names again, for [`contains`](Self::contains): every private
    /// message checks its recipient, and a search of the ordered map
    /// compares the name with about eight others where a hash lookup
    /// compares it with one.
    names: NameSet,
}

impl Accounts {
    /// No accounts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an account. The name must be a valid user name.
    pub fn insert(&mut self, name: &str, credential: Credential) -> Result<(), UsersFileError> {
        check_name(name).map_err(|reason| UsersFileError { line: 0, reason })?;
        self.by_name.insert(name.to_string(), credential);
        self.names.insert(name.to_string());
        Ok(())
    }

    /// Parses the text of a users file: one `<user> <password>` a line;
    /// blank lines and `#` comments ignored; CRLF, surrounding blanks and a
    /// missing final newline accepted. A password starting with `$argon2id$`
    /// is a PHC string and must look like one.
    pub fn parse(text: &str) -> Result<Accounts, UsersFileError> {
        let mut accounts = Accounts::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            let err = |reason: String| UsersFileError { line, reason };
            let l = raw.strip_suffix('\r').unwrap_or(raw).trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let Some((name, password)) = l.split_once([' ', '\t']) else {
                return Err(err("expected `<user> <password>`".into()));
            };
            let password = password.trim();
            check_name(name).map_err(err)?;
            if crate::wire::has_forbidden_control(password) {
                return Err(err("the password holds a control character".into()));
            }
            let credential = if password.starts_with("$argon2id$") {
                check_phc(password).map_err(err)?;
                Credential::Argon2id(password.to_string())
            } else {
                Credential::Plain(password.to_string())
            };
            if accounts
                .by_name
                .insert(name.to_string(), credential)
                .is_some()
            {
                return Err(err(format!("user `{name}` is listed twice")));
            }
            accounts.names.insert(name.to_string());
        }
        Ok(accounts)
    }

    /// The credential of `name`, if it is an account.
    pub fn get(&self, name: &str) -> Option<&Credential> {
        self.by_name.get(name)
    }

    /// Whether `name` is an account.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Account names in byte order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Accounts with their credentials, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Credential)> {
        self.by_name.iter().map(|(n, c)| (n.as_str(), c))
    }

    /// How many accounts there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// What to verify a password against when the name is no account (a
    /// [`PasswordCheck`](crate::PasswordCheck) whose `credential` is
    /// `None`), so that the answer costs the same argon2 work as for a real
    /// account and timing does not tell which names exist. Verifying
    /// plain-text accounts against it too hides how their passwords are
    /// stored.
    ///
    /// An argon2id PHC string with, for each of `m`, `t` and `p`, the
    /// largest value among the accounts' hashes (so no account costs more
    /// to check than an unknown name), or argon2id's usual `m=19456,t=2,p=1`
    /// when no account is hashed. Its salt and hash are fixed bytes: no
    /// password is known to match it, and the answer for an unknown name is
    /// "no" whatever the verification says.
    ///
    /// The parameters follow the accounts, so a driver that keeps one
    /// (rather than calling this per check) makes it again when the
    /// accounts change.
    pub fn dummy_credential(&self) -> Credential {
        let mut largest: Option<[u32; 3]> = None;
        for phc in self.by_name.values().filter_map(|c| match c {
            Credential::Argon2id(phc) => Some(phc),
            Credential::Plain(_) => None,
        }) {
            let Some(params) = phc_params(phc) else {
                continue;
            };
            let l = largest.get_or_insert(params);
            for (l, p) in l.iter_mut().zip(params) {
                *l = (*l).max(p);
            }
        }
        let [m, t, p] = largest.unwrap_or(DEFAULT_ARGON2_PARAMS);
        Credential::Argon2id(format!(
            "$argon2id$v=19$m={m},t={t},p={p}${DUMMY_SALT_B64}${DUMMY_HASH_B64}"
        ))
    }
}

/// argon2id's usual `m`, `t`, `p` (those of the argon2 crate's default and
/// of `chatd hash-password`).
const DEFAULT_ARGON2_PARAMS: [u32; 3] = [19_456, 2, 1];

/// `chatcore-dummy-s` (16 bytes) in the PHC's unpadded base64.
const DUMMY_SALT_B64: &str = "Y2hhdGNvcmUtZHVtbXktcw";

/// `matches no password, ever. 32 b.` (32 bytes, argon2's usual output
/// length) in the PHC's unpadded base64.
const DUMMY_HASH_B64: &str = "bWF0Y2hlcyBubyBwYXNzd29yZCwgZXZlci4gMzIgYi4";

/// The `m`, `t` and `p` of an argon2id PHC string, if they read as numbers.
fn phc_params(phc: &str) -> Option<[u32; 3]> {
    let params = phc.split('$').nth(3)?;
    if params.split(',').count() != 3 {
        return None;
    }
    let mut out = [0; 3];
    for ((key, value), out) in ["m=", "t=", "p="]
        .iter()
        .zip(params.split(','))
        .zip(&mut out)
    {
        *out = value.strip_prefix(key)?.parse().ok()?;
    }
    Some(out)
}

/// How one set of accounts differs from another: what
/// [`Server::set_accounts`](crate::Server::set_accounts) reports, so that a
/// reload can say what it did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountsChange {
    /// Names that were not accounts before.
    pub added: usize,
    /// Accounts that are gone.
    pub removed: usize,
    /// Accounts whose credential is different.
    pub changed: usize,
}

impl AccountsChange {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == AccountsChange::default()
    }
}

impl Accounts {
    /// What replacing `self` by `new` adds, removes and changes.
    pub fn diff(&self, new: &Accounts) -> AccountsChange {
        let mut change = AccountsChange::default();
        for (name, credential) in new.iter() {
            match self.get(name) {
                None => change.added += 1,
                Some(old) if old != credential => change.changed += 1,
                Some(_) => {}
            }
        }
        change.removed = self.names().filter(|n| !new.contains(n)).count();
        change
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if !is_name_syntax(name) {
        return Err(format!(
            "`{name}` is not a user name (1-32 of A-Z a-z 0-9 _ . -)"
        ));
    }
    if RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(format!("`{name}` is a reserved word, not a user name"));
    }
    Ok(())
}

/// The shape of an argon2id PHC string; the driver's argon2 library checks
/// the rest when it verifies.
fn check_phc(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split('$').collect();
    let ok = parts.len() == 6
        && parts[1] == "argon2id"
        && parts[2].starts_with("v=")
        && parts[3].split(',').count() == 3
        && ["m=", "t=", "p="]
            .iter()
            .zip(parts[3].split(','))
            .all(|(k, v)| v.starts_with(k))
        && !parts[4].is_empty()
        && !parts[5].is_empty();
    if ok {
        Ok(())
    } else {
        Err("malformed argon2id PHC string".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

    #[test]
    fn parses_a_users_file() {
        let text = format!(
            "# accounts\r\nalice secret\r\n\n  bob   two words  \ncarol {PHC}\n\t\nyoda\tdo or do not"
        );
        let a = Accounts::parse(&text).unwrap();
        assert_eq!(a.len(), 4);
        assert_eq!(a.get("alice"), Some(&Credential::Plain("secret".into())));
        assert_eq!(a.get("bob"), Some(&Credential::Plain("two words".into())));
        assert_eq!(a.get("carol"), Some(&Credential::Argon2id(PHC.into())));
        assert_eq!(
            a.get("yoda"),
            Some(&Credential::Plain("do or do not".into()))
        );
        assert_eq!(
            a.names().collect::<Vec<_>>(),
            ["alice", "bob", "carol", "yoda"]
        );
    }

    #[test]
    fn names_the_bad_line() {
        let cases = [
            ("alice secret\nbob\n", 2),
            ("alice secret\nal!ce x\n", 2),
            ("\n\nall x\n", 3),
            ("alice a\nalice b\n", 2),
            ("eve $argon2id$v=19$broken\n", 1),
        ];
        for (text, line) in cases {
            assert_eq!(Accounts::parse(text).unwrap_err().line, line, "{text:?}");
        }
    }

    #[test]
    fn the_dummy_credential_costs_what_the_dearest_account_costs() {
        let salt = "c2FsdHNhbHQ";
        let hash = "aGFzaGhhc2hoYXNoaGFzaA";
        let text = format!(
            "alice pw\n\
             bob $argon2id$v=19$m=65536,t=1,p=1${salt}${hash}\n\
             carol $argon2id$v=19$m=19456,t=4,p=2${salt}${hash}\n"
        );
        let accounts = Accounts::parse(&text).unwrap();
        let dummy = "$argon2id$v=19$m=65536,t=4,p=2\
            $Y2hhdGNvcmUtZHVtbXktcw$bWF0Y2hlcyBubyBwYXNzd29yZCwgZXZlci4gMzIgYi4";
        assert_eq!(
            accounts.dummy_credential(),
            Credential::Argon2id(dummy.into())
        );
        // No hashed account: argon2id's usual defaults.
        let defaults = "$argon2id$v=19$m=19456,t=2,p=1\
            $Y2hhdGNvcmUtZHVtbXktcw$bWF0Y2hlcyBubyBwYXNzd29yZCwgZXZlci4gMzIgYi4";
        for none in [Accounts::new(), Accounts::parse("alice pw\n").unwrap()] {
            assert_eq!(
                none.dummy_credential(),
                Credential::Argon2id(defaults.into())
            );
        }
        // A users file accepts it, so a driver's parser takes it too.
        let Credential::Argon2id(phc) = accounts.dummy_credential() else {
            panic!("not a hash");
        };
        assert!(Accounts::parse(&format!("dummy {phc}\n")).is_ok());
        // Never matches as plain text either.
        assert_eq!(accounts.dummy_credential().verify_plain(&phc), None);
    }

    #[test]
    fn plain_comparison() {
        let c = Credential::Plain("pw".into());
        assert_eq!(c.verify_plain("pw"), Some(true));
        assert_eq!(c.verify_plain("pW"), Some(false));
        assert_eq!(c.verify_plain("pw "), Some(false));
        assert_eq!(c.verify_plain(""), Some(false));
        assert_eq!(Credential::Argon2id(PHC.into()).verify_plain("pw"), None);
        assert_eq!(format!("{c:?}"), "Plain(..)");
    }
}
