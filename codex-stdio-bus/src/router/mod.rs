//! Layer 2, the router: which worker a client's message goes to, and which client a worker's
//! message goes to.
//!
//! Client side (`client_side`): requests get a bus id and are recorded as pending in their slot;
//! notifications follow their session; answers to worker requests go back to the worker that asked.
//! Worker side (`worker_side`): replies find their request by bus id and get the client's id back;
//! messages a worker starts go to the latest client that spoke on the session and can take them.
//! Where a session lives is [`placement`]; the pools and their slots are `pool`; the tenants that
//! own sessions and hold quotas are `tenants`.
//!
//! With authentication, sessions are namespaced: the session key is `<tenant>:<session id>`, and
//! a worker sees that key and a `tenant` member (protocol `tenant` module); without it, every
//! connection is the default tenant's and messages pass with only their ids swapped.
//!
//! Imports: the core and the metrics leaf. The router counts every error reply it sends here, in
//! `send_error`, whoever asked for it.

mod client_side;
pub mod placement;
pub(crate) mod pool;
mod readiness;
pub(crate) mod reconfigure;
pub(crate) mod tenants;
mod worker_side;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_config::Config;
use codex_bus_protocol::{ErrorHint, ErrorKind, IdReference, IdReferences, SessionPath};
use dashmap::DashMap;

use crate::audit::{Audit, Event};
use crate::core::address::SlotAddress;
use crate::core::client::{Client, OutputBounds, Transport, WorkerRequest};
use crate::core::principal::Principal;
use crate::core::samples::Samples;
use crate::core::slot::{Pending, Slot};
use crate::core::tenant::{Quota, Refused, Tenant};
use crate::core::worker_events::WorkerEvents;
use crate::metrics::{self, Discard};
use placement::Sessions;
use pool::{Pool, Pools};
use tenants::Tenants;

/// Routes messages between clients and the pools' worker slots.
pub(crate) struct Router {
    /// The pool table in force (a reload replaces it whole).
    pools: Arc<Pools>,
    /// `limits.max_worker_queue`: what a slot made by a reload queues toward its worker.
    worker_queue: usize,
    /// `routing.default_pool`'s index in the pool table, [`NO_DEFAULT`] when unset; a reload may
    /// change it (with the table, in the same step).
    default_pool: AtomicU32,
    session_path: SessionPath,
    /// Notifications whose member names a request of their sender (cancellations).
    references: IdReferences,
    sessions: Sessions<Arc<Tenant>>,
    tenants: Tenants,
    /// Whether session keys carry their tenant (authentication is on): see the module docs.
    namespaced: bool,
    clients: DashMap<u64, Arc<Client>>,
    next_client: AtomicU64,
    /// `limits.max_output_queue` and `limits.max_output_bytes`.
    output: OutputBounds,
    /// `limits.max_session_id_bytes`.
    max_session_id: usize,
    /// `limits.session_idle_sec`, as the whole seconds the session table counts in.
    session_idle: u32,
    draining: AtomicBool,
    /// A shutdown was requested: `/readyz` says 503 (see `readiness`), requests are still served
    /// until `draining`.
    leaving: AtomicBool,
    /// The audit trail (off unless [`Router::audited`]).
    audit: Arc<Audit>,
    /// Also the origin of the session table's clock: [`Router::second`].
    started: Instant,
    /// The recent worker events of every slot (for the dashboard).
    worker_events: Arc<WorkerEvents>,
    /// The file the config was read from (`Config::source`), for the status document.
    config_source: Option<Arc<Path>>,
    /// The dashboard's last minutes of counter readings (filled and read by `admin::rates`).
    samples: Samples,
}

