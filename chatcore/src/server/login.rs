//! Logging in: prompts, the per-connection attempt budget, lockout per
//! (user name, address), and duplicate logins.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use super::api::{CheckId, Event, LoginFailure, Output, PasswordCheck, SessionId};
use super::session::{Active, Phase, Received};
use super::Server;
use crate::accounts::{Accounts, AccountsChange};
use crate::names::is_valid_user_name;
use crate::persist::{LoginFailures, StoreOp};
use crate::time::Time;
use crate::wire::{Ask, ByeReason, ErrorReply, ServerLine};

/// Whole seconds left, rounded up, and never 0 while a block is in force.
fn seconds_left(left: Duration) -> u64 {
    left.as_millis().div_ceil(1000).max(1) as u64
}

impl Server {
    /// Replaces the accounts, as when the users file is read again.
    ///
    /// What changes is only who may log in from now on: open sessions run
    /// on whatever happened to their account (an operator who removes an
    /// account stops new logins, not a conversation), and held messages,
    /// `wholast` history and lockouts are kept, so an account that comes
    /// back finds them. A password check already running against a
    /// credential that changed or went away is answered "no" whatever the
    /// driver finds, so a removed account cannot slip in during a reload.
    pub fn set_accounts(&mut self, now: Time, accounts: Accounts) -> AccountsChange {
        self.catch_up(now);
        let change = self.accounts.diff(&accounts);
        for session in self.sessions.values_mut() {
            if let Phase::Checking { user, stale, .. } = &mut session.phase {
                if self.accounts.get(user) != accounts.get(user) {
                    *stale = true;
                }
            }
        }
        self.accounts = accounts;
        change
    }

