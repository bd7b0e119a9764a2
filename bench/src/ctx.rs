//! What every scenario needs: where the servers are, a scratch directory,
//! the options, and how to start chatd and the baseline relay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::client::Kind;
use crate::proc::{ServerProc, Spawn};
use crate::users::{self, Account};

/// Options shared by the scenarios.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Measuring time of one phase.
    pub phase: Duration,
    /// Warm-up before a phase's measurement.
    pub warmup: Duration,
    /// Bytes of message text.
    pub text_bytes: usize,
    /// S1: pairs of the larger case.
    pub s1_pairs: usize,
    /// S2: receiver counts.
    pub s2_receivers: Vec<usize>,
    /// S2: broadcasts in flight at saturation.
    pub s2_window: usize,
    /// S3: idle sessions.
    pub s3_sessions: usize,
    /// S4: accounts in the login storm.
    pub s4_accounts: usize,
    /// S5: held messages of the big box.
    pub s5_messages: usize,
    /// S5: held messages of the small box (memory growth comparison).
    pub s5_small: usize,
    /// S5: longest time filling the boxes may take, per server.
    pub s5_fill_limit: Duration,
}

impl Opts {
    /// The full suite's settings.
    pub fn full() -> Self {
        Opts {
            phase: Duration::from_secs(4),
            warmup: Duration::from_millis(1000),
            text_bytes: 64,
            s1_pairs: 50,
            s2_receivers: vec![100, 1000],
            s2_window: 16,
            s3_sessions: 10_000,
            s4_accounts: 240,
            s5_messages: 100_000,
            s5_small: 10_000,
            s5_fill_limit: Duration::from_secs(180),
        }
    }

    /// A smoke-test size: every scenario in seconds, even in debug builds.
    pub fn quick() -> Self {
        Opts {
            phase: Duration::from_millis(1000),
            warmup: Duration::from_millis(300),
            s1_pairs: 10,
            s2_receivers: vec![20, 100],
            s3_sessions: 500,
            s4_accounts: 16,
            s5_messages: 5_000,
            s5_small: 1_000,
            s5_fill_limit: Duration::from_secs(60),
            ..Opts::full()
        }
    }
}

/// Keys chatd may not know yet; when it refuses one, it is dropped (and the
/// report says so) rather than failing the run.
const OPTIONAL_KEYS: [&str; 8] = [
    "flood_burst",
    "flood_per_second",
    "flood_backlog",
    "persist_deliveries",
    "max_connections",
    "max_connections_per_ip",
    "password_check_concurrency",
    "http_port",
];

/// The run's shared state.
#[derive(Debug)]
pub struct Ctx {
    /// chatd's binary.
    pub chatd: PathBuf,
    /// This binary (it serves the baseline relay too).
    pub self_exe: PathBuf,
    /// Scratch space, removed at the end.
    pub work: PathBuf,
    /// Where generated argon2 hashes are kept between runs.
    pub cache: PathBuf,
    /// Options.
    pub opts: Opts,
    /// Who plays chatd's part: chatd, or (harness self-test) the relay.
    pub chat: Kind,
    /// ngircd, the second reference of S1–S3, when it is on `PATH`.
    pub ngircd: Option<PathBuf>,
    notes: Mutex<Vec<String>>,
    refused: Mutex<Vec<String>>,
    counter: AtomicUsize,
}

/// A chatd configuration: TOML keys and values (values as TOML text).
#[derive(Debug, Clone, Default)]
pub struct ChatdConfig(pub BTreeMap<String, String>);

impl ChatdConfig {
    /// Limits out of the way of a load test: connections, flood control;
    /// and the web listener on a free port, as the CHAT/1 port is, so that
    /// a chatd left over from an earlier run (or another program on 4180)
    /// does not stop this one from starting.
    pub fn load_test() -> Self {
        let mut c = ChatdConfig::default();
        c.set("http_port", "0")
            .set("max_connections", "40000")
            .set("max_connections_per_ip", "40000")
            .set("flood_burst", "1000000")
            .set("flood_per_second", "1000000")
            .set("flood_backlog", "1000000");
        c
    }

    /// Sets one key.
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.0.insert(key.to_string(), value.to_string());
        self
    }

    fn toml(&self, skip: &[String]) -> String {
        self.0
            .iter()
            .filter(|(k, _)| !skip.contains(k))
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    }
}

