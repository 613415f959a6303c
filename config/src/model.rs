//! The validated configuration types and their defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

/// A validated configuration: every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    /// Worker pools, at least one, with distinct ids.
    pub pools: Vec<PoolConfig>,
    /// Buffer, supervision and timeout limits.
    pub limits: Limits,
    /// How clients connect.
    pub transport: TransportConfig,
    /// How messages are assigned to sessions and pools.
    pub routing: RoutingConfig,
    /// Metrics and health endpoint (our extension).
    pub metrics: MetricsConfig,
    /// Client authentication (our extension); absent, every connection is the default tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Per-tenant limits that differ from the `limits.tenant_*` defaults, by tenant name (our
    /// extension). These tenants also get their own metric series.
    pub tenants: BTreeMap<String, TenantLimits>,
    /// The audit trail (our extension).
    pub audit: AuditConfig,
    /// WebSocket listeners, each serving clients as `codex app-server --listen ws://` does (our
    /// extension); none by default.
    pub websocket: Vec<WebSocketConfig>,
    /// The file this config was read from, as given to [`Config::load`]; `None` when it was
    /// parsed from text or built in. Not a config key: the daemon shows it in its status.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// One WebSocket listener (our extension; docs/config.md, "websocket"): one JSON-RPC message per
/// text frame, one session per connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebSocketConfig {
    /// HOST:PORT to listen on.
    pub listen: String,
    /// The request header naming the connection's session, when its path and query name none.
    pub session_header: String,
    /// The query parameter naming the connection's session, when its path names none.
    pub session_query: String,
    /// `Origin` values accepted; a request with any other `Origin` gets 403 (cross-site
    /// WebSocket hijacking), as Codex refuses every request that has one.
    pub allowed_origins: Vec<String>,
    /// Largest frame accepted, in bytes; a larger one closes the connection with 1009.
    pub max_frame_bytes: usize,
    /// Largest message (all its frames) accepted, in bytes; a larger one closes with 1009.
    pub max_message_bytes: usize,
    /// TLS for this listener (`wss://`); absent, it is plaintext (`ws://`). The Codex TUI sends
    /// its bearer token only over `wss://` or to a loopback host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl WebSocketConfig {
    /// A listener on `listen` with the defaults: Codex's limits (16 MiB per frame, 64 MiB per
    /// message), `x-codex-session` and `session` as the header and query names, no origin.
    pub fn on(listen: &str) -> Self {
        WebSocketConfig {
            listen: listen.to_owned(),
            session_header: "x-codex-session".to_owned(),
            session_query: "session".to_owned(),
            allowed_origins: Vec::new(),
            max_frame_bytes: 16 << 20,
            max_message_bytes: 64 << 20,
            tls: None,
        }
    }
}

/// Where security events are recorded (our extension).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditConfig {
    /// The file JSON lines are appended to, one per event; off when absent. Reopened on SIGHUP.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_path_lossy"
    )]
    pub path: Option<PathBuf>,
}

/// One pool of identical worker processes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolConfig {
    /// Unique, non-empty pool name; clients select a pool with a top-level `"pool"` field.
    pub id: String,
    /// Program to run, resolved through `PATH` like `execvp`.
    pub command: String,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Number of worker processes, 1 to 1024.
    pub instances: u32,
    /// Variables added to the daemon's environment for this pool's workers.
    pub env: BTreeMap<String, String>,
    /// Working directory of the workers; the daemon's own when absent.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_path_lossy"
    )]
    pub cwd: Option<PathBuf>,
    /// How the pool's workers are restarted, timed out and checked for readiness.
    #[serde(flatten)]
    pub supervision: Supervision,
    /// The rights the pool's workers run with: user, group, umask, resource limits (our extension).
    #[serde(flatten)]
    pub privileges: Privileges,
}

/// The least-privilege settings of one pool's workers (our extension to the stdio Bus config), each
/// applied in the child between fork and exec. The ids are resolved when the config is loaded.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Privileges {
    /// The account the workers run as (only a daemon running as root switches to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Account>,
    /// The primary group of the workers; the user's own primary group when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    /// The file mode creation mask of the workers (e.g. `0o077`); the daemon's own when absent.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_octal"
    )]
    pub umask: Option<u32>,
    /// Resource limits, each set as both soft and hard limit.
    #[serde(skip_serializing_if = "Rlimits::is_empty")]
    pub rlimits: Rlimits,
    /// Whether the workers run with `PR_SET_NO_NEW_PRIVS` (no privileges gained through exec).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privs: bool,
    /// cgroup v2 limits of each worker, in a cgroup of its own (needs a delegated cgroup v2; the
    /// daemon refuses the field where it has none).
    #[serde(skip_serializing_if = "CgroupLimits::is_empty")]
    pub cgroup: CgroupLimits,
}

