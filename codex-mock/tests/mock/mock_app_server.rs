//! `codex-mock app-server`: the child's exact wire format, and an exact transcript on the
//! virtual clock.

use serde_json::{json, Value};

use crate::support::{self, Worker};

fn send(child: &mut Worker, message: &Value) {
    child.send(&format!("{message}\n"));
}

fn fake_child(args: &[&str]) -> Worker {
    let mut all = vec!["app-server"];
    all.extend_from_slice(args);
    support::spawn_with(&all, &[])
}

#[test]
fn it_speaks_the_childs_wire_format() {
    let mut child = fake_child(&["--latency-scale", "0", "--deltas", "1"]);
    send(&mut child, &json!({"id": "early", "method": "model/list"}));
    assert_eq!(
        child.line(),
        r#"{"error":{"code":-32600,"message":"Not initialized"},"id":"early"}"#
    );
    send(
        &mut child,
        &json!({"id": 0, "method": "initialize", "params": {"clientInfo": {"name": "t", "version": "1"}}}),
    );
    let reply = child.json();
    assert_eq!(reply["id"], 0);
    assert!(reply.get("jsonrpc").is_none(), "no jsonrpc member: {reply}");
    for method in ["configWarning", "remoteControl/status/changed"] {
        let note = child.json();
        assert_eq!(note["method"], method);
        assert!(note["emittedAtMs"].is_u64());
    }
    send(
        &mut child,
        &json!({"id": 1, "method": "initialize", "params": {"clientInfo": {"name": "t", "version": "1"}}}),
    );
    assert_eq!(
        child.line(),
        r#"{"error":{"code":-32600,"message":"Already initialized"},"id":1}"#
    );
    send(&mut child, &json!({"method": "initialized"}));
    send(&mut child, &json!({"id": 2, "method": "config/read"}));
    assert_eq!(child.json()["error"]["code"], -32600);
    send(
        &mut child,
        &json!({"id": 3, "method": "thread/start", "params": {}}),
    );
    let thread = child.json()["result"]["thread"]["id"].clone();
    assert_eq!(child.json()["method"], "thread/started");
    for turn in 0..2 {
        send(
            &mut child,
            &json!({"id": 4 + turn, "method": "turn/start", "params": {"threadId": thread, "input": [{"type": "text", "text": "@approval"}]}}),
        );
        let request = loop {
            let line = child.json();
            if line["method"] == "item/commandExecution/requestApproval" {
                break line;
            }
        };
        // Server-request ids are integers counting from 0.
        assert_eq!(request["id"], turn);
        send(
            &mut child,
            &json!({"id": turn, "result": {"decision": "accept"}}),
        );
        while child.json()["method"] != "turn/completed" {}
    }
    child.close_stdin();
    child.expect_no_more_output();
    child.expect_exit_code(0);
}

#[test]
fn a_scripted_crash_exits_with_status_1() {
    let mut child = fake_child(&["--latency-scale", "0", "--deltas", "4"]);
    send(
        &mut child,
        &json!({"id": 0, "method": "initialize", "params": {"clientInfo": {"name": "t", "version": "1"}}}),
    );
    send(
        &mut child,
        &json!({"id": 1, "method": "thread/start", "params": {}}),
    );
    let thread = loop {
        let line = child.json();
        if line["id"] == 1 {
            break line["result"]["thread"]["id"].clone();
        }
    };
    send(
        &mut child,
        &json!({"id": 2, "method": "turn/start", "params": {"threadId": thread, "input": [{"type": "text", "text": "@crash"}]}}),
    );
    child.expect_exit_code(1);
}

#[test]
fn the_virtual_clock_gives_an_exact_transcript() {
    let mut child = fake_child(&[
        "--clock",
        "virtual",
        "--latency-scale",
        "0",
        "--seed",
        "7",
        "--deltas",
        "3",
        "--delta-bytes",
        "8",
    ]);
    let mut transcript = Vec::new();
    let mut exchange = |child: &mut Worker, message: Value, last: &dyn Fn(&Value) -> bool| {
        send(child, &message);
        loop {
            let line = child.line();
            let done = last(&serde_json::from_str(&line).unwrap());
            transcript.push(line);
            if done {
                return;
            }
        }
    };
    exchange(
        &mut child,
        json!({"id": 0, "method": "initialize", "params": {"clientInfo": {"name": "golden", "version": "1"}}}),
        &|line| line["method"] == "remoteControl/status/changed",
    );
    exchange(
        &mut child,
        json!({"id": 1, "method": "thread/start", "params": {"cwd": "/work"}}),
        &|line| line["method"] == "thread/started",
    );
    exchange(
        &mut child,
        json!({"id": 2, "method": "turn/start", "params": {"threadId": "thr_0001", "input": [{"type": "text", "text": "hello"}]}}),
        &|line| line["method"] == "turn/completed",
    );
    let expected = include_str!("golden/mock_app_server_turn.ndjson")
        .replace("{VERSION}", env!("CARGO_PKG_VERSION"))
        .replace("{OS}", std::env::consts::OS);
    let expected: Vec<&str> = expected.lines().collect();
    assert_eq!(transcript, expected);
}
