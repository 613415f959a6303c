//! The `mock/*` test hooks.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use crate::support::{self, default_reply, POOL};

#[test]
fn echo_returns_params_as_given() {
    let mut worker = support::spawn();
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mock/echo\",\"params\":{\"x\":[1, 2.50]},\"sessionId\":\"s\"}\n");
    assert_eq!(
        worker.line(),
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"params\":{{\"x\":[1, 2.50]}},\"pool\":\"{POOL}\",\"slot\":7,\"pid\":{}}},\"sessionId\":\"s\"}}",
            worker.pid()
        )
    );
}

#[test]
fn delays_reply_out_of_order_while_serving_others() {
    let mut worker = support::spawn();
    let start = Instant::now();
    worker.send(concat!(
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mock/delay\",\"params\":{\"ms\":300}}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"mock/delay\",\"params\":{\"ms\":10}}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"now\"}\n",
    ));
    assert_eq!(worker.line(), default_reply(&worker, "3", "now", None));
    assert_eq!(
        worker.line(),
        default_reply(&worker, "2", "mock/delay", None)
    );
    assert_eq!(
        worker.line(),
        default_reply(&worker, "1", "mock/delay", None)
    );
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[test]
fn ask_round_trips_through_the_client() {
    let mut worker = support::spawn();
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"mock/ask\",\"sessionId\":\"s\"}\n");
    let ask = worker.json();
    assert_eq!(ask["id"], json!(0));
    assert_eq!(ask["method"], "mock/approval");
    assert!(ask["params"]["question"].is_string());
    assert_eq!(ask["sessionId"], "s");

    worker.send("{\"jsonrpc\":\"2.0\",\"id\":11,\"method\":\"mock/ask\",\"sessionId\":\"t\"}\n");
    assert_eq!(worker.json()["id"], json!(1));
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-1,\"message\":\"no\"},\"sessionId\":\"t\"}\n");
    worker.send(
        "{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"approved\":true},\"sessionId\":\"s\"}\n",
    );

    let second = worker.json();
    assert_eq!(second["id"], 11);
    assert_eq!(second["sessionId"], "t");
    assert_eq!(
        second["result"]["answer"],
        json!({"code": -1, "message": "no"})
    );
    let first = worker.json();
    assert_eq!(first["id"], 10);
    assert_eq!(first["sessionId"], "s");
    assert_eq!(
        first["result"],
        json!({"answer": {"approved": true}, "pool": POOL, "slot": 7, "pid": worker.pid()})
    );
}

#[test]
fn notify_sends_count_events_then_the_reply() {
    let mut worker = support::spawn();
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mock/notify\",\"params\":{\"count\":3},\"sessionId\":\"s\"}\n");
    for seq in 0..3 {
        assert_eq!(
            worker.line(),
            format!("{{\"jsonrpc\":\"2.0\",\"method\":\"mock/event\",\"params\":{{\"seq\":{seq}}},\"sessionId\":\"s\"}}")
        );
    }
    assert_eq!(
        worker.line(),
        default_reply(&worker, "1", "mock/notify", Some("\"s\""))
    );
}

#[test]
fn garbage_line_precedes_the_reply() {
    let mut worker = support::spawn();
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mock/garbage\"}\n");
    assert_eq!(worker.line(), "this is not json");
    assert_eq!(
        worker.line(),
        default_reply(&worker, "1", "mock/garbage", None)
    );
}

#[test]
fn stderr_hook_writes_the_text_then_replies() {
    let mut worker = support::spawn();
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mock/stderr\",\"params\":{\"text\":\"hello from the mock\"}}\n");
    assert_eq!(
        worker.line(),
        default_reply(&worker, "1", "mock/stderr", None)
    );
    assert_eq!(
        worker.stderr_line_containing("hello from the mock"),
        "hello from the mock"
    );
}

#[test]
fn hook_with_bad_params_is_an_invalid_params_error() {
    let mut worker = support::spawn();
    worker.send(
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mock/delay\",\"params\":{\"ms\":\"soon\"}}\n",
    );
    let reply = worker.json();
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["error"]["code"], -32602);
}

#[test]
fn exit_flushes_earlier_replies_then_exits_with_the_code() {
    let mut worker = support::spawn();
    worker.send(concat!(
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"before\"}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"mock/exit\",\"params\":{\"code\":3}}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"after\"}\n",
    ));
    assert_eq!(worker.line(), default_reply(&worker, "1", "before", None));
    worker.expect_no_more_output();
    worker.expect_exit_code(3);
}

#[test]
fn crash_dies_by_sigkill() {
    let mut worker = support::spawn();
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mock/crash\"}\n");
    worker.expect_killed_by(Signal::SIGKILL);
}
