//! Layer 5, the admin endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz` and `/status`,
//! rendered from the state the lower layers keep.
//!
//! A deliberately tiny HTTP/1.1 server (GET only, one request per connection): the exporter's own
//! listener answers every path with metrics, and probes need their own paths on the same port.
//!
//! Imports: the router (to read pools, slots and clients), the core and the metrics leaf.

mod scrape;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Kind};
use crate::io::ACCEPT_RETRY;
use crate::router::Router;

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the admin endpoint (before workers start, like the client listener).
pub async fn bind(address: &str) -> Result<TcpListener, Error> {
    let cannot = |e| Error::bind(format!("cannot listen for metrics on {address}"), e);
    let listener = TcpListener::bind(address).await.map_err(cannot)?;
    let local = listener.local_addr().map_err(cannot)?;
    tracing::info!(transport = "metrics", addr = %local, "listening");
    Ok(listener)
}

/// Serves admin requests for the life of the daemon (through the drain too: `/readyz` then says
/// 503, which is what an orchestrator needs to see).
pub(crate) async fn serve(listener: TcpListener, router: Arc<Router>, handle: PrometheusHandle) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let (router, handle) = (router.clone(), handle.clone());
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &router, &handle).await {
                tracing::debug!(%error, "metrics request failed");
            }
        });
    }
}

/// Reads one request and writes its response.
async fn answer(
    mut stream: TcpStream,
    router: &Router,
    handle: &PrometheusHandle,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let mut parts = head.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if method != "GET" {
        (405, "text/plain", "only GET is supported\n".to_owned())
    } else {
        route(path, router, handle)
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The response (status, content type, body) for a GET of `path`.
fn route(path: &str, router: &Router, handle: &PrometheusHandle) -> (u16, &'static str, String) {
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            scrape::render(handle, router),
        ),
        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/readyz" => match status::readiness(router) {
            Ok(()) => (200, "application/json", "{\"ready\":true}\n".to_owned()),
            Err(body) => (503, "application/json", format!("{body}\n")),
        },
        "/status" => (
            200,
            "application/json",
            format!("{}\n", status::snapshot(router)),
        ),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz or /status\n".to_owned(),
        ),
    }
}

/// Reads the request line (the rest of the head is not needed, but is consumed up to its end).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_HEAD {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
    Ok(String::from_utf8_lossy(line).trim_end().to_owned())
}

/// Fetches `path` from an admin endpoint (for `codex-stdio-bus status`); fails with
/// [`Kind::Admin`] when it cannot be reached or does not answer 200.
pub fn fetch(address: &str, path: &str) -> Result<String, Error> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)
        .map_err(|e| Error::because(Kind::Admin, format!("cannot connect to {address}"), e))?;
    let failed = |e| Error::because(Kind::Admin, format!("GET {path} from {address}"), e);
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(failed)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(failed)?;
    let answer =
        |what: String| Error::new(Kind::Admin, format!("GET {path} from {address}: {what}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| answer("malformed HTTP response".to_owned()))?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or("");
        return Err(answer(format!("{status}: {}", body.trim())));
    }
    Ok(body.to_owned())
}
