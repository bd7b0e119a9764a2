//! One TCP connection: a reader that turns bytes into core inputs and a
//! writer that drains the connection's outbound queue, both in one task.
//!
//! Most connections are idle most of the time, so an idle one keeps as
//! little as it can: one task whose future holds no buffer (reads go into a
//! buffer on the stack of the poll that finds bytes, and into the heap only
//! while they are decoded; the write buffer exists only while lines are
//! being written), borrowed socket halves instead of shared ones, and the
//! TLS machinery boxed apart so that plain connections do not carry its
//! size. chat-bench S3 measures the result.
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
//! Connections never touch the core. Lines go to the core task over one
//! bounded channel shared by all readers (so a flood of input waits instead
//! of growing memory), and lines come back over a per-connection queue that
//! the core fills without ever waiting (so one slow reader cannot stall
//! everyone). That queue is bounded in bytes by
//! [`Outbound::push`](crate::outbound::Outbound::push): a peer
//! that stops reading is declared dead instead of buffering without end.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Poll};
use std::time::Duration;

use chatcore::wire::LineDecoder;
use chatcore::{Input, SessionId};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
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

/// Bytes taken from the socket in one read at most. The buffer lives on
/// the stack of the poll that reads, so its size costs an idle connection
/// nothing.
const READ_CHUNK: usize = 16 * 1024;

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
    mut stream: TcpStream,
    params: ConnParams,
    out: OutboundRx,
    permit: ConnPermit,
) -> impl Future<Output = ()> + Send {
    async move {
        // Named, so the block owns the permit until the connection ends.
        let _permit = &permit;
        match &params.tls {
            // Plain TCP borrows the socket's halves, which need neither a
            // lock nor an allocation.
            None => {
                let (r, w) = stream.split();
                serve_lines(r, w, &params, out).await;
            }
            // Boxed: the handshake and the TLS stream are kilobytes, which
            // every plain connection's task would carry too if inline.
            Some(tls) => Box::pin(serve_tls(stream, tls.clone(), &params, out)).await,
        }
    }
}

/// A connection on a TLS port: the handshake, then lines.
async fn serve_tls(stream: TcpStream, tls: TlsParams, params: &ConnParams, out: OutboundRx) {
    match handshake(stream, &tls, params).await {
        Some(stream) => {
            let (r, w) = tokio::io::split(stream);
            serve_lines(r, w, params, out).await;
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
    R: AsyncRead + Unpin + 'a,
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
            First::Writer(Ok(())) => {
                // The core closed the connection and everything is written:
                // read until the peer closes, briefly.
                let _ = Box::pin(tokio::time::timeout(LINGER, async {
                    while matches!(read_with(&mut r, |bytes| bytes.len()).await, Ok(n) if n > 0) {}
                }))
                .await;
            }
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
fn read_loop<'a, R: AsyncRead + Unpin>(
    r: &'a mut R,
    p: &'a ConnParams,
) -> impl Future<Output = ReadEnd> + 'a {
    async move {
        let mut decoder = LineDecoder::new(p.max_line_bytes);
        loop {
            // The bytes read are on the heap only until their lines are sent:
            // sending may wait (the input channel is full), and the poll's
            // stack buffer does not outlive the poll.
            let data = match read_with(r, <[u8]>::to_vec).await {
                Ok(data) if data.is_empty() => return ReadEnd::Eof,
                Ok(data) => data,
                Err(e) => {
                    tracing::debug!(session = %p.session, "read failed: {e}");
                    return ReadEnd::Peer;
                }
            };
            let mut input = &data[..];
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
                if !to_core(&p.inputs, input).await {
                    return ReadEnd::CoreGone;
                }
            }
        }
    }
}

/// Waits for bytes, reads up to [`READ_CHUNK`] of them into a buffer on
/// the stack of the poll that finds them, and hands them to `use_bytes`;
/// empty at EOF. Waiting keeps no buffer, so an idle connection pays for
/// none.
async fn read_with<R, T>(r: &mut R, mut use_bytes: impl FnMut(&[u8]) -> T) -> io::Result<T>
where
    R: AsyncRead + Unpin,
{
    poll_fn(|cx| {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut *r).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(use_bytes(buf.filled())))
    })
    .await
}

/// Writes queued lines, batching whatever is queued into one write, until
/// the core drops the queue; then shuts the socket's write side down (on
/// TLS, after a `close_notify`). A mark in the queue is answered with
/// [`Input::Written`] once the lines before it are written.
#[allow(clippy::manual_async_fn)] // smaller than an `async fn`: see the module doc
fn write_loop<'a, W: AsyncWrite + Unpin + 'a>(
    mut w: W,
    mut out: OutboundRx,
    p: &'a ConnParams,
) -> impl Future<Output = io::Result<()>> + 'a {
    async move {
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
                if let Some(n) = write_few(&mut w, &mut taken).await? {
                    out.wrote(n, &p.clock);
                    // As below: TLS may keep records buffered.
                    w.flush().await?;
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
                let n = w.write(&buf[off..]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                off += n;
                out.wrote(n, &p.clock);
            }
            // TLS may keep encrypted records buffered after accepting the
            // plaintext; they must leave before the writer waits for more. A
            // no-op on plain TCP.
            w.flush().await?;
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
        w.shutdown().await
    }
}

/// The most lines [`write_few`] writes in one call: its slices are part
/// of every connection's task, idle or not.
const FEW_LINES: usize = 4;

/// Writes `taken` straight from its lines' bytes when it is at most
/// [`FEW_LINES`] lines and no mark: no buffer to allocate and copy them
/// into, which a conversation paid for every message. Drops what was
/// written from `taken` and returns how many bytes that was; `None`
/// otherwise (the caller batches the entries into its buffer).
async fn write_few<W: AsyncWrite + Unpin>(
    w: &mut W,
    taken: &mut std::collections::VecDeque<Queued>,
) -> io::Result<Option<usize>> {
    let lines = taken.len();
    if lines == 0 || lines > FEW_LINES || taken.iter().any(|q| matches!(q, Queued::Mark)) {
        return Ok(None);
    }
    let n = {
        let mut slices = [io::IoSlice::new(&[]); FEW_LINES];
        for (slice, queued) in slices.iter_mut().zip(taken.iter()) {
            if let Queued::Line(line) = queued {
                *slice = io::IoSlice::new(line);
            }
        }
        w.write_vectored(&slices[..lines]).await?
    };
    if n == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    let mut left = n;
    while left > 0 {
        match taken.front_mut() {
            Some(Queued::Line(line)) if line.len() <= left => {
                left -= line.len();
                taken.pop_front();
            }
            Some(Queued::Line(line)) => {
                bytes::Buf::advance(line, left);
                left = 0;
            }
            _ => break,
        }
    }
    Ok(Some(n))
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
            tls: None,
        };
        let (_out, out_rx) = outbound(&clock);
        let permit = ConnLimiter::new(1, 1).try_acquire(peer.ip()).unwrap();
        let task = run_connection(stream, params, out_rx, permit);
        let size = std::mem::size_of_val(&task);
        eprintln!("connection future: {size} bytes");
        assert!(size <= 1024, "a connection's future is {size} bytes");
    }
}
