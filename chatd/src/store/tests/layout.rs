//! The layout: new databases, the index the login-failure records need,
//! and migrations from every older layout.

use super::*;

#[test]
fn a_new_database_is_created_at_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(user_version(&store), SCHEMA_VERSION);
}

/// Recording a failure finds the next sequence number through an index,
/// not by reading every record: with 20 000 records (of 1 KB names, as
/// an attacker would pick) one more costs a few dozen steps of
/// SQLite's virtual machine, not tens of thousands.
#[test]
fn recording_a_login_failure_reads_no_other_record() {
    use rusqlite::StatementStatus;

    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    fill_failures(&mut store, 20_000, 1024);
    let tx = store.conn.transaction().unwrap();
    let mut stmt = tx.prepare_cached(RECORD_FAILURES).unwrap();
    stmt.execute(params!["mallory", "192.0.2.9", 1, 5, None::<i64>])
        .unwrap();
    let full_scan = stmt.get_status(StatementStatus::FullscanStep);
    let steps = stmt.get_status(StatementStatus::VmStep);
    assert_eq!(
        full_scan, 0,
        "a full scan of login_failures ({steps} steps)"
    );
    assert!(steps < 500, "{steps} steps for one record");
    drop(stmt);
    // Load reads the records in update order without sorting them.
    let plan: Vec<String> = tx
        .prepare(&format!("EXPLAIN QUERY PLAN {LOAD_FAILURES}"))
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        !plan.iter().any(|step| step.contains("TEMP B-TREE")),
        "{plan:?}"
    );
}

/// A version 1 database with a broadcast, a private message, a
/// redelivered one, one id held with two contents and the other tables
/// filled, opened by this version.
#[test]
fn a_v1_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let b = msg(9, "carol", MessageKind::Broadcast, &"é".repeat(2000));
    let mut ops = sample_ops();
    for user in ["alice", "bob", "carol", "dave"] {
        ops.push(StoreOp::Hold {
            user: user.into(),
            message: Arc::clone(&b),
        });
    }
    ops.extend([
        StoreOp::Release {
            user: "carol".into(),
            upto: 9,
        },
        StoreOp::Hold {
            user: "dave".into(),
            message: msg(3, "alice", MessageKind::Private, "see you later"),
        },
        StoreOp::Hold {
            user: "erin".into(),
            message: msg(3, "mallory", MessageKind::Private, "not the same"),
        },
    ]);
    {
        let mut old = v1::open(dir.path());
        v1::apply(&mut old, &ops);
        assert_eq!(user_version(&old), 0);
        assert_eq!(v1::load(&old), expected(&ops));
    }
    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(user_version(&store), SCHEMA_VERSION);
    let got = contents(&mut store);
    assert_eq!(got, expected(&ops));
    assert_eq!(got.held["alice"][0], got.held["dave"][1]);
    assert_eq!(got.held["erin"][0].text, "not the same");
    let tables: Vec<String> = store
        .conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        tables,
        [
            "group_cursor",
            "held",
            "held_group",
            "held_summary",
            "held_variant",
            "id_reservation",
            "journal_mark",
            "last_seen",
            "login_failures",
            "messages",
            "recent",
            "recent_cursor",
            "user_index"
        ]
    );
    let count = |sql: &str| -> i64 { store.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    // Ids 1, 3 and 9, each once; erin's copy of 3 is a variant.
    assert_eq!(count("SELECT COUNT(*) FROM messages"), 3);
    assert_eq!(count("SELECT COUNT(*) FROM held_variant"), 1);
    drop(store);
    // Opening again migrates nothing more.
    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(contents(&mut store), expected(&ops));
}

/// A version 2 database (no index on `login_failures.seq`) gets the
/// index, keeps its content and update order, and records failures
/// after it in order.
#[test]
fn a_v2_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let ops = sample_ops();
    {
        let mut old = v2::open(dir.path());
        v3::apply(&mut old, &ops);
        assert_eq!(user_version(&old), 2);
        assert!(indexes(&old).is_empty());
    }
    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(user_version(&store), SCHEMA_VERSION);
    assert_eq!(indexes(&store), ["login_failures_by_seq"]);
    assert_eq!(contents(&mut store), expected(&ops));
    let more = [StoreOp::LoginFailures(failure(1, 10))];
    store.apply(&more).unwrap();
    drop(store);
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let all: Vec<StoreOp> = ops.iter().chain(&more).cloned().collect();
    assert_eq!(contents(&mut store), expected(&all));
    assert_eq!(indexes(&store), ["login_failures_by_seq"]);
}

