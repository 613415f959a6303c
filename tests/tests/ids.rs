//! Replies never cross: ids are namespaced per client toward workers and restored exactly; worker
//! requests reach the session's client and its answer reaches the worker that asked.

use std::collections::HashSet;

use codex_bus_tests::{Bus, BusConfig, Mode};
use serde_json::{json, Value};

#[test]
fn two_clients_with_the_same_ids_and_out_of_order_replies() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let mut a = bus.connect();
    let mut b = bus.connect();
    // One worker; client A's id 1 is slow and B's id 1 fast, so replies leave the worker out of order.
    for id in 1..=20 {
        let delay = if id % 2 == 1 { 200 - id * 5 } else { 0 };
        a.request(
            json!(id),
            "mock/delay",
            json!({"ms": delay, "who": "a"}),
            Some("sa"),
        );
        b.request(json!(id), "mock/echo", json!({"who": "b"}), Some("sb"));
    }
    let mut got_a = HashSet::new();
    let mut got_b = HashSet::new();
    for _ in 0..20 {
        let reply = a.recv();
        assert_eq!(
            reply["sessionId"],
            json!("sa"),
            "A never sees B's replies: {reply}"
        );
        assert!(got_a.insert(reply["id"].as_i64().unwrap()));
        let reply = b.recv();
        assert_eq!(reply["result"]["params"]["who"], json!("b"), "{reply}");
        assert!(got_b.insert(reply["id"].as_i64().unwrap()));
    }
    assert_eq!(got_a, (1..=20).collect());
    assert_eq!(got_b, (1..=20).collect());
}

#[test]
fn original_id_tokens_come_back_byte_for_byte() {
    let mut bus = Bus::start(&BusConfig::mock(2), Mode::Unix);
    let mut conn = bus.connect();
    let long = format!("\"{}\"", "k".repeat(300));
    let ids = [
        "1.5e3",
        "-0",
        "18446744073709551616",
        "\"caf\\u00e9\"",
        "{\"nested\": [1, 2]}",
        "[ 1,2 ]",
        "null",
        "true",
        long.as_str(),
    ];
    for (n, id) in ids.iter().enumerate() {
        conn.send_raw(
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"m{n}\"}}\n").as_bytes(),
        );
        let line = conn.recv_line();
        let expected = format!("\"id\":{id},");
        assert!(line.contains(&expected), "id {id} restored exactly: {line}");
    }
}

#[test]
fn worker_request_reaches_the_sessions_client_and_the_answer_returns() {
    let mut bus = Bus::start(&BusConfig::mock(2), Mode::Tcp);
    let mut first = bus.connect();
    let mut asker = bus.connect();
    // The session's last sender is `asker`, so the worker's request must reach it, not `first`.
    first.request(json!(1), "ping", Value::Null, Some("approvals"));
    first.recv();
    asker.request(json!("ask-1"), "mock/ask", Value::Null, Some("approvals"));
    let question = asker.recv();
    assert_eq!(question["method"], json!("mock/approval"));
    assert_eq!(question["sessionId"], json!("approvals"));
    let question_id = question["id"].clone();
    assert!(!question_id.is_null());
    asker.send(&json!({"jsonrpc": "2.0", "id": question_id, "result": {"decision": "accept"}, "sessionId": "approvals"}));
    let reply = asker.recv();
    assert_eq!(reply["id"], json!("ask-1"));
    assert_eq!(reply["result"]["answer"], json!({"decision": "accept"}));

    // Two concurrent asks on two sessions answered in reverse order still pair up correctly.
    asker.request(json!("x"), "mock/ask", Value::Null, Some("s-x"));
    asker.request(json!("y"), "mock/ask", Value::Null, Some("s-y"));
    let q1 = asker.recv();
    let q2 = asker.recv();
    for q in [&q2, &q1] {
        let session = q["sessionId"].as_str().unwrap();
        asker.send(&json!({"id": q["id"], "result": {"for": session}, "sessionId": session}));
    }
    for _ in 0..2 {
        let reply = asker.recv();
        let expected = if reply["id"] == json!("x") {
            "s-x"
        } else {
            "s-y"
        };
        assert_eq!(reply["result"]["answer"]["for"], json!(expected), "{reply}");
    }
}

#[test]
fn worker_notifications_follow_the_session() {
    let mut bus = Bus::start(&BusConfig::mock(2), Mode::Tcp);
    let mut other = bus.connect();
    let mut conn = bus.connect();
    conn.request(json!(1), "mock/notify", json!({"count": 3}), Some("events"));
    for seq in 0..3 {
        let event = conn.recv();
        assert_eq!(event["method"], json!("mock/event"));
        assert_eq!(event["params"]["seq"], json!(seq));
    }
    assert_eq!(conn.recv()["id"], json!(1));
    other.request(json!(2), "ping", Value::Null, None);
    assert_eq!(
        other.recv()["id"],
        json!(2),
        "the other client got no stray events"
    );
}

#[test]
fn an_answer_to_no_request_is_ignored_and_the_connection_works() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let mut conn = bus.connect();
    conn.send(&json!({"jsonrpc": "2.0", "id": 12345, "result": {}}));
    conn.send(&json!({"jsonrpc": "2.0", "id": "weird", "error": {"code": 1, "message": "x"}}));
    conn.request(json!(1), "ping", Value::Null, None);
    assert_eq!(conn.recv()["id"], json!(1));
}