    /// A line answering `ASK username` or `ASK password`.
    pub(super) fn on_login_line(&mut self, id: SessionId, input: Received) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let ask = match &session.phase {
            Phase::AwaitPassword { .. } => Ask::Password,
            _ => Ask::Username,
        };
        let line = match input {
            Received::Text(line) => line,
            Received::Refused(reply) => {
                self.send(id, ServerLine::Err(reply));
                self.send(id, ServerLine::Ask(ask));
                return;
            }
        };
        match std::mem::replace(&mut session.phase, Phase::AwaitUser) {
            Phase::AwaitUser => {
                // Blanks around the name are dropped (as between command
                // words); nothing else is changed.
                let user = line.trim_matches([' ', '\t']).to_string();
                if user.is_empty() {
                    self.send(id, ServerLine::Ask(Ask::Username));
                    return;
                }
                let peer = session.peer;
                // A name that is no user name cannot be blocked: it is
                // never recorded (see `bad_credentials`).
                if let Some(left) = self.block_left(&user, peer) {
                    self.refuse_blocked(id, user, peer, left);
                    return;
                }
                if let Some(session) = self.sessions.get_mut(&id) {
                    session.phase = Phase::AwaitPassword { user };
                }
                self.send(id, ServerLine::Ask(Ask::Password));
            }
            Phase::AwaitPassword { user } => {
                let peer = session.peer;
                // Another connection may have caused a block meanwhile.
                if let Some(left) = self.block_left(&user, peer) {
                    self.refuse_blocked(id, user, peer, left);
                    return;
                }
                let check = CheckId(self.next_check);
                self.next_check += 1;
                let credential = self.accounts.get(&user).cloned();
                if let Some(session) = self.sessions.get_mut(&id) {
                    session.phase = Phase::Checking {
                        user: user.clone(),
                        check,
                        pending: VecDeque::new(),
                        stale: false,
                    };
                }
                self.out.push_back(Output::CheckPassword(PasswordCheck {
                    session: id,
                    check,
                    user,
                    password: line,
                    credential,
                }));
            }
            other => session.phase = other,
        }
    }

    /// The driver's answer to a password check.
    pub(super) fn on_password_checked(&mut self, id: SessionId, check: CheckId, ok: bool) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let Phase::Checking {
            check: expected, ..
        } = &session.phase
        else {
            return;
        };
        if *expected != check {
            return;
        }
        let Phase::Checking {
            user,
            pending,
            stale,
            ..
        } = std::mem::replace(&mut session.phase, Phase::AwaitUser)
        else {
            return;
        };
        // Checked against a credential that is no longer the account's.
        let ok = ok && !stale;
        let peer = session.peer;
        if let Some(left) = self.block_left(&user, peer) {
            // Other connections' failures blocked the pair while this check
            // ran: whatever its answer, it is refused like any attempt on a
            // blocked pair, neither counted nor extending the block. (A right
            // answer must not clear a block that guesses in flight caused.)
            self.refuse_blocked(id, user, peer, left);
        } else if !ok {
            self.bad_credentials(id, user, peer);
        } else if self.online.contains(&user) {
            self.send(id, ServerLine::Err(ErrorReply::AlreadyOnline));
            self.event(Event::LoginFailed {
                session: id,
                user: Some(user),
                peer,
                reason: LoginFailure::AlreadyOnline,
            });
            self.failed_attempt(id);
        } else {
            self.log_in(id, user, peer);
        }
        // Lines sent ahead of the answer are handled now, in order; one of
        // them may start another check, which then queues the rest.
        for input in pending {
            match self.sessions.get_mut(&id).map(|s| &mut s.phase) {
                None => break,
                Some(Phase::Checking { pending, .. }) => pending.push_back(input),
                Some(_) => self.on_line(id, input),
            }
        }
        self.arm(id);
    }

    fn log_in(&mut self, id: SessionId, user: String, peer: std::net::IpAddr) {
        if self.failures.remove(&(user.clone(), peer)).is_some() {
            self.persist(StoreOp::ClearLoginFailures {
                user: user.clone(),
                ip: peer,
            });
        }
        let now = self.now;
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        session.phase = Phase::Active(Box::new(Active::new(now, user.clone(), &self.config)));
        self.online.insert(user.clone(), id);
        self.last_seen.insert(user.clone(), now);
        self.persist(StoreOp::Seen {
            user: user.clone(),
            at: now,
        });
        self.send(id, ServerLine::LoggedIn { user: user.clone() });
        self.event(Event::LoggedIn {
            session: id,
            user,
            peer,
        });
        self.deliver_box(id, None);
    }

    /// A wrong password or unknown name: counts toward the pair's block and
    /// the connection's budget. Text that is no valid user name gets the
    /// same answer but only counts toward the budget: recording it would let
    /// anyone fill the records (and the store and the logs) with whatever
    /// they send, including lines pipelined after a wrong password.
    fn bad_credentials(&mut self, id: SessionId, user: String, peer: IpAddr) {
        if !is_valid_user_name(&user) {
            self.send(id, ServerLine::Err(ErrorReply::BadCredentials));
            self.event(Event::LoginFailed {
                session: id,
                user: None,
                peer,
                reason: LoginFailure::BadCredentials,
            });
            self.failed_attempt(id);
            return;
        }
        let now = self.now;
        if self.failures.len() >= self.config.max_failure_records {
            self.forget_old_failures();
        }
        let record = self
            .failures
            .entry((user.clone(), peer))
            .or_insert_with(|| LoginFailures {
                user: user.clone(),
                ip: peer,
                count: 0,
                last: now,
                blocked_until: None,
            });
        if record.last + self.config.failure_memory <= now {
            record.count = 0;
        }
        record.count += 1;
        record.last = now;
        let blocked = record.count >= self.config.block_after;
        if blocked {
            record.count = 0;
            record.blocked_until = Some(now + self.config.block_time);
        }
        let snapshot = record.clone();
        self.persist(StoreOp::LoginFailures(snapshot));
        // The answer says the failure counted: it must not be undone by a
        // crash, or crashing the server would reset an attacker's count.
        self.barrier(Some(id));
        if blocked {
            let until = now + self.config.block_time;
            self.event(Event::Blocked {
                user: user.clone(),
                peer,
                until,
            });
            self.refuse_blocked(id, user, peer, self.config.block_time);
            return;
        }
        self.send(id, ServerLine::Err(ErrorReply::BadCredentials));
        self.event(Event::LoginFailed {
            session: id,
            user: Some(user),
            peer,
            reason: LoginFailure::BadCredentials,
        });
        self.failed_attempt(id);
    }

    /// Counts a failed attempt on the connection: ask again, or say goodbye
    /// once the budget is spent.
    fn failed_attempt(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        session.failed_attempts += 1;
        session.phase = Phase::AwaitUser;
        if session.failed_attempts >= self.config.max_login_attempts {
            self.abandon_login(id, Some(ByeReason::LoginFailed));
        } else {
            self.send(id, ServerLine::Ask(Ask::Username));
        }
    }

    /// `ERR blocked <secs>`, `BYE blocked`, and the connection closes.
    fn refuse_blocked(&mut self, id: SessionId, user: String, peer: IpAddr, left: Duration) {
        self.send(
            id,
            ServerLine::Err(ErrorReply::Blocked {
                seconds_left: seconds_left(left),
            }),
        );
        self.event(Event::LoginFailed {
            session: id,
            user: Some(user),
            peer,
            reason: LoginFailure::Blocked,
        });
        self.abandon_login(id, Some(ByeReason::Blocked));
    }

    /// Makes room among the failure records: drops those past
    /// `failure_memory`, then, if that is not enough, the oldest unblocked
    /// half. Amortised: it runs only when the records are full.
    fn forget_old_failures(&mut self) {
        let now = self.now;
        let memory = self.config.failure_memory;
        let blocked = |f: &LoginFailures| f.blocked_until.is_some_and(|u| u > now);
        let mut forget: Vec<(String, IpAddr)> = self
            .failures
            .iter()
            .filter(|(_, f)| !blocked(f) && f.last + memory <= now)
            .map(|(k, _)| k.clone())
            .collect();
        if self.failures.len() - forget.len() >= self.config.max_failure_records {
            let mut rest: Vec<(Time, (String, IpAddr))> = self
                .failures
                .iter()
                .filter(|(_, f)| !blocked(f) && f.last + memory > now)
                .map(|(k, f)| (f.last, k.clone()))
                .collect();
            rest.sort();
            let half = rest.len().div_ceil(2);
            forget.extend(rest.into_iter().take(half).map(|(_, k)| k));
        }
        for (user, ip) in forget {
            self.failures.remove(&(user.clone(), ip));
            self.persist(StoreOp::ClearLoginFailures { user, ip });
        }
    }

    /// How long the pair stays blocked; forgets a block that has ended, so
    /// the pair starts counting again from zero.
    fn block_left(&mut self, user: &str, peer: IpAddr) -> Option<Duration> {
        if !is_valid_user_name(user) {
            return None; // never recorded, so never blocked
        }
        let key = (user.to_string(), peer);
        let until = self.failures.get(&key)?.blocked_until?;
        if until > self.now {
            return Some(until.since(self.now));
        }
        self.failures.remove(&key);
        self.persist(StoreOp::ClearLoginFailures {
            user: user.to_string(),
            ip: peer,
        });
        None
    }
}
