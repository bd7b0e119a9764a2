//! Reaching the server, waiting for it when it is not up yet.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::interrupt::Interrupts;
use crate::UsageError;

/// How long between connection attempts.
const RETRY: Duration = Duration::from_secs(1);

/// Connects to `host:port`, retrying every second while the server is not
/// there (saying so once). `Ok(None)` when Ctrl-C ended the wait. A host
/// that does not resolve is a [`UsageError`]: retrying would not help.
pub async fn connect(
    host: &str,
    port: u16,
    interrupts: &mut Interrupts,
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
                r = TcpStream::connect(addr) => {
                    if let Ok(stream) = r {
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
            () = tokio::time::sleep(RETRY) => {}
            () = interrupts.recv() => return Ok(None),
        }
    }
}
