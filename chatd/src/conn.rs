//! One TCP connection's task: a writer that drains the connection's
//! outbound queue and, on a TLS port, a reader that turns bytes into core
//! inputs. A plain TCP socket is read by the driver itself
//! (`driver/readers.rs`): the task only writes what the driver leaves it
//! and, once the core has closed the connection, reads what the peer
//! still sends, to discard it.
//!
//! Most connections are idle most of the time, so an idle one keeps as
//! little as it can: one task whose future holds no buffer (a read's
//! buffer exists only from the read until its lines are decoded and sent;
//! the write buffer only while lines are being written), a socket shared
//! with the driver by one reference count rather than split into halves
//! that each hold one, and the TLS machinery boxed apart so that plain
//! connections do not carry its size. chat-bench S3 measures the result.
//!
//! For the same reason the functions whose futures make up a connection's
//! task return `async move` blocks instead of being `async fn`s: an
//! `async fn` keeps each argument twice in its state, as the argument and
//! as the local it is moved into, and that was a quarter of the task.
//! With TLS configured, the task first completes the TLS handshake, within
//! `login_timeout`: doing it here rather than in the accept loop means a
//! client that never finishes its handshake holds up nobody but itself, and
//! it holds its place in the [`ConnLimiter`](crate::limiter::ConnLimiter) like any other connection.
//!
//! Connections never touch the core. A TLS connection's lines go to the
//! core task over one bounded channel shared by all such readers (so a
//! flood of input waits instead of growing memory; the driver reads a plain
//! socket a chunk a round, and not at all while commits back up), and
//! lines come back over a per-connection queue that
//! the core fills without ever waiting (so one slow reader cannot stall
//! everyone). That queue is bounded in bytes by
//! [`Outbound::push`](crate::outbound::Outbound::push): a peer
//! that stops reading is declared dead instead of buffering without end.
//!
//! A plain TCP socket is shared ([`Transport::Plain`]): the driver reads
//! it, and writes to it too when the writer holds nothing (see
//! [`outbound`](crate::outbound::outbound)). Both ends then use the
//! socket's readiness and `try_` calls, which take `&TcpStream`.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use chatcore::wire::{DecodeError, LineDecoder};
use chatcore::{Input, SessionId};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::clock::Clock;
use crate::limiter::ConnPermit;
use crate::outbound::{OutboundRx, Queued};

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
    /// Once the core has closed the connection, how long the lines still
    /// queued may take to be written before the socket is dropped.
    pub close_grace: Duration,
}

/// A connection's socket, as its task gets it.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP, shared with the driver, which writes to it too.
    Plain(Arc<TcpStream>),
    /// A TLS port: the task does the handshake, then owns the stream.
    Tls(TcpStream, TlsParams),
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

/// Bytes taken from the socket in one read at most, here and by the
/// driver. A task's buffer exists only from a read until its lines are
/// sent to the core, so its size costs an idle connection nothing; a
/// reader that waits for room in the input channel (a flood) keeps it
/// meanwhile. The driver keeps one for all the sockets it reads.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

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
#[allow(clippy::manual_async_fn)] // smaller than an `async fn`: see the module doc
pub fn run_connection(
    transport: Transport,
    params: ConnParams,
    out: OutboundRx,
    permit: ConnPermit,
) -> impl Future<Output = ()> + Send {
    async move {
        // Named, so the block owns the permit until the connection ends.
        let _permit = &permit;
        match transport {
            Transport::Plain(socket) => serve_plain(Plain(&socket), &params, out).await,
            // Boxed: the handshake and the TLS stream are kilobytes, which
            // every plain connection's task would carry too if inline.
            Transport::Tls(stream, tls) => Box::pin(serve_tls(stream, tls, &params, out)).await,
        }
    }
}

/// A plain TCP connection, which the driver reads (see the module doc):
/// the task writes what the driver leaves it until the core closes the
/// connection, then reads and discards what the peer still sends, briefly.
#[allow(clippy::manual_async_fn)] // smaller than an `async fn`: see the module doc
fn serve_plain<'a>(
    socket: Plain<'a>,
    params: &'a ConnParams,
    out: OutboundRx,
) -> impl Future<Output = ()> + 'a {
    async move {
        match write_loop(Plain(socket.0), out, params).await {
            Ok(()) => linger(socket).await,
            Err(e) => {
                tracing::debug!(session = %params.session, peer = %params.peer, "write failed: {e}");
                to_core(
                    &params.inputs,
                    Input::Closed {
                        session: params.session,
                    },
                )
                .await;
            }
        }
    }
}

/// Once the core closed the connection and everything is written: reads
/// until the peer closes, for [`LINGER`] at most.
async fn linger<R: ReadChunks>(mut r: R) {
    let _ = Box::pin(tokio::time::timeout(LINGER, async {
        while matches!(read_chunk(&mut r).await, Ok(bytes) if !bytes.is_empty()) {}
    }))
    .await;
}

