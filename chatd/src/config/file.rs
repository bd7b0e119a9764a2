//! The configuration file's format: TOML, every key optional, numbers kept
//! as written until [`Settings::merge`](super::Settings) checks them, so
//! that parsing and range checking each say one kind of thing.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{ConfigError, LogFormat};
#[cfg(doc)]
use super::{Range, Settings, TlsFiles};

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
    /// See [`Settings::ok_delay`].
    pub ok_delay: Option<Number>,
    /// See [`Settings::commit_interval`].
    pub commit_interval: Option<Number>,
    /// See [`Settings::journal`].
    pub journal_size: Option<Number>,
    /// See [`Settings::journal`].
    pub journal_memory: Option<Number>,
    /// See [`Settings::log_format`].
    pub log_format: Option<LogFormat>,
    /// See [`WebSettings::enabled`](super::WebSettings::enabled).
    pub http: Option<bool>,
    /// See [`WebSettings::host`](super::WebSettings::host).
    pub http_host: Option<String>,
    /// See [`WebSettings::port`](super::WebSettings::port).
    pub http_port: Option<u16>,
    /// See [`WebSettings::allowed_origins`](super::WebSettings::allowed_origins).
    pub allowed_origins: Option<Vec<String>>,
    /// See [`WebSettings::trusted_proxies`](super::WebSettings::trusted_proxies).
    pub trusted_proxies: Option<Vec<String>>,
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
