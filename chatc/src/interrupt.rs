//! Ctrl-C as a signal: while the line editor does not hold the terminal
//! (waiting for the server, the password prompt, piped mode) Ctrl-C arrives
//! as SIGINT, and must end the client cleanly (logout, terminal restored)
//! rather than kill it. SIGTERM and SIGHUP (the terminal closed) mean the
//! same: leave now, politely.

use anyhow::Context;

/// A stream of requests to stop: Ctrl-C, SIGTERM, SIGHUP.
pub struct Interrupts {
    #[cfg(unix)]
    signals: [tokio::signal::unix::Signal; 3],
}

impl Interrupts {
    /// Starts catching the signals; from now on they no longer kill the
    /// process.
    pub fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let catch = |kind: SignalKind| signal(kind).context("catching Ctrl-C");
            Ok(Interrupts {
                signals: [
                    catch(SignalKind::interrupt())?,
                    catch(SignalKind::terminate())?,
                    catch(SignalKind::hangup())?,
                ],
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Interrupts {})
        }
    }

    /// Waits for the next one.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let [int, term, hup] = &mut self.signals;
            let got = tokio::select! {
                s = int.recv() => s,
                s = term.recv() => s,
                s = hup.recv() => s,
            };
            if got.is_none() {
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
