//! Boxes of held messages, delivery, confirmation and redelivery.

use std::collections::VecDeque;
use std::sync::Arc;

use super::api::{HeldRequest, LoadId, Output, SessionId};
use super::session::{Paged, Phase, Unconfirmed};
use super::Server;
use crate::message::{Message, MessageId};
use crate::persist::{BoxSummary, StoreOp};
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
        let session = self.online.get(user);
        self.route_to(user, session, message, hold_offline)
    }

    /// [`route`](Self::route), for a caller that has just looked up
    /// `user`'s session in `online`: a private message then finds its
    /// recipient by name once, not twice (the lookup compares names along
    /// the tree, a tenth of a message's work in the core).
    pub(super) fn route_to(
        &mut self,
        user: &str,
        session: Option<SessionId>,
        message: &Arc<Message>,
        hold_offline: bool,
    ) -> Routed {
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
            .add(1, message.id);
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
        active.delivered_upto = active.delivered_upto.max(message.id);
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

    /// A live delivery past [`Config::max_unconfirmed`](crate::Config::max_unconfirmed) (or a held
    /// page, for a client that never confirms) takes the oldest unconfirmed
    /// one as confirmed, so such a client holds bounded memory (see there).
    fn trim_unconfirmed(&mut self, id: SessionId) {
        let max = self.config.max_unconfirmed.max(1);
        let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
            return;
        };
        let excess = active.unconfirmed.len().saturating_sub(max);
        let released = stored_upto(active.unconfirmed.drain(..excess));
        let user = active.user.clone();
        self.release(&user, released);
    }

    /// Removes confirmed messages from `user`'s box in the store: every
    /// entry up to `upto`, in one change.
    ///
    /// A range is right because deliveries to one user go out in id order
    /// (a block oldest first, live messages behind it) and are confirmed a
    /// prefix at a time; every entry of the box at or below the last
    /// confirmed delivery is confirmed too (see [`Server::deliver_box`]
    /// for why the box holds nothing older that is still owed).
    fn release(&mut self, user: &str, upto: Option<MessageId>) {
        if let Some(upto) = upto {
            self.persist(StoreOp::Release {
                user: user.to_string(),
                upto,
            });
        }
    }

    /// Sends the user's held messages (`OFFLINE <n>` and then each, oldest
    /// first), then `then` (the reply that must follow the block). The
    /// messages are read from the store as they are sent, and stay there
    /// until confirmed.
    ///
    /// The block is the store's entries of the box above the last id
    /// delivered in this session (those at or below it are this session's
    /// deliveries, kept in the store until confirmed) and up to the box's
    /// last id now (later messages wait in memory behind the block). That
    /// is exactly the box: it only fills while its owner is offline or
    /// busy, with messages accepted after everything delivered before, and
    /// at login it is taken whole.
    ///
    /// It does not run commands waiting behind the block: whoever called it
    /// is in the middle of something (a login, a command), and running
    /// others here would answer them before it is done.
    pub(super) fn deliver_box(&mut self, id: SessionId, then: Option<ServerLine>) {
        let Some(user) = self.user_of(id).map(str::to_string) else {
            return;
        };
        let held = self.boxes.remove(&user).filter(|held| held.count > 0);
        let Some(held) = held else {
            if let Some(line) = then {
                self.send(id, line);
            }
            return;
        };
        self.send(id, ServerLine::Offline { count: held.count });
        if let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) {
            active.paging.push_back(Paged::Stored {
                after: active.delivered_upto,
                upto: held.last,
                count: held.count,
            });
            active.paging.extend(then.map(Paged::Reply));
        }
        self.next_page(id);
    }

    /// Sends the next page of an `OFFLINE` block, unless one is still being
    /// written or read from the store. A page ends with a probe, so the
    /// client confirms the block page by page and a drop mid-drain sends
    /// back only what is unconfirmed; the driver is asked to say when the
    /// page is written. A page is never more than the room below
    /// [`Config::max_unconfirmed`](crate::Config::max_unconfirmed): with no room, the block waits
    /// for confirmations ([`Server::confirm`] resumes it).
    ///
    /// Without [`Config::held_page_size`](crate::Config::held_page_size) the whole block is read in
    /// one request and sent at once, with no pacing.
    pub(super) fn next_page(&mut self, id: SessionId) {
        let paged = self.config.held_page_size;
        let max_unconfirmed = self.config.max_unconfirmed.max(1);
        let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
            return;
        };
        if active.page_in_flight || active.loading.is_some() || active.paging.is_empty() {
            return;
        }
        let page = paged.unwrap_or(usize::MAX).max(1);
        // A client that never confirms is paced by its reading alone, and
        // its list is trimmed like for live deliveries.
        let never_confirms = active.never_confirms();
        let room = if never_confirms || paged.is_none() {
            usize::MAX
        } else {
            max_unconfirmed.saturating_sub(active.unconfirmed.len())
        };
        let page = page.min(room);
        let mut messages = 0;
        loop {
            let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
                return;
            };
            match active.paging.front() {
                None => break,
                Some(Paged::Message { .. } | Paged::Stored { .. }) if messages == page => break,
                // The page ends here; the next one reads from the store.
                Some(Paged::Stored { .. }) if messages > 0 && paged.is_some() => break,
                Some(&Paged::Stored { after, upto, count }) => {
                    if count == 0 || after >= upto {
                        active.paging.pop_front();
                        continue;
                    }
                    let max = (page - messages).min(count);
                    let load = LoadId(self.next_load);
                    self.next_load += 1;
                    active.loading = Some((load, max));
                    let user = active.user.clone();
                    self.out.push_back(Output::LoadHeld(HeldRequest {
                        session: id,
                        load,
                        user,
                        after,
                        upto,
                        max,
                    }));
                    // Input::HeldLoaded goes on from here.
                    return;
                }
                Some(Paged::Message { .. } | Paged::Reply(_)) => match active.paging.pop_front() {
                    Some(Paged::Message { message, stored }) => {
                        messages += 1;
                        self.deliver(id, message, stored);
                    }
                    Some(Paged::Reply(line)) => self.send(id, line),
                    _ => {}
                },
            }
        }
        if never_confirms {
            self.trim_unconfirmed(id);
        }
        if paged.is_none() || messages == 0 || !self.is_paging(id) {
            return;
        }
        self.probe(id);
        if let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) {
            active.page_in_flight = true;
        }
        self.out.push_back(Output::NotifyWritten { session: id });
    }

    /// The store answered a [`Output::LoadHeld`]: the page goes in front of
    /// the rest of the block, and the block goes on. An answer the core no
    /// longer waits for is ignored. Entries outside the range asked for, or
    /// past its count, are dropped; a short answer ends the block's read
    /// from the store (the range is exhausted), so a store that holds fewer
    /// entries than the summary said cannot stall the session.
    pub(super) fn on_held_loaded(
        &mut self,
        id: SessionId,
        load: LoadId,
        messages: Vec<Arc<Message>>,
    ) {
        let Some(active) = self.sessions.get_mut(&id).and_then(|s| s.active_mut()) else {
            return;
        };
        let Some((_, max)) = active.loading.filter(|(l, _)| *l == load) else {
            return;
        };
        active.loading = None;
        let Some(Paged::Stored { after, upto, count }) = active.paging.pop_front() else {
            debug_assert!(false, "{id}: a page loaded for a block that reads no store");
            return;
        };
        let mut last = after;
        let mut page = Vec::with_capacity(messages.len().min(max));
        for message in messages {
            if page.len() == max || message.id <= last || message.id > upto {
                continue;
            }
            last = message.id;
            page.push(message);
        }
        let rest = count.saturating_sub(page.len());
        if page.len() == max && rest > 0 && last < upto {
            active.paging.push_front(Paged::Stored {
                after: last,
                upto,
                count: rest,
            });
        }
        for message in page.into_iter().rev() {
            active.paging.push_front(Paged::Message {
                message,
                stored: true,
            });
        }
        self.next_page(id);
        self.run_backlog(id);
        self.arm(id);
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
        let confirmed = active
            .unconfirmed
            .iter()
            .take_while(|u| u.after_probe < seq)
            .count();
        let released = stored_upto(active.unconfirmed.drain(..confirmed));
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
        let released = stored_upto(active.unconfirmed.drain(..));
        self.release(&user, released);
    }

    /// Puts unconfirmed deliveries back at the front of the user's box, in
    /// their order, for redelivery at the next login, with the rest of a
    /// block not sent yet. Returns how many.
    ///
    /// Everything in the box was accepted after these were delivered (a box
    /// only fills while its owner is offline or busy, and is emptied when
    /// they come back), so the box stays in id order. The box may pass
    /// `max_held_per_user` here: a delivered message is never dropped.
    pub(super) fn requeue(
        &mut self,
        user: &str,
        unconfirmed: VecDeque<Unconfirmed>,
        paging: VecDeque<Paged>,
    ) -> usize {
        let mut back = BoxSummary::default();
        let mut unstored = Vec::new();
        for u in unconfirmed {
            back.add(1, u.message.id);
            if !u.stored {
                unstored.push(u.message);
            }
        }
        // Messages of a block not sent yet come after those sent.
        for p in paging {
            match p {
                Paged::Message { message, stored } => {
                    back.add(1, message.id);
                    if !stored {
                        unstored.push(message);
                    }
                }
                Paged::Stored { upto, count, .. } if count > 0 => back.add(count, upto),
                Paged::Stored { .. } | Paged::Reply(_) => {}
            }
        }
        for message in unstored {
            self.persist(StoreOp::Hold {
                user: user.to_string(),
                message,
            });
        }
        if back.count > 0 {
            self.boxes
                .entry(user.to_string())
                .or_default()
                .add(back.count, back.last);
        }
        back.count
    }

    /// Whether the session is logged in and busy.
    pub(super) fn is_busy(&self, id: SessionId) -> bool {
        matches!(self.sessions.get(&id).map(|s| &s.phase), Some(Phase::Active(a)) if a.busy)
    }
}

/// The largest id among `confirmed` deliveries that are in the store: what
/// confirming them releases. `None` if none is stored.
fn stored_upto(confirmed: impl Iterator<Item = Unconfirmed>) -> Option<MessageId> {
    confirmed.filter(|u| u.stored).map(|u| u.message.id).max()
}
