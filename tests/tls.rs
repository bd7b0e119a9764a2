//! TLS (PROTOCOL.md §1, §9, §11): chatd with `tls_cert`/`tls_key` speaks
//! CHAT/1 inside TLS only; `chatc --tls [--ca FILE]` verifies the server's
//! certificate for HOST. Each test makes its own CA and server certificate
//! (for `localhost` and `127.0.0.1`) with rcgen, so nothing depends on the
//! machine's trust store.
//!
//! As in the rest of the suite, nothing sleeps to synchronise: waits are on
//! replies, on closes and on process exits, each bounded.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

const USERS: &[(&str, &str)] = &[("alice", "alice-pw"), ("bob", "bob-pw")];

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A test CA and a server certificate it signed, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca_der: Vec<u8>,
}

impl Pki {
    /// The CA certificate (`ca.pem`).
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's certificate chain (`cert.pem`).
    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The server's private key (`key.pem`).
    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// The config lines that turn TLS on with these files.
    fn config(&self) -> [String; 2] {
        [
            format!("tls_cert = {:?}", path_str(&self.cert())),
            format!("tls_key = {:?}", path_str(&self.key())),
        ]
    }

    /// A rustls client configuration trusting only this CA.
    fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone().into()).unwrap();
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// Makes a CA and a server certificate for `localhost` and `127.0.0.1`.
fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let dir = tempfile::Builder::new()
        .prefix("chat-tls-test-")
        .tempdir()
        .unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "chat test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);

    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();

    let pki = Pki {
        dir,
        ca_der: ca_cert.der().to_vec(),
    };
    std::fs::write(pki.ca(), ca_cert.pem()).unwrap();
    std::fs::write(pki.cert(), cert.pem()).unwrap();
    std::fs::write(pki.key(), key.serialize_pem()).unwrap();
    pki
}

/// A chatd serving TLS with `pki`'s certificate, plus `extra` config.
fn tls_server(pki: &Pki, extra: &[&str]) -> TestServer {
    let tls = pki.config();
    let mut config: Vec<&str> = tls.iter().map(String::as_str).collect();
    config.extend_from_slice(extra);
    let server = TestServer::with(USERS, &config);
    // Logged before the listening line, but read from stderr by another
    // thread: wait for it, briefly.
    poll_until("chatd logs that TLS is on", LINE_TIMEOUT, || {
        server.stderr().contains("TLS on").then_some(())
    });
    server
}

// ---------------------------------------------------------------------------
// A TLS client
// ---------------------------------------------------------------------------

/// A CHAT/1 client over tokio-rustls that answers `IDLE` probes itself.
struct TlsClient {
    stream: AsyncBufReader<TlsStream<TcpStream>>,
    label: String,
    seen: Vec<String>,
}

impl TlsClient {
    /// Connects and completes the handshake, verifying the server as
    /// `name`.
    async fn connect(addr: SocketAddr, config: ClientConfig, name: &str) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let tls = tokio::time::timeout(
            LINE_TIMEOUT,
            TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .expect("TLS handshake timed out")?;
        Ok(TlsClient {
            stream: AsyncBufReader::new(tls),
            label: format!("tls@{addr}"),
            seen: Vec::new(),
        })
    }

    /// Connects trusting `pki`'s CA, as `localhost`.
    async fn new(addr: SocketAddr, pki: &Pki) -> Self {
        let config = pki.client_config(&[&rustls::version::TLS13, &rustls::version::TLS12]);
        TlsClient::connect(addr, config, "localhost")
            .await
            .expect("TLS connect")
    }

    async fn send(&mut self, line: &str) {
        let s = self.stream.get_mut();
        s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        s.flush().await.unwrap();
    }

