//! The durable store: what the core asks to keep ([`StoreOp`]) and gives
//! back at startup ([`Restored`]).
//!
//! The engine is behind the [`Store`] trait so another can be plugged in
//! later; [`SqliteStore`] is the one `chatd` uses, [`MemoryStore`] is for
//! tests and embedding.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chatcore::{LoginFailures, Message, MessageKind, Restored, StoreOp, Time};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use thiserror::Error;

/// A store failure. The server treats every one as fatal: it cannot keep
/// its promise that what it acknowledged is durable.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database failed.
    #[error("store {path}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The database holds something this version cannot read.
    #[error("store {path}: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// A durable home for the core's state.
pub trait Store: Send {
    /// Reads back everything applied so far.
    fn load(&mut self) -> Result<Restored, StoreError>;

    /// Applies `ops` in order, all or none: one transaction, so the caller
    /// can group every change of a round into one commit (group commit).
    /// When it returns `Ok`, the changes survive a crash.
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;
}

/// A store that keeps state in memory only: for tests and for embedding the
/// server without durability.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    /// The state so far.
    pub state: Restored,
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Restored, StoreError> {
        Ok(self.state.clone())
    }

    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        for op in ops {
            self.state.apply(op);
        }
        Ok(())
    }
}

/// The store on SQLite, in `<data_dir>/chatd.db`.
///
/// Why SQLite: the whole state is one file an operator can inspect with the
/// `sqlite3` shell (once chatd is stopped, see below); transactions are
/// atomic and crash-safe, so a `kill -9` loses nothing committed; write-ahead
/// logging makes a commit one sequential append plus one fsync
/// (`synchronous=FULL`: durable at commit, not just consistent); and it is
/// about as mature and well-tested as storage code gets. `bundled` compiles
/// it in, so no system library version matters.
///
/// The database is opened with `locking_mode=EXCLUSIVE`, so a second chatd
/// pointed at the same data directory fails at startup instead of handing
/// out the same message ids.
///
/// Numbers the core keeps as `u64` (ids, milliseconds) are stored as SQLite
/// 64-bit integers; values fit well below 2^63 in practice, and the
/// comparisons done in SQL (`MAX`) assume so.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The schema. `held` is keyed by (user, id), so a box reads back in id
/// order and holding a message twice keeps one copy, as
/// [`Restored::apply`] does. `login_failures.seq` records update order,
/// because [`Restored::login_failures`] is a list in that order.
const SCHEMA: &str = "
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

/// `u64` to SQLite's `i64`, bit for bit.
fn to_sql(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// The inverse of [`to_sql`].
fn from_sql(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

fn kind_str(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Private => "private",
        MessageKind::Broadcast => "broadcast",
    }
}

impl SqliteStore {
    /// The database file name inside the data directory.
    pub const FILE_NAME: &'static str = "chatd.db";

    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(Self::FILE_NAME);
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(sql)?;
        // Exclusive first, so that entering WAL takes the lock and no
        // shared-memory file is needed.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(sql)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt {
                path,
                detail: format!("cannot switch to WAL mode (journal_mode is {mode})"),
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        // Take the write lock now: a second server on this directory fails
        // here, at startup.
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))
            .map_err(sql)?;
        Ok(SqliteStore { conn, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn load_inner(&self) -> Result<Restored, StoreError> {
        let mut restored = Restored::default();
        let next: Option<i64> = self
            .conn
            .query_row("SELECT next FROM id_reservation WHERE one = 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        restored.next_id = next.map_or(0, from_sql);

        let mut stmt = self
            .conn
            .prepare("SELECT user, id, ts, sender, kind, text FROM held ORDER BY user, id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (user, id, ts, from, kind, text) = row.map_err(|e| self.err(e))?;
            let kind = match kind.as_str() {
                "private" => MessageKind::Private,
                "broadcast" => MessageKind::Broadcast,
                other => return Err(self.corrupt(format!("unknown message kind `{other}`"))),
            };
            let message = Message {
                id: from_sql(id),
                at: Time::from_unix_millis(from_sql(ts)),
                from,
                kind,
                text,
            };
            restored
                .held
                .entry(user)
                .or_default()
                .push(Arc::new(message));
        }
        // SQL orders ids as signed numbers; the core's order is unsigned.
        for boxed in restored.held.values_mut() {
            boxed.sort_by_key(|m| m.id);
        }
        drop(stmt);

        let mut stmt = self
            .conn
            .prepare("SELECT user, at FROM last_seen")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (user, at) = row.map_err(|e| self.err(e))?;
            restored
                .last_seen
                .insert(user, Time::from_unix_millis(from_sql(at)));
        }
        drop(stmt);

        let mut stmt = self
            .conn
            .prepare("SELECT user, ip, count, last, blocked_until FROM login_failures ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (user, ip, count, last, blocked_until) = row.map_err(|e| self.err(e))?;
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| self.corrupt(format!("bad address `{ip}` in login_failures")))?;
            let count = u32::try_from(count)
                .map_err(|_| self.corrupt(format!("bad count {count} in login_failures")))?;
            restored.login_failures.push(LoginFailures {
                user,
                ip,
                count,
                last: Time::from_unix_millis(from_sql(last)),
                blocked_until: blocked_until.map(|t| Time::from_unix_millis(from_sql(t))),
            });
        }
        Ok(restored)
    }
}

