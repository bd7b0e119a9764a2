//! Readiness for a service manager: systemd's `sd_notify` protocol, a few
//! lines written to the unix datagram socket named by `NOTIFY_SOCKET`.
//!
//! With `Type=notify` systemd waits for `READY=1` before it starts what
//! depends on chatd, so that is sent only once the readiness line is out
//! (the port is bound, the store loaded). `RELOADING=1` and `READY=1`
//! bracket a reload so that `systemctl reload` returns when it is done;
//! `STOPPING=1` says a shutdown has begun. Without `NOTIFY_SOCKET` (not
//! under systemd) every call does nothing. A notification that cannot be
//! sent is logged and otherwise ignored: the chat service does not depend
//! on it.

use std::io;
#[cfg(unix)]
use std::os::unix::net::UnixDatagram;

/// The variable systemd sets to the socket's path (`@name` for an abstract
/// socket).
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (newline-separated `KEY=value` lines) to the service
/// manager. `Ok(false)` when there is none.
#[cfg(not(unix))]
pub fn notify(_state: &str) -> io::Result<bool> {
    Ok(false)
}

/// Sends `state` (newline-separated `KEY=value` lines) to the service
/// manager. `Ok(false)` when there is none.
#[cfg(unix)]
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET) else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    match target.as_encoded_bytes().split_first() {
        None => return Ok(false),
        Some((b'@', name)) => send_abstract(&socket, name, state)?,
        Some(_) => {
            socket.send_to(state.as_bytes(), std::path::Path::new(&target))?;
        }
    }
    Ok(true)
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &[u8], state: &str) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(state.as_bytes(), &addr).map(drop)
}

#[cfg(all(unix, not(target_os = "linux")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist on Linux only",
    ))
}

/// Sends `state`, logging a failure instead of returning it.
fn send(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!("cannot notify the service manager ({state:?}): {e}");
    }
}

/// `READY=1`: started, or done reloading.
pub fn ready() {
    send("READY=1\nSTATUS=serving");
}

/// `RELOADING=1` with the monotonic time, which systemd needs to match the
/// reload with the `READY=1` that ends it.
pub fn reloading() {
    send(&format!(
        "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC={}",
        monotonic_usec()
    ));
}

/// `STOPPING=1`: the shutdown has begun.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=shutting down");
}

/// `CLOCK_MONOTONIC` in microseconds, as systemd reads it.
#[cfg(not(unix))]
fn monotonic_usec() -> u64 {
    0
}

/// `CLOCK_MONOTONIC` in microseconds, as systemd reads it.
#[cfg(unix)]
fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a, "{a} {b}");
    }
}
