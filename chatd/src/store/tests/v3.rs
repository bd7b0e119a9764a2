//! The version 3 layout's boxes, as chatd wrote them before
//! `held_summary` and the index of `held` by user: the tables are those of
//! version 2 plus the index on `login_failures.seq`, and a release removed
//! one (id, user) pair.

use std::path::Path;

use rusqlite::TransactionBehavior;

use super::*;

/// Creates `<dir>/chatd.db` as version 3 did.
pub fn open(dir: &Path) -> SqliteStore {
    open_old_layout(
        dir,
        &format!(
            "{} CREATE INDEX IF NOT EXISTS login_failures_by_seq ON login_failures (seq);
             PRAGMA user_version = 3;",
            v2::SCHEMA
        ),
    )
}

/// Version 2's and 3's `apply`: boxes without summaries, releases by id
/// (a range release is applied as the ids it covers). Other ops are
/// unchanged.
pub fn apply(store: &mut SqliteStore, ops: &[StoreOp]) {
    let tx = store
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    for op in ops {
        match op {
            StoreOp::Hold { user, message } => {
                let id = to_sql(message.id);
                let ts = to_sql(message.at.unix_millis());
                let kind = kind_str(message.kind);
                tx.execute(
                    "INSERT OR IGNORE INTO messages (id, ts, sender, kind, text)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, ts, message.from, kind, message.text],
                )
                .unwrap();
                let same: bool = tx
                    .query_row(
                        "SELECT ts = ?2 AND sender = ?3 AND kind = ?4 AND text = ?5
                         FROM messages WHERE id = ?1",
                        params![id, ts, message.from, kind, message.text],
                        |r| r.get(0),
                    )
                    .unwrap();
                let added = tx
                    .execute(
                        "INSERT OR IGNORE INTO held (id, user) VALUES (?1, ?2)",
                        params![id, user],
                    )
                    .unwrap();
                if added == 1 && !same {
                    tx.execute(
                        "INSERT INTO held_variant (id, user, ts, sender, kind, text)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![id, user, ts, message.from, kind, message.text],
                    )
                    .unwrap();
                }
            }
            StoreOp::Release { user, upto } => {
                let ids: Vec<i64> = tx
                    .prepare("SELECT id FROM held WHERE user = ?1 AND id <= ?2")
                    .unwrap()
                    .query_map(params![user, to_sql(*upto)], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                for id in ids {
                    tx.execute(
                        "DELETE FROM held WHERE id = ?1 AND user = ?2",
                        params![id, user],
                    )
                    .unwrap();
                    tx.execute(
                        "DELETE FROM held_variant WHERE id = ?1 AND user = ?2",
                        params![id, user],
                    )
                    .unwrap();
                    tx.execute(
                        "DELETE FROM messages
                         WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM held WHERE id = ?1)",
                        params![id],
                    )
                    .unwrap();
                }
            }
            other => apply_one(&tx, other).unwrap(),
        }
    }
    tx.commit().unwrap();
}
