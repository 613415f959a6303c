//! `limits.client_idle_sec`: a connection that completes no line for that long, with no request
//! in flight, is closed; clients that send lines, or wait for a reply, keep being served. The
//! slowloris flood (2,000 connections of one byte each) keeps the daemon's peak RSS within a
//! stated bound, and every one of them is closed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use codex_bus_tests::{metric, raise_fd_limit, rss_kib, Bus, BusConfig, Mode};
use serde_json::{json, Value};

/// Connections that send one byte and nothing more.
const SLOW: usize = 2_000;

/// How far the daemon's peak RSS may rise above its idle RSS with [`SLOW`] connections open:
/// 16 KiB each (about 12 measured with a 4 KiB first read buffer holding the byte, 6 with the 2 KiB
/// of a lean framer, plus the task and the socket's registration). With a 64 KiB first read buffer
/// they cost 60 KiB each: 117 MiB.
const SLOW_RSS_KIB: u64 = 32 * 1024;

#[test]
fn connections_that_complete_no_line_are_closed_and_the_others_served() {
    let (_, hard) = raise_fd_limit();
    assert!(
        hard > SLOW as u64 + 100,
        "needs {SLOW} fds, hard limit {hard}"
    );
    let config = BusConfig::mock(1).limit("client_idle_sec", 1);
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let admin = bus.metrics_addr();
    let (idle_rss, _) = rss_kib(bus.pid());
    let addr = bus.tcp_addr().to_owned();
    // Slowloris: one byte each, never a whole line.
    let slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let mut stream = TcpStream::connect(&addr).unwrap();
            stream.write_all(b"{").unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream
        })
        .collect();
    // Counted as accepted (the first may be closed as idle before the last connects).
    let accepted = || {
        metric(
            &admin,
            "codex_bus_client_connections_total",
            &[("transport", "tcp")],
        )
    };
    let opened = Instant::now();
    while accepted() < SLOW as f64 {
        assert!(
            opened.elapsed() < Duration::from_secs(10),
            "{} accepted",
            accepted()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let open = metric(
        &admin,
        "codex_bus_client_connections",
        &[("transport", "tcp")],
    );
    let (open_rss, _) = rss_kib(bus.pid());
    let mut busy = bus.connect();
    let mut waiting = bus.connect();
    // In flight for longer than the idle limit: this connection is not idle.
    waiting.request(json!("slow"), "mock/delay", json!({"ms": 3000}), Some("w"));
    let start = Instant::now();
    let mut id = 0;
    while start.elapsed() < Duration::from_millis(3200) {
        id += 1;
        busy.request(json!(id), "ping", Value::Null, Some("b"));
        let reply = busy.recv();
        assert!(reply.get("result").is_some(), "{reply}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let reply = waiting.recv();
    assert_eq!(reply["id"], json!("slow"), "{reply}");
    assert!(reply.get("result").is_some(), "{reply}");
    // Its idle time counts from the reply, not from its last line.
    waiting.request(json!("after"), "ping", Value::Null, Some("w"));
    let reply = waiting.recv();
    assert!(reply.get("result").is_some(), "{reply}");
    for mut stream in &slow {
        let mut byte = [0u8; 1];
        let read = stream.read(&mut byte);
        assert!(
            matches!(read, Ok(0)),
            "a connection that sent no line was not closed: {read:?}"
        );
    }
    let closed = metric(
        &admin,
        "codex_bus_client_idle_closed_total",
        &[("transport", "tcp")],
    );
    assert_eq!(closed, SLOW as f64);
    let (rss, peak) = rss_kib(bus.pid());
    println!(
        "{SLOW} one-byte connections: daemon RSS idle {idle_rss} KiB, with them accepted \
         ({open} still open after {:?}) {open_rss} KiB, peak {peak} KiB, after they were closed {rss} KiB; the busy client \
         made {id} round trips meanwhile",
        opened.elapsed()
    );
    assert!(
        peak < idle_rss + SLOW_RSS_KIB,
        "peak RSS {peak} KiB, idle {idle_rss} KiB"
    );
}
