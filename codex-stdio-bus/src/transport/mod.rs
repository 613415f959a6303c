//! Client transports: stdio, Unix socket and TCP, all feeding the same connection handler.

pub mod connection;
pub mod listen;
pub mod stdio;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use codex_bus_config::Limits;
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::Transport;
use crate::router::Router;
use listen::Bound;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves clients from `bound` until `drain` is cancelled (or, for stdio, until stdin ends, which
/// then cancels `drain` itself).
pub async fn serve(
    bound: Bound,
    router: Arc<Router>,
    limits: Limits,
    writers: TaskTracker,
    drain: CancellationToken,
) {
    match bound {
        Bound::Stdio => {
            let (input, output) = stdio::streams();
            let serve =
                connection::serve(router, Transport::Stdio, input, output, limits, &writers);
            tokio::select! {
                () = serve => {
                    tracing::info!("stdin closed; draining");
                    drain.cancel();
                }
                () = drain.cancelled() => {}
            }
        }
        Bound::Tcp(_) | Bound::Unix(..) => loop {
            tokio::select! {
                accepted = accept(&bound) => match accepted {
                    Ok(stream) => spawn_connection(stream, &router, limits, &writers),
                    Err(error) => accept_failed(error).await,
                },
                () = drain.cancelled() => return,
            }
        },
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

/// Serves an accepted connection on its own task.
fn spawn_connection(stream: Accepted, router: &Arc<Router>, limits: Limits, writers: &TaskTracker) {
    let (router, writers) = (router.clone(), writers.clone());
    match stream {
        Accepted::Tcp(stream) => tokio::spawn(async move {
            let (reader, writer) = stream.into_split();
            connection::serve(router, Transport::Tcp, reader, writer, limits, &writers).await
        }),
        Accepted::Unix(stream) => tokio::spawn(async move {
            let (reader, writer) = stream.into_split();
            connection::serve(router, Transport::Unix, reader, writer, limits, &writers).await
        }),
    };
}

/// Logs a failed accept and pauses briefly.
async fn accept_failed(error: io::Error) {
    tracing::warn!(%error, "accept failed");
    tokio::time::sleep(ACCEPT_RETRY).await;
}
