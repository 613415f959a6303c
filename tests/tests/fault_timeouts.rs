//! Fault-injection suite, item 3: a worker that hangs. With `request_timeout_sec` its requests get
//! `timeout` and a late reply is dropped and counted; without, the drain deadline ends it. A request
//! waiting for a restarting worker gets `timeout` after `queue_timeout_sec`.

use std::time::{Duration, Instant};

use codex_bus_tests::{alive, metric, reason, Bus, BusConfig, Conn, Mode};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// Sends a request and returns its reply with the time it took.
fn call(conn: &mut Conn, id: u64, method: &str, params: Value) -> (Value, Duration) {
    let sent = Instant::now();
    conn.request(json!(id), method, params, Some("s"));
    let reply = conn.recv();
    (reply, sent.elapsed())
}

#[test]
fn requests_to_a_hung_worker_time_out() {
    let config = BusConfig::mock(1).pool_key("request_timeout_sec", json!(1));
    let mut bus = Bus::start(&config, Mode::Tcp);
    let mut conn = bus.connect();
    for (id, method) in [(1, "mock/hang"), (2, "ping")] {
        let (reply, took) = call(&mut conn, id, method, Value::Null);
        println!("{method}: timeout after {took:?}");
        assert_eq!(reply["id"], json!(id));
        assert_eq!(reason(&reply), Some("timeout"), "{reply}");
        assert_eq!(reply["error"]["code"], json!(-32023));
        assert_eq!(
            reply["error"]["data"]["detail"],
            json!("no reply within request_timeout_sec")
        );
        assert!(
            took >= Duration::from_secs(1),
            "not before the timeout: {took:?}"
        );
        assert!(took < Duration::from_secs(5), "soon after it: {took:?}");
    }
}

#[test]
fn a_reply_after_the_timeout_is_dropped_and_counted() {
    let config = BusConfig::mock(1).pool_key("request_timeout_sec", json!(1));
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();
    let mut conn = bus.connect();
    let (reply, _) = call(&mut conn, 1, "mock/delay", json!({"ms": 2000}));
    assert_eq!(reason(&reply), Some("timeout"), "{reply}");
    let late = || {
        metric(
            &addr,
            "codex_bus_dropped_messages_total",
            &[("reason", "late_reply")],
        )
    };
    let start = Instant::now();
    while late() != 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "late reply counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing else reached the client: the next line is the answer to the next request.
    let (reply, _) = call(&mut conn, 2, "ping", Value::Null);
    assert_eq!(reply["id"], json!(2), "{reply}");
    assert!(reply.get("result").is_some());
    let timeouts = metric(
        &addr,
        "codex_bus_error_replies_total",
        &[("reason", "timeout")],
    );
    assert_eq!(timeouts, 1.0);
    assert!(!bus.log().contains("reply to an id the bus never sent"));
}

#[test]
fn without_a_timeout_the_drain_deadline_ends_a_hung_worker() {
    let config = BusConfig::mock(1).limit("drain_timeout_sec", 1);
    let mut bus = Bus::start(&config, Mode::Tcp);
    let workers = bus.wait_workers(1);
    let mut conn = bus.connect();
    conn.request(json!("stuck"), "mock/hang", Value::Null, Some("s"));
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    bus.signal(Signal::SIGTERM);
    let reply = conn.recv();
    assert_eq!(reply["id"], json!("stuck"));
    assert_eq!(reason(&reply), Some("shutting_down"), "{reply}");
    assert!(bus.wait_exit().success(), "log:\n{}", bus.log());
    let took = signalled.elapsed();
    println!("hung worker: daemon exited {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert!(workers.iter().all(|p| !alive(*p)));
}

#[test]
fn a_request_waiting_for_a_restart_times_out_after_queue_timeout_sec() {
    let config = BusConfig::mock(1)
        .pool_key("queue_timeout_sec", json!(1))
        .pool_key("backoff_initial_ms", json!(20_000))
        .pool_key("backoff_max_ms", json!(20_000));
    let mut bus = Bus::start(&config, Mode::Tcp);
    let mut conn = bus.connect();
    let (reply, _) = call(&mut conn, 1, "mock/crash", Value::Null);
    assert_eq!(reason(&reply), Some("worker_exited"), "{reply}");
    let (reply, took) = call(&mut conn, 2, "ping", Value::Null);
    println!("queued request: timeout after {took:?}");
    assert_eq!(reason(&reply), Some("timeout"), "{reply}");
    assert_eq!(
        reply["error"]["data"]["detail"],
        json!("no worker started within queue_timeout_sec")
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
}
