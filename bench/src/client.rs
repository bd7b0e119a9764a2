//! The load generator's clients: CHAT/1 sessions (or baseline relay
//! sessions), each a reader task that answers heartbeats and hands every
//! other line to a scenario's [`Handler`], and a writer task that drains the
//! session's queue into one write.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chatcore::wire::{Ask, ByeReason, LineDecoder, ServerLine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::irc::{self, IrcLine};
use crate::users::Account;

/// Which server a client talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// chatd, speaking CHAT/1.
    Chat,
    /// The baseline relay (see `relay.rs`).
    Relay,
    /// ngircd, speaking IRC (see `irc.rs`).
    Irc,
}

impl Kind {
    /// For tables and messages.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Chat => "chatd",
            Kind::Relay => "baseline",
            Kind::Irc => "ngircd",
        }
    }

    /// The line that sends `text` to `user`.
    pub fn private(self, user: &str, text: &str) -> String {
        match self {
            Kind::Chat => format!("message {user} {text}"),
            Kind::Relay => format!("to {user} {text}"),
            Kind::Irc => format!("PRIVMSG {user} :{text}"),
        }
    }

    /// The line that sends `text` to every online session (for IRC, to
    /// every member of [`irc::CHANNEL`] but the sender: IRC does not echo a
    /// channel message to its sender).
    pub fn broadcast(self, text: &str) -> String {
        match self {
            Kind::Chat => format!("broadcast message {text}"),
            Kind::Relay => format!("all {text}"),
            Kind::Irc => format!("PRIVMSG {} :{text}", irc::CHANNEL),
        }
    }

    /// How many sessions of `n` receive one broadcast.
    pub fn broadcast_receivers(self, n: usize) -> usize {
        match self {
            Kind::Chat | Kind::Relay => n,
            Kind::Irc => n.saturating_sub(1),
        }
    }

    /// The line that ends a session politely, if the protocol has one.
    fn goodbye(self) -> Option<&'static str> {
        match self {
            Kind::Chat => Some("logout"),
            Kind::Relay => None,
            Kind::Irc => Some("QUIT :bench done"),
        }
    }
}

/// The read half of a connection with its line decoder.
#[derive(Debug)]
pub struct LineReader {
    rd: OwnedReadHalf,
    dec: LineDecoder,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

/// The longest line a client accepts; servers' lines are far shorter.
const MAX_LINE: usize = 1 << 20;
const READ_BUF: usize = 16 * 1024;

impl LineReader {
    fn new(rd: OwnedReadHalf) -> Self {
        LineReader {
            rd,
            dec: LineDecoder::new(MAX_LINE),
            buf: vec![0; READ_BUF],
            pos: 0,
            len: 0,
        }
    }

    /// The next line, or `None` at end of stream.
    pub async fn next_line(&mut self) -> Result<Option<String>> {
        loop {
            if self.pos < self.len {
                let mut input = &self.buf[self.pos..self.len];
                let before = input.len();
                let got = self.dec.decode(&mut input);
                self.pos += before - input.len();
                if let Some(line) = got {
                    return line
                        .map(Some)
                        .map_err(|e| anyhow!("bad line from server: {e}"));
                }
            }
            self.pos = 0;
            self.len = 0;
            let n = self.rd.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.len = n;
        }
    }
}

/// A session that finished logging in but has no tasks yet.
#[derive(Debug)]
pub struct LoggedIn {
    /// Who.
    pub user: String,
    /// Which server.
    pub kind: Kind,
    reader: LineReader,
    writer: OwnedWriteHalf,
}

async fn expect(r: &mut LineReader, what: &str, ok: impl Fn(&ServerLine) -> bool) -> Result<()> {
    let line = r
        .next_line()
        .await?
        .ok_or_else(|| anyhow!("connection closed while waiting for {what}"))?;
    let parsed = ServerLine::parse(&line).map_err(|e| anyhow!("{e}"))?;
    if ok(&parsed) {
        Ok(())
    } else {
        bail!("expected {what}, got `{line}`")
    }
}

/// Connects to `addr` and logs in as `account`.
pub async fn connect_login(kind: Kind, addr: SocketAddr, account: &Account) -> Result<LoggedIn> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (rd, mut writer) = stream.into_split();
    let mut reader = LineReader::new(rd);
    let user = &account.user;
    match kind {
        Kind::Chat => {
            expect(&mut reader, "HELLO", |l| matches!(l, ServerLine::Hello)).await?;
            expect(&mut reader, "ASK username", |l| {
                matches!(l, ServerLine::Ask(Ask::Username))
            })
            .await?;
            writer.write_all(format!("{user}\n").as_bytes()).await?;
            expect(&mut reader, "ASK password", |l| {
                matches!(l, ServerLine::Ask(Ask::Password))
            })
            .await?;
            writer
                .write_all(format!("{}\n", account.password).as_bytes())
                .await?;
        }
        Kind::Relay => writer.write_all(format!("{user}\n").as_bytes()).await?,
        Kind::Irc => {
            writer
                .write_all(format!("NICK {user}\nUSER {user} 0 * :{user}\n").as_bytes())
                .await?;
            irc_wait(&mut reader, &mut writer, "001", |l| *l == IrcLine::Welcome)
                .await
                .with_context(|| format!("registering as {user}"))?;
            return Ok(LoggedIn {
                user: user.clone(),
                kind,
                reader,
                writer,
            });
        }
    }
    expect(
        &mut reader,
        "OK login",
        |l| matches!(l, ServerLine::LoggedIn { user: u } if u == user),
    )
    .await
    .with_context(|| format!("logging in as {user}"))?;
    Ok(LoggedIn {
        user: user.clone(),
        kind,
        reader,
        writer,
    })
}

