//! One CHAT/1 connection over WebSocket (PROTOCOL.md §1): the counterpart
//! of [`run_connection`](crate::conn::run_connection) for the web listener. One text frame
//! carries one line without its `\n`, both ways; otherwise it is the TCP
//! connection: the same inputs to the same core, the same outbound queue
//! and its bound, the same place in the connection limits.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use chatcore::wire::{DecodeError, LineDecoder};
use chatcore::{Input, SessionId};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::limiter::ConnPermit;
use crate::outbound::{OutboundRx, Queued};

/// A frame longer than `max_line_bytes` is answered `ERR line-too-long`
/// and the connection stays open, as on TCP; but unlike a TCP line a frame
/// is received whole before it can be looked at, so frames past this many
/// times `max_line_bytes` close the connection (status 1009) instead of
/// being buffered.
pub const MAX_FRAME_FACTOR: usize = 4;

/// How long a connection whose peer went away may take to flush what the
/// core still queued for it.
const FLUSH_AFTER_CLOSE: Duration = Duration::from_secs(5);

/// How long the server waits for the peer's half of the closing handshake
/// once it has sent its own.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How a WebSocket connection task is set up.
#[derive(Debug, Clone)]
pub struct WsParams {
    /// The core's session for this connection.
    pub session: SessionId,
    /// The peer, for logs.
    pub peer: std::net::SocketAddr,
    /// The line bound (terminator included, as on TCP).
    pub max_line_bytes: usize,
    /// Where inputs go.
    pub inputs: mpsc::Sender<Input>,
    /// The clock, for progress stamps.
    pub clock: Clock,
}

/// Why the reader stopped.
enum ReadEnd {
    /// The peer closed (a close frame, an error, or the end of the stream).
    Peer,
    /// The core task is gone (shutdown).
    CoreGone,
}

/// Runs one WebSocket connection until it is closed, by the peer or by
/// the core.
pub async fn run_ws(socket: WebSocket, params: WsParams, out: OutboundRx, permit: ConnPermit) {
    let _permit = permit;
    let session = params.session;
    let (sink, mut stream) = socket.split();
    let closed_by_core = {
        let reader = read_loop(&mut stream, &params);
        let writer = write_loop(sink, out, &params);
        tokio::pin!(reader, writer);
        tokio::select! {
            end = &mut reader => {
                if let ReadEnd::Peer = end {
                    tracing::debug!(%session, peer = %params.peer, "WebSocket peer gone");
                    let _ = params.inputs.send(Input::Closed { session }).await;
                }
                // The core drops the queue once it has seen `Closed` (or at
                // shutdown); flush what it queued until then, within bounds.
                let _ = tokio::time::timeout(FLUSH_AFTER_CLOSE, writer).await;
                false
            }
            res = &mut writer => match res {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(%session, peer = %params.peer, "WebSocket write failed: {e}");
                    let _ = params.inputs.send(Input::Closed { session }).await;
                    false
                }
            },
        }
    };
    if closed_by_core {
        // The core closed the session and the close frame is out: give the
        // peer a moment to answer it.
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// The input one text frame makes: a line, or the `ERR` a TCP line with
/// the same bytes would get.
pub fn frame_input(session: SessionId, text: &str, max_line_bytes: usize) -> Input {
    let malformed = |error| Input::Malformed { session, error };
    if text.len() >= max_line_bytes {
        // The line and its `\n` must fit in `max_line_bytes`.
        return malformed(DecodeError::LineTooLong {
            max: max_line_bytes,
        });
    }
    if text.contains('\n') {
        // One frame is one line: a `\n` inside is a control character.
        return malformed(DecodeError::BadEncoding);
    }
    let mut decoder = LineDecoder::new(max_line_bytes);
    let mut framed = Vec::with_capacity(text.len() + 1);
    framed.extend_from_slice(text.as_bytes());
    framed.push(b'\n');
    let mut bytes = framed.as_slice();
    match decoder.decode(&mut bytes) {
        Some(Ok(line)) => Input::Line { session, line },
        Some(Err(error)) => malformed(error),
        // Unreachable: the frame ends with the one `\n` it holds.
        None => malformed(DecodeError::BadEncoding),
    }
}

/// Turns frames into core inputs until the peer closes.
async fn read_loop(stream: &mut SplitStream<WebSocket>, p: &WsParams) -> ReadEnd {
    while let Some(frame) = stream.next().await {
        let input = match frame {
            Ok(Message::Text(text)) => frame_input(p.session, text.as_str(), p.max_line_bytes),
            // CHAT/1 is text: a binary frame is a line of bad encoding.
            Ok(Message::Binary(_)) => Input::Malformed {
                session: p.session,
                error: DecodeError::BadEncoding,
            },
            Ok(Message::Close(_)) => return ReadEnd::Peer,
            // Answered by the WebSocket layer itself.
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Err(e) => {
                tracing::debug!(session = %p.session, "WebSocket read failed: {e}");
                return ReadEnd::Peer;
            }
        };
        if p.inputs.send(input).await.is_err() {
            return ReadEnd::CoreGone;
        }
    }
    ReadEnd::Peer
}

/// Sends queued lines as text frames, flushing whatever is queued at once,
/// until the core drops the queue; then sends a close frame. A mark in the
/// queue is answered with [`Input::Written`] once the frames before it are
/// flushed.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut out: OutboundRx,
    p: &WsParams,
) -> Result<(), axum::Error> {
    while let Some(entries) = out.take().await {
        let mut bytes = 0;
        for entry in entries {
            match entry {
                Queued::Line(line) => {
                    bytes += line.len();
                    let text = line.strip_suffix(b"\n").unwrap_or(&line);
                    // Server lines are UTF-8: the core formats them from
                    // strings.
                    let text = String::from_utf8_lossy(text).into_owned();
                    sink.feed(Message::Text(text.into())).await?;
                }
                Queued::Mark => {
                    sink.flush().await?;
                    out.wrote(std::mem::take(&mut bytes), &p.clock);
                    let written = Input::Written { session: p.session };
                    if p.inputs.send(written).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        sink.flush().await?;
        out.wrote(bytes, &p.clock);
    }
    sink.send(Message::Close(None)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionId {
        let mut server = chatcore::Server::new(
            chatcore::Time::from_unix_millis(0),
            chatcore::Config::default(),
            chatcore::Accounts::default(),
        );
        server.open_session(
            chatcore::Time::from_unix_millis(0),
            "127.0.0.1".parse().unwrap(),
        )
    }

    #[test]
    fn a_frame_is_one_line_with_the_tcp_rules() {
        let s = session();
        let line = |t: &str| frame_input(s, t, 64);
        assert_eq!(
            line("whoelse"),
            Input::Line {
                session: s,
                line: "whoelse".into()
            }
        );
        let too_long = Input::Malformed {
            session: s,
            error: DecodeError::LineTooLong { max: 64 },
        };
        // 63 bytes and the `\n` fit in 64; 64 bytes do not.
        assert!(matches!(line(&"x".repeat(63)), Input::Line { .. }));
        assert_eq!(line(&"x".repeat(64)), too_long);
        let bad = Input::Malformed {
            session: s,
            error: DecodeError::BadEncoding,
        };
        assert_eq!(line("two\nlines"), bad);
        assert_eq!(line("bell\u{7}"), bad);
    }
}
