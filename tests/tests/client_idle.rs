//! `limits.client_idle_sec`: a connection that completes no line for that long, with no request
//! in flight, is closed; clients that send lines, or wait for a reply, keep being served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use codex_bus_tests::{metric, Bus, BusConfig, Mode};
use serde_json::{json, Value};

#[test]
fn connections_that_complete_no_line_are_closed_and_the_others_served() {
    let config = BusConfig::mock(1).limit("client_idle_sec", 1);
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let admin = bus.metrics_addr();
    let addr = bus
        .wait_log("transport=\"tcp\"")
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    // Slowloris: one byte each, never a whole line.
    let slow: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut stream = TcpStream::connect(&addr).unwrap();
            stream.write_all(b"{").unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream
        })
        .collect();
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
    assert_eq!(closed, 5.0);
}
