//! stdio Bus config files are accepted unchanged; `check` prints the effective config. A config
//! error exits 78 (`EX_CONFIG`) from `check` and `run` alike, so systemd's
//! `RestartPreventExitStatus=78` does not restart a daemon that cannot start.

use std::path::PathBuf;

use codex_bus_tests::{run_bus, Bus, BusConfig, Mode};
use serde_json::{json, Value};

/// The exit status of a config error (`EX_CONFIG` of sysexits.h).
const EX_CONFIG: i32 = 78;

/// What `check` and `run` say of a pool whose program is not here.
const NOT_HERE: &str = "is not an executable file or not on PATH";

/// The shared stdio Bus fixtures (`../shared` beside the repository).
fn fixtures() -> Vec<PathBuf> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/stdio-bus-configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "fixtures found: {files:?}");
    files
}

#[test]
fn every_stdio_bus_fixture_passes_check_where_its_programs_exist() {
    for file in fixtures() {
        let (status, out, err) = run_bus(&["check", "--config", file.to_str().unwrap()]);
        // The schema is accepted either way; a program missing here is refused as `run` would.
        assert!(
            status.success() || (status.code() == Some(EX_CONFIG) && err.contains(NOT_HERE)),
            "{}: {status} {err}",
            file.display()
        );
        let effective: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: {e}\n{out}", file.display()));
        let limits = &effective["limits"];
        for field in [
            "max_input_buffer",
            "max_output_queue",
            "max_restarts",
            "restart_window_sec",
            "drain_timeout_sec",
            "backpressure_timeout_sec",
        ] {
            assert!(
                limits[field].is_u64(),
                "{}: limits.{field} filled in",
                file.display()
            );
        }
        assert!(effective["pools"].as_array().is_some_and(|p| !p.is_empty()));
    }
}

#[test]
fn the_daemon_starts_on_fixtures_whose_commands_exist() {
    for file in fixtures() {
        let text = std::fs::read_to_string(&file).unwrap();
        let config: Value = serde_json::from_str(&text).unwrap();
        let runnable = config["pools"].as_array().unwrap().iter().all(|p| {
            let command = p["command"].as_str().unwrap();
            command.starts_with('/')
                && std::path::Path::new(command).exists()
                && p["args"].as_array().is_none_or(|a| a.is_empty())
        });
        if !runnable {
            eprintln!(
                "{}: its worker program is not here; check only",
                file.display()
            );
            continue;
        }
        let instances: u64 = config["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["instances"].as_u64().unwrap())
            .sum();
        // No balancer watches: the SIGTERM below drains at once, without the grace.
        let config = BusConfig(config).limit("drain_grace_sec", 0);
        let mut bus = Bus::start(&config, Mode::Tcp);
        bus.wait_workers(instances as usize);
        bus.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(
            bus.wait_exit().success(),
            "{}: {}",
            file.display(),
            bus.log()
        );
    }
}

#[test]
fn check_without_config_shows_the_built_in_default() {
    let (status, out, _) = run_bus(&["check"]);
    assert!(status.success());
    let effective: Value = serde_json::from_str(&out).unwrap();
    let pool = &effective["pools"][0];
    assert_eq!(pool["id"], "codex");
    assert!(pool["command"].as_str().unwrap().ends_with("/codex-mock"));
    assert_eq!(pool["args"], serde_json::json!([]));
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(pool["instances"].as_u64(), Some(cpus));
}

#[test]
fn check_names_the_field_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"pools":[{"id":"a","command":"/bin/cat","instances":0},{"id":"a","command":"/bin/cat","instances":1}],"limits":{"drain_timout_sec":3}}"#).unwrap();
    let (status, out, err) = run_bus(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(status.code(), Some(EX_CONFIG), "{err}");
    assert!(out.is_empty());
    for expected in [
        "pools[0].instances",
        "pools[1].id",
        "duplicate",
        "limits.drain_timout_sec",
        "drain_timeout_sec",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let (status, _, err) = run_bus(&["--config", bad.to_str().unwrap()]);
    assert_eq!(
        status.code(),
        Some(EX_CONFIG),
        "the daemon refuses to start on it too: {err}"
    );
    assert!(err.contains("pools[0].instances"), "{err}");
}

#[test]
fn check_and_run_both_refuse_a_pool_whose_program_is_missing_with_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-worker");
    let config = json!({"pools": [{"id": "codex", "command": missing, "instances": 1}]});
    let path = dir.path().join("missing.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let path = path.to_str().unwrap();

    let (checked, out, check_err) = run_bus(&["check", "--config", path]);
    assert_eq!(checked.code(), Some(EX_CONFIG), "{check_err}");
    assert!(
        serde_json::from_str::<Value>(&out).is_ok(),
        "the effective config is still shown: {out}"
    );
    let (ran, _, run_err) = run_bus(&["--config", path, "--tcp", "127.0.0.1:0"]);
    assert_eq!(ran.code(), Some(EX_CONFIG), "{run_err}");
    let message = format!("pools[0].command: '{}'", missing.display());
    for err in [&check_err, &run_err] {
        assert!(err.contains(&message) && err.contains(NOT_HERE), "{err}");
    }
}

#[test]
fn a_missing_cwd_is_refused_and_a_pools_own_path_is_where_its_command_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, config: Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, config.to_string()).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let no_cwd = write(
        "no-cwd.json",
        json!({"pools": [{"id": "a", "command": "/bin/cat", "cwd": "/nonexistent-dir", "instances": 1}]}),
    );
    let (status, _, err) = run_bus(&["check", "--config", &no_cwd]);
    assert_eq!(status.code(), Some(EX_CONFIG), "{err}");
    assert!(err.contains("pools[0].cwd: '/nonexistent-dir'"), "{err}");
    // `codex-mock` by name: not on the daemon's PATH, but on the PATH the pool gives its worker.
    let bin_dir = codex_bus_tests::bin("codex-mock")
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let own_path = write(
        "own-path.json",
        json!({"pools": [{"id": "a", "command": "codex-mock", "instances": 1,
                          "env": {"PATH": format!("/nonexistent:{bin_dir}")}}]}),
    );
    let (status, _, err) = run_bus(&["check", "--config", &own_path]);
    assert!(status.success(), "{err}");
    let not_on_its_path = write(
        "not-on-its-path.json",
        json!({"pools": [{"id": "a", "command": "cat", "instances": 1,
                          "env": {"PATH": "/nonexistent"}}]}),
    );
    let (status, _, err) = run_bus(&["check", "--config", &not_on_its_path]);
    assert_eq!(status.code(), Some(EX_CONFIG), "{err}");
}
