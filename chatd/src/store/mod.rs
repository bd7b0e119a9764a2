//! The durable store: what the core asks to keep ([`StoreOp`]) and gives
//! back at startup ([`Restored`]).
//!
//! The engine is behind the [`Store`] trait so another can be plugged in
//! later; [`SqliteStore`] is the one `chatd` uses, [`MemoryStore`] is for
//! tests and embedding.
//!
//! Layout: the trait and the in-memory store here; the SQLite engine in
//! `sqlite.rs`, its tables and migrations in `schema.rs`, the sorting of
//! failures into "wait" and "stop" in `error.rs`, and the thread the driver
//! talks to the store through in `thread.rs`.

use chatcore::{Restored, StoreOp};

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
pub trait Store: Send {
    /// Reads back everything applied so far.
    fn load(&mut self) -> Result<Restored, StoreError>;

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
