//! TLS for the listening port (PROTOCOL.md §1, §9): when `tls_cert` and
//! `tls_key` are configured, every connection speaks CHAT/1 inside TLS 1.2 or
//! 1.3 and nothing else.
//!
//! rustls runs with the `ring` provider, installed explicitly rather than
//! through a process-wide default, so that nothing depends on which crypto
//! backend some other crate happened to enable (aws-lc-rs, the rustls
//! default, needs cmake, NASM and clang to build).
//!
//! The files are read at startup, where a bad one stops the server, and
//! again on reload ([`CertSlot::reload`], SIGHUP), where a bad one keeps
//! the pair in use: a renewed certificate is served to new handshakes
//! without a restart, and a botched renewal never takes the port down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use thiserror::Error;

/// Why the TLS certificate or key cannot be used. Each names its file, and
/// prints on one line.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The file could not be read. (The cause is the error's source, so
    /// that a `{:#}` chain shows it once.)
    #[error("cannot read {what} file {}", path.display())]
    Read {
        /// `"TLS certificate"` or `"TLS key"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not usable PEM, or holds nothing of the expected kind.
    #[error("{what} file {}: {detail}", path.display())]
    Pem {
        /// `"TLS certificate"` or `"TLS key"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// rustls refused the pair: the key does not match the certificate, or
    /// is of a kind it cannot sign with.
    #[error("TLS certificate {} and key {} cannot be used together: {detail}", cert.display(), key.display())]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        detail: String,
    },
}

const CERT: &str = "TLS certificate";
const KEY: &str = "TLS key";

/// A short description of a PEM parse error; the library's own Display
/// prints byte vectors, which is no help to an operator.
fn pem_detail(e: &pem::Error, wanted: &str) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".into(),
        pem::Error::NoItemsFound => format!("no {wanted} found (expected PEM)"),
        other => other.to_string(),
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Reads a PEM certificate chain: the server's certificate first, then any
/// intermediates, as rustls sends them.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(CERT, path)?;
    let bad = |detail: String| TlsError::Pem {
        what: CERT,
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_detail(&e, "CERTIFICATE section")))?;
    if certs.is_empty() {
        return Err(bad(
            "no CERTIFICATE section found (expected a PEM certificate chain)".into(),
        ));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read(KEY, path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| TlsError::Pem {
        what: KEY,
        path: path.to_owned(),
        detail: pem_detail(&e, "PRIVATE KEY section"),
    })
}

/// The server's TLS configuration from a certificate chain and key file:
/// TLS 1.3 and 1.2 only, no client certificates.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    server_tls(cert, key).map(|tls| tls.config)
}

/// The TLS configuration and the slot its certificate comes from, for a
/// server that reloads the files.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// What the acceptor runs with; it asks [`ServerTls::cert`] for the
    /// certificate at every handshake.
    pub config: Arc<ServerConfig>,
    /// The certificate and key in use, reloadable.
    pub cert: Arc<CertSlot>,
}

/// As [`server_config`], with the certificate in a [`CertSlot`] that a
/// reload can refill.
pub fn server_tls(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let slot = Arc::new(CertSlot {
        current: RwLock::new(Arc::new(certified_key(&provider, cert, key)?)),
        provider: Arc::clone(&provider),
        cert: cert.to_owned(),
        key: key.to_owned(),
    });
    let rejected = |e: rustls::Error| TlsError::Rejected {
        cert: cert.to_owned(),
        key: key.to_owned(),
        detail: e.to_string(),
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rejected)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&slot) as Arc<dyn ResolvesServerCert>);
    Ok(ServerTls {
        config: Arc::new(config),
        cert: slot,
    })
}

