//! Broadcasts held as one row: `held_group` keeps, per message, a bitmap
//! of the users it is held for, each user has a bit number (`user_index`)
//! and a cursor (`group_cursor`): a user's group entries are the groups
//! with an id above their cursor whose bitmap has their bit. A
//! confirmation moves the cursor (one row per user and commit) instead of
//! deleting a row per message, and a broadcast to 1000 users writes one
//! row instead of 1000.
//!
//! A group is written only for a message whose row is new in the
//! transaction (so no other entry of that id exists anywhere), for the
//! users whose cursor is below its id; anyone else gets a row in `held`
//! as before. So a user's entry of one id is either a bit or a row, never
//! both, and the store stays exactly [`chatcore::StoreModel`].

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension, Transaction};

/// The fewest holds of one new message, one after another in a batch,
/// that are written as a group (the core holds a broadcast for each
/// receiver in turn).
pub(super) const GROUP_MIN: usize = 2;

/// What the store keeps in memory of the groups: every user's bit number
/// and cursor, read at open (one row per user).
#[derive(Debug, Default)]
pub(super) struct Groups {
    pub(super) bits: HashMap<String, u32>,
    pub(super) cursors: HashMap<String, i64>,
}

impl Groups {
    /// Reads the bit numbers and cursors.
    pub(super) fn load(conn: &rusqlite::Connection) -> rusqlite::Result<Groups> {
        let mut groups = Groups::default();
        let mut stmt = conn.prepare("SELECT user, bit FROM user_index")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))? {
            let (user, bit) = row?;
            groups.bits.insert(user, bit);
        }
        let mut stmt = conn.prepare("SELECT user, upto FROM group_cursor")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (user, upto) = row?;
            groups.cursors.insert(user, upto);
        }
        Ok(groups)
    }

    /// Takes in what a committed transaction added.
    pub(super) fn commit(&mut self, pending: Pending) {
        self.bits.extend(pending.bits);
        for (user, upto) in pending.cursors {
            let cursor = self.cursors.entry(user).or_default();
            *cursor = (*cursor).max(upto);
        }
    }
}

/// Bit numbers and cursors a transaction wrote, kept apart until it
/// commits (a failed one leaves the store's memory as it was).
#[derive(Debug, Default)]
pub(super) struct Pending {
    bits: HashMap<String, u32>,
    cursors: HashMap<String, i64>,
}

/// The groups as one transaction sees them: the store's, plus its own.
pub(super) struct View<'g> {
    groups: &'g Groups,
    pending: Pending,
}

impl<'g> View<'g> {
    pub(super) fn new(groups: &'g Groups) -> Self {
        View {
            groups,
            pending: Pending::default(),
        }
    }

    pub(super) fn into_pending(self) -> Pending {
        self.pending
    }

    /// `user`'s bit, if they have one.
    pub(super) fn bit(&self, user: &str) -> Option<u32> {
        self.pending
            .bits
            .get(user)
            .or_else(|| self.groups.bits.get(user))
            .copied()
    }

    /// `user`'s cursor: their group entries at or below it are released.
    pub(super) fn cursor(&self, user: &str) -> i64 {
        let stored = self.groups.cursors.get(user).copied().unwrap_or(0);
        self.pending
            .cursors
            .get(user)
            .map_or(stored, |&c| c.max(stored))
    }

    /// `user`'s bit, given a new one (and its row) if they have none.
    fn bit_or_new(&mut self, tx: &Transaction<'_>, user: &str) -> rusqlite::Result<u32> {
        if let Some(bit) = self.bit(user) {
            return Ok(bit);
        }
        let bit =
            u32::try_from(self.groups.bits.len() + self.pending.bits.len()).unwrap_or(u32::MAX);
        tx.prepare_cached("INSERT INTO user_index (user, bit) VALUES (?1, ?2)")?
            .execute(params![user, bit])?;
        self.pending.bits.insert(user.to_owned(), bit);
        Ok(bit)
    }

    /// Moves `user`'s cursor up to `upto`.
    fn advance(&mut self, tx: &Transaction<'_>, user: &str, upto: i64) -> rusqlite::Result<()> {
        tx.prepare_cached(
            "INSERT INTO group_cursor (user, upto) VALUES (?1, ?2)
             ON CONFLICT (user) DO UPDATE SET upto = MAX(upto, excluded.upto)",
        )?
        .execute(params![user, upto])?;
        let cursor = self.pending.cursors.entry(user.to_owned()).or_default();
        *cursor = (*cursor).max(upto);
        Ok(())
    }

