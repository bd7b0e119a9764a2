//! The version 4 layout: version 3's tables, plus `held_summary` and a
//! second index of `held` by (user, id). Its boxes are written with
//! [`apply`](super::v3::apply) and then given what version 4 added, exactly as
//! the version 3 to 4 migration did.

use super::*;

/// Turns a version 3 database written by [`v3`](super::v3) into the one
/// version 4 would have kept: the index and the summaries.
pub fn from_v3(store: &mut SqliteStore) {
    store
        .conn
        .execute_batch(
            "BEGIN IMMEDIATE;
             CREATE INDEX IF NOT EXISTS held_by_user ON held (user, id);
             CREATE TABLE IF NOT EXISTS held_summary (
                 user  TEXT    PRIMARY KEY,
                 count INTEGER NOT NULL CHECK (count > 0),
                 last  INTEGER NOT NULL
             ) WITHOUT ROWID;
             INSERT INTO held_summary (user, count, last)
                 SELECT user, COUNT(*), MAX(id) FROM held GROUP BY user;
             PRAGMA user_version = 4;
             COMMIT;",
        )
        .unwrap();
}
