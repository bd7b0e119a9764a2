//! One connection's outbound queue, which the driver fills without ever
//! waiting (so one slow reader cannot stall everyone) and the connection's
//! writer drains. Its bound in bytes ([`Outbound::push`]) is what turns a
//! peer that stops reading into a dropped connection instead of memory
//! growing without end.
//!
//! On plain TCP the driver writes what a round queued to the socket
//! itself at the round's end, when nothing is ahead of it (see
//! [`outbound`]): the writer is then for what the socket does not take at
//! once.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::clock::Clock;

/// An entry of an outbound queue.
#[derive(Debug)]
pub(crate) enum Queued {
    /// A line, with its `\n`. Shared bytes, so that a broadcast formatted
    /// once is queued for every receiver without a copy each.
    Line(Bytes),
    /// Report `Input::Written` once everything before this is written.
    Mark,
}

/// The entries themselves, and whether either end is gone.
///
/// A plain locked deque rather than a channel: most connections are idle
/// most of the time, and an empty `VecDeque` holds no allocation, whereas
/// tokio's unbounded channel keeps about 1.3 KiB per connection (its
/// cache-padded state and a first block of 32 slots) even when empty. The
/// lock is held only to push one entry or to take them all.
#[derive(Debug, Default)]
struct Queue {
    entries: VecDeque<Queued>,
    /// The driver dropped its end: the writer flushes and closes.
    driver_gone: bool,
    /// The writer is gone: nothing more is kept.
    writer_gone: bool,
    /// The writer was woken for what is queued and has not taken it yet:
    /// it takes everything at once, so one wake-up serves every entry.
    woken: bool,
    /// The writer took entries and may not have written them all: a line
    /// written past it would overtake them.
    holding: bool,
    /// A wake-up for the writer, kept until it looks: one given while it
    /// is not waiting is kept for its next wait, so none is lost.
    notified: bool,
    /// The writer's task, while it waits.
    waker: Option<Waker>,
}

/// What the writer and the core share about one outbound queue.
#[derive(Debug, Default)]
struct OutboundShared {
    /// Bytes queued and not yet accepted by the socket.
    queued: AtomicUsize,
    /// [`Clock::elapsed_ms`] when the socket last accepted bytes.
    progress_ms: AtomicU64,
    /// The queue, and the writer's wake-ups: under the lock that pushing
    /// and taking entries take anyway, where a `Notify` beside it cost a
    /// lock of its own each time the connection's task looked (which it
    /// does whenever the task wakes, for a read too).
    queue: Mutex<Queue>,
}

/// Bytes still queued when the connection goes leave the metrics' total.
impl Drop for OutboundShared {
    fn drop(&mut self) {
        crate::metrics::outbound_written(self.queued.load(Ordering::Acquire));
    }
}

impl OutboundShared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // The lock guards no invariant a panic could break half-way.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The socket accepted `n` bytes: they no longer count against the
    /// bound, and the peer is reading.
    fn wrote(&self, n: usize, clock: &Clock) {
        self.wrote_at(n, clock.elapsed_ms());
    }

    /// [`wrote`](Self::wrote) at `now_ms` ([`Clock::elapsed_ms`]), read
    /// once for a round's writes rather than once a write.
    fn wrote_at(&self, n: usize, now_ms: u64) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
        crate::metrics::outbound_written(n);
        self.progress_ms.store(now_ms, Ordering::Release);
    }

    /// Wakes the writer for what is queued, unless it was woken already.
    fn wake_writer(&self, mut q: MutexGuard<'_, Queue>) {
        if !q.woken {
            q.woken = true;
            notify(q);
        }
    }

    /// Writes what is queued to `socket` now, in one system call, if the
    /// writer holds nothing and no mark waits; leaves what the socket does
    /// not take (all of it if it cannot be written now) for the writer,
    /// and wakes it.
    ///
    /// The queue stays locked over the write, so that the writer cannot
    /// take lines meanwhile and write them out of order. On the
    /// current-thread runtime chatd runs on, the writer never waits for
    /// that lock: it runs on the same thread.
    fn write_to(&self, socket: &TcpStream, now_ms: u64) {
        let mut q = self.queue();
        // A writer that is gone ended on an error; the connection task
        // reports that as `Input::Closed` itself. Entries already taken
        // are the writer's.
        if q.writer_gone || q.entries.is_empty() {
            return;
        }
        let mut slices = [io::IoSlice::new(&[]); DIRECT_LINES];
        let counted = if q.holding {
            None
        } else {
            line_slices(&q.entries, &mut slices)
        };
        let Some((lines, total)) = counted else {
            return self.wake_writer(q);
        };
        // An error other than `WouldBlock` is the writer's to meet and
        // report, as it would have met it.
        let n = socket.try_write_vectored(&slices[..lines]).unwrap_or(0);
        if n == total {
            // Without a deque, as an idle connection keeps its queue.
            q.entries = VecDeque::new();
            drop(q);
        } else {
            written(&mut q.entries, n);
            self.wake_writer(q);
        }
        if n > 0 {
            self.wrote_at(n, now_ms);
        }
    }
}

