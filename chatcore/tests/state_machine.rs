//! Model-based test of `chatcore::Server` with proptest-state-machine.
//!
//! The *reference state machine* ([`Model`]) generates transitions: clients
//! connecting, logging in (right or wrong password), sending commands or
//! hostile bytes, dying abruptly, answering heartbeat probes, time passing
//! (small steps and jumps past every timeout), and the server shutting down
//! or crashing and being restored from what it persisted.
//!
//! The *system under test* ([`Sut`]) drives a real `Server` the way a
//! driver would (bytes through a `LineDecoder`, password checks answered at
//! once, `handle_timeout` at every deadline `poll_timeout` names, every
//! `Persist` applied to a `Restored` that a restart is built from) and feeds
//! every input and every output to an [`Oracle`]: a model of PROTOCOL.md
//! that predicts login outcomes exactly, accounts for every accepted message
//! per recipient, and checks the invariants listed on [`Oracle`].
//!
//! The oracle lives on the SUT side rather than in the reference model
//! because some of the protocol's timing rules leave the server a choice
//! (does an unknown command count as activity for `time_out`?), so the
//! oracle checks those within the window the protocol allows, using what the
//! server actually did.
//!
//! Knobs (environment variables): `CHAT_SM_CASES=<n>` cases per property
//! (default 160); `CHAT_SM_STATS=1` prints per-case counts of every kind of
//! server line (to check generation still reaches lockouts, full boxes...);
//! `CHAT_SM_SHOW=1` prints every transition; `CHAT_SM_MUTATE=<how>` breaks
//! the server's output on purpose (`drop-deliver`, `dup-deliver`,
//! `swap-deliver`, `drop-reply`, `drop-hold`, `drop-probe`, `drop-close`)
//! to see that the oracle notices.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use chatcore::names::is_valid_user_name;
use chatcore::testing::strategies::{
    hostile_bytes, hostile_line, line_style, render_command, LineStyle,
};
use chatcore::wire::{
    Ask, Audience, ByeReason, Command, DecodeError, ErrorReply, HeldBecause, IdleArg, LineDecoder,
    ParseError, ServerLine, Status,
};
use chatcore::{
    Accounts, Config, Credential, Input, Message, MessageKind, Output, PasswordCheck, Restored,
    Server, SessionId, StoreOp, Time,
};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config as ProptestConfig;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};

// ---------------------------------------------------------------------------
// The world: accounts, addresses, configuration.

const USERS: [(&str, &str); 3] = [("ann", "pw-ann"), ("bob", "pw bob"), ("cat", "Pw-Cat")];
/// A valid name that is no account.
const STRANGER: &str = "zed";
const NAMES: [&str; 4] = ["ann", "bob", "cat", STRANGER];
/// 2026-11-24T17:12:01.500Z: not on a whole second, so timestamps are
/// visibly truncated.
const START_MS: u64 = 1_795_540_321_500;

fn ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))
}

/// An address no transition uses, for the final drain.
fn fresh_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200))
}

fn config() -> Config {
    Config {
        block_time: Duration::from_secs(60),
        block_after: 3,
        time_out: Duration::from_secs(300),
        heartbeat: Duration::from_secs(20),
        heartbeat_timeout: Duration::from_secs(60),
        confirm_delay: Duration::from_millis(200),
        login_timeout: Duration::from_secs(30),
        last_hour_minutes: 60,
        max_login_attempts: 3,
        max_line_bytes: 128,
        max_held_per_user: 4,
        // Flood control delays replies past the round of their command;
        // the one-reply invariant is checked per round, so it is off here.
        flood: None,
        ..Config::default()
    }
}

fn accounts() -> Accounts {
    let mut a = Accounts::new();
    for (u, p) in USERS {
        a.insert(u, Credential::Plain(p.into())).unwrap();
    }
    a
}

fn password(user: &str, right: bool) -> String {
    match USERS.iter().find(|(u, _)| *u == user) {
        Some((_, p)) if right => (*p).to_string(),
        _ => "wrong".to_string(),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

// ---------------------------------------------------------------------------
// Transitions and the reference model.

/// Bytes that print as an escaped string, so shrunk cases stay readable.
#[derive(Clone, PartialEq, Eq)]
pub struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// One step. Sessions are named by the order they were opened in (`s`),
/// across restarts; a step on a session that is gone does nothing.
#[derive(Clone, Debug)]
pub enum Transition {
    /// A client connects from `10.0.0.<ip>`.
    Connect { ip: u8 },
    /// Session `s` answers `ASK username` and `ASK password`.
    Login {
        s: usize,
        user: &'static str,
        right: bool,
    },
    /// Session `s` sends `line` and a `\n`.
    Send { s: usize, line: String },
    /// Session `s` sends raw bytes (no terminator added).
    SendBytes { s: usize, bytes: Bytes },
    /// Session `s`'s connection dies (EOF or reset, no `logout`).
    Close { s: usize },
    /// Session `s` answers its latest `IDLE <seq>` (bare `idle` if none).
    AnswerProbe { s: usize },
    /// Time passes; every deadline on the way is run.
    Tick { millis: u64 },
    /// `Input::Shutdown`, then a new server restored from the store.
    Shutdown,
    /// The process dies; a new server is restored from the store.
    Crash,
}

#[derive(Clone, Debug)]
pub struct RefSession {
    alive: bool,
    user: Option<&'static str>,
}

/// What generation needs: roughly which sessions are alive and whose they
/// are, and a counter that makes every message text unique.
#[derive(Clone, Debug)]
pub struct Model {
    sessions: Vec<RefSession>,
    next_tag: u32,
}

fn text_suffix() -> impl Strategy<Value = &'static str> {
    select(
        &[
            "",
            "hi",
            "I am idle",
            "keep it idle",
            "idle",
            "idleidle",
            "ÉCHO ✓",
            "a\tb",
            "two  spaces  ",
            "all",
            "message x",
        ][..],
    )
}

fn tagged(tag: u32, suffix: &str) -> String {
    if suffix.is_empty() {
        format!("#{tag}")
    } else {
        format!("#{tag} {suffix}")
    }
}

/// A command a logged-in client might send, typed in a random style.
fn command_line(tag: u32) -> impl Strategy<Value = String> {
    let name = || select(&NAMES[..]);
    let cmd = prop_oneof![
        6 => (name(), text_suffix()).prop_map(move |(to, sfx)| Command::Message {
            to: to.into(),
            text: tagged(tag, sfx),
        }),
        4 => (
            prop_oneof![
                Just(Audience::Online),
                Just(Audience::All),
                proptest::collection::vec(name(), 1..4)
                    .prop_map(|v| Audience::Users(v.into_iter().map(String::from).collect())),
            ],
            text_suffix()
        )
            .prop_map(move |(audience, sfx)| Command::Broadcast {
                audience,
                text: tagged(tag, sfx),
            }),
        2 => Just(Command::WhoElse),
        2 => prop_oneof![0u64..3, 0u64..70].prop_map(|minutes| Command::WhoLast { minutes }),
        2 => Just(Command::Idle(IdleArg::Busy)),
        2 => Just(Command::Idle(IdleArg::Online)),
        1 => Just(Command::Idle(IdleArg::None)),
        1 => Just(Command::Logout),
    ];
    prop_oneof![
        12 => (cmd, prop_oneof![Just(LineStyle::plain()), line_style()]).prop_map(|(c, s)| render_command(&c, &s)),
        1 => select(&["message ann", "broadcast user zed message hi", "wholast 32 idle", "dance", "", "   ", "idle later"][..])
            .prop_map(String::from),
    ]
}

impl ReferenceStateMachine for Model {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            sessions: Vec::new(),
            next_tag: 0,
        })
        .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Transition> {
        state.transitions_with(&Weights::GENERAL)
    }

    fn preconditions(state: &Model, t: &Transition) -> bool {
        state.allows(t)
    }

    fn apply(state: Model, t: &Transition) -> Model {
        state.step(t)
    }
}

/// How often each kind of transition is generated.
pub struct Weights {
    connect: u32,
    login: u32,
    wrong_password: u32,
    send: u32,
    hostile: u32,
    close: u32,
    probe: u32,
    tick: u32,
    restart: u32,
}

impl Weights {
    /// Everything, commands most.
    const GENERAL: Weights = Weights {
        connect: 3,
        login: 6,
        wrong_password: 1,
        send: 14,
        hostile: 1,
        close: 1,
        probe: 4,
        tick: 6,
        restart: 1,
    };
    /// Long conversations: many commands, few logins, boxes filling up.
    const TRAFFIC: Weights = Weights {
        connect: 2,
        login: 4,
        wrong_password: 0,
        send: 24,
        hostile: 0,
        close: 2,
        probe: 6,
        tick: 3,
        restart: 1,
    };
    /// Logins from two addresses, half of them wrong, and time: lockout,
    /// attempts per connection, login timeout, already-online.
    const LOGIN: Weights = Weights {
        connect: 4,
        login: 10,
        wrong_password: 8,
        send: 2,
        hostile: 1,
        close: 1,
        probe: 1,
        tick: 4,
        restart: 1,
    };
}

impl Model {
    fn transitions_with(&self, w: &Weights) -> BoxedStrategy<Transition> {
        let state = self;
        let tick = prop_oneof![
            5 => 0u64..1_500,
            3 => 1_000u64..25_000,
            1 => 25_000u64..400_000,
        ]
        .prop_map(|millis| Transition::Tick { millis });
        let connect = (1u8..=2).prop_map(|ip| Transition::Connect { ip }).boxed();
        if !state.sessions.iter().any(|s| s.alive) {
            return prop_oneof![6 => connect, 1 => tick, 1 => Just(Transition::Crash)].boxed();
        }
        let alive: Vec<usize> = (0..state.sessions.len())
            .filter(|i| state.sessions[*i].alive)
            .collect();
        let logged: Vec<usize> = alive
            .iter()
            .copied()
            .filter(|i| state.sessions[*i].user.is_some())
            .collect();
        let waiting: Vec<usize> = alive
            .iter()
            .copied()
            .filter(|i| state.sessions[*i].user.is_none())
            .collect();
        let any_s = || {
            let all: Vec<usize> = if alive.is_empty() {
                (0..state.sessions.len()).collect()
            } else {
                alive.clone()
            };
            select(all)
        };
        let tag = state.next_tag;
        let free: Vec<&'static str> = NAMES
            .iter()
            .copied()
            .filter(|n| !state.sessions.iter().any(|x| x.alive && x.user == Some(*n)))
            .collect();
        let login = if waiting.is_empty() {
            connect.clone()
        } else {
            (
                select(waiting.clone()),
                prop_oneof![3 => select(free), 1 => select(&NAMES[..])],
                prop_oneof![w.login => Just(true), w.wrong_password => Just(false)],
            )
                .prop_map(|(s, user, right)| Transition::Login { s, user, right })
                .boxed()
        };
        let send = if logged.is_empty() {
            login.clone().boxed()
        } else {
            (select(logged.clone()), command_line(tag))
                .prop_map(|(s, line)| Transition::Send { s, line })
                .boxed()
        };
        let hostile = (any_s(), hostile_line()).prop_map(|(s, line)| Transition::Send { s, line });
        let bytes = (any_s(), hostile_bytes())
            .prop_map(|(s, b)| Transition::SendBytes { s, bytes: Bytes(b) });
        let close = any_s().prop_map(|s| Transition::Close { s });
        let probe = if logged.is_empty() {
            tick.clone().boxed()
        } else {
            select(logged.clone())
                .prop_map(|s| Transition::AnswerProbe { s })
                .boxed()
        };
        prop_oneof![
            w.connect => connect,
            w.login + w.wrong_password => login,
            w.send => send,
            w.hostile => hostile,
            w.hostile => bytes,
            w.close => close,
            w.probe => probe,
            w.tick => tick,
            w.restart => Just(Transition::Shutdown),
            w.restart => Just(Transition::Crash),
        ]
        .boxed()
    }

