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
    // Each exchange's lines, up to the one `last` recognizes.
    let exchange = |child: &mut Worker, message: Value, last: &dyn Fn(&Value) -> bool| {
        send(child, &message);
        let mut lines = Vec::new();
        loop {
            let line = child.line();
            let done = last(&serde_json::from_str(&line).unwrap());
            lines.push(line);
            if done {
                return lines;
            }
        }
    };
    let mut transcript = exchange(
        &mut child,
        json!({"id": 0, "method": "initialize", "params": {"clientInfo": {"name": "golden", "version": "1"}}}),
        &|line| line["method"] == "remoteControl/status/changed",
    );
    let started = exchange(
        &mut child,
        json!({"id": 1, "method": "thread/start", "params": {"cwd": "/work"}}),
        &|line| line["method"] == "thread/started",
    );
    // The id is Codex-shaped and, on the virtual clock, a function of the seed: the golden
    // transcript checks it.
    let thread =
        serde_json::from_str::<Value>(&started[0]).unwrap()["result"]["thread"]["id"].clone();
    transcript.extend(started);
    transcript.extend(exchange(
        &mut child,
        json!({"id": 2, "method": "turn/start", "params": {"threadId": thread, "input": [{"type": "text", "text": "hello"}]}}),
        &|line| line["method"] == "turn/completed",
    ));
    let expected = include_str!("golden/mock_app_server_turn.ndjson")
        .replace("{VERSION}", env!("CARGO_PKG_VERSION"))
        .replace("{OS}", std::env::consts::OS);
    let expected: Vec<&str> = expected.lines().collect();
    assert_eq!(transcript, expected);
}

/// A fake child on `CODEX_HOME` `home`, initialized.
fn child_on(home: &std::path::Path) -> Worker {
    let mut child = support::spawn_with(
        &["app-server", "--latency-scale", "0", "--deltas", "2"],
        &[("CODEX_HOME", home.to_str().unwrap())],
    );
    send(
        &mut child,
        &json!({"id": 0, "method": "initialize", "params": {"clientInfo": {"name": "t", "version": "1"}}}),
    );
    while child.json()["method"] != "remoteControl/status/changed" {}
    child
}

/// Sends request `id` and returns its reply, skipping notifications.
fn request(child: &mut Worker, id: u64, method: &str, params: Value) -> Value {
    send(
        child,
        &json!({"id": id, "method": method, "params": params}),
    );
    loop {
        let line = child.json();
        if line["id"] == id && line.get("method").is_none() {
            return line;
        }
    }
}

#[test]
fn a_second_process_on_one_home_gets_the_writer_only_once_the_first_is_dead() {
    let home = tempfile::tempdir().unwrap();
    let mut first = child_on(home.path());
    let started = request(&mut first, 1, "thread/start", json!({}));
    let thread = started["result"]["thread"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    send(
        &mut first,
        &json!({"id": 2, "method": "turn/start", "params": {"threadId": thread, "input": [{"type": "text", "text": "hi"}]}}),
    );
    while first.json()["method"] != "turn/completed" {}
    let unsubscribed = request(
        &mut first,
        3,
        "thread/unsubscribe",
        json!({"threadId": thread}),
    );
    assert_eq!(unsubscribed["result"]["status"], "unsubscribed");
    let lock = home
        .path()
        .join(format!("thread-writer-locks/{thread}.lock"));
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap().trim(),
        first.pid().to_string()
    );

    let mut second = child_on(home.path());
    let refused = request(&mut second, 1, "thread/resume", json!({"threadId": thread}));
    assert_eq!(
        refused["error"],
        json!({"code": -32600, "message": format!("thread {thread} already has an active writer")})
    );
    // SIGKILL runs no clean-up: the kernel frees the lock with the process.
    first.sigkill();
    first.wait();
    let resumed = request(&mut second, 2, "thread/resume", json!({"threadId": thread}));
    let turns = resumed["result"]["thread"]["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 1, "{resumed}");
    assert_eq!(turns[0]["items"][0]["content"][0]["text"], "hi");
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap().trim(),
        second.pid().to_string()
    );
    second.close_stdin();
    second.expect_exit_code(0);
}

#[test]
fn a_copied_rollout_resumes_in_another_home() {
    let homes = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut first = child_on(homes[0].path());
    let started = request(&mut first, 1, "thread/start", json!({}));
    let thread = started["result"]["thread"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rollout = std::path::PathBuf::from(started["result"]["thread"]["path"].as_str().unwrap());
    send(
        &mut first,
        &json!({"id": 2, "method": "turn/start", "params": {"threadId": thread, "input": [{"type": "text", "text": "hi"}]}}),
    );
    while first.json()["method"] != "turn/completed" {}

    // The second home has never seen the thread, and the first process still runs.
    let mut second = child_on(homes[1].path());
    let missing = request(&mut second, 1, "thread/resume", json!({"threadId": thread}));
    assert_eq!(
        missing["error"],
        json!({"code": -32600, "message": format!("no rollout found for thread id {thread}")})
    );
    let relative = rollout.strip_prefix(homes[0].path()).unwrap();
    let name = relative.file_name().unwrap().to_str().unwrap();
    assert!(
        relative.starts_with("sessions")
            && name.starts_with("rollout-")
            && name.ends_with(&format!("-{thread}.jsonl")),
        "{relative:?}"
    );
    let copy = homes[1].path().join(relative);
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(&rollout, &copy).unwrap();
    let resumed = request(&mut second, 2, "thread/resume", json!({"threadId": thread}));
    assert_eq!(
        resumed["result"]["thread"]["turns"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    send(
        &mut second,
        &json!({"id": 3, "method": "turn/start", "params": {"threadId": thread, "input": [{"type": "text", "text": "again"}]}}),
    );
    while second.json()["method"] != "turn/completed" {}
    assert_eq!(std::fs::read_to_string(&copy).unwrap().lines().count(), 3);
}
