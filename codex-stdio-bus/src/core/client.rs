//! A connected client's output side: the queue of messages toward it, the worker requests it has
//! been asked to answer, and its requests still in flight.
//!
//! This is what routing sees of a client, whatever its framing: messages are queued as complete
//! lines (each ends in `\n`, which no NDJSON message contains) and the client's writer frames them
//! for its transport.

use std::fmt;
use std::ops::Range;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use codex_bus_protocol::{
    append_error_reply_hinted, append_with_bus_id, append_with_token_without, ErrorHint, ErrorKind,
    Span,
};

use super::address::SlotAddress;
use super::id_map::IdMap;
use super::id_token::IdToken;
use super::outbox::Outbox;
use super::principal::Principal;
use super::tenant::Tenant;

/// How a client is connected (for logs and the connection metrics' `transport` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// The daemon's own stdin/stdout.
    Stdio,
    /// A Unix domain socket connection.
    Unix,
    /// A TCP connection.
    Tcp,
    /// A WebSocket connection (one message per text frame, one session per connection).
    WebSocket,
}

impl Transport {
    /// The lower-case name used in logs and labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Stdio => "stdio",
            Transport::Unix => "unix",
            Transport::Tcp => "tcp",
            Transport::WebSocket => "websocket",
        }
    }
}

/// A request a worker sent to this client, awaiting the client's answer.
pub(crate) struct WorkerRequest {
    /// The slot whose worker asked.
    pub slot: SlotAddress,
    /// The worker process that asked; a restarted successor must not get the answer.
    pub generation: u64,
    /// The worker's own id token, restored on the answer.
    pub id: IdToken,
}

/// Requests from workers awaiting this client's answer, keyed by the id the client saw.
///
/// Worker ids are namespaced per client exactly like client ids are per worker: two workers may both
/// send request id 0 to the same client.
#[derive(Default)]
pub(crate) struct ClientBook {
    asked: IdMap<WorkerRequest>,
    next_id: u64,
    /// The client's input ended: it can answer no worker request any more.
    input_closed: bool,
}

/// Why a worker request could not be forwarded to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotForwarded {
    /// The client is gone (its output queue is closed).
    Gone,
    /// The client's input ended, so it could never answer.
    InputClosed,
}

/// One client connection.
pub(crate) struct Client {
    /// Unique for the life of the daemon; sessions remember their last client by it.
    pub id: u64,
    /// How it is connected.
    pub transport: Transport,
    /// Who it is, fixed at connect time.
    pub principal: Principal,
    /// The principal's tenant: what its connections hold against its quotas.
    pub tenant: Arc<Tenant>,
    /// Whether the connection was admitted (counted against its tenant's connection quota and
    /// known to the router); a refused one only carries its refusal to the client.
    pub admitted: bool,
    /// The session every message of this connection belongs to when the transport binds one
    /// (a WebSocket connection per session), as the client knows it (no tenant prefix): the
    /// router adds it to the messages that name none. `None` for NDJSON streams, whose
    /// messages name their session themselves.
    pub bound_session: Option<Box<str>>,
    /// Lines toward the client, plus the worker requests it holds.
    pub out: Outbox<ClientBook>,
    /// Requests of this client that no one has answered yet (a closing client waits for them).
    in_flight: AtomicUsize,
    /// Signalled when `in_flight` drops to zero.
    idle: Notify,
    /// When the client connected: the origin of `last_line_ms`.
    connected_at: Instant,
    /// When the client last completed a line, in milliseconds after `connected_at`
    /// (`client_idle_sec`). One relaxed store per line.
    last_line_ms: AtomicU64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client#{}({}, {})",
            self.id,
            self.transport.as_str(),
            self.principal
        )
    }
}

/// How much a client's output queue holds, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutputBounds {
    /// About this much before the client's reads pause (`limits.max_output_queue`).
    pub soft: usize,
    /// Never more than this: the push that would exceed it disconnects the client
    /// (`limits.max_output_bytes`).
    pub cap: usize,
}

impl Client {
    /// A client of `tenant` (`admitted` as the router decided) whose output queue is bounded by
    /// `output`.
    pub(crate) fn new(
        id: u64,
        transport: Transport,
        principal: Principal,
        (tenant, admitted): (Arc<Tenant>, bool),
        bound_session: Option<Box<str>>,
        output: OutputBounds,
    ) -> Self {
        Client {
            id,
            transport,
            principal,
            tenant,
            admitted,
            bound_session,
            out: Outbox::with_cap(output.soft, output.cap, ClientBook::default()),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            connected_at: Instant::now(),
            last_line_ms: AtomicU64::new(0),
        }
    }

