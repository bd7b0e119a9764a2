//! Private messages held as an append-only log: `recent` keeps a message
//! held for one user in one row keyed by its id, so the rows a commit
//! writes sit side by side at the end of one B-tree instead of one in each
//! receiver's part of `held`; a confirmation moves the user's cursor
//! (`recent_cursor`) instead of deleting rows, and the log is cut behind
//! the oldest entry still held, a range at a time.
//!
//! Under load this is what durability costs most: during S1 at 50 pairs
//! (about 50 private messages a commit, for as many users) a commit
//! dirtied about 37 pages of `held`, `messages` and the summaries, each
//! appended to the WAL; with the log about 7.
//!
//! A hold goes to the log only for a message newer than every message the
//! store was ever asked to hold (so nobody holds that id anywhere yet) and
//! a user whose cursor is below its id; anything else is a row in `held`
//! as before. So a user's entry of one id lives in one place, and the
//! store stays exactly [`chatcore::StoreModel`].
//!
//! What is in memory: per user, the ids of their entries in the log, in
//! order, and their cursor. The log is kept short: an entry more than
//! [`RECENT_MAX`] ids behind the newest (a user who is offline or does not
//! confirm) goes to `held`, and so does the oldest half when there are
//! more than [`RECENT_MAX`] entries. So the rows of the log span at most
//! [`RECENT_MAX`] + [`CUT_EVERY`] ids, and a startup reads no more than
//! that, however many messages are held.

use std::collections::{HashMap, VecDeque};

use chatcore::Message;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// Entries kept in the log at most, and how far (in ids) an entry may lag
/// behind the newest; past either, entries go to `held`. Confirmations
/// come back within `confirm_delay` (0.2 s), so at 70,000 messages a
/// second about 14,000 are waiting in the log, over a span of as many ids.
pub(super) const RECENT_MAX: usize = 32_768;

/// Rows of the log already confirmed are deleted once this many ids lie
/// behind the oldest entry still held, in one range.
const CUT_EVERY: i64 = 1024;

/// The log's entries in memory, read at open.
#[derive(Debug, Default)]
pub(super) struct Recent {
    /// The largest id the store was ever asked to hold (an id above it is
    /// held nowhere).
    pub(super) max_id: i64,
    /// Every row below this id is gone.
    cut: i64,
    /// Per user, the ids of their entries in the log, oldest first.
    entries: HashMap<String, VecDeque<i64>>,
    /// Per user, the largest id they confirmed of the log.
    cursors: HashMap<String, i64>,
    /// How many entries `entries` has.
    len: usize,
    /// Instead of [`RECENT_MAX`] and [`CUT_EVERY`]: tests shorten the log
    /// and cut it more often to reach those paths with few messages.
    pub(super) limits: Option<(usize, i64)>,
}

