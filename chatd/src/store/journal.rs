//! A journal in front of SQLite: [`JournaledStore`] makes each commit
//! durable with one append and one `fdatasync` of a small file, and moves
//! what the journal holds into SQLite in large batches.
//!
//! Why: a SQLite commit writes every B-tree page it touched, with WAL
//! frame headers and checksums, and under live traffic most of what it
//! writes is undone a moment later (a delivery is held, then released when
//! the receiver confirms it). Profiles put SQLite at most of the store
//! thread's time. A journal record is the commit's ops and nothing else,
//! and in a batch a hold and the release that covers it cancel out, so
//! SQLite never sees most live traffic.
//!
//! # The file
//!
//! `chatd.journal` grows a mebibyte at a time, written with zeros, up to
//! `journal_size`, so that appending a record seldom changes the file's
//! size and `fdatasync` flushes the record alone. Records follow each
//! other from the start:
//!
//! | bytes | what |
//! |---|---|
//! | 8 | record number, little-endian, counting up from 1 forever |
//! | 4 | length of the ops |
//! | 4 | CRC-32 of the number, the length and the ops |
//! | n | the ops (`codec.rs`) |
//!
//! The database records, in the transaction that applies them, the number
//! of the last record it holds (`journal_mark`). Once it holds every
//! record, the next record is written at the start of the file again. At
//! startup the records are read from the start for as long as each is
//! numbered one more than the one before and has a good checksum; those
//! after the mark are applied to the database. So a record torn by a crash
//! (never acknowledged: its `fdatasync` did not return) ends the replay,
//! and so does what is left of older rounds further in the file (their
//! numbers are smaller).
//!
//! While the server runs, the journal is written and not read, except
//! when the database catches up: memory keeps only which ops cancel out (a
//! bit per op, and each user's holds not yet released), and the ops are
//! read back from the file (from the page cache, as a rule) then, a chunk
//! of records per transaction.
//!
//! # When the database catches up
//!
//! A delivery to a user who is online is held at once and released when
//! the user confirms it, `confirm_delay` (0.2 s) or more later. The longer
//! the database waits, the more of these pairs cancel before it sees them;
//! so it catches up only:
//!
//! - when half the journal is used, or what memory keeps of it reaches half
//!   of `journal_memory`, or no commit came for 0.2 s (the store thread
//!   does this between requests, so no commit waits for it); at the full
//!   amount a commit waits for it;
//! - before the state is loaded, and before a page of a box is read if
//!   the journal holds ops the page would show (a hold in its range, or a
//!   release above where it starts), because reads go to the database and
//!   must see every commit. A box being drained is read while the releases
//!   of its earlier pages wait in the journal: those never reach the next
//!   page, so it is read from the database as it stands;
//! - when the store is closed.
//!
//! A commit bigger than the whole journal goes to the database directly,
//! once the journal is emptied.
//!
//! # Failures
//!
//! A record that cannot be written (no room to grow the file, a failed
//! `write`) fails the commit with "cannot write now", like a failed SQLite
//! commit, and the driver waits. If the database cannot write (a full
//! disk), records keep going to the journal until it is full, and reads
//! see the database with the journal's ops on top (by [`StoreModel`]);
//! a start on such a disk leaves the records waiting in the journal the
//! same way. A failed `fdatasync` of the journal is fatal, as SQLite's
//! is.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatcore::{Message, MessageId, Restored, StoreModel, StoreOp};

use super::codec;
use super::error::{Failure, StoreError};
use super::sqlite::SqliteStore;
use super::Store;

/// A record's header: number, length, checksum.
const HEADER: usize = 16;

/// How much the file grows at a time.
const GROW: u64 = 1 << 20;

/// After a failed catch-up between requests, how long until the next try.
const RETRY: Duration = Duration::from_secs(1);

/// A store with no commit for this long catches up, so that a quiet
/// server's database is current.
const QUIET: Duration = Duration::from_millis(200);

/// Ops applied to the database in one transaction at most while it
/// catches up (whole records): bounds the memory a catch-up takes.
const CHUNK_OPS: usize = 1024;

/// How long one step of catching up between requests lasts, about: a
/// commit waits at most this long behind it (and a delivery whose id block
/// waits for a commit, too).
const STEP: Duration = Duration::from_millis(2);

/// How much of the journal one read takes while the database catches up.
const READ_AHEAD: usize = 1 << 20;

