//! `chatc` with standard input not a terminal (PROTOCOL.md §11): login
//! answers and commands read line by line, replies and deliveries printed
//! plainly to stdout, heartbeats answered, logout at the end of input; and
//! the command-line errors. Runs against the real `chatd`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const USERS: &[(&str, &str)] = &[
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("carol", "carol-pw"),
];

/// `chatc` with piped stdin, stdout and stderr, its stdout lines read as
/// they come.
struct Piped {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
}

impl Piped {
    fn spawn(server: &TestServer, extra: &[&str]) -> Piped {
        let addr = server.addr();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatc"))
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .args(extra)
            .env("TZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chatc");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let err = child.stderr.take().unwrap();
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        Piped {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// What chatc wrote to stderr so far (all of it once it has exited and
    /// [`Piped::finish`] has returned).
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn write(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line, or panic after [`LINE_TIMEOUT`].
    fn line(&mut self) -> String {
        match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(e) => panic!("no line from chatc ({e}); so far: {:#?}", self.seen),
        }
    }

    fn expect(&mut self, want: &str) {
        let got = self.line();
        assert_eq!(got, want, "so far: {:#?}", self.seen);
    }

    /// Waits for the exit and returns the status and the rest of stdout.
    fn finish(self) -> (ExitStatus, Vec<String>) {
        let (status, rest, _) = self.finish_with_stderr();
        (status, rest)
    }

    /// Waits for the exit and returns the status, the rest of stdout and
    /// all of stderr.
    fn finish_with_stderr(mut self) -> (ExitStatus, Vec<String>, String) {
        self.close_stdin();
        let deadline = Instant::now() + LINE_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "chatc did not exit: {:#?}",
                self.seen
            );
            // Polling a process for exit: bounded, not a synchronisation sleep.
            thread::sleep(Duration::from_millis(10));
        };
        // Both pipes reach their end once the process is gone and the
        // reader threads have drained them.
        let rest: Vec<String> = self.lines.iter().collect();
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().unwrap();
        }
        (status, rest, self.stderr())
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `2026/11/24 17:12:01 <rest>` with any valid-looking date and time.
fn strip_time<'a>(line: &'a str, rest: &str) -> &'a str {
    let b = line.as_bytes();
    let shape = b.len() > 20
        && b[4] == b'/'
        && b[7] == b'/'
        && b[10] == b' '
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b' '
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19]
            .iter()
            .all(|r| b[r.clone()].iter().all(u8::is_ascii_digit));
    assert!(shape, "{line:?} does not start with a local time");
    assert_eq!(&line[20..], rest);
    &line[20..]
}

#[test]
fn a_script_of_commands_prints_each_reply_in_words() {
    let server = TestServer::start(Opts::users(USERS));
    let mut bob = server.login("bob", "bob-pw");
    let mut c = Piped::spawn(&server, &[]);
    c.write(
        "alice\nalice-pw\nwhoelse\nmessage bob hi bob\nmessage carol see you\n\
         wholast 99\ndance\nbroadcast hello all\nbusy\nonline\nwholast 5\n",
    );
    let (status, rest) = c.finish();
    assert_eq!(status.code(), Some(0), "{rest:#?}");
    // Alice's own copy of her broadcast is a delivery: it may come ahead
    // of the replies that wait for the store (PROTOCOL.md §4), so anywhere
    // after `whoelse`'s answer and before the broadcast's own reply.
    let copy = rest
        .iter()
        .position(|l| l.ends_with(" alice broadcast: hello all"))
        .unwrap_or_else(|| panic!("no copy of the broadcast: {rest:#?}"));
    strip_time(&rest[copy], "alice broadcast: hello all");
    let reply = rest
        .iter()
        .position(|l| l == "broadcast: delivered to 2, held for 0")
        .unwrap_or_else(|| panic!("no broadcast reply: {rest:#?}"));
    assert!((2..reply).contains(&copy), "{rest:#?}");
    let mut lines = rest
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != copy)
        .map(|(_, l)| l.as_str());
    let mut next = || {
        lines
            .next()
            .unwrap_or_else(|| panic!("too few lines: {rest:#?}"))
    };
    assert_eq!(next(), "logged in as alice");
    assert_eq!(next(), "online: bob");
    assert_eq!(next(), "delivered to bob");
    assert_eq!(next(), "carol is offline: message held");
    assert_eq!(next(), "usage: wholast <0-59>");
    assert_eq!(next(), "unknown command: dance (type help)");
    assert_eq!(next(), "broadcast: delivered to 2, held for 0");
    assert_eq!(next(), "you are now busy");
    assert_eq!(next(), "you are now online");
    assert_eq!(next(), "seen in that time: bob");
    assert_eq!(next(), "logged out");
    assert_eq!(rest.len(), 12, "{rest:#?}");

    let d = bob.expect_delivery();
    assert_eq!(
        (d.kind.as_str(), d.from.as_str(), d.text.as_str()),
        ("MSG", "alice", "hi bob")
    );
    let d = bob.expect_delivery();
    assert_eq!((d.kind.as_str(), d.text.as_str()), ("BCAST", "hello all"));
}

