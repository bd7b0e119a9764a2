//! The clock-jumping harness.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::accounts::Accounts;
use crate::config::Config;
use crate::persist::{StoreModel, StoreOp};
use crate::server::{Event, HeldRequest, Input, Output, PasswordCheck, Server, SessionId};
use crate::time::Time;
use crate::wire::ServerLine;

/// Drives a [`Server`] the way a driver would, in memory, with a clock that
/// only moves when told to, so tests of timers are exact and instant.
///
/// - Password checks of plain-text credentials are answered at once (turn
///   that off with [`Harness::hold_password_checks`] to test what happens
///   while one is pending); hashed credentials and unknown names fail.
/// - Every [`Output::Persist`] is applied to an in-memory [`StoreModel`],
///   so [`Harness::restart`] rebuilds the server from exactly what it asked
///   to persist: a crash at that moment, with every commit done.
/// - Every [`Output::LoadHeld`] is answered from that model at once (turn
///   that off with [`Harness::hold_loads`]).
/// - Lines sent to each session are kept until [`Harness::take`] reads them.
///
/// # Two traps for property authors
///
/// A property such as "every message accepted reaches its recipient exactly
/// once" fails on a correct server for two reasons that have nothing to do
/// with the property:
///
/// - **Flood control holds lines back.** Commands past the burst wait for
///   tokens ([`Config::flood`], on by default): right after a quick run of
///   `message` commands, only some have been run, and the rest arrive when
///   the clock moves.
/// - **A delivery counts only once confirmed.** A message written to a
///   client is confirmed when the client answers a probe sent after it
///   (`idle <seq>`, [PROTOCOL.md §6](crate::protocol#6-heartbeat-and-liveness)). Until then the connection dropping puts
///   it back in the box, and it comes again at the next login: seen twice,
///   as the protocol wants for a message that may not have arrived.
///
/// [`Harness::settle`] waits both out (it moves the clock and answers the
/// probes that confirm), so a property can check exactly-once without
/// knowing of either:
///
/// ```
/// use chatcore::testing::Harness;
///
/// fn msgs(h: &mut Harness, s: chatcore::SessionId) -> usize {
///     h.take_text(s).iter().filter(|l| l.starts_with("MSG ")).count()
/// }
/// let run = |settle: bool| {
///     let mut h = Harness::with_users(&[("alice", "a"), ("bob", "b")]);
///     let a = h.connect_logged_in("alice", "a");
///     let b = h.connect_logged_in("bob", "b");
///     for i in 0..15 {
///         h.send(a, &format!("message bob {i}"));
///     }
///     if settle {
///         h.settle();
///     }
///     let live = msgs(&mut h, b);
///     h.close(b); // bob's connection drops
///     h.settle(); // whatever alice sent still waiting reaches bob's box
///     let b = h.connect_logged_in("bob", "b");
///     (live, msgs(&mut h, b))
/// };
/// // Without settle: 10 of 15 at once (the default burst), and all 15 at
/// // the next login: the 10 were never confirmed.
/// assert_eq!(run(false), (10, 15));
/// // With it: 15 live, all confirmed, none again.
/// assert_eq!(run(true), (15, 0));
/// ```
///
/// ```
/// use chatcore::testing::Harness;
/// use chatcore::wire::ServerLine;
///
/// let mut h = Harness::with_users(&[("alice", "pw"), ("bob", "pw")]);
/// let a = h.connect_logged_in("alice", "pw");
/// let b = h.connect_logged_in("bob", "pw");
/// h.send(a, "message bob hi");
/// assert_eq!(h.take_text(a), ["OK message bob delivered"]);
/// assert!(h.take_text(b)[0].ends_with(" alice hi"));
/// // Jump to the heartbeat: bob is probed.
/// h.advance(std::time::Duration::from_secs(30));
/// assert!(h.take(b).contains(&ServerLine::Idle { seq: 2 }));
/// ```
#[derive(Debug)]
pub struct Harness {
    /// The server under test.
    pub server: Server,
    now: Time,
    config: Config,
    accounts: Accounts,
    /// What the server persisted so far.
    pub store: StoreModel,
    /// The changes persisted since [`Harness::take_persisted`] last read
    /// them, in order.
    persisted: Vec<StoreOp>,
    received: BTreeMap<SessionId, VecDeque<ServerLine>>,
    closed: BTreeSet<SessionId>,
    checks: VecDeque<PasswordCheck>,
    answer_checks: bool,
    /// Sessions waiting for `Input::Written`.
    written: VecDeque<SessionId>,
    answer_written: bool,
    /// Pages of boxes asked for and not answered yet.
    loads: VecDeque<HeldRequest>,
    answer_loads: bool,
    events: Vec<Event>,
}

