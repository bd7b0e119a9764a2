//! The chat service as a state machine.

mod api;
mod commands;
mod delivery;
mod flood;
mod login;
mod online;
mod session;
mod session_map;
mod timers;

pub use api::{
    CheckId, Event, HeldRequest, Input, LoadId, LoginFailure, Output, PasswordCheck, SessionEnd,
    SessionId,
};
pub use session_map::{SessionIdHasher, SessionMap};

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use crate::accounts::Accounts;
use crate::config::Config;
use crate::message::MessageId;
use crate::persist::{BoxSummary, LoginFailures, Restored, StoreOp};
use crate::time::Time;
use crate::wire::{has_forbidden_control, Ask, ByeReason, ErrorReply, ServerLine};

use online::Online;
use session::{Phase, Received, Session};
use timers::Timers;

/// How many message ids one [`StoreOp::ReserveIds`] sets aside, so the
/// store is not written once per message just for the counter.
///
/// The next block is reserved when half of this one is used, and the
/// deliveries that carry its ids wait until that reservation is durable.
/// Half a block must therefore last longer than a commit takes at the
/// busiest: with blocks of 1024, 150,000 messages a second used half a
/// block in 3.4 ms, and about one delivery in 350 waited for a commit.
/// Half of 65,536 lasts 0.2 s at that rate. A crash skips what is left of
/// the block; ids are 64 bits wide, so gaps cost nothing.
pub const ID_BLOCK: MessageId = 1 << 16;

/// The whole chat service for one data store: every rule of CHAT/1, driven
/// by plain calls.
///
/// Methods come in four groups, after quinn-proto's `Connection`:
/// - `handle_*` and [`Server::open_session`] feed events in;
/// - [`Server::poll_output`] hands out the work they caused: drain it until
///   `None` after every call that feeds an event;
/// - [`Server::poll_timeout`] says when to call [`Server::handle_timeout`];
/// - getters read state for status pages and tests.
///
/// Every call takes `now`, always as its first argument. The core keeps the latest `now` it was given and
/// ignores earlier ones, so its clock never runs backwards.
///
/// Every call that takes `now` first runs whatever fell due up to `now`,
/// each deadline in turn at its own moment, before it looks at anything
/// new. A driver that wakes late, or hands in a line before it got round to
/// [`Server::handle_timeout`], gets exactly what a driver that woke at every
/// deadline gets: a user name sent after the login timeout ends the
/// connection instead of being asked for a password, and a session silent
/// for two heartbeat periods gets two probes, not one.
/// [`Server::handle_timeout`] is then only for the wake-ups when nothing
/// else happens.
#[derive(Debug)]
pub struct Server {
    config: Config,
    accounts: Accounts,
    now: Time,
    next_session: u64,
    next_check: u64,
    next_load: u64,
    sessions: SessionMap<Session>,
    /// Logged-in users, in name order (that is the order of `WHO`).
    online: Online,
    /// Each user's box waiting to be delivered, as a summary: the bodies
    /// are in the store, read a page at a time when the box is delivered
    /// (`Output::LoadHeld`). Entries handed to a session (being sent, or
    /// sent and unconfirmed) are the session's, not counted here.
    boxes: HashMap<String, BoxSummary>,
    last_seen: HashMap<String, Time>,
    failures: HashMap<(String, IpAddr), LoginFailures>,
    next_id: MessageId,
    /// Ids below this are reserved in the store.
    reserved: MessageId,
    timers: Timers,
    out: VecDeque<Output>,
    shut_down: bool,
    /// Why the store cannot commit, while it cannot (`ERR unavailable`).
    store_unavailable: Option<String>,
    /// How many changes were persisted so far: a reply acknowledges those
    /// made while it was being answered.
    persisted: u64,
}

impl Server {
    /// A server with no durable history.
    pub fn new(now: Time, config: Config, accounts: Accounts) -> Self {
        Self::restore(now, config, accounts, Restored::default())
    }

