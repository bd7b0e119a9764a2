//! Reload without a restart (issue 14 item 5): on SIGHUP chatd reads the
//! users file and the TLS certificate and key again. New accounts can log
//! in, a changed password applies at the next login, a removed account
//! can no longer log in while its open session runs on, new handshakes get
//! the new certificate, and a file that cannot be parsed keeps the old
//! state, logs one error line and never stops the server.
//!
//! Each reload is waited for on chatd's own `reload finished` log line,
//! which it writes once the new accounts are in force; everything else
//! synchronises on replies.

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Sends SIGHUP and waits for the reload it starts to finish: the `n`th
/// `reload finished` line (reloads are counted from 1 per server).
fn reload(server: &TestServer, n: usize) {
    server.signal("HUP");
    poll_until("chatd logs `reload finished`", LINE_TIMEOUT, || {
        (server.stderr().matches("reload finished").count() >= n).then_some(())
    });
}

/// Lines chatd logged at level ERROR.
fn error_lines(server: &TestServer) -> Vec<String> {
    server
        .stderr()
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

/// Writes the users file anew, with cheap hashes as the harness does.
fn write_users(server: &TestServer, users: &[(&str, &str)]) {
    let mut text = String::new();
    for (user, password) in users {
        writeln!(text, "{user} {}", cheap_hash(password)).unwrap();
    }
    std::fs::write(server.users_path(), text).unwrap();
}

fn attempt(server: &TestServer, user: &str, password: &str) -> String {
    server.client().login_attempt(user, password)
}

#[test]
fn a_new_account_can_log_in_after_sighup() {
    let server = TestServer::with(&[("alice", "a-pw")], &[]);
    assert_eq!(attempt(&server, "erin", "e-pw"), "ERR bad-credentials");
    write_users(&server, &[("alice", "a-pw"), ("erin", "e-pw")]);
    reload(&server, 1);
    assert_eq!(attempt(&server, "erin", "e-pw"), "OK login erin");
    assert!(
        server.stderr().contains("added=1"),
        "the reload says what changed:\n{}",
        server.stderr()
    );
    assert!(error_lines(&server).is_empty(), "{}", server.stderr());
}

#[test]
fn a_changed_password_applies_at_the_next_login() {
    let server = TestServer::with(&[("alice", "a-pw"), ("bob", "b-pw")], &[]);
    let mut alice = server.login("alice", "a-pw");
    write_users(&server, &[("alice", "new-pw"), ("bob", "b-pw")]);
    reload(&server, 1);
    // The open session is not touched.
    assert_eq!(alice.whoelse(), Vec::<String>::new());
    alice.logout();
    assert_eq!(attempt(&server, "alice", "a-pw"), "ERR bad-credentials");
    assert_eq!(attempt(&server, "alice", "new-pw"), "OK login alice");
}

#[test]
fn a_removed_account_cannot_log_in_but_its_session_runs_on() {
    let server = TestServer::with(&[("alice", "a-pw"), ("bob", "b-pw")], &[]);
    let mut bob = server.login("bob", "b-pw");
    let mut alice = server.login("alice", "a-pw");
    write_users(&server, &[("alice", "a-pw")]);
    reload(&server, 1);
    assert_eq!(alice.whoelse(), ["bob"]);
    bob.send("message alice still here");
    bob.expect("OK message alice delivered");
    assert_eq!(alice.expect_delivery().text, "still here");
    // A second connection as bob is a new login: refused.
    assert_eq!(attempt(&server, "bob", "b-pw"), "ERR bad-credentials");
    bob.logout();
    assert_eq!(attempt(&server, "bob", "b-pw"), "ERR bad-credentials");
}

#[test]
fn a_users_file_that_fails_to_parse_keeps_the_accounts() {
    let server = TestServer::with(&[("alice", "a-pw")], &[]);
    std::fs::write(
        server.users_path(),
        "alice a-pw\nthis line has no\tpassword?\nbob\n",
    )
    .unwrap();
    reload(&server, 1);
    let errors = error_lines(&server);
    assert_eq!(errors.len(), 1, "one error line: {errors:#?}");
    assert!(
        errors[0].contains("users file") && errors[0].contains("line 3"),
        "it names the file and the line: {}",
        errors[0]
    );
    assert_eq!(attempt(&server, "alice", "a-pw"), "OK login alice");
    assert_eq!(attempt(&server, "bob", "x"), "ERR bad-credentials");
    // A missing file is the same, and a good file afterwards applies.
    std::fs::remove_file(server.users_path()).unwrap();
    reload(&server, 2);
    assert_eq!(error_lines(&server).len(), 2, "{}", server.stderr());
    write_users(&server, &[("alice", "a-pw"), ("bob", "b-pw")]);
    reload(&server, 3);
    assert_eq!(attempt(&server, "bob", "b-pw"), "OK login bob");
    assert_eq!(error_lines(&server).len(), 2, "{}", server.stderr());
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// A CA and a server certificate for `localhost` it signed: the CA in DER,
/// the certificate and key in PEM.
struct Pki {
    ca_der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

fn pki(name: &str) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, name);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_der: ca_cert.der().to_vec(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Connects over TLS trusting only `ca`'s certificates and reads the
/// greeting; the handshake's error if the server's certificate is not one
/// of `ca`'s.
fn tls_hello(addr: SocketAddr, ca: &Pki) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut roots = RootCertStore::empty();
        roots.add(ca.ca_der.clone().into()).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio::time::timeout(
            LINE_TIMEOUT,
            TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .expect("TLS handshake timed out")
        .map_err(|e| e.to_string())?;
        let mut line = String::new();
        tokio::time::timeout(LINE_TIMEOUT, AsyncBufReader::new(tls).read_line(&mut line))
            .await
            .expect("no greeting")
            .map_err(|e| e.to_string())?;
        Ok(line.trim_end().to_owned())
    })
}

#[test]
fn new_handshakes_get_the_reloaded_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first = pki("first CA");
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let config = [
        format!("tls_cert = {:?}", cert.to_str().unwrap()),
        format!("tls_key = {:?}", key.to_str().unwrap()),
    ];
    let config: Vec<&str> = config.iter().map(String::as_str).collect();
    let server = TestServer::with(&[("alice", "a-pw")], &config);
    assert_eq!(
        tls_hello(server.addr(), &first).as_deref(),
        Ok("HELLO CHAT/1")
    );

    let second = pki("second CA");
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    reload(&server, 1);
    assert_eq!(
        tls_hello(server.addr(), &second).as_deref(),
        Ok("HELLO CHAT/1")
    );
    let refused = tls_hello(server.addr(), &first).unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");
    assert!(error_lines(&server).is_empty(), "{}", server.stderr());

    // A key that is not the certificate's: one error line, and the second
    // pair is still served.
    std::fs::write(&key, &first.key_pem).unwrap();
    reload(&server, 2);
    let errors = error_lines(&server);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("TLS"), "{}", errors[0]);
    assert_eq!(
        tls_hello(server.addr(), &second).as_deref(),
        Ok("HELLO CHAT/1")
    );
}