impl Router {
    /// A router over the configured pools (every slot starts in `Starting`).
    pub(crate) fn new(config: &Config) -> Self {
        // The config crate already rejected malformed entries; skipping one keeps this infallible.
        let references = IdReferences::new(
            config
                .routing
                .id_references
                .iter()
                .filter_map(|r| IdReference::new(&r.method, &r.path))
                .collect(),
        );
        let worker_events = Arc::new(WorkerEvents::default());
        let table: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Arc::new(Pool::new(
                    i as u32,
                    p.clone(),
                    config.limits.max_worker_queue,
                    &worker_events,
                ))
            })
            .collect();
        let default_pool = default_index(&table, config.routing.default_pool.as_deref());
        // The config crate already rejected malformed paths; falling back keeps this infallible.
        let session_path = SessionPath::parse(&config.routing.session_id_field).unwrap_or_default();
        Router {
            pools: Arc::new(Pools::new(table)),
            worker_queue: config.limits.max_worker_queue,
            default_pool: AtomicU32::new(default_pool),
            session_path,
            references,
            sessions: Sessions::new(config.limits.max_sessions),
            tenants: Tenants::new(config),
            // With authentication a session belongs to its tenant (see the module docs).
            namespaced: config.auth.is_some(),
            clients: DashMap::new(),
            next_client: AtomicU64::new(1),
            output: OutputBounds {
                soft: config.limits.max_output_queue,
                cap: config.limits.max_output_bytes,
            },
            max_session_id: config.limits.max_session_id_bytes,
            session_idle: u32::try_from(config.limits.session_idle_sec).unwrap_or(u32::MAX),
            draining: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            audit: Arc::new(Audit::off()),
            started: Instant::now(),
            worker_events,
            config_source: config.source.as_deref().map(Arc::from),
            samples: Samples::default(),
        }
    }

    /// This router, recording security events to `audit`.
    pub(crate) fn audited(mut self, audit: Arc<Audit>) -> Self {
        self.audit = audit;
        self
    }

    /// The pool table now, removed pools included (see [`Pool::is_removed`]).
    pub(crate) fn pools(&self) -> arc_swap::Guard<Arc<Vec<Arc<Pool>>>> {
        self.pools.load()
    }

    /// The pool table itself, which supervisors read the current version of their pool from.
    pub(crate) fn pool_table(&self) -> Arc<Pools> {
        self.pools.clone()
    }

    /// The slot at `address`. Addresses stay valid across reloads: pools keep their index and
    /// never lose slots.
    fn slot(&self, address: SlotAddress) -> Arc<Slot> {
        self.pools.load()[address.pool as usize].slots[address.slot as usize].clone()
    }

    /// The recent worker events of every slot.
    pub(crate) fn worker_events(&self) -> &WorkerEvents {
        &self.worker_events
    }

    /// The file the daemon's config was read from; `None` for the built-in default.
    pub(crate) fn config_source(&self) -> Option<&Path> {
        self.config_source.as_deref()
    }

    /// How long the router has existed.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// `at` as whole seconds since the router started: the session table's clock. Computed from
    /// the instant a read batch was received, so the hot path reads no clock of its own.
    fn second(&self, at: Instant) -> u32 {
        u32::try_from(at.saturating_duration_since(self.started).as_secs()).unwrap_or(u32::MAX)
    }

    /// How often [`Router::expire_sessions`] should run: a quarter of `limits.session_idle_sec`,
    /// between 1 and 60 s, so that a session leaves at most about a quarter late.
    pub(crate) fn session_sweep_period(&self) -> Duration {
        Duration::from_secs(u64::from(self.session_idle / 4).clamp(1, 60))
    }

    /// Removes the sessions no client has sent on for longer than `limits.session_idle_sec`, and
    /// counts them; then forgets the tenants that hold nothing any more. Run on a timer
    /// ([`Router::session_sweep_period`]), never per message.
    pub(crate) fn expire_sessions(&self) {
        let now = self.second(Instant::now());
        let pools = self.pools.load();
        let expired = self
            .sessions
            .expire(now, self.session_idle, |key, placement| {
                pools[placement.pool].slots[placement.slot as usize].forget_session();
                let tenant = &placement.owner;
                tenant.session_gone();
                if self.audit.enabled() {
                    let own = if self.namespaced {
                        &key[tenant.prefix.len().min(key.len())..]
                    } else {
                        key
                    };
                    self.audit.record(&Event::SessionExpired {
                        tenant: &tenant.name,
                        session: String::from_utf8_lossy(own),
                    });
                }
            });
        self.tenants.prune();
        if expired > 0 {
            metrics::get().sessions_expired(expired);
            tracing::debug!(
                expired,
                left = self.sessions.count(),
                "idle sessions expired"
            );
        }
    }

    /// The audit trail.
    pub(crate) fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The tenants known now.
    pub(crate) fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// The dashboard's ring of counter readings.
    pub(crate) fn samples(&self) -> &Samples {
        &self.samples
    }

    /// Clients connected now.
    pub(crate) fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Registers a new client connection of `principal` over `transport`; `bound_session` is the
    /// session its messages belong to when the transport fixes one.
    ///
    /// A connection over its tenant's `max_connections` (or of one tenant more than
    /// `limits.max_tenants`) is not admitted: the returned client holds only the `quota_exceeded`
    /// reply and its output is closed, so its writer sends that and ends.
    pub(crate) fn connect(
        &self,
        transport: Transport,
        principal: Principal,
        bound_session: Option<Box<str>>,
    ) -> Arc<Client> {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let (tenant, refused) = match self.tenants.get(&principal.tenant) {
            Ok(tenant) => {
                let refused = tenant.reserve_connection().err();
                (tenant, refused)
            }
            Err((tenant, refused)) => (tenant, Some(refused)),
        };
        let admitted = refused.is_none();
        let client = Client::new(
            id,
            transport,
            principal,
            (tenant, admitted),
            bound_session,
            self.output,
        );
        let client = Arc::new(client);
        match refused {
            None => {
                self.clients.insert(id, client.clone());
            }
            Some(refused) => {
                tracing::info!(?client, quota = ?refused.quota(), "connection over its tenant's quota; refused");
                self.refuse(&client, None, refused);
                client.out.close();
            }
        }
        client
    }

    /// Forgets a client; the worker requests it never answered are refused toward their workers.
    pub(crate) fn disconnect(&self, client: &Client) {
        if client.admitted {
            self.clients.remove(&client.id);
            client.tenant.connection_closed();
        }
        for request in client.disconnect() {
            self.refuse_worker_request(&request, ErrorKind::ClientDisconnected);
        }
    }

    /// `client`'s input ended: the worker requests it holds are refused at once with
    /// `client_disconnected` (it can never answer them, and a request of its own may be waiting on
    /// one), and so are those that reach it later; its replies still flow.
    pub(crate) fn input_closed(&self, client: &Client) {
        for request in client.input_closed() {
            self.refuse_worker_request(&request, ErrorKind::ClientDisconnected);
        }
    }

    /// Starts the drain: from now on new requests are refused with `shutting_down`.
    pub(crate) fn begin_drain(&self) {
        self.leave_rotation();
        self.draining.store(true, Ordering::SeqCst);
        for slot in self.slots() {
            slot.begin_drain();
        }
    }

    /// Whether the drain has started.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Every slot of every pool, removed ones included (they may still drain), as of now.
    pub(crate) fn slots(&self) -> Vec<Arc<Slot>> {
        let pools = self.pools.load();
        pools.iter().flat_map(|p| p.slots.iter().cloned()).collect()
    }

    /// Requests sent to workers and not yet answered, over every slot.
    pub(crate) fn in_flight(&self) -> usize {
        self.slots().iter().map(|s| s.in_flight()).sum()
    }

    /// Closes every client's output queue: writers flush what is queued, then end.
    pub(crate) fn close_clients(&self) {
        for client in self.clients.iter() {
            client.out.close();
        }
    }

    /// Tells a worker that its request to a client will not be answered.
    fn refuse_worker_request(&self, request: &WorkerRequest, kind: ErrorKind) {
        let slot = self.slot(request.slot);
        let queued = slot.enqueue_line(Some(request.generation), |buf| {
            codex_bus_protocol::append_error_reply(buf, Some(&request.id), kind, None)
        });
        match queued {
            Ok(()) => metrics::get().error_reply(kind),
            Err(_) => tracing::debug!(?slot, "worker gone; its request needs no refusal"),
        }
    }
}

