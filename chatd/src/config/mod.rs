//! The command line and the TOML configuration file (PROTOCOL.md §9), merged
//! into one validated [`Settings`].
//!
//! Every mistake here is a [`ConfigError`], which the binary turns into exit
//! status 2 with a message that names the offending key or value. Nothing on
//! this path panics on user input.
//!
//! The command line is in `cli.rs`, the file's format in `file.rs`, the
//! range of every numeric key (and why) in `ranges.rs`; this module merges
//! them.

use std::path::PathBuf;
use std::time::Duration;

use crate::store::JournalLimits;
use thiserror::Error;

mod check;
mod cli;
mod file;
pub mod ranges;
#[cfg(test)]
mod tests;
pub mod web;

pub use check::check_config;
pub use cli::{Cli, Command};
pub use file::{FileConfig, Number};
pub use ranges::{Range, Unit, RANGES};
pub use web::{IpNet, WebSettings};

/// A configuration mistake: exit status 2.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML, has an unknown key, or a value of the wrong type.
    #[error("config file {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        detail: String,
    },
    /// A number outside its key's [`Range`].
    #[error("config: {key} must be {range}, got {got}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The range, as `between 0.001 and 60 s`.
        range: String,
        /// The value as written.
        got: String,
    },
    /// A value has the right type but does not fit (an empty host, a key
    /// that contradicts another).
    #[error("config: {key} {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why the value is refused.
        reason: String,
    },
    /// A key that only works together with another was given alone
    /// (`tls_cert` without `tls_key` or the reverse). Refused rather than
    /// ignored: serving plain text to an operator who asked for TLS would
    /// leave them believing they are protected.
    #[error("config key `{key}` is missing: `{with}` needs it")]
    Missing {
        /// The key that is missing.
        key: &'static str,
        /// The key given without it.
        with: &'static str,
    },
}

/// A connection whose outbound queue passes this many times
/// `max_outbound_bytes` is dropped at once, reading or not (see
/// `conn::OutboundLimit`): a page of held messages must fit under it.
pub const OUTBOUND_HARD_FACTOR: usize = 64;

/// Everything `chatd` runs with, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The address to listen on.
    pub host: String,
    /// The port; 0 picks a free one.
    pub port: u16,
    /// The users file (relative paths are relative to the working directory).
    pub users_file: PathBuf,
    /// The data directory, created if missing.
    pub data_dir: PathBuf,
    /// The core's rules.
    pub core: chatcore::Config,
    /// Bytes queued for one connection beyond which a peer that has stopped
    /// reading is treated as dead (see `conn.rs` for the exact rule).
    pub max_outbound_bytes: usize,
    /// Store changes (estimated bytes) kept in memory while the store
    /// cannot write (a full disk); past it chatd gives up and exits 1,
    /// having acknowledged none of them.
    pub max_unwritten_bytes: usize,
    /// Password checks (argon2, deliberately slow) that run at once.
    pub password_check_concurrency: usize,
    /// How long an `OK message …` or `OK broadcast …` may wait, queued, for
    /// the next line to the same client, so that both leave in one write
    /// (zero: each at once). In a conversation the next line is the reply
    /// the client waits for, so the client reads one segment instead of two
    /// and the server makes one write instead of two.
    pub ok_delay: Duration,
    /// A commit starts at most this long after the one before started
    /// (zero: as soon as it ended), so that one transaction and one `fsync`
    /// serve every change of that time. Only `OK`s wait for commits:
    /// deliveries do not. A login's box does not wait, nor do many changes
    /// (see `driver/commits.rs`).
    pub commit_interval: Duration,
    /// The journal in front of the database (`chatd.journal`): its size
    /// at most in bytes (`journal_size`), and how many bytes of the
    /// changes it holds may wait in memory for the database
    /// (`journal_memory`). See `store/journal.rs`.
    pub journal: JournalLimits,
    /// Connections open at once, in total.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// TLS on the port, if configured; plain TCP otherwise.
    pub tls: Option<TlsFiles>,
    /// How log lines on stderr are written.
    pub log_format: LogFormat,
    /// The web listener (`http`, `http_host`, `http_port`, ...).
    pub web: WebSettings,
}

/// How chatd writes its log lines (`log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event, for a terminal or the journal.
    #[default]
    Text,
    /// One JSON object per line, for log shippers: every field is a key,
    /// so nothing has to be parsed back out of a sentence.
    Json,
}