/// How big the journal may grow, and how much memory may keep track of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalLimits {
    /// The journal file's size in bytes at most: what may wait there for
    /// the database, and what a start after a crash replays at most.
    pub size: u64,
    /// What may be kept in memory about the ops waiting for the database
    /// (their holds not yet released, by user, and a bit per op), in
    /// bytes (estimated).
    pub memory: usize,
}

impl Default for JournalLimits {
    fn default() -> Self {
        JournalLimits {
            size: 64 << 20,
            memory: 16 << 20,
        }
    }
}

/// The SQLite store behind a journal (see the module's docs).
pub struct JournaledStore {
    sqlite: SqliteStore,
    file: File,
    path: PathBuf,
    limits: JournalLimits,
    /// Where the next record goes.
    offset: u64,
    /// How much of the file is written (zeros or records).
    allocated: u64,
    /// The next record's number.
    next_seq: u64,
    /// When the last record was written.
    last_append: Option<Instant>,
    /// What the journal holds and the database does not yet.
    pending: Pending,
    /// When to try catching up again, after a try between requests found
    /// the database unable to write.
    retry_at: Option<Instant>,
    /// A fatal failure of work done between requests, for the next request
    /// to return.
    failed: Option<StoreError>,
    /// A fatal failure happened: every request fails.
    broken: bool,
    /// Scratch space for a record.
    buf: Vec<u8>,
    /// What a catch-up that stopped after its step read beyond where it
    /// stopped: the next step goes on from it rather than reading it again.
    /// The bytes stay valid until the database holds every record (the
    /// file is then written again from its start), when it is dropped.
    read_ahead: ReadAhead,
    /// Whether closing moves the journal into the database (not when a
    /// test stands for a crash).
    catch_up_on_drop: bool,
    /// The database refuses every write, as on a full disk.
    #[cfg(test)]
    database_full: bool,
}

impl std::fmt::Debug for JournaledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournaledStore")
            .field("path", &self.path)
            .field("database", &self.sqlite)
            .finish_non_exhaustive()
    }
}

impl JournaledStore {
    /// The journal's file name inside the data directory.
    pub const FILE_NAME: &'static str = "chatd.journal";

    /// Opens the database in `data_dir` (see [`SqliteStore::open`]) and its
    /// journal, applying the records a crash left in the journal.
    pub fn open(data_dir: &Path, limits: JournalLimits) -> Result<JournaledStore, StoreError> {
        // The database first: it takes the lock that keeps a second
        // server out, before the journal is touched.
        Self::open_with(data_dir, limits, false)
    }

    /// Opens the store on a database that refuses every write, as on a
    /// full disk.
    #[cfg(test)]
    pub(crate) fn open_full(
        data_dir: &Path,
        limits: JournalLimits,
    ) -> Result<JournaledStore, StoreError> {
        Self::open_with(data_dir, limits, true)
    }

    fn open_with(
        data_dir: &Path,
        limits: JournalLimits,
        #[cfg_attr(not(test), allow(unused_variables))] full: bool,
    ) -> Result<JournaledStore, StoreError> {
        let sqlite = SqliteStore::open(data_dir)?;
        let path = data_dir.join(Self::FILE_NAME);
        let named = path.clone();
        let io = |what| {
            let path = named.clone();
            move |source| StoreError::Journal { path, what, source }
        };
        let new = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open"))?;
        if new {
            // The file's name must survive a crash as its records do.
            File::open(data_dir)
                .and_then(|d| d.sync_all())
                .map_err(io("sync the directory of"))?;
        }
        let allocated = file.metadata().map_err(io("read"))?.len();
        let mark = sqlite.journal_mark()?;
        let mut store = JournaledStore {
            sqlite,
            file,
            path,
            limits,
            offset: 0,
            allocated,
            next_seq: mark + 1,
            last_append: None,
            pending: Pending::default(),
            retry_at: None,
            failed: None,
            broken: false,
            buf: Vec::new(),
            read_ahead: ReadAhead::default(),
            catch_up_on_drop: true,
            #[cfg(test)]
            database_full: full,
        };
        store.replay(mark)?;
        if store.allocated > limits.size && store.pending.last.is_none() {
            // `journal_size` was lowered; what the file holds is applied.
            store.file.set_len(0).map_err(io("shorten"))?;
            store.allocated = 0;
        }
        Ok(store)
    }