/// A chatd instance's files, so it can be restarted on the same store.
#[derive(Debug, Clone)]
pub struct ChatdSetup {
    /// For messages.
    pub name: String,
    /// Config, users file and data directory live here.
    pub dir: PathBuf,
    /// The configuration.
    pub config: ChatdConfig,
}

impl Ctx {
    /// Finds chatd and makes the scratch directory.
    pub fn new(chatd: Option<PathBuf>, opts: Opts, self_test: bool) -> Result<Ctx> {
        let self_exe = std::env::current_exe().context("locating the chat-bench binary")?;
        let exe_dir = self_exe
            .parent()
            .ok_or_else(|| anyhow!("the binary has no directory"))?
            .to_path_buf();
        let chatd = chatd.unwrap_or_else(|| exe_dir.join("chatd"));
        let work = std::env::temp_dir().join(format!("chat-bench-{}", std::process::id()));
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        Ok(Ctx {
            chatd,
            self_exe,
            work,
            cache: exe_dir.join("chat-bench-cache"),
            opts,
            chat: if self_test { Kind::Relay } else { Kind::Chat },
            ngircd: crate::irc::find_ngircd(),
            notes: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
            counter: AtomicUsize::new(0),
        })
    }

    /// Fails with the build command when chatd is missing.
    pub fn require_chatd(&self) -> Result<()> {
        if self.chat == Kind::Relay || self.chatd.is_file() {
            Ok(())
        } else {
            bail!(
                "chatd not found at {}: build it first with `cargo build --release -p chat --bin chatd` \
                 (or pass --chatd PATH)",
                self.chatd.display()
            )
        }
    }

    /// Adds a line to the report's notes (and prints it).
    pub fn note(&self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("note: {text}");
        self.notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(text);
    }

