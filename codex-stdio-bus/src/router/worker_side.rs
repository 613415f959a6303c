//! Messages from workers: replies back to the client that asked; worker-initiated messages to the
//! client that last spoke on the session.
//!
//! Nothing here waits: a worker's reader must never stall on one slow client, so lines toward
//! clients are pushed without waiting (the client's own reader pauses instead).

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use codex_bus_protocol::{
    append_error_reply, append_with_token, key_bytes, parse, parse_bus_id, Envelope, ErrorKind,
    Kind, Message,
};

use super::{fail_pending, Router};
use crate::core::client::{Client, NotForwarded};
use crate::core::sink::WorkerSink;
use crate::core::slot::{Pending, Slot, PROBE_ID};
use crate::metrics::{self, Discard};

/// How much of a bad worker line goes into the log.
const LOGGED_PREFIX: usize = 200;

impl WorkerSink for Router {
    fn worker_line(&self, slot: &Arc<Slot>, generation: u64, line: &[u8], read_at: Instant) {
        let envelope = match parse(line, &self.session_path) {
            Ok(Message::Object(envelope)) => envelope,
            _ => {
                return skip(
                    slot,
                    line,
                    "not a JSON-RPC object",
                    Discard::InvalidWorkerLine,
                    read_at,
                )
            }
        };
        match (envelope.kind(), envelope.id.clone()) {
            (Kind::Response, Some(id)) if line[id.clone()] == *PROBE_ID => {
                tracing::debug!(?slot, "readiness probe answered");
                slot.probe_answered(generation);
            }
            (Kind::Response, Some(id)) => self.deliver_reply(slot, generation, line, id, read_at),
            (Kind::Request, Some(id)) => {
                self.forward_request(slot, generation, line, &envelope, id)
            }
            (Kind::Notification, _) => self.forward_notification(slot, line, &envelope),
            _ => skip(
                slot,
                line,
                "neither a request, a notification nor a response",
                Discard::InvalidWorkerLine,
                read_at,
            ),
        }
    }

    fn fail(&self, pending: Vec<Pending>, kind: ErrorKind, detail: Option<&str>) {
        fail_pending(pending, kind, detail);
    }
}

impl Router {
    /// The client that last spoke on the line's session.
    fn session_client(&self, line: &[u8], envelope: &Envelope) -> Option<Arc<Client>> {
        let key = key_bytes(&line[envelope.session.clone()?])?;
        let client = self.sessions.last_client(&key)?;
        self.clients.get(&client).map(|c| c.clone())
    }

    /// A worker's request (e.g. an approval): to the session's client, with an id unique to it.
    fn forward_request(
        &self,
        slot: &Arc<Slot>,
        generation: u64,
        line: &[u8],
        envelope: &Envelope,
        id: Range<usize>,
    ) {
        let kind = match self
            .session_client(line, envelope)
            .map(|client| client.forward_worker_request(line, id.clone(), slot.address, generation))
        {
            Some(Ok(())) => return,
            Some(Err(NotForwarded::InputClosed)) => ErrorKind::ClientDisconnected,
            Some(Err(NotForwarded::Gone)) | None => ErrorKind::NoClient,
        };
        tracing::debug!(
            ?slot,
            ?kind,
            "worker request has no client to answer it; refused"
        );
        let refused = slot.enqueue_line(Some(generation), |buf| {
            append_error_reply(buf, Some(&line[id]), kind, None)
        });
        match refused {
            Ok(()) => metrics::get().error_reply(kind),
            Err(_) => tracing::debug!(?slot, "worker gone before its refusal"),
        }
    }

    /// A worker's notification: to the session's client, unchanged.
    fn forward_notification(&self, slot: &Arc<Slot>, line: &[u8], envelope: &Envelope) {
        let delivered = self
            .session_client(line, envelope)
            .is_some_and(|client| client.send_line(line));
        if !delivered {
            tracing::debug!(?slot, "worker notification has no client; dropped");
            metrics::get().dropped(Discard::NoClient);
        }
    }

    /// A reply: found by bus id, sent to the client that asked with its original id restored, and
    /// timed from the request's arrival to `read_at`.
    fn deliver_reply(
        &self,
        slot: &Slot,
        generation: u64,
        line: &[u8],
        id: Range<usize>,
        read_at: Instant,
    ) {
        let bus_id = parse_bus_id(&line[id.clone()]);
        let Some(pending) = bus_id.and_then(|n| slot.take_pending(n, generation)) else {
            // Late replies (the request timed out, or its worker was replaced: a reply read from a
            // dead worker's stdout never matches) and replies to ids the bus never sent land here; neither has anyone waiting. Only the latter is a worker
            // bug worth a warning: a hung worker's late replies would otherwise flood the log.
            if bus_id.is_some_and(|n| slot.issued(n)) {
                tracing::debug!(?slot, "late reply dropped");
                return metrics::get().dropped(Discard::LateReply);
            }
            return skip(
                slot,
                line,
                "reply to an id the bus never sent",
                Discard::LateReply,
                read_at,
            );
        };
        self.pools[slot.address.pool as usize]
            .metrics
            .request_duration
            .record(read_at.saturating_duration_since(pending.since));
        if !pending
            .client
            .out
            .push(|buf| append_with_token(buf, line, id, &pending.id))
        {
            tracing::debug!(client = pending.client.id, "reply dropped: client gone");
            metrics::get().dropped(Discard::ClientGone);
        }
        pending.client.request_finished();
    }
}

/// Counts, logs and skips a worker line the bus cannot route (read at `read_at`); the worker keeps
/// running. Every line is counted, but the slot's warnings are rate-limited (`core::log_limit`):
/// `suppressed` says how many were not logged since the previous one.
fn skip(slot: &Slot, line: &[u8], why: &str, discard: Discard, read_at: Instant) {
    metrics::get().dropped(discard);
    let Some(suppressed) = slot.warnings.admit(read_at) else {
        return;
    };
    let shown = String::from_utf8_lossy(&line[..line.len().min(LOGGED_PREFIX)]);
    tracing::warn!(?slot, why, line = %shown, suppressed, "worker line skipped");
}
