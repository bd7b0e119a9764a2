//! PROTOCOL.md §7: a server that has said it is listening stops cleanly on
//! SIGTERM or SIGINT, however soon after the readiness line the signal comes.
//! Supervisors and test harnesses send it the instant they have read the
//! line, so the handlers must be in place before it is printed.

mod common;

use std::os::unix::process::ExitStatusExt;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Starts chatd, sends `signal` as soon as the readiness line has been
/// read (a direct kill(2), no child process in between), and checks the
/// exit: status 0, not death by the signal's default action.
fn signal_at_once(signal: Signal, runs: usize) {
    for run in 0..runs {
        let mut server = TestServer::with(&[("alice", "pw-a")], &[]);
        let pid = server.pid().expect("chatd runs");
        kill(Pid::from_raw(i32::try_from(pid).unwrap()), signal).expect("kill(2)");
        let status = server.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "run {run}: chatd did not exit within {EXIT_TIMEOUT:?} of {signal}\nstderr:\n{}",
                server.stderr()
            )
        });
        assert_eq!(
            (status.code(), status.signal()),
            (Some(0), None),
            "run {run}: {signal} right after the readiness line: {status:?}\nstderr:\n{}",
            server.stderr()
        );
    }
}

#[test]
fn sigterm_right_after_the_readiness_line_exits_0() {
    signal_at_once(Signal::SIGTERM, 30);
}

#[test]
fn sigint_right_after_the_readiness_line_exits_0() {
    signal_at_once(Signal::SIGINT, 10);
}
