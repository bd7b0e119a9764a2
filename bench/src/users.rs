//! Accounts for the benchmarks: generated users files, plain or argon2id.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

/// One account: its name, its password, and what the users file stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The user name.
    pub user: String,
    /// The password the client types.
    pub password: String,
    /// The users-file credential: the password itself or a PHC string.
    pub stored: String,
}

/// The password of a generated account: derived from its name, so a cached
/// hash file needs no passwords.
pub fn password_of(user: &str) -> String {
    format!("pw-{user}")
}

/// `n` accounts `<prefix>00000`, `<prefix>00001`, ... with plain-text
/// passwords.
pub fn plain(prefix: &str, n: usize) -> Vec<Account> {
    (0..n)
        .map(|i| {
            let user = format!("{prefix}{i:05}");
            let password = password_of(&user);
            Account {
                stored: password.clone(),
                user,
                password,
            }
        })
        .collect()
}

/// Hashes `password` into an argon2id PHC string with `params`.
pub fn hash_phc(password: &str, params: Params) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

/// Verifies `password` against a PHC string with the parameters it names.
pub fn verify_phc(phc: &str, password: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

/// One account hashed with the cheapest argon2id parameters (8 KiB, t=1).
///
/// chatd runs a dummy argon2 check for plain-text accounts too (so timing
/// does not tell how a password is stored), with the parameters most hashed
/// accounts use, or argon2's defaults when none is hashed. Adding this
/// account to a file of plain-text ones makes that dummy check cheap, so
/// thousands of plain-text logins take seconds instead of minutes.
pub fn cheap_params_account() -> Result<Account> {
    let user = "zcheap".to_string();
    let password = password_of(&user);
    let params = Params::new(8, 1, 1, None).map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?;
    Ok(Account {
        stored: hash_phc(&password, params)?,
        user,
        password,
    })
}

/// `n` accounts `<prefix>NNNNN` hashed with argon2id default parameters,
/// computed on `threads` threads. With `cache`, the hashes are read from
/// (or written to) `cache/argon2-<prefix>-<n>.txt` so that later runs skip
/// the hashing.
pub fn argon2_default(
    prefix: &str,
    n: usize,
    threads: usize,
    cache: Option<&Path>,
) -> Result<Vec<Account>> {
    let accounts = plain(prefix, n);
    let file = cache.map(|d| d.join(format!("argon2-{prefix}-{n}.txt")));
    if let Some(file) = &file {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Some(cached) = from_cache(&accounts, &text) {
                return Ok(cached);
            }
        }
    }
    let hashed = hash_all(&accounts, threads)?;
    if let Some(file) = &file {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        std::fs::write(file, users_file(&hashed))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(hashed)
}

fn from_cache(accounts: &[Account], text: &str) -> Option<Vec<Account>> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    if lines.len() != accounts.len() {
        return None;
    }
    let mut out = Vec::with_capacity(accounts.len());
    for (a, line) in accounts.iter().zip(lines) {
        let (user, phc) = line.split_once(' ')?;
        if user != a.user || !phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$") {
            return None;
        }
        out.push(Account {
            stored: phc.to_string(),
            ..a.clone()
        });
    }
    // One spot check that the cache matches the password scheme.
    verify_phc(&out[0].stored, &out[0].password).then_some(out)
}

/// Hashes every account's password with argon2id defaults, in parallel.
pub fn hash_all(accounts: &[Account], threads: usize) -> Result<Vec<Account>> {
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, accounts.len().max(1));
    let mut results: Vec<Option<Result<String>>> = Vec::new();
    results.resize_with(accounts.len(), || None);
    let parts: Vec<Vec<(usize, Result<String>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= accounts.len() {
                            break mine;
                        }
                        mine.push((i, hash_phc(&accounts[i].password, Params::default())));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for (i, r) in parts.into_iter().flatten() {
        results[i] = Some(r);
    }
    accounts
        .iter()
        .zip(results)
        .map(|(a, r)| match r {
            Some(Ok(phc)) => Ok(Account {
                stored: phc,
                ..a.clone()
            }),
            Some(Err(e)) => Err(e),
            None => bail!("hashing thread died"),
        })
        .collect()
}

/// The raw argon2 verification rate: `threads` threads verify the accounts'
/// PHC strings (round robin) for about `duration`, at least once each
/// thread. Returns verifications per second.
pub fn raw_verify_rate(
    accounts: &[Account],
    threads: usize,
    duration: std::time::Duration,
) -> Result<f64> {
    if accounts.is_empty() {
        bail!("no accounts to verify");
    }
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let ok = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut all_ok = true;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let a = &accounts[i % accounts.len()];
                        all_ok &= verify_phc(&a.stored, &a.password);
                        if start.elapsed() >= duration {
                            break all_ok;
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().all(|h| h.join().unwrap_or(false))
    });
    let elapsed = start.elapsed().as_secs_f64();
    if !ok {
        bail!("a generated argon2 hash did not verify");
    }
    Ok(next.load(Ordering::Relaxed) as f64 / elapsed)
}

/// The users file: `<user> <stored>` per line.
pub fn users_file(accounts: &[Account]) -> String {
    let mut s = String::with_capacity(accounts.len() * 24);
    for a in accounts {
        let _ = writeln!(s, "{} {}", a.user, a.stored);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatcore::{Accounts, Credential};

    #[test]
    fn plain_file_parses_with_chatcores_reader() {
        let accounts = plain("u", 3);
        assert_eq!(accounts[2].user, "u00002");
        assert_eq!(accounts[2].password, "pw-u00002");
        let text = users_file(&accounts);
        assert_eq!(text.lines().next(), Some("u00000 pw-u00000"));
        let parsed = Accounts::parse(&text).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(
            parsed
                .get("u00001")
                .and_then(|c| c.verify_plain("pw-u00001")),
            Some(true)
        );
    }

    #[test]
    fn cheap_account_is_an_argon2id_phc_string_that_verifies() {
        let a = cheap_params_account().unwrap();
        assert!(
            a.stored.starts_with("$argon2id$v=19$m=8,t=1,p=1$"),
            "{}",
            a.stored
        );
        assert!(verify_phc(&a.stored, &a.password));
        assert!(!verify_phc(&a.stored, "wrong"));
        let parsed = Accounts::parse(&users_file(&[a])).unwrap();
        assert!(matches!(
            parsed.get("zcheap"),
            Some(Credential::Argon2id(_))
        ));
    }

    #[test]
    fn cache_is_used_only_when_it_matches() {
        let accounts = plain("h", 2);
        // A cheap stand-in for real hashes, in the shape the cache expects.
        let fake: Vec<Account> = accounts
            .iter()
            .map(|a| Account {
                stored: format!("$argon2id$v=19$m=19456,t=2,p=1$x${}", a.user),
                ..a.clone()
            })
            .collect();
        // Wrong number of lines, wrong user, wrong params: refused.
        assert!(from_cache(&accounts, &users_file(&fake[..1])).is_none());
        assert!(from_cache(
            &accounts[..1],
            "h00009 $argon2id$v=19$m=19456,t=2,p=1$x$y\n"
        )
        .is_none());
        assert!(from_cache(&accounts[..1], "h00000 $argon2id$v=19$m=8,t=1,p=1$x$y\n").is_none());
        // Right shape but the hash does not verify: refused too.
        assert!(from_cache(&accounts, &users_file(&fake)).is_none());
    }
}
