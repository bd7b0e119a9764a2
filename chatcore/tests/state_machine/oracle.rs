//! The oracle: a model of the protocol as docs/PROTOCOL.md states it (the
//! project's choices included) that reads every input the core gets and
//! every output it gives, in order, and fails on the first one the
//! protocol does not allow.
//!
//! It reads the output stream line by line rather than round by round,
//! because flood control, paged `OFFLINE` blocks and password checks
//! answered later all move replies out of the round of the line they
//! answer. Per session it keeps what the core still owes: the lines a login
//! step must produce (`script`, exact), the commands waiting for their one
//! reply (`waiting`, in order), the rest of an `OFFLINE` block (`block`),
//! and `ERR rate-limited` refusals. Each reply is checked against the state
//! at the moment it is sent, which is when the core ran the command.
//!
//! The invariants:
//!
//! * a new session gets exactly `HELLO CHAT/1`, `ASK username`;
//! * nothing is sent to a session after its `BYE`, its `Close` or
//!   `Input::Closed`, and a `Close` always has a cause (a `BYE`, a dead
//!   peer, the end of its input): a reply other than `BYE` leaves the
//!   session open;
//! * login outcomes are exactly docs/PROTOCOL.md §3's: lockout after 3
//!   consecutive bad credentials per (valid name, address) across
//!   connections, `ERR blocked <secs-left>` (rounded up) + `BYE blocked`
//!   for a blocked pair at the user name, at the password, and when a check
//!   comes back while the pair is blocked (then nothing is counted), names
//!   that are not valid user names never recorded nor blocked,
//!   `already-online` only after the right password, `max_login_attempts`
//!   per connection, lines sent ahead of a check answered in order after it
//!   (up to `max_pending_lines`, then `ERR rate-limited`);
//! * every command from a logged-in client gets exactly one reply, in the
//!   order the commands were sent, none for heartbeat replies and blank
//!   lines, deliveries it causes before it; `WHO` exact, `LAST` within its
//!   window;
//! * flood control: a command runs at once when nothing waits and the
//!   bucket (`burst` at once, `per_second` after) has a token; otherwise it
//!   waits, and runs as soon as a token is there (never sooner); past
//!   `backlog` waiting commands, more are refused with `ERR rate-limited`;
//! * an `OFFLINE <n>` block is `n` messages, oldest first, with nothing
//!   inside but `IDLE` probes, sent at most `held_page_size` at a time, the
//!   next page only after `Input::Written`; live messages for the session
//!   and waiting commands come after it; `OK status online` right after it;
//! * message accounting per recipient: a message is routed exactly as §4/§5
//!   say (each copy delivered at once goes to a session the running command
//!   sends it to, checked as it is sent), is never delivered twice in one
//!   session life nor after it was confirmed, is delivered in order per
//!   (sender, recipient), everything owed comes back at the next login;
//!   nothing is released from the store unconfirmed, and at every restart
//!   the store holds exactly what is owed;
//! * ids strictly increase, are reserved before use, and never go back
//!   across restarts; a message never changes; timestamps are the second
//!   the command ran;
//! * timers: `BYE login-timeout`, `BYE timeout` and heartbeat death neither
//!   early nor late; `IDLE` probes numbered +1 per session, at least every
//!   `heartbeat`, and within a second after deliveries (inside blocks too);
//! * a session whose input ended is closed once what it sent is answered;
//! * `Input::Shutdown` ends every session with `BYE shutdown`;
//! * a user online at a crash was persisted as seen within a heartbeat.

mod commands;
mod login;
mod outputs;
mod timing;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use chatcore::wire::{
    Ask, ByeReason, Command, DecodeError, ErrorReply, HeldBecause, ParseError, ServerLine,
};
use chatcore::{Accounts, CheckId, Config, Message, Output, SessionId, Time};

use super::model::{accounts, START_MS};
pub use timing::Bucket;

pub type Key = (u32, SessionId);

