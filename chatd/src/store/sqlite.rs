//! The SQLite engine: [`SqliteStore`] opens the database (migrating an
//! older layout), reads the state back, and applies each round's ops in one
//! transaction.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chatcore::{
    BoxSummary, LoginFailures, Message, MessageId, MessageKind, Restored, StoreOp, Time,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::error::StoreError;
use super::groups::{self, Groups, Pending, View, GROUP_MIN};
use super::recent::Recent;
use super::schema::{self, SCHEMA_VERSION};
use super::Store;

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
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    /// Whether `held_variant` may have rows (see [`Batch`]).
    pub(super) variants: bool,
    /// Every user's bit and cursor for broadcasts held as one row.
    pub(super) groups: Groups,
    /// The log of private messages, as far as memory knows it.
    pub(super) recent: Recent,
    /// Whether `recent` must be read again before the next commit (the
    /// last one failed, and the memory may be ahead of the database).
    pub(super) recent_stale: bool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Every failed-login record, in update order.
pub(super) const LOAD_FAILURES: &str =
    "SELECT user, ip, count, last, blocked_until FROM login_failures ORDER BY seq";

/// `u64` to SQLite's `i64`, bit for bit.
pub(super) fn to_sql(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// The inverse of [`to_sql`].
pub(super) fn from_sql(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// A message's columns: id, ts, sender, kind, text.
#[cfg(test)]
pub(super) type MessageRow = (i64, i64, String, String, String);

/// Reads [`MessageRow`] from the given columns.
#[cfg(test)]
pub(super) fn message_row_at(
    r: &rusqlite::Row<'_>,
    at: [usize; 5],
) -> rusqlite::Result<MessageRow> {
    Ok((
        r.get(at[0])?,
        r.get(at[1])?,
        r.get(at[2])?,
        r.get(at[3])?,
        r.get(at[4])?,
    ))
}

pub(super) fn kind_str(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Private => "private",
        MessageKind::Broadcast => "broadcast",
    }
}

/// The inverse of [`kind_str`]; `None` for a kind no chatd writes.
pub(super) fn kind_from_str(kind: &str) -> Option<MessageKind> {
    match kind {
        "private" => Some(MessageKind::Private),
        "broadcast" => Some(MessageKind::Broadcast),
        _ => None,
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
        let mut conn = Connection::open(&path).map_err(sql)?;
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
        // Room for every statement `apply` and `load` use, so none is
        // compiled twice.
        conn.set_prepared_statement_cache_capacity(32);
        // Take the write lock now: a second server on this directory fails
        // here, at startup.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        schema::migrate(&tx, &path, version)?;
        let migrated = version != SCHEMA_VERSION;
        tx.commit().map_err(|source| {
            if migrated {
                // A migration's commit needs disk space: say so.
                StoreError::Migrate {
                    path: path.clone(),
                    from: version,
                    source,
                }
            } else {
                sql(source)
            }
        })?;
        let variants = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM held_variant)", [], |r| {
                r.get(0)
            })
            .map_err(sql)?;
        let groups = Groups::load(&conn).map_err(sql)?;
        let recent = Recent::load(&conn).map_err(sql)?;
        Ok(SqliteStore {
            conn,
            path,
            variants,
            groups,
            recent,
            recent_stale: false,
        })
    }

    /// Reads the log's entries again if a failed commit may have left the
    /// memory ahead of the database (see [`Recent`]).
    fn reread_recent(&mut self) -> Result<(), StoreError> {
        if self.recent_stale {
            let limits = self.recent.limits;
            self.recent = Recent::load(&self.conn).map_err(|e| self.err(e))?;
            self.recent.limits = limits;
            self.recent_stale = false;
        }
        Ok(())
    }

    /// The last journal record this database holds (0 if none): see
    /// `journal.rs`.
    pub(super) fn journal_mark(&self) -> Result<u64, StoreError> {
        self.single_value("SELECT seq FROM journal_mark WHERE one = 1")
    }

    /// The value `sql` reads from a table of one row, 0 before the row is
    /// written.
    fn single_value(&self, sql: &str) -> Result<u64, StoreError> {
        let value: Option<i64> = self
            .conn
            .query_row(sql, [], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(value.map_or(0, from_sql))
    }

    /// Applies `ops` in one transaction, which also records `mark` as the
    /// last journal record the database holds, if given.
    pub(super) fn apply_with(
        &mut self,
        ops: &[StoreOp],
        mark: Option<u64>,
    ) -> Result<(), StoreError> {
        self.reread_recent()?;
        let result = apply_all(
            &mut self.conn,
            ops,
            mark,
            self.variants,
            &self.groups,
            &mut self.recent,
        );
        if result.is_err() {
            if !self.conn.is_autocommit() {
                // Dropping the transaction rolls it back; should that have
                // failed too, make sure the next `apply` starts afresh
                // rather than inside what is left of this one.
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.recent_stale = true;
        }
        let (variants, pending) = result.map_err(|e| self.err(e))?;
        self.variants = variants;
        self.groups.commit(pending);
        Ok(())
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

    /// A `messages` (or `held_variant`) row as a [`Message`].
    pub(super) fn message(
        &self,
        id: i64,
        ts: i64,
        from: String,
        kind: &str,
        text: String,
    ) -> Result<Message, StoreError> {
        let kind = kind_from_str(kind)
            .ok_or_else(|| self.corrupt(format!("unknown message kind `{kind}`")))?;
        Ok(Message {
            id: from_sql(id),
            at: Time::from_unix_millis(from_sql(ts)),
            from,
            kind,
            text,
        })
    }

    fn load_inner(&self) -> Result<Restored, StoreError> {
        let mut restored = self.load_other()?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT user, count, last FROM held_summary")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (user, count, last) = row.map_err(|e| self.err(e))?;
            let count = usize::try_from(count)
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| self.corrupt(format!("bad count {count} in held_summary")))?;
            restored.held.insert(
                user,
                BoxSummary {
                    count,
                    last: from_sql(last),
                },
            );
        }
        for (user, count, last) in self.recent.boxes() {
            let last = from_sql(last);
            restored
                .held
                .entry(user.to_owned())
                .and_modify(|b| {
                    b.count += count;
                    b.last = b.last.max(last);
                })
                .or_insert(BoxSummary { count, last });
        }
        Ok(restored)
    }

    /// One page of a box: see [`Store::held_page`].
    fn held_page_inner(
        &self,
        user: &str,
        after: MessageId,
        upto: MessageId,
        max: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT h.id, m.id,
                        COALESCE(v.ts, m.ts), COALESCE(v.sender, m.sender),
                        COALESCE(v.kind, m.kind), COALESCE(v.text, m.text)
                 FROM held AS h
                 LEFT JOIN messages AS m ON m.id = h.id
                 LEFT JOIN held_variant AS v ON v.user = h.user AND v.id = h.id
                 WHERE h.user = ?1 AND h.id > ?2 AND h.id <= ?3
                 ORDER BY h.id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![user, to_sql(after), to_sql(upto)], |r| {
                Ok((
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, i64>(0)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut page = Vec::new();
        // `max` rows are taken here, not with `LIMIT ?`: SQLite plans with
        // a bound limit's value, so a statement with one is prepared again
        // each time it is bound (13 % of the time a drain spent reading).
        // The rows come in the primary key's order, so none is read past
        // the last one taken.
        for row in rows.take(max) {
            let (found, ts, from, kind, text, id) = row.map_err(|e| self.err(e))?;
            let (Some(_), Some(ts), Some(from), Some(kind), Some(text)) =
                (found, ts, from, kind, text)
            else {
                return Err(
                    self.corrupt(format!("held message {} is not in messages", from_sql(id)))
                );
            };
            page.push(Arc::new(self.message(id, ts, from, &kind, text)?));
        }
        drop(stmt);
        self.merge_group_entries(user, after, upto, max, &mut page)?;
        self.merge_recent_entries(user, after, upto, max, &mut page)?;
        Ok(page)
    }

    /// Adds to `page` (one page of `user`'s rows and group entries, in id
    /// order) the entries `user` holds in the log in the same window,
    /// keeping the first `max` in id order.
    fn merge_recent_entries(
        &self,
        user: &str,
        after: MessageId,
        upto: MessageId,
        max: usize,
        page: &mut Vec<Arc<Message>>,
    ) -> Result<(), StoreError> {
        let ids = self
            .recent
            .ids(user, to_sql(after), page_end(page, upto, max), max);
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            let message = super::recent::read(&self.conn, id)
                .map_err(|e| self.err(e))?
                .ok_or_else(|| self.corrupt(format!("held message {id} is not in recent")))?;
            found.push(Arc::new(message));
        }
        merge_into(page, found, max);
        Ok(())
    }

    /// Adds to `page` (one page of `user`'s rows, in id order) the
    /// entries `user` holds through groups in the same window, keeping the
    /// first `max` of both in id order.
    fn merge_group_entries(
        &self,
        user: &str,
        after: MessageId,
        upto: MessageId,
        max: usize,
        page: &mut Vec<Arc<Message>>,
    ) -> Result<(), StoreError> {
        let Some(&bit) = self.groups.bits.get(user) else {
            return Ok(());
        };
        let cursor = self.groups.cursors.get(user).copied().unwrap_or(0);
        let from = to_sql(after).max(cursor);
        let to = page_end(page, upto, max);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT g.id, g.receivers, m.ts, m.sender, m.kind, m.text
                 FROM held_group AS g JOIN messages AS m ON m.id = g.id
                 WHERE g.id > ?1 AND g.id <= ?2
                 ORDER BY g.id",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query(params![from, to]).map_err(|e| self.err(e))?;
        let mut found = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            if found.len() >= max {
                break;
            }
            let bitmap = row
                .get_ref(1)
                .and_then(|v| Ok(v.as_blob()?))
                .map_err(|e| self.err(e))?;
            if !groups::has(bitmap, bit) {
                continue;
            }
            let fields = (|| -> rusqlite::Result<_> {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })()
            .map_err(|e| self.err(e))?;
            let (id, ts, from, kind, text) = fields;
            found.push(Arc::new(self.message(id, ts, from, &kind, text)?));
        }
        merge_into(page, found, max);
        Ok(())
    }

    /// Everything but the boxes.
    pub(super) fn load_other(&self) -> Result<Restored, StoreError> {
        let mut restored = Restored {
            next_id: self.single_value("SELECT next FROM id_reservation WHERE one = 1")?,
            ..Restored::default()
        };

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

        let mut stmt = self.conn.prepare(LOAD_FAILURES).map_err(|e| self.err(e))?;
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

/// The largest id an entry merged into `page` (one page of at most `max`
/// entries, in id order, for a window ending at `upto`) can have: entries
/// past the last one a full page keeps cannot make it in.
fn page_end(page: &[Arc<Message>], upto: MessageId, max: usize) -> i64 {
    match page.last() {
        Some(last) if page.len() >= max => to_sql(last.id),
        _ => to_sql(upto),
    }
}

/// Merges `found` (entries of one box kept elsewhere, in id order) into
/// `page`, keeping the first `max` of both in id order.
fn merge_into(page: &mut Vec<Arc<Message>>, found: Vec<Arc<Message>>, max: usize) {
    if found.is_empty() {
        return;
    }
    page.extend(found);
    page.sort_by_key(|m| m.id);
    page.truncate(max);
}

/// What one `apply` has learnt about the `messages` row of an id: the
/// message last held under that id (by address: every hold of one
/// broadcast shares one `Arc`) and whether the row is that message. Saves
/// re-checking the row for each of a broadcast's receivers.
type Known = HashMap<i64, (*const Message, bool)>;

/// How one transaction changed one box.
#[derive(Default)]
struct BoxChange {
    /// Entries added minus entries removed.
    delta: i64,
    /// The largest id added.
    max_added: Option<i64>,
    /// Whether any entry was removed (then the last id is read back).
    removed: bool,
}

/// One transaction's ops, and the bookkeeping they leave to be done once,
/// at its end ([`Batch::finish`]), rather than once per op: a broadcast
/// held for 1000 users and released by each of them touched each box's
/// summary, and its message's count of holders, 1000 times.
pub(super) struct Batch<'a> {
    view: View<'a>,
    recent: &'a mut Recent,
    known: Known,
    boxes: HashMap<&'a str, BoxChange>,
    /// Per message id: holders added minus holders removed, beyond the
    /// one a row written in this transaction starts with.
    holders: HashMap<i64, i64>,
    /// Whether `held_variant` may have rows: without any, a release need
    /// not look there.
    variants: bool,
}

impl<'a> Batch<'a> {
    /// A batch for a store whose `held_variant` may (or surely does not)
    /// have rows, and with these groups.
    pub(super) fn new(variants: bool, groups: &'a Groups, recent: &'a mut Recent) -> Self {
        Batch {
            view: View::new(groups),
            recent,
            known: Known::default(),
            boxes: HashMap::new(),
            holders: HashMap::new(),
            variants,
        }
    }

    /// Notes one entry added to `user`'s box, by a row or a bit.
    fn entry_added(&mut self, user: &'a str, id: i64) {
        let change = self.boxes.entry(user).or_default();
        change.delta += 1;
        change.max_added = change.max_added.max(Some(id));
    }

    /// Brings `held_summary` and `messages.holders` up to date with the
    /// ops applied, one statement per touched box and per touched message.
    /// A box that only grew takes the larger last id; a box that lost
    /// entries is emptied or has its last id read back from the key (a
    /// lookup, not a scan), so the summary is exact whatever the order of
    /// holds and releases was. A message with no holder left loses its
    /// row.
    pub(super) fn finish(
        self,
        tx: &rusqlite::Transaction<'_>,
    ) -> rusqlite::Result<(bool, Pending)> {
        for (user, change) in &self.boxes {
            let delta = change.delta;
            if !change.removed {
                if delta > 0 {
                    tx.prepare_cached(
                        "INSERT INTO held_summary (user, count, last) VALUES (?1, ?2, ?3)
                         ON CONFLICT (user) DO UPDATE
                         SET count = count + excluded.count, last = MAX(last, excluded.last)",
                    )?
                    .execute(params![user, delta, change.max_added])?;
                }
                continue;
            }
            let emptied = tx
                .prepare_cached("DELETE FROM held_summary WHERE user = ?1 AND count + ?2 <= 0")?
                .execute(params![user, delta])?;
            if emptied > 0 {
                continue;
            }
            if change.max_added.is_none() {
                // Only removed, and not emptied: the last entry stays (a
                // release takes a prefix, so losing it empties the box).
                tx.prepare_cached("UPDATE held_summary SET count = count + ?2 WHERE user = ?1")?
                    .execute(params![user, delta])?;
                continue;
            }
            // Added and removed: the last id is read back, from the rows
            // and the groups. A count that does not grow cannot be
            // inserted (it must be positive), and needs no insert: a box
            // that lost entries had a summary, or gained them here.
            let by_row: Option<i64> = tx
                .prepare_cached("SELECT MAX(id) FROM held WHERE user = ?1")?
                .query_row(params![user], |r| r.get(0))?;
            let last = by_row.max(self.view.last(tx, user)?);
            let sql = if delta > 0 {
                "INSERT INTO held_summary (user, count, last) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user) DO UPDATE
                 SET count = count + excluded.count, last = excluded.last"
            } else {
                "UPDATE held_summary SET count = count + ?2, last = ?3 WHERE user = ?1"
            };
            tx.prepare_cached(sql)?
                .execute(params![user, delta, last])?;
        }
        for (id, delta) in &self.holders {
            if *delta < 0 {
                let gone = tx
                    .prepare_cached("DELETE FROM messages WHERE id = ?1 AND holders + ?2 <= 0")?
                    .execute(params![id, delta])?;
                if gone > 0 {
                    continue;
                }
            }
            if *delta != 0 {
                tx.prepare_cached("UPDATE messages SET holders = holders + ?2 WHERE id = ?1")?
                    .execute(params![id, delta])?;
            }
        }
        Ok((self.variants, self.view.into_pending()))
    }
}

/// Applies one op on its own, bookkeeping included (for tests and
/// migrations that write ops one at a time).
#[cfg(test)]
pub(super) fn apply_one(tx: &rusqlite::Transaction<'_>, op: &StoreOp) -> rusqlite::Result<()> {
    // Only for stores without groups: the batch sees none.
    let groups = Groups::default();
    let mut recent = Recent::default();
    // Never the log: these stores predate it.
    recent.max_id = i64::MAX;
    let mut batch = Batch::new(true, &groups, &mut recent);
    apply_op(tx, op, &mut batch)?;
    batch.finish(tx).map(drop)
}

/// Makes sure `messages` has a row for `message`'s id; returns whether
/// that row is `message` (else the box entry is a variant), and whether it
/// is new. A new row starts with one holder: the hold that wrote it.
fn store_message(
    tx: &rusqlite::Transaction<'_>,
    message: &Message,
) -> rusqlite::Result<(bool, bool)> {
    let id = to_sql(message.id);
    let ts = to_sql(message.at.unix_millis());
    let kind = kind_str(message.kind);
    let added = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO messages (id, ts, sender, kind, text, holders)
             VALUES (?1, ?2, ?3, ?4, ?5, 1)",
        )?
        .execute(params![id, ts, message.from, kind, message.text])?;
    if added == 1 {
        return Ok((true, true));
    }
    let same = tx
        .prepare_cached(
            "SELECT ts = ?2 AND sender = ?3 AND kind = ?4 AND text = ?5 FROM messages WHERE id = ?1",
        )?
        .query_row(params![id, ts, message.from, kind, message.text], |r| {
            r.get(0)
        })?;
    Ok((same, false))
}

/// Writes one (user name, address) pair's failed-login record, last in
/// update order.
pub(super) const RECORD_FAILURES: &str =
    "INSERT OR REPLACE INTO login_failures (user, ip, count, last, blocked_until, seq)
     VALUES (?1, ?2, ?3, ?4, ?5, (SELECT COALESCE(MAX(seq), 0) + 1 FROM login_failures))";

/// Applies one op inside an open transaction, mirroring [`chatcore::StoreModel::apply`].
pub(super) fn apply_op<'a>(
    tx: &rusqlite::Transaction<'_>,
    op: &'a StoreOp,
    batch: &mut Batch<'a>,
) -> rusqlite::Result<()> {
    match op {
        StoreOp::Hold { user, message } => {
            let id = to_sql(message.id);
            if batch.recent.takes(user, id) {
                // The log counts its own entries (not `held_summary`).
                batch.recent.hold(tx, user, message)?;
                return Ok(());
            }
            if batch.recent.holds(user, id) {
                return Ok(());
            }
            batch.recent.seen(id);
            let ptr = Arc::as_ptr(message);
            let (same, fresh) = match batch.known.get(&id) {
                Some(&(seen, same)) if seen == ptr => (same, false),
                _ => {
                    let (same, fresh) = store_message(tx, message)?;
                    batch.known.insert(id, (ptr, same));
                    (same, fresh)
                }
            };
            // An id seen before may be held for this user by its group.
            if !fresh && batch.view.holds(tx, user, id)? {
                return Ok(());
            }
            let added = insert_row(tx, user, id)?;
            // A new row already counts this hold (a private message then
            // needs no update of its row at the end).
            match (fresh, added) {
                (true, false) => *batch.holders.entry(id).or_default() -= 1,
                (false, true) => *batch.holders.entry(id).or_default() += 1,
                _ => {}
            }
            if !added {
                return Ok(());
            }
            batch.entry_added(user, id);
            if !same {
                insert_variant(tx, user, message)?;
                batch.variants = true;
            }
        }
        StoreOp::Release { user, upto } => {
            let upto = to_sql(*upto);
            let mut stmt =
                tx.prepare_cached("DELETE FROM held WHERE user = ?1 AND id <= ?2 RETURNING id")?;
            let mut rows = stmt.query(params![user, upto])?;
            let mut removed = 0;
            while let Some(row) = rows.next()? {
                *batch.holders.entry(row.get(0)?).or_default() -= 1;
                removed += 1;
            }
            drop(rows);
            if removed > 0 && batch.variants {
                tx.prepare_cached("DELETE FROM held_variant WHERE user = ?1 AND id <= ?2")?
                    .execute(params![user, upto])?;
            }
            let Batch { view, holders, .. } = batch;
            view.release(tx, user, upto, |id| {
                *holders.entry(id).or_default() -= 1;
                removed += 1;
            })?;
            // The log's entries are not in `held_summary`.
            batch.recent.release(tx, user, upto)?;
            if removed == 0 {
                return Ok(());
            }
            let change = batch.boxes.entry(user.as_str()).or_default();
            change.delta -= removed;
            change.removed = true;
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
            tx.prepare_cached(RECORD_FAILURES)?.execute(params![
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
        self.reread_recent()?;
        self.load_inner()
    }

    fn held_page(
        &mut self,
        user: &str,
        after: MessageId,
        upto: MessageId,
        max: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        self.reread_recent()?;
        self.held_page_inner(user, after, upto, max)
    }

    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.apply_with(ops, None)
    }
}

/// `ops` in one transaction, with the journal's `mark` if given. Returns whether `held_variant` may have rows
/// afterwards, and the groups' new bits and cursors.
fn apply_all(
    conn: &mut Connection,
    ops: &[StoreOp],
    mark: Option<u64>,
    variants: bool,
    groups: &Groups,
    recent: &mut Recent,
) -> rusqlite::Result<(bool, Pending)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut batch = Batch::new(variants, groups, recent);
    let mut i = 0;
    while i < ops.len() {
        let run = hold_run(&ops[i..]);
        if run >= GROUP_MIN && hold_group(&tx, &ops[i..i + run], &mut batch)? {
            i += run;
            continue;
        }
        apply_op(&tx, &ops[i], &mut batch)?;
        i += 1;
    }
    // Entries moved out of the log, kept as long as the batch that counts
    // them in their boxes' summaries.
    let taken = batch.recent.take_oldest(&tx)?;
    for (user, message) in &taken {
        move_to_held(&tx, user, message, &mut batch)?;
    }
    batch.recent.cut(&tx)?;
    let done = batch.finish(&tx)?;
    if let Some(mark) = mark {
        tx.prepare_cached("INSERT OR REPLACE INTO journal_mark (one, seq) VALUES (1, ?1)")?
            .execute(params![to_sql(mark)])?;
    }
    tx.commit()?;
    Ok(done)
}

/// How many holds of one message (one `Arc`) start `ops`.
fn hold_run(ops: &[StoreOp]) -> usize {
    let Some(StoreOp::Hold { message, .. }) = ops.first() else {
        return 0;
    };
    ops.iter()
        .take_while(|op| matches!(op, StoreOp::Hold { message: m, .. } if Arc::ptr_eq(m, message)))
        .count()
}

/// Holds a run of holds of one message as a group, if its row is new;
/// returns false (having done nothing but learn about the row) if not.
fn hold_group<'a>(
    tx: &rusqlite::Transaction<'_>,
    run: &'a [StoreOp],
    batch: &mut Batch<'a>,
) -> rusqlite::Result<bool> {
    let Some(StoreOp::Hold { message, .. }) = run.first() else {
        return Ok(false);
    };
    let id = to_sql(message.id);
    if batch.known.contains_key(&id) {
        return Ok(false);
    }
    // Whoever holds this id in the log holds it already.
    let users: Vec<&'a str> = run
        .iter()
        .filter_map(|op| match op {
            StoreOp::Hold { user, .. } if !batch.recent.holds(user, id) => Some(user.as_str()),
            _ => None,
        })
        .collect();
    batch.recent.seen(id);
    let users = users.into_iter();
    let (same, fresh) = store_message(tx, message)?;
    batch.known.insert(id, (Arc::as_ptr(message), same));
    if !fresh {
        return Ok(false);
    }
    let mut by_row = Vec::new();
    let mut held = batch.view.hold(tx, id, users, &mut by_row)?;
    for user in by_row {
        if insert_row(tx, user, id)? {
            held.push(user);
        }
    }
    // The new row counts one holder already.
    *batch.holders.entry(id).or_default() += i64::try_from(held.len()).unwrap_or(i64::MAX) - 1;
    for user in held {
        batch.entry_added(user, id);
    }
    Ok(true)
}