/// The most lines the driver writes to a socket at once: their slices are
/// on its stack. More queued lines than that are the writer's to batch.
const DIRECT_LINES: usize = 32;

/// Puts the lines of `entries` in `slices` for one vectored write, and
/// returns how many there are and their bytes; `None` if there is none,
/// more than `slices` holds, or a mark among them (a mark is answered once
/// the lines before it are written, which is the writer's to see).
///
/// The caller's array is filled in place: returned by value, the driver's
/// 32 slices were a 512-byte copy a write.
pub(crate) fn line_slices<'a>(
    entries: &'a VecDeque<Queued>,
    slices: &mut [io::IoSlice<'a>],
) -> Option<(usize, usize)> {
    if entries.is_empty() || entries.len() > slices.len() {
        return None;
    }
    let mut total = 0;
    for (slice, entry) in slices.iter_mut().zip(entries) {
        let Queued::Line(line) = entry else {
            return None;
        };
        *slice = io::IoSlice::new(line);
        total += line.len();
    }
    Some((entries.len(), total))
}

/// Drops the first `n` bytes' worth of lines from `entries`, which were
/// written: whole lines, then the start of a line written in part.
/// Stops at a mark.
pub(crate) fn written(entries: &mut VecDeque<Queued>, mut n: usize) {
    while n > 0 {
        match entries.front_mut() {
            Some(Queued::Line(line)) if line.len() <= n => {
                n -= line.len();
                entries.pop_front();
            }
            Some(Queued::Line(line)) => {
                bytes::Buf::advance(line, n);
                n = 0;
            }
            _ => break,
        }
    }
}

/// The core's end of a connection's outbound queue. Dropping it makes the
/// writer write what is queued and then shut the socket down.
#[derive(Debug)]
pub struct Outbound {
    shared: Arc<OutboundShared>,
    /// When the queue last went over the bound, if it is over it.
    over_since_ms: Option<u64>,
    /// The last quiet line went out alone, at [`wake`](Outbound::wake):
    /// nothing else comes to this client soon after its `OK`s (a client
    /// that only sends), so they go at once until a line of another kind
    /// comes.
    quiet_alone: bool,
    /// The connection's socket, on plain TCP: lines that would wake the
    /// writer wait for [`flush`](Outbound::flush) instead, which writes
    /// them to it.
    socket: Option<Arc<TcpStream>>,
    /// Lines wait for [`flush`](Outbound::flush).
    unflushed: bool,
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
    /// Queues one line (with its `\n`) and wakes the writer, or, with a
    /// socket, leaves it for [`flush`](Self::flush). Never waits. Takes
    /// anything that becomes [`Bytes`] without a copy: a `String`
    /// formatted for one receiver, or a clone of bytes shared by many.
    pub fn push(
        &mut self,
        line: impl Into<Bytes>,
        limit: &OutboundLimit,
        clock: &Clock,
    ) -> Result<(), Dead> {
        self.quiet_alone = false;
        self.push_line(line.into(), limit, clock, true)
    }

