//! Defaults, the built-in single-pool config, round trips through `to_pretty_json`, and error display.

use std::path::Path;

use codex_bus_config::{
    Config, IdReferenceConfig, Limits, RestartPolicy, RoutingConfig, Supervision, TransportConfig,
    TransportMode,
};

fn parse(text: &str) -> Config {
    Config::from_json_str(text, "test.json").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn absent_sections_take_their_defaults() {
    let config = parse(r#"{"pools": [{"id": "a", "command": "cat", "instances": 1}]}"#);
    assert_eq!(
        config.limits,
        Limits {
            max_input_buffer: 1_048_576,
            max_output_queue: 4_194_304,
            max_output_bytes: 134_217_728,
            max_restarts: 5,
            restart_window_sec: 60,
            drain_timeout_sec: 30,
            drain_grace_sec: 5,
            backpressure_timeout_sec: 60,
            max_worker_queue: 1_048_576,
            max_worker_line: 67_108_864,
            max_connections: 10_000,
            client_idle_sec: 300,
            max_session_id_bytes: 256,
            session_idle_sec: 3600,
            max_sessions: 1_000_000,
            max_tenants: 10_000,
            tenant_max_sessions: 1_000_000,
            tenant_max_connections: 10_000,
            tenant_max_in_flight: 100_000,
            tenant_requests_per_sec: 0,
            tenant_request_burst: 0,
        }
    );
    assert!(config.tenants.is_empty());
    assert_eq!(
        config.transport,
        TransportConfig {
            mode: TransportMode::Stdio,
            framing: "ndjson".into(),
            protocol: "json".into(),
            address: None,
            tls: None,
        }
    );
    assert_eq!(
        config.routing,
        RoutingConfig {
            session_id_field: "sessionId".into(),
            default_pool: None,
            id_references: IdReferenceConfig::defaults(),
        }
    );
    let cancels: Vec<(&str, &str)> = config
        .routing
        .id_references
        .iter()
        .map(|r| (&*r.method, &*r.path))
        .collect();
    assert_eq!(
        cancels,
        [
            ("$/cancelRequest", "params.id"),
            ("notifications/cancelled", "params.requestId")
        ]
    );
    let pool = &config.pools[0];
    assert!(pool.args.is_empty() && pool.env.is_empty() && pool.cwd.is_none());
}

#[test]
fn a_partial_limits_section_keeps_the_other_defaults() {
    let config = parse(
        r#"{"pools": [{"id": "a", "command": "cat", "instances": 1}],
            "limits": {"max_restarts": 0, "drain_timeout_sec": 0, "drain_grace_sec": 0, "max_worker_line": 2000000}}"#,
    );
    let expected = Limits {
        max_restarts: 0,
        drain_timeout_sec: 0,
        drain_grace_sec: 0,
        max_worker_line: 2_000_000,
        ..Limits::default()
    };
    assert_eq!(config.limits, expected);
}

#[test]
fn extensions_are_read() {
    let config = parse(
        r#"{"pools": [{"id": "a", "command": "cat", "instances": 1024, "cwd": "/tmp", "env": {"A": "1", "B": ""}}],
            "transport": {"mode": "tcp", "address": "127.0.0.1:7000",
                          "options": {"shm_name": "/x", "mqueue_depth": 10},
                          "tls": {"cert_file": "/etc/bus/cert.pem", "key_file": "key.pem"}},
            "routing": {"session_id_field": "params.sessionId"}}"#,
    );
    let pool = &config.pools[0];
    assert_eq!(pool.instances, 1024);
    assert_eq!(pool.cwd.as_deref(), Some(Path::new("/tmp")));
    assert_eq!(pool.env.len(), 2);
    assert_eq!(config.transport.mode, TransportMode::Tcp);
    assert_eq!(config.transport.address.as_deref(), Some("127.0.0.1:7000"));
    let tls = config.transport.tls.as_ref().unwrap();
    assert_eq!(tls.cert_file, Path::new("/etc/bus/cert.pem"));
    assert_eq!(tls.key_file, Path::new("key.pem"));
    assert_eq!(config.routing.session_id_field, "params.sessionId");
}

#[test]
fn id_references_replace_the_defaults_and_may_be_empty() {
    let config = parse(
        r#"{"pools": [{"id": "a", "command": "cat", "instances": 1}],
            "routing": {"id_references": [{"method": "x/cancel", "path": "params.ref"}]}}"#,
    );
    assert_eq!(
        config.routing.id_references,
        [IdReferenceConfig {
            method: "x/cancel".into(),
            path: "params.ref".into()
        }]
    );
    let config = parse(
        r#"{"pools": [{"id": "a", "command": "cat", "instances": 1}],
            "routing": {"id_references": []}}"#,
    );
    assert!(config.routing.id_references.is_empty());
}

#[test]
fn supervision_keys_are_read_and_default_to_the_documented_values() {
    let config = parse(
        r#"{"pools": [{"id": "a", "command": "cat", "instances": 1},
                      {"id": "b", "command": "cat", "instances": 1, "restart_policy": "never", "escalate": true,
                       "request_timeout_sec": 30, "ready_probe": {"method": "initialize"}}]}"#,
    );
    let defaults = &config.pools[0].supervision;
    assert_eq!(defaults, &Supervision::default());
    assert_eq!(defaults.restart_policy, RestartPolicy::Always);
    assert_eq!(
        (
            defaults.backoff_initial_ms,
            defaults.backoff_max_ms,
            defaults.backoff_jitter_pct
        ),
        (100, 30_000, 20)
    );
    assert_eq!(defaults.stable_after_sec, 60);
    assert_eq!(
        defaults.request_timeout_sec, 0,
        "timeouts are off by default"
    );
    assert_eq!(defaults.queue_timeout_sec, 30);
    assert_eq!(defaults.ready_grace_ms, 1_000);
    assert_eq!(defaults.ready_timeout_sec, 30);
    assert_eq!(defaults.roll_timeout_sec, 300);
    assert!(!defaults.escalate && defaults.ready_probe.is_none());
    let set = &config.pools[1].supervision;
    assert_eq!(set.restart_policy, RestartPolicy::Never);
    assert!(set.escalate);
    assert_eq!(set.request_timeout_sec, 30);
    let probe = set.ready_probe.as_ref().expect("probe");
    assert_eq!(
        (probe.method.as_str(), &probe.params),
        ("initialize", &None)
    );
}

