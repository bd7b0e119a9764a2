//! The outputs other than lines: `Close`, password checks, page
//! notifications, store changes and barriers (and the rules that tie lines
//! to them).

use std::sync::Arc;

use chatcore::wire::ServerLine;
use chatcore::{Message, PasswordCheck, StoreOp};

use super::{rel, Key, Kind, Oracle, Stage, Want};

impl Oracle {
    pub(super) fn closed_by_core(&mut self, key: Key) {
        self.note(format!("  -> {} <close>", key.1.get()));
        let Some(s) = self.sess.get(&key).cloned() else {
            self.fail(&format!("Close for a session never opened: {}", key.1))
        };
        self.check(!s.closed, || {
            format!("Close for session {}, which is already closed", key.1)
        });
        if s.ending {
            // After its BYE.
        } else if s.script.front() == Some(&Want::Close) {
            self.sm(key).script.pop_front();
        } else if !s.script.is_empty() {
            self.fail(&format!(
                "Close for session {} though it is still owed {:?}",
                key.1, s.script
            ));
        } else if s.input_ended
            && s.user().is_some()
            && s.waiting.is_empty()
            && s.block.is_none()
            && s.refusals == 0
        {
            self.count("input-ended-close");
        } else if s.user().is_some() && matches!(self.kind, Kind::Timeout) {
            let due = s.last_rx + self.cfg.heartbeat_timeout;
            self.count("heartbeat-death");
            self.check(self.now >= due, || {
                format!(
                    "session {} dropped without BYE at {} but last heard from at {}",
                    key.1,
                    rel(self.now),
                    rel(s.last_rx)
                )
            });
        } else if s.input_ended && s.user().is_some() {
            self.fail(&format!(
                "session {} closed after its input ended with {} commands unanswered, {} refusals unsent and a block {:?} unsent",
                key.1,
                s.waiting.len(),
                s.refusals,
                s.block
            ));
        } else {
            self.fail(&format!(
                "Close for session {} ({:?}) without a BYE or any other cause",
                key.1, s.stage
            ));
        }
        self.end_session(key);
    }

    pub(super) fn check_asked(&mut self, key: Key, pc: &PasswordCheck) {
        self.note(format!("  -> {} <check {:?}>", key.1.get(), pc.user));
        let Some(s) = self.sess.get(&key) else {
            self.fail(&format!(
                "password check for a session never opened: {pc:?}"
            ))
        };
        self.check(!s.closed, || {
            format!("password check for closed session {}", key.1)
        });
        let want = self.sm(key).script.pop_front();
        match want {
            Some(Want::Check { user, password }) if pc.user == user && pc.password == password => {
                self.check(pc.credential.as_ref() == self.accounts.get(&user), || {
                    format!("password check for {user:?} carries the wrong credential")
                });
                if let Stage::Checking { check, .. } = &mut self.sm(key).stage {
                    *check = Some(pc.check);
                }
            }
            other => self.fail(&format!(
                "unexpected password check {pc:?} for session {}; expected {other:?}",
                key.1
            )),
        }
    }

    pub(super) fn notify(&mut self, key: Key) {
        self.note(format!("  -> {} <notify-written>", key.1.get()));
        self.count("NotifyWritten");
        self.check(self.cfg.held_page_size.is_some(), || {
            "NotifyWritten without held_page_size".into()
        });
        let Some(s) = self.sess.get(&key) else {
            self.fail(&format!(
                "NotifyWritten for a session never opened: {}",
                key.1
            ))
        };
        let more = s
            .block
            .as_ref()
            .is_some_and(|b| !b.remaining.is_empty() || !b.deferred.is_empty());
        self.check(!s.closed && more && !s.notify, || {
            format!(
                "NotifyWritten for session {} (closed: {}, block: {:?}, already asked: {})",
                key.1, s.closed, s.block, s.notify
            )
        });
        // A page that leaves more of the block to come ends with a probe,
        // so that the client can confirm the block page by page.
        self.check(s.unprobed_since.is_none(), || {
            format!(
                "session {}: a page of the OFFLINE block ({:?} to come) without a probe after it",
                key.1, s.block
            )
        });
        self.sm(key).notify = true;
    }

    pub(super) fn persisted(&mut self, op: &StoreOp) {
        self.note(format!("  persist {op:?}"));
        match op {
            StoreOp::Hold { user, message } => {
                let new = self.see_message(message);
                if self.acc.msg.as_ref().is_some_and(|m| m.id == message.id) {
                    self.acc.hold_not_behind_barrier = true;
                    self.acc.barriers_since_hold.clear();
                }
                if new {
                    self.acc.held_for.insert(user.clone());
                } else {
                    self.check(self.owed(user).contains(&message.id), || {
                        format!(
                            "Hold of message {} for {user}, which is not owed it",
                            message.id
                        )
                    });
                }
            }
            StoreOp::Release { user, upto } => self.releases.push((user.clone(), *upto)),
            StoreOp::ReserveIds { next } => {
                self.check(*next >= self.reserved, || {
                    format!("ReserveIds went back from {} to {next}", self.reserved)
                });
                self.reserved = *next;
            }
            StoreOp::Seen { .. }
            | StoreOp::LoginFailures(_)
            | StoreOp::ClearLoginFailures { .. } => {}
        }
    }

    /// A barrier: for one session (`Some`), or for everyone.
    pub(super) fn barrier(&mut self, key: Option<Key>) {
        self.note(format!("  barrier {:?}", key.map(|k| k.1.get())));
        if key.is_none() {
            self.reserved_behind_barrier = self.reserved;
        }
        self.acc.barriers_since_hold.push(key);
    }

    /// The rules that tie lines to what is durable (PROTOCOL.md §6): a
    /// reply that accepts a message follows a barrier once a copy of it
    /// was persisted, and a delivery carries only an id whose reservation a
    /// barrier for everyone followed.
    pub(super) fn check_durable_before(&mut self, key: Key, line: &ServerLine) {
        if matches!(
            line,
            ServerLine::Delivered { .. }
                | ServerLine::Queued { .. }
                | ServerLine::Broadcasted { .. }
        ) {
            let behind = !self.acc.hold_not_behind_barrier
                || self
                    .acc
                    .barriers_since_hold
                    .iter()
                    .any(|b| b.is_none_or(|b| b == key));
            self.check(behind, || {
                format!("{line:?} acknowledges a message persisted after the last barrier")
            });
        }
        if let ServerLine::Deliver(m) = line {
            self.check(m.id < self.reserved_behind_barrier, || {
                format!(
                    "delivery of id {} whose reservation no barrier followed (durable below {})",
                    m.id, self.reserved_behind_barrier
                )
            });
        }
    }

    /// Sees a message on the wire or in the store; true if it is new (the
    /// message of the command being run).
    pub(super) fn see_message(&mut self, m: &Arc<Message>) -> bool {
        if let Some(old) = self.msgs.get(&m.id) {
            self.check(**old == **m, || {
                format!("message {} changed: was {old:?}, now {m:?}", m.id)
            });
            return false;
        }
        if let Some(n) = &self.acc.msg {
            self.check(n.id == m.id, || {
                format!("two new messages in one command: {} and {}", n.id, m.id)
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
        self.check(m.at == self.now.whole_second(), || {
            format!(
                "new message {} stamped {:?}, accepted at {:?}",
                m.id,
                m.at,
                self.now.whole_second()
            )
        });
        self.acc.msg = Some(Arc::clone(m));
        true
    }
}
