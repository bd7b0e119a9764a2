//! Held messages read from the store a page at a time: the driver's side
//! of [`Output::LoadHeld`].
//!
//! A request waits until the changes of the round that emitted it are
//! committed (the page must reflect them), then goes to the store thread,
//! whose answer comes back as [`Input::HeldLoaded`] through the input
//! channel, like a password check's. While the store cannot write, requests
//! wait for the outage to end: the changes they must reflect are not in
//! the store yet. The session's block waits meanwhile; probes go on.
//!
//! [`Output::LoadHeld`]: chatcore::Output::LoadHeld

use chatcore::{HeldRequest, Input};

use super::Driver;
use crate::store::StoreGone;

impl Driver {
    /// Asks the store for the pages requested so far, once what they must
    /// reflect is committed: call after the round's commit.
    pub(super) fn load_pages(&mut self) -> Result<(), StoreGone> {
        if self.outage.is_some() {
            return Ok(());
        }
        for request in std::mem::take(&mut self.loads) {
            let page = self.store.load_held(request.clone())?;
            let inputs = self.inputs.clone();
            tokio::spawn(async move {
                let HeldRequest {
                    session,
                    load,
                    user,
                    ..
                } = request;
                let input = match page.await {
                    Ok(Ok(messages)) => Input::HeldLoaded {
                        session,
                        load,
                        messages,
                    },
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
