//! Messages from clients: parse, choose a slot, rewrite the id, queue toward the worker.

use std::borrow::Cow;
use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use codex_bus_protocol::{
    append_namespaced, append_with_token, key_bytes, parse, parse_bus_id, value_at, Envelope,
    EnvelopeError, ErrorKind, Kind, Message, SessionPath, AUTHENTICATE_METHOD,
};

use super::placement::slot_for;
use super::pool::Pool;
use super::{send_error, Router, NO_DEFAULT};
use crate::audit::Event;
use crate::core::client::Client;
use crate::core::slot::Slot;
use crate::core::tenant::Refused;
use crate::metrics::{self, Discard};

thread_local! {
    /// The buffer a thread writes namespaced copies of client messages into (with
    /// authentication), taken and put back around each message.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A scratch buffer grown past this by a long message is let go rather than kept.
const SCRATCH_KEEP: usize = 64 * 1024;

/// Why a message cannot be routed, with a human detail for the error reply.
enum Refusal {
    /// The message itself cannot be routed.
    Route {
        kind: ErrorKind,
        detail: Option<String>,
    },
    /// Its tenant's quota is reached.
    Tenant(Refused),
}

impl Refusal {
    /// A refusal of `kind` saying `detail`.
    fn new(kind: ErrorKind, detail: String) -> Self {
        Refusal::Route {
            kind,
            detail: Some(detail),
        }
    }

    /// The reason, for logs.
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Route { kind, .. } => kind.reason(),
            Refusal::Tenant(refused) => refused.kind().reason(),
        }
    }

    /// Answers request `id` of `client` with this refusal.
    fn send(&self, router: &Router, client: &Client, id: &[u8]) {
        match self {
            Refusal::Route { kind, detail } => {
                send_error(client, Some(id), *kind, detail.as_deref())
            }
            Refusal::Tenant(refused) => router.refuse(client, Some(id), *refused),
        }
    }
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
        let Some(envelope) = self.envelope(client, line) else {
            return;
        };
        if !self.namespaced {
            return self.dispatch(client, line, envelope, received).await;
        }
        // With authentication a worker gets a copy with the tenant in it, written into a buffer
        // the thread keeps: once warm, the copy allocates nothing.
        let mut copy = SCRATCH.take();
        copy.clear();
        if let Some(envelope) = self.namespace(client, line, &envelope, &mut copy) {
            self.dispatch(client, &copy, envelope, received).await;
        }
        if copy.capacity() <= SCRATCH_KEEP {
            SCRATCH.set(copy);
        }
    }

    /// The message's envelope, or `None` once the client has been told why it has none.
    fn envelope(&self, client: &Client, line: &[u8]) -> Option<Envelope> {
        match parse(line, &self.session_path) {
            Ok(Message::Object(envelope)) => Some(envelope),
            Ok(Message::Batch(elements)) => {
                refuse_batch(client, elements);
                None
            }
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
                None
            }
        }
    }

    /// Appends to `copy` the message `line` as a worker sees it with authentication: the sender's
    /// tenant in a `tenant` member and before its session id; returns the copy's envelope. `None`
    /// once refused: a message may not carry its own `tenant` (it could claim another's), a
    /// session id must be a string to carry a prefix and appear once, and `bus/authenticate` is
    /// answered by the bus (the connection has its principal already).
    fn namespace(
        &self,
        client: &Client,
        line: &[u8],
        envelope: &Envelope,
        copy: &mut Vec<u8>,
    ) -> Option<Envelope> {
        let refuse = |detail: &str| {
            match (envelope.kind(), envelope.id.clone()) {
                (Kind::Notification, _) | (_, None) => {
                    tracing::debug!(client = client.id, detail, "message refused");
                    metrics::get().dropped(Discard::UnroutableNotification);
                }
                (_, Some(id)) => send_error(
                    client,
                    Some(&line[id]),
                    ErrorKind::InvalidRequest,
                    Some(detail),
                ),
            }
            None
        };
        if envelope.has_tenant {
            if let Some(suppressed) = client.tenant.claim_limit.admit(Instant::now()) {
                self.audit.record(&Event::TenantClaimRefused {
                    tenant: &client.tenant.name,
                    subject: &client.principal.subject,
                    suppressed,
                });
            }
            return refuse("the top-level \"tenant\" member is set by the bus, from the connection's principal");
        }
        if envelope.duplicate_session {
            return refuse("with authentication, a message may hold one session id");
        }
        // The raw token, compared without decoding: an escaped spelling is no method the bus knows
        // and reaches the worker like any unknown one.
        let method = envelope.method.clone().map(|m| &line[m]);
        if method.is_some_and(|m| {
            m.len() == AUTHENTICATE_METHOD.len() + 2
                && m[1..m.len() - 1] == *AUTHENTICATE_METHOD.as_bytes()
        }) {
            return refuse("this connection is already authenticated");
        }
        let moved = append_namespaced(copy, line, &client.tenant.name, envelope);
        if moved.is_none() {
            return refuse("with authentication, a session id must be a JSON string");
        }
        moved
    }

    /// Routes a parsed message by its kind.
    async fn dispatch(
        &self,
        client: &Arc<Client>,
        line: &[u8],
        envelope: Envelope,
        received: Instant,
    ) {
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

    /// A request: admitted by its tenant's rate and in-flight quota, recorded as pending in its
    /// slot, forwarded with a bus id.
    async fn route_request(
        &self,
        client: &Arc<Client>,
        line: &[u8],
        envelope: &Envelope,
        id: Range<usize>,
        received: Instant,
    ) {
        if let Err(refused) = client.tenant.reserve_request() {
            return self.refuse(client, Some(&line[id]), refused);
        }
        let slot = match self.target(client, line, envelope, received, true) {
            Ok(slot) => slot,
            Err(refusal) => {
                client.tenant.request_finished();
                return refusal.send(self, client, &line[id]);
            }
        };
        // Backpressure: while the worker's queue is full this client is not read any further.
        slot.queue.wait_for_space().await;
        if let Err(kind) = slot.enqueue_request(client, line, id.clone(), received) {
            client.tenant.request_finished();
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
        let slot = match self.target(client, line, envelope, received, false) {
            Ok(slot) => slot,
            Err(refusal) => {
                if let Refusal::Tenant(refused) = refusal {
                    self.note_refusal(client, refused);
                }
                tracing::debug!(
                    client = client.id,
                    reason = refusal.reason(),
                    "notification dropped"
                );
                metrics::get().dropped(Discard::UnroutableNotification);
                return;
            }
        };
        // The one extra comparison ordinary notifications pay: is this a cancellation?
        let reference = envelope
            .method
            .clone()
            .and_then(|method| self.references.path_for(&line[method]));
        // Backpressure. A cancellation of a request the running worker holds goes to it past the
        // work a rolling restart holds for its successor, so it waits for that worker's own room
        // only: behind the held work it could wait until the roll's bound cut the worker off.
        let own = reference
            .and_then(|path| value_at(line, path))
            .is_some_and(|span| !slot.names_held(client, &line[span]));
        if own {
            slot.queue.wait_for_own_space().await;
        } else {
            slot.queue.wait_for_space().await;
        }
        let queued = match reference {
            Some(path) => self.queue_reference(client, line, &slot, path),
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
    /// `slot`, or else on a slot a reload removed from `slot`'s pool (the reload moved the
    /// session to `slot` while the removed one still finishes the request); otherwise dropped
    /// and counted here, since the worker would read the client's id as a bus id and could match
    /// another client's request. `Err` as for any notification.
    fn queue_reference(
        &self,
        client: &Client,
        line: &[u8],
        slot: &Slot,
        path: &SessionPath,
    ) -> Result<(), ErrorKind> {
        let found = match value_at(line, path) {
            Some(span) => match slot.enqueue_reference(client, line, span.clone()) {
                Ok(true) => true,
                queued => {
                    // Not on the session's slot (a cancellation that crossed its reply, or one
                    // after a reload shrank the pool): the pool's removed slots that still hold
                    // requests are scanned, for the sender's own requests only; those that hold
                    // none cost an atomic read.
                    let pools = self.pools.load();
                    let pool = &pools[slot.address.pool as usize];
                    let removed = pool.slots.iter().skip(pool.active as usize);
                    let elsewhere = removed.filter(|other| other.in_flight() > 0).any(|other| {
                        other
                            .enqueue_reference(client, line, span.clone())
                            .unwrap_or(false)
                    });
                    if !elsewhere {
                        queued?;
                    }
                    elsewhere
                }
            },
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
        if self.audit.enabled() {
            self.audit.record(&Event::WorkerRequestAnswered {
                tenant: &client.tenant.name,
                subject: &client.principal.subject,
                pool: &slot.pool,
                slot: asked.slot.slot,
                request_id: String::from_utf8_lossy(&asked.id),
            });
        }
        // Bounded by the worker's own requests, so the bytes held for a rolling restart's next
        // worker need not drain first (they wait for this worker to finish, which may need this).
        slot.queue.wait_for_own_space().await;
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
    ///
    /// A message that starts a session takes a token from its tenant's request bucket unless it
    /// `paid` one already (a request does).
    fn target(
        &self,
        client: &Client,
        line: &[u8],
        envelope: &Envelope,
        received: Instant,
        paid: bool,
    ) -> Result<Arc<Slot>, Refusal> {
        let session = match envelope.session.clone() {
            Some(span) => key_bytes(&line[span]),
            None => client
                .bound_session
                .as_deref()
                .map(|bound| Cow::Borrowed(bound.as_bytes())),
        };
        // The tenant's prefix is not the client's to count against the id's length.
        let prefix = if self.namespaced {
            client.tenant.prefix.len()
        } else {
            0
        };
        let pools = self.pools.load();
        let (pool, slot) = match session {
            Some(key) if key.len() - prefix.min(key.len()) > self.max_session_id => {
                return Err(Refusal::new(
                    ErrorKind::SessionIdTooLong,
                    format!(
                        "the session id has {} bytes; limits.max_session_id_bytes is {}",
                        key.len() - prefix,
                        self.max_session_id
                    ),
                ));
            }
            Some(key) => self.sessions.locate(
                &key,
                client.id,
                self.second(received),
                || {
                    if !paid {
                        client.tenant.take_token().map_err(Refusal::Tenant)?;
                    }
                    client.tenant.reserve_session().map_err(Refusal::Tenant)?;
                    let pool = self
                        .choose_pool(&pools, line, envelope)
                        .inspect_err(|_| client.tenant.session_gone())?;
                    // Hashed onto the active slots only: removed ones are draining.
                    let slot = slot_for(&key, pools[pool].active);
                    pools[pool].slots[slot as usize].count_session();
                    metrics::get().session_assigned();
                    if self.audit.enabled() {
                        self.audit.record(&Event::SessionCreated {
                            tenant: &client.tenant.name,
                            subject: &client.principal.subject,
                            session: String::from_utf8_lossy(&key[prefix..]),
                            pool: &pools[pool].id,
                            slot,
                        });
                    }
                    Ok::<_, Refusal>((pool, slot, client.tenant.clone()))
                },
                || self.table_full(),
            )?,
            None => {
                let pool = &pools[self.choose_pool(&pools, line, envelope)?];
                return pool.least_loaded().cloned().ok_or_else(|| {
                    Refusal::new(
                        ErrorKind::NoWorker,
                        format!("pool '{}' has no live worker", pool.id),
                    )
                });
            }
        };
        Ok(pools[pool].slots[slot as usize].clone())
    }

    /// The pool of `pools` a message names, else the default pool, else the only pool (removed
    /// pools are not there to be named).
    fn choose_pool(
        &self,
        pools: &[Arc<Pool>],
        line: &[u8],
        envelope: &Envelope,
    ) -> Result<usize, Refusal> {
        let mut present = pools.iter().filter(|p| !p.is_removed());
        if let Some(span) = envelope.pool.clone() {
            let name = key_bytes(&line[span]).unwrap_or(Cow::Borrowed(b""));
            return present
                .find(|p| p.id.as_bytes() == &*name)
                .map(|p| p.index as usize)
                .ok_or_else(|| {
                    Refusal::new(
                        ErrorKind::UnknownPool,
                        format!(
                            "no pool named '{}' (pools: {})",
                            String::from_utf8_lossy(&name),
                            pool_names(pools)
                        ),
                    )
                });
        }
        let default = self.default_pool.load(Ordering::Relaxed);
        if default != NO_DEFAULT {
            return Ok(default as usize);
        }
        match (present.next(), present.next()) {
            (Some(only), None) => Ok(only.index as usize),
            _ => Err(Refusal::new(
                ErrorKind::PoolRequired,
                format!(
                    "several pools and no routing.default_pool: name one in a top-level \"pool\" field (pools: {})",
                    pool_names(pools)
                ),
            )),
        }
    }

    /// The refusal of a new session while the sticky table is full.
    fn table_full(&self) -> Refusal {
        Refusal::new(
            ErrorKind::TooManySessions,
            format!(
                "the session table holds limits.max_sessions ({}) sessions; one leaves after limits.session_idle_sec ({} s) without a message",
                self.sessions.count(),
                self.session_idle
            ),
        )
    }
}

/// The ids of the pools in force, comma-separated, for error details.
fn pool_names(pools: &[Arc<Pool>]) -> String {
    let names: Vec<&str> = pools
        .iter()
        .filter(|p| !p.is_removed())
        .map(|p| &*p.id)
        .collect();
    names.join(", ")
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
    use crate::core::sink::WorkerSink;
    use crate::router::Router;

    #[tokio::test]
    async fn a_connection_bound_to_a_session_routes_messages_that_name_none_there() {
        let router = Router::new(&Config::single_pool("p", "cat", &[], 8));
        let principal = Principal::anonymous("tcp");
        let client = router.connect(Transport::Tcp, principal, Some("bound".into()));
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

    fn principal(tenant: &str) -> Principal {
        Principal {
            tenant: tenant.into(),
            subject: "t".into(),
        }
    }

    fn queued(slot: &crate::core::slot::Slot) -> String {
        String::from_utf8(std::mem::take(&mut slot.queue.lock().buf)).unwrap()
    }

    fn received(client: &Client) -> String {
        String::from_utf8(std::mem::take(&mut client.out.lock().buf)).unwrap()
    }

    #[tokio::test]
    async fn with_authentication_a_session_belongs_to_its_tenant() {
        let mut router = Router::new(&Config::single_pool("p", "cat", &[], 1));
        router.namespaced = true;
        let a = router.connect(Transport::Tcp, principal("a"), None);
        let b = router.connect(Transport::Tcp, principal("b"), None);
        let slot = &router.pools()[0].slots[0];
        send(&router, &a, r#"{"id":1,"method":"m","sessionId":"s1"}"#).await;
        assert_eq!(
            queued(slot),
            "{\"tenant\":\"a\",\"id\":1,\"method\":\"m\",\"sessionId\":\"a:s1\"}\n"
        );
        // b names the same id: its own session, which the worker sees under b.
        send(&router, &b, r#"{"method":"n","sessionId":"s1"}"#).await;
        assert_eq!(
            queued(slot),
            "{\"tenant\":\"b\",\"method\":\"n\",\"sessionId\":\"b:s1\"}\n"
        );
        assert_eq!(router.sessions.count(), 2);
        // A message may not claim a tenant, nor carry a session id that cannot take a prefix.
        send(
            &router,
            &b,
            r#"{"id":2,"method":"m","tenant":"a","sessionId":"s1"}"#,
        )
        .await;
        send(&router, &b, r#"{"id":3,"method":"m","sessionId":7}"#).await;
        send(
            &router,
            &b,
            r#"{"id":4,"method":"m","sessionId":"a:s1","sessionId":"s1"}"#,
        )
        .await;
        assert!(queued(slot).is_empty());
        let replies = received(&b);
        assert!(
            replies.contains(r#""id":2,"error""#) && replies.contains("set by the bus"),
            "{replies}"
        );
        assert!(
            replies.contains(r#""id":3,"error""#) && replies.contains("JSON string"),
            "{replies}"
        );
        assert!(
            replies.contains(r#""id":4,"error""#) && replies.contains("one session id"),
            "{replies}"
        );
        // The connection has its principal: a second bus/authenticate is the bus's to refuse, and
        // the name in a parameter is no method.
        send(
            &router,
            &b,
            r#"{"id":5,"method":"bus/authenticate","params":{"token":"t"}}"#,
        )
        .await;
        let replies = received(&b);
        assert!(
            replies.contains(r#""id":5,"error""#) && replies.contains("already authenticated"),
            "{replies}"
        );
        send(
            &router,
            &b,
            r#"{"id":6,"method":"m","params":{"text":"bus/authenticate"},"sessionId":"s1"}"#,
        )
        .await;
        assert!(
            queued(slot).contains("bus/authenticate"),
            "routed as any request"
        );
        assert!(received(&a).is_empty());

        // The worker's messages on a's session reach a alone, with a's own id.
        let notification = br#"{"method":"turn/event","sessionId":"a:s1"}"#;
        router.worker_line(slot, 0, notification, Instant::now());
        assert_eq!(
            received(&a),
            "{\"method\":\"turn/event\",\"sessionId\":\"s1\"}\n"
        );
        assert!(received(&b).is_empty());
        let reply = br#"{"id":1,"result":{},"sessionId":"a:s1"}"#;
        router.worker_line(slot, 0, reply, Instant::now());
        assert_eq!(
            received(&a),
            "{\"id\":1,\"result\":{},\"sessionId\":\"s1\"}\n"
        );
        let approval = br#"{"id":"w","method":"approve","sessionId":"a:s1"}"#;
        router.worker_line(slot, 0, approval, Instant::now());
        assert_eq!(
            received(&a),
            "{\"id\":0,\"method\":\"approve\",\"sessionId\":\"s1\"}\n"
        );
        // b answering a's approval by its id reaches nothing: it was asked nothing.
        send(&router, &b, r#"{"id":0,"result":{"decision":"accept"}}"#).await;
        assert!(queued(slot).is_empty());
        send(&router, &a, r#"{"id":0,"result":{"decision":"accept"}}"#).await;
        assert_eq!(
            queued(slot),
            "{\"tenant\":\"a\",\"id\":\"w\",\"result\":{\"decision\":\"accept\"}}\n"
        );
    }

    #[tokio::test]
    async fn a_connection_that_leaves_does_not_silence_the_others_of_its_session() {
        let router = Router::new(&Config::single_pool("p", "cat", &[], 1));
        let connect = || router.connect(Transport::Tcp, Principal::anonymous("tcp"), None);
        let (first, second) = (connect(), connect());
        let slot = &router.pools()[0].slots[0];
        send(&router, &first, r#"{"method":"n","sessionId":"s"}"#).await;
        send(&router, &second, r#"{"method":"n","sessionId":"s"}"#).await;
        let event = br#"{"method":"e","sessionId":"s"}"#;
        router.worker_line(slot, 0, event, Instant::now());
        assert!(received(&first).is_empty(), "the latest sender gets it");
        assert_eq!(received(&second).len(), event.len() + 1);
        // The latest sender leaves (a hit and run): the one before it gets what follows.
        router.disconnect(&second);
        router.worker_line(slot, 0, event, Instant::now());
        assert_eq!(received(&first).len(), event.len() + 1);
        // A worker request skips a client whose input ended (it could never answer).
        let third = connect();
        send(&router, &third, r#"{"method":"n","sessionId":"s"}"#).await;
        router.input_closed(&third);
        router.worker_line(
            slot,
            0,
            br#"{"id":9,"method":"ask","sessionId":"s"}"#,
            Instant::now(),
        );
        assert!(received(&third).is_empty());
        assert!(received(&first).contains(r#""method":"ask""#));
    }

    #[tokio::test]
    async fn tenant_quotas_are_exact_and_say_when_to_retry() {
        let mut config = Config::single_pool("p", "cat", &[], 1);
        config.limits.tenant_max_in_flight = 2;
        config.limits.tenant_max_sessions = 1;
        config.limits.tenant_max_connections = 2;
        let router = Router::new(&config);
        let connect = || router.connect(Transport::Tcp, Principal::anonymous("tcp"), None);
        let (a, b) = (connect(), connect());
        let refused = connect();
        assert!(!refused.admitted);
        let text = received(&refused);
        assert!(
            text.contains(r#""quota":"connections","retry_after_ms":1000"#),
            "{text}"
        );
        router.disconnect(&refused);
        send(&router, &a, r#"{"id":1,"method":"m","sessionId":"s"}"#).await;
        send(&router, &b, r#"{"id":2,"method":"m","sessionId":"s"}"#).await;
        send(&router, &b, r#"{"id":3,"method":"m","sessionId":"s"}"#).await;
        send(&router, &a, r#"{"id":4,"method":"m","sessionId":"t"}"#).await;
        let text = received(&b);
        assert!(
            text.contains(r#""id":3,"error""#) && text.contains(r#""quota":"in_flight""#),
            "{text}"
        );
        let text = received(&a);
        assert!(!text.contains(r#""id":1,"#), "{text}");
        assert!(text.contains(r#""id":4,"error""#), "{text}");
        assert_eq!(router.in_flight(), 2);
        let slot = &router.pools()[0].slots[0];
        router.worker_line(slot, 0, br#"{"id":1,"result":1}"#, Instant::now());
        assert_eq!(router.in_flight(), 1, "a reply frees a place");
        send(&router, &a, r#"{"id":5,"method":"m","sessionId":"t"}"#).await;
        assert_eq!(
            router.in_flight(),
            1,
            "a new session over the quota is refused"
        );
        let text = received(&a);
        assert!(
            text.contains(r#""id":1,"result""#) && text.contains(r#""quota":"sessions""#),
            "{text}"
        );
        router.disconnect(&a);
        router.disconnect(&b);
        let holding = router.tenants().holding();
        assert_eq!(holding["default"].connections, 0);
        assert_eq!(holding["default"].sessions, 1);
    }

    #[tokio::test]
    async fn the_rate_limit_is_a_token_bucket() {
        let mut config = Config::single_pool("p", "cat", &[], 1);
        config.limits.tenant_requests_per_sec = 1;
        config.limits.tenant_request_burst = 3;
        let router = Router::new(&config);
        let a = router.connect(Transport::Tcp, Principal::anonymous("tcp"), None);
        for id in 0..5 {
            send(
                &router,
                &a,
                &format!(r#"{{"id":{id},"method":"m","sessionId":"s"}}"#),
            )
            .await;
        }
        assert_eq!(router.in_flight(), 3, "the burst");
        let text = received(&a);
        assert_eq!(text.matches("rate_limited").count(), 2, "{text}");
        let wait: u64 = text
            .split("\"retry_after_ms\":")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!((1..=1000).contains(&wait), "{wait}");
        // A notification that would start a session pays a token too, or notifications could fill
        // the session table at any rate; one on a known session does not.
        for n in 0..5 {
            send(
                &router,
                &a,
                &format!(r#"{{"method":"n","sessionId":"new{n}"}}"#),
            )
            .await;
            send(&router, &a, r#"{"method":"n","sessionId":"s"}"#).await;
        }
        assert_eq!(router.sessions.count(), 1, "only the first session");
    }
}
