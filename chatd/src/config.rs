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
    /// A value has the right type but is out of range.
    #[error("config key `{key}`: {reason}")]
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

/// A number of seconds, written as an integer or a float (`heartbeat = 0.2`)
/// so that tests can use sub-second timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberVisitor).and_then(|secs| {
            Duration::try_from_secs_f64(secs)
                .map(Seconds)
                .map_err(|_| de::Error::custom(format!("{secs} is not a usable number of seconds")))
        })
    }
}

/// A non-negative number, integer or float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number(pub f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberVisitor).map(Number)
    }
}

struct NumberVisitor;

impl Visitor<'_> for NumberVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative number (integer or float)")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        if v < 0 {
            return Err(E::invalid_value(de::Unexpected::Signed(v), &self));
        }
        // Precision loss above 2^53 seconds is irrelevant for timers.
        #[allow(clippy::cast_precision_loss)]
        Ok(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        #[allow(clippy::cast_precision_loss)]
        Ok(v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        if !v.is_finite() || v < 0.0 {
            return Err(E::invalid_value(de::Unexpected::Float(v), &self));
        }
        Ok(v)
    }
}

/// The configuration file as written: every key optional. Unknown keys are
/// refused (`deny_unknown_fields`) so that a typo is not silently ignored.
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
    pub block_time: Option<Seconds>,
    /// See [`chatcore::Config::block_after`].
    pub block_after: Option<u32>,
    /// See [`chatcore::Config::time_out`].
    pub time_out: Option<Seconds>,
    /// See [`chatcore::Config::heartbeat`].
    pub heartbeat: Option<Seconds>,
    /// See [`chatcore::Config::heartbeat_timeout`].
    pub heartbeat_timeout: Option<Seconds>,
    /// See [`chatcore::Config::confirm_delay`].
    pub confirm_delay: Option<Seconds>,
    /// See [`chatcore::Config::login_timeout`].
    pub login_timeout: Option<Seconds>,
    /// See [`chatcore::Config::last_hour_minutes`].
    pub last_hour_minutes: Option<u64>,
    /// See [`chatcore::Config::max_login_attempts`].
    pub max_login_attempts: Option<u32>,
    /// See [`chatcore::Config::max_line_bytes`].
    pub max_line_bytes: Option<usize>,
    /// See [`chatcore::Config::max_held_per_user`].
    pub max_held_per_user: Option<usize>,
    /// See [`chatcore::Config::max_pending_lines`].
    pub max_pending_lines: Option<usize>,
    /// See [`TlsFiles::cert`]; only together with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// See [`TlsFiles::key`]; only together with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// See [`chatcore::config::FloodLimit::burst`].
    pub flood_burst: Option<u32>,
    /// See [`chatcore::config::FloodLimit::per_second`]; a whole number.
    pub flood_per_second: Option<Number>,
    /// See [`chatcore::config::FloodLimit::backlog`].
    pub flood_backlog: Option<usize>,
    /// See [`chatcore::Config::failure_memory`].
    pub failure_memory: Option<Seconds>,
    /// See [`chatcore::Config::max_failure_records`].
    pub max_failure_records: Option<usize>,
    /// See [`chatcore::Config::persist_deliveries`].
    pub persist_deliveries: Option<bool>,
    /// See [`chatcore::Config::held_page_size`].
    pub held_page_size: Option<usize>,
    /// See [`Settings::max_connections`].
    pub max_connections: Option<usize>,
    /// See [`Settings::max_connections_per_ip`].
    pub max_connections_per_ip: Option<usize>,
    /// See [`Settings::max_outbound_bytes`].
    pub max_outbound_bytes: Option<usize>,
    /// See [`Settings::password_check_concurrency`].
    pub password_check_concurrency: Option<usize>,
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
        set!(c.block_time, file.block_time.map(|d| d.0));
        set!(c.block_after, file.block_after);
        set!(c.time_out, file.time_out.map(|d| d.0));
        set!(c.heartbeat, file.heartbeat.map(|d| d.0));
        set!(c.heartbeat_timeout, file.heartbeat_timeout.map(|d| d.0));
        set!(c.confirm_delay, file.confirm_delay.map(|d| d.0));
        set!(c.login_timeout, file.login_timeout.map(|d| d.0));
        set!(c.last_hour_minutes, file.last_hour_minutes);
        set!(c.max_login_attempts, file.max_login_attempts);
        set!(c.max_line_bytes, file.max_line_bytes);
        set!(c.max_held_per_user, file.max_held_per_user);
        set!(c.max_pending_lines, file.max_pending_lines);
        set!(c.failure_memory, file.failure_memory.map(|d| d.0));
        set!(c.max_failure_records, file.max_failure_records);
        set!(c.persist_deliveries, file.persist_deliveries);
        let held_page_size = file.held_page_size;
        if file.flood_burst.is_some()
            || file.flood_per_second.is_some()
            || file.flood_backlog.is_some()
        {
            let mut flood = c.flood.clone().unwrap_or_default();
            set!(flood.burst, file.flood_burst);
            set!(flood.backlog, file.flood_backlog);
            if let Some(Number(rate)) = file.flood_per_second {
                if rate.fract() != 0.0 || rate < 1.0 || rate > f64::from(u32::MAX) {
                    return Err(ConfigError::Invalid {
                        key: "flood_per_second",
                        reason: "must be a whole number of commands a second, at least 1".into(),
                    });
                }
                // Checked above: a whole number in u32's range.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                {
                    flood.per_second = rate as u32;
                }
            }
            c.flood = Some(flood);
        }
        set!(s.max_connections, file.max_connections);
        set!(s.max_connections_per_ip, file.max_connections_per_ip);
        set!(s.max_outbound_bytes, file.max_outbound_bytes);
        set!(
            s.password_check_concurrency,
            file.password_check_concurrency
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

    /// Refuses values that would make the server misbehave: zero timers and
    /// limits, a heartbeat timeout that a healthy client could not meet.
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
        // Timers below a millisecond would be rounded to zero by the core's clock.
        let ms = Duration::from_millis(1);
        for (key, d) in [
            ("block_time", c.block_time),
            ("time_out", c.time_out),
            ("heartbeat", c.heartbeat),
            ("heartbeat_timeout", c.heartbeat_timeout),
            ("login_timeout", c.login_timeout),
            ("failure_memory", c.failure_memory),
        ] {
            if d < ms {
                return Err(invalid(key, "must be at least 0.001 seconds"));
            }
        }
        if c.heartbeat_timeout <= c.heartbeat {
            return Err(invalid(
                "heartbeat_timeout",
                "must be longer than heartbeat, or every session would die between probes",
            ));
        }
        if c.confirm_delay >= c.heartbeat_timeout {
            return Err(invalid(
                "confirm_delay",
                "must be shorter than heartbeat_timeout",
            ));
        }
        for (key, v) in [
            ("block_after", u64::from(c.block_after)),
            ("last_hour_minutes", c.last_hour_minutes),
            ("max_login_attempts", u64::from(c.max_login_attempts)),
            ("max_held_per_user", c.max_held_per_user as u64),
            ("max_pending_lines", c.max_pending_lines as u64),
            ("held_page_size", c.held_page_size.map_or(1, |p| p as u64)),
            ("max_failure_records", c.max_failure_records as u64),
            (
                "flood_burst",
                c.flood.as_ref().map_or(1, |f| u64::from(f.burst)),
            ),
            (
                "flood_backlog",
                c.flood.as_ref().map_or(1, |f| f.backlog as u64),
            ),
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
            (
                "password_check_concurrency",
                self.password_check_concurrency as u64,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if c.max_line_bytes < 64 {
            return Err(invalid("max_line_bytes", "must be at least 64"));
        }
        if c.max_line_bytes > 1 << 20 {
            return Err(invalid("max_line_bytes", "must be at most 1048576"));
        }
        if self.max_outbound_bytes < c.max_line_bytes {
            return Err(invalid(
                "max_outbound_bytes",
                "must be at least max_line_bytes",
            ));
        }
        if self.password_check_concurrency > 1024 {
            return Err(invalid(
                "password_check_concurrency",
                "must be at most 1024",
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
max_connections = 100
max_connections_per_ip = 3
max_outbound_bytes = 65536
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
        assert_eq!(s.max_connections, 100);
        assert_eq!(s.max_connections_per_ip, 3);
        assert_eq!(s.max_outbound_bytes, 65536);
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
            ("max_line_bytes = -1", "max_line_bytes"),
            ("time_out = -1.5", "time_out"),
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
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
    }
}
