//! `chatd`: the CHAT/1 server (PROTOCOL.md) as a thin tokio driver around
//! the sans-IO [`chatcore::Server`].
//!
//! What lives here and not in chatcore: sockets ([`conn`]), the clock and the
//! round loop ([`driver`]), the durable store ([`store`]), argon2 password
//! checks ([`passwords`]), the command line and configuration file
//! ([`config`]) and TLS ([`tls`]). Every rule of the chat service itself is
//! chatcore's. Signals and logging belong to the process and are set up by
//! the binary.
//!
//! The binary is `chatd/src/main.rs`, built as the root package's `chatd`
//! target; it only maps the functions here onto exit statuses: 2 for a
//! [`config::ConfigError`] (and clap's own errors), 1 for anything else.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod clock;
pub mod config;
pub mod conn;
pub mod driver;
pub mod http;
pub mod limiter;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod passwords;
pub mod reload;
pub mod store;
pub mod tls;

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use chatcore::Accounts;
use tokio::net::TcpListener;

pub use config::{Cli, Command, ConfigError, Settings};
pub use driver::{prepare, Prepared, RunError};
pub use store::{JournalLimits, JournaledStore, MemoryStore, SqliteStore, Store, StoreError};

/// Reads and checks the users file (PROTOCOL.md §10): line errors name the
/// line, unusable argon2id hashes name the user. Logs how many accounts
/// there are and warns about plain-text passwords.
pub fn load_accounts(path: &Path) -> anyhow::Result<Accounts> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read users file {}", path.display()))?;
    let accounts =
        Accounts::parse(&text).with_context(|| format!("in users file {}", path.display()))?;
    let summary = passwords::check_accounts(&accounts)?;
    tracing::info!(
        accounts = accounts.len(),
        hashed = summary.hashed,
        "loaded users file {}",
        path.display()
    );
    if !summary.plain.is_empty() {
        tracing::warn!(
            "{} account(s) have plain-text passwords ({}); store argon2id hashes made with `chatd hash-password` instead",
            summary.plain.len(),
            summary.plain.join(", ")
        );
    }
    Ok(accounts)
}

/// Starts the server as the binary does: users file, store, TLS files
/// ([`prepare`]), listening socket, the readiness line on stdout, then
/// [`Prepared::run`] until `shutdown`. Each message on `reloads` reads the
/// users file and TLS files again ([`reload`]). The service manager, if
/// any, is told when the server is ready ([`notify`]).
///
/// `shutdown` must already be listening for its event when it is passed in
/// (as the binary's signal future is): it is first polled only after the
/// readiness line is out.
///
/// An unreadable or unusable TLS certificate or key is a startup failure
/// (exit status 1, like an unreadable users file) whose one-line cause
/// names the file.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future,
    reloads: tokio::sync::mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let accounts = load_accounts(&settings.users_file)?;
    let data_dir = settings.data_dir.clone();
    let journal = settings.journal;
    let store = tokio::task::spawn_blocking(move || JournaledStore::open(&data_dir, journal))
        .await
        .context("opening the store")??;
    tracing::info!("store {}", store.path().display());
    let mut prepared = driver::prepare(settings.clone(), accounts, Box::new(store)).await?;
    let listener = TcpListener::bind((settings.host.as_str(), settings.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", settings.host, settings.port))?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let ready = Arc::new(AtomicBool::new(false));
    let web = if settings.web.enabled {
        Some(start_web(&settings, &mut prepared, Arc::clone(&ready)).await?)
    } else {
        None
    };
    {
        let mut stdout = std::io::stdout().lock();
        // The web line first: once the readiness line is out, every
        // listener is bound.
        if let Some(web) = &web {
            writeln!(stdout, "chatd web on {}", web.url()).context("cannot write to stdout")?;
        }
        writeln!(stdout, "chatd listening on {local}")
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")?;
    }
    let transport = if settings.tls.is_some() {
        "TLS"
    } else {
        "plain TCP"
    };
    tracing::info!("listening on {local} ({transport})");
    if let Some(web) = &web {
        tracing::info!("web client, WebSocket, metrics and health on {}", web.url());
    }
    ready.store(true, Ordering::Release);
    notify::ready();
    let reloading = tokio::spawn(reload::on_requests(prepared.reloader(), reloads));
    let shutdown = async {
        shutdown.await;
        ready.store(false, Ordering::Release);
    };
    let result = prepared.run(listener, shutdown).await;
    reloading.abort();
    if let Some(web) = web {
        web.stop();
    }
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds the web listener and starts serving it; WebSocket sessions go to
/// the server `prepared` will run.
async fn start_web(
    settings: &Settings,
    prepared: &mut Prepared,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<http::WebServer> {
    let web = &settings.web;
    let listener = http::bind(web)
        .await
        .with_context(|| format!("cannot listen on {}:{} (http_port)", web.host, web.port))?;
    let parts = http::WebParts {
        handoff: prepared.web_handoff(),
        metrics: metrics::install(),
        ready,
        tls: prepared.tls_config(),
        max_line_bytes: settings.core.max_line_bytes,
        handshake_timeout: settings.core.login_timeout,
    };
    http::start(listener, web, parts).context("cannot start the web listener")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "alice a\nbob\n").unwrap();
        let e = format!("{:#}", load_accounts(&path).unwrap_err());
        assert!(e.contains("line 2"), "{e}");
        let e = format!("{:#}", load_accounts(&dir.path().join("none")).unwrap_err());
        assert!(e.contains("cannot read users file"), "{e}");
    }
}
