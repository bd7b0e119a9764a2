//! Commits in the background, and the lines that wait for them.
//!
//! The core never waits for the disk. Every change it asks for
//! ([`Output::Persist`]) goes into the *open batch*; at the end of a round
//! the open batch is sealed with the next *ticket* number, and sealed
//! batches go to the store thread one commit at a time, merged (group
//! commit: while one commit runs, the rounds after it pile up and go
//! together in the next). Meanwhile the core goes on with new inputs.
//!
//! Lines go out at once, except those behind an [`Output::Barrier`]: a
//! barrier for one session puts a *wait* for the ticket of the batch
//! holding every change before it at the end of that session's queue, and
//! the session's later lines (and its close) queue behind it, in order
//! (except a delivery, which may pass waiting replies, though never a
//! waiting delivery). A barrier for everyone comes after the core reserves
//! a block of message ids: a delivery carrying an id of that block waits
//! for the ticket of the reservation (see [`Reservations`]), and other
//! deliveries go on. When a commit ends, the queues move on
//! as far as the tickets now durable allow. So an `OK` is seen only once
//! its message is durable, while deliveries to online users, probes and
//! other replies never wait for the disk; a crash before the commit loses
//! only messages whose senders never got their `OK` (PROTOCOL.md §6).
//!
//! Commits are paced (`commit_interval`): one starts at most that long
//! after the one before started, so that under load one transaction and
//! one `fsync` serve the changes of many rounds. Only `OK`s wait for
//! commits, and they are in no hurry (see `acks.rs`); a page of a box that
//! a login waits for starts its commit at once, and so do [`PACE_OPS`]
//! changes and a reservation of ids.
//!
//! A store that cannot write now (a full disk, see [`Failure`]) does not
//! stop the server: the batch that failed goes back to the head of the
//! line, the core is told [`Input::StoreUnavailable`] (it refuses messages
//! until the store commits again), and the commit is tried again at least
//! every [`RETRY_INTERVAL`]. Lines behind barriers wait the outage out;
//! lines that acknowledge nothing (bookkeeping: `Seen`, `Release`, boxes
//! put back when a session ends) go out at once, so sessions stay alive.
//! Past `max_unwritten_bytes` waiting, or at shutdown with the store still
//! unwritable, the server stops: nothing waiting was acknowledged.

use std::collections::VecDeque;
use std::time::Duration;

#[cfg(doc)]
use chatcore::Output;
use chatcore::{Input, MessageId, SessionId, SessionMap, StoreOp};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Driver, RoundOutput, RunError};
use crate::store::{Committed, Failure, StoreError, StoreGone};

/// While the store cannot write, how long after a failed try the next one
/// comes at the latest.
pub(super) const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// While the store cannot write, the least time between two tries: a round
/// with changes tries again this soon, not sooner.
const RETRY_MIN_GAP: Duration = Duration::from_millis(100);

/// While the store cannot write, how often at most a log line says so.
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Changes committed in one transaction at most, when several sealed
/// batches wait (whole batches, so a round's changes are never split; a
/// larger round goes alone). Bounds what one commit, or one failed try,
/// costs.
const COMMIT_CHUNK_OPS: usize = 4096;

/// Changes sealed that start a commit without waiting for
/// `commit_interval`: a commit's fixed cost (the transaction, the `fsync`,
/// two thread hand-offs) is then a small part of it, and waiting would only
/// make the `OK`s later. Senders that keep many messages in flight, each
/// waiting for its `OK`, fill batches this big; a conversation's small
/// rounds do not.
const PACE_OPS: usize = 256;

/// Past this many bytes of sealed changes waiting behind the commit that
/// runs, the driver stops reading inputs until it ends: a disk slower than
/// the clients then slows the clients, as it did when every round waited
/// for its commit, instead of growing memory. (While the store cannot write
/// at all, inputs go on: the core refuses messages then, and
/// `max_unwritten_bytes` bounds what waits.)
const BACKLOG_BYTES: usize = 8 << 20;

/// The store cannot write.
pub(super) struct Outage {
    /// Since when.
    since: Instant,
    /// When it was last tried.
    tried: Instant,
    /// Failed tries so far.
    tries: u64,
    /// When it was last logged.
    logged: Instant,
    /// The last error, with its causes, for logs.
    pub(super) cause: String,
    /// Whether a round sealed new changes since the last try.
    new_changes: bool,
}

