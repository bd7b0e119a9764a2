//! The rules' knobs. Every bound the core enforces is named here.

use std::time::Duration;

/// The core's configuration. The defaults are the protocol's
/// ([PROTOCOL.md](crate::protocol)); each field names its default and the
/// section that states it.
///
/// `Config` is `#[non_exhaustive]`, so that a new knob is not a breaking
/// change: start from [`Config::default`] and change what you need with
/// the chainable `with_*` setters, one per field.
///
/// ```
/// use std::time::Duration;
/// use chatcore::Config;
///
/// let config = Config::default()
///     .with_block_after(5)
///     .with_heartbeat(Duration::from_secs(10))
///     .with_flood(None);
/// assert_eq!(config.block_after, 5);
/// ```
///
/// Setters rather than a builder: every `Config` is one the core can run
/// with (it clamps what it must, such as a zero rate), so there is no
/// `build()` step that could fail and nothing a builder would check. The
/// fields stay public, to read and to assign in place
/// (`config.block_after = 5`), as a driver merging its own configuration
/// file over the defaults does.
///
/// A struct literal no longer compiles outside this crate:
///
/// ```compile_fail,E0639
/// let config = chatcore::Config {
///     block_after: 5,
///     ..chatcore::Config::default()
/// };
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// How long a (user name, address) pair stays blocked after
    /// [`block_after`](Config::block_after) consecutive bad credentials.
    ///
    /// Default: `60 s` ([PROTOCOL.md §3](crate::protocol#3-login)).
    pub block_time: Duration,
    /// Consecutive bad credentials for one (user name, address) pair that
    /// block it.
    ///
    /// Default: `3` ([PROTOCOL.md §3](crate::protocol#3-login)).
    pub block_after: u32,
    /// How long a pair's run of bad credentials is remembered after its
    /// last failure. Without it, an attacker trying many names would grow
    /// the records without bound.
    ///
    /// Default: `86400 s` (24 h; [PROTOCOL.md §3](crate::protocol#3-login)).
    pub failure_memory: Duration,
    /// The most (user name, address) pairs with failures kept at once.
    /// Past it, the oldest unblocked records are forgotten first; blocked
    /// pairs are never forgotten before their block ends.
    ///
    /// Default: `100000` ([PROTOCOL.md §3](crate::protocol#3-login)).
    pub max_failure_records: usize,
    /// A logged-in session that sends no command (heartbeat replies aside)
    /// for this long gets `BYE timeout`.
    ///
    /// Default: `1800 s` ([PROTOCOL.md §6](crate::protocol#6-heartbeat-and-liveness)).
    pub time_out: Duration,
    /// The period of `IDLE <seq>` probes.
    ///
    /// Default: `30 s` ([PROTOCOL.md §6](crate::protocol#6-heartbeat-and-liveness)).
    pub heartbeat: Duration,
    /// A logged-in session from which nothing arrives for this long is dead.
    ///
    /// Default: `90 s` ([PROTOCOL.md §6](crate::protocol#6-heartbeat-and-liveness)).
    pub heartbeat_timeout: Duration,
    /// How long after deliveries the probe that confirms them is sent.
    ///
    /// Default: `0.2 s` ([PROTOCOL.md §6](crate::protocol#delivery-guarantee-at-least-once-in-order),
    /// delivery guarantee).
    pub confirm_delay: Duration,
    /// A connection not logged in by then gets `BYE login-timeout`.
    ///
    /// Default: `60 s` ([PROTOCOL.md §3](crate::protocol#3-login)).
    pub login_timeout: Duration,
    /// `wholast` takes minutes in `0..last_hour_minutes`.
    ///
    /// Default: `60` ([PROTOCOL.md §4](crate::protocol#4-commands)).
    pub last_hour_minutes: u64,
    /// Failed login attempts of any kind one connection gets.
    ///
    /// Default: `3` ([PROTOCOL.md §3](crate::protocol#3-login)).
    pub max_login_attempts: u32,
    /// The longest line, terminator included, in bytes. The core uses it in
    /// `ERR line-too-long`; the driver's [`LineDecoder`](crate::wire::LineDecoder)
    /// enforces it.
    ///
    /// Default: `4096` ([PROTOCOL.md §1](crate::protocol#1-transport-and-framing)).
    pub max_line_bytes: usize,
    /// The most messages one user's box holds.
    ///
    /// Default: `10000` ([PROTOCOL.md §5](crate::protocol#5-held-messages-the-offline-box)).
    pub max_held_per_user: usize,
    /// Whether live deliveries are persisted (as [`StoreOp::Hold`](crate::StoreOp::Hold))
    /// before they are written and released once confirmed, so that a
    /// crash of the server loses no accepted message. Off, only messages
    /// held for offline or busy users are durable.
    ///
    /// Default: `true` ([PROTOCOL.md §6](crate::protocol#delivery-guarantee-at-least-once-in-order),
    /// delivery guarantee).
    pub persist_deliveries: bool,
    /// Held messages are sent at most this many at a time: after each page
    /// the core asks, with [`Output::NotifyWritten`](crate::Output::NotifyWritten), to be told when
    /// the page has reached the socket, and only then sends the next. A
    /// login with 100 000 held messages then needs memory for one page, not
    /// for the whole box. `None` sends the whole box at once, for drivers
    /// that do not answer `NotifyWritten`.
    ///
    /// Default: `None`, since only a driver that answers `NotifyWritten`
    /// may page. chatd does, and sets it to as many of the longest lines as
    /// fit in its output bound (`held_page_size`, [PROTOCOL.md
    /// §9](crate::protocol#9-chatd-command-line-and-configuration)).
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
    ///
    /// Default: `1000` ([PROTOCOL.md §6](crate::protocol#delivery-guarantee-at-least-once-in-order),
    /// delivery guarantee).
    pub max_unconfirmed: usize,
    /// Flood control for logged-in sessions; `None` turns it off.
    ///
    /// Default: `Some(FloodLimit::default())`, on, with the limits
    /// [`FloodLimit`] names ([PROTOCOL.md §4](crate::protocol#flood-control),
    /// flood control).
    pub flood: Option<FloodLimit>,
    /// Lines a connection may send ahead while its password is being
    /// checked; they are answered once the check is done. More are refused
    /// with `ERR rate-limited`.
    ///
    /// Default: `64` ([PROTOCOL.md §3](crate::protocol#3-login)).
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

