//! The shared harness of the end-to-end suite (after irctest): every test
//! starts its own `chatd` on port 0 with a temporary config, users file and
//! data directory, drives it over raw sockets, and synchronises on replies —
//! every command of a logged-in client gets exactly one reply, so a
//! `whoelse` answered by `WHO` is a barrier proving everything sent before
//! it was processed. No test sleeps to wait for the server.
//!
//! Server side: [`TestServer`], [`Opts`], [`run_chatd`], [`hash_password`].
//! Client side: [`Client`] (synchronous, line-framed, auto-answers `IDLE`),
//! [`Delivery`] (a parsed `MSG`/`BCAST`).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a client waits for one expected line before the test fails.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server gets to print its `listening` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server gets to exit after a signal.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `chatd` binary under test: `CHATD_TEST_BIN` if set (to run the
/// suite against another build or a mock), else the package's `chatd`.
pub fn chatd_bin() -> String {
    std::env::var("CHATD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_chatd").to_owned())
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// How to start a [`TestServer`].
///
/// ```ignore
/// let server = TestServer::start(Opts {
///     users: &[("alice", "pw-a"), ("bob", "pw-b")],
///     config: &["heartbeat = 0.2", "block_time = 1"],
///     ..Opts::default()
/// });
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Opts<'a> {
    /// Accounts written to `users.txt` as `<user> <credential>` lines. The
    /// password may be plain or an `$argon2id$...` PHC string (written as
    /// is). Plain passwords are written as [`cheap_hash`]es unless `plain`
    /// is set; logging in with the plain password works either way.
    pub users: &'a [(&'a str, &'a str)],
    /// Write plain passwords as plain text in `users.txt`. Off by default
    /// because chatd runs a full argon2 check (against a dummy hash with
    /// the usual parameters) even for plain accounts, which costs ~0.3 s
    /// per login in a debug build; with only cheap hashes in the file the
    /// dummy is cheap too.
    pub plain: bool,
    /// Extra lines appended to `chatd.toml` (e.g. `"heartbeat = 0.2"`).
    pub config: &'a [&'a str],
    /// If set, written to `users.txt` verbatim instead of `users`.
    pub users_raw: Option<&'a str>,
}

impl<'a> Opts<'a> {
    /// Only these accounts, default config.
    pub fn users(users: &'a [(&'a str, &'a str)]) -> Self {
        Opts {
            users,
            ..Opts::default()
        }
    }
}

/// A running `chatd` on 127.0.0.1 with a port picked by the system, in its
/// own temporary directory. Killed (SIGKILL) on drop.
pub struct TestServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl TestServer {
    /// Writes the config, users file and data directory, starts `chatd` on
    /// port 0 and waits (up to [`START_TIMEOUT`]) for its listening line.
    pub fn start(opts: Opts<'_>) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("chatd-test-")
            .tempdir()
            .expect("tempdir");
        let mut users = String::new();
        match opts.users_raw {
            Some(raw) => users.push_str(raw),
            None => {
                for (user, password) in opts.users {
                    if opts.plain || password.starts_with("$argon2") {
                        writeln!(users, "{user} {password}").unwrap();
                    } else {
                        writeln!(users, "{user} {}", cheap_hash(password)).unwrap();
                    }
                }
            }
        }
        std::fs::write(dir.path().join("users.txt"), users).expect("write users.txt");
        let mut config = String::from("# written by tests/common\n");
        for line in opts.config {
            config.push_str(line);
            config.push('\n');
        }
        std::fs::write(dir.path().join("chatd.toml"), config).expect("write chatd.toml");
        std::fs::create_dir_all(dir.path().join("data")).expect("create data dir");
        let mut server = TestServer {
            dir,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stdout: Arc::default(),
            stderr: Arc::default(),
        };
        server.spawn();
        server
    }

    /// A server with these accounts and extra config lines.
    pub fn with(users: &[(&str, &str)], config: &[&str]) -> TestServer {
        TestServer::start(Opts {
            users,
            config,
            ..Opts::default()
        })
    }

