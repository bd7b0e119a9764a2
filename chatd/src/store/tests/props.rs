//! The SQLite store (and the memory store) against `StoreModel`, by
//! chatcore's store check (`chatcore::testing::store_check`): the
//! summaries `load` gives, every page `held_page` gives, range releases,
//! broadcasts held behind one `Arc`, and reopening. The migrated layouts
//! go on like a new store.

use chatcore::testing::store_check::{self, Bodies, Case, CheckedStore};
use chatcore::MessageId;
use proptest::prelude::*;
use tempfile::TempDir;

use super::*;
use crate::store::{JournalLimits, JournaledStore, MemoryStore};

/// [`CheckedStore`]'s reads and commits, passed to the store in
/// `self.store`.
macro_rules! through_store {
    () => {
        fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
            Store::apply(&mut self.store, ops)
        }

        fn load(&mut self) -> Result<Restored, StoreError> {
            self.store.load()
        }

        fn held_page(
            &mut self,
            user: &str,
            after: MessageId,
            upto: MessageId,
            max: usize,
        ) -> Result<Vec<Arc<Message>>, StoreError> {
            self.store.held_page(user, after, upto, max)
        }
    };
}

/// A SQLite store in a directory of its own, which a reopen closes and
/// opens again, as a restarted chatd does.
struct OnDisk {
    dir: TempDir,
    store: SqliteStore,
    /// A log of private messages this short, cut this often (see
    /// `recent.rs`), instead of chatd's.
    log: Option<(usize, i64)>,
}

impl OnDisk {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        OnDisk {
            dir,
            store,
            log: None,
        }
    }

    /// A store whose log of private messages holds three entries and is
    /// cut every two ids, so that moving entries to `held` and cutting
    /// happen within a few ops.
    fn short_log() -> Self {
        let mut on_disk = OnDisk::new();
        on_disk.log = Some((3, 2));
        on_disk.store.recent.limits = on_disk.log;
        on_disk
    }

    /// No message row outlives the last box that holds it, and every
    /// count of holders is right.
    fn orphans(&self) -> i64 {
        miscounted_holders(&self.store)
    }
}

impl CheckedStore for OnDisk {
    type Error = StoreError;

    through_store!();

    fn reopen(self) -> Result<Self, StoreError> {
        let OnDisk { dir, store, log } = self;
        // The exclusive lock goes with the connection.
        drop(store);
        let mut store = SqliteStore::open(dir.path())?;
        store.recent.limits = log;
        Ok(OnDisk { dir, store, log })
    }
}

/// The store chatd runs: SQLite behind a journal, in a directory of its
/// own. A reopen stands for a crash: the journal is left as it is and the
/// next open replays it.
struct Journaled {
    dir: TempDir,
    store: JournaledStore,
    limits: JournalLimits,
    /// Once reopened, the database refuses every write, as on a disk that
    /// filled up: the journal's records wait, and reads and the next start
    /// see them on top of the database.
    full: bool,
}

impl Journaled {
    /// A journal this big (a small one fills within a case, and the
    /// database catches up in the middle of it).
    fn new(size: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let limits = JournalLimits {
            size,
            memory: 1 << 20,
        };
        let store = JournaledStore::open(dir.path(), limits).unwrap();
        Journaled {
            dir,
            store,
            limits,
            full: false,
        }
    }

    /// The same, on a disk that fills up (see [`Journaled::full`]).
    fn filling(size: u64) -> Self {
        Journaled {
            full: true,
            ..Journaled::new(size)
        }
    }
}

impl CheckedStore for Journaled {
    type Error = StoreError;

    through_store!();

    fn reopen(self) -> Result<Self, StoreError> {
        let Journaled {
            dir,
            store,
            limits,
            full,
        } = self;
        store.crash();
        let store = if full {
            JournaledStore::open_full(dir.path(), limits)?
        } else {
            JournaledStore::open(dir.path(), limits)?
        };
        Ok(Journaled {
            dir,
            store,
            limits,
            full,
        })
    }
}

/// Lives as long as the process: nothing to reopen.
impl CheckedStore for MemoryStore {
    type Error = StoreError;

    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        Store::apply(self, ops)
    }

    fn load(&mut self) -> Result<Restored, StoreError> {
        Store::load(self)
    }

    fn held_page(
        &mut self,
        user: &str,
        after: MessageId,
        upto: MessageId,
        max: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        Store::held_page(self, user, after, upto, max)
    }
}

