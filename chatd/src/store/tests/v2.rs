//! The version 2 layout, as chatd wrote it before `login_failures` had
//! an index on `seq`.

use std::path::Path;

use super::*;

/// The version 2 schema, verbatim.
pub const SCHEMA: &str = "
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
";

/// Creates `<dir>/chatd.db` as version 2 did.
pub fn open(dir: &Path) -> SqliteStore {
    open_old_layout(dir, &format!("{SCHEMA} PRAGMA user_version = 2;"))
}
