//! The certificate of a run's TLS fronts (`--tls`): made for the run (rcgen, self-signed for
//! `127.0.0.1` and `localhost`), written as PEM beside the bus config for the daemon's
//! `transport.tls` or `websocket[].tls`, and trusted, alone, by the run's client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

/// A self-signed certificate on disk and the client configuration that trusts it.
pub struct SelfSigned {
    /// PEM certificate.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// rustls client settings whose only root is this certificate.
    pub client: Arc<ClientConfig>,
}

impl SelfSigned {
    /// Makes a certificate and writes `tls.crt` and `tls.key` into `dir`.
    pub fn generate(dir: &Path) -> Result<SelfSigned, String> {
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names).map_err(|e| format!("certificate: {e}"))?;
        let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
        };
        write(&cert_file, cert.pem())?;
        write(&key_file, signing_key.serialize_pem())?;
        let mut roots = RootCertStore::empty();
        roots
            .add(cert.der().clone())
            .map_err(|e| format!("trust the certificate: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(SelfSigned {
            cert_file,
            key_file,
            client: Arc::new(client),
        })
    }

    /// The daemon's `{"cert_file", "key_file"}` object.
    pub fn config(&self) -> serde_json::Value {
        serde_json::json!({"cert_file": self.cert_file, "key_file": self.key_file})
    }
}
