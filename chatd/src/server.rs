//! The core task: the one owner of the [`chatcore::Server`].
//!
//! Each wake-up is a *round*: take every input that is ready (up to
//! `MAX_BATCH`), feed them, run due timers, and gather all outputs. If the
//! round asked for changes to be persisted, they are committed in one
//! transaction *before* any of the round's lines are handed to connections,
//! which meets the core's ordering rule (a line sent after a `Persist` must
//! not reach the network before the change is durable) at the cost of one
//! commit per round, not per change: while a commit runs, inputs pile up in
//! the channel and the next round takes them all (group commit).
//!
//! A store that cannot write now (a full disk, see [`Failure`]) does not
//! stop the server: see `Core::commit` for what waits and what goes on.

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
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{sleep_until, Instant};

use crate::clock::Clock;
use crate::config::Settings;
use crate::conn::{run_connection, ConnParams, TlsParams};
use crate::limiter::ConnLimiter;
use crate::outbound::{outbound, Dead, Outbound, OutboundLimit};
use crate::passwords::{PasswordChecker, PasswordError};
use crate::store::{Failure, Store, StoreError, StoreGone, StoreThread};

/// Inputs fed in one round at most, so that timers and commits keep up
/// under load.
const MAX_BATCH: usize = 1024;

/// New connections taken in one round at most. Each round takes the
/// connections waiting, not only when no input is ready: under load inputs
/// are always ready, and a loop that serves them first never accepts. The
/// bound keeps a burst of connections from delaying the round's inputs.
const MAX_ACCEPTS_PER_ROUND: usize = 64;

/// While the store cannot write, how long after a failed try the next one
/// comes at the latest.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// While the store cannot write, the least time between two tries: a round
/// with changes tries at once, unless the last try was this recent. Each
/// failed try costs the core a commit's worth of time.
const RETRY_MIN_GAP: Duration = Duration::from_millis(100);

