//! The driver: the task that owns the [`chatcore::Server`] and drives it
//! with sockets, a clock and the store.
//!
//! Each wake-up is a *round*: take every input that is ready (up to
//! `MAX_BATCH`; on plain TCP the driver reads the sockets itself, see
//! `readers.rs`), feed them, run due timers, and act on every output at
//! once: lines go to their connections' queues as the core produces them
//! and, on plain TCP, from there to the sockets at the round's end
//! ([`Outbound::flush`]); the round's changes to the store are sealed
//! into one batch at its end and committed in the background, never
//! waited for. Only lines
//! behind an [`chatcore::Output::Barrier`] (an `OK` that promises a message
//! is durable) wait for their commit: see `commits.rs`, which also says
//! what happens when the store cannot write now (a full disk, see
//! [`Failure`]).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chatcore::wire::ServerLine;
use chatcore::{
    Accounts, Event, Input, LoginFailure, MessageId, Output, PasswordCheck, Server, SessionId,
    SessionMap,
};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{sleep_until, Instant};

use crate::clock::Clock;
use crate::config::Settings;
use crate::conn::{run_connection, ConnParams, TlsParams, Transport};
use crate::limiter::ConnLimiter;
use crate::outbound::{outbound, Dead, Outbound, OutboundLimit};
use crate::passwords::{PasswordChecker, PasswordError};
#[cfg(doc)]
use crate::store::Failure;
use crate::store::{Store, StoreError, StoreGone, StoreThread};

mod acks;
mod commits;
mod lines;
mod pages;
mod readers;
mod web;

use acks::QuietAcks;
use commits::{commit_ended, Commits};
use lines::Lines;
use readers::{Read, Reader, ReadyList};
pub use web::{WebHandoff, WebRequest, WsConnection, WEB_HANDOFF_QUEUE};

/// Inputs fed in one round at most from the input channel, and from the
/// sockets the driver reads (plus the rest of one socket's chunk), so
/// that timers and commits keep up under load.
const MAX_BATCH: usize = 1024;

/// New connections taken in one round at most. Each round takes the
/// connections waiting, not only when no input is ready: under load inputs
/// are always ready, and a loop that serves them first never accepts. The
/// bound keeps a burst of connections from delaying the round's inputs.
const MAX_ACCEPTS_PER_ROUND: usize = 64;

/// Capacity of the channel from connections to the core (a TLS or
/// WebSocket connection's lines, and what any connection's task reports):
/// readers wait when it is full, which pushes back on whoever floods.
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
    /// The TLS certificate or key in `settings.tls` is unreadable or
    /// unusable: the server stops before it says it is listening.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
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
    /// On plain TCP, while the core has the session open: the driver reads
    /// the socket itself (`readers.rs`).
    reader: Option<Reader>,
}

impl Conn {
    /// The core closed the session or was told it is gone.
    fn end(&mut self) {
        self.live = false;
        self.reader = None;
    }
}

/// Everything the driver owns.
struct Driver {
    server: Server,
    clock: Clock,
    conns: SessionMap<Conn>,
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
    /// Changes for the store, and the lines that wait for them.
    commits: Commits,
    /// Inputs the driver itself generated (dead peers), for the next round.
    internal: VecDeque<Input>,
    /// Sessions to forget once the round's lines are dispatched.
    forget: Vec<SessionId>,
    /// Sessions whose peer stopped reading, found while dispatching lines.
    dead: Vec<SessionId>,
    /// Pages of boxes the core asked for, each with the ticket that makes
    /// every change before it durable (`pages.rs`).
    loads: Vec<(u64, chatcore::HeldRequest)>,
    /// WebSocket connections and health pings from the web listener.
    web: Option<mpsc::Receiver<WebRequest>>,
    /// Formats lines; a broadcast's once for all its receivers.
    lines: Lines,
    /// `OK`s queued without waking their writers (`acks.rs`).
    quiet_acks: QuietAcks,
    /// Connections with lines that wait for the round's end
    /// ([`Outbound::flush`]).
    unflushed: Vec<SessionId>,
    /// Plain TCP sockets with bytes to read, and the buffer they are read
    /// into (`readers.rs`).
    ready: Arc<ReadyList>,
    read_buf: Vec<u8>,
    /// The sessions taken from `ready` for this round's reads.
    reading: Vec<SessionId>,
}

/// An output that goes to a connection: what may wait behind a barrier.
enum RoundOutput {
    /// [`Output::Send`], formatted once, when the core sends it: a line
    /// that waits is measured by its bytes and written as they are.
    Send {
        session: SessionId,
        /// The line, `\n` included.
        bytes: Bytes,
        /// The message id of a `MSG` or `BCAST` (they may pass other
        /// lines that wait, and wait only for the reservation of their id,
        /// see `commits.rs`).
        delivery: Option<MessageId>,
        /// An `OK` for a message: it may wait for company (`acks.rs`).
        ack: bool,
    },
    /// [`Output::Close`].
    Close { session: SessionId },
    /// [`Output::NotifyWritten`].
    NotifyWritten { session: SessionId },
}

