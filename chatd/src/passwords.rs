//! Password verification (argon2id) and `chatd hash-password`.
//!
//! argon2 is deliberately slow and memory-hard: a check with the default
//! parameters fills 19 MiB. Checks run on `password_check_concurrency`
//! threads started once, each keeping its argon2 working memory from one
//! check to the next, fed through a bounded queue that the core's tasks
//! wait on asynchronously. A login storm therefore uses at most that many
//! threads, never stalls message routing on the core task, and leaves the
//! resident set at that many buffers. Running each check on tokio's
//! blocking pool instead let every pool thread's allocator arena keep its
//! own freed 19 MiB: hundreds of MiB after a few hundred logins, for good.
//!
//! Every check costs the same argon2 work, whatever the account: unknown
//! names and plain-text credentials are run against a dummy argon2id hash
//! ([`Accounts::dummy_credential`]: the largest parameters the accounts
//! use, parsed once at startup) and then the real answer is used, so
//! response timing does not tell which names exist or how their passwords
//! are stored. When the users file is read again
//! ([`PasswordChecker::set_accounts`]) the dummy is made anew, so its cost
//! keeps following the accounts.

use std::io::{BufRead, Write};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};
use chatcore::{Accounts, Credential};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

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
    /// A password-check thread could not be started.
    #[error("cannot start a password-check thread")]
    Spawn(#[source] std::io::Error),
}

/// An argon2id hash taken apart: what a check needs to compute it again
/// and compare.
#[derive(Clone, Debug)]
struct Argon2Hash {
    version: Version,
    params: Params,
    salt: Vec<u8>,
    output: Output,
}

impl Argon2Hash {
    /// Parses an argon2id PHC string, refusing anything a check could not
    /// use (so that a broken hash is found at startup, not at login).
    fn parse(phc: &str) -> Result<Argon2Hash, String> {
        let hash = PasswordHash::new(phc).map_err(|e| e.to_string())?;
        if hash.algorithm != Algorithm::Argon2id.ident() {
            return Err(format!("algorithm `{}` is not argon2id", hash.algorithm));
        }
        // No `v=` means 0x13, as for the argon2 crate's own verifier.
        let version = hash
            .version
            .map(Version::try_from)
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let params = Params::try_from(&hash).map_err(|e| e.to_string())?;
        let salt = hash.salt.ok_or("no salt")?;
        let mut buf = [0u8; 64];
        let salt = salt.decode_b64(&mut buf).map_err(|e| e.to_string())?;
        if salt.len() < argon2::MIN_SALT_LEN {
            return Err(format!(
                "the salt is {} bytes, argon2 needs at least {}",
                salt.len(),
                argon2::MIN_SALT_LEN
            ));
        }
        let output = hash.hash.ok_or("no hash output")?;
        Ok(Argon2Hash {
            version,
            params,
            salt: salt.to_vec(),
            output,
        })
    }

    /// The accounts' [`Accounts::dummy_credential`], parsed: checking
    /// against it costs what checking the dearest account costs.
    ///
    /// chatcore builds it from the accounts' own parameters, which
    /// [`check_accounts`] found usable, so it parses; should it ever not,
    /// argon2's default parameters stand in rather than failing a login.
    fn dummy(accounts: &Accounts) -> Argon2Hash {
        let parsed = match accounts.dummy_credential() {
            Credential::Argon2id(phc) => Argon2Hash::parse(&phc),
            Credential::Plain(_) => Err("not a hash".to_string()),
        };
        parsed.unwrap_or_else(|e| {
            tracing::error!("the dummy credential is unusable ({e}); using argon2's defaults");
            Argon2Hash::dummy_with(Params::default())
        })
    }

    /// A dummy with `params`, for when the accounts' one cannot be used.
    fn dummy_with(params: Params) -> Argon2Hash {
        Argon2Hash {
            version: Version::V0x13,
            params,
            salt: b"chatd-dummy-salt".to_vec(),
            output: Output::new(&[0; 32]).expect("32 bytes is a valid output length"),
        }
    }
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
                Argon2Hash::parse(phc).map_err(|reason| PasswordError::BadHash {
                    user: user.to_string(),
                    reason,
                })?;
                summary.hashed += 1;
            }
        }
    }
    Ok(summary)
}