/// Reads IRC lines until one `ok` accepts, answering `PING`s meanwhile.
async fn irc_wait(
    r: &mut LineReader,
    w: &mut OwnedWriteHalf,
    what: &str,
    ok: impl Fn(&IrcLine) -> bool,
) -> Result<()> {
    loop {
        let line = r
            .next_line()
            .await?
            .ok_or_else(|| anyhow!("connection closed while waiting for {what}"))?;
        match irc::parse(&line) {
            l if ok(&l) => return Ok(()),
            IrcLine::Ping(token) => w.write_all(format!("PONG :{token}\n").as_bytes()).await?,
            IrcLine::Error(reason) => bail!("server closed while waiting for {what}: {reason}"),
            _ => {}
        }
    }
}

/// Logs every account in, `concurrency` at a time, in order.
pub async fn login_many(
    kind: Kind,
    addr: SocketAddr,
    accounts: &[Account],
    concurrency: usize,
) -> Result<Vec<LoggedIn>> {
    let concurrency = match kind {
        Kind::Irc => concurrency.min(irc::LOGIN_CONCURRENCY),
        Kind::Chat | Kind::Relay => concurrency,
    };
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(accounts.len());
    for a in accounts {
        let permits = Arc::clone(&permits);
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let _p = permits.acquire_owned().await;
            tokio::time::timeout(Duration::from_secs(120), connect_login(kind, addr, &a))
                .await
                .map_err(|_| anyhow!("login of {} timed out", a.user))?
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => out.push(s),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow!("login task failed: {e}"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e.context(format!(
            "{} of {} logins failed",
            accounts.len() - out.len(),
            accounts.len()
        ))),
        None => Ok(out),
    }
}

enum Msg {
    Line(String),
    Close,
}

/// Queues lines for a session's writer task.
#[derive(Clone, Debug)]
pub struct Out(mpsc::UnboundedSender<Msg>);

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Line(l) => write!(f, "Line({l:?})"),
            Msg::Close => f.write_str("Close"),
        }
    }
}

impl Out {
    /// Queues one line (without its `\n`).
    pub fn send(&self, line: String) {
        let _ = self.0.send(Msg::Line(line));
    }

    /// Flushes what is queued and shuts the write side down.
    pub fn close(&self) {
        let _ = self.0.send(Msg::Close);
    }
}

/// What a scenario does with the lines a session receives. Heartbeat probes
/// are answered before the handler sees them.
pub trait Handler: Send + 'static {
    /// One line from the server.
    fn on_line(&mut self, line: &ServerLine, out: &Out);
}

/// A handler that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ignore;

impl Handler for Ignore {
    fn on_line(&mut self, _: &ServerLine, _: &Out) {}
}