    /// Queues one line like [`push`](Self::push) but leaves the writer
    /// asleep: the line goes out with the next line pushed, or at
    /// [`wake`](Self::wake). An `OK` for a message is queued so: a client
    /// in a conversation then reads it in the same segment as the reply it
    /// waits for, and the server makes one write instead of two. Once a
    /// quiet line went out alone, the next ones wake the writer like
    /// [`push`](Self::push) until a line is pushed: waiting would only
    /// delay them.
    pub fn push_quiet(
        &mut self,
        line: impl Into<Bytes>,
        limit: &OutboundLimit,
        clock: &Clock,
    ) -> Result<(), Dead> {
        let wake = self.quiet_alone;
        self.push_line(line.into(), limit, clock, wake)
    }

    /// Wakes the writer if anything queued has not woken it (then what is
    /// queued is quiet lines alone).
    pub fn wake(&mut self) {
        let q = self.shared.queue();
        if !q.entries.is_empty() && !q.woken {
            self.quiet_alone = true;
            self.shared.wake_writer(q);
        }
    }

    fn push_line(
        &mut self,
        line: Bytes,
        limit: &OutboundLimit,
        clock: &Clock,
        wake: bool,
    ) -> Result<(), Dead> {
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
        let flush = wake && self.socket.is_some();
        self.enqueue(Queued::Line(line), wake && !flush);
        self.unflushed |= flush;
        Ok(())
    }

    /// Whether lines wait for [`flush`](Self::flush).
    pub fn unflushed(&self) -> bool {
        self.unflushed
    }

    /// Writes the lines that wait for it to the socket, or leaves them to
    /// the writer (see [`outbound`]). The driver calls it at the end of
    /// each round for every connection it queued lines for: a round's
    /// lines to one client then leave in one system call, a broadcast's
    /// after the others of its round.
    ///
    /// `now_ms` is [`Clock::elapsed_ms`], read once for the round.
    pub fn flush(&mut self, now_ms: u64) {
        if !std::mem::take(&mut self.unflushed) {
            return;
        }
        if let Some(socket) = &self.socket {
            self.shared.write_to(socket, now_ms);
        }
    }

    /// Asks the writer to report [`Input::Written`](chatcore::Input::Written) once every line queued
    /// so far is written to the socket (the core's `NotifyWritten`).
    pub fn mark(&self) {
        self.enqueue(Queued::Mark, true);
    }

    fn enqueue(&self, entry: Queued, wake: bool) {
        let mut q = self.shared.queue();
        // A writer that is gone ended on an error; the connection task
        // reports that as `Input::Closed` itself.
        if q.writer_gone {
            return;
        }
        q.entries.push_back(entry);
        if wake {
            self.shared.wake_writer(q);
        }
    }
}

/// Gives the writer a wake-up, and wakes its task if it waits.
fn notify(mut q: MutexGuard<'_, Queue>) {
    q.notified = true;
    let waker = q.waker.take();
    drop(q);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        let mut q = self.shared.queue();
        q.driver_gone = true;
        notify(q);
    }
}

/// The writer's end of a connection's outbound queue.
#[derive(Debug)]
pub struct OutboundRx {
    shared: Arc<OutboundShared>,
}

impl OutboundRx {
    /// Every entry queued now, oldest first, waiting until there is one;
    /// `None` once the driver dropped the queue and it is empty. The queue
    /// is left without an allocation: the deque goes to the writer, which
    /// drops it once written.
    ///
    /// The writer calls it once everything it took is written: until then
    /// the driver queues lines behind them instead of writing them itself.
    pub(crate) async fn take(&mut self) -> Option<VecDeque<Queued>> {
        let mut first = true;
        std::future::poll_fn(|cx| {
            let mut q = self.shared.queue();
            // A wake-up given before this looks now is answered by it.
            let notified = std::mem::take(&mut q.notified);
            if std::mem::take(&mut first) {
                q.holding = false;
            } else if !notified {
                return wait(q, cx);
            }
            if let Some(taken) = take_entries(&mut q) {
                return Poll::Ready(Some(taken));
            }
            if q.driver_gone {
                // It queues nothing after dropping its end.
                return Poll::Ready(None);
            }
            wait(q, cx)
        })
        .await
    }