    /// Applies the records after `mark`, which a stop left in the journal.
    /// The records from the start of the file follow each other by number;
    /// those up to `mark` are in the database already, and the first that
    /// is missing, torn or out of turn ends them. The others are taken as
    /// if this run had written them, and the database catches up with
    /// them; on a disk without room for that, they stay in the journal,
    /// waiting, and reads see them (see [`JournaledStore::overlay`]).
    fn replay(&mut self, mark: u64) -> Result<(), StoreError> {
        let mut at = 0;
        let mut before = None;
        while let Some((seq, ops, end)) = self.record_at(at, before.map(|b: u64| b + 1))? {
            before = Some(seq);
            if seq > mark {
                if seq != self.next_seq {
                    return Err(self.corrupt(format!(
                        "the journal goes on at record {seq}, but the database holds \
                         records up to {mark} only: not this database's journal? \
                         (with chatd stopped, a journal whose database is gone can be deleted)"
                    )));
                }
                if self.pending.last.is_none() {
                    self.pending.done = (at, 0);
                }
                self.pending.add(&ops, seq);
                self.next_seq = seq + 1;
            }
            at = end;
        }
        let Some(last) = self.pending.last else {
            return Ok(());
        };
        self.offset = at;
        match self.catch_up_now() {
            Ok(()) => {
                tracing::info!("applied the journal records a stop left, up to {last}");
                Ok(())
            }
            Err(e) => match e.failure() {
                Failure::CannotWriteNow(why) => {
                    // As if chatd had kept running.
                    tracing::warn!("the journal's records wait for the database: {why}");
                    self.retry_at = Some(Instant::now() + RETRY);
                    Ok(())
                }
                Failure::Fatal => Err(e),
            },
        }
    }

    /// The record at `at`, if there is a whole one with a good checksum
    /// (numbered `expected`, if given): its number, ops and end.
    fn record_at(
        &self,
        at: u64,
        expected: Option<u64>,
    ) -> Result<Option<(u64, Vec<StoreOp>, u64)>, StoreError> {
        let mut record = vec![0u8; HEADER];
        if at + HEADER as u64 > self.allocated || !self.read(&mut record, at)? {
            return Ok(None);
        }
        let size = record_size(&record);
        if at + size as u64 > self.allocated {
            return Ok(None);
        }
        record.resize(size, 0);
        if !self.read(&mut record[HEADER..], at + HEADER as u64)? {
            return Ok(None);
        }
        match whole_record(&record) {
            Some(seq) if expected.is_none_or(|e| e == seq) => {
                Ok(Some((seq, self.ops_of(seq, &record)?, at + size as u64)))
            }
            _ => Ok(None),
        }
    }

    /// The ops of a whole record numbered `seq`.
    fn ops_of(&self, seq: u64, record: &[u8]) -> Result<Vec<StoreOp>, StoreError> {
        codec::decode(&record[HEADER..]).map_err(|e| self.corrupt(format!("record {seq}: {e}")))
    }

