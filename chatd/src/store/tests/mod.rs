//! The store's tests: fixtures and the engine's behaviour here; the
//! property test against `StoreModel` in [`props`], layouts and
//! migrations in [`layout`], the old layouts themselves in [`v1`],
//! [`v2`] and [`v3`], and the by-hand measurements in [`measure`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use chatcore::{LoginFailures, Message, MessageKind, Restored, StoreModel, StoreOp, Time};
use rusqlite::{params, Connection};

use super::schema::SCHEMA_VERSION;
use super::sqlite::{
    apply_one, kind_str, message_row_at, to_sql, MessageRow, LOAD_FAILURES, RECORD_FAILURES,
};
use super::{Failure, SqliteStore, Store, StoreError};

mod layout;
mod measure;
mod props;
mod recent;
mod v1;
mod v2;
mod v3;
mod v4;

fn msg(id: u64, from: &str, kind: MessageKind, text: &str) -> Arc<Message> {
    Arc::new(Message {
        id,
        at: Time::from_unix_secs(1_795_540_321 + id),
        from: from.into(),
        kind,
        text: text.into(),
    })
}

fn sample_ops() -> Vec<StoreOp> {
    let ip: IpAddr = Ipv4Addr::new(10, 0, 0, 7).into();
    let ip6: IpAddr = "::1".parse().unwrap();
    vec![
        StoreOp::ReserveIds { next: 100 },
        StoreOp::Hold {
            user: "bob".into(),
            message: msg(3, "alice", MessageKind::Private, "see you later"),
        },
        StoreOp::Hold {
            user: "bob".into(),
            message: msg(1, "carol", MessageKind::Broadcast, "tab\there é ✓"),
        },
        StoreOp::Hold {
            user: "carol".into(),
            message: msg(1, "carol", MessageKind::Broadcast, "tab\there é ✓"),
        },
        StoreOp::Release {
            user: "carol".into(),
            upto: 1,
        },
        StoreOp::ReserveIds { next: 50 },
        StoreOp::Seen {
            user: "alice".into(),
            at: Time::from_unix_millis(5_000),
        },
        StoreOp::Seen {
            user: "alice".into(),
            at: Time::from_unix_millis(4_000),
        },
        StoreOp::LoginFailures(LoginFailures {
            user: "nobody".into(),
            ip,
            count: 2,
            last: Time::from_unix_millis(7),
            blocked_until: None,
        }),
        StoreOp::LoginFailures(LoginFailures {
            user: "alice".into(),
            ip: ip6,
            count: 3,
            last: Time::from_unix_millis(8),
            blocked_until: Some(Time::from_unix_millis(60_008)),
        }),
        StoreOp::LoginFailures(LoginFailures {
            user: "nobody".into(),
            ip,
            count: 3,
            last: Time::from_unix_millis(9),
            blocked_until: Some(Time::from_unix_millis(60_009)),
        }),
    ]
}

fn expected(ops: &[StoreOp]) -> StoreModel {
    let mut r = StoreModel::default();
    for op in ops {
        r.apply(op);
    }
    r
}

/// Everything the store holds, read as the core reads it: the summaries
/// from `load`, each box through `held_page` (in pages of `page`, to test
/// the cursor too). Fails if a summary and its box disagree, or a
/// message's count of holders and its `held` rows.
fn contents_paged(store: &mut SqliteStore, page: usize) -> StoreModel {
    assert_eq!(miscounted_holders(store), 0, "messages.holders is off");
    let restored = store.load().unwrap();
    let mut model = StoreModel {
        next_id: restored.next_id,
        last_seen: restored.last_seen,
        login_failures: restored.login_failures,
        ..StoreModel::default()
    };
    for (user, summary) in restored.held {
        let mut boxed: Vec<Arc<Message>> = Vec::new();
        loop {
            let after = boxed.last().map_or(0, |m| m.id);
            let got = store.held_page(&user, after, summary.last, page).unwrap();
            assert!(
                got.len() <= page,
                "{user}: {} entries, asked for {page}",
                got.len()
            );
            let short = got.len() < page;
            boxed.extend(got);
            if short {
                break;
            }
        }
        assert_eq!(boxed.len(), summary.count, "{user}'s summary count");
        assert_eq!(
            boxed.last().map(|m| m.id),
            Some(summary.last),
            "{user}'s last id"
        );
        model.held.insert(user, boxed);
    }
    model
}

