//! Readiness for systemd (`Type=notify`, issue 14 item 6): chatd sends
//! `READY=1` to `NOTIFY_SOCKET` once it is listening, `RELOADING=1` then
//! `READY=1` around a SIGHUP reload, and `STOPPING=1` when a shutdown
//! starts. The test binds the datagram socket systemd would and reads what
//! arrives; every wait is on a datagram or a line, bounded.
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A chatd started with `NOTIFY_SOCKET` set to `target`, past its
/// listening line.
fn start(dir: &std::path::Path, target: &str) -> Child {
    std::fs::write(
        dir.join("users.txt"),
        format!("alice {}\n", cheap_hash("a")),
    )
    .unwrap();
    // No web listener: its default port would be shared by parallel tests.
    std::fs::write(dir.join("chatd.toml"), "http = false\n").unwrap();
    let mut child = Command::new(chatd_bin())
        .args(["127.0.0.1", "0", "--config"])
        .arg(dir.join("chatd.toml"))
        .arg("--users")
        .arg(dir.join("users.txt"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("NOTIFY_SOCKET", target)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chatd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("chatd listening on "), "{line:?}");
    child
}

/// The next notification, as its `KEY=value` lines.
fn next(socket: &UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8(buf[..n].to_vec())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, sig).unwrap();
}

fn the_lifecycle_is_notified(socket: &UnixDatagram, mut child: Child) {
    use nix::sys::signal::Signal;
    socket.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
    let ready = next(socket);
    assert!(ready.contains(&"READY=1".to_owned()), "{ready:?}");

    signal(&child, Signal::SIGHUP);
    let reloading = next(socket);
    assert!(
        reloading.contains(&"RELOADING=1".to_owned()),
        "{reloading:?}"
    );
    let usec = reloading
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0, "{usec}");
    let ready = next(socket);
    assert!(ready.contains(&"READY=1".to_owned()), "{ready:?}");

    signal(&child, Signal::SIGTERM);
    let stopping = next(socket);
    assert!(stopping.contains(&"STOPPING=1".to_owned()), "{stopping:?}");
    let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "chatd did not exit");
        // Polling a process for exit: bounded, not a synchronisation sleep.
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn ready_reloading_and_stopping_reach_a_path_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let child = start(dir.path(), path.to_str().unwrap());
    the_lifecycle_is_notified(&socket, child);
}

#[cfg(target_os = "linux")]
#[test]
fn an_abstract_socket_works_too() {
    use std::os::linux::net::SocketAddrExt;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("chatd-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    let child = start(dir.path(), &format!("@{name}"));
    the_lifecycle_is_notified(&socket, child);
}
