//! Shutdown: SIGTERM drains (replies in flight are delivered, new requests refused, exit 0, no
//! worker left); a second signal stops at once; before the drain, `drain_grace_sec` of full
//! service with `/readyz` at 503, for load balancers.

use std::time::{Duration, Instant};

use codex_bus_tests::{alive, http_get, reason, still_works, Bus, BusConfig, Conn, Mode};
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
    let started = Instant::now();
    bus.signal(Signal::SIGINT);
    let status = bus.wait_exit();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status.code(), Some(1));
    let deadline = Instant::now() + Duration::from_secs(2);
    while workers.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
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
    std::thread::sleep(Duration::from_millis(100));
    bus.signal(Signal::SIGTERM);
    let reply = conn.recv();
    assert_eq!(reply["id"], json!(2));
    assert!(
        reply.get("result").is_some(),
        "served by the worker started during the drain: {reply}"
    );
    assert!(bus.wait_exit().success(), "log:\n{}", bus.log());
}

#[test]
fn during_the_grace_readyz_is_503_and_new_clients_are_served_then_the_listener_closes() {
    let config = BusConfig::mock(1).limit("drain_grace_sec", 2);
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    bus.wait_workers(1);
    let admin = bus.metrics_addr();
    let ready_by = Instant::now() + codex_bus_tests::WAIT;
    while http_get(&admin, "/readyz").0 != 200 {
        assert!(Instant::now() < ready_by, "never ready: {}", bus.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // In flight across the grace, so the daemon is still draining (alive) once it has passed.
    let mut old = bus.connect();
    old.request(json!("held"), "mock/delay", json!({"ms": 3500}), Some("h"));
    still_works(&mut old, 1);

    bus.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    let (code, body) = loop {
        let (code, body) = http_get(&admin, "/readyz");
        if code != 200 || signalled.elapsed() > Duration::from_secs(1) {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let unready_after = signalled.elapsed();
    assert_eq!(code, 503, "{body}");
    assert!(
        unready_after < Duration::from_millis(200),
        "/readyz 503 after {unready_after:?}"
    );
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["draining"], json!(true), "{body}");

    // A client a balancer still sent during the grace is accepted and served.
    let mut late = Conn::tcp(bus.tcp_addr());
    still_works(&mut late, 2);
    still_works(&mut old, 3);
    let served_by = signalled.elapsed();
    assert!(
        served_by < Duration::from_secs(2),
        "served at {served_by:?}"
    );
    assert!(bus.log().contains("still serving for drain_grace_sec"));

    // Then the listener closes: connecting is refused while the held request still drains.
    let refused = loop {
        if std::net::TcpStream::connect(bus.tcp_addr()).is_err() {
            break signalled.elapsed();
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "still accepting"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(alive(bus.pid()), "the daemon still drains");
    assert!(
        refused >= Duration::from_millis(1900) && refused < Duration::from_secs(3),
        "listener closed {refused:?} after SIGTERM (grace 2 s)"
    );
    let held = old.recv();
    assert_eq!(held["id"], json!("held"), "{held}");
    assert!(held.get("result").is_some(), "{held}");
    assert!(bus.wait_exit().success(), "log:\n{}", bus.log());
    codex_bus_tests::say(&format!(
        "drain grace 2 s: /readyz 503 after {unready_after:?}, new client served at \
         {served_by:?}, listener closed at {refused:?}"
    ));
}

#[test]
fn a_second_signal_during_the_grace_stops_at_once() {
    let config = BusConfig::mock(1).limit("drain_grace_sec", 60);
    let mut bus = Bus::start(&config, Mode::Tcp);
    bus.wait_workers(1);
    bus.signal(Signal::SIGTERM);
    bus.wait_log("still serving for drain_grace_sec");
    let started = Instant::now();
    bus.signal(Signal::SIGTERM);
    let status = bus.wait_exit();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "log:\n{}", bus.log());
}