/// A user as the config names it, resolved: its uid, primary gid and supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The name or number as written in the config.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid from the user database (`None` for a bare uid without an entry).
    pub gid: Option<u32>,
    /// Its supplementary groups from the group database (empty for a bare uid).
    pub groups: Vec<u32>,
}

impl Serialize for Account {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

/// A group as the config names it, resolved to its gid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupId {
    /// The name or number as written in the config.
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

impl Serialize for GroupId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

fn serialize_octal<S: Serializer>(mask: &Option<u32>, serializer: S) -> Result<S::Ok, S::Error> {
    match mask {
        Some(mask) => serializer.serialize_str(&format!("{mask:03o}")),
        None => serializer.serialize_none(),
    }
}

/// A pool's resource limits (`setrlimit(2)`, soft = hard); each absent one is inherited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rlimits {
    /// `RLIMIT_AS`: bytes of virtual address space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_space_bytes: Option<u64>,
    /// `RLIMIT_NOFILE`: open file descriptors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// `RLIMIT_NPROC`: processes (threads included) of the worker's user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// `RLIMIT_CPU`: seconds of CPU time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_CORE`: bytes of a core dump (0: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core_bytes: Option<u64>,
}

impl Rlimits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Rlimits::default()
    }
}

/// A pool's cgroup v2 limits, each applied to every worker's own cgroup; each absent one is
/// unlimited (`max`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CgroupLimits {
    /// `memory.max` in bytes (at least 1 MiB), with `memory.swap.max` 0 so it bounds all the
    /// worker's memory; past it the kernel's OOM killer ends the worker. systemd: `MemoryMax=`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_max_bytes: Option<u64>,
    /// `cpu.max` as a percentage of one CPU (1 to 10000: 250 is two and a half CPUs), written as
    /// `P*1000 100000` (µs of CPU per 100 ms period). systemd: `CPUQuota=`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_max_percent: Option<u32>,
}

impl CgroupLimits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == CgroupLimits::default()
    }
}

/// Which worker exits the supervisor answers with a restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Every exit, clean or not (what stdio Bus does).
    #[default]
    Always,
    /// Only an exit with a non-zero status or by a signal; a clean exit leaves the slot empty.
    OnFailure,
    /// No exit: the slot stays empty once its worker is gone.
    Never,
}

/// A request the supervisor sends a new worker; the worker counts as ready once it answers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReadyProbe {
    /// The request's method.
    pub method: String,
    /// The request's params, sent as given; omitted when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
}

/// Per-pool supervision settings (our extension; each key sits directly in the pool object).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Supervision {
    /// Which exits are followed by a restart.
    pub restart_policy: RestartPolicy,
    /// First restart delay; each further restart doubles it.
    pub backoff_initial_ms: u64,
    /// Longest restart delay.
    pub backoff_max_ms: u64,
    /// Each delay is randomised by ± this percentage, so a pool does not restart in lockstep.
    pub backoff_jitter_pct: u8,
    /// A worker that stayed up this long resets the delay to `backoff_initial_ms`.
    pub stable_after_sec: u64,
    /// Exit the daemon (status 3) once every slot of this pool has failed, instead of retrying.
    pub escalate: bool,
    /// A request unanswered this long gets a `timeout` error; 0 waits for ever.
    pub request_timeout_sec: u64,
    /// How long a request may wait for its slot's worker to (re)start before a `timeout` error.
    pub queue_timeout_sec: u64,
    /// Without a probe, a worker still running this long after spawn counts as ready.
    pub ready_grace_ms: u64,
    /// A request that a new worker must answer before it counts as ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_probe: Option<ReadyProbe>,
    /// How long a new worker may take to answer the probe before it is killed and restarted.
    pub ready_timeout_sec: u64,
    /// Seconds a slot being replaced by a rolling restart, or removed by a reload, may take to
    /// finish the requests it holds before its worker is stopped anyway (1 to 86400).
    pub roll_timeout_sec: u64,
}

impl Default for Supervision {
    /// Restart always; 100 ms doubling to 30 s ±20 %; ready after 1 s up; no request timeout;
    /// 5 min to finish before a roll or a retirement stops a worker.
    fn default() -> Self {
        Supervision {
            restart_policy: RestartPolicy::Always,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
            backoff_jitter_pct: 20,
            stable_after_sec: 60,
            escalate: false,
            request_timeout_sec: 0,
            queue_timeout_sec: 30,
            ready_grace_ms: 1_000,
            ready_probe: None,
            ready_timeout_sec: 30,
            // Long enough for a Codex turn in progress to finish.
            roll_timeout_sec: 300,
        }
    }
}

