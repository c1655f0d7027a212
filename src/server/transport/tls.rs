//! TLS with rustls: a certificate chain and its private key, in PEM, from the files named by
//! `tls_cert_file` and `tls_key_file`. ALPN offers HTTP/2, then HTTP/1.1.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Reads the certificate chain and key and builds the acceptor; the error names the file and
/// what is wrong with it, so the server refuses to start with a clear message.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("tls_cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "tls_cert_file {}: no PEM CERTIFICATE block found",
            cert_file.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| anyhow::anyhow!("tls_key_file {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            anyhow::anyhow!(
                "tls_cert_file {} with tls_key_file {}: {e}",
                cert_file.display(),
                key_file.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(cert: &Path, key: &Path) -> String {
        match acceptor(cert, key) {
            Ok(_) => panic!("accepted {cert:?} with {key:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = error(&missing, &missing);
        assert!(
            err.starts_with("tls_cert_file") && err.contains("missing.pem"),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = error(&empty, &empty);
        assert!(err.contains("no PEM CERTIFICATE block"), "{err}");

        // A certificate with a key that is not its own.
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&key_file, other.serialize_pem()).unwrap();
        let err = error(&cert_file, &key_file);
        assert!(err.contains("tls_key_file"), "{err}");

        std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
        acceptor(&cert_file, &key_file).unwrap();
    }
}