/// The moment a harness starts at: 2026-11-24T17:12:01Z.
pub const START: Time = Time::from_unix_secs(1_795_540_321);

impl Harness {
    /// A harness around a new server.
    pub fn new(config: Config, accounts: Accounts) -> Self {
        let server = Server::new(START, config.clone(), accounts.clone());
        Harness {
            server,
            now: START,
            config,
            accounts,
            store: StoreModel::default(),
            persisted: Vec::new(),
            received: BTreeMap::new(),
            closed: BTreeSet::new(),
            checks: VecDeque::new(),
            answer_checks: true,
            written: VecDeque::new(),
            answer_written: true,
            loads: VecDeque::new(),
            answer_loads: true,
            events: Vec::new(),
        }
    }

    /// A harness with the default configuration and these plain-text accounts.
    pub fn with_users(users: &[(&str, &str)]) -> Self {
        Self::new(Config::default(), accounts(users))
    }

    /// The harness's clock.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Stops answering password checks by itself; answer them with
    /// [`Harness::answer_password_check`].
    pub fn hold_password_checks(&mut self) {
        self.answer_checks = false;
    }

    /// Stops answering [`Output::NotifyWritten`] by itself, as for a client
    /// that reads slowly; answer with [`Harness::answer_written`].
    pub fn hold_writes(&mut self) {
        self.answer_written = false;
    }

    /// Stops answering [`Output::LoadHeld`] by itself, as for a slow
    /// store; answer with [`Harness::answer_load`].
    pub fn hold_loads(&mut self) {
        self.answer_loads = false;
    }

    /// Answers the oldest page of a box asked for, from the store as it is
    /// now; returns the request, or `None` if none is waiting.
    pub fn answer_load(&mut self) -> Option<HeldRequest> {
        let request = self.loads.pop_front()?;
        let messages =
            self.store
                .held_page(&request.user, request.after, request.upto, request.max);
        self.input(Input::HeldLoaded {
            session: request.session,
            load: request.load,
            messages,
        });
        Some(request)
    }

    /// Pages of boxes asked for and not answered yet, oldest first.
    pub fn pending_loads(&self) -> impl Iterator<Item = &HeldRequest> {
        self.loads.iter()
    }

    /// Reports the oldest page asked about as written; returns its session,
    /// or `None` if nothing is waiting.
    pub fn answer_written(&mut self) -> Option<SessionId> {
        let session = self.written.pop_front()?;
        self.input(Input::Written { session });
        Some(session)
    }

    /// Answers the oldest pending password check with `ok`; returns which
    /// session asked, or `None` if none is pending.
    pub fn answer_password_check(&mut self, ok: bool) -> Option<SessionId> {
        let check = self.checks.pop_front()?;
        self.input(check.answer(ok));
        Some(check.session)
    }