/// A version 3 database (no box summaries, no index of `held` by user)
/// gets both, with a summary per non-empty box computed from `held`, and
/// carries on: a page, a range release, a reopen.
#[test]
fn a_v3_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let mut ops = sample_ops();
    for id in 10..20 {
        for user in ["dave", "erin"] {
            ops.push(StoreOp::Hold {
                user: user.into(),
                message: msg(id, "alice", MessageKind::Private, &format!("m{id}")),
            });
        }
    }
    {
        let mut old = v3::open(dir.path());
        v3::apply(&mut old, &ops);
        assert_eq!(user_version(&old), 3);
        assert_eq!(indexes(&old), ["login_failures_by_seq"]);
    }
    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(user_version(&store), SCHEMA_VERSION);
    assert_eq!(indexes(&store), ["login_failures_by_seq"]);
    assert_eq!(store.load().unwrap(), expected(&ops).restored());
    assert_eq!(
        store.load().unwrap().held["dave"],
        chatcore::BoxSummary {
            count: 10,
            last: 19
        }
    );
    assert_eq!(contents_paged(&mut store, 3), expected(&ops));
    let page = store.held_page("erin", 12, 19, 2).unwrap();
    assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), [13, 14]);
    let more = [StoreOp::Release {
        user: "erin".into(),
        upto: 14,
    }];
    store.apply(&more).unwrap();
    drop(store);
    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(user_version(&store), SCHEMA_VERSION);
    let all: Vec<StoreOp> = ops.iter().chain(&more).cloned().collect();
    assert_eq!(contents(&mut store), expected(&all));
    assert_eq!(store.load().unwrap().held["erin"].count, 5);
}

/// A version 4 database (`held` keyed by id, a second index by user, no
/// count of holders) is rebuilt keyed by user, keeps its boxes and
/// summaries, gets each message's holders counted, and carries on.
#[test]
fn a_v4_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let mut ops = sample_ops();
    let b = msg(20, "carol", MessageKind::Broadcast, "to everyone");
    for user in ["alice", "bob", "dave", "erin"] {
        ops.push(StoreOp::Hold {
            user: user.into(),
            message: Arc::clone(&b),
        });
    }
    ops.push(StoreOp::Hold {
        user: "erin".into(),
        message: msg(3, "mallory", MessageKind::Private, "not the same"),
    });
    {
        let mut old = v3::open(dir.path());
        v3::apply(&mut old, &ops);
        v4::from_v3(&mut old);
        assert_eq!(user_version(&old), 4);
        assert_eq!(indexes(&old), ["held_by_user", "login_failures_by_seq"]);
    }
    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(user_version(&store), SCHEMA_VERSION);
    assert_eq!(indexes(&store), ["login_failures_by_seq"]);
    assert_eq!(store.load().unwrap(), expected(&ops).restored());
    assert_eq!(contents_paged(&mut store, 1), expected(&ops));
    let holders: i64 = store
        .conn
        .query_row("SELECT holders FROM messages WHERE id = 20", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(holders, 4);
    let more: Vec<StoreOp> = ["alice", "bob", "dave"]
        .into_iter()
        .map(|user| StoreOp::Release {
            user: user.into(),
            upto: 20,
        })
        .collect();
    store.apply(&more).unwrap();
    drop(store);
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let all: Vec<StoreOp> = ops.iter().chain(&more).cloned().collect();
    assert_eq!(contents(&mut store), expected(&all));
    let erin = &contents(&mut store).held["erin"];
    assert_eq!(erin.iter().map(|m| m.id).collect::<Vec<_>>(), [3, 20]);
    assert_eq!(erin[0].text, "not the same");
}

