//! Starting, signalling and inspecting the `chatd` under test, and running
//! it to completion for command-line tests. Kept apart from [`client`](super::client)
//! because these helpers own a process and a directory, not a connection.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::client::Client;
use super::{EXIT_TIMEOUT, START_TIMEOUT};

/// The `chatd` binary under test: `CHATD_TEST_BIN` if set (to run the
/// suite against another build or a mock), else the package's `chatd`.
pub fn chatd_bin() -> String {
    std::env::var("CHATD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_chatd").to_owned())
}

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
    web: Option<SocketAddr>,
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
        // The web listener's default port (4180) would clash between tests
        // running at once: a free port, unless the test sets its own.
        if !opts
            .config
            .iter()
            .any(|l| l.trim_start().starts_with("http_port"))
        {
            config.push_str("http_port = 0\n");
        }
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
            web: None,
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
        self.web = None;
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
                    // Printed before the readiness line when `http` is on.
                    if let Some(rest) = line.strip_prefix("chatd web on http://") {
                        self.web = Some(rest.trim().parse().unwrap_or_else(|e| {
                            panic!("chatd printed a bad web line {line:?}: {e}")
                        }));
                    }
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

    /// The web listener's address (`http://` only), if it runs.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web
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

    /// The server's stderr once `done` holds for it, or as it is after
    /// [`LINE_TIMEOUT`](super::LINE_TIMEOUT): a reply the client reads can come before the log line the
    /// server wrote first, since a thread collects stderr.
    pub fn stderr_once(&self, done: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + super::LINE_TIMEOUT;
        loop {
            let log = self.stderr();
            if done(&log) || Instant::now() > end {
                return log;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A new client connected to this server.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Connects from `ip`: `true` if served (`ASK username` read), `false`
    /// if refused (one `ERR` line and the close).
    pub fn try_connect(&self, ip: &str) -> (bool, Client) {
        let mut c = Client::connect_from(self.addr(), ip);
        let mut line = c.line();
        if line == "HELLO CHAT/1" {
            line = c.line();
        }
        if line == "ASK username" {
            return (true, c);
        }
        assert!(line.starts_with("ERR "), "got {line:?}");
        c.expect_closed();
        (false, c)
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
