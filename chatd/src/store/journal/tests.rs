//! The journal: records replayed after a crash, a torn record left out,
//! older rounds left out, commits too big for it, and holds and releases
//! that cancel out before the database sees them.

use std::time::Duration;

use chatcore::{MessageKind, Time};

use super::*;

fn small() -> JournalLimits {
    JournalLimits {
        size: 4096,
        memory: 1 << 20,
    }
}

/// Room for every record a test writes, so only the steps it takes move
/// records into the database.
fn roomy() -> JournalLimits {
    JournalLimits {
        size: 1 << 20,
        memory: 1 << 20,
    }
}

fn message(id: MessageId, text: &str) -> Arc<Message> {
    Arc::new(Message {
        id,
        at: Time::from_unix_millis(1_000 + id),
        from: "ann".into(),
        kind: MessageKind::Private,
        text: text.into(),
    })
}

fn hold(user: &str, id: MessageId) -> StoreOp {
    StoreOp::Hold {
        user: user.into(),
        message: message(id, "hi"),
    }
}

fn release(user: &str, upto: MessageId) -> StoreOp {
    StoreOp::Release {
        user: user.into(),
        upto,
    }
}

fn ids(store: &mut JournaledStore, user: &str) -> Vec<MessageId> {
    store
        .held_page(user, 0, 1 << 40, 1000)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect()
}

/// How many rows the database's tables of messages hold.
fn rows(store: &JournaledStore) -> i64 {
    store
        .database()
        .conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM recent) + (SELECT COUNT(*) FROM held)",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn a_crash_loses_no_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    store.apply(&[hold("bob", 1)]).unwrap();
    store.apply(&[hold("bob", 2), hold("cat", 2)]).unwrap();
    store.apply(&[release("bob", 1)]).unwrap();
    assert_eq!(rows(&store), 0, "the database has not caught up yet");
    store.crash();
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    assert_eq!(ids(&mut store, "bob"), [2]);
    assert_eq!(ids(&mut store, "cat"), [2]);
    assert_eq!(store.load().unwrap().held.len(), 2);
}

#[test]
fn a_torn_last_record_is_left_out_and_the_ones_before_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    store.apply(&[hold("bob", 1)]).unwrap();
    let end_of_first = store.offset;
    store.apply(&[hold("bob", 2)]).unwrap();
    let end = store.offset;
    store.crash();
    // The second record's last byte never reached the disk.
    let file = OpenOptions::new()
        .write(true)
        .open(dir.path().join(JournaledStore::FILE_NAME))
        .unwrap();
    file.write_all_at(&[0xff], end - 1).unwrap();
    assert!(end > end_of_first);
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    assert_eq!(ids(&mut store, "bob"), [1]);
    // The next record goes on from there and is kept.
    store.apply(&[hold("bob", 3)]).unwrap();
    store.crash();
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    assert_eq!(ids(&mut store, "bob"), [1, 3]);
}

#[test]
fn records_of_an_older_round_are_not_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    // A long first round, then the database catches up (a read does
    // that), then a short record at the start of the file.
    for id in 1..=5 {
        store.apply(&[hold("bob", id)]).unwrap();
    }
    assert_eq!(ids(&mut store, "bob"), [1, 2, 3, 4, 5]);
    store.apply(&[release("bob", 5)]).unwrap();
    store.crash();
    // Records 2 to 5 still follow in the file: holds that were released.
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    assert_eq!(ids(&mut store, "bob"), Vec::<MessageId>::new());
}

#[test]
fn a_commit_bigger_than_the_journal_goes_to_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    store.apply(&[hold("bob", 1)]).unwrap();
    let big = StoreOp::Hold {
        user: "bob".into(),
        message: message(2, &"x".repeat(8000)),
    };
    store.apply(&[big]).unwrap();
    store.apply(&[hold("bob", 3)]).unwrap();
    store.crash();
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    assert_eq!(ids(&mut store, "bob"), [1, 2, 3]);
}

#[test]
fn a_full_journal_makes_the_database_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    for id in 1..=200 {
        store.apply(&[hold("bob", id)]).unwrap();
    }
    assert!(
        rows(&store) > 0,
        "the database caught up when the journal filled"
    );
    store.crash();
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    assert_eq!(ids(&mut store, "bob"), (1..=200).collect::<Vec<_>>());
}

