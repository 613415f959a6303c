//! The metric reference, the Grafana dashboard and the alert rules name only metrics the daemon
//! really exports, and the rules pass promtool.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use codex_bus_tests::{http_get, Bus, BusConfig, Mode};
use serde_json::Value;

fn docs(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Metric family names in a live scrape (histogram series folded into their family).
fn exported() -> BTreeSet<String> {
    let bus = Bus::start_with(
        &BusConfig::mock(1),
        Mode::Tcp,
        &["--metrics", "127.0.0.1:0"],
    );
    let (_, body) = http_get(&bus.metrics_addr(), "/metrics");
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect()
}

/// Metric names a PromQL text refers to.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for start in ["codex_bus_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(start) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            names.insert(family.to_owned());
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn docs_dashboard_and_alerts_match_the_exported_metrics() {
    let exported = exported();
    let table: BTreeSet<String> = docs("metrics.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("codex_bus_") || n.starts_with("process_"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        table, exported,
        "docs/metrics.md lists exactly the exported metrics"
    );

    let dashboard: Value =
        serde_json::from_str(&docs("grafana/codex-stdio-bus.json")).expect("dashboard is JSON");
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push_str(target["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    let used = referenced(&exprs);
    for needed in [
        "codex_bus_messages_total",
        "codex_bus_error_replies_total",
        "codex_bus_request_duration_seconds",
        "codex_bus_workers",
        "codex_bus_worker_restarts_total",
        "codex_bus_sessions",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "dashboard uses metrics that do not exist: {unknown:?}"
    );

    let alerts = docs("prometheus/alerts.yml");
    let unknown: Vec<_> = referenced(&alerts)
        .into_iter()
        .filter(|n| !exported.contains(n))
        .collect();
    assert!(
        unknown.is_empty(),
        "alerts use metrics that do not exist: {unknown:?}"
    );
}

#[test]
#[ignore = "tier promtool: needs promtool (Debian package `prometheus`); .ci/run installs it and runs this tier"]
fn alert_rules_pass_promtool() {
    let version = Command::new("promtool")
        .arg("--version")
        .output()
        .expect("the promtool tier runs only where promtool is installed");
    assert!(version.status.success());
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/prometheus/alerts.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