    /// The notes so far.
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn fresh_dir(&self, name: &str) -> Result<PathBuf> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = self.work.join(format!("{n:02}-{name}"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Starts the baseline relay (this binary's `relay` subcommand).
    pub fn start_relay(&self, name: &str) -> Result<ServerProc> {
        let dir = self.fresh_dir(name)?;
        Spawn {
            name: format!("baseline relay ({name})"),
            program: self.self_exe.clone(),
            args: vec!["relay".into(), "127.0.0.1".into(), "0".into()],
            ready_prefix: "relay listening on ".into(),
            stderr_log: dir.join("stderr.log"),
            ready_timeout: Duration::from_secs(10),
        }
        .start()
        .map_err(|e| anyhow!("baseline relay did not start: {e}"))
    }

    /// Starts ngircd with its own configuration (see
    /// [`ngircd_config`](crate::irc::ngircd_config)) on a free loopback port, or notes
    /// that `scenario`'s ngircd rows are skipped when it is not on `PATH`.
    pub fn start_ngircd(&self, scenario: &str) -> Result<Option<ServerProc>> {
        let Some(program) = self.ngircd.clone() else {
            self.note(format!(
                "{scenario}: ngircd is not on PATH (`apt-get install ngircd`), so its rows are skipped"
            ));
            return Ok(None);
        };
        let dir = self.fresh_dir(&format!("{}-ngircd", scenario.to_lowercase()))?;
        // A port the kernel just handed out and took back: free unless
        // another process grabs it in between, which start-up would report.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let motd = dir.join("motd");
        std::fs::write(&motd, "chat-bench\n")?;
        let config = dir.join("ngircd.conf");
        std::fs::write(&config, crate::irc::ngircd_config(port, &motd))?;
        // ngircd drops root for `nobody`, who must be able to read both.
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        Spawn {
            name: format!("ngircd ({scenario})"),
            program,
            args: vec![
                "--nodaemon".into(),
                "--config".into(),
                config.display().to_string(),
            ],
            ready_prefix: String::new(),
            stderr_log: dir.join("ngircd.log"),
            ready_timeout: Duration::from_secs(20),
        }
        .start_accepting(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .map(Some)
        .map_err(|e| anyhow!("ngircd did not start: {e}"))
    }

    /// Writes a chatd instance's users file and configuration.
    pub fn chatd_setup(
        &self,
        name: &str,
        accounts: &[Account],
        config: ChatdConfig,
    ) -> Result<ChatdSetup> {
        self.require_chatd()?;
        let dir = self.fresh_dir(name)?;
        std::fs::write(dir.join("users.txt"), users::users_file(accounts))?;
        std::fs::create_dir_all(dir.join("data"))?;
        Ok(ChatdSetup {
            name: name.to_string(),
            dir,
            config,
        })
    }

    /// Starts (or restarts) chatd on a setup's files. A configuration key
    /// chatd refuses from [`OPTIONAL_KEYS`] is dropped and noted.
    pub fn start_chatd(&self, setup: &ChatdSetup) -> Result<ServerProc> {
        self.start_chatd_binary(setup, &self.chatd)
    }

    /// [`start_chatd`](Self::start_chatd) with another build of chatd, for
    /// comparing two builds in one run.
    pub fn start_chatd_binary(&self, setup: &ChatdSetup, program: &Path) -> Result<ServerProc> {
        if self.chat == Kind::Relay {
            return self.start_relay(&format!("{}-as-chatd", setup.name));
        }
        for _ in 0..=OPTIONAL_KEYS.len() {
            let skip = self
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let config = setup.dir.join("chatd.toml");
            std::fs::write(&config, setup.config.toml(&skip))?;
            let path = |p: &str| setup.dir.join(p).display().to_string();
            let spawn = Spawn {
                name: format!("chatd ({})", setup.name),
                program: program.to_path_buf(),
                args: vec![
                    "127.0.0.1".into(),
                    "0".into(),
                    "--config".into(),
                    path("chatd.toml"),
                    "--users".into(),
                    path("users.txt"),
                    "--data-dir".into(),
                    path("data"),
                ],
                ready_prefix: "chatd listening on ".into(),
                stderr_log: setup.dir.join("stderr.log"),
                ready_timeout: Duration::from_secs(120),
            };
            match spawn.start() {
                Ok(p) => return Ok(p),
                Err(e) => {
                    let refused = (e.status.and_then(|s| s.code()) == Some(2))
                        .then(|| refused_key(&e.stderr, &skip))
                        .flatten();
                    match refused {
                        Some(k) if setup.config.0.contains_key(k) => {
                            let detail: String = e
                                .stderr
                                .trim()
                                .split(", expected one of")
                                .next()
                                .unwrap_or_default()
                                .chars()
                                .take(160)
                                .collect();
                            self.note(format!(
                                "chatd refused config key `{k}` ({detail}); runs go on without it"
                            ));
                            self.refused
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((*k).to_string());
                        }
                        _ => bail!("chatd did not start: {e}"),
                    }
                }
            }
        }
        bail!("chatd refused every optional configuration key")
    }

    /// Whether chatd accepted `key` (it was not dropped).
    pub fn key_accepted(&self, key: &str) -> bool {
        !self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|k| k == key)
    }

    /// Whether chatd took the flood settings (its defaults allow a session
    /// 5 commands a second, which would bound every figure).
    pub fn flood_configurable(&self) -> bool {
        self.chat == Kind::Relay
            || ["flood_burst", "flood_per_second"]
                .iter()
                .all(|k| self.key_accepted(k))
    }

    /// Removes the scratch directory.
    pub fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }

    /// Where a setup's data directory is.
    pub fn data_dir(setup: &ChatdSetup) -> PathBuf {
        setup.dir.join("data")
    }
}

/// The optional key a chatd configuration error names: `key `x`` or
/// `x is not supported` (its list of expected keys names them all, so a
/// bare mention does not count).
fn refused_key(stderr: &str, skip: &[String]) -> Option<&'static str> {
    let named = stderr
        .split("key `")
        .skip(1)
        .filter_map(|rest| rest.split('`').next())
        .chain(
            stderr
                .split(" is not supported")
                .filter_map(|before| before.rsplit([' ', '`']).next()),
        )
        .collect::<Vec<_>>();
    OPTIONAL_KEYS
        .iter()
        .copied()
        .find(|k| !skip.iter().any(|s| s == k) && named.contains(k))
}

/// Bytes under a directory (the store's size on disk).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_refused_key() {
        let unknown = "config file x: key `flood_backlog`: unknown field `flood_backlog`, \
                       expected one of `host`, `flood_burst`, `max_connections` (line 1)";
        assert_eq!(refused_key(unknown, &[]), Some("flood_backlog"));
        let unsupported = "chatd: flood_burst is not supported by this version of chatd";
        assert_eq!(refused_key(unsupported, &[]), Some("flood_burst"));
        assert_eq!(refused_key(unsupported, &["flood_burst".into()]), None);
        assert_eq!(refused_key("key `port`: bad value", &[]), None);
    }
}