impl RoundOutput {
    /// The session it is for.
    fn session(&self) -> SessionId {
        match self {
            RoundOutput::Send { session, .. }
            | RoundOutput::Close { session }
            | RoundOutput::NotifyWritten { session } => *session,
        }
    }
}

/// What the server needs before it may say it is listening: the TLS
/// configuration built, the store read back and the password checker
/// ready. Doing this first means a bad certificate or a large or broken
/// store is dealt with before the readiness line, not after.
pub struct Prepared {
    settings: Settings,
    accounts: Accounts,
    store: Box<dyn Store>,
    restored: chatcore::Restored,
    checker: PasswordChecker,
    tls: Option<Arc<rustls::ServerConfig>>,
    reload: crate::reload::Link,
    /// See [`Prepared::web_handoff`].
    web: Option<mpsc::Receiver<WebRequest>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("accounts", &self.accounts.len())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The one way to start the server: builds the TLS configuration from
/// `settings.tls` (an unreadable or unusable file fails here, naming it),
/// loads `store` (the server carries on from what it holds) and builds the
/// password checker; then [`Prepared::run`] serves.
pub async fn prepare(
    settings: Settings,
    accounts: Accounts,
    mut store: Box<dyn Store>,
) -> Result<Prepared, RunError> {
    let tls = match &settings.tls {
        Some(files) => {
            let config = crate::tls::server_tls(&files.cert, &files.key)?;
            tracing::info!(
                "TLS on (1.2 and 1.3): certificate {}, key {}",
                files.cert.display(),
                files.key.display()
            );
            Some(config)
        }
        None => None,
    };
    let (store, restored) = tokio::task::spawn_blocking(move || {
        let r = store.load();
        (store, r)
    })
    .await
    .map_err(|_| RunError::StoreGone)?;
    let restored = restored?;
    let reload = crate::reload::Link::new(tls.as_ref().map(|t| Arc::clone(&t.cert)));
    let tls = tls.map(|t| t.config);
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
        tls,
        reload,
        web: None,
    })
}

impl Prepared {
    /// What reads the users file and TLS files again while [`Prepared::run`]
    /// serves (see [`reload`](crate::reload)).
    pub fn reloader(&self) -> crate::reload::Reloader {
        let users = self.settings.users_file.clone();
        self.reload.reloader(users, self.checker.clone())
    }

    /// Runs the chat service on `listener` until `shutdown` completes, then
    /// shuts down as PROTOCOL.md §7 says: stop accepting, `BYE shutdown` to
    /// every session, commit, give connections a few seconds to flush,
    /// return.
    ///
    /// With TLS configured, every connection speaks it; each handshake runs
    /// in its connection's task and must finish within `login_timeout`.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future) -> Result<(), RunError> {
        let Prepared {
            settings,
            accounts,
            store,
            restored,
            checker,
            tls,
            mut reload,
            web,
        } = self;
        let clock = Clock::start();
        let reserved = restored.next_id;
        let server = Server::restore(clock.now(), settings.core.clone(), accounts, restored);
        let (inputs, mut rx) = mpsc::channel(INPUT_CHANNEL);
        let store = StoreThread::start(store)
            .map_err(|e| RunError::Internal(format!("cannot start the store thread: {e}")))?;
        let mut driver = Driver {
            server,
            clock,
            conns: SessionMap::default(),
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
            commits: Commits::new(
                settings.max_unwritten_bytes,
                reserved,
                settings.commit_interval,
            ),
            internal: VecDeque::new(),
            forget: Vec::new(),
            dead: Vec::new(),
            loads: Vec::new(),
            web,
            lines: Lines::default(),
            quiet_acks: QuietAcks::new(settings.ok_delay),
            unflushed: Vec::new(),
            ready: Arc::default(),
            read_buf: Vec::with_capacity(crate::conn::READ_CHUNK),
            reading: Vec::new(),
        };
        let result = driver
            .serve(&listener, &mut rx, &mut reload.rx, shutdown)
            .await;
        drop(listener);
        if result.is_ok() {
            driver.shut_down(rx).await?;
        }
        result
    }
}

