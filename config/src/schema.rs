//! The known keys of each level: the single list that both the validator and the docs check read.

/// Keys of the top-level object.
pub(crate) const TOP_KEYS: &[&str] = &[
    "pools",
    "limits",
    "transport",
    "routing",
    "metrics",
    "auth",
    "tenants",
    "audit",
    "websocket",
];

/// Keys of one `websocket[]` listener (our extension).
pub(crate) const WEBSOCKET_KEYS: &[&str] = &[
    "listen",
    "session_header",
    "session_query",
    "allowed_origins",
    "max_frame_bytes",
    "max_message_bytes",
    "tls",
];

/// Keys of `audit` (our extension).
pub(crate) const AUDIT_KEYS: &[&str] = &["path"];

/// Keys of a pool's `rlimits` object (our extension).
pub(crate) const RLIMIT_KEYS: &[&str] = &[
    "address_space_bytes",
    "open_files",
    "processes",
    "cpu_seconds",
    "core_bytes",
];

/// Keys of a pool's `cgroup` object (our extension).
pub(crate) const CGROUP_KEYS: &[&str] = &["memory_max_bytes", "cpu_max_percent"];

/// Keys of one `pools[]` object; all but the first four are our extensions.
pub(crate) const POOL_KEYS: &[&str] = &[
    "id",
    "command",
    "args",
    "instances",
    "env",
    "cwd",
    "user",
    "group",
    "umask",
    "rlimits",
    "no_new_privs",
    "cgroup",
    "restart_policy",
    "backoff_initial_ms",
    "backoff_max_ms",
    "backoff_jitter_pct",
    "stable_after_sec",
    "escalate",
    "request_timeout_sec",
    "queue_timeout_sec",
    "ready_grace_ms",
    "ready_probe",
    "ready_timeout_sec",
    "roll_timeout_sec",
];

/// Keys of a pool's `ready_probe` object.
pub(crate) const PROBE_KEYS: &[&str] = &["method", "params"];

/// Keys of `limits`; those from `max_worker_queue` on are our extensions.
pub(crate) const LIMIT_KEYS: &[&str] = &[
    "max_input_buffer",
    "max_output_queue",
    "max_restarts",
    "restart_window_sec",
    "drain_timeout_sec",
    "backpressure_timeout_sec",
    "max_worker_queue",
    "max_worker_line",
    "max_connections",
    "client_idle_sec",
    "max_session_id_bytes",
    "session_idle_sec",
    "max_sessions",
    "max_output_bytes",
    "max_tenants",
    "tenant_max_sessions",
    "tenant_max_connections",
    "tenant_max_in_flight",
    "tenant_requests_per_sec",
    "tenant_request_burst",
    "drain_grace_sec",
];

/// Keys of one `tenants` entry (our extension).
pub(crate) const TENANT_KEYS: &[&str] = &[
    "max_sessions",
    "max_connections",
    "max_in_flight",
    "requests_per_sec",
    "request_burst",
];

/// Keys of `transport`; `address` and `tls` are our extensions.
pub(crate) const TRANSPORT_KEYS: &[&str] =
    &["mode", "framing", "protocol", "options", "address", "tls"];

/// Keys of a listener's `tls` object (our extension).
pub(crate) const TLS_KEYS: &[&str] = &["cert_file", "key_file"];

/// Keys of `transport.options`: stdio Bus settings of the shm and mqueue modes, accepted and ignored.
pub(crate) const TRANSPORT_OPTION_KEYS: &[&str] = &[
    "shm_name",
    "shm_size",
    "mqueue_name",
    "mqueue_msgsize",
    "mqueue_depth",
];

/// Keys of `routing`.
pub(crate) const ROUTING_KEYS: &[&str] = &["session_id_field", "default_pool", "id_references"];

/// Keys of one `routing.id_references[]` object (our extension).
pub(crate) const ID_REFERENCE_KEYS: &[&str] = &["method", "path"];

/// Keys of `metrics` (our extension).
pub(crate) const METRICS_KEYS: &[&str] = &["listen", "bearer_sha256", "tls"];

/// Keys of `auth` (our extension).
pub(crate) const AUTH_KEYS: &[&str] = &[
    "tokens",
    "tokens_file",
    "jwt",
    "unix_tenants",
    "stdio_tenant",
    "insecure_no_auth",
    "handshake_timeout_sec",
    "max_unauthenticated_lines",
];

/// Keys of one `auth.tokens[]` entry (and of one entry of `auth.tokens_file`).
pub(crate) const TOKEN_KEYS: &[&str] = &["tenant", "sha256", "token_file", "subject"];

/// Keys of `auth.jwt`.
pub(crate) const JWT_KEYS: &[&str] = &["secret_file", "issuer", "audience", "tenant_claim"];

/// Most workers a pool may have; far above useful sizes, it catches a typo that would fork thousands.
pub(crate) const MAX_INSTANCES: u32 = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuthConfig, Limits};

    fn reference() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md");
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    }

    #[test]
    fn docs_name_every_key_of_the_schema() {
        let docs = reference();
        let levels = [
            TOP_KEYS,
            POOL_KEYS,
            RLIMIT_KEYS,
            CGROUP_KEYS,
            PROBE_KEYS,
            LIMIT_KEYS,
            TRANSPORT_KEYS,
            TRANSPORT_OPTION_KEYS,
            TLS_KEYS,
            ROUTING_KEYS,
            ID_REFERENCE_KEYS,
            METRICS_KEYS,
            TENANT_KEYS,
            AUDIT_KEYS,
            AUTH_KEYS,
            TOKEN_KEYS,
            JWT_KEYS,
            WEBSOCKET_KEYS,
        ];
        let missing: Vec<&str> = levels
            .iter()
            .flat_map(|keys| keys.iter().copied())
            .filter(|key| !docs.contains(&format!("`{key}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/config.md does not mention {missing:?}"
        );
    }

    #[test]
    fn docs_state_every_default_limit() {
        let docs = reference();
        let d = Limits::default();
        let auth = AuthConfig::default();
        let defaults = [
            d.max_input_buffer.to_string(),
            d.max_output_queue.to_string(),
            d.max_restarts.to_string(),
            d.restart_window_sec.to_string(),
            d.drain_timeout_sec.to_string(),
            d.drain_grace_sec.to_string(),
            d.backpressure_timeout_sec.to_string(),
            d.max_worker_queue.to_string(),
            d.max_worker_line.to_string(),
            d.max_connections.to_string(),
            d.client_idle_sec.to_string(),
            d.max_session_id_bytes.to_string(),
            d.session_idle_sec.to_string(),
            d.max_sessions.to_string(),
            d.tenant_max_in_flight.to_string(),
            d.max_output_bytes.to_string(),
            MAX_INSTANCES.to_string(),
            auth.handshake_timeout_sec.to_string(),
            auth.max_unauthenticated_lines.to_string(),
            format!("\"{}\"", auth.stdio_tenant),
        ];
        let missing: Vec<&String> = defaults
            .iter()
            .filter(|v| !docs.contains(v.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/config.md does not state {missing:?}"
        );
    }
}
