//! One client connection, whatever its framing: register it with the router, write what is queued
//! for it, read and route its messages, and forget it once it is done.
//!
//! The seam is [`MessageSource`] and [`MessageSink`]: a connection is a source and a sink of
//! JSON-RPC messages with a principal (and, for transports that bind one, a session). NDJSON over a
//! byte stream (the `ndjson` module) is one framing; nothing above this layer knows which one a
//! client uses.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::client::{Client, Transport};
use crate::core::outbox::{Stop, WriteFailed};
use crate::core::principal::Principal;
use crate::metrics::{self, ConnectionMetrics, Discard, Disconnect};
use crate::router::Router;

/// The reading half of a connection: cuts whole messages out of what the peer sends.
pub(crate) trait MessageSource: Send {
    /// Hands every message the peer sends to `router` as `client`'s, until the peer's input ends
    /// or fails. Waits while `client` has more replies queued than it may (backpressure).
    fn pump(&mut self, router: &Router, client: &Arc<Client>) -> impl Future<Output = ()> + Send;
}

/// The writing half of a connection: frames the messages queued for the client.
pub(crate) trait MessageSink: Send + 'static {
    /// Writes `client`'s queued messages until its queue is closed and empty; fails when a write
    /// fails, when the queue overflows its hard cap, or when it stays over its soft limit for
    /// `stall`.
    fn drain(
        self,
        client: &Client,
        stall: Duration,
    ) -> impl Future<Output = Result<(), WriteFailed>> + Send;
}

/// How a connection is served: who it is and the limits it lives under.
pub(crate) struct Peer<'a> {
    /// How it is connected.
    pub transport: Transport,
    /// Who it is.
    pub principal: Principal,
    /// Its listener's connection counters.
    pub counts: &'a ConnectionMetrics,
    /// `backpressure_timeout_sec`: how long the client's output queue may stay over
    /// `max_output_queue`.
    pub stall: Duration,
    /// `client_idle_sec`: how long the client may complete no line with no request in flight
    /// before it is closed; `None` for stdio, the daemon's only client.
    pub idle: Option<Duration>,
    /// A line to queue as soon as the client is registered, before anything it sends is read:
    /// the reply to its `bus/authenticate`.
    pub first_reply: Option<Vec<u8>>,
    /// The session the connection is bound to, if its transport binds one (WebSocket).
    pub bound_session: Option<Box<str>>,
}

/// Serves a client until it closes its input and every request it sent has been answered, or it
/// stops reading, or its connection fails.
///
/// The writer runs as its own task on `writers`, so the daemon can wait at exit until every reply
/// it has queued is flushed.
pub(crate) async fn serve<S, K>(
    router: Arc<Router>,
    peer: Peer<'_>,
    mut source: S,
    sink: K,
    writers: &TaskTracker,
) where
    S: MessageSource,
    K: MessageSink,
{
    let client = router.connect(peer.transport, peer.principal, peer.bound_session);
    if let Some(line) = &peer.first_reply {
        client.out.push(|buf| buf.extend_from_slice(line));
    }
    tracing::debug!(?client, "client connected");
    peer.counts.connected();
    // Cancelled when the writer gives up: nothing more can reach this client, so stop reading it.
    let gone = CancellationToken::new();
    let stall = peer.stall;
    writers.spawn({
        let client = client.clone();
        let gone = gone.clone();
        async move {
            if let Err(failed) = sink.drain(&client, stall).await {
                writer_failed(&client, failed, stall);
            }
            gone.cancel();
        }
    });

    if !client.admitted {
        // Over its tenant's quota: the writer sends the refusal and ends; nothing is read.
        gone.cancelled().await;
        peer.counts.disconnected();
        return;
    }
    tokio::select! {
        () = source.pump(&router, &client) => {
            // End of input: the requests already sent still get their replies, but the worker
            // requests this client holds never get its answer; refused now, since a request of
            // its own may be waiting on one.
            router.input_closed(&client);
            tokio::select! {
                () = client.wait_idle() => {}
                () = gone.cancelled() => {}
            }
        }
        () = gone.cancelled() => {}
        () = idle(&client, peer.idle) => {
            peer.counts.idle_closed();
            tracing::info!(?client, "client completed no line for client_idle_sec; closing");
        }
    }
    router.disconnect(&client);
    peer.counts.disconnected();
    tracing::debug!(?client, "client disconnected");
}

/// Resolves once `client` has been idle for `limit` (never without one): no line completed, and
/// no request in flight, for that long. Wakes about once per `limit`, not per message (the reader
/// only stores the time of each line); while a request is in flight, every quarter `limit`, so the
/// idle time after its reply counts from within a quarter period of that reply.
async fn idle(client: &Client, limit: Option<Duration>) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    // The last check that found a request in flight.
    let mut busy_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let wait = match client.idle_for(now) {
            None => {
                busy_at = Some(now);
                limit / 4
            }
            Some(idle) => {
                let idle = busy_at.map_or(idle, |busy| idle.min(now - busy));
                if idle >= limit {
                    return;
                }
                limit - idle
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Counts the messages a failed writer leaves undelivered (never silently lost) and says why.
fn writer_failed(client: &Client, failed: WriteFailed, stall: Duration) {
    let lost = failed.unsent + client.out.close_discarding();
    metrics::get().dropped_many(Discard::ClientGone, lost);
    match failed.stop {
        Stop::Overflow { queued } => {
            metrics::get().disconnected(Disconnect::OutputOverflow);
            tracing::warn!(
                ?client,
                queued_bytes = queued,
                max_output_bytes = client.out.cap(),
                lost,
                "client output queue over max_output_bytes; disconnecting"
            );
        }
        Stop::Stalled { queued } => {
            metrics::get().disconnected(Disconnect::Stalled);
            tracing::warn!(
                ?client,
                queued_bytes = queued,
                max_output_queue = client.out.limit(),
                timeout_sec = stall.as_secs(),
                lost,
                "client output queue stayed over max_output_queue for backpressure_timeout_sec; disconnecting"
            );
        }
        Stop::Write(error) => {
            tracing::debug!(?client, %error, lost, "client write failed");
        }
    }
}