impl Recent {
    /// Reads the log's entries and the largest id held anywhere.
    pub(super) fn load(conn: &Connection) -> rusqlite::Result<Recent> {
        let mut recent = Recent {
            max_id: conn.query_row(
                "SELECT MAX(COALESCE((SELECT MAX(id) FROM messages), 0),
                            COALESCE((SELECT MAX(id) FROM recent), 0))",
                [],
                |r| r.get(0),
            )?,
            ..Recent::default()
        };
        let mut stmt = conn.prepare("SELECT user, upto FROM recent_cursor")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (user, upto) = row?;
            recent.cursors.insert(user, upto);
        }
        let mut stmt = conn.prepare("SELECT id, user FROM recent ORDER BY id")?;
        let mut first = None;
        for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
            let (id, user) = row?;
            first.get_or_insert(id);
            if id > recent.cursor(&user) {
                recent.entries.entry(user).or_default().push_back(id);
                recent.len += 1;
            }
        }
        recent.cut = first.unwrap_or(0);
        Ok(recent)
    }

    fn max_len(&self) -> usize {
        self.limits.map_or(RECENT_MAX, |(max, _)| max)
    }

    fn cut_every(&self) -> i64 {
        self.limits.map_or(CUT_EVERY, |(_, every)| every)
    }

    fn cursor(&self, user: &str) -> i64 {
        self.cursors.get(user).copied().unwrap_or(0)
    }

    /// The oldest entry still held in the log.
    fn oldest(&self) -> Option<i64> {
        self.entries
            .values()
            .filter_map(|q| q.front().copied())
            .min()
    }

    /// Whether a hold of `id` for `user` may go to the log.
    pub(super) fn takes(&self, user: &str, id: i64) -> bool {
        id > self.max_id && id > self.cursor(user)
    }

    /// Whether `user` holds `id` in the log.
    pub(super) fn holds(&self, user: &str, id: i64) -> bool {
        self.entries
            .get(user)
            .is_some_and(|q| q.binary_search(&id).is_ok())
    }

    /// Each user with entries in the log: how many, and the newest. The
    /// boxes' summaries (`held_summary`) count the other entries.
    pub(super) fn boxes(&self) -> impl Iterator<Item = (&str, usize, i64)> {
        self.entries
            .iter()
            .filter_map(|(user, q)| Some((user.as_str(), q.len(), *q.back()?)))
    }

    /// `user`'s entries in the log with `after < id <= upto`, at most `max`.
    pub(super) fn ids(&self, user: &str, after: i64, upto: i64, max: usize) -> Vec<i64> {
        let Some(q) = self.entries.get(user) else {
            return Vec::new();
        };
        let from = q.partition_point(|&id| id <= after);
        q.range(from..)
            .take_while(|&&id| id <= upto)
            .take(max)
            .copied()
            .collect()
    }

    /// Holds `message` for `user` in the log (see [`Recent::takes`]).
    pub(super) fn hold(
        &mut self,
        tx: &Transaction<'_>,
        user: &str,
        message: &Message,
    ) -> rusqlite::Result<()> {
        let id = super::sqlite::to_sql(message.id);
        super::sqlite::insert_copy(
            tx,
            "INSERT INTO recent (user, id, ts, sender, kind, text)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            user,
            message,
        )?;
        self.max_id = id;
        // A user with entries is the common case: no name copied for it.
        match self.entries.get_mut(user) {
            Some(q) => q.push_back(id),
            None => {
                self.entries.insert(user.to_string(), VecDeque::from([id]));
            }
        }
        self.len += 1;
        Ok(())
    }

    /// Notes that a hold of `id` was written elsewhere.
    pub(super) fn seen(&mut self, id: i64) {
        self.max_id = self.max_id.max(id);
    }

    /// Releases `user`'s entries up to `upto`; returns how many.
    pub(super) fn release(
        &mut self,
        tx: &Transaction<'_>,
        user: &str,
        upto: i64,
    ) -> rusqlite::Result<i64> {
        let Some(q) = self.entries.get_mut(user) else {
            return Ok(0);
        };
        let n = q.partition_point(|&id| id <= upto);
        if n == 0 {
            return Ok(0);
        }
        q.drain(..n);
        if q.is_empty() {
            self.entries.remove(user);
        }
        self.len -= n;
        tx.prepare_cached(
            "INSERT INTO recent_cursor (user, upto) VALUES (?1, ?2)
             ON CONFLICT (user) DO UPDATE SET upto = MAX(upto, excluded.upto)",
        )?
        .execute(params![user, upto])?;
        let cursor = self.cursors.entry(user.to_string()).or_default();
        *cursor = (*cursor).max(upto);
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    }

    /// At the end of a transaction: takes out, for the caller to hold in
    /// `held`, the entries more than the log's length behind the newest
    /// id (one old entry would otherwise keep every row after it from
    /// being cut: an offline user's message, say), and the oldest ones
    /// when there are too many.
    pub(super) fn take_oldest(
        &mut self,
        tx: &Transaction<'_>,
    ) -> rusqlite::Result<Vec<(String, Message)>> {
        let max = self.max_len();
        let too_old = self
            .max_id
            .saturating_sub(i64::try_from(max).unwrap_or(i64::MAX));
        let mut upto = if self.oldest().is_some_and(|id| id <= too_old) {
            too_old
        } else {
            i64::MIN
        };
        if self.len > max {
            let mut ids: Vec<i64> = self.entries.values().flatten().copied().collect();
            ids.sort_unstable();
            if let Some(&id) = ids.len().checked_sub(max / 2 + 1).and_then(|i| ids.get(i)) {
                upto = upto.max(id);
            }
        }
        if upto == i64::MIN {
            return Ok(Vec::new());
        }
        let mut taken = Vec::new();
        for (user, q) in &mut self.entries {
            let n = q.partition_point(|&id| id <= upto);
            for id in q.drain(..n) {
                // A row the memory knows of but the table lacks.
                let message = read(tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
                // Gone at once: a row left behind would be read back as
                // held at the next open.
                tx.prepare_cached("DELETE FROM recent WHERE id = ?1")?
                    .execute(params![id])?;
                taken.push((user.clone(), message));
            }
        }
        self.entries.retain(|_, q| !q.is_empty());
        self.len -= taken.len();
        Ok(taken)
    }

    /// Deletes the rows behind the oldest entry still held, once enough
    /// of them pile up.
    pub(super) fn cut(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let oldest = self.oldest().unwrap_or(self.max_id.saturating_add(1));
        if oldest - self.cut >= self.cut_every() {
            tx.prepare_cached("DELETE FROM recent WHERE id < ?1")?
                .execute(params![oldest])?;
            self.cut = oldest;
        }
        Ok(())
    }
}

/// The message of the log's row `id`.
pub(super) fn read(tx: &Connection, id: i64) -> rusqlite::Result<Option<Message>> {
    tx.prepare_cached("SELECT ts, sender, kind, text FROM recent WHERE id = ?1")?
        .query_row(params![id], |r| {
            let kind: String = r.get(2)?;
            let kind = super::sqlite::kind_from_str(&kind).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    2,
                    rusqlite::types::Type::Text,
                    format!("unknown message kind `{kind}`").into(),
                )
            })?;
            Ok(Message {
                id: super::sqlite::from_sql(id),
                at: chatcore::Time::from_unix_millis(super::sqlite::from_sql(r.get(0)?)),
                from: r.get(1)?,
                kind,
                text: r.get(3)?,
            })
        })
        .optional()
}
