//! A worker that floods its stdout with lines the bus cannot route gets a handful of warnings, not
//! one per line: the slot's warnings are rate-limited (one per second) and the next one admitted
//! says how many were held back, while the metric counts every line.

use std::time::Duration;

use codex_bus_tests::{metric, Bus, BusConfig, Mode};
use serde_json::json;

/// Lines the worker writes per spew.
const SPEW: u64 = 10_000;

#[test]
fn ten_thousand_replies_to_unknown_ids_make_a_handful_of_warnings_with_the_suppressed_count() {
    let mut bus = Bus::start_with(
        &BusConfig::mock(1),
        Mode::Tcp,
        &["--metrics", "127.0.0.1:0"],
    );
    let metrics = bus.metrics_addr();
    let mut conn = bus.connect();
    conn.request(json!(1), "mock/spew", json!({"count": SPEW}), Some("s"));
    let reply = conn.recv();
    assert_eq!(reply["id"], json!(1));
    assert!(reply.get("result").is_some(), "{reply}");
    // One more bad line after the period: its warning reports the ones held back before it.
    std::thread::sleep(Duration::from_millis(1100));
    conn.request(json!(2), "mock/spew", json!({"count": 1}), Some("s"));
    assert_eq!(conn.recv()["id"], json!(2));

    let reported = bus.wait_log_count("worker line skipped", 2);
    let log = bus.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("worker line skipped"))
        .collect();
    assert!(
        (2..=5).contains(&warnings.len()),
        "a handful of warnings, not {}: {:?}",
        warnings.len(),
        &warnings[..warnings.len().min(10)]
    );
    let held_back: u64 = warnings
        .iter()
        .filter_map(|l| {
            l.split("suppressed=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(
        held_back + warnings.len() as u64,
        SPEW + 1,
        "every line is either warned about or counted as held back: {warnings:?} ({reported})"
    );
    let dropped = metric(
        &metrics,
        "codex_bus_dropped_messages_total",
        &[("reason", "late_reply")],
    );
    assert_eq!(dropped, (SPEW + 1) as f64, "the metric counts every line");
}
