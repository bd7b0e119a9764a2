//! What must outlive the process, as changes the core asks the driver to
//! make durable, and the state a driver gives back at startup.
//!
//! # The store contract
//!
//! What any store an embedder puts behind the core must do, whatever its
//! engine (a file, SQLite, a database server). The driver hands the store
//! the [`StoreOp`]s of [`Output::Persist`] in batches (one commit each),
//! gives [`Server::restore`] what the store loads at startup, and answers
//! each [`Output::LoadHeld`] with a page read from it. [`StoreModel`] is
//! the reference: it defines what every op means.
//!
//! 1. **Same answers as the model.** After any sequence of committed
//!    batches, the store loads what [`StoreModel::restored`] gives, and a
//!    page of `user`'s box for `after`, `upto` and `max` is what
//!    [`StoreModel::held_page`] gives: the entries with
//!    `after < id <= upto`, oldest first, at most `max`. The core ignores
//!    the order of [`Restored::login_failures`] (it keys the records by
//!    user and address) and any [`BoxSummary`] whose count is 0, so a
//!    store may give the records in any order and may list an emptied box
//!    with a count of 0.
//! 2. **Durable before the lines that depend on it.** A line the core
//!    sends after an [`Output::Barrier`] (to its session; with `None`, a
//!    delivery to anyone) must not reach the network before every change
//!    emitted before the barrier is durable: committed so that it survives
//!    a crash of the process and of the machine. That is what makes
//!    `OK message bob queued offline` a promise, keeps a failed login
//!    counted across a crash, and keeps a message id from being handed
//!    out twice ([PROTOCOL.md §6](crate::protocol#6-heartbeat-and-liveness)). Lines not behind a barrier may go out
//!    before the changes before them are durable; committing each round's
//!    changes before writing its lines (group commit) meets the rule too.
//! 3. **Reads see every commit.** The answer to an [`Output::LoadHeld`]
//!    must reflect every change emitted before it: read it after
//!    committing those, from where they were written (a replica that lags
//!    its primary will not do). Whether it reflects later changes does
//!    not matter: the core changes nothing in the range while it waits.
//! 4. **All or none, in order.** A batch is applied all or none, its ops
//!    in the order given, and batches in the order emitted. After a crash
//!    the store holds a prefix of the batches, whole; a batch whose commit
//!    failed left no trace and may be applied again.
//! 5. **Ordered by id.** A box is read back in id order, not in the order
//!    of its holds: a message delivered and not confirmed when its session
//!    died is held again with its own id, and goes back ahead of the
//!    messages held since ([PROTOCOL.md §5](crate::protocol#5-held-messages-the-offline-box)).
//! 6. **Idempotent.** Holding an id already in the box keeps one entry (a
//!    message held again is the same message); a release that covers
//!    nothing does nothing; the id counter and last-seen times never move
//!    back; a failed-login record replaces the one of its (user, address)
//!    pair.
//! 7. **One body per id.** An id names one message for the life of the
//!    store: the core never holds one id with two different contents, so
//!    a store may keep each body once and let every box that holds it
//!    point at it (a broadcast is held once per recipient, behind one
//!    `Arc`), dropping it when the last box releases it.
//! 8. **Startup does not grow with held messages.** Loading reads a
//!    summary per box (count and last id), not the messages, and a page
//!    costs about its size, not its box's (an index on user and id). The
//!    core keeps only the summaries in memory, and asks for bodies a page
//!    at a time.
//! 9. **One writer.** Two servers on the same data would hand out the same
//!    ids: a store must refuse a second writer (chatd's SQLite store holds
//!    an exclusive lock).
//!
//! Ids and times are `u64`. The core's ids count up from 1 and its times
//! are wall-clock milliseconds, far below 2^63, so a store may keep them as
//! signed 64-bit integers; the one exception is the end of a block
//! ([`LoginFailures::blocked_until`]), which is `u64::MAX` when the
//! configured block time is too long to add: keep it bit for bit.
//!
//! ## What checks it
//!
//! `testing::store_check` (feature `testing`) checks rules 1, 3, 5, 6 and
//! 7 against any store, and rules 2 and 4 as far as a restart shows them
//! (what a store gives back after being closed and opened again); with a
//! few lines, a store that passes it behaves as the core expects. Where
//! the barriers are, and which lines wait behind them, is the core's side
//! of rule 2, tested in `tests/rules_durability.rs`. What no such check
//! can see (a crash of the machine, a commit that fails half-way, a second
//! writer, what a load costs) depends on the engine: chatd's store tests
//! kill transactions, fill the disk, open a second server and inspect the
//! indexes of its SQLite store, which an engine of your own needs in its
//! own terms.
//!
//! # Serialized forms (feature `serde`)
//!
//! With the `serde` feature, [`StoreOp`], [`Restored`], [`BoxSummary`],
//! [`LoginFailures`], [`StoreModel`], [`Message`], [`MessageKind`],
//! [`Time`] and [`HeldRequest`] implement `Serialize` and `Deserialize`,
//! for a store that writes ops to a log, ships them to another process or
//! snapshots the model. These forms are part of the API, pinned by tests,
//! and change only with a new major version:
//!
//! - [`Time`] is a number: milliseconds since the Unix epoch.
//! - [`MessageKind`] is `"private"` or `"broadcast"`.
//! - Structs are objects of their fields, by their Rust names; an
//!   [`IpAddr`] is its text (`"10.0.0.7"`, `"::1"`) and an absent
//!   `blocked_until` is `null`.
//! - A [`StoreOp`] is an object with one key, the op's name in snake case:
//!   `{"release":{"user":"bob","upto":7}}`,
//!   `{"login_failures":{"user":...}}`. Externally tagged, so that formats
//!   without self-description (bincode, postcard) can read it back.
//! - The session and load ids of a [`HeldRequest`] are plain numbers.
//!
//! A deserialized message is a value of its own: holds that shared one
//! `Arc` before share none after a round trip, which the contract allows
//! (rule 7 is about contents, not sharing).
//!
//! [`Output::Persist`]: crate::Output::Persist
//! [`Output::Barrier`]: crate::Output::Barrier
//! [`Output::LoadHeld`]: crate::Output::LoadHeld
//! [`Server::restore`]: crate::Server::restore
//! [`HeldRequest`]: crate::HeldRequest
//! [`Message`]: crate::Message
//! [`MessageKind`]: crate::MessageKind
//! [`Time`]: crate::Time

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::message::{Message, MessageId};
use crate::time::Time;

/// One change to durable state, emitted as [`Output::Persist`](crate::Output::Persist).
///
/// The driver applies changes in the order given, and a line after an
/// [`Output::Barrier`](crate::Output::Barrier) must not reach the network before every
/// change emitted before the barrier is durable (so `OK message bob
/// queued offline` is only seen once the message is committed); other lines
/// need not wait. Drivers meet it simply by committing every change
/// gathered from one round of inputs in one transaction (group commit)
/// before writing that round's lines, or faster by committing in the
/// background and holding back only the lines behind a barrier. The whole
/// contract is in [the module docs](self#the-store-contract).
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
    /// confirmed a prefix at a time ([PROTOCOL.md §5](crate::protocol#5-held-messages-the-offline-box)): one confirmation is
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
/// ([`Output::LoadHeld`](crate::Output::LoadHeld)), so memory does not grow with held
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
    /// at most `max`: the answer to a [`Output::LoadHeld`](crate::Output::LoadHeld).
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
