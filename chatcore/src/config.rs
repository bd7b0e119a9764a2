//! The rules' knobs. Every bound the core enforces is named here.

use std::time::Duration;

/// The core's configuration. The defaults are PROTOCOL.md's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long a (user name, address) pair stays blocked after
    /// [`Config::block_after`] consecutive bad credentials.
    pub block_time: Duration,
    /// Consecutive bad credentials for one (user name, address) pair that
    /// block it (PROTOCOL.md §3; default 3).
    pub block_after: u32,
    /// How long a pair's run of bad credentials is remembered after its
    /// last failure. Without it, an attacker trying many names would grow
    /// the records without bound.
    pub failure_memory: Duration,
    /// The most (user name, address) pairs with failures kept at once.
    /// Past it, the oldest unblocked records are forgotten first; blocked
    /// pairs are never forgotten before their block ends.
    pub max_failure_records: usize,
    /// A logged-in session that sends no command (heartbeat replies aside)
    /// for this long gets `BYE timeout`.
    pub time_out: Duration,
    /// The period of `IDLE <seq>` probes.
    pub heartbeat: Duration,
    /// A logged-in session from which nothing arrives for this long is dead.
    pub heartbeat_timeout: Duration,
    /// How long after deliveries the probe that confirms them is sent.
    pub confirm_delay: Duration,
    /// A connection not logged in by then gets `BYE login-timeout`.
    pub login_timeout: Duration,
    /// `wholast` takes minutes in `0..last_hour_minutes`.
    pub last_hour_minutes: u64,
    /// Failed login attempts of any kind one connection gets.
    pub max_login_attempts: u32,
    /// The longest line, terminator included, in bytes. The core uses it in
    /// `ERR line-too-long`; the driver's [`crate::wire::LineDecoder`]
    /// enforces it.
    pub max_line_bytes: usize,
    /// The most messages one user's box holds.
    pub max_held_per_user: usize,
    /// Whether live deliveries are persisted (as [`crate::StoreOp::Hold`])
    /// before they are written and released once confirmed, so that a
    /// crash of the server loses no accepted message. Off, only messages
    /// held for offline or busy users are durable.
    pub persist_deliveries: bool,
    /// Held messages are sent at most this many at a time: after each page
    /// the core asks, with [`crate::Output::NotifyWritten`], to be told when
    /// the page has reached the socket, and only then sends the next. A
    /// login with 100 000 held messages then needs memory for one page, not
    /// for the whole box. `None` sends the whole box at once, for drivers
    /// that do not answer `NotifyWritten`.
    pub held_page_size: Option<usize>,
    /// The most deliveries one session keeps waiting for confirmation
    /// (`idle <seq>`), which bounds a session's memory. A client that never
    /// confirms (one that answers probes with a bare `idle`) would otherwise
    /// grow the list for as long as it stays online. Past the bound, the
    /// oldest unconfirmed delivery is taken as confirmed: such a client is
    /// redelivered only its latest `max_unconfirmed` messages after a drop.
    /// Held messages go to a client that confirms no faster than it
    /// confirms them (pages are at most this long, and the next page waits
    /// until the list is below it), so it keeps the guarantee for its whole
    /// box; only more than this many live messages arriving between two of
    /// its answers would pass the bound. A client seen answering a probe
    /// with a bare `idle`, and never with `idle <seq>`, gets its box paced
    /// by its reading alone, trimmed like its live messages.
    pub max_unconfirmed: usize,
    /// Flood control for logged-in sessions; `None` turns it off.
    pub flood: Option<FloodLimit>,
    /// Lines a connection may send ahead while its password is being
    /// checked; they are answered once the check is done. More are refused
    /// with `ERR rate-limited`.
    pub max_pending_lines: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            block_time: Duration::from_secs(60),
            block_after: 3,
            failure_memory: Duration::from_secs(24 * 3600),
            max_failure_records: 100_000,
            time_out: Duration::from_secs(1800),
            heartbeat: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(90),
            confirm_delay: Duration::from_millis(200),
            login_timeout: Duration::from_secs(60),
            last_hour_minutes: 60,
            max_login_attempts: 3,
            max_line_bytes: 4096,
            max_held_per_user: 10_000,
            max_pending_lines: 64,
            persist_deliveries: true,
            held_page_size: None,
            max_unconfirmed: 1000,
            flood: Some(FloodLimit::default()),
        }
    }
}

/// How fast one session may send commands. Heartbeat replies are exempt.
///
/// A session may send `burst` commands at once and `per_second` a second
/// after that. Commands over the rate are delayed and run in order as the
/// rate allows; once `backlog` commands are waiting, each further one is
/// refused with `ERR rate-limited`. One flooder only delays itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloodLimit {
    /// Commands a session may send at once.
    pub burst: u32,
    /// The steady rate, in commands a second (at least 1).
    pub per_second: u32,
    /// Commands that may wait for the rate before more are refused.
    pub backlog: usize,
}

impl Default for FloodLimit {
    fn default() -> Self {
        FloodLimit {
            burst: 10,
            per_second: 5,
            backlog: 100,
        }
    }
}
