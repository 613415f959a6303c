//! Prometheus metrics: names, label sets and the handles the hot path uses.
//!
//! Handles are resolved once (here, per process; per pool and slot in [`PoolMetrics`] and
//! [`SlotMetrics`]; per listener in [`ConnectionMetrics`]), so routing a message costs an atomic
//! add, never a label lookup. Gauges that describe state (workers by state, in-flight, queued
//! bytes, sessions, process figures) are read from the slots when scraped (the admin layer does
//! that) instead of being updated per message. Labels come only from bounded sets: pool, slot,
//! transport, direction, reason, state; never a session id, a request id or a client-supplied
//! method.
//!
//! A leaf: this module imports nothing of the daemon, so every layer may record through it.

pub(crate) mod process;
pub(crate) mod recorder;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use codex_bus_protocol::ErrorKind;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram, Unit};

/// Why the bus discarded a message that no one could be told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// A client notification that could not be routed (unknown pool, failed slot, draining).
    UnroutableNotification,
    /// A worker notification whose session has no connected client.
    NoClient,
    /// A worker reply whose request was already answered (worker restarted) or never sent.
    LateReply,
    /// A reply or error for a client that has disconnected.
    ClientGone,
    /// A client response matching no pending worker request.
    UnknownAnswer,
    /// A client answer to a worker request whose worker has since exited.
    WorkerGone,
    /// A client notification naming one of its requests by id (`routing.id_references`, e.g. a
    /// cancellation) that is not in flight on the slot the notification goes to.
    UnknownCancel,
    /// A worker stdout line that is not a JSON-RPC object.
    InvalidWorkerLine,
    /// A worker stdout line longer than `max_worker_line`.
    OversizeWorkerLine,
}

impl Discard {
    /// Every reason, in declaration order.
    const ALL: [Discard; 9] = [
        Discard::UnroutableNotification,
        Discard::NoClient,
        Discard::LateReply,
        Discard::ClientGone,
        Discard::UnknownAnswer,
        Discard::WorkerGone,
        Discard::UnknownCancel,
        Discard::InvalidWorkerLine,
        Discard::OversizeWorkerLine,
    ];

    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            Discard::UnroutableNotification => "unroutable_notification",
            Discard::NoClient => "no_client",
            Discard::LateReply => "late_reply",
            Discard::ClientGone => "client_gone",
            Discard::UnknownAnswer => "unknown_answer",
            Discard::WorkerGone => "worker_gone",
            Discard::UnknownCancel => "unknown_cancel",
            Discard::InvalidWorkerLine => "invalid_worker_line",
            Discard::OversizeWorkerLine => "oversize_worker_line",
        }
    }
}

/// Which way bytes or messages move, seen from the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Read from a client.
    FromClient,
    /// Written to a client.
    ToClient,
    /// Read from a worker's stdout.
    FromWorker,
    /// Written to a worker's stdin.
    ToWorker,
}

impl Direction {
    /// Every direction, in declaration order.
    const ALL: [Direction; 4] = [
        Direction::FromClient,
        Direction::ToClient,
        Direction::FromWorker,
        Direction::ToWorker,
    ];

    /// The directions whose lines are counted (`codex_bus_messages_total`): those read.
    const READ: [Direction; 2] = [Direction::FromClient, Direction::FromWorker];

    /// The `direction` label.
    fn label(self) -> &'static str {
        match self {
            Direction::FromClient => "from_client",
            Direction::ToClient => "to_client",
            Direction::FromWorker => "from_worker",
            Direction::ToWorker => "to_worker",
        }
    }
}

/// Why a worker is restarted (the `reason` label of restarts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartReason {
    /// It exited with status 0.
    ExitZero,
    /// It exited with a non-zero status.
    ExitNonzero,
    /// A signal killed it.
    Signal,
    /// It could not be spawned at all.
    SpawnFailed,
    /// It was killed for not answering its readiness probe in time.
    NotReady,
}

impl RestartReason {
    /// Every reason, in declaration order.
    const ALL: [RestartReason; 5] = [
        RestartReason::ExitZero,
        RestartReason::ExitNonzero,
        RestartReason::Signal,
        RestartReason::SpawnFailed,
        RestartReason::NotReady,
    ];