/// Changes sealed together, waiting to be committed.
struct Sealed {
    /// The last ticket they make durable (merged batches keep the last).
    ticket: u64,
    ops: Vec<StoreOp>,
    /// Their size (see [`op_bytes`]).
    bytes: usize,
}

/// A commit running on the store thread.
struct InFlight {
    /// The last ticket it makes durable.
    upto: u64,
    /// The size of its changes (see [`op_bytes`]).
    bytes: usize,
    /// When it was sent to the store.
    started: Instant,
    answer: oneshot::Receiver<Committed>,
}

/// One item of a session's queue of lines that wait.
enum Waiting {
    /// Nothing behind this goes out before this ticket is durable.
    Ticket(u64),
    /// An output, in order, and its size in bytes.
    Output(RoundOutput, usize),
}

/// A session's lines that wait, and their size.
#[derive(Default)]
struct SessionQueue {
    items: VecDeque<Waiting>,
    bytes: usize,
    /// How many of the items are deliveries.
    deliveries: usize,
}

/// The driver's side of the store: batches, tickets, and the lines that
/// wait for them.
pub(super) struct Commits {
    /// Changes of the round so far, and their size.
    open: Vec<StoreOp>,
    open_bytes: usize,
    /// The ticket the open batch gets when it is sealed.
    open_ticket: u64,
    /// Sealed batches not yet sent to the store, oldest first.
    sealed: VecDeque<Sealed>,
    /// Bytes of `sealed` (see [`op_bytes`]).
    sealed_bytes: usize,
    /// How many changes are not durable yet, and their bytes: open, sealed
    /// and in flight.
    unwritten_ops: usize,
    unwritten_bytes: usize,
    /// `max_unwritten_bytes`: past it while the store cannot write, the
    /// server stops.
    max_unwritten_bytes: usize,
    in_flight: Option<InFlight>,
    /// `commit_interval`.
    interval: Duration,
    /// When the last commit started.
    last_start: Option<Instant>,
    /// When the next commit starts, if it waits for `interval`.
    paced: Option<Instant>,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// Every delivery waits for this ticket (a barrier for everyone that
    /// does not follow a reservation of ids).
    everyone_waits_for: u64,
    /// Blocks of message ids reserved and the tickets that make them
    /// durable.
    reservations: Reservations,
    /// Lines waiting, per session.
    queues: SessionMap<SessionQueue>,
    /// Queues that a commit emptied, kept for the sessions that wait next.
    /// In a conversation every side's `OK` waits for a commit, so each
    /// commit would otherwise free a queue per session and the next round
    /// allocate it again.
    spare: Vec<VecDeque<Waiting>>,
    pub(super) outage: Option<Outage>,
}

/// Emptied queues kept for reuse at most, and the most items one may have
/// room for (more is a burst's, not a conversation's): at most a few
/// hundred kilobytes kept after a burst.
const SPARE_QUEUES: usize = 256;
const SPARE_ITEMS: usize = 8;

impl Commits {
    /// `reserved`: the first message id the store has not reserved (every
    /// id below it was reserved by a durable change).
    pub(super) fn new(
        max_unwritten_bytes: usize,
        reserved: MessageId,
        interval: Duration,
    ) -> Commits {
        let reservations = Reservations {
            upto: reserved,
            ..Reservations::default()
        };
        Commits {
            open: Vec::new(),
            open_bytes: 0,
            open_ticket: 1,
            sealed: VecDeque::new(),
            sealed_bytes: 0,
            unwritten_ops: 0,
            unwritten_bytes: 0,
            max_unwritten_bytes,
            in_flight: None,
            interval,
            last_start: None,
            paced: None,
            durable: 0,
            everyone_waits_for: 0,
            reservations,
            queues: SessionMap::default(),
            spare: Vec::new(),
            outage: None,
        }
    }

    /// A change for the open batch.
    pub(super) fn persist(&mut self, op: StoreOp) {
        if let StoreOp::ReserveIds { next } = op {
            self.reservations.reserved(next, self.open_ticket);
        } else {
            self.reservations.last_op_reserved = false;
        }
        let bytes = op_bytes(&op);
        self.unwritten_ops += 1;
        self.unwritten_bytes += bytes;
        self.open_bytes += bytes;
        self.open.push(op);
    }

