//! TLS for the listening port (PROTOCOL.md §1, §9): when `tls_cert` and
//! `tls_key` are configured, every connection speaks CHAT/1 inside TLS 1.2 or
//! 1.3 and nothing else.
//!
//! rustls runs with the `ring` provider, installed explicitly rather than
//! through a process-wide default, so that nothing depends on which crypto
//! backend some other crate happened to enable (aws-lc-rs, the rustls
//! default, needs cmake, NASM and clang to build).
//!
//! The files are read once at startup: a certificate renewed on disk takes a
//! restart to be served, which keeps the running server's identity fixed
//! and its failure modes at startup, where an operator is watching.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
    let certs = load_certs(cert)?;
    let private_key = load_key(key)?;
    let rejected = |e: rustls::Error| TlsError::Rejected {
        cert: cert.to_owned(),
        key: key.to_owned(),
        detail: e.to_string(),
    };
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(rejected)?
            .with_no_client_auth()
            .with_single_cert(certs, private_key)
            .map_err(rejected)?;
    Ok(Arc::new(config))
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
