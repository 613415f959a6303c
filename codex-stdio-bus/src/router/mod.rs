//! The router: which worker a client's message goes to, and which client a worker's message goes to.
//!
//! Client side (`client_side`): requests get a bus id and are recorded as pending in their slot;
//! notifications follow their session; answers to worker requests go back to the worker that asked.
//! Worker side (`worker_side`): replies find their request by bus id and get the client's id back;
//! messages a worker starts go to the client that last spoke on the session.

mod client_side;
pub mod placement;
mod worker_side;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_config::Config;
use codex_bus_protocol::{ErrorKind, SessionPath};
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Transport, WorkerRequest};
use crate::pool::Pool;
use crate::slot::Pending;
use placement::Sessions;

/// Routes messages between clients and the pools' worker slots.
pub struct Router {
    pools: Vec<Pool>,
    default_pool: Option<usize>,
    session_path: SessionPath,
    sessions: Sessions,
    clients: DashMap<u64, Arc<Client>>,
    next_client: AtomicU64,
    output_limit: usize,
    max_worker_line: usize,
    draining: AtomicBool,
    escalation: CancellationToken,
    started: Instant,
}

impl Router {
    /// A router over the configured pools (every slot starts in `Starting`).
    pub fn new(config: &Config) -> Self {
        let pools: Vec<Pool> = config
            .pools
            .iter()
            .map(|p| Pool::new(p.clone(), config.limits.max_worker_queue))
            .collect();
        let default_pool = config
            .routing
            .default_pool
            .as_deref()
            .and_then(|name| pools.iter().position(|p| &*p.id == name));
        // The config crate already rejected malformed paths; falling back keeps this infallible.
        let session_path = SessionPath::parse(&config.routing.session_id_field).unwrap_or_default();
        Router {
            pools,
            default_pool,
            session_path,
            sessions: Sessions::default(),
            clients: DashMap::new(),
            next_client: AtomicU64::new(1),
            output_limit: config.limits.max_output_queue,
            max_worker_line: config.limits.max_worker_line,
            draining: AtomicBool::new(false),
            escalation: CancellationToken::new(),
            started: Instant::now(),
        }
    }

    /// The pools, in config order.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// How long the router has existed.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Clients connected now.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Registers a new client connection.
    pub fn connect(&self, transport: Transport) -> Arc<Client> {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(Client::new(id, transport, self.output_limit));
        self.clients.insert(id, client.clone());
        client
    }

    /// Forgets a client; the worker requests it never answered are refused toward their workers.
    pub fn disconnect(&self, client: &Client) {
        self.clients.remove(&client.id);
        for request in client.disconnect() {
            refuse_worker_request(&request, ErrorKind::ClientDisconnected);
        }
    }

    /// Longest worker stdout line accepted.
    pub fn max_worker_line(&self) -> usize {
        self.max_worker_line
    }

    /// Asks the daemon to drain and exit non-zero if every slot of pool `pool_index` is down and the
    /// pool is configured to escalate; true if it did.
    pub fn escalate_if_pool_down(&self, pool_index: usize) -> bool {
        let pool = &self.pools[pool_index];
        if !pool.config.supervision.escalate || !pool.slots.iter().all(|s| s.state().is_down()) {
            return false;
        }
        if !self.escalation.is_cancelled() {
            tracing::error!(pool = %pool.id, "every worker of the pool is down; escalating: the daemon exits");
            self.escalation.cancel();
        }
        true
    }

    /// Resolves once some pool has escalated.
    pub async fn escalated(&self) {
        self.escalation.cancelled().await
    }

    /// Starts the drain: from now on new requests are refused with `shutting_down`.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for slot in self.pools.iter().flat_map(|p| &p.slots) {
            slot.begin_drain();
        }
    }

    /// Whether the drain has started.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Requests sent to workers and not yet answered, over every slot.
    pub fn in_flight(&self) -> usize {
        self.pools
            .iter()
            .flat_map(|p| &p.slots)
            .map(|s| s.in_flight())
            .sum()
    }

    /// Closes every client's output queue: writers flush what is queued, then end.
    pub fn close_clients(&self) {
        for client in self.clients.iter() {
            client.out.close();
        }
    }
}

/// Answers a request that no worker will answer now.
pub fn fail_pending(pending: Vec<Pending>, kind: ErrorKind) {
    for p in pending {
        p.client.send_error(Some(&p.id), kind, None);
        p.client.request_finished();
    }
}

/// Tells a worker that its request to a client will not be answered.
fn refuse_worker_request(request: &WorkerRequest, kind: ErrorKind) {
    let queued = request.slot.enqueue_line(Some(request.generation), |buf| {
        codex_bus_protocol::append_error_reply(buf, Some(&request.id), kind, None)
    });
    match queued {
        Ok(()) => crate::metrics::get().error_reply(kind),
        Err(_) => {
            tracing::debug!(slot = ?request.slot, "worker gone; its request needs no refusal")
        }
    }
}
