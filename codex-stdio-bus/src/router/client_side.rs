//! Messages from clients: parse, choose a slot, rewrite the id, queue toward the worker.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use codex_bus_protocol::{
    append_with_token, key_bytes, parse, parse_bus_id, value_at, Envelope, EnvelopeError,
    ErrorKind, Kind, Message, SessionPath,
};

use super::placement::slot_for;
use super::{send_error, Router};
use crate::core::client::Client;
use crate::core::slot::Slot;
use crate::metrics::{self, Discard};

/// Why a message cannot be routed, with a human detail for the error reply.
struct Refusal {
    kind: ErrorKind,
    detail: Option<String>,
}

impl Router {
    /// Handles one complete message from a client (its bytes, without any framing), read at
    /// `received`. Waits only for room in the target worker's queue (backpressure).
    pub(crate) async fn client_message(
        &self,
        client: &Arc<Client>,
        line: &[u8],
        received: Instant,
    ) {
        let envelope = match parse(line, &self.session_path) {
            Ok(Message::Object(envelope)) => envelope,
            Ok(Message::Batch(elements)) => return refuse_batch(client, elements.len()),
            Err(error) => {
                let detail = match error {
                    EnvelopeError::Parse => "the line is not valid JSON",
                    EnvelopeError::NotObject => "a message must be a JSON object",
                    EnvelopeError::DuplicateId => "the message has more than one \"id\" member",
                };
                let kind = match error {
                    EnvelopeError::Parse => ErrorKind::ParseError,
                    _ => ErrorKind::InvalidRequest,
                };
                send_error(client, None, kind, Some(detail));
                return;
            }
        };
        match (envelope.kind(), envelope.id.clone()) {
            (Kind::Request, Some(id)) => {
                self.route_request(client, line, &envelope, id, received)
                    .await
            }
            (Kind::Notification, _) => {
                self.route_notification(client, line, &envelope, received)
                    .await
            }
            (Kind::Response, Some(id)) => self.route_answer(client, line, id).await,
            _ => {
                let id = envelope.id.map(|span| &line[span]);
                let detail =
                    "a message needs a \"method\", or an \"id\" with a \"result\" or \"error\"";
                send_error(client, id, ErrorKind::InvalidRequest, Some(detail));
            }
        }
    }

    /// A request: recorded as pending in its slot, forwarded with a bus id.
    async fn route_request(
        &self,
        client: &Arc<Client>,
        line: &[u8],
        envelope: &Envelope,
        id: Range<usize>,
        received: Instant,
    ) {
        let slot = match self.target(client, line, envelope, received) {
            Ok(slot) => slot,
            Err(refusal) => {
                send_error(
                    client,
                    Some(&line[id]),
                    refusal.kind,
                    refusal.detail.as_deref(),
                );
                return;
            }
        };
        // Backpressure: while the worker's queue is full this client is not read any further.
        slot.queue.wait_for_space().await;
        if let Err(kind) = slot.enqueue_request(client, line, id.clone(), received) {
            send_error(client, Some(&line[id]), kind, None);
        } else {
            tracing::debug!(client = client.id, ?slot, "request queued");
        }
    }

