//! How the web listener hands WebSocket connections to the driver, so that
//! each becomes a session of the same [`chatcore::Server`] as the TCP ones,
//! under the same connection limits; and how it asks whether the core task
//! still turns (`/healthz`).
//!
//! The HTTP side runs in its own tasks (axum's): it checks the `Origin`,
//! works out the client's address and completes the upgrade, then sends the
//! socket here over a bounded channel that the driver's round loop reads
//! next to its TCP listener.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use tokio::sync::{mpsc, oneshot};

use super::{Driver, Prepared, MAX_REFUSALS_IN_FLIGHT, REFUSAL};
use crate::http::ws::{run_ws, WsParams};
use crate::metrics::{self, OpenConnection, Transport};
use crate::outbound::outbound;

/// Upgraded connections waiting for the driver at most; past it the web
/// listener closes new ones at once (the core is behind: adding sessions
/// would only make it more so).
pub const WEB_HANDOFF_QUEUE: usize = 256;

/// A request from the web listener to the driver.
#[derive(Debug)]
pub enum WebRequest {
    /// A new WebSocket connection, to become a session.
    Connect(Box<WsConnection>),
    /// `/healthz`: answer once the round loop gets to it.
    Ping(oneshot::Sender<()>),
}

/// An upgraded WebSocket connection and who it is from.
#[derive(Debug)]
pub struct WsConnection {
    /// The socket.
    pub socket: WebSocket,
    /// The TCP peer (a proxy's address when one is trusted), for logs.
    pub peer: SocketAddr,
    /// The client's address, for the limits and lockout: the peer's, or
    /// from `X-Forwarded-For` when the peer is a trusted proxy.
    pub ip: IpAddr,
}

/// The web listener's end of the hand-over channel.
#[derive(Debug, Clone)]
pub struct WebHandoff {
    tx: mpsc::Sender<WebRequest>,
}

impl WebHandoff {
    /// Hands a connection to the driver. `false` if it is not taken (the
    /// queue is full or the driver has stopped); the socket is then
    /// dropped, which closes it.
    pub fn connect(&self, conn: WsConnection) -> bool {
        self.tx
            .try_send(WebRequest::Connect(Box::new(conn)))
            .is_ok()
    }

    /// Whether the core task answers within `within`.
    pub async fn ping(&self, within: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        tokio::time::timeout(within, async {
            self.tx.send(WebRequest::Ping(tx)).await.is_ok() && rx.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

impl Prepared {
    /// The channel over which the web listener hands connections to the
    /// server that [`Prepared::run`] starts. Only one web listener: a
    /// second call replaces the first channel.
    pub fn web_handoff(&mut self) -> WebHandoff {
        let (tx, rx) = mpsc::channel(WEB_HANDOFF_QUEUE);
        self.web = Some(rx);
        WebHandoff { tx }
    }

    /// The chat port's TLS configuration, which the web listener shares.
    pub fn tls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.clone()
    }
}

/// The next request from the web listener; never resolves without one.
pub(super) async fn next_web(rx: &mut Option<mpsc::Receiver<WebRequest>>) -> Option<WebRequest> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    /// Acts on one request of the web listener.
    pub(super) fn web_request(&mut self, request: WebRequest) {
        match request {
            WebRequest::Ping(tx) => {
                let _ = tx.send(());
            }
            WebRequest::Connect(conn) => self.accept_ws(*conn),
        }
    }

    /// A WebSocket connection: refused if over the limits, else a session,
    /// exactly as [`Driver::accept`] does for TCP.
    fn accept_ws(&mut self, conn: WsConnection) {
        let WsConnection { socket, peer, ip } = conn;
        let ip = ip.to_canonical();
        let Some(permit) = self.limiter.try_acquire(ip) else {
            tracing::warn!(%peer, %ip, "refused a WebSocket: too many connections");
            metrics::refused(Transport::Ws);
            self.refuse_ws(socket);
            return;
        };
        let session = self.server.open_session(self.clock.now(), ip);
        tracing::debug!(%session, %peer, %ip, "connected over WebSocket");
        let (out, out_rx) = outbound(&self.clock, None);
        let params = WsParams {
            session,
            peer,
            max_line_bytes: self.max_line_bytes,
            inputs: self.inputs.clone(),
            clock: self.clock,
        };
        let open = OpenConnection::new(Transport::Ws);
        let abort = self.tasks.spawn(async move {
            let _open = open;
            run_ws(socket, params, out_rx, permit).await;
        });
        self.adopt(session, out, abort, None);
    }

    /// Sends the refusal line as one frame and closes, without holding up
    /// the core; bounded like the TCP refusals.
    fn refuse_ws(&self, mut socket: WebSocket) {
        use std::sync::atomic::Ordering;
        let refusals = Arc::clone(&self.refusals);
        if refusals.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSALS_IN_FLIGHT {
            refusals.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        tokio::spawn(async move {
            let line = String::from_utf8_lossy(REFUSAL).trim_end().to_owned();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                socket.send(Message::Text(line.into())).await?;
                socket.send(Message::Close(None)).await
            })
            .await;
            refusals.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl Driver {
    /// The chat port's transport, the metrics' label.
    pub(super) fn transport(&self) -> Transport {
        if self.tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        }
    }
}
