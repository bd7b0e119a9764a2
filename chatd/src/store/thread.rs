//! The store on a thread of its own, which is how the driver reaches it:
//! SQLite calls block, so they must not run on the driver's task, and one
//! thread keeps one connection and its prepared statements for the whole
//! run.

use std::time::Duration;

use chatcore::StoreOp;
use tokio::sync::oneshot;

use super::{Store, StoreError};

/// The store thread is gone (it panicked): the driver cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreGone;

/// A request to the store thread: ops to commit, and where to answer (the
/// ops come back, to be tried again if the store cannot write now).
type Commit = (Vec<StoreOp>, oneshot::Sender<Committed>);

/// The store thread's answer.
pub(crate) type Committed = (Vec<StoreOp>, Result<(), StoreError>);

/// The store, on a thread of its own: SQLite calls block, and one thread
/// keeps one connection and its prepared statements.
pub(crate) struct StoreThread {
    tx: std::sync::mpsc::Sender<Commit>,
    done: oneshot::Receiver<()>,
}

impl StoreThread {
    pub(crate) fn start(mut store: Box<dyn Store>) -> std::io::Result<StoreThread> {
        let (tx, rx) = std::sync::mpsc::channel::<Commit>();
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("chatd-store".into())
            .spawn(move || {
                while let Ok((ops, answer)) = rx.recv() {
                    let result = store.apply(&ops);
                    let _ = answer.send((ops, result));
                }
                drop(store);
                let _ = done_tx.send(());
            })?;
        Ok(StoreThread { tx, done })
    }

    /// Starts committing `ops`; they come back with the result. Commits
    /// run one after another, in the order started.
    pub(crate) fn start_commit(
        &self,
        ops: Vec<StoreOp>,
    ) -> Result<oneshot::Receiver<Committed>, StoreGone> {
        let (answer, result) = oneshot::channel();
        self.tx.send((ops, answer)).map_err(|_| StoreGone)?;
        Ok(result)
    }

    /// Closes the store and waits (briefly) for the thread to finish.
    pub(crate) async fn close(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.done).await;
    }
}