    /// A notification: forwarded unchanged to the session's slot, except one naming a request of
    /// its sender by id (`routing.id_references`), whose id is swapped for the bus id. Nobody can
    /// be told if it fails.
    async fn route_notification(
        &self,
        client: &Arc<Client>,
        line: &[u8],
        envelope: &Envelope,
        received: Instant,
    ) {
        let slot = match self.target(client, line, envelope, received) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(
                    client = client.id,
                    reason = refusal.kind.reason(),
                    "notification dropped"
                );
                metrics::get().dropped(Discard::UnroutableNotification);
                return;
            }
        };
        slot.queue.wait_for_space().await;
        // The one extra comparison ordinary notifications pay: is this a cancellation?
        let reference = envelope
            .method
            .clone()
            .and_then(|method| self.references.path_for(&line[method]));
        let queued = match reference {
            Some(path) => self.queue_reference(client, line, slot, path),
            None => slot.enqueue_line(None, |buf| {
                buf.extend_from_slice(line);
                buf.push(b'\n');
            }),
        };
        if let Err(kind) = queued {
            tracing::debug!(
                client = client.id,
                ?slot,
                reason = kind.reason(),
                "notification dropped"
            );
            metrics::get().dropped(Discard::UnroutableNotification);
        }
    }

    /// A notification naming one of the client's requests by its id (a cancellation): queued
    /// with the id at `path` swapped for that request's bus id, if the request is in flight on
    /// `slot`; otherwise dropped and counted here, since the worker would read the client's id as
    /// a bus id and could match another client's request. `Err` as for any notification.
    fn queue_reference(
        &self,
        client: &Client,
        line: &[u8],
        slot: &Slot,
        path: &SessionPath,
    ) -> Result<(), ErrorKind> {
        let found = match value_at(line, path) {
            Some(span) => slot.enqueue_reference(client, line, span)?,
            None => false,
        };
        if !found {
            tracing::debug!(
                client = client.id,
                ?slot,
                "notification names no request of its sender in flight there: dropped"
            );
            metrics::get().dropped(Discard::UnknownCancel);
        }
        Ok(())
    }

    /// A client's answer to a worker's request: back to the worker that asked, with its id restored.
    async fn route_answer(&self, client: &Arc<Client>, line: &[u8], id: Range<usize>) {
        let Some(asked) =
            parse_bus_id(&line[id.clone()]).and_then(|n| client.take_worker_request(n))
        else {
            tracing::debug!(
                client = client.id,
                "answer to no pending worker request dropped"
            );
            metrics::get().dropped(Discard::UnknownAnswer);
            return;
        };
        let slot = self.slot(asked.slot);
        slot.queue.wait_for_space().await;
        let queued = slot.enqueue_line(Some(asked.generation), |buf| {
            append_with_token(buf, line, id, &asked.id)
        });
        if queued.is_err() {
            tracing::debug!(
                client = client.id,
                ?slot,
                "answer dropped: the worker that asked is gone"
            );
            metrics::get().dropped(Discard::WorkerGone);
        }
    }

    /// The slot a message goes to: its session's (placing a new session), or for a message without
    /// a session the least-loaded running worker of its pool. The session is the one the message
    /// names, else the one the client's connection is bound to; it was last seen at `received`.
    fn target(
        &self,
        client: &Client,
        line: &[u8],
        envelope: &Envelope,
        received: Instant,
    ) -> Result<&Arc<Slot>, Refusal> {
        let session = match envelope.session.clone() {
            Some(span) => key_bytes(&line[span]),
            None => client.bound_session.as_deref().map(Cow::Borrowed),
        };
        let (pool, slot) = match session {
            Some(key) if key.len() > self.max_session_id => {
                return Err(Refusal {
                    kind: ErrorKind::SessionIdTooLong,
                    detail: Some(format!(
                        "the session id has {} bytes; limits.max_session_id_bytes is {}",
                        key.len(),
                        self.max_session_id
                    )),
                });
            }
            Some(key) => self.sessions.locate(
                &key,
                client.id,
                self.second(received),
                || {
                    let pool = self.choose_pool(line, envelope)?;
                    let slots = &self.pools[pool].slots;
                    let slot = slot_for(&key, slots.len() as u32);
                    slots[slot as usize].count_session();
                    metrics::get().session_assigned();
                    Ok::<_, Refusal>((pool, slot))
                },
                || self.table_full(),
            )?,
            None => {
                let pool = &self.pools[self.choose_pool(line, envelope)?];
                return pool.least_loaded().ok_or_else(|| Refusal {
                    kind: ErrorKind::NoWorker,
                    detail: Some(format!("pool '{}' has no live worker", pool.id)),
                });
            }
        };
        Ok(&self.pools[pool].slots[slot as usize])
    }

    /// The pool a message names, else the default pool, else the only pool.
    fn choose_pool(&self, line: &[u8], envelope: &Envelope) -> Result<usize, Refusal> {
        if let Some(span) = envelope.pool.clone() {
            let name = key_bytes(&line[span]).unwrap_or(Cow::Borrowed(b""));
            return self
                .pools
                .iter()
                .position(|p| p.id.as_bytes() == &*name)
                .ok_or_else(|| Refusal {
                    kind: ErrorKind::UnknownPool,
                    detail: Some(format!(
                        "no pool named '{}' (pools: {})",
                        String::from_utf8_lossy(&name),
                        self.pool_names()
                    )),
                });
        }
        match (self.default_pool, self.pools.len()) {
            (Some(pool), _) => Ok(pool),
            (None, 1) => Ok(0),
            (None, _) => Err(Refusal {
                kind: ErrorKind::PoolRequired,
                detail: Some(format!(
                    "several pools and no routing.default_pool: name one in a top-level \"pool\" field (pools: {})",
                    self.pool_names()
                )),
            }),
        }
    }

    /// The refusal of a new session while the sticky table is full.
    fn table_full(&self) -> Refusal {
        Refusal {
            kind: ErrorKind::TooManySessions,
            detail: Some(format!(
                "the session table holds limits.max_sessions ({}) sessions; one leaves after limits.session_idle_sec ({} s) without a message",
                self.sessions.count(),
                self.session_idle
            )),
        }
    }

    /// The pool ids, comma-separated, for error details.
    fn pool_names(&self) -> String {
        let names: Vec<&str> = self.pools.iter().map(|p| &*p.id).collect();
        names.join(", ")
    }
}

