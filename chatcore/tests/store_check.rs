//! `testing::store_check` bites: the reference passes it, and stores with
//! the mistakes a real store makes fail it, each with a small case.

use std::panic;
use std::sync::Arc;

use chatcore::testing::store_check::{self, CheckedStore};
use chatcore::{Message, MessageId, Restored, StoreModel, StoreOp};

/// Cases per run. `each_flaw_is_found_often` holds every flaw below to
/// being found by at least a quarter of single cases (a third to nine
/// tenths, measured), so a run of 64 misses one with a chance below
/// 0.75^64 = 1e-8: a pass here is no luck.
const CASES: u32 = 64;

#[test]
fn the_model_passes() {
    store_check::run(CASES, StoreModel::default);
}

/// One mistake a store could make, on top of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flaw {
    /// `Release` removes the entry with id `upto` only, not the range.
    ReleasesOnlyUpto,
    /// `load` leaves out the summary of a box with one entry.
    DropsOneEntrySummaries,
    /// Summaries are kept in memory only: after a restart there are none.
    SummariesLostOnReopen,
    /// A new failed-login record is added beside the pair's old one.
    FailuresNotReplaced,
    /// `held_page` ignores `upto`.
    PageIgnoresUpto,
    /// `Seen` overwrites instead of keeping the later time.
    SeenLastWriteWins,
    /// `ReserveIds` overwrites instead of keeping the larger id.
    IdsMoveBack,
    /// The last commit before a restart is lost.
    LastCommitNotDurable,
    /// A hold of an id already in the box adds a second entry.
    HoldsTwice,
}

const FLAWS: [Flaw; 9] = [
    Flaw::ReleasesOnlyUpto,
    Flaw::DropsOneEntrySummaries,
    Flaw::SummariesLostOnReopen,
    Flaw::FailuresNotReplaced,
    Flaw::PageIgnoresUpto,
    Flaw::SeenLastWriteWins,
    Flaw::IdsMoveBack,
    Flaw::LastCommitNotDurable,
    Flaw::HoldsTwice,
];

struct Flawed {
    flaw: Flaw,
    state: StoreModel,
    /// Whether summaries were lost to a reopen.
    reopened: bool,
    /// The state before the last commit.
    durable: StoreModel,
}

impl Flawed {
    fn new(flaw: Flaw) -> Self {
        Flawed {
            flaw,
            state: StoreModel::default(),
            reopened: false,
            durable: StoreModel::default(),
        }
    }

    fn apply_one(&mut self, op: &StoreOp) {
        match (self.flaw, op) {
            (Flaw::ReleasesOnlyUpto, StoreOp::Release { user, upto }) => {
                if let Some(boxed) = self.state.held.get_mut(user) {
                    boxed.retain(|m| m.id != *upto);
                    if boxed.is_empty() {
                        self.state.held.remove(user);
                    }
                }
            }
            (Flaw::SeenLastWriteWins, StoreOp::Seen { user, at }) => {
                self.state.last_seen.insert(user.clone(), *at);
            }
            (Flaw::HoldsTwice, StoreOp::Hold { user, message }) => {
                let boxed = self.state.held.entry(user.clone()).or_default();
                let at = boxed.partition_point(|m| m.id <= message.id);
                boxed.insert(at, Arc::clone(message));
            }
            (Flaw::IdsMoveBack, StoreOp::ReserveIds { next }) => self.state.next_id = *next,
            (Flaw::FailuresNotReplaced, StoreOp::LoginFailures(f)) => {
                self.state.login_failures.push(f.clone());
            }
            _ => self.state.apply(op),
        }
    }
}