    /// The next line that is not an `IDLE` probe; `None` at a clean close.
    async fn recv(&mut self) -> Option<String> {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(LINE_TIMEOUT, self.stream.read_line(&mut line))
                .await
                .unwrap_or_else(|_| panic!("{}: no line; so far {:#?}", self.label, self.seen))
                .unwrap_or_else(|e| panic!("{}: read failed: {e}", self.label));
            if n == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n').to_owned();
            if let Some(seq) = probe_seq(&line) {
                self.send(&format!("idle {seq}")).await;
                continue;
            }
            self.seen.push(line.clone());
            return Some(line);
        }
    }

    async fn line(&mut self) -> String {
        match self.recv().await {
            Some(line) => line,
            None => panic!("{}: closed; so far {:#?}", self.label, self.seen),
        }
    }

    async fn expect(&mut self, want: &str) {
        let got = self.line().await;
        assert_eq!(got, want, "{}: so far {:#?}", self.label, self.seen);
    }

    /// `HELLO`, the two `ASK`s, `OK login`, and a `whoelse` barrier.
    async fn login(&mut self, user: &str, password: &str) {
        self.label = format!("{user} (tls)");
        self.expect("HELLO CHAT/1").await;
        self.expect("ASK username").await;
        self.send(user).await;
        self.expect("ASK password").await;
        self.send(password).await;
        self.expect(&format!("OK login {user}")).await;
        self.send("whoelse").await;
        let who = self.line().await;
        assert!(who.starts_with("WHO"), "{}: {who:?}", self.label);
    }

    async fn logout(mut self) {
        self.send("logout").await;
        self.expect("BYE logout").await;
        assert_eq!(
            self.recv().await,
            None,
            "{}: expected the close",
            self.label
        );
    }
}

/// Reads a raw TCP connection until the server closes it (bounded by
/// `timeout`); returns everything received.
fn read_until_closed(stream: &mut StdTcpStream, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "connection still open after {timeout:?}; got {got:?}"
        );
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tls_clients_log_in_and_chat() {
    let pki = pki();
    let server = tls_server(&pki, &[]);
    let mut alice = TlsClient::new(server.addr(), &pki).await;
    alice.login("alice", "alice-pw").await;
    let mut bob = TlsClient::new(server.addr(), &pki).await;
    bob.login("bob", "bob-pw").await;

    alice.send("message bob hi over tls").await;
    alice.expect("OK message bob delivered").await;
    let got = bob.line().await;
    let d = Delivery::parse(&got).unwrap_or_else(|| panic!("not a delivery: {got:?}"));
    assert_eq!(
        (d.kind.as_str(), d.from.as_str(), d.text.as_str()),
        ("MSG", "alice", "hi over tls")
    );
    bob.send("whoelse").await;
    bob.expect("WHO alice").await;
    alice.logout().await;
    bob.logout().await;
}

#[tokio::test]
async fn tls_1_2_is_enough() {
    let pki = pki();
    let server = tls_server(&pki, &[]);
    let config = pki.client_config(&[&rustls::version::TLS12]);
    let mut c = TlsClient::connect(server.addr(), config, "127.0.0.1")
        .await
        .expect("a TLS 1.2 client connects, verifying the IP address");
    let version = c.stream.get_ref().get_ref().1.protocol_version();
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
    c.login("alice", "alice-pw").await;
    c.logout().await;
}

#[tokio::test]
async fn a_plain_client_gets_no_greeting_and_tls_goes_on() {
    let pki = pki();
    let server = tls_server(&pki, &[]);
    let mut plain = StdTcpStream::connect(server.addr()).unwrap();
    // What a plain CHAT/1 client would send: not a TLS record, so the
    // handshake fails at once and the server closes.
    plain.write_all(b"alice\nalice-pw\n").unwrap();
    let got = read_until_closed(&mut plain, LINE_TIMEOUT);
    assert!(
        !contains(&got, b"HELLO") && !contains(&got, b"ASK"),
        "plain text leaked on the TLS port: {:?}",
        String::from_utf8_lossy(&got)
    );
    let mut alice = TlsClient::new(server.addr(), &pki).await;
    alice.login("alice", "alice-pw").await;
    alice.logout().await;
}