/// [`Router::default_pool`]'s value when `routing.default_pool` is unset.
const NO_DEFAULT: u32 = u32::MAX;

/// The index in `pools` of the pool named `name` (`routing.default_pool`), or [`NO_DEFAULT`].
fn default_index(pools: &[Arc<Pool>], name: Option<&str>) -> u32 {
    name.and_then(|name| pools.iter().find(|p| &*p.id == name && !p.is_removed()))
        .map_or(NO_DEFAULT, |p| p.index)
}

/// Queues an error reply to `client` and counts it (or counts it lost if the client is gone).
pub(crate) fn send_error(
    client: &Client,
    id: Option<&[u8]>,
    kind: ErrorKind,
    detail: Option<&str>,
) {
    send_hinted(client, id, kind, detail, ErrorHint::default());
}

/// [`send_error`] with hints in the reply's `data`.
fn send_hinted(
    client: &Client,
    id: Option<&[u8]>,
    kind: ErrorKind,
    detail: Option<&str>,
    hint: ErrorHint<'_>,
) {
    if client.send_error(id, kind, detail, hint) {
        metrics::get().error_reply(kind);
    } else {
        metrics::get().dropped(Discard::ClientGone);
    }
}

impl Router {
    /// Refuses a request (or, with no `id`, a connection) of `client` for its tenant's `refused`
    /// quota or rate: a retryable reply whose `data` names the quota and when to retry, counted
    /// under the tenant's metric label and written to the audit trail (at most once a second per
    /// tenant).
    pub(crate) fn refuse(&self, client: &Client, id: Option<&[u8]>, refused: Refused) {
        self.note_refusal(client, refused);
        send_refusal(client, id, refused);
    }