/// What one round is about: one input, or the deadlines at one instant.
#[derive(Clone, Debug)]
pub enum Kind {
    Open(Key),
    Line(Key, String),
    Malformed(Key, DecodeError),
    Closed(Key),
    InputEnded(Key),
    Answer { key: Key, check: CheckId, ok: bool },
    Written(Key),
    Timeout,
    Shutdown,
    Restore,
}

/// A line as the core receives it.
#[derive(Clone, Debug)]
pub enum In {
    Line(String),
    Malformed(DecodeError),
}

/// A logged-in client's line, parsed on arrival.
#[derive(Clone, Debug)]
pub enum Parsed {
    Line(Result<Command, ParseError>),
    Malformed(DecodeError),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    AwaitUser,
    AwaitPassword(String),
    /// The password is being checked; `check` is known once asked for.
    Checking {
        user: String,
        password: String,
        check: Option<CheckId>,
    },
    LoggedIn(String),
}

/// An exact output a login step owes the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    Line(ServerLine),
    /// `ERR rate-limited <any detail>`.
    RateLimited,
    Check {
        user: String,
        password: String,
    },
    Close,
}

/// A command accepted by the core and not answered yet. `at_once`: the core
/// ran it on arrival (its reply is due in the same round); otherwise it
/// waits in the core's backlog.
#[derive(Clone, Debug)]
pub struct Waiting {
    parsed: Parsed,
    at_once: bool,
}

/// The rest of an `OFFLINE` block: its messages, the reply that follows it
/// (`OK status online`), then live messages routed to the session meanwhile.
#[derive(Clone, Debug, Default)]
pub struct Block {
    announced: bool,
    remaining: VecDeque<u64>,
    reply: Option<ServerLine>,
    deferred: VecDeque<u64>,
}