/// The PEM files that make the port speak TLS (`tls_cert`, `tls_key`).
/// Relative paths are relative to the working directory, like the users
/// file's. Only the paths are checked here: the files are read at startup
/// (see [`tls`](crate::tls)), where an unreadable file is a runtime failure like an
/// unreadable users file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain: the server's certificate first, then any
    /// intermediates.
    pub cert: PathBuf,
    /// The private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Held messages sent at a time with the default limits: as many of the
/// longest possible delivery lines as fit in `max_outbound_bytes`.
pub const DEFAULT_HELD_PAGE_SIZE: usize = (1 << 20) / (4096 + DELIVERY_OVERHEAD);

/// What a delivery line adds to the text a client sent: `MSG`, id,
/// timestamp, sender (at most 32 bytes) and separators, rounded up.
const DELIVERY_OVERHEAD: usize = 128;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host: "127.0.0.1".into(),
            port: 4119,
            users_file: "user_pass.txt".into(),
            data_dir: "chatd-data".into(),
            // chatd answers `NotifyWritten`, so a big box goes out a page
            // at a time, paced by the client's reading.
            core: chatcore::Config::default().with_held_page_size(Some(DEFAULT_HELD_PAGE_SIZE)),
            max_outbound_bytes: 1 << 20,
            max_unwritten_bytes: 64 << 20,
            password_check_concurrency: 2,
            ok_delay: Duration::from_millis(1),
            commit_interval: Duration::from_millis(2),
            journal: JournalLimits::default(),
            max_connections: 10_000,
            max_connections_per_ip: 64,
            tls: None,
            log_format: LogFormat::Text,
            web: WebSettings::default(),
        }
    }
}

impl Settings {
    /// Reads `--config` if given and merges the command line over it.
    pub fn from_cli(cli: &Cli) -> Result<Settings, ConfigError> {
        let file = match &cli.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Settings::merge(file, cli)
    }

