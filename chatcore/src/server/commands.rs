//! Commands of a logged-in client: each gets exactly one reply line, and
//! the deliveries it causes are written before that reply.

use std::sync::Arc;
use std::time::Duration;

use super::api::{SessionEnd, SessionId};
use super::delivery::Routed;
use super::session::{Paged, Received, Request};
use super::{rate_limited, Server};
use crate::message::{Message, MessageKind};
use crate::wire::{
    Audience, Command, ErrorReply, IdleArg, ParseError, ServerLine, Status, UsageOf,
};

/// A logged-in client's line, classified once, the moment it arrives.
#[derive(Debug)]
enum Arrival {
    /// `idle <seq>`: the answer to probe `seq`, handled at once.
    ProbeAnswer(u64),
    /// A bare `idle` (an answer to a probe that confirms nothing) or a blank
    /// line: a sign of life and nothing more, never answered.
    SignOfLife {
        /// Whether it was a bare `idle` rather than a blank line.
        bare_idle: bool,
    },
    /// A command, or a line that reads as a failed attempt at one (unknown
    /// word, bad usage): it is answered in its turn, and it counts as
    /// activity for the inactivity timeout.
    Request(Request),
    /// A line the decoder refused: answered in its turn like a request, but
    /// only a sign of life, so it does not hold off the inactivity timeout.
    Unreadable(ErrorReply),
}

impl Server {
    /// What a logged-in client's line is, decided once.
    fn classify(&self, input: Received) -> Arrival {
        let line = match input {
            Received::Text(line) => line,
            Received::Refused(reply) => return Arrival::Unreadable(reply),
        };
        let request = match Command::parse(&line) {
            Err(ParseError::Blank) => return Arrival::SignOfLife { bare_idle: false },
            Ok(Command::Idle(IdleArg::None)) => return Arrival::SignOfLife { bare_idle: true },
            Ok(Command::Idle(IdleArg::Seq(seq))) => return Arrival::ProbeAnswer(seq),
            Ok(Command::Idle(IdleArg::Busy)) => Request::SetBusy,
            Ok(Command::Idle(IdleArg::Online)) => Request::SetOnline,
            Ok(Command::Message { to, text }) => Request::Message { to, text },
            Ok(Command::Broadcast { audience, text }) => Request::Broadcast { audience, text },
            Ok(Command::WhoElse) => Request::WhoElse,
            Ok(Command::WhoLast { minutes }) => Request::WhoLast { minutes },
            Ok(Command::Logout) => Request::Logout,
            Err(ParseError::UnknownCommand(word)) => {
                Request::Refuse(ErrorReply::UnknownCommand { word })
            }
            Err(ParseError::Usage(of)) => Request::Refuse(ErrorReply::Usage {
                usage: of.text(self.config.last_hour_minutes),
            }),
        };
        Arrival::Request(request)
    }

