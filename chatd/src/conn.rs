//! One TCP connection: a reader that turns bytes into core inputs and a
//! writer that drains the connection's outbound queue, both in one task.
//! With TLS configured, the task first completes the TLS handshake, within
//! `login_timeout`: doing it here rather than in the accept loop means a
//! client that never finishes its handshake holds up nobody but itself, and
//! it holds its place in the [`ConnLimiter`] like any other connection.
//!
//! Connections never touch the core. Lines go to the core task over one
//! bounded channel shared by all readers (so a flood of input waits instead
//! of growing memory), and lines come back over a per-connection queue that
//! the core fills without ever waiting (so one slow reader cannot stall
//! everyone). That queue is bounded in bytes by [`Outbound::push`]: a peer
//! that stops reading is declared dead instead of buffering without end.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chatcore::wire::LineDecoder;
use chatcore::{Input, SessionId, Time};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The core's clock: wall-clock milliseconds, advanced by tokio's monotonic
/// clock from one wall-clock reading at startup. Deadlines therefore never
/// jump when NTP steps the system clock, and `tokio::time::pause()` drives
/// the core's time in tests.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_wall: u64,
    base: Instant,
}

impl Clock {
    /// A clock that reads the system time once, now.
    pub fn start() -> Clock {
        Clock {
            base_wall: Time::from_system(std::time::SystemTime::now()).unix_millis(),
            base: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Time {
        Time::from_unix_millis(self.base_wall.saturating_add(self.elapsed_ms()))
    }

    /// Milliseconds since the clock started.
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The tokio instant at which [`Clock::now`] reaches `t`.
    pub fn instant_of(&self, t: Time) -> Instant {
        let ms = t.unix_millis().saturating_sub(self.base_wall);
        // Far-future deadlines are capped: a year is "never" for a timer.
        let ms = ms.min(365 * 24 * 3600 * 1000);
        self.base + Duration::from_millis(ms)
    }
}

/// Counts open connections, in total and per address.
#[derive(Debug)]
pub struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One open connection's place in the [`ConnLimiter`]; given back on drop,
/// so a connection task that ends any way (even aborted) frees its place.
#[derive(Debug)]
pub struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl ConnLimiter {
    /// A limiter for `max_total` connections, `max_per_ip` from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            max_total,
            max_per_ip,
            state: Mutex::new(LimiterState::default()),
        })
    }

    /// A place for one more connection from `ip`, if there is one.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnPermit> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let from_ip = s.per_ip.get(&ip).copied().unwrap_or(0);
        if s.total >= self.max_total || from_ip >= self.max_per_ip {
            return None;
        }
        s.total += 1;
        s.per_ip.insert(ip, from_ip + 1);
        Some(ConnPermit {
            limiter: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut s = self
            .limiter
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
    }
}

/// An entry of an outbound queue.
#[derive(Debug)]
enum Queued {
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

