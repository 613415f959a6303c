//! Every invalid input yields a problem that names its field path.

use codex_bus_config::Config;

/// A pool line that is valid, to embed in documents that are broken elsewhere.
const POOL: &str = r#"{"id": "a", "command": "cat", "instances": 1}"#;

fn problems(text: &str) -> Vec<String> {
    match Config::from_json_str(text, "t.json") {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(e) => {
            assert_eq!(e.source_name, "t.json");
            e.problems
        }
    }
}

/// The document must fail with exactly these problems, in this order.
fn assert_problems(text: &str, expected: &[&str]) {
    assert_eq!(problems(text), expected, "for {text}");
}

/// A document whose only broken part is the `pools` value.
fn with_pools(pools: &str) -> String {
    format!(r#"{{"pools": {pools}}}"#)
}

/// A document with one valid pool plus `section`.
fn with_section(section: &str) -> String {
    format!(r#"{{"pools": [{POOL}], {section}}}"#)
}

#[test]
fn pools_missing_empty_or_not_an_array() {
    assert_problems(
        "{}",
        &["pools: missing; at least one worker pool is required"],
    );
    assert_problems(
        &with_pools("[]"),
        &["pools: must contain at least one pool, got an empty array"],
    );
    assert_problems(
        &with_pools("{}"),
        &["pools: must be an array of pool objects, got an object"],
    );
    assert_problems(&with_pools("[3]"), &["pools[0]: must be an object, got 3"]);
}

#[test]
fn pool_missing_id_or_command() {
    assert_problems(
        &with_pools(r#"[{"command": "cat", "instances": 1}]"#),
        &["pools[0].id: missing (required: a non-empty string)"],
    );
    assert_problems(
        &with_pools(r#"[{"id": "a", "instances": 1}]"#),
        &["pools[0].command: missing (required: a non-empty string)"],
    );
}

#[test]
fn pool_id_empty_or_not_a_string() {
    assert_problems(
        &with_pools(r#"[{"id": "", "command": "cat", "instances": 1}]"#),
        &[r#"pools[0].id: must be a non-empty string, got """#],
    );
    assert_problems(
        &with_pools(r#"[{"id": 7, "command": "cat", "instances": 1}]"#),
        &["pools[0].id: must be a non-empty string, got 7"],
    );
}

#[test]
fn duplicate_pool_ids_name_the_first() {
    assert_problems(
        &with_pools(&format!(
            r#"[{POOL}, {{"id": "b", "command": "cat", "instances": 1}}, {POOL}]"#
        )),
        &["pools[2].id: duplicate pool id 'a' (also pools[0])"],
    );
}

#[test]
fn instances_must_be_an_integer_from_1_to_1024() {
    let cases = [
        ("0", "pools[0].instances: must be an integer ≥ 1, got 0"),
        ("-1", "pools[0].instances: must be an integer ≥ 1, got -1"),
        ("2.0", "pools[0].instances: must be an integer ≥ 1, got 2.0"),
        (
            "1e1",
            "pools[0].instances: must be an integer ≥ 1, got 10.0",
        ),
        (
            r#""2""#,
            r#"pools[0].instances: must be an integer ≥ 1, got "2""#,
        ),
        (
            "null",
            "pools[0].instances: must be an integer ≥ 1, got null",
        ),
        ("1025", "pools[0].instances: must be at most 1024, got 1025"),
    ];
    for (value, expected) in cases {
        assert_problems(
            &with_pools(&format!(
                r#"[{{"id": "a", "command": "cat", "instances": {value}}}]"#
            )),
            &[expected],
        );
    }
    assert_problems(
        &with_pools(r#"[{"id": "a", "command": "cat"}]"#),
        &["pools[0].instances: missing (required: an integer ≥ 1)"],
    );
}

#[test]
fn a_pool_id_must_not_contain_nul_since_workers_get_it_in_their_environment() {
    assert_problems(
        &with_pools(r#"[{"id": "a\u0000b", "command": "cat", "instances": 1}]"#),
        &["pools[0].id: must not contain a NUL character"],
    );
}

#[test]
fn args_must_be_an_array_of_strings() {
    assert_problems(
        &with_pools(r#"[{"id": "a", "command": "cat", "instances": 1, "args": "-u"}]"#),
        &[r#"pools[0].args: must be an array of strings, got "-u""#],
    );
    assert_problems(
        &with_pools(
            r#"[{"id": "a", "command": "cat", "instances": 1, "args": ["-u", 3, "x\u0000"]}]"#,
        ),
        &[
            "pools[0].args[1]: must be a string, got 3",
            "pools[0].args[2]: must not contain a NUL character",
        ],
    );
}

#[test]
fn env_values_must_be_strings_and_names_settable() {
    assert_problems(
        &with_pools(
            r#"[{"id": "a", "command": "cat", "instances": 1, "env": {"RUST_LOG": 1, "A=B": "x"}}]"#,
        ),
        &[
            "pools[0].env.RUST_LOG: must be a string, got 1",
            r#"pools[0].env["A=B"]: environment variable names must be non-empty and contain neither '=' nor NUL"#,
        ],
    );
    assert_problems(
        &with_pools(r#"[{"id": "a", "command": "cat", "instances": 1, "env": ["RUST_LOG=info"]}]"#),
        &["pools[0].env: must be an object, got an array"],
    );
}

#[test]
fn limits_must_be_non_negative_integers() {
    let cases = [
        (
            "-1",
            "limits.max_restarts: must be a non-negative integer, got -1",
        ),
        (
            "2.0",
            "limits.max_restarts: must be a non-negative integer, got 2.0",
        ),
        (
            r#""5""#,
            r#"limits.max_restarts: must be a non-negative integer, got "5""#,
        ),
        (
            "null",
            "limits.max_restarts: must be a non-negative integer, got null",
        ),
        (
            "true",
            "limits.max_restarts: must be a non-negative integer, got true",
        ),
        (
            "4294967296",
            "limits.max_restarts: must be at most 4294967295, got 4294967296",
        ),
    ];
    for (value, expected) in cases {
        assert_problems(
            &with_section(&format!(r#""limits": {{"max_restarts": {value}}}"#)),
            &[expected],
        );
    }
    assert_problems(
        &with_section(
            r#""limits": {"restart_window_sec": 0, "max_input_buffer": 0, "drain_timeout_sec": 0}"#,
        ),
        &[
            "limits.restart_window_sec: must be an integer ≥ 1, got 0",
            "limits.max_input_buffer: must be an integer ≥ 1, got 0",
        ],
    );
    assert_problems(
        &with_section(r#""limits": null"#),
        &["limits: must be an object, got null"],
    );
}

#[test]
fn unknown_keys_at_every_level_get_a_hint() {
    assert_problems(
        &format!(r#"{{"pools": [{POOL}], "pool": "a"}}"#),
        &["pool: unknown key (did you mean 'pools'?)"],
    );
    assert_problems(
        &with_pools(r#"[{"id": "a", "command": "cat", "instances": 1, "instnces": 2}]"#),
        &["pools[0].instnces: unknown key (did you mean 'instances'?)"],
    );
    assert_problems(
        &with_section(r#""limits": {"drain_timout_sec": 5}"#),
        &["limits.drain_timout_sec: unknown key (did you mean 'drain_timeout_sec'?)"],
    );
    assert_problems(
        &with_section(r#""transport": {"framng": "ndjson"}"#),
        &["transport.framng: unknown key (did you mean 'framing'?)"],
    );
    assert_problems(
        &with_section(r#""transport": {"options": {"shm_nam": "/x"}}"#),
        &["transport.options.shm_nam: unknown key (did you mean 'shm_name'?)"],
    );
    assert_problems(
        &with_section(r#""routing": {"sessionIdField": "sessionId"}"#),
        &["routing.sessionIdField: unknown key (did you mean 'session_id_field'?)"],
    );
}

#[test]
fn unknown_keys_without_a_close_match_list_the_known_ones() {
    assert_problems(
        &with_section(r#""routing": {"hostname": "x"}"#),
        &["routing.hostname: unknown key (known keys: session_id_field, default_pool, id_references)"],
    );
}

#[test]
fn routing_default_pool_must_exist() {
    assert_problems(
        &format!(
            r#"{{"pools": [{POOL}, {{"id": "b", "command": "cat", "instances": 1}}], "routing": {{"default_pool": "x"}}}}"#
        ),
        &["routing.default_pool: no pool named 'x' (pools: a, b)"],
    );
}

#[test]
fn routing_session_id_field_must_be_a_dotted_path() {
    for bad in ["", "a..b", ".a", "a."] {
        assert_problems(
            &with_section(&format!(r#""routing": {{"session_id_field": "{bad}"}}"#)),
            &[&format!(
                r#"routing.session_id_field: must be a dotted path without empty segments, like "sessionId" or "params.sessionId", got "{bad}""#
            )],
        );
    }
    assert_problems(
        &with_section(r#""routing": {"session_id_field": 1}"#),
        &["routing.session_id_field: must be a string, got 1"],
    );
}

#[test]
fn unsupported_transports_are_rejected_by_name() {
    assert_problems(
        &with_section(r#""transport": {"mode": "shm"}"#),
        &["transport.mode: 'shm' is not supported by codex-stdio-bus (supported: stdio, unix, tcp)"],
    );
    assert_problems(
        &with_section(r#""transport": {"mode": "udp"}"#),
        &["transport.mode: unknown mode 'udp' (supported: stdio, unix, tcp)"],
    );
    assert_problems(
        &with_section(r#""transport": {"framing": "length"}"#),
        &["transport.framing: 'length' is not supported by codex-stdio-bus (only 'ndjson' framing is supported)"],
    );
    assert_problems(
        &with_section(r#""transport": {"protocol": "binary"}"#),
        &["transport.protocol: 'binary' is not supported by codex-stdio-bus (only 'json' protocol is supported)"],
    );
}

#[test]
fn tcp_address_must_be_host_port() {
    assert_problems(
        &with_section(r#""transport": {"mode": "tcp", "address": "localhost"}"#),
        &[r#"transport.address: must be HOST:PORT (port 0 to 65535) in tcp mode, got "localhost""#],
    );
    assert_problems(
        &with_section(r#""transport": {"mode": "tcp", "address": "127.0.0.1:99999"}"#),
        &[
            r#"transport.address: must be HOST:PORT (port 0 to 65535) in tcp mode, got "127.0.0.1:99999""#,
        ],
    );
}

#[test]
fn invalid_json_reports_line_and_column() {
    assert_problems(
        "{\n  \"pools\": [\n    {\"id\": \"a\" \"command\": \"cat\"}\n  ]\n}",
        &["invalid JSON at line 3 column 16: expected `,` or `}`"],
    );
    assert_problems(
        "",
        &["invalid JSON at line 1 column 0: EOF while parsing a value"],
    );
    assert_problems("[]", &["top level: must be an object, got an array"]);
}

#[test]
fn stdio_bus_leniencies_are_errors() {
    assert_problems(
        &format!("{{\"pools\": [{POOL},]}}"),
        &["invalid JSON at line 1 column 58: trailing comma \
           (stdio Bus tolerated this; codex-stdio-bus requires strict JSON)"],
    );
    assert_problems(
        &format!("{{\"pools\": [{POOL}]}} trailing"),
        &["invalid JSON at line 1 column 60: trailing characters \
           (stdio Bus tolerated this; codex-stdio-bus requires strict JSON)"],
    );
    assert_problems(
        "{\"pools\": [{\"id\": \"a\", \"command\": \"cat\", \"instances\": 1, \"instances\": 3}]}",
        &["pools[0]: duplicate key 'instances' at line 1 column 68 \
           (stdio Bus kept the last value; codex-stdio-bus rejects duplicates)"],
    );
}

#[test]
fn several_problems_are_reported_at_once() {
    let text = r#"{
        "pools": [
            {"id": "a", "command": "", "instances": 0},
            {"id": "a", "command": "cat", "instances": 1, "agrs": []}
        ],
        "limits": {"max_restarts": -1, "drain_timout_sec": 1},
        "transport": {"mode": "mqueue"},
        "routing": {"default_pool": "zzz"},
        "extra": true
    }"#;
    assert_problems(
        text,
        &[
            "extra: unknown key (known keys: pools, limits, transport, routing, metrics, auth, tenants, audit, websocket)",
            r#"pools[0].command: must be a non-empty string, got """#,
            "pools[0].instances: must be an integer ≥ 1, got 0",
            "pools[1].agrs: unknown key (did you mean 'args'?)",
            "pools[1].id: duplicate pool id 'a' (also pools[0])",
            "limits.max_restarts: must be a non-negative integer, got -1",
            "limits.drain_timout_sec: unknown key (did you mean 'drain_timeout_sec'?)",
            "transport.mode: 'mqueue' is not supported by codex-stdio-bus (supported: stdio, unix, tcp)",
            "routing.default_pool: no pool named 'zzz' (pools: a)",
        ],
    );
}

#[test]
fn metrics_listen_must_be_host_port() {
    assert_problems(
        &with_section(r#""metrics": {"listen": "9464"}"#),
        &["metrics.listen: must be HOST:PORT (port 0 to 65535), got \"9464\""],
    );
    assert_problems(
        &with_section(r#""metrics": {"listn": "127.0.0.1:9464"}"#),
        &["metrics.listn: unknown key (did you mean 'listen'?)"],
    );
    let config = Config::from_json_str(
        &with_section(r#""metrics": {"listen": "127.0.0.1:9464"}"#),
        "t.json",
    )
    .unwrap();
    assert_eq!(config.metrics.listen.as_deref(), Some("127.0.0.1:9464"));
}

#[test]
fn supervision_keys_are_checked() {
    assert_problems(
        &with_pools(
            r#"[{"id": "a", "command": "cat", "instances": 1, "restart_policy": "sometimes",
                 "backoff_initial_ms": 0, "backoff_jitter_pct": 101, "escalate": "yes",
                 "queue_timeout_sec": 0, "ready_probe": {"params": 1, "metod": "x"}, "restart_polcy": "never"}]"#,
        ),
        &[
            r#"pools[0].restart_policy: must be one of always, on-failure, never; got "sometimes""#,
            "pools[0].backoff_initial_ms: must be an integer ≥ 1, got 0",
            "pools[0].backoff_jitter_pct: must be at most 100, got 101",
            r#"pools[0].escalate: must be true or false, got "yes""#,
            "pools[0].queue_timeout_sec: must be an integer ≥ 1, got 0",
            "pools[0].ready_probe.params: must be an object or an array, got 1",
            "pools[0].ready_probe.metod: unknown key (did you mean 'method'?)",
            "pools[0].ready_probe.method: missing (required: a non-empty string)",
            "pools[0].restart_polcy: unknown key (did you mean 'restart_policy'?)",
        ],
    );
    assert_problems(
        &with_pools(
            r#"[{"id": "a", "command": "cat", "instances": 1, "backoff_initial_ms": 500, "backoff_max_ms": 100}]"#,
        ),
        &["pools[0].backoff_max_ms: must be at least backoff_initial_ms (500), got 100"],
    );
    // A roll must end: 0 would stop workers mid-request, more than a day is a typo.
    assert_problems(
        &with_pools(
            r#"[{"id": "a", "command": "cat", "instances": 1, "roll_timeout_sec": 0},
                {"id": "b", "command": "cat", "instances": 1, "roll_timeout_sec": 86401},
                {"id": "c", "command": "cat", "instances": 1, "rol_timeout_sec": 5}]"#,
        ),
        &[
            "pools[0].roll_timeout_sec: must be an integer ≥ 1, got 0",
            "pools[1].roll_timeout_sec: must be at most 86400, got 86401",
            "pools[2].rol_timeout_sec: unknown key (did you mean 'roll_timeout_sec'?)",
        ],
    );
}

#[test]
fn the_output_cap_is_at_least_the_soft_limit_and_follows_it_when_absent() {
    let pools = r#""pools": [{"id": "a", "command": "cat", "instances": 1}]"#;
    assert_problems(
        &format!(
            r#"{{{pools}, "limits": {{"max_output_queue": 2048, "max_output_bytes": 1024}}}}"#
        ),
        &["limits.max_output_bytes: must be at least max_output_queue (2048), got 1024"],
    );
    let big = 1usize << 30;
    let config = Config::from_json_str(
        &format!(r#"{{{pools}, "limits": {{"max_output_queue": {big}}}}}"#),
        "test.json",
    )
    .unwrap();
    assert_eq!(
        config.limits.max_output_bytes, big,
        "raised to the soft limit"
    );
}

#[test]
fn durations_are_bounded_by_a_day() {
    for key in [
        "restart_window_sec",
        "drain_timeout_sec",
        "drain_grace_sec",
        "backpressure_timeout_sec",
    ] {
        let text = format!(
            r#"{{"pools":[{{"id":"a","command":"w","instances":1}}],"limits":{{"{key}":9223372036854775808}}}}"#
        );
        let err = codex_bus_config::Config::from_json_str(&text, "bus.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("limits.{key}")), "{err}");
        let ok = format!(
            r#"{{"pools":[{{"id":"a","command":"w","instances":1}}],"limits":{{"{key}":86400}}}}"#
        );
        assert!(
            codex_bus_config::Config::from_json_str(&ok, "bus.json").is_ok(),
            "{key}"
        );
    }
}

#[test]
fn routing_id_references_are_checked_entry_by_entry() {
    assert_problems(
        &with_section(r#""routing": {"id_references": {"method": "m", "path": "id"}}"#),
        &[
            r#"routing.id_references: must be an array of {"method", "path"} objects, got an object"#,
        ],
    );
    assert_problems(
        &with_section(
            r#""routing": {"id_references": [
                {"method": "ok", "path": "params.id"},
                {"method": "", "path": "params..id", "paht": 1},
                {"method": "a\"b"},
                3,
                {"method": "ok", "path": "params.requestId"}]}"#,
        ),
        &[
            "routing.id_references[1].method: must be a non-empty string, got \"\"",
            r#"routing.id_references[1].path: must be a dotted path without empty segments, like "sessionId" or "params.sessionId", got "params..id""#,
            "routing.id_references[1].paht: unknown key (did you mean 'path'?)",
            r#"routing.id_references[2].method: must not contain quotes, backslashes or control characters, got "a\"b""#,
            "routing.id_references[2].path: missing (required: a non-empty string)",
            "routing.id_references[3]: must be an object, got 3",
            "routing.id_references[4].method: 'ok' is listed twice (first at index 0)",
        ],
    );
}

#[test]
fn auth_keys_values_and_tenant_names_are_checked() {
    let digest = "a".repeat(64);
    assert_problems(
        &with_section(&format!(
            r#""auth": {{
                "tokens": [
                    {{"tenant": "a", "sha256": "{digest}"}},
                    {{"tenant": "b c", "sha256": "xyz", "subjct": "s"}},
                    {{"sha256": "{}"}},
                    {{"tenant": "d", "sha256": "{digest}"}}
                ],
                "jwt": {{"issuer": "", "tenant_claim": "org"}},
                "unix_tenants": {{"1000": "ops", "+5": "x", "root": "y"}},
                "stdio_tenant": "",
                "insecure_no_auth": 1,
                "handshake_timeout_sec": 0,
                "max_unauthenticated_lines": 101,
                "tokns": []
            }},
            "metrics": {{"bearer_sha256": "secret-token"}}"#,
            "B".repeat(64)
        )),
        &[
            "metrics.bearer_sha256: must be a 64-character hex SHA-256 digest (printf %s \"$TOKEN\" | sha256sum), got 12 characters",
            "auth.tokens[1].tenant: a tenant name may hold only A-Z, a-z, 0-9, '.', '_' and '-', got \"b c\"",
            "auth.tokens[1].sha256: must be a 64-character hex SHA-256 digest (printf %s \"$TOKEN\" | sha256sum), got 3 characters",
            "auth.tokens[1].subjct: unknown key (did you mean 'subject'?)",
            "auth.tokens[2].tenant: missing; every token needs it",
            "auth.tokens[3].sha256: the same token as entry [0]",
            "auth.jwt.issuer: must be a non-empty string, got \"\"",
            "auth.jwt.secret_file: missing; a JWT is verified with the secret in this file",
            "auth.unix_tenants[\"+5\"]: the key must be a numeric uid (0 to 4294967295)",
            "auth.unix_tenants.root: the key must be a numeric uid (0 to 4294967295)",
            "auth.stdio_tenant: a tenant name must not be empty, got \"\"",
            "auth.insecure_no_auth: must be true or false, got 1",
            "auth.handshake_timeout_sec: must be an integer ≥ 1, got 0",
            "auth.max_unauthenticated_lines: must be at most 100, got 101",
            "auth.tokns: unknown key (did you mean 'tokens'?)",
        ],
    );
}

#[test]
fn auth_defaults_fill_in_and_digests_are_lower_cased() {
    let text = with_section(&format!(
        r#""auth": {{"tokens": [{{"tenant": "acme", "sha256": "{}"}}]}}"#,
        "AB".repeat(32)
    ));
    let config = Config::from_json_str(&text, "t.json").unwrap();
    let auth = config.auth.unwrap();
    assert_eq!(
        auth.tokens[0].secret,
        codex_bus_config::TokenSecret::Sha256("ab".repeat(32))
    );
    assert_eq!(auth.stdio_tenant, "local");
    assert_eq!(
        (auth.handshake_timeout_sec, auth.max_unauthenticated_lines),
        (10, 3)
    );
    assert!(!auth.insecure_no_auth);
    assert!(
        Config::from_json_str(&with_section(r#""metrics": {}"#), "t")
            .unwrap()
            .auth
            .is_none()
    );
}

#[test]
fn a_tokens_file_is_checked_like_the_tokens_key() {
    let digest = "0".repeat(64);
    let good = format!(r#"[{{"tenant": "a", "sha256": "{digest}", "subject": "ci"}}]"#);
    let tokens = Config::tokens_from_json_str(&good, "tokens.json").unwrap();
    assert_eq!(tokens[0].subject.as_deref(), Some("ci"));
    let bad = Config::tokens_from_json_str(r#"{"tenant": "a"}"#, "tokens.json").unwrap_err();
    assert_eq!(
        bad.to_string(),
        "tokens.json: top level: must be an array of token objects, got an object"
    );
}

#[test]
fn the_digest_of_an_empty_token_is_refused() {
    let error = Config::from_json_str(
        r#"{"pools": [{"id": "a", "command": "cat", "instances": 1}],
            "auth": {"tokens": [{"tenant": "t", "sha256": "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"}]}}"#,
        "t.json",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("auth.tokens[0].sha256") && error.contains("empty token"),
        "{error}"
    );
}

#[test]
fn tls_needs_both_files_as_non_empty_paths() {
    assert_problems(
        &with_section(r#""transport": {"tls": {"cert_file": "", "key_fil": "k.pem"}}"#),
        &[
            "transport.tls.cert_file: must be a non-empty string, got \"\"",
            "transport.tls.key_fil: unknown key (did you mean 'key_file'?)",
            "transport.tls.key_file: missing; TLS needs the PEM private key",
        ],
    );
    assert_problems(
        &with_section(r#""transport": {"tls": {"key_file": "k\u0000.pem"}}"#),
        &[
            "transport.tls.key_file: must not contain a NUL character",
            "transport.tls.cert_file: missing; TLS needs the PEM certificate chain",
        ],
    );
    assert_problems(
        &with_section(r#""transport": {"tls": "cert.pem"}"#),
        &["transport.tls: must be an object, got \"cert.pem\""],
    );
}

#[test]
fn a_token_has_a_digest_or_a_token_file() {
    let digest = "0".repeat(64);
    let file = Config::tokens_from_json_str(
        r#"[{"tenant": "a", "token_file": "/run/a.token"}]"#,
        "tokens.json",
    )
    .unwrap();
    assert_eq!(
        file[0].secret,
        codex_bus_config::TokenSecret::TokenFile("/run/a.token".into())
    );
    assert_problems(
        &with_section(r#""auth": {"tokens": [{"tenant": "a"}]}"#),
        &["auth.tokens[0].sha256: missing; every token needs its sha256 or a token_file"],
    );
    assert_problems(
        &with_section(&format!(
            r#""auth": {{"tokens": [{{"tenant": "a", "sha256": "{digest}", "token_file": "f"}}]}}"#
        )),
        &["auth.tokens[0].token_file: a token has a sha256 or a token_file, not both"],
    );
}

#[test]
fn websocket_listeners_are_checked_with_their_defaults_filled_in() {
    let config = Config::from_json_str(
        &with_section(
            r#""websocket": [{"listen": "127.0.0.1:4500"},
                {"listen": "[::1]:0", "session_header": "X-Session", "allowed_origins": ["https://a.example"],
                 "max_frame_bytes": 1024, "max_message_bytes": 4096}]"#,
        ),
        "t",
    )
    .unwrap();
    assert_eq!(
        config.websocket[0],
        codex_bus_config::WebSocketConfig::on("127.0.0.1:4500")
    );
    assert_eq!(config.websocket[0].max_frame_bytes, 16 << 20);
    assert_eq!(config.websocket[0].max_message_bytes, 64 << 20);
    let second = &config.websocket[1];
    assert_eq!(
        second.session_header, "x-session",
        "header names are kept in lower case"
    );
    assert_eq!(second.allowed_origins, ["https://a.example"]);
    assert_eq!(
        (second.max_frame_bytes, second.max_message_bytes),
        (1024, 4096)
    );
    assert_problems(
        &with_section(
            r#""websocket": [{"listen": "nowhere", "session_query": "a b", "session_header": "a:b",
                "max_frame_bytes": 10, "max_message_bytes": 5, "tls_please": true}, {}]"#,
        ),
        &[
            "websocket[0].listen: must be HOST:PORT (port 0 to 65535), got \"nowhere\"",
            "websocket[0].session_query: must be letters, digits, '-', '.', '_' or '~', got \"a b\"",
            "websocket[0].session_header: must be an HTTP header name (letters, digits, '-', …), got \"a:b\"",
            "websocket[0].tls_please: unknown key (known keys: listen, session_header, session_query, allowed_origins, max_frame_bytes, max_message_bytes, tls)",
            "websocket[0].max_frame_bytes: must be at most max_message_bytes (5), got 10",
            "websocket[1].listen: missing; every listener needs it",
        ],
    );
    assert_problems(
        &with_section(
            r#""routing": {"session_id_field": "params.sessionId"}, "websocket": [{"listen": "127.0.0.1:0"}]"#,
        ),
        &["websocket: needs routing.session_id_field to be a top-level member name (the session of a WebSocket connection is added to its messages there), got \"params.sessionId\""],
    );
}

#[test]
fn privilege_fields_are_checked() {
    assert_problems(
        &with_pools(
            r#"[{"id": "a", "command": "cat", "instances": 1, "umask": "0800", "no_new_privs": 1,
                 "user": "no-such-user-here", "group": "no-such-group-here",
                 "rlimits": {"address_space_bytes": 0, "open_file": 5, "core_bytes": -1}}]"#,
        ),
        &[
            r#"pools[0].umask: must be an octal mode string from "000" to "777" (e.g. "077"), got "0800""#,
            "pools[0].no_new_privs: must be true or false, got 1",
            "pools[0].user: no such user 'no-such-user-here' in the user database",
            "pools[0].group: no such group 'no-such-group-here' in the group database",
            "pools[0].rlimits.address_space_bytes: must be an integer ≥ 1, got 0",
            "pools[0].rlimits.open_file: unknown key (did you mean 'open_files'?)",
            "pools[0].rlimits.core_bytes: must be a non-negative integer, got -1",
        ],
    );
    assert_problems(
        &with_pools(
            r#"[{"id": "a", "command": "cat", "instances": 1, "rlimits": [], "umask": 77}]"#,
        ),
        &[
            "pools[0].rlimits: must be an object, got an array",
            r#"pools[0].umask: must be an octal mode string from "000" to "777" (e.g. "077"), got 77"#,
        ],
    );
}

#[test]
fn privileges_are_resolved_at_load() {
    let text = r#"{"pools": [{"id": "a", "command": "cat", "instances": 1, "user": "root",
        "group": "0", "umask": "027", "no_new_privs": true,
        "rlimits": {"address_space_bytes": 1073741824, "processes": 64, "core_bytes": 0}}]}"#;
    let root = nix::unistd::geteuid().is_root();
    match Config::from_json_str(text, "t.json") {
        Ok(config) => {
            assert!(root, "a daemon that is not root must refuse user root");
            let p = &config.pools[0].privileges;
            let user = p.user.as_ref().unwrap();
            assert_eq!((user.uid, user.gid), (0, Some(0)));
            assert_eq!(p.group.as_ref().unwrap().gid, 0);
            assert_eq!(p.umask, Some(0o027));
            assert!(p.no_new_privs);
            assert_eq!(p.rlimits.address_space_bytes, Some(1 << 30));
            assert_eq!(p.rlimits.processes, Some(64));
            assert_eq!(p.rlimits.core_bytes, Some(0));
            assert_eq!(p.rlimits.open_files, None);
            let effective = serde_json::to_value(&config).unwrap();
            assert_eq!(effective["pools"][0]["user"], "root");
            assert_eq!(effective["pools"][0]["umask"], "027");
            assert_eq!(effective["pools"][0]["rlimits"]["processes"], 64);
        }
        Err(e) => {
            assert!(!root, "{e:?}");
            assert!(e.problems[0].starts_with("pools[0].user: asks for user 'root' (uid 0)"));
        }
    }
}

#[test]
fn cgroup_limits_are_checked() {
    assert_problems(
        &with_pools(
            r#"[{"id": "a", "command": "cat", "instances": 1,
                 "cgroup": {"memory_max_bytes": 1048575, "cpu_max_percent": 0, "memory_max": 5}},
                {"id": "b", "command": "cat", "instances": 1,
                 "cgroup": {"memory_max_bytes": "1G", "cpu_max_percent": 10001}},
                {"id": "c", "command": "cat", "instances": 1, "cgroup": 64}]"#,
        ),
        &[
            "pools[0].cgroup.memory_max_bytes: must be an integer ≥ 1048576, got 1048575",
            "pools[0].cgroup.cpu_max_percent: must be an integer ≥ 1, got 0",
            "pools[0].cgroup.memory_max: unknown key (did you mean 'memory_max_bytes'?)",
            r#"pools[1].cgroup.memory_max_bytes: must be an integer ≥ 1048576, got "1G""#,
            "pools[1].cgroup.cpu_max_percent: must be at most 10000, got 10001",
            "pools[2].cgroup: must be an object, got 64",
        ],
    );
}

#[test]
fn cgroup_limits_are_parsed_and_shown_in_the_effective_config() {
    let text = r#"{"pools": [{"id": "a", "command": "cat", "instances": 1,
        "cgroup": {"memory_max_bytes": 268435456, "cpu_max_percent": 250}},
        {"id": "b", "command": "cat", "instances": 1, "cgroup": {"cpu_max_percent": 1}},
        {"id": "c", "command": "cat", "instances": 1}]}"#;
    let config = Config::from_json_str(text, "t.json").unwrap();
    let limits = |i: usize| config.pools[i].privileges.cgroup;
    assert_eq!(limits(0).memory_max_bytes, Some(256 << 20));
    assert_eq!(limits(0).cpu_max_percent, Some(250));
    assert_eq!(limits(1).memory_max_bytes, None);
    assert_eq!(limits(1).cpu_max_percent, Some(1));
    assert!(limits(2).is_empty());
    let effective = serde_json::to_value(&config).unwrap();
    assert_eq!(
        effective["pools"][0]["cgroup"],
        serde_json::json!({"memory_max_bytes": 268435456, "cpu_max_percent": 250})
    );
    assert_eq!(
        effective["pools"][1]["cgroup"],
        serde_json::json!({"cpu_max_percent": 1})
    );
    assert!(effective["pools"][2].get("cgroup").is_none());
    assert_eq!(
        Config::from_json_str(&config.to_pretty_json(), "t.json").unwrap(),
        config
    );
}
