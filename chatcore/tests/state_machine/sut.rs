//! The system under test: a `Server` and a driver around it that does what
//! chatd does (bytes through a `LineDecoder`, every `Persist` applied to a
//! store a restart is built from, `handle_timeout` at every deadline), with
//! password checks and `NotifyWritten` answered at once or left pending for
//! transitions to answer, as the case's [`Setup`] says.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use chatcore::wire::LineDecoder;
use chatcore::{Config, Input, Output, PasswordCheck, Server, SessionId, StoreModel, Time};

use crate::model::{accounts, fresh_ip, ip, password, Setup, Transition, START_MS, USERS};
use crate::oracle::{rel, Key, Kind, Oracle, Stage};

pub struct Sut {
    setup: Setup,
    cfg: Config,
    server: Server,
    now: Time,
    restored: StoreModel,
    /// Session ordinal -> key.
    sessions: Vec<Key>,
    decoders: BTreeMap<Key, LineDecoder>,
    /// Sessions whose peer sent EOF: nothing more comes from them.
    ended: BTreeSet<Key>,
    /// Password checks asked for and not answered, oldest first.
    checks: Vec<PasswordCheck>,
    /// Sessions with a `NotifyWritten` not answered, oldest first.
    notify: Vec<Key>,
    pub oracle: Oracle,
}

/// A way to break the server's output on purpose, to see the oracle notice
/// (`CHAT_SM_MUTATE=<name>`; a check of this test, not of the core). Each
/// one changes what some client would see or what the store would keep,
/// whenever the round has what it acts on; `.ci/mutations` requires every
/// one of them to fail the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// The first delivery of a round is lost.
    DropDeliver,
    /// The first delivery of a round is sent twice.
    DupDeliver,
    /// The first two deliveries of a round that carry different messages
    /// trade messages: within one session they come in the wrong order,
    /// across two sessions each gets the other's. (Trading two copies of
    /// one broadcast would change nothing a client could see.)
    SwapDeliver,
    /// As `SwapDeliver`, only between two sessions: each gets a message
    /// not meant for it and misses one it was owed.
    SwapDeliverAcross,
    /// The first `WHO`, `LAST` or `OK message` of a round is lost.
    DropReply,
    /// The first `WHO` or `OK status` of a round is sent twice.
    DupReply,
    /// The session is closed right after the first `WHO`, `LAST`,
    /// `OK message`, `OK broadcast` or `OK status` of a round, with no
    /// `BYE` before: only `logout` (and a `BYE`) may end a session that
    /// way.
    CloseAfterReply,
    /// No message is held in the store.
    DropHold,
    /// No message is released from the store.
    DropRelease,
    /// No heartbeat probe is sent.
    DropProbe,
    /// No session is closed.
    DropClose,
    /// No `NotifyWritten` is asked for (the next page never comes).
    DropNotify,
    /// No barrier for a session: an `OK` could be seen before its message
    /// is durable.
    DropBarrier,
    /// No barrier for everyone: a delivery could carry an id whose
    /// reservation is not durable, which a crash would hand out again.
    DropIdBarrier,
}

