//! A check that a store keeps the [store contract](crate::persist#the-store-contract):
//! random batches of [`StoreOp`]s are committed to the store and to
//! [`StoreModel`], and after every commit and every reopen the store must
//! give back what the model does: [`StoreModel::held_page`] for every page
//! of every box, walked a page at a time as the core reads it, and for
//! random windows (`after < id <= upto`, at most `max`), then
//! [`StoreModel::restored`] from its load. The pages are read before the
//! load, as a running server reads them long after its one load: a store
//! that puts work off until a load (a journal not yet moved into its
//! database) must read right before it too.
//!
//! The ops are drawn to reach the corners a store gets wrong: range
//! releases that cover several entries and ids that were never held, one
//! message held for several users behind one `Arc` (a broadcast) and
//! released by some of them, held again after a release (a redelivery),
//! out-of-order holds, counters and last-seen times that must never go
//! back, and failed-login records replaced and cleared per (user, address)
//! pair. Those draw ids from a small range, so most holds reuse an id;
//! [`run`] also checks traffic shaped like the core's ([`arb_traffic`]),
//! where each message has a new, larger id, which is what a store's fast
//! path for new messages sees.
//!
//! Implement [`CheckedStore`] for your store (or a small wrapper around it)
//! and call [`run`] from a test:
//!
//! ```
//! use std::collections::{BTreeMap, HashMap};
//! use std::convert::Infallible;
//! use std::sync::Arc;
//!
//! use chatcore::testing::store_check::{self, CheckedStore};
//! use chatcore::{BoxSummary, LoginFailures, Message, MessageId, Restored, StoreOp};
//!
//! /// An embedder's in-memory store: boxes keyed by id, the rest as the
//! /// core hands it over.
//! #[derive(Default)]
//! struct MyStore {
//!     boxes: HashMap<String, BTreeMap<MessageId, Arc<Message>>>,
//!     restored: Restored,
//! }
//!
//! impl CheckedStore for MyStore {
//!     type Error = Infallible;
//!
//!     fn apply(&mut self, ops: &[StoreOp]) -> Result<(), Infallible> {
//!         for op in ops {
//!             let state = &mut self.restored;
//!             match op {
//!                 StoreOp::Hold { user, message } => {
//!                     let boxed = self.boxes.entry(user.clone()).or_default();
//!                     boxed.entry(message.id).or_insert_with(|| Arc::clone(message));
//!                 }
//!                 StoreOp::Release { user, upto } => {
//!                     if let Some(boxed) = self.boxes.get_mut(user) {
//!                         // Everything at or below `upto`, not just `upto`.
//!                         boxed.retain(|id, _| id > upto);
//!                         if boxed.is_empty() {
//!                             self.boxes.remove(user);
//!                         }
//!                     }
//!                 }
//!                 StoreOp::ReserveIds { next } => state.next_id = state.next_id.max(*next),
//!                 StoreOp::Seen { user, at } => {
//!                     let seen = state.last_seen.entry(user.clone()).or_default();
//!                     *seen = (*seen).max(*at);
//!                 }
//!                 StoreOp::LoginFailures(f) => {
//!                     state.login_failures.retain(|r| (&r.user, r.ip) != (&f.user, f.ip));
//!                     state.login_failures.push(f.clone());
//!                 }
//!                 StoreOp::ClearLoginFailures { user, ip } => {
//!                     state.login_failures.retain(|r| (&r.user, &r.ip) != (user, ip));
//!                 }
//!             }
//!         }
//!         Ok(())
//!     }
//!
//!     fn load(&mut self) -> Result<Restored, Infallible> {
//!         let mut restored = self.restored.clone();
//!         for (user, boxed) in &self.boxes {
//!             let last = *boxed.keys().next_back().unwrap();
//!             restored.held.insert(user.clone(), BoxSummary { count: boxed.len(), last });
//!         }
//!         Ok(restored)
//!     }
//!
//!     fn held_page(
//!         &mut self,
//!         user: &str,
//!         after: MessageId,
//!         upto: MessageId,
//!         max: usize,
//!     ) -> Result<Vec<Arc<Message>>, Infallible> {
//!         let Some(boxed) = self.boxes.get(user) else { return Ok(Vec::new()) };
//!         if after >= upto {
//!             return Ok(Vec::new());
//!         }
//!         Ok(boxed.range(after + 1..=upto).take(max).map(|(_, m)| Arc::clone(m)).collect())
//!     }
//!
//!     // No `reopen`: this store lives as long as the process, so a restart
//!     // has nothing to read back. A durable store drops its handle and
//!     // opens its files again.
//! }
//!
//! store_check::run(32, MyStore::default);
//! ```
//!
//! Those with their own proptest runner draw a [`Case`] from [`arb_case`]
//! and call [`check`] (or [`check_from`], for a store that already holds
//! state, such as one just migrated from an older layout); a [`Mismatch`]
//! converts into a failed test case with `?`.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::message::{Message, MessageId, MessageKind};
use crate::persist::{LoginFailures, Restored, StoreModel, StoreOp};
use crate::time::Time;

