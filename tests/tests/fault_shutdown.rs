//! Fault-injection suite, items 4 and 5: the daemon's end under load and under SIGKILL.
//!
//! - Item 4, SIGTERM with slow requests in flight from several clients, over workers started with
//!   `--stubborn` (they ignore SIGTERM and end of input): every client gets exactly its own
//!   replies, a request sent once the drain began is refused with `shutting_down`, the daemon
//!   SIGKILLs the stubborn workers at the drain deadline and still exits 0, and no worker is left.
//!   A second test keeps requests in flight past the deadline: they are refused, not lost.
//! - Item 5, SIGKILL of the daemon itself (no drain, no cleanup code runs): every stubborn worker
//!   is gone within 2 s anyway (`PR_SET_PDEATHSIG`), over TCP and in stdio mode.
//!
//! `drain.rs` covers the single-client drain with ordinary workers and the second signal.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use codex_bus_tests::{alive, reason, status, worker_pool, Bus, BusConfig, Conn, Mode, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// How long workers may outlive the daemon's exit (or its death).
const WORKERS_GONE: Duration = Duration::from_secs(2);

/// A pool of `n` mock workers that ignore SIGTERM and end of input from their start.
fn stubborn_pool(n: u32) -> BusConfig {
    worker_pool("codex-mock", n, &["--stubborn"])
}

