//! The client side of the admin endpoint: `codex-stdio-bus status` fetching `/status`, over
//! plain HTTP or, with `--cacert`, HTTPS (an endpoint with `metrics.tls`).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;

use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConnection, StreamOwned};

use super::READ_TIMEOUT;
use crate::error::{Error, Kind};
use crate::io::tls;

/// The environment variable whose value [`fetch`] sends as its bearer token, for an endpoint
/// with `metrics.bearer_sha256`.
pub const TOKEN_VARIABLE: &str = "CODEX_BUS_METRICS_TOKEN";

/// Fetches `path` from the admin endpoint at `address` (`HOST:PORT`), with the bearer token of
/// [`TOKEN_VARIABLE`] when it is set; over HTTPS when `ca_file` names the PEM certificates to
/// trust (the server's name checked against `HOST`), else plain HTTP.
///
/// # Errors
///
/// [`Kind::Config`] when `ca_file` is unusable; [`Kind::Admin`] when the endpoint cannot be
/// reached, the TLS handshake fails, or the answer is not 200.
pub fn fetch(address: &str, path: &str, ca_file: Option<&Path>) -> Result<String, Error> {
    if address.contains("://") {
        let hint = "give HOST:PORT, not a URL (and --cacert FILE for HTTPS)";
        return Err(Error::new(Kind::Admin, format!("{address}: {hint}")));
    }
    let stream = TcpStream::connect(address)
        .map_err(|e| Error::because(Kind::Admin, format!("cannot connect to {address}"), e))?;
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let authorization = std::env::var(TOKEN_VARIABLE)
        .map(|token| format!("Authorization: Bearer {}\r\n", token.trim()))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}Connection: close\r\n\r\n"
    );
    let failed = |e| Error::because(Kind::Admin, format!("GET {path} from {address}"), e);
    let response = match ca_file {
        None => exchange(stream, &request).map_err(failed)?,
        Some(ca_file) => {
            let config = tls::client_config("--cacert", ca_file)?;
            let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned()).map_err(|e| {
                Error::because(Kind::Admin, format!("{host:?} is not a TLS server name"), e)
            })?;
            let connection = ClientConnection::new(config, name)
                .map_err(|e| Error::because(Kind::Admin, "cannot start TLS", e))?;
            exchange(StreamOwned::new(connection, stream), &request).map_err(failed)?
        }
    };
    let answer =
        |what: String| Error::new(Kind::Admin, format!("GET {path} from {address}: {what}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .filter(|(head, _)| head.starts_with("HTTP/"))
        .ok_or_else(|| {
            answer(match ca_file {
                None => "not an HTTP response (an endpoint with metrics.tls speaks HTTPS: pass \
                         --cacert FILE)"
                    .to_owned(),
                Some(_) => "malformed HTTP response".to_owned(),
            })
        })?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or("");
        return Err(answer(format!("{status}: {}", body.trim())));
    }
    Ok(body.to_owned())
}

/// Sends `request` and reads the response until the server closes the connection.
fn exchange(mut stream: impl Read + Write, request: &str) -> std::io::Result<String> {
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // A TLS peer that closes without close_notify has still sent the whole response.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e),
    }
    String::from_utf8(response).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}