    /// Defaults, then the file, then the command line; then validation.
    pub fn merge(file: FileConfig, cli: &Cli) -> Result<Settings, ConfigError> {
        let tls = match (file.tls_cert, file.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    key: "tls_key",
                    with: "tls_cert",
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    key: "tls_cert",
                    with: "tls_key",
                })
            }
        };
        let mut s = Settings {
            tls,
            ..Settings::default()
        };
        let c = &mut s.core;
        macro_rules! set {
            ($dst:expr, $src:expr) => {
                if let Some(v) = $src {
                    $dst = v;
                }
            };
        }
        set!(s.host, file.host);
        set!(s.port, file.port);
        set!(s.users_file, file.users_file);
        set!(s.data_dir, file.data_dir);
        set!(s.log_format, file.log_format);
        use ranges as r;
        set!(c.block_time, r::BLOCK_TIME.duration(file.block_time)?);
        set!(c.block_after, r::BLOCK_AFTER.count_of(file.block_after)?);
        set!(c.time_out, r::TIME_OUT.duration(file.time_out)?);
        set!(c.heartbeat, r::HEARTBEAT.duration(file.heartbeat)?);
        set!(
            c.heartbeat_timeout,
            r::HEARTBEAT_TIMEOUT.duration(file.heartbeat_timeout)?
        );
        set!(
            c.confirm_delay,
            r::CONFIRM_DELAY.duration(file.confirm_delay)?
        );
        set!(
            c.login_timeout,
            r::LOGIN_TIMEOUT.duration(file.login_timeout)?
        );
        set!(s.ok_delay, r::OK_DELAY.duration(file.ok_delay)?);
        set!(
            s.commit_interval,
            r::COMMIT_INTERVAL.duration(file.commit_interval)?
        );
        set!(
            c.last_hour_minutes,
            r::LAST_HOUR_MINUTES.count_of(file.last_hour_minutes)?
        );
        set!(
            c.max_login_attempts,
            r::MAX_LOGIN_ATTEMPTS.count_of(file.max_login_attempts)?
        );
        set!(
            c.max_line_bytes,
            r::MAX_LINE_BYTES.count_of(file.max_line_bytes)?
        );
        set!(
            c.max_held_per_user,
            r::MAX_HELD_PER_USER.count_of(file.max_held_per_user)?
        );
        set!(
            c.max_pending_lines,
            r::MAX_PENDING_LINES.count_of(file.max_pending_lines)?
        );
        set!(
            c.max_unconfirmed,
            r::MAX_UNCONFIRMED.count_of(file.max_unconfirmed)?
        );
        set!(
            c.failure_memory,
            r::FAILURE_MEMORY.duration(file.failure_memory)?
        );
        set!(
            c.max_failure_records,
            r::MAX_FAILURE_RECORDS.count_of(file.max_failure_records)?
        );
        set!(c.persist_deliveries, file.persist_deliveries);
        let held_page_size = r::HELD_PAGE_SIZE.count_of(file.held_page_size)?;
        if file.flood_burst.is_some()
            || file.flood_per_second.is_some()
            || file.flood_backlog.is_some()
        {
            let mut flood = c.flood.clone().unwrap_or_default();
            set!(flood.burst, r::FLOOD_BURST.count_of(file.flood_burst)?);
            set!(
                flood.per_second,
                r::FLOOD_PER_SECOND.count_of(file.flood_per_second)?
            );
            set!(
                flood.backlog,
                r::FLOOD_BACKLOG.count_of(file.flood_backlog)?
            );
            c.flood = Some(flood);
        }
        set!(
            s.max_connections,
            r::MAX_CONNECTIONS.count_of(file.max_connections)?
        );
        set!(
            s.max_connections_per_ip,
            r::MAX_CONNECTIONS_PER_IP.count_of(file.max_connections_per_ip)?
        );
        set!(
            s.max_outbound_bytes,
            r::MAX_OUTBOUND_BYTES.count_of(file.max_outbound_bytes)?
        );
        set!(
            s.max_unwritten_bytes,
            r::MAX_UNWRITTEN_BYTES.count_of(file.max_unwritten_bytes)?
        );
        set!(
            s.password_check_concurrency,
            r::PASSWORD_CHECK_CONCURRENCY.count_of(file.password_check_concurrency)?
        );
        set!(s.journal.size, r::JOURNAL_SIZE.count_of(file.journal_size)?);
        set!(
            s.journal.memory,
            r::JOURNAL_MEMORY.count_of(file.journal_memory)?
        );
        // By default a page of held messages fits in the outbound bound even
        // if every line is as long as a line can be, so a client that reads
        // is never mistaken for one that does not.
        s.core.held_page_size = Some(held_page_size.unwrap_or_else(|| {
            (s.max_outbound_bytes / (s.core.max_line_bytes + DELIVERY_OVERHEAD)).max(1)
        }));
        set!(s.host, cli.host.clone());
        set!(s.port, cli.port);
        set!(s.users_file, cli.users.clone());
        set!(s.data_dir, cli.data_dir.clone());
        s.web = web_settings(
            &s.host,
            file.http,
            file.http_host,
            file.http_port,
            file.allowed_origins,
            file.trusted_proxies,
        )?;
        s.validate()?;
        Ok(s)
    }

    /// Refuses values that would make the server misbehave: anything
    /// outside its key's [`Range`] (zero timers and limits, durations too
    /// long for time arithmetic), and keys that contradict each other (a
    /// heartbeat timeout that a healthy client could not meet).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.core;
        let invalid = |key: &'static str, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_string(),
        };
        if self.host.trim().is_empty() {
            return Err(invalid("host", "must not be empty"));
        }
        if self.web.host.trim().is_empty() {
            return Err(invalid("http_host", "must not be empty"));
        }
        if let Some(tls) = &self.tls {
            if tls.cert.as_os_str().is_empty() {
                return Err(invalid("tls_cert", "must not be empty"));
            }
            if tls.key.as_os_str().is_empty() {
                return Err(invalid("tls_key", "must not be empty"));
            }
        }
        use ranges as r;
        for (range, d) in [
            (r::BLOCK_TIME, c.block_time),
            (r::FAILURE_MEMORY, c.failure_memory),
            (r::LOGIN_TIMEOUT, c.login_timeout),
            (r::TIME_OUT, c.time_out),
            (r::HEARTBEAT, c.heartbeat),
            (r::HEARTBEAT_TIMEOUT, c.heartbeat_timeout),
            (r::CONFIRM_DELAY, c.confirm_delay),
            (r::OK_DELAY, self.ok_delay),
            (r::COMMIT_INTERVAL, self.commit_interval),
        ] {
            range.check_duration(d)?;
        }
        let flood = c.flood.clone().unwrap_or_default();
        for (range, n) in [
            (r::BLOCK_AFTER, u64::from(c.block_after)),
            (r::MAX_FAILURE_RECORDS, c.max_failure_records as u64),
            (r::MAX_LOGIN_ATTEMPTS, u64::from(c.max_login_attempts)),
            (r::LAST_HOUR_MINUTES, c.last_hour_minutes),
            (r::MAX_LINE_BYTES, c.max_line_bytes as u64),
            (r::MAX_HELD_PER_USER, c.max_held_per_user as u64),
            (r::MAX_PENDING_LINES, c.max_pending_lines as u64),
            (r::MAX_UNCONFIRMED, c.max_unconfirmed as u64),
            (r::HELD_PAGE_SIZE, c.held_page_size.map_or(1, |p| p as u64)),
            (r::FLOOD_BURST, u64::from(flood.burst)),
            (r::FLOOD_PER_SECOND, u64::from(flood.per_second)),
            (r::FLOOD_BACKLOG, flood.backlog as u64),
            (r::MAX_CONNECTIONS, self.max_connections as u64),
            (
                r::MAX_CONNECTIONS_PER_IP,
                self.max_connections_per_ip as u64,
            ),
            (r::MAX_OUTBOUND_BYTES, self.max_outbound_bytes as u64),
            (r::MAX_UNWRITTEN_BYTES, self.max_unwritten_bytes as u64),
            (r::JOURNAL_SIZE, self.journal.size),
            (r::JOURNAL_MEMORY, self.journal.memory as u64),
            (
                r::PASSWORD_CHECK_CONCURRENCY,
                self.password_check_concurrency as u64,
            ),
        ] {
            range.check_count(n)?;
        }
        let secs = |d: Duration| Number::Float(d.as_secs_f64());
        if c.heartbeat_timeout <= c.heartbeat {
            // Or every session would die between two probes.
            return Err(invalid(
                "heartbeat_timeout",
                &format!(
                    "must be longer than heartbeat ({} s), got {}",
                    secs(c.heartbeat),
                    secs(c.heartbeat_timeout)
                ),
            ));
        }
        if c.confirm_delay >= c.heartbeat_timeout {
            // Or a session that gets a message would be dead before the
            // probe that confirms it.
            return Err(invalid(
                "confirm_delay",
                &format!(
                    "must be shorter than heartbeat_timeout ({} s), got {}",
                    secs(c.heartbeat_timeout),
                    secs(c.confirm_delay)
                ),
            ));
        }
        if self.max_outbound_bytes < c.max_line_bytes {
            // Or one reply to a long line is already over the bound.
            return Err(invalid(
                "max_outbound_bytes",
                &format!(
                    "must be at least max_line_bytes ({}), got {}",
                    c.max_line_bytes, self.max_outbound_bytes
                ),
            ));
        }
        // A page of held messages is queued at once: it must stay under the
        // hard cap even when every line is as long as a line can be, or a
        // client that reads would be dropped at login.
        let page_max = self.max_outbound_bytes.saturating_mul(OUTBOUND_HARD_FACTOR)
            / (c.max_line_bytes + DELIVERY_OVERHEAD);
        if let Some(page) = c.held_page_size.filter(|&p| p > page_max) {
            return Err(invalid(
                "held_page_size",
                &format!(
                    "must be at most {page_max} at these max_line_bytes and \
                     max_outbound_bytes ({OUTBOUND_HARD_FACTOR} × max_outbound_bytes / \
                     (max_line_bytes + {DELIVERY_OVERHEAD})), got {page}"
                ),
            ));
        }
        Ok(())
    }
}

/// The web keys, checked: `http_host` defaults to the chat port's `host`
/// (after the command line), and every list entry must parse.
fn web_settings(
    host: &str,
    enabled: Option<bool>,
    http_host: Option<String>,
    port: Option<u16>,
    origins: Option<Vec<String>>,
    proxies: Option<Vec<String>>,
) -> Result<WebSettings, ConfigError> {
    let invalid = |key: &'static str, e: web::BadEntry| ConfigError::Invalid {
        key,
        reason: format!("entry {e}"),
    };
    let defaults = WebSettings::default();
    Ok(WebSettings {
        enabled: enabled.unwrap_or(defaults.enabled),
        host: http_host.unwrap_or_else(|| host.to_owned()),
        port: port.unwrap_or(defaults.port),
        allowed_origins: origins
            .unwrap_or_default()
            .iter()
            .map(|o| web::normalize_origin(o).map_err(|e| invalid("allowed_origins", e)))
            .collect::<Result<_, _>>()?,
        trusted_proxies: proxies
            .unwrap_or_default()
            .iter()
            .map(|p| p.parse().map_err(|e| invalid("trusted_proxies", e)))
            .collect::<Result<_, _>>()?,
    })
}