    /// Reads `buf` from `at`; false if the file ends first.
    fn read(&self, buf: &mut [u8], at: u64) -> Result<bool, StoreError> {
        match self.file.read_exact_at(buf, at) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(source) => Err(StoreError::Journal {
                path: self.path.clone(),
                what: "read",
                source,
            }),
        }
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.sqlite.path()
    }

    /// Closes the store as a crash would: the journal is left as it is.
    #[cfg(test)]
    pub(crate) fn crash(mut self) {
        self.catch_up_on_drop = false;
    }

    /// The database, for tests that look inside it.
    #[cfg(test)]
    pub(crate) fn database(&self) -> &SqliteStore {
        &self.sqlite
    }

    /// Fails if an earlier failure was fatal.
    fn check(&mut self) -> Result<(), StoreError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.broken {
            return Err(self.corrupt("the store stopped after an earlier failure".into()));
        }
        Ok(())
    }

    /// Notes a failure; a fatal one makes every later request fail.
    fn fail(&mut self, e: StoreError) -> StoreError {
        if e.failure() == Failure::Fatal {
            self.broken = true;
        }
        e
    }

    /// Moves every record into the database; then the journal starts
    /// again at its beginning.
    fn catch_up_now(&mut self) -> Result<(), StoreError> {
        while !self.catch_up_step(None)? {}
        Ok(())
    }

    /// Moves the next records into the database, up to a chunk of ops
    /// (one transaction) or, if given, for about `budget`, leaving out the
    /// ops taken away; returns whether the database holds every record.
    /// Records whose ops all cancelled need no transaction: a crash
    /// before the next one only makes the next start read them again.
    fn catch_up_step(&mut self, budget: Option<Duration>) -> Result<bool, StoreError> {
        let Some(last) = self.pending.last else {
            return Ok(true);
        };
        let started = Instant::now();
        let (mut at, mut n) = self.pending.done;
        let mut chunk = Vec::new();
        let mut chunk_last = None;
        let mut read = std::mem::take(&mut self.read_ahead);
        // At least one record a step, so that every step gets on.
        while at < self.offset
            && chunk.len() < CHUNK_OPS
            && !(chunk_last.is_some() && budget.is_some_and(|b| started.elapsed() >= b))
        {
            let seq = self
                .kept_ops(&mut read, &mut at, &mut n, &mut chunk)
                .map_err(|e| self.fail(e))?;
            chunk_last = Some(seq);
        }
        let done = at >= self.offset;
        if !done && chunk.is_empty() {
            self.pending.done = (at, n);
            self.read_ahead = read;
            return Ok(false);
        }
        let mark = if done { Some(last) } else { chunk_last };
        self.apply_to_database(&chunk, mark)
            .map_err(|e| self.fail(e))?;
        if !done {
            self.pending.done = (at, n);
            self.read_ahead = read;
            return Ok(false);
        }
        tracing::debug!("the database caught up with the journal, up to record {last}");
        self.pending = Pending::default();
        self.offset = 0;
        self.retry_at = None;
        Ok(true)
    }

    /// Applies `ops` to the database, with `mark` as the last record it
    /// holds.
    fn apply_to_database(&mut self, ops: &[StoreOp], mark: Option<u64>) -> Result<(), StoreError> {
        #[cfg(test)]
        if self.database_full {
            return Err(StoreError::Sqlite {
                path: self.path.clone(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                    None,
                ),
            });
        }
        self.sqlite.apply_with(ops, mark)
    }

    /// The ops the journal holds and the database does not, in order,
    /// leaving out those taken away.
    fn pending_ops(&self) -> Result<Vec<StoreOp>, StoreError> {
        let (mut at, mut n) = self.pending.done;
        let mut read = ReadAhead::default();
        let mut left = Vec::new();
        while at < self.offset {
            self.kept_ops(&mut read, &mut at, &mut n, &mut left)?;
        }
        Ok(left)
    }

    /// Reads the record at `at`, whose first op is number `n`, and adds
    /// its ops not taken away to `into`; moves `at` and `n` past it and
    /// returns its number.
    fn kept_ops(
        &self,
        read: &mut ReadAhead,
        at: &mut u64,
        n: &mut u64,
        into: &mut Vec<StoreOp>,
    ) -> Result<u64, StoreError> {
        let Some((seq, ops, end)) = read.record(self, *at)? else {
            return Err(self.corrupt(format!(
                "the record at byte {at}, written by this run, is unreadable"
            )));
        };
        for op in ops {
            if !self.pending.skipped(*n) {
                into.push(op);
            }
            *n += 1;
        }
        *at = end;
        Ok(seq)
    }

    /// What a read sees while the database cannot take the journal (a
    /// full disk): the database's state with the journal's ops applied on
    /// top, by [`StoreModel`], for the boxes they touch. A release removes
    /// a prefix of a box, so a box's entries at or below its largest
    /// release in the journal need not be read.
    ///
    /// `model` holds the database's state but its boxes (for a page,
    /// nothing); the boxes the ops touch (or the one read) are added to it.
    fn overlay(
        &mut self,
        mut model: StoreModel,
        boxes: Option<(&str, MessageId, MessageId, usize)>,
    ) -> Result<(StoreModel, HashSet<String>), StoreError> {
        let ops = self.pending_ops()?;
        // Per user whose box the ops touch: their largest release, if any.
        let mut released: HashMap<&str, Option<MessageId>> = HashMap::new();
        for op in &ops {
            match op {
                StoreOp::Release { user, upto } => {
                    let r = released.entry(user.as_str()).or_default();
                    *r = Some(r.map_or(*upto, |r| r.max(*upto)));
                }
                StoreOp::Hold { user, .. } => {
                    released.entry(user.as_str()).or_default();
                }
                _ => {}
            }
        }
        if let Some((user, ..)) = boxes {
            // The box read, touched or not.
            released.entry(user).or_default();
        }
        for (&user, &r) in &released {
            // chatd's ids start at 1, so "after 0" is the whole box.
            let (after, upto, max) = match boxes {
                Some((u, after, upto, max)) if u == user => (after, upto, max),
                Some(_) => continue,
                None => (0, MessageId::MAX >> 1, usize::MAX),
            };
            let mut from = r.map_or(after, |r| r.max(after));
            let step = max.min(1024);
            let mut entries = Vec::new();
            loop {
                let page = self.sqlite.held_page(user, from, upto, step)?;
                let full = page.len() == step;
                let Some(last) = page.last() else { break };
                from = last.id;
                entries.extend(page);
                if !full || entries.len() >= max {
                    break;
                }
            }
            if !entries.is_empty() {
                model.held.insert(user.to_owned(), entries);
            }
        }
        for op in &ops {
            if let Some((user, ..)) = boxes {
                if !matches!(op, StoreOp::Hold { user: u, .. } | StoreOp::Release { user: u, .. } if u == user)
                {
                    continue;
                }
            }
            model.apply(op);
        }
        let touched = released.keys().map(|u| (*u).to_owned()).collect();
        Ok((model, touched))
    }

    /// Writes `ops` as the next record and makes it durable.
    fn append(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let seq = self.next_seq;
        self.buf.clear();
        self.buf.resize(HEADER, 0);
        codec::encode(ops, &mut self.buf);
        let len = u32::try_from(self.buf.len() - HEADER).unwrap_or(u32::MAX);
        self.buf[0..8].copy_from_slice(&seq.to_le_bytes());
        self.buf[8..12].copy_from_slice(&len.to_le_bytes());
        let crc = checksum(&self.buf[..12], &self.buf[HEADER..]);
        self.buf[12..16].copy_from_slice(&crc.to_le_bytes());
        let size = self.buf.len() as u64;
        if self.offset + size > self.limits.size || self.pending.bytes >= self.limits.memory {
            self.catch_up_now()?;
        }
        if size > self.limits.size {
            // Too big for the journal, which is empty now: straight to the
            // database.
            self.apply_to_database(ops, Some(seq))
                .map_err(|e| self.fail(e))?;
            self.next_seq += 1;
            return Ok(());
        }
        let end = self.offset + size;
        if end > self.allocated {
            self.grow(end)?;
        }
        self.file
            .write_all_at(&self.buf, self.offset)
            .map_err(|source| StoreError::JournalWrite {
                path: self.path.clone(),
                source,
            })?;
        if let Err(source) = self.file.sync_data() {
            return Err(self.fail(StoreError::Journal {
                path: self.path.clone(),
                what: "flush",
                source,
            }));
        }
        self.offset = end;
        self.next_seq += 1;
        self.last_append = Some(Instant::now());
        self.pending.add(ops, seq);
        if self.buf.capacity() > GROW as usize {
            // One huge commit does not keep its buffer for the whole run.
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Writes zeros from the end of the file to past `end`, a [`GROW`] at
    /// a time (on a disk without room for that, to `end` alone); the
    /// record's `fdatasync` makes them durable with it.
    fn grow(&mut self, end: u64) -> Result<(), StoreError> {
        let step = end
            .div_ceil(GROW)
            .saturating_mul(GROW)
            .min(self.limits.size);
        let mut result = Ok(());
        for to in [step, end] {
            result = write_zeros(&self.file, self.allocated, to);
            if result.is_ok() {
                self.allocated = to;
                return Ok(());
            }
        }
        result.map_err(|source| StoreError::JournalWrite {
            path: self.path.clone(),
            source,
        })
    }
}

/// Zeros for [`JournaledStore::grow`], from one block that is never
/// written: a fresh MiB of them for each growth was a page fault for every
/// page, in the thread that commits.
static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];

