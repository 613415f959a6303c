//! Layer 3, I/O: client transports (stdio, Unix socket, TCP) and worker pipes, all reading through
//! the one frame loop in `frames`.
//!
//! A client connection is a source and sink of messages (`connection`); NDJSON is its framing on
//! every transport today (`ndjson`). Worker pipes (`worker`) feed a slot's queue to the
//! worker's stdin and hand its stdout lines to a `WorkerSink`.
//!
//! Imports: the core, the router (to route client messages) and the metrics leaf.

pub(crate) mod capacity;
pub(crate) mod connection;
pub(crate) mod frames;
pub mod listen;
pub(crate) mod ndjson;
pub(crate) mod stdio;
pub(crate) mod worker;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use codex_bus_config::Limits;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::client::Transport;
use crate::core::principal::Principal;
use crate::metrics::ConnectionMetrics;
use crate::router::Router;
use capacity::{Capacity, Seat};
use connection::Peer;
use listen::Bound;
use ndjson::{NdjsonSink, NdjsonSource};

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
pub(crate) const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves clients from `bound` until `drain` is cancelled (or, for stdio, until stdin ends, which
/// then cancels `drain` itself).
pub(crate) async fn serve(
    bound: Bound,
    router: Arc<Router>,
    limits: Limits,
    writers: TaskTracker,
    drain: CancellationToken,
) {
    let transport = bound.transport();
    // Resolved once per listener: a connection costs two atomic adds, not a label lookup.
    let counts = Arc::new(ConnectionMetrics::new(transport.as_str()));
    let lines = Lines {
        router,
        limits,
        writers,
        counts,
        transport,
    };
    match bound {
        Bound::Stdio => {
            let (input, output) = stdio::streams();
            tokio::select! {
                () = lines.serve(input, output, None) => {
                    tracing::info!("stdin closed; draining");
                    drain.cancel();
                }
                () = drain.cancelled() => {}
            }
        }
        Bound::Tcp(_) | Bound::Unix(..) => {
            let capacity = Arc::new(Capacity::new(
                lines.limits.max_connections,
                lines.router.slots().count(),
            ));
            loop {
                tokio::select! {
                    accepted = accept(&bound) => match accepted {
                        // Over the cap, the stream is dropped here: closed at once.
                        Ok(accepted) => match capacity.take() {
                            Some(seat) => match accepted {
                                Accepted::Tcp(stream) => {
                                    let (reader, writer) = stream.into_split();
                                    tokio::spawn(lines.clone().serve(reader, writer, Some(seat)));
                                }
                                Accepted::Unix(stream) => {
                                    let (reader, writer) = stream.into_split();
                                    tokio::spawn(lines.clone().serve(reader, writer, Some(seat)));
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

/// What every NDJSON connection of one listener shares.
#[derive(Clone)]
struct Lines {
    router: Arc<Router>,
    limits: Limits,
    writers: TaskTracker,
    counts: Arc<ConnectionMetrics>,
    transport: Transport,
}

impl Lines {
    /// Serves one NDJSON connection over `reader` and `writer`, holding its `seat` under
    /// `max_connections` until it is done (stdio takes none: it is the only client).
    async fn serve<R, W>(self, reader: R, writer: W, seat: Option<Seat>)
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let peer = Peer {
            transport: self.transport,
            // No authentication yet: every connection is the default tenant's.
            principal: Principal::anonymous(self.transport.as_str()),
            counts: &self.counts,
            stall: Duration::from_secs(self.limits.backpressure_timeout_sec),
            idle: seat
                .is_some()
                .then(|| Duration::from_secs(self.limits.client_idle_sec)),
        };
        let source = NdjsonSource::new(reader, self.limits.max_input_buffer);
        connection::serve(
            self.router.clone(),
            peer,
            source,
            NdjsonSink(writer),
            &self.writers,
        )
        .await;
        drop(seat);
    }
}

/// A connection accepted on a socket listener.
enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Accepts the next connection on a socket listener.
async fn accept(bound: &Bound) -> io::Result<Accepted> {
    match bound {
        Bound::Tcp(listener) => {
            let (stream, _) = listener.accept().await?;
            // Replies are small and latency matters more than packet count.
            stream.set_nodelay(true)?;
            Ok(Accepted::Tcp(stream))
        }
        Bound::Unix(listener, _) => Ok(Accepted::Unix(listener.accept().await?.0)),
        Bound::Stdio => std::future::pending().await,
    }
}