/// A store under check: the three operations the core's driver needs, and
/// a restart.
pub trait CheckedStore: Sized {
    /// What the store fails with; a failure fails the check.
    type Error: fmt::Debug;

    /// Commits `ops`, in order, all or none.
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), Self::Error>;

    /// Reads back the durable state, each box as a summary (what the
    /// driver passes to [`Server::restore`](crate::Server::restore)).
    fn load(&mut self) -> Result<Restored, Self::Error>;

    /// The entries of `user`'s box with `after < id <= upto`, oldest first,
    /// at most `max`: the answer to a [`Output::LoadHeld`](crate::Output::LoadHeld).
    fn held_page(
        &mut self,
        user: &str,
        after: MessageId,
        upto: MessageId,
        max: usize,
    ) -> Result<Vec<Arc<Message>>, Self::Error>;

    /// The store as a restarted process finds it: close it (dropping every
    /// cache and handle) and open the same data again. The default keeps
    /// the store as it is, for stores that live only as long as the
    /// process.
    fn reopen(self) -> Result<Self, Self::Error> {
        Ok(self)
    }
}

/// Which bodies the ops give one message id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bodies {
    /// One body per id, as the core emits (an id names one message for
    /// the life of the store), so a store may keep one body per id. Holds
    /// of one id still come both behind one `Arc` (a broadcast) and behind
    /// equal copies (a message held again after a restart read it back).
    OnePerId,
    /// Any body for any hold, which the core never emits but
    /// [`StoreModel`] defines: each box keeps the body it was given. For
    /// stores that promise more than the contract asks.
    Any,
}

/// One run of the check: the batches to commit and what to read after
/// each.
#[derive(Clone, Debug)]
pub struct Case {
    /// Committed one [`CheckedStore::apply`] each, then the store is
    /// reopened.
    pub before: Vec<Vec<StoreOp>>,
    /// Committed after that reopen; the store is reopened once more at the
    /// end.
    pub after: Vec<Vec<StoreOp>>,
    /// The page size every box is walked with.
    pub page: usize,
    /// Pages read directly after every commit and reopen.
    pub windows: Vec<Window>,
}

/// The arguments of one [`CheckedStore::held_page`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Whose box.
    pub user: String,
    /// Entries at or below this id are not wanted.
    pub after: MessageId,
    /// Entries above this id are not wanted.
    pub upto: MessageId,
    /// The most entries to give.
    pub max: usize,
}

/// When a difference was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Before any commit.
    Start,
    /// After the commit of this many batches (`Commit(1)` is the first).
    Commit(usize),
    /// After the store's reopen number this (from 1).
    Reopen(usize),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Start => write!(f, "before the first commit"),
            Step::Commit(n) => write!(f, "after commit {n}"),
            Step::Reopen(n) => write!(f, "after reopen {n}"),
        }
    }
}

/// How a store differs from [`StoreModel`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// The store returned an error.
    #[error("{step}: the store failed: {error}")]
    Failed {
        /// When.
        step: Step,
        /// The error, as its `Debug` shows it.
        error: String,
    },
    /// [`CheckedStore::load`] differs from [`StoreModel::restored`]
    /// (both shown with failed-login records sorted by user and address,
    /// and without summaries of empty boxes: the core ignores both).
    #[error("{step}: load gave\n{got:#?}\nbut StoreModel::restored gives\n{want:#?}")]
    Load {
        /// When.
        step: Step,
        /// What the store gave.
        got: Box<Restored>,
        /// What the model gives.
        want: Box<Restored>,
    },
    /// [`CheckedStore::held_page`] differs from [`StoreModel::held_page`].
    #[error(
        "{step}: held_page({:?}, after {}, upto {}, max {}) gave\n{got:#?}\n\
         but StoreModel::held_page gives\n{want:#?}",
        window.user, window.after, window.upto, window.max
    )]
    Page {
        /// When.
        step: Step,
        /// The call.
        window: Window,
        /// What the store gave.
        got: Vec<Arc<Message>>,
        /// What the model gives.
        want: Vec<Arc<Message>>,
    },
}