    /// The `reason` label.
    fn label(self) -> &'static str {
        match self {
            RestartReason::ExitZero => "exit_zero",
            RestartReason::ExitNonzero => "exit_nonzero",
            RestartReason::Signal => "signal",
            RestartReason::SpawnFailed => "spawn_failed",
            RestartReason::NotReady => "not_ready",
        }
    }
}

/// Why the bus disconnected a client on its own initiative, to protect itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// A message would have taken the client's output queue over `limits.max_output_bytes`.
    OutputOverflow,
    /// The client's output queue stayed over `limits.max_output_queue` for
    /// `limits.backpressure_timeout_sec`.
    Stalled,
}

impl Disconnect {
    /// Every reason, in declaration order.
    const ALL: [Disconnect; 2] = [Disconnect::OutputOverflow, Disconnect::Stalled];

    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            Disconnect::OutputOverflow => "output_overflow",
            Disconnect::Stalled => "stalled",
        }
    }
}

/// How one authentication attempt ended (`codex_bus_auth_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthResult {
    /// A credential was verified (or a Unix peer's uid mapped): the connection has a principal.
    Ok,
    /// A line before authentication was refused: not `bus/authenticate`, or a bad credential.
    Refused,
    /// A connection closed for not authenticating within `auth.handshake_timeout_sec`.
    Timeout,
}

impl AuthResult {
    /// Every result, in declaration order.
    const ALL: [AuthResult; 3] = [AuthResult::Ok, AuthResult::Refused, AuthResult::Timeout];

    /// The `result` label.
    fn label(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::Refused => "refused",
            AuthResult::Timeout => "timeout",
        }
    }
}

/// How a reload (SIGHUP, `POST /reload`) or a rolling restart (`POST /restart`) ended
/// (`codex_bus_config_reloads_total{result}`); also the `result` of the admin endpoint's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new config (or the restart) was put in force, every roll and retirement done.
    Applied,
    /// The file holds the config already in force: nothing to do.
    Unchanged,
    /// The file is invalid, or changes what only a restart can: the old config keeps serving.
    Rejected,
    /// Applying failed midway (e.g. a replacement worker did not become ready).
    Failed,
    /// Another reload or restart was running; this one was not started.
    Busy,
    /// A restart named a pool the daemon does not have.
    UnknownPool,
}

impl ReloadResult {
    /// Every result, in declaration order.
    const ALL: [ReloadResult; 6] = [
        ReloadResult::Applied,
        ReloadResult::Unchanged,
        ReloadResult::Rejected,
        ReloadResult::Failed,
        ReloadResult::Busy,
        ReloadResult::UnknownPool,
    ];

    /// The `result` label, and the `result` member of the admin endpoint's answer.
    pub fn label(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Rejected => "rejected",
            ReloadResult::Failed => "failed",
            ReloadResult::Busy => "busy",
            ReloadResult::UnknownPool => "unknown_pool",
        }
    }
}

/// Why a TLS handshake did not complete (`codex_bus_tls_handshake_failures_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The client sent something that is not a TLS handshake we accept (plaintext, an old
    /// protocol version, no common cipher suite), or closed the connection during it.
    Failed,
    /// The handshake did not complete within the listener's handshake timeout.
    Timeout,
}

impl TlsFailure {
    /// Every reason, in declaration order.
    const ALL: [TlsFailure; 2] = [TlsFailure::Failed, TlsFailure::Timeout];

    /// The `reason` label.
    fn label(self) -> &'static str {
        match self {
            TlsFailure::Failed => "failed",
            TlsFailure::Timeout => "timeout",
        }
    }
}

/// Process-wide handles.
pub struct BusMetrics {
    auth: Vec<Counter>,
    reloads: Vec<Counter>,
    tls_failures: Vec<Counter>,
    errors: Vec<Counter>,
    /// `errors` again, readable (by [`BusMetrics::error_replies`]): the recorder's counters
    /// cannot be read back (a `metrics` handle only records), and the dashboard samples these
    /// once a second. Counted even with no recorder installed.
    errors_sent: Box<[AtomicU64]>,
    drops: Vec<Counter>,
    messages: Vec<Counter>,
    bytes: Vec<Counter>,
    session_assignments: Counter,
    sessions_expired: Counter,
    disconnects: Vec<Counter>,
}

