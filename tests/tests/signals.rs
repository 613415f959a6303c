//! The signal table of docs/operations.md ("Signals") beyond the drain (`drain.rs`): SIGUSR1 logs
//! a status dump and SIGUSR2 is ignored, both leaving the daemon serving with its workers
//! untouched; SIGQUIT stops at once, with no worker left and the Unix socket file removed.

use std::time::{Duration, Instant};

use codex_bus_tests::{alive, still_works, Bus, BusConfig, Mode};
use nix::sys::signal::Signal;
use serde_json::json;

#[test]
fn sigusr1_logs_every_slot_and_sigusr2_is_ignored_and_both_leave_the_daemon_serving() {
    let mut bus = Bus::start(&BusConfig::mock(2), Mode::Unix);
    let workers = bus.wait_workers(2);
    let mut conn = bus.connect();
    still_works(&mut conn, 1);

    bus.signal(Signal::SIGUSR1);
    bus.wait_log_count("status: slot", 2);
    let totals = bus.wait_log("status: totals");
    assert!(totals.contains("workers=2"), "{totals}");
    for pid in &workers {
        assert!(
            bus.log().contains(&format!("pid={pid}")),
            "worker {pid} in the dump:\n{}",
            bus.log()
        );
    }
    still_works(&mut conn, 2);

    bus.signal(Signal::SIGUSR2);
    bus.wait_log("SIGUSR2");
    still_works(&mut conn, 3);
    // A new connection is accepted too: the listener and its socket file are untouched.
    still_works(&mut bus.connect(), 4);
    assert_eq!(bus.worker_pids(), workers, "no worker was touched");
    assert!(
        !bus.log().contains("shutdown requested"),
        "log:\n{}",
        bus.log()
    );
}

#[test]
fn sigquit_stops_at_once_and_removes_the_socket_file() {
    let config = BusConfig::mock(1).limit("drain_timeout_sec", 60);
    let mut bus = Bus::start(&config, Mode::Unix);
    let workers = bus.wait_workers(1);
    let mut conn = bus.connect();
    // A request that would hold a drain for 50 s: SIGQUIT does not wait for it.
    conn.request(json!(1), "mock/delay", json!({"ms": 50_000}), None);
    still_works(&mut conn, 2);
    assert!(bus.socket_path().exists());

    let started = Instant::now();
    bus.signal(Signal::SIGQUIT);
    let status = bus.wait_exit();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped at once"
    );
    assert_eq!(status.code(), Some(1), "log:\n{}", bus.log());
    assert!(
        !bus.socket_path().exists(),
        "socket file removed; log:\n{}",
        bus.log()
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while workers.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(workers.iter().all(|p| !alive(*p)), "workers killed");
    assert!(
        bus.log().contains("workers killed; stopping at once"),
        "log:\n{}",
        bus.log()
    );
}