/// Checks a new store on `cases` random [`Case`]s, each on a store from
/// `new_store` (which must start empty), with one body per id as the core
/// emits ([`Bodies::OnePerId`]), then on `cases` more shaped like the
/// core's traffic ([`arb_traffic_case`]).
///
/// # Panics
///
/// On the first difference from [`StoreModel`], with the smallest case
/// proptest shrank it to, like a failed `proptest!` test.
pub fn run<S: CheckedStore>(cases: u32, new_store: impl Fn() -> S) {
    let config = Config {
        cases,
        // A library has no source file to keep failures next to; the panic
        // message shows the minimal case.
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config.clone());
    let result = runner.run(&arb_case(Bodies::OnePerId), |case| {
        check(new_store(), &case)?;
        Ok(())
    });
    if let Err(e) = result {
        panic!("store check: {e}");
    }
    let mut runner = TestRunner::new(config);
    let result = runner.run(&arb_traffic_case(), |case| {
        check(new_store(), &case)?;
        Ok(())
    });
    if let Err(e) = result {
        panic!("store check (traffic): {e}");
    }
}

/// Runs `case` on an empty `store`: see [`check_from`].
pub fn check<S: CheckedStore>(store: S, case: &Case) -> Result<S, Mismatch> {
    check_from(store, StoreModel::default(), case)
}

/// Runs `case` on a `store` that holds what `model` does: compares them,
/// commits `case.before` (comparing after each commit), reopens and
/// compares, commits `case.after` likewise, and reopens and compares once
/// more. Gives the store back for checks of its own.
pub fn check_from<S: CheckedStore>(
    mut store: S,
    mut model: StoreModel,
    case: &Case,
) -> Result<S, Mismatch> {
    compare(&mut store, &model, case, Step::Start)?;
    let mut commits = 0;
    for (reopens, batches) in [&case.before, &case.after].into_iter().enumerate() {
        for batch in batches {
            commits += 1;
            let step = Step::Commit(commits);
            store.apply(batch).map_err(failed(step))?;
            for op in batch {
                model.apply(op);
            }
            compare(&mut store, &model, case, step)?;
        }
        let step = Step::Reopen(reopens + 1);
        store = store.reopen().map_err(failed(step))?;
        compare(&mut store, &model, case, step)?;
    }
    Ok(store)
}

fn failed<E: fmt::Debug>(step: Step) -> impl FnOnce(E) -> Mismatch {
    move |e| Mismatch::Failed {
        step,
        error: format!("{e:?}"),
    }
}

/// The store against the model: every box walked in pages of `case.page`
/// from the summary as the core reads it, every window, and the load.
/// The reads come first: a store may do work it put off when it loads (a
/// journal moved into its database), and a running server reads pages
/// long after its one load.
fn compare<S: CheckedStore>(
    store: &mut S,
    model: &StoreModel,
    case: &Case,
    step: Step,
) -> Result<(), Mismatch> {
    let want = comparable(model.restored());
    let page = case.page.max(1);
    for (user, summary) in &want.held {
        let mut after = 0;
        loop {
            let window = Window {
                user: user.clone(),
                after,
                upto: summary.last,
                max: page,
            };
            let got = read(store, model, window, step)?;
            // Equal to the model's page, so `after` moves on.
            match got.last() {
                Some(last) if got.len() == page => after = last.id,
                _ => break,
            }
        }
    }
    for window in &case.windows {
        read(store, model, window.clone(), step)?;
    }
    let got = comparable(store.load().map_err(failed(step))?);
    if got != want {
        return Err(Mismatch::Load {
            step,
            got: Box::new(got),
            want: Box::new(want),
        });
    }
    Ok(())
}

/// `restored` without what the core ignores: the order of failed-login
/// records (it keys them by user and address) and summaries of empty
/// boxes.
fn comparable(mut restored: Restored) -> Restored {
    restored.held.retain(|_, summary| summary.count > 0);
    restored
        .login_failures
        .sort_by(|a, b| (&a.user, a.ip).cmp(&(&b.user, b.ip)));
    restored
}