/// `messages` rows whose `holders` is not the number of entries with
/// their id (`held` rows and group bits above their user's cursor), or is
/// zero (a row lives as long as someone holds it), plus group rows
/// without a message.
fn miscounted_holders(store: &SqliteStore) -> i64 {
    let rows = |sql: &str| -> Vec<(i64, i64)> {
        store
            .conn
            .prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let mut entries: HashMap<i64, i64> = rows("SELECT id, COUNT(*) FROM held GROUP BY id")
        .into_iter()
        .collect();
    let groups: Vec<(i64, Vec<u8>)> = store
        .conn
        .prepare("SELECT id, receivers FROM held_group")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut bad = 0;
    for (id, bitmap) in &groups {
        let n = store
            .groups
            .bits
            .iter()
            .filter(|(user, bit)| {
                super::groups::has(bitmap, **bit)
                    && store.groups.cursors.get(*user).copied().unwrap_or(0) < *id
            })
            .count();
        *entries.entry(*id).or_default() += i64::try_from(n).unwrap();
    }
    let holders = rows("SELECT id, holders FROM messages");
    for (id, n) in &holders {
        if *n <= 0 || entries.get(id).copied().unwrap_or(0) != *n {
            bad += 1;
        }
    }
    let with_row: std::collections::HashSet<i64> = holders.iter().map(|(id, _)| *id).collect();
    bad += i64::try_from(
        groups
            .iter()
            .filter(|(id, _)| !with_row.contains(id))
            .count(),
    )
    .unwrap();
    bad
}

/// Creates `<dir>/chatd.db` with `sql` run in one transaction, opened as
/// chatd opens it: how the writers of past layouts (`v1`, `v2`, `v3`)
/// start, each with its own frozen layout text.
fn open_old_layout(dir: &std::path::Path, sql: &str) -> SqliteStore {
    let path = dir.join(SqliteStore::FILE_NAME);
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {sql} COMMIT;"))
        .unwrap();
    SqliteStore {
        conn,
        path,
        variants: true,
        groups: Default::default(),
        recent: Default::default(),
        recent_stale: true,
    }
}

/// [`contents_paged`] in one page per box.
fn contents(store: &mut SqliteStore) -> StoreModel {
    contents_paged(store, usize::MAX)
}

fn user_version(store: &SqliteStore) -> i64 {
    store
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

/// A failed-login record for a distinct name of about `name_bytes`.
fn failure(i: usize, name_bytes: usize) -> LoginFailures {
    let mut user = format!("user{i:08}-");
    user.extend(std::iter::repeat_n(
        'x',
        name_bytes.saturating_sub(user.len()),
    ));
    LoginFailures {
        user,
        ip: Ipv4Addr::new(192, 0, 2, 1).into(),
        count: 1,
        last: Time::from_unix_millis(1_000 + i as u64),
        blocked_until: None,
    }
}

/// Writes `count` failed-login records (sequence numbers 1 to `count`)
/// in one commit, straight into the table: through `apply`, building
/// a large table would cost as much as what is being tested.
fn fill_failures(store: &mut SqliteStore, count: usize, name_bytes: usize) {
    let tx = store.conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO login_failures (user, ip, count, last, blocked_until, seq)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
            )
            .unwrap();
        for i in 0..count {
            let f = failure(i, name_bytes);
            insert
                .execute(params![
                    f.user,
                    f.ip.to_string(),
                    1,
                    to_sql(f.last.unix_millis()),
                    i as i64 + 1
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn indexes(store: &SqliteStore) -> Vec<String> {
    store
        .conn
        .prepare(
            "SELECT name FROM sqlite_master
             WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested").join("data");
    let ops = sample_ops();
    {
        let mut store = SqliteStore::open(&data).unwrap();
        assert_eq!(store.load().unwrap(), Restored::default());
        store.apply(&ops[..4]).unwrap();
        store.apply(&ops[4..]).unwrap();
        assert_eq!(contents(&mut store), expected(&ops));
    }
    let mut store = SqliteStore::open(&data).unwrap();
    let got = contents(&mut store);
    assert_eq!(got, expected(&ops));
    assert_eq!(got.next_id, 100);
    assert_eq!(
        got.held["bob"].iter().map(|m| m.id).collect::<Vec<_>>(),
        [1, 3]
    );
    assert!(!got.held.contains_key("carol"));
    assert_eq!(got.last_seen["alice"], Time::from_unix_millis(5_000));
    assert_eq!(got.login_failures[0].user, "alice");
    assert_eq!(got.login_failures[1].count, 3);
}

#[test]
fn a_second_server_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SqliteStore::open(dir.path()).unwrap();
    let e = SqliteStore::open(dir.path()).unwrap_err();
    let cause = std::error::Error::source(&e).map(ToString::to_string);
    assert!(
        cause.as_deref().unwrap_or("").contains("locked"),
        "{e}: {cause:?}"
    );
}

#[test]
fn a_failed_transaction_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    store.apply(&sample_ops()).unwrap();
    let before = store.load().unwrap();
    store
        .conn
        .execute_batch("CREATE TRIGGER no_more BEFORE INSERT ON last_seen BEGIN SELECT RAISE(ABORT, 'refused'); END;")
        .unwrap();
    let ops = [
        StoreOp::ReserveIds { next: 1_000 },
        StoreOp::Seen {
            user: "zed".into(),
            at: Time::from_unix_millis(1),
        },
    ];
    assert!(store.apply(&ops).is_err());
    assert_eq!(store.load().unwrap(), before);
}

/// A real "disk full" from SQLite (the database may not grow): the
/// commit fails as "cannot write now", changes nothing, leaves the
/// connection usable, and the same ops succeed once there is room.
#[test]
fn a_full_disk_fails_a_commit_that_can_be_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let ops = sample_ops();
    store.apply(&ops).unwrap();
    let before = store.load().unwrap();
    let pages: i64 = store
        .conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    store
        .conn
        .pragma_update(None, "max_page_count", pages)
        .unwrap();
    let more = vec![
        StoreOp::ReserveIds { next: 2048 },
        StoreOp::Hold {
            user: "dave".into(),
            message: msg(1500, "erin", MessageKind::Private, &"y".repeat(64_000)),
        },
    ];
    let e = store.apply(&more).unwrap_err();
    assert_eq!(
        e.failure(),
        Failure::CannotWriteNow("the server's disk is full"),
        "{e:?}"
    );
    assert!(store.conn.is_autocommit());
    assert_eq!(store.load().unwrap(), before);
    store
        .conn
        .pragma_update(None, "max_page_count", 1 << 30)
        .unwrap();
    store.apply(&more).unwrap();
    drop(store);
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let all: Vec<StoreOp> = ops.into_iter().chain(more).collect();
    assert_eq!(contents(&mut store), expected(&all));
}

#[test]
fn failures_are_sorted_into_cannot_write_now_and_fatal() {
    use rusqlite::ffi;
    let sqlite = |code| StoreError::Sqlite {
        path: "chatd.db".into(),
        source: rusqlite::Error::SqliteFailure(ffi::Error::new(code), None),
    };
    for code in [
        ffi::SQLITE_FULL,
        ffi::SQLITE_IOERR_WRITE,
        ffi::SQLITE_CANTOPEN,
    ] {
        assert!(
            matches!(sqlite(code).failure(), Failure::CannotWriteNow(_)),
            "{code}"
        );
    }
    for code in [
        ffi::SQLITE_IOERR_FSYNC,
        ffi::SQLITE_IOERR_DIR_FSYNC,
        ffi::SQLITE_IOERR,
        ffi::SQLITE_IOERR_READ,
        ffi::SQLITE_IOERR_SHORT_READ,
        ffi::SQLITE_CORRUPT,
        ffi::SQLITE_NOTADB,
        ffi::SQLITE_NOMEM,
        ffi::SQLITE_CONSTRAINT,
        ffi::SQLITE_BUSY,
    ] {
        assert_eq!(sqlite(code).failure(), Failure::Fatal, "{code}");
    }
    let corrupt = StoreError::Corrupt {
        path: "chatd.db".into(),
        detail: "x".into(),
    };
    assert_eq!(corrupt.failure(), Failure::Fatal);
}

/// A broadcast is stored once, held for its receivers by one group row (no
/// row per receiver), read back for each receiver, and removed when its
/// last receiver releases it.
#[test]
fn a_broadcast_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let users: Vec<String> = (0..50).map(|i| format!("user{i}")).collect();
    let m = msg(7, "alice", MessageKind::Broadcast, &"x".repeat(4000));
    let holds: Vec<StoreOp> = users
        .iter()
        .map(|user| StoreOp::Hold {
            user: user.clone(),
            message: Arc::clone(&m),
        })
        .collect();
    store.apply(&holds).unwrap();
    let count = |store: &SqliteStore, table: &str| -> i64 {
        store
            .conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&store, "messages"), 1);
    assert_eq!(count(&store, "held"), 0);
    assert_eq!(count(&store, "held_group"), 1);
    assert_eq!(count(&store, "held_variant"), 0);
    drop(store);

    let mut store = SqliteStore::open(dir.path()).unwrap();
    let got = contents(&mut store);
    assert_eq!(got, expected(&holds));

    let releases: Vec<StoreOp> = users
        .iter()
        .map(|user| StoreOp::Release {
            user: user.clone(),
            upto: 7,
        })
        .collect();
    store.apply(&releases[..49]).unwrap();
    assert_eq!(count(&store, "messages"), 1);
    assert_eq!(count(&store, "held_group"), 1);
    store.apply(&releases[49..]).unwrap();
    assert_eq!(count(&store, "messages"), 0);
    assert_eq!(count(&store, "held_group"), 0);
    assert_eq!(store.load().unwrap(), Restored::default());
}

/// One id held with two different contents (never done by the core)
/// still reads back as `StoreModel::apply` says, also once the first
/// receiver released it and a third holds either content.
#[test]
fn same_id_different_content_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let x = msg(5, "alice", MessageKind::Private, "x");
    let y = msg(5, "bob", MessageKind::Broadcast, "y");
    let hold = |user: &str, m: &Arc<Message>| StoreOp::Hold {
        user: user.into(),
        message: Arc::clone(m),
    };
    let ops = vec![
        hold("a", &x),
        hold("b", &y),
        hold("a", &y),
        StoreOp::Release {
            user: "a".into(),
            upto: 5,
        },
        hold("c", &x),
        hold("d", &y),
    ];
    for op in &ops {
        store.apply(std::slice::from_ref(op)).unwrap();
    }
    assert_eq!(contents(&mut store), expected(&ops));
    drop(store);
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let got = contents(&mut store);
    assert_eq!(got, expected(&ops));
    assert_eq!(got.held["b"][0].text, "y");
    assert_eq!(got.held["c"][0].text, "x");
}