    fn allows(&self, t: &Transition) -> bool {
        let state = self;
        match t {
            Transition::Login { s, .. }
            | Transition::Send { s, .. }
            | Transition::SendBytes { s, .. }
            | Transition::Close { s }
            | Transition::AnswerProbe { s } => *s < state.sessions.len(),
            _ => true,
        }
    }

    fn step(mut self, t: &Transition) -> Model {
        let state = &mut self;
        match t {
            Transition::Connect { .. } => state.sessions.push(RefSession {
                alive: true,
                user: None,
            }),
            Transition::Login { s, user, right } => {
                let taken = state
                    .sessions
                    .iter()
                    .any(|x| x.alive && x.user == Some(*user));
                let r = &mut state.sessions[*s];
                if r.alive && r.user.is_none() && *right && *user != STRANGER && !taken {
                    r.user = Some(user);
                }
            }
            Transition::Send { s, line } => {
                state.next_tag += 1;
                if Command::parse(line) == Ok(Command::Logout) && state.sessions[*s].user.is_some()
                {
                    state.sessions[*s].alive = false;
                }
            }
            Transition::Close { s } => state.sessions[*s].alive = false,
            Transition::Tick { millis } => {
                for r in &mut state.sessions {
                    if *millis >= 30_000 && r.user.is_none() || *millis >= 60_000 {
                        r.alive = false;
                    }
                }
            }
            Transition::Shutdown | Transition::Crash => {
                for r in &mut state.sessions {
                    r.alive = false;
                }
            }
            Transition::SendBytes { .. } | Transition::AnswerProbe { .. } => {}
        }
        self
    }
}

/// The same model, generating mostly commands (see [`Weights::TRAFFIC`]).
pub struct TrafficModel;

impl ReferenceStateMachine for TrafficModel {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Model::init_state()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Transition> {
        state.transitions_with(&Weights::TRAFFIC)
    }

    fn preconditions(state: &Model, t: &Transition) -> bool {
        state.allows(t)
    }

    fn apply(state: Model, t: &Transition) -> Model {
        state.step(t)
    }
}

/// The same model, generating mostly logins (see [`Weights::LOGIN`]).
pub struct LoginModel;

impl ReferenceStateMachine for LoginModel {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Model::init_state()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Transition> {
        state.transitions_with(&Weights::LOGIN)
    }

    fn preconditions(state: &Model, t: &Transition) -> bool {
        state.allows(t)
    }

    fn apply(state: Model, t: &Transition) -> Model {
        state.step(t)
    }
}

// ---------------------------------------------------------------------------
// The oracle.

type Key = (u32, SessionId);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    AwaitUser,
    AwaitPassword(String),
    LoggedIn(String),
}

#[derive(Clone, Debug)]
struct OSession {
    ip: IpAddr,
    opened: Time,
    stage: Stage,
    closed: bool,
    /// Failed login attempts on this connection.
    failed: u32,
    /// The attempt count is unknowable (an invalid name or a malformed line
    /// was sent while logging in): accept either ending.
    tainted: bool,
    login_at: Time,
    busy: bool,
    last_rx: Time,
    last_cmd_def: Time,
    last_cmd_any: Time,
    last_probe: Time,
    next_seq: Option<u64>,
    /// Ids delivered in this session life, in order.
    delivered: Vec<u64>,
    /// (probe seq, deliveries written before it).
    probes: Vec<(u64, usize)>,
    unprobed_since: Option<Time>,
    offline_expect: usize,
}

#[derive(Clone, Debug)]
struct Pair {
    count: u32,
    until: Option<Time>,
}

#[derive(Clone, Debug)]
enum Kind {
    Open(Key),
    Line(Key, String),
    Malformed(Key, DecodeError),
    Closed(Key),
    Timeout,
    Shutdown,
    Restore,
}

/// What a user's command must be answered with, computed before the round.
#[derive(Clone, Debug)]
enum Expect {
    /// Blank lines and heartbeat replies.
    Nothing,
    Exactly(ServerLine),
    Who,
    Last(u64),
    Online(Vec<u64>),
    Logout,
    Message {
        to: String,
        text: String,
        fate: Option<Fate>,
    },
    Broadcast {
        text: String,
        unknown: Vec<String>,
        recipients: Vec<(String, Fate)>,
    },
}

#[derive(Clone, Debug)]
struct Fate {
    /// `None`: not a recipient (offline, online-only broadcast).
    route: Option<Route>,
    full_allowed: bool,
    full_required: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Deliver,
    Hold(HeldBecause),
}

/// The invariants, checked on every round (one input or one deadline and
/// all the outputs it caused):
///
/// * a new session gets exactly `HELLO CHAT/1`, `ASK username`;
/// * no output for a session after its `Close` or after `Input::Closed`;
/// * login outcomes are exactly PROTOCOL §3's: lockout after 3 consecutive
///   bad credentials per (name, address) across connections, `ERR blocked
///   <secs-left>` (rounded up) + `BYE blocked` without a password check
///   while blocked, `already-online`, `max_login_attempts` per connection;
///   a blocked pair, a wrong password or an online name never logs in;
/// * every command from a logged-in client gets exactly one reply line
///   (`OK`/`WHO`/`LAST`/`ERR`/`BYE`) of the right kind and content, none
///   for heartbeat replies and blank lines, and deliveries it causes come
///   before it; `WHO` is exact, `LAST` within its window;
/// * message accounting per recipient: a message is routed exactly as §4/§5
///   say (delivered, held offline/busy, refused when the box is full), is
///   never delivered twice in one session life nor after it was confirmed,
///   is delivered in order per (sender, recipient), and everything owed is
///   delivered at the next login (`OFFLINE <n>`, oldest first) or on
///   `idle online`; nothing is released from the store unconfirmed, and at
///   every restart the store holds exactly what is owed;
/// * ids strictly increase, are reserved before use, and never go back
///   across restarts; a message never changes (id, ts, from, text);
///   timestamps are the acceptance second;
/// * timers: `BYE login-timeout`, `BYE timeout` and heartbeat death neither
///   early nor late; `IDLE` probes numbered +1 per session, at least every
///   `heartbeat`, and within a second after deliveries;
/// * `Input::Shutdown` ends every session with `BYE shutdown`.
struct Oracle {
    cfg: Config,
    accounts: Accounts,
    epoch: u32,
    sess: BTreeMap<Key, OSession>,
    online: BTreeMap<String, Key>,
    pairs: BTreeMap<(String, IpAddr), Pair>,
    msgs: BTreeMap<u64, Arc<Message>>,
    owed: BTreeMap<String, BTreeSet<u64>>,
    max_id: Option<u64>,
    reserved: u64,
    ever: BTreeSet<String>,
    left: BTreeMap<String, (Time, Time)>,
    trace: Vec<String>,
    /// How often each interesting thing happened, for tuning generation.
    stats: BTreeMap<&'static str, usize>,
}

fn is_reply(l: &ServerLine) -> bool {
    matches!(
        l,
        ServerLine::LoggedIn { .. }
            | ServerLine::Delivered { .. }
            | ServerLine::Queued { .. }
            | ServerLine::Broadcasted { .. }
            | ServerLine::Status(_)
            | ServerLine::Who(_)
            | ServerLine::Last(_)
            | ServerLine::Err(_)
            | ServerLine::Bye(_)
    )
}

fn label(l: &ServerLine) -> &'static str {
    match l {
        ServerLine::Hello => "HELLO",
        ServerLine::Ask(_) => "ASK",
        ServerLine::LoggedIn { .. } => "OK-login",
        ServerLine::Offline { .. } => "OFFLINE",
        ServerLine::Deliver(_) => "deliver",
        ServerLine::Delivered { .. } => "OK-delivered",
        ServerLine::Queued {
            because: HeldBecause::Busy,
            ..
        } => "OK-queued-busy",
        ServerLine::Queued { .. } => "OK-queued-offline",
        ServerLine::Broadcasted { full, .. } if !full.is_empty() => "OK-broadcast-full",
        ServerLine::Broadcasted { .. } => "OK-broadcast",
        ServerLine::Status(_) => "OK-status",
        ServerLine::Who(_) => "WHO",
        ServerLine::Last(_) => "LAST",
        ServerLine::Idle { .. } => "IDLE",
        ServerLine::Err(e) => match e {
            ErrorReply::LineTooLong { .. } => "ERR-line-too-long",
            ErrorReply::BadEncoding => "ERR-bad-encoding",
            ErrorReply::BadCredentials => "ERR-bad-credentials",
            ErrorReply::AlreadyOnline => "ERR-already-online",
            ErrorReply::Blocked { .. } => "ERR-blocked",
            ErrorReply::UnknownCommand { .. } => "ERR-unknown-command",
            ErrorReply::Usage { .. } => "ERR-usage",
            ErrorReply::UnknownUser { .. } => "ERR-unknown-user",
            ErrorReply::QueueFull { .. } => "ERR-queue-full",
            ErrorReply::RateLimited { .. } => "ERR-rate-limited",
            ErrorReply::Unavailable { .. } => "ERR-unavailable",
        },
        ServerLine::Bye(r) => match r {
            ByeReason::Logout => "BYE-logout",
            ByeReason::Timeout => "BYE-timeout",
            ByeReason::Shutdown => "BYE-shutdown",
            ByeReason::Blocked => "BYE-blocked",
            ByeReason::LoginFailed => "BYE-login-failed",
            ByeReason::LoginTimeout => "BYE-login-timeout",
        },
    }
}

