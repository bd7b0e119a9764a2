//! What a store failure is, and whether the server can wait it out: the
//! driver keeps serving through a full disk but stops on anything that
//! leaves the file's state in doubt, and that choice is made here, in one
//! place, from SQLite's error codes.

use std::path::PathBuf;

use thiserror::Error;

use super::schema::SCHEMA_VERSION;
#[cfg(doc)]
use super::{SqliteStore, Store};

/// A store failure. [`StoreError::failure`] tells whether the server can
/// wait for the store or must stop.
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
    /// The layout could not be written: a new database's, or an older
    /// one's brought up to date (most often: no disk space for it).
    #[error("cannot write the layout of store {path} (version {from} to {SCHEMA_VERSION})")]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The layout found.
        from: i64,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A journal record could not be written: nothing of it was
    /// acknowledged, and the next record goes in the same place.
    #[error("cannot write the journal {path}")]
    JournalWrite {
        /// The journal file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The journal could not be opened, read, allocated or flushed.
    #[error("cannot {what} the journal {path}")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// What the system said.
        source: std::io::Error,
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

/// What a failed [`Store::apply`] means for the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The store cannot write now but is intact: the transaction was rolled
    /// back, the file is as the last successful commit left it, and the
    /// same changes may be applied again later (once the disk has room).
    /// The server stays up and refuses what must be durable until then.
    /// The text says why, for people (it becomes the detail of `ERR
    /// unavailable`, so it names no path).
    CannotWriteNow(&'static str),
    /// The state of the file is unknown, or the store is not usable at
    /// all: the server must stop (fail-stop) rather than carry on making
    /// promises it cannot keep.
    Fatal,
}

impl StoreError {
    /// Sorts a failure into "cannot write now" and fatal.
    ///
    /// Cannot write now (the commit did not happen; nothing is in doubt):
    /// - `SQLITE_FULL`: SQLite's unix VFS reports a `write` that failed
    ///   with `ENOSPC` (or wrote short) this way; also the database's own
    ///   size limit.
    /// - `SQLITE_IOERR_WRITE`: any other failed `write`, such as `EDQUOT`
    ///   (a quota) or `EROFS`. A write that the kernel refused left no
    ///   data to doubt: the transaction is rolled back, and nothing is
    ///   acknowledged before a later commit's fsync succeeds. (Should the
    ///   device be failing for good, the server stays up refusing messages
    ///   and logs the cause every minute.)
    /// - `SQLITE_CANTOPEN`: a file the commit needs (the write-ahead log)
    ///   could not be opened or created, e.g. no inode left.
    /// - A journal record that could not be written (`JournalWrite`), for
    ///   the same reason as `SQLITE_IOERR_WRITE`.
    ///
    /// Fatal (everything else), notably:
    /// - `SQLITE_IOERR_FSYNC`, `SQLITE_IOERR_DIR_FSYNC` and a failed
    ///   `fdatasync` of the journal: after a failed fsync the kernel may
    ///   have dropped the dirty pages and marked them clean, so a later
    ///   fsync that succeeds proves nothing about the earlier writes: what
    ///   is on disk is unknown.
    /// - Read errors, `SQLITE_CORRUPT`, `SQLITE_NOTADB`: the file cannot be
    ///   trusted.
    /// - Out of memory, misuse, and any code not listed here.
    /// - Errors of [`SqliteStore::open`] and of loading: a store that
    ///   cannot be opened or read is not one to serve from.
    pub fn failure(&self) -> Failure {
        use rusqlite::ffi;
        if let StoreError::JournalWrite { source, .. } = self {
            return if source.kind() == std::io::ErrorKind::StorageFull {
                Failure::CannotWriteNow("the server's disk is full")
            } else {
                Failure::CannotWriteNow("the server cannot write to its disk")
            };
        }
        let StoreError::Sqlite {
            source: rusqlite::Error::SqliteFailure(e, _),
            ..
        } = self
        else {
            return Failure::Fatal;
        };
        match (e.code, e.extended_code) {
            (rusqlite::ErrorCode::DiskFull, _) => {
                Failure::CannotWriteNow("the server's disk is full")
            }
            (_, ffi::SQLITE_IOERR_WRITE) => {
                Failure::CannotWriteNow("the server cannot write to its disk")
            }
            (rusqlite::ErrorCode::CannotOpen, _) => {
                Failure::CannotWriteNow("the server cannot open its store files")
            }
            _ => Failure::Fatal,
        }
    }
}