impl CheckedStore for Flawed {
    type Error = std::convert::Infallible;

    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), Self::Error> {
        self.durable = self.state.clone();
        for op in ops {
            self.apply_one(op);
        }
        Ok(())
    }

    fn load(&mut self) -> Result<Restored, Self::Error> {
        let mut restored = self.state.restored();
        match self.flaw {
            Flaw::DropsOneEntrySummaries => restored.held.retain(|_, s| s.count != 1),
            Flaw::SummariesLostOnReopen if self.reopened => restored.held.clear(),
            _ => {}
        }
        Ok(restored)
    }

    fn held_page(
        &mut self,
        user: &str,
        after: MessageId,
        upto: MessageId,
        max: usize,
    ) -> Result<Vec<Arc<Message>>, Self::Error> {
        let upto = match self.flaw {
            Flaw::PageIgnoresUpto => MessageId::MAX,
            _ => upto,
        };
        Ok(self.state.held_page(user, after, upto, max))
    }

    fn reopen(mut self) -> Result<Self, Self::Error> {
        if self.flaw == Flaw::LastCommitNotDurable {
            self.state = self.durable.clone();
        }
        self.reopened = true;
        Ok(self)
    }
}

/// The message `run` panics with for a store with `flaw`, if it does.
fn failure(flaw: Flaw) -> Option<String> {
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let result = panic::catch_unwind(|| store_check::run(CASES, || Flawed::new(flaw)));
    panic::set_hook(hook);
    let payload = result.err()?;
    Some(
        payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "a panic without a message".into()),
    )
}

#[test]
fn every_flaw_fails_the_check() {
    for flaw in FLAWS {
        let message = failure(flaw).unwrap_or_else(|| panic!("{flaw:?} passed the check"));
        assert!(
            message.starts_with("store check: ") && message.contains("StoreModel::"),
            "{flaw:?} failed otherwise than by a mismatch: {message}"
        );
        println!("{flaw:?}: {message}\n");
    }
}

/// How often each flaw is found: the share of single cases that fail on
/// it, on a fixed seed so the number is the same on every run.
#[test]
fn each_flaw_is_found_often() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let strategy = store_check::arb_case(store_check::Bodies::OnePerId);
    let cases: Vec<_> = (0..200)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    for flaw in FLAWS {
        let found = cases
            .iter()
            .filter(|case| store_check::check(Flawed::new(flaw), case).is_err())
            .count();
        println!("{flaw:?}: {found} of {}", cases.len());
        assert!(
            found * 4 >= cases.len(),
            "{flaw:?} is found by {found} of {} cases only",
            cases.len()
        );
    }
}

/// What the check leaves out of its comparison, the core ignores: a
/// server restored with its failed-login records in another order, and
/// with a summary of an empty box, answers every line the same.
#[test]
fn the_core_ignores_what_the_check_leaves_out() {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use chatcore::testing::{accounts, Harness, START};
    use chatcore::{BoxSummary, Config, LoginFailures, Server};

    let users = [("alice", "pw"), ("carol", "pw")];
    let (home, away) = (
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
    );
    let record = |ip, count, blocked_until| LoginFailures {
        user: "alice".into(),
        ip,
        count,
        last: START,
        blocked_until,
    };
    let restored = Restored {
        next_id: 10,
        held: BTreeMap::new(),
        last_seen: BTreeMap::new(),
        login_failures: vec![
            record(away, 3, Some(START + Duration::from_secs(3600))),
            record(home, 2, None),
        ],
    };
    let mut reordered = restored.clone();
    reordered.login_failures.reverse();
    reordered
        .held
        .insert("carol".into(), BoxSummary { count: 0, last: 5 });

    let run = |restored: Restored| {
        let mut h = Harness::with_users(&users);
        h.server = Server::restore(START, Config::default(), accounts(&users), restored);
        let mut seen = Vec::new();
        // Blocked from `away`; one more failure blocks `home`.
        for (ip, password) in [(away, "pw"), (home, "wrong"), (home, "pw")] {
            let s = h.connect_from(ip);
            h.send(s, "alice");
            h.send(s, password);
            seen.extend(h.take_text(s));
        }
        // Carol has nothing held: no OFFLINE.
        let c = h.connect_logged_in("carol", "pw");
        h.send(c, "whoelse");
        seen.extend(h.take_text(c));
        seen
    };
    let lines = run(restored);
    assert!(lines.iter().any(|l| l.contains("blocked")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("OFFLINE")), "{lines:?}");
    assert_eq!(run(reordered), lines);
}