    /// The ticket that makes every change so far durable.
    pub(super) fn ticket_of_everything(&self) -> u64 {
        if self.open.is_empty() {
            self.open_ticket - 1
        } else {
            self.open_ticket
        }
    }

    /// Whether the driver should stop reading inputs until the running
    /// commit ends (see [`BACKLOG_BYTES`]).
    pub(super) fn backlogged(&self) -> bool {
        self.outage.is_none() && self.sealed_bytes > BACKLOG_BYTES
    }

    /// When the store should be tried again, while it cannot write and no
    /// try is running.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        let outage = self.outage.as_ref()?;
        if self.in_flight.is_some() || self.sealed.is_empty() {
            return None;
        }
        let gap = if outage.new_changes {
            RETRY_MIN_GAP
        } else {
            RETRY_INTERVAL
        };
        Some(outage.tried + gap)
    }

    /// When a commit waiting for `commit_interval` starts.
    pub(super) fn paced_until(&self) -> Option<Instant> {
        self.paced.filter(|_| self.in_flight.is_none())
    }

    /// When the sealed batches may go, if not now: `commit_interval` after
    /// the last commit started, unless [`PACE_OPS`] changes wait or a
    /// reservation of ids does (deliveries of its ids will wait for it).
    /// The store that cannot write has its own pace (`retry_at`).
    fn pace(&self, now: Instant) -> Option<Instant> {
        if self.outage.is_some() || !self.reservations.pending.is_empty() {
            return None;
        }
        let at = self.last_start? + self.interval;
        let ops: usize = self.sealed.iter().map(|s| s.ops.len()).sum();
        (now < at && ops < PACE_OPS).then_some(at)
    }

    /// Whether a commit is running.
    pub(super) fn committing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether every change so far is durable.
    fn all_durable(&self) -> bool {
        self.open.is_empty() && self.sealed.is_empty() && self.in_flight.is_none()
    }

    /// Seals the open batch, if it holds anything, with the next ticket.
    fn seal_open(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let sealed = Sealed {
            ticket: self.open_ticket,
            ops: std::mem::take(&mut self.open),
            bytes: std::mem::take(&mut self.open_bytes),
        };
        self.sealed_bytes += sealed.bytes;
        self.sealed.push_back(sealed);
        self.open_ticket += 1;
        if let Some(outage) = &mut self.outage {
            outage.new_changes = true;
        }
    }

    /// Whether every change up to `ticket` is durable.
    pub(super) fn is_durable(&self, ticket: u64) -> bool {
        ticket <= self.durable
    }

    /// While the store cannot write and no try runs: every change not
    /// durable that touches `user`'s box (`Hold`, `Release`), in order.
    /// `None` otherwise: then changes are in flight to the store, and
    /// whether a read sees them cannot be told.
    pub(super) fn unwritten_box_changes(&self, user: &str) -> Option<Vec<StoreOp>> {
        if self.outage.is_none() || self.in_flight.is_some() {
            return None;
        }
        let ops = self.sealed.iter().flat_map(|b| &b.ops).chain(&self.open);
        Some(
            ops.filter(|op| match op {
                StoreOp::Hold { user: u, .. } | StoreOp::Release { user: u, .. } => u == user,
                _ => false,
            })
            .cloned()
            .collect(),
        )
    }

    /// `session`'s queue, made (from a spare) if it has none.
    fn queue(&mut self, session: SessionId) -> &mut SessionQueue {
        let spare = &mut self.spare;
        self.queues.entry(session).or_insert_with(|| SessionQueue {
            items: spare.pop().unwrap_or_default(),
            ..SessionQueue::default()
        })
    }

    /// Forgets the lines waiting for a session that is gone.
    pub(super) fn forget(&mut self, session: SessionId) {
        self.queues.remove(&session);
    }
}