    /// For unit tests: an admitted TCP client number `id` of the default tenant, with an output
    /// queue of 1 KiB (1 MiB cap).
    #[cfg(test)]
    pub(crate) fn for_test(id: u64) -> Arc<Client> {
        let tenant = Tenant::new("default", "default", Default::default(), Default::default());
        Arc::new(Client::new(
            id,
            Transport::Tcp,
            Principal::anonymous("tcp"),
            (Arc::new(tenant), true),
            None,
            OutputBounds {
                soft: 1024,
                cap: 1 << 20,
            },
        ))
    }

    /// Records that the client completed a line read at `at`.
    pub(crate) fn line_read(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.connected_at).as_millis();
        self.last_line_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How long the client has been idle at `now`: since it last completed a line (or connected),
    /// or `None` while a request of its own is in flight (a client waiting for a reply is not idle).
    pub(crate) fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_line_ms.load(Ordering::Relaxed));
        Some(now.saturating_duration_since(self.connected_at + last))
    }

    /// Counts a request of this client as sent to a worker.
    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request of this client as answered (by the worker or by the bus), releasing its
    /// place among its tenant's requests in flight.
    pub(crate) fn request_finished(&self) {
        self.tenant.request_finished();
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until every request of this client has been answered.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let mut notified = pin!(self.idle.notified());
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Queues an error reply with `hint`'s members in its `data`; false if the client is gone (the
    /// caller counts either outcome).
    pub(crate) fn send_error(
        &self,
        id: Option<&[u8]>,
        kind: ErrorKind,
        detail: Option<&str>,
        hint: ErrorHint<'_>,
    ) -> bool {
        self.out
            .push(|buf| append_error_reply_hinted(buf, id, kind, detail, hint))
    }

    /// Queues a message unchanged; false if the client is gone.
    pub(crate) fn send_line(&self, line: &[u8]) -> bool {
        self.out.push(|buf| {
            buf.extend_from_slice(line);
            buf.push(b'\n');
        })
    }

    /// Queues a worker's request with its id replaced by one unique to this client (and the bytes
    /// at `cut`, its session's tenant prefix, removed), remembering where the answer must go;
    /// refused if the client is gone or its input has ended.
    pub(crate) fn forward_worker_request(
        &self,
        line: &[u8],
        id: Range<usize>,
        cut: Option<Span>,
        slot: SlotAddress,
        generation: u64,
    ) -> Result<(), NotForwarded> {
        self.out.with_queue(|q| {
            if q.closed {
                return Err(NotForwarded::Gone);
            }
            if q.state.input_closed {
                return Err(NotForwarded::InputClosed);
            }
            let client_id = q.state.next_id;
            q.state.next_id += 1;
            let request = WorkerRequest {
                slot,
                generation,
                id: IdToken::new(&line[id.clone()]),
            };
            q.state.asked.insert(client_id, request);
            match cut {
                None => append_with_bus_id(&mut q.buf, line, id, client_id),
                Some(cut) => {
                    let token = client_id.to_string();
                    append_with_token_without(&mut q.buf, line, id, token.as_bytes(), cut);
                }
            }
            Ok(())
        })
    }

    /// Takes the worker request this client is answering.
    pub(crate) fn take_worker_request(&self, client_id: u64) -> Option<WorkerRequest> {
        self.out.lock().state.asked.remove(&client_id)
    }

    /// Records that the client's input ended (its output stays open for its replies) and returns
    /// the worker requests it can now never answer; later ones are refused by
    /// [`Client::forward_worker_request`].
    pub(crate) fn input_closed(&self) -> Vec<WorkerRequest> {
        let mut q = self.out.lock();
        q.state.input_closed = true;
        q.state.asked.drain().map(|(_, r)| r).collect()
    }

    /// Closes the output queue and returns the worker requests left unanswered.
    pub(crate) fn disconnect(&self) -> Vec<WorkerRequest> {
        self.out.close();
        let mut q = self.out.lock();
        q.state.asked.drain().map(|(_, r)| r).collect()
    }
}