/// Paths built by hand may not be UTF-8; printing them lossily keeps `to_pretty_json` infallible.
fn serialize_path_lossy<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    path.as_deref().map(Path::to_string_lossy).serialize(s)
}

fn serialize_one_path_lossy<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    path.to_string_lossy().serialize(s)
}

/// Buffer, supervision and timeout limits; sizes are in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Longest accepted client line.
    pub max_input_buffer: usize,
    /// Bytes queued toward one client before its reads pause.
    pub max_output_queue: usize,
    /// Hard cap on the bytes queued toward one client (replies, worker notifications and requests,
    /// bus errors): the message that would take the queue over it disconnects the client. At
    /// least `max_output_queue`; when absent, the default or `max_output_queue`, whichever is
    /// larger.
    pub max_output_bytes: usize,
    /// Restarts allowed per worker instance within `restart_window_sec`; 0 never restarts.
    pub max_restarts: u32,
    /// Window in which restarts are counted.
    pub restart_window_sec: u64,
    /// Time between SIGTERM and SIGKILL when stopping workers; 0 kills at once.
    pub drain_timeout_sec: u64,
    /// Seconds between a shutdown request (SIGTERM, SIGINT) and the drain, during which `/readyz`
    /// answers 503 while everything is still served, so load balancers stop sending new
    /// sessions first; 0 drains at once. stdin's end drains without it.
    pub drain_grace_sec: u64,
    /// Time a client's output queue may stay full before the client is disconnected.
    pub backpressure_timeout_sec: u64,
    /// Bytes buffered toward one worker before its clients are paused.
    pub max_worker_queue: usize,
    /// Longest accepted worker stdout line.
    pub max_worker_line: usize,
    /// Client connections served at once; the daemon lowers it below its open-file limit so a
    /// worker can always be restarted (see `io::Capacity`). Connections over it are closed.
    pub max_connections: usize,
    /// Seconds a client connection may complete no line, with no request in flight, before it is
    /// closed (slowloris).
    pub client_idle_sec: u64,
    /// Longest session key accepted, in bytes (after JSON unescaping).
    pub max_session_id_bytes: usize,
    /// Seconds a session may go without a client message before it leaves the sticky table.
    pub session_idle_sec: u64,
    /// Most sessions the sticky table holds; a new session beyond it is refused.
    pub max_sessions: usize,
    /// Most tenants known at once: the configured ones, plus those (from JWT claims, Unix uids)
    /// holding a connection or a session; a connection of one more tenant is refused.
    pub max_tenants: usize,
    /// Default per-tenant session quota (a tenant's sessions in the sticky table).
    pub tenant_max_sessions: usize,
    /// Default per-tenant quota of client connections served at once.
    pub tenant_max_connections: usize,
    /// Default per-tenant quota of requests sent to workers and not yet answered.
    pub tenant_max_in_flight: usize,
    /// Default per-tenant request rate (a token bucket refilled at this many per second); 0: none.
    pub tenant_requests_per_sec: u32,
    /// Default per-tenant burst: requests the bucket holds; 0 means `tenant_requests_per_sec`.
    pub tenant_request_burst: u32,
}

impl Limits {
    /// The per-tenant limits of a tenant without an entry in `tenants`.
    pub fn tenant_defaults(&self) -> TenantLimits {
        TenantLimits {
            max_sessions: self.tenant_max_sessions,
            max_connections: self.tenant_max_connections,
            max_in_flight: self.tenant_max_in_flight,
            requests_per_sec: self.tenant_requests_per_sec,
            request_burst: self.tenant_request_burst,
        }
    }
}

/// The limits one tenant lives under (our extension); the global `limits` stand above them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TenantLimits {
    /// Sessions of the tenant in the sticky table; a new one beyond gets `quota_exceeded`.
    pub max_sessions: usize,
    /// Connections of the tenant served at once; one more is refused with `quota_exceeded`.
    pub max_connections: usize,
    /// Requests of the tenant in flight at workers; one more gets `quota_exceeded`.
    pub max_in_flight: usize,
    /// Requests admitted per second on average (token bucket); 0: no rate limit.
    pub requests_per_sec: u32,
    /// Requests the bucket holds (admitted at once after a pause); 0 means `requests_per_sec`.
    pub request_burst: u32,
}

