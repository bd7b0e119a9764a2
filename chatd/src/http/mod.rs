//! The web listener (`http`, `http_host`, `http_port`): the web client,
//! CHAT/1 over WebSocket on `/ws`, Prometheus metrics on `/metrics`, and
//! the health checks `/healthz` and `/readyz`.
//!
//! It never touches the core: a WebSocket connection is checked here (its
//! `Origin`, its client address) and handed to the driver
//! ([`WebHandoff`]), which makes it a session like a TCP one. With TLS
//! configured, the listener serves HTTPS with the chat port's certificate.

pub mod assets;
pub mod client_ip;
mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{IpNet, WebSettings};
use crate::driver::{WebHandoff, WsConnection};

/// How long `/healthz` waits for the core task to answer.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The TCP peer of a web request, as both listeners report it (a type of
/// our own, so the plain and the TLS listener give handlers the same
/// `ConnectInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebPeer(pub SocketAddr);

impl Connected<IncomingStream<'_, PlainListener>> for WebPeer {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> WebPeer {
        *stream.remote_addr()
    }
}

impl Connected<IncomingStream<'_, tls::TlsListener>> for WebPeer {
    fn connect_info(stream: IncomingStream<'_, tls::TlsListener>) -> WebPeer {
        *stream.remote_addr()
    }
}

/// The plain listener: TCP streams, with `TCP_NODELAY` as on the chat port.
struct PlainListener(TcpListener);

impl Listener for PlainListener {
    type Io = tokio::net::TcpStream;
    type Addr = WebPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, WebPeer(peer));
                }
                Err(e) => {
                    // Usually out of file descriptors: pause, do not spin.
                    tracing::warn!("web accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr().map(WebPeer)
    }
}

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    handoff: WebHandoff,
    metrics: PrometheusHandle,
    ready: Arc<AtomicBool>,
    allowed_origins: Arc<[String]>,
    trusted_proxies: Arc<[IpNet]>,
    max_line_bytes: usize,
}

/// A running web listener.
#[derive(Debug)]
pub struct WebServer {
    /// The address it listens on.
    pub local: SocketAddr,
    /// Whether it speaks HTTPS.
    pub tls: bool,
    task: JoinHandle<()>,
}

impl WebServer {
    /// `http://ADDR` or `https://ADDR`, as the log line says it.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.local)
    }

    /// Stops serving (open WebSocket sessions are the driver's and end
    /// with it).
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Binds `http_host:http_port`.
pub async fn bind(web: &WebSettings) -> std::io::Result<TcpListener> {
    TcpListener::bind((web.host.as_str(), web.port)).await
}

/// Everything the web listener needs from the rest of the server.
#[derive(Debug)]
pub struct WebParts {
    /// Where WebSocket connections go.
    pub handoff: WebHandoff,
    /// What `/metrics` renders.
    pub metrics: PrometheusHandle,
    /// Set once the store is loaded and the listeners are bound, cleared
    /// at shutdown: `/readyz`.
    pub ready: Arc<AtomicBool>,
    /// The chat port's TLS configuration, if it speaks TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `max_line_bytes`, the bound on a frame.
    pub max_line_bytes: usize,
    /// How long a TLS handshake may take (`login_timeout`).
    pub handshake_timeout: Duration,
}

/// Serves the web routes on `listener` in a task of its own.
pub fn start(
    listener: TcpListener,
    web: &WebSettings,
    parts: WebParts,
) -> std::io::Result<WebServer> {
    let local = listener.local_addr()?;
    let state = AppState {
        handoff: parts.handoff,
        metrics: parts.metrics,
        ready: parts.ready,
        allowed_origins: web.allowed_origins.clone().into(),
        trusted_proxies: web.trusted_proxies.clone().into(),
        max_line_bytes: parts.max_line_bytes,
    };
    let app = router(state).into_make_service_with_connect_info::<WebPeer>();
    let tls = parts.tls.is_some();
    let task = match parts.tls {
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(PlainListener(listener), app).await {
                tracing::error!("the web listener stopped: {e}");
            }
        }),
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config, parts.handshake_timeout);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("the web listener stopped: {e}");
                }
            })
        }
    };
    Ok(WebServer { local, tls, task })
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { assets::page(assets::INDEX) }))
        .route("/app.js", get(|| async { assets::page(assets::APP_JS) }))
        .route("/app.css", get(|| async { assets::page(assets::APP_CSS) }))
        .route("/ws", get(ws_upgrade))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

/// `/ws`: the origin check, the client's address, then the upgrade and
/// the hand-over to the driver.
async fn ws_upgrade(
    State(st): State<AppState>,
    ConnectInfo(WebPeer(peer)): ConnectInfo<WebPeer>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(origin) = check_origin(&headers, &st.allowed_origins) {
        tracing::warn!(%peer, origin, "refused a WebSocket from another origin");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let ip = client_ip::client_ip(peer.ip(), &headers, &st.trusted_proxies);
    let max = st.max_line_bytes.saturating_mul(ws::MAX_FRAME_FACTOR);
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            if !st.handoff.connect(WsConnection { socket, peer, ip }) {
                tracing::warn!(%peer, "WebSocket dropped: the server is not taking connections");
                crate::metrics::refused(crate::metrics::Transport::Ws);
            }
        })
}

/// `Ok` for a request without `Origin` (not from a browser page: a
/// browser always sends one on a WebSocket handshake), from the page's own
/// host, or from an origin in `allowed_origins`; else `Err` with the
/// origin, for the log.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim().to_ascii_lowercase();
    if allowed.contains(&origin) {
        return Ok(());
    }
    // The page's own origin: the same host (and port) the browser asked
    // for, which it puts in `Host`. Only the authority is compared, so a
    // page behind a TLS-terminating proxy still matches.
    let authority = origin.split_once("://").map(|(_, a)| a);
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    match (authority, host) {
        (Some(a), Some(h)) if !a.is_empty() && a == h => Ok(()),
        _ => Err(origin),
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        st.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(st): State<AppState>) -> Response {
    if st.handoff.ping(HEALTH_TIMEOUT).await {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the core task does not answer\n",
        )
            .into_response()
    }
}

async fn readyz(State(st): State<AppState>) -> Response {
    if st.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn origins_other_than_the_pages_own_are_refused() {
        let allowed = ["https://chat.example.org".to_owned()];
        let ok = |h: &[(&'static str, &str)]| check_origin(&headers(h), &allowed).is_ok();
        assert!(ok(&[]), "no Origin: not a browser");
        assert!(ok(&[
            ("host", "127.0.0.1:4180"),
            ("origin", "http://127.0.0.1:4180")
        ]));
        assert!(ok(&[
            ("host", "Chat.Example.org"),
            ("origin", "https://chat.example.org")
        ]));
        assert!(ok(&[
            ("host", "10.0.0.1:4180"),
            ("origin", "https://chat.example.org")
        ]));
        assert!(!ok(&[
            ("host", "127.0.0.1:4180"),
            ("origin", "http://evil.example")
        ]));
        assert!(!ok(&[
            ("host", "127.0.0.1:4180"),
            ("origin", "http://127.0.0.1:9999")
        ]));
        assert!(!ok(&[("host", "127.0.0.1:4180"), ("origin", "null")]));
        assert!(
            !ok(&[("origin", "http://127.0.0.1:4180")]),
            "no Host to compare"
        );
    }
}