/// The blocks of message ids reserved by changes not yet durable.
///
/// The core reserves a block of ids ahead of use and follows the
/// reservation with a barrier for everyone, so that no delivery carrying
/// an id of the block is seen before the block is durable: otherwise a
/// crash could hand the id out again. Holding back every delivery until
/// then, as that barrier asks, would stall all conversations for a commit
/// each time a block is reserved (every 32,768 messages); the ids of the
/// deliveries tell which of them need the reservation, so only those wait.
#[derive(Debug, Default)]
struct Reservations {
    /// The first id not reserved by any change so far.
    upto: MessageId,
    /// Per reservation not yet durable, oldest first: the first id it
    /// reserves and the ticket that makes it durable.
    pending: VecDeque<(MessageId, u64)>,
    /// Whether the last change was a reservation (then a barrier for
    /// everyone is the one that follows it).
    last_op_reserved: bool,
}

impl Reservations {
    /// Ids below `next` are reserved by a change in the batch of `ticket`.
    fn reserved(&mut self, next: MessageId, ticket: u64) {
        self.last_op_reserved = true;
        if next <= self.upto {
            return;
        }
        self.pending.push_back((self.upto, ticket));
        self.upto = next;
    }

    /// Every ticket up to `durable` is durable.
    fn durable(&mut self, durable: u64) {
        while self.pending.front().is_some_and(|&(_, t)| t <= durable) {
            self.pending.pop_front();
        }
    }

    /// The ticket a delivery carrying `id` waits for (0: none). An id at
    /// or above every reservation (which the core never hands out) waits
    /// for the last one.
    fn ticket_for(&self, id: MessageId) -> u64 {
        self.pending
            .iter()
            .rev()
            .find(|&&(first, _)| first <= id)
            .map_or(0, |&(_, t)| t)
    }
}

/// Waits for the running commit to end; never ends if none runs (for a
/// `select!` branch guarded by [`Commits::committing`]).
pub(super) async fn commit_ended(commits: &mut Commits) -> Result<Committed, StoreGone> {
    match &mut commits.in_flight {
        Some(f) => (&mut f.answer).await.map_err(|_| StoreGone),
        None => std::future::pending().await,
    }
}

impl Driver {
    /// Acts on a barrier (see the module docs).
    pub(super) fn barrier(&mut self, session: Option<SessionId>) {
        let c = &mut self.commits;
        let ticket = c.ticket_of_everything();
        if ticket <= c.durable {
            return;
        }
        match session {
            // Right after a reservation, the deliveries that need it are
            // known by their ids (see `Reservations`).
            None if c.reservations.last_op_reserved => {}
            None => c.everyone_waits_for = c.everyone_waits_for.max(ticket),
            Some(session) => c.queue(session).items.push_back(Waiting::Ticket(ticket)),
        }
    }

    /// An output for a connection: out at once, or behind what the session
    /// waits for.
    pub(super) fn emit(&mut self, output: RoundOutput) {
        let session = output.session();
        let c = &mut self.commits;
        let (delivery, needs) = match &output {
            RoundOutput::Send {
                delivery: Some(id), ..
            } => (
                true,
                c.reservations.ticket_for(*id).max(c.everyone_waits_for),
            ),
            _ => (false, 0),
        };
        let everyone = (needs > c.durable).then_some(needs);
        // A delivery may pass the session's lines that wait (an `OK`, the
        // replies and probes after it), but never another delivery: a
        // client sees deliveries between replies anyway, and in order
        // among themselves. So in a conversation, each side's `MSG` does
        // not wait for the commit of its own last `OK`.
        let free = match c.queues.get(&session) {
            None => true,
            Some(queue) => delivery && queue.deliveries == 0,
        };
        if everyone.is_none() && free {
            self.dispatch(output);
            return;
        }
        let outage = c.outage.is_some();
        let queue = c.queue(session);
        if let Some(ticket) = everyone {
            let waits = queue
                .items
                .iter()
                .rev()
                .find_map(|w| match w {
                    Waiting::Ticket(t) => Some(*t),
                    Waiting::Output(..) => None,
                })
                .unwrap_or(0);
            if waits < ticket {
                queue.items.push_back(Waiting::Ticket(ticket));
            }
        }
        let bytes = match &output {
            // Only lines that wait are measured.
            RoundOutput::Send { bytes, .. } => bytes.len(),
            RoundOutput::Close { .. } | RoundOutput::NotifyWritten { .. } => 0,
        };
        queue.bytes += bytes;
        queue.deliveries += usize::from(delivery);
        // While the store commits, a queue empties at every commit, and a
        // backlog of commits stops the reading of inputs. While it cannot
        // write, nothing empties it: then, as for a peer that stops
        // reading, a session cannot make the server keep without bound
        // what it may not send yet.
        if outage && queue.bytes > self.limit.max_bytes {
            self.dead.push(session);
        }
        queue.items.push_back(Waiting::Output(output, bytes));
    }