/// How a session's reader ended.
#[derive(Debug, Default, Clone)]
pub struct ReadEnd {
    /// The `BYE` reason, if one came.
    pub bye: Option<ByeReason>,
    /// Lines that were not server lines (the first one kept).
    pub bad_lines: u64,
    /// The first such line.
    pub first_bad: Option<String>,
    /// The read error, if it ended on one.
    pub error: Option<String>,
}

/// A running session.
#[derive(Debug)]
pub struct Session<H> {
    /// Who.
    pub user: String,
    /// Its send queue.
    pub out: Out,
    kind: Kind,
    reader: JoinHandle<(H, ReadEnd)>,
    writer: JoinHandle<()>,
}

impl LoggedIn {
    /// Starts the reader and writer tasks.
    pub fn spawn<H: Handler>(self, handler: H) -> Session<H> {
        let (tx, rx) = mpsc::unbounded_channel();
        let out = Out(tx);
        let writer = tokio::spawn(write_loop(self.writer, rx));
        let reader = match self.kind {
            Kind::Irc => tokio::spawn(irc_read_loop(self.reader, out.clone(), handler)),
            Kind::Chat | Kind::Relay => tokio::spawn(read_loop(self.reader, out.clone(), handler)),
        };
        Session {
            user: self.user,
            out,
            kind: self.kind,
            reader,
            writer,
        }
    }

    /// Joins an IRC channel and waits for the end of its `NAMES` list,
    /// the last reply to the `JOIN`.
    pub async fn join(&mut self, channel: &str) -> Result<()> {
        self.writer
            .write_all(format!("JOIN {channel}\n").as_bytes())
            .await?;
        irc_wait(&mut self.reader, &mut self.writer, "366", |l| {
            *l == IrcLine::EndOfNames
        })
        .await
        .with_context(|| format!("{} joining {channel}", self.user))
    }

    /// Ends a session that never got tasks: `logout` for chatd, `QUIT` for
    /// IRC, then close.
    pub async fn logout(mut self) {
        if let Some(bye) = self.kind.goodbye() {
            let _ = self.writer.write_all(format!("{bye}\n").as_bytes()).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(Some(_)) = self.reader.next_line().await {}
            })
            .await;
        }
        let _ = self.writer.shutdown().await;
    }
}

#[cfg(test)]
impl LoggedIn {
    /// The next line, for tests that read a session by hand.
    pub async fn next_line_for_test(&mut self) -> String {
        self.reader.next_line().await.unwrap().unwrap()
    }

    /// Sends one line (a `\n` is added), for tests that drive a session
    /// by hand.
    pub async fn send_line_for_test(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }
}

impl<H: Handler> Session<H> {
    /// Ends the session (`logout` for chatd, `QUIT` for IRC, end of stream
    /// for the relay) and gives the handler back, or `None` when the server
    /// did not close the connection within `timeout`.
    pub async fn close(self, timeout: Duration) -> Option<(H, ReadEnd)> {
        if let Some(bye) = self.kind.goodbye() {
            self.out.send(bye.into());
        }
        self.out.close();
        self.finish(timeout).await
    }

    /// Waits for the reader to end by itself (the server closed), up to
    /// `timeout`; stops both tasks.
    pub async fn finish(mut self, timeout: Duration) -> Option<(H, ReadEnd)> {
        let r = tokio::time::timeout(timeout, &mut self.reader).await;
        self.writer.abort();
        match r {
            Ok(Ok(x)) => Some(x),
            Ok(Err(_)) => None,
            Err(_) => {
                self.reader.abort();
                None
            }
        }
    }

    /// Stops both tasks now, dropping the connection without `logout`.
    pub fn abort(self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// Closes every session (concurrently) and returns their handlers.
pub async fn close_all<H: Handler>(sessions: Vec<Session<H>>, timeout: Duration) -> Vec<H> {
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|s| tokio::spawn(s.close(timeout)))
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(Some((h, _))) = t.await {
            out.push(h);
        }
    }
    out
}

async fn write_loop(mut w: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut buf = Vec::with_capacity(4096);
    while let Some(first) = rx.recv().await {
        let mut close = false;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Line(l) => {
                    buf.extend_from_slice(l.as_bytes());
                    buf.push(b'\n');
                }
                Msg::Close => {
                    close = true;
                    break;
                }
            }
            if buf.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() && w.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
        if buf.capacity() > 256 * 1024 {
            buf = Vec::with_capacity(4096);
        }
        if close {
            let _ = w.shutdown().await;
            return;
        }
    }
}