#[tokio::test]
async fn a_silent_handshake_times_out_without_blocking_others() {
    let pki = pki();
    let server = tls_server(&pki, &["login_timeout = 3"]);
    let opened = Instant::now();
    let mut silent = StdTcpStream::connect(server.addr()).unwrap();
    // While it holds its handshake open, others connect, log in and chat.
    let mut alice = TlsClient::new(server.addr(), &pki).await;
    alice.login("alice", "alice-pw").await;
    let mut bob = TlsClient::new(server.addr(), &pki).await;
    bob.login("bob", "bob-pw").await;
    alice.send("message bob still here").await;
    alice.expect("OK message bob delivered").await;
    let got = bob.line().await;
    assert!(got.ends_with(" alice still here"), "{got:?}");
    // Then the silent one is closed, having been sent nothing, once the
    // login timeout has passed.
    let got = read_until_closed(&mut silent, LINE_TIMEOUT);
    assert!(got.is_empty(), "sent {got:?} before a handshake");
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(2900),
        "closed after {waited:?}, before login_timeout"
    );
    alice.logout().await;
    bob.logout().await;
}

#[tokio::test]
async fn a_pending_handshake_counts_against_the_connection_limits() {
    let pki = pki();
    let server = tls_server(&pki, &["max_connections_per_ip = 1"]);
    let silent = StdTcpStream::connect(server.addr()).unwrap();
    // The silent connection holds the one place: a TLS client is closed
    // without a handshake (no plain-text note on a TLS port).
    let config = pki.client_config(&[&rustls::version::TLS13]);
    assert!(
        TlsClient::connect(server.addr(), config, "localhost")
            .await
            .is_err(),
        "over the limit, the handshake must fail"
    );
    // Once it goes, its place is free again.
    drop(silent);
    let deadline = Instant::now() + LINE_TIMEOUT;
    let mut alice = loop {
        let config = pki.client_config(&[&rustls::version::TLS13]);
        if let Ok(c) = TlsClient::connect(server.addr(), config, "localhost").await {
            break c;
        }
        assert!(Instant::now() < deadline, "the place was never freed");
        // Polling for the server to notice the close: bounded and short.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    alice.login("alice", "alice-pw").await;
    alice.logout().await;
}

/// Runs chatc with `args` against `addr` (stdin `input`, then closed) and
/// returns its status, stdout lines and stderr.
fn run_chatc(addr: SocketAddr, args: &[&str], input: &str) -> (Option<i32>, Vec<String>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatc"))
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(args)
        .env("TZ", "UTC")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatc");
    {
        let mut stdin = child.stdin.take().unwrap();
        // chatc may have exited already (a refused certificate).
        let _ = stdin.write_all(input.as_bytes());
    }
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let out = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + LINE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chatc did not exit; stderr: {}", err.join().unwrap());
        }
        // Polling a process for exit: bounded, not a synchronisation sleep.
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code(), out.join().unwrap(), err.join().unwrap())
}

#[tokio::test]
async fn chatc_with_the_ca_chats_over_tls() {
    let pki = pki();
    let server = tls_server(&pki, &[]);
    let mut bob = TlsClient::new(server.addr(), &pki).await;
    bob.login("bob", "bob-pw").await;
    let ca = pki.ca();
    let (code, out, err) = run_chatc(
        server.addr(),
        &["--tls", "--ca", path_str(&ca), "--user", "alice"],
        "alice-pw\nwhoelse\nmessage bob hello from chatc\n",
    );
    assert_eq!(code, Some(0), "stdout {out:#?}\nstderr {err}");
    assert_eq!(
        out,
        [
            "logged in as alice",
            "online: bob",
            "delivered to bob",
            "logged out"
        ],
        "stderr {err}"
    );
    let got = bob.line().await;
    let d = Delivery::parse(&got).unwrap_or_else(|| panic!("not a delivery: {got:?}"));
    assert_eq!(
        (d.from.as_str(), d.text.as_str()),
        ("alice", "hello from chatc")
    );
}