    /// Writes a group for message `id` (new in this transaction) held for
    /// `users`; returns the users it holds it for (each once), and leaves
    /// out, to be held by rows, those whose cursor is at or above `id`.
    pub(super) fn hold<'u>(
        &mut self,
        tx: &Transaction<'_>,
        id: i64,
        users: impl Iterator<Item = &'u str>,
        by_row: &mut Vec<&'u str>,
    ) -> rusqlite::Result<Vec<&'u str>> {
        let mut bitmap = Vec::new();
        let mut held = Vec::new();
        for user in users {
            if self.cursor(user) >= id {
                by_row.push(user);
                continue;
            }
            let bit = self.bit_or_new(tx, user)?;
            if !set(&mut bitmap, bit) {
                held.push(user);
            }
        }
        if !held.is_empty() {
            tx.prepare_cached("INSERT INTO held_group (id, receivers) VALUES (?1, ?2)")?
                .execute(params![id, bitmap])?;
        }
        Ok(held)
    }

    /// Releases `user`'s group entries up to `upto`: calls `released` with
    /// the id of each, and moves the cursor.
    pub(super) fn release(
        &mut self,
        tx: &Transaction<'_>,
        user: &str,
        upto: i64,
        mut released: impl FnMut(i64),
    ) -> rusqlite::Result<()> {
        let Some(bit) = self.bit(user) else {
            return Ok(());
        };
        let cursor = self.cursor(user);
        if upto <= cursor {
            return Ok(());
        }
        let mut stmt =
            tx.prepare_cached("SELECT id, receivers FROM held_group WHERE id > ?1 AND id <= ?2")?;
        let mut rows = stmt.query(params![cursor, upto])?;
        let mut any = false;
        while let Some(row) = rows.next()? {
            any = true;
            if has(row.get_ref(1)?.as_blob()?, bit) {
                released(row.get(0)?);
            }
        }
        drop(rows);
        // Groups above the cursor that leave this user out are passed
        // too, so that the next release does not read them again.
        if any {
            self.advance(tx, user, upto)?;
        }
        Ok(())
    }

    /// Whether `user` holds message `id` through its group.
    pub(super) fn holds(
        &self,
        tx: &Transaction<'_>,
        user: &str,
        id: i64,
    ) -> rusqlite::Result<bool> {
        let Some(bit) = self.bit(user) else {
            return Ok(false);
        };
        if id <= self.cursor(user) {
            return Ok(false);
        }
        let bitmap: Option<Vec<u8>> = tx
            .prepare_cached("SELECT receivers FROM held_group WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        Ok(bitmap.is_some_and(|b| has(&b, bit)))
    }

    /// The largest id of `user`'s group entries, if any.
    pub(super) fn last(&self, tx: &Transaction<'_>, user: &str) -> rusqlite::Result<Option<i64>> {
        let Some(bit) = self.bit(user) else {
            return Ok(None);
        };
        let mut stmt = tx.prepare_cached(
            "SELECT id, receivers FROM held_group WHERE id > ?1 ORDER BY id DESC",
        )?;
        let mut rows = stmt.query(params![self.cursor(user)])?;
        while let Some(row) = rows.next()? {
            if has(row.get_ref(1)?.as_blob()?, bit) {
                return row.get(0).map(Some);
            }
        }
        Ok(None)
    }
}

/// Sets `bit`; returns whether it was set already.
fn set(bitmap: &mut Vec<u8>, bit: u32) -> bool {
    let (byte, mask) = ((bit / 8) as usize, 1u8 << (bit % 8));
    if bitmap.len() <= byte {
        bitmap.resize(byte + 1, 0);
    }
    let was = bitmap[byte] & mask != 0;
    bitmap[byte] |= mask;
    was
}

/// Whether `bit` is set.
pub(super) fn has(bitmap: &[u8], bit: u32) -> bool {
    let (byte, mask) = ((bit / 8) as usize, 1u8 << (bit % 8));
    bitmap.get(byte).is_some_and(|b| b & mask != 0)
}
