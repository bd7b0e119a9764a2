//! The client side: a synchronous, line-framed CHAT/1 connection that
//! answers `IDLE` probes itself unless told otherwise, and the parsers for
//! the lines tests look at. Kept apart from [`server`](super::server) so that what a
//! test sends and reads is in one place.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::util::rfc3339_to_unix;
use super::LINE_TIMEOUT;

/// What one read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// A whole line, without its `\n` (and without a `\r` before it).
    Line(String),
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing within the timeout.
    TimedOut,
}

/// What a [`Client`] does with `IDLE <seq>` probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleMode {
    /// Answer `idle <seq>` and skip the probe (the default).
    Answer,
    /// Skip the probe without answering (a client that never confirms).
    Ignore,
    /// Return the probe from `line()` like any other line; answer nothing.
    Show,
}

/// A raw CHAT/1 connection. By default it answers each `IDLE <seq>` probe
/// with `idle <seq>` itself and never shows it (see
/// [`Client::set_idle_mode`]).
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    pending: VecDeque<String>,
    eof: bool,
    idle_mode: IdleMode,
    /// Every line received so far, for failure messages.
    seen: Vec<String>,
    /// Sequence numbers of the probes answered automatically.
    answered: Vec<u64>,
    label: String,
    local: SocketAddr,
}