/// Writes zeros over `from..to` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

impl Store for JournaledStore {
    fn load(&mut self) -> Result<Restored, StoreError> {
        self.check()?;
        match self.catch_up_now() {
            Err(e) if matches!(e.failure(), Failure::CannotWriteNow(_)) => {
                let restored = self.sqlite.load()?;
                let base = StoreModel {
                    next_id: restored.next_id,
                    held: Default::default(),
                    last_seen: restored.last_seen,
                    login_failures: restored.login_failures,
                };
                let (model, touched) = self.overlay(base, None)?;
                let mut seen = model.restored();
                // The boxes the journal does not touch, from the database.
                for (user, summary) in restored.held {
                    if !touched.contains(&user) {
                        seen.held.insert(user, summary);
                    }
                }
                Ok(seen)
            }
            result => {
                result?;
                self.sqlite.load()
            }
        }
    }

    fn held_page(
        &mut self,
        user: &str,
        after: MessageId,
        upto: MessageId,
        max: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        self.check()?;
        // A box being drained is read a page at a time while the releases
        // of the pages before are journaled: catching up before each page
        // made every page a database transaction, and a drain of 100,000
        // messages took twice as long.
        if self.pending.leaves_alone(user, after, upto) {
            return self.sqlite.held_page(user, after, upto, max);
        }
        match self.catch_up_now() {
            Err(e) if matches!(e.failure(), Failure::CannotWriteNow(_)) => Ok(self
                .overlay(StoreModel::default(), Some((user, after, upto, max)))?
                .0
                .held_page(user, after, upto, max)),
            result => {
                result?;
                self.sqlite.held_page(user, after, upto, max)
            }
        }
    }

    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.check()?;
        if ops.is_empty() {
            return Ok(());
        }
        self.append(ops)
    }

    fn due(&self) -> Option<Instant> {
        if self.broken || self.failed.is_some() || self.pending.last.is_none() {
            return None;
        }
        if let Some(at) = self.retry_at {
            return Some(at);
        }
        let half_full =
            self.offset > self.limits.size / 2 || self.pending.bytes > self.limits.memory / 2;
        if half_full {
            return Some(Instant::now());
        }
        self.last_append.map(|t| t + QUIET)
    }

    fn catch_up(&mut self) {
        // A step at a time, so that commits asked for meanwhile go between
        // the steps (the store thread asks again while it is due).
        if let Err(e) = self.catch_up_step(Some(STEP)) {
            match e.failure() {
                Failure::CannotWriteNow(why) => {
                    // The records stay in the journal; try again later.
                    tracing::warn!("cannot move the journal into the database: {why}");
                    self.retry_at = Some(Instant::now() + RETRY);
                }
                Failure::Fatal => self.failed = Some(e),
            }
        }
    }
}

