//! The command line and the TOML configuration file (PROTOCOL.md §9), merged
//! into one validated [`Settings`].
//!
//! Every mistake here is a [`ConfigError`], which the binary turns into exit
//! status 2 with a message that names the offending key or value. Nothing on
//! this path panics on user input.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use thiserror::Error;

// clap reports a bad PORT (not an integer in 0–65535) itself, naming the
// value, with exit status 2.
/// The CHAT/1 chat server.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chatd",
    version,
    about = "The CHAT/1 chat server",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// The address to listen on (default 127.0.0.1).
    pub host: Option<String>,
    /// The port to listen on; 0 picks a free port (default 4119).
    pub port: Option<u16>,
    /// A TOML configuration file; command-line values win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The users file: one `<user> <password>` a line (default user_pass.txt).
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Where held messages and other durable state live (default chatd-data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Something other than serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Reads one password line from stdin and prints its argon2id PHC
    /// string, for the users file.
    HashPassword,
}

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

/// A number as written in the file, integer or float, kept as written: any
/// sign, NaN and the infinities included. The parser takes whatever TOML
/// takes and the key's [`Range`] refuses what is outside it, so that every
/// out-of-range value gets the same message, naming the key and its range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// A TOML integer.
    Int(i64),
    /// A TOML float.
    Float(f64),
}

impl Number {
    /// The value as a float (exact for every integer a range accepts).
    #[allow(clippy::cast_precision_loss)]
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Number::Int(i) => write!(f, "{i}"),
            // `1e300` rather than three hundred digits.
            Number::Float(v) if v.is_finite() && v.abs() >= 1e15 => write!(f, "{v:e}"),
            Number::Float(v) => write!(f, "{v}"),
        }
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberVisitor)
    }
}

struct NumberVisitor;

impl Visitor<'_> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number (integer or float)")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
        Ok(Number::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
        // TOML integers are i64; anything above is far out of every range.
        #[allow(clippy::cast_precision_loss)]
        Ok(i64::try_from(v).map_or(Number::Float(v as f64), Number::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
        Ok(Number::Float(v))
    }
}

/// What a numeric key holds: seconds (fractions allowed, `heartbeat = 0.2`)
/// or a whole count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A duration in seconds.
    Seconds,
    /// A whole number.
    Count,
}

/// The values a numeric key accepts: every duration and count has one, so
/// that no value can break an invariant of the server (a zero timer that
/// wakes it in a busy loop, a zero limit that refuses everything, a
/// duration too long for time arithmetic). The bounds are generous: they
/// only refuse what no operator can mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// The key.
    pub key: &'static str,
    /// The smallest value accepted.
    pub min: f64,
    /// The largest value accepted.
    pub max: f64,
    /// Seconds or a count.
    pub unit: Unit,
}

impl Range {
    const fn secs(key: &'static str, min: f64, max: f64) -> Range {
        Range {
            key,
            min,
            max,
            unit: Unit::Seconds,
        }
    }

    const fn count(key: &'static str, min: u32, max: u32) -> Range {
        Range {
            key,
            min: min as f64,
            max: max as f64,
            unit: Unit::Count,
        }
    }

    /// Refuses `got` (as written in the file) unless it is in the range
    /// (and whole, for a count).
    pub fn check(&self, got: Number) -> Result<(), ConfigError> {
        let v = got.as_f64();
        // `!(a && b)` rather than `<`/`>`: NaN fails every comparison.
        let inside = v >= self.min && v <= self.max;
        let whole = self.unit == Unit::Seconds || v.fract() == 0.0;
        if inside && whole {
            return Ok(());
        }
        Err(ConfigError::OutOfRange {
            key: self.key,
            range: self.describe(!whole),
            got: got.to_string(),
        })
    }

    /// `between 0.001 and 60 s`, as the error message and README put it.
    fn describe(&self, say_whole: bool) -> String {
        let unit = match self.unit {
            Unit::Seconds => " s",
            Unit::Count => "",
        };
        let whole = if say_whole { "a whole number " } else { "" };
        format!("{whole}between {} and {}{unit}", self.min, self.max)
    }

