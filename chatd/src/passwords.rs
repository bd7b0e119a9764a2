//! Password verification (argon2id) and `chatd hash-password`.
//!
//! argon2 is deliberately slow, so checks run on blocking threads behind a
//! semaphore: a login storm uses at most `password_check_concurrency`
//! threads and never stalls message routing on the core task.
//!
//! Every check costs the same argon2 work, whatever the account: unknown
//! names and plain-text credentials are run against a dummy argon2id hash
//! made once at startup (and then the real answer is used), so response
//! timing does not tell which names exist or how their passwords are stored.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::SaltString;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use chatcore::{Accounts, Credential};
use thiserror::Error;
use tokio::sync::Semaphore;

/// A password or hash that cannot be used.
#[derive(Debug, Error)]
pub enum PasswordError {
    /// An account's PHC string does not parse as argon2id.
    #[error(
        "users file: the password hash of `{user}` is not a usable argon2id PHC string: {reason}"
    )]
    BadHash {
        /// The account.
        user: String,
        /// What the argon2 library said.
        reason: String,
    },
    /// Hashing failed (it does not, short of a broken random source).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Parses an argon2id PHC string and its parameters.
fn parse_argon2id(phc: &str) -> Result<(PasswordHash<'_>, Params), String> {
    let hash = PasswordHash::new(phc).map_err(|e| e.to_string())?;
    if hash.algorithm != Algorithm::Argon2id.ident() {
        return Err(format!("algorithm `{}` is not argon2id", hash.algorithm));
    }
    let params = Params::try_from(&hash).map_err(|e| e.to_string())?;
    if hash.hash.is_none() {
        return Err("no hash output".into());
    }
    Ok((hash, params))
}

/// The argon2id hasher with `params` and the current version.
fn argon2(params: Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes `password` with argon2id default parameters and a random salt,
/// as `chatd hash-password` prints it.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    hash_with(password, Params::default())
}

fn hash_with(password: &str, params: Params) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2(params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// What startup learned about the accounts' credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSummary {
    /// Accounts whose password is stored as plain text, in name order.
    pub plain: Vec<String>,
    /// Accounts with an argon2id hash.
    pub hashed: usize,
}

/// Checks every account's PHC string up front, so that a broken hash is a
/// startup error naming the user rather than a login that can never work.
pub fn check_accounts(accounts: &Accounts) -> Result<CredentialSummary, PasswordError> {
    let mut summary = CredentialSummary {
        plain: Vec::new(),
        hashed: 0,
    };
    for (user, credential) in accounts.iter() {
        match credential {
            Credential::Plain(_) => summary.plain.push(user.to_string()),
            Credential::Argon2id(phc) => {
                parse_argon2id(phc).map_err(|reason| PasswordError::BadHash {
                    user: user.to_string(),
                    reason,
                })?;
                summary.hashed += 1;
            }
        }
    }
    Ok(summary)
}

