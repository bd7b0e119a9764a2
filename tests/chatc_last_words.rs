//! `chatc` under a pseudo-terminal always says why its session ended, even
//! on a loaded machine: the last line used to be handed to the line
//! editor's printer and lost when the process exited before the editor
//! thread drew it. The test loads the CPU itself (busy threads) and repeats
//! the ending many times, since the loss was a race.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use common::*;
use rexpect::process::WaitStatus;
use rexpect::session::{spawn_with_options, Options, PtySession};

const USERS: &[(&str, &str)] = &[("alice", "alice-pw")];

/// How long the terminal may take to show an expected text; generous
/// because the test keeps every core busy on purpose.
const PTY_TIMEOUT_MS: u64 = 30_000;

/// How many sessions each test ends. The loss happened in about one run in
/// four, so twenty runs without a loss would be a fluke at (3/4)^20 < 0.4 %.
const ROUNDS: usize = 20;

/// Threads that spin until dropped, so that chatc's threads are preempted
/// at unlucky moments as on a busy machine.
struct CpuLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl CpuLoad {
    fn start() -> CpuLoad {
        let cores = thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2 * cores)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// chatc on a pty for `server`, logged in as alice with the prompt shown.
fn logged_in(server: &TestServer) -> (PtySession, String) {
    let addr = server.addr();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chatc"));
    cmd.args([addr.ip().to_string(), addr.port().to_string()])
        .args(["--user", "alice"])
        .env("TERM", "xterm")
        .env("TZ", "UTC");
    let options = Options::new()
        .timeout_ms(Some(PTY_TIMEOUT_MS))
        .strip_ansi_escape_codes(true);
    let mut pty = spawn_with_options(cmd, options).expect("spawn chatc on a pty");
    let mut shown = String::new();
    for (wait, then_type) in [("Password: ", Some("alice-pw\r")), ("alice> ", None)] {
        match pty.exp_string(wait) {
            Ok(before) => shown.push_str(&before),
            Err(e) => panic!("chatc did not show {wait:?}: {e}\nshown:\n{shown}"),
        }
        shown.push_str(wait);
        if let Some(text) = then_type {
            pty.send(text).expect("type");
            pty.flush().expect("flush the pty");
        }
    }
    (pty, shown)
}

/// Reads chatc's output to its end; returns everything shown after the
/// prompt and the exit status.
fn to_the_end(pty: &mut PtySession) -> (String, i32) {
    let rest = pty.exp_eof().expect("chatc did not exit");
    let code = match pty.process().wait().expect("wait for chatc") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("chatc ended abnormally: {other:?}\n{rest}"),
    };
    (rest, code)
}

/// Ends `ROUNDS` sessions with `end` and checks that each time chatc showed
/// `words` and exited with `want_code`.
fn every_ending_is_explained(end: fn(&mut TestServer), words: &str, want_code: i32) {
    let _load = CpuLoad::start();
    let mut silent = Vec::new();
    for round in 0..ROUNDS {
        let mut server = TestServer::start(Opts::users(USERS));
        let (mut pty, _) = logged_in(&server);
        end(&mut server);
        let (rest, code) = to_the_end(&mut pty);
        assert_eq!(code, want_code, "round {round}: {rest:?}");
        if !rest.contains(words) {
            silent.push((round, rest));
        }
    }
    assert!(
        silent.is_empty(),
        "{} of {ROUNDS} sessions ended without {words:?}: {silent:#?}",
        silent.len()
    );
}

#[test]
fn server_shutdown_is_always_explained_under_load() {
    every_ending_is_explained(
        |server| assert!(server.terminate().success()),
        "the server shut down",
        0,
    );
}

#[test]
fn a_lost_connection_is_always_explained_under_load() {
    every_ending_is_explained(TestServer::kill, "the connection to the server was lost", 1);
}