    /// Checks a duration already in a [`Settings`].
    fn check_duration(&self, d: Duration) -> Result<(), ConfigError> {
        self.check(Number::Float(d.as_secs_f64()))
    }

    /// Checks a count already in a [`Settings`].
    fn check_count(&self, n: u64) -> Result<(), ConfigError> {
        #[allow(clippy::cast_precision_loss)]
        self.check(i64::try_from(n).map_or(Number::Float(n as f64), Number::Int))
    }

    /// A file's duration, checked.
    fn duration(&self, v: Option<Number>) -> Result<Option<Duration>, ConfigError> {
        v.map(|n| {
            self.check(n)?;
            // In range, so finite, non-negative and far from overflowing.
            Ok(Duration::from_secs_f64(n.as_f64()))
        })
        .transpose()
    }

    /// A file's count, checked, as the type the setting has. Every range's
    /// maximum fits a `u32`, so the conversion cannot fail once checked.
    fn count_of<T: TryFrom<u64>>(&self, v: Option<Number>) -> Result<Option<T>, ConfigError> {
        v.map(|n| {
            self.check(n)?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let whole = n.as_f64() as u64;
            T::try_from(whole).map_err(|_| ConfigError::OutOfRange {
                key: self.key,
                range: self.describe(false),
                got: n.to_string(),
            })
        })
        .transpose()
    }
}

/// Each numeric key's range, and why its bounds are where they are. The
/// lower bound of a timer is a millisecond, the core's clock tick: below it
/// the timer rounds to zero and fires at once, for ever.
pub mod ranges {
    use super::Range;

    /// A block longer than a week is a ban, which is the users file's job.
    pub const BLOCK_TIME: Range = Range::secs("block_time", 0.001, 604_800.0);
    /// PROTOCOL.md fixes it at 3; more than 100 guesses is no lockout.
    pub const BLOCK_AFTER: Range = Range::count("block_after", 1, 100);
    /// Up to 30 days of memory of a pair's failures.
    pub const FAILURE_MEMORY: Range = Range::secs("failure_memory", 0.001, 2_592_000.0);
    /// A record is about a hundred bytes: at most about 1 GB of them.
    pub const MAX_FAILURE_RECORDS: Range = Range::count("max_failure_records", 1, 10_000_000);
    /// Idle sessions are logged out after at most a week.
    pub const TIME_OUT: Range = Range::secs("time_out", 0.001, 604_800.0);
    /// Probes more often than every 10 ms are a load, not a liveness check;
    /// less often than hourly, a dead peer holds its name for hours.
    pub const HEARTBEAT: Range = Range::secs("heartbeat", 0.01, 3_600.0);
    /// Longer than `heartbeat` too (checked apart): at least two of the
    /// shortest heartbeats, at most three of the longest.
    pub const HEARTBEAT_TIMEOUT: Range = Range::secs("heartbeat_timeout", 0.02, 10_800.0);
    /// PROTOCOL.md §6: the confirming probe follows deliveries within a
    /// second. Zero would re-arm the timer at the current instant.
    pub const CONFIRM_DELAY: Range = Range::secs("confirm_delay", 0.001, 1.0);
    /// Also the TLS handshake's limit: up to an hour to log in.
    pub const LOGIN_TIMEOUT: Range = Range::secs("login_timeout", 0.001, 3_600.0);
    /// `wholast` looks back at most a week.
    pub const LAST_HOUR_MINUTES: Range = Range::count("last_hour_minutes", 1, 10_080);
    /// At least one attempt, or nobody can log in.
    pub const MAX_LOGIN_ATTEMPTS: Range = Range::count("max_login_attempts", 1, 100);
    /// 64 bytes hold the longest fixed-form command (`broadcast user` with a
    /// 32-byte name and a word of text); 1 MiB is the most the line decoder
    /// buffers per connection.
    pub const MAX_LINE_BYTES: Range = Range::count("max_line_bytes", 64, 1 << 20);
    /// A box of a million messages is gigabytes at the longest lines.
    pub const MAX_HELD_PER_USER: Range = Range::count("max_held_per_user", 1, 1_000_000);
    /// Lines buffered while a password is checked.
    pub const MAX_PENDING_LINES: Range = Range::count("max_pending_lines", 1, 10_000);
    /// Deliveries waiting for confirmation per session: at least one, or
    /// nothing could be delivered; a million of the longest lines is
    /// gigabytes per session.
    pub const MAX_UNCONFIRMED: Range = Range::count("max_unconfirmed", 1, 1_000_000);
    /// Also bounded by the outbound hard cap (checked apart).
    pub const HELD_PAGE_SIZE: Range = Range::count("held_page_size", 1, 100_000);
    /// A million is "no limit" (load tests use it).
    pub const FLOOD_BURST: Range = Range::count("flood_burst", 1, 1_000_000);
    /// Zero would never let a delayed command run.
    pub const FLOOD_PER_SECOND: Range = Range::count("flood_per_second", 1, 1_000_000);
    /// Commands that may wait.
    pub const FLOOD_BACKLOG: Range = Range::count("flood_backlog", 1, 1_000_000);
    /// Far above what one process's file descriptors allow.
    pub const MAX_CONNECTIONS: Range = Range::count("max_connections", 1, 1_000_000);
    /// As `max_connections`.
    pub const MAX_CONNECTIONS_PER_IP: Range = Range::count("max_connections_per_ip", 1, 1_000_000);
    /// At least `max_line_bytes` too (checked apart); at most 256 MiB a
    /// connection.
    pub const MAX_OUTBOUND_BYTES: Range = Range::count("max_outbound_bytes", 64, 1 << 28);
    /// Store changes that may wait, in memory, while the disk is full:
    /// at least 1 MiB so a short outage is ridden out, at most 1 GiB.
    pub const MAX_UNWRITTEN_BYTES: Range = Range::count("max_unwritten_bytes", 1 << 20, 1 << 30);
    /// Each checker thread keeps an argon2 buffer (19 MiB with the default
    /// parameters) and argon2 is CPU-bound: more threads than cores only
    /// cost memory.
    pub const PASSWORD_CHECK_CONCURRENCY: Range =
        Range::count("password_check_concurrency", 1, 256);
}

