//! The store on a thread of its own, which is how the driver reaches it:
//! SQLite calls block, so they must not run on the driver's task, and one
//! thread keeps one connection and its prepared statements for the whole
//! run. Between requests it does the work the store put off
//! ([`Store::due`]).

use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatcore::{HeldRequest, Message, StoreOp};
use tokio::sync::oneshot;

use super::{Store, StoreError};

/// The store thread is gone (it panicked): the driver cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreGone;

/// A request to the store thread: ops to commit, and where to answer (the
/// ops come back, to be tried again if the store cannot write now).
type Commit = (Vec<StoreOp>, oneshot::Sender<Committed>);

/// A page of a box read by the store thread.
pub(crate) type Page = Result<Vec<Arc<Message>>, StoreError>;

/// What the store thread is asked to do, in the order asked: a page read
/// after a commit sees that commit.
enum Request {
    Commit(Commit),
    LoadHeld(HeldRequest, oneshot::Sender<Page>),
}

/// The store thread's answer.
pub(crate) type Committed = (Vec<StoreOp>, Result<(), StoreError>);

/// The store, on a thread of its own: SQLite calls block, and one thread
/// keeps one connection and its prepared statements.
pub(crate) struct StoreThread {
    tx: std::sync::mpsc::Sender<Request>,
    done: oneshot::Receiver<()>,
}

impl StoreThread {
    pub(crate) fn start(mut store: Box<dyn Store>) -> std::io::Result<StoreThread> {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("chatd-store".into())
            .spawn(move || {
                loop {
                    let request = match store.due() {
                        None => match rx.recv() {
                            Ok(request) => request,
                            Err(_) => break,
                        },
                        Some(at) => {
                            let wait = at.saturating_duration_since(Instant::now());
                            match rx.recv_timeout(wait) {
                                Ok(request) => request,
                                Err(RecvTimeoutError::Timeout) => {
                                    store.catch_up();
                                    continue;
                                }
                                Err(RecvTimeoutError::Disconnected) => break,
                            }
                        }
                    };
                    match request {
                        Request::Commit((ops, answer)) => {
                            let result = store.apply(&ops);
                            let _ = answer.send((ops, result));
                        }
                        Request::LoadHeld(r, answer) => {
                            let _ = answer.send(store.held_page(&r.user, r.after, r.upto, r.max));
                        }
                    }
                    // Under steady load the wait above never times out.
                    if store.due().is_some_and(|at| at <= Instant::now()) {
                        store.catch_up();
                    }
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
        self.tx
            .send(Request::Commit((ops, answer)))
            .map_err(|_| StoreGone)?;
        Ok(result)
    }

    /// Asks for a page of a box. It is read after every commit asked for
    /// before, so it reflects them.
    pub(crate) fn load_held(
        &self,
        request: HeldRequest,
    ) -> Result<oneshot::Receiver<Page>, StoreGone> {
        let (answer, page) = oneshot::channel();
        self.tx
            .send(Request::LoadHeld(request, answer))
            .map_err(|_| StoreGone)?;
        Ok(page)
    }

    /// Closes the store and waits (briefly) for the thread to finish.
    pub(crate) async fn close(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.done).await;
    }
}