/// One thread's argon2 verifier: the working memory it keeps from check to
/// check, and the dummy hash for credentials that have none.
#[derive(Debug)]
pub struct Verifier {
    /// Grown to the largest `m_cost` checked so far and never shrunk, so
    /// that a check allocates nothing: a thread's memory is bounded by the
    /// largest `m_cost` in the users file (the dummy's is that one).
    blocks: Vec<Block>,
    dummy: Arc<Argon2Hash>,
    /// argon2 computations run, for tests of the equal-cost rule.
    runs: u64,
}

impl Verifier {
    fn new(dummy: Arc<Argon2Hash>) -> Verifier {
        Verifier {
            blocks: Vec::new(),
            dummy,
            runs: 0,
        }
    }

    /// Verifies `password` against `credential` with one argon2
    /// computation whatever the credential is (see the module docs).
    /// Blocking and slow.
    pub fn verify(&mut self, credential: Option<&Credential>, password: &str) -> bool {
        let dummy = Arc::clone(&self.dummy);
        match credential {
            Some(Credential::Argon2id(phc)) => match Argon2Hash::parse(phc) {
                Ok(hash) => self.matches(&hash, password),
                // Refused at startup; if one slips through, same cost, no.
                Err(_) => {
                    self.matches(&dummy, password);
                    false
                }
            },
            Some(plain @ Credential::Plain(_)) => {
                self.matches(&dummy, password);
                plain.verify_plain(password).unwrap_or(false)
            }
            None => {
                self.matches(&dummy, password);
                false
            }
        }
    }

    /// Computes `password`'s hash with `hash`'s parameters and salt in the
    /// kept memory and compares it with `hash`'s output in constant time
    /// (`Output`'s equality is constant-time).
    fn matches(&mut self, hash: &Argon2Hash, password: &str) -> bool {
        self.runs += 1;
        let need = hash.params.block_count();
        if self.blocks.len() < need {
            // Exactly `need` (a `resize` could double the capacity), and
            // the old memory freed before the new is allocated.
            self.blocks = Vec::new();
            self.blocks = vec![Block::new(); need];
        }
        let mut out = [0u8; Output::MAX_LENGTH];
        let out = &mut out[..hash.output.len()];
        let argon2 = Argon2::new(Algorithm::Argon2id, hash.version, hash.params.clone());
        if let Err(e) = argon2.hash_password_into_with_memory(
            password.as_bytes(),
            &hash.salt,
            out,
            &mut self.blocks[..need],
        ) {
            // A password argon2 cannot take (over 4 GiB): no match.
            tracing::debug!("argon2 refused a check: {e}");
            return false;
        }
        Output::new(out).is_ok_and(|computed| computed == hash.output)
    }
}

/// Verifies `password` against one PHC string with memory of its own: for
/// one-off checks. The server uses [`PasswordChecker`].
pub fn verify_phc(phc: &str, password: &str) -> bool {
    let dummy = Arc::new(Argon2Hash::dummy_with(Params::default()));
    Verifier::new(dummy).verify(Some(&Credential::Argon2id(phc.to_string())), password)
}

/// One password to check, and where the answer goes.
struct Job {
    credential: Option<Credential>,
    /// The dummy in force when the check was asked for.
    dummy: Arc<Argon2Hash>,
    password: String,
    answer: oneshot::Sender<bool>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

/// Runs password checks on a fixed set of threads (see the module docs).
/// Clones share the threads; they end when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct PasswordChecker {
    jobs: mpsc::Sender<Job>,
    /// Shared by the clones, so that [`PasswordChecker::set_accounts`] on
    /// one applies to all.
    dummy: Arc<Mutex<Arc<Argon2Hash>>>,
}

impl PasswordChecker {
    /// Makes the dummy hash (with the largest parameters the accounts use)
    /// and starts `concurrency` check threads. Their argon2 memory is
    /// allocated at each one's first check.
    pub fn new(accounts: &Accounts, concurrency: usize) -> Result<Self, PasswordError> {
        let dummy = Arc::new(Argon2Hash::dummy(accounts));
        let n = concurrency.max(1);
        // As many waiting as running: enough to keep every thread busy;
        // further checks wait in `check`, asynchronously.
        let (jobs, queue) = mpsc::channel(n);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..n {
            let queue = Arc::clone(&queue);
            let verifier = Verifier::new(Arc::clone(&dummy));
            std::thread::Builder::new()
                .name(format!("chatd-argon2-{i}"))
                .spawn(move || check_thread(&queue, verifier))
                .map_err(PasswordError::Spawn)?;
        }
        Ok(PasswordChecker {
            jobs,
            dummy: Arc::new(Mutex::new(dummy)),
        })
    }

