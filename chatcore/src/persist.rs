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
pub enum StoreOp {
    /// Append a message to `user`'s box. A box is read back in id order.
    Hold {
        /// The recipient.
        user: String,
        /// The message.
        message: Arc<Message>,
    },
    /// Remove a confirmed message from `user`'s box.
    Release {
        /// The recipient.
        user: String,
        /// The message's id.
        id: MessageId,
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

/// Durable state read back at startup: what every [`StoreOp`] so far adds up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// The first id not yet reserved.
    pub next_id: MessageId,
    /// Each user's box, oldest first.
    pub held: BTreeMap<String, Vec<Arc<Message>>>,
    /// When each user was last known to be logged in.
    pub last_seen: BTreeMap<String, Time>,
    /// Failed-login records.
    pub login_failures: Vec<LoginFailures>,
}

impl Restored {
    /// Applies one change, as a store would. Useful for in-memory stores and
    /// for tests that restart a core from what it persisted.
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
            StoreOp::Release { user, id } => {
                if let Some(boxed) = self.held.get_mut(user) {
                    boxed.retain(|m| m.id != *id);
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
}