/// Writes `sample_ops` as rows (no log), makes the database an older
/// layout with `downgrade`, and checks that it opens migrated with its
/// content, that `more` is written to `table` in `rows` rows, and that
/// everything reads back after a reopen.
fn goes_on_after_migrating(downgrade: &str, more: &[StoreOp], table: &str, rows: i64) {
    let dir = tempfile::tempdir().unwrap();
    let ops = sample_ops();
    {
        let mut store = SqliteStore::open(dir.path()).unwrap();
        // Layouts before 7 had no log: every entry a row.
        store.recent.max_id = i64::MAX;
        store.apply(&ops).unwrap();
        store.conn.execute_batch(downgrade).unwrap();
    }
    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(user_version(&store), SCHEMA_VERSION);
    assert_eq!(contents(&mut store), expected(&ops));
    store.apply(more).unwrap();
    let written: i64 = store
        .conn
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap();
    assert_eq!(written, rows);
    drop(store);
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let all: Vec<StoreOp> = ops.iter().chain(more).cloned().collect();
    assert_eq!(contents(&mut store), expected(&all));
}

/// A version 5 database (no groups) gets the group tables and goes on:
/// its rows stay rows, and a broadcast after the upgrade is one group.
#[test]
fn a_v5_database_is_migrated() {
    let b = msg(30, "carol", MessageKind::Broadcast, "after the upgrade");
    let more: Vec<StoreOp> = ["alice", "bob", "dave"]
        .into_iter()
        .map(|user| StoreOp::Hold {
            user: user.into(),
            message: Arc::clone(&b),
        })
        .collect();
    goes_on_after_migrating(
        "DROP TRIGGER a_group_goes_with_its_message;
         DROP TABLE held_group; DROP TABLE user_index; DROP TABLE group_cursor;
         DROP TABLE recent; DROP TABLE recent_cursor;
         PRAGMA user_version = 5;",
        &more,
        "held_group",
        1,
    );
}

/// A version 6 database (no log of private messages) gets the log, keeps
/// its content, and holds new private messages in the log.
#[test]
fn a_v6_database_is_migrated() {
    let more = [
        StoreOp::Hold {
            user: "bob".into(),
            message: msg(40, "alice", MessageKind::Private, "after the upgrade"),
        },
        StoreOp::Release {
            user: "alice".into(),
            upto: 40,
        },
    ];
    goes_on_after_migrating(
        "DROP TABLE recent; DROP TABLE recent_cursor; PRAGMA user_version = 6;",
        &more,
        "recent",
        1,
    );
}

#[test]
fn a_newer_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    {
        let conn = Connection::open(dir.path().join(SqliteStore::FILE_NAME)).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let e = SqliteStore::open(dir.path()).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
}

/// What version 7 kept in `held_summary`: the log's entries (those above
/// their user's cursor) counted with the rows.
const AS_V7: &str = "
INSERT INTO held_summary (user, count, last)
    SELECT r.user, COUNT(*), MAX(r.id) FROM recent AS r
    LEFT JOIN recent_cursor AS c ON c.user = r.user
    WHERE r.id > COALESCE(c.upto, 0)
    GROUP BY r.user
    ON CONFLICT (user) DO UPDATE
    SET count = count + excluded.count, last = MAX(last, excluded.last);
PRAGMA user_version = 7;
";

/// A version 7 database, whose summaries counted the log's entries, opens
/// with each box counted once and goes on.
#[test]
fn a_v7_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let mut ops = sample_ops();
    // One user with entries only in the log, one with both.
    ops.push(StoreOp::Hold {
        user: "dave".into(),
        message: msg(20, "alice", MessageKind::Private, "only in the log"),
    });
    {
        let mut store = SqliteStore::open(dir.path()).unwrap();
        store.apply(&ops).unwrap();
        let boxes: Vec<(String, i64)> = store
            .conn
            .prepare("SELECT user, count FROM held_summary ORDER BY user")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // bob's 3 and dave's 20 are in the log, not in the summaries.
        assert_eq!(boxes, [("bob".to_string(), 1)]);
        store.conn.execute_batch(AS_V7).unwrap();
    }
    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(user_version(&store), SCHEMA_VERSION);
    assert_eq!(store.load().unwrap(), expected(&ops).restored());
    assert_eq!(contents(&mut store), expected(&ops));
    let more = [
        StoreOp::Release {
            user: "bob".into(),
            upto: 1,
        },
        StoreOp::Hold {
            user: "bob".into(),
            message: msg(40, "alice", MessageKind::Private, "after the upgrade"),
        },
        StoreOp::Release {
            user: "dave".into(),
            upto: 20,
        },
    ];
    store.apply(&more).unwrap();
    drop(store);
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let all: Vec<StoreOp> = ops.iter().chain(&more).cloned().collect();
    assert_eq!(store.load().unwrap(), expected(&all).restored());
    assert_eq!(contents(&mut store), expected(&all));
}
