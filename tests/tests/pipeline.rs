//! Nothing is lost: deep pipelining over one connection, and messages larger than a pipe.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::time::Instant;

use codex_bus_tests::{Bus, BusConfig, Mode};
use serde_json::{json, Value};

#[test]
fn hundred_thousand_pipelined_requests_with_ten_thousand_in_flight() {
    const TOTAL: usize = 100_000;
    const WINDOW: usize = 10_000;
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let (mut reader, mut writer) = bus.connect().split();
    let payload = "p".repeat(1024 - 80);
    let (window_tx, window_rx) = std::sync::mpsc::sync_channel::<()>(WINDOW);
    for _ in 0..WINDOW {
        window_tx.send(()).unwrap();
    }
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(64 * 1024);
        for i in 0..TOTAL {
            // At most WINDOW requests unanswered: a credit per request, returned per reply.
            window_rx.recv().unwrap();
            let line = format!(
                "{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"ping\",\"params\":\"{payload}\"}}\n"
            );
            batch.extend_from_slice(line.as_bytes());
            if batch.len() >= 60 * 1024 || i + 1 == TOTAL {
                writer.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        writer.flush().unwrap();
        writer
    });
    let mut seen = vec![false; TOTAL];
    let mut line = String::new();
    for _ in 0..TOTAL {
        line.clear();
        reader.read_line(&mut line).expect("reply in time");
        let reply: Value = serde_json::from_str(&line).unwrap();
        let id = reply["id"].as_u64().unwrap_or_else(|| panic!("{reply}")) as usize;
        assert!(!seen[id], "reply {id} twice");
        seen[id] = true;
        let _ = window_tx.try_send(());
    }
    let elapsed = started.elapsed();
    drop(sender.join().unwrap());
    assert!(seen.iter().all(|s| *s));
    eprintln!("100,000 × 1 KiB requests, window {WINDOW}: {elapsed:?}");
}

#[test]
fn a_request_larger_than_a_pipe_arrives_intact_and_does_not_splice_the_next() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let mut conn = bus.connect();
    let blob: String = (0..70 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    conn.request(json!("big"), "mock/echo", json!({"blob": blob}), None);
    conn.request(json!("small"), "mock/echo", json!({"n": 1}), None);
    let big = conn.recv();
    assert_eq!(big["id"], json!("big"));
    assert_eq!(big["result"]["params"]["blob"].as_str().unwrap(), blob);
    let small = conn.recv();
    assert_eq!(small["id"], json!("small"));
    assert_eq!(small["result"]["params"], json!({"n": 1}));
}

#[test]
fn a_slow_worker_pauses_its_clients_instead_of_dropping() {
    // A tiny worker queue: the client must be paused (backpressure), not lose anything.
    let config = BusConfig::mock(1).limit("max_worker_queue", 1024);
    let mut bus = Bus::start(&config, Mode::Tcp);
    let mut conn = bus.connect();
    let mut expected = HashSet::new();
    for i in 0..2000 {
        let method = if i % 500 == 0 { "mock/delay" } else { "ping" };
        conn.request(
            json!(i),
            method,
            json!({"ms": 50, "pad": "z".repeat(200)}),
            None,
        );
        expected.insert(i);
    }
    for _ in 0..2000 {
        let reply = conn.recv();
        assert!(expected.remove(&reply["id"].as_i64().unwrap()));
    }
    assert!(expected.is_empty());
}
