//! Held messages read from the store a page at a time: the driver's side
//! of [`Output::LoadHeld`].
//!
//! A request waits until the changes of the round that emitted it are
//! committed (the page must reflect them), then goes to the store thread,
//! whose answer comes back as [`Input::HeldLoaded`] through the input
//! channel, like a password check's.
//!
//! While the store cannot write, the changes a page must reflect may be
//! waiting in memory, not in the store. The page is then read from the
//! store above the last id those changes release for the user, and the
//! user's waiting holds and releases are applied on top, in order, in a
//! [`StoreModel`]: the store holds every committed change, and the waiting
//! ones all come after them, so the result is what the store will hold.
//! A login during an outage thus gets its held messages.
//!
//! [`Output::LoadHeld`]: chatcore::Output::LoadHeld

use chatcore::{HeldRequest, Input, StoreModel, StoreOp};

use super::Driver;
use crate::store::StoreGone;

impl Driver {
    /// Asks the store for the pages requested so far: call after the
    /// round's commit (or after its changes were set aside to wait).
    pub(super) fn load_pages(&mut self) -> Result<(), StoreGone> {
        for request in std::mem::take(&mut self.loads) {
            // The user's changes not committed yet, in order.
            let pending: Vec<StoreOp> = self
                .waiting
                .iter()
                .flatten()
                .filter(|op| match op {
                    StoreOp::Hold { user, .. } | StoreOp::Release { user, .. } => {
                        *user == request.user
                    }
                    _ => false,
                })
                .cloned()
                .collect();
            // Store entries at or below a pending release are gone once it
            // is applied (it comes after every committed change).
            let released = pending
                .iter()
                .filter_map(|op| match op {
                    StoreOp::Release { upto, .. } => Some(*upto),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            let read = HeldRequest {
                after: request.after.max(released),
                ..request.clone()
            };
            let page = self.store.load_held(read)?;
            let inputs = self.inputs.clone();
            tokio::spawn(async move {
                let HeldRequest {
                    session,
                    load,
                    ref user,
                    after,
                    upto,
                    max,
                } = request;
                let input = match page.await {
                    Ok(Ok(messages)) if pending.is_empty() => Input::HeldLoaded {
                        session,
                        load,
                        messages,
                    },
                    Ok(Ok(messages)) => {
                        let mut model = StoreModel::default();
                        for message in messages {
                            model.apply(&StoreOp::Hold {
                                user: user.clone(),
                                message,
                            });
                        }
                        for op in &pending {
                            model.apply(op);
                        }
                        Input::HeldLoaded {
                            session,
                            load,
                            messages: model.held_page(user, after, upto, max),
                        }
                    }
                    Ok(Err(e)) => {
                        // The block cannot go on: drop the connection, which
                        // puts what it did not confirm back in the box, and
                        // let the user log in again to retry.
                        tracing::error!(
                            %session, %user,
                            "cannot read held messages, dropping the connection: {e}"
                        );
                        Input::Closed { session }
                    }
                    // The store thread is gone; the next commit says so.
                    Err(_) => return,
                };
                let _ = inputs.send(input).await;
            });
        }
        Ok(())
    }
}