#[test]
fn a_hold_released_before_the_database_catches_up_never_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    store.apply(&[hold("bob", 1), hold("cat", 1)]).unwrap();
    store.apply(&[hold("bob", 2)]).unwrap();
    store.apply(&[release("bob", 1)]).unwrap();
    store.apply(&[release("bob", 2)]).unwrap();
    // Bob's holds and his first release are taken away.
    let skipped: Vec<u64> = (0..5).filter(|&n| store.pending.skipped(n)).collect();
    assert_eq!(skipped, [0, 2, 3]);
    store.catch_up_now().unwrap();
    assert_eq!(rows(&store), 1, "only cat's copy");
    assert_eq!(ids(&mut store, "bob"), Vec::<MessageId>::new());
    assert_eq!(ids(&mut store, "cat"), [1]);
}

#[test]
fn the_database_catches_up_between_requests_when_half_full_or_quiet_and_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    assert_eq!(store.due(), None);
    store.apply(&[hold("bob", 1)]).unwrap();
    let quiet = store.due().unwrap();
    assert!(quiet > Instant::now(), "not yet half full: due when quiet");
    let mut id = 1;
    while store.offset <= 2048 {
        id += 1;
        store.apply(&[hold("bob", id)]).unwrap();
    }
    assert!(
        store.due().is_some_and(|at| at <= Instant::now()),
        "half full: now"
    );
    while store.due().is_some_and(|at| at <= Instant::now()) {
        store.catch_up();
    }
    assert_eq!(store.due(), None);
    assert_eq!(rows(&store), id as i64);
    store.apply(&[hold("bob", id + 1)]).unwrap();
    drop(store);
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.journal_mark().unwrap(), id + 1);
}

#[test]
fn what_memory_keeps_of_the_journal_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let limits = JournalLimits {
        size: 1 << 20,
        memory: 4096,
    };
    let mut store = JournaledStore::open(dir.path(), limits).unwrap();
    for id in 1..=400 {
        store.apply(&[hold("bob", id)]).unwrap();
        assert!(store.pending.bytes <= 4096 + 100, "{}", store.pending.bytes);
    }
    assert!(rows(&store) > 0, "the database caught up");
    drop(store);
    // Holds released as they come take next to nothing, however many.
    let mut store = JournaledStore::open(dir.path(), limits).unwrap();
    for id in 401..=5000 {
        store.apply(&[hold("cat", id)]).unwrap();
        store.apply(&[release("cat", id)]).unwrap();
    }
    assert!(store.pending.bytes < 2048, "{}", store.pending.bytes);
    assert_eq!(rows(&store), 400, "the database did not need to catch up");
}

/// The file grows as records need room, up to `journal_size`, and a lower
/// `journal_size` at the next start shortens it.
#[test]
fn the_file_grows_a_step_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(JournaledStore::FILE_NAME);
    let limits = JournalLimits {
        size: 3 * GROW,
        memory: 64 << 20,
    };
    let mut store = JournaledStore::open(dir.path(), limits).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
    store.apply(&[hold("bob", 1)]).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), GROW);
    let big = StoreOp::Hold {
        user: "bob".into(),
        message: message(2, &"x".repeat(GROW as usize)),
    };
    store.apply(&[big]).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 2 * GROW);
    store.crash();
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    assert_eq!(ids(&mut store, "bob"), [1, 2]);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
}

#[test]
fn a_garbled_record_with_a_good_checksum_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    drop(JournaledStore::open(dir.path(), small()).unwrap());
    let mut record = vec![0u8; HEADER];
    record.push(99);
    record[0..8].copy_from_slice(&1u64.to_le_bytes());
    record[8..12].copy_from_slice(&1u32.to_le_bytes());
    let crc = checksum(&record[..12], &record[HEADER..]);
    record[12..16].copy_from_slice(&crc.to_le_bytes());
    let file = OpenOptions::new()
        .write(true)
        .open(dir.path().join(JournaledStore::FILE_NAME))
        .unwrap();
    file.write_all_at(&record, 0).unwrap();
    let e = JournaledStore::open(dir.path(), small()).unwrap_err();
    assert!(e.to_string().contains("chatd.journal"), "{e}");
    assert_eq!(e.failure(), Failure::Fatal);
}