fn ceil_secs(d: Duration) -> u64 {
    ms(d).div_ceil(1000)
}

impl Oracle {
    fn new() -> Self {
        Oracle {
            cfg: config(),
            accounts: accounts(),
            epoch: 0,
            sess: BTreeMap::new(),
            online: BTreeMap::new(),
            pairs: BTreeMap::new(),
            msgs: BTreeMap::new(),
            owed: BTreeMap::new(),
            max_id: None,
            reserved: 0,
            ever: BTreeSet::new(),
            left: BTreeMap::new(),
            trace: Vec::new(),
            stats: BTreeMap::new(),
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn note(&mut self, s: String) {
        self.trace.push(s);
        if self.trace.len() > 80 {
            self.trace.drain(..20);
        }
    }

    #[track_caller]
    fn fail(&self, msg: &str) -> ! {
        panic!(
            "PROTOCOL VIOLATION: {msg}\n--- recent trace (oldest first) ---\n{}",
            self.trace.join("\n")
        )
    }

    fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(&msg());
        }
    }

    fn s(&self, key: Key) -> &OSession {
        &self.sess[&key]
    }

    fn owed(&self, u: &str) -> BTreeSet<u64> {
        self.owed.get(u).cloned().unwrap_or_default()
    }

    fn blocked_secs(&self, user: &str, ip: IpAddr, now: Time) -> Option<u64> {
        let until = self.pairs.get(&(user.to_string(), ip))?.until?;
        (until > now).then(|| ceil_secs(until.since(now)))
    }

    fn fate(&self, r: &str, holds_offline: bool) -> Fate {
        let owed = self.owed(r);
        let (route, held_only) = match self.online.get(r) {
            Some(k) => {
                let s = self.s(*k);
                let held = owed.iter().filter(|id| !s.delivered.contains(id)).count();
                let route = if s.busy {
                    Route::Hold(HeldBecause::Busy)
                } else {
                    Route::Deliver
                };
                (Some(route), held)
            }
            None => (
                holds_offline.then_some(Route::Hold(HeldBecause::Offline)),
                owed.len(),
            ),
        };
        let max = self.cfg.max_held_per_user;
        Fate {
            route,
            full_allowed: owed.len() >= max,
            full_required: held_only >= max,
        }
    }

    fn confirm(&mut self, key: Key, upto: usize) {
        let s = self.s(key).clone();
        let Stage::LoggedIn(u) = &s.stage else { return };
        let owed = self.owed.entry(u.clone()).or_default();
        for id in &s.delivered[..upto.min(s.delivered.len())] {
            owed.remove(id);
        }
    }

    fn end_session(&mut self, key: Key, now: Time) {
        let s = self.sess.get_mut(&key).unwrap();
        s.closed = true;
        if let Stage::LoggedIn(u) = &s.stage {
            let u = u.clone();
            if self.online.get(&u) == Some(&key) {
                self.online.remove(&u);
                self.left.insert(u, (now, now));
            }
        }
    }

    /// Before the outputs: update what the input changes and say what the
    /// reply must be.
    fn before(&mut self, now: Time, kind: &Kind) -> Option<Expect> {
        match kind {
            Kind::Open(_) => None,
            Kind::Closed(key) => {
                self.end_session(*key, now);
                None
            }
            Kind::Line(key, line) => {
                let s = self.s(*key).clone();
                let Stage::LoggedIn(u) = &s.stage else {
                    return None;
                };
                let sm = self.sess.get_mut(key).unwrap();
                sm.last_rx = now;
                let parsed = Command::parse(line);
                let heartbeat = matches!(
                    parsed,
                    Ok(Command::Idle(IdleArg::None | IdleArg::Seq(_))) | Err(ParseError::Blank)
                );
                if !heartbeat {
                    sm.last_cmd_any = now;
                    if parsed.is_ok() {
                        sm.last_cmd_def = now;
                    }
                }
                Some(match parsed {
                    Err(ParseError::Blank) | Ok(Command::Idle(IdleArg::None)) => Expect::Nothing,
                    Ok(Command::Idle(IdleArg::Seq(q))) => {
                        if let Some((_, upto)) = s.probes.iter().find(|(seq, _)| *seq == q) {
                            self.confirm(*key, *upto);
                        }
                        Expect::Nothing
                    }
                    Err(ParseError::UnknownCommand(word)) => {
                        Expect::Exactly(ServerLine::Err(ErrorReply::UnknownCommand { word }))
                    }
                    Err(ParseError::Usage(of)) => {
                        Expect::Exactly(ServerLine::Err(ErrorReply::Usage {
                            usage: of.text(self.cfg.last_hour_minutes),
                        }))
                    }
                    Ok(Command::WhoElse) => Expect::Who,
                    Ok(Command::WhoLast { minutes }) => {
                        if minutes < self.cfg.last_hour_minutes {
                            Expect::Last(minutes)
                        } else {
                            Expect::Exactly(ServerLine::Err(ErrorReply::Usage {
                                usage: format!("wholast <0-{}>", self.cfg.last_hour_minutes - 1),
                            }))
                        }
                    }
                    Ok(Command::Idle(IdleArg::Busy)) => {
                        Expect::Exactly(ServerLine::Status(Status::Busy))
                    }
                    Ok(Command::Idle(IdleArg::Online)) => {
                        let held: Vec<u64> = self
                            .owed(u)
                            .into_iter()
                            .filter(|id| !s.delivered.contains(id))
                            .collect();
                        self.sess.get_mut(key).unwrap().busy = false;
                        Expect::Online(held)
                    }
                    Ok(Command::Logout) => {
                        self.confirm(*key, usize::MAX);
                        Expect::Logout
                    }
                    Ok(Command::Message { to, text }) => {
                        let fate = self.accounts.contains(&to).then(|| self.fate(&to, true));
                        Expect::Message { to, text, fate }
                    }
                    Ok(Command::Broadcast { audience, text }) => {
                        let (names, holds_offline): (Vec<String>, bool) = match &audience {
                            Audience::Online => (self.online.keys().cloned().collect(), false),
                            Audience::All => {
                                (self.accounts.names().map(String::from).collect(), true)
                            }
                            Audience::Users(list) => (list.clone(), true),
                        };
                        let unknown: Vec<String> = names
                            .iter()
                            .filter(|n| !self.accounts.contains(n))
                            .cloned()
                            .collect();
                        let set: BTreeSet<String> = names.into_iter().collect();
                        let recipients = set
                            .into_iter()
                            .filter(|n| self.accounts.contains(n))
                            .map(|n| {
                                let f = self.fate(&n, holds_offline);
                                (n, f)
                            })
                            .collect();
                        Expect::Broadcast {
                            text,
                            unknown,
                            recipients,
                        }
                    }
                })
            }
            Kind::Malformed(key, e) => {
                let s = self.s(*key).clone();
                if !matches!(s.stage, Stage::LoggedIn(_)) {
                    self.sess.get_mut(key).unwrap().tainted = true;
                    return None;
                }
                let sm = self.sess.get_mut(key).unwrap();
                sm.last_rx = now;
                sm.last_cmd_any = now;
                Some(Expect::Exactly(ServerLine::Err(match e {
                    DecodeError::LineTooLong { .. } => ErrorReply::LineTooLong {
                        max: self.cfg.max_line_bytes,
                    },
                    DecodeError::BadEncoding => ErrorReply::BadEncoding,
                })))
            }
            Kind::Timeout | Kind::Shutdown | Kind::Restore => None,
        }
    }

    /// Sees a message on the wire or in the store; true if it is new.
    fn see_message(&mut self, m: &Arc<Message>, now: Time, new: &mut Option<Arc<Message>>) -> bool {
        if let Some(old) = self.msgs.get(&m.id) {
            self.check(**old == **m, || {
                format!("message {} changed: was {old:?}, now {m:?}", m.id)
            });
            return false;
        }
        if let Some(n) = new {
            self.check(n.id == m.id, || {
                format!("two new messages in one round: {} and {}", n.id, m.id)
            });
            self.check(**n == **m, || {
                format!("message {} differs between copies", m.id)
            });
            return true;
        }
        if let Some(max) = self.max_id {
            self.check(m.id > max, || {
                format!(
                    "new message id {} not above every earlier id (max {max})",
                    m.id
                )
            });
        }
        self.check(m.id < self.reserved, || {
            format!(
                "id {} used before it was reserved (ReserveIds next={})",
                m.id, self.reserved
            )
        });
        self.check(m.at == now.whole_second(), || {
            format!(
                "new message {} stamped {:?}, accepted at {:?}",
                m.id,
                m.at,
                now.whole_second()
            )
        });
        *new = Some(Arc::clone(m));
        true
    }