/// Every numeric key's range, in the order the README lists the keys.
pub const RANGES: &[Range] = &[
    ranges::BLOCK_TIME,
    ranges::BLOCK_AFTER,
    ranges::FAILURE_MEMORY,
    ranges::MAX_FAILURE_RECORDS,
    ranges::MAX_LOGIN_ATTEMPTS,
    ranges::LOGIN_TIMEOUT,
    ranges::TIME_OUT,
    ranges::HEARTBEAT,
    ranges::HEARTBEAT_TIMEOUT,
    ranges::CONFIRM_DELAY,
    ranges::LAST_HOUR_MINUTES,
    ranges::MAX_LINE_BYTES,
    ranges::MAX_HELD_PER_USER,
    ranges::MAX_PENDING_LINES,
    ranges::MAX_UNCONFIRMED,
    ranges::HELD_PAGE_SIZE,
    ranges::FLOOD_BURST,
    ranges::FLOOD_PER_SECOND,
    ranges::FLOOD_BACKLOG,
    ranges::MAX_CONNECTIONS,
    ranges::MAX_CONNECTIONS_PER_IP,
    ranges::MAX_OUTBOUND_BYTES,
    ranges::MAX_UNWRITTEN_BYTES,
    ranges::PASSWORD_CHECK_CONCURRENCY,
];

/// A connection whose outbound queue passes this many times
/// `max_outbound_bytes` is dropped at once, reading or not (see
/// `conn::OutboundLimit`): a page of held messages must fit under it.
pub const OUTBOUND_HARD_FACTOR: usize = 64;

