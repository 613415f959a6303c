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

#[test]
fn a_client_that_stops_reading_is_cut_off_and_others_carry_on() {
    let config = BusConfig::mock(1)
        .limit("max_output_queue", 64 * 1024)
        .limit("backpressure_timeout_sec", 1);
    let mut bus = Bus::start(&config, Mode::Tcp);
    let (mut stuck_reader, mut stuck_writer) = bus.connect().split();
    let mut healthy = bus.connect();
    // Megabytes of replies that `stuck` never reads: its socket buffers fill, then its queue, then
    // the bus stops reading it, so its writes block too (until the bus cuts it off).
    let blob = "b".repeat(32 * 1024);
    let sender = std::thread::spawn(move || {
        for i in 0..300 {
            let line = format!(
                "{}\n",
                json!({"id": i, "method": "mock/echo", "params": {"blob": blob}, "sessionId": "stuck"})
            );
            if stuck_writer.write_all(line.as_bytes()).is_err() {
                return i;
            }
        }
        300
    });
    // The other client on the same worker is served all along.
    let started = Instant::now();
    let mut served = 0;
    while !bus.log().contains("stayed over max_output_queue") {
        healthy.request(json!(served), "ping", Value::Null, Some("healthy"));
        assert_eq!(healthy.recv()["id"], json!(served));
        served += 1;
        assert!(
            started.elapsed() < codex_bus_tests::WAIT,
            "stuck client never cut off"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(served > 0);
    // The cut-off client sees its connection end (after whatever its buffers held), well before
    // all of its replies.
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stuck_reader, &mut sink);
    let got = sink.iter().filter(|b| **b == b'\n').count();
    assert!(got < 300, "it was cut off before all replies: got {got}");
    sender.join().unwrap();
    healthy.request(json!("after"), "ping", Value::Null, Some("healthy"));
    assert_eq!(healthy.recv()["id"], json!("after"));
}