/// A connection on a TLS port: the handshake, then lines.
async fn serve_tls(stream: TcpStream, tls: TlsParams, params: &ConnParams, out: OutboundRx) {
    match handshake(stream, &tls, params).await {
        Some(stream) => {
            let (r, w) = tokio::io::split(stream);
            serve_lines(Stream(r), w, params, out).await;
        }
        None => {
            let _ = params
                .inputs
                .send(Input::Closed {
                    session: params.session,
                })
                .await;
        }
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
#[allow(clippy::manual_async_fn)] // smaller than an `async fn`: see the module doc
fn serve_lines<'a, R, W>(
    mut r: R,
    w: W,
    params: &'a ConnParams,
    out: OutboundRx,
) -> impl Future<Output = ()> + 'a
where
    R: ReadChunks + 'a,
    W: AsyncWrite + Unpin + 'a,
{
    async move {
        let (session, peer) = (params.session, &params.peer);
        let writer = write_loop(w, out, params);
        tokio::pin!(writer);
        // The reader lives in this block only, so that the states after it
        // (flushing, lingering) reuse its room in the task instead of adding to
        // it: every connection's task is as large as its largest state.
        let first = {
            let reader = read_loop(&mut r, params);
            tokio::pin!(reader);
            tokio::select! {
                end = &mut reader => First::Reader(end),
                res = &mut writer => First::Writer(res),
            }
        };
        match first {
            First::Reader(ReadEnd::Eof) => {
                // The peer may still read: the core handles what it sent before
                // (flood control may space that out), then closes the session,
                // and the writer flushes and shuts down.
                tracing::debug!(%session, %peer, "peer sent EOF");
                to_core(&params.inputs, Input::InputEnded { session }).await;
                if let Err(e) = writer.await {
                    tracing::debug!(%session, %peer, "write failed: {e}");
                    to_core(&params.inputs, Input::Closed { session }).await;
                }
            }
            First::Reader(ReadEnd::Peer) => {
                tracing::debug!(%session, %peer, "peer gone");
                to_core(&params.inputs, Input::Closed { session }).await;
                // The core drops the queue once it has seen `Closed`; flush what
                // it queued until then, within bounds.
                let _ = Box::pin(tokio::time::timeout(FLUSH_AFTER_EOF, writer)).await;
            }
            First::Reader(ReadEnd::CoreGone) => {
                let _ = Box::pin(tokio::time::timeout(FLUSH_AFTER_EOF, writer)).await;
            }
            First::Writer(Err(e)) => {
                tracing::debug!(%session, %peer, "write failed: {e}");
                to_core(&params.inputs, Input::Closed { session }).await;
            }
            First::Writer(Ok(())) => linger(r).await,
        }
    }
}

/// Which half of a connection finished first.
enum First {
    Reader(ReadEnd),
    Writer(io::Result<()>),
}

/// Hands one input to the core, waiting while the channel is full; false
/// if the core is gone. The wait is boxed: it happens only under a flood,
/// and inline it would make every connection's task larger by a channel
/// send's state (about 200 bytes), idle or not. Not an `async fn`, which
/// would keep the input twice in its state (argument and local).
fn to_core(inputs: &mpsc::Sender<Input>, input: Input) -> impl Future<Output = bool> + '_ {
    let wait = match inputs.try_send(input) {
        Ok(()) => Err(true),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(false),
        Err(mpsc::error::TrySendError::Full(input)) => Ok(Box::pin(inputs.send(input))),
    };
    async move {
        match wait {
            Ok(send) => send.await.is_ok(),
            Err(done) => done,
        }
    }
}

/// Decodes lines and sends them to the core until EOF or an error.
#[allow(clippy::manual_async_fn)] // smaller than an `async fn`: see the module doc
fn read_loop<'a, R: ReadChunks>(
    r: &'a mut R,
    p: &'a ConnParams,
) -> impl Future<Output = ReadEnd> + 'a {
    async move {
        let mut decoder = LineDecoder::new(p.max_line_bytes);
        loop {
            // The bytes read are on the heap only until their lines are sent:
            // sending may wait (the input channel is full).
            let data = match read_chunk(r).await {
                Ok(data) if data.is_empty() => return ReadEnd::Eof,
                Ok(data) => data,
                Err(e) => {
                    tracing::debug!(session = %p.session, "read failed: {e}");
                    return ReadEnd::Peer;
                }
            };
            let mut input = &data[..];
            while let Some(item) = decoder.decode(&mut input) {
                if !to_core(&p.inputs, decoded(p.session, item)).await {
                    return ReadEnd::CoreGone;
                }
            }
        }
    }
}