    /// Makes the dummy hash anew for these accounts (the users file was
    /// read again): checks asked for from now on cost what checking the
    /// accounts now in force costs.
    pub fn set_accounts(&self, accounts: &Accounts) {
        let dummy = Arc::new(Argon2Hash::dummy(accounts));
        *self.dummy.lock().unwrap_or_else(PoisonError::into_inner) = dummy;
    }

    fn current_dummy(&self) -> Arc<Argon2Hash> {
        Arc::clone(&self.dummy.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Verifies one password: queues it (waiting, without blocking the
    /// caller's thread, while the queue is full) and waits for a check
    /// thread's answer. A check that cannot run (the threads are gone, one
    /// panicked) answers `false`: failing closed.
    pub async fn check(&self, credential: Option<Credential>, password: String) -> bool {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            credential,
            dummy: self.current_dummy(),
            password,
            answer,
        };
        if self.jobs.send(job).await.is_err() {
            tracing::error!("password check failed to run: the check threads are gone");
            return false;
        }
        answered.await.unwrap_or_else(|_| {
            tracing::error!("password check failed to run");
            false
        })
    }
}

/// A check thread: takes jobs until every [`PasswordChecker`] is dropped.
fn check_thread(queue: &Mutex<mpsc::Receiver<Job>>, mut verifier: Verifier) {
    loop {
        // One idle thread waits on the queue, the others on the lock.
        let job = queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .blocking_recv();
        let Some(job) = job else { return };
        if job.answer.is_closed() {
            continue; // nobody waits for this answer any more
        }
        let Job {
            credential,
            dummy,
            password,
            answer,
        } = job;
        verifier.dummy = dummy;
        let ok = std::panic::catch_unwind(AssertUnwindSafe(|| {
            verifier.verify(credential.as_ref(), &password)
        }))
        .unwrap_or_else(|_| {
            tracing::error!("a password check panicked; answering no");
            false
        });
        let _ = answer.send(ok);
    }
}

/// A bad password on `hash-password`'s stdin: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadPassword(pub String);

/// `chatd hash-password`: one password line from `input`, its argon2id PHC
/// string to `output`.
pub fn hash_password_cmd(mut input: impl BufRead, mut output: impl Write) -> anyhow::Result<()> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line
        .strip_suffix('\n')
        .unwrap_or(&line)
        .trim_end_matches('\r');
    if password.is_empty() {
        return Err(BadPassword("hash-password: no password on stdin".into()).into());
    }
    if password != password.trim() {
        return Err(BadPassword(
            "hash-password: the users file cannot keep blanks around a password".into(),
        )
        .into());
    }
    if password.chars().any(char::is_control) {
        return Err(
            BadPassword("hash-password: the password holds a control character".into()).into(),
        );
    }
    let phc = hash_password(password)?;
    writeln!(output, "{phc}")
        .and_then(|()| output.flush())
        .context("cannot write to stdout")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordVerifier;

    /// Cheap parameters so that debug-build tests stay fast.
    fn cheap() -> Params {
        Params::new(256, 1, 1, None).unwrap()
    }

    fn verifier(params: Params) -> Verifier {
        Verifier::new(Arc::new(Argon2Hash::dummy_with(params)))
    }

    #[test]
    fn hash_password_output_verifies() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        // The users-file parser accepts it.
        let accounts = Accounts::parse(&format!("alice {phc}\n")).unwrap();
        assert_eq!(check_accounts(&accounts).unwrap().hashed, 1);
        let cred = accounts.get("alice").cloned();
        let mut v = verifier(cheap());
        assert!(v.verify(cred.as_ref(), "correct horse"));
        assert!(!v.verify(cred.as_ref(), "correct horsE"));
        assert!(verify_phc(&phc, "correct horse"));
        // Two hashes of one password differ (random salt).
        assert_ne!(phc, hash_password("correct horse").unwrap());
    }

