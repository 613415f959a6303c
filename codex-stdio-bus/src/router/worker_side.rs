//! Messages from workers: replies back to the client that asked; worker-initiated messages to the
//! latest client that spoke on the session and can still take them (one of the session's tenant,
//! since with authentication the session key holds the tenant). With authentication the tenant
//! prefix of the session id is cut on the way, so the client sees its own id.
//!
//! Nothing here waits: a worker's reader must never stall on one slow client, so lines toward
//! clients are pushed without waiting (the client's own reader pauses instead).

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use codex_bus_protocol::{
    append_error_reply, append_with_token, append_with_token_without, append_without, key_bytes,
    parse, parse_bus_id, session_prefix, Envelope, ErrorKind, Kind, Message, Span,
};

use super::{fail_pending, Router};
use crate::audit::Event;
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
            (Kind::Response, Some(id)) => {
                self.deliver_reply(slot, generation, line, &envelope, id, read_at)
            }
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

    /// Closes every connection bound to a session placed on `slot` (a WebSocket client), once
    /// its queued messages are written: its turn in progress is gone and no request of it is
    /// left to fail, so it would otherwise wait for events that never come. `codex app-server`
    /// dying closes the TUI's socket the same way, and the TUI reconnects and resumes its
    /// thread. Clients that name their sessions per message (NDJSON) are left alone: they hold
    /// many sessions, most of them elsewhere.
    fn worker_exited(&self, slot: &Arc<Slot>) {
        let here = (slot.address.pool as usize, slot.address.slot);
        for client in self.clients.iter() {
            let Some(bound) = client.bound_session.as_deref() else {
                continue;
            };
            let key = match self.namespaced {
                true => [&client.tenant.prefix[..], bound.as_bytes()].concat(),
                false => bound.as_bytes().to_vec(),
            };
            if self.sessions.placed(&key) == Some(here) {
                tracing::info!(client = ?*client, ?slot, "worker exited; closing the connection bound to its session");
                client.out.close();
            }
        }
    }
}

impl Router {
    /// Offers a worker-initiated line to the session's latest senders that are still connected,
    /// latest first, until `take(client, cut)` accepts it (`cut`: the bytes of the tenant prefix
    /// to remove, when sessions are namespaced). Returns the last refusal, `None` if no client
    /// of the session is connected.
    fn offer<E>(
        &self,
        line: &[u8],
        envelope: &Envelope,
        mut take: impl FnMut(&Client, Option<Span>) -> Result<(), E>,
    ) -> Option<Result<(), E>> {
        let span = envelope.session.clone()?;
        let key = key_bytes(&line[span.clone()])?;
        let mut outcome = None;
        for id in self.sessions.recent_clients(&key)? {
            let Some(client) = self.clients.get(&id).map(|c| c.clone()) else {
                continue;
            };
            let cut = if self.namespaced {
                // The key holds the tenant, so this is the client's own; checked all the same.
                match session_prefix(line, span.clone(), &client.tenant.prefix) {
                    Some(cut) => Some(cut),
                    None => continue,
                }
            } else {
                None
            };
            let taken = take(&client, cut);
            let done = taken.is_ok();
            outcome = Some(taken);
            if done {
                break;
            }
        }
        outcome
    }

    /// A worker's request (e.g. an approval): to the session's latest client that can still
    /// answer it, with an id unique to that client.
    fn forward_request(
        &self,
        slot: &Arc<Slot>,
        generation: u64,
        line: &[u8],
        envelope: &Envelope,
        id: Range<usize>,
    ) {
        let offered = self.offer(line, envelope, |client, cut| {
            client.forward_worker_request(
                line,
                id.clone(),
                cut.clone(),
                slot.address,
                generation,
            )?;
            if self.audit.enabled() {
                self.audit_forwarded(client, slot, line, envelope, id.clone(), cut);
            }
            Ok(())
        });
        let kind = match offered {
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

    /// Records that the worker request `line` (id at `id`) went to `client`.
    fn audit_forwarded(
        &self,
        client: &Client,
        slot: &Slot,
        line: &[u8],
        envelope: &Envelope,
        id: Range<usize>,
        cut: Option<Span>,
    ) {
        let text = |span: Option<Span>| {
            span.and_then(|s| key_bytes(&line[s]))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let session = text(envelope.session.clone());
        let skip = cut.map_or(0, |c| c.len()).min(session.len());
        self.audit.record(&Event::WorkerRequestForwarded {
            tenant: &client.tenant.name,
            subject: &client.principal.subject,
            session: session[skip..].into(),
            method: text(envelope.method.clone()).into(),
            pool: &slot.pool,
            slot: slot.address.slot,
            request_id: String::from_utf8_lossy(&line[id]),
        });
    }

    /// A worker's notification: to the session's latest client still connected, unchanged but
    /// for the tenant prefix.
    fn forward_notification(&self, slot: &Arc<Slot>, line: &[u8], envelope: &Envelope) {
        let offered = self.offer(line, envelope, |client, cut| {
            let queued = match cut {
                None => client.send_line(line),
                Some(cut) => client
                    .out
                    .push(|buf| append_without(buf, line, cut.clone())),
            };
            queued.then_some(()).ok_or(())
        });
        let delivered = matches!(offered, Some(Ok(())));
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
        envelope: &Envelope,
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
        self.pools.load()[slot.address.pool as usize]
            .metrics
            .request_duration
            .record(read_at.saturating_duration_since(pending.since));
        let cut = envelope
            .session
            .clone()
            .filter(|_| self.namespaced)
            .and_then(|span| session_prefix(line, span, &pending.client.tenant.prefix));
        let queued = pending.client.out.push(|buf| match cut {
            None => append_with_token(buf, line, id, &pending.id),
            Some(cut) => append_with_token_without(buf, line, id, &pending.id, cut),
        });
        if !queued {
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