impl Mutation {
    /// Every mutation with its name, as `CHAT_SM_MUTATE` spells it.
    pub const ALL: [(&'static str, Mutation); 14] = [
        ("drop-deliver", Mutation::DropDeliver),
        ("dup-deliver", Mutation::DupDeliver),
        ("swap-deliver", Mutation::SwapDeliver),
        ("swap-deliver-across", Mutation::SwapDeliverAcross),
        ("drop-reply", Mutation::DropReply),
        ("dup-reply", Mutation::DupReply),
        ("close-after-reply", Mutation::CloseAfterReply),
        ("drop-hold", Mutation::DropHold),
        ("drop-release", Mutation::DropRelease),
        ("drop-probe", Mutation::DropProbe),
        ("drop-close", Mutation::DropClose),
        ("drop-notify", Mutation::DropNotify),
        ("drop-barrier", Mutation::DropBarrier),
        ("drop-id-barrier", Mutation::DropIdBarrier),
    ];

    /// The mutation `CHAT_SM_MUTATE` names, if any (see [`Mutation::parse`]);
    /// panics on a name it does not know.
    pub fn from_env() -> Option<Mutation> {
        static CHOSEN: OnceLock<Result<Option<Mutation>, String>> = OnceLock::new();
        let chosen = CHOSEN.get_or_init(|| match std::env::var("CHAT_SM_MUTATE") {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Mutation::parse(&v.to_string_lossy()),
            Ok(v) => Mutation::parse(&v),
        });
        match chosen {
            Ok(m) => *m,
            Err(e) => panic!("{e}"),
        }
    }

    /// `""` and `list` (which prints the names, see `mutation_names`) are
    /// no mutation. Any other name must be known: a typo must not make a
    /// "mutation run" that mutates nothing and proves nothing.
    pub fn parse(name: &str) -> Result<Option<Mutation>, String> {
        if name.is_empty() || name == "list" {
            return Ok(None);
        }
        Mutation::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| Some(*m))
            .ok_or_else(|| {
                format!(
                    "CHAT_SM_MUTATE={name}: no such mutation; the known ones are {} (`list` prints them)",
                    Mutation::names().join(", ")
                )
            })
    }

    pub fn name(self) -> &'static str {
        Mutation::ALL.iter().find(|(_, m)| *m == self).unwrap().0
    }

    pub fn names() -> Vec<&'static str> {
        Mutation::ALL.iter().map(|(name, _)| *name).collect()
    }

    /// Breaks one round's outputs, before the driver acts on them (so that
    /// the store sees the mutation too).
    fn apply(self, outputs: &mut Vec<Output>) {
        use chatcore::wire::ServerLine;
        use chatcore::StoreOp;
        let deliver = |o: &Output| match o {
            Output::Send {
                session,
                line: ServerLine::Deliver(m),
            } => Some((*session, m.id)),
            _ => None,
        };
        let sent = |o: &Output, f: fn(&ServerLine) -> bool| match o {
            Output::Send { line, .. } => f(line),
            _ => false,
        };
        match self {
            Mutation::DropDeliver => {
                if let Some(i) = outputs.iter().position(|o| deliver(o).is_some()) {
                    outputs.remove(i);
                }
            }
            Mutation::DupDeliver => {
                if let Some(i) = outputs.iter().position(|o| deliver(o).is_some()) {
                    let o = outputs[i].clone();
                    outputs.insert(i, o);
                }
            }
            Mutation::SwapDeliver | Mutation::SwapDeliverAcross => {
                let across = self == Mutation::SwapDeliverAcross;
                let ds: Vec<(usize, SessionId, u64)> = outputs
                    .iter()
                    .enumerate()
                    .filter_map(|(i, o)| deliver(o).map(|(s, id)| (i, s, id)))
                    .collect();
                let pair = ds.iter().enumerate().find_map(|(n, a)| {
                    ds[n + 1..]
                        .iter()
                        .find(|b| a.2 != b.2 && (!across || a.1 != b.1))
                        .map(|b| (a.0, b.0))
                });
                if let Some((i, j)) = pair {
                    let (Output::Send { line: a, .. }, Output::Send { line: b, .. }) =
                        (outputs[i].clone(), outputs[j].clone())
                    else {
                        unreachable!("both are deliveries")
                    };
                    if let Output::Send { line, .. } = &mut outputs[i] {
                        *line = b;
                    }
                    if let Output::Send { line, .. } = &mut outputs[j] {
                        *line = a;
                    }
                }
            }
            Mutation::DropReply => {
                if let Some(i) = outputs.iter().position(|o| {
                    sent(o, |l| {
                        matches!(
                            l,
                            ServerLine::Who(_) | ServerLine::Delivered { .. } | ServerLine::Last(_)
                        )
                    })
                }) {
                    outputs.remove(i);
                }
            }
            Mutation::DupReply => {
                if let Some(i) = outputs.iter().position(|o| {
                    sent(o, |l| {
                        matches!(l, ServerLine::Who(_) | ServerLine::Status(_))
                    })
                }) {
                    let o = outputs[i].clone();
                    outputs.insert(i, o);
                }
            }
            Mutation::CloseAfterReply => {
                let first = outputs.iter().enumerate().find_map(|(i, o)| match o {
                    Output::Send {
                        session,
                        line:
                            ServerLine::Who(_)
                            | ServerLine::Last(_)
                            | ServerLine::Delivered { .. }
                            | ServerLine::Queued { .. }
                            | ServerLine::Broadcasted { .. }
                            | ServerLine::Status(_),
                    } => Some((i, *session)),
                    _ => None,
                });
                if let Some((i, session)) = first {
                    outputs.insert(i + 1, Output::Close { session });
                }
            }
            Mutation::DropHold => {
                outputs.retain(|o| !matches!(o, Output::Persist(StoreOp::Hold { .. })))
            }
            Mutation::DropRelease => {
                outputs.retain(|o| !matches!(o, Output::Persist(StoreOp::Release { .. })))
            }
            Mutation::DropProbe => {
                outputs.retain(|o| !sent(o, |l| matches!(l, ServerLine::Idle { .. })))
            }
            Mutation::DropClose => outputs.retain(|o| !matches!(o, Output::Close { .. })),
            Mutation::DropNotify => outputs.retain(|o| !matches!(o, Output::NotifyWritten { .. })),
            Mutation::DropBarrier => {
                outputs.retain(|o| !matches!(o, Output::Barrier { session: Some(_) }))
            }
            Mutation::DropIdBarrier => {
                outputs.retain(|o| !matches!(o, Output::Barrier { session: None }))
            }
        }
    }
}