/// Polls `/status` until `check` holds; panics after [`WAIT`].
fn wait_status(addr: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let doc = status(addr);
        if check(&doc) {
            return doc;
        }
        assert!(start.elapsed() < WAIT, "{what} never held: {doc}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to [`WORKERS_GONE`] for every pid to be gone; returns how long it took.
fn wait_gone(pids: &[u32], what: &str) -> Duration {
    let start = Instant::now();
    while pids.iter().any(|p| alive(*p)) {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        assert!(
            start.elapsed() < WORKERS_GONE,
            "{what}: workers {left:?} still alive {WORKERS_GONE:?} later"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// The worker processes of a test: SIGKILLed on drop if they outlived it, so a failing test does
/// not leave stubborn workers behind (once the daemon is dead, `Bus`'s drop cannot find them).
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        let worker = codex_bus_tests::bin("codex-mock");
        for pid in &self.0 {
            // Only a live codex-mock: the pid may have been reused by now.
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            if alive(*pid) && exe.as_deref() == Some(worker.as_path()) {
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// Asserts that every worker was started with `--stubborn` and says so in the daemon's log.
fn assert_stubborn(bus: &Bus, pids: &[u32]) {
    // The log line comes from the worker itself, so each has exec'd by then: a pid read just
    // after the fork may still show the daemon's command line (seen about once in four runs on
    // a loaded machine).
    bus.wait_log_count("stubborn: ignoring SIGTERM and end of input", pids.len());
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            cmdline.split(|b| *b == 0).any(|arg| arg == b"--stubborn"),
            "worker {pid} runs without --stubborn: {}",
            String::from_utf8_lossy(&cmdline)
        );
    }
}

/// Log lines containing `needle`.
fn log_count(bus: &Bus, needle: &str) -> usize {
    bus.log().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn sigterm_with_slow_requests_from_several_clients_gives_each_its_own_replies_and_kills_stubborn_workers(
) {
    const CLIENTS: usize = 3;
    const PER_CLIENT: usize = 3;
    let config = stubborn_pool(2).limit("drain_timeout_sec", 2);
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();
    let workers = bus.wait_workers(2);
    let _reaper = Reaper(workers.clone());
    assert_stubborn(&bus, &workers);
    // Ready means up for the grace period: well past the instant a SIGTERM could still kill one.
    bus.wait_log_count("worker ready", 2);

    // The same ids on every client (ids are per client), each request on a session of its own.
    let session = |client: usize, id: usize| format!("c{client}-s{id}");
    let mut conns: Vec<Conn> = (0..CLIENTS).map(|_| bus.connect()).collect();
    for (c, conn) in conns.iter_mut().enumerate() {
        for id in 0..PER_CLIENT {
            conn.request(
                json!(id),
                "mock/delay",
                json!({"ms": 800}),
                Some(&session(c, id)),
            );
        }
    }
    let total = CLIENTS * PER_CLIENT;
    wait_status(&addr, "every slow request in flight", |s| {
        s["totals"]["in_flight"] == json!(total)
    });
    let sigterm = Instant::now();
    bus.signal(Signal::SIGTERM);
    // `draining` is the flag new requests are refused by: from here on they must be.
    wait_status(&addr, "draining", |s| s["draining"] == json!(true));
    for (c, conn) in conns.iter_mut().enumerate() {
        conn.request(json!("late"), "ping", Value::Null, Some(&session(c, 0)));
    }

    let mut slots_used = BTreeMap::new();
    for (c, conn) in conns.iter_mut().enumerate() {
        let mut results = BTreeSet::new();
        let mut refused = 0;
        for _ in 0..PER_CLIENT + 1 {
            let reply = conn.recv();
            if reply["id"] == json!("late") {
                assert_eq!(reason(&reply), Some("shutting_down"), "client {c}: {reply}");
                assert_eq!(reply["error"]["data"]["retryable"], json!(true));
                refused += 1;
                continue;
            }
            assert!(reply.get("result").is_some(), "client {c}: {reply}");
            let id = reply["id"].as_u64().expect("an id this client sent") as usize;
            assert!(id < PER_CLIENT, "client {c}: unknown id: {reply}");
            assert_eq!(
                reply["sessionId"],
                json!(session(c, id)),
                "client {c} got another client's reply: {reply}"
            );
            assert_eq!(reply["result"]["method"], json!("mock/delay"));
            assert!(results.insert(id), "client {c}: reply {id} twice");
            *slots_used
                .entry(reply["result"]["slot"].as_u64().unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(refused, 1, "client {c}: one refusal");
        assert_eq!(results.len(), PER_CLIENT, "client {c}: {results:?}");
        // Then nothing else: the daemon closes the connection once its workers are stopped.
        let rest = conn.read_to_end();
        assert!(rest.is_empty(), "client {c}: unexpected lines: {rest}");
    }
    let status = bus.wait_exit();
    let took = sigterm.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", bus.log());
    let gone = wait_gone(&workers, "after the drain");
    println!(
        "{CLIENTS} clients × {PER_CLIENT} requests of 800 ms, replies per slot {slots_used:?}; \
         SIGTERM → exit 0 in {took:?}; workers gone {gone:?} after the exit"
    );
    assert_eq!(slots_used.len(), 2, "both workers held requests");
    let log = bus.log();
    // Both workers were told to stop and ignored it, so the drain had to SIGKILL them.
    assert_eq!(log_count(&bus, "SIGTERM ignored (stubborn)"), 2, "{log}");
    assert_eq!(
        log_count(
            &bus,
            "worker did not stop in time; killing its process group"
        ),
        2,
        "{log}"
    );
    // SIGKILL comes no sooner than 2 s after the workers' SIGTERM (which came once the 800 ms
    // requests were answered), not at once.
    assert!(took >= Duration::from_secs(2), "exit after {took:?}");
    assert!(took < Duration::from_secs(8), "exit after {took:?}");
}

#[test]
fn requests_still_held_by_stubborn_workers_at_the_drain_deadline_are_refused_not_lost() {
    let config = stubborn_pool(2).limit("drain_timeout_sec", 2);
    let mut bus = Bus::start_with(&config, Mode::Unix, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();
    let workers = bus.wait_workers(2);
    let _reaper = Reaper(workers.clone());
    assert_stubborn(&bus, &workers);
    bus.wait_log_count("worker ready", 2);
    let mut conns: Vec<Conn> = (0..2).map(|_| bus.connect()).collect();
    for (c, conn) in conns.iter_mut().enumerate() {
        for id in 0..4 {
            // Ids 0 and 1 are answered in 300 ms, 2 and 3 not before a minute.
            let ms = if id < 2 { 300 } else { 60_000 };
            conn.request(
                json!(id),
                "mock/delay",
                json!({"ms": ms}),
                Some(&format!("k{c}-{id}")),
            );
        }
    }
    wait_status(&addr, "8 requests in flight", |s| {
        s["totals"]["in_flight"] == json!(8)
    });
    let sigterm = Instant::now();
    bus.signal(Signal::SIGTERM);
    for (c, conn) in conns.iter_mut().enumerate() {
        let mut answered = BTreeSet::new();
        let mut refused = BTreeSet::new();
        for _ in 0..4 {
            let reply = conn.recv();
            let id = reply["id"].as_u64().unwrap_or_else(|| panic!("{reply}"));
            if reply.get("result").is_some() {
                assert_eq!(reply["sessionId"], json!(format!("k{c}-{id}")), "{reply}");
                answered.insert(id);
            } else {
                assert_eq!(reason(&reply), Some("shutting_down"), "{reply}");
                assert_eq!(reply["error"]["data"]["retryable"], json!(true));
                refused.insert(id);
            }
        }
        assert_eq!(answered, BTreeSet::from([0, 1]), "client {c}");
        assert_eq!(refused, BTreeSet::from([2, 3]), "client {c}");
        assert!(conn.read_to_end().is_empty(), "client {c}: nothing more");
    }
    let status = bus.wait_exit();
    let took = sigterm.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", bus.log());
    let gone = wait_gone(&workers, "after the drain");
    println!(
        "drain_timeout_sec 2 with 60 s requests held by stubborn workers: SIGTERM → exit 0 in \
         {took:?}; workers gone {gone:?} after the exit"
    );
    assert!(bus.log().contains("unanswered=4"), "{}", bus.log());
    assert_eq!(
        log_count(
            &bus,
            "worker did not stop in time; killing its process group"
        ),
        2
    );
    // The drain waits its 2 s, the workers get their 2 s of grace after SIGTERM, then SIGKILL.
    assert!(took >= Duration::from_millis(3_900), "exit after {took:?}");
    assert!(took < Duration::from_secs(9), "exit after {took:?}");
}

/// Starts 3 stubborn workers in `mode`, checks that they serve, SIGKILLs the daemon and waits for
/// every worker to be gone.
fn sigkill_of_the_daemon_ends_stubborn_workers(mode: Mode) {
    const WORKERS: usize = 3;
    let mut bus = Bus::start(&stubborn_pool(WORKERS as u32), mode);
    let workers = bus.wait_workers(WORKERS);
    let _reaper = Reaper(workers.clone());
    assert_stubborn(&bus, &workers);
    bus.wait_log_count("worker ready", WORKERS);
    let mut conn = bus.connect();
    // Work in flight on every worker when the daemon dies: sessionless requests go to the least
    // loaded worker, so three of them land on three workers.
    for id in 0..WORKERS {
        conn.request(json!(id), "mock/delay", json!({"ms": 60_000}), None);
    }
    conn.request(json!("ping"), "ping", Value::Null, Some("p"));
    let pong = conn.recv();
    assert_eq!(pong["id"], json!("ping"), "{pong}");
    let daemon = bus.pid();
    bus.signal(Signal::SIGKILL);
    // Measured from the kill: the dead daemon is not reaped yet, which PDEATHSIG does not wait for.
    let gone = wait_gone(&workers, "after the daemon's SIGKILL");
    let status = bus.wait_exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
    println!(
        "{mode:?}: daemon {daemon} SIGKILLed; its {WORKERS} stubborn workers {workers:?} gone \
         {gone:?} after the kill"
    );
}

#[test]
fn sigkill_of_the_daemon_ends_its_stubborn_workers_over_tcp() {
    sigkill_of_the_daemon_ends_stubborn_workers(Mode::Tcp);
}

#[test]
fn sigkill_of_the_daemon_ends_its_stubborn_workers_in_stdio_mode() {
    sigkill_of_the_daemon_ends_stubborn_workers(Mode::Stdio);
}