    /// One round: an input (or a deadline) and every output it caused.
    fn round(&mut self, now: Time, kind: Kind, outputs: &[Output]) {
        self.note(format!("@{} {kind:?}", now.unix_millis() - START_MS));
        let pre = match &kind {
            Kind::Line(k, _) | Kind::Malformed(k, _) => self.sess.get(k).cloned(),
            _ => None,
        };
        let expect = self.before(now, &kind);
        let mut lines: BTreeMap<Key, Vec<ServerLine>> = BTreeMap::new();
        let mut closes: Vec<Key> = Vec::new();
        let mut checked: BTreeSet<Key> = BTreeSet::new();
        let mut new_msg: Option<Arc<Message>> = None;
        let mut delivered_to: BTreeSet<String> = BTreeSet::new();
        let mut hold_users: BTreeSet<String> = BTreeSet::new();

        for o in outputs {
            match o {
                Output::Send { session, line } => {
                    let key = (self.epoch, *session);
                    self.note(format!("  -> {} {line}", session.get()));
                    self.count(label(line));
                    let Some(s) = self.sess.get(&key).cloned() else {
                        self.fail(&format!("line for a session never opened: {session}"))
                    };
                    self.check(!s.closed, || {
                        format!("output {line:?} for closed session {session}")
                    });
                    self.check(!closes.contains(&key), || {
                        format!("output {line:?} for session {session} after its Close")
                    });
                    let user = match &s.stage {
                        Stage::LoggedIn(u) => Some(u.clone()),
                        _ => None,
                    };
                    if !matches!(line, ServerLine::Deliver(_)) {
                        self.check(s.offline_expect == 0, || {
                            format!(
                                "OFFLINE announced {} more messages, got {line:?}",
                                s.offline_expect
                            )
                        });
                    }
                    match line {
                        ServerLine::Deliver(m) => {
                            let Some(u) = user else {
                                self.fail(&format!("delivery to a session not logged in: {line}"))
                            };
                            let is_new = self.see_message(m, now, &mut new_msg);
                            self.check(!s.busy, || format!("delivery to busy {u}: {line}"));
                            self.check(!s.delivered.contains(&m.id), || {
                                format!("{u} got message {} twice in one session life", m.id)
                            });
                            let owed = self.owed(&u);
                            self.check(is_new || owed.contains(&m.id), || {
                                format!("{u} got message {} which it is not owed (confirmed already, or never addressed to it)", m.id)
                            });
                            for id in owed.range(..m.id) {
                                let earlier = &self.msgs[id];
                                self.check(
                                    earlier.from != m.from || s.delivered.contains(id),
                                    || {
                                        format!(
                                            "order: {u} got {} from {} before owed earlier {id}",
                                            m.id, m.from
                                        )
                                    },
                                );
                            }
                            if is_new {
                                delivered_to.insert(u.clone());
                            }
                            let sm = self.sess.get_mut(&key).unwrap();
                            sm.delivered.push(m.id);
                            sm.unprobed_since.get_or_insert(now);
                            sm.offline_expect = sm.offline_expect.saturating_sub(1);
                        }
                        ServerLine::Offline { count } => {
                            self.check(user.is_some(), || "OFFLINE before login".into());
                            self.check(*count > 0, || "OFFLINE 0 was sent".into());
                            self.sess.get_mut(&key).unwrap().offline_expect = *count;
                        }
                        ServerLine::Idle { seq } => {
                            self.check(user.is_some(), || {
                                "IDLE probe to a session not logged in".into()
                            });
                            if let Some(n) = s.next_seq {
                                self.check(*seq == n, || {
                                    format!("probe IDLE {seq}, expected IDLE {n}")
                                });
                            }
                            let sm = self.sess.get_mut(&key).unwrap();
                            sm.next_seq = Some(seq + 1);
                            sm.probes.push((*seq, sm.delivered.len()));
                            sm.last_probe = now;
                            sm.unprobed_since = None;
                        }
                        ServerLine::LoggedIn { user: u } => {
                            self.check(matches!(kind, Kind::Line(k, _) if k == key), || {
                                "OK login outside a login round".into()
                            });
                            self.check(
                                matches!(&s.stage, Stage::AwaitPassword(l) if l == u),
                                || format!("OK login {u} in stage {:?}", s.stage),
                            );
                            let sm = self.sess.get_mut(&key).unwrap();
                            sm.stage = Stage::LoggedIn(u.clone());
                            sm.login_at = now;
                            sm.last_rx = now;
                            sm.last_cmd_def = now;
                            sm.last_cmd_any = now;
                            sm.last_probe = now;
                        }
                        _ => {}
                    }
                    lines.entry(key).or_default().push(line.clone());
                }
                Output::Close { session } => {
                    let key = (self.epoch, *session);
                    self.note(format!("  -> {} <close>", session.get()));
                    let Some(s) = self.sess.get(&key) else {
                        self.fail(&format!("Close for a session never opened: {session}"))
                    };
                    self.check(!s.closed && !closes.contains(&key), || {
                        format!("Close for session {session} which is already closed")
                    });
                    closes.push(key);
                }
                Output::CheckPassword(pc) => {
                    checked.insert((self.epoch, pc.session));
                }
                Output::Persist(op) => {
                    self.note(format!("  persist {op:?}"));
                    match op {
                        StoreOp::Hold { user, message } => {
                            let is_new = self.see_message(message, now, &mut new_msg);
                            if is_new {
                                hold_users.insert(user.clone());
                            } else {
                                self.check(self.owed(user).contains(&message.id), || {
                                    format!(
                                        "Hold of message {} for {user}, which is not owed it",
                                        message.id
                                    )
                                });
                            }
                        }
                        StoreOp::Release { user, id } => {
                            self.check(!self.owed(user).contains(id), || {
                                format!(
                                    "Release of message {id} for {user} before it was confirmed"
                                )
                            });
                        }
                        StoreOp::ReserveIds { next } => {
                            self.check(*next >= self.reserved, || {
                                format!("ReserveIds went back from {} to {next}", self.reserved)
                            });
                            self.reserved = *next;
                        }
                        _ => {}
                    }
                }
                Output::Event(_) | Output::NotifyWritten { .. } => {}
            }
        }

        let empty = Vec::new();
        match &kind {
            Kind::Open(key) => {
                let got = lines.get(key).unwrap_or(&empty);
                self.check(
                    got == &vec![ServerLine::Hello, ServerLine::Ask(Ask::Username)],
                    || format!("a new session got {got:?}"),
                );
                self.check(lines.len() == 1 && closes.is_empty(), || {
                    "opening a session touched another".into()
                });
            }
            Kind::Closed(_) => {
                self.check(lines.is_empty() && closes.is_empty(), || {
                    format!("output after Input::Closed: {lines:?} {closes:?}")
                });
            }
            Kind::Line(key, line) => {
                self.only_deliveries_elsewhere(*key, &lines, &closes);
                let got = lines.get(key).unwrap_or(&empty).clone();
                let closed = closes.contains(key);
                match expect {
                    Some(e) => self.check_reply(
                        now,
                        *key,
                        e,
                        &got,
                        closed,
                        new_msg.as_ref(),
                        &delivered_to,
                        &hold_users,
                    ),
                    None => self.check_login(
                        now,
                        *key,
                        pre.unwrap(),
                        line,
                        &got,
                        closed,
                        checked.contains(key),
                    ),
                }
            }
            Kind::Malformed(key, _) => {
                self.only_deliveries_elsewhere(*key, &lines, &closes);
                let got = lines.get(key).unwrap_or(&empty).clone();
                let closed = closes.contains(key);
                match expect {
                    Some(e) => self.check_reply(
                        now,
                        *key,
                        e,
                        &got,
                        closed,
                        None,
                        &delivered_to,
                        &hold_users,
                    ),
                    None => self.check_relaxed_login(*key, "<malformed>", &got, closed),
                }
            }
            Kind::Timeout => {
                self.check(new_msg.is_none(), || {
                    "a message appeared in a timer round".into()
                });
                for (key, got) in &lines {
                    let s = self.s(*key);
                    for l in got {
                        let ok = match l {
                            ServerLine::Idle { .. } => true,
                            ServerLine::Bye(ByeReason::LoginTimeout) => {
                                !matches!(s.stage, Stage::LoggedIn(_))
                            }
                            ServerLine::Bye(ByeReason::Timeout) => {
                                matches!(s.stage, Stage::LoggedIn(_))
                            }
                            _ => false,
                        };
                        self.check(ok, || {
                            format!("unexpected {l:?} to {key:?} ({:?}) on a timer", s.stage)
                        });
                    }
                    if matches!(got.last(), Some(ServerLine::Bye(_))) {
                        self.check(closes.contains(key), || {
                            format!("BYE without Close for {key:?}")
                        });
                    }
                }
                for key in &closes {
                    let s = self.s(*key).clone();
                    let bye = lines.get(key).and_then(|l| l.last()).cloned();
                    match (&s.stage, bye) {
                        (Stage::LoggedIn(_), Some(ServerLine::Bye(ByeReason::Timeout))) => {
                            let due = s.last_cmd_def + self.cfg.time_out;
                            self.check(now >= due, || {
                                format!(
                                    "BYE timeout at {} but last command at {} (time_out {:?})",
                                    now.unix_millis() - START_MS,
                                    s.last_cmd_def.unix_millis() - START_MS,
                                    self.cfg.time_out
                                )
                            });
                        }
                        (Stage::LoggedIn(_), Some(ServerLine::Idle { .. }) | None) => {
                            let due = s.last_rx + self.cfg.heartbeat_timeout;
                            *self.stats.entry("heartbeat-death").or_default() += 1;
                            self.check(now >= due, || {
                                format!("session {key:?} dropped without BYE at {} but last heard from at {}", now.unix_millis() - START_MS, s.last_rx.unix_millis() - START_MS)
                            });
                        }
                        (
                            Stage::AwaitUser | Stage::AwaitPassword(_),
                            Some(ServerLine::Bye(ByeReason::LoginTimeout)),
                        ) => {
                            let due = s.opened + self.cfg.login_timeout;
                            self.check(now >= due, || {
                                format!("BYE login-timeout early for {key:?}")
                            });
                        }
                        (stage, bye) => {
                            self.fail(&format!("timer closed {key:?} in {stage:?} after {bye:?}"))
                        }
                    }
                }
            }
            Kind::Shutdown => {
                let open: Vec<Key> = self
                    .sess
                    .iter()
                    .filter(|(k, s)| k.0 == self.epoch && !s.closed)
                    .map(|(k, _)| *k)
                    .collect();
                for key in &open {
                    let got = lines.get(key).unwrap_or(&empty);
                    self.check(
                        got.last() == Some(&ServerLine::Bye(ByeReason::Shutdown))
                            && got.iter().all(|l| {
                                matches!(
                                    l,
                                    ServerLine::Idle { .. } | ServerLine::Bye(ByeReason::Shutdown)
                                )
                            })
                            && closes.contains(key),
                        || {
                            format!(
                                "on shutdown {key:?} got {got:?}, closed: {}",
                                closes.contains(key)
                            )
                        },
                    );
                }
            }
            Kind::Restore => {
                self.check(lines.is_empty() && closes.is_empty(), || {
                    "output to sessions at restore".into()
                });
            }
        }

        if let Some(m) = &new_msg {
            self.msgs.insert(m.id, Arc::clone(m));
            self.max_id = Some(self.max_id.map_or(m.id, |x| x.max(m.id)));
            for r in delivered_to.iter().chain(hold_users.iter()) {
                self.owed.entry(r.clone()).or_default().insert(m.id);
            }
        }
        for key in closes {
            self.end_session(key, now);
        }
    }

    fn only_deliveries_elsewhere(
        &self,
        key: Key,
        lines: &BTreeMap<Key, Vec<ServerLine>>,
        closes: &[Key],
    ) {
        for (k, got) in lines {
            if *k != key {
                self.check(
                    got.iter()
                        .all(|l| matches!(l, ServerLine::Deliver(_) | ServerLine::Idle { .. })),
                    || format!("input from {key:?} sent {got:?} to {k:?}"),
                );
            }
        }
        self.check(closes.iter().all(|k| *k == key), || {
            format!("input from {key:?} closed {closes:?}")
        });
    }