fn read<S: CheckedStore>(
    store: &mut S,
    model: &StoreModel,
    window: Window,
    step: Step,
) -> Result<Vec<Arc<Message>>, Mismatch> {
    let got = store
        .held_page(&window.user, window.after, window.upto, window.max)
        .map_err(failed(step))?;
    let want = model.held_page(&window.user, window.after, window.upto, window.max);
    if got != want {
        return Err(Mismatch::Page {
            step,
            window,
            got,
            want,
        });
    }
    Ok(got)
}

/// Ids and times the check draws stay below 2^63, so a store may keep them
/// as signed 64-bit integers (SQL's `INTEGER`); the core's ids count up
/// from 1 and its times are wall-clock milliseconds. The one exception is
/// a block's end, which saturates at `u64::MAX` when the block time is
/// huge ("forever"), and is drawn so.
pub const BELOW: u64 = i64::MAX as u64;

/// The largest message id drawn: few enough that holds, releases and
/// windows meet.
pub const MAX_ID: MessageId = 20;

/// A user: a handful of names, so that ops meet on the same boxes.
pub fn arb_user() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["alice", "bob", "carol", "dave", "erin", "x.y-z_1"])
        .prop_map(String::from)
}

/// A client address, IPv4 or IPv6: mostly one of a few, so that records
/// of one (user, address) pair are replaced and cleared, sometimes any.
pub fn arb_ip() -> impl Strategy<Value = IpAddr> {
    let few: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from([10, 0, 0, 7]),
        IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
        IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 7]),
    ];
    prop_oneof![
        4 => prop::sample::select(few),
        1 => any::<[u8; 4]>().prop_map(IpAddr::from),
        1 => any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

/// A time below [`BELOW`].
pub fn arb_time() -> impl Strategy<Value = Time> {
    (0..BELOW).prop_map(Time::from_unix_millis)
}

/// A message with an id from 1 (the core's first id; a page is asked for
/// above an id) to [`MAX_ID`], and text with tabs and non-ASCII.
pub fn arb_message() -> impl Strategy<Value = Arc<Message>> {
    (
        1..=MAX_ID,
        arb_time(),
        arb_user(),
        any::<bool>(),
        "[ -~\té✓]{0,40}",
    )
        .prop_map(|(id, at, from, bcast, text)| {
            Arc::new(Message {
                id,
                at,
                from,
                kind: if bcast {
                    MessageKind::Broadcast
                } else {
                    MessageKind::Private
                },
                text,
            })
        })
}

/// One op of any kind. Releases go up to two past [`MAX_ID`] and from 0,
/// so some cover nothing and some everything.
pub fn arb_op() -> impl Strategy<Value = StoreOp> {
    let block_end = prop_oneof![
        3 => arb_time(),
        1 => Just(Time::from_unix_millis(u64::MAX)),
    ];
    prop_oneof![
        4 => (arb_user(), arb_message()).prop_map(|(user, message)| StoreOp::Hold { user, message }),
        2 => (arb_user(), 0..MAX_ID + 2).prop_map(|(user, upto)| StoreOp::Release { user, upto }),
        1 => (0..BELOW).prop_map(|next| StoreOp::ReserveIds { next }),
        1 => (arb_user(), arb_time()).prop_map(|(user, at)| StoreOp::Seen { user, at }),
        2 => (arb_user(), arb_ip(), any::<u32>(), arb_time(), prop::option::of(block_end)).prop_map(
            |(user, ip, count, last, blocked_until)| StoreOp::LoginFailures(LoginFailures {
                user,
                ip,
                count,
                last,
                blocked_until,
            })
        ),
        1 => (arb_user(), arb_ip()).prop_map(|(user, ip)| StoreOp::ClearLoginFailures { user, ip }),
    ]
}

/// A few ops that belong together: one op; a broadcast (one message held
/// for several users, sharing one `Arc` as the core does, then some of
/// them releasing it, maybe with other ops between, and maybe held again,
/// as a redelivery does); several users releasing one id (a broadcast of
/// an earlier batch, usually); a user seen twice and ids reserved twice;
/// or one (user, address) pair failing to log in a few times, then maybe
/// succeeding.
pub fn arb_group() -> impl Strategy<Value = Vec<StoreOp>> {
    let broadcast = (
        arb_message(),
        prop::collection::vec((arb_user(), any::<bool>()), 1..7),
        prop::collection::vec(arb_op(), 0..3),
        prop::collection::vec(arb_user(), 0..3),
    )
        .prop_map(|(message, users, between, again)| {
            let mut ops: Vec<StoreOp> = users
                .iter()
                .map(|(user, _)| StoreOp::Hold {
                    user: user.clone(),
                    message: Arc::clone(&message),
                })
                .collect();
            ops.extend(between);
            ops.extend(
                users
                    .into_iter()
                    .filter(|(_, release)| *release)
                    .map(|(user, _)| StoreOp::Release {
                        user,
                        upto: message.id,
                    }),
            );
            ops.extend(again.into_iter().map(|user| StoreOp::Hold {
                user,
                message: Arc::clone(&message),
            }));
            ops
        });
    let releases = (0..MAX_ID, prop::collection::vec(arb_user(), 1..7)).prop_map(|(id, users)| {
        users
            .into_iter()
            .map(|user| StoreOp::Release { user, upto: id })
            .collect()
    });
    // Two times a user was seen and two id reservations, each pair in
    // either order: the later time and the larger id must stay.
    let forward =
        (arb_user(), arb_time(), arb_time(), 0..BELOW, 0..BELOW).prop_map(|(user, a, b, m, n)| {
            vec![
                StoreOp::Seen {
                    user: user.clone(),
                    at: a,
                },
                StoreOp::ReserveIds { next: m },
                StoreOp::Seen { user, at: b },
                StoreOp::ReserveIds { next: n },
            ]
        });
    // One pair failing again and again, maybe logging in at last: its
    // record is replaced each time, then cleared.
    let failing = (arb_user(), arb_ip(), 0..BELOW - 4, 1..4u32, any::<bool>()).prop_map(
        |(user, ip, last, times, login)| {
            let mut ops: Vec<StoreOp> = (1..=times)
                .map(|count| {
                    StoreOp::LoginFailures(LoginFailures {
                        user: user.clone(),
                        ip,
                        count,
                        last: Time::from_unix_millis(last + u64::from(count)),
                        blocked_until: None,
                    })
                })
                .collect();
            if login {
                ops.push(StoreOp::ClearLoginFailures { user, ip });
            }
            ops
        },
    );
    prop_oneof![
        4 => arb_op().prop_map(|op| vec![op]),
        3 => broadcast,
        2 => releases,
        1 => forward,
        1 => failing,
    ]
}

/// Ops grouped into batches (one `apply` each), with one body per id.
pub fn arb_batches() -> impl Strategy<Value = Vec<Vec<StoreOp>>> {
    arb_batches_with(Bodies::OnePerId)
}

/// Ops grouped into batches (one `apply` each), with `bodies`.
pub fn arb_batches_with(bodies: Bodies) -> impl Strategy<Value = Vec<Vec<StoreOp>>> {
    raw_batches().prop_map(move |mut batches| {
        if bodies == Bodies::OnePerId {
            one_body_per_id(&mut batches);
        }
        batches
    })
}

fn raw_batches() -> impl Strategy<Value = Vec<Vec<StoreOp>>> {
    prop::collection::vec(
        prop::collection::vec(arb_group(), 0..6).prop_map(|groups| groups.concat()),
        0..6,
    )
}

/// Gives every hold of an id the body of its first hold: the same `Arc`
/// where it already was, an equal copy elsewhere.
fn one_body_per_id<'a>(batches: impl IntoIterator<Item = &'a mut Vec<StoreOp>>) {
    let mut first: HashMap<MessageId, Arc<Message>> = HashMap::new();
    for op in batches.into_iter().flatten() {
        if let StoreOp::Hold { message, .. } = op {
            let body = first
                .entry(message.id)
                .or_insert_with(|| Arc::clone(message));
            if !Arc::ptr_eq(body, message) && body != message {
                *message = Arc::new(Message::clone(body));
            }
        }
    }
}