/// Between requests the database catches up a step at a time; a crash
/// between two steps loses nothing and applies nothing twice.
#[test]
fn a_crash_between_two_steps_of_catching_up_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let limits = roomy();
    let mut store = JournaledStore::open(dir.path(), limits).unwrap();
    for id in 1..=30 {
        store.apply(&[hold("bob", id), hold("cat", id)]).unwrap();
        if id % 3 == 0 {
            store.apply(&[release("cat", id - 1)]).unwrap();
        }
    }
    // Each step with no time to spare takes one record.
    for _ in 0..7 {
        assert!(!store.catch_up_step(Some(Duration::ZERO)).unwrap());
    }
    let rows_between = rows(&store);
    assert!(rows_between > 0 && rows_between < 40, "{rows_between}");
    store.crash();
    let mut store = JournaledStore::open(dir.path(), limits).unwrap();
    assert_eq!(ids(&mut store, "bob"), (1..=30).collect::<Vec<_>>());
    assert_eq!(ids(&mut store, "cat"), [30]);
}

/// A step goes on from the bytes the step before read ahead, records
/// written between the steps included; once the database holds every
/// record the file is written from its start again, and the next steps
/// read the new records there, not what was read ahead before.
#[test]
fn steps_with_commits_between_them_apply_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let limits = roomy();
    let mut store = JournaledStore::open(dir.path(), limits).unwrap();
    let mut next = 1;
    // One record a step, and a commit after each step until `upto` is.
    let steps = |store: &mut JournaledStore, next: &mut u64, upto: u64| {
        while !store.catch_up_step(Some(Duration::ZERO)).unwrap() {
            if *next <= upto {
                store.apply(&[hold("bob", *next)]).unwrap();
                *next += 1;
            }
        }
    };
    for id in 1..=7 {
        store.apply(&[hold("bob", id)]).unwrap();
    }
    next += 7;
    steps(&mut store, &mut next, 12);
    // Records of the same size from the start of the file again, read in
    // one go (from its start) as a read makes the database catch up.
    for id in 13..=17 {
        store.apply(&[hold("bob", id)]).unwrap();
    }
    store.catch_up_now().unwrap();
    for id in 18..=22 {
        store.apply(&[hold("bob", id)]).unwrap();
    }
    next = 23;
    steps(&mut store, &mut next, 25);
    assert_eq!(next, 26);
    store.crash();
    let mut store = JournaledStore::open(dir.path(), limits).unwrap();
    assert_eq!(ids(&mut store, "bob"), (1..=25).collect::<Vec<_>>());
}

#[test]
fn a_page_the_journal_does_not_touch_is_read_without_catching_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = JournaledStore::open(dir.path(), small()).unwrap();
    store
        .apply(&(1..=6).map(|id| hold("bob", id)).collect::<Vec<_>>())
        .unwrap();
    store.catch_up_now().unwrap();
    // Bob confirmed the first page and Cat got a message: the next page of
    // Bob's box is the database's.
    store.apply(&[release("bob", 3), hold("cat", 7)]).unwrap();
    let page = |store: &mut JournaledStore, after, upto| -> Vec<MessageId> {
        let page = store.held_page("bob", after, upto, 10).unwrap();
        page.iter().map(|m| m.id).collect()
    };
    assert_eq!(page(&mut store, 3, 6), [4, 5, 6]);
    assert!(store.pending.last.is_some(), "the journal was left alone");
    // A hold past the block read is left alone too.
    store.apply(&[hold("bob", 8)]).unwrap();
    assert_eq!(page(&mut store, 4, 6), [5, 6]);
    assert!(store.pending.last.is_some());
    // A page below a release, or reaching a hold, needs the journal.
    assert_eq!(page(&mut store, 2, 6), [4, 5, 6]);
    assert!(store.pending.last.is_none(), "caught up");
    store.apply(&[hold("bob", 9)]).unwrap();
    assert_eq!(page(&mut store, 6, 9), [8, 9]);
}