    /// The hand-made check (kept memory, constant-time compare) agrees
    /// with the argon2 crate's own verifier on every kind of PHC string.
    #[test]
    fn agrees_with_argon2s_own_verifier() {
        let mut v = verifier(cheap());
        for (version, m, t, p, len) in [
            (Version::V0x13, 8, 1, 1, 32),
            (Version::V0x13, 256, 2, 1, 10),
            (Version::V0x13, 512, 1, 4, 64),
            (Version::V0x10, 64, 3, 2, 16),
        ] {
            let params = Params::new(m, t, p, Some(len)).unwrap();
            let salt = SaltString::generate(&mut OsRng);
            let phc = Argon2::new(Algorithm::Argon2id, version, params)
                .hash_password(b"pw", &salt)
                .unwrap()
                .to_string();
            let parsed = PasswordHash::new(&phc).unwrap();
            let cred = Credential::Argon2id(phc.clone());
            for pw in ["pw", "pW", "", "pw "] {
                let theirs = Argon2::default()
                    .verify_password(pw.as_bytes(), &parsed)
                    .is_ok();
                assert_eq!(v.verify(Some(&cred), pw), theirs, "{phc} {pw:?}");
                assert_eq!(theirs, pw == "pw");
            }
        }
    }

    #[test]
    fn memory_grows_to_the_largest_m_cost_and_is_kept() {
        let mut v = verifier(cheap());
        assert!(v.blocks.is_empty(), "allocated at the first check");
        let small = hash_with("pw", cheap()).unwrap();
        let big = hash_with("pw", Params::new(1024, 1, 1, None).unwrap()).unwrap();
        assert!(v.verify(Some(&Credential::Argon2id(small.clone())), "pw"));
        assert_eq!(v.blocks.len(), 256);
        let ptr = v.blocks.as_ptr();
        assert!(!v.verify(Some(&Credential::Argon2id(small.clone())), "no"));
        assert_eq!(v.blocks.as_ptr(), ptr, "the same memory, not a new one");
        assert!(v.verify(Some(&Credential::Argon2id(big)), "pw"));
        assert_eq!(v.blocks.len(), 1024);
        assert!(v.verify(Some(&Credential::Argon2id(small)), "pw"));
        assert_eq!(v.blocks.len(), 1024, "never shrunk");
    }

    #[test]
    fn plain_and_unknown_cost_a_dummy_check_and_answer_right() {
        let mut v = verifier(cheap());
        let plain = Credential::Plain("pw".into());
        assert!(v.verify(Some(&plain), "pw"));
        assert!(!v.verify(Some(&plain), "x"));
        assert!(!v.verify(None, "pw"));
        let hashed = Credential::Argon2id(hash_with("pw", cheap()).unwrap());
        assert!(v.verify(Some(&hashed), "pw"));
        // One argon2 computation each, whatever the credential.
        assert_eq!(v.runs, 4);
        // The dummy's check used the dummy's parameters.
        assert_eq!(v.blocks.len(), 256);
    }

    #[test]
    fn unusable_phc_is_named_at_startup() {
        for bad in [
            // Passes chatcore's shape check but is not valid base64 / params.
            "$argon2id$v=19$m=x,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
            // A 4-byte salt: argon2 refuses to hash with it.
            "$argon2id$v=19$m=256,t=1,p=1$c2FsdA$aGFzaGhhc2hoYXNo",
            // Unknown version.
            "$argon2id$v=18$m=256,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
        ] {
            let accounts = Accounts::parse(&format!("alice a\nmallory {bad}\n")).unwrap();
            let e = check_accounts(&accounts).unwrap_err().to_string();
            assert!(e.contains("mallory"), "{bad}: {e}");
        }
    }