/// A window: any user, `after` and `upto` around the ids drawn (so some
/// are empty or reversed), at most 0 to 4 entries.
pub fn arb_window() -> impl Strategy<Value = Window> {
    (arb_user(), 0..MAX_ID + 2, 0..MAX_ID + 2, 0..5usize).prop_map(|(user, after, upto, max)| {
        Window {
            user,
            after,
            upto,
            max,
        }
    })
}

/// A whole case with `bodies`: batches before and after a reopen, a page
/// size from 1 to 4 and four windows.
pub fn arb_case(bodies: Bodies) -> impl Strategy<Value = Case> {
    (
        raw_batches(),
        raw_batches(),
        1..5usize,
        prop::collection::vec(arb_window(), 4),
    )
        .prop_map(move |(mut before, mut after, page, windows)| {
            if bodies == Bodies::OnePerId {
                one_body_per_id(before.iter_mut().chain(after.iter_mut()));
            }
            Case {
                before,
                after,
                page,
                windows,
            }
        })
}

/// What a store sees when the core runs, in batches: each message has
/// the next id and is held for one user (a private message) or for
/// several in a row behind one `Arc` (a broadcast); boxes are confirmed
/// up to an id already held; now and then an old message is held again
/// (a redelivery after a restart: an equal copy of its body). Four users.
pub fn arb_traffic() -> impl Strategy<Value = Vec<Vec<StoreOp>>> {
    let event = (0..8u8, 0..4usize, 1..4usize, any::<prop::sample::Index>());
    prop::collection::vec(prop::collection::vec(event, 1..7), 1..16).prop_map(|batches| {
        let users = ["ann", "bo", "cy", "di"];
        let mut next: MessageId = 1;
        let mut sent: Vec<Arc<Message>> = Vec::new();
        let mut fresh = |kind| {
            let m = Arc::new(Message {
                id: next,
                at: Time::from_unix_millis(1_000 + next),
                from: "zed".into(),
                kind,
                text: format!("text {next}"),
            });
            next += 1;
            m
        };
        let mut out = Vec::new();
        for batch in batches {
            let mut ops = Vec::new();
            for (kind, who, many, pick) in batch {
                let user = users[who].to_string();
                match kind {
                    0..=3 => {
                        let m = fresh(MessageKind::Private);
                        sent.push(Arc::clone(&m));
                        ops.push(StoreOp::Hold { user, message: m });
                    }
                    4 => {
                        let m = fresh(MessageKind::Broadcast);
                        sent.push(Arc::clone(&m));
                        for u in users.iter().cycle().skip(who).take(many + 1) {
                            ops.push(StoreOp::Hold {
                                user: u.to_string(),
                                message: Arc::clone(&m),
                            });
                        }
                    }
                    5 | 6 if !sent.is_empty() => {
                        let upto = sent[pick.index(sent.len())].id;
                        ops.push(StoreOp::Release { user, upto });
                    }
                    7 if !sent.is_empty() => {
                        let old = &sent[pick.index(sent.len())];
                        ops.push(StoreOp::Hold {
                            user,
                            message: Arc::new(Message::clone(old)),
                        });
                    }
                    _ => {}
                }
            }
            out.push(ops);
        }
        out
    })
}

