//! Every stdio Bus config in the shared fixtures loads unchanged, with the values it states.

use std::path::{Path, PathBuf};

use codex_bus_config::{Config, Limits, TransportMode};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/stdio-bus-configs")
}

fn load(name: &str) -> Config {
    let path = fixtures_dir().join(name);
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_fixture_loads() {
    let mut loaded = Vec::new();
    for entry in std::fs::read_dir(fixtures_dir()).expect("fixtures directory exists") {
        let path = entry.expect("readable directory entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            loaded.push(path);
        }
    }
    assert!(
        loaded.len() >= 6,
        "expected the six stdio Bus fixtures, found {loaded:?}"
    );
}

#[test]
fn a_loaded_config_knows_its_file_and_a_parsed_one_none() {
    let path = fixtures_dir().join("rfc-14918-example.json");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.source.as_deref(), Some(path.as_path()));
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed = Config::from_json_str(&text, "text").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed.source, None);
    assert_eq!(
        Config {
            source: None,
            ..config
        },
        parsed,
        "the same config otherwise"
    );
}

#[test]
fn rfc_14918_example_keeps_env_and_routing() {
    let config = load("rfc-14918-example.json");
    let pool = &config.pools[0];
    assert_eq!(pool.id, "codex");
    assert_eq!(pool.command, "/usr/local/bin/codex-app-server");
    assert_eq!(pool.args, ["--worker"]);
    assert_eq!(pool.instances, 10);
    assert_eq!(pool.env.get("RUST_LOG").map(String::as_str), Some("info"));
    assert_eq!(config.routing.session_id_field, "sessionId");
    assert_eq!(config.routing.default_pool.as_deref(), Some("codex"));
    assert_eq!(config.limits.max_restarts, 5);
    assert_eq!(
        config.limits.max_input_buffer,
        Limits::default().max_input_buffer
    );
}

#[test]
fn two_pools_has_both_pools_in_order() {
    let config = load("two-pools.json");
    let ids: Vec<(&str, u32)> = config
        .pools
        .iter()
        .map(|p| (p.id.as_str(), p.instances))
        .collect();
    assert_eq!(ids, [("alpha", 1), ("beta", 2)]);
    assert_eq!(config.limits, Limits::default());
}

#[test]
fn full_limits_has_every_stdio_bus_limit_and_its_transport() {
    let config = load("full-limits.json");
    let limits = config.limits;
    assert_eq!(
        (
            limits.max_input_buffer,
            limits.max_output_queue,
            limits.max_restarts,
            limits.restart_window_sec,
            limits.drain_timeout_sec,
            limits.backpressure_timeout_sec,
        ),
        (1_048_576, 4_194_304, 5, 60, 30, 60)
    );
    assert_eq!(config.transport.framing, "ndjson");
    assert_eq!(config.transport.protocol, "json");
    assert_eq!(config.transport.mode, TransportMode::Stdio);
}

#[test]
fn examples_from_stdio_bus_repositories_load() {
    let echo = load("echo-worker-config.json");
    assert_eq!(echo.pools[0].args, ["node", "./examples/echo-worker.js"]);
    assert_eq!(echo.pools[0].instances, 2);
    assert_eq!(echo.limits.backpressure_timeout_sec, 60);

    let config_echo = load("config-echo.json");
    assert_eq!(config_echo.pools[0].command, "/usr/bin/env");
    assert_eq!(config_echo.limits.drain_timeout_sec, 30);

    let cpp = load("cpp-sdk-example.json");
    assert_eq!(cpp.pools[0].id, "echo");
    assert!(cpp.pools[0].args.is_empty());
    assert_eq!(cpp.limits.max_output_queue, 4_194_304);
}