/// Holds an entry taken out of the log by a `held` row instead: a new
/// entry of its box's summary, which does not count the log's.
fn move_to_held<'a>(
    tx: &rusqlite::Transaction<'_>,
    user: &'a str,
    message: &Message,
    batch: &mut Batch<'a>,
) -> rusqlite::Result<()> {
    let id = to_sql(message.id);
    let (same, fresh) = store_message(tx, message)?;
    let added = insert_row(tx, user, id)?;
    match (fresh, added) {
        (true, false) => *batch.holders.entry(id).or_default() -= 1,
        (false, true) => *batch.holders.entry(id).or_default() += 1,
        _ => {}
    }
    if added {
        batch.entry_added(user, id);
    }
    if added && !same {
        insert_variant(tx, user, message)?;
        batch.variants = true;
    }
    Ok(())
}

/// Keeps `user`'s entry of `message` apart from the `messages` row of its
/// id, which is another message.
fn insert_variant(
    tx: &rusqlite::Transaction<'_>,
    user: &str,
    message: &Message,
) -> rusqlite::Result<()> {
    insert_copy(
        tx,
        "INSERT INTO held_variant (user, id, ts, sender, kind, text)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        user,
        message,
    )
}

/// Runs `sql`, an insert of one user's whole copy of a message (a
/// `held_variant` or `recent` row), with the user and the message's id,
/// time, sender, kind and text as `?1` to `?6`.
pub(super) fn insert_copy(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    user: &str,
    message: &Message,
) -> rusqlite::Result<()> {
    tx.prepare_cached(sql)?.execute(params![
        user,
        to_sql(message.id),
        to_sql(message.at.unix_millis()),
        message.from,
        kind_str(message.kind),
        message.text,
    ])?;
    Ok(())
}

/// Holds message `id` for `user` by a `held` row; false if it was held so
/// already.
fn insert_row(tx: &rusqlite::Transaction<'_>, user: &str, id: i64) -> rusqlite::Result<bool> {
    let added = tx
        .prepare_cached("INSERT OR IGNORE INTO held (user, id) VALUES (?1, ?2)")?
        .execute(params![user, id])?;
    Ok(added == 1)
}