impl Drop for JournaledStore {
    fn drop(&mut self) {
        if self.catch_up_on_drop && !self.broken {
            if let Err(e) = self.catch_up_now() {
                tracing::warn!(
                    "the journal stays for the next start: {:#}",
                    anyhow::Error::new(e)
                );
            }
        }
    }
}

/// Records read from the journal a [`READ_AHEAD`] at a time, not a `read`
/// per header and per body.
#[derive(Default)]
struct ReadAhead {
    /// Where `bytes` start in the file.
    from: u64,
    bytes: Vec<u8>,
}

impl ReadAhead {
    /// The whole record at `at` with a good checksum, if there is one.
    fn record(
        &mut self,
        store: &JournaledStore,
        at: u64,
    ) -> Result<Option<(u64, Vec<StoreOp>, u64)>, StoreError> {
        // The size of the record at `offset`, if `bytes` hold all of it.
        let whole = |bytes: &[u8], offset: usize| -> Option<usize> {
            let size = record_size(bytes.get(offset..offset + HEADER)?);
            bytes.get(offset..offset + size)?;
            Some(size)
        };
        let inside = at >= self.from && at < self.from + self.bytes.len() as u64;
        if !inside || whole(&self.bytes, (at - self.from) as usize).is_none() {
            let want = READ_AHEAD.min((store.offset.saturating_sub(at)) as usize);
            self.bytes.resize(want, 0);
            self.from = at;
            if !store.read(&mut self.bytes, at)? {
                return Ok(None);
            }
            if whole(&self.bytes, 0).is_none() {
                // A record longer than a read ahead.
                return store.record_at(at, None);
            }
        }
        let offset = (at - self.from) as usize;
        let Some(size) = whole(&self.bytes, offset) else {
            return Ok(None);
        };
        let record = &self.bytes[offset..offset + size];
        let Some(seq) = whole_record(record) else {
            return Ok(None);
        };
        Ok(Some((seq, store.ops_of(seq, record)?, at + size as u64)))
    }
}

