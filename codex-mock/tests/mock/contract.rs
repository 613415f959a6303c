//! The worker contract: ids, sessionId routing, notifications, environment, bad input.

use serde_json::json;

use crate::support::{self, default_reply};

#[test]
fn int_string_and_exponent_ids_come_back_as_the_same_token() {
    let mut worker = support::spawn();
    worker.send(concat!(
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"a\",\"sessionId\":\"s-1\"}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":\"two\",\"method\":\"b\",\"sessionId\":\"s-2\"}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":1.5e3,\"method\":\"c\",\"sessionId\":\"s-3\"}\n",
    ));
    assert_eq!(
        worker.line(),
        default_reply(&worker, "1", "a", Some("\"s-1\""))
    );
    assert_eq!(
        worker.line(),
        default_reply(&worker, "\"two\"", "b", Some("\"s-2\""))
    );
    assert_eq!(
        worker.line(),
        default_reply(&worker, "1.5e3", "c", Some("\"s-3\""))
    );
}

#[test]
fn session_id_is_copied_as_any_json_value_and_never_invented() {
    let mut worker = support::spawn();
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"a\",\"sessionId\":{\"n\":[1, 2.0]},\"extra\":true}\n");
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"a\"}\n");
    assert_eq!(
        worker.line(),
        default_reply(&worker, "1", "a", Some("{\"n\":[1, 2.0]}"))
    );
    let bare = worker.line();
    assert_eq!(bare, default_reply(&worker, "2", "a", None));
    assert!(!bare.contains("sessionId"));
}

#[test]
fn notification_gets_no_output() {
    let mut worker = support::spawn();
    worker.send("{\"jsonrpc\":\"2.0\",\"method\":\"note\",\"sessionId\":\"s\"}\n");
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"after\"}\n");
    assert_eq!(worker.line(), default_reply(&worker, "9", "after", None));
    worker.close_stdin();
    worker.expect_no_more_output();
    worker.expect_exit_code(0);
}

#[test]
fn pool_and_slot_come_from_the_environment() {
    let mut worker =
        support::spawn_with_env(&[("CODEX_BUS_POOL", "alpha"), ("CODEX_BUS_SLOT", "12")]);
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"who\"}\n");
    let reply = worker.json();
    assert_eq!(
        reply["result"],
        json!({"pool": "alpha", "slot": 12, "pid": worker.pid(), "method": "who"})
    );
}

#[test]
fn tag_option_adds_the_tag_beside_the_identity() {
    let mut worker = support::spawn_with(
        &["--tag", "v2"],
        &[("CODEX_BUS_POOL", "alpha"), ("CODEX_BUS_SLOT", "0")],
    );
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"who\"}\n");
    let reply = worker.json();
    assert_eq!(
        reply["result"],
        json!({"pool": "alpha", "slot": 0, "pid": worker.pid(), "tag": "v2", "method": "who"})
    );
}

#[test]
fn missing_environment_gives_empty_pool_and_null_slot() {
    let mut worker = support::spawn_with_env(&[]);
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"who\"}\n");
    let reply = worker.json();
    assert_eq!(
        reply["result"],
        json!({"pool": "", "slot": null, "pid": worker.pid(), "method": "who"})
    );
}

#[test]
fn crlf_and_empty_lines_are_tolerated() {
    let mut worker = support::spawn();
    worker.send("\r\n\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"a\"}\r\n\n");
    assert_eq!(worker.line(), default_reply(&worker, "1", "a", None));
}

#[test]
fn parse_error_is_answered_logged_and_survived() {
    let mut worker = support::spawn();
    worker.send("not json\n");
    assert_eq!(
        worker.line(),
        "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"Parse error\"}}"
    );
    worker.stderr_line_containing("parse error");
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"still-here\"}\n");
    assert_eq!(
        worker.line(),
        default_reply(&worker, "2", "still-here", None)
    );
}

#[test]
fn json_that_is_not_a_message_is_an_invalid_request() {
    let mut worker = support::spawn();
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":5,\"sessionId\":\"s\"}\n[1,2]\n");
    assert_eq!(
        worker.line(),
        "{\"jsonrpc\":\"2.0\",\"id\":5,\"error\":{\"code\":-32600,\"message\":\"Invalid Request\"},\"sessionId\":\"s\"}"
    );
    assert_eq!(
        worker.line(),
        "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32600,\"message\":\"Invalid Request\"}}"
    );
}