/// A [`Case`] of [`arb_traffic`], cut in two by the reopen at a random
/// batch, with windows over the first ids.
pub fn arb_traffic_case() -> impl Strategy<Value = Case> {
    (
        arb_traffic(),
        any::<prop::sample::Index>(),
        1..5usize,
        prop::collection::vec(arb_window(), 4),
    )
        .prop_map(|(mut before, cut, page, windows)| {
            let after = before.split_off(cut.index(before.len() + 1));
            let windows = windows
                .into_iter()
                .enumerate()
                .map(|(i, w)| Window {
                    user: ["ann", "bo", "cy", "di"][i].to_string(),
                    ..w
                })
                .collect();
            Case {
                before,
                after,
                page,
                windows,
            }
        })
}

/// The reference passes its own check; a test double for drivers.
impl CheckedStore for StoreModel {
    type Error = std::convert::Infallible;

    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), Self::Error> {
        for op in ops {
            StoreModel::apply(self, op);
        }
        Ok(())
    }

    fn load(&mut self) -> Result<Restored, Self::Error> {
        Ok(self.restored())
    }

    fn held_page(
        &mut self,
        user: &str,
        after: MessageId,
        upto: MessageId,
        max: usize,
    ) -> Result<Vec<Arc<Message>>, Self::Error> {
        Ok(StoreModel::held_page(self, user, after, upto, max))
    }
}
