//! The web listener against the real binary, without a browser: CHAT/1
//! over WebSocket (the same core and limits as TCP), the origin check,
//! client addresses behind trusted proxies, `/metrics`, `/healthz`,
//! `/readyz`, and the headers of the page. The browser itself is
//! `tests/web.rs`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

const USERS: &[(&str, &str)] = &[("alice", "pw-a"), ("bob", "pw-b")];

type Ws = WebSocket<TcpStream>;

/// Opens `/ws` with these extra request headers; the handshake's error
/// (a refusal is an HTTP status) on failure.
fn ws_with(web: SocketAddr, headers: &[(&str, &str)]) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("ws://{web}/ws").into_client_request().unwrap();
    for (k, v) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut()
            .append(name, HeaderValue::from_str(v).unwrap());
    }
    let stream = TcpStream::connect(web).unwrap();
    stream.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("handshake interrupted"),
    }
}

fn ws(web: SocketAddr) -> Ws {
    ws_with(web, &[]).expect("WebSocket handshake")
}

/// The next text frame; `IDLE` probes are answered and skipped. `None`
/// once the server closed.
fn frame(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let t = t.to_string();
                assert!(!t.contains('\n'), "a frame holds one line: {t:?}");
                if let Some(seq) = probe_seq(&t) {
                    ws.send(Message::text(format!("idle {seq}"))).unwrap();
                    continue;
                }
                return Some(t);
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn expect(ws: &mut Ws, want: &str) {
    assert_eq!(frame(ws).as_deref(), Some(want));
}

fn send(ws: &mut Ws, line: &str) {
    ws.send(Message::text(line)).unwrap();
}

fn ws_login(ws: &mut Ws, user: &str, password: &str) {
    expect(ws, "HELLO CHAT/1");
    expect(ws, "ASK username");
    send(ws, user);
    expect(ws, "ASK password");
    send(ws, password);
    expect(ws, &format!("OK login {user}"));
}

/// `GET path` over HTTP/1.1: the status and the whole response.
fn get(web: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    (status, text)
}

/// The value of one series in `/metrics`, e.g. `chatd_logins_total{outcome="ok"}`.
fn metric(web: SocketAddr, series: &str) -> f64 {
    let (status, text) = get(web, "/metrics");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

#[test]
fn websocket_is_chat1_with_the_tcp_rules() {
    let server = TestServer::with(USERS, &["max_line_bytes = 64"]);
    let web = server.web_addr().expect("web listener");
    let mut a = ws(web);
    ws_login(&mut a, "alice", "pw-a");
    let mut bob = server.login("bob", "pw-b");
    // Both ways between the transports, one line per frame.
    send(&mut a, "message bob hello from the web");
    expect(&mut a, "OK message bob delivered");
    let d = bob.expect_delivery();
    assert_eq!(
        (d.from.as_str(), d.text.as_str()),
        ("alice", "hello from the web")
    );
    bob.send("message alice and back");
    let got = frame(&mut a).unwrap();
    assert!(
        got.starts_with("MSG ") && got.ends_with(" bob and back"),
        "{got}"
    );
    bob.expect("OK message alice delivered");
    // A binary frame, a frame with a newline, a frame over max_line_bytes:
    // each gets the ERR a TCP line would, and the session goes on.
    a.send(Message::binary(b"whoelse".to_vec())).unwrap();
    expect(&mut a, "ERR bad-encoding");
    send(&mut a, "whoelse\nlogout");
    expect(&mut a, "ERR bad-encoding");
    send(&mut a, &format!("message bob {}", "x".repeat(60)));
    expect(&mut a, "ERR line-too-long 64");
    send(&mut a, "whoelse");
    expect(&mut a, "WHO bob");
    send(&mut a, "logout");
    expect(&mut a, "BYE logout");
    assert_eq!(frame(&mut a), None, "closed after BYE");
}

#[test]
fn foreign_origins_are_refused_and_listed_ones_allowed() {
    let server = TestServer::with(USERS, &["allowed_origins = [\"https://chat.example.org\"]"]);
    let web = server.web_addr().unwrap();
    let e = ws_with(web, &[("Origin", "http://evil.example")]).unwrap_err();
    assert!(
        matches!(&e, tungstenite::Error::Http(r) if r.status() == 403),
        "{e:?}"
    );
    // The page's own origin, a listed one, and none at all (not a browser).
    for origin in [
        Some(format!("http://{web}")),
        Some("https://chat.example.org".into()),
        None,
    ] {
        let headers: Vec<(&str, &str)> = origin.iter().map(|o| ("Origin", o.as_str())).collect();
        let mut c = ws_with(web, &headers).unwrap_or_else(|e| panic!("{origin:?}: {e}"));
        expect(&mut c, "HELLO CHAT/1");
    }
    assert!(server
        .stderr()
        .contains("refused a WebSocket from another origin"));
}

#[test]
fn connection_limits_count_websockets_too() {
    let server = TestServer::with(USERS, &["max_connections_per_ip = 2"]);
    let web = server.web_addr().unwrap();
    let mut tcp = server.client();
    tcp.expect("HELLO CHAT/1");
    let mut w = ws(web);
    expect(&mut w, "HELLO CHAT/1");
    // Third from 127.0.0.1: refused on either transport.
    let mut third = ws(web);
    expect(&mut third, "ERR rate-limited too many connections");
    assert_eq!(frame(&mut third), None);
    let refused = metric(web, "chatd_connection_refusals_total{transport=\"ws\"}");
    assert_eq!(refused, 1.0);
}

#[test]
fn lockout_uses_the_forwarded_address_only_behind_a_trusted_proxy() {
    let server = TestServer::with(
        USERS,
        &["trusted_proxies = [\"127.0.0.1\"]", "block_after = 2"],
    );
    let web = server.web_addr().unwrap();
    let fail = |xff: &str| {
        let mut c = ws_with(web, &[("X-Forwarded-For", xff)]).unwrap();
        expect(&mut c, "HELLO CHAT/1");
        expect(&mut c, "ASK username");
        send(&mut c, "alice");
        let got = frame(&mut c).unwrap();
        if got == "ASK password" {
            send(&mut c, "wrong");
            return frame(&mut c).unwrap();
        }
        got
    };
    assert_eq!(fail("6.6.6.6, 10.9.9.9"), "ERR bad-credentials");
    assert!(
        fail("10.9.9.9").starts_with("ERR blocked "),
        "same address: blocked"
    );
    // Another forwarded address is another client; what the client wrote
    // left of the proxy's entry is not believed.
    assert_eq!(fail("10.9.9.9, 10.8.8.8"), "ERR bad-credentials");
    // TCP from 127.0.0.1 (the proxy's own address) is not blocked either.
    let mut c = server.client();
    assert_eq!(c.login_attempt("alice", "pw-a"), "OK login alice");
}

#[test]
fn a_peer_that_is_no_trusted_proxy_cannot_pick_its_address() {
    let server = TestServer::with(USERS, &["block_after = 1"]);
    let web = server.web_addr().unwrap();
    let mut c = ws_with(web, &[("X-Forwarded-For", "10.1.1.1")]).unwrap();
    expect(&mut c, "HELLO CHAT/1");
    expect(&mut c, "ASK username");
    send(&mut c, "alice");
    expect(&mut c, "ASK password");
    send(&mut c, "wrong");
    assert!(frame(&mut c).unwrap().starts_with("ERR blocked "));
    // The block is on 127.0.0.1, whatever the next one claims.
    let mut c = ws_with(web, &[("X-Forwarded-For", "10.2.2.2")]).unwrap();
    expect(&mut c, "HELLO CHAT/1");
    expect(&mut c, "ASK username");
    send(&mut c, "alice");
    assert!(frame(&mut c).unwrap().starts_with("ERR blocked "));
}

#[test]
fn health_readiness_and_metrics_over_http() {
    let server = TestServer::with(
        USERS,
        &[
            "flood_burst = 1",
            "flood_per_second = 1",
            "flood_backlog = 1",
        ],
    );
    let web = server.web_addr().unwrap();
    assert_eq!(get(web, "/healthz").0, 200);
    assert_eq!(get(web, "/readyz").0, 200);
    assert_eq!(get(web, "/nothing-here").0, 404);
    let (_, page) = get(web, "/");
    let page = page.to_ascii_lowercase();
    assert!(
        page.contains("content-security-policy: default-src 'self'"),
        "{page}"
    );
    assert!(page.contains("input name=\"username\""));
    // Nothing in the page comes from another host.
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );

    assert_eq!(metric(web, "chatd_logins_total{outcome=\"ok\"}"), 0.0);
    let mut a = server.login("alice", "pw-a");
    let mut w = ws(web);
    ws_login(&mut w, "bob", "pw-b");
    assert_eq!(
        metric(web, "chatd_connections_open{transport=\"tcp\"}"),
        1.0
    );
    assert_eq!(metric(web, "chatd_connections_open{transport=\"ws\"}"), 1.0);
    assert_eq!(metric(web, "chatd_sessions_logged_in"), 2.0);
    let mut bad = server.client();
    assert_eq!(bad.login_attempt("alice", "nope"), "ERR bad-credentials");
    let mut twice = server.client();
    assert_eq!(twice.login_attempt("alice", "pw-a"), "ERR already-online");
    assert_eq!(metric(web, "chatd_logins_total{outcome=\"ok\"}"), 2.0);
    assert_eq!(
        metric(web, "chatd_logins_total{outcome=\"bad-credentials\"}"),
        1.0
    );
    assert_eq!(
        metric(web, "chatd_logins_total{outcome=\"already-online\"}"),
        1.0
    );

    // One delivered, one held for a busy user.
    a.send("message bob hi");
    a.expect("OK message bob delivered");
    expect_delivery_frame(&mut w);
    send(&mut w, "idle busy");
    expect(&mut w, "OK status busy");
    // flood_per_second = 1: wait for the token with a barrier-free retry.
    poll_until("a flood token", Duration::from_secs(5), || {
        a.send("message bob later");
        let got = a.line();
        (got == "OK message bob queued busy").then_some(())
    });
    assert_eq!(metric(web, "chatd_messages_delivered_total"), 1.0);
    assert!(metric(web, "chatd_messages_accepted_total") >= 2.0);
    assert_eq!(metric(web, "chatd_messages_held_total"), 1.0);
    // Past the burst and the backlog: refused.
    for _ in 0..5 {
        a.send("whoelse");
    }
    poll_until("a flood refusal", Duration::from_secs(10), || {
        (metric(web, "chatd_flood_refusals_total") >= 1.0).then_some(())
    });
    assert!(metric(web, "chatd_store_commit_seconds_count") >= 1.0);
    assert!(metric(web, "chatd_outbound_queue_bytes") >= 0.0);
    drop(w);
    poll_until(
        "the ws session counted closed",
        Duration::from_secs(10),
        || (metric(web, "chatd_connections_open{transport=\"ws\"}") == 0.0).then_some(()),
    );
}

fn expect_delivery_frame(w: &mut Ws) {
    let got = frame(w).unwrap();
    assert!(got.starts_with("MSG "), "{got}");
}

#[test]
fn the_web_listener_can_be_turned_off() {
    let server = TestServer::with(USERS, &["http = false"]);
    assert_eq!(server.web_addr(), None);
    assert!(!server.stdout().contains("chatd web on"));
    let mut a = server.login("alice", "pw-a");
    a.barrier();
}