    /// Asks the writer to report [`Input::Written`] once every line queued
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

/// How a connection task is set up.
#[derive(Debug, Clone)]
pub struct ConnParams {
    /// The core's session for this connection.
    pub session: SessionId,
    /// The peer, for logs.
    pub peer: SocketAddr,
    /// The line bound for the decoder.
    pub max_line_bytes: usize,
    /// Where inputs go.
    pub inputs: mpsc::Sender<Input>,
    /// The clock, for progress stamps.
    pub clock: Clock,
    /// TLS, if the port speaks it.
    pub tls: Option<TlsParams>,
}

/// How connections on a TLS port are set up.
#[derive(Clone)]
pub struct TlsParams {
    /// The server's TLS configuration.
    pub acceptor: TlsAcceptor,
    /// How long a client may take to complete the handshake
    /// (`login_timeout`: the handshake is the first step of logging in).
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsParams")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// How long a closed connection keeps reading (and discarding) so that the
/// peer's late bytes do not make the kernel answer with a reset, which could
/// destroy the final `BYE` before the peer reads it.
const LINGER: Duration = Duration::from_secs(1);

/// How long a connection whose peer closed may take to flush what the core
/// still queued for it.
const FLUSH_AFTER_EOF: Duration = Duration::from_secs(5);

/// Writes that are batched into one `write` at most.
const BATCH_BYTES: usize = 64 * 1024;

/// The read buffer of a quiet connection.
const READ_MIN: usize = 512;

/// The read buffer of a busy one.
const READ_MAX: usize = 32 * 1024;

/// Why the reader stopped.
enum ReadEnd {
    /// The peer closed its sending half (EOF); it may still be reading.
    Eof,
    /// The socket failed.
    Peer,
    /// The core task is gone (shutdown).
    CoreGone,
}

/// Runs one connection until it is closed, by the peer or by the core.
///
/// On a TLS port, the lines the core queued meanwhile (`HELLO CHAT/1`) wait
/// for the handshake; if it fails or times out, the core is told the
/// connection closed, as for any peer that goes away.
pub async fn run_connection(
    stream: TcpStream,
    params: ConnParams,
    out: OutboundRx,
    permit: ConnPermit,
) {
    let _permit = permit;
    match &params.tls {
        // Plain TCP keeps the socket's own halves, which need no lock.
        None => {
            let (r, w) = stream.into_split();
            serve_lines(r, w, &params, out).await;
        }
        Some(tls) => match handshake(stream, tls, &params).await {
            Some(stream) => {
                let (r, w) = tokio::io::split(stream);
                serve_lines(r, w, &params, out).await;
            }
            None => {
                let _ = params
                    .inputs
                    .send(Input::Closed {
                        session: params.session,
                    })
                    .await;
            }
        },
    }
}

/// The server side of a TLS handshake, bounded by the handshake timeout
/// and abandoned if the core task goes away (shutdown). `None` if it did
/// not complete.
async fn handshake(
    stream: TcpStream,
    tls: &TlsParams,
    p: &ConnParams,
) -> Option<TlsStream<TcpStream>> {
    let (session, peer) = (p.session, p.peer);
    let accept = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream));
    tokio::select! {
        r = accept => match r {
            Ok(Ok(stream)) => {
                let (_, conn) = stream.get_ref();
                tracing::debug!(
                    %session, %peer,
                    version = ?conn.protocol_version(),
                    "TLS handshake done"
                );
                Some(stream)
            }
            Ok(Err(e)) => {
                tracing::info!(%session, %peer, "TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                tracing::info!(
                    %session, %peer,
                    "TLS handshake not done within {:?}: closing",
                    tls.handshake_timeout
                );
                None
            }
        },
        () = p.inputs.closed() => None,
    }
}

/// Reads lines into the core and writes the outbound queue, over either
/// kind of stream, until the connection is closed.
async fn serve_lines<R, W>(mut r: R, w: W, params: &ConnParams, out: OutboundRx)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let session = params.session;
    let linger = {
        let reader = read_loop(&mut r, params);
        let writer = write_loop(w, out, params);
        tokio::pin!(reader, writer);
        tokio::select! {
            end = &mut reader => match end {
                ReadEnd::Eof => {
                    // The peer may still read: the core handles what it sent
                    // before (flood control may space that out), then closes
                    // the session, and the writer flushes and shuts down.
                    tracing::debug!(%session, peer = %params.peer, "peer sent EOF");
                    let _ = params.inputs.send(Input::InputEnded { session }).await;
                    if let Err(e) = writer.await {
                        tracing::debug!(%session, peer = %params.peer, "write failed: {e}");
                        let _ = params.inputs.send(Input::Closed { session }).await;
                    }
                    false
                }
                ReadEnd::Peer => {
                    tracing::debug!(%session, peer = %params.peer, "peer gone");
                    let _ = params.inputs.send(Input::Closed { session }).await;
                    // The core drops the queue once it has seen `Closed`;
                    // flush what it queued until then, within bounds.
                    let _ = tokio::time::timeout(FLUSH_AFTER_EOF, writer).await;
                    false
                }
                ReadEnd::CoreGone => {
                    let _ = tokio::time::timeout(FLUSH_AFTER_EOF, writer).await;
                    false
                }
            },
            res = &mut writer => match res {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(%session, peer = %params.peer, "write failed: {e}");
                    let _ = params.inputs.send(Input::Closed { session }).await;
                    false
                }
            },
        }
    };
    if linger {
        // The core closed the connection and everything is written: read
        // until the peer closes, briefly.
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// Decodes lines and sends them to the core until EOF or an error.
async fn read_loop<R: AsyncRead + Unpin>(r: &mut R, p: &ConnParams) -> ReadEnd {
    let mut decoder = LineDecoder::new(p.max_line_bytes);
    // Most connections are idle most of the time: keep a small buffer, and
    // grow it only while reads keep filling it.
    let mut buf = vec![0u8; READ_MIN];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => return ReadEnd::Eof,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(session = %p.session, "read failed: {e}");
                return ReadEnd::Peer;
            }
        };
        let full = n == buf.len();
        let mut input = &buf[..n];
        while let Some(item) = decoder.decode(&mut input) {
            let input = match item {
                Ok(line) => Input::Line {
                    session: p.session,
                    line,
                },
                Err(error) => Input::Malformed {
                    session: p.session,
                    error,
                },
            };
            if p.inputs.send(input).await.is_err() {
                return ReadEnd::CoreGone;
            }
        }
        if full && buf.len() < READ_MAX {
            buf = vec![0u8; buf.len() * 4];
        } else if !full && buf.len() > READ_MIN {
            buf = vec![0u8; READ_MIN];
        }
    }
}