    #[test]
    fn summary_lists_plain_accounts() {
        let phc = hash_with("pw", cheap()).unwrap();
        let accounts = Accounts::parse(&format!("bob b\nalice a\ncarol {phc}\n")).unwrap();
        let s = check_accounts(&accounts).unwrap();
        assert_eq!(s.plain, ["alice", "bob"]);
        assert_eq!(s.hashed, 1);
        let p = Argon2Hash::dummy(&accounts).params;
        assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (256, 1, 1));
    }

    /// The dummy is chatcore's `dummy_credential`: the largest parameters
    /// among the accounts (a rarely used dear hash included, so no account
    /// costs more to check than an unknown name), and no password matches.
    #[test]
    fn the_dummy_is_as_dear_as_the_dearest_account_and_matches_nothing() {
        let small = hash_with("pw", cheap()).unwrap();
        let big = hash_with("pw", Params::new(1024, 1, 1, None).unwrap()).unwrap();
        let accounts =
            Accounts::parse(&format!("ann {small}\nbob {small}\ncarol {big}\n")).unwrap();
        let dummy = Argon2Hash::dummy(&accounts);
        let p = &dummy.params;
        assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (1024, 1, 1));
        let mut v = Verifier::new(Arc::new(dummy.clone()));
        for pw in ["", "pw", "chatcore-dummy-s"] {
            assert!(!v.matches(&dummy, pw), "{pw:?}");
        }
        assert_eq!(
            v.blocks.len(),
            1024,
            "checked at the accounts' dearest cost"
        );
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

    /// More checks at once than threads and queue places: the extra ones
    /// wait their turn (on a single-threaded runtime, so a send that
    /// blocked the thread would stall them all) and every answer is right.
    #[tokio::test]
    async fn a_storm_of_checks_is_answered_in_full() {
        let phc = hash_with("pw", cheap()).unwrap();
        let accounts = Accounts::parse(&format!("carol {phc}\n")).unwrap();
        let checker = PasswordChecker::new(&accounts, 2).unwrap();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..40 {
            let checker = checker.clone();
            let cred = accounts.get("carol").cloned();
            let pw = if i % 3 == 0 { "pw" } else { "wrong" };
            set.spawn(async move { (i, checker.check(cred, pw.into()).await) });
        }
        let mut answers = 0;
        while let Some(r) = set.join_next().await {
            let (i, ok) = r.unwrap();
            assert_eq!(ok, i % 3 == 0, "check {i}");
            answers += 1;
        }
        assert_eq!(answers, 40);
    }

    #[tokio::test]
    async fn gone_threads_fail_closed() {
        let accounts = Accounts::parse("alice a\n").unwrap();
        let checker = PasswordChecker::new(&accounts, 1).unwrap();
        // A checker whose queue has no reader: the send fails.
        let (jobs, queue) = mpsc::channel(1);
        drop(queue);
        let orphan = PasswordChecker {
            jobs,
            dummy: Arc::clone(&checker.dummy),
        };
        assert!(
            !orphan
                .check(accounts.get("alice").cloned(), "a".into())
                .await
        );
        assert!(
            checker
                .check(accounts.get("alice").cloned(), "a".into())
                .await
        );
    }

    /// After a reload the dummy has the parameters the new accounts use,
    /// so an unknown name costs what a real account costs again.
    #[tokio::test]
    async fn the_dummy_follows_the_accounts_on_reload() {
        let small = hash_with("pw", cheap()).unwrap();
        let big = hash_with("pw", Params::new(1024, 1, 1, None).unwrap()).unwrap();
        let checker =
            PasswordChecker::new(&Accounts::parse(&format!("carol {small}\n")).unwrap(), 1)
                .unwrap();
        assert_eq!(checker.current_dummy().params.m_cost(), 256);
        let other = checker.clone();
        let accounts = Accounts::parse(&format!("carol {big}\ndave {big}\n")).unwrap();
        other.set_accounts(&accounts);
        assert_eq!(checker.current_dummy().params.m_cost(), 1024);
        // Checks still answer right, with the new dummy for unknown names.
        assert!(!checker.check(None, "pw".into()).await);
        assert!(
            checker
                .check(accounts.get("dave").cloned(), "pw".into())
                .await
        );
    }

    #[test]
    fn hash_password_cmd_prints_a_verifiable_phc() {
        let mut out = Vec::new();
        hash_password_cmd(&b"s3cret pw\r\n"[..], &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        let phc = out.strip_suffix('\n').unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_phc(phc, "s3cret pw"));
        assert!(!verify_phc(phc, "s3cret pw\r"));
    }

    #[test]
    fn hash_password_cmd_refuses_what_the_users_file_cannot_hold() {
        for bad in [&b""[..], b"\n", b" lead\n", b"a\x1bb\n"] {
            let e = hash_password_cmd(bad, Vec::new()).unwrap_err();
            assert!(e.downcast_ref::<BadPassword>().is_some(), "{bad:?}");
        }
    }
}