/// The configuration file as written: every key optional. Unknown keys are
/// refused (`deny_unknown_fields`) so that a typo is not silently ignored.
/// Numbers are kept as written ([`Number`]) until [`Settings::merge`]
/// checks them against their [`Range`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Settings::host`].
    pub host: Option<String>,
    /// See [`Settings::port`].
    pub port: Option<u16>,
    /// See [`Settings::users_file`].
    pub users_file: Option<PathBuf>,
    /// See [`Settings::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`chatcore::Config::block_time`].
    pub block_time: Option<Number>,
    /// See [`chatcore::Config::block_after`].
    pub block_after: Option<Number>,
    /// See [`chatcore::Config::time_out`].
    pub time_out: Option<Number>,
    /// See [`chatcore::Config::heartbeat`].
    pub heartbeat: Option<Number>,
    /// See [`chatcore::Config::heartbeat_timeout`].
    pub heartbeat_timeout: Option<Number>,
    /// See [`chatcore::Config::confirm_delay`].
    pub confirm_delay: Option<Number>,
    /// See [`chatcore::Config::login_timeout`].
    pub login_timeout: Option<Number>,
    /// See [`chatcore::Config::last_hour_minutes`].
    pub last_hour_minutes: Option<Number>,
    /// See [`chatcore::Config::max_login_attempts`].
    pub max_login_attempts: Option<Number>,
    /// See [`chatcore::Config::max_line_bytes`].
    pub max_line_bytes: Option<Number>,
    /// See [`chatcore::Config::max_held_per_user`].
    pub max_held_per_user: Option<Number>,
    /// See [`chatcore::Config::max_pending_lines`].
    pub max_pending_lines: Option<Number>,
    /// See [`chatcore::Config::max_unconfirmed`].
    pub max_unconfirmed: Option<Number>,
    /// See [`TlsFiles::cert`]; only together with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// See [`TlsFiles::key`]; only together with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// See [`chatcore::config::FloodLimit::burst`].
    pub flood_burst: Option<Number>,
    /// See [`chatcore::config::FloodLimit::per_second`].
    pub flood_per_second: Option<Number>,
    /// See [`chatcore::config::FloodLimit::backlog`].
    pub flood_backlog: Option<Number>,
    /// See [`chatcore::Config::failure_memory`].
    pub failure_memory: Option<Number>,
    /// See [`chatcore::Config::max_failure_records`].
    pub max_failure_records: Option<Number>,
    /// See [`chatcore::Config::persist_deliveries`].
    pub persist_deliveries: Option<bool>,
    /// See [`chatcore::Config::held_page_size`].
    pub held_page_size: Option<Number>,
    /// See [`Settings::max_connections`].
    pub max_connections: Option<Number>,
    /// See [`Settings::max_connections_per_ip`].
    pub max_connections_per_ip: Option<Number>,
    /// See [`Settings::max_outbound_bytes`].
    pub max_outbound_bytes: Option<Number>,
    /// See [`Settings::max_unwritten_bytes`].
    pub max_unwritten_bytes: Option<Number>,
    /// See [`Settings::password_check_concurrency`].
    pub password_check_concurrency: Option<Number>,
}

impl FileConfig {
    /// Parses the text of a configuration file. `path` is only used in
    /// messages.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let mut detail = String::new();
            if key != "." && !key.is_empty() {
                detail.push_str(&format!("key `{key}`: "));
            }
            detail.push_str(inner.message().trim());
            if let Some(line) = line {
                detail.push_str(&format!(" (line {line})"));
            }
            ConfigError::Parse {
                path: path.to_path_buf(),
                detail,
            }
        })
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }
}

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
    /// Connections open at once, in total.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// TLS on the port, if configured; plain TCP otherwise.
    pub tls: Option<TlsFiles>,
}