impl Block {
    fn is_done(&self) -> bool {
        self.announced
            && self.remaining.is_empty()
            && self.reply.is_none()
            && self.deferred.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct OSession {
    pub ip: IpAddr,
    pub opened: Time,
    pub stage: Stage,
    pub closed: bool,
    /// A `BYE` was sent: only the `Close` may follow.
    ending: bool,
    /// Failed login attempts on this connection.
    failed: u32,
    /// Lines received while the password is checked.
    pending: VecDeque<In>,
    pub input_ended: bool,
    script: VecDeque<Want>,
    /// The name whose password check this round answers (for the ledger).
    answering: Option<String>,
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
    pub probes: Vec<(u64, usize)>,
    unprobed_since: Option<Time>,
    waiting: VecDeque<Waiting>,
    refusals: usize,
    block: Option<Block>,
    /// Block messages sent since the last `Input::Written` (or block start).
    page_count: usize,
    /// A `NotifyWritten` is outstanding.
    notify: bool,
    bucket: Option<Bucket>,
}

impl OSession {
    fn new(ip: IpAddr, now: Time) -> Self {
        OSession {
            ip,
            opened: now,
            stage: Stage::AwaitUser,
            closed: false,
            ending: false,
            failed: 0,
            pending: VecDeque::new(),
            input_ended: false,
            script: VecDeque::new(),
            answering: None,
            login_at: now,
            busy: false,
            last_rx: now,
            last_cmd_def: now,
            last_cmd_any: now,
            last_probe: now,
            next_seq: None,
            delivered: Vec::new(),
            probes: Vec::new(),
            unprobed_since: None,
            waiting: VecDeque::new(),
            refusals: 0,
            block: None,
            page_count: 0,
            notify: false,
            bucket: None,
        }
    }

    pub fn user(&self) -> Option<&str> {
        match &self.stage {
            Stage::LoggedIn(u) => Some(u),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Pair {
    count: u32,
    until: Option<Time>,
}

/// The lockout property in its plain form, kept apart from the exact
/// prediction: per (name, address), answers to password checks.
#[derive(Clone, Debug, Default)]
struct Ledger {
    bad_in_a_row: u32,
    blocked_until: Option<Time>,
}

/// What the command being run has done so far: the new message, who got it
/// at once, and for whom it was stored.
#[derive(Clone, Debug, Default)]
struct Effects {
    msg: Option<Arc<Message>>,
    delivered_to: BTreeSet<String>,
    held_for: BTreeSet<String>,
    /// A copy of the new message was persisted: its `OK` may only go out
    /// behind a barrier for its session, or for everyone, emitted since.
    hold_not_behind_barrier: bool,
    /// The barriers emitted since the last copy was persisted.
    barriers_since_hold: Vec<Option<Key>>,
}

pub struct Oracle {
    cfg: Config,
    accounts: Accounts,
    pub epoch: u32,
    pub sess: BTreeMap<Key, OSession>,
    online: BTreeMap<String, Key>,
    pairs: BTreeMap<(String, IpAddr), Pair>,
    ledger: BTreeMap<(String, IpAddr), Ledger>,
    pub msgs: BTreeMap<u64, Arc<Message>>,
    owed: BTreeMap<String, BTreeSet<u64>>,
    max_id: Option<u64>,
    reserved: u64,
    /// Ids below this were reserved before a barrier for everyone: a
    /// delivery may carry them (a crash cannot hand them out again).
    reserved_behind_barrier: u64,
    ever: BTreeSet<String>,
    /// When each user who left was last online: (at least, at most).
    left: BTreeMap<String, (Time, Time)>,
    trace: Vec<String>,
    /// How often each interesting thing happened.
    pub stats: BTreeMap<&'static str, usize>,
    // The round being read.
    now: Time,
    kind: Kind,
    acc: Effects,
    releases: Vec<(String, u64)>,
    /// `idle <seq>` lines handled after a password check in this round,
    /// applied at its end (a probe of this round may be what they answer).
    late_confirms: Vec<(Key, u64)>,
}

pub fn is_reply(l: &ServerLine) -> bool {
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

pub fn label(l: &ServerLine) -> &'static str {
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

/// Milliseconds since the start of the case, for messages.
pub fn rel(t: Time) -> i64 {
    t.unix_millis() as i64 - START_MS as i64
}

fn decode_error_reply(e: DecodeError, max: usize) -> ErrorReply {
    match e {
        DecodeError::LineTooLong { .. } => ErrorReply::LineTooLong { max },
        DecodeError::BadEncoding => ErrorReply::BadEncoding,
    }
}

impl Oracle {
    pub fn new(cfg: Config) -> Self {
        let now = Time::from_unix_millis(START_MS);
        Oracle {
            cfg,
            accounts: accounts(),
            epoch: 0,
            sess: BTreeMap::new(),
            online: BTreeMap::new(),
            pairs: BTreeMap::new(),
            ledger: BTreeMap::new(),
            msgs: BTreeMap::new(),
            owed: BTreeMap::new(),
            max_id: None,
            reserved: 0,
            reserved_behind_barrier: 0,
            ever: BTreeSet::new(),
            left: BTreeMap::new(),
            trace: Vec::new(),
            stats: BTreeMap::new(),
            now,
            kind: Kind::Restore,
            acc: Effects::default(),
            releases: Vec::new(),
            late_confirms: Vec::new(),
        }
    }

    /// Whether `CHAT_SM_SKIP` names this check (see the crate docs): for
    /// telling, on a core that does not do all of the target behaviour yet,
    /// which failures are which. Off by default.
    pub fn skip(&self, rule: &str) -> bool {
        std::env::var("CHAT_SM_SKIP").is_ok_and(|v| v.split(',').any(|x| x.trim() == rule))
    }

    pub fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    pub fn note(&mut self, s: String) {
        self.trace.push(s);
        if self.trace.len() > 100 {
            self.trace.drain(..25);
        }
    }

    #[track_caller]
    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "PROTOCOL VIOLATION: {msg}\n--- recent trace (oldest first) ---\n{}",
            self.trace.join("\n")
        )
    }

    #[track_caller]
    pub fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(&msg());
        }
    }

    pub fn s(&self, key: Key) -> &OSession {
        &self.sess[&key]
    }

    fn sm(&mut self, key: Key) -> &mut OSession {
        self.sess.get_mut(&key).unwrap()
    }

    fn owed(&self, u: &str) -> BTreeSet<u64> {
        self.owed.get(u).cloned().unwrap_or_default()
    }

    /// Whether the session is open, its input has not ended, and it is
    /// logged in (so that a client would answer probes).
    pub fn logged_in(&self, key: Key) -> bool {
        self.sess
            .get(&key)
            .is_some_and(|s| !s.closed && s.user().is_some())
    }

    pub fn is_open(&self, key: Key) -> bool {
        key.0 == self.epoch && self.sess.get(&key).is_some_and(|s| !s.closed)
    }

    /// A connection the driver opened.
    pub fn open(&mut self, key: Key, ip: IpAddr, now: Time) {
        self.check(!self.sess.contains_key(&key), || {
            format!("session id {} reused", key.1)
        });
        self.sess.insert(key, OSession::new(ip, now));
    }

    /// Whether this round is about `key` (its own input) or about every
    /// session (deadlines, shutdown): only then may its replies, prompts or
    /// block lines be sent. Other rounds may only deliver it live messages
    /// and probe it.
    fn own_round(&self, key: Key) -> bool {
        match &self.kind {
            Kind::Timeout | Kind::Shutdown => true,
            Kind::Open(k)
            | Kind::Line(k, _)
            | Kind::Malformed(k, _)
            | Kind::Closed(k)
            | Kind::InputEnded(k)
            | Kind::Written(k)
            | Kind::Answer { key: k, .. } => *k == key,
            Kind::Restore => false,
        }
    }

    /// One round: an input (or the deadlines at one instant) and every
    /// output it caused, in order.
    pub fn round(&mut self, now: Time, kind: Kind, outputs: &[Output]) {
        self.note(format!("@{} {kind:?}", rel(now)));
        self.now = now;
        self.kind = kind.clone();
        self.begin(&kind);
        for o in outputs {
            self.output(o);
        }
        self.end_round();
    }

    /// What the input changes, and what it obliges the core to send.
    fn begin(&mut self, kind: &Kind) {
        let now = self.now;
        match kind {
            Kind::Open(key) => {
                let s = self.sm(*key);
                s.script.push_back(Want::Line(ServerLine::Hello));
                s.script
                    .push_back(Want::Line(ServerLine::Ask(Ask::Username)));
            }
            Kind::Line(key, line) => self.receive(*key, In::Line(line.clone())),
            Kind::Malformed(key, e) => self.receive(*key, In::Malformed(*e)),
            Kind::Closed(key) => self.end_session(*key),
            Kind::InputEnded(key) => {
                let s = self.sm(*key);
                s.input_ended = true;
                if matches!(s.stage, Stage::AwaitUser | Stage::AwaitPassword(_)) {
                    s.script.push_back(Want::Close);
                }
                self.count("input-ended");
            }
            Kind::Answer { key, check, ok } => self.answer(*key, *check, *ok),
            Kind::Written(key) => {
                // A page taken by the client's socket is a sign of life
                // (docs/PROTOCOL.md §5, §6).
                let s = self.sm(*key);
                s.notify = false;
                s.page_count = 0;
                s.last_rx = now;
            }
            Kind::Timeout | Kind::Shutdown | Kind::Restore => {}
        }
    }

    /// A line reached the core from `key`.
    fn receive(&mut self, key: Key, input: In) {
        match &self.s(key).stage {
            Stage::AwaitUser | Stage::AwaitPassword(_) => self.login_line(key, input),
            Stage::Checking { .. } => {
                if self.s(key).pending.len() < self.cfg.max_pending_lines {
                    self.sm(key).pending.push_back(input);
                    self.count("line-ahead-of-check");
                } else {
                    self.sm(key).script.push_back(Want::RateLimited);
                    self.count("ahead-refused");
                }
            }
            Stage::LoggedIn(_) => self.command_arrives(key, input, false),
        }
    }

    fn output(&mut self, o: &Output) {
        let epoch = self.epoch;
        match o {
            Output::Send { session, line } => self.sent((epoch, *session), line),
            Output::Close { session } => self.closed_by_core((epoch, *session)),
            Output::CheckPassword(pc) => self.check_asked((epoch, pc.session), pc),
            Output::NotifyWritten { session } => self.notify((epoch, *session)),
            Output::Persist(op) => self.persisted(op),
            Output::Barrier { session } => self.barrier(session.map(|s| (epoch, s))),
            // Answered by the driver within the round; what the answer
            // causes is judged like any other output.
            Output::LoadHeld(_) | Output::Event(_) => {}
        }
    }

    fn sent(&mut self, key: Key, line: &ServerLine) {
        self.note(format!("  -> {} {line}", key.1.get()));
        self.check_durable_before(key, line);
        self.count(label(line));
        let Some(s) = self.sess.get(&key) else {
            self.fail(&format!("line for a session never opened: {}", key.1))
        };
        self.check(!s.closed, || {
            format!("{line:?} for session {} after its Close", key.1)
        });
        self.check(!s.ending, || {
            format!("{line:?} for session {} after its BYE", key.1)
        });
        if matches!(self.kind, Kind::Shutdown) {
            self.check(
                matches!(
                    line,
                    ServerLine::Idle { .. } | ServerLine::Bye(ByeReason::Shutdown)
                ),
                || format!("on shutdown session {} got {line:?}", key.1),
            );
        }
        if let Some(name) = self.sm(key).answering.take() {
            self.ledger(key, &name, line);
        }
        if !self.s(key).script.is_empty() {
            return self.scripted(key, line);
        }
        let s = self.s(key).clone();
        let logged = s.user().is_some();
        match line {
            ServerLine::Bye(ByeReason::Shutdown) => {
                self.check(matches!(self.kind, Kind::Shutdown), || {
                    "BYE shutdown outside a shutdown".into()
                });
                self.sm(key).ending = true;
                return;
            }
            ServerLine::Bye(ByeReason::Timeout) => {
                let due = s.last_cmd_def + self.cfg.time_out;
                self.check(
                    matches!(self.kind, Kind::Timeout) && logged && self.now >= due,
                    || {
                        format!(
                            "BYE timeout at {} to {:?} whose last command was at {} (time_out {:?})",
                            rel(self.now),
                            s.stage,
                            rel(s.last_cmd_def),
                            self.cfg.time_out
                        )
                    },
                );
                self.sm(key).ending = true;
                return;
            }
            ServerLine::Bye(ByeReason::LoginTimeout) => {
                let due = s.opened + self.cfg.login_timeout;
                self.check(
                    matches!(self.kind, Kind::Timeout) && !logged && self.now >= due,
                    || {
                        format!(
                            "BYE login-timeout at {} to {:?} opened at {}",
                            rel(self.now),
                            s.stage,
                            rel(s.opened)
                        )
                    },
                );
                self.sm(key).ending = true;
                return;
            }
            _ => {}
        }
        if logged {
            return self.sent_logged_in(key, line);
        }
        self.fail(&format!(
            "session {} in {:?} got {line:?}, which no login step explains",
            key.1, s.stage
        ))
    }

    /// A line a login step owes: exactly the next one.
    fn scripted(&mut self, key: Key, line: &ServerLine) {
        self.check(self.own_round(key), || {
            format!("{line:?} to session {} in a round about another", key.1)
        });
        let want = self.sm(key).script.pop_front().unwrap();
        let ok = match &want {
            Want::Line(l) => l == line,
            Want::RateLimited => matches!(line, ServerLine::Err(ErrorReply::RateLimited { .. })),
            Want::Check { .. } | Want::Close => false,
        };
        self.check(ok, || {
            format!(
                "session {} ({:?}): expected {want:?}, got {line:?}",
                key.1,
                self.s(key).stage
            )
        });
    }

    pub fn end_session(&mut self, key: Key) {
        let now = self.now;
        let s = self.sm(key);
        s.closed = true;
        s.ending = false;
        s.waiting.clear();
        s.block = None;
        s.pending.clear();
        s.refusals = 0;
        s.notify = false;
        if let Stage::LoggedIn(u) = &s.stage {
            let u = u.clone();
            if self.online.get(&u) == Some(&key) {
                self.online.remove(&u);
                self.left.insert(u, (now, now));
            }
        }
    }

    /// After the round's last output: nothing owed may be left undone.
    fn end_round(&mut self) {
        for (key, q) in std::mem::take(&mut self.late_confirms) {
            self.confirm_probe(key, q);
        }
        for (u, upto) in std::mem::take(&mut self.releases) {
            let early: Vec<u64> = self.owed(&u).into_iter().filter(|id| *id <= upto).collect();
            self.check(early.is_empty(), || {
                format!("Release of {u}'s box up to {upto} before {early:?} were confirmed")
            });
        }
        if let Some(m) = &self.acc.msg {
            self.fail(&format!(
                "message {} was routed but no reply to its sender followed",
                m.id
            ));
        }
        let keys: Vec<Key> = self
            .sess
            .iter()
            .filter(|(k, s)| k.0 == self.epoch && !s.closed)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.settled(key);
        }
        if matches!(self.kind, Kind::Shutdown) {
            self.check(self.online.is_empty(), || {
                format!("after shutdown still online: {:?}", self.online)
            });
        }
    }

    fn settled(&self, key: Key) {
        let s = self.s(key);
        let id = key.1;
        self.check(s.script.is_empty(), || {
            format!("session {id} ({:?}) is still owed {:?}", s.stage, s.script)
        });
        self.check(!s.ending, || format!("BYE without Close for session {id}"));
        // A refusal made while a block is being sent waits for its end
        // (live messages held back behind the block may still be due).
        let in_block = s.block.as_ref().is_some_and(|b| !b.is_done());
        self.check(s.refusals == 0 || in_block, || {
            format!("session {id} is owed {} ERR rate-limited", s.refusals)
        });
        self.check(!matches!(self.kind, Kind::Shutdown), || {
            format!("session {id} ({:?}) survived the shutdown", s.stage)
        });
        match &s.stage {
            Stage::LoggedIn(u) => {
                self.check(!s.waiting.iter().any(|w| w.at_once), || {
                    format!(
                        "{u} (session {id}): a command the core ran at once got no reply: {:?}",
                        s.waiting
                    )
                });
                if let Some(b) = &s.block {
                    self.check(b.announced, || {
                        format!("{u} (session {id}) logged in with messages held but got no OFFLINE: {b:?}")
                    });
                    self.check(s.notify, || {
                        format!("{u} (session {id}): the OFFLINE block stopped ({b:?}) without NotifyWritten")
                    });
                } else if !s.waiting.is_empty() {
                    self.check(!self.token_available(key), || {
                        format!(
                            "{u} (session {id}): {} commands wait though flood control allows one now",
                            s.waiting.len()
                        )
                    });
                }
                self.check(
                    !(s.input_ended && s.waiting.is_empty() && s.block.is_none()),
                    || format!("{u} (session {id}): input ended and everything was answered, but it is still open"),
                );
            }
            Stage::AwaitUser | Stage::AwaitPassword(_) => {
                self.check(!s.input_ended, || {
                    format!("session {id}: input ended before login, still open")
                });
            }
            Stage::Checking { .. } => {}
        }
    }
}
