//! Issue 11, ids inside messages: a cancellation names the client's own request id, which the bus
//! swaps for the bus id (`routing.id_references`), so it reaches the sender's request and nobody
//! else's. The mock worker answers a held `mock/delay` at once with `-32800 "Request cancelled"`
//! when a cancellation names it, so each test sees which request a cancellation reached.

use codex_bus_tests::{metric, Bus, BusConfig, Conn, Mode};
use serde_json::{json, Value};

/// Long enough that only a cancellation answers within the test's waits.
const HELD_MS: u64 = 60_000;

fn hold(conn: &mut Conn, id: Value, session: &str) {
    conn.request(id, "mock/delay", json!({"ms": HELD_MS}), Some(session));
}

fn cancel_lsp(conn: &mut Conn, id: Value, session: &str) {
    conn.send(
        &json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": id},
        "sessionId": session}),
    );
}

/// Asserts that the next line `conn` receives is the cancellation error of its request `id`.
fn expect_cancelled(conn: &mut Conn, id: Value) {
    let reply = conn.recv();
    assert_eq!(
        reply["id"], id,
        "the cancelled request, and no other: {reply}"
    );
    assert_eq!(reply["error"]["code"], -32800, "{reply}");
    assert_eq!(reply["error"]["data"], "cancelled", "{reply}");
}

/// A round trip on `session`: the worker has handled everything this connection sent before.
fn round_trip(conn: &mut Conn, id: Value, session: &str) {
    conn.request(id.clone(), "mock/echo", Value::Null, Some(session));
    let reply = conn.recv();
    assert_eq!(reply["id"], id, "{reply}");
    assert!(reply.get("result").is_some(), "{reply}");
}

/// A daemon with one worker (both sessions share its bus-id space), its admin address, and two
/// clients; B's finished request takes bus id 1, so A's next requests get bus ids 2, 3, …
fn start() -> (Bus, String, Conn, Conn) {
    let config = BusConfig::mock(1);
    let mut bus = Bus::start_with(&config, Mode::Unix, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();
    let a = bus.connect();
    let mut b = bus.connect();
    round_trip(&mut b, json!(7), "B");
    (bus, addr, a, b)
}

fn unknown_cancels(addr: &str) -> f64 {
    metric(
        addr,
        "codex_bus_dropped_messages_total",
        &[("reason", "unknown_cancel")],
    )
}

#[test]
fn a_cancel_reaches_the_senders_request() {
    let (_bus, addr, mut a, _b) = start();
    hold(&mut a, json!(2), "A");
    hold(&mut a, json!(101), "A");
    // 101 is bus id 3: only the rewrite makes the worker find it.
    cancel_lsp(&mut a, json!(101), "A");
    expect_cancelled(&mut a, json!(101));
    cancel_lsp(&mut a, json!(2), "A");
    expect_cancelled(&mut a, json!(2));
    assert_eq!(unknown_cancels(&addr), 0.0);
    assert_eq!(metric(&addr, "codex_bus_requests_in_flight", &[]), 0.0);
}

#[test]
fn another_clients_cancel_of_the_same_id_leaves_the_request_alone() {
    let (_bus, addr, mut a, mut b) = start();
    // A's 2 is bus id 2: B naming "its" 2 is exactly the collision of the issue.
    hold(&mut a, json!(2), "A");
    round_trip(&mut a, json!("sync"), "A");
    cancel_lsp(&mut b, json!(2), "B");
    // Once B's next request is answered, the worker has read B's cancel.
    round_trip(&mut b, json!(8), "B");
    // A's next line is its own round trip, not its request 2 cancelled by B.
    round_trip(&mut a, json!("after"), "A");
    assert_eq!(
        unknown_cancels(&addr),
        1.0,
        "B's cancel is dropped and counted"
    );
    cancel_lsp(&mut a, json!(2), "A");
    expect_cancelled(&mut a, json!(2));
}

#[test]
fn the_mcp_shape_works_with_string_ids() {
    let (_bus, addr, mut a, _b) = start();
    hold(&mut a, json!("m-1"), "A");
    a.send(
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": "m-1", "reason": "user"}, "sessionId": "A"}),
    );
    expect_cancelled(&mut a, json!("m-1"));
    assert_eq!(unknown_cancels(&addr), 0.0);
}

#[test]
fn unknown_and_answered_ids_are_dropped_and_counted() {
    let (_bus, addr, mut a, _b) = start();
    hold(&mut a, json!(5), "A");
    cancel_lsp(&mut a, json!(5), "A");
    expect_cancelled(&mut a, json!(5));
    // Never sent, already answered, no id at all, an id that is no string or number.
    cancel_lsp(&mut a, json!(999), "A");
    cancel_lsp(&mut a, json!(5), "A");
    a.send(&json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "sessionId": "A"}));
    cancel_lsp(&mut a, json!({"id": 5}), "A");
    round_trip(&mut a, json!("sync"), "A");
    assert_eq!(unknown_cancels(&addr), 4.0);
}
