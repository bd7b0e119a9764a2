//! A full disk does not take chatd down (the report: on a 600 KB data
//! directory the 53rd message got no reply because chatd exited, and a
//! restart on the still-full disk dropped every login). On a real tmpfs of
//! 600 KB: messages are accepted until the disk is full, then refused with
//! `ERR unavailable` while the server stays up; a restart on the full disk
//! comes up and lets people log in; once the disk has room, messages are
//! accepted again without a restart and every acknowledged one is
//! delivered.
//!
//! Needs to mount a tmpfs (root); skipped with a note otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const USERS: &[(&str, &str)] = &[("alice", "pw-a"), ("bob", "pw-b"), ("carol", "pw-c")];

/// What chatd logs when a commit fails for want of room.
const OUTAGE_LOG: &str = "cannot commit to the store";

/// A tmpfs mounted on a directory for the test; unmounted on drop, even
/// when the test fails (lazily, in case chatd still has files open).
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` if mounting is not permitted here.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            println!(
                "skipping: cannot mount a tmpfs on {} ({})",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {} failed", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// How a `message` was answered.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Accepted,
    Unavailable,
    /// No answer: chatd logged that it cannot commit, so the answer is
    /// held until it can.
    Held,
}

/// Sends `message bob <text>` from `c` and waits for its answer, or, if
/// `held_if_logged`, for chatd to log (for the first time) that the store
/// cannot write: then the answer is held back, and the log line is the
/// event that says so. Only for a sender whose messages are the only
/// commits, so that the failed commit must be this message's.
fn send_message(server: &TestServer, c: &mut Client, text: &str, held_if_logged: bool) -> Answer {
    c.send(&format!("message bob {text}"));
    let deadline = Instant::now() + LINE_TIMEOUT;
    loop {
        match c.recv(Duration::from_millis(50)) {
            Recv::Line(line) if line == "OK message bob queued offline" => return Answer::Accepted,
            Recv::Line(line) if line.starts_with("ERR unavailable ") => return Answer::Unavailable,
            Recv::Line(line) => panic!("unexpected answer {line:?} to a message"),
            Recv::Closed => panic!("connection closed; stderr:\n{}", server.stderr()),
            Recv::TimedOut => {
                if held_if_logged && server.stderr().contains(OUTAGE_LOG) {
                    return Answer::Held;
                }
                assert!(
                    Instant::now() < deadline,
                    "no answer to a message; stderr:\n{}",
                    server.stderr()
                );
            }
        }
    }
}

/// `c` (the only sender) sends 3 KB messages until one is refused or its
/// answer is held back; returns the texts accepted, and the one held.
fn fill(
    server: &TestServer,
    c: &mut Client,
    filler: &str,
    tag: &str,
    refused: &mut Vec<String>,
) -> (Vec<String>, Option<String>) {
    let mut accepted = Vec::new();
    for i in 0..2000 {
        let text = format!("{tag}{i:04} {filler}");
        match send_message(server, c, &text, true) {
            Answer::Accepted => accepted.push(text),
            Answer::Unavailable => {
                refused.push(text);
                return (accepted, None);
            }
            Answer::Held => return (accepted, Some(text)),
        }
    }
    panic!("the disk never filled up");
}

#[test]
fn chatd_stays_up_on_a_full_disk_and_recovers_without_a_restart() {
    let mut server = TestServer::with(
        USERS,
        &[
            "flood_burst = 1000000",
            "flood_per_second = 1000000",
            "flood_backlog = 1000000",
        ],
    );
    // The data directory becomes a 600 KB tmpfs: stop, mount, start again.
    server.terminate();
    let Some(disk) = Tmpfs::mount(&server.data_dir(), "600k") else {
        return;
    };
    server.restart();

    let mut alice = server.login("alice", "pw-a");
    let mut carol = server.login("carol", "pw-c");
    // Every text whose sender got `OK`, in order, and those refused.
    let mut refused: Vec<String> = Vec::new();
    let filler = "f".repeat(3000);
    // The message whose commit failed: never answered if chatd exits
    // before it can commit it.
    let (mut acknowledged, mut unanswered) = fill(&server, &mut alice, &filler, "m", &mut refused);
    println!(
        "{} messages of 3 KB accepted before the disk was full",
        acknowledged.len()
    );

    // Full: the server is up, refuses messages, answers everything else.
    let text = format!("refused while full {filler}");
    assert_eq!(
        send_message(&server, &mut carol, &text, false),
        Answer::Unavailable
    );
    refused.push(text);
    assert_eq!(carol.whoelse(), ["alice"]);
    let mut bob_probe = server.login("bob", "pw-b");
    assert_eq!(bob_probe.whoelse(), ["alice", "carol"]);
    bob_probe.logout();
    // Several commits failed by now (each round with changes tries again);
    // the log says so once, not once per failure.
    let logged = poll_until("the log line", LINE_TIMEOUT, || {
        let n = server.stderr().matches(OUTAGE_LOG).count();
        (n > 0).then_some(n)
    });
    assert_eq!(logged, 1, "{}", server.stderr());

    // Stopped on the full disk: one last commit, which fails (exit 1,
    // naming the cause) unless it finds room; a held answer arrives only
    // if it found room.
    let status = server.terminate();
    let stderr = server.stderr();
    println!("stopped on the full disk: {status}");
    match status.code() {
        Some(1) => assert!(
            stderr.contains("disk is full") || stderr.contains("No space left on device"),
            "{stderr}"
        ),
        Some(0) => {}
        other => panic!("exit status {other:?}\nstderr:\n{stderr}"),
    }
    loop {
        match alice.recv(LINE_TIMEOUT) {
            Recv::Line(line) if line == "OK message bob queued offline" => {
                assert_eq!(status.code(), Some(0), "acknowledged but not committed");
                acknowledged.extend(unanswered.take());
            }
            Recv::Line(line) if line == "BYE shutdown" => {}
            Recv::Line(line) => panic!("unexpected {line:?}"),
            Recv::Closed => break,
            Recv::TimedOut => panic!("alice's connection stays open after the exit"),
        }
    }
    drop(carol);

    // Restarted on the still-full disk: up, and logins work.
    server.restart();
    let mut alice = server.login("alice", "pw-a");
    let mut carol = server.login("carol", "pw-c");
    assert_eq!(carol.whoelse(), ["alice"]);
    assert_eq!(alice.whoelse(), ["carol"]);
    // The restart may have found a little room (the log's unused tail):
    // fill it, so that this process, too, sees the disk full.
    let (accepted, held) = fill(&server, &mut alice, &filler, "r", &mut refused);
    println!(
        "after the restart: {} more accepted, then {}",
        accepted.len(),
        if held.is_some() {
            "one held"
        } else {
            "refused"
        }
    );
    acknowledged.extend(accepted);
    let text = format!("refused after the restart {filler}");
    assert_eq!(
        send_message(&server, &mut carol, &text, false),
        Answer::Unavailable
    );
    refused.push(text);
    assert_eq!(carol.whoelse(), ["alice"]);

    // Room again: messages are accepted again, without a restart (chatd
    // tries the store again every second; each try here is a real request).
    disk.resize("10m");
    let started = Instant::now();
    if let Some(text) = held {
        // The answer held back comes once the message is committed.
        match alice.line().as_str() {
            "OK message bob queued offline" => acknowledged.push(text),
            // The disk was full before alice's message came: refused.
            line if line.starts_with("ERR unavailable ") => refused.push(text),
            line => panic!("unexpected {line:?}"),
        }
    }
    let mut n = 0;
    loop {
        let text = format!("after the resize {n}");
        n += 1;
        match send_message(&server, &mut carol, &text, false) {
            Answer::Accepted => {
                acknowledged.push(text);
                break;
            }
            Answer::Unavailable => refused.push(text),
            Answer::Held => unreachable!(),
        }
        assert!(
            started.elapsed() < LINE_TIMEOUT,
            "still refused {LINE_TIMEOUT:?} after the resize; stderr:\n{}",
            server.stderr()
        );
        // Between tries: chatd retries once a second, so there is no point
        // asking faster than this.
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "accepted again {:?} after the resize ({} refusals meanwhile)",
        started.elapsed(),
        n - 1
    );
    let text = format!("accepted again {filler}");
    assert_eq!(
        send_message(&server, &mut alice, &text, false),
        Answer::Accepted
    );
    acknowledged.push(text);

    // Every acknowledged message is delivered, in order; nothing refused is.
    let mut bob = server.client();
    let got: Vec<String> = bob
        .login("bob", "pw-b")
        .into_iter()
        .map(|d| d.text)
        .collect();
    let stray: Vec<&String> = got.iter().filter(|t| refused.contains(t)).collect();
    assert!(stray.is_empty(), "refused messages delivered: {stray:?}");
    let unacknowledged: Vec<&String> = got.iter().filter(|t| !acknowledged.contains(t)).collect();
    // Only the one whose answer was held (and lost at exit 1) may be
    // there without an `OK`: committed, but never acknowledged.
    assert!(
        unacknowledged.len() <= 1
            && unacknowledged
                .iter()
                .all(|t| Some(*t) == unanswered.as_ref()),
        "{unacknowledged:?}"
    );
    let delivered_acks: Vec<&String> = got.iter().filter(|t| acknowledged.contains(t)).collect();
    assert_eq!(
        delivered_acks,
        acknowledged.iter().collect::<Vec<_>>(),
        "every acknowledged message, in order"
    );
    assert_eq!(server.terminate().code(), Some(0), "{}", server.stderr());
}
