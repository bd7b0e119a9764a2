//! Held messages read from the store a page at a time: the driver's side
//! of [`Output::LoadHeld`].
//!
//! A request waits until every change emitted before it is durable (the
//! page must reflect them; commits run in the background, see
//! `commits.rs`), then goes to the store thread, which serves requests in
//! order, after the commits sent before; its answer comes back as
//! [`Input::HeldLoaded`] through the input channel, like a password
//! check's.
//!
//! While the store cannot write, those changes may wait in memory for
//! good. The page is then read from the store above the last id they
//! release for the user, and the user's waiting holds and releases are
//! applied on top, in order, in a [`StoreModel`]: the store holds every
//! committed change, and the waiting ones all come after them, so the
//! result is what the store will hold. A login during an outage thus gets
//! its held messages.
//!
//! [`Output::LoadHeld`]: chatcore::Output::LoadHeld

use chatcore::{HeldRequest, Input, StoreModel, StoreOp};

use super::Driver;
use crate::store::StoreGone;

impl Driver {
    /// Asks the store for the pages whose changes are durable (or, while
    /// the store cannot write, can be read with them applied on top):
    /// call at the end of every round.
    pub(super) fn load_pages(&mut self) -> Result<(), StoreGone> {
        let loads = std::mem::take(&mut self.loads);
        for (ticket, request) in loads {
            // The user's changes not committed yet, in order.
            let pending = if self.commits.is_durable(ticket) {
                Vec::new()
            } else if let Some(ops) = self.commits.unwritten_box_changes(&request.user) {
                ops
            } else {
                self.loads.push((ticket, request));
                continue;
            };
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