impl Driver {
    /// The main loop, until `shutdown` completes or the store fails.
    async fn serve(
        &mut self,
        listener: &TcpListener,
        rx: &mut mpsc::Receiver<Input>,
        reload: &mut mpsc::Receiver<crate::reload::NewAccounts>,
        shutdown: impl Future,
    ) -> Result<(), RunError> {
        tokio::pin!(shutdown);
        let mut accept_resume: Option<Instant> = None;
        let mut batch: Vec<Input> = Vec::with_capacity(MAX_BATCH);
        let ready = Arc::clone(&self.ready);
        loop {
            let deadline = self.server.poll_timeout().map(|t| self.clock.instant_of(t));
            let retry = self.commits.retry_at();
            let paced = self.commits.paced_until();
            let wake_acks = self.quiet_acks.due();
            let reading = !self.commits.backlogged();
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(()),
                ended = commit_ended(&mut self.commits), if self.commits.committing() => {
                    self.commit_done(ended)?;
                }
                Some(accounts) = reload.recv() => accounts.apply(&mut self.server, self.clock.now()),
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
                () = sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => {
                    self.start_commit()?;
                }
                () = sleep_until(paced.unwrap_or_else(Instant::now)), if paced.is_some() => {
                    self.start_commit_now()?;
                }
                () = sleep_until(wake_acks.unwrap_or_else(Instant::now)), if wake_acks.is_some() => {
                    self.wake_acks();
                }
                Some(input) = rx.recv(), if reading => {
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
                Some(request) = web::next_web(&mut self.web) => self.web_request(request),
                () = std::future::poll_fn(|cx| ready.poll_ready(cx)), if reading => {}
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
            if !self.commits.backlogged() {
                self.read_sockets(&mut batch);
            }
            let now = self.clock.now();
            for input in batch.drain(..) {
                self.feed(now, input);
            }
            self.server.handle_timeout(now);
            self.drain();
            self.finish_round()?;
            self.flush_lines();
        }
    }

    /// Reads the plain TCP sockets that have bytes, a chunk each at most,
    /// into `inputs`, until they gave [`MAX_BATCH`] inputs: the sockets not
    /// read stay on the list for the next round. (The channel's inputs have
    /// a budget of their own, so neither kind of connection starves the
    /// other.)
    fn read_sockets(&mut self, inputs: &mut Vec<Input>) {
        let full = inputs.len() + MAX_BATCH;
        self.ready.take(&mut self.reading);
        for (i, &session) in self.reading.iter().enumerate() {
            if inputs.len() >= full {
                self.ready.put_back(&self.reading[i..]);
                break;
            }
            let Some(conn) = self.conns.get_mut(&session) else {
                continue;
            };
            let Some(reader) = &mut conn.reader else {
                continue;
            };
            let end = match reader.read(&mut self.read_buf, inputs) {
                Read::Lines => continue,
                Read::Eof => Input::InputEnded { session },
                Read::Failed => Input::Closed { session },
            };
            conn.reader = None;
            inputs.push(end);
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
                conn.end();
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

    /// Acts on the core's outputs: lines go out (or wait behind a barrier),
    /// changes join the open batch, password checks start, events are
    /// logged.
    fn drain(&mut self) {
        while let Some(output) = self.server.poll_output() {
            match output {
                Output::CheckPassword(check) => self.check_password(check),
                Output::Event(event) => {
                    crate::metrics::event(&event);
                    log_event(&event);
                }
                Output::Close { session } => {
                    if let Some(conn) = self.conns.get_mut(&session) {
                        conn.end();
                    }
                    self.emit(RoundOutput::Close { session });
                }
                Output::Persist(op) => self.commits.persist(op),
                Output::Barrier { session } => self.barrier(session),
                Output::Send { session, line } => {
                    crate::metrics::line(&line);
                    let delivery = match &line {
                        ServerLine::Deliver(m) => Some(m.id),
                        _ => None,
                    };
                    let ack = acks::may_wait(&line);
                    let bytes = self.lines.bytes(&line);
                    self.emit(RoundOutput::Send {
                        session,
                        bytes,
                        delivery,
                        ack,
                    });
                }
                Output::NotifyWritten { session } => {
                    self.emit(RoundOutput::NotifyWritten { session });
                }
                Output::LoadHeld(request) => {
                    let ticket = self.commits.ticket_of_everything();
                    self.loads.push((ticket, request));
                }
            }
        }
    }

    /// Ends a round: forgets closed connections, drops peers that stopped
    /// reading (which the core hears of at once, in a round of its own),
    /// and seals the round's changes for a commit.
    fn finish_round(&mut self) -> Result<(), RunError> {
        loop {
            for session in std::mem::take(&mut self.forget) {
                self.conns.remove(&session);
                // Nobody left to send them to.
                self.commits.forget(session);
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
            if self.internal.is_empty() {
                self.seal()?;
                return Ok(self.load_pages()?);
            }
            let now = self.clock.now();
            while let Some(input) = self.internal.pop_front() {
                self.feed(now, input);
            }
        }
    }

    /// Acts on one output that waits for nothing (any more).
    fn dispatch(&mut self, output: RoundOutput) {
        match output {
            RoundOutput::Send {
                session,
                bytes,
                delivery,
                ack,
            } => {
                let quiet = ack && self.quiet_acks.enabled();
                if self
                    .send(session, bytes, delivery.is_some(), quiet)
                    .is_err()
                {
                    self.dead.push(session);
                }
            }
            RoundOutput::Close { session } => {
                // Dropping the queue makes the writer flush what is
                // queued and shut the socket down.
                self.conns.remove(&session);
            }
            RoundOutput::NotifyWritten { session } => {
                if let Some(conn) = self.conns.get(&session) {
                    conn.out.mark();
                }
            }
        }
    }

    /// Queues one line for a session, `quiet` without waking its writer
    /// (`acks.rs`); `Err` if its peer stopped reading.
    fn send(
        &mut self,
        session: SessionId,
        bytes: Bytes,
        delivery: bool,
        quiet: bool,
    ) -> Result<(), Dead> {
        let Some(conn) = self.conns.get_mut(&session) else {
            return Ok(());
        };
        if delivery {
            tracing::debug!(%session, "-> {}", shown(&bytes));
        } else {
            tracing::trace!(%session, "-> {}", shown(&bytes));
        }
        let flushed = !conn.out.unflushed();
        let pushed = if quiet {
            self.quiet_acks.queued(session);
            conn.out.push_quiet(bytes, &self.limit, &self.clock)
        } else {
            conn.out.push(bytes, &self.limit, &self.clock)
        };
        if flushed && conn.out.unflushed() {
            self.unflushed.push(session);
        }
        pushed
    }

    /// Ends a round's writing: the lines it queued go to their sockets
    /// (plain TCP) or wake their writers.
    fn flush_lines(&mut self) {
        if self.unflushed.is_empty() {
            return;
        }
        let now_ms = self.clock.elapsed_ms();
        for session in self.unflushed.drain(..) {
            if let Some(conn) = self.conns.get_mut(&session) {
                conn.out.flush(now_ms);
            }
        }
    }

    /// Wakes the writers of `OK`s that waited `ok_delay` for company.
    fn wake_acks(&mut self) {
        for session in self.quiet_acks.take() {
            if let Some(conn) = self.conns.get_mut(&session) {
                conn.out.wake();
            }
        }
    }

    /// A new connection: refused if over the limits, else a session.
    fn accept(&mut self, stream: TcpStream, peer: std::net::SocketAddr) {
        let ip = peer.ip().to_canonical();
        let Some(permit) = self.limiter.try_acquire(ip) else {
            tracing::warn!(%peer, "refused: too many connections");
            crate::metrics::refused(self.transport());
            self.refuse(stream);
            return;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        let session = self.server.open_session(self.clock.now(), ip);
        tracing::debug!(%session, %peer, "connected");
        let (transport, socket) = match &self.tls {
            Some(tls) => (Transport::Tls(stream, tls.clone()), None),
            None => {
                let socket = Arc::new(stream);
                (Transport::Plain(Arc::clone(&socket)), Some(socket))
            }
        };
        let reader = socket.as_ref().map(|socket| {
            Reader::new(
                session,
                Arc::clone(socket),
                self.max_line_bytes,
                &self.ready,
            )
        });
        let (out, out_rx) = outbound(&self.clock, socket);
        let params = ConnParams {
            session,
            peer,
            max_line_bytes: self.max_line_bytes,
            inputs: self.inputs.clone(),
            clock: self.clock,
            close_grace: self.limit.stall_grace,
        };
        let open = crate::metrics::OpenConnection::new(self.transport());
        let abort = self.tasks.spawn(async move {
            let _open = open;
            run_connection(transport, params, out_rx, permit).await;
        });
        self.adopt(session, out, abort, reader);
    }

    /// Keeps a new connection's queue and task (of either transport), and
    /// acts on what the core said when it opened the session.
    fn adopt(
        &mut self,
        session: SessionId,
        out: Outbound,
        abort: AbortHandle,
        reader: Option<Reader>,
    ) {
        let conn = Conn {
            out,
            abort,
            live: true,
            reader,
        };
        if let Some(old) = self.conns.insert(session, conn) {
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
        let mut result = self.finish_round();
        if result.is_ok() {
            // If the disk is still full after one last try, the changes
            // waiting are lost, but none of them was acknowledged: their
            // lines are still held.
            result = self.flush_commits().await;
        }
        // Drop every queue (writers flush and close) and the input channel
        // (TLS readers stop at their next line; plain sockets are read
        // here, and no longer).
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

/// A line as logs show it: without its `\n`.
fn shown(line: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(line))
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
                _ => "other",
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
        other => tracing::info!(event = ?other, "event"),
    }
}
