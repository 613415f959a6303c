//! TLS for a client listener (rustls with the *ring* provider; TLS 1.3 and 1.2, no client
//! certificates): the certificate chain and key are read from PEM files and checked to belong
//! together at start, swapped in whole on reload (the same files again, or new ones a reloaded
//! config names), and a TCP stream becomes a TLS stream within a
//! handshake deadline. A failed handshake costs its own connection only. The one client side,
//! [`client_config`], is `codex-stdio-bus status --cacert` reading an HTTPS admin endpoint.
//!
//! TLS encrypts and proves the server's identity; who the client is stays `auth`'s business, over
//! the encrypted stream.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use codex_bus_config::TlsConfig;
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::core::log_limit::LogLimit;
use crate::error::{Error, Kind};
use crate::metrics::{self, TlsFailure};

/// A listener's TLS: the files it was loaded from, and the acceptor built from them.
pub(crate) struct Tls {
    /// The config field that named the files (`transport.tls`), for messages.
    field: String,
    /// ALPN protocols offered, most preferred first (none for NDJSON).
    alpn: Vec<Vec<u8>>,
    /// How long a client has to complete its handshake.
    handshake_timeout: Duration,
    /// The files in force and the acceptor built from them, replaced together on reload; a
    /// handshake under way keeps the config it started with.
    current: RwLock<Current>,
    /// One failed-handshake line per second at most: a port scanner must not flood the log.
    failures: LogLimit,
}

impl Tls {
    /// Reads `files` (named in messages as `field`, e.g. `transport.tls`) and builds the
    /// acceptor, offering the ALPN protocols `alpn` (empty for NDJSON; `http/1.1` for an HTTP
    /// front); a client must complete its handshake within `handshake_timeout`.
    ///
    /// # Errors
    ///
    /// [`Kind::Config`] naming the field and the file: unreadable, no `CERTIFICATE` block, no
    /// private key, a key rustls cannot use, or a key that does not match the first certificate.
    pub(crate) fn load(
        field: &str,
        files: &TlsConfig,
        alpn: Vec<Vec<u8>>,
        handshake_timeout: Duration,
    ) -> Result<Tls, Error> {
        let config = server_config(field, files, &alpn)?;
        Ok(Tls {
            field: field.to_owned(),
            alpn,
            handshake_timeout,
            current: RwLock::new(Current {
                files: files.clone(),
                acceptor: TlsAcceptor::from(Arc::new(config)),
            }),
            failures: LogLimit::default(),
        })
    }

    /// The config field that named its files (`transport.tls`, `websocket[0].tls`).
    pub(crate) fn field(&self) -> &str {
        &self.field
    }

    /// Reads the files again (after a certificate renewal) and serves new connections with them;
    /// on error the previous certificate stays in use.
    ///
    /// # Errors
    ///
    /// As [`Tls::load`].
    pub(crate) fn reload(&self) -> Result<(), Error> {
        let files = self.files();
        self.replace(&files)
    }

    /// Reads `files` (a reloaded config's, which may name other paths) and serves new
    /// connections with them from now on, [`Tls::reload`] reading them from then on; on error
    /// the previous files and certificate stay in use.
    ///
    /// # Errors
    ///
    /// As [`Tls::load`].
    pub(crate) fn replace(&self, files: &TlsConfig) -> Result<(), Error> {
        let config = server_config(&self.field, files, &self.alpn)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Current {
            files: files.clone(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        };
        Ok(())
    }

    /// The files in force.
    pub(crate) fn files(&self) -> TlsConfig {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.files.clone()
    }

    /// The TLS stream over `stream` once its handshake completes, or `None` (the connection is
    /// closed) if it fails or takes longer than the handshake timeout; a failure is counted in
    /// `codex_bus_tls_handshake_failures_total` and logged at INFO, once per second at most.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<TlsStream<TcpStream>> {
        let acceptor = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .acceptor
            .clone();
        let (failure, error) =
            match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => return Some(stream),
                Ok(Err(error)) => (TlsFailure::Failed, error.to_string()),
                Err(_) => (TlsFailure::Timeout, "no handshake in time".to_owned()),
            };
        metrics::get().tls_failed(failure);
        if let Some(suppressed) = self.failures.admit(Instant::now()) {
            tracing::info!(%peer, %error, suppressed, "TLS handshake failed; closing");
        }
        None
    }
}

/// A listener's TLS files and the acceptor built from them.
struct Current {
    files: TlsConfig,
    acceptor: TlsAcceptor,
}

