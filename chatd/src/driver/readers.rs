//! Plain TCP sockets read by the driver itself.
//!
//! A connection's task used to read its socket, decode lines and send them
//! to the driver over a channel: for every line a client sent, a wake-up and
//! a poll of that task, a buffer allocated for the read and a send and a
//! receive on the channel, about 3,000 instructions before the core saw the
//! line (callgrind, S1 at 50 pairs), a quarter of a message's. Now the
//! driver reads plain TCP sockets in its own loop, into one buffer it
//! keeps, and feeds the lines to the core in the same round. (TLS and
//! WebSocket connections are still read by their tasks: TLS needs its
//! stream's state, and the web listener's connections come already read.)
//!
//! Readiness: each socket's read readiness is registered with a waker of
//! its own ([`ReaderWake`]), which puts the session on the [`ReadyList`]
//! and wakes the driver. A session is on the list at most once, and the
//! driver reads at most [`READ_CHUNK`](crate::conn::READ_CHUNK) bytes from it a round, so that one
//! client's flood does not hold the others up: a socket that still has
//! bytes after its read goes back on the list for the next round.
//!
//! A session is read for as long as the core has it open. When the core
//! closes it, the driver stops reading; the connection's task, once it has
//! written the last lines, reads and discards what is left (see
//! `conn.rs`). EOF ends the reading with [`Input::InputEnded`] and a
//! failed read with [`Input::Closed`], as they did in the task.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use chatcore::wire::LineDecoder;
use chatcore::{Input, SessionId};
use tokio::net::TcpStream;

use crate::conn::{decoded, read_ready};

/// Sessions whose sockets have bytes (or EOF, or an error) to read, and the
/// driver's waker.
#[derive(Default)]
pub(super) struct ReadyList {
    inner: Mutex<Ready>,
}

#[derive(Default)]
struct Ready {
    sessions: Vec<SessionId>,
    driver: Option<Waker>,
}

impl ReadyList {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ready> {
        // Nothing panics while holding it; if something did, the list is
        // still a list.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ready once a session is on the list; otherwise the driver is woken
    /// when one is put there.
    pub(super) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut ready = self.lock();
        if !ready.sessions.is_empty() {
            return Poll::Ready(());
        }
        match &mut ready.driver {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Swaps the sessions on the list into `into` (emptied first).
    pub(super) fn take(&self, into: &mut Vec<SessionId>) {
        into.clear();
        std::mem::swap(&mut self.lock().sessions, into);
    }

    /// Puts sessions taken from the list and not read back on it, ahead of
    /// those that came since.
    pub(super) fn put_back(&self, sessions: &[SessionId]) {
        let mut ready = self.lock();
        ready.sessions.splice(0..0, sessions.iter().copied());
    }

    fn push(&self, session: SessionId) {
        let driver = {
            let mut ready = self.lock();
            ready.sessions.push(session);
            ready.driver.take()
        };
        if let Some(driver) = driver {
            driver.wake();
        }
    }
}

/// A socket's read waker: puts its session on the list, once.
struct ReaderWake {
    session: SessionId,
    /// On the list and not read since.
    queued: AtomicBool,
    list: Arc<ReadyList>,
}

impl ReaderWake {
    fn queue(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.list.push(self.session);
        }
    }
}

impl Wake for ReaderWake {
    fn wake(self: Arc<Self>) {
        self.queue();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue();
    }
}

/// The driver's reading of one plain TCP connection.
pub(super) struct Reader {
    socket: Arc<TcpStream>,
    decoder: LineDecoder,
    wake: Arc<ReaderWake>,
    waker: Waker,
}

/// What a read found.
pub(super) enum Read {
    /// Lines (or malformed ones), in order; the socket waits for more.
    Lines,
    /// The peer closed its sending half: the lines before it, then
    /// [`Input::InputEnded`].
    Eof,
    /// The socket failed: the lines before it, then [`Input::Closed`].
    Failed,
}

impl Reader {
    /// Starts reading `socket` for `session`: it is on the list at once if
    /// bytes are already there.
    pub(super) fn new(
        session: SessionId,
        socket: Arc<TcpStream>,
        max_line_bytes: usize,
        list: &Arc<ReadyList>,
    ) -> Reader {
        let wake = Arc::new(ReaderWake {
            session,
            queued: AtomicBool::new(false),
            list: Arc::clone(list),
        });
        let waker = Waker::from(Arc::clone(&wake));
        let reader = Reader {
            socket,
            decoder: LineDecoder::new(max_line_bytes),
            wake,
            waker,
        };
        reader.arm();
        reader
    }

    /// Registers for the next bytes, or puts the session on the list now
    /// if the socket is still readable.
    fn arm(&self) {
        let mut cx = Context::from_waker(&self.waker);
        if self.socket.poll_read_ready(&mut cx).is_ready() {
            self.wake.queue();
        }
    }