/// The argon2 parameters most accounts use (the default when none is
/// hashed): the dummy hash uses them so that its cost matches a real check.
fn usual_params(accounts: &Accounts) -> Params {
    let mut counts: HashMap<(u32, u32, u32), usize> = HashMap::new();
    for (_, credential) in accounts.iter() {
        if let Credential::Argon2id(phc) = credential {
            if let Ok((_, p)) = parse_argon2id(phc) {
                *counts
                    .entry((p.m_cost(), p.t_cost(), p.p_cost()))
                    .or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(k, n)| (n, std::cmp::Reverse(k)))
        .and_then(|((m, t, p), _)| Params::new(m, t, p, None).ok())
        .unwrap_or_default()
}

/// Verifies `password` against `credential` with one argon2 computation
/// whatever the credential is (see the module docs). Blocking and slow: run
/// it off the async threads.
pub fn verify_blocking(dummy_phc: &str, credential: Option<&Credential>, password: &str) -> bool {
    let verify = |phc: &str| -> bool {
        match parse_argon2id(phc) {
            Ok((hash, params)) => argon2(params)
                .verify_password(password.as_bytes(), &hash)
                .is_ok(),
            Err(_) => false,
        }
    };
    match credential {
        Some(Credential::Argon2id(phc)) => verify(phc),
        Some(plain @ Credential::Plain(_)) => {
            let _ = verify(dummy_phc);
            plain.verify_plain(password).unwrap_or(false)
        }
        None => {
            let _ = verify(dummy_phc);
            false
        }
    }
}

/// Runs password checks off the event loop, a bounded number at a time.
#[derive(Clone, Debug)]
pub struct PasswordChecker {
    dummy: Arc<str>,
    permits: Arc<Semaphore>,
}

impl PasswordChecker {
    /// Makes the dummy hash (one argon2 computation, with the parameters the
    /// accounts mostly use) and the semaphore of `concurrency` permits.
    pub fn new(accounts: &Accounts, concurrency: usize) -> Result<Self, PasswordError> {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let dummy = hash_with(&secret, usual_params(accounts))?;
        Ok(PasswordChecker {
            dummy: dummy.into(),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        })
    }

    /// Verifies one password: waits for a permit, then runs argon2 on a
    /// blocking thread. A check that cannot run (the runtime is shutting
    /// down, the thread panicked) answers `false`: failing closed.
    pub async fn check(&self, credential: Option<Credential>, password: String) -> bool {
        let Ok(_permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return false;
        };
        let dummy = Arc::clone(&self.dummy);
        tokio::task::spawn_blocking(move || verify_blocking(&dummy, credential.as_ref(), &password))
            .await
            .unwrap_or_else(|e| {
                tracing::error!("password check failed to run: {e}");
                false
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters so that debug-build tests stay fast.
    fn cheap() -> Params {
        Params::new(256, 1, 1, None).unwrap()
    }

    #[test]
    fn hash_password_output_verifies() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        // The users-file parser accepts it.
        let accounts = Accounts::parse(&format!("alice {phc}\n")).unwrap();
        assert_eq!(check_accounts(&accounts).unwrap().hashed, 1);
        let cred = accounts.get("alice").cloned();
        assert!(verify_blocking(&phc, cred.as_ref(), "correct horse"));
        assert!(!verify_blocking(&phc, cred.as_ref(), "correct horsE"));
        // Two hashes of one password differ (random salt).
        assert_ne!(phc, hash_password("correct horse").unwrap());
    }

    #[test]
    fn plain_and_unknown_cost_a_dummy_check_and_answer_right() {
        let dummy = hash_with("x", cheap()).unwrap();
        let plain = Credential::Plain("pw".into());
        assert!(verify_blocking(&dummy, Some(&plain), "pw"));
        assert!(!verify_blocking(&dummy, Some(&plain), "x"));
        // The dummy's own password does not open an unknown account.
        assert!(!verify_blocking(&dummy, None, "x"));
    }

    #[test]
    fn unparsable_phc_is_named_at_startup() {
        // Passes chatcore's shape check but is not valid base64 / params.
        let bad = "$argon2id$v=19$m=x,t=2,p=1$c2FsdHNhbHQ$aGFzaA";
        let accounts = Accounts::parse(&format!("alice a\nmallory {bad}\n")).unwrap();
        let e = check_accounts(&accounts).unwrap_err().to_string();
        assert!(e.contains("mallory"), "{e}");
    }

    #[test]
    fn summary_lists_plain_accounts() {
        let phc = hash_with("pw", cheap()).unwrap();
        let accounts = Accounts::parse(&format!("bob b\nalice a\ncarol {phc}\n")).unwrap();
        let s = check_accounts(&accounts).unwrap();
        assert_eq!(s.plain, ["alice", "bob"]);
        assert_eq!(s.hashed, 1);
        let p = usual_params(&accounts);
        assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (256, 1, 1));
    }

    #[tokio::test]
    async fn checker_runs_checks() {
        let phc = hash_with("pw", cheap()).unwrap();
        let accounts = Accounts::parse(&format!("carol {phc}\nalice a\n")).unwrap();
        let checker = PasswordChecker::new(&accounts, 2).unwrap();
        assert!(
            checker
                .check(accounts.get("carol").cloned(), "pw".into())
                .await
        );
        assert!(
            !checker
                .check(accounts.get("carol").cloned(), "no".into())
                .await
        );
        assert!(
            checker
                .check(accounts.get("alice").cloned(), "a".into())
                .await
        );
        assert!(!checker.check(None, "a".into()).await);
    }
}
