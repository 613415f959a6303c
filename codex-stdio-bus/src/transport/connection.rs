//! Serving one client connection: read and route its lines, write what the workers send back.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_config::Limits;
use codex_bus_protocol::{ErrorKind, Frame, LineFramer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{Client, Transport};
use crate::metrics::{self, Direction, Discard};
use crate::router::Router;

/// Serves a client until it closes its input and every request it sent has been answered, or it
/// stops reading, or its connection fails.
///
/// The writer runs as its own task on `writers`, so the daemon can wait at exit until every reply
/// it has queued is flushed.
pub async fn serve<R, W>(
    router: Arc<Router>,
    transport: Transport,
    mut reader: R,
    mut writer: W,
    limits: Limits,
    writers: &TaskTracker,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let client = router.connect(transport);
    tracing::debug!(?client, "client connected");
    metrics::get().connection(transport, 1);
    // Cancelled when the writer gives up: nothing more can reach this client, so stop reading it.
    let gone = CancellationToken::new();
    let stall = Duration::from_secs(limits.backpressure_timeout_sec);
    writers.spawn({
        let client = client.clone();
        let gone = gone.clone();
        async move {
            let written = metrics::get().bytes(Direction::ToClient);
            match client
                .out
                .drain_into(&mut writer, Some(stall), written)
                .await
            {
                Ok(()) => {}
                Err(failed) => {
                    // Replies that can no longer reach the client are counted, never silently lost.
                    let lost = failed.unsent + client.out.close_discarding();
                    metrics::get().dropped_many(Discard::ClientGone, lost);
                    if failed.error.kind() == io::ErrorKind::TimedOut {
                        tracing::warn!(
                            ?client,
                            timeout_sec = stall.as_secs(),
                            lost,
                            "client read nothing for backpressure_timeout_sec; disconnecting"
                        );
                    } else {
                        tracing::debug!(?client, error = %failed.error, lost, "client write failed");
                    }
                }
            }
            gone.cancel();
        }
    });

    tokio::select! {
        () = read_client(&router, &client, &mut reader, limits.max_input_buffer) => {
            // End of input: the requests already sent still get their replies.
            tokio::select! {
                () = client.wait_idle() => {}
                () = gone.cancelled() => {}
            }
        }
        () = gone.cancelled() => {}
    }
    router.disconnect(&client);
    metrics::get().connection(transport, -1);
    tracing::debug!(?client, "client disconnected");
}

/// Reads and routes lines until end of input or a read error.
async fn read_client<R>(router: &Router, client: &Arc<Client>, reader: &mut R, max_line: usize)
where
    R: AsyncRead + Unpin,
{
    let mut framer = LineFramer::new(max_line);
    let bytes = metrics::get().bytes(Direction::FromClient);
    loop {
        // Backpressure toward a client that does not read its replies: stop reading its requests.
        client.out.wait_for_space().await;
        match reader.read(framer.spare()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.increment(n as u64);
                framer.filled(n);
            }
        }
        let received = Instant::now();
        while let Some(frame) = framer.next_frame() {
            route_frame(router, client, frame, max_line, received).await;
        }
    }
    // A last line without its newline is still a message.
    if let Some(frame) = framer.finish() {
        route_frame(router, client, frame, max_line, Instant::now()).await;
    }
}

/// Routes one framed line, or refuses an oversize one.
async fn route_frame(
    router: &Router,
    client: &Arc<Client>,
    frame: Frame<'_>,
    max_line: usize,
    received: Instant,
) {
    metrics::get().messages(Direction::FromClient).increment(1);
    match frame {
        Frame::Line(line) => router.client_line(client, line, received).await,
        Frame::Oversize { .. } => {
            let detail = format!("line longer than max_input_buffer ({max_line} bytes); skipped");
            client.send_error(None, ErrorKind::MessageTooLarge, Some(&detail));
        }
    }
}