#[test]
fn single_pool_uses_the_defaults() {
    let config = Config::single_pool("codex", "codex", &["app-server"], 3);
    assert_eq!(config.pools.len(), 1);
    assert_eq!(config.pools[0].id, "codex");
    assert_eq!(config.pools[0].args, ["app-server"]);
    assert_eq!(config.pools[0].instances, 3);
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.transport, TransportConfig::default());
    assert_eq!(config.routing, RoutingConfig::default());
}

#[test]
fn pretty_json_round_trips_a_minimal_config() {
    let config = Config::single_pool("codex", "codex", &["app-server"], 2);
    let text = config.to_pretty_json();
    assert!(text.contains("\"max_worker_line\": 67108864"), "{text}");
    assert_eq!(parse(&text), config);
}

#[test]
fn pretty_json_round_trips_every_field() {
    let config = parse(
        r#"{"pools": [{"id": "a", "command": "cat", "args": ["-u"], "instances": 2, "cwd": "/tmp", "env": {"K": "v"},
                       "restart_policy": "on-failure", "backoff_initial_ms": 5, "backoff_max_ms": 6,
                       "backoff_jitter_pct": 0, "stable_after_sec": 0, "escalate": true, "request_timeout_sec": 3,
                       "queue_timeout_sec": 4, "ready_grace_ms": 0, "ready_timeout_sec": 2,
                       "roll_timeout_sec": 86400,
                       "ready_probe": {"method": "ping", "params": {"deep": [1, "x", null, true]}}},
                      {"id": "b", "command": "cat", "instances": 1}],
            "limits": {"max_input_buffer": 10, "max_output_queue": 20, "max_output_bytes": 25, "max_restarts": 0, "restart_window_sec": 9,
                       "drain_timeout_sec": 0, "drain_grace_sec": 3, "backpressure_timeout_sec": 7, "max_worker_queue": 30, "max_worker_line": 40,
                       "max_connections": 50,
                       "client_idle_sec": 60,
                       "max_session_id_bytes": 50, "session_idle_sec": 60, "max_sessions": 70},
            "transport": {"mode": "unix", "address": "/run/bus.sock",
                          "tls": {"cert_file": "c.pem", "key_file": "k.pem"}},
            "routing": {"session_id_field": "params.sessionId", "default_pool": "b"}}"#,
    );
    assert_eq!(parse(&config.to_pretty_json()), config);
}

#[test]
fn the_example_in_the_docs_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
    let docs = std::fs::read_to_string(&path).expect("docs/config.md is readable");
    let examples: Vec<Config> = docs
        .split("```json\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .map(parse)
        .collect();
    assert!(
        examples.iter().any(|c| c.tenants.contains_key("acme")),
        "the tenants example loads"
    );
    let config = examples.last().expect("docs/config.md has a json example");
    assert_eq!(config.transport.mode, TransportMode::Unix);
    assert_eq!(config.routing.default_pool.as_deref(), Some("codex"));
}

#[test]
fn load_names_the_missing_file() {
    let err = Config::load(Path::new("/nonexistent/bus.json")).expect_err("file does not exist");
    assert_eq!(err.source_name, "/nonexistent/bus.json");
    assert_eq!(err.problems.len(), 1);
    assert!(err.problems[0].starts_with("cannot read file: "), "{err}");
}

#[test]
fn display_prefixes_each_problem_with_the_source() {
    let err =
        Config::from_json_str(r#"{"pools": [], "limitz": {}}"#, "<built-in>").expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "<built-in>: limitz: unknown key (did you mean 'limits'?)\n\
         <built-in>: pools: must contain at least one pool, got an empty array"
    );
}

#[test]
fn a_tenant_entry_overrides_only_what_it_names() {
    let config = parse(
        r#"{"pools": [{"id": "a", "command": "cat", "instances": 1}],
            "limits": {"tenant_max_sessions": 50, "tenant_requests_per_sec": 10},
            "tenants": {"acme.prod": {"max_in_flight": 7, "request_burst": 3}, "b": {}}}"#,
    );
    let acme = config.tenants["acme.prod"];
    assert_eq!(acme.max_sessions, 50, "from limits.tenant_max_sessions");
    assert_eq!(acme.requests_per_sec, 10);
    assert_eq!((acme.max_in_flight, acme.request_burst), (7, 3));
    assert_eq!(config.tenants["b"], config.limits.tenant_defaults());
}

#[test]
fn tenant_names_and_keys_are_checked() {
    let error = Config::from_json_str(
        r#"{"pools": [{"id": "a", "command": "cat", "instances": 1}],
            "tenants": {"a:b": {}, "ok": {"max_sesions": 1, "max_in_flight": 0}}}"#,
        "t.json",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("tenants.a:b") || error.contains("tenants[\"a:b\"]"),
        "{error}"
    );
    assert!(
        error.contains("max_sesions") && error.contains("max_sessions"),
        "{error}"
    );
    assert!(error.contains("max_in_flight"), "{error}");
}
