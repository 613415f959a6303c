//! The WebSocket front: clients that speak the transport of `codex app-server --listen ws://`
//! (one JSON-RPC message per text frame; ../shared/reference/codex-remote.md), so `codex
//! --remote ws://HOST:PORT` works against the bus, and a load balancer can route whole
//! connections by session.
//!
//! Each listener (`websocket[]` in the config, `--ws`) serves HTTP/1.1 with hyper: `GET
//! /healthz` and `GET /readyz` answer as on the admin port (`io::probes`); any other path
//! upgrades, once its `Origin` and bearer credential pass (`upgrade`), to a connection bound to
//! one session, served through the same seam as NDJSON clients (`io::connection`) with its
//! messages framed by `frames`. A listener accepts any byte stream (`AsyncRead + AsyncWrite`),
//! so TLS can wrap the accepted socket before HTTP sees it.

mod frames;
pub(crate) mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use codex_bus_config::WebSocketConfig;
use futures_util::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use super::capacity::Seat;
use super::connection::{self, Peer};
use super::probes::{self, PLAIN_TEXT};
use super::tls::Tls;
use super::{principal, Listening, ACCEPT_RETRY};
use crate::audit::Event;
use crate::core::client::Transport;
use crate::core::log_limit::LogLimit;
use crate::core::principal::Principal;
use crate::error::Error;
use crate::metrics::{self, AuthResult, ConnectionMetrics};
use frames::{Seen, WsSink, WsSource};
use upgrade::{Binding, Unauthorized};

/// How long a client may take to send its request head (as the admin endpoint allows).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes a connection reads per socket read, and the buffer it holds while idle. tungstenite's
/// default, 128 KiB, is allocated per connection and zero-filled before every read: 132,000 of
/// 159,000 instructions per round trip in callgrind (docs/benchmarks.md), and 128 KiB of every
/// idle connection's memory. Larger messages grow the buffer as they arrive, as NDJSON's do.
const READ_BUFFER: usize = 4 * 1024;

/// The subject a connection has without authentication: its derived session is
/// `user:anonymous`.
const ANONYMOUS: &str = "anonymous";

/// A bound WebSocket listener and its settings.
pub struct Listener {
    socket: TcpListener,
    config: WebSocketConfig,
}

