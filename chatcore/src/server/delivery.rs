//! Boxes of held messages, delivery, confirmation and redelivery.

use std::collections::VecDeque;
use std::sync::Arc;

use super::api::Output;
use super::api::SessionId;
use super::session::{Paged, Phase, Unconfirmed};
use super::Server;
use crate::message::{Message, MessageId};
use crate::persist::StoreOp;
use crate::wire::{HeldBecause, ServerLine};

/// What became of one recipient's copy of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Routed {
    /// Written to their session.
    Delivered,
    /// Put in their box.
    Held(HeldBecause),
    /// Their box is full: nothing was done.
    Full,
    /// Offline, and this form of message is not held.
    Skipped,
}

impl Server {
    /// Delivers `message` to `user` now if they are online and not busy,
    /// holds it otherwise (offline ones only when `hold_offline`).
    pub(super) fn route(
        &mut self,
        user: &str,
        message: &Arc<Message>,
        hold_offline: bool,
    ) -> Routed {
        let session = self.online.get(user).copied();
        let busy = session
            .and_then(|id| self.sessions.get(&id))
            .and_then(|s| s.active())
            .map(|a| a.busy);
        match (session, busy) {
            (Some(id), Some(false)) => {
                let persist = self.config.persist_deliveries;
                if persist {
                    self.persist(StoreOp::Hold {
                        user: user.to_string(),
                        message: Arc::clone(message),
                    });
                }
                let paging = self
                    .sessions
                    .get_mut(&id)
                    .and_then(|s| s.active_mut())
                    .map(|a| &mut a.paging)
                    .filter(|p| !p.is_empty());
                if let Some(paging) = paging {
                    // After the block still being sent, as §5 orders it.
                    paging.push_back(Paged::Message {
                        message: Arc::clone(message),
                        stored: persist,
                    });
                } else {
                    self.deliver(id, Arc::clone(message), persist);
                    self.trim_unconfirmed(id);
                }
                Routed::Delivered
            }
            (Some(_), _) => self.hold(user, message, HeldBecause::Busy),
            (None, _) if hold_offline => self.hold(user, message, HeldBecause::Offline),
            (None, _) => Routed::Skipped,
        }
    }

    /// Whether `user`'s box has room for one more.
    pub(super) fn box_has_room(&self, user: &str) -> bool {
        self.held_count(user) < self.config.max_held_per_user
    }

    fn hold(&mut self, user: &str, message: &Arc<Message>, because: HeldBecause) -> Routed {
        if !self.box_has_room(user) {
            return Routed::Full;
        }
        self.boxes
            .entry(user.to_string())
            .or_default()
            .push_back(Arc::clone(message));
        self.persist(StoreOp::Hold {
            user: user.to_string(),
            message: Arc::clone(message),
        });
        Routed::Held(because)
    }