impl Client {
    /// Connects from 127.0.0.1 (the OS picks).
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Client::from_stream(stream)
    }

    /// Connects with the local end bound to `local_ip` (any of 127.0.0.0/8
    /// on Linux), so the server sees another client address.
    pub fn connect_from(addr: SocketAddr, local_ip: &str) -> Client {
        use socket2::{Domain, Socket, Type};
        let ip: IpAddr = local_ip.parse().expect("local ip");
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        socket
            .connect(&addr.into())
            .unwrap_or_else(|e| panic!("connect {addr} from {ip}: {e}"));
        Client::from_stream(socket.into())
    }

    /// Connects with a small receive buffer (`SO_RCVBUF`, set before the
    /// handshake so the window stays small): a client that stops reading
    /// then backs up into the server after kilobytes, not after the
    /// kernel's autotuned megabytes.
    pub fn connect_with_rcvbuf(addr: SocketAddr, bytes: usize) -> Client {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        socket
            .connect(&addr.into())
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Client::from_stream(socket.into())
    }

    fn from_stream(stream: TcpStream) -> Client {
        stream.set_nodelay(true).unwrap();
        let local = stream.local_addr().unwrap();
        Client {
            stream,
            buf: Vec::new(),
            pending: VecDeque::new(),
            eof: false,
            idle_mode: IdleMode::Answer,
            seen: Vec::new(),
            answered: Vec::new(),
            label: format!("client {local}"),
            local,
        }
    }

    /// Whether `IDLE <seq>` probes are answered and skipped automatically
    /// (default `true`). With `false`, `line()` returns them like any line
    /// and nothing is answered.
    pub fn set_auto_idle(&mut self, on: bool) {
        self.idle_mode = if on { IdleMode::Answer } else { IdleMode::Show };
    }

    /// Sets what happens to `IDLE` probes (see [`IdleMode`]).
    pub fn set_idle_mode(&mut self, mode: IdleMode) {
        self.idle_mode = mode;
    }

    /// The sequence numbers of the probes answered automatically so far.
    pub fn answered_probes(&self) -> &[u64] {
        &self.answered
    }

    /// The local address of this connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A name for failure messages (set by `login`).
    pub fn set_label(&mut self, label: &str) {
        self.label = label.to_owned();
    }

    /// The underlying socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends `line` and a `\n`.
    pub fn send(&mut self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.send_raw(&bytes);
    }

    /// Sends these bytes as they are, in one write.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!(
                "{}: write failed: {e}\nreceived so far: {:#?}",
                self.label, self.seen
            );
        }
    }

    /// Sends these bytes as they are; `false` if the connection is gone.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    fn fill(&mut self, deadline: Instant) -> Recv {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Recv::Line(line);
            }
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut raw: Vec<u8> = self.buf.drain(..=pos).collect();
                raw.pop();
                if raw.last() == Some(&b'\r') {
                    raw.pop();
                }
                let line = match String::from_utf8(raw) {
                    Ok(s) => s,
                    Err(e) => panic!(
                        "{}: the server sent a line that is not UTF-8: {:?}",
                        self.label,
                        String::from_utf8_lossy(e.as_bytes())
                    ),
                };
                self.seen.push(line.clone());
                return Recv::Line(line);
            }
            if self.eof {
                return Recv::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Recv::TimedOut;
            }
            let left = (deadline - now).max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset
                            | ErrorKind::ConnectionAborted
                            | ErrorKind::BrokenPipe
                    ) =>
                {
                    self.eof = true
                }
                Err(e) => panic!("{}: read failed: {e}", self.label),
            }
        }
    }

    /// The next line or event within `timeout`; `IDLE` probes are handled
    /// by the [`IdleMode`].
    pub fn recv(&mut self, timeout: Duration) -> Recv {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Recv::Line(line) => {
                    if let Some(seq) = probe_seq(&line) {
                        match self.idle_mode {
                            IdleMode::Answer => {
                                self.answered.push(seq);
                                // The server may be closing: ignore write errors.
                                let _ = self.stream.write_all(format!("idle {seq}\n").as_bytes());
                                continue;
                            }
                            IdleMode::Ignore => continue,
                            IdleMode::Show => {}
                        }
                    }
                    return Recv::Line(line);
                }
                other => return other,
            }
        }
    }

    /// The next line (see [`Client::recv`]); panics on close or after
    /// [`LINE_TIMEOUT`], showing what was received.
    pub fn line(&mut self) -> String {
        self.line_within(LINE_TIMEOUT)
    }

    /// The next line within `timeout`, or panic.
    pub fn line_within(&mut self, timeout: Duration) -> String {
        match self.recv(timeout) {
            Recv::Line(line) => line,
            Recv::Closed => panic!(
                "{}: connection closed while waiting for a line\nreceived: {:#?}",
                self.label, self.seen
            ),
            Recv::TimedOut => panic!(
                "{}: no line within {timeout:?}\nreceived: {:#?}",
                self.label, self.seen
            ),
        }
    }

    /// Asserts the next line is exactly `expected`.
    pub fn expect(&mut self, expected: &str) {
        let got = self.line();
        assert_eq!(
            got, expected,
            "{}: unexpected line\nreceived: {:#?}",
            self.label, self.seen
        );
    }

    /// Asserts the next line starts with `prefix` and returns it.
    pub fn expect_prefix(&mut self, prefix: &str) -> String {
        let got = self.line();
        assert!(
            got.starts_with(prefix),
            "{}: expected a line starting {prefix:?}, got {got:?}\nreceived: {:#?}",
            self.label,
            self.seen
        );
        got
    }

    /// Asserts the next line is a `MSG`/`BCAST` and returns it parsed.
    pub fn expect_delivery(&mut self) -> Delivery {
        let got = self.line();
        Delivery::parse(&got).unwrap_or_else(|| {
            panic!(
                "{}: expected MSG or BCAST, got {got:?}\nreceived: {:#?}",
                self.label, self.seen
            )
        })
    }

    /// Asserts the server closes the connection (within [`LINE_TIMEOUT`])
    /// without sending anything but `IDLE` probes first.
    pub fn expect_closed(&mut self) {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            match self.fill(deadline) {
                Recv::Closed => return,
                Recv::Line(line) if probe_seq(&line).is_some() => continue,
                Recv::Line(line) => panic!(
                    "{}: expected the connection to close, got {line:?}\nreceived: {:#?}",
                    self.label, self.seen
                ),
                Recv::TimedOut => panic!(
                    "{}: connection still open after {LINE_TIMEOUT:?}\nreceived: {:#?}",
                    self.label, self.seen
                ),
            }
        }
    }

    /// Reads `HELLO CHAT/1` if it is next, then expects `ASK username`.
    pub fn expect_ask_username(&mut self) {
        let mut got = self.line();
        if got == "HELLO CHAT/1" {
            got = self.line();
        }
        assert_eq!(
            got, "ASK username",
            "{}: received: {:#?}",
            self.label, self.seen
        );
    }

    /// One login attempt from the `ASK username` prompt (skipping a leading
    /// `HELLO CHAT/1`): sends `user`; if the server asks for the password,
    /// sends it. Returns the server's answer: `OK login <user>` or
    /// `ERR ...`; the lines after it are left unread.
    pub fn login_attempt(&mut self, user: &str, password: &str) -> String {
        self.expect_ask_username();
        self.send(user);
        let got = self.line();
        if got != "ASK password" {
            return got;
        }
        self.send(password);
        self.line()
    }

    /// Logs in (`HELLO`, `ASK`s, `OK login <user>`), then reads the
    /// `OFFLINE <n>` block if any and returns the held messages. Uses a
    /// `whoelse` barrier to know no `OFFLINE` block follows: the `WHO` reply
    /// is consumed. Live deliveries that arrive before it are kept for the
    /// next [`Client::line`].
    pub fn login(&mut self, user: &str, password: &str) -> Vec<Delivery> {
        self.label = format!("{user}@{}", self.local);
        let got = self.login_attempt(user, password);
        assert_eq!(
            got,
            format!("OK login {user}"),
            "{}: login failed\nreceived: {:#?}",
            self.label,
            self.seen
        );
        self.send("whoelse");
        let mut held = Vec::new();
        let mut first = true;
        let mut early = Vec::new();
        loop {
            let line = self.line();
            if let Some(rest) = line.strip_prefix("OFFLINE ") {
                assert!(
                    first,
                    "{}: OFFLINE after other lines\nreceived: {:#?}",
                    self.label, self.seen
                );
                let n: usize = rest
                    .parse()
                    .unwrap_or_else(|_| panic!("bad OFFLINE line {line:?}"));
                assert!(n > 0, "{}: `OFFLINE 0` must not be sent", self.label);
                // Probes may come between the block's lines (§5); in
                // `IdleMode::Show` they are kept for the test, in order.
                while held.len() < n {
                    let line = self.line();
                    if probe_seq(&line).is_some() {
                        early.push(line);
                        continue;
                    }
                    held.push(Delivery::parse(&line).unwrap_or_else(|| {
                        panic!(
                            "{}: expected MSG or BCAST in the OFFLINE block, got {line:?}\nreceived: {:#?}",
                            self.label, self.seen
                        )
                    }));
                }
            } else if line == "WHO" || line.starts_with("WHO ") {
                break;
            } else {
                early.push(line);
            }
            first = false;
        }
        // Keep order: early lines come before anything read later.
        for line in early.into_iter().rev() {
            self.pending.push_front(line);
        }
        held
    }

    /// `whoelse` as a barrier: everything sent before it has been processed
    /// when its `WHO` arrives. Panics if any other line comes first; returns
    /// the names in `WHO`.
    pub fn barrier(&mut self) -> Vec<String> {
        self.send("whoelse");
        let got = self.line();
        assert!(
            got == "WHO" || got.starts_with("WHO "),
            "{}: expected only the WHO reply of the barrier, got {got:?}\nreceived: {:#?}",
            self.label,
            self.seen
        );
        words_after(&got, "WHO")
    }

    /// Sends `whoelse` and returns the names of its `WHO` reply.
    pub fn whoelse(&mut self) -> Vec<String> {
        self.barrier()
    }

    /// Sends `logout` and expects `BYE logout` and the close.
    pub fn logout(mut self) {
        self.send("logout");
        self.expect("BYE logout");
        self.expect_closed();
    }

    /// Closes the connection with a reset (SO_LINGER 0): an abrupt death.
    pub fn abort(self) {
        let sock = socket2::SockRef::from(&self.stream);
        let _ = sock.set_linger(Some(Duration::ZERO));
        drop(self);
    }

    /// Closes the connection normally (FIN) without `logout`.
    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Every line received so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }
}

