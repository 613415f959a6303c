//! Bad input never ends the daemon, nor the connection: each bad line gets an error reply, and a
//! flood of 1 MiB batch lines gets one short line each, with the daemon's peak RSS bounded.

use std::time::Instant;

use codex_bus_tests::{reason, rss_kib, still_works, Bus, BusConfig, Mode};
use serde_json::{json, Value};

#[test]
fn malformed_lines_get_error_replies_and_the_connection_survives() {
    let mut bus = Bus::start(&BusConfig::mock(2), Mode::Tcp);
    let mut conn = bus.connect();
    let mut bystander = bus.connect();
    let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!(
        "{{\"id\":1,\"method\":\"m\",\"params\":{}1{}}}",
        "{\"a\":".repeat(10_000),
        "}".repeat(10_000)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "parse_error"),
        (b"{\"id\":1,".to_vec(), "parse_error"),
        (b"   ".to_vec(), "parse_error"),
        (
            b"{\"id\":\"a\0b\",\"method\":\"m\"}".to_vec(),
            "parse_error",
        ),
        (b"\xff\xfe{}".to_vec(), "parse_error"),
        (
            b"{\"id\":1,\"method\":\"m\"} trailing".to_vec(),
            "parse_error",
        ),
        (b"\"str\"".to_vec(), "invalid_request"),
        (b"42".to_vec(), "invalid_request"),
        (b"null".to_vec(), "invalid_request"),
        (b"{}".to_vec(), "invalid_request"),
        (
            b"{\"id\":1,\"id\":2,\"method\":\"m\"}".to_vec(),
            "invalid_request",
        ),
        (deep_array.clone().into_bytes(), "batch_not_supported"),
    ];
    for (n, (line, expected)) in cases.iter().enumerate() {
        let mut bytes = line.clone();
        bytes.push(b'\n');
        conn.send_raw(&bytes);
        let reply = conn.recv();
        assert_eq!(reply["jsonrpc"], json!("2.0"));
        assert_eq!(reason(&reply), Some(*expected), "case {n}: {reply}");
        assert!(reply["error"]["data"]["retryable"].is_boolean());
        still_works(&mut conn, n as i64);
    }
    // 10,000-deep nesting inside a valid request is valid JSON: forwarded, answered.
    conn.send_raw(format!("{deep_object}\n").as_bytes());
    let reply = conn.recv();
    assert_eq!(reply["id"], json!(1), "deep but valid request served");
    still_works(&mut bystander, 1000);
}

#[test]
fn a_batch_gets_one_error_for_the_whole_line() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let mut conn = bus.connect();
    conn.send_raw(
        b"[{\"id\":\"a\",\"method\":\"m\"},{\"method\":\"n\"},{\"id\":3,\"method\":\"m\"}]\n",
    );
    let reply = conn.recv();
    assert_eq!(reply["id"], Value::Null, "{reply}");
    assert_eq!(reason(&reply), Some("batch_not_supported"));
    let detail = reply["error"]["data"]["detail"].as_str().unwrap();
    assert!(detail.contains("a batch of 3 elements"), "{detail}");
    conn.send_raw(b"[]\n");
    assert_eq!(reason(&conn.recv()), Some("invalid_request"));
    still_works(&mut conn, 9);
}

/// 1 MiB batch lines sent in the flood.
const BATCHES: usize = 20;

/// How far the daemon's peak RSS may rise above its idle RSS while it answers [`BATCHES`] 1 MiB
/// batch lines: one read buffer of a line's size and the allocator's slack. Before issue 12 one
/// such line produced 69 MB of error replies.
const BATCH_RSS_KIB: u64 = 16 * 1024;

#[test]
fn a_1_mib_batch_gets_one_bounded_line() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let mut conn = bus.connect();
    let mut other = bus.connect();
    still_works(&mut other, 0);
    let (idle_rss, _) = rss_kib(bus.pid());
    let elements = 1024 * 1024 / 2 - 1;
    let mut line = b"[0".to_vec();
    line.extend(b",0".repeat(elements - 1));
    line.extend(b"]\n");
    assert!(line.len() <= 1024 * 1024, "within max_input_buffer");
    let start = Instant::now();
    for i in 0..BATCHES {
        conn.send_raw(&line);
        let reply = conn.recv_line();
        assert!(reply.len() < 1024, "one short line: {reply}");
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reason(&reply), Some("batch_not_supported"));
        let detail = reply["error"]["data"]["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("a batch of {elements} elements")),
            "{detail}"
        );
        // Another client is served between the batches.
        still_works(&mut other, i as i64 + 1);
    }
    let took = start.elapsed();
    // The very next line is the answer to this request: nothing else was queued.
    conn.request(json!(1), "ping", Value::Null, Some("alive"));
    assert_eq!(conn.recv()["id"], json!(1));
    let (rss, peak) = rss_kib(bus.pid());
    println!(
        "{BATCHES} batch lines of 1 MiB answered with one short line each in {took:?}; daemon \
         RSS idle {idle_rss} KiB, peak {peak} KiB, now {rss} KiB"
    );
    assert!(
        peak < idle_rss + BATCH_RSS_KIB,
        "peak RSS {peak} KiB, idle {idle_rss} KiB"
    );
}

#[test]
fn an_oversize_line_is_refused_and_skipped_without_breaking_the_stream() {
    let config = BusConfig::mock(1).limit("max_input_buffer", 4096);
    let mut bus = Bus::start(&config, Mode::Unix);
    let mut conn = bus.connect();
    let big = format!(
        "{{\"id\":1,\"method\":\"m\",\"params\":\"{}\"}}\n",
        "x".repeat(100_000)
    );
    // The oversize line and a good one in the same write: the good one must survive intact.
    let mut bytes = big.into_bytes();
    bytes.extend_from_slice(b"{\"id\":2,\"method\":\"m\"}\n");
    conn.send_raw(&bytes);
    let reply = conn.recv();
    assert_eq!(reason(&reply), Some("message_too_large"), "{reply}");
    assert_eq!(reply["error"]["code"], json!(-32600));
    assert_eq!(conn.recv()["id"], json!(2));
    // A line of exactly the limit is accepted.
    let filler = 4096 - "{\"id\":3,\"method\":\"m\",\"params\":\"\"}".len();
    conn.send_raw(
        format!(
            "{{\"id\":3,\"method\":\"m\",\"params\":\"{}\"}}\n",
            "y".repeat(filler)
        )
        .as_bytes(),
    );
    assert_eq!(conn.recv()["id"], json!(3));
}

#[test]
fn a_client_that_disconnects_mid_line_or_mid_request_hurts_no_one() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let mut stable = bus.connect();
    for round in 0..5 {
        let mut rude = bus.connect();
        rude.request(json!(1), "mock/delay", json!({"ms": 100}), Some("rude"));
        rude.send_raw(b"{\"id\":2,\"meth");
        drop(rude);
        still_works(&mut stable, round);
    }
}
