//! Reloading without a restart (SIGHUP, `systemctl reload`): the users file
//! and the TLS certificate and key are read again.
//!
//! The files are read and checked off the core task; only the swap of the
//! accounts runs on it ([`chatcore::Server::set_accounts`]), between two
//! rounds, so no input sees half a reload. Each file stands alone: one
//! that cannot be read or parsed keeps what was in force and logs one error
//! line naming the file and the fault, and the other is reloaded all the
//! same. Nothing here stops the server.

use std::path::PathBuf;
use std::sync::Arc;

use chatcore::{Accounts, AccountsChange, Server, Time};
use tokio::sync::{mpsc, oneshot};

use crate::passwords::PasswordChecker;
use crate::tls::CertSlot;

/// New accounts on their way to the core task, and where it says what
/// changed.
#[derive(Debug)]
pub struct NewAccounts {
    accounts: Accounts,
    applied: oneshot::Sender<AccountsChange>,
}

impl NewAccounts {
    /// Puts the accounts in force (on the core task).
    pub(crate) fn apply(self, server: &mut Server, now: Time) {
        let change = server.set_accounts(now, self.accounts);
        let _ = self.applied.send(change);
    }
}

/// The driver's end of the reload channel, made by `prepare`: [`Link::reloader`]
/// hands out senders, the driver keeps the receiver.
#[derive(Debug)]
pub(crate) struct Link {
    tx: mpsc::Sender<NewAccounts>,
    pub(crate) rx: mpsc::Receiver<NewAccounts>,
    cert: Option<Arc<CertSlot>>,
}

impl Link {
    pub(crate) fn new(cert: Option<Arc<CertSlot>>) -> Link {
        // One reload at a time is all there is: `Reloader::reload` waits
        // for its accounts to be applied.
        let (tx, rx) = mpsc::channel(1);
        Link { tx, rx, cert }
    }

    pub(crate) fn reloader(&self, users_file: PathBuf, checker: PasswordChecker) -> Reloader {
        Reloader {
            users_file,
            cert: self.cert.clone(),
            checker,
            driver: self.tx.clone(),
        }
    }
}

/// Reads the files again and puts them in force; from
/// [`Prepared::reloader`](crate::Prepared::reloader).
#[derive(Debug, Clone)]
pub struct Reloader {
    users_file: PathBuf,
    cert: Option<Arc<CertSlot>>,
    checker: PasswordChecker,
    driver: mpsc::Sender<NewAccounts>,
}

/// What one reload did.
#[derive(Debug)]
pub struct Reloaded {
    /// What changed in the accounts, or why the users file was kept.
    pub users: Result<AccountsChange, String>,
    /// Whether the TLS pair was replaced (`None` without TLS), or why not.
    pub tls: Option<Result<(), String>>,
}

impl Reloaded {
    /// Whether every file was reloaded.
    pub fn ok(&self) -> bool {
        self.users.is_ok() && !matches!(self.tls, Some(Err(_)))
    }
}

impl Reloader {
    /// Reads the users file and the TLS files again. Returns once the new
    /// accounts are in force: a login after it uses them.
    pub async fn reload(&self) -> Reloaded {
        let users = self.reload_users().await;
        let tls = match &self.cert {
            None => None,
            Some(slot) => Some(self.reload_tls(Arc::clone(slot)).await),
        };
        let done = Reloaded { users, tls };
        tracing::info!(ok = done.ok(), "reload finished");
        done
    }

    async fn reload_users(&self) -> Result<AccountsChange, String> {
        let path = self.users_file.clone();
        let checker = self.checker.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let accounts = crate::load_accounts(&path)?;
            // The dummy is made with what is read here; a check racing the
            // swap below costs what the old accounts cost, which is no leak.
            checker.set_accounts(&accounts);
            anyhow::Ok(accounts)
        })
        .await
        .map_err(anyhow::Error::new)
        .and_then(|r| r);
        let accounts = match loaded {
            Ok(accounts) => accounts,
            Err(e) => {
                let e = format!("{e:#}");
                tracing::error!("reload: keeping the accounts in force: {e}");
                return Err(e);
            }
        };
        let count = accounts.len();
        let (applied, answer) = oneshot::channel();
        let sent = self.driver.send(NewAccounts { accounts, applied }).await;
        match (sent, answer.await) {
            (Ok(()), Ok(change)) => {
                tracing::info!(
                    accounts = count,
                    added = change.added,
                    removed = change.removed,
                    changed = change.changed,
                    "reloaded users file {}",
                    self.users_file.display()
                );
                Ok(change)
            }
            _ => {
                let e = "the server is shutting down".to_string();
                tracing::error!("reload: accounts not applied: {e}");
                Err(e)
            }
        }
    }

    async fn reload_tls(&self, slot: Arc<CertSlot>) -> Result<(), String> {
        let result = tokio::task::spawn_blocking(move || slot.reload())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| format!("{:#}", anyhow::Error::new(e))));
        match &result {
            Ok(()) => tracing::info!("reloaded TLS certificate and key"),
            Err(e) => tracing::error!("reload: keeping the TLS certificate in force: {e}"),
        }
        result
    }
}

/// Reloads once per message on `requests` (the binary sends one per
/// SIGHUP), telling the service manager around each (see [`notify`](crate::notify)).
/// Ends when `requests` closes.
pub async fn on_requests(reloader: Reloader, mut requests: mpsc::Receiver<()>) {
    while requests.recv().await.is_some() {
        tracing::info!("reloading the users file and TLS certificate");
        crate::notify::reloading();
        reloader.reload().await;
        crate::notify::ready();
    }
}
