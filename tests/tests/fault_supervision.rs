//! Fault-injection suite, item 2 and the restart policy: a crash loop past `max_restarts` fails
//! the slot (immediate `worker_failed` replies) and recovers after the window; with `escalate`
//! the daemon exits 3 instead; `restart_policy` and the readiness probe do what they say.

use std::path::Path;
use std::time::{Duration, Instant};

use codex_bus_tests::{alive, bin, http_get, reason, Bus, BusConfig, Mode};
use serde_json::{json, Value};

/// A pool whose workers exit 1 at once until the file `flag` exists, then run codex-mock.
fn crash_loop_pool(id: &str, instances: u32, flag: &Path) -> Value {
    let script = format!(
        "if [ -e \"$FLAG\" ]; then exec '{}'; fi; exit 1",
        bin("codex-mock").display()
    );
    json!({
        "id": id,
        "command": "/bin/sh",
        "args": ["-c", script],
        "instances": instances,
        "env": {"FLAG": flag.to_str().unwrap()},
        "backoff_initial_ms": 10,
        "backoff_max_ms": 10
    })
}

/// Sends `ping` on `session` and returns the reply with its round-trip time.
fn ping(conn: &mut codex_bus_tests::Conn, id: u64, session: &str) -> (Value, Duration) {
    let sent = Instant::now();
    conn.request(json!(id), "ping", Value::Null, Some(session));
    let reply = conn.recv();
    (reply, sent.elapsed())
}