impl Default for Limits {
    /// The stdio Bus v2.0.3 defaults, plus ours for the extensions.
    fn default() -> Self {
        Limits {
            max_input_buffer: 1_048_576,
            max_output_queue: 4_194_304,
            // Room for the soft limit plus one largest worker line (max_worker_line, 64 MiB) with
            // about as much again to spare: a client that reads never comes near it.
            max_output_bytes: 134_217_728,
            max_restarts: 5,
            restart_window_sec: 60,
            drain_timeout_sec: 30,
            // Two or three health checks of a balancer polling every 1-2 s.
            drain_grace_sec: 5,
            backpressure_timeout_sec: 60,
            max_worker_queue: 1_048_576,
            // Codex results such as thread/resume can exceed 1 MiB.
            max_worker_line: 67_108_864,
            max_connections: 10_000,
            client_idle_sec: 300,
            max_session_id_bytes: 256,
            session_idle_sec: 3600,
            max_sessions: 1_000_000,
            // Sized for one tenant: with a single tenant the per-tenant quotas equal the global caps.
            max_tenants: 10_000,
            tenant_max_sessions: 1_000_000,
            tenant_max_connections: 10_000,
            tenant_max_in_flight: 100_000,
            tenant_requests_per_sec: 0,
            tenant_request_burst: 0,
        }
    }
}

impl Default for TenantLimits {
    /// The defaults of `limits.tenant_*`.
    fn default() -> Self {
        Limits::default().tenant_defaults()
    }
}

/// How clients reach the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportMode {
    /// The daemon's stdin/stdout is the single client.
    Stdio,
    /// A Unix domain socket listener.
    Unix,
    /// A TCP listener.
    Tcp,
}

/// Client transport settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransportConfig {
    /// Listener kind; the CLI flag overrides it.
    pub mode: TransportMode,
    /// Always `"ndjson"`: the only framing supported.
    pub framing: String,
    /// Always `"json"`: the only protocol supported.
    pub protocol: String,
    /// Socket path (unix) or HOST:PORT (tcp); the CLI flag overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// TLS for the TCP listener (our extension); absent, TCP is plaintext. Unix and stdio
    /// clients are local and never use it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// TLS for one listener (our extension; `transport.tls`, and any other listener's `tls`): the
/// server's certificate chain and private key, PEM files read by the daemon at start and again on
/// SIGHUP. TLS encrypts; it does not authenticate clients (`auth` does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsConfig {
    /// PEM file holding the certificate chain, the server's own certificate first, then the
    /// intermediates (as Let's Encrypt's `fullchain.pem`).
    #[serde(serialize_with = "serialize_one_path_lossy")]
    pub cert_file: PathBuf,
    /// PEM file holding the private key of the first certificate (PKCS#8, PKCS#1 RSA or SEC1
    /// EC). Holds a secret: keep it readable by the daemon's user only.
    #[serde(serialize_with = "serialize_one_path_lossy")]
    pub key_file: PathBuf,
}

impl Default for TransportConfig {
    /// stdio, NDJSON, JSON: what stdio Bus does without a `transport` section.
    fn default() -> Self {
        TransportConfig {
            mode: TransportMode::Stdio,
            framing: "ndjson".to_owned(),
            protocol: "json".to_owned(),
            address: None,
            tls: None,
        }
    }
}

/// Session and pool routing settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoutingConfig {
    /// Dotted path of the session key in a message, e.g. `sessionId` or `params.sessionId`.
    pub session_id_field: String,
    /// Pool for messages that name none; must be an existing pool id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_pool: Option<String>,
    /// Notifications whose member names one of the sender's earlier requests by its id
    /// (cancellations); the bus swaps that id for the bus id like a request's own.
    pub id_references: Vec<IdReferenceConfig>,
}

/// One entry of `routing.id_references`: the notification `method` whose member at the dotted
/// `path` holds the id of one of the sender's in-flight requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IdReferenceConfig {
    /// The notification's method, non-empty, without quotes, backslashes or control characters.
    pub method: String,
    /// Dotted path of the id within the message, e.g. `params.id`; no empty segments.
    pub path: String,
}

impl IdReferenceConfig {
    /// The defaults: LSP's `$/cancelRequest` (`params.id`) and MCP's `notifications/cancelled`
    /// (`params.requestId`). Codex's `turn/interrupt` names a thread and a turn, not a request
    /// id, so it needs none.
    pub fn defaults() -> Vec<IdReferenceConfig> {
        [
            ("$/cancelRequest", "params.id"),
            ("notifications/cancelled", "params.requestId"),
        ]
        .into_iter()
        .map(|(method, path)| IdReferenceConfig {
            method: method.to_owned(),
            path: path.to_owned(),
        })
        .collect()
    }
}

