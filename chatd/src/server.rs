//! The core task: the one owner of the [`chatcore::Server`].
//!
//! Each wake-up is a *round*: take every input that is ready (up to
//! [`MAX_BATCH`]), feed them, run due timers, and gather all outputs. If the
//! round asked for changes to be persisted, they are committed in one
//! transaction *before* any of the round's lines are handed to connections,
//! which meets the core's ordering rule (a line sent after a `Persist` must
//! not reach the network before the change is durable) at the cost of one
//! commit per round, not per change: while a commit runs, inputs pile up in
//! the channel and the next round takes them all (group commit).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use chatcore::wire::ServerLine;
use chatcore::{
    Accounts, Event, Input, LoginFailure, Output, PasswordCheck, Server, SessionId, StoreOp,
};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{sleep_until, Instant};

use crate::config::Settings;
use crate::conn::{
    outbound, run_connection, Clock, ConnLimiter, ConnParams, Dead, Outbound, OutboundLimit,
    TlsParams,
};
use crate::passwords::{PasswordChecker, PasswordError};
use crate::store::{Store, StoreError};

/// Inputs fed in one round at most, so that timers and commits keep up
/// under load.
const MAX_BATCH: usize = 1024;

/// New connections taken in one round at most. Each round takes the
/// connections waiting, not only when no input is ready: under load inputs
/// are always ready, and a loop that serves them first never accepts. The
/// bound keeps a burst of connections from delaying the round's inputs.
const MAX_ACCEPTS_PER_ROUND: usize = 64;

/// Capacity of the channel from connections to the core: readers wait when
/// it is full, which pushes back on whoever floods.
const INPUT_CHANNEL: usize = 4096;

/// How long shutdown waits for connections to flush their last lines.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Refusal notes being written at once at most; past it, refused
/// connections are dropped without a word.
const MAX_REFUSALS_IN_FLIGHT: usize = 256;

/// The line a connection over `max_connections` or
/// `max_connections_per_ip` gets before it is closed.
const REFUSAL: &[u8] = b"ERR rate-limited too many connections\n";

/// Why the server stopped other than by a clean shutdown: exit status 1.
#[derive(Debug, Error)]
pub enum RunError {
    /// The store failed: acknowledged changes might not be durable, so the
    /// server stops rather than carry on making promises it cannot keep.
    #[error("store failure")]
    Store(#[from] StoreError),
    /// The store thread is gone (it panicked).
    #[error("the store thread stopped unexpectedly")]
    StoreGone,
    /// The dummy password hash could not be made.
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// A startup step could not run (a thread could not be started).
    #[error("{0}")]
    Internal(String),
}

/// A request to the store thread: ops to commit, and where to answer.
type Commit = (Vec<StoreOp>, oneshot::Sender<Result<(), StoreError>>);

/// The store, on a thread of its own: SQLite calls block, and one thread
/// keeps one connection and its prepared statements.
struct StoreThread {
    tx: std::sync::mpsc::Sender<Commit>,
    done: oneshot::Receiver<()>,
}

impl StoreThread {
    fn start(mut store: Box<dyn Store>) -> std::io::Result<StoreThread> {
        let (tx, rx) = std::sync::mpsc::channel::<Commit>();
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("chatd-store".into())
            .spawn(move || {
                while let Ok((ops, answer)) = rx.recv() {
                    let _ = answer.send(store.apply(&ops));
                }
                drop(store);
                let _ = done_tx.send(());
            })?;
        Ok(StoreThread { tx, done })
    }

    async fn commit(&self, ops: Vec<StoreOp>) -> Result<(), RunError> {
        let (answer, result) = oneshot::channel();
        self.tx
            .send((ops, answer))
            .map_err(|_| RunError::StoreGone)?;
        result.await.map_err(|_| RunError::StoreGone)??;
        Ok(())
    }

    /// Closes the store and waits (briefly) for the thread to finish.
    async fn close(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.done).await;
    }
}

/// The core's view of one connection.
struct Conn {
    out: Outbound,
    abort: AbortHandle,
    /// False once the core closed it or was told it is gone: further inputs
    /// for it are dropped, so the core never hears of a forgotten session.
    live: bool,
}

/// Everything the core task owns.
struct Core {
    server: Server,
    clock: Clock,
    conns: HashMap<SessionId, Conn>,
    tasks: JoinSet<()>,
    limiter: std::sync::Arc<ConnLimiter>,
    refusals: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    checker: PasswordChecker,
    inputs: mpsc::Sender<Input>,
    store: StoreThread,
    limit: OutboundLimit,
    max_line_bytes: usize,
    /// TLS for every connection, if the port speaks it.
    tls: Option<TlsParams>,
    /// Outputs of the current round, in order.
    round: Vec<Output>,
    /// The round's store changes, committed before its lines go out.
    round_ops: Vec<StoreOp>,
    /// Inputs the driver itself generated (dead peers), for the next round.
    internal: VecDeque<Input>,
    /// Sessions to forget once the round's lines are dispatched.
    forget: Vec<SessionId>,
}

