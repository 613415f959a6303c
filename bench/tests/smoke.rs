//! Every scenario at a tiny size against the real daemon and worker (the debug builds beside this
//! test): only the correctness checks are asserted (one reply per request, on the connection that
//! sent it, no loss), never a timing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a scenario may take before the test fails (a tiny scenario takes well under a second).
const DEADLINE: Duration = Duration::from_secs(60);

/// A workspace binary built beside this test (`cargo test --workspace` builds them).
fn bin(name: &str) -> PathBuf {
    // target/debug/deps/<test-exe> → target/debug/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Runs `bus-bench scenario NAME` at a tiny scale; returns the scenario's JSON report.
fn scenario(name: &str) -> Value {
    scenario_at(name, "0.005")
}

/// Runs `bus-bench scenario NAME --scale SCALE`; returns the scenario's JSON report.
fn scenario_at(name: &str, scale: &str) -> Value {
    bench(&["scenario", name, "--scale", scale])["scenarios"][0].clone()
}

/// Runs bus-bench with `args` (one run per row) against the debug daemon and worker; returns
/// its JSON report.
fn bench(args: &[&str]) -> Value {
    let name = args.join(" ");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bus-bench"))
        .args(args)
        .args(["--runs", "1", "--stall-timeout", "10", "--linger-ms", "20"])
        .arg("--bus-cmd")
        .arg(bin("codex-stdio-bus"))
        .arg("--worker-cmd")
        .arg(bin("codex-mock"))
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bus-bench");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            // bus-bench ends the daemon and its workers itself when it exits.
            let _ = child.kill();
            let _ = child.wait();
            panic!("bus-bench {name} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "bus-bench {name} failed:\n{stderr}");
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

/// Asserts the checks of every row: each request answered exactly once on its own connection.
fn assert_exact(report: &Value, errors_allowed: bool) {
    let rows = report["rows"].as_array().expect("rows");
    assert!(!rows.is_empty());
    for row in rows {
        let label = &row["label"];
        assert!(row["error"].is_null(), "{label}: {}", row["error"]);
        let run = &row["runs"][0];
        let tally = &run["tally"];
        let count = |k: &str| tally[k].as_u64().unwrap();
        assert_eq!(
            count("ok") + count("errors"),
            run["requests"].as_u64().unwrap(),
            "{label}: {tally}"
        );
        for k in ["lost", "duplicates", "misrouted", "stray", "unidentified"] {
            assert_eq!(count(k), 0, "{label}: {k} in {tally}");
        }
        if !errors_allowed {
            assert_eq!(count("errors"), 0, "{label}: {tally}");
        }
        assert_eq!(run["passed"], true, "{label}");
    }
}

/// The labels of a scenario's rows, in order.
fn labels(report: &Value) -> Vec<&str> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap())
        .collect()
}

/// The relay row ran as its own process, with as many workers as the bus row, and its CPU was
/// measured like the daemon's; the bus / relay ratio is among the derived figures.
fn assert_relay_measured(report: &Value) {
    let rows = report["rows"].as_array().unwrap();
    let find = |label: &str| {
        rows.iter()
            .find(|r| r["label"] == label)
            .unwrap_or_else(|| panic!("no {label} row"))
    };
    let (relay, bus) = (find("relay tcp"), find("bus tcp"));
    assert_eq!(relay["spec"]["workers"], bus["spec"]["workers"]);
    let run = &relay["runs"][0];
    assert!(
        run["daemon_cpu_s_per_100k"].as_f64().unwrap() > 0.0,
        "{run}"
    );
    assert!(run["daemon_peak_rss_kb"].as_u64().unwrap() > 0, "{run}");
    let derived = report["derived"].as_array().unwrap();
    assert!(
        derived
            .iter()
            .any(|d| d["name"] == "daemon CPU per round trip, bus tcp / relay tcp"),
        "{derived:?}"
    );
}

/// The bus rows of `single`: the NDJSON transports, then the fronts (blocking client).
const SINGLE_BUS_ROWS: [&str; 7] = [
    "bus tcp",
    "bus unix",
    "bus stdio",
    "bus tcp blocking",
    "bus tcp+tls",
    "bus ws",
    "bus wss",
];

#[test]
fn single() {
    let report = scenario("single");
    assert_exact(&report, false);
    let baselines = ["relay tcp", "direct", "self tcp"];
    assert_eq!(labels(&report), [&SINGLE_BUS_ROWS[..], &baselines].concat());
    assert_relay_measured(&report);
}

#[test]
fn fanout() {
    let report = scenario("fanout");
    assert_exact(&report, false);
    assert_relay_measured(&report);
}

#[test]
fn relay_over_unix_gives_each_connection_its_own_worker() {
    let report = bench(&[
        "run",
        "--target",
        "relay",
        "--transport",
        "unix",
        "-c",
        "3",
        "--workers",
        "3",
        "-w",
        "20",
        "-n",
        "600",
        "-s",
        "per-connection",
    ]);
    let run = &report["scenarios"][0];
    assert_exact(run, false);
    assert_eq!(
        run["rows"][0]["label"],
        "relay unix c=3 w=20 n=600 s=per-connection p=0"
    );
}

#[test]
fn large() {
    assert_exact(&scenario("large"), false);
}

#[test]
fn latency() {
    let report = scenario("latency");
    assert_exact(&report, false);
    assert_relay_measured(&report);
    let derived: Vec<&str> = report["derived"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    for name in [
        "added p50, bus tcp / relay tcp",
        "round trip p50, ws - tcp",
        "round trip p99, tls - tcp",
        "round trip p50, wss - ws",
        "daemon CPU per round trip, ws - tcp",
    ] {
        assert!(derived.contains(&name), "{name} in {derived:?}");
    }
}

#[test]
fn sessions() {
    let report = scenario("sessions");
    assert_exact(&report, false);
    let run = &report["rows"][0]["runs"][0];
    assert!(run["rss_bytes_per_session"].is_number(), "{run}");
}

#[test]
fn connections() {
    let report = scenario("connections");
    assert_exact(&report, false);
    assert!(
        report["rows"][0]["spec"]["load"]["connections"]
            .as_u64()
            .unwrap()
            >= 4
    );
}

#[test]
fn churn() {
    let report = scenario("churn");
    assert_exact(&report, true);
    let run = &report["rows"][0]["runs"][0];
    assert!(
        run["kills"].as_u64().unwrap() >= 1,
        "a worker was killed: {run}"
    );
}

#[test]
fn idle_connections() {
    // 200 connections: enough to see the per-connection figures, small enough for any fd limit.
    let report = scenario_at("idle-connections", "0.02");
    assert_exact(&report, false);
    for row in report["rows"].as_array().unwrap() {
        assert_eq!(row["spec"]["load"]["connections"], 200);
        let run = &row["runs"][0];
        for figure in [
            "daemon_rss_ready_kb",
            "rss_bytes_per_connection",
            "daemon_rss_closed_kb",
            "rss_bytes_kept_per_connection",
        ] {
            assert!(run[figure].is_number(), "{figure}: {run}");
        }
    }
    let derived = report["derived"].as_array().unwrap();
    assert!(
        derived
            .iter()
            .any(|d| d["name"] == "daemon RSS per idle connection (bus unix)"),
        "{derived:?}"
    );
}

#[test]
fn session_table() {
    // 20k sessions over 4 connections.
    let report = scenario_at("session-table", "0.02");
    assert_exact(&report, false);
    let run = &report["rows"][0]["runs"][0];
    assert_eq!(run["requests"], 20_000);
    assert!(run["rss_bytes_per_session"].is_number(), "{run}");
}

#[test]
fn with_auth_every_transport_is_served_under_a_tenant() {
    // Each TCP connection's bus/authenticate must be answered with the bench tenant (bus-bench
    // checks it before the warm-up), which only a bus running the written `auth` section does.
    let report = bench(&[
        "scenario",
        "single",
        "--scale",
        "0.005",
        "--bus-only",
        "--auth",
    ]);
    assert_eq!(report["auth"], true);
    let single = &report["scenarios"][0];
    assert_exact(single, false);
    // The TLS front authenticates like TCP, the WebSocket front with `Authorization: Bearer`.
    assert_eq!(labels(single), SINGLE_BUS_ROWS);
    // Session ids go to the worker with the tenant's prefix and come back without it.
    let sessions = bench(&[
        "run", "--auth", "-c", "2", "-w", "20", "-n", "400", "-s", "unique",
    ]);
    assert_exact(&sessions["scenarios"][0], false);
}

#[test]
fn with_the_dashboard_open_every_bus_row_holds_a_live_stream() {
    // Each bus row's daemon serves its admin endpoint, and bus-bench reads /ui/events through the
    // run: the first `status` event arrives before the warm-up, and the stream is still open
    // when the run ends (else the run fails).
    let report = bench(&[
        "scenario",
        "single",
        "--scale",
        "0.005",
        "--bus-only",
        "--dashboard",
    ]);
    assert_eq!(report["admin"], "dashboard");
    let single = &report["scenarios"][0];
    assert_exact(single, false);
    assert_eq!(labels(single), SINGLE_BUS_ROWS);
    for row in single["rows"].as_array().unwrap() {
        let seen = &row["runs"][0]["dashboard"];
        assert!(seen["run"]["status"].as_u64().unwrap() >= 1, "{seen}");
        assert_eq!(seen["run"]["ended_early"], false, "{seen}");
        assert!(seen["measured_status"].is_u64(), "{seen}");
    }
    // The baseline: the endpoint without a stream.
    let baseline = bench(&["run", "--admin", "-n", "1000"]);
    assert_eq!(baseline["admin"], "endpoint");
    let run = &baseline["scenarios"][0];
    assert_exact(run, false);
    assert!(run["rows"][0]["runs"][0]["dashboard"].is_null());
}
