//! `chatc` under a pseudo-terminal against the real `chatd` (PROTOCOL.md
//! §11): waiting for a late server, the hidden password, a message arriving
//! while a line is half typed, heartbeats answered unseen, Ctrl-D / Ctrl-C
//! logout and server shutdown. Every wait is on expected output, with a
//! timeout; nothing sleeps for a fixed time.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rexpect::process::WaitStatus;
use rexpect::session::{spawn_with_options, Options, PtySession};

const USERS: &[(&str, &str)] = &[("alice", "alice-pw"), ("bob", "bob-pw")];

/// How long the terminal may take to show an expected text.
const PTY_TIMEOUT_MS: u64 = 10_000;

/// `chatc` on a pseudo-terminal, keeping everything it printed so far so a
/// test can check what was never shown.
struct Pty {
    session: PtySession,
    transcript: String,
}

impl Pty {
    fn spawn(args: &[&str]) -> Pty {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatc"));
        // A terminal rustyline supports, whatever runs the tests.
        cmd.args(args).env("TERM", "xterm").env("TZ", "UTC");
        let options = Options::new()
            .timeout_ms(Some(PTY_TIMEOUT_MS))
            .strip_ansi_escape_codes(true);
        let session = spawn_with_options(cmd, options).expect("spawn chatc on a pty");
        Pty {
            session,
            transcript: String::new(),
        }
    }

    /// chatc for `server`, with extra arguments.
    fn for_server(server: &TestServer, extra: &[&str]) -> Pty {
        let addr = server.addr();
        let (host, port) = (addr.ip().to_string(), addr.port().to_string());
        let mut args = vec![host.as_str(), port.as_str()];
        args.extend_from_slice(extra);
        Pty::spawn(&args)
    }

    /// Waits until `needle` is shown.
    fn expect(&mut self, needle: &str) {
        match self.session.exp_string(needle) {
            Ok(before) => {
                self.transcript.push_str(&before);
                self.transcript.push_str(needle);
            }
            Err(e) => panic!(
                "chatc did not show {needle:?}: {e}\nshown before:\n{}",
                self.transcript
            ),
        }
    }

    /// Types `text` without Enter.
    fn type_text(&mut self, text: &str) {
        self.session.send(text).expect("write to the pty");
        self.session.flush().expect("flush the pty");
    }

    /// Types `line` and Enter.
    fn type_line(&mut self, line: &str) {
        self.type_text(&format!("{line}\r"));
    }

    fn control(&mut self, c: char) {
        self.session.send_control(c).expect("write to the pty");
    }

    /// Logs in as `user` through the prompts and waits for `<user>> `.
    fn login(&mut self, user: &str, password: &str) {
        self.expect("Username: ");
        self.type_line(user);
        self.expect("Password: ");
        self.type_line(password);
        self.expect(&format!("logged in as {user}"));
        self.expect(&format!("{user}> "));
    }

    /// Reads to the end of output and returns the exit status.
    fn exit_code(&mut self) -> i32 {
        match self.session.exp_eof() {
            Ok(rest) => self.transcript.push_str(&rest),
            Err(e) => panic!(
                "chatc did not exit: {e}\nshown before:\n{}",
                self.transcript
            ),
        }
        match self.session.process().wait().expect("wait for chatc") {
            WaitStatus::Exited(_, code) => code,
            other => panic!("chatc ended abnormally: {other:?}\n{}", self.transcript),
        }
    }
}

/// Waits until `client` has answered `n` more heartbeat probes than now:
/// time measured in server heartbeats, not a sleep.
fn let_heartbeats_pass(client: &mut Client, n: usize) {
    let target = client.answered_probes().len() + n;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.answered_probes().len() < target {
        assert!(Instant::now() < deadline, "no heartbeats from the server");
        match client.recv(Duration::from_millis(100)) {
            Recv::TimedOut => {}
            Recv::Line(line) => panic!("unexpected line {line:?}"),
            Recv::Closed => panic!("the server closed the connection"),
        }
    }
}

/// A `chatd` started by hand on a given port (the harness always picks
/// port 0, and this test needs the port known before the server starts).
/// Killed on drop.
struct HandStartedServer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl HandStartedServer {
    fn start(port: u16) -> HandStartedServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let users = dir.path().join("users.txt");
        let config = dir.path().join("chatd.toml");
        let data = dir.path().join("data");
        std::fs::write(&users, "alice alice-pw\nbob bob-pw\n").unwrap();
        // The web listener's default port (4180) is not this test's to
        // take: another chatd on the machine may hold it.
        std::fs::write(&config, "http = false\n").unwrap();
        std::fs::create_dir_all(&data).unwrap();
        let mut child = Command::new(chatd_bin())
            .arg("127.0.0.1")
            .arg(port.to_string())
            .arg("--config")
            .arg(&config)
            .arg("--users")
            .arg(&users)
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chatd");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let server = HandStartedServer { child, _dir: dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("chatd listening on ") => return server,
                Ok(_) => {}
                Err(e) => panic!("chatd did not start on port {port}: {e}"),
            }
        }
    }
}