/// Applies one op inside an open transaction, mirroring [`Restored::apply`].
fn apply_op(tx: &rusqlite::Transaction<'_>, op: &StoreOp) -> rusqlite::Result<()> {
    match op {
        StoreOp::Hold { user, message } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO held (user, id, ts, sender, kind, text)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                user,
                to_sql(message.id),
                to_sql(message.at.unix_millis()),
                message.from,
                kind_str(message.kind),
                message.text,
            ])?;
        }
        StoreOp::Release { user, id } => {
            tx.prepare_cached("DELETE FROM held WHERE user = ?1 AND id = ?2")?
                .execute(params![user, to_sql(*id)])?;
        }
        StoreOp::ReserveIds { next } => {
            tx.prepare_cached(
                "INSERT INTO id_reservation (one, next) VALUES (1, ?1)
                 ON CONFLICT (one) DO UPDATE SET next = MAX(next, excluded.next)",
            )?
            .execute(params![to_sql(*next)])?;
        }
        StoreOp::Seen { user, at } => {
            tx.prepare_cached(
                "INSERT INTO last_seen (user, at) VALUES (?1, ?2)
                 ON CONFLICT (user) DO UPDATE SET at = MAX(at, excluded.at)",
            )?
            .execute(params![user, to_sql(at.unix_millis())])?;
        }
        StoreOp::LoginFailures(f) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO login_failures (user, ip, count, last, blocked_until, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5,
                         (SELECT COALESCE(MAX(seq), 0) + 1 FROM login_failures))",
            )?
            .execute(params![
                f.user,
                f.ip.to_string(),
                i64::from(f.count),
                to_sql(f.last.unix_millis()),
                f.blocked_until.map(|t| to_sql(t.unix_millis())),
            ])?;
        }
        StoreOp::ClearLoginFailures { user, ip } => {
            tx.prepare_cached("DELETE FROM login_failures WHERE user = ?1 AND ip = ?2")?
                .execute(params![user, ip.to_string()])?;
        }
    }
    Ok(())
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Restored, StoreError> {
        self.load_inner()
    }

    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite { path, source };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql.clone())?;
        for op in ops {
            apply_op(&tx, op).map_err(sql.clone())?;
        }
        tx.commit().map_err(sql)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

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
                id: 1,
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

    fn expected(ops: &[StoreOp]) -> Restored {
        let mut r = Restored::default();
        for op in ops {
            r.apply(op);
        }
        r
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
            assert_eq!(store.load().unwrap(), expected(&ops));
        }
        let mut store = SqliteStore::open(&data).unwrap();
        let got = store.load().unwrap();
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

    fn arb_user() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["alice", "bob", "carol", "x.y-z_1"]).prop_map(String::from)
    }

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    /// Values the store keeps below 2^63 (see [`SqliteStore`]).
    const BIG: u64 = i64::MAX as u64;

    fn arb_op() -> impl Strategy<Value = StoreOp> {
        let message = (
            0..20u64,
            0..BIG,
            arb_user(),
            any::<bool>(),
            "[ -~\té✓]{0,40}",
        )
            .prop_map(|(id, at, from, bcast, text)| {
                Arc::new(Message {
                    id,
                    at: Time::from_unix_millis(at),
                    from,
                    kind: if bcast {
                        MessageKind::Broadcast
                    } else {
                        MessageKind::Private
                    },
                    text,
                })
            });
        prop_oneof![
            4 => (arb_user(), message).prop_map(|(user, message)| StoreOp::Hold { user, message }),
            2 => (arb_user(), 0..20u64).prop_map(|(user, id)| StoreOp::Release { user, id }),
            1 => (0..BIG).prop_map(|next| StoreOp::ReserveIds { next }),
            1 => (arb_user(), 0..BIG).prop_map(|(user, at)| StoreOp::Seen { user, at: Time::from_unix_millis(at) }),
            2 => (arb_user(), arb_ip(), any::<u32>(), 0..BIG, prop::option::of(0..BIG)).prop_map(
                |(user, ip, count, last, until)| StoreOp::LoginFailures(LoginFailures {
                    user,
                    ip,
                    count,
                    last: Time::from_unix_millis(last),
                    blocked_until: until.map(Time::from_unix_millis),
                })
            ),
            1 => (arb_user(), arb_ip()).prop_map(|(user, ip)| StoreOp::ClearLoginFailures { user, ip }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever the ops and however they are grouped into commits, the
        /// store reopened gives back what `Restored::apply` computes.
        #[test]
        fn sqlite_matches_restored_apply(
            batches in prop::collection::vec(prop::collection::vec(arb_op(), 0..12), 0..6)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut model = Restored::default();
            {
                let mut store = SqliteStore::open(dir.path()).unwrap();
                for batch in &batches {
                    store.apply(batch).unwrap();
                    for op in batch {
                        model.apply(op);
                    }
                    prop_assert_eq!(&store.load().unwrap(), &model);
                }
            }
            let mut store = SqliteStore::open(dir.path()).unwrap();
            prop_assert_eq!(store.load().unwrap(), model);
        }
    }
}