    /// Writes a message to a session and remembers it until confirmed; a
    /// probe follows within `confirm_delay`.
    fn deliver(&mut self, id: SessionId, message: Arc<Message>, stored: bool) {
        let now = self.now;
        let delay = self.config.confirm_delay;
        let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
            return;
        };
        active.unconfirmed.push_back(Unconfirmed {
            after_probe: active.probe_seq,
            message: Arc::clone(&message),
            stored,
        });
        if active.confirm_at.is_none() {
            active.confirm_at = Some(now + delay);
        }
        self.send(id, ServerLine::Deliver(message));
        self.arm(id);
    }

    /// A live delivery past [`crate::Config::max_unconfirmed`] (or a held
    /// page, for a client that never confirms) takes the oldest unconfirmed
    /// one as confirmed, so such a client holds bounded memory (see there).
    fn trim_unconfirmed(&mut self, id: SessionId) {
        let max = self.config.max_unconfirmed.max(1);
        let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
            return;
        };
        let mut released = Vec::new();
        while active.unconfirmed.len() > max {
            match active.unconfirmed.pop_front() {
                Some(u) if u.stored => released.push(u.message.id),
                _ => {}
            }
        }
        let user = active.user.clone();
        self.release(&user, released);
    }

    /// Removes confirmed messages from `user`'s box in the store.
    fn release(&mut self, user: &str, ids: Vec<MessageId>) {
        for id in ids {
            self.persist(StoreOp::Release {
                user: user.to_string(),
                id,
            });
        }
    }

    /// Sends the user's held messages (`OFFLINE <n>` and then each, oldest
    /// first), then `then` (the reply that must follow the block). The
    /// messages stay in the store until confirmed.
    ///
    /// It does not run commands waiting behind the block: whoever called it
    /// is in the middle of something (a login, a command), and running
    /// others here would answer them before it is done.
    pub(super) fn deliver_box(&mut self, id: SessionId, then: Option<ServerLine>) {
        let Some(user) = self.user_of(id).map(str::to_string) else {
            return;
        };
        let held = self.boxes.remove(&user).filter(|held| !held.is_empty());
        let Some(held) = held else {
            if let Some(line) = then {
                self.send(id, line);
            }
            return;
        };
        self.send(id, ServerLine::Offline { count: held.len() });
        if self.config.held_page_size.is_none() {
            for message in held {
                self.deliver(id, message, true);
            }
            if let Some(line) = then {
                self.send(id, line);
            }
            return;
        }
        if let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) {
            active
                .paging
                .extend(held.into_iter().map(|message| Paged::Message {
                    message,
                    stored: true,
                }));
            active.paging.extend(then.map(Paged::Reply));
        }
        self.next_page(id);
    }

    /// Sends the next page of an `OFFLINE` block, unless one is still being
    /// written. A page ends with a probe, so the client confirms the block
    /// page by page and a drop mid-drain sends back only what is
    /// unconfirmed; the driver is asked to say when the page is written.
    /// A page is never more than the room below
    /// [`crate::Config::max_unconfirmed`]: with no room, the block waits
    /// for confirmations ([`Server::confirm`] resumes it).
    pub(super) fn next_page(&mut self, id: SessionId) {
        let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
            return;
        };
        if active.page_in_flight || active.paging.is_empty() {
            return;
        }
        let page = self.config.held_page_size.unwrap_or(usize::MAX).max(1);
        // A client that never confirms is paced by its reading alone, and
        // its list is trimmed like for live deliveries.
        let never_confirms = active.never_confirms();
        let room = if never_confirms {
            usize::MAX
        } else {
            self.config
                .max_unconfirmed
                .max(1)
                .saturating_sub(active.unconfirmed.len())
        };
        let page = page.min(room);
        let mut messages = 0;
        while let Some(item) = self.next_paged(id, messages == page) {
            match item {
                Paged::Message { message, stored } => {
                    messages += 1;
                    self.deliver(id, message, stored);
                }
                Paged::Reply(line) => self.send(id, line),
            }
        }
        if never_confirms {
            self.trim_unconfirmed(id);
        }
        if messages == 0 || !self.is_paging(id) {
            return;
        }
        self.probe(id);
        if let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) {
            active.page_in_flight = true;
        }
        self.out.push_back(Output::NotifyWritten { session: id });
    }

    /// The next item of the block; once the page is full, only replies.
    /// Replies do not count toward a page: they are small, and the person is
    /// waiting for them.
    fn next_paged(&mut self, id: SessionId, page_full: bool) -> Option<Paged> {
        let paging = &mut self.sessions.get_mut(&id)?.active_mut()?.paging;
        match paging.front()? {
            Paged::Message { .. } if page_full => None,
            _ => paging.pop_front(),
        }
    }

    /// Whether an `OFFLINE` block is still being sent to the session.
    pub(super) fn is_paging(&self, id: SessionId) -> bool {
        self.sessions
            .get(&id)
            .and_then(|s| s.active())
            .is_some_and(|a| !a.paging.is_empty())
    }

    /// The client answered probe `seq`: every delivery written before that
    /// probe went out is confirmed, and held ones leave the store.
    pub(super) fn confirm(&mut self, id: SessionId, seq: u64) {
        let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
            return;
        };
        if seq == 0 || seq > active.probe_seq {
            return; // no such probe was sent: a sign of life, nothing more
        }
        let mut released = Vec::new();
        while active
            .unconfirmed
            .front()
            .is_some_and(|u| u.after_probe < seq)
        {
            if let Some(u) = active.unconfirmed.pop_front() {
                if u.stored {
                    released.push(u.message.id);
                }
            }
        }
        let user = active.user.clone();
        self.release(&user, released);
        // A block that waited for room below `max_unconfirmed` goes on.
        self.next_page(id);
    }

    /// Confirms every delivery of the session (`logout`).
    pub(super) fn confirm_all(&mut self, id: SessionId) {
        let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
            return;
        };
        let user = active.user.clone();
        let released: Vec<_> = active
            .unconfirmed
            .drain(..)
            .filter(|u| u.stored)
            .map(|u| u.message.id)
            .collect();
        self.release(&user, released);
    }

    /// Puts unconfirmed deliveries back at the front of the user's box, in
    /// their order, for redelivery at the next login. Returns how many.
    ///
    /// Everything in the box was accepted after these were delivered (a box
    /// only fills while its owner is offline or busy, and is emptied when
    /// they come back), so the box stays in id order. The box may pass
    /// `max_held_per_user` here: a delivered message is never dropped.
    pub(super) fn requeue(
        &mut self,
        user: &str,
        mut unconfirmed: VecDeque<Unconfirmed>,
        paging: VecDeque<Paged>,
    ) -> usize {
        // Messages of a block not sent yet come after those sent.
        unconfirmed.extend(paging.into_iter().filter_map(|p| match p {
            Paged::Message { message, stored } => Some(Unconfirmed {
                after_probe: 0,
                message,
                stored,
            }),
            Paged::Reply(_) => None,
        }));
        let n = unconfirmed.len();
        if n == 0 {
            return 0;
        }
        for u in &unconfirmed {
            if !u.stored {
                self.persist(StoreOp::Hold {
                    user: user.to_string(),
                    message: Arc::clone(&u.message),
                });
            }
        }
        let held = self.boxes.entry(user.to_string()).or_default();
        for u in unconfirmed.into_iter().rev() {
            held.push_front(u.message);
        }
        n
    }

    /// Whether the session is logged in and busy.
    pub(super) fn is_busy(&self, id: SessionId) -> bool {
        matches!(self.sessions.get(&id).map(|s| &s.phase), Some(Phase::Active(a)) if a.busy)
    }
}