/// The PEM files that make the port speak TLS (`tls_cert`, `tls_key`).
/// Relative paths are relative to the working directory, like the users
/// file's. Only the paths are checked here: the files are read at startup
/// (see [`crate::tls`]), where an unreadable file is a runtime failure like an
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
            core: chatcore::Config {
                // chatd answers `NotifyWritten`, so a big box goes out a
                // page at a time, paced by the client's reading.
                held_page_size: Some(DEFAULT_HELD_PAGE_SIZE),
                ..chatcore::Config::default()
            },
            max_outbound_bytes: 1 << 20,
            max_unwritten_bytes: 64 << 20,
            password_check_concurrency: 2,
            max_connections: 10_000,
            max_connections_per_ip: 64,
            tls: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("chatd").chain(args.iter().copied())).unwrap()
    }

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(text, Path::new("test.toml"))
    }

    fn settings(text: &str, args: &[&str]) -> Result<Settings, ConfigError> {
        Settings::merge(parse(text)?, &cli(args))
    }

    #[test]
    fn defaults_are_protocol_md() {
        let s = settings("", &[]).unwrap();
        assert_eq!(s.host, "127.0.0.1");
        assert_eq!(s.port, 4119);
        assert_eq!(s.users_file, PathBuf::from("user_pass.txt"));
        assert_eq!(s.data_dir, PathBuf::from("chatd-data"));
        assert_eq!(
            s.core,
            chatcore::Config {
                held_page_size: Some(DEFAULT_HELD_PAGE_SIZE),
                ..chatcore::Config::default()
            }
        );
        assert_eq!(s.max_outbound_bytes, 1 << 20);
        assert_eq!(s.password_check_concurrency, 2);
        assert_eq!(s.max_connections, 10_000);
        assert_eq!(s.max_connections_per_ip, 64);
    }

    #[test]
    fn every_documented_key_is_accepted() {
        let text = r#"
host = "0.0.0.0"
port = 5000
users_file = "u.txt"
data_dir = "d"
block_time = 61
block_after = 4
time_out = 1801
heartbeat = 31
heartbeat_timeout = 91
confirm_delay = 0.5
login_timeout = 62
last_hour_minutes = 30
max_login_attempts = 5
max_line_bytes = 8192
max_held_per_user = 7
max_pending_lines = 9
max_unconfirmed = 11
held_page_size = 12
max_connections = 100
max_connections_per_ip = 3
max_outbound_bytes = 65536
max_unwritten_bytes = 2097152
password_check_concurrency = 4
flood_burst = 20
flood_per_second = 7
flood_backlog = 30
failure_memory = 3600
max_failure_records = 500
persist_deliveries = false
"#;
        let s = settings(text, &[]).unwrap();
        let c = &s.core;
        assert_eq!(s.host, "0.0.0.0");
        assert_eq!(s.port, 5000);
        assert_eq!(s.users_file, PathBuf::from("u.txt"));
        assert_eq!(s.data_dir, PathBuf::from("d"));
        assert_eq!(c.block_time, Duration::from_secs(61));
        assert_eq!(c.block_after, 4);
        assert_eq!(c.time_out, Duration::from_secs(1801));
        assert_eq!(c.heartbeat, Duration::from_secs(31));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(91));
        assert_eq!(c.confirm_delay, Duration::from_millis(500));
        assert_eq!(c.login_timeout, Duration::from_secs(62));
        assert_eq!(c.last_hour_minutes, 30);
        assert_eq!(c.max_login_attempts, 5);
        assert_eq!(c.max_line_bytes, 8192);
        assert_eq!(c.max_held_per_user, 7);
        assert_eq!(c.max_pending_lines, 9);
        assert_eq!(c.max_unconfirmed, 11);
        assert_eq!(c.held_page_size, Some(12));
        assert_eq!(s.max_connections, 100);
        assert_eq!(s.max_connections_per_ip, 3);
        assert_eq!(s.max_outbound_bytes, 65536);
        assert_eq!(s.max_unwritten_bytes, 2 << 20);
        assert_eq!(s.password_check_concurrency, 4);
        assert_eq!(
            c.flood,
            Some(chatcore::config::FloodLimit {
                burst: 20,
                per_second: 7,
                backlog: 30
            })
        );
        assert_eq!(c.failure_memory, Duration::from_secs(3600));
        assert_eq!(c.max_failure_records, 500);
        assert!(!c.persist_deliveries);
    }

    #[test]
    fn flood_keys_set_the_core_flood_limit() {
        let s = settings("flood_per_second = 100.0", &[]).unwrap();
        let f = s.core.flood.unwrap();
        assert_eq!(f.per_second, 100);
        assert_eq!(f.burst, chatcore::config::FloodLimit::default().burst);
        for bad in [
            "flood_per_second = 0.5",
            "flood_per_second = 0",
            "flood_burst = 0",
        ] {
            let e = settings(bad, &[]).unwrap_err().to_string();
            assert!(e.contains(&bad[..bad.find(' ').unwrap()]), "{bad}: {e}");
        }
    }

    #[test]
    fn command_line_wins_over_the_file() {
        let text = "host = \"10.0.0.1\"\nport = 5000\nusers_file = \"a\"\ndata_dir = \"b\"\n";
        let s = settings(text, &["::1", "0", "--users", "u2", "--data-dir", "d2"]).unwrap();
        assert_eq!(s.host, "::1");
        assert_eq!(s.port, 0);
        assert_eq!(s.users_file, PathBuf::from("u2"));
        assert_eq!(s.data_dir, PathBuf::from("d2"));
        // Only what the command line gives wins.
        let s = settings(text, &["127.0.0.2"]).unwrap();
        assert_eq!(s.host, "127.0.0.2");
        assert_eq!(s.port, 5000);
        assert_eq!(s.users_file, PathBuf::from("a"));
    }

    #[test]
    fn durations_take_integers_and_floats() {
        let s = settings(
            "heartbeat = 0.2\nheartbeat_timeout = 1\ntime_out = 2.5",
            &[],
        )
        .unwrap();
        assert_eq!(s.core.heartbeat, Duration::from_millis(200));
        assert_eq!(s.core.heartbeat_timeout, Duration::from_secs(1));
        assert_eq!(s.core.time_out, Duration::from_millis(2500));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("port = 1\nheartbeet = 3\n").unwrap_err().to_string();
        assert!(e.contains("heartbeet"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        for (text, key) in [
            ("heartbeat = \"often\"", "heartbeat"),
            ("port = \"x\"", "port"),
            ("port = 70000", "port"),
            ("host = 3", "host"),
            ("\n\nmax_connections = true", "max_connections"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn bad_toml_is_an_error_with_a_line() {
        let e = parse("port = 1\nthis is not toml\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn bad_port_on_the_command_line_names_the_value() {
        for bad in ["70000", "-1", "http", "4119x"] {
            let e = Cli::try_parse_from(["chatd", "127.0.0.1", bad]).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains(bad), "{e}");
        }
        assert_eq!(cli(&["localhost", "65535"]).port, Some(65535));
    }

    #[test]
    fn hash_password_is_a_subcommand() {
        let c = cli(&["hash-password"]);
        assert!(matches!(c.command, Some(Command::HashPassword)));
        assert_eq!(c.host, None);
    }

    #[test]
    fn tls_keys_come_in_pairs() {
        assert_eq!(settings("", &[]).unwrap().tls, None);
        let s = settings("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"", &[]).unwrap();
        assert_eq!(
            s.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        for (text, missing) in [
            ("tls_cert = \"c.pem\"", "tls_key"),
            ("tls_key = \"k.pem\"", "tls_cert"),
        ] {
            let e = settings(text, &[]).unwrap_err();
            assert!(matches!(e, ConfigError::Missing { key, .. } if key == missing));
            let e = e.to_string();
            assert!(e.contains(&format!("`{missing}` is missing")), "{e}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            (
                "heartbeat = 30\nheartbeat_timeout = 30",
                "heartbeat_timeout",
            ),
            ("heartbeat = 0", "heartbeat"),
            ("max_line_bytes = 63", "max_line_bytes"),
            ("max_connections = 0", "max_connections"),
            ("max_connections_per_ip = 0", "max_connections_per_ip"),
            (
                "password_check_concurrency = 0",
                "password_check_concurrency",
            ),
            ("max_login_attempts = 0", "max_login_attempts"),
            ("max_held_per_user = 0", "max_held_per_user"),
            ("last_hour_minutes = 0", "last_hour_minutes"),
            ("max_outbound_bytes = 100", "max_outbound_bytes"),
            ("login_timeout = 0.0", "login_timeout"),
        ] {
            let e = settings(text, &[]).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("config: {key} must ")),
                "{text}: {e}"
            );
        }
    }

    /// Lines a boundary value of `key` needs beside it to make a
    /// consistent configuration.
    fn companions(key: &str, at_max: bool) -> &'static str {
        match (key, at_max) {
            ("heartbeat", true) => "heartbeat_timeout = 10800\n",
            ("heartbeat_timeout", false) => "heartbeat = 0.01\nconfirm_delay = 0.01\n",
            ("held_page_size", true) => "max_line_bytes = 64\n",
            ("max_outbound_bytes", false) => "max_line_bytes = 64\n",
            _ => "",
        }
    }

    #[test]
    fn every_range_takes_its_bounds_and_refuses_just_outside() {
        for range in RANGES {
            let step = match range.unit {
                Unit::Seconds => range.min / 2.0,
                Unit::Count => 1.0,
            };
            for (v, at_max) in [(range.min, false), (range.max, true)] {
                let text = format!("{}{} = {v}\n", companions(range.key, at_max), range.key);
                if let Err(e) = settings(&text, &[]) {
                    panic!("{text}: {e}");
                }
            }
            for bad in [range.min - step, range.max + step] {
                let text = format!("{} = {bad}", range.key);
                let e = settings(&text, &[]).unwrap_err();
                assert!(
                    matches!(e, ConfigError::OutOfRange { key, .. } if key == range.key),
                    "{text}: {e}"
                );
                let e = e.to_string();
                let unit = if range.unit == Unit::Seconds {
                    " s"
                } else {
                    ""
                };
                let between = format!("between {} and {}{unit}, got ", range.min, range.max);
                assert!(e.contains(&between), "{text}: {e}");
            }
        }
    }

    #[test]
    fn nan_infinities_negatives_and_huge_durations_name_the_range() {
        for (text, got) in [
            ("confirm_delay = nan", "NaN"),
            ("heartbeat = -nan", "NaN"),
            ("time_out = inf", "inf"),
            ("block_time = -inf", "-inf"),
            ("login_timeout = -1", "-1"),
            ("failure_memory = -0.5", "-0.5"),
            ("heartbeat_timeout = 1e300", "1e300"),
            ("time_out = 18446744073709551615.0", "1.8446744073709552e19"),
        ] {
            let e = settings(text, &[]).unwrap_err().to_string();
            let key = &text[..text.find(' ').unwrap()];
            assert!(
                e.starts_with(&format!("config: {key} must be between ")),
                "{text}: {e}"
            );
            assert!(e.ends_with(&format!(", got {got}")), "{text}: {e}");
        }
    }

    #[test]
    fn counts_must_be_whole() {
        let e = settings("max_held_per_user = 2.5", &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config: max_held_per_user must be a whole number between 1 and 1000000, got 2.5"
        );
        let s = settings("max_held_per_user = 2.0\nmax_line_bytes = -0", &[]);
        let e = s.unwrap_err().to_string();
        assert!(
            e.starts_with("config: max_line_bytes must be between 64"),
            "{e}"
        );
        let s = settings("max_held_per_user = 2.0", &[]).unwrap();
        assert_eq!(s.core.max_held_per_user, 2);
    }

    #[test]
    fn keys_that_depend_on_each_other() {
        for (text, want) in [
            (
                "heartbeat = 0.5\nheartbeat_timeout = 0.25",
                "config: heartbeat_timeout must be longer than heartbeat (0.5 s), got 0.25",
            ),
            (
                "heartbeat = 0.1\nheartbeat_timeout = 0.5\nconfirm_delay = 0.5",
                "config: confirm_delay must be shorter than heartbeat_timeout (0.5 s), got 0.5",
            ),
            (
                "max_line_bytes = 8192\nmax_outbound_bytes = 8191",
                "config: max_outbound_bytes must be at least max_line_bytes (8192), got 8191",
            ),
        ] {
            assert_eq!(settings(text, &[]).unwrap_err().to_string(), want);
        }
        // The largest page that fits the hard cap with the longest lines.
        let page_max = (1 << 20) * OUTBOUND_HARD_FACTOR / (4096 + DELIVERY_OVERHEAD);
        assert!(settings(&format!("held_page_size = {page_max}"), &[]).is_ok());
        let e = settings(&format!("held_page_size = {}", page_max + 1), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "config: held_page_size must be at most {page_max} "
            )),
            "{e}"
        );
    }

    #[test]
    fn the_defaults_are_inside_every_range() {
        Settings::default().validate().unwrap();
    }
}
