//! Each numeric key's range, and why its bounds are where they are. The
//! lower bound of a timer is a millisecond, the core's clock tick: below it
//! the timer rounds to zero and fires at once, for ever.
//!
//! Here too are [`Range`] itself and [`RANGES`], the list the file's keys
//! are checked against: the bounds are policy, kept apart from the parsing
//! so that each one sits next to the reason for it.

use std::time::Duration;

use super::file::Number;
use super::ConfigError;

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
    pub(super) fn describe(&self, say_whole: bool) -> String {
        let unit = match self.unit {
            Unit::Seconds => " s",
            Unit::Count => "",
        };
        let whole = if say_whole { "a whole number " } else { "" };
        format!("{whole}between {} and {}{unit}", self.min, self.max)
    }

    /// Checks a duration already in a [`Settings`].
    pub(super) fn check_duration(&self, d: Duration) -> Result<(), ConfigError> {
        self.check(Number::Float(d.as_secs_f64()))
    }

    /// Checks a count already in a [`Settings`].
    pub(super) fn check_count(&self, n: u64) -> Result<(), ConfigError> {
        #[allow(clippy::cast_precision_loss)]
        self.check(i64::try_from(n).map_or(Number::Float(n as f64), Number::Int))
    }

    /// A file's duration, checked.
    pub(super) fn duration(&self, v: Option<Number>) -> Result<Option<Duration>, ConfigError> {
        v.map(|n| {
            self.check(n)?;
            // In range, so finite, non-negative and far from overflowing.
            Ok(Duration::from_secs_f64(n.as_f64()))
        })
        .transpose()
    }

    /// A file's count, checked, as the type the setting has. Every range's
    /// maximum fits a `u32`, so the conversion cannot fail once checked.
    pub(super) fn count_of<T: TryFrom<u64>>(
        &self,
        v: Option<Number>,
    ) -> Result<Option<T>, ConfigError> {
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
/// Longer is felt: an `OK` a tenth of a second late looks slow. Zero sends
/// each at once.
pub const OK_DELAY: Range = Range::secs("ok_delay", 0.0, 0.1);
/// Every `OK` for a message waits for a commit: a second is as late as one
/// may come. Zero starts each commit as soon as the one before ends.
pub const COMMIT_INTERVAL: Range = Range::secs("commit_interval", 0.0, 1.0);
/// The journal file: at least a mebibyte (the step it grows by), at most
/// a gibibyte (what a start after a crash may have to replay).
pub const JOURNAL_SIZE: Range = Range::count("journal_size", 1 << 20, 1 << 30);
/// Changes waiting in memory for the database: at least a mebibyte, so
/// that a hold and its release usually meet there, at most a gibibyte.
pub const JOURNAL_MEMORY: Range = Range::count("journal_memory", 1 << 20, 1 << 30);
/// Each checker thread keeps an argon2 buffer (19 MiB with the default
/// parameters) and argon2 is CPU-bound: more threads than cores only
/// cost memory.
pub const PASSWORD_CHECK_CONCURRENCY: Range = Range::count("password_check_concurrency", 1, 256);

/// Every numeric key's range, in the order the README lists the keys.
pub const RANGES: &[Range] = &[
    BLOCK_TIME,
    BLOCK_AFTER,
    FAILURE_MEMORY,
    MAX_FAILURE_RECORDS,
    MAX_LOGIN_ATTEMPTS,
    LOGIN_TIMEOUT,
    TIME_OUT,
    HEARTBEAT,
    HEARTBEAT_TIMEOUT,
    CONFIRM_DELAY,
    LAST_HOUR_MINUTES,
    MAX_LINE_BYTES,
    MAX_HELD_PER_USER,
    MAX_PENDING_LINES,
    MAX_UNCONFIRMED,
    HELD_PAGE_SIZE,
    FLOOD_BURST,
    FLOOD_PER_SECOND,
    FLOOD_BACKLOG,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_IP,
    MAX_OUTBOUND_BYTES,
    MAX_UNWRITTEN_BYTES,
    JOURNAL_SIZE,
    JOURNAL_MEMORY,
    PASSWORD_CHECK_CONCURRENCY,
    OK_DELAY,
    COMMIT_INTERVAL,
];