    /// Ready once the driver has dropped its end (the core closed the
    /// connection). The writer's task is the one waiting, here or in
    /// [`take`](Self::take): one waker serves both.
    pub(crate) fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let q = self.shared.queue();
        if q.driver_gone {
            return Poll::Ready(());
        }
        let _ = wait(q, cx);
        Poll::Pending
    }

    /// Every entry queued now, if there is any.
    pub(crate) fn try_take(&mut self) -> Option<VecDeque<Queued>> {
        take_entries(&mut self.shared.queue())
    }

    /// Whether nothing is queued now.
    pub(crate) fn is_empty(&self) -> bool {
        self.shared.queue().entries.is_empty()
    }

    /// The socket accepted `n` bytes: they no longer count against the
    /// bound, and the peer is reading.
    pub(crate) fn wrote(&self, n: usize, clock: &Clock) {
        self.shared.wrote(n, clock);
    }
}

/// Every entry of `q`, if there is any: the writer holds them now.
fn take_entries(q: &mut Queue) -> Option<VecDeque<Queued>> {
    q.woken = false;
    if q.entries.is_empty() {
        return None;
    }
    q.holding = true;
    Some(std::mem::take(&mut q.entries))
}

/// Leaves the writer's task to be woken by [`notify`].
fn wait(mut q: MutexGuard<'_, Queue>, cx: &mut Context<'_>) -> Poll<Option<VecDeque<Queued>>> {
    match &mut q.waker {
        Some(waker) => waker.clone_from(cx.waker()),
        None => q.waker = Some(cx.waker().clone()),
    }
    Poll::Pending
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        let mut q = self.shared.queue();
        q.writer_gone = true;
        q.entries = VecDeque::new();
        // Its task is done: the driver's end need not keep it.
        q.waker = None;
    }
}