#[test]
fn deliveries_and_heartbeats_while_the_script_waits() {
    // 1.5 s leaves a loaded machine time to schedule chatc between probes;
    // bob logs in only once chatc is up, so that nobody who must answer
    // probes is left unread while a process starts.
    let server = TestServer::with(USERS, &["heartbeat = 0.25", "heartbeat_timeout = 1.5"]);
    let mut c = Piped::spawn(&server, &["--user", "alice"]);
    c.write("alice-pw\n");
    c.expect("logged in as alice");
    let mut bob = server.login("bob", "bob-pw");
    bob.send("message alice hello alice");
    bob.expect("OK message alice delivered");
    let line = c.line();
    strip_time(&line, "bob: hello alice");
    // Twenty heartbeat periods (over three timeouts) with stdin still open:
    // chatc must answer the probes by itself.
    let target = bob.answered_probes().len() + 20;
    while bob.answered_probes().len() < target {
        assert_eq!(bob.recv(Duration::from_millis(100)), Recv::TimedOut);
    }
    assert_eq!(bob.whoelse(), ["alice"], "alice's session died");
    c.write("whoelse\n");
    c.expect("online: bob");
    let (status, rest) = c.finish();
    assert_eq!(status.code(), Some(0));
    assert_eq!(rest, ["logged out"]);
}

#[test]
fn held_messages_are_introduced_and_shown_once() {
    let server = TestServer::start(Opts::users(USERS));
    let mut bob = server.login("bob", "bob-pw");
    bob.send("message alice first");
    bob.expect("OK message alice queued offline");
    bob.send("message alice second");
    bob.expect("OK message alice queued offline");
    let mut c = Piped::spawn(&server, &["--user", "alice"]);
    c.write("alice-pw\n");
    let (status, rest) = c.finish();
    assert_eq!(status.code(), Some(0));
    assert_eq!(rest.len(), 5, "{rest:#?}");
    assert_eq!(rest[0], "logged in as alice");
    assert_eq!(rest[1], "2 messages while you were away:");
    strip_time(&rest[2], "bob: first");
    strip_time(&rest[3], "bob: second");
    assert_eq!(rest[4], "logged out");
}

#[test]
fn failed_logins_are_explained() {
    let server = TestServer::start(Opts::users(USERS));
    let mut c = Piped::spawn(&server, &[]);
    c.write("alice\nbad-1\nalice\nbad-2\nalice\nbad-3\n");
    let (status, rest) = c.finish();
    assert_eq!(status.code(), Some(0));
    assert_eq!(rest.len(), 4, "{rest:#?}");
    assert_eq!(rest[0], "wrong user name or password");
    assert_eq!(rest[1], "wrong user name or password");
    assert!(
        rest[2].starts_with("too many failed attempts: try again in ") && rest[2].ends_with(" s"),
        "{rest:#?}"
    );
    assert_eq!(rest[3], "disconnected: this name is blocked for now");
}