impl Drop for HandStartedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn waits_for_a_server_that_starts_late() {
    // Reserve a free port, then free it for chatd to take later.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut pty = Pty::spawn(&["127.0.0.1", &port.to_string()]);
    pty.expect(&format!("waiting for the server at 127.0.0.1:{port}..."));
    let _server = HandStartedServer::start(port);
    pty.login("alice", "alice-pw");
    pty.control('d');
    pty.expect("logged out");
    assert_eq!(pty.exit_code(), 0);
    assert_eq!(
        pty.transcript.matches("waiting for the server").count(),
        1,
        "the wait is announced once:\n{}",
        pty.transcript
    );
}

#[test]
fn ctrl_c_while_waiting_exits_0() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut pty = Pty::spawn(&["127.0.0.1", &port.to_string()]);
    pty.expect("waiting for the server");
    pty.control('c');
    assert_eq!(pty.exit_code(), 0);
}

#[test]
fn password_is_never_echoed_and_ctrl_d_logs_out() {
    let server = TestServer::start(Opts::users(USERS));
    let mut bob = server.login("bob", "bob-pw");
    let mut pty = Pty::for_server(&server, &[]);
    pty.login("alice", "alice-pw");
    assert_eq!(bob.whoelse(), ["alice"]);
    pty.control('d');
    pty.expect("logged out");
    assert_eq!(pty.exit_code(), 0);
    assert!(
        !pty.transcript.contains("alice-pw"),
        "the password was shown:\n{}",
        pty.transcript
    );
    poll_until("alice to be gone", LINE_TIMEOUT, || {
        bob.whoelse().is_empty().then_some(())
    });
}

#[test]
fn user_flag_answers_the_name_and_ctrl_c_logs_out() {
    let server = TestServer::start(Opts::users(USERS));
    let mut pty = Pty::for_server(&server, &["--user", "alice"]);
    pty.expect("Password: ");
    pty.type_line("alice-pw");
    pty.expect("alice> ");
    assert!(!pty.transcript.contains("Username:"), "{}", pty.transcript);
    pty.control('c');
    pty.expect("logged out");
    assert_eq!(pty.exit_code(), 0);
}

#[test]
fn failed_login_is_explained() {
    let server = TestServer::start(Opts::users(USERS));
    let mut pty = Pty::for_server(&server, &[]);
    pty.expect("Username: ");
    pty.type_line("alice");
    pty.expect("Password: ");
    pty.type_line("wrong-pw");
    pty.expect("wrong user name or password");
    pty.expect("Username: ");
    pty.control('d');
    assert_eq!(pty.exit_code(), 0);
    assert!(!pty.transcript.contains("wrong-pw"), "{}", pty.transcript);
}

#[test]
fn a_message_arriving_mid_line_keeps_the_half_typed_line() {
    let server = TestServer::start(Opts::users(USERS));
    let mut bob = server.login("bob", "bob-pw");
    let mut pty = Pty::for_server(&server, &[]);
    pty.login("alice", "alice-pw");
    pty.type_text("message bob hel");
    pty.expect("message bob hel");
    bob.send("message alice are you there?");
    bob.expect("OK message alice delivered");
    pty.expect("bob: are you there?");
    // The half-typed line is drawn again under the message...
    pty.expect("alice> message bob hel");
    // ...and finishing it sends it whole.
    pty.type_line("lo");
    pty.expect("delivered to bob");
    let d = bob.expect_delivery();
    assert_eq!(
        (d.kind.as_str(), d.from.as_str(), d.text.as_str()),
        ("MSG", "alice", "hello")
    );
    pty.control('d');
    assert_eq!(pty.exit_code(), 0);
}

#[test]
fn heartbeats_are_answered_and_never_shown() {
    // 1.5 s leaves a loaded machine time to schedule chatc between probes;
    // bob logs in only once chatc is up, so that nobody who must answer
    // probes is left unread while a process starts.
    let server = TestServer::with(USERS, &["heartbeat = 0.25", "heartbeat_timeout = 1.5"]);
    let mut pty = Pty::for_server(&server, &[]);
    pty.login("alice", "alice-pw");
    let mut bob = server.login("bob", "bob-pw");
    // Start typing, so the probes arrive while a line is half done.
    pty.type_text("who");
    pty.expect("who");
    // Twenty periods: over three heartbeat timeouts.
    let_heartbeats_pass(&mut bob, 20);
    assert_eq!(bob.whoelse(), ["alice"], "alice's session died");
    pty.type_line("else");
    pty.expect("online: bob");
    assert!(
        !pty.transcript.to_ascii_lowercase().contains("idle"),
        "a heartbeat was shown:\n{}",
        pty.transcript
    );
    pty.control('d');
    pty.expect("logged out");
    assert_eq!(pty.exit_code(), 0);
}

#[test]
fn server_shutdown_is_explained() {
    let mut server = TestServer::start(Opts::users(USERS));
    let mut pty = Pty::for_server(&server, &[]);
    pty.login("alice", "alice-pw");
    assert!(server.terminate().success());
    pty.expect("the server shut down");
    assert_eq!(pty.exit_code(), 0);
}