    /// Reads what the socket has, up to [`READ_CHUNK`](crate::conn::READ_CHUNK) bytes, into `buf`
    /// (the driver's, kept between reads), and puts the inputs it decodes
    /// into `inputs`. Called for a session taken from the list.
    pub(super) fn read(&mut self, buf: &mut Vec<u8>, inputs: &mut Vec<Input>) -> Read {
        self.wake.queued.store(false, Ordering::Release);
        buf.clear();
        let end = match read_ready(&self.socket, buf) {
            Ok(()) if buf.is_empty() => Some(Read::Eof),
            Ok(()) => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => {
                tracing::debug!(session = %self.wake.session, "read failed: {e}");
                Some(Read::Failed)
            }
        };
        let session = self.wake.session;
        let mut bytes = &buf[..];
        while let Some(item) = self.decoder.decode(&mut bytes) {
            inputs.push(decoded(session, item));
        }
        match end {
            Some(end) => end,
            None => {
                self.arm();
                Read::Lines
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::READ_CHUNK;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected client, and the driver's reader of the server's end
    /// (lines of at most 64 bytes), listing on its own list.
    async fn reader() -> (TcpStream, Reader, SessionId, Arc<ReadyList>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let list = Arc::new(ReadyList::default());
        let [session] = sessions();
        let reader = Reader::new(session, Arc::new(server), 64, &list);
        (client, reader, session, list)
    }

    /// `N` session ids, as the core hands them out.
    fn sessions<const N: usize>() -> [SessionId; N] {
        let now = chatcore::Time::from_unix_millis(0);
        let mut server =
            chatcore::Server::new(now, chatcore::Config::default(), chatcore::Accounts::new());
        std::array::from_fn(|_| server.open_session(now, std::net::Ipv4Addr::LOCALHOST.into()))
    }

    /// Waits until the list has a session, and takes the list. (A socket
    /// that is never listed fails the test, not hangs it.)
    async fn ready(list: &ReadyList) -> Vec<SessionId> {
        let listed = std::future::poll_fn(|cx| list.poll_ready(cx));
        tokio::time::timeout(std::time::Duration::from_secs(10), listed)
            .await
            .expect("no session was listed");
        let mut sessions = Vec::new();
        list.take(&mut sessions);
        sessions
    }

    fn lines(inputs: &[Input]) -> Vec<&str> {
        inputs
            .iter()
            .map(|i| match i {
                Input::Line { line, .. } => line.as_str(),
                other => panic!("not a line: {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn lines_are_read_when_they_come_and_a_session_is_listed_once() {
        let (mut client, mut reader, session, list) = reader().await;
        let (mut buf, mut inputs) = (Vec::with_capacity(READ_CHUNK), Vec::new());

        client
            .write_all(b"whoelse\nmessage bob hi\nidle")
            .await
            .unwrap();
        assert_eq!(ready(&list).await, [session]);
        assert!(matches!(reader.read(&mut buf, &mut inputs), Read::Lines));
        assert_eq!(lines(&inputs), ["whoelse", "message bob hi"]);

        // The rest of a line, then EOF: the line, then the end.
        client.write_all(b" 3\n").await.unwrap();
        assert_eq!(ready(&list).await, [session]);
        inputs.clear();
        assert!(matches!(reader.read(&mut buf, &mut inputs), Read::Lines));
        assert_eq!(lines(&inputs), ["idle 3"]);
        client.shutdown().await.unwrap();
        assert_eq!(ready(&list).await, [session]);
        inputs.clear();
        assert!(matches!(reader.read(&mut buf, &mut inputs), Read::Eof));
        assert!(inputs.is_empty());
    }

    #[tokio::test]
    async fn a_flood_is_read_a_chunk_a_round_and_stays_listed() {
        let (mut client, mut reader, session, list) = reader().await;
        let line = "x".repeat(31) + "\n";
        let flood = line.repeat(3 * READ_CHUNK / line.len());
        client.write_all(flood.as_bytes()).await.unwrap();
        let (mut buf, mut inputs) = (Vec::with_capacity(READ_CHUNK), Vec::new());
        let mut rounds = 0;
        while inputs.len() < flood.len() / line.len() {
            assert_eq!(ready(&list).await, [session]);
            let before = inputs.len();
            assert!(matches!(reader.read(&mut buf, &mut inputs), Read::Lines));
            assert!((inputs.len() - before) * line.len() <= READ_CHUNK);
            rounds += 1;
        }
        assert!(rounds >= 3, "{rounds} rounds");
        assert!(lines(&inputs).iter().all(|l| l.len() == 31));
    }

    #[test]
    fn sessions_put_back_come_first() {
        let list = ReadyList::default();
        let [a, b, c] = sessions();
        list.push(a);
        list.push(b);
        let mut taken = Vec::new();
        list.take(&mut taken);
        list.push(c);
        list.put_back(&taken[1..]);
        list.take(&mut taken);
        assert_eq!(taken, [b, c]);
    }

    #[tokio::test]
    async fn a_reset_connection_fails_the_read() {
        let (client, mut reader, session, list) = reader().await;
        // A zero linger makes the close a reset.
        socket2::SockRef::from(&client)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(client);
        assert_eq!(ready(&list).await, [session]);
        let (mut buf, mut inputs) = (Vec::with_capacity(READ_CHUNK), Vec::new());
        assert!(matches!(reader.read(&mut buf, &mut inputs), Read::Failed));
    }
}
