//! The client side of the admin endpoint: `codex-stdio-bus status` fetching `/status`, and
//! `codex-stdio-bus reload` and `restart` posting to `/reload` and `/restart`, over plain HTTP or,
//! with `--cacert`, HTTPS (an endpoint with `metrics.tls`).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConnection, StreamOwned};

use super::READ_TIMEOUT;
use crate::error::{Error, Kind};
use crate::io::tls;

/// The environment variable whose value [`fetch`] and [`submit`] send as their bearer token, for
/// an endpoint with `metrics.bearer_sha256`.
pub const TOKEN_VARIABLE: &str = "CODEX_BUS_METRICS_TOKEN";

/// An HTTP answer from the admin endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The status line, e.g. `HTTP/1.1 409 Conflict`, for messages.
    pub status_line: String,
    /// The body, as text.
    pub body: String,
}

/// Fetches `path` from the admin endpoint at `address` (`HOST:PORT`), with the bearer token of
/// [`TOKEN_VARIABLE`] when it is set; over HTTPS when `ca_file` names the PEM certificates to
/// trust (the server's name checked against `HOST`), else plain HTTP. The answer must come
/// within a few seconds.
///
/// # Errors
///
/// [`Kind::Config`] when `ca_file` is unusable; [`Kind::Admin`] when the endpoint cannot be
/// reached, the TLS handshake fails, or the answer is not 200.
pub fn fetch(address: &str, path: &str, ca_file: Option<&Path>) -> Result<String, Error> {
    let answer = request("GET", address, path, ca_file, token().as_deref())?;
    if answer.status != 200 {
        return Err(Error::new(
            Kind::Admin,
            format!(
                "GET {path} from {address}: {}: {}",
                answer.status_line,
                answer.body.trim()
            ),
        ));
    }
    Ok(answer.body)
}

/// Posts an empty body to `path` (e.g. `/reload`) on the admin endpoint at `address`, as
/// [`fetch`] reads, and returns the answer whatever its status. It waits for the answer as long
/// as it takes: a reload answers once its rolling restarts are done, which may take the pools'
/// `roll_timeout_sec` for each slot.
///
/// # Errors
///
/// As [`fetch`], except that any answer is returned.
pub fn submit(address: &str, path: &str, ca_file: Option<&Path>) -> Result<Answer, Error> {
    request("POST", address, path, ca_file, token().as_deref())
}

/// The bearer token of [`TOKEN_VARIABLE`], if set.
fn token() -> Option<String> {
    std::env::var(TOKEN_VARIABLE).ok()
}

/// Sends `method path` (with `token` as bearer) and reads the whole answer. GET answers must come
/// within [`READ_TIMEOUT`]; other methods wait for as long as the daemon takes.
fn request(
    method: &str,
    address: &str,
    path: &str,
    ca_file: Option<&Path>,
    token: Option<&str>,
) -> Result<Answer, Error> {
    if address.contains("://") {
        let hint = "give HOST:PORT, not a URL (and --cacert FILE for HTTPS)";
        return Err(Error::new(Kind::Admin, format!("{address}: {hint}")));
    }
    let stream = TcpStream::connect(address).map_err(|e| {
        let context = format!(
            "cannot reach the daemon at {address} (is it running, with its metrics endpoint \
             there?)"
        );
        Error::because(Kind::Admin, context, e)
    })?;
    let read_timeout: Option<Duration> = (method == "GET").then_some(READ_TIMEOUT);
    let _ = stream.set_read_timeout(read_timeout);
    let authorization = token
        .map(|token| format!("Authorization: Bearer {}\r\n", token.trim()))
        .unwrap_or_default();
    // A POST carries no body, but HTTP/1.1 wants its length said.
    let length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}{length}Connection: close\r\n\r\n"
    );
    let failed = |e| Error::because(Kind::Admin, format!("{method} {path} to {address}"), e);
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
    parse(&response).ok_or_else(|| {
        let what = match ca_file {
            None => {
                "not an HTTP response (an endpoint with metrics.tls speaks HTTPS: pass \
                     --cacert FILE)"
            }
            Some(_) => "malformed HTTP response",
        };
        Error::new(Kind::Admin, format!("{method} {path} to {address}: {what}"))
    })
}

/// The status and body of a whole HTTP/1.1 response; `None` if it is not one.
fn parse(response: &str) -> Option<Answer> {
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status_line = head.lines().next()?;
    let mut words = status_line.split(' ');
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = words.next()?.parse().ok()?;
    Some(Answer {
        status,
        status_line: status_line.to_owned(),
        body: body.to_owned(),
    })
}

/// `text` percent-encoded for a query value: every byte but RFC 3986's unreserved ones.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    use super::*;

    /// Answers one connection with `response` and returns the request head it read.
    fn serve_once(response: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            (&stream).write_all(response.as_bytes()).unwrap();
            head
        });
        (address, server)
    }

    #[test]
    fn a_post_is_empty_authorized_and_returns_any_status() {
        let (address, server) = serve_once(
            "HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\n\r\n{\"result\":\"busy\"}\n",
        );
        let answer = request(
            "POST",
            &address,
            "/restart?pool=a%20b",
            None,
            Some(" t0k \n"),
        )
        .unwrap();
        assert_eq!(answer.status, 409);
        assert_eq!(answer.status_line, "HTTP/1.1 409 Conflict");
        assert_eq!(answer.body, "{\"result\":\"busy\"}\n");
        let head = server.join().unwrap();
        assert!(
            head.starts_with("POST /restart?pool=a%20b HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("Authorization: Bearer t0k\r\n"), "{head}");
        assert!(head.contains("Content-Length: 0\r\n"), "{head}");
    }

    #[test]
    fn an_unreachable_daemon_is_said_so() {
        // Bound then closed: nothing listens there.
        let address = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let error = request("POST", &address, "/reload", None, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot reach the daemon"), "{error}");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("codex-1_a.b~"), "codex-1_a.b~");
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