/// A new outbound queue; with the connection's `socket` (plain TCP), the
/// driver writes lines to it itself at [`Outbound::flush`], while the
/// writer holds nothing.
///
/// A conversation's reply then leaves at the end of the round that made
/// it and costs no wake-up of the connection's task; a broadcast's lines
/// to each receiver leave in one system call per round, as the writers
/// wrote them.
pub fn outbound(clock: &Clock, socket: Option<Arc<TcpStream>>) -> (Outbound, OutboundRx) {
    let shared = Arc::new(OutboundShared::default());
    shared
        .progress_ms
        .store(clock.elapsed_ms(), Ordering::Release);
    (
        Outbound {
            shared: Arc::clone(&shared),
            over_since_ms: None,
            quiet_alone: false,
            socket,
            unflushed: false,
        },
        OutboundRx { shared },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the writer took, as text: a line each, `mark` for a mark.
    fn lines(q: Option<VecDeque<Queued>>) -> Vec<String> {
        q.unwrap_or_default()
            .into_iter()
            .map(|q| match q {
                Queued::Line(l) => String::from_utf8_lossy(l.as_ref()).into_owned(),
                Queued::Mark => "mark".into(),
            })
            .collect()
    }

    /// A bound of `max_bytes`, a second's grace, a hard cap ten times it.
    fn limit(max_bytes: usize) -> OutboundLimit {
        OutboundLimit {
            max_bytes,
            stall_grace: Duration::from_secs(1),
            hard_factor: 10,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn outbound_bound_tolerates_bursts_but_not_stalls() {
        let clock = Clock::start();
        let limit = limit(100);
        let (mut tx, rx) = outbound(&clock, None);
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
        assert_eq!(tx.push("x", &limit, &clock), Ok(()));
        // No progress for longer than the grace: dead.
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(tx.push("x", &limit, &clock), Err(Dead));
        // The hard cap is dead at once.
        let (mut tx, _rx) = outbound(&clock, None);
        assert_eq!(tx.push("x".repeat(1001), &limit, &clock), Err(Dead));
    }

    #[tokio::test]
    async fn the_writer_gets_lines_and_marks_in_order_then_the_end() {
        let clock = Clock::start();
        let limit = limit(1000);
        let (mut tx, mut rx) = outbound(&clock, None);
        assert!(rx.try_take().is_none());
        tx.push("a\n", &limit, &clock).unwrap();
        tx.mark();
        tx.push("b\n", &limit, &clock).unwrap();
        assert_eq!(lines(rx.take().await), ["a\n", "mark", "b\n"]);
        // Taking leaves the queue without an allocation: an idle
        // connection keeps none.
        assert_eq!(rx.shared.queue().entries.capacity(), 0);
        // A writer waiting is woken by the next line...
        let waiting = tokio::spawn(async move {
            let first = rx.take().await.map(|q| q.len());
            let end = rx.take().await.map(|q| q.len());
            (first, end)
        });
        tokio::task::yield_now().await;
        tx.push("c\n", &limit, &clock).unwrap();
        tokio::task::yield_now().await;
        // ...and told the end once the driver drops its end.
        drop(tx);
        assert_eq!(waiting.await.unwrap(), (Some(1), None));
    }

    #[tokio::test]
    async fn a_quiet_line_waits_for_the_next_line_or_a_wake() {
        let clock = Clock::start();
        let limit = limit(1000);
        // A writer waiting, as a connection's writer waits.
        let (mut tx, mut rx) = outbound(&clock, None);
        let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel();
        let writer = tokio::spawn(async move {
            while let Some(q) = rx.take().await {
                let _ = got_tx.send(lines(Some(q)));
            }
        });
        // The writer is a task of this runtime: once it had its turns,
        // whatever woke it has been taken.
        async fn still_asleep(got: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<String>>) {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(got.try_recv().is_err(), "the writer was woken");
        }
        still_asleep(&mut got).await;
        // A quiet line alone does not wake the writer...
        tx.push_quiet("OK 1\n", &limit, &clock).unwrap();
        still_asleep(&mut got).await;
        // ...the next line does, and both go out together, in order.
        tx.push("MSG 2\n", &limit, &clock).unwrap();
        assert_eq!(got.recv().await.unwrap(), ["OK 1\n", "MSG 2\n"]);
        // A quiet line goes out at a wake...
        tx.push_quiet("OK 3\n", &limit, &clock).unwrap();
        tx.wake();
        assert_eq!(got.recv().await.unwrap(), ["OK 3\n"]);
        // ...which does nothing with nothing queued.
        tx.wake();
        still_asleep(&mut got).await;
        // It went alone: the next quiet line goes at once, as to a client
        // that only sends...
        tx.push_quiet("OK 5\n", &limit, &clock).unwrap();
        assert_eq!(got.recv().await.unwrap(), ["OK 5\n"]);
        // ...until another line comes: then they wait again.
        tx.push("MSG 6\n", &limit, &clock).unwrap();
        assert_eq!(got.recv().await.unwrap(), ["MSG 6\n"]);
        tx.push_quiet("OK 7\n", &limit, &clock).unwrap();
        still_asleep(&mut got).await;
        tx.push("MSG 8\n", &limit, &clock).unwrap();
        assert_eq!(got.recv().await.unwrap(), ["OK 7\n", "MSG 8\n"]);
        // The driver letting go flushes a quiet line.
        tx.push_quiet("OK 9\n", &limit, &clock).unwrap();
        drop(tx);
        assert_eq!(got.recv().await.unwrap(), ["OK 9\n"]);
        writer.await.unwrap();
        // A quiet line counts against the bound like any other.
        let (mut tx, _rx) = outbound(&clock, None);
        assert_eq!(tx.push_quiet("x".repeat(10_001), &limit, &clock), Err(Dead));
    }

    #[test]
    fn lines_for_a_writer_that_is_gone_are_not_kept() {
        let clock = Clock::start();
        let limit = limit(1000);
        let (mut tx, rx) = outbound(&clock, None);
        let shared = Arc::clone(&rx.shared);
        drop(rx);
        tx.push("a\n", &limit, &clock).unwrap();
        tx.mark();
        assert!(shared.queue().entries.is_empty());
    }

    /// An outbound queue on a connected socket, as the driver keeps a
    /// plain TCP connection's, and the client's end of the socket.
    async fn on_socket(clock: &Clock) -> (Outbound, OutboundRx, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let socket = Arc::new(accepted.unwrap().0);
        let (tx, rx) = outbound(clock, Some(socket));
        (tx, rx, client.unwrap())
    }

    /// Reads from `client` until it has `n` bytes; fails if they do not
    /// come (nobody else writes to the socket in these tests).
    async fn read_exactly(client: &mut TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0; n];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got))
            .await
            .expect("the bytes were not written")
            .unwrap();
        got
    }

    #[tokio::test]
    async fn a_rounds_lines_go_straight_to_the_socket_at_its_end() {
        let clock = Clock::start();
        let limit = limit(1000);
        let (mut tx, mut rx, mut client) = on_socket(&clock).await;
        // No writer runs here: what the client reads, the driver wrote.
        tx.push("MSG 1\n", &limit, &clock).unwrap();
        tx.push("MSG 2\n", &limit, &clock).unwrap();
        assert!(tx.unflushed());
        // Nothing is written before the round ends...
        let mut none = [0; 1];
        assert_eq!(
            client.try_read(&mut none).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // ...then everything is.
        tx.flush(clock.elapsed_ms());
        assert!(!tx.unflushed());
        assert_eq!(read_exactly(&mut client, 12).await, b"MSG 1\nMSG 2\n");
        // A quiet line waits, and goes with the next line, first.
        tx.push_quiet("OK 3\n", &limit, &clock).unwrap();
        assert!(!tx.unflushed());
        tx.push("MSG 4\n", &limit, &clock).unwrap();
        tx.flush(clock.elapsed_ms());
        assert_eq!(read_exactly(&mut client, 11).await, b"OK 3\nMSG 4\n");
        assert!(rx.try_take().is_none());
        // Written bytes no longer count against the bound.
        assert_eq!(rx.shared.queued.load(Ordering::Acquire), 0);
        // A mark is the writer's to answer: lines after it queue behind it.
        tx.mark();
        tx.push("MSG 5\n", &limit, &clock).unwrap();
        tx.flush(clock.elapsed_ms());
        assert_eq!(lines(rx.try_take()), ["mark", "MSG 5\n"]);
    }

    #[tokio::test]
    async fn lines_queue_behind_what_the_writer_holds() {
        let clock = Clock::start();
        let limit = limit(1000);
        let (mut tx, mut rx, mut client) = on_socket(&clock).await;
        tx.push_quiet("OK 1\n", &limit, &clock).unwrap();
        // The writer took the line and has not written it yet...
        assert_eq!(lines(rx.try_take()), ["OK 1\n"]);
        // ...so the next one may not overtake it.
        tx.push("MSG 2\n", &limit, &clock).unwrap();
        tx.flush(clock.elapsed_ms());
        assert_eq!(lines(rx.try_take()), ["MSG 2\n"]);
        // Once the writer asks for more, everything it took is written
        // (here: by nobody, the client reads nothing yet) and lines go
        // straight out again, without waking it.
        let writer = tokio::spawn(async move { rx.take().await.map(|q| q.len()) });
        tokio::task::yield_now().await;
        tx.push("MSG 3\n", &limit, &clock).unwrap();
        tx.flush(clock.elapsed_ms());
        assert_eq!(read_exactly(&mut client, 6).await, b"MSG 3\n");
        drop(tx);
        assert_eq!(writer.await.unwrap(), None);
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_is_queued_for_the_writer() {
        let clock = Clock::start();
        // Far more than a socket's buffers hold while its peer reads
        // nothing.
        let line = vec![b'x'; 32 << 20];
        let limit = limit(line.len());
        let (mut tx, mut rx, mut client) = on_socket(&clock).await;
        tx.push(line.clone(), &limit, &clock).unwrap();
        tx.flush(clock.elapsed_ms());
        let rest = lines(rx.try_take()).concat();
        let written = line.len() - rest.len();
        assert!(0 < written && written < line.len(), "{written}");
        // The queue holds the end of the line, and only it counts.
        assert_eq!(rx.shared.queued.load(Ordering::Acquire), rest.len());
        assert_eq!(read_exactly(&mut client, written).await, line[..written]);
    }

    #[tokio::test]
    async fn more_lines_than_one_write_takes_are_the_writers() {
        let clock = Clock::start();
        let limit = limit(1000);
        let (mut tx, mut rx, _client) = on_socket(&clock).await;
        for _ in 0..=DIRECT_LINES {
            tx.push("x\n", &limit, &clock).unwrap();
        }
        tx.flush(clock.elapsed_ms());
        assert_eq!(rx.try_take().map(|q| q.len()), Some(DIRECT_LINES + 1));
    }
}