impl Sut {
    pub fn new(setup: Setup) -> Self {
        let now = Time::from_unix_millis(START_MS);
        let cfg = setup.config();
        let mut sut = Sut {
            server: Server::new(now, cfg.clone(), accounts()),
            oracle: Oracle::new(cfg.clone()),
            setup,
            cfg,
            now,
            restored: StoreModel::default(),
            sessions: Vec::new(),
            decoders: BTreeMap::new(),
            ended: BTreeSet::new(),
            checks: Vec::new(),
            notify: Vec::new(),
        };
        sut.settle(Kind::Restore);
        sut
    }

    /// Drains every output of one input (applying store changes, keeping
    /// password checks and `NotifyWritten` requests) and hands the round to
    /// the oracle.
    ///
    /// Pages of boxes (`LoadHeld`) are answered at once, from the store as
    /// it is after the outputs before them, and what the answer causes is
    /// part of the same round: the oracle sees a block read from the store
    /// as it saw one sent from memory.
    fn round(&mut self, kind: Kind) {
        let mut outputs = Vec::new();
        loop {
            let mut batch = Vec::new();
            while let Some(o) = self.server.poll_output() {
                batch.push(o);
                assert!(
                    outputs.len() + batch.len() < 100_000,
                    "the server does not stop talking"
                );
            }
            if batch.is_empty() {
                break;
            }
            // Before the driver acts on them, so that the store sees a
            // mutation too.
            if let Some(m) = Mutation::from_env() {
                let before = batch.clone();
                m.apply(&mut batch);
                if batch != before {
                    self.oracle.note(format!(
                        "!! CHAT_SM_MUTATE={} changes the next round",
                        m.name()
                    ));
                    self.oracle.count("mutated");
                }
            }
            let mut loads = Vec::new();
            let epoch = self.oracle.epoch;
            for o in &batch {
                match o {
                    Output::Persist(op) => self.restored.apply(op),
                    Output::CheckPassword(pc) => self.checks.push(pc.clone()),
                    Output::NotifyWritten { session } => self.notify.push((epoch, *session)),
                    Output::LoadHeld(request) => loads.push(request.clone()),
                    _ => {}
                }
            }
            outputs.extend(batch);
            for request in loads {
                let messages = self.restored.held_page(
                    &request.user,
                    request.after,
                    request.upto,
                    request.max,
                );
                self.server.handle_input(
                    self.now,
                    Input::HeldLoaded {
                        session: request.session,
                        load: request.load,
                        messages,
                    },
                );
            }
        }
        self.oracle.round(self.now, kind, &outputs);
        if let Some(t) = self.server.poll_timeout() {
            self.oracle
                .check(self.oracle.skip("past-timeout") || t >= self.now, || {
                    format!(
                        "poll_timeout {} is in the past (now {})",
                        rel(t),
                        rel(self.now)
                    )
                });
        }
    }

