//! Layer 3, I/O: client transports (stdio, Unix socket, TCP, WebSocket) and worker pipes.
//!
//! A client connection is a source and sink of messages (`connection`); NDJSON is its framing on
//! stdio, Unix sockets and TCP (`ndjson`, reading through the one frame loop in `frames`; over TLS
//! on a TCP listener that has it, `tls`), a
//! text frame per message on WebSocket (`websocket`), whose HTTP port answers the same probes as
//! the admin endpoint (`probes`). Worker pipes (`worker`) feed a slot's queue to the
//! worker's stdin and hand its stdout lines to a `WorkerSink`.
//!
//! Imports: the core, the router (to route client messages), and the auth (principals) and
//! metrics leaves.

pub(crate) mod authenticate;
pub(crate) mod capacity;
pub(crate) mod connection;
pub(crate) mod frames;
pub mod listen;
pub(crate) mod ndjson;
pub(crate) mod probes;
pub(crate) mod stdio;
pub(crate) mod tls;
pub mod websocket;
pub(crate) mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use codex_bus_config::Limits;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Event;
use crate::auth::{Credentials, Identity};
use crate::core::client::Transport;
use crate::core::log_limit::LogLimit;
use crate::core::principal::Principal;
use crate::metrics::{self, AuthResult, ConnectionMetrics};
use crate::router::Router;
use capacity::{Capacity, Seat};
use connection::Peer;
use listen::Bound;
use ndjson::{NdjsonSink, NdjsonSource};
use tls::Tls;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
pub(crate) const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves clients from `bound` until `drain` is cancelled (or, for stdio, until stdin ends, which
/// then cancels `drain` itself). With `auth`, every connection gets its principal from it
/// (`authenticate` for TCP); without, every connection is the default tenant's. With `tls`, a TCP
/// connection completes a TLS handshake before anything else (holding its seat meanwhile); the
/// other transports are local and ignore it.
pub(crate) async fn serve(bound: Bound, tls: Option<Arc<Tls>>, listening: Listening) {
    let (capacity, drain) = (listening.capacity.clone(), listening.drain.clone());
    let transport = bound.transport();
    // Resolved once per listener: a connection costs two atomic adds, not a label lookup.
    let counts = Arc::new(ConnectionMetrics::new(transport.as_str()));
    let lines = Lines {
        shared: listening,
        counts,
        transport,
        refusals: Arc::default(),
    };
    match bound {
        Bound::Stdio => {
            let (input, output) = stdio::streams();
            let arrival = match lines.shared.auth.current() {
                Some(auth) => Arrival::Known(lines.authenticated(auth.stdio(), None)),
                None => Arrival::Known(Principal::anonymous(transport.as_str())),
            };
            tokio::select! {
                () = lines.serve(input, output, None, arrival) => {
                    tracing::info!("stdin closed; draining");
                    drain.cancel();
                }
                () = drain.cancelled() => {}
            }
        }
        Bound::Tcp(_) | Bound::Unix(..) => {
            loop {
                tokio::select! {
                    accepted = accept(&bound) => match accepted {
                        // Over the cap, the stream is dropped here: closed at once.
                        Ok(accepted) => match capacity.take() {
                            Some(seat) => match accepted {
                                Accepted::Tcp(stream, peer) => {
                                    lines.spawn_tcp(stream, peer, seat, tls.as_ref());
                                }
                                Accepted::Unix(stream) => {
                                    let Some(arrival) = lines.unix_arrival(&stream) else {
                                        continue;
                                    };
                                    let (reader, writer) = stream.into_split();
                                    tokio::spawn(lines.clone().serve(reader, writer, Some(seat), arrival));
                                }
                            },
                            None => lines.counts.refused(),
                        },
                        Err(error) => {
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(ACCEPT_RETRY).await;
                        }
                    },
                    () = drain.cancelled() => return,
                }
            }
        }
    }
}

/// What every client listener shares (NDJSON and WebSocket alike).
#[derive(Clone)]
pub(crate) struct Listening {
    /// Where messages go.
    pub router: Arc<Router>,
    /// The daemon's limits.
    pub limits: Limits,
    /// Who clients are, when `auth` is configured: the authenticator in force, which a reload
    /// may replace (a connection keeps the principal it authenticated as).
    pub auth: Arc<Credentials>,
    /// One cap for all listeners: `limits.max_connections` (and the fds it keeps for worker
    /// restarts) counts every client connection, whichever port it came in on.
    pub capacity: Arc<Capacity>,
    /// The connections' writer tasks, waited for at exit so queued replies are flushed.
    pub writers: TaskTracker,
    /// Cancelled when the daemon stops accepting.
    pub drain: CancellationToken,
}

/// What every NDJSON connection of one listener shares.
#[derive(Clone)]
struct Lines {
    /// What every listener shares (router, limits, auth, writers, drain).
    shared: Listening,
    counts: Arc<ConnectionMetrics>,
    transport: Transport,
    /// The listener's limit on authentication refusal lines (log and audit).
    refusals: Arc<LogLimit>,
}

/// Who a new connection is, or how it will tell.
enum Arrival {
    /// Known from the transport: stdio, a Unix peer's uid, or anyone without `auth`.
    Known(Principal),
    /// To be learnt from its first line (`bus/authenticate`), checked by the credentials then in
    /// force; the peer's address, for the audit trail.
    Handshake(SocketAddr),
}

impl Lines {
    /// A TCP connection: it authenticates when `auth` gives bearer credentials; otherwise (no
    /// `auth`, or `auth.insecure_no_auth` without credentials) it is the default tenant's.
    fn tcp_arrival(&self, peer: SocketAddr) -> Arrival {
        match self.shared.auth.current() {
            Some(auth) if auth.accepts_bearers() => Arrival::Handshake(peer),
            _ => Arrival::Known(Principal::anonymous(self.transport.as_str())),
        }
    }

    /// Serves a TCP connection in a task of its own, holding `seat`: over TLS when the listener
    /// has `tls`, once the handshake completes (in that task, so a slow handshake never holds up
    /// the accept loop; a failed one just ends it).
    fn spawn_tcp(&self, stream: TcpStream, peer: SocketAddr, seat: Seat, tls: Option<&Arc<Tls>>) {
        let arrival = self.tcp_arrival(peer);
        let lines = self.clone();
        match tls.cloned() {
            Some(tls) => tokio::spawn(async move {
                if let Some(stream) = tls.accept(stream, peer).await {
                    let (reader, writer) = tokio::io::split(stream);
                    lines.serve(reader, writer, Some(seat), arrival).await;
                }
            }),
            None => {
                let (reader, writer) = stream.into_split();
                tokio::spawn(lines.serve(reader, writer, Some(seat), arrival))
            }
        };
    }

    /// A Unix-socket connection: with `auth`, the tenant of its peer's uid (`SO_PEERCRED`);
    /// `None` (the connection is dropped) when the kernel does not say who the peer is.
    fn unix_arrival(&self, stream: &UnixStream) -> Option<Arrival> {
        let Some(auth) = self.shared.auth.current() else {
            return Some(Arrival::Known(Principal::anonymous(
                self.transport.as_str(),
            )));
        };
        match stream.peer_cred() {
            Ok(credentials) => {
                let identity = auth.unix(credentials.uid());
                metrics::get().auth(AuthResult::Ok);
                tracing::info!(tenant = %identity.tenant, subject = %identity.subject, "unix client authenticated");
                Some(Arrival::Known(self.authenticated(identity, None)))
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read a Unix client's peer credentials; closing it");
                None
            }
        }
    }

    /// The principal of `identity`, recorded in the audit trail as authenticated (from `peer`).
    fn authenticated(&self, identity: Identity, peer: Option<&str>) -> Principal {
        self.shared.router.audit().record(&Event::Authenticated {
            transport: self.transport.as_str(),
            peer,
            method: identity.method,
            tenant: &identity.tenant,
            subject: &identity.subject,
        });
        principal(identity)
    }

    /// Serves one NDJSON connection over `reader` and `writer`, holding its `seat` under
    /// `max_connections` until it is done (stdio takes none: it is the only client). A
    /// connection that must authenticate is registered only once it has.
    async fn serve<R, W>(self, mut reader: R, mut writer: W, seat: Option<Seat>, arrival: Arrival)
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        match arrival {
            Arrival::Known(principal) => self.serve_as(reader, writer, seat, principal, None).await,
            Arrival::Handshake(peer) => {
                let audit = self.shared.router.audit();
                let exchange = authenticate::handshake(
                    &self.shared.auth,
                    audit,
                    &self.refusals,
                    peer,
                    &mut reader,
                    &mut writer,
                );
                let Some(done) = exchange.await else {
                    return;
                };
                // What the client pipelined behind its bus/authenticate is read first.
                let reader = std::io::Cursor::new(done.pipelined).chain(reader);
                self.serve_as(reader, writer, seat, done.principal, Some(done.reply))
                    .await;
            }
        }
    }

    /// Serves a connection whose principal is known; `first_reply` is queued once it is
    /// registered.
    async fn serve_as<R, W>(
        self,
        reader: R,
        writer: W,
        seat: Option<Seat>,
        principal: Principal,
        first_reply: Option<Vec<u8>>,
    ) where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let peer = Peer {
            transport: self.transport,
            principal,
            counts: &self.counts,
            stall: Duration::from_secs(self.shared.limits.backpressure_timeout_sec),
            idle: seat
                .is_some()
                .then(|| Duration::from_secs(self.shared.limits.client_idle_sec)),
            first_reply,
            bound_session: None,
        };
        let source = NdjsonSource::new(reader, self.shared.limits.max_input_buffer);
        connection::serve(
            self.shared.router.clone(),
            peer,
            source,
            NdjsonSink(writer),
            &self.shared.writers,
        )
        .await;
        drop(seat);
    }
}

/// The principal of a verified identity.
fn principal(identity: Identity) -> Principal {
    Principal {
        tenant: identity.tenant,
        subject: identity.subject,
    }
}

/// A connection accepted on a socket listener.
enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

/// Accepts the next connection on a socket listener.
async fn accept(bound: &Bound) -> io::Result<Accepted> {
    match bound {
        Bound::Tcp(listener) => {
            let (stream, peer) = listener.accept().await?;
            // Replies are small and latency matters more than packet count.
            stream.set_nodelay(true)?;
            Ok(Accepted::Tcp(stream, peer))
        }
        Bound::Unix(listener, _) => Ok(Accepted::Unix(listener.accept().await?.0)),
        Bound::Stdio => std::future::pending().await,
    }
}