/// What is kept in memory about the ops the journal holds and the
/// database does not: which of them are taken away because they cancel
/// out. The ops themselves are read back from the file when the database
/// catches up, so memory does not grow with them.
///
/// - A hold is taken away when a later release of the same user covers
///   its id: applied in order, the release would remove what the hold
///   added.
/// - A release is taken away when a later release of the same user covers
///   as much or more: the later one removes everything it would have.
///
/// Nothing reads the database between the ops (reads catch up first), so
/// what the database ends with is the same.
#[derive(Default)]
struct Pending {
    /// Ops added since the database last caught up: an op's number is its
    /// place among them.
    ops: u64,
    /// A bit per op: taken away.
    skip: Vec<u64>,
    /// Per user: their holds not yet covered by a release (id, op). Both
    /// maps are looked up for every op, and hashed with foldhash rather
    /// than SipHash (a hundred instructions less a lookup): their names
    /// are accounts', so no peer chooses keys that collide.
    holds: HashMap<String, Vec<(MessageId, u64)>, foldhash::fast::RandomState>,
    /// Per user: the highest id their releases reach, and their last
    /// release's op.
    releases: HashMap<String, (MessageId, u64), foldhash::fast::RandomState>,
    /// What the above take in memory (estimated).
    bytes: usize,
    /// The last record added.
    last: Option<u64>,
    /// Where an interrupted catch-up goes on: the offset of the first
    /// record not in the database, and the number of its first op.
    done: (u64, u64),
}

/// What a map entry for a user costs besides the name (estimated).
const USER_ENTRY: usize = 64;

impl Pending {
    fn add(&mut self, ops: &[StoreOp], seq: u64) {
        self.last = Some(seq);
        for op in ops {
            let n = self.ops;
            self.ops += 1;
            if n % 64 == 0 {
                self.skip.push(0);
                self.bytes += 8;
            }
            match op {
                StoreOp::Hold { user, message } => {
                    match self.holds.get_mut(user) {
                        Some(held) => held.push((message.id, n)),
                        None => {
                            self.bytes += USER_ENTRY + user.len();
                            self.holds.insert(user.clone(), vec![(message.id, n)]);
                        }
                    }
                    self.bytes += 16;
                }
                StoreOp::Release { user, upto } => {
                    if let Some(held) = self.holds.get_mut(user) {
                        let skip = &mut self.skip;
                        let before = held.len();
                        held.retain(|&(id, k)| {
                            let covered = id <= *upto;
                            if covered {
                                skip[(k / 64) as usize] |= 1 << (k % 64);
                            }
                            !covered
                        });
                        self.bytes -= 16 * (before - held.len());
                    }
                    match self.releases.get_mut(user) {
                        Some(last) => {
                            // The last release reaches no further than
                            // `last.0`, so covering that covers it.
                            if last.0 <= *upto {
                                self.skip[(last.1 / 64) as usize] |= 1 << (last.1 % 64);
                            }
                            *last = (last.0.max(*upto), n);
                        }
                        None => {
                            self.bytes += USER_ENTRY + user.len();
                            self.releases.insert(user.clone(), (*upto, n));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether the database alone answers a read of `user`'s box between
    /// `after` (excluded) and `upto`: no op it does not hold yet adds an
    /// entry there or removes one. Releases only ever reach entries at or
    /// below what they name.
    fn leaves_alone(&self, user: &str, after: MessageId, upto: MessageId) -> bool {
        self.releases
            .get(user)
            .is_none_or(|&(released, _)| released <= after)
            && self
                .holds
                .get(user)
                .is_none_or(|held| held.iter().all(|&(id, _)| id <= after || id > upto))
    }

    /// Whether op `n` is taken away.
    fn skipped(&self, n: u64) -> bool {
        self.skip
            .get((n / 64) as usize)
            .is_some_and(|w| w & (1 << (n % 64)) != 0)
    }
}

/// The size in all of the record whose header is `header`.
fn record_size(header: &[u8]) -> usize {
    let len = header[8..12].try_into().map_or(0, u32::from_le_bytes);
    HEADER + len as usize
}

/// The number of the record that is `record`, if its checksum is good (a
/// header of zeros, as in a part of the file never written, is none).
fn whole_record(record: &[u8]) -> Option<u64> {
    let seq = u64::from_le_bytes(record[0..8].try_into().ok()?);
    let crc = u32::from_le_bytes(record[12..16].try_into().ok()?);
    (seq != 0 && checksum(&record[..12], &record[HEADER..]) == crc).then_some(seq)
}

fn checksum(header: &[u8], ops: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(ops);
    h.finalize()
}

#[cfg(test)]
mod tests;