/// Runs the chat service on `listener` until `shutdown` completes, then
/// shuts down as PROTOCOL.md §7 says: stop accepting, `BYE shutdown` to
/// every session, commit, give connections a few seconds to flush, return.
///
/// `store` is loaded here; the server carries on from what it holds.
///
/// Connections are plain TCP whatever `settings.tls` says: see
/// [`run_with_tls`].
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    accounts: Accounts,
    store: Box<dyn Store>,
    shutdown: impl Future,
) -> Result<(), RunError> {
    run_with_tls(listener, None, settings, accounts, store, shutdown).await
}

/// [`run`], with every connection speaking TLS with `tls` if it is given
/// (made from `settings.tls` by [`crate::tls::server_config`] at startup, so
/// that a bad file stops the server before it says it is listening). Each
/// handshake runs in its connection's task and must finish within
/// `login_timeout`.
pub async fn run_with_tls(
    listener: TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    settings: Settings,
    accounts: Accounts,
    store: Box<dyn Store>,
    shutdown: impl Future,
) -> Result<(), RunError> {
    let prepared = prepare(settings, accounts, store).await?;
    run_prepared(listener, tls, prepared, shutdown).await
}

/// What the server needs before it may say it is listening: the store read
/// back and the password checker ready. Doing this first means a large or
/// broken store is dealt with before the readiness line, not after.
pub struct Prepared {
    settings: Settings,
    accounts: Accounts,
    store: Box<dyn Store>,
    restored: chatcore::Restored,
    checker: PasswordChecker,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("accounts", &self.accounts.len())
            .finish_non_exhaustive()
    }
}

/// Loads the store and builds the password checker (see [`Prepared`]).
pub async fn prepare(
    settings: Settings,
    accounts: Accounts,
    mut store: Box<dyn Store>,
) -> Result<Prepared, RunError> {
    let (store, restored) = tokio::task::spawn_blocking(move || {
        let r = store.load();
        (store, r)
    })
    .await
    .map_err(|_| RunError::StoreGone)?;
    let restored = restored?;
    let checker = {
        let accounts = accounts.clone();
        let n = settings.password_check_concurrency;
        tokio::task::spawn_blocking(move || PasswordChecker::new(&accounts, n))
            .await
            .map_err(|e| RunError::Internal(format!("making the dummy password hash: {e}")))??
    };
    Ok(Prepared {
        settings,
        accounts,
        store,
        restored,
        checker,
    })
}

/// [`run_with_tls`] once [`prepare`] is done.
pub async fn run_prepared(
    listener: TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    prepared: Prepared,
    shutdown: impl Future,
) -> Result<(), RunError> {
    let Prepared {
        settings,
        accounts,
        store,
        restored,
        checker,
    } = prepared;
    let clock = Clock::start();
    let server = Server::restore(settings.core.clone(), accounts, restored, clock.now());
    let (inputs, mut rx) = mpsc::channel(INPUT_CHANNEL);
    let store = StoreThread::start(store)
        .map_err(|e| RunError::Internal(format!("cannot start the store thread: {e}")))?;
    let mut core = Core {
        server,
        clock,
        conns: HashMap::new(),
        tasks: JoinSet::new(),
        limiter: ConnLimiter::new(settings.max_connections, settings.max_connections_per_ip),
        refusals: Default::default(),
        checker,
        inputs,
        store,
        limit: OutboundLimit {
            max_bytes: settings.max_outbound_bytes,
            stall_grace: settings
                .core
                .heartbeat
                .clamp(Duration::from_secs(1), Duration::from_secs(30)),
            hard_factor: 64,
        },
        max_line_bytes: settings.core.max_line_bytes,
        tls: tls.map(|config| TlsParams {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            handshake_timeout: settings.core.login_timeout,
        }),
        round: Vec::new(),
        round_ops: Vec::new(),
        internal: VecDeque::new(),
        forget: Vec::new(),
    };
    let result = core.serve(&listener, &mut rx, shutdown).await;
    drop(listener);
    if result.is_ok() {
        core.shut_down(rx).await?;
    }
    result
}