    /// A server that carries on from what a store gave back: held messages,
    /// the `wholast` history, lockouts and the id counter.
    pub fn restore(now: Time, config: Config, accounts: Accounts, restored: Restored) -> Self {
        let max_held_id = restored.held.values().map(|b| b.last).max().unwrap_or(0);
        let next_id = restored.next_id.max(max_held_id + 1).max(1);
        Server {
            config,
            accounts,
            now,
            next_session: 1,
            next_check: 1,
            next_load: 1,
            sessions: SessionMap::default(),
            online: Online::default(),
            boxes: restored
                .held
                .into_iter()
                .filter(|(_, b)| b.count > 0)
                .collect(),
            last_seen: restored.last_seen.into_iter().collect(),
            failures: restored
                .login_failures
                .into_iter()
                .map(|f| ((f.user.clone(), f.ip), f))
                .collect(),
            next_id,
            reserved: next_id,
            timers: Timers::default(),
            out: VecDeque::new(),
            shut_down: false,
            store_unavailable: None,
            persisted: 0,
        }
    }

    /// A new connection from `peer`: greets it and asks for a user name.
    /// After [`Input::Shutdown`] it is refused with `BYE shutdown` at once.
    pub fn open_session(&mut self, now: Time, peer: IpAddr) -> SessionId {
        self.catch_up(now);
        let id = SessionId(self.next_session);
        self.next_session += 1;
        if self.shut_down {
            self.send_final(id, ServerLine::Hello);
            self.send_final(id, ServerLine::Bye(ByeReason::Shutdown));
            self.out.push_back(Output::Close { session: id });
            return id;
        }
        self.sessions.insert(id, Session::new(self.now, peer));
        self.send(id, ServerLine::Hello);
        self.send(id, ServerLine::Ask(Ask::Username));
        self.arm(id);
        id
    }