#[test]
fn a_crash_loop_fails_the_slot_with_immediate_errors_and_recovers_after_the_window() {
    let scratch = tempfile::tempdir().unwrap();
    let flag = scratch.path().join("healthy");
    let config = BusConfig(json!({
        "pools": [crash_loop_pool("codex", 1, &flag)],
        "limits": {"max_restarts": 2, "restart_window_sec": 3}
    }));
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();
    let failed_at = Instant::now();
    bus.wait_log("restart limit exceeded");
    let mut conn = bus.connect();
    let (reply, took) = ping(&mut conn, 1, "s");
    assert_eq!(reason(&reply), Some("worker_failed"), "{reply}");
    assert_eq!(reply["error"]["data"]["retryable"], json!(true));
    println!("worker_failed reply in {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "refused at once, not queued: {took:?}"
    );
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!(code, 503, "{body}");

    // The cause is fixed; the slot is tried again once its window allows, without any restart.
    std::fs::write(&flag, b"").unwrap();
    let mut id = 2;
    let recovered = loop {
        let (reply, _) = ping(&mut conn, id, "s");
        id += 1;
        if reply.get("result").is_some() {
            break failed_at.elapsed();
        }
        assert_eq!(reason(&reply), Some("worker_failed"), "{reply}");
        assert!(failed_at.elapsed() < Duration::from_secs(20), "no recovery");
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("slot served again {recovered:?} after the failure");
    assert!(
        recovered >= Duration::from_secs(2),
        "it waited for the 3 s window: {recovered:?}"
    );
    assert!(bus
        .log()
        .contains("slot failed until the window allows a restart"));
}

#[test]
fn escalate_drains_and_exits_3_when_every_slot_of_the_pool_has_failed() {
    let scratch = tempfile::tempdir().unwrap();
    let mut crashing = crash_loop_pool("crashing", 2, &scratch.path().join("never"));
    crashing["escalate"] = json!(true);
    // Slow enough that a request to the healthy pool is in flight when the escalation comes.
    crashing["backoff_initial_ms"] = json!(300);
    crashing["backoff_max_ms"] = json!(300);
    let healthy = json!({
        "id": "healthy",
        "command": bin("codex-mock").to_str().unwrap(),
        "instances": 1
    });
    let config = BusConfig(json!({
        "pools": [healthy, crashing],
        "limits": {"max_restarts": 2, "restart_window_sec": 60, "drain_timeout_sec": 10}
    }));
    let mut bus = Bus::start(&config, Mode::Tcp);
    // The healthy pool's worker, by the pid in its start line (the crashing pool's come and go).
    let started = bus.wait_log("slot=healthy[0] pid=");
    let healthy_worker: u32 = started
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .expect("a pid in the start line");
    let mut conn = bus.connect();
    conn.send(
        &json!({"jsonrpc": "2.0", "id": "slow", "method": "mock/delay",
                      "params": {"ms": 1500}, "pool": "healthy"}),
    );
    let status = bus.wait_exit();
    assert_eq!(status.code(), Some(3), "log:\n{}", bus.log());
    let reply = conn.recv();
    assert_eq!(reply["id"], json!("slow"));
    assert!(
        reply.get("result").is_some(),
        "delivered during the drain: {reply}"
    );
    let log = bus.log();
    assert!(log.contains("escalating"), "{log}");
    assert!(
        !alive(healthy_worker),
        "the healthy pool's worker was stopped too"
    );
}

#[test]
fn restart_policy_on_failure_and_never_leave_the_slot_empty() {
    let worker = bin("codex-mock");
    let pool = |id: &str, policy: &str| {
        json!({"id": id, "command": worker.to_str().unwrap(), "instances": 1,
               "restart_policy": policy, "backoff_initial_ms": 10})
    };
    let config = BusConfig(json!({"pools": [pool("onf", "on-failure"), pool("never", "never")]}));
    let mut bus = Bus::start(&config, Mode::Tcp);
    let first = bus.wait_workers(2);
    let mut conn = bus.connect();
    let call = |conn: &mut codex_bus_tests::Conn, pool: &str, method: &str, params: Value| {
        conn.send(
            &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params,
                          "pool": pool, "sessionId": format!("in-{pool}")}),
        );
    };
    // on-failure: a non-zero exit is restarted...
    call(&mut conn, "onf", "mock/exit", json!({"code": 1}));
    assert_eq!(reason(&conn.recv()), Some("worker_exited"));
    bus.wait_log("restarting worker after backoff");
    call(&mut conn, "onf", "ping", Value::Null);
    assert!(conn.recv().get("result").is_some());
    // ...a clean exit is not.
    call(&mut conn, "onf", "mock/exit", json!({"code": 0}));
    assert_eq!(reason(&conn.recv()), Some("worker_exited"));
    bus.wait_log("not restarted by the pool's restart policy");
    call(&mut conn, "onf", "ping", Value::Null);
    let reply = conn.recv();
    assert_eq!(reason(&reply), Some("no_worker"), "{reply}");
    // never: not even a crash is restarted.
    call(&mut conn, "never", "mock/segv", Value::Null);
    assert_eq!(reason(&conn.recv()), Some("worker_exited"));
    bus.wait_log_count("not restarted by the pool's restart policy", 2);
    call(&mut conn, "never", "ping", Value::Null);
    assert_eq!(reason(&conn.recv()), Some("no_worker"));
    assert!(first.iter().all(|p| !alive(*p)));
    assert!(bus.worker_pids().is_empty(), "both slots are empty");
    assert!(
        bus.log().contains("signal: 11"),
        "the segv is logged as such"
    );
}

#[test]
fn a_worker_is_ready_when_it_answers_the_probe_and_replaced_when_it_does_not() {
    let worker = bin("codex-mock");
    let pool = |id: &str, method: &str| {
        json!({"id": id, "command": worker.to_str().unwrap(), "instances": 1,
               "ready_probe": {"method": method, "params": {"probe": true}},
               "ready_timeout_sec": 1, "backoff_initial_ms": 10})
    };
    let config = BusConfig(json!({
        "pools": [pool("answers", "mock/echo"), pool("silent", "mock/hang")],
        "routing": {"default_pool": "answers"}
    }));
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();
    let ready = bus.wait_log("worker ready");
    assert!(ready.contains("answers"), "{ready}");
    bus.wait_log("did not answer its readiness probe");
    bus.wait_log_count("worker started", 3);
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!(code, 503, "the silent pool is not ready: {body}");
    assert!(
        body.contains("silent") && !body.contains("\"answers\""),
        "{body}"
    );
    let metrics = http_get(&addr, "/metrics").1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("codex_bus_worker_restarts_total")
                && l.contains("silent")
                && l.contains("reason=\"not_ready\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    // The probe's reply is the bus's own: no client sees it, and clients are served meanwhile.
    let mut conn = bus.connect();
    conn.request(json!(1), "ping", Value::Null, Some("s"));
    assert_eq!(conn.recv()["id"], json!(1));
}