impl Listener {
    /// The address it is bound to (port 0 resolved).
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Binds the listener `config` describes (before workers start, like every listener).
///
/// # Errors
///
/// [`Error::bind`] naming the address.
pub async fn bind(config: &WebSocketConfig) -> Result<Listener, Error> {
    let address = &config.listen;
    let cannot = |e| {
        Error::bind(
            format!("cannot listen for WebSocket clients on {address}"),
            e,
        )
    };
    let socket = super::listen::bind_tcp(address).await.map_err(cannot)?;
    let local = socket.local_addr().map_err(cannot)?;
    tracing::info!(transport = "websocket", addr = %local, "listening");
    Ok(Listener {
        socket,
        config: config.clone(),
    })
}

/// What every connection of one listener shares.
#[derive(Clone)]
struct Front {
    /// What every listener shares (router, limits, auth, writers, drain).
    shared: Listening,
    config: Arc<WebSocketConfig>,
    /// `routing.session_id_field` (the config makes it a top-level name with listeners).
    session_field: Arc<str>,
    counts: Arc<ConnectionMetrics>,
    /// The listener's limit on authentication refusal lines (log and audit).
    refusals: Arc<LogLimit>,
}

/// Serves WebSocket clients from `listener` until `drain` is cancelled; connections already
/// upgraded live on until the drain closes them (close code 1001). With `auth` and bearer
/// credentials configured, every upgrade must present one; otherwise every client is the
/// default tenant's.
pub(crate) async fn serve(
    listener: Listener,
    tls: Option<Arc<Tls>>,
    session_field: Arc<str>,
    listening: Listening,
) {
    let (capacity, drain) = (listening.capacity.clone(), listening.drain.clone());
    let front = Front {
        shared: listening,
        config: Arc::new(listener.config),
        session_field,
        counts: Arc::new(ConnectionMetrics::new(Transport::WebSocket.as_str())),
        refusals: Arc::default(),
    };
    loop {
        tokio::select! {
            accepted = listener.socket.accept() => match accepted {
                // Over the cap, the stream is dropped here: closed at once.
                Ok((stream, peer)) => match capacity.take() {
                    Some(seat) => {
                        // Replies are small and latency matters more than packet count.
                        let _ = stream.set_nodelay(true);
                        let front = front.clone();
                        match tls.clone() {
                            // The handshake runs in the connection's task, holding its seat, so
                            // a slow one never holds up the accept loop.
                            Some(tls) => tokio::spawn(async move {
                                if let Some(stream) = tls.accept(stream, peer).await {
                                    front.http(stream, peer, seat).await;
                                }
                            }),
                            None => tokio::spawn(front.http(stream, peer, seat)),
                        };
                    }
                    None => front.counts.refused(),
                },
                Err(error) => {
                    tracing::warn!(%error, "websocket accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            () = drain.cancelled() => return,
        }
    }
}

impl Front {
    /// Serves HTTP on one accepted stream (plain TCP, or TLS over it), holding its `seat` under `max_connections` until the connection, upgraded or not,
    /// ends.
    async fn http<S>(self, stream: S, peer: SocketAddr, seat: Seat)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let seat = Arc::new(seat);
        let service = hyper::service::service_fn(move |request| {
            let front = self.clone();
            let seat = seat.clone();
            async move { Ok::<_, Infallible>(front.answer(request, peer, seat).await) }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(READ_TIMEOUT);
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        if let Err(error) = connection.await {
            tracing::debug!(%error, "websocket http connection failed");
        }
    }

    /// Answers one request: a probe, a refusal, or the upgrade.
    async fn answer<B>(self, request: Request<B>, peer: SocketAddr, seat: Arc<Seat>) -> Response {
        let (mut parts, _) = request.into_parts();
        let upgrading = parts.headers.contains_key(header::UPGRADE);
        if parts.method == Method::GET && !upgrading {
            match parts.uri.path() {
                "/healthz" => return probes::healthz(),
                "/readyz" => return probes::readyz(&self.shared.router),
                _ => {}
            }
        }
        if !upgrade::origin_allowed(&parts.headers, &self.config.allowed_origins) {
            return StatusCode::FORBIDDEN.into_response();
        }
        let principal = match self.principal(&parts.headers, peer) {
            Ok(principal) => principal,
            Err(unauthorized) => {
                let body = unauthorized.body();
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::CONTENT_TYPE, PLAIN_TEXT)],
                    body,
                )
                    .into_response();
            }
        };
        let binding = Binding {
            query: &self.config.session_query,
            header: &self.config.session_header,
            max_bytes: self.shared.limits.max_session_id_bytes,
        };
        let subject = match self.shared.auth.current() {
            Some(_) => &*principal.subject,
            None => ANONYMOUS,
        };
        let session = match binding.session(&parts.uri, &parts.headers, subject) {
            Ok(session) => session,
            Err(why) => {
                return (
                    StatusCode::BAD_REQUEST,
                    [(header::CONTENT_TYPE, PLAIN_TEXT)],
                    why,
                )
                    .into_response()
            }
        };
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade,
            Err(rejection) => return rejection.into_response(),
        };
        // No subprotocol and no extension is offered back (Codex offers none either), and the
        // TUI's `x-codex-app-server-compression` is not echoed: this front speaks plain text.
        upgrade
            .read_buffer_size(READ_BUFFER)
            .max_frame_size(self.config.max_frame_bytes)
            .max_message_size(self.config.max_message_bytes)
            .on_upgrade(move |socket| self.session(socket, principal, session.into(), seat))
            .into_response()
    }

    /// Who the request is: with bearer credentials configured, the holder of its `Authorization`
    /// (recorded in the audit trail either way); otherwise the default tenant.
    fn principal(
        &self,
        headers: &axum::http::HeaderMap,
        peer: SocketAddr,
    ) -> Result<Principal, Unauthorized> {
        // The credentials in force now: a reload may have replaced those of the listener's start.
        let auth = match self.shared.auth.current() {
            Some(auth) if auth.accepts_bearers() => auth,
            _ => return Ok(Principal::anonymous(Transport::WebSocket.as_str())),
        };
        let audit = self.shared.router.audit();
        let peer_text = audit.enabled().then(|| peer.to_string());
        let verified = upgrade::bearer(headers)
            .and_then(|token| auth.verify(token).map_err(Unauthorized::Refused));
        match verified {
            Ok(identity) => {
                metrics::get().auth(AuthResult::Ok);
                audit.record(&Event::Authenticated {
                    transport: Transport::WebSocket.as_str(),
                    peer: peer_text.as_deref(),
                    method: identity.method,
                    tenant: &identity.tenant,
                    subject: &identity.subject,
                });
                Ok(principal(identity))
            }
            Err(unauthorized) => {
                metrics::get().auth(AuthResult::Refused);
                if let Some(suppressed) = self.refusals.admit(std::time::Instant::now()) {
                    let reason = unauthorized.reason();
                    tracing::info!(reason, suppressed, %peer, "websocket client not authenticated");
                    audit.record(&Event::AuthenticationRefused {
                        transport: Transport::WebSocket.as_str(),
                        peer: peer_text.as_deref(),
                        reason,
                        suppressed,
                    });
                }
                Err(unauthorized)
            }
        }
    }

    /// Serves an upgraded connection of `principal`, bound to `session`. It is not closed for
    /// idleness: the Codex TUI sits idle between turns and sends no pings.
    async fn session(
        self,
        socket: WebSocket,
        principal: Principal,
        session: Box<str>,
        _seat: Arc<Seat>,
    ) {
        let (sink, stream) = socket.split();
        let seen = Arc::new(Seen::default());
        let peer = Peer {
            transport: Transport::WebSocket,
            principal,
            counts: &self.counts,
            stall: Duration::from_secs(self.shared.limits.backpressure_timeout_sec),
            idle: None,
            first_reply: None,
            bound_session: Some(session.clone()),
        };
        let source = WsSource {
            stream,
            seen: seen.clone(),
            session_field: self.session_field.clone(),
            bound: session.clone(),
        };
        let sink = WsSink {
            sink,
            seen,
            session_field: self.session_field.clone(),
            bound: session,
            drain: self.shared.drain.clone(),
        };
        connection::serve(
            self.shared.router.clone(),
            peer,
            source,
            sink,
            &self.shared.writers,
        )
        .await;
    }
}