    /// Counts and audits a refusal of `client`'s tenant (the reply, if any, is the caller's).
    pub(crate) fn note_refusal(&self, client: &Client, refused: Refused) {
        let tenant = &client.tenant;
        metrics::get().tenant_refused(&tenant.label, refused.kind());
        if self.audit.enabled() {
            if let Some(suppressed) = tenant.audit_limit.admit(Instant::now()) {
                self.audit.record(&Event::QuotaRefused {
                    tenant: &tenant.name,
                    subject: &client.principal.subject,
                    reason: refused.kind().reason(),
                    quota: refused.quota().map(|q| q.as_str()),
                    suppressed,
                });
            }
        }
    }
}

/// The reply half of [`Router::refuse`].
fn send_refusal(client: &Client, id: Option<&[u8]>, refused: Refused) {
    let tenant = &client.tenant;
    let limits = tenant.limits();
    let detail = match refused {
        Refused::Rate { .. } => format!(
            "tenant '{}' is over its request rate ({} per second, burst {})",
            tenant.name,
            limits.requests_per_sec,
            limits.request_burst.max(limits.requests_per_sec)
        ),
        Refused::Quota {
            quota: Quota::Tenants,
            limit,
        } => format!("the bus knows limits.max_tenants ({limit}) tenants"),
        Refused::Quota { quota, limit } => {
            format!(
                "tenant '{}' holds its limit of {limit} {}",
                tenant.name,
                quota.as_str()
            )
        }
    };
    let hint = ErrorHint {
        quota: refused.quota().map(|q| q.as_str()),
        retry_after_ms: Some(refused.retry_after_ms()),
    };
    send_hinted(client, id, refused.kind(), Some(&detail), hint);
}

/// Answers requests that no worker will answer now, with `kind` (and `detail`), and counts each
/// as finished for its client.
pub(crate) fn fail_pending(pending: Vec<Pending>, kind: ErrorKind, detail: Option<&str>) {
    for p in pending {
        send_error(&p.client, Some(&p.id), kind, detail);
        p.client.request_finished();
    }
}