impl Default for RoutingConfig {
    /// Top-level `sessionId`, as stdio Bus routes, no default pool, and the LSP and MCP
    /// cancellations as id references.
    fn default() -> Self {
        RoutingConfig {
            session_id_field: "sessionId".to_owned(),
            default_pool: None,
            id_references: IdReferenceConfig::defaults(),
        }
    }
}

/// The HTTP endpoint for `/metrics`, `/healthz`, `/readyz` and `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetricsConfig {
    /// HOST:PORT to listen on; off when absent (the `--metrics` flag overrides it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Lower-case hex SHA-256 (64 digits) of the bearer token that `/metrics`, `/status` and the
    /// dashboard require (as a bearer token, or as an HTTP Basic password); absent, they are
    /// open. Only the digest is configured, so the file holds no secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_sha256: Option<String>,
    /// TLS for the admin endpoint (HTTPS, HTTP/1.1); absent, it is plain HTTP. With a token and
    /// off loopback, TLS keeps the token (which a browser sends with every dashboard request)
    /// from crossing the network in clear.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// How clients prove who they are (the `auth` object), in the two credential modes of
/// `codex app-server --ws-auth`: capability tokens and HS256 JWTs (docs/config.md, "auth").
///
/// Holds no secret: tokens are configured by their SHA-256 digest, the JWT secret by the path of
/// the file that holds it (read at start by the daemon).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuthConfig {
    /// Capability tokens given inline.
    pub tokens: Vec<TokenEntry>,
    /// A file holding more entries shaped like `tokens` (a JSON array), read at start.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_path_lossy"
    )]
    pub tokens_file: Option<PathBuf>,
    /// HS256 JWT verification; absent, JWTs are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// Unix-socket peers: the tenant of each uid (`SO_PEERCRED`); an unmapped uid `n` is tenant
    /// `uid-n`.
    pub unix_tenants: BTreeMap<u32, String>,
    /// The tenant of the stdio client, the local operator.
    pub stdio_tenant: String,
    /// Lets a TCP or metrics listener on a non-loopback address start without authentication.
    pub insecure_no_auth: bool,
    /// Seconds a TCP client has to authenticate before it is closed.
    pub handshake_timeout_sec: u64,
    /// Lines refused before authentication after which the connection is closed.
    pub max_unauthenticated_lines: u32,
}

impl Default for AuthConfig {
    /// No credentials, stdio as `local`, 10 s and 3 lines to authenticate, secure by default.
    fn default() -> Self {
        AuthConfig {
            tokens: Vec::new(),
            tokens_file: None,
            jwt: None,
            unix_tenants: BTreeMap::new(),
            stdio_tenant: "local".to_owned(),
            insecure_no_auth: false,
            handshake_timeout_sec: 10,
            max_unauthenticated_lines: 3,
        }
    }
}

/// One capability token: a bearer secret known by its SHA-256 digest, or kept in a Codex token
/// file (`codex app-server --ws-token-file`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenEntry {
    /// The tenant a connection presenting the token belongs to (a [tenant name]).
    ///
    /// [tenant name]: crate::validate_tenant_name
    pub tenant: String,
    /// Where the token is known from.
    #[serde(flatten)]
    pub secret: TokenSecret,
    /// Who holds the token, for logs; the tenant's name when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// How a capability token is configured: exactly one of the two keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSecret {
    /// `sha256`: lower-case hex SHA-256 (64 digits) of the token's bytes:
    /// `printf %s "$TOKEN" | sha256sum`.
    Sha256(String),
    /// `token_file`: a file holding the raw token (surrounding whitespace trimmed), read by the
    /// daemon at start, as Codex reads `--ws-token-file`.
    #[serde(serialize_with = "serialize_one_path_lossy")]
    TokenFile(PathBuf),
}

/// HS256 JWT verification settings (as `codex app-server --ws-auth signed-bearer-token`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JwtConfig {
    /// File holding the shared secret (surrounding whitespace trimmed; at least 32 bytes).
    #[serde(serialize_with = "serialize_one_path_lossy")]
    pub secret_file: PathBuf,
    /// Required `iss` claim, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim (a string, or an array holding it), when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The claim naming the tenant (a [tenant name]); `tenant` by default.
    ///
    /// [tenant name]: crate::validate_tenant_name
    pub tenant_claim: String,
}