/// The input a decoded line makes: the line, or the error it gets.
pub(crate) fn decoded(session: SessionId, item: Result<String, DecodeError>) -> Input {
    match item {
        Ok(line) => Input::Line { session, line },
        Err(error) => Input::Malformed { session, error },
    }
}

/// One read of at most [`READ_CHUNK`] bytes from a socket that is ready,
/// into `buf`'s room (at least that much, empty). `Ok` with nothing read
/// is EOF; `WouldBlock`, with bytes read or none, means the next bytes
/// wait for the socket's readiness.
///
/// A read that does not fill the chunk took everything the socket had, so
/// it clears the socket's readiness, as tokio's own reads do on Linux
/// (tokio-rs/tokio#5866): otherwise the next read would be a system call
/// that finds nothing, one per line a client sends.
pub(crate) fn read_ready(socket: &TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    socket.try_io(Interest::READABLE, || {
        let n = socket.try_read_buf(buf)?;
        if n > 0 && n < READ_CHUNK {
            // Short: readiness is cleared, and the bytes are kept.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    })
}

/// Where a connection's bytes come from: a read of up to [`READ_CHUNK`]
/// bytes at a time, into a buffer that exists only while they are read and
/// decoded, so that waiting for bytes keeps none and an idle connection
/// pays for none.
pub(crate) trait ReadChunks: Unpin {
    /// The next bytes read, once there are some; empty at EOF.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Vec<u8>>>;
}

/// Waits for the next bytes of `r`.
async fn read_chunk<R: ReadChunks>(r: &mut R) -> io::Result<Vec<u8>> {
    poll_fn(|cx| r.poll_chunk(cx)).await
}

/// A stream read through [`AsyncRead`] (a TLS stream's read half).
struct Stream<R>(R);

impl<R: AsyncRead + Unpin> ReadChunks for Stream<R> {
    /// Reads into a buffer on the stack of the poll that finds bytes,
    /// then copies what it read to the heap.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Vec<u8>>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().to_vec()))
    }
}

/// A plain TCP socket the driver shares (it writes to it too: see the
/// module doc), read and written through its readiness.
struct Plain<'a>(&'a TcpStream);

impl ReadChunks for Plain<'_> {
    /// Reads straight into a buffer on the heap (see [`read_ready`]).
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Vec<u8>>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let mut data = Vec::with_capacity(READ_CHUNK);
            match read_ready(self.0, &mut data) {
                Ok(()) => return Poll::Ready(Ok(data)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !data.is_empty() {
                        return Poll::Ready(Ok(data));
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Plain<'_> {
    /// Runs `write` once the socket is writable, again each time it would
    /// block.
    fn poll_writing(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match write(self.0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncWrite for Plain<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_writing(cx, |socket| socket.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_writing(cx, |socket| socket.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Shuts the sending half down (the peer reads EOF); the socket
    /// stays open for reading until both the task and the driver let go.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// Writes queued lines, batching whatever is queued into one write, until
/// the core drops the queue; then shuts the socket's write side down (on
/// TLS, after a `close_notify`). A mark in the queue is answered with
/// [`Input::Written`] once the lines before it are written.
///
/// Once the core has dropped the queue, what is left must be written
/// within `close_grace` ([`Closing`]). While the connection is open, the
/// driver drops a peer that stops reading (the outbound bound); after the
/// close nobody else watches, and a peer that never read would hold this
/// task, its socket and its place in the connection limits for good.
#[allow(clippy::manual_async_fn)] // smaller than an `async fn`: see the module doc
fn write_loop<'a, W: AsyncWrite + Unpin + 'a>(
    mut w: W,
    mut out: OutboundRx,
    p: &'a ConnParams,
) -> impl Future<Output = io::Result<()>> + 'a {
    async move {
        let mut closing = Closing::default();
        let mut buf: Vec<u8> = Vec::new();
        // Entries taken from the queue and not written yet.
        let mut taken = std::collections::VecDeque::new();
        loop {
            if taken.is_empty() {
                match out.take().await {
                    Some(entries) => taken = entries,
                    None => break,
                }
            }
            if w.is_write_vectored() {
                if let Some(n) = closing
                    .bound(&out, p, |cx| poll_write_few(&mut w, &mut taken, cx))
                    .await?
                {
                    out.wrote(n, &p.clock);
                    // As below: TLS may keep records buffered.
                    closing
                        .bound(&out, p, |cx| Pin::new(&mut w).poll_flush(cx))
                        .await?;
                    if taken.is_empty() && out.is_empty() {
                        taken = std::collections::VecDeque::new();
                    }
                    continue;
                }
            }
            let mut marked = false;
            while !marked && buf.len() < BATCH_BYTES {
                match taken.pop_front() {
                    Some(Queued::Line(line)) => buf.extend_from_slice(&line),
                    Some(Queued::Mark) => marked = true,
                    None => match out.try_take() {
                        Some(more) => taken = more,
                        None => break,
                    },
                }
            }
            let mut off = 0;
            while off < buf.len() {
                let n = closing
                    .bound(&out, p, |cx| Pin::new(&mut w).poll_write(cx, &buf[off..]))
                    .await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                off += n;
                out.wrote(n, &p.clock);
            }
            // TLS may keep encrypted records buffered after accepting the
            // plaintext; they must leave before the writer waits for more. A
            // no-op on plain TCP.
            closing
                .bound(&out, p, |cx| Pin::new(&mut w).poll_flush(cx))
                .await?;
            if marked && !to_core(&p.inputs, Input::Written { session: p.session }).await {
                return Ok(());
            }
            // An idle connection keeps no buffer; a busy one keeps a modest one.
            if taken.is_empty() && out.is_empty() {
                buf = Vec::new();
                taken = std::collections::VecDeque::new();
            } else if buf.capacity() > 4 * BATCH_BYTES {
                buf = Vec::new();
            } else {
                buf.clear();
            }
        }
        closing
            .bound(&out, p, |cx| Pin::new(&mut w).poll_shutdown(cx))
            .await
    }
}

/// The bound on writing after the close (see [`write_loop`]): the grace,
/// `close_grace`, starts when the core drops the queue.
#[derive(Default)]
struct Closing {
    /// Ends the grace; boxed, as only a closing connection needs its room.
    late: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Closing {
    /// `op` polled to its end, unless the grace after the close ends
    /// first: then it fails with `TimedOut`. A poll function rather than a
    /// future, so that the wait keeps no second copy of it in the task.
    fn bound<'a, T>(
        &'a mut self,
        out: &'a OutboundRx,
        p: &'a ConnParams,
        mut op: impl FnMut(&mut Context<'_>) -> Poll<io::Result<T>> + 'a,
    ) -> impl Future<Output = io::Result<T>> + 'a {
        poll_fn(move |cx| {
            if let Poll::Ready(done) = op(cx) {
                return Poll::Ready(done);
            }
            if self.late.is_none() {
                ready!(out.poll_closed(cx));
                self.late = Some(Box::pin(tokio::time::sleep(p.close_grace)));
            }
            if let Some(late) = &mut self.late {
                ready!(late.as_mut().poll(cx));
            }
            tracing::info!(
                session = %p.session,
                peer = %p.peer,
                "the peer did not read the last lines within {} s of the close: dropping it",
                p.close_grace.as_secs_f64()
            );
            Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
        })
    }
}

/// The most lines [`poll_write_few`] writes in one call: its slices are part
/// of every connection's task, idle or not.
const FEW_LINES: usize = 4;

/// Writes `taken` straight from its lines' bytes when it is at most
/// [`FEW_LINES`] lines and no mark: no buffer to allocate and copy them
/// into, which a conversation paid for every message. Drops what was
/// written from `taken` and returns how many bytes that was; `None`
/// otherwise (the caller batches the entries into its buffer).
fn poll_write_few<W: AsyncWrite + Unpin>(
    w: &mut W,
    taken: &mut std::collections::VecDeque<Queued>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Option<usize>>> {
    let n = {
        let mut slices = [io::IoSlice::new(&[]); FEW_LINES];
        let Some((lines, _)) = crate::outbound::line_slices(taken, &mut slices) else {
            return Poll::Ready(Ok(None));
        };
        ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..lines]))?
    };
    if n == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    crate::outbound::written(taken, n);
    Poll::Ready(Ok(Some(n)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::ConnLimiter;
    use crate::outbound::outbound;

    /// The state an idle plain connection keeps in its task, beyond the
    /// heap it points to. Every connection pays it, so it is held to a
    /// budget: the handshake, the TLS stream and any read buffer must stay
    /// out of it (they once made it 6.8 KiB).
    #[tokio::test]
    async fn an_idle_connection_task_is_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let clock = Clock::start();
        let (inputs, _rx) = mpsc::channel(1);
        let session = chatcore::Server::new(
            clock.now(),
            chatcore::Config::default(),
            chatcore::Accounts::new(),
        )
        .open_session(clock.now(), peer.ip());
        let params = ConnParams {
            session,
            peer,
            max_line_bytes: 4096,
            inputs,
            clock,
            close_grace: Duration::from_secs(1),
        };
        let stream = Arc::new(stream);
        let (_out, out_rx) = outbound(&clock, Some(Arc::clone(&stream)));
        let permit = ConnLimiter::new(1, 1).try_acquire(peer.ip()).unwrap();
        let task = run_connection(Transport::Plain(stream), params, out_rx, permit);
        let size = std::mem::size_of_val(&task);
        eprintln!("connection future: {size} bytes");
        assert!(size <= 1024, "a connection's future is {size} bytes");
    }
}