/// While the store cannot write, how often at most a log line says so.
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Changes committed in one transaction at most when the store can write
/// again (whole rounds, so a round's changes are never split; a single
/// larger round goes alone). Bounds what one failed try costs.
const RETRY_CHUNK_OPS: usize = 4096;

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
    /// The store failed in a way that leaves its state unknown
    /// ([`Failure::Fatal`]): acknowledged changes might not be durable, so
    /// the server stops rather than carry on making promises it cannot keep.
    #[error("store failure")]
    Store(#[from] StoreError),
    /// The store could not write for good: at shutdown, or for so long
    /// that the changes waiting for it passed `max_unwritten_bytes`. Nothing
    /// acknowledged is lost: the lines that depended on the waiting changes
    /// were never sent.
    #[error("{why}: {cause}")]
    Unwritable {
        /// What gave up.
        why: String,
        /// The store's last error, with its causes.
        cause: String,
    },
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

impl From<StoreGone> for RunError {
    fn from(StoreGone: StoreGone) -> RunError {
        RunError::StoreGone
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
    /// Sessions whose peer stopped reading, found while dispatching lines.
    dead: Vec<SessionId>,
    /// Set while the store cannot write.
    outage: Option<Outage>,
    /// Changes not committed yet because the store cannot write, one entry
    /// per round (or per failed chunk of rounds), oldest first.
    waiting: VecDeque<Vec<StoreOp>>,
    /// How many ops `waiting` holds, and their estimated bytes.
    waiting_ops: usize,
    waiting_bytes: usize,
    /// `max_unwritten_bytes`: the bound on `waiting_bytes`.
    max_waiting_bytes: usize,
    /// Lines (and closes) held back until the store commits what they
    /// depend on, oldest first.
    held: VecDeque<(SessionId, Held)>,
    /// Sessions with held lines, and the bytes held for each: every later
    /// line of theirs waits behind them, so each session sees its lines in
    /// order.
    held_bytes: HashMap<SessionId, usize>,
}

/// The store cannot write (see [`Core::commit`]).
struct Outage {
    /// Since when.
    since: Instant,
    /// When it was last tried.
    tried: Instant,
    /// Failed tries so far.
    tries: u64,
    /// When it was last logged.
    logged: Instant,
    /// The last error, with its causes, for logs.
    cause: String,
}

/// One held output.
enum Held {
    /// A line, `\n` included.
    Line(String),
    /// [`Output::Close`].
    Close,
    /// [`Output::NotifyWritten`].
    NotifyWritten,
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
            .map_err(|e| RunError::Internal(format!("starting the password checkers: {e}")))??
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
            hard_factor: crate::config::OUTBOUND_HARD_FACTOR,
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
        dead: Vec::new(),
        outage: None,
        waiting: VecDeque::new(),
        waiting_ops: 0,
        waiting_bytes: 0,
        max_waiting_bytes: settings.max_unwritten_bytes,
        held: VecDeque::new(),
        held_bytes: HashMap::new(),
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
            let retry = self.outage.as_ref().map(|o| o.tried + RETRY_INTERVAL);
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(()),
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
                // The round below tries the store again.
                () = sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => {}
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

    /// Commits the round's changes, then hands its lines to connections
    /// (or holds them back: see [`Core::commit`]).
    async fn finish_round(&mut self) -> Result<(), RunError> {
        loop {
            let round = std::mem::take(&mut self.round);
            let ops = std::mem::take(&mut self.round_ops);
            let hold = self.commit(ops).await?;
            for output in round {
                let session = match &output {
                    Output::Send { session, .. }
                    | Output::Close { session }
                    | Output::NotifyWritten { session } => *session,
                    Output::Persist(_) | Output::CheckPassword(_) | Output::Event(_) => continue,
                };
                if hold || self.held_bytes.contains_key(&session) {
                    self.hold(session, output);
                } else {
                    self.dispatch(output);
                }
            }
            for session in std::mem::take(&mut self.forget) {
                self.conns.remove(&session);
                if self.held_bytes.remove(&session).is_some() {
                    // Nobody left to send them to.
                    self.held.retain(|(s, _)| *s != session);
                }
            }
            for session in std::mem::take(&mut self.dead) {
                let Some(conn) = self.conns.get_mut(&session) else {
                    continue;
                };
                if conn.live {
                    tracing::info!(%session, "peer stopped reading: dropping the connection");
                    conn.abort.abort();
                    self.internal.push_back(Input::Closed { session });
                }
            }
            if self.internal.is_empty() && self.round.is_empty() && self.round_ops.is_empty() {
                return Ok(());
            }
            let now = self.clock.now();
            while let Some(input) = self.internal.pop_front() {
                self.feed(now, input);
            }
        }
    }

    /// Commits a round's `ops`; returns whether the round's lines must be
    /// held back until a later commit succeeds.
    ///
    /// While the store can write, the round's ops are committed and its
    /// lines go out after. A commit that fails with
    /// [`Failure::CannotWriteNow`] starts an outage:
    /// - The ops are kept, in order, ahead of every later round's ops
    ///   (SQLite rolled the transaction back, so all of them must be
    ///   applied again), and tried again at least every
    ///   [`RETRY_INTERVAL`], and by any round with changes of its own.
    /// - The core is told [`Input::StoreUnavailable`]: from the next round
    ///   on it refuses `message` and `broadcast` with `ERR unavailable` and
    ///   carries on with everything else.
    /// - The round's lines are held back if its ops include a `Hold` or
    ///   `ReserveIds`: then the round accepted a message, and its `OK` (and
    ///   its deliveries) must not be seen before the message is durable.
    ///   Every later line for a session with held lines waits behind them.
    ///   A round with only bookkeeping (`Seen`, `Release`, login failures)
    ///   sends its lines at once: none of them says that those are durable,
    ///   and losing them in a crash costs a redelivery or a stale record,
    ///   never an acknowledged message.
    ///
    /// Rounds during the outage send their lines at once (behind held lines
    /// of their session): the core accepts no message then, so their ops
    /// are bookkeeping; a `Hold` among them puts back deliveries a session
    /// left unconfirmed, already acknowledged to their senders. Holding
    /// those rounds would stall every session with a line in them (probes
    /// included) until the disk has room, and stalled sessions time out,
    /// which puts back more. A `ReserveIds` there would mean the core
    /// accepted a message anyway; such a round is held, to be safe.
    ///
    /// Once everything waiting is committed, the held lines go out in
    /// order and the core is told [`Input::StoreAvailable`].
    ///
    /// A [`Failure::Fatal`] error, at any time, stops the server.
    async fn commit(&mut self, ops: Vec<StoreOp>) -> Result<bool, RunError> {
        if self.outage.is_none() {
            if ops.is_empty() {
                return Ok(false);
            }
            let acknowledges = ops
                .iter()
                .any(|op| matches!(op, StoreOp::Hold { .. } | StoreOp::ReserveIds { .. }));
            let (ops, result) = self.store.commit(ops).await?;
            let Err(e) = result else {
                return Ok(false);
            };
            let Failure::CannotWriteNow(detail) = e.failure() else {
                return Err(RunError::Store(e));
            };
            self.begin_outage(&e, detail);
            self.wait_for_store(ops)?;
            return Ok(acknowledges);
        }
        let accepted = ops
            .iter()
            .any(|op| matches!(op, StoreOp::ReserveIds { .. }));
        let gap = if ops.is_empty() {
            RETRY_INTERVAL
        } else {
            self.wait_for_store(ops)?;
            RETRY_MIN_GAP
        };
        if self
            .outage
            .as_ref()
            .is_some_and(|o| o.tried.elapsed() >= gap)
        {
            self.retry().await?;
        }
        if accepted && self.outage.is_some() {
            tracing::error!("the core accepted a message while the store cannot write");
            return Ok(true);
        }
        Ok(false)
    }

    /// The store cannot write: tell the core, and log it.
    fn begin_outage(&mut self, e: &StoreError, detail: &str) {
        let cause = error_chain(e);
        tracing::warn!(
            "cannot commit to the store, refusing messages until it can \
             (trying again every {} s): {cause}",
            RETRY_INTERVAL.as_secs()
        );
        let now = Instant::now();
        self.outage = Some(Outage {
            since: now,
            tried: now,
            tries: 1,
            logged: now,
            cause,
        });
        self.server.handle_input(
            self.clock.now(),
            Input::StoreUnavailable {
                detail: detail.to_string(),
            },
        );
        self.drain();
    }

    /// Keeps `ops` for a later commit, after those already waiting; fails
    /// once too much waits.
    fn wait_for_store(&mut self, ops: Vec<StoreOp>) -> Result<(), RunError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.waiting_ops += ops.len();
        self.waiting_bytes += ops.iter().map(op_bytes).sum::<usize>();
        self.waiting.push_back(ops);
        // Past the bound the server stops, as it did on any failed commit
        // before: nothing waiting was acknowledged, so nothing acknowledged
        // is lost, and a restart comes up on the full disk.
        if self.waiting_bytes > self.max_waiting_bytes {
            let outage = self.outage.as_ref();
            return Err(RunError::Unwritable {
                why: format!(
                    "giving up: the store has not been writable for {} s and {} changes \
                     ({} bytes) wait for it, over max_unwritten_bytes ({})",
                    outage.map_or(0, |o| o.since.elapsed().as_secs()),
                    self.waiting_ops,
                    self.waiting_bytes,
                    self.max_waiting_bytes,
                ),
                cause: outage.map_or_else(String::new, |o| o.cause.clone()),
            });
        }
        Ok(())
    }

    /// Tries to commit everything waiting, a chunk of whole rounds at a
    /// time (each chunk committed is a state the core went through, so a
    /// crash between chunks leaves the store consistent). Ends the outage
    /// once nothing waits.
    async fn retry(&mut self) -> Result<(), RunError> {
        while !self.waiting.is_empty() {
            let mut chunk = self.waiting.pop_front().unwrap_or_default();
            while let Some(next) = self.waiting.front() {
                if chunk.len() + next.len() > RETRY_CHUNK_OPS {
                    break;
                }
                chunk.extend(self.waiting.pop_front().unwrap_or_default());
            }
            let (chunk, result) = self.store.commit(chunk).await?;
            match result {
                Ok(()) => {
                    self.waiting_ops -= chunk.len();
                    self.waiting_bytes -= chunk.iter().map(op_bytes).sum::<usize>();
                }
                Err(e) => {
                    let Failure::CannotWriteNow(_) = e.failure() else {
                        return Err(RunError::Store(e));
                    };
                    self.waiting.push_front(chunk);
                    if let Some(outage) = &mut self.outage {
                        outage.tried = Instant::now();
                        outage.tries += 1;
                        outage.cause = error_chain(&e);
                        if outage.logged.elapsed() >= OUTAGE_LOG_INTERVAL {
                            outage.logged = Instant::now();
                            tracing::warn!(
                                "the store still cannot commit after {} s ({} tries, {} changes \
                                 waiting): {}",
                                outage.since.elapsed().as_secs(),
                                outage.tries,
                                self.waiting_ops,
                                outage.cause
                            );
                        }
                    }
                    return Ok(());
                }
            }
        }
        self.end_outage();
        Ok(())
    }

    /// Everything waiting is committed: send the held lines in order and
    /// tell the core.
    fn end_outage(&mut self) {
        let Some(outage) = self.outage.take() else {
            return;
        };
        let held = std::mem::take(&mut self.held);
        self.held_bytes.clear();
        let lines = held.len();
        for (session, item) in held {
            match item {
                Held::Line(text) => {
                    let Some(conn) = self.conns.get_mut(&session) else {
                        continue;
                    };
                    tracing::trace!(%session, "-> (held) {}", text.trim_end());
                    if conn.out.push(text, &self.limit, &self.clock).is_err() {
                        self.dead.push(session);
                    }
                }
                Held::Close => {
                    self.conns.remove(&session);
                }
                Held::NotifyWritten => {
                    if let Some(conn) = self.conns.get(&session) {
                        conn.out.mark();
                    }
                }
            }
        }
        self.server
            .handle_input(self.clock.now(), Input::StoreAvailable);
        self.drain();
        tracing::info!(
            "the store commits again after {:.1} s ({} failed tries); \
             {lines} held lines sent, messages accepted again",
            outage.since.elapsed().as_secs_f64(),
            outage.tries,
        );
    }

    /// Holds one output back behind the session's other held ones. A
    /// session whose held lines pass `max_outbound_bytes` is dropped, as a
    /// peer that stops reading is.
    fn hold(&mut self, session: SessionId, output: Output) {
        let item = match output {
            Output::Send { line, .. } => {
                let mut text = line.to_string();
                text.push('\n');
                Held::Line(text)
            }
            Output::Close { .. } => Held::Close,
            Output::NotifyWritten { .. } => Held::NotifyWritten,
            Output::Persist(_) | Output::CheckPassword(_) | Output::Event(_) => return,
        };
        let bytes = match &item {
            Held::Line(text) => text.len(),
            Held::Close | Held::NotifyWritten => 0,
        };
        let held = self.held_bytes.entry(session).or_default();
        *held += bytes;
        if *held > self.limit.max_bytes {
            self.dead.push(session);
        }
        self.held.push_back((session, item));
    }

    /// Acts on one output of a round whose changes are committed.
    fn dispatch(&mut self, output: Output) {
        match output {
            Output::Send { session, line } => {
                if self.send(session, &line).is_err() {
                    self.dead.push(session);
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
        let mut result = self.finish_round().await;
        if result.is_ok() && self.outage.is_some() {
            // One last try; if the disk is still full, the changes waiting
            // are lost, but none of them was acknowledged: their lines are
            // still held.
            result = self.retry().await;
            if result.is_ok() {
                if let Some(outage) = &self.outage {
                    result = Err(RunError::Unwritable {
                        why: format!(
                            "shutting down with {} changes the store could not commit \
                             (none of them acknowledged)",
                            self.waiting_ops
                        ),
                        cause: outage.cause.clone(),
                    });
                }
            }
        }
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

/// An error and its causes on one line, as the binary prints them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// About how much memory a waiting op keeps alive: its strings and a
/// fixed overhead. A held message's text counts in full, though the core
/// may share it, so the bound errs on the safe side.
fn op_bytes(op: &StoreOp) -> usize {
    const OVERHEAD: usize = 64;
    OVERHEAD
        + match op {
            StoreOp::Hold { user, message } => user.len() + message.from.len() + message.text.len(),
            StoreOp::Release { user, .. }
            | StoreOp::Seen { user, .. }
            | StoreOp::ClearLoginFailures { user, .. } => user.len(),
            StoreOp::LoginFailures(f) => f.user.len(),
            StoreOp::ReserveIds { .. } => 0,
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
            // Text that is no user name is never logged: it may be
            // anything, even a password typed into the wrong prompt.
            let user = user.as_deref().unwrap_or("(not a user name)");
            tracing::warn!(%session, user, %peer, reason, "failed login");
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