#[tokio::test]
async fn chatc_refuses_an_untrusted_certificate() {
    let pki = pki();
    let server = tls_server(&pki, &[]);
    let (code, out, err) = run_chatc(
        server.addr(),
        &["--tls", "--user", "alice"],
        "alice-pw\nwhoelse\n",
    );
    assert_eq!(code, Some(1), "stdout {out:#?}\nstderr {err}");
    assert!(out.is_empty(), "{out:#?}");
    assert!(
        err.contains("the server's certificate is not trusted: "),
        "{err}"
    );
    assert!(err.contains("--ca"), "the message should say how: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // The server carries on.
    let mut alice = TlsClient::new(server.addr(), &pki).await;
    alice.login("alice", "alice-pw").await;
    alice.logout().await;
}

#[test]
fn chatc_tls_against_a_plain_server_says_so() {
    let pki = pki();
    let server = TestServer::start(Opts::users(USERS));
    let ca = pki.ca();
    let (code, out, err) = run_chatc(
        server.addr(),
        &["--tls", "--ca", path_str(&ca)],
        "alice\nalice-pw\n",
    );
    assert_eq!(code, Some(1), "stdout {out:#?}\nstderr {err}");
    assert!(err.contains("is the server using TLS?"), "{err}");
}

#[test]
fn chatc_bad_ca_file_is_a_usage_error() {
    let pki = pki();
    let missing = pki.dir.path().join("missing.pem");
    // No server: the file is checked before connecting.
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (code, _, err) = run_chatc(addr, &["--tls", "--ca", path_str(&missing)], "");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing.pem"), "{err}");
    let (code, _, err) = run_chatc(addr, &["--ca", path_str(&pki.ca())], "");
    assert_eq!(code, Some(2), "--ca without --tls: {err}");
}

/// Runs chatd on port 0 with a config file holding `config`; returns the
/// result (it is expected to fail before listening).
fn chatd_with_config(dir: &Path, config: &str) -> RunOutput {
    let conf = dir.join("chatd.toml");
    let users = dir.join("users.txt");
    std::fs::write(&conf, config).unwrap();
    std::fs::write(&users, "alice alice-pw\n").unwrap();
    let data = dir.join("data");
    run_chatd(
        &[
            "127.0.0.1",
            "0",
            "--config",
            path_str(&conf),
            "--users",
            path_str(&users),
            "--data-dir",
            path_str(&data),
        ],
        "",
        START_TIMEOUT,
    )
}

#[test]
fn chatd_tls_config_errors_are_named() {
    let pki = pki();
    let dir = pki.dir.path();
    let [cert_line, key_line] = pki.config();

    let out = chatd_with_config(dir, &cert_line);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out:?}");
    assert!(out.stderr.contains("`tls_key`"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");

    let out = chatd_with_config(dir, &key_line);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out:?}");
    assert!(out.stderr.contains("`tls_cert`"), "{out:?}");

    // A file that cannot be read is a startup failure (1, like an
    // unreadable users file), on one line naming the file.
    let missing = dir.join("no-such-cert.pem");
    let config = format!("tls_cert = {:?}\n{key_line}\n", path_str(&missing));
    let out = chatd_with_config(dir, &config);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("chatd: cannot read TLS certificate file")
            && last.contains(path_str(&missing)),
        "{out:?}"
    );
    assert!(
        out.stdout.is_empty(),
        "never said it was listening: {out:?}"
    );

    // A key file that holds no key.
    let config = format!("{cert_line}\ntls_key = {:?}\n", path_str(&pki.ca()));
    let out = chatd_with_config(dir, &config);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("TLS key file") && out.stderr.contains("ca.pem"),
        "{out:?}"
    );
}
