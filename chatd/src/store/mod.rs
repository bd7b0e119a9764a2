//! The durable store: what the core asks to keep ([`StoreOp`]), gives back
//! at startup ([`Restored`]) and reads a page at a time (held messages).
//!
//! The engine is behind the [`Store`] trait so another can be plugged in
//! later; [`SqliteStore`] is the one `chatd` uses, [`MemoryStore`] is for
//! tests and embedding.
//!
//! Layout: the trait and the in-memory store here; the SQLite engine in
//! `sqlite.rs`, its tables and migrations in `schema.rs`, the sorting of
//! failures into "wait" and "stop" in `error.rs`, and the thread the driver
//! talks to the store through in `thread.rs`.

use std::sync::Arc;

use chatcore::{Message, MessageId, Restored, StoreModel, StoreOp};

mod error;
mod schema;
mod sqlite;
mod thread;

#[cfg(test)]
mod tests;

pub use error::{Failure, StoreError};
pub use sqlite::SqliteStore;
pub(crate) use thread::{Committed, StoreGone, StoreThread};

/// A durable home for the core's state.
///
/// The contract, for any engine (SQLite here; a shared PostgreSQL for
/// several chatd nodes could be next). [`StoreModel`] in chatcore is the
/// reference: after any sequence of committed ops, [`Store::load`] must
/// equal its [`StoreModel::restored`] and [`Store::held_page`] its
/// [`StoreModel::held_page`]; the property test in `tests/props.rs` holds
/// `SqliteStore` to that.
///
/// - **Durability.** When [`Store::apply`] returns `Ok`, every op given is
///   durable: it survives a crash of the process and of the machine. The
///   core sends the lines that depend on them (`OK message ... queued
///   offline`) only after that.
/// - **Atomicity.** One `apply` is all or none. On
///   [`Failure::CannotWriteNow`] none of the ops was applied and the same
///   ops come again later, so applying them must not depend on a partial
///   earlier try.
/// - **Idempotent holds.** Holding the same (user, id) twice keeps one
///   entry; releasing a range that holds nothing does nothing.
/// - **Reads see every commit.** [`Store::held_page`] reflects every op of
///   every `apply` that returned before it was called. The driver calls it
///   only after committing the ops the core emitted before asking, so an
///   engine where reads may lag writes (a replica) must read from where it
///   writes.
/// - **Startup does not grow with held messages.** [`Store::load`] reads
///   summaries (a count and last id per box), not messages: its cost is in
///   users and failed-login records. Bodies are read a page at a time by
///   [`Store::held_page`], which must cost about the page, not the box
///   (an index on (user, id)).
/// - **One writer.** The engine must refuse a second server on the same
///   data (SQLite holds an exclusive lock): two cores would hand out the
///   same ids.
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