/// Reads lines until EOF or an error, handing each to `on_line`; a read
/// error ends the loop and is kept in the [`ReadEnd`].
async fn read_lines<H: Handler>(
    mut r: LineReader,
    out: Out,
    mut h: H,
    mut on_line: impl FnMut(String, &Out, &mut H, &mut ReadEnd),
) -> (H, ReadEnd) {
    let mut end = ReadEnd::default();
    loop {
        match r.next_line().await {
            Ok(Some(line)) => on_line(line, &out, &mut h, &mut end),
            Ok(None) => break,
            Err(e) => {
                end.error = Some(e.to_string());
                break;
            }
        }
    }
    (h, end)
}

/// The reader of a CHAT/1 session: answers `IDLE`, notes `BYE`, counts
/// lines that do not parse.
async fn read_loop<H: Handler>(r: LineReader, out: Out, h: H) -> (H, ReadEnd) {
    read_lines(r, out, h, |line, out, h, end| {
        match ServerLine::parse(&line) {
            Ok(parsed) => {
                match &parsed {
                    ServerLine::Idle { seq } => out.send(format!("idle {seq}")),
                    ServerLine::Bye(reason) => end.bye = Some(*reason),
                    _ => {}
                }
                h.on_line(&parsed, out);
            }
            Err(_) => {
                end.bad_lines += 1;
                end.first_bad.get_or_insert(line);
            }
        }
    })
    .await
}

/// [`read_loop`] for IRC: answers `PING`, hands `PRIVMSG`s to the handler
/// as deliveries and drops every other line (an IRC server sends many the
/// scenarios do not measure, such as others' `JOIN`s).
async fn irc_read_loop<H: Handler>(r: LineReader, out: Out, h: H) -> (H, ReadEnd) {
    read_lines(r, out, h, |line, out, h, end| match irc::parse(&line) {
        IrcLine::Ping(token) => out.send(format!("PONG :{token}")),
        IrcLine::Privmsg { from, target, text } => {
            h.on_line(&irc::as_delivery(&from, &target, &text), out);
        }
        IrcLine::Error(reason) => {
            end.error.get_or_insert(format!("ERROR :{reason}"));
        }
        _ => {}
    })
    .await
}

/// The text of a measured message: the send time (µs on the harness
/// clock), a sequence number, and padding up to `len` bytes.
pub fn payload(t_us: u64, seq: u64, len: usize) -> String {
    let mut s = format!("{t_us} {seq} ");
    while s.len() < len {
        s.push('x');
    }
    s
}

/// Reads a [`payload`]: its send time and sequence number.
pub fn parse_payload(text: &str) -> Option<(u64, u64)> {
    let mut it = text.splitn(3, ' ');
    let t = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    Some((t, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_pads() {
        let p = payload(123_456, 7, 40);
        assert_eq!(p.len(), 40);
        assert!(p.starts_with("123456 7 x"));
        assert_eq!(parse_payload(&p), Some((123_456, 7)));
        // Never shorter than its numbers.
        assert_eq!(payload(1, 2, 0), "1 2 ");
        assert_eq!(parse_payload("1 2 "), Some((1, 2)));
        assert_eq!(parse_payload("hello there"), None);
    }

    #[test]
    fn command_lines() {
        assert_eq!(Kind::Chat.private("bob", "hi"), "message bob hi");
        assert_eq!(Kind::Relay.private("bob", "hi"), "to bob hi");
        assert_eq!(Kind::Chat.broadcast("hi"), "broadcast message hi");
        assert_eq!(Kind::Relay.broadcast("hi"), "all hi");
        assert_eq!(Kind::Irc.private("bob", "hi x"), "PRIVMSG bob :hi x");
        assert_eq!(Kind::Irc.broadcast("hi x"), "PRIVMSG #bench :hi x");
        assert_eq!(Kind::Irc.broadcast_receivers(1000), 999);
        assert_eq!(Kind::Chat.broadcast_receivers(1000), 1000);
    }
}