/// Reads the pair and checks that the key is the certificate's, as
/// `with_single_cert` would.
fn certified_key(
    provider: &rustls::crypto::CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs(cert)?;
    let private_key = load_key(key)?;
    CertifiedKey::from_der(certs, private_key, provider).map_err(|e| TlsError::Rejected {
        cert: cert.to_owned(),
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

/// The certificate and key that new handshakes get. Connections already
/// set up keep the one they shook hands with.
#[derive(Debug)]
pub struct CertSlot {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    cert: PathBuf,
    key: PathBuf,
}

impl CertSlot {
    /// Reads the certificate and key files again; on success new
    /// handshakes get the new pair. On failure (unreadable, not PEM, a key
    /// that is not the certificate's) the pair in use stays, and the error
    /// names the file. Blocking: it reads files.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(certified_key(&self.provider, &self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// The end-entity certificate new handshakes get.
    pub fn current_cert(&self) -> CertificateDer<'static> {
        self.get().cert[0].clone()
    }

    fn get(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pems {
        dir: tempfile::TempDir,
    }

    impl Pems {
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.path(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    /// A self-signed certificate for `localhost`, and a second, unrelated
    /// key, as PEM files.
    fn pems() -> Pems {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pems = Pems { dir };
        pems.write("cert.pem", &cert.pem());
        pems.write("key.pem", &key.serialize_pem());
        pems.write(
            "other-key.pem",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        pems
    }

    #[test]
    fn a_good_pair_loads() {
        let p = pems();
        let config = server_config(&p.path("cert.pem"), &p.path("key.pem")).unwrap();
        assert!(config.alpn_protocols.is_empty());
        assert_eq!(load_certs(&p.path("cert.pem")).unwrap().len(), 1);
    }

    /// A reload serves the new pair; a bad file on reload keeps the old
    /// one.
    #[test]
    fn reload_swaps_the_pair_and_keeps_it_on_failure() {
        let p = pems();
        let (cert, key) = (p.path("cert.pem"), p.path("key.pem"));
        let tls = server_tls(&cert, &key).unwrap();
        let first = tls.cert.current_cert();
        assert_eq!(first, load_certs(&cert).unwrap()[0]);
        let fresh = pems();
        std::fs::copy(fresh.path("cert.pem"), &cert).unwrap();
        std::fs::copy(fresh.path("key.pem"), &key).unwrap();
        tls.cert.reload().unwrap();
        let second = tls.cert.current_cert();
        assert_ne!(second, first);
        assert_eq!(second, load_certs(&cert).unwrap()[0]);
        // A key that is not the certificate's: refused, the pair stays.
        std::fs::copy(p.path("other-key.pem"), &key).unwrap();
        let e = tls.cert.reload().unwrap_err().to_string();
        assert!(e.contains("cannot be used together"), "{e}");
        std::fs::write(&cert, "garbage\n").unwrap();
        assert!(tls.cert.reload().is_err());
        assert_eq!(tls.cert.current_cert(), second);
    }

    #[test]
    fn bad_files_are_named_on_one_line() {
        let p = pems();
        let cert = p.path("cert.pem");
        let key = p.path("key.pem");
        let garbage = p.write("garbage.pem", "not a certificate\n");
        let truncated = p.write("truncated.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let missing = p.path("missing.pem");
        for (result, file, words) in [
            (
                server_config(&missing, &key).map(drop),
                &missing,
                "cannot read TLS certificate file",
            ),
            (
                server_config(&cert, &missing).map(drop),
                &missing,
                "cannot read TLS key file",
            ),
            (
                server_config(&garbage, &key).map(drop),
                &garbage,
                "no CERTIFICATE section",
            ),
            (
                server_config(&truncated, &key).map(drop),
                &truncated,
                "no END line",
            ),
            // A certificate where the key should be: no key in it.
            (
                server_config(&cert, &cert).map(drop),
                &cert,
                "no PRIVATE KEY section",
            ),
            (
                server_config(&cert, &p.path("other-key.pem")).map(drop),
                &cert,
                "cannot be used together",
            ),
        ] {
            let e = format!("{:#}", anyhow::Error::new(result.unwrap_err()));
            assert!(e.contains(&file.display().to_string()), "{e}");
            assert!(e.contains(words), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        // The OS's reason, once.
        let e = format!("{:#}", anyhow::Error::new(load_key(&missing).unwrap_err()));
        assert_eq!(e.matches("os error").count(), 1, "{e}");
    }
}
