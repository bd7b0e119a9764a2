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
/// version 3 lacked `held_summary` and the index of `held` by user;
/// version 4 keyed `held` by (id, user) with a second index by (user, id),
/// and found a message's last holder by looking; version 5 lacked the
/// groups, version 6 the log of private messages (`recent`), and version 7
/// counted the log's entries in `held_summary` too, and version 8 had no
/// journal (`journal_mark`).
/// [`SqliteStore::open`] migrates them to this one.
pub(super) const SCHEMA_VERSION: i64 = 9;

/// The schema (version [`SCHEMA_VERSION`]).
///
/// A message's text is stored once, in `messages`, not once per receiver:
/// with `persist_deliveries` on, a broadcast to 1000 online users is held
/// for (and later released by) each of them, and writing its text 1000
/// times made commits slow. `held` is only the (user, id) pairs, keyed
/// user first: a page of a box is a walk of one user's neighbouring keys,
/// and confirming a prefix of a box (`Release` up to an id) is one range
/// delete on them. One B-tree, not two: version 4 also kept `held` by
/// (id, user), and writing both trees was most of the store's work during
/// a fan-out (each receiver cost two inserts and two deletes).
///
/// `messages.holders` counts the `held` rows of each message, kept by
/// `apply` once per message and transaction (not once per receiver), so
/// that the row goes with its last holder without a lookup by id. A
/// `messages` row lives exactly as long as some `held` row has its id.
///
/// Holding the same (user, id) twice keeps one copy, as
/// [`StoreModel::apply`] does.
///
/// A broadcast is held as one `held_group` row: a bitmap of its
/// receivers, by each user's bit in `user_index`. A user's group entries
/// are the groups above their `group_cursor` with their bit set, so a
/// confirmation moves one cursor instead of deleting a row per message,
/// and a broadcast to 1000 users writes one row (see `groups.rs` for when
/// a hold becomes a bit and when a row). `messages.holders` counts both
/// kinds of entry; the trigger takes a group with its message.
///
/// A private message for a user who confirms it soon is held as one
/// `recent` row, message and receiver together, keyed by id so that a
/// commit's rows are neighbours; a confirmation moves the user's
/// `recent_cursor`, and the rows behind the oldest entry still held are
/// cut a range at a time (see `recent.rs`). `messages.holders` does not
/// count them: they have no `messages` row.
///
/// `held_summary` is each box's count and last id of the entries in `held`
/// and the groups (those that have any), kept by `apply` in the same
/// transaction, so that startup reads one row per user, not one per held
/// message (`load` must not grow with them). It does not count the log's
/// entries: startup reads the log anyway, and `load` adds them. Counting
/// them cost a summary update for every user in every commit, about as
/// many statements as the log's own rows under load.
///
/// `journal_mark` is the last record of the journal (`chatd.journal`, see
/// `journal.rs`) whose ops this database holds, written in the same
/// transaction as they are: startup replays the records after it.
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
    id      INTEGER PRIMARY KEY,
    ts      INTEGER NOT NULL,
    sender  TEXT    NOT NULL,
    kind    TEXT    NOT NULL CHECK (kind IN ('private', 'broadcast')),
    text    TEXT    NOT NULL,
    holders INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS held (
    user TEXT    NOT NULL,
    id   INTEGER NOT NULL,
    PRIMARY KEY (user, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held_variant (
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
CREATE INDEX IF NOT EXISTS login_failures_by_seq ON login_failures (seq);
CREATE TABLE IF NOT EXISTS held_summary (
    user  TEXT    PRIMARY KEY,
    count INTEGER NOT NULL CHECK (count > 0),
    last  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held_group (
    id        INTEGER PRIMARY KEY,
    receivers BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS user_index (
    user TEXT    PRIMARY KEY,
    bit  INTEGER NOT NULL UNIQUE
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_cursor (
    user TEXT    PRIMARY KEY,
    upto INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recent (
    id     INTEGER PRIMARY KEY,
    user   TEXT    NOT NULL,
    ts     INTEGER NOT NULL,
    sender TEXT    NOT NULL,
    kind   TEXT    NOT NULL CHECK (kind IN ('private', 'broadcast')),
    text   TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS recent_cursor (
    user TEXT    PRIMARY KEY,
    upto INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal_mark (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS a_group_goes_with_its_message AFTER DELETE ON messages
BEGIN
    DELETE FROM held_group WHERE id = old.id;
END;
";

/// Fills what version 5 derives from `held`, from scratch: the summary of
/// each box, and each message's count of holders (a message no box holds
/// goes). The last step of every migration; one pass over `held` each.
pub(super) const FILL_DERIVED: &str = "
DELETE FROM held_summary;
INSERT INTO held_summary (user, count, last)
    SELECT user, COUNT(*), MAX(id) FROM held GROUP BY user;
UPDATE messages SET holders = 0;
UPDATE messages SET holders = c.n
    FROM (SELECT id, COUNT(*) AS n FROM held GROUP BY id) AS c
    WHERE c.id = messages.id;
DELETE FROM messages WHERE holders = 0;
";

/// Moves a version 7 database to version 8: its `held_summary` counted the
/// log's entries (those above their user's cursor), which version 8 counts
/// at load instead. A box's last id may stay one of the log's: `load` takes
/// the larger of the two, and a release that removes entries reads it back
/// from the entries left.
pub(super) const MIGRATE_V7: &str = "
CREATE TEMP TABLE log_entries (user TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO log_entries (user, n)
    SELECT r.user, COUNT(*) FROM recent AS r
    LEFT JOIN recent_cursor AS c ON c.user = r.user
    WHERE r.id > COALESCE(c.upto, 0)
    GROUP BY r.user;
DELETE FROM held_summary
    WHERE count <= (SELECT n FROM log_entries AS l WHERE l.user = held_summary.user);
UPDATE held_summary SET count = count - l.n
    FROM log_entries AS l WHERE l.user = held_summary.user;
DROP TABLE log_entries;
";

/// Moves a version 2, 3 or 4 database to version 5 (then [`FILL_DERIVED`]):
/// `held` and `held_variant` are rebuilt keyed by (user, id), the index of
/// version 4 goes, `messages` gains its count of holders, and versions 2
/// and 3 gain the index on `login_failures.seq` and `held_summary`.
pub(super) const MIGRATE_V2_TO_V5: &str = "
CREATE INDEX IF NOT EXISTS login_failures_by_seq ON login_failures (seq);
DROP INDEX IF EXISTS held_by_user;
ALTER TABLE held RENAME TO held_v4;
ALTER TABLE held_variant RENAME TO held_variant_v4;
ALTER TABLE messages ADD COLUMN holders INTEGER NOT NULL DEFAULT 0;
CREATE TABLE held (
    user TEXT    NOT NULL,
    id   INTEGER NOT NULL,
    PRIMARY KEY (user, id)
) WITHOUT ROWID;
CREATE TABLE held_variant (
    user   TEXT    NOT NULL,
    id     INTEGER NOT NULL,
    ts     INTEGER NOT NULL,
    sender TEXT    NOT NULL,
    kind   TEXT    NOT NULL CHECK (kind IN ('private', 'broadcast')),
    text   TEXT    NOT NULL,
    PRIMARY KEY (user, id)
) WITHOUT ROWID;
INSERT INTO held (user, id) SELECT user, id FROM held_v4;
INSERT INTO held_variant (user, id, ts, sender, kind, text)
    SELECT user, id, ts, sender, kind, text FROM held_variant_v4;
DROP TABLE held_v4;
DROP TABLE held_variant_v4;
CREATE TABLE IF NOT EXISTS held_summary (
    user  TEXT    PRIMARY KEY,
    count INTEGER NOT NULL CHECK (count > 0),
    last  INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Moves a version 0/1 database (whose `held` has been renamed `held_v1`,
/// and [`SCHEMA`] run) to version 5 (then [`FILL_DERIVED`]): each message once into `messages` (the
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
                    "ALTER TABLE held RENAME TO held_v1; {SCHEMA} {MIGRATE_V1} {FILL_DERIVED}"
                ))
                .map_err(migrate)?;
            } else {
                tx.execute_batch(SCHEMA).map_err(migrate)?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(migrate)?;
        }
        7 | 8 => {
            if version == 7 {
                tx.execute_batch(MIGRATE_V7).map_err(migrate)?;
            }
            // `journal_mark`, new in version 9.
            tx.execute_batch(SCHEMA).map_err(migrate)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(migrate)?;
        }
        2..=6 => {
            if version < 5 {
                tx.execute_batch(&format!("{MIGRATE_V2_TO_V5} {FILL_DERIVED}"))
                    .map_err(migrate)?;
            }
            // The tables versions 6, 7 and 9 added.
            tx.execute_batch(SCHEMA).map_err(migrate)?;
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
