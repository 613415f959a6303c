//! Fault-injection suite, item 1: 20,000 requests over 8 sessions and 4 workers while a chaos
//! thread SIGKILLs a random worker every 50 ms. Every request gets exactly one reply (a result or
//! a `worker_exited` error), no reply reaches the wrong client, and the daemon ends healthy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_tests::{alive, reason, Bus, BusConfig, Conn, Mode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 2_500;
/// Requests each client sends before reading their replies.
const BATCH: usize = 50;

/// What one client saw: results, and errors by reason.
#[derive(Default)]
struct Tally {
    results: usize,
    errors: BTreeMap<String, usize>,
}

/// Sends this client's requests in batches (ids 0.. on every client, so the ids collide across
/// clients) and checks every reply: one per id, and a result echoes this client's own tag.
fn client(mut conn: Conn, index: usize) -> Tally {
    let session = format!("chaos-{index}");
    let mut tally = Tally::default();
    for batch in 0..PER_CLIENT / BATCH {
        let ids = batch * BATCH..(batch + 1) * BATCH;
        for id in ids.clone() {
            let params = json!({"client": index, "seq": id});
            conn.request(json!(id), "mock/echo", params, Some(&session));
        }
        let mut seen = [false; BATCH];
        for _ in ids.clone() {
            let reply = conn.recv();
            let id = reply["id"].as_u64().expect("an integer id") as usize;
            assert!(
                ids.contains(&id),
                "client {index}: reply to a stray id {reply}"
            );
            assert!(
                !seen[id - ids.start],
                "client {index}: a second reply to {id}"
            );
            seen[id - ids.start] = true;
            if let Some(result) = reply.get("result") {
                assert_eq!(
                    result["params"],
                    json!({"client": index, "seq": id}),
                    "{reply}"
                );
                tally.results += 1;
            } else {
                let why = reason(&reply).unwrap_or("no reason").to_owned();
                *tally.errors.entry(why).or_default() += 1;
            }
        }
    }
    tally
}

#[test]
fn every_request_gets_exactly_one_reply_while_workers_are_killed_every_50_ms() {
    // Restarts are cheap and unlimited here: the point is routing under churn, not the limit.
    let config = BusConfig::mock(4)
        .limit("max_restarts", 1_000_000)
        .pool_key("backoff_initial_ms", json!(5))
        .pool_key("backoff_max_ms", json!(50));
    let mut bus = Bus::start(&config, Mode::Tcp);
    bus.wait_workers(4);
    let conns: Vec<Conn> = (0..CLIENTS).map(|_| bus.connect()).collect();

    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let started = Instant::now();
    let chaos = std::thread::spawn({
        let (done, kills, killed) = (done.clone(), kills.clone(), killed.clone());
        let pid = bus.pid();
        move || {
            let mut rng = fastrand::Rng::with_seed(7);
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                let workers = codex_bus_tests::children_of(pid);
                if let Some(&victim) = rng.choice(workers.iter()) {
                    if kill(Pid::from_raw(victim as i32), Signal::SIGKILL).is_ok() {
                        kills.fetch_add(1, Ordering::SeqCst);
                        killed.lock().unwrap().push(victim);
                    }
                }
            }
        }
    });
    let clients: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| std::thread::spawn(move || client(conn, i)))
        .collect();
    let tallies: Vec<Tally> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    done.store(true, Ordering::SeqCst);
    chaos.join().unwrap();
    let elapsed = started.elapsed();

    let results: usize = tallies.iter().map(|t| t.results).sum();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for (why, n) in tallies.iter().flat_map(|t| &t.errors) {
        *errors.entry(why.clone()).or_default() += n;
    }
    let replies = results + errors.values().sum::<usize>();
    let kills = kills.load(Ordering::SeqCst);
    println!(
        "chaos: {} requests, {replies} replies: {results} results, errors {errors:?}; \
         {kills} workers killed in {:.1} s",
        CLIENTS * PER_CLIENT,
        elapsed.as_secs_f64()
    );
    assert_eq!(
        replies,
        CLIENTS * PER_CLIENT,
        "exactly one reply per request"
    );
    assert!(kills > 0, "the chaos thread killed workers");
    assert!(
        errors.keys().all(|k| k == "worker_exited"),
        "only the killed workers' requests fail: {errors:?}"
    );
    assert!(results > 0, "requests were served between the kills");

    // Healthy afterwards: four workers, every session answered, a clean drain. The last kill may
    // have been a moment ago: wait until all four workers are replacements, not a dying victim
    // (whose /proc entry lingers until it is reaped) that would still take a ping.
    let killed = killed.lock().unwrap().clone();
    let settle = Instant::now();
    let workers = loop {
        let workers = bus.wait_workers(4);
        if !workers.iter().any(|p| killed.contains(p)) {
            break workers;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(20),
            "workers never replaced"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut conn = bus.connect();
    for i in 0..CLIENTS {
        conn.request(json!(i), "ping", Value::Null, Some(&format!("chaos-{i}")));
        let reply = conn.recv();
        assert!(reply.get("result").is_some(), "{reply}");
    }
    assert!(!bus.log().contains("panicked"), "{}", bus.log());
    bus.signal(Signal::SIGTERM);
    assert!(bus.wait_exit().success(), "log:\n{}", bus.log());
    assert!(workers.iter().all(|p| !alive(*p)));
}