    /// Sends what waited for tickets now durable, in each session's order.
    fn release(&mut self) {
        let durable = self.commits.durable;
        let mut ready = Vec::new();
        let spare = &mut self.commits.spare;
        self.commits.queues.retain(|_, queue| {
            while let Some(front) = queue.items.front() {
                match front {
                    Waiting::Ticket(t) if *t > durable => return true,
                    Waiting::Ticket(_) => {
                        queue.items.pop_front();
                    }
                    Waiting::Output(..) => {
                        if let Some(Waiting::Output(o, bytes)) = queue.items.pop_front() {
                            queue.bytes -= bytes;
                            if let RoundOutput::Send {
                                delivery: Some(_), ..
                            } = &o
                            {
                                queue.deliveries -= 1;
                            }
                            ready.push(o);
                        }
                    }
                }
            }
            if spare.len() < SPARE_QUEUES && queue.items.capacity() <= SPARE_ITEMS {
                spare.push(std::mem::take(&mut queue.items));
            }
            false
        });
        for output in ready {
            self.dispatch(output);
        }
    }

    /// Seals the round's changes and starts a commit if none runs. Fails
    /// once too much waits for a store that cannot write.
    pub(super) fn seal(&mut self) -> Result<(), RunError> {
        self.commits.seal_open();
        let c = &mut self.commits;
        if c.unwritten_bytes > c.max_unwritten_bytes && c.outage.is_some() {
            // Nothing waiting was acknowledged, so nothing acknowledged is
            // lost, and a restart comes up on the full disk.
            let outage = c.outage.as_ref();
            return Err(RunError::Unwritable {
                why: format!(
                    "giving up: the store has not been writable for {} s and {} changes \
                     ({} bytes) wait for it, over max_unwritten_bytes ({})",
                    outage.map_or(0, |o| o.since.elapsed().as_secs()),
                    c.unwritten_ops,
                    c.unwritten_bytes,
                    c.max_unwritten_bytes,
                ),
                cause: outage.map_or_else(String::new, |o| o.cause.clone()),
            });
        }
        if c.outage.is_none() {
            self.start_commit()?;
        }
        Ok(())
    }

    /// Sends the sealed batches to the store, unless a commit runs or they
    /// wait for `commit_interval`.
    pub(super) fn start_commit(&mut self) -> Result<(), RunError> {
        let c = &mut self.commits;
        if c.in_flight.is_some() || c.sealed.is_empty() {
            return Ok(());
        }
        // A page of a box waits for this commit, and a login for the page.
        if self.loads.is_empty() {
            if let Some(at) = c.pace(Instant::now()) {
                c.paced = Some(at);
                return Ok(());
            }
        }
        self.start_commit_now()
    }

    /// Sends the sealed batches (as many whole ones as fit a chunk) to the
    /// store, unless a commit runs.
    pub(super) fn start_commit_now(&mut self) -> Result<(), RunError> {
        let c = &mut self.commits;
        if c.in_flight.is_some() {
            return Ok(());
        }
        let Some(mut chunk) = c.sealed.pop_front() else {
            return Ok(());
        };
        while let Some(next) = c.sealed.front() {
            if chunk.ops.len() + next.ops.len() > COMMIT_CHUNK_OPS {
                break;
            }
            if let Some(next) = c.sealed.pop_front() {
                chunk.ticket = next.ticket;
                chunk.ops.extend(next.ops);
                chunk.bytes += next.bytes;
            }
        }
        c.sealed_bytes -= chunk.bytes;
        c.paced = None;
        c.last_start = Some(Instant::now());
        if let Some(outage) = &mut c.outage {
            outage.tried = Instant::now();
            outage.new_changes = false;
        }
        let answer = self.store.start_commit(chunk.ops)?;
        self.commits.in_flight = Some(InFlight {
            upto: chunk.ticket,
            bytes: chunk.bytes,
            started: Instant::now(),
            answer,
        });
        Ok(())
    }

