//! `--tls`: CHAT/1 inside TLS 1.2 or 1.3, with the server's certificate
//! verified for the HOST given on the command line.
//!
//! The trusted roots are the Mozilla set compiled in (`webpki-roots`), so
//! chatc behaves the same on every machine and needs no system certificate
//! store, plus whatever `--ca FILE` adds: the usual way to trust a private
//! server or a self-signed certificate. There is deliberately no option to
//! skip verification.
//!
//! Exit statuses follow the rest of chatc: a bad `--ca` file or a HOST that
//! cannot be a TLS server name is a [`UsageError`] (2), found before any
//! connection is made; a failed handshake, an untrusted certificate above
//! all, is a [`TlsFailure`] (1), like a lost connection.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::interrupt::Interrupts;
use crate::UsageError;

/// How long the server gets to complete a handshake. A chatd that is up
/// answers at once; this only bounds a server that accepted and went quiet.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The handshake failed: the certificate is not trusted, or the server
/// does not speak TLS. Exit status 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsFailure(pub String);

/// What a TLS connection needs, prepared before connecting so that a bad
/// `--ca` file or HOST is reported at once rather than after a wait.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Trusts the built-in roots plus the certificates in `ca`, and
    /// verifies the server as `host` (a DNS name or an IP address).
    pub fn new(host: &str, ca: Option<&Path>) -> Result<Tls, UsageError> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            UsageError(format!(
                "--tls: {host:?} is not a DNS name or IP address a certificate can be checked against"
            ))
        })?;
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca {
            for cert in load_ca(path)? {
                roots.add(cert).map_err(|e| {
                    UsageError(format!(
                        "--ca {}: a certificate cannot be used as a CA: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| UsageError(format!("--tls: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// The client side of the handshake. `Ok(None)` when Ctrl-C ended it.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        interrupts: &mut Interrupts,
    ) -> Result<Option<TlsStream<TcpStream>>, TlsFailure> {
        let connect = self.connector.connect(self.name.clone(), stream);
        tokio::select! {
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect) => match r {
                Ok(Ok(stream)) => Ok(Some(stream)),
                Ok(Err(e)) => Err(describe(&e)),
                Err(_) => Err(TlsFailure(format!(
                    "the server did not complete the TLS handshake within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                ))),
            },
            () = interrupts.recv() => Ok(None),
        }
    }
}

/// The certificates of a PEM file given with `--ca`.
fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, UsageError> {
    let shown = path.display();
    let text = std::fs::read(path)
        .map_err(|e| UsageError(format!("cannot read the CA file {shown}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UsageError(format!("the CA file {shown} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(UsageError(format!(
            "the CA file {shown} holds no PEM certificate"
        )));
    }
    Ok(certs)
}

/// A handshake error in words. tokio-rustls wraps the [`rustls::Error`] in
/// an `io::Error`; certificate problems get the sentence the person needs.
fn describe(e: &std::io::Error) -> TlsFailure {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return TlsFailure(format!("the TLS handshake failed: {e}"));
    };
    TlsFailure(match tls {
        rustls::Error::InvalidCertificate(cert) => {
            format!("the server's certificate is not trusted: {}", why(cert))
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the TLS handshake failed ({tls}): is the server using TLS?")
        }
        other => format!("the TLS handshake failed: {other}"),
    })
}

fn why(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => "it is not signed by an authority chatc trusts \
             (for a private or self-signed server, give its CA certificate with --ca FILE)"
            .into(),
        CertificateError::BadSignature => "its signature does not verify".into(),
        CertificateError::Expired => "it has expired".into(),
        CertificateError::NotValidYet => "it is not valid yet".into(),
        CertificateError::NotValidForName => "it is not valid for the host name given".into(),
        // webpki's error comes through rustls only as text; this one is
        // common (`openssl req -x509` marks certificates CA:TRUE unless told
        // otherwise), so it gets words saying what to do.
        CertificateError::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => {
            "it is a CA certificate, which cannot also be the server's own \
             (issue a server certificate from the CA, or make the self-signed \
             one with basicConstraints CA:FALSE)"
                .into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_and_addresses_are_server_names() {
        for host in ["localhost", "chat.example.org", "127.0.0.1", "::1"] {
            Tls::new(host, None).unwrap();
        }
        let e = Tls::new("not a host", None).unwrap_err().to_string();
        assert!(e.contains("\"not a host\""), "{e}");
    }

    #[test]
    fn bad_ca_files_are_usage_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("chatc-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let missing = dir.join("missing.pem");
        for (path, words) in [(&empty, "holds no PEM"), (&missing, "cannot read")] {
            let e = Tls::new("localhost", Some(path)).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains(words), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn certificate_errors_say_not_trusted() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let msg = describe(&io).to_string();
        assert!(
            msg.starts_with("the server's certificate is not trusted: "),
            "{msg}"
        );
        assert!(msg.contains("--ca"), "{msg}");
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(describe(&io).to_string(), "the TLS handshake failed: reset");
    }
}