    /// Opens a connection from 127.0.0.1.
    pub fn connect(&mut self) -> SessionId {
        self.connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Opens a connection from `ip`.
    pub fn connect_from(&mut self, ip: IpAddr) -> SessionId {
        let id = self.server.open_session(self.now, ip);
        self.received.entry(id).or_default();
        self.drain();
        id
    }

    /// Opens a connection from 127.0.0.1 and logs in; the greeting and
    /// login lines are consumed, later ones (held messages) are kept.
    pub fn connect_logged_in(&mut self, user: &str, password: &str) -> SessionId {
        let id = self.connect();
        self.take(id);
        self.send(id, user);
        self.send(id, password);
        let lines = self.received.entry(id).or_default();
        assert_eq!(
            lines
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .get(..2),
            Some(&["ASK password".to_string(), format!("OK login {user}")][..]),
            "login of {user} failed"
        );
        lines.drain(..2);
        id
    }

    /// Sends one line from a session.
    pub fn send(&mut self, session: SessionId, line: &str) {
        self.input(Input::Line {
            session,
            line: line.to_string(),
        });
    }

    /// Feeds any input.
    pub fn input(&mut self, input: Input) {
        self.server.handle_input(self.now, input);
        self.drain();
    }

    /// The connection drops without `logout`.
    pub fn close(&mut self, session: SessionId) {
        self.input(Input::Closed { session });
        self.closed.insert(session);
    }

    /// Answers the latest `IDLE <seq>` the session received (as a client
    /// does) and returns the seq; `None` if it never got one.
    pub fn answer_probe(&mut self, session: SessionId) -> Option<u64> {
        let seq = self
            .received
            .get(&session)?
            .iter()
            .rev()
            .find_map(|l| match l {
                ServerLine::Idle { seq } => Some(*seq),
                _ => None,
            })?;
        self.send(session, &format!("idle {seq}"));
        Some(seq)
    }

    /// Jumps the clock to the server's next deadline and runs it. Returns
    /// `false` (and does nothing) when nothing is scheduled.
    pub fn step(&mut self) -> bool {
        let Some(at) = self.server.poll_timeout() else {
            return false;
        };
        self.now = self.now.max(at);
        self.server.handle_timeout(self.now);
        self.drain();
        true
    }

    /// Moves the clock forward by `d`, running every deadline on the way at
    /// its exact moment.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) = self.server.poll_timeout() {
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.server.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
        self.server.handle_timeout(self.now);
        self.drain();
    }

    /// Moves the clock and answers probes until no logged-in session has
    /// anything held back: no command waiting for flood control (or behind
    /// an `OFFLINE` block), no block not sent in full, no delivery waiting
    /// for confirmation. Each session with unconfirmed deliveries answers
    /// the probe that confirms them (`idle <seq>`) as soon as it is sent;
    /// no other line is sent, so sessions that are not waited for are left
    /// as they are (and those never waited for stay silent, heartbeats
    /// included).
    ///
    /// See the struct docs for why a property needs this.
    ///
    /// # Panics
    ///
    /// If the clock would move past [`Config::heartbeat_timeout`] on the
    /// way: something waits that moving time does not bring (a page or
    /// password check held with [`Harness::hold_writes`] and the like), and
    /// going on would end the sessions for silence.
    pub fn settle(&mut self) {
        let start = self.now;
        let limit = self.config.heartbeat_timeout;
        loop {
            let held = self.server.held_back();
            if held.is_empty() {
                return;
            }
            let mut answered = false;
            for h in &held {
                if let Some(seq) = h.confirm_with {
                    self.send(h.session, &format!("idle {seq}"));
                    answered = true;
                }
            }
            if answered {
                continue;
            }
            let next = self.server.poll_timeout();
            assert!(
                next.is_some_and(|at| at.since(start) <= limit),
                "settle: still held back after {:?} (sessions {:?}); is a page, \
                 load or password check held?",
                self.now.since(start),
                held.iter().map(|h| h.session).collect::<Vec<_>>()
            );
            self.step();
        }
    }

    /// Moves the clock forward by `d` at once and calls
    /// [`Server::handle_timeout`] once, as a driver that wakes late does (a
    /// loaded machine). The core still runs each deadline passed on the way
    /// at its own moment; what is late is the harness, which answers what
    /// those deadlines asked of it (pages to load, pages written) only at
    /// the end.
    pub fn jump(&mut self, d: Duration) {
        self.now = self.now + d;
        self.server.handle_timeout(self.now);
        self.drain();
    }