    /// One round, then whatever the driver answers at once.
    fn settle(&mut self, kind: Kind) {
        self.round(kind);
        self.pump();
    }

    /// Answers the `i`-th pending password check, with the right `ok`.
    fn answer_check(&mut self, i: usize) {
        let pc = self.checks.remove(i);
        let key = (self.oracle.epoch, pc.session);
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
        self.round(Kind::Answer {
            key,
            check: pc.check,
            ok,
        });
    }

    /// Reports the `i`-th pending `NotifyWritten` as written (those of
    /// closed sessions are dropped, as a driver drops their sockets).
    fn written(&mut self, i: usize) {
        let key = self.notify.remove(i);
        if !self.oracle.is_open(key) {
            return;
        }
        self.server
            .handle_input(self.now, Input::Written { session: key.1 });
        self.round(Kind::Written(key));
    }

    /// The open session `s`, if its peer may still send.
    fn key(&self, s: usize) -> Option<Key> {
        let key = *self.sessions.get(s)?;
        (self.oracle.is_open(key) && !self.ended.contains(&key)).then_some(key)
    }

    fn connect(&mut self, ip: std::net::IpAddr) -> usize {
        let id = self.server.open_session(self.now, ip);
        let key = (self.oracle.epoch, id);
        self.oracle.open(key, ip, self.now);
        self.decoders
            .insert(key, LineDecoder::new(self.cfg.max_line_bytes));
        self.settle(Kind::Open(key));
        self.sessions.push(key);
        self.sessions.len() - 1
    }

