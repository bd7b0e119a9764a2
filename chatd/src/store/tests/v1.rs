//! The version 1 layout and store code, as chatd wrote it before
//! messages moved to their own table: to build old databases for the
//! migration test, and to compare speed.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::TransactionBehavior;

use super::*;

/// The version 1 schema, verbatim.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS held (
    user   TEXT    NOT NULL,
    id     INTEGER NOT NULL,
    ts     INTEGER NOT NULL,
    sender TEXT    NOT NULL,
    kind   TEXT    NOT NULL CHECK (kind IN ('private', 'broadcast')),
    text   TEXT    NOT NULL,
    PRIMARY KEY (user, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS id_reservation (
    one  INTEGER PRIMARY KEY CHECK (one = 1),
    next INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS last_seen (
    user TEXT PRIMARY KEY,
    at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS login_failures (
    user          TEXT    NOT NULL,
    ip            TEXT    NOT NULL,
    count         INTEGER NOT NULL,
    last          INTEGER NOT NULL,
    blocked_until INTEGER,
    seq           INTEGER NOT NULL,
    PRIMARY KEY (user, ip)
) WITHOUT ROWID;
";

/// Opens `<dir>/chatd.db` as version 1 did (user_version left 0).
pub fn open(dir: &Path) -> SqliteStore {
    open_old_layout(dir, SCHEMA)
}

/// Version 1's `apply` (all ops; non-message ones are unchanged).
pub fn apply(store: &mut SqliteStore, ops: &[StoreOp]) {
    let tx = store
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    for op in ops {
        match op {
            StoreOp::Hold { user, message } => {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO held (user, id, ts, sender, kind, text)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .unwrap()
                .execute(params![
                    user,
                    to_sql(message.id),
                    to_sql(message.at.unix_millis()),
                    message.from,
                    kind_str(message.kind),
                    message.text,
                ])
                .unwrap();
            }
            StoreOp::Release { user, upto } => {
                tx.prepare_cached("DELETE FROM held WHERE user = ?1 AND id <= ?2")
                    .unwrap()
                    .execute(params![user, to_sql(*upto)])
                    .unwrap();
            }
            other => apply_one(&tx, other).unwrap(),
        }
    }
    tx.commit().unwrap();
}

/// Version 1's `load` (the tables other than `held` are the same).
pub fn load(store: &SqliteStore) -> StoreModel {
    let mut stmt = store
        .conn
        .prepare("SELECT user, id, ts, sender, kind, text FROM held ORDER BY user, id")
        .unwrap();
    let rows: Vec<(String, MessageRow)> = stmt
        .query_map([], |r| Ok((r.get(0)?, message_row_at(r, [1, 2, 3, 4, 5])?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(stmt);
    let mut held: BTreeMap<String, Vec<Arc<Message>>> = BTreeMap::new();
    for (user, (id, ts, from, kind, text)) in rows {
        let message = store.message(id, ts, from, &kind, text).unwrap();
        held.entry(user).or_default().push(Arc::new(message));
    }
    for boxed in held.values_mut() {
        boxed.sort_by_key(|m| m.id);
    }
    let other = store.load_other().unwrap();
    StoreModel {
        next_id: other.next_id,
        held,
        last_seen: other.last_seen,
        login_failures: other.login_failures,
    }
}