impl Core {
    /// The main loop, until `shutdown` completes or the store fails.
    async fn serve(
        &mut self,
        listener: &TcpListener,
        rx: &mut mpsc::Receiver<Input>,
        shutdown: impl Future,
    ) -> Result<(), RunError> {
        tokio::pin!(shutdown);
        let mut accept_resume: Option<Instant> = None;
        let mut batch: Vec<Input> = Vec::with_capacity(MAX_BATCH);
        loop {
            let deadline = self.server.poll_timeout().map(|t| self.clock.instant_of(t));
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(()),
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
                Some(input) = rx.recv() => {
                    batch.push(input);
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(input) => batch.push(input),
                            Err(_) => break,
                        }
                    }
                }
                res = listener.accept(), if accept_resume.is_none() => match res {
                    Ok((stream, peer)) => self.accept(stream, peer),
                    Err(e) => {
                        // Usually out of file descriptors: pause accepting
                        // instead of spinning on the error.
                        tracing::warn!("accept failed: {e}");
                        accept_resume = Some(Instant::now() + Duration::from_millis(100));
                    }
                },
                () = sleep_until(accept_resume.unwrap_or_else(Instant::now)), if accept_resume.is_some() => {
                    accept_resume = None;
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
            let mut accepted = 0;
            while accepted < MAX_ACCEPTS_PER_ROUND && accept_resume.is_none() {
                match ready_connection(listener).await {
                    None => break,
                    Some(Ok((stream, peer))) => self.accept(stream, peer),
                    Some(Err(e)) => {
                        tracing::warn!("accept failed: {e}");
                        accept_resume = Some(Instant::now() + Duration::from_millis(100));
                    }
                }
                accepted += 1;
            }
            let now = self.clock.now();
            for input in batch.drain(..) {
                self.feed(now, input);
            }
            self.server.handle_timeout(now);
            self.drain();
            self.finish_round().await?;
        }
    }

    /// Feeds one input unless it is for a session the core has forgotten.
    fn feed(&mut self, now: chatcore::Time, input: Input) {
        if let Some(session) = input.session() {
            let Some(conn) = self.conns.get_mut(&session) else {
                return;
            };
            if !conn.live {
                return;
            }
            if let Input::Closed { .. } = input {
                // The connection is gone: forget it once this round's lines
                // are dispatched, whether or not the core answers `Close`.
                conn.live = false;
                self.forget.push(session);
            }
        }
        if let Input::Line { session, line } = &input {
            // Never the text: the line may be a password.
            tracing::trace!(%session, "<- {} bytes", line.len());
        }
        self.server.handle_input(now, input);
        self.drain();
    }

    /// Collects the core's outputs into the round, starting password checks
    /// and logging events at once (neither depends on the store).
    fn drain(&mut self) {
        while let Some(output) = self.server.poll_output() {
            match output {
                Output::CheckPassword(check) => self.check_password(check),
                Output::Event(event) => log_event(&event),
                Output::Close { session } => {
                    if let Some(conn) = self.conns.get_mut(&session) {
                        conn.live = false;
                    }
                    self.round.push(Output::Close { session });
                }
                Output::Persist(op) => self.round_ops.push(op),
                other => self.round.push(other),
            }
        }
    }

    /// Commits the round's changes, then hands its lines to connections.
    async fn finish_round(&mut self) -> Result<(), RunError> {
        loop {
            let round = std::mem::take(&mut self.round);
            let ops = std::mem::take(&mut self.round_ops);
            if !ops.is_empty() {
                // A failed commit is fatal; the caller reports it.
                self.store.commit(ops).await?;
            }
            let mut dead = Vec::new();
            for output in round {
                match output {
                    Output::Send { session, line } => {
                        if self.send(session, &line).is_err() {
                            dead.push(session);
                        }
                    }
                    Output::Close { session } => {
                        // Dropping the queue makes the writer flush what is
                        // queued and shut the socket down.
                        self.conns.remove(&session);
                    }
                    Output::NotifyWritten { session } => {
                        if let Some(conn) = self.conns.get(&session) {
                            conn.out.mark();
                        }
                    }
                    Output::Persist(_) | Output::CheckPassword(_) | Output::Event(_) => {}
                }
            }
            for session in std::mem::take(&mut self.forget) {
                self.conns.remove(&session);
            }
            for session in dead {
                let Some(conn) = self.conns.get_mut(&session) else {
                    continue;
                };
                if conn.live {
                    tracing::info!(%session, "peer stopped reading: dropping the connection");
                    conn.abort.abort();
                    self.internal.push_back(Input::Closed { session });
                }
            }
            if self.internal.is_empty() {
                return Ok(());
            }
            let now = self.clock.now();
            while let Some(input) = self.internal.pop_front() {
                self.feed(now, input);
            }
        }
    }

    /// Queues one line for a session; `Err` if its peer stopped reading.
    fn send(&mut self, session: SessionId, line: &ServerLine) -> Result<(), Dead> {
        let Some(conn) = self.conns.get_mut(&session) else {
            return Ok(());
        };
        let mut text = line.to_string();
        if matches!(line, ServerLine::Deliver(_)) {
            tracing::debug!(%session, "-> {text}");
        } else {
            tracing::trace!(%session, "-> {text}");
        }
        text.push('\n');
        conn.out.push(text, &self.limit, &self.clock)
    }

    /// A new connection: refused if over the limits, else a session.
    fn accept(&mut self, stream: TcpStream, peer: std::net::SocketAddr) {
        let ip = peer.ip().to_canonical();
        let Some(permit) = self.limiter.try_acquire(ip) else {
            tracing::warn!(%peer, "refused: too many connections");
            self.refuse(stream);
            return;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        let session = self.server.open_session(ip, self.clock.now());
        tracing::debug!(%session, %peer, "connected");
        let (out, out_rx) = outbound(&self.clock);
        let params = ConnParams {
            session,
            peer,
            max_line_bytes: self.max_line_bytes,
            inputs: self.inputs.clone(),
            clock: self.clock,
            tls: self.tls.clone(),
        };
        let abort = self
            .tasks
            .spawn(run_connection(stream, params, out_rx, permit));
        if let Some(old) = self.conns.insert(
            session,
            Conn {
                out,
                abort,
                live: true,
            },
        ) {
            // Session ids are never reused; if one were, the old
            // connection could not be told apart, so it goes.
            tracing::error!(%session, "session id reused by the core");
            old.abort.abort();
        }
        self.drain();
    }

    /// Tells a connection over the limits why, and closes it, without
    /// holding up the core.
    ///
    /// On a TLS port the connection is closed without a word: the note
    /// could only be sent in plain text, which a TLS client reads as a
    /// corrupt record, and a handshake to send it properly is exactly the
    /// work the limits are there to refuse.
    fn refuse(&self, mut stream: TcpStream) {
        use std::sync::atomic::Ordering;
        if self.tls.is_some() {
            drop(stream);
            return;
        }
        let refusals = std::sync::Arc::clone(&self.refusals);
        if refusals.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSALS_IN_FLIGHT {
            refusals.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                stream.write_all(REFUSAL).await?;
                stream.shutdown().await
            })
            .await;
            refusals.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Verifies a password off the core task and feeds the answer back.
    fn check_password(&self, check: PasswordCheck) {
        let checker = self.checker.clone();
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            let PasswordCheck {
                session,
                check,
                credential,
                password,
                ..
            } = check;
            let ok = checker.check(credential, password).await;
            let _ = inputs
                .send(Input::PasswordChecked { session, check, ok })
                .await;
        });
    }

    /// Shutdown: `BYE shutdown` to everyone, commit, let connections flush.
    async fn shut_down(mut self, rx: mpsc::Receiver<Input>) -> Result<(), RunError> {
        tracing::info!("shutting down");
        let now = self.clock.now();
        self.server.handle_input(now, Input::Shutdown);
        self.drain();
        let result = self.finish_round().await;
        // Drop every queue (writers flush and close) and the input channel
        // (readers stop at their next line).
        self.conns.clear();
        drop(rx);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.tasks.join_next()).await {}
        if !self.tasks.is_empty() {
            tracing::warn!(
                "{} connections did not close in time; dropping them",
                self.tasks.len()
            );
            self.tasks.shutdown().await;
        }
        self.store.close().await;
        result
    }
}

