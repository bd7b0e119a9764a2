//! The durable store: what the core asks to keep ([`StoreOp`]), gives back
//! at startup ([`Restored`]) and reads a page at a time (held messages).
//!
//! The engine is behind the [`Store`] trait so another can be plugged in
//! later; [`JournaledStore`] (SQLite behind a journal) is the one `chatd`
//! uses, [`SqliteStore`] the database alone, [`MemoryStore`] is for tests
//! and embedding.
//!
//! Layout: the trait and the in-memory store here; the journal in
//! `journal.rs` and its record of ops in `codec.rs`; the SQLite engine in
//! `sqlite.rs`, broadcasts held as one row in `groups.rs`, private messages
//! as a log in `recent.rs`, its tables and
//! migrations in `schema.rs`, the sorting of
//! failures into "wait" and "stop" in `error.rs`, and the thread the driver
//! talks to the store through in `thread.rs`.

use std::sync::Arc;
use std::time::Instant;

use chatcore::{Message, MessageId, Restored, StoreModel, StoreOp};

mod codec;
mod error;
mod groups;
mod journal;
mod recent;
mod schema;
mod sqlite;
mod thread;

#[cfg(test)]
mod tests;

pub use error::{Failure, StoreError};
pub use journal::{JournalLimits, JournaledStore};
pub use sqlite::SqliteStore;
pub(crate) use thread::{Committed, StoreGone, StoreThread};

/// A durable home for the core's state.
///
/// Any engine (SQLite here; a shared PostgreSQL for several chatd nodes
/// could be next) keeps the store contract written in chatcore, in
/// [`chatcore::persist`](chatcore::persist#the-store-contract): the same
/// answers as [`StoreModel`], durable before the lines behind a barrier,
/// reads that see every commit, all or none, boxes in id order,
/// idempotent ops, one body per id, a startup that does not grow with held
/// messages, and one writer. `tests/props.rs` runs chatcore's store check
/// (`chatcore::testing::store_check`) against [`SqliteStore`] and
/// [`MemoryStore`]; the rest of `tests/` covers what it cannot see (a
/// failed transaction, a full disk, a second server, the indexes).
///
/// What is chatd's own:
///
/// - **Failures sorted.** A failed [`Store::apply`] says, through
///   [`StoreError::failure`], whether the server can wait
///   ([`Failure::CannotWriteNow`]: none of the ops was applied, and the
///   same ops come again later, so applying them must not depend on a
///   partial earlier try) or must stop.
/// - **One thread.** The driver reaches the store through one thread
///   (`thread.rs`) that takes commits and page reads in the order asked,
///   so a page read after a commit sees it (rule 3 of the contract).
pub trait Store: Send {
    /// Reads back the durable state: the id counter, a summary of each
    /// non-empty box, last-seen times and failed-login records.
    fn load(&mut self) -> Result<Restored, StoreError>;

    /// The entries of `user`'s box with `after < id <= upto`, oldest first,
    /// at most `max` of them: the answer to [`chatcore::Output::LoadHeld`].
    fn held_page(
        &mut self,
        user: &str,
        after: MessageId,
        upto: MessageId,
        max: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError>;

    /// Applies `ops` in order, all or none: one transaction, so the caller
    /// can group every change of a round into one commit (group commit).
    /// When it returns `Ok`, the changes survive a crash. When it fails
    /// with [`Failure::CannotWriteNow`], none of them was applied and the
    /// store takes the same `ops` again later.
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;

    /// When the store wants [`Store::catch_up`] called, if it put work
    /// off (the journal's move into the database): the store thread calls
    /// it between requests, so that no commit waits for that work.
    fn due(&self) -> Option<Instant> {
        None
    }

    /// Does a step of the work put off, short enough that a commit asked
    /// for meanwhile does not wait long (the store thread calls it again
    /// while it is due). A failure that is not fatal leaves the work for
    /// later; a fatal one is returned by the next request.
    fn catch_up(&mut self) {}
}

/// A store that keeps state in memory only: for tests and for embedding the
/// server without durability.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    /// The state so far.
    pub state: StoreModel,
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Restored, StoreError> {
        Ok(self.state.restored())
    }

    fn held_page(
        &mut self,
        user: &str,
        after: MessageId,
        upto: MessageId,
        max: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        Ok(self.state.held_page(user, after, upto, max))
    }

    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        for op in ops {
            self.state.apply(op);
        }
        Ok(())
    }
}