/// Writes queued lines, batching whatever is queued into one write, until
/// the core drops the queue; then shuts the socket's write side down (on
/// TLS, after a `close_notify`). A mark in the queue is answered with
/// [`Input::Written`] once the lines before it are written.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut out: OutboundRx,
    p: &ConnParams,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(first) = out.rx.recv().await {
        let mut marked = false;
        match first {
            Queued::Line(line) => buf.extend_from_slice(line.as_bytes()),
            Queued::Mark => marked = true,
        }
        while !marked && buf.len() < BATCH_BYTES {
            match out.rx.try_recv() {
                Ok(Queued::Line(more)) => buf.extend_from_slice(more.as_bytes()),
                Ok(Queued::Mark) => marked = true,
                Err(_) => break,
            }
        }
        let mut off = 0;
        while off < buf.len() {
            let n = w.write(&buf[off..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            off += n;
            out.shared.queued.fetch_sub(n, Ordering::AcqRel);
            out.shared
                .progress_ms
                .store(p.clock.elapsed_ms(), Ordering::Release);
        }
        // TLS may keep encrypted records buffered after accepting the
        // plaintext; they must leave before the writer waits for more. A
        // no-op on plain TCP.
        w.flush().await?;
        if marked {
            let written = Input::Written { session: p.session };
            if p.inputs.send(written).await.is_err() {
                return Ok(());
            }
        }
        // An idle connection keeps no buffer; a busy one keeps a modest one.
        if out.rx.is_empty() || buf.capacity() > 4 * BATCH_BYTES {
            buf = Vec::new();
        } else {
            buf.clear();
        }
    }
    w.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_per_address_and_in_total() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = l.try_acquire(a).unwrap();
        let _a2 = l.try_acquire(a).unwrap();
        assert!(l.try_acquire(a).is_none(), "per address");
        let _b1 = l.try_acquire(b).unwrap();
        assert!(l.try_acquire(c).is_none(), "in total");
        drop(a1);
        assert_eq!(l.open(), 2);
        let _c1 = l.try_acquire(c).unwrap();
        assert!(l.try_acquire(a).is_none());
    }

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

    #[tokio::test(start_paused = true)]
    async fn clock_is_monotonic_and_maps_deadlines() {
        let clock = Clock::start();
        let t0 = clock.now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now().unix_millis() - t0.unix_millis(), 1500);
        let deadline = t0 + Duration::from_secs(3);
        assert_eq!(
            clock.instant_of(deadline) - clock.base,
            Duration::from_secs(3)
        );
        assert_eq!(clock.instant_of(Time::EPOCH), clock.base);
    }
}