    /// Lines received by the session since the last `take`.
    pub fn take(&mut self, session: SessionId) -> Vec<ServerLine> {
        self.received
            .get_mut(&session)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default()
    }

    /// [`Harness::take`], printed as on the wire.
    pub fn take_text(&mut self, session: SessionId) -> Vec<String> {
        self.take(session).iter().map(ToString::to_string).collect()
    }

    /// [`Harness::take_text`] without heartbeat probes.
    pub fn take_replies(&mut self, session: SessionId) -> Vec<String> {
        self.take(session)
            .iter()
            .filter(|l| !matches!(l, ServerLine::Idle { .. }))
            .map(ToString::to_string)
            .collect()
    }

    /// Whether the server closed the session (or the harness did).
    pub fn is_closed(&self, session: SessionId) -> bool {
        self.closed.contains(&session)
    }

    /// Changes the server persisted since the last call, in order.
    pub fn take_persisted(&mut self) -> Vec<StoreOp> {
        std::mem::take(&mut self.persisted)
    }

    /// Events the server reported since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Builds a new server from what the old one persisted, as after a
    /// crash: every connection is gone, and session ids start again (they
    /// are unique per server, not per store). The clock keeps going.
    pub fn restart(&mut self) {
        self.server = Server::restore(
            self.now,
            self.config.clone(),
            self.accounts.clone(),
            self.store.restored(),
        );
        self.checks.clear();
        self.loads.clear();
        self.written.clear();
        self.received.clear();
        self.closed.clear();
    }

    /// Records every output; answers password checks when it should.
    fn drain(&mut self) {
        loop {
            while let Some(out) = self.server.poll_output() {
                self.record(out);
            }
            // Lines here are "written" as soon as they are recorded.
            let next_written = if self.answer_written {
                self.written.pop_front()
            } else {
                None
            };
            if let Some(session) = next_written {
                self.server
                    .handle_input(self.now, Input::Written { session });
                continue;
            }
            // Read after every change asked for before it is applied, as
            // `Output::LoadHeld` requires.
            let next_load = if self.answer_loads {
                self.loads.pop_front()
            } else {
                None
            };
            if let Some(request) = next_load {
                let messages =
                    self.store
                        .held_page(&request.user, request.after, request.upto, request.max);
                self.server.handle_input(
                    self.now,
                    Input::HeldLoaded {
                        session: request.session,
                        load: request.load,
                        messages,
                    },
                );
                continue;
            }
            if !self.answer_checks {
                return;
            }
            let Some(check) = self.checks.pop_front() else {
                return;
            };
            let ok = check
                .credential
                .as_ref()
                .and_then(|c| c.verify_plain(&check.password))
                .unwrap_or(false);
            self.server.handle_input(self.now, check.answer(ok));
        }
    }

    fn record(&mut self, out: Output) {
        match out {
            Output::Send { session, line } => {
                assert!(
                    !self.closed.contains(&session),
                    "line {line} sent to closed session {session}"
                );
                self.received.entry(session).or_default().push_back(line);
            }
            Output::Close { session } => {
                assert!(
                    self.closed.insert(session),
                    "session {session} closed twice"
                );
            }
            // Every change is applied at once, so nothing waits.
            Output::Barrier { .. } => {}
            Output::Persist(op) => {
                self.store.apply(&op);
                self.persisted.push(op);
            }
            Output::Event(e) => self.events.push(e),
            Output::CheckPassword(check) => self.checks.push_back(check),
            Output::NotifyWritten { session } => self.written.push_back(session),
            Output::LoadHeld(request) => self.loads.push_back(request),
        }
    }
}

/// Plain-text accounts from `(name, password)` pairs.
pub fn accounts(users: &[(&str, &str)]) -> Accounts {
    let mut a = Accounts::new();
    for (name, password) in users {
        a.insert(
            name,
            crate::accounts::Credential::Plain((*password).to_string()),
        )
        .expect("valid user name");
    }
    a
}
