//! Shutdown: SIGTERM drains (replies in flight are delivered, new requests refused, exit 0, no
//! worker left); a second signal stops at once.

use codex_bus_tests::{alive, reason, Bus, BusConfig, Mode};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

#[test]
fn sigterm_delivers_replies_in_flight_refuses_new_work_and_exits_zero() {
    let mut bus = Bus::start(&BusConfig::mock(2), Mode::Tcp);
    let workers = bus.wait_workers(2);
    let mut conn = bus.connect();
    for id in 0..4 {
        conn.request(
            json!(id),
            "mock/delay",
            json!({"ms": 700}),
            Some(&format!("s{id}")),
        );
    }
    conn.request(json!("sync"), "ping", Value::Null, Some("s0"));
    bus.signal(Signal::SIGTERM);
    bus.wait_log("draining");
    conn.request(json!("late"), "ping", Value::Null, Some("s0"));
    let mut delivered = Vec::new();
    let mut refused = None;
    for _ in 0..6 {
        let reply = conn.recv();
        if reply["id"] == json!("late") {
            refused = Some(reply);
        } else {
            assert!(reply.get("result").is_some(), "{reply}");
            delivered.push(reply["id"].clone());
        }
    }
    assert_eq!(
        delivered.len(),
        5,
        "every request in flight answered: {delivered:?}"
    );
    assert_eq!(reason(refused.as_ref().unwrap()), Some("shutting_down"));
    assert!(bus.wait_exit().success(), "log:\n{}", bus.log());
    assert!(workers.iter().all(|p| !alive(*p)), "no worker left");
}

#[test]
fn a_second_signal_stops_at_once() {
    let config = BusConfig::mock(1).limit("drain_timeout_sec", 60);
    let mut bus = Bus::start(&config, Mode::Unix);
    let workers = bus.wait_workers(1);
    let mut conn = bus.connect();
    conn.request(json!(1), "mock/delay", json!({"ms": 50_000}), None);
    conn.request(json!(2), "ping", Value::Null, None);
    assert_eq!(conn.recv()["id"], json!(2));
    bus.signal(Signal::SIGTERM);
    bus.wait_log("draining");
    let started = std::time::Instant::now();
    bus.signal(Signal::SIGINT);
    let status = bus.wait_exit();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(status.code(), Some(1));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while workers.iter().any(|p| alive(*p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        workers.iter().all(|p| !alive(*p)),
        "workers killed with the daemon"
    );
    // The daemon returns through main rather than exiting from the signal task, so its last
    // log lines are flushed.
    assert!(
        bus.log().contains("workers killed; stopping at once"),
        "log:\n{}",
        bus.log()
    );
}

#[test]
fn sighup_reopens_files_and_changes_nothing_else() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let workers = bus.wait_workers(1);
    let mut conn = bus.connect();
    bus.signal(Signal::SIGHUP);
    bus.wait_log("files reopened");
    conn.request(json!(1), "ping", Value::Null, Some("s"));
    assert!(conn.recv().get("result").is_some(), "still serving");
    assert_eq!(bus.worker_pids(), workers, "no worker was touched");
    assert!(!bus.log().contains("draining"));
}

#[test]
fn a_request_queued_during_a_backoff_is_answered_when_the_drain_starts_meanwhile() {
    let config = BusConfig::mock(1)
        .pool_key("backoff_initial_ms", json!(1500))
        .pool_key("backoff_max_ms", json!(1500));
    let mut bus = Bus::start(&config, Mode::Tcp);
    let mut conn = bus.connect();
    conn.request(json!(1), "mock/crash", Value::Null, Some("s"));
    assert_eq!(reason(&conn.recv()), Some("worker_exited"));
    bus.wait_log("restarting worker after backoff");
    // Accepted while the slot waits for its next worker, then the drain begins.
    conn.request(json!(2), "ping", Value::Null, Some("s"));
    std::thread::sleep(std::time::Duration::from_millis(100));
    bus.signal(Signal::SIGTERM);
    let reply = conn.recv();
    assert_eq!(reply["id"], json!(2));
    assert!(
        reply.get("result").is_some(),
        "served by the worker started during the drain: {reply}"
    );
    assert!(bus.wait_exit().success(), "log:\n{}", bus.log());
}