/// The rustls server config for `files`, offering `alpn`.
fn server_config(field: &str, files: &TlsConfig, alpn: &[Vec<u8>]) -> Result<ServerConfig, Error> {
    let chain = certificates(&format!("{field}.cert_file"), &files.cert_file)?;
    let key = private_key(field, &files.key_file)?;
    let provider = Arc::new(ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::because(Kind::Config, format!("{field}: TLS versions"), e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            let context = match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "{field}.key_file: the key in {} does not match the certificate in {}",
                    files.key_file.display(),
                    files.cert_file.display()
                ),
                _ => format!(
                    "{field}.key_file: cannot use the key in {}",
                    files.key_file.display()
                ),
            };
            Error::because(Kind::Config, context, e)
        })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

/// A client config (TLS 1.3 and 1.2, ALPN `http/1.1`) that trusts only the certificates in the
/// PEM file `ca_file`, named `name` in errors: `codex-stdio-bus status --cacert` reading an
/// admin endpoint with `metrics.tls`.
///
/// # Errors
///
/// [`Kind::Config`] when the file cannot be read or holds no usable certificate.
pub(crate) fn client_config(name: &str, ca_file: &Path) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(name, ca_file)? {
        roots.add(certificate).map_err(|e| {
            let context = format!(
                "{name}: cannot trust a certificate of {}",
                ca_file.display()
            );
            Error::because(Kind::Config, context, e)
        })?;
    }
    let provider = Arc::new(ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::because(Kind::Config, format!("{name}: TLS versions"), e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Every certificate in the PEM file at `path` (the `name`d field or flag), in order (a server's
/// own first).
fn certificates(name: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(name, path, e))?;
    if chain.is_empty() {
        return Err(Error::new(
            Kind::Config,
            format!(
                "{name}: no certificate (a PEM 'BEGIN CERTIFICATE' block) in {}",
                path.display()
            ),
        ));
    }
    Ok(chain)
}

/// The first private key in the PEM file at `path`.
fn private_key(field: &str, path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(&format!("{field}.key_file"), path, e))
}

/// A PEM file that could not be read or held nothing usable (`NoItemsFound` comes only from the
/// key file: a certificate file is read whole). The messages name the file and what is wrong with
/// its structure, never a byte of its content: a key file holds a secret.
fn pem_error(field: &str, path: &Path, error: pem::Error) -> Error {
    let path = path.display();
    let malformed = match error {
        pem::Error::Io(e) => {
            return Error::because(Kind::Config, format!("{field}: cannot read {path}"), e)
        }
        pem::Error::NoItemsFound => {
            return Error::new(
                Kind::Config,
                format!(
                    "{field}: no private key (a PEM 'BEGIN PRIVATE KEY', 'BEGIN RSA PRIVATE KEY' \
                     or 'BEGIN EC PRIVATE KEY' block) in {path}"
                ),
            )
        }
        pem::Error::MissingSectionEnd { .. } => "a block has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a block is not valid base64",
        pem::Error::SectionTooLarge => "a block is larger than 256 MB",
        _ => "unreadable PEM",
    };
    Error::new(
        Kind::Config,
        format!("{field}: {path} is not valid PEM: {malformed}"),
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A self-signed certificate for `localhost` and its key, written to `dir` as
    /// `<name>.crt` and `<name>.key`.
    fn pair(dir: &Path, name: &str) -> TlsConfig {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let files = TlsConfig {
            cert_file: dir.join(format!("{name}.crt")),
            key_file: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert_file, cert.pem()).unwrap();
        std::fs::write(&files.key_file, signing_key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn new_files_replace_the_old_ones_only_when_they_load() {
        let dir = tempfile::tempdir().unwrap();
        let first = pair(dir.path(), "first");
        let second = pair(dir.path(), "second");
        let tls = Tls::load("transport.tls", &first, Vec::new(), Duration::from_secs(1)).unwrap();

        let missing = TlsConfig {
            cert_file: PathBuf::from("/nonexistent/cert.pem"),
            ..second.clone()
        };
        let error = tls.replace(&missing).unwrap_err().to_string();
        assert!(error.contains("transport.tls.cert_file"), "{error}");
        assert_eq!(
            tls.files(),
            first,
            "a failed replace keeps the files in force"
        );

        tls.replace(&second).unwrap();
        assert_eq!(tls.files(), second);
        // A reload now re-reads the new files: gone, it fails and keeps them.
        std::fs::remove_file(&second.key_file).unwrap();
        assert!(tls.reload().is_err());
        assert_eq!(tls.files(), second);
    }
}