    /// A logged-in client's line: the reply.
    #[allow(clippy::too_many_arguments)]
    fn check_reply(
        &mut self,
        now: Time,
        key: Key,
        expect: Expect,
        got: &[ServerLine],
        closed: bool,
        new_msg: Option<&Arc<Message>>,
        delivered_to: &BTreeSet<String>,
        hold_users: &BTreeSet<String>,
    ) {
        let s = self.s(key).clone();
        let Stage::LoggedIn(me) = &s.stage else {
            unreachable!()
        };
        let replies: Vec<(usize, &ServerLine)> = got
            .iter()
            .enumerate()
            .filter(|(_, l)| is_reply(l))
            .collect();
        if let Expect::Nothing = expect {
            self.check(replies.is_empty(), || {
                format!("a heartbeat reply or blank line was answered: {got:?}")
            });
            self.check(!closed, || "a heartbeat reply closed the session".into());
            self.check(new_msg.is_none(), || {
                "a heartbeat reply sent a message".into()
            });
            return;
        }
        self.check(replies.len() == 1, || {
            format!("expected exactly one reply line, got {got:?}")
        });
        let (at, reply) = (replies[0].0, replies[0].1.clone());
        self.check(
            got[at + 1..]
                .iter()
                .all(|l| !matches!(l, ServerLine::Deliver(_) | ServerLine::Offline { .. })),
            || format!("deliveries after the reply: {got:?}"),
        );
        let expect_no_msg = |this: &Self| {
            this.check(delivered_to.is_empty() && hold_users.is_empty(), || {
                format!("routed a message though the reply was {reply:?}")
            });
        };
        let check_msg = |this: &Self, kind: MessageKind, text: &str| {
            let Some(m) = new_msg else {
                this.fail(&format!(
                    "reply {reply:?} but no message was delivered or held"
                ))
            };
            this.check(m.from == *me && m.kind == kind && m.text == text, || {
                format!("message altered: sent {kind:?} {text:?} as {me}, got {m:?}")
            });
        };
        match expect {
            Expect::Nothing => unreachable!(),
            Expect::Exactly(line) => {
                self.check(reply == line, || format!("expected {line:?}, got {got:?}"));
                expect_no_msg(self);
                self.check(!closed, || "an ERR closed the session".into());
                if reply == ServerLine::Status(Status::Busy) {
                    self.sess.get_mut(&key).unwrap().busy = true;
                }
            }
            Expect::Who => {
                let others: Vec<String> =
                    self.online.keys().filter(|u| *u != me).cloned().collect();
                self.check(reply == ServerLine::Who(others.clone()), || {
                    format!("expected WHO {others:?}, got {reply:?}")
                });
            }
            Expect::Last(m) => {
                let ServerLine::Last(names) = &reply else {
                    self.fail(&format!("expected LAST, got {reply:?}"))
                };
                self.check(names.windows(2).all(|w| w[0] < w[1]), || {
                    format!("LAST not sorted: {names:?}")
                });
                let window = Duration::from_secs(m * 60);
                let start = now - window;
                for u in names {
                    self.check(u != me, || "LAST lists the asking user".into());
                    self.check(self.ever.contains(u), || {
                        format!("LAST lists {u}, who never logged in")
                    });
                    let may = self.online.contains_key(u)
                        || self
                            .left
                            .get(u)
                            .is_some_and(|(_, hi)| (*hi + Duration::from_secs(1)) >= start);
                    self.check(may, || {
                        format!(
                            "LAST {m} lists {u}, who left before the window ({:?})",
                            self.left.get(u)
                        )
                    });
                }
                for u in self.ever.iter().filter(|u| *u != me) {
                    let must = self.online.contains_key(u)
                        || self
                            .left
                            .get(u)
                            .is_some_and(|(lo, _)| *lo >= (start + Duration::from_secs(1)));
                    self.check(!must || names.contains(u), || {
                        format!(
                            "LAST {m} misses {u} (online: {}, left {:?})",
                            self.online.contains_key(u),
                            self.left.get(u)
                        )
                    });
                }
            }
            Expect::Online(held) => {
                self.check(reply == ServerLine::Status(Status::Online), || {
                    format!("expected OK status online, got {got:?}")
                });
                self.check_batch(got, at, &held);
            }
            Expect::Logout => {
                self.check(
                    reply == ServerLine::Bye(ByeReason::Logout) && closed,
                    || format!("logout got {got:?}, closed: {closed}"),
                );
            }
            Expect::Message { to, text, fate } => {
                let Some(fate) = fate else {
                    self.check(
                        reply == ServerLine::Err(ErrorReply::UnknownUser { user: to.clone() }),
                        || {
                            format!(
                                "message to unknown {to}: expected ERR unknown-user, got {reply:?}"
                            )
                        },
                    );
                    return expect_no_msg(self);
                };
                match &reply {
                    ServerLine::Err(ErrorReply::QueueFull { user }) if *user == to => {
                        self.check(fate.full_allowed, || {
                            format!(
                                "queue-full for {to} whose box holds {} < max",
                                self.owed(&to).len()
                            )
                        });
                        expect_no_msg(self);
                    }
                    _ => {
                        self.check(!fate.full_required, || {
                            format!("{to}'s box is full but got {reply:?}")
                        });
                        let want = match fate.route {
                            Some(Route::Deliver) => ServerLine::Delivered { user: to.clone() },
                            Some(Route::Hold(because)) => ServerLine::Queued {
                                user: to.clone(),
                                because,
                            },
                            None => unreachable!(),
                        };
                        self.check(reply == want, || {
                            format!("expected {want:?}, got {reply:?}")
                        });
                        check_msg(self, MessageKind::Private, &text);
                        let deliv = fate.route == Some(Route::Deliver);
                        let only_to: BTreeSet<String> = [to.clone()].into();
                        self.check(
                            if deliv { *delivered_to == only_to && hold_users.is_subset(&only_to) } else { delivered_to.is_empty() && *hold_users == only_to },
                            || format!("message to {to} was delivered to {delivered_to:?}, held for {hold_users:?}"),
                        );
                    }
                }
            }
            Expect::Broadcast {
                text,
                unknown,
                recipients,
            } => {
                if !unknown.is_empty() {
                    self.check(matches!(&reply, ServerLine::Err(ErrorReply::UnknownUser { user }) if unknown.contains(user)), || {
                        format!("broadcast naming unknown {unknown:?}: got {reply:?}")
                    });
                    return expect_no_msg(self);
                }
                let ServerLine::Broadcasted {
                    delivered,
                    queued,
                    full,
                } = &reply
                else {
                    self.fail(&format!("expected OK broadcast, got {got:?}"))
                };
                self.check(full.windows(2).all(|w| w[0] < w[1]), || {
                    format!("full list not sorted: {full:?}")
                });
                let held: BTreeSet<String> = hold_users.difference(delivered_to).cloned().collect();
                self.check(*delivered == delivered_to.len() && *queued == held.len(), || {
                    format!("OK broadcast {delivered} {queued} but delivered to {delivered_to:?}, held for {held:?}")
                });
                for (r, f) in &recipients {
                    let in_full = full.contains(r);
                    let route = if delivered_to.contains(r) {
                        Some(Route::Deliver)
                    } else if held.contains(r) {
                        Some(Route::Hold(HeldBecause::Offline))
                    } else {
                        None
                    };
                    let expected = match f.route {
                        Some(Route::Deliver) => Some(Route::Deliver),
                        Some(Route::Hold(_)) => Some(Route::Hold(HeldBecause::Offline)),
                        None => None,
                    };
                    if in_full {
                        self.check(
                            f.route.is_some() && f.full_allowed && route.is_none(),
                            || {
                                format!(
                                    "broadcast named {r} full (box {}), route {route:?}",
                                    self.owed(r).len()
                                )
                            },
                        );
                    } else {
                        self.check(!(f.route.is_some() && f.full_required), || {
                            format!("{r}'s box is full but not named")
                        });
                        self.check(route == expected, || {
                            format!("broadcast to {r}: expected {:?}, got {route:?}", f.route)
                        });
                    }
                }
                let names: BTreeSet<&String> = recipients.iter().map(|(r, _)| r).collect();
                for r in delivered_to
                    .iter()
                    .chain(hold_users.iter())
                    .chain(full.iter())
                {
                    self.check(names.contains(r), || {
                        format!("broadcast reached {r}, who is no recipient")
                    });
                }
                if !delivered_to.is_empty() || !held.is_empty() {
                    check_msg(self, MessageKind::Broadcast, &text);
                }
            }
        }
    }

    /// Held messages written as a batch before `got[at]`: `OFFLINE <n>` and
    /// exactly the `n` expected messages, oldest first.
    fn check_batch(&self, got: &[ServerLine], at: usize, held: &[u64]) {
        let ids: Vec<u64> = got[..at]
            .iter()
            .filter_map(|l| match l {
                ServerLine::Deliver(m) => Some(m.id),
                _ => None,
            })
            .collect();
        self.check(ids == held, || {
            format!("expected held messages {held:?} oldest first, got {ids:?} in {got:?}")
        });
        let offline = got[..at]
            .iter()
            .position(|l| matches!(l, ServerLine::Offline { .. }));
        if held.is_empty() {
            self.check(offline.is_none(), || "OFFLINE with nothing held".into());
        } else {
            self.check(
                offline.is_some_and(|i| {
                    got[i] == ServerLine::Offline { count: held.len() }
                        && got[i + 1..=i + held.len()]
                            .iter()
                            .all(|l| matches!(l, ServerLine::Deliver(_)))
                }),
                || {
                    format!(
                        "expected OFFLINE {} then the messages, got {got:?}",
                        held.len()
                    )
                },
            );
        }
    }

    fn check_attempt_end(&mut self, key: Key, next: Option<&ServerLine>, closed: bool) {
        let s = self.sess.get_mut(&key).unwrap();
        s.failed += 1;
        let (failed, tainted) = (s.failed, s.tainted);
        let last = failed >= self.cfg.max_login_attempts;
        match next {
            Some(ServerLine::Ask(Ask::Username)) if !closed => {
                self.check(tainted || !last, || format!("attempt {failed} of {} did not end the connection", self.cfg.max_login_attempts));
                self.sess.get_mut(&key).unwrap().stage = Stage::AwaitUser;
            }
            Some(ServerLine::Bye(ByeReason::LoginFailed)) if closed => {
                self.check(tainted || last, || format!("BYE login-failed after {failed} attempts"));
            }
            other => self.fail(&format!("after a failed attempt expected ASK username or BYE login-failed, got {other:?} (closed: {closed})")),
        }
    }