/// The check as an embedder runs it: one body per id, as the core emits.
#[test]
fn sqlite_passes_the_store_check() {
    store_check::run(64, OnDisk::new);
}

/// The same with the log of private messages kept short: entries move to
/// `held` and confirmed rows are cut all the time.
#[test]
fn sqlite_with_a_short_log_passes_the_store_check() {
    store_check::run(64, OnDisk::short_log);
}

/// SQLite behind a journal, reopened as after a crash: with a journal
/// that never fills, and with one that fills every few commits.
#[test]
fn the_journaled_store_passes_the_store_check() {
    store_check::run(64, || Journaled::new(64 << 10));
    store_check::run(64, || Journaled::new(600));
}

/// The same on a disk that fills up: the journal's records wait, and
/// reads and a start see them on top of the database.
#[test]
fn the_journaled_store_on_a_full_disk_passes_the_store_check() {
    store_check::run(64, || Journaled::filling(1 << 20));
}

#[test]
fn the_memory_store_passes_the_store_check() {
    store_check::run(64, MemoryStore::default);
}

/// Opens the migrated store in `dir` and runs `case` on it from what
/// `model` holds: a migrated store goes on like a new one.
fn migrated_goes_on(dir: TempDir, model: StoreModel, case: &Case) -> Result<(), TestCaseError> {
    let store = SqliteStore::open(dir.path()).unwrap();
    store_check::check_from(
        OnDisk {
            dir,
            store,
            log: None,
        },
        model,
        case,
    )?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// More than the contract asks: one id held with different bodies
    /// (never done by the core) reads back per box, as `StoreModel` keeps
    /// it. And a message row lives exactly as long as someone holds it.
    #[test]
    fn sqlite_matches_the_model_with_any_bodies(case in store_check::arb_case(Bodies::Any)) {
        let disk = store_check::check(OnDisk::new(), &case)?;
        prop_assert_eq!(disk.orphans(), 0);
    }

    /// A database written by the version 1 layout opens, migrated, with
    /// the same content, and goes on matching `StoreModel`.
    #[test]
    fn v1_database_migrates(
        before in store_check::arb_batches_with(Bodies::Any),
        after in store_check::arb_case(Bodies::Any),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = StoreModel::default();
        {
            let mut old = v1::open(dir.path());
            for batch in &before {
                v1::apply(&mut old, batch);
                for op in batch {
                    model.apply(op);
                }
            }
            prop_assert_eq!(v1::load(&old), model.clone());
        }
        migrated_goes_on(dir, model, &after)?;
    }

    /// A version 3 database (boxes without summaries) opens, migrated,
    /// with the same content and summaries, and goes on matching
    /// `StoreModel`.
    #[test]
    fn v3_database_migrates(
        before in store_check::arb_batches_with(Bodies::Any),
        after in store_check::arb_case(Bodies::Any),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = StoreModel::default();
        {
            let mut old = v3::open(dir.path());
            for batch in &before {
                v3::apply(&mut old, batch);
                for op in batch {
                    model.apply(op);
                }
            }
        }
        migrated_goes_on(dir, model, &after)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Traffic shaped like the core's (`store_check::arb_traffic_case`),
    /// with the log of private messages kept short (entries move to
    /// `held`, confirmed rows are cut) and at chatd's length: the store
    /// stays the model.
    #[test]
    fn traffic_with_increasing_ids_matches_the_model(
        case in store_check::arb_traffic_case(),
        short in any::<bool>(),
    ) {
        let store = if short { OnDisk::short_log() } else { OnDisk::new() };
        let store = store_check::check(store, &case)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(store.orphans(), 0);
    }

    /// The same traffic through the journal, which takes holds and the
    /// releases that cover them away before the database sees them, and
    /// crashes on reopen.
    #[test]
    fn traffic_through_the_journal_matches_the_model(
        case in store_check::arb_traffic_case(),
        size in prop_oneof![Just(64u64 << 10), 300u64..4000],
    ) {
        let store = store_check::check(Journaled::new(size), &case)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(miscounted_holders(store.store.database()), 0);
    }
}
