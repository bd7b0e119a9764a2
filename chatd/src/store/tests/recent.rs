//! The log of private messages (`recent.rs`) stays short: what is
//! confirmed is cut, and what is not confirmed for long goes to `held`, so
//! neither the table nor the memory that indexes it grows with traffic.

use super::*;

fn rows(store: &SqliteStore, table: &str) -> i64 {
    store
        .conn
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn private(id: u64) -> Arc<Message> {
    msg(id, "zed", MessageKind::Private, "hello")
}

/// Two users in a conversation: each commit holds a few messages for each
/// and confirms the ones of the commit before, as the core does.
#[test]
fn confirmed_messages_do_not_pile_up_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let mut model = StoreModel::default();
    let mut id = 0;
    for _ in 0..2_000 {
        let mut ops = Vec::new();
        for user in ["ann", "bo"] {
            ops.push(StoreOp::Release {
                user: user.into(),
                upto: id,
            });
            for _ in 0..2 {
                id += 1;
                ops.push(StoreOp::Hold {
                    user: user.into(),
                    message: private(id),
                });
            }
        }
        store.apply(&ops).unwrap();
        ops.iter().for_each(|op| model.apply(op));
    }
    // 8,000 messages held and all but the last commit's confirmed: the
    // log kept them, and kept little of them.
    assert_eq!(rows(&store, "held"), 0);
    let left = rows(&store, "recent");
    assert!(left <= 1_024 + 4, "{left} rows left in the log");
    assert_eq!(contents(&mut store), model);
    drop(store);
    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(contents(&mut store), model);
}

/// A user who never confirms (offline, say): past the log's length, their
/// oldest entries go to `held`, and the box reads the same.
#[test]
fn entries_not_confirmed_move_out_of_a_full_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    store.recent.limits = Some((100, 10));
    let mut model = StoreModel::default();
    for batch in 0..50 {
        let ops: Vec<StoreOp> = (1..=10)
            .map(|i| StoreOp::Hold {
                user: "cy".into(),
                message: private(batch * 10 + i),
            })
            .collect();
        store.apply(&ops).unwrap();
        ops.iter().for_each(|op| model.apply(op));
        assert!(rows(&store, "recent") <= 100);
    }
    assert!(rows(&store, "held") >= 400);
    assert_eq!(contents_paged(&mut store, 7), model);
    drop(store);
    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(contents_paged(&mut store, 7), model);
    // And the user confirms at last: everything goes, from both places.
    store
        .apply(&[StoreOp::Release {
            user: "cy".into(),
            upto: 500,
        }])
        .unwrap();
    assert_eq!(rows(&store, "held"), 0);
    assert_eq!(contents(&mut store), StoreModel::default());
}

/// One user offline with a message in the log while others talk and
/// confirm: the old entry goes to `held` once it lags the log's length
/// behind, so the rows after it are cut instead of piling up (and a
/// startup does not read them all).
#[test]
fn an_old_entry_does_not_keep_the_log_from_being_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    store.recent.limits = Some((100, 10));
    let mut model = StoreModel::default();
    let first = [StoreOp::Hold {
        user: "away".into(),
        message: private(1),
    }];
    store.apply(&first).unwrap();
    model.apply(&first[0]);
    for id in 2..2_000 {
        let ops = [
            StoreOp::Hold {
                user: "ann".into(),
                message: private(id),
            },
            StoreOp::Release {
                user: "ann".into(),
                upto: id,
            },
        ];
        store.apply(&ops).unwrap();
        ops.iter().for_each(|op| model.apply(op));
        let left = rows(&store, "recent");
        assert!(left <= 100 + 10 + 1, "{left} rows in the log at id {id}");
    }
    assert_eq!(rows(&store, "held"), 1);
    assert_eq!(contents(&mut store), model);
    drop(store);
    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(contents(&mut store), model);
}