    /// A line from a session that is not logged in.
    #[allow(clippy::too_many_arguments)]
    fn check_login(
        &mut self,
        now: Time,
        key: Key,
        s: OSession,
        line: &str,
        got: &[ServerLine],
        closed: bool,
        checked: bool,
    ) {
        match &s.stage {
            Stage::LoggedIn(_) => unreachable!(),
            Stage::AwaitUser => {
                // The core drops spaces and tabs around a typed user name
                // (docs/protocol-notes.md) and nothing else; the trimmed
                // name is what the lockout pair and the login use.
                let line = line.trim_matches([' ', '\t']);
                if !is_valid_user_name(line) {
                    self.sess.get_mut(&key).unwrap().tainted = true;
                    return self.check_relaxed_login(key, line, got, closed);
                }
                let blocked = self.blocked_secs(line, s.ip, now);
                let online = self.online.contains_key(line);
                match got {
                    [ServerLine::Ask(Ask::Password)] if !closed => {
                        self.sess.get_mut(&key).unwrap().stage =
                            Stage::AwaitPassword(line.to_string());
                    }
                    [ServerLine::Err(ErrorReply::Blocked { seconds_left }), ServerLine::Bye(ByeReason::Blocked)]
                        if closed =>
                    {
                        self.check(blocked == Some(*seconds_left) && !checked, || {
                            format!("ERR blocked {seconds_left} for {line} (model: {blocked:?}, password checked: {checked})")
                        });
                    }
                    [ServerLine::Err(ErrorReply::AlreadyOnline), next] => {
                        self.check(online && blocked.is_none(), || {
                            format!(
                                "already-online for {line}, online: {online}, blocked: {blocked:?}"
                            )
                        });
                        self.check_attempt_end(key, Some(next), closed);
                    }
                    _ => self.fail(&format!(
                        "user name {line:?}: unexpected {got:?} (closed: {closed})"
                    )),
                }
            }
            Stage::AwaitPassword(user) => {
                if !is_valid_user_name(user) {
                    return self.check_relaxed_login(key, line, got, closed);
                }
                let user = user.clone();
                let pair = (user.clone(), s.ip);
                let blocked = self.blocked_secs(&user, s.ip, now);
                let right =
                    self.accounts.get(&user).and_then(|c| c.verify_plain(line)) == Some(true);
                let online = self.online.contains_key(&user);
                let count = self.pairs.get(&pair).map_or(0, |p| p.count);
                let blocks = count + 1 >= self.cfg.block_after;
                match got {
                    [ServerLine::LoggedIn { user: u }, ..] => {
                        self.check(*u == user && right && blocked.is_none() && !online && !closed, || {
                            format!("OK login {u}: right password {right}, blocked {blocked:?}, online elsewhere {online}, closed {closed}")
                        });
                        let held: Vec<u64> = self.owed(&user).into_iter().collect();
                        self.check_batch(got, got.len(), &held);
                        self.check(
                            got[1..].iter().all(|l| matches!(l, ServerLine::Offline { .. } | ServerLine::Deliver(_))),
                            || format!("login round got {got:?}"),
                        );
                        let sm = self.sess.get_mut(&key).unwrap();
                        sm.busy = false;
                        self.online.insert(user.clone(), key);
                        self.ever.insert(user.clone());
                        self.pairs.remove(&pair);
                    }
                    [ServerLine::Err(ErrorReply::Blocked { seconds_left }), ServerLine::Bye(ByeReason::Blocked)] if closed => {
                        if let Some(b) = blocked {
                            self.check(*seconds_left == b && !checked, || {
                                format!("while blocked: ERR blocked {seconds_left}, expected {b}; password checked: {checked}")
                            });
                        } else {
                            self.check(!right && blocks, || {
                                format!("ERR blocked for {user} but the pair was not blocked (right password {right}, {count} earlier failures)")
                            });
                            let secs = ceil_secs(self.cfg.block_time);
                            self.check(*seconds_left == secs, || format!("blocking attempt says {seconds_left}s, expected {secs}s"));
                            self.pairs.insert(pair, Pair { count: 0, until: Some(now + self.cfg.block_time) });
                        }
                    }
                    [ServerLine::Err(ErrorReply::BadCredentials), next] => {
                        self.check(blocked.is_none(), || format!("bad-credentials for {user} while blocked ({blocked:?}s left): the password was checked"));
                        self.check(!right, || format!("bad-credentials for {user} with the right password"));
                        self.check(!blocks, || format!("the {}th consecutive bad credentials for ({user}, {}) did not block", count + 1, s.ip));
                        let p = self.pairs.entry(pair).or_insert(Pair { count: 0, until: None });
                        p.count += 1;
                        self.check_attempt_end(key, Some(next), closed);
                    }
                    [ServerLine::Err(ErrorReply::AlreadyOnline), next] => {
                        self.check(online && blocked.is_none(), || format!("already-online for {user}: online {online}, blocked {blocked:?}"));
                        self.check_attempt_end(key, Some(next), closed);
                    }
                    _ => self.fail(&format!("password for {user:?} (right: {right}, blocked: {blocked:?}, online: {online}): unexpected {got:?} (closed: {closed})")),
                }
            }
        }
    }

    /// Login input whose outcome the protocol leaves open (an invalid user
    /// name, a malformed line): only login-phase lines, never a login.
    fn check_relaxed_login(&mut self, key: Key, line: &str, got: &[ServerLine], _closed: bool) {
        for l in got {
            self.check(
                matches!(
                    l,
                    ServerLine::Err(_)
                        | ServerLine::Ask(_)
                        | ServerLine::Bye(ByeReason::LoginFailed | ByeReason::Blocked)
                ),
                || format!("login line {line:?} got {got:?}"),
            );
        }
        let s = self.sess.get_mut(&key).unwrap();
        match got.iter().rev().find(|l| matches!(l, ServerLine::Ask(_))) {
            Some(ServerLine::Ask(Ask::Password)) => {
                s.stage = Stage::AwaitPassword(line.to_string())
            }
            Some(_) => s.stage = Stage::AwaitUser,
            None => {}
        }
    }

    /// After time reached `now` and every deadline up to it ran: nothing
    /// that was due is still pending.
    fn check_not_late(&self, now: Time) {
        for (key, s) in &self.sess {
            if s.closed || key.0 != self.epoch {
                continue;
            }
            let t = |x: Time| x.unix_millis() as i64 - START_MS as i64;
            match &s.stage {
                Stage::LoggedIn(u) => {
                    self.check((s.last_rx + self.cfg.heartbeat_timeout) > now, || {
                        format!(
                            "{u} ({key:?}) silent since {} still alive at {} (heartbeat_timeout)",
                            t(s.last_rx),
                            t(now)
                        )
                    });
                    self.check((s.last_cmd_any + self.cfg.time_out) > now, || {
                        format!(
                            "{u} ({key:?}) idle since {} still alive at {} (time_out)",
                            t(s.last_cmd_any),
                            t(now)
                        )
                    });
                    self.check((s.last_probe + self.cfg.heartbeat) > now, || {
                        format!(
                            "{u} ({key:?}): no IDLE probe since {} at {} (heartbeat {:?})",
                            t(s.last_probe),
                            t(now),
                            self.cfg.heartbeat
                        )
                    });
                    if let Some(d) = s.unprobed_since {
                        self.check((d + Duration::from_secs(1)) > now, || {
                            format!(
                                "{u} ({key:?}): deliveries at {} still unprobed at {}",
                                t(d),
                                t(now)
                            )
                        });
                    }
                }
                _ => self.check((s.opened + self.cfg.login_timeout) > now, || {
                    format!(
                        "{key:?} not logged in since {} still open at {}",
                        t(s.opened),
                        t(now)
                    )
                }),
            }
        }
    }

    /// The server was rebuilt from `restored`: the store must hold exactly
    /// what is owed, and ids must not go back.
    fn restart(&mut self, now: Time, restored: &Restored) {
        self.note(format!("@{} <restart>", now.unix_millis() - START_MS));
        for u in self.accounts.names().map(String::from).collect::<Vec<_>>() {
            let owed = self.owed(&u);
            let stored: BTreeSet<u64> = restored
                .held
                .get(&u)
                .map(|v| v.iter().map(|m| m.id).collect())
                .unwrap_or_default();
            self.check(owed == stored, || {
                format!("at restart the store holds {stored:?} for {u}, but {owed:?} are owed (held or unconfirmed)")
            });
        }
        if let Some(max) = self.max_id {
            self.check(restored.next_id > max, || {
                format!("restored next_id {} would reuse id {max}", restored.next_id)
            });
        }
        for (u, key) in std::mem::take(&mut self.online) {
            let login_at = self.s(key).login_at;
            let lo = restored
                .last_seen
                .get(&u)
                .copied()
                .unwrap_or(login_at)
                .min(now);
            self.left.insert(u, (lo, now));
        }
        for (key, s) in self.sess.iter_mut() {
            if key.0 == self.epoch {
                s.closed = true;
            }
        }
        self.epoch += 1;
        self.reserved = restored.next_id;
    }
}

// ---------------------------------------------------------------------------
// The system under test: a Server and a driver around it.

pub struct Sut {
    server: Server,
    now: Time,
    restored: Restored,
    /// Session ordinal -> key.
    sessions: Vec<Key>,
    decoders: BTreeMap<Key, LineDecoder>,
    oracle: Oracle,
}

/// Breaks the server's output on purpose, to see the oracle notice
/// (`CHAT_SM_MUTATE=<name>`; a sanity check of this test, not of the core).
fn mutate(how: &str, outputs: &mut Vec<Output>) {
    let is_deliver = |o: &Output| {
        matches!(
            o,
            Output::Send {
                line: ServerLine::Deliver(_),
                ..
            }
        )
    };
    match how {
        "drop-deliver" => {
            if let Some(i) = outputs.iter().position(is_deliver) {
                outputs.remove(i);
            }
        }
        "dup-deliver" => {
            if let Some(i) = outputs.iter().position(is_deliver) {
                let o = outputs[i].clone();
                outputs.insert(i, o);
            }
        }
        "swap-deliver" => {
            let idx: Vec<usize> = outputs.iter().enumerate().filter(|(_, o)| is_deliver(o)).map(|(i, _)| i).collect();
            if idx.len() >= 2 {
                outputs.swap(idx[0], idx[1]);
            }
        }
        "drop-reply" => {
            if let Some(i) = outputs.iter().position(|o| matches!(o, Output::Send { line, .. } if matches!(line, ServerLine::Who(_) | ServerLine::Delivered { .. } | ServerLine::Last(_)))) {
                outputs.remove(i);
            }
        }
        "drop-release" => outputs.retain(|o| !matches!(o, Output::Persist(StoreOp::Release { .. }))),
        "drop-hold" => outputs.retain(|o| !matches!(o, Output::Persist(StoreOp::Hold { .. }))),
        "drop-probe" => outputs.retain(|o| !matches!(o, Output::Send { line: ServerLine::Idle { .. }, .. })),
        "drop-close" => outputs.retain(|o| !matches!(o, Output::Close { .. })),
        _ => {}
    }
}

