//! Prometheus metrics (`chatd_*`, served on the web listener's `/metrics`).
//!
//! The core knows nothing of metrics: it reports [`Event`]s and lines, and
//! this module maps them to counters here, in the driver's process. Every
//! name is declared once below with its help text, so `/metrics` lists
//! each metric from the start (at zero) rather than only after its first
//! occurrence.

use std::sync::OnceLock;
use std::time::Duration;

use chatcore::wire::{ErrorReply, ServerLine};
use chatcore::{Event, LoginFailure};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Open connections, by `transport` (`tcp`, `tls`, `ws`).
pub const CONNECTIONS_OPEN: &str = "chatd_connections_open";
/// Logged-in sessions.
pub const SESSIONS: &str = "chatd_sessions_logged_in";
/// Login attempts, by `outcome`.
pub const LOGINS: &str = "chatd_logins_total";
/// `message` and `broadcast` commands accepted (answered `OK`).
pub const ACCEPTED: &str = "chatd_messages_accepted_total";
/// `MSG`/`BCAST` lines handed to connections, live or from the box.
pub const DELIVERED: &str = "chatd_messages_delivered_total";
/// Copies held for offline or busy recipients.
pub const HELD: &str = "chatd_messages_held_total";
/// Deliveries never confirmed whose session ended: held again, to be
/// delivered again at the next login.
pub const REDELIVERED: &str = "chatd_messages_redelivered_total";
/// How long one store commit took.
pub const COMMIT_SECONDS: &str = "chatd_store_commit_seconds";
/// Bytes queued for connections and not yet written to their sockets.
pub const OUTBOUND_BYTES: &str = "chatd_outbound_queue_bytes";
/// Lines refused by flood control (`ERR rate-limited`).
pub const FLOOD_REFUSALS: &str = "chatd_flood_refusals_total";
/// Connections refused for `max_connections`/`max_connections_per_ip`
/// (or a full hand-over queue on the web listener), by `transport`.
pub const CONNECTION_REFUSALS: &str = "chatd_connection_refusals_total";

/// The commit histogram's buckets, in seconds: a commit is a few hundred
/// microseconds on an idle SSD and seconds on a choking disk.
const COMMIT_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A connection's transport, the `transport` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The chat port, plain.
    Tcp,
    /// The chat port with TLS.
    Tls,
    /// CHAT/1 over WebSocket on the web listener.
    Ws,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
        }
    }
}

/// Installs the process-wide recorder (once; later calls get the same
/// handle, as in-process tests start several servers) and returns the
/// handle `/metrics` renders.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(COMMIT_SECONDS.into()), COMMIT_BUCKETS)
                .expect("the commit buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed (a library user's):
            // then /metrics shows nothing, which is their choice.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder is already installed: /metrics stays empty");
            }
            describe();
            handle
        })
        .clone()
}

/// Help texts, and every series at zero so a scrape sees it from the start.
fn describe() {
    describe_gauge!(CONNECTIONS_OPEN, "Open connections by transport");
    describe_gauge!(SESSIONS, "Logged-in sessions");
    describe_counter!(LOGINS, "Login attempts by outcome");
    describe_counter!(ACCEPTED, "message and broadcast commands accepted");
    describe_counter!(DELIVERED, "MSG and BCAST lines handed to connections");
    describe_counter!(HELD, "Message copies held for offline or busy users");
    describe_counter!(
        REDELIVERED,
        "Unconfirmed deliveries held again when their session ended"
    );
    describe_histogram!(
        COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Duration of one store commit"
    );
    describe_gauge!(
        OUTBOUND_BYTES,
        metrics::Unit::Bytes,
        "Bytes queued for connections, not yet written"
    );
    describe_counter!(FLOOD_REFUSALS, "Lines refused by flood control");
    describe_counter!(
        CONNECTION_REFUSALS,
        "Connections refused by the connection limits, by transport"
    );
    for t in [Transport::Tcp, Transport::Tls, Transport::Ws] {
        gauge!(CONNECTIONS_OPEN, "transport" => t.label()).set(0.0);
        counter!(CONNECTION_REFUSALS, "transport" => t.label()).absolute(0);
    }
    gauge!(SESSIONS).set(0.0);
    for outcome in ["ok", "bad-credentials", "blocked", "already-online"] {
        counter!(LOGINS, "outcome" => outcome).absolute(0);
    }
    for name in [ACCEPTED, DELIVERED, HELD, REDELIVERED, FLOOD_REFUSALS] {
        counter!(name).absolute(0);
    }
    gauge!(OUTBOUND_BYTES).set(0.0);
}