#[test]
fn a_lost_connection_exits_1() {
    let mut server = TestServer::start(Opts::users(USERS));
    let mut c = Piped::spawn(&server, &["--user", "alice"]);
    c.write("alice-pw\n");
    c.expect("logged in as alice");
    server.kill();
    // stdin is still open: the lost connection alone ends chatc.
    c.expect("the connection to the server was lost");
    let (status, _) = c.finish();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn server_shutdown_ends_a_script_with_0() {
    let mut server = TestServer::start(Opts::users(USERS));
    let mut c = Piped::spawn(&server, &["--user", "alice"]);
    c.write("alice-pw\n");
    c.expect("logged in as alice");
    assert!(server.terminate().success());
    c.expect("the server shut down");
    let (status, _) = c.finish();
    assert_eq!(status.code(), Some(0));
}

/// `n` numbered `message bob` lines.
fn messages_to_bob(n: usize) -> String {
    (0..n).map(|i| format!("message bob n{i}\n")).collect()
}

/// Reads `n` deliveries from alice to bob, checking they come in order.
fn expect_numbered_deliveries(bob: &mut Client, n: usize) {
    for i in 0..n {
        let d = bob.expect_delivery();
        assert_eq!(
            (d.from.as_str(), d.text.as_str()),
            ("alice", format!("n{i}").as_str())
        );
    }
}

/// Checks a whole script's stdout: logged in, `n` replies to `message bob`,
/// logged out.
fn assert_all_delivered(rest: &[String], n: usize, stderr: &str) {
    assert_eq!(rest.first().map(String::as_str), Some("logged in as alice"));
    assert_eq!(
        rest.iter().filter(|l| *l == "delivered to bob").count(),
        n,
        "{rest:#?}\nstderr: {stderr}"
    );
    assert_eq!(rest.last().map(String::as_str), Some("logged out"));
    assert_eq!(rest.len(), n + 2, "{rest:#?}\nstderr: {stderr}");
}

#[test]
fn a_script_over_the_flood_rate_gets_every_command_through() {
    // 3 at once, then 20 a second: 60 commands take about 3 s to run, longer
    // than the 2 s chatc waits for `BYE` after `logout`.
    let server = TestServer::with(USERS, &["flood_burst = 3", "flood_per_second = 20"]);
    let mut bob = server.login("bob", "bob-pw");
    let mut c = Piped::spawn(&server, &["--user", "alice"]);
    c.write(&format!("alice-pw\n{}", messages_to_bob(60)));
    let (status, rest, stderr) = c.finish_with_stderr();
    assert_eq!(status.code(), Some(0), "{rest:#?}\nstderr: {stderr}");
    assert_all_delivered(&rest, 60, &stderr);
    expect_numbered_deliveries(&mut bob, 60);
}

#[test]
fn a_script_longer_than_the_flood_backlog_is_paced() {
    // The server refuses commands once 20 wait for the flood rate; chatc
    // must not have that many unanswered at once.
    let server = TestServer::with(
        USERS,
        &[
            "flood_burst = 3",
            "flood_per_second = 20",
            "flood_backlog = 20",
        ],
    );
    let mut bob = server.login("bob", "bob-pw");
    let mut c = Piped::spawn(&server, &["--user", "alice"]);
    c.write(&format!("alice-pw\n{}", messages_to_bob(60)));
    let (status, rest, stderr) = c.finish_with_stderr();
    assert_eq!(status.code(), Some(0), "{rest:#?}\nstderr: {stderr}");
    assert_all_delivered(&rest, 60, &stderr);
    expect_numbered_deliveries(&mut bob, 60);
}

#[test]
fn commands_left_unanswered_by_a_dying_server_fail_the_script() {
    // 5 a second after a burst of 3: the script is far from done when the
    // server dies.
    let mut server = TestServer::with(USERS, &["flood_burst = 3", "flood_per_second = 5"]);
    let _bob = server.login("bob", "bob-pw");
    let mut c = Piped::spawn(&server, &["--user", "alice"]);
    c.write(&format!("alice-pw\n{}", messages_to_bob(60)));
    c.close_stdin();
    c.expect("logged in as alice");
    for _ in 0..5 {
        c.expect("delivered to bob");
    }
    server.kill();
    let (status, rest, stderr) = c.finish_with_stderr();
    assert_eq!(status.code(), Some(1), "{rest:#?}\nstderr: {stderr}");
    assert_eq!(
        rest.last().map(String::as_str),
        Some("the connection to the server was lost"),
        "{rest:#?}"
    );
    // Commands chatc had sent and not seen answered; the rest of the script
    // was never sent.
    let answered = 5 + rest.iter().filter(|l| *l == "delivered to bob").count();
    let unanswered: usize = stderr
        .strip_prefix("chatc: ")
        .and_then(|s| s.split_once(" commands got no answer from the server"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of unanswered commands on stderr: {stderr}"));
    assert!(
        (1..=60 - answered).contains(&unanswered),
        "{unanswered} unanswered, {answered} answered"
    );
}

#[test]
fn a_full_server_is_explained() {
    let server = TestServer::with(USERS, &["max_connections = 1"]);
    let _bob = server.login("bob", "bob-pw");
    let mut c = Piped::spawn(&server, &["--user", "alice"]);
    c.write("alice-pw\n");
    let (status, rest, stderr) = c.finish_with_stderr();
    assert_eq!(status.code(), Some(1), "{rest:#?}\nstderr: {stderr}");
    assert_eq!(
        rest,
        ["the server is full (too many connections): try again later"],
        "stderr: {stderr}"
    );
}

/// Runs chatc with these arguments and no input; returns status and stderr.
fn run_chatc(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatc"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatc");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code(), err)
}

#[test]
fn bad_host_or_port_exits_2_with_a_message() {
    for args in [
        &["127.0.0.1", "http"][..],
        &["127.0.0.1", "65536"][..],
        &["127.0.0.1", "0"][..],
        &["no such host!"][..],
    ] {
        let (code, err) = run_chatc(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            !err.is_empty() && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn the_wait_for_a_server_is_announced_on_stderr() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatc"))
        .args(["127.0.0.1", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatc");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert_eq!(
        line,
        format!("waiting for the server at 127.0.0.1:{port}...\n")
    );
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(
        child.wait().unwrap().code(),
        Some(0),
        "Ctrl-C while waiting exits 0"
    );
}

#[test]
fn a_connect_that_gets_no_answer_is_announced_and_retried() {
    use socket2::{Domain, Socket, Type};
    // A listener whose accept queue is full drops further SYNs unanswered,
    // as a host behind a packet-dropping firewall does, without any traffic
    // leaving loopback. Backlog 0 holds one connection: `filler`.
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(0).unwrap();
    let listener: TcpListener = listener.into();
    let port = listener.local_addr().unwrap().port();
    let filler = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatc"))
        .args(["127.0.0.1", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatc");
    let (tx, err_lines) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    // Without a connect timeout the first attempt would hang for minutes
    // (the kernel's SYN retries) with nothing said.
    assert_eq!(
        err_lines.recv_timeout(LINE_TIMEOUT).as_deref(),
        Ok(format!("waiting for the server at 127.0.0.1:{port}...").as_str())
    );
    // Make room: chatc's next attempt gets through.
    let (queued, _) = listener.accept().unwrap();
    drop((queued, filler));
    let (conn, _) = listener.accept().unwrap();
    assert_eq!(
        err_lines.recv_timeout(LINE_TIMEOUT).as_deref(),
        Ok(format!("connected to 127.0.0.1:{port}").as_str())
    );
    drop(conn);
    let deadline = Instant::now() + LINE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "chatc did not exit");
        // Polling a process for exit: bounded, not a synchronisation sleep.
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(1), "a lost connection exits 1");
    assert_eq!(
        err_lines.try_iter().count(),
        0,
        "the wait was announced once"
    );
}