impl Sut {
    fn new() -> Self {
        let now = Time::from_unix_millis(START_MS);
        let mut sut = Sut {
            server: Server::new(config(), accounts(), now),
            now,
            restored: Restored::default(),
            sessions: Vec::new(),
            decoders: BTreeMap::new(),
            oracle: Oracle::new(),
        };
        sut.settle(Kind::Restore);
        sut
    }

    /// Drains every output, answering password checks at once, applying
    /// every store change; then hands the round to the oracle.
    fn settle(&mut self, kind: Kind) {
        let mut outputs = Vec::new();
        loop {
            let mut checks: Vec<PasswordCheck> = Vec::new();
            while let Some(o) = self.server.poll_output() {
                match &o {
                    Output::Persist(op) => self.restored.apply(op),
                    Output::CheckPassword(pc) => checks.push(pc.clone()),
                    _ => {}
                }
                outputs.push(o);
                assert!(outputs.len() < 100_000, "the server does not stop talking");
            }
            if checks.is_empty() {
                break;
            }
            for pc in checks {
                let ok = pc
                    .credential
                    .as_ref()
                    .and_then(|c| c.verify_plain(&pc.password))
                    == Some(true);
                self.server.handle_input(
                    self.now,
                    Input::PasswordChecked {
                        session: pc.session,
                        check: pc.check,
                        ok,
                    },
                );
            }
        }
        if let Ok(m) = std::env::var("CHAT_SM_MUTATE") {
            mutate(&m, &mut outputs);
        }
        self.oracle.round(self.now, kind, &outputs);
        if let Some(t) = self.server.poll_timeout() {
            self.oracle.check(t >= self.now, || {
                format!(
                    "poll_timeout {} is in the past (now {})",
                    t.unix_millis() - START_MS,
                    self.now.unix_millis() - START_MS
                )
            });
        }
    }

    fn key(&self, s: usize) -> Option<Key> {
        let key = *self.sessions.get(s)?;
        let os = self.oracle.sess.get(&key)?;
        (!os.closed && key.0 == self.oracle.epoch).then_some(key)
    }

    fn connect(&mut self, ip: IpAddr) -> usize {
        let id = self.server.open_session(ip, self.now);
        let key = (self.oracle.epoch, id);
        self.oracle.check(!self.oracle.sess.contains_key(&key), || {
            format!("session id {id} reused")
        });
        self.oracle.sess.insert(
            key,
            OSession {
                ip,
                opened: self.now,
                stage: Stage::AwaitUser,
                closed: false,
                failed: 0,
                tainted: false,
                login_at: self.now,
                busy: false,
                last_rx: self.now,
                last_cmd_def: self.now,
                last_cmd_any: self.now,
                last_probe: self.now,
                next_seq: None,
                delivered: Vec::new(),
                probes: Vec::new(),
                unprobed_since: None,
                offline_expect: 0,
            },
        );
        self.decoders
            .insert(key, LineDecoder::new(config().max_line_bytes));
        self.settle(Kind::Open(key));
        self.sessions.push(key);
        self.sessions.len() - 1
    }

    fn feed(&mut self, key: Key, bytes: &[u8]) {
        let mut input = bytes;
        loop {
            if self.oracle.s(key).closed {
                return;
            }
            let Some(item) = self.decoders.get_mut(&key).unwrap().decode(&mut input) else {
                return;
            };
            let (input_value, kind) = match item {
                Ok(line) => (
                    Input::Line {
                        session: key.1,
                        line: line.clone(),
                    },
                    Kind::Line(key, line),
                ),
                Err(error) => (
                    Input::Malformed {
                        session: key.1,
                        error,
                    },
                    Kind::Malformed(key, error),
                ),
            };
            self.server.handle_input(self.now, input_value);
            self.settle(kind);
        }
    }

    fn send_line(&mut self, key: Key, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.feed(key, &bytes);
    }

    fn tick(&mut self, millis: u64) {
        let target = self.now + Duration::from_millis(millis);
        let mut n = 0;
        while let Some(d) = self.server.poll_timeout() {
            if d > target {
                break;
            }
            self.now = self.now.max(d);
            self.server.handle_timeout(self.now);
            self.settle(Kind::Timeout);
            if let Some(next) = self.server.poll_timeout() {
                self.oracle.check(next > self.now, || {
                    format!(
                        "after handle_timeout({}) poll_timeout is {}: a driver would spin",
                        self.now.unix_millis() - START_MS,
                        next.unix_millis() - START_MS
                    )
                });
            }
            n += 1;
            assert!(n < 10_000, "too many deadlines in one tick");
        }
        self.now = target;
        self.oracle
            .note(format!("@{} <time>", self.now.unix_millis() - START_MS));
        self.oracle.check_not_late(self.now);
    }

    fn restart(&mut self) {
        self.oracle.restart(self.now, &self.restored);
        self.server = Server::restore(config(), accounts(), self.restored.clone(), self.now);
        self.settle(Kind::Restore);
    }

    fn login(&mut self, key: Key, user: &str, right: bool) {
        if self.oracle.s(key).stage == Stage::AwaitUser {
            self.send_line(key, user);
        }
        if self.key_open(key) && matches!(self.oracle.s(key).stage, Stage::AwaitPassword(_)) {
            self.send_line(key, &password(user, right));
        }
    }

    fn key_open(&self, key: Key) -> bool {
        !self.oracle.s(key).closed
    }

    fn apply(&mut self, t: Transition) {
        match t {
            Transition::Connect { ip: i } => {
                self.connect(ip(i));
            }
            Transition::Login { s, user, right } => {
                if let Some(key) = self.key(s) {
                    self.login(key, user, right);
                }
            }
            Transition::Send { s, line } => {
                if let Some(key) = self.key(s) {
                    self.send_line(key, &line);
                }
            }
            Transition::SendBytes { s, bytes } => {
                if let Some(key) = self.key(s) {
                    self.feed(key, &bytes.0);
                }
            }
            Transition::Close { s } => {
                if let Some(key) = self.key(s) {
                    self.server
                        .handle_input(self.now, Input::Closed { session: key.1 });
                    self.settle(Kind::Closed(key));
                }
            }
            Transition::AnswerProbe { s } => {
                if let Some(key) = self.key(s) {
                    let os = self.oracle.s(key);
                    if matches!(os.stage, Stage::LoggedIn(_)) {
                        let line = match os.probes.last() {
                            Some((seq, _)) => format!("idle {seq}"),
                            None => "idle".to_string(),
                        };
                        self.send_line(key, &line);
                    }
                }
            }
            Transition::Tick { millis } => self.tick(millis),
            Transition::Shutdown => {
                self.server.handle_input(self.now, Input::Shutdown);
                self.settle(Kind::Shutdown);
                self.restart();
            }
            Transition::Crash => self.restart(),
        }
    }

    /// The last word on loss: crash, restart, and log every user in from a
    /// fresh address; each must get exactly what it is owed.
    fn drain_everything(&mut self) {
        self.restart();
        for (user, _) in USERS {
            let s = self.connect(fresh_ip());
            let key = self.sessions[s];
            self.login(key, user, true);
            self.oracle.check(
                matches!(&self.oracle.s(key).stage, Stage::LoggedIn(u) if u == user),
                || format!("{user} could not log in for the final drain"),
            );
        }
    }
}

impl StateMachineTest for Sut {
    type SystemUnderTest = Sut;
    type Reference = Model;

    fn init_test(_: &Model) -> Sut {
        Sut::new()
    }

    fn apply(mut sut: Sut, _: &Model, t: Transition) -> Sut {
        sut.oracle.note(format!("== {t:?}"));
        if std::env::var_os("CHAT_SM_SHOW").is_some() {
            eprintln!("== {t:?}");
        }
        sut.apply(t);
        sut
    }

    fn teardown(mut sut: Sut) {
        sut.drain_everything();
        if std::env::var_os("CHAT_SM_STATS").is_some() {
            let o = &sut.oracle;
            let mut line = format!(
                "stats: sessions={} messages={} epochs={}",
                o.sess.len(),
                o.msgs.len(),
                o.epoch
            );
            for (k, v) in &o.stats {
                line.push_str(&format!(" {k}={v}"));
            }
            eprintln!("{line}");
        }
    }
}

/// [`Sut`] driven by [`LoginModel`]'s transitions.
pub struct LoginSut;

impl StateMachineTest for LoginSut {
    type SystemUnderTest = Sut;
    type Reference = LoginModel;

    fn init_test(m: &Model) -> Sut {
        <Sut as StateMachineTest>::init_test(m)
    }

    fn apply(sut: Sut, m: &Model, t: Transition) -> Sut {
        <Sut as StateMachineTest>::apply(sut, m, t)
    }

    fn teardown(sut: Sut) {
        <Sut as StateMachineTest>::teardown(sut)
    }
}

/// [`Sut`] driven by [`TrafficModel`]'s transitions.
pub struct TrafficSut;

impl StateMachineTest for TrafficSut {
    type SystemUnderTest = Sut;
    type Reference = TrafficModel;

    fn init_test(m: &Model) -> Sut {
        <Sut as StateMachineTest>::init_test(m)
    }

    fn apply(sut: Sut, m: &Model, t: Transition) -> Sut {
        <Sut as StateMachineTest>::apply(sut, m, t)
    }

    fn teardown(sut: Sut) {
        <Sut as StateMachineTest>::teardown(sut)
    }
}

fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("CHAT_SM_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(160),
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    }
}

prop_state_machine! {
    #![proptest_config(proptest_config())]

    #[test]
    fn server_follows_the_protocol(sequential 10..60 => Sut);

    #[test]
    fn logins_follow_the_protocol(sequential 10..50 => LoginSut);

    #[test]
    fn traffic_follows_the_protocol(sequential 20..60 => TrafficSut);
}

