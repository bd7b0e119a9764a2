//! The web client's files, embedded in the binary: no build step, nothing
//! from another host, so the page works offline and under the strict
//! Content-Security-Policy sent with every file.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its text.
    pub body: &'static str,
}

/// The page.
pub const INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("web/index.html"),
};

/// Its script.
pub const APP_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("web/app.js"),
};

/// Its style sheet.
pub const APP_CSS: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_str!("web/app.css"),
};

/// Everything comes from this server, nothing is inline (so an injected
/// `<script>` or `onerror=` cannot run), and the page cannot be framed.
/// `connect-src 'self'` covers the page's own `ws:`/`wss:` origin.
pub const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self'; \
                       base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The file with its security headers.
pub fn page(asset: Asset) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        asset.body,
    )
        .into_response()
}
