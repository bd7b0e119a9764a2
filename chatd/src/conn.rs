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

use std::future::poll_fn;
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
pub async fn run_connection(
    mut stream: TcpStream,
    params: ConnParams,
    out: OutboundRx,
    permit: ConnPermit,
) {
    let _permit = permit;
    match params.tls.clone() {
        // Plain TCP borrows the socket's halves, which need neither a lock
        // nor an allocation.
        None => {
            let (r, w) = stream.split();
            serve_lines(r, w, &params, out).await;
        }
        // Boxed: the handshake and the TLS stream are kilobytes, which every
        // plain connection's task would carry too if they were inline.
        Some(tls) => Box::pin(serve_tls(stream, tls, &params, out)).await,
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
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(read_with(&mut r, |bytes| bytes.len()).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// Decodes lines and sends them to the core until EOF or an error.
async fn read_loop<R: AsyncRead + Unpin>(r: &mut R, p: &ConnParams) -> ReadEnd {
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
            if p.inputs.send(input).await.is_err() {
                return ReadEnd::CoreGone;
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
async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut out: OutboundRx,
    p: &ConnParams,
) -> io::Result<()> {
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
        let mut marked = false;
        while !marked && buf.len() < BATCH_BYTES {
            match taken.pop_front() {
                Some(Queued::Line(line)) => buf.extend_from_slice(line.as_bytes()),
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
        if marked {
            let written = Input::Written { session: p.session };
            if p.inputs.send(written).await.is_err() {
                return Ok(());
            }
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