static METRICS: OnceLock<BusMetrics> = OnceLock::new();

/// The process-wide handles. Before a recorder is installed (metrics off, unit tests) they are
/// no-ops; [`recorder::install`] must run first for them to record.
pub fn get() -> &'static BusMetrics {
    METRICS.get_or_init(BusMetrics::register)
}

/// Request latency buckets: 100 µs to 30 s.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Worker startup buckets: 1 ms to 30 s.
pub const STARTUP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl BusMetrics {
    fn register() -> Self {
        BusMetrics {
            auth: AuthResult::ALL
                .iter()
                .map(|r| counter!("codex_bus_auth_total", "result" => r.label()))
                .collect(),
            reloads: ReloadResult::ALL
                .iter()
                .map(|r| counter!("codex_bus_config_reloads_total", "result" => r.label()))
                .collect(),
            tls_failures: TlsFailure::ALL
                .iter()
                .map(|r| counter!("codex_bus_tls_handshake_failures_total", "reason" => r.label()))
                .collect(),
            errors: ErrorKind::ALL
                .iter()
                .map(|k| counter!("codex_bus_error_replies_total", "reason" => k.reason()))
                .collect(),
            errors_sent: ErrorKind::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            drops: Discard::ALL
                .iter()
                .map(|d| counter!("codex_bus_dropped_messages_total", "reason" => d.reason()))
                .collect(),
            messages: Direction::READ
                .iter()
                .map(|d| counter!("codex_bus_messages_total", "direction" => d.label()))
                .collect(),
            bytes: Direction::ALL
                .iter()
                .map(|d| counter!("codex_bus_message_bytes_total", "direction" => d.label()))
                .collect(),
            session_assignments: counter!("codex_bus_session_assignments_total", "result" => "hashed"),
            sessions_expired: counter!("codex_bus_sessions_expired_total"),
            disconnects: Disconnect::ALL
                .iter()
                .map(|d| counter!("codex_bus_clients_disconnected_total", "reason" => d.reason()))
                .collect(),
        }
    }

    /// Counts an authentication attempt's result.
    pub fn auth(&self, result: AuthResult) {
        self.auth[result as usize].increment(1);
    }

    /// Counts a reload's or a rolling restart's result.
    pub fn config_reload(&self, result: ReloadResult) {
        self.reloads[result as usize].increment(1);
    }

    /// Counts a TLS handshake that did not complete.
    pub fn tls_failed(&self, why: TlsFailure) {
        self.tls_failures[why as usize].increment(1);
    }

    /// Counts an error reply sent (to a client or to a worker).
    pub fn error_reply(&self, kind: ErrorKind) {
        if let Some(i) = ErrorKind::ALL.iter().position(|k| *k == kind) {
            self.errors[i].increment(1);
            self.errors_sent[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Error replies sent so far, by kind, in the order of [`ErrorKind::ALL`]: the values of
    /// `codex_bus_error_replies_total`, since the process started.
    pub fn error_replies(&self) -> impl Iterator<Item = (ErrorKind, u64)> + '_ {
        ErrorKind::ALL
            .iter()
            .zip(self.errors_sent.iter())
            .map(|(kind, count)| (*kind, count.load(Ordering::Relaxed)))
    }

    /// Counts a discarded message.
    pub fn dropped(&self, why: Discard) {
        self.drops[why as usize].increment(1);
    }

    /// Counts `n` messages discarded at once for `why`.
    pub fn dropped_many(&self, why: Discard, n: usize) {
        self.drops[why as usize].increment(n as u64);
    }

    /// The message counter for a read direction (resolve once, increment per line).
    ///
    /// Lines written have no message counter, only bytes: a writer sends whole batches of lines,
    /// and counting them would cost a pass over the bytes on the hot path, or a count at every
    /// place that queues a line; a series that stays at 0 would mislead.
    ///
    /// # Panics
    ///
    /// For [`Direction::ToClient`] and [`Direction::ToWorker`]: a programming error.
    pub fn messages(&self, direction: Direction) -> &Counter {
        let i = Direction::READ.iter().position(|d| *d == direction);
        &self.messages[i.expect("lines are counted where they are read")]
    }

    /// The byte counter for a direction.
    pub fn bytes(&self, direction: Direction) -> &Counter {
        &self.bytes[direction as usize]
    }

    /// Counts a new session placed by hashing.
    pub fn session_assigned(&self) {
        self.session_assignments.increment(1);
    }

    /// Counts `n` sessions removed from the sticky table for being idle.
    pub fn sessions_expired(&self, n: usize) {
        self.sessions_expired.increment(n as u64);
    }

    /// Counts a client the bus disconnected for `why`.
    pub fn disconnected(&self, why: Disconnect) {
        self.disconnects[why as usize].increment(1);
    }

    /// Counts a refusal (`rate_limited` or `quota_exceeded`) of a tenant's request or connection
    /// under the tenant's metric `label` (bounded: see `router::tenants`). Looked up per refusal,
    /// which the happy path never pays.
    pub fn tenant_refused(&self, label: &str, kind: ErrorKind) {
        tenant_refusals(label, kind).increment(1);
    }

    /// Creates the refusal series of a tenant metric `label` at zero, so alerts see the first
    /// refusal (called for every configured label at startup).
    pub fn tenant_label(&self, label: &str) {
        for kind in [ErrorKind::RateLimited, ErrorKind::QuotaExceeded] {
            tenant_refusals(label, kind).increment(0);
        }
    }
}

/// The refusal counter of a tenant label and reason.
fn tenant_refusals(label: &str, kind: ErrorKind) -> Counter {
    counter!("codex_bus_tenant_refusals_total", "tenant" => label.to_owned(), "reason" => kind.reason())
}

/// Per-listener handles: clients connected over one transport.
pub struct ConnectionMetrics {
    open: Gauge,
    accepted: Counter,
    refused: Counter,
    idle_closed: Counter,
}

impl ConnectionMetrics {
    /// Handles labelled with `transport` (`stdio`, `unix`, `tcp`).
    pub fn new(transport: &'static str) -> Self {
        ConnectionMetrics {
            open: gauge!("codex_bus_client_connections", "transport" => transport),
            accepted: counter!("codex_bus_client_connections_total", "transport" => transport),
            refused: counter!("codex_bus_client_connections_refused_total", "transport" => transport),
            idle_closed: counter!("codex_bus_client_idle_closed_total", "transport" => transport),
        }
    }

    /// Counts a client connecting.
    pub fn connected(&self) {
        self.accepted.increment(1);
        self.open.increment(1.0);
    }

    /// Counts a connection closed at once because `max_connections` were being served.
    pub fn refused(&self) {
        self.refused.increment(1);
    }

    /// Counts a connection closed for completing no line for `client_idle_sec`.
    pub fn idle_closed(&self) {
        self.idle_closed.increment(1);
    }

    /// Counts a client leaving.
    pub fn disconnected(&self) {
        self.open.decrement(1.0);
    }
}

/// Per-pool handles.
#[derive(Clone)]
pub struct PoolMetrics {
    /// Request in → reply out, matched by bus id.
    pub request_duration: Histogram,
    /// Spawn → ready of a worker.
    pub startup_duration: Histogram,
}

impl PoolMetrics {
    /// Handles labelled with `pool`.
    pub fn new(pool: &str) -> Self {
        PoolMetrics {
            request_duration: histogram!("codex_bus_request_duration_seconds", "pool" => pool.to_owned()),
            startup_duration: histogram!("codex_bus_worker_startup_duration_seconds", "pool" => pool.to_owned()),
        }
    }
}

/// Per-slot handles used by the supervisor.
pub struct SlotMetrics {
    restarts: Vec<Counter>,
    /// Times the slot exceeded its restart limit.
    pub limit_trips: Counter,
}

impl SlotMetrics {
    /// Handles labelled with `pool` and `slot`.
    pub fn new(pool: &str, slot: u32) -> Self {
        let slot = slot.to_string();
        SlotMetrics {
            restarts: RestartReason::ALL
                .iter()
                .map(|r| {
                    counter!("codex_bus_worker_restarts_total",
                        "pool" => pool.to_owned(), "slot" => slot.clone(), "reason" => r.label())
                })
                .collect(),
            limit_trips: counter!("codex_bus_worker_restart_limit_exceeded_total",
                "pool" => pool.to_owned(), "slot" => slot),
        }
    }

    /// Counts a restart.
    pub fn restarted(&self, reason: RestartReason) {
        self.restarts[reason as usize].increment(1);
    }
}

/// Describes every metric (HELP and unit) and sets the build info; call once after installing the
/// recorder.
pub fn describe() {
    describe_gauge!("codex_bus_build_info", "Build information; always 1.");
    gauge!("codex_bus_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Written by the audit trail (a leaf that names it itself); created here at zero.
    counter!("codex_bus_audit_write_errors_total").increment(0);
    describe_gauge!("codex_bus_workers", "Worker slots by state.");
    describe_counter!(
        "codex_bus_worker_restarts_total",
        "Worker restarts, by the way the previous process ended."
    );
    describe_counter!(
        "codex_bus_worker_restart_limit_exceeded_total",
        "Times a slot exceeded max_restarts within restart_window_sec."
    );
    describe_histogram!(
        "codex_bus_worker_startup_duration_seconds",
        Unit::Seconds,
        "Worker spawn to ready."
    );
    describe_gauge!("codex_bus_client_connections", "Connected clients.");
    describe_counter!(
        "codex_bus_client_connections_total",
        "Client connections accepted."
    );
    describe_counter!(
        "codex_bus_client_connections_refused_total",
        "Client connections closed at once because max_connections were being served."
    );
    describe_counter!(
        "codex_bus_clients_disconnected_total",
        "Clients the bus disconnected to bound its memory: output over max_output_bytes, or over max_output_queue for backpressure_timeout_sec."
    );
    describe_counter!(
        "codex_bus_client_idle_closed_total",
        "Client connections closed for completing no line for client_idle_sec."
    );
    describe_counter!(
        "codex_bus_auth_total",
        "Authentication results: ok, refused (a line refused before authentication), timeout."
    );
    describe_counter!(
        "codex_bus_config_reloads_total",
        "Reloads (SIGHUP, POST /reload) and rolling restarts (POST /restart), by result."
    );
    describe_counter!(
        "codex_bus_tls_handshake_failures_total",
        "TLS handshakes that did not complete: failed (not TLS, no common version or cipher, closed), timeout."
    );
    describe_counter!(
        "codex_bus_messages_total",
        "NDJSON messages read, by direction."
    );
    describe_counter!(
        "codex_bus_message_bytes_total",
        Unit::Bytes,
        "Bytes read and written, by direction."
    );
    describe_counter!(
        "codex_bus_error_replies_total",
        "Error replies sent, by data.reason."
    );
    describe_counter!(
        "codex_bus_dropped_messages_total",
        "Messages discarded that no one could be told about, by reason."
    );
    describe_histogram!(
        "codex_bus_request_duration_seconds",
        Unit::Seconds,
        "Request received to reply sent, by pool."
    );
    describe_gauge!(
        "codex_bus_requests_in_flight",
        "Requests sent to a slot's worker and not yet answered."
    );
    describe_gauge!(
        "codex_bus_slot_queue_bytes",
        Unit::Bytes,
        "Bytes queued toward a slot's worker."
    );
    describe_gauge!("codex_bus_sessions", "Sessions placed on a slot.");
    describe_counter!(
        "codex_bus_session_assignments_total",
        "New sessions placed, by how."
    );
    describe_counter!(
        "codex_bus_sessions_expired_total",
        "Sessions removed from the sticky table after limits.session_idle_sec without a client message."
    );
    describe_gauge!("codex_bus_tenants", "Tenants known to the bus.");
    describe_counter!(
        "codex_bus_audit_write_errors_total",
        "Audit trail lines that could not be written."
    );
    describe_gauge!(
        "codex_bus_tenant_sessions",
        "Sessions of a tenant in the sticky table (unconfigured tenants summed as (other))."
    );
    describe_gauge!(
        "codex_bus_tenant_connections",
        "Connections of a tenant (unconfigured tenants summed as (other))."
    );
    describe_gauge!(
        "codex_bus_tenant_requests_in_flight",
        "Requests of a tenant at workers (unconfigured tenants summed as (other))."
    );
    describe_counter!(
        "codex_bus_tenant_refusals_total",
        "Requests and connections refused for a tenant's quota or rate, by reason."
    );
}