    /// The running commit ended: on success, send what waited for it and
    /// start the next; on a store that cannot write, keep its changes at
    /// the head of the line and tell the core; on anything else, stop.
    pub(super) fn commit_done(
        &mut self,
        ended: Result<Committed, StoreGone>,
    ) -> Result<(), RunError> {
        let Some(InFlight {
            upto,
            bytes,
            started,
            ..
        }) = self.commits.in_flight.take()
        else {
            return Ok(());
        };
        let (ops, result) = ended?;
        crate::metrics::commit(started.elapsed());
        match result {
            Ok(()) => {
                let c = &mut self.commits;
                c.durable = upto;
                c.reservations.durable(upto);
                c.unwritten_ops -= ops.len();
                c.unwritten_bytes -= bytes;
                self.end_outage();
                self.release();
                self.start_commit()
            }
            Err(e) => {
                let Failure::CannotWriteNow(detail) = e.failure() else {
                    return Err(RunError::Store(e));
                };
                let c = &mut self.commits;
                c.sealed_bytes += bytes;
                c.sealed.push_front(Sealed {
                    ticket: upto,
                    ops,
                    bytes,
                });
                self.store_failed(&e, detail);
                Ok(())
            }
        }
    }

    /// A try failed because the store cannot write: start the outage (tell
    /// the core, log) or count the try.
    fn store_failed(&mut self, e: &StoreError, detail: &str) {
        let cause = error_chain(e);
        let now = Instant::now();
        let waiting = self.commits.unwritten_ops;
        if let Some(outage) = &mut self.commits.outage {
            outage.tries += 1;
            outage.cause = cause;
            if outage.logged.elapsed() >= OUTAGE_LOG_INTERVAL {
                outage.logged = now;
                tracing::warn!(
                    "the store still cannot commit after {} s ({} tries, {waiting} changes \
                     waiting): {}",
                    outage.since.elapsed().as_secs(),
                    outage.tries,
                    outage.cause
                );
            }
            return;
        }
        tracing::warn!(
            "cannot commit to the store, refusing messages until it can \
             (trying again every {} s): {cause}",
            RETRY_INTERVAL.as_secs()
        );
        self.commits.outage = Some(Outage {
            since: now,
            tried: now,
            tries: 1,
            logged: now,
            cause,
            new_changes: false,
        });
        self.server.handle_input(
            self.clock.now(),
            Input::StoreUnavailable {
                detail: detail.to_string(),
            },
        );
        self.drain();
    }

    /// The store commits again: tell the core, and log it.
    fn end_outage(&mut self) {
        let Some(outage) = self.commits.outage.take() else {
            return;
        };
        let waiting: usize = self.commits.queues.values().map(|q| q.items.len()).sum();
        self.server
            .handle_input(self.clock.now(), Input::StoreAvailable);
        self.drain();
        tracing::info!(
            "the store commits again after {:.1} s ({} failed tries); \
             {waiting} held lines go out, messages accepted again",
            outage.since.elapsed().as_secs_f64(),
            outage.tries,
        );
    }