    /// A line from a logged-in client. Heartbeat replies are handled at
    /// once; everything else passes flood control first.
    pub(super) fn on_command_line(&mut self, id: SessionId, input: Received) {
        let now = self.now;
        let arrival = self.classify(input);
        let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
            return;
        };
        active.last_heard = now;
        let request = match arrival {
            Arrival::SignOfLife { bare_idle } => {
                if bare_idle && active.probe_seq > 0 && !active.bare_answers {
                    // A client that answers probes this way confirms
                    // nothing: a held block waiting for room below
                    // `max_unconfirmed` must not wait for it.
                    active.bare_answers = true;
                    self.next_page(id);
                    // The block may have ended: commands waiting for it run.
                    self.run_backlog(id);
                }
                return;
            }
            Arrival::ProbeAnswer(seq) => {
                active.seq_answers = true;
                self.confirm(id, seq);
                // The block may have ended: commands waiting for it run.
                return self.run_backlog(id);
            }
            Arrival::Request(request) => {
                active.last_command = now;
                request
            }
            Arrival::Unreadable(reply) => Request::Refuse(reply),
        };
        // Replies wait while an `OFFLINE` block is being sent, and while
        // earlier commands wait; then the flood rate decides.
        let admitted = active.paging.is_empty()
            && active.backlog.is_empty()
            && match (&mut active.bucket, &self.config.flood) {
                (Some(bucket), Some(limit)) => bucket.take(now, limit),
                _ => true,
            };
        if admitted {
            return self.execute(id, request);
        }
        let backlog_bound = self
            .config
            .flood
            .as_ref()
            .map_or(self.config.max_pending_lines, |f| f.backlog);
        if active.backlog.len() < backlog_bound {
            active.backlog.push_back(request);
            return;
        }
        let refusal = rate_limited("too many commands: slow down");
        if active.paging.is_empty() {
            self.send(id, refusal);
        } else {
            // Nothing but probes may come inside an `OFFLINE` block (§5):
            // the refusal follows it.
            active.paging.push_back(Paged::Reply(refusal));
        }
    }

    /// Runs waiting commands as far as the flood rate allows, unless an
    /// `OFFLINE` block is still being sent.
    pub(super) fn run_backlog(&mut self, id: SessionId) {
        let now = self.now;
        loop {
            let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
                return;
            };
            if active.backlog.is_empty() || !active.paging.is_empty() {
                return;
            }
            if let (Some(bucket), Some(limit)) = (active.bucket.as_mut(), &self.config.flood) {
                if !bucket.take(now, limit) {
                    return;
                }
            }
            let Some(request) = active.backlog.pop_front() else {
                return;
            };
            self.execute(id, request);
        }
    }

    /// Answers one admitted request.
    fn execute(&mut self, id: SessionId, request: Request) {
        let Some(user) = self.user_of(id).map(str::to_string) else {
            return;
        };
        match request {
            Request::Refuse(reply) => self.send(id, ServerLine::Err(reply)),
            Request::Message { to, text } => self.message(id, &user, to, text),
            Request::Broadcast { audience, text } => self.broadcast(id, &user, audience, text),
            Request::WhoElse => {
                let names = self
                    .online
                    .names()
                    .filter(|n| **n != user)
                    .cloned()
                    .collect();
                self.send(id, ServerLine::Who(names));
            }
            Request::WhoLast { minutes } => self.wholast(id, &user, minutes),
            Request::SetBusy => {
                if let Some(a) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) {
                    a.busy = true;
                }
                self.send(id, ServerLine::Status(Status::Busy));
            }
            Request::SetOnline => {
                if let Some(a) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) {
                    a.busy = false;
                }
                self.deliver_box(id, Some(ServerLine::Status(Status::Online)));
            }
            Request::Logout => {
                self.confirm_all(id);
                self.end_session(id, SessionEnd::Logout);
            }
        }
    }

    fn new_message(&mut self, from: &str, kind: MessageKind, text: String) -> Arc<Message> {
        Arc::new(Message {
            id: self.allocate_id(),
            at: self.now.whole_second(),
            from: from.to_string(),
            kind,
            text,
        })
    }

    fn message(&mut self, id: SessionId, from: &str, to: String, text: String) {
        if !self.accounts.contains(&to) {
            self.send(id, ServerLine::Err(ErrorReply::UnknownUser { user: to }));
            return;
        }
        if self.refuse_if_unavailable(id) {
            return;
        }
        let session = self.online.get(&to);
        let deliverable = session.is_some_and(|s| !self.is_busy(s));
        if !deliverable && !self.box_has_room(&to) {
            self.send(id, ServerLine::Err(ErrorReply::QueueFull { user: to }));
            return;
        }
        let before = self.persisted;
        let message = self.new_message(from, MessageKind::Private, text);
        let reply = match self.route_to(&to, session, &message, true) {
            Routed::Delivered => ServerLine::Delivered { user: to },
            Routed::Held(because) => ServerLine::Queued { user: to, because },
            Routed::Full | Routed::Skipped => ServerLine::Err(ErrorReply::QueueFull { user: to }),
        };
        self.acknowledge(id, before, reply);
    }

    fn broadcast(&mut self, id: SessionId, from: &str, audience: Audience, text: String) {
        let (recipients, hold_offline): (Vec<String>, bool) = match audience {
            Audience::Online => (self.online.names().cloned().collect(), false),
            Audience::All => (self.accounts.names().map(str::to_string).collect(), true),
            Audience::Users(listed) => {
                if let Some(unknown) = listed.iter().find(|u| !self.accounts.contains(u)) {
                    let user = unknown.clone();
                    self.send(id, ServerLine::Err(ErrorReply::UnknownUser { user }));
                    return;
                }
                let mut unique = Vec::with_capacity(listed.len());
                for u in listed {
                    if !unique.contains(&u) {
                        unique.push(u);
                    }
                }
                (unique, true)
            }
        };
        if self.refuse_if_unavailable(id) {
            return;
        }
        let before = self.persisted;
        let message = self.new_message(from, MessageKind::Broadcast, text);
        let (mut delivered, mut queued, mut full) = (0, 0, Vec::new());
        for user in recipients {
            match self.route(&user, &message, hold_offline) {
                Routed::Delivered => delivered += 1,
                Routed::Held(_) => queued += 1,
                Routed::Full => full.push(user),
                Routed::Skipped => {}
            }
        }
        full.sort();
        self.acknowledge(
            id,
            before,
            ServerLine::Broadcasted {
                delivered,
                queued,
                full,
            },
        );
    }

    /// `ERR unavailable` while the store cannot commit: a message is only
    /// accepted when it can be made durable.
    fn refuse_if_unavailable(&mut self, id: SessionId) -> bool {
        let Some(detail) = self.store_unavailable.clone() else {
            return false;
        };
        self.send(id, ServerLine::Err(ErrorReply::Unavailable { detail }));
        true
    }

    fn wholast(&mut self, id: SessionId, user: &str, minutes: u64) {
        if minutes >= self.config.last_hour_minutes {
            let usage = UsageOf::WhoLast.text(self.config.last_hour_minutes);
            self.send(id, ServerLine::Err(ErrorReply::Usage { usage }));
            return;
        }
        let since = self.now - Duration::from_secs(minutes.saturating_mul(60));
        let mut names: Vec<String> = self
            .last_seen
            .iter()
            .filter(|(name, seen)| **seen >= since || self.online.contains(name))
            .map(|(name, _)| name.clone())
            .chain(self.online.names().cloned())
            .filter(|name| name != user)
            .collect();
        names.sort();
        names.dedup();
        self.send(id, ServerLine::Last(names));
    }
}