// ---------------------------------------------------------------------------
// Focused examples: the same driver and oracle, fixed sequences.

fn run(ts: Vec<Transition>) -> BTreeMap<&'static str, usize> {
    let mut sut = Sut::new();
    for t in ts {
        sut.oracle.note(format!("== {t:?}"));
        sut.apply(t);
    }
    sut.drain_everything();
    sut.oracle.stats
}

use Transition::*;

fn send(s: usize, line: &str) -> Transition {
    Send {
        s,
        line: line.into(),
    }
}

#[test]
fn example_login_message_logout() {
    run(vec![
        Connect { ip: 1 },
        Login {
            s: 0,
            user: "ann",
            right: true,
        },
        Connect { ip: 1 },
        Login {
            s: 1,
            user: "bob",
            right: true,
        },
        send(0, "message bob #1 hi idle"),
        send(0, "message cat #2 held"),
        send(1, "whoelse"),
        send(1, "wholast 5"),
        Tick { millis: 300 },
        AnswerProbe { s: 1 },
        send(1, "logout"),
    ]);
}

#[test]
fn example_lockout_across_connections() {
    let stats = run(vec![
        Connect { ip: 1 },
        Login {
            s: 0,
            user: "bob",
            right: false,
        },
        Login {
            s: 0,
            user: "bob",
            right: false,
        },
        Connect { ip: 1 },
        Login {
            s: 1,
            user: "bob",
            right: false,
        },
        Connect { ip: 1 },
        Login {
            s: 2,
            user: "bob",
            right: true,
        },
        Connect { ip: 2 },
        Login {
            s: 3,
            user: "bob",
            right: true,
        },
        Tick { millis: 61_000 },
        Connect { ip: 1 },
        Login {
            s: 4,
            user: "bob",
            right: true,
        },
    ]);
    assert_eq!(stats.get("ERR-blocked"), Some(&2), "{stats:?}");
}

#[test]
fn example_unconfirmed_delivery_survives_a_crash() {
    run(vec![
        Connect { ip: 1 },
        Login {
            s: 0,
            user: "ann",
            right: true,
        },
        Connect { ip: 1 },
        Login {
            s: 1,
            user: "bob",
            right: true,
        },
        send(0, "message bob #1 before crash"),
        Crash,
        Connect { ip: 1 },
        Login {
            s: 2,
            user: "bob",
            right: true,
        },
    ]);
}

#[test]
fn example_busy_then_online() {
    run(vec![
        Connect { ip: 1 },
        Login {
            s: 0,
            user: "ann",
            right: true,
        },
        Connect { ip: 2 },
        Login {
            s: 1,
            user: "cat",
            right: true,
        },
        send(1, "idle busy"),
        send(0, "message cat #1 one"),
        send(0, "broadcast #2 two"),
        send(0, "broadcast all #3 three"),
        send(1, "idle online"),
        Tick { millis: 500 },
        AnswerProbe { s: 1 },
    ]);
}

#[test]
fn example_box_full() {
    let mut ts = vec![
        Connect { ip: 1 },
        Login {
            s: 0,
            user: "ann",
            right: true,
        },
    ];
    for i in 0..6 {
        ts.push(send(0, &format!("message bob #{i} x")));
    }
    ts.push(send(0, "broadcast all #9 everyone"));
    let stats = run(ts);
    assert_eq!(stats.get("ERR-queue-full"), Some(&2), "{stats:?}");
    assert_eq!(stats.get("OK-broadcast-full"), Some(&1), "{stats:?}");
}

#[test]
fn example_timeouts() {
    run(vec![
        Connect { ip: 1 },
        Login {
            s: 0,
            user: "ann",
            right: true,
        },
        Connect { ip: 1 },
        Tick { millis: 31_000 },
        AnswerProbe { s: 0 },
        Tick { millis: 19_000 },
        AnswerProbe { s: 0 },
        Tick { millis: 400_000 },
    ]);
}

#[test]
fn example_shutdown_keeps_everything() {
    run(vec![
        Connect { ip: 1 },
        Login {
            s: 0,
            user: "ann",
            right: true,
        },
        send(0, "broadcast all #1 hello"),
        Shutdown,
        Connect { ip: 1 },
        Login {
            s: 1,
            user: "ann",
            right: true,
        },
    ]);
}

/// `time_out`: a session that only answers probes is ended with `BYE
/// timeout`; `idle busy` counts as a command and restarts the clock.
#[test]
fn example_time_out() {
    let mut ts = vec![
        Connect { ip: 1 },
        Login {
            s: 0,
            user: "ann",
            right: true,
        },
        Connect { ip: 2 },
        Login {
            s: 1,
            user: "bob",
            right: true,
        },
    ];
    for i in 0..18 {
        ts.push(Tick { millis: 19_000 });
        ts.push(AnswerProbe { s: 0 });
        ts.push(AnswerProbe { s: 1 });
        if i == 8 {
            ts.push(send(1, "idle busy"));
        }
    }
    let stats = run(ts);
    assert_eq!(stats.get("BYE-timeout"), Some(&1), "{stats:?}");
}

/// Held messages come back after a crash even when the recipient had them
/// delivered but never confirmed, and confirmed ones do not.
#[test]
fn example_confirmed_are_not_redelivered() {
    run(vec![
        Connect { ip: 1 },
        Login {
            s: 0,
            user: "ann",
            right: true,
        },
        Connect { ip: 1 },
        Login {
            s: 1,
            user: "bob",
            right: true,
        },
        send(0, "message bob #1 confirmed"),
        Tick { millis: 1_000 },
        AnswerProbe { s: 1 },
        send(0, "message bob #2 unconfirmed"),
        Close { s: 1 },
        Connect { ip: 1 },
        Login {
            s: 2,
            user: "bob",
            right: true,
        },
        Crash,
    ]);
}

// ---------------------------------------------------------------------------
// Robustness outside the driver contract, with a bare server.

fn drain(server: &mut Server) -> Vec<Output> {
    std::iter::from_fn(|| server.poll_output())
        .take(100_000)
        .collect()
}

fn sent_to(outputs: &[Output], session: SessionId) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { session: s, line } if *s == session => Some(line.to_string()),
            Output::Close { session: s } if *s == session => Some("<close>".into()),
            _ => None,
        })
        .collect()
}

fn bare_login(server: &mut Server, now: Time, user: &str) -> SessionId {
    let s = server.open_session(ip(1), now);
    server.handle_input(
        now,
        Input::Line {
            session: s,
            line: user.into(),
        },
    );
    server.handle_input(
        now,
        Input::Line {
            session: s,
            line: password(user, true),
        },
    );
    for o in drain(server) {
        if let Output::CheckPassword(pc) = o {
            server.handle_input(
                now,
                Input::PasswordChecked {
                    session: pc.session,
                    check: pc.check,
                    ok: true,
                },
            );
        }
    }
    let out = drain(server);
    assert!(
        sent_to(&out, s).contains(&format!("OK login {user}")),
        "{out:?}"
    );
    s
}

/// Feeds `lines` straight to `Input::Line` (no decoder) from a logged-in
/// session and from one that is not; returns an error if `check` refuses an
/// output line to another session.
fn feed_raw(lines: Vec<String>, strict_controls: bool) -> Result<(), TestCaseError> {
    let now = Time::from_unix_millis(START_MS);
    let mut server = Server::new(config(), accounts(), now);
    let ann = bare_login(&mut server, now, "ann");
    let bob = bare_login(&mut server, now, "bob");
    let fresh = server.open_session(ip(2), now);
    drain(&mut server);
    for line in lines {
        for s in [ann, fresh] {
            server.handle_input(
                now,
                Input::Line {
                    session: s,
                    line: line.clone(),
                },
            );
            for o in drain(&mut server) {
                if let Output::Send { session, line } = &o {
                    prop_assert!(
                        *session != bob || matches!(line, ServerLine::Deliver(_)),
                        "bob got {line:?}"
                    );
                    let text = line.to_string();
                    prop_assert!(
                        !strict_controls
                            || *session == s
                            || !text
                                .chars()
                                .any(|c| (c.is_control() && c != '\t') || c == '\u{7f}'),
                        "control character on another user's wire: {:?}",
                        text
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Lines handed over without a decoder (control characters, `\n`, huge)
    /// never panic the core.
    #[test]
    fn raw_lines_never_panic(lines in proptest::collection::vec(hostile_line(), 1..8)) {
        feed_raw(lines, false)?;
    }

    /// Defence in depth, beyond the driver contract (`Input::Line` should
    /// come from a `LineDecoder`, which refuses control characters): a raw
    /// control character never reaches another user.
    #[test]
    fn raw_lines_never_leak_controls_to_others(lines in proptest::collection::vec(hostile_line(), 1..8)) {
        feed_raw(lines, true)?;
    }
}

/// A password check answered after its connection closed logs nobody in,
/// and input for a session the core has forgotten is ignored.
#[test]
fn late_password_answer_and_forgotten_sessions_are_ignored() {
    let now = Time::from_unix_millis(START_MS);
    let mut server = Server::new(config(), accounts(), now);
    let s = server.open_session(ip(1), now);
    server.handle_input(
        now,
        Input::Line {
            session: s,
            line: "ann".into(),
        },
    );
    server.handle_input(
        now,
        Input::Line {
            session: s,
            line: "pw-ann".into(),
        },
    );
    let check = drain(&mut server)
        .into_iter()
        .find_map(|o| match o {
            Output::CheckPassword(pc) => Some(pc),
            _ => None,
        })
        .expect("a password check");
    // Another connection is served while the check is pending.
    let other = server.open_session(ip(2), now);
    let out = drain(&mut server);
    assert_eq!(sent_to(&out, other), ["HELLO CHAT/1", "ASK username"]);
    server.handle_input(now, Input::Closed { session: s });
    let out = drain(&mut server);
    assert!(
        sent_to(&out, s).is_empty(),
        "output after Input::Closed: {out:?}"
    );
    server.handle_input(
        now,
        Input::PasswordChecked {
            session: s,
            check: check.check,
            ok: true,
        },
    );
    server.handle_input(
        now,
        Input::Line {
            session: s,
            line: "whoelse".into(),
        },
    );
    server.handle_input(
        now,
        Input::Malformed {
            session: s,
            error: DecodeError::BadEncoding,
        },
    );
    server.handle_input(now, Input::Closed { session: s });
    let out = drain(&mut server);
    assert!(
        sent_to(&out, s).is_empty(),
        "output for a closed session: {out:?}"
    );
    // ann is not online: she can log in elsewhere.
    bare_login(&mut server, now, "ann");
}