    /// At shutdown: commits everything, trying once more if the store
    /// cannot write, and sends what waited. Lines still waiting after a
    /// last failed try are dropped: none of them was acknowledged.
    pub(super) async fn flush_commits(&mut self) -> Result<(), RunError> {
        self.seal()?;
        let mut tries_left = 1;
        loop {
            if self.commits.in_flight.is_none() {
                if self.commits.all_durable() {
                    return Ok(());
                }
                if self.commits.outage.is_some() {
                    if tries_left == 0 {
                        let outage = self.commits.outage.as_ref();
                        return Err(RunError::Unwritable {
                            why: format!(
                                "shutting down with {} changes the store could not commit \
                                 (none of them acknowledged)",
                                self.commits.unwritten_ops
                            ),
                            cause: outage.map_or_else(String::new, |o| o.cause.clone()),
                        });
                    }
                    tries_left -= 1;
                }
                self.start_commit_now()?;
            }
            let ended = commit_ended(&mut self.commits).await;
            self.commit_done(ended)?;
            // Anything the core said meanwhile (its answer to
            // `StoreAvailable`) joins the last commits.
            self.commits.seal_open();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Reserving at startup (ids from 1000 on), then the next block while
    /// the first is half used, as the core does.
    fn two_blocks() -> Reservations {
        let mut r = Reservations {
            upto: 1000,
            ..Reservations::default()
        };
        r.reserved(2024, 1);
        r.reserved(3048, 7);
        r
    }

    #[test]
    fn a_delivery_waits_only_for_the_reservation_of_its_id() {
        let r = two_blocks();
        // Reserved before startup: durable already.
        assert_eq!(r.ticket_for(999), 0);
        assert_eq!(r.ticket_for(1000), 1);
        assert_eq!(r.ticket_for(2023), 1);
        // The second block's ids wait for its ticket, not the first's.
        assert_eq!(r.ticket_for(2024), 7);
        assert_eq!(r.ticket_for(3047), 7);
    }

    #[test]
    fn once_a_reservation_is_durable_its_ids_wait_for_nothing() {
        let mut r = two_blocks();
        r.durable(1);
        // The case that used to stall everyone: the first block's ids go
        // out while the second block's reservation is being committed.
        assert_eq!(r.ticket_for(1500), 0);
        assert_eq!(r.ticket_for(2500), 7);
        r.durable(7);
        assert_eq!(r.ticket_for(2500), 0);
        assert!(r.pending.is_empty());
    }

    #[test]
    fn a_reservation_that_reserves_nothing_new_is_not_waited_for() {
        let mut r = two_blocks();
        r.reserved(3000, 9);
        assert!(r.last_op_reserved);
        assert_eq!(r.ticket_for(3047), 7);
        assert_eq!(r.pending.len(), 2);
    }

    #[test]
    fn a_barrier_for_everyone_that_follows_no_reservation_holds_every_delivery() {
        let mut c = Commits::new(1 << 20, 0, Duration::ZERO);
        c.persist(StoreOp::ReserveIds { next: 1024 });
        assert!(c.reservations.last_op_reserved);
        c.persist(StoreOp::Seen {
            user: "alice".into(),
            at: chatcore::Time::from_unix_millis(1),
        });
        // Then `Driver::barrier` falls back to holding every delivery.
        assert!(!c.reservations.last_op_reserved);
    }

    fn seen() -> StoreOp {
        StoreOp::Seen {
            user: "alice".into(),
            at: chatcore::Time::from_unix_millis(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_waits_for_the_interval_unless_many_changes_wait() {
        let ms = Duration::from_millis;
        let mut c = Commits::new(1 << 20, 0, ms(2));
        c.persist(seen());
        c.seal_open();
        // The first commit goes at once.
        let start = Instant::now();
        assert_eq!(c.pace(start), None);
        c.last_start = Some(start);
        c.sealed.clear();
        // The next waits for the interval...
        c.persist(seen());
        c.seal_open();
        tokio::time::advance(ms(1)).await;
        assert_eq!(c.pace(Instant::now()), Some(start + ms(2)));
        // ...unless many changes wait...
        for _ in 0..PACE_OPS - 2 {
            c.persist(seen());
        }
        c.seal_open();
        assert_eq!(c.pace(Instant::now()), Some(start + ms(2)));
        c.persist(seen());
        c.seal_open();
        assert_eq!(c.pace(Instant::now()), None);
        c.sealed.truncate(1);
        // ...or a reservation of ids...
        c.persist(StoreOp::ReserveIds { next: 1024 });
        c.seal_open();
        assert_eq!(c.pace(Instant::now()), None);
        c.reservations.durable(c.open_ticket);
        assert_eq!(c.pace(Instant::now()), Some(start + ms(2)));
        // ...and goes once the interval is over.
        tokio::time::advance(ms(1)).await;
        assert_eq!(c.pace(Instant::now()), None);
        // With no interval, nothing waits.
        let mut c = Commits::new(1 << 20, 0, Duration::ZERO);
        c.last_start = Some(Instant::now());
        c.persist(seen());
        c.seal_open();
        assert_eq!(c.pace(Instant::now()), None);
    }
}