/// A connection waiting to be accepted, if there is one: never waits.
async fn ready_connection(
    listener: &TcpListener,
) -> Option<std::io::Result<(TcpStream, std::net::SocketAddr)>> {
    std::future::poll_fn(|cx| match listener.poll_accept(cx) {
        std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// One log line per event. Message texts are never logged here.
fn log_event(event: &Event) {
    match event {
        Event::LoggedIn {
            session,
            user,
            peer,
        } => tracing::info!(%session, %user, %peer, "login"),
        Event::LoginFailed {
            session,
            user,
            peer,
            reason,
        } => {
            let reason = match reason {
                LoginFailure::BadCredentials => "bad credentials",
                LoginFailure::AlreadyOnline => "already online",
                LoginFailure::Blocked => "blocked",
            };
            tracing::warn!(%session, %user, %peer, reason, "failed login");
        }
        Event::Blocked { user, peer, until } => {
            tracing::warn!(%user, %peer, until = %until.to_rfc3339(), "login blocked");
        }
        Event::SessionEnded {
            session,
            user,
            how,
            requeued,
        } => tracing::info!(%session, %user, how = ?how, requeued, "session ended"),
        Event::LoginAbandoned { session, peer, bye } => {
            let bye = bye.map_or("none", |b| b.as_str());
            tracing::info!(%session, %peer, bye, "connection closed before login");
        }
    }
}
