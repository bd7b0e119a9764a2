//! The SQLite layout and how older layouts are brought up to date: kept
//! apart from the engine because the layout is what an operator inspects
//! with the `sqlite3` shell and what a migration must get exactly right.

use std::path::Path;

#[cfg(doc)]
use chatcore::StoreModel;
use rusqlite::Transaction;

use super::error::StoreError;
#[cfg(doc)]
use super::SqliteStore;

/// The layout version kept in `PRAGMA user_version`. Version 0 (never set)
/// and 1 are the first layout, where every `held` row carried a full copy of
/// its message; version 2 lacked the index on `login_failures.seq`;
/// version 3 lacked `held_summary` and the index of `held` by user.
/// [`SqliteStore::open`] migrates them to this one.
pub(super) const SCHEMA_VERSION: i64 = 4;

/// The schema (version [`SCHEMA_VERSION`]).
///
/// A message's text is stored once, in `messages`, not once per receiver:
/// with `persist_deliveries` on, a broadcast to 1000 online users is held
/// for (and later released by) each of them, and writing its text 1000
/// times made commits slow. `held` is only the (id, user) pairs, keyed id
/// first so that the rows of one broadcast are neighbours (a few pages per
/// commit, not one page per receiver) and "is this message still held by
/// anyone" is a key-prefix lookup, with no second index to maintain. A
/// `messages` row lives exactly as long as some `held` row has its id.
///
/// Holding the same (user, id) twice keeps one copy, as
/// [`StoreModel::apply`] does. Each box is read back in id order, a page at
/// a time, through `held_by_user` (user, id): a page is a walk of one
/// user's neighbouring index entries, and confirming a prefix of a box
/// (`Release` up to an id) is one range delete on it.
///
/// `held_summary` is each non-empty box's count and last id, kept by
/// `apply` in the same transaction as `held`, so that startup reads one row
/// per user, not one per held message (`load` must not grow with them).
///
/// `held_variant` keeps a box entry whose message differs from the
/// `messages` row of the same id. The core never does that (ids are never
/// reused, and every hold of one message shares it), so the table stays
/// empty; it is there so the store gives back exactly what
/// [`StoreModel::apply`] computes for any ops, not just for the core's.
///
/// `login_failures.seq` records update order, because
/// [`chatcore::Restored::login_failures`] is a list in that order. Its index makes
/// finding the next number (`MAX(seq)`) a lookup and loading in that order
/// a walk: without it every failed login read every record, which is what
/// an attacker trying many names grows (6 ms per failure at 100 000
/// records, on the core's path).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id     INTEGER PRIMARY KEY,
    ts     INTEGER NOT NULL,
    sender TEXT    NOT NULL,
    kind   TEXT    NOT NULL CHECK (kind IN ('private', 'broadcast')),
    text   TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS held (
    id   INTEGER NOT NULL,
    user TEXT    NOT NULL,
    PRIMARY KEY (id, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held_variant (
    id     INTEGER NOT NULL,
    user   TEXT    NOT NULL,
    ts     INTEGER NOT NULL,
    sender TEXT    NOT NULL,
    kind   TEXT    NOT NULL CHECK (kind IN ('private', 'broadcast')),
    text   TEXT    NOT NULL,
    PRIMARY KEY (id, user)
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
CREATE INDEX IF NOT EXISTS login_failures_by_seq ON login_failures (seq);
CREATE INDEX IF NOT EXISTS held_by_user ON held (user, id);
CREATE TABLE IF NOT EXISTS held_summary (
    user  TEXT    PRIMARY KEY,
    count INTEGER NOT NULL CHECK (count > 0),
    last  INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Moves a version 3 database to version 4: the index of `held` by user,
/// and `held_summary` filled from `held` (one pass over the boxes, once).
/// Also run after [`MIGRATE_V1`] and [`MIGRATE_V2`], which fill `held` or
/// leave it as it was; every statement is idempotent.
pub(super) const MIGRATE_V3: &str = "
CREATE INDEX IF NOT EXISTS held_by_user ON held (user, id);
CREATE TABLE IF NOT EXISTS held_summary (
    user  TEXT    PRIMARY KEY,
    count INTEGER NOT NULL CHECK (count > 0),
    last  INTEGER NOT NULL
) WITHOUT ROWID;
DELETE FROM held_summary;
INSERT INTO held_summary (user, count, last)
    SELECT user, COUNT(*), MAX(id) FROM held GROUP BY user;
";

/// Moves a version 2 database to version 3 (then [`MIGRATE_V3`] to 4):
/// only the index is new.
pub(super) const MIGRATE_V2: &str =
    "CREATE INDEX IF NOT EXISTS login_failures_by_seq ON login_failures (seq);";

/// Moves a version 0/1 database (whose `held` has been renamed `held_v1`,
/// and [`SCHEMA`] run) to version 2: each message once into `messages` (the
/// copy of the first user in name order, if copies differ), the (id, user)
/// pairs into `held`, copies that differ from the kept one into
/// `held_variant`. The other tables are unchanged.
pub(super) const MIGRATE_V1: &str = "
INSERT OR IGNORE INTO messages (id, ts, sender, kind, text)
    SELECT id, ts, sender, kind, text FROM held_v1 ORDER BY id, user;
INSERT INTO held (id, user) SELECT id, user FROM held_v1;
INSERT INTO held_variant (id, user, ts, sender, kind, text)
    SELECT h.id, h.user, h.ts, h.sender, h.kind, h.text
    FROM held_v1 AS h JOIN messages AS m ON m.id = h.id
    WHERE h.ts <> m.ts OR h.sender <> m.sender OR h.kind <> m.kind OR h.text <> m.text;
DROP TABLE held_v1;
";

/// Brings the layout found (`version`, read from `PRAGMA user_version`
/// inside the open write transaction `tx`) up to [`SCHEMA_VERSION`],
/// creating it in a new database. `tx` is committed by the caller, so a
/// migration is all or nothing.
pub(super) fn migrate(tx: &Transaction<'_>, path: &Path, version: i64) -> Result<(), StoreError> {
    let sql = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    // Writing a new layout needs disk space; say so rather than a bare
    // SQLite error, because it is the one write startup makes.
    let migrate = |source| StoreError::Migrate {
        path: path.to_path_buf(),
        from: version,
        source,
    };
    match version {
        SCHEMA_VERSION => {}
        0 | 1 => {
            let old_held: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'held')",
                    [],
                    |r| r.get(0),
                )
                .map_err(sql)?;
            if old_held {
                let has_text: bool = tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('held') WHERE name = 'text')",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(sql)?;
                if !has_text {
                    return Err(StoreError::Corrupt {
                        path: path.to_path_buf(),
                        detail: format!(
                            "user_version {version} but `held` is not the version 1 layout"
                        ),
                    });
                }
                tx.execute_batch(&format!(
                    "ALTER TABLE held RENAME TO held_v1; {SCHEMA} {MIGRATE_V1} {MIGRATE_V3}"
                ))
                .map_err(migrate)?;
            } else {
                tx.execute_batch(SCHEMA).map_err(migrate)?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(migrate)?;
        }
        2 => {
            tx.execute_batch(&format!("{MIGRATE_V2} {MIGRATE_V3}"))
                .map_err(migrate)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(migrate)?;
        }
        3 => {
            tx.execute_batch(MIGRATE_V3).map_err(migrate)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(migrate)?;
        }
        other => {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!(
                    "layout version {other} is not one this chatd knows \
                     (it writes {SCHEMA_VERSION}): made by a newer chatd?"
                ),
            })
        }
    }
    Ok(())
}
