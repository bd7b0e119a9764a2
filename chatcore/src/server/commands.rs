//! Commands of a logged-in client: each gets exactly one reply line, and
//! the deliveries it causes are written before that reply.

use std::sync::Arc;
use std::time::Duration;

use super::api::{SessionEnd, SessionId};
use super::delivery::Routed;
use super::session::{Paged, Parsed, Pending};
use super::{rate_limited, Server};
use crate::message::{Message, MessageKind};
use crate::wire::{
    Audience, Command, ErrorReply, IdleArg, ParseError, ServerLine, Status, UsageOf,
};

impl Server {
    /// A line from a logged-in client. Heartbeat replies are handled at
    /// once; everything else passes flood control first.
    pub(super) fn on_command_line(&mut self, id: SessionId, input: Pending) {
        let now = self.now;
        let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
            return;
        };
        active.last_heard = now;
        let parsed = match input {
            Pending::Line(line) => Parsed::Line(Command::parse(&line)),
            Pending::Malformed(error) => Parsed::Malformed(error),
        };
        match &parsed {
            Parsed::Line(Err(ParseError::Blank)) => return,
            Parsed::Line(Ok(Command::Idle(IdleArg::None))) => {
                if active.probe_seq > 0 && !active.bare_answers {
                    // A client that answers probes this way confirms
                    // nothing: a held block waiting for room below
                    // `max_unconfirmed` must not wait for it.
                    active.bare_answers = true;
                    self.next_page(id);
                    // The block may have ended: commands waiting for it run.
                    return self.run_backlog(id);
                }
                return;
            }
            Parsed::Line(Ok(Command::Idle(IdleArg::Seq(seq)))) => {
                let seq = *seq;
                active.seq_answers = true;
                self.confirm(id, seq);
                // The block may have ended: commands waiting for it run.
                return self.run_backlog(id);
            }
            Parsed::Line(_) => active.last_command = now,
            Parsed::Malformed(_) => {}
        }
        // Replies wait while an `OFFLINE` block is being sent, and while
        // earlier commands wait; then the flood rate decides.
        let admitted = active.paging.is_empty()
            && active.backlog.is_empty()
            && match (&mut active.bucket, &self.config.flood) {
                (Some(bucket), Some(limit)) => bucket.take(now, limit),
                _ => true,
            };
        if admitted {
            return self.execute(id, parsed);
        }
        let backlog_bound = self
            .config
            .flood
            .as_ref()
            .map_or(self.config.max_pending_lines, |f| f.backlog);
        if active.backlog.len() < backlog_bound {
            active.backlog.push_back(parsed);
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
            let Some(parsed) = active.backlog.pop_front() else {
                return;
            };
            self.execute(id, parsed);
        }
    }

    /// Answers one admitted line.
    fn execute(&mut self, id: SessionId, parsed: Parsed) {
        let Some(user) = self.user_of(id).map(str::to_string) else {
            return;
        };
        let command = match parsed {
            Parsed::Malformed(error) => {
                return self.send(id, ServerLine::Err(error.into()));
            }
            Parsed::Line(Ok(command)) => command,
            Parsed::Line(Err(ParseError::Blank)) => return,
            Parsed::Line(Err(ParseError::UnknownCommand(word))) => {
                return self.send(id, ServerLine::Err(ErrorReply::UnknownCommand { word }));
            }
            Parsed::Line(Err(ParseError::Usage(of))) => {
                let usage = of.text(self.config.last_hour_minutes);
                return self.send(id, ServerLine::Err(ErrorReply::Usage { usage }));
            }
        };
        match command {
            Command::Message { to, text } => self.message(id, &user, to, text),
            Command::Broadcast { audience, text } => self.broadcast(id, &user, audience, text),
            Command::WhoElse => {
                let names = self
                    .online
                    .keys()
                    .filter(|n| **n != user)
                    .cloned()
                    .collect();
                self.send(id, ServerLine::Who(names));
            }
            Command::WhoLast { minutes } => self.wholast(id, &user, minutes),
            Command::Idle(IdleArg::Busy) => {
                if let Some(a) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) {
                    a.busy = true;
                }
                self.send(id, ServerLine::Status(Status::Busy));
            }
            Command::Idle(IdleArg::Online) => {
                if let Some(a) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) {
                    a.busy = false;
                }
                self.deliver_box(id, Some(ServerLine::Status(Status::Online)));
            }
            Command::Idle(IdleArg::None) => {}
            Command::Idle(IdleArg::Seq(seq)) => self.confirm(id, seq),
            Command::Logout => {
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
        let deliverable = self.online.get(&to).is_some_and(|s| !self.is_busy(*s));
        if !deliverable && !self.box_has_room(&to) {
            self.send(id, ServerLine::Err(ErrorReply::QueueFull { user: to }));
            return;
        }
        let message = self.new_message(from, MessageKind::Private, text);
        let reply = match self.route(&to, &message, true) {
            Routed::Delivered => ServerLine::Delivered { user: to },
            Routed::Held(because) => ServerLine::Queued { user: to, because },
            Routed::Full | Routed::Skipped => ServerLine::Err(ErrorReply::QueueFull { user: to }),
        };
        self.send(id, reply);
    }

    fn broadcast(&mut self, id: SessionId, from: &str, audience: Audience, text: String) {
        let (recipients, hold_offline): (Vec<String>, bool) = match audience {
            Audience::Online => (self.online.keys().cloned().collect(), false),
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
        self.send(
            id,
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
            .filter(|(name, seen)| **seen >= since || self.online.contains_key(*name))
            .map(|(name, _)| name.clone())
            .chain(self.online.keys().cloned())
            .filter(|name| name != user)
            .collect();
        names.sort();
        names.dedup();
        self.send(id, ServerLine::Last(names));
    }
}
