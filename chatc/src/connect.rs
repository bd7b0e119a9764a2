//! Reaching the server, waiting for it when it is not up yet.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::interrupt::Interrupts;
use crate::UsageError;

/// How long between rounds of connection attempts.
pub const RETRY: Duration = Duration::from_secs(1);

/// How long one connection attempt may take. Without a bound, a host that
/// drops packets (no answer to the SYN at all) keeps `connect` waiting for
/// the kernel's SYN retries, over two minutes on Linux, with nothing said.
/// Three seconds lets the kernel send the SYN twice more (its first
/// retries are 1 s and 2 s apart), which a merely lossy path needs, and
/// still says within a few seconds that the server does not answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The waiting bounds, in one place so that tests can shorten them.
#[derive(Debug, Clone)]
pub struct Waits {
    /// See [`RETRY`].
    pub retry: Duration,
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Waits {
            retry: RETRY,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }
}

/// Connects to `host:port`, retrying every second while the server is not
/// there or does not answer (saying so once). `Ok(None)` when Ctrl-C ended
/// the wait. A host that does not resolve is a [`UsageError`]: retrying
/// would not help.
pub async fn connect(
    host: &str,
    port: u16,
    interrupts: &mut Interrupts,
    waits: &Waits,
) -> anyhow::Result<Option<TcpStream>> {
    let mut said_waiting = false;
    loop {
        let addrs: Vec<_> = tokio::select! {
            r = tokio::net::lookup_host((host, port)) => r
                .map_err(|e| UsageError(format!("cannot resolve the host name {host:?}: {e}")))?
                .collect(),
            () = interrupts.recv() => return Ok(None),
        };
        if addrs.is_empty() {
            return Err(UsageError(format!(
                "cannot resolve the host name {host:?}: no address found"
            ))
            .into());
        }
        for addr in &addrs {
            tokio::select! {
                r = tokio::time::timeout(waits.connect_timeout, TcpStream::connect(addr)) => {
                    if let Ok(Ok(stream)) = r {
                        if said_waiting {
                            eprintln!("connected to {host}:{port}");
                        }
                        return Ok(Some(stream));
                    }
                }
                () = interrupts.recv() => return Ok(None),
            }
        }
        if !said_waiting {
            eprintln!("waiting for the server at {host}:{port}...");
            said_waiting = true;
        }
        tokio::select! {
            () = tokio::time::sleep(waits.retry) => {}
            () = interrupts.recv() => return Ok(None),
        }
    }
}