    fn spawn(&mut self) {
        let mut child = Command::new(chatd_bin())
            .arg("127.0.0.1")
            .arg("0")
            .arg("--config")
            .arg(self.config_path())
            .arg("--users")
            .arg(self.users_path())
            .arg("--data-dir")
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chatd");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        self.stdout = Arc::default();
        self.stderr = Arc::default();
        let (tx, rx) = mpsc::channel::<String>();
        let out = Arc::clone(&self.stdout);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                out.lock().unwrap().push_str(&line);
                out.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
        let err = Arc::clone(&self.stderr);
        thread::spawn(move || {
            let mut stderr = stderr;
            let mut buf = [0u8; 8192];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut s = err.lock().unwrap();
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                        // Keep memory bounded on chatty servers: the tail matters.
                        if s.len() > 1 << 20 {
                            let cut = s.len() - (1 << 19);
                            let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                            s.drain(..cut);
                        }
                    }
                }
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("chatd listening on ") {
                        self.addr = rest.trim().parse().unwrap_or_else(|e| {
                            panic!("chatd printed a bad listening line {line:?}: {e}")
                        });
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.kill_child();
                    panic!(
                        "chatd did not print `chatd listening on <ip>:<port>` within {START_TIMEOUT:?}\n\
                         stdout:\n{}\nstderr:\n{}",
                        self.stdout(),
                        self.stderr()
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is gone (or closed stdout).
                    let status = self.wait_exit(EXIT_TIMEOUT);
                    panic!(
                        "chatd exited before listening ({status:?})\nstdout:\n{}\nstderr:\n{}",
                        self.stdout(),
                        self.stderr()
                    );
                }
            }
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The temporary directory holding `chatd.toml`, `users.txt`, `data/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("chatd.toml")
    }

    /// The users file.
    pub fn users_path(&self) -> PathBuf {
        self.dir.path().join("users.txt")
    }

    /// The data directory (kept across [`TestServer::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the server printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything the server printed on stderr so far (the tail if huge).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A new client connected to this server.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// A new client, logged in (held messages discarded: use
    /// [`Client::login`] when they matter).
    pub fn login(&self, user: &str, password: &str) -> Client {
        let mut c = Client::connect(self.addr);
        c.login(user, password);
        c
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL: a crash. Waits until the process is gone.
    pub fn kill(&mut self) {
        assert!(self.child.is_some(), "kill(): chatd is not running");
        self.kill_child();
    }

    /// Sends a signal by name (`"TERM"`, `"INT"`, ...) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("signal(): chatd is not running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{name} {pid} failed: {status:?}");
    }

    /// SIGTERM, then waits (up to [`EXIT_TIMEOUT`]) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        match self.wait_exit(EXIT_TIMEOUT) {
            Some(status) => status,
            None => {
                self.kill_child();
                panic!(
                    "chatd did not exit within {EXIT_TIMEOUT:?} of SIGTERM\nstderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// Waits for the process to exit on its own; `None` on timeout (the
    /// process is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling a process for exit: bounded, not a synchronisation sleep.
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts `chatd` again on the same config, users file and data
    /// directory, on a new port (see [`TestServer::addr`]). Kills the old
    /// process first if it still runs.
    pub fn restart(&mut self) {
        self.kill_child();
        self.spawn();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill_child();
    }
}

/// The result of running `chatd` to completion (for command-line tests).
#[derive(Debug)]
pub struct RunOutput {
    /// Exit status, `None` if killed after the timeout.
    pub status: Option<ExitStatus>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `chatd` with these arguments (stdin from `stdin`) and waits up to
/// `timeout`; a process still running then is killed (status `None`).
pub fn run_chatd(args: &[&str], stdin: &str, timeout: Duration) -> RunOutput {
    let mut child = Command::new(chatd_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatd");
    {
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(stdin.as_bytes());
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let t_err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    RunOutput {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// `chatd hash-password`: the argon2id PHC string for `password`.
pub fn hash_password(password: &str) -> String {
    let out = run_chatd(
        &["hash-password"],
        &format!("{password}\n"),
        Duration::from_secs(60),
    );
    assert_eq!(
        out.status.map(|s| s.code()),
        Some(Some(0)),
        "chatd hash-password failed: {out:?}"
    );
    let phc = out.stdout.trim().to_owned();
    assert!(phc.starts_with("$argon2id$"), "not a PHC string: {phc:?}");
    phc
}

/// An argon2id PHC string for `password` with the smallest parameters
/// (m=8 KiB, t=1, p=1), computed in-process: cheap even in a debug build.
/// chatd runs every password check (plain accounts and unknown names too)
/// against a dummy hash with the parameters most accounts use, so a users
/// file of such hashes makes logins fast: use it where a test logs in many
/// users and the password check is not what it tests.
pub fn cheap_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use argon2::{Algorithm, Argon2, Params, Version};
    let params = Params::new(8, 1, 1, None).expect("argon2 params");
    let salt = SaltString::encode_b64(b"chat-test-salt!!").expect("salt");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hash")
        .to_string()
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

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

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (exactly that form, as PROTOCOL.md §2
/// fixes it) into Unix seconds. It uses chrono, not chatcore's own parser,
/// so that the end-to-end tests do not check the server's timestamps with
/// the server's code.
pub fn rfc3339_to_unix(ts: &str) -> Option<i64> {
    let shape = ts.len() == 20
        && ts.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !shape {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%SZ")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// A small deterministic generator (SplitMix64): the same choices every run.
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut r = Rng(seed);
        r.next();
        r
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A value from `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`).
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resets the peak RSS (`VmHWM`) of `pid`, if the kernel lets us.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/clear_refs"))
        .and_then(|mut f| f.write_all(b"5"))
        .is_ok()
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Polls `f` until it returns `Some` or `timeout` passes (then panics with
/// `what`). For waiting on server timers: each poll is a real request, and
/// the pause between polls is bounded and short.
pub fn poll_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}