/// `Some(seq)` if `line` is an `IDLE <seq>` probe.
pub fn probe_seq(line: &str) -> Option<u64> {
    line.strip_prefix("IDLE ")?.parse().ok()
}

/// The space-separated words after `kind` in a line like `WHO a b`.
pub fn words_after(line: &str, kind: &str) -> Vec<String> {
    line.strip_prefix(kind)
        .unwrap_or_else(|| panic!("{line:?} does not start with {kind}"))
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A parsed `MSG <id> <ts> <from> <text>` or `BCAST ...` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// `"MSG"` or `"BCAST"`.
    pub kind: String,
    /// The message id.
    pub id: u64,
    /// The timestamp as sent.
    pub ts: String,
    /// The sender.
    pub from: String,
    /// The text, to the end of the line.
    pub text: String,
}

impl Delivery {
    /// Parses a delivery line; `None` if it is not one. Also checks the
    /// timestamp is RFC 3339 UTC to the second.
    pub fn parse(line: &str) -> Option<Delivery> {
        let mut parts = line.splitn(5, ' ');
        let kind = parts.next()?;
        if kind != "MSG" && kind != "BCAST" {
            return None;
        }
        let id = parts.next()?.parse().ok()?;
        let ts = parts.next()?;
        let from = parts.next()?;
        let text = parts.next().unwrap_or("");
        assert!(
            rfc3339_to_unix(ts).is_some(),
            "bad timestamp {ts:?} in {line:?}"
        );
        Some(Delivery {
            kind: kind.to_owned(),
            id,
            ts: ts.to_owned(),
            from: from.to_owned(),
            text: text.to_owned(),
        })
    }

    /// Whether this is a `MSG`.
    pub fn is_msg(&self) -> bool {
        self.kind == "MSG"
    }

    /// The timestamp as seconds since the Unix epoch.
    pub fn unix_time(&self) -> i64 {
        rfc3339_to_unix(&self.ts).unwrap()
    }
}