/// One chainable setter per field: `with_<field>(value)` returns the config
/// with that field set.
macro_rules! setters {
    ($($setter:ident => $field:ident: $ty:ty),* $(,)?) => {
        impl Config {
            $(
                #[doc = concat!(
                    "Sets [`", stringify!($field), "`](Config::", stringify!($field), ")."
                )]
                #[must_use]
                pub fn $setter(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters! {
    with_block_time => block_time: Duration,
    with_block_after => block_after: u32,
    with_failure_memory => failure_memory: Duration,
    with_max_failure_records => max_failure_records: usize,
    with_time_out => time_out: Duration,
    with_heartbeat => heartbeat: Duration,
    with_heartbeat_timeout => heartbeat_timeout: Duration,
    with_confirm_delay => confirm_delay: Duration,
    with_login_timeout => login_timeout: Duration,
    with_last_hour_minutes => last_hour_minutes: u64,
    with_max_login_attempts => max_login_attempts: u32,
    with_max_line_bytes => max_line_bytes: usize,
    with_max_held_per_user => max_held_per_user: usize,
    with_persist_deliveries => persist_deliveries: bool,
    with_held_page_size => held_page_size: Option<usize>,
    with_max_unconfirmed => max_unconfirmed: usize,
    with_flood => flood: Option<FloodLimit>,
    with_max_pending_lines => max_pending_lines: usize,
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
    ///
    /// Default: `10` (`flood_burst`, [PROTOCOL.md
    /// §9](crate::protocol#9-chatd-command-line-and-configuration)).
    pub burst: u32,
    /// The steady rate, in commands a second (at least 1).
    ///
    /// Default: `5` (`flood_per_second`, [PROTOCOL.md
    /// §9](crate::protocol#9-chatd-command-line-and-configuration)).
    pub per_second: u32,
    /// Commands that may wait for the rate before more are refused.
    ///
    /// Default: `100` (`flood_backlog`, [PROTOCOL.md
    /// §9](crate::protocol#9-chatd-command-line-and-configuration)).
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

#[cfg(test)]
mod tests;