/// Refuses a batch of `elements` with one error reply for the whole line: one per element would
/// let a 1 MiB line of `[0,0,…]` produce some 69 MB of replies.
fn refuse_batch(client: &Client, elements: usize) {
    if elements == 0 {
        send_error(client, None, ErrorKind::InvalidRequest, Some("empty batch"));
        return;
    }
    let plural = if elements == 1 { "" } else { "s" };
    let detail =
        format!("a batch of {elements} element{plural}: send each message on its own line");
    send_error(client, None, ErrorKind::BatchNotSupported, Some(&detail));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use codex_bus_config::Config;

    use super::slot_for;
    use crate::core::client::{Client, Transport};
    use crate::core::principal::Principal;
    use crate::router::Router;

    #[tokio::test]
    async fn a_connection_bound_to_a_session_routes_messages_that_name_none_there() {
        let router = Router::new(&Config::single_pool("p", "cat", &[], 8));
        let principal = Principal::anonymous("tcp");
        let client = router.connect(Transport::Tcp, principal, Some(b"bound".as_slice().into()));
        router
            .client_message(&client, br#"{"id":1,"method":"m"}"#, Instant::now())
            .await;
        let slots = &router.pools()[0].slots;
        let home = slot_for(b"bound", 8) as usize;
        assert_eq!(slots[home].in_flight(), 1, "the bound session's slot");
        assert_eq!(router.in_flight(), 1, "and no other");
        // A session named in the message wins over the bound one.
        let other = slot_for(b"other", 8) as usize;
        assert_ne!(
            home, other,
            "the test needs two sessions on different slots"
        );
        let named = br#"{"id":2,"method":"m","sessionId":"other"}"#;
        router.client_message(&client, named, Instant::now()).await;
        assert_eq!(slots[other].in_flight(), 1);
        assert_eq!(router.in_flight(), 2);
    }

    async fn send(router: &Router, client: &Arc<Client>, line: &str) {
        router
            .client_message(client, line.as_bytes(), Instant::now())
            .await;
    }

    #[tokio::test]
    async fn a_cancel_on_another_slot_than_its_request_is_dropped() {
        let router = Router::new(&Config::single_pool("p", "cat", &[], 8));
        let a = router.connect(Transport::Tcp, Principal::anonymous("tcp"), None);
        let (home, away) = (
            slot_for(b"bound", 8) as usize,
            slot_for(b"other", 8) as usize,
        );
        assert_ne!(home, away, "the test needs two sessions on different slots");
        send(&router, &a, r#"{"id":1,"method":"m","sessionId":"bound"}"#).await;
        let slots = &router.pools()[0].slots;
        slots[home].queue.lock().buf.clear();
        // Bus id 1 on the other slot would be someone else's request: nothing may reach it.
        send(
            &router,
            &a,
            r#"{"method":"$/cancelRequest","params":{"id":1},"sessionId":"other"}"#,
        )
        .await;
        assert!(slots.iter().all(|s| s.queue.lock().buf.is_empty()));
        assert_eq!(slots[home].in_flight(), 1, "the request is untouched");
    }

    #[tokio::test]
    async fn cancellations_reach_only_their_senders_requests() {
        let router = Router::new(&Config::single_pool("p", "cat", &[], 1));
        let connect = || router.connect(Transport::Tcp, Principal::anonymous("tcp"), None);
        let (a, b) = (connect(), connect());
        send(&router, &b, r#"{"id":7,"method":"m","sessionId":"B"}"#).await;
        send(&router, &a, r#"{"id":2,"method":"m","sessionId":"A"}"#).await;
        send(&router, &a, r#"{"id":"r","method":"m","sessionId":"A"}"#).await;
        let slot = &router.pools()[0].slots[0];
        slot.queue.lock().buf.clear();
        // B names A's id 2, and its own request is 7: dropped, nothing reaches the worker.
        send(
            &router,
            &b,
            r#"{"method":"$/cancelRequest","params":{"id":2},"sessionId":"B"}"#,
        )
        .await;
        assert!(slot.queue.lock().buf.is_empty());
        send(
            &router,
            &a,
            r#"{"method":"$/cancelRequest","params":{"id":2},"sessionId":"A"}"#,
        )
        .await;
        send(
            &router,
            &a,
            r#"{"method":"notifications/cancelled","params":{"requestId":"r"},"sessionId":"A"}"#,
        )
        .await;
        send(
            &router,
            &a,
            r#"{"method":"other","params":{"id":2},"sessionId":"A"}"#,
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&slot.queue.lock().buf),
            concat!(
                r#"{"method":"$/cancelRequest","params":{"id":2},"sessionId":"A"}"#,
                "\n",
                r#"{"method":"notifications/cancelled","params":{"requestId":3},"sessionId":"A"}"#,
                "\n",
                r#"{"method":"other","params":{"id":2},"sessionId":"A"}"#,
                "\n",
            ),
            "A's request 2 is bus id 2 (B's 7 came first), \"r\" is bus id 3; other methods pass"
        );
    }
}
