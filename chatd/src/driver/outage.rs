//! The driver through a store outage (a full disk): what waits for the
//! store, what is held back, and how it all goes out once the store
//! commits again. Kept apart from the round loop because these rules are
//! the subtle part of the driver (see [`Driver::commit`]) and are read on
//! their own.

use std::time::Duration;

use chatcore::{Input, SessionId, StoreOp};
use tokio::time::Instant;

use super::{Driver, RoundOutput, RunError};
use crate::store::{Failure, StoreError};

/// While the store cannot write, how long after a failed try the next one
/// comes at the latest.
pub(super) const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// While the store cannot write, the least time between two tries: a round
/// with changes tries at once, unless the last try was this recent. Each
/// failed try costs the core a commit's worth of time.
const RETRY_MIN_GAP: Duration = Duration::from_millis(100);

/// While the store cannot write, how often at most a log line says so.
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Changes committed in one transaction at most when the store can write
/// again (whole rounds, so a round's changes are never split; a single
/// larger round goes alone). Bounds what one failed try costs.
const RETRY_CHUNK_OPS: usize = 4096;

/// The store cannot write (see [`Driver::commit`]).
pub(super) struct Outage {
    /// Since when.
    pub(super) since: Instant,
    /// When it was last tried.
    pub(super) tried: Instant,
    /// Failed tries so far.
    pub(super) tries: u64,
    /// When it was last logged.
    pub(super) logged: Instant,
    /// The last error, with its causes, for logs.
    pub(super) cause: String,
}

/// One held output.
pub(super) enum Held {
    /// A line, `\n` included.
    Line(String),
    /// [`Output::Close`].
    Close,
    /// [`Output::NotifyWritten`].
    NotifyWritten,
}

impl Driver {
    /// Commits a round's `ops`; returns whether the round's lines must be
    /// held back until a later commit succeeds.
    ///
    /// While the store can write, the round's ops are committed and its
    /// lines go out after. A commit that fails with
    /// [`Failure::CannotWriteNow`] starts an outage:
    /// - The ops are kept, in order, ahead of every later round's ops
    ///   (SQLite rolled the transaction back, so all of them must be
    ///   applied again), and tried again at least every
    ///   [`RETRY_INTERVAL`], and by any round with changes of its own.
    /// - The core is told [`Input::StoreUnavailable`]: from the next round
    ///   on it refuses `message` and `broadcast` with `ERR unavailable` and
    ///   carries on with everything else.
    /// - The round's lines are held back if its ops include a `Hold` or
    ///   `ReserveIds`: then the round accepted a message, and its `OK` (and
    ///   its deliveries) must not be seen before the message is durable.
    ///   Every later line for a session with held lines waits behind them.
    ///   A round with only bookkeeping (`Seen`, `Release`, login failures)
    ///   sends its lines at once: none of them says that those are durable,
    ///   and losing them in a crash costs a redelivery or a stale record,
    ///   never an acknowledged message.
    ///
    /// Rounds during the outage send their lines at once (behind held lines
    /// of their session): the core accepts no message then, so their ops
    /// are bookkeeping; a `Hold` among them puts back deliveries a session
    /// left unconfirmed, already acknowledged to their senders. Holding
    /// those rounds would stall every session with a line in them (probes
    /// included) until the disk has room, and stalled sessions time out,
    /// which puts back more. A `ReserveIds` there would mean the core
    /// accepted a message anyway; such a round is held, to be safe.
    ///
    /// Once everything waiting is committed, the held lines go out in
    /// order and the core is told [`Input::StoreAvailable`].
    ///
    /// A [`Failure::Fatal`] error, at any time, stops the server.
    pub(super) async fn commit(&mut self, ops: Vec<StoreOp>) -> Result<bool, RunError> {
        if self.outage.is_none() {
            if ops.is_empty() {
                return Ok(false);
            }
            let acknowledges = ops
                .iter()
                .any(|op| matches!(op, StoreOp::Hold { .. } | StoreOp::ReserveIds { .. }));
            let started = std::time::Instant::now();
            let (ops, result) = self.store.commit(ops).await?;
            crate::metrics::commit(started.elapsed());
            let Err(e) = result else {
                return Ok(false);
            };
            let Failure::CannotWriteNow(detail) = e.failure() else {
                return Err(RunError::Store(e));
            };
            self.begin_outage(&e, detail);
            self.wait_for_store(ops)?;
            return Ok(acknowledges);
        }
        let accepted = ops
            .iter()
            .any(|op| matches!(op, StoreOp::ReserveIds { .. }));
        let gap = if ops.is_empty() {
            RETRY_INTERVAL
        } else {
            self.wait_for_store(ops)?;
            RETRY_MIN_GAP
        };
        if self
            .outage
            .as_ref()
            .is_some_and(|o| o.tried.elapsed() >= gap)
        {
            self.retry().await?;
        }
        if accepted && self.outage.is_some() {
            tracing::error!("the core accepted a message while the store cannot write");
            return Ok(true);
        }
        Ok(false)
    }

    /// The store cannot write: tell the core, and log it.
    fn begin_outage(&mut self, e: &StoreError, detail: &str) {
        let cause = error_chain(e);
        tracing::warn!(
            "cannot commit to the store, refusing messages until it can \
             (trying again every {} s): {cause}",
            RETRY_INTERVAL.as_secs()
        );
        let now = Instant::now();
        self.outage = Some(Outage {
            since: now,
            tried: now,
            tries: 1,
            logged: now,
            cause,
        });
        self.server.handle_input(
            self.clock.now(),
            Input::StoreUnavailable {
                detail: detail.to_string(),
            },
        );
        self.drain();
    }

