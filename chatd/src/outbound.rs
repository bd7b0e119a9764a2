//! One connection's outbound queue, which the driver fills without ever
//! waiting (so one slow reader cannot stall everyone) and the connection's
//! writer drains. Its bound in bytes ([`Outbound::push`]) is what turns a
//! peer that stops reading into a dropped connection instead of memory
//! growing without end.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::clock::Clock;

/// An entry of an outbound queue.
#[derive(Debug)]
pub(crate) enum Queued {
    /// A line, with its `\n`.
    Line(String),
    /// Report `Input::Written` once everything before this is written.
    Mark,
}

/// What the writer and the core share about one outbound queue.
#[derive(Debug, Default)]
struct OutboundShared {
    /// Bytes queued and not yet accepted by the socket.
    queued: AtomicUsize,
    /// [`Clock::elapsed_ms`] when the socket last accepted bytes.
    progress_ms: AtomicU64,
}

/// Bytes still queued when the connection goes leave the metrics' total.
impl Drop for OutboundShared {
    fn drop(&mut self) {
        crate::metrics::outbound_written(self.queued.load(Ordering::Acquire));
    }
}

/// The core's end of a connection's outbound queue.
#[derive(Debug)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<Queued>,
    shared: Arc<OutboundShared>,
    /// When the queue last went over the bound, if it is over it.
    over_since_ms: Option<u64>,
}

/// The peer stopped reading: its queue is over the bound and the socket
/// has accepted nothing for the grace period (or the hard cap is passed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dead;

/// The bound on one connection's outbound queue.
///
/// Going over `max_bytes` alone is not fatal, because one round can
/// legitimately queue a lot at once (a login that drains a full offline box
/// is thousands of lines); what is fatal is staying over it while the socket
/// accepts nothing for `stall_grace`, i.e. a peer that stopped reading. A
/// hard cap of `hard_factor × max_bytes` bounds memory whatever happens.
#[derive(Debug, Clone, Copy)]
pub struct OutboundLimit {
    /// `max_outbound_bytes`.
    pub max_bytes: usize,
    /// How long an over-full queue may make no progress.
    pub stall_grace: Duration,
    /// The hard cap, as a multiple of `max_bytes`.
    pub hard_factor: usize,
}

impl Outbound {
    /// Queues one line (with its `\n`). Never waits.
    pub fn push(&mut self, line: String, limit: &OutboundLimit, clock: &Clock) -> Result<(), Dead> {
        let n = line.len();
        crate::metrics::outbound_queued(n);
        let queued = self.shared.queued.fetch_add(n, Ordering::AcqRel) + n;
        if queued > limit.max_bytes {
            let now = clock.elapsed_ms();
            let over_since = *self.over_since_ms.get_or_insert(now);
            let progress = self.shared.progress_ms.load(Ordering::Acquire);
            let stalled_ms = now.saturating_sub(over_since.max(progress));
            let grace = u64::try_from(limit.stall_grace.as_millis()).unwrap_or(u64::MAX);
            if stalled_ms > grace || queued > limit.max_bytes.saturating_mul(limit.hard_factor) {
                return Err(Dead);
            }
        } else {
            self.over_since_ms = None;
        }
        // A closed queue means the writer ended on an error; the connection
        // task reports that as `Input::Closed` itself.
        let _ = self.tx.send(Queued::Line(line));
        Ok(())
    }

    /// Asks the writer to report [`Input::Written`](chatcore::Input::Written) once every line queued
    /// so far is written to the socket (the core's `NotifyWritten`).
    pub fn mark(&self) {
        let _ = self.tx.send(Queued::Mark);
    }
}

/// The writer's end of a connection's outbound queue.
#[derive(Debug)]
pub struct OutboundRx {
    rx: mpsc::UnboundedReceiver<Queued>,
    shared: Arc<OutboundShared>,
}

impl OutboundRx {
    /// The next entry, waiting for one; `None` once the driver dropped the
    /// queue.
    pub(crate) async fn recv(&mut self) -> Option<Queued> {
        self.rx.recv().await
    }

    /// The next entry if one is queued now.
    pub(crate) fn try_recv(&mut self) -> Option<Queued> {
        self.rx.try_recv().ok()
    }

    /// Whether nothing is queued now.
    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The socket accepted `n` bytes: they no longer count against the
    /// bound, and the peer is reading.
    pub(crate) fn wrote(&self, n: usize, clock: &Clock) {
        self.shared.queued.fetch_sub(n, Ordering::AcqRel);
        crate::metrics::outbound_written(n);
        self.shared
            .progress_ms
            .store(clock.elapsed_ms(), Ordering::Release);
    }
}

/// A new outbound queue.
pub fn outbound(clock: &Clock) -> (Outbound, OutboundRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(OutboundShared::default());
    shared
        .progress_ms
        .store(clock.elapsed_ms(), Ordering::Release);
    (
        Outbound {
            tx,
            shared: Arc::clone(&shared),
            over_since_ms: None,
        },
        OutboundRx { rx, shared },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn outbound_bound_tolerates_bursts_but_not_stalls() {
        let clock = Clock::start();
        let limit = OutboundLimit {
            max_bytes: 100,
            stall_grace: Duration::from_secs(1),
            hard_factor: 10,
        };
        let (mut tx, rx) = outbound(&clock);
        // A burst over the bound is fine at first...
        for _ in 0..5 {
            assert_eq!(tx.push("x".repeat(50), &limit, &clock), Ok(()));
        }
        // ...and so is more once the writer made progress recently.
        tokio::time::advance(Duration::from_millis(900)).await;
        rx.shared
            .progress_ms
            .store(clock.elapsed_ms(), Ordering::Release);
        tokio::time::advance(Duration::from_millis(900)).await;
        assert_eq!(tx.push("x".into(), &limit, &clock), Ok(()));
        // No progress for longer than the grace: dead.
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(tx.push("x".into(), &limit, &clock), Err(Dead));
        // The hard cap is dead at once.
        let (mut tx, _rx) = outbound(&clock);
        assert_eq!(tx.push("x".repeat(1001), &limit, &clock), Err(Dead));
    }
}