    /// Feeds one input. Client mistakes are answered on the wire, never
    /// returned as errors; input for a session the core has closed is ignored.
    pub fn handle_input(&mut self, now: Time, input: Input) {
        self.catch_up(now);
        let session = input.session();
        match input {
            // The decoder refuses control characters; checking again here
            // keeps a driver without one from passing escapes to others.
            Input::Line { session, line } if has_forbidden_control(&line) => {
                self.on_line(session, Received::Refused(ErrorReply::BadEncoding))
            }
            Input::Line { session, line } => self.on_line(session, Received::Text(line)),
            Input::Malformed { session, error } => {
                self.on_line(session, Received::Refused(error.into()))
            }
            Input::Closed { session } => self.on_closed(session),
            Input::InputEnded { session } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.input_ended = true;
                }
            }
            Input::StoreUnavailable { detail } => self.store_unavailable = Some(detail),
            Input::StoreAvailable => self.store_unavailable = None,
            Input::PasswordChecked { session, check, ok } => {
                self.on_password_checked(session, check, ok)
            }
            Input::Written { session } => self.on_written(session),
            Input::HeldLoaded {
                session,
                load,
                messages,
            } => self.on_held_loaded(session, load, messages),
            Input::Shutdown => self.shutdown(),
        }
        if let Some(id) = session {
            self.end_if_input_ended(id);
        }
    }

    /// Runs what is due at `now`: heartbeats, confirming probes, timeouts.
    /// Early or repeated calls do nothing; a late one runs each deadline it
    /// passed at its own moment, as calls at each of them would have.
    ///
    /// Every other call that takes `now` does the same first, so this is
    /// only needed to wake the core when nothing else happens: at
    /// [`Server::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Time) {
        self.catch_up(now);
    }

    /// The next piece of work for the driver, in the order it must be done.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When to call [`Server::handle_timeout`] next; `None` when nothing is
    /// scheduled.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.next()
    }

    /// The core's clock: the latest time it was given.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The accounts in force.
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Open connections, logged in or not.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Logged-in users in name order.
    pub fn online_users(&self) -> impl Iterator<Item = &str> {
        self.online.names().map(String::as_str)
    }

    /// Who is logged in on `session`, if anyone.
    pub fn user_of(&self, session: SessionId) -> Option<&str> {
        self.sessions
            .get(&session)?
            .active()
            .map(|a| a.user.as_str())
    }

    /// How many messages are held for `user` (not counting deliveries
    /// waiting for confirmation).
    pub fn held_count(&self, user: &str) -> usize {
        self.boxes.get(user).map_or(0, |b| b.count)
    }

    /// Whether [`Input::Shutdown`] was handled.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    /// Logged-in sessions with work held back (commands waiting for flood
    /// control or behind an `OFFLINE` block, a block not sent in full,
    /// deliveries not confirmed), in id order: what
    /// [`Harness::settle`](crate::testing::Harness::settle) waits out.
    #[cfg(feature = "testing")]
    pub(crate) fn held_back(&self) -> Vec<HeldBack> {
        let mut held: Vec<HeldBack> = self
            .sessions
            .iter()
            .filter_map(|(id, s)| {
                let a = s.active()?;
                let unconfirmed = !a.unconfirmed.is_empty();
                if a.backlog.is_empty() && a.paging.is_empty() && !unconfirmed {
                    return None;
                }
                // A probe sent after the last delivery: its answer confirms
                // them all.
                let probe_sent = a
                    .unconfirmed
                    .back()
                    .is_some_and(|u| u.after_probe < a.probe_seq);
                Some(HeldBack {
                    session: *id,
                    confirm_with: (unconfirmed && probe_sent).then_some(a.probe_seq),
                })
            })
            .collect();
        held.sort_by_key(|h| h.session);
        held
    }

    fn advance_clock(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    /// Moves the clock to `now`, running on the way every timer due by then,
    /// in deadline order, each with the clock at its own deadline: what a
    /// driver calling [`Server::handle_timeout`] at every
    /// [`Server::poll_timeout`] would have got. A heartbeat two periods
    /// overdue thus runs twice, and the second one is scheduled from the
    /// first, not from `now`.
    ///
    /// Every entry in the set is at or after the clock (entries are armed
    /// at `max(deadline, now)` and the clock never passes an entry without
    /// running it), so setting the clock to each entry's time never moves
    /// it backwards.
    fn catch_up(&mut self, now: Time) {
        let target = self.now.max(now);
        while let Some((at, id)) = self.timers.pop_due(target) {
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            if session.armed != Some(at) {
                continue;
            }
            session.armed = None;
            debug_assert!(
                at >= self.now,
                "{id} armed at {at:?}, before {:?}",
                self.now
            );
            self.advance_clock(at);
            self.on_timer(id);
            self.end_if_input_ended(id);
            self.rearm_after_timer(id);
        }
        self.advance_clock(target);
    }

    /// Queues a line for a session the core has. Work that outlives its
    /// session (a command waiting behind flood control or an `OFFLINE`
    /// block, a reply computed after a nested call ended the session) must
    /// never reach the wire after `Close`: tests and fuzzing catch such a
    /// bug through the assertion, and a release build drops the line.
    fn send(&mut self, session: SessionId, line: ServerLine) {
        let known = self.sessions.contains_key(&session);
        debug_assert!(known, "{line} for {session}, which the core has forgotten");
        if known {
            self.out.push_back(Output::Send { session, line });
        }
    }

    /// The last lines of a session the core has just forgotten (its `BYE`),
    /// or of a connection it never takes on.
    fn send_final(&mut self, session: SessionId, line: ServerLine) {
        self.out.push_back(Output::Send { session, line });
    }

    fn persist(&mut self, op: StoreOp) {
        self.persisted += 1;
        self.out.push_back(Output::Persist(op));
    }

    /// Lines after this wait until everything persisted so far is durable
    /// (see [`Output::Barrier`]).
    fn barrier(&mut self, session: Option<SessionId>) {
        self.out.push_back(Output::Barrier { session });
    }

    /// Sends a reply that acknowledges what was persisted since `before`
    /// (a value of `self.persisted`): behind a barrier if anything was.
    fn acknowledge(&mut self, id: SessionId, before: u64, line: ServerLine) {
        if self.persisted != before {
            self.barrier(Some(id));
        }
        self.send(id, line);
    }

    fn event(&mut self, event: Event) {
        self.out.push_back(Output::Event(event));
    }

    /// Hands out a fresh message id. The next block is reserved in the
    /// store when half of the current one is used, behind a barrier for
    /// deliveries: a delivery carrying an id of the new block is never seen
    /// before the reservation is durable, so a crash never lets an id be
    /// used twice. Reserving ahead means the barrier rarely holds anything
    /// back: the commit is long done when the block's first id is used.
    fn allocate_id(&mut self) -> MessageId {
        if self.next_id + ID_BLOCK / 2 >= self.reserved {
            self.reserved = self.reserved.max(self.next_id) + ID_BLOCK;
            self.persist(StoreOp::ReserveIds {
                next: self.reserved,
            });
            self.barrier(None);
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Puts the session's entry in the timer set at its earliest deadline,
    /// if that is earlier than the entry it has. A deadline already passed
    /// (a waiting command whose token came while an `OFFLINE` block was
    /// still being sent, say) is due now: the core never names a wake-up in
    /// the past, which a driver could not sleep until.
    fn arm(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let at = session.deadline(&self.config).max(self.now);
        session.armed = Some(self.timers.arm(id, session.armed, at));
    }

    /// [`Server::arm`] after a session's timer ran: its next deadline must be
    /// in the future, or `handle_timeout` would run it again at once, for
    /// ever. A deadline that is not is a bug (tests and fuzzing catch it
    /// through the assertion); in production it is pushed a millisecond on
    /// rather than hanging the server.
    fn rearm_after_timer(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let at = session.deadline(&self.config);
        debug_assert!(
            at > self.now,
            "{id} re-armed at {at:?}, not after {:?}",
            self.now
        );
        let at = at.max(self.now + std::time::Duration::from_millis(1));
        session.armed = Some(self.timers.arm(id, session.armed, at));
    }

    fn on_line(&mut self, id: SessionId, input: Received) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        match &mut session.phase {
            Phase::Checking { pending, .. } => {
                if pending.len() < self.config.max_pending_lines {
                    pending.push_back(input);
                } else {
                    self.send(id, rate_limited("too many lines ahead of the login"));
                }
            }
            Phase::Active(_) => self.on_command_line(id, input),
            Phase::AwaitUser | Phase::AwaitPassword { .. } => self.on_login_line(id, input),
        }
        self.arm(id);
    }

    fn on_timer(&mut self, id: SessionId) {
        let now = self.now;
        let config = &self.config;
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let Phase::Active(a) = &mut session.phase else {
            if now >= session.opened + config.login_timeout {
                self.abandon_login(id, Some(ByeReason::LoginTimeout));
            }
            return;
        };
        if now >= a.heartbeat_deadline(config) {
            self.end_session(id, SessionEnd::HeartbeatTimeout);
            return;
        }
        if now >= a.inactivity_deadline(config) {
            self.end_session(id, SessionEnd::Timeout);
            return;
        }
        let heartbeat_due = now >= a.next_heartbeat;
        let confirm_due = a.confirm_at.is_some_and(|c| now >= c);
        if heartbeat_due {
            a.next_heartbeat = now + config.heartbeat;
        }
        if confirm_due {
            a.confirm_at = None;
        }
        // Probes may come between the lines of an `OFFLINE` block (§5): a
        // long block still hears heartbeats. Pages are written whole, so a
        // probe never splits a message line.
        let probe = heartbeat_due || (confirm_due && a.needs_probe());
        if heartbeat_due {
            // So that after a crash, a user online for hours counts for
            // `wholast` as seen up to the crash, give or take one period.
            let user = a.user.clone();
            self.last_seen.insert(user.clone(), now);
            self.persist(StoreOp::Seen { user, at: now });
        }
        if probe {
            self.probe(id);
        }
        self.run_backlog(id);
    }

    /// Sends the next `IDLE <seq>`; answering it confirms every delivery
    /// written before it.
    fn probe(&mut self, id: SessionId) {
        let Some(a) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
            return;
        };
        a.probe_seq += 1;
        a.confirm_at = None;
        let seq = a.probe_seq;
        self.send(id, ServerLine::Idle { seq });
    }

    /// A page of the `OFFLINE` block reached the socket: the peer is
    /// reading (a sign of life), and the next page may go.
    fn on_written(&mut self, id: SessionId) {
        let now = self.now;
        let Some(a) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
            return;
        };
        a.page_in_flight = false;
        a.last_heard = now;
        self.next_page(id);
        self.run_backlog(id);
        self.arm(id);
    }

    /// Ends a session whose peer sent EOF once nothing it sent is left to
    /// handle: no password check, no waiting command, no `OFFLINE` block.
    fn end_if_input_ended(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        if !session.input_ended {
            return;
        }
        match &session.phase {
            Phase::Checking { .. } => {}
            Phase::Active(a) if !a.backlog.is_empty() || !a.paging.is_empty() => {}
            Phase::Active(_) => self.end_session(id, SessionEnd::InputEnded),
            Phase::AwaitUser | Phase::AwaitPassword { .. } => {
                self.abandon_login(id, None);
                self.out.push_back(Output::Close { session: id });
            }
        }
    }

    fn on_closed(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        if session.active().is_some() {
            self.end_session(id, SessionEnd::Closed);
        } else {
            self.abandon_login(id, None);
        }
    }

    fn shutdown(&mut self) {
        self.shut_down = true;
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort();
        for id in ids {
            if self.user_of(id).is_some() {
                self.end_session(id, SessionEnd::Shutdown);
            } else {
                self.abandon_login(id, Some(ByeReason::Shutdown));
            }
        }
    }

    /// Closes a connection that never logged in, with `bye` if it is still
    /// there to read it.
    fn abandon_login(&mut self, id: SessionId, bye: Option<ByeReason>) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        self.timers.disarm(id, session.armed);
        if let Some(reason) = bye {
            self.send_final(id, ServerLine::Bye(reason));
            self.out.push_back(Output::Close { session: id });
        }
        self.event(Event::LoginAbandoned {
            session: id,
            peer: session.peer,
            bye,
        });
    }

    /// Ends a logged-in session: unconfirmed deliveries are held again
    /// (after `logout` there are none left), the user goes offline, and the
    /// client gets the `BYE` that fits, unless it is already gone.
    fn end_session(&mut self, id: SessionId, how: SessionEnd) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        self.timers.disarm(id, session.armed);
        let Phase::Active(active) = session.phase else {
            return;
        };
        let user = active.user.clone();
        self.online.remove(&user);
        let requeued = self.requeue(&user, active.unconfirmed, active.paging);
        self.last_seen.insert(user.clone(), self.now);
        self.persist(StoreOp::Seen {
            user: user.clone(),
            at: self.now,
        });
        let bye = match how {
            SessionEnd::Logout => Some(ByeReason::Logout),
            SessionEnd::Timeout => Some(ByeReason::Timeout),
            SessionEnd::Shutdown => Some(ByeReason::Shutdown),
            SessionEnd::HeartbeatTimeout | SessionEnd::Closed | SessionEnd::InputEnded => None,
        };
        if let Some(reason) = bye {
            self.send_final(id, ServerLine::Bye(reason));
        }
        if how != SessionEnd::Closed {
            self.out.push_back(Output::Close { session: id });
        }
        self.event(Event::SessionEnded {
            session: id,
            user,
            how,
            requeued,
        });
    }
}

/// A session with work held back, as [`Server::held_back`] reports it.
#[cfg(feature = "testing")]
#[derive(Debug)]
pub(crate) struct HeldBack {
    pub(crate) session: SessionId,
    /// The probe whose answer (`idle <seq>`) confirms every delivery not
    /// confirmed yet; `None` while that probe is still to come.
    pub(crate) confirm_with: Option<u64>,
}

/// The one place an `ERR rate-limited` is built: every refusal for going
/// too fast (lines ahead of a login, commands past the flood backlog) reads
/// the same way, with only its detail telling which bound was hit.
fn rate_limited(detail: &str) -> ServerLine {
    ServerLine::Err(ErrorReply::RateLimited {
        detail: detail.to_string(),
    })
}
