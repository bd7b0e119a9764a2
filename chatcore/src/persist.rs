//! What must outlive the process, as changes the core asks the driver to
//! make durable, and the state a driver gives back at startup.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::message::{Message, MessageId};
use crate::time::Time;

/// One change to durable state, emitted as [`crate::Output::Persist`].
///
/// The driver applies changes in the order given. Ordering rule: a line
/// after an [`crate::Output::Barrier`] must not reach the network before
/// every change emitted before the barrier is durable (so `OK message bob
/// queued offline` is only seen once the message is committed); other lines
/// need not wait. Drivers meet it simply by committing every change
/// gathered from one round of inputs in one transaction (group commit)
/// before writing that round's lines, or faster by committing in the
/// background and holding back only the lines behind a barrier.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum StoreOp {
    /// Append a message to `user`'s box. A box is read back in id order.
    Hold {
        /// The recipient.
        user: String,
        /// The message.
        message: Arc<Message>,
    },
    /// Remove every entry of `user`'s box with an id at or below `upto`:
    /// what the user confirmed.
    ///
    /// A range, not one id, because a box is delivered in id order and
    /// confirmed a prefix at a time (PROTOCOL.md §5): one confirmation is
    /// one change per user, however many messages it covers. The core
    /// never names an id above an entry that is still owed.
    Release {
        /// The recipient.
        user: String,
        /// The largest id confirmed.
        upto: MessageId,
    },
    /// Ids below `next` may have been used: never hand them out again.
    /// Emitted in blocks, ahead of use, not once per message.
    ReserveIds {
        /// The first id not yet reserved.
        next: MessageId,
    },
    /// `user` was logged in at `at` (emitted at login and when they leave).
    Seen {
        /// The user.
        user: String,
        /// The moment.
        at: Time,
    },
    /// The failed-login record of a (user name, address) pair changed.
    LoginFailures(LoginFailures),
    /// A (user name, address) pair logged in: its failures are forgotten.
    ClearLoginFailures {
        /// The user name as typed.
        user: String,
        /// The client's address.
        ip: IpAddr,
    },
}

/// Consecutive bad credentials for one (user name, address) pair.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LoginFailures {
    /// The user name as typed (unknown names are tracked alike, so a block
    /// does not reveal which names exist).
    pub user: String,
    /// The client's address.
    pub ip: IpAddr,
    /// Consecutive bad credentials since the last success or block.
    pub count: u32,
    /// When the last one happened.
    pub last: Time,
    /// When the block ends, if the pair is blocked.
    pub blocked_until: Option<Time>,
}

/// What the core keeps of one user's box in memory: the bodies stay in the
/// store and are read a page at a time when the box is delivered
/// ([`crate::Output::LoadHeld`]), so memory does not grow with held
/// messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BoxSummary {
    /// How many entries the box holds.
    pub count: usize,
    /// The largest id among them.
    pub last: MessageId,
}

impl BoxSummary {
    /// The summary after one more entry, `id`.
    pub(crate) fn add(&mut self, count: usize, last: MessageId) {
        self.count += count;
        self.last = self.last.max(last);
    }
}

/// Durable state read back at startup: what every [`StoreOp`] so far adds
/// up to, with each box as a summary. A store gives the bodies of held
/// messages on request, a page at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Restored {
    /// The first id not yet reserved.
    pub next_id: MessageId,
    /// Each non-empty box, summed up.
    pub held: BTreeMap<String, BoxSummary>,
    /// When each user was last known to be logged in.
    pub last_seen: BTreeMap<String, Time>,
    /// Failed-login records.
    pub login_failures: Vec<LoginFailures>,
}

/// The reference store: what every [`StoreOp`] adds up to, boxes in full.
///
/// It defines what a store must give back ([`StoreModel::restored`] at
/// startup, [`StoreModel::held_page`] for a page), so a real store is
/// tested against it; in-memory drivers and tests use it as their store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StoreModel {
    /// The first id not yet reserved.
    pub next_id: MessageId,
    /// Each non-empty box, oldest first.
    pub held: BTreeMap<String, Vec<Arc<Message>>>,
    /// When each user was last known to be logged in.
    pub last_seen: BTreeMap<String, Time>,
    /// Failed-login records, in update order.
    pub login_failures: Vec<LoginFailures>,
}

impl StoreModel {
    /// Applies one change, as a store must.
    pub fn apply(&mut self, op: &StoreOp) {
        match op {
            StoreOp::Hold { user, message } => {
                let boxed = self.held.entry(user.clone()).or_default();
                // Keep id order even if a redelivered message is held again.
                let at = boxed.partition_point(|m| m.id < message.id);
                if boxed.get(at).map(|m| m.id) != Some(message.id) {
                    boxed.insert(at, Arc::clone(message));
                }
            }
            StoreOp::Release { user, upto } => {
                if let Some(boxed) = self.held.get_mut(user) {
                    let n = boxed.partition_point(|m| m.id <= *upto);
                    boxed.drain(..n);
                    if boxed.is_empty() {
                        self.held.remove(user);
                    }
                }
            }
            StoreOp::ReserveIds { next } => self.next_id = self.next_id.max(*next),
            StoreOp::Seen { user, at } => {
                let seen = self.last_seen.entry(user.clone()).or_default();
                *seen = (*seen).max(*at);
            }
            StoreOp::LoginFailures(f) => {
                self.login_failures
                    .retain(|r| !(r.user == f.user && r.ip == f.ip));
                self.login_failures.push(f.clone());
            }
            StoreOp::ClearLoginFailures { user, ip } => {
                self.login_failures
                    .retain(|r| !(&r.user == user && &r.ip == ip));
            }
        }
    }

    /// What a store gives back at startup.
    pub fn restored(&self) -> Restored {
        Restored {
            next_id: self.next_id,
            held: self
                .held
                .iter()
                .map(|(user, boxed)| {
                    let summary = BoxSummary {
                        count: boxed.len(),
                        last: boxed.last().map_or(0, |m| m.id),
                    };
                    (user.clone(), summary)
                })
                .collect(),
            last_seen: self.last_seen.clone(),
            login_failures: self.login_failures.clone(),
        }
    }

    /// The entries of `user`'s box with `after < id <= upto`, oldest first,
    /// at most `max`: the answer to a [`crate::Output::LoadHeld`].
    pub fn held_page(
        &self,
        user: &str,
        after: MessageId,
        upto: MessageId,
        max: usize,
    ) -> Vec<Arc<Message>> {
        let Some(boxed) = self.held.get(user) else {
            return Vec::new();
        };
        let from = boxed.partition_point(|m| m.id <= after);
        boxed[from..]
            .iter()
            .take_while(|m| m.id <= upto)
            .take(max)
            .cloned()
            .collect()
    }
}