    fn feed(&mut self, key: Key, bytes: &[u8]) {
        let mut input = bytes;
        loop {
            if !self.oracle.is_open(key) {
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
                        rel(self.now),
                        rel(next)
                    )
                });
            }
            n += 1;
            assert!(n < 10_000, "too many deadlines in one tick");
        }
        self.now = target;
        self.oracle.note(format!("@{} <time>", rel(self.now)));
        self.oracle.check_not_late(self.now);
    }

    /// A driver that wakes late. The core runs each deadline it passed at
    /// its own moment, whether it is told one at a time or once at the end
    /// (`tests/rules_timers.rs` checks that the two give the same), so the
    /// deadlines are handed in one at a time here, for the oracle to judge
    /// each at its instant. What stays late is the driver: it answers
    /// password checks and `NotifyWritten` only once it is awake, at the end.
    fn jump(&mut self, millis: u64) {
        let target = self.now + Duration::from_millis(millis);
        self.oracle.count("late-wake-up");
        let mut n = 0;
        while let Some(d) = self.server.poll_timeout() {
            if d > target {
                break;
            }
            self.now = self.now.max(d);
            self.server.handle_timeout(self.now);
            self.round(Kind::Timeout);
            n += 1;
            assert!(n < 10_000, "too many deadlines in one jump");
        }
        self.now = target;
        self.server.handle_timeout(self.now);
        self.settle(Kind::Timeout);
        if let Some(next) = self.server.poll_timeout() {
            self.oracle.check(next > self.now, || {
                format!(
                    "after a late handle_timeout({}) poll_timeout is {}: a driver would spin",
                    rel(self.now),
                    rel(next)
                )
            });
        }
        self.oracle.check_not_late(self.now);
    }

    fn restart(&mut self) {
        self.oracle.restart(self.now, &self.restored);
        self.server = Server::restore(
            self.now,
            self.cfg.clone(),
            accounts(),
            self.restored.restored(),
        );
        self.checks.clear();
        self.notify.clear();
        self.ended.clear();
        self.settle(Kind::Restore);
    }

    fn login(&mut self, key: Key, user: &str, right: bool) {
        if self.oracle.s(key).stage == Stage::AwaitUser {
            self.send_line(key, user);
        }
        if self.oracle.is_open(key) && matches!(self.oracle.s(key).stage, Stage::AwaitPassword(_)) {
            self.send_line(key, &password(user, right));
        }
    }

    pub fn apply(&mut self, t: Transition) {
        match t {
            Transition::Connect { ip: i } => {
                self.connect(ip(i));
            }
            Transition::Login { s, user, right } => {
                if let Some(key) = self.key(s) {
                    self.login(key, user, right);
                }
            }
            Transition::Parallel { ip: i, user, right } => {
                self.oracle.count("parallel-logins");
                for right in right {
                    let s = self.connect(ip(i));
                    let key = self.sessions[s];
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
                if let Some(key) = self.sessions.get(s).copied() {
                    if self.oracle.is_open(key) {
                        self.server
                            .handle_input(self.now, Input::Closed { session: key.1 });
                        self.settle(Kind::Closed(key));
                    }
                }
            }
            Transition::EndInput { s } => {
                if let Some(key) = self.key(s) {
                    self.ended.insert(key);
                    self.server
                        .handle_input(self.now, Input::InputEnded { session: key.1 });
                    self.settle(Kind::InputEnded(key));
                }
            }
            Transition::AnswerProbe { s } => {
                if let Some(key) = self.key(s) {
                    if self.oracle.logged_in(key) {
                        let line = match self.oracle.s(key).probes.last() {
                            Some((seq, _)) => format!("idle {seq}"),
                            None => "idle".to_string(),
                        };
                        self.send_line(key, &line);
                    }
                }
            }
            Transition::AnswerCheck { pick } => {
                if !self.checks.is_empty() {
                    let i = pick % self.checks.len();
                    self.oracle.count("answer-later");
                    if i > 0 {
                        self.oracle.count("answer-reordered");
                    }
                    self.answer_check(i);
                    self.pump();
                }
            }
            Transition::Written { pick } => {
                if !self.notify.is_empty() {
                    let i = pick % self.notify.len();
                    self.oracle.count("written-later");
                    self.written(i);
                    self.pump();
                }
            }
            Transition::Tick { millis } => self.tick(millis),
            Transition::Jump { millis } => self.jump(millis),
            Transition::Shutdown => {
                self.server.handle_input(self.now, Input::Shutdown);
                self.settle(Kind::Shutdown);
                self.restart();
            }
            Transition::Crash => self.restart(),
        }
    }

    /// What the driver answers at once (in the setups that do).
    fn pump(&mut self) {
        loop {
            if !self.setup.checks_later && !self.checks.is_empty() {
                self.answer_check(0);
            } else if !self.setup.written_later && !self.notify.is_empty() {
                self.written(0);
            } else {
                break;
            }
        }
    }

    /// The last word on loss: crash, restart, and log every user in from a
    /// fresh address, answering everything at once; each must get exactly
    /// what it is owed.
    pub fn drain_everything(&mut self) {
        self.restart();
        for (user, _) in USERS {
            let s = self.connect(fresh_ip());
            let key = self.sessions[s];
            self.login(key, user, true);
            while !self.checks.is_empty() {
                self.answer_check(0);
            }
            while let Some(i) = self.notify.iter().position(|k| *k == key) {
                self.written(i);
            }
            self.oracle.check(
                matches!(&self.oracle.s(key).stage, Stage::LoggedIn(u) if u == user),
                || format!("{user} could not log in for the final drain"),
            );
        }
    }
}