    /// Keeps `ops` for a later commit, after those already waiting; fails
    /// once too much waits.
    fn wait_for_store(&mut self, ops: Vec<StoreOp>) -> Result<(), RunError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.waiting_ops += ops.len();
        self.waiting_bytes += ops.iter().map(op_bytes).sum::<usize>();
        self.waiting.push_back(ops);
        // Past the bound the server stops, as it did on any failed commit
        // before: nothing waiting was acknowledged, so nothing acknowledged
        // is lost, and a restart comes up on the full disk.
        if self.waiting_bytes > self.max_waiting_bytes {
            let outage = self.outage.as_ref();
            return Err(RunError::Unwritable {
                why: format!(
                    "giving up: the store has not been writable for {} s and {} changes \
                     ({} bytes) wait for it, over max_unwritten_bytes ({})",
                    outage.map_or(0, |o| o.since.elapsed().as_secs()),
                    self.waiting_ops,
                    self.waiting_bytes,
                    self.max_waiting_bytes,
                ),
                cause: outage.map_or_else(String::new, |o| o.cause.clone()),
            });
        }
        Ok(())
    }

    /// Tries to commit everything waiting, a chunk of whole rounds at a
    /// time (each chunk committed is a state the core went through, so a
    /// crash between chunks leaves the store consistent). Ends the outage
    /// once nothing waits.
    pub(super) async fn retry(&mut self) -> Result<(), RunError> {
        while !self.waiting.is_empty() {
            let mut chunk = self.waiting.pop_front().unwrap_or_default();
            while let Some(next) = self.waiting.front() {
                if chunk.len() + next.len() > RETRY_CHUNK_OPS {
                    break;
                }
                chunk.extend(self.waiting.pop_front().unwrap_or_default());
            }
            let (chunk, result) = self.store.commit(chunk).await?;
            match result {
                Ok(()) => {
                    self.waiting_ops -= chunk.len();
                    self.waiting_bytes -= chunk.iter().map(op_bytes).sum::<usize>();
                }
                Err(e) => {
                    let Failure::CannotWriteNow(_) = e.failure() else {
                        return Err(RunError::Store(e));
                    };
                    self.waiting.push_front(chunk);
                    if let Some(outage) = &mut self.outage {
                        outage.tried = Instant::now();
                        outage.tries += 1;
                        outage.cause = error_chain(&e);
                        if outage.logged.elapsed() >= OUTAGE_LOG_INTERVAL {
                            outage.logged = Instant::now();
                            tracing::warn!(
                                "the store still cannot commit after {} s ({} tries, {} changes \
                                 waiting): {}",
                                outage.since.elapsed().as_secs(),
                                outage.tries,
                                self.waiting_ops,
                                outage.cause
                            );
                        }
                    }
                    return Ok(());
                }
            }
        }
        self.end_outage();
        Ok(())
    }

    /// Everything waiting is committed: send the held lines in order and
    /// tell the core.
    fn end_outage(&mut self) {
        let Some(outage) = self.outage.take() else {
            return;
        };
        let held = std::mem::take(&mut self.held);
        self.held_bytes.clear();
        let lines = held.len();
        for (session, item) in held {
            match item {
                Held::Line(text) => {
                    let Some(conn) = self.conns.get_mut(&session) else {
                        continue;
                    };
                    tracing::trace!(%session, "-> (held) {}", text.trim_end());
                    if conn.out.push(text, &self.limit, &self.clock).is_err() {
                        self.dead.push(session);
                    }
                }
                Held::Close => {
                    self.conns.remove(&session);
                }
                Held::NotifyWritten => {
                    if let Some(conn) = self.conns.get(&session) {
                        conn.out.mark();
                    }
                }
            }
        }
        self.server
            .handle_input(self.clock.now(), Input::StoreAvailable);
        self.drain();
        tracing::info!(
            "the store commits again after {:.1} s ({} failed tries); \
             {lines} held lines sent, messages accepted again",
            outage.since.elapsed().as_secs_f64(),
            outage.tries,
        );
    }

    /// Holds one output back behind the session's other held ones. A
    /// session whose held lines pass `max_outbound_bytes` is dropped, as a
    /// peer that stops reading is.
    pub(super) fn hold(&mut self, session: SessionId, output: RoundOutput) {
        let item = match output {
            RoundOutput::Send { line, .. } => {
                let mut text = line.to_string();
                text.push('\n');
                Held::Line(text)
            }
            RoundOutput::Close { .. } => Held::Close,
            RoundOutput::NotifyWritten { .. } => Held::NotifyWritten,
        };
        let bytes = match &item {
            Held::Line(text) => text.len(),
            Held::Close | Held::NotifyWritten => 0,
        };
        let held = self.held_bytes.entry(session).or_default();
        *held += bytes;
        if *held > self.limit.max_bytes {
            self.dead.push(session);
        }
        self.held.push_back((session, item));
    }
}

/// An error and its causes on one line, as the binary prints them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// About how much memory a waiting op keeps alive: its strings and a
/// fixed overhead. A held message's text counts in full, though the core
/// may share it, so the bound errs on the safe side.
fn op_bytes(op: &StoreOp) -> usize {
    const OVERHEAD: usize = 64;
    OVERHEAD
        + match op {
            StoreOp::Hold { user, message } => user.len() + message.from.len() + message.text.len(),
            StoreOp::Release { user, .. }
            | StoreOp::Seen { user, .. }
            | StoreOp::ClearLoginFailures { user, .. } => user.len(),
            StoreOp::LoginFailures(f) => f.user.len(),
            StoreOp::ReserveIds { .. } => 0,
        }
}
