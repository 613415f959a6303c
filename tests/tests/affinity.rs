//! Session affinity: every message of a session reaches one worker, across connections and
//! reconnects; messages without a session spread over the pool.

use std::collections::{HashMap, HashSet};

use codex_bus_tests::{Bus, BusConfig, Mode};
use serde_json::{json, Value};

/// A tiny deterministic shuffle (xorshift), so the test is reproducible.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

#[test]
fn fifty_sessions_over_three_connections_each_stay_on_one_worker() {
    const SESSIONS: usize = 50;
    const PER_SESSION: usize = 40;
    let mut bus = Bus::start(&BusConfig::mock(4), Mode::Tcp);
    let mut conns: Vec<_> = (0..3).map(|_| bus.connect()).collect();
    let mut work: Vec<(usize, usize)> = (0..SESSIONS)
        .flat_map(|s| (0..PER_SESSION).map(move |r| (s, r)))
        .collect();
    shuffle(&mut work, 0x9E37_79B9_7F4A_7C15);

    // Pipelined: each connection gets its share, then every reply is read back.
    let mut sent = [0usize; 3];
    let mut session_of = HashMap::new();
    for (n, (session, request)) in work.iter().enumerate() {
        let conn = n % 3;
        let session_id = format!("session-{session:02}-{}", "x".repeat(24));
        let id = format!("{session}/{request}");
        conns[conn].request(json!(id), "ping", Value::Null, Some(&session_id));
        session_of.insert(id, session_id);
        sent[conn] += 1;
    }
    let mut worker_of: HashMap<String, HashSet<(i64, i64)>> = HashMap::new();
    let mut seen_ids = HashSet::new();
    for (conn, count) in conns.iter_mut().zip(sent) {
        for _ in 0..count {
            let reply = conn.recv();
            let session = reply["sessionId"]
                .as_str()
                .expect("sessionId kept")
                .to_owned();
            let id = reply["id"].as_str().unwrap().to_owned();
            assert_eq!(
                session_of[&id], session,
                "reply {id} carries its request's session"
            );
            assert!(seen_ids.insert(id), "no reply twice");
            let worker = (
                reply["result"]["slot"].as_i64().unwrap(),
                reply["result"]["pid"].as_i64().unwrap(),
            );
            worker_of.entry(session).or_default().insert(worker);
        }
    }
    assert_eq!(seen_ids.len(), SESSIONS * PER_SESSION);
    assert_eq!(worker_of.len(), SESSIONS);
    for (session, workers) in &worker_of {
        assert_eq!(workers.len(), 1, "{session} touched {workers:?}");
    }
    let used: HashSet<_> = worker_of.values().flatten().collect();
    assert!(
        used.len() >= 3,
        "50 sessions spread over the 4 workers: {used:?}"
    );

    // Reconnecting clients keep their sessions' workers (sessions outlive connections).
    drop(conns);
    for round in 0..3 {
        let mut conn = bus.connect();
        for (session, workers) in &worker_of {
            conn.request(json!(round), "ping", Value::Null, Some(session));
            let reply = conn.recv();
            let worker = (
                reply["result"]["slot"].as_i64().unwrap(),
                reply["result"]["pid"].as_i64().unwrap(),
            );
            assert!(workers.contains(&worker), "{session} moved after reconnect");
        }
    }
}

#[test]
fn session_key_at_a_dotted_path() {
    let config =
        BusConfig::mock(4).section("routing", json!({"session_id_field": "params.sessionId"}));
    let mut bus = Bus::start(&config, Mode::Unix);
    let mut conn = bus.connect();
    let mut slots: HashMap<String, HashSet<i64>> = HashMap::new();
    for i in 0..80 {
        let session = format!("acp-{}", i % 8);
        conn.request(json!(i), "mock/echo", json!({"sessionId": session}), None);
        let reply = conn.recv();
        assert_eq!(reply["id"], json!(i));
        slots
            .entry(session)
            .or_default()
            .insert(reply["result"]["slot"].as_i64().unwrap());
    }
    assert!(slots.values().all(|s| s.len() == 1), "{slots:?}");
}

#[test]
fn requests_without_a_session_spread_over_live_workers() {
    let mut bus = Bus::start(&BusConfig::mock(3), Mode::Tcp);
    bus.wait_workers(3);
    let mut conn = bus.connect();
    // Slow requests keep workers busy, so least-loaded placement must use every worker.
    for i in 0..6 {
        conn.request(json!(i), "mock/delay", json!({"ms": 400}), None);
    }
    let mut slots = HashSet::new();
    for _ in 0..6 {
        slots.insert(conn.recv()["result"]["slot"].as_i64().unwrap());
    }
    assert_eq!(
        slots.len(),
        3,
        "6 concurrent requests on 3 workers use all of them: {slots:?}"
    );
}

#[test]
fn pools_by_name_default_and_errors() {
    let worker = codex_bus_tests::bin("codex-mock");
    let pool =
        |id: &str, n: u32| json!({"id": id, "command": worker.to_str().unwrap(), "instances": n});
    let two = BusConfig(json!({"pools": [pool("alpha", 1), pool("beta", 2)]}));
    let mut bus = Bus::start(&two, Mode::Tcp);
    let mut conn = bus.connect();
    conn.send(&json!({"id": 1, "method": "m", "pool": "beta"}));
    assert_eq!(conn.recv()["result"]["pool"], json!("beta"));
    conn.send(&json!({"id": 2, "method": "m", "pool": "alpha", "sessionId": "s"}));
    assert_eq!(conn.recv()["result"]["pool"], json!("alpha"));
    conn.send(&json!({"id": 3, "method": "m", "pool": "gamma"}));
    let reply = conn.recv();
    assert_eq!(
        (reply["id"].clone(), codex_bus_tests::reason(&reply)),
        (json!(3), Some("unknown_pool"))
    );
    conn.send(&json!({"id": 4, "method": "m"}));
    let reply = conn.recv();
    assert_eq!(
        (reply["id"].clone(), codex_bus_tests::reason(&reply)),
        (json!(4), Some("pool_required"))
    );
    // Once placed, a session stays in its pool.
    conn.send(&json!({"id": 5, "method": "m", "sessionId": "s"}));
    assert_eq!(conn.recv()["result"]["pool"], json!("alpha"));
    drop(bus);

    let with_default = BusConfig(json!({
        "pools": [pool("alpha", 1), pool("beta", 1)],
        "routing": {"default_pool": "beta"}
    }));
    let mut bus = Bus::start(&with_default, Mode::Tcp);
    let mut conn = bus.connect();
    conn.send(&json!({"id": 1, "method": "m"}));
    assert_eq!(conn.recv()["result"]["pool"], json!("beta"));
}