/// Counts one core event.
pub fn event(event: &Event) {
    match event {
        Event::LoggedIn { .. } => {
            counter!(LOGINS, "outcome" => "ok").increment(1);
            gauge!(SESSIONS).increment(1.0);
        }
        Event::LoginFailed { reason, .. } => {
            let outcome = match reason {
                LoginFailure::BadCredentials => "bad-credentials",
                LoginFailure::AlreadyOnline => "already-online",
                LoginFailure::Blocked => "blocked",
                _ => "other",
            };
            counter!(LOGINS, "outcome" => outcome).increment(1);
        }
        Event::SessionEnded { requeued, .. } => {
            gauge!(SESSIONS).decrement(1.0);
            counter!(REDELIVERED).increment(*requeued as u64);
        }
        _ => {}
    }
}

/// The handles touched for every line, looked up once: a lookup by name
/// hashes the name and locks the registry, which showed in profiles of a
/// broadcast to 1000 (a delivery counted and its bytes queued per
/// receiver). Made on first use, after [`install`].
fn delivered() -> &'static metrics::Counter {
    static HANDLE: OnceLock<metrics::Counter> = OnceLock::new();
    HANDLE.get_or_init(|| counter!(DELIVERED))
}

/// See [`delivered`].
fn accepted() -> &'static metrics::Counter {
    static HANDLE: OnceLock<metrics::Counter> = OnceLock::new();
    HANDLE.get_or_init(|| counter!(ACCEPTED))
}

/// See [`delivered`].
fn held() -> &'static metrics::Counter {
    static HANDLE: OnceLock<metrics::Counter> = OnceLock::new();
    HANDLE.get_or_init(|| counter!(HELD))
}

/// See [`delivered`].
fn outbound_bytes() -> &'static metrics::Gauge {
    static HANDLE: OnceLock<metrics::Gauge> = OnceLock::new();
    HANDLE.get_or_init(|| gauge!(OUTBOUND_BYTES))
}

/// Counts one line the core sends: the replies to `message` and
/// `broadcast` say what was accepted and held, `MSG`/`BCAST` what was
/// delivered, `ERR rate-limited` what flood control refused.
pub fn line(line: &ServerLine) {
    match line {
        ServerLine::Deliver(_) => delivered().increment(1),
        ServerLine::Delivered { .. } => accepted().increment(1),
        ServerLine::Queued { .. } => {
            accepted().increment(1);
            held().increment(1);
        }
        ServerLine::Broadcasted { queued, .. } => {
            accepted().increment(1);
            held().increment(*queued as u64);
        }
        ServerLine::Err(ErrorReply::RateLimited { .. }) => counter!(FLOOD_REFUSALS).increment(1),
        _ => {}
    }
}

/// One store commit took `took`.
pub fn commit(took: Duration) {
    histogram!(COMMIT_SECONDS).record(took.as_secs_f64());
}

/// A connection refused by the limits.
pub fn refused(transport: Transport) {
    counter!(CONNECTION_REFUSALS, "transport" => transport.label()).increment(1);
}

/// `n` bytes were queued for a connection.
#[allow(clippy::cast_precision_loss)]
pub fn outbound_queued(n: usize) {
    outbound_bytes().increment(n as f64);
}

/// `n` queued bytes were written, or dropped with their connection.
#[allow(clippy::cast_precision_loss)]
pub fn outbound_written(n: usize) {
    outbound_bytes().decrement(n as f64);
}

/// Counts an open connection for as long as it lives.
#[derive(Debug)]
pub struct OpenConnection(Transport);

impl OpenConnection {
    /// One more open connection on `transport`, until dropped.
    pub fn new(transport: Transport) -> OpenConnection {
        gauge!(CONNECTIONS_OPEN, "transport" => transport.label()).increment(1.0);
        OpenConnection(transport)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        gauge!(CONNECTIONS_OPEN, "transport" => self.0.label()).decrement(1.0);
    }
}
