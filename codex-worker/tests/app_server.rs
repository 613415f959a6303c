//! End-to-end tests of the real `codex-worker` binary on its own (no bus) over its stdin/stdout
//! pipes, with fake children (`codex-mock app-server`, built beside it by `cargo test
//! --workspace`): the drain and the restart limit, which the bus would otherwise mask.
#![forbid(unsafe_code)]

use std::path::Path;

use codex_bus_tests::bin;
use codex_bus_tests::worker::Worker;
use serde_json::{json, Value};

/// Most lines one wait reads.
const MAX_LINES: usize = 1_000;

/// Starts `codex-worker` with `args` and exactly these bus variables.
fn spawn_with(args: &[&str], vars: &[(&str, &str)]) -> Worker {
    Worker::start(Path::new(env!("CARGO_BIN_EXE_codex-worker")), args, vars)
}

/// A worker whose child is `codex-mock app-server <child>`.
fn worker(child: &str, extra: &[&str]) -> (Worker, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let command = format!("{} app-server {child}", bin("codex-mock").display());
    let mut args = vec![
        "--codex-cmd",
        &command,
        "--state-dir",
        state.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (spawn_with(&args, &[("CODEX_BUS_SLOT", "0")]), state)
}

fn send(worker: &mut Worker, message: &Value) {
    worker.send(&format!("{message}\n"));
}

fn until(worker: &Worker, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut lines = Vec::new();
    for _ in 0..MAX_LINES {
        let line = worker.json();
        let last = done(&line);
        lines.push(line);
        if last {
            return lines;
        }
    }
    panic!("no matching line in {lines:?}");
}

/// Initializes session `s`, starts a thread and a turn with `text`; returns the thread id.
fn turn(worker: &mut Worker, text: &str) -> String {
    send(
        worker,
        &json!({"id": 1, "method": "initialize", "params": {"clientInfo": {"name": "t", "version": "1"}}, "sessionId": "s"}),
    );
    until(worker, |line| line["id"] == 1);
    send(
        worker,
        &json!({"id": 2, "method": "thread/start", "params": {}, "sessionId": "s"}),
    );
    let lines = until(worker, |line| line["id"] == 2);
    let thread = lines.last().unwrap()["result"]["thread"]["id"].clone();
    send(
        worker,
        &json!({"id": 3, "method": "turn/start", "params": {"threadId": thread, "input": [{"type": "text", "text": text}]}, "sessionId": "s"}),
    );
    until(worker, |line| line["id"] == 3);
    thread.as_str().unwrap().to_owned()
}

#[test]
fn sigterm_still_takes_approval_answers_and_waits_for_the_turn() {
    let (mut worker, _state) = worker("--first-delta-ms 5 --deltas 3 --delta-interval-ms 5", &[]);
    turn(&mut worker, "@approval");
    let lines = until(&worker, |line| {
        line["method"] == "item/commandExecution/requestApproval"
    });
    let request = lines.last().unwrap()["id"].clone();
    worker.sigterm();
    worker.stderr_line_containing("draining");
    // New work is refused while draining…
    send(
        &mut worker,
        &json!({"id": 4, "method": "thread/start", "params": {}, "sessionId": "s"}),
    );
    let refused = until(&worker, |line| line["id"] == 4);
    assert_eq!(
        refused.last().unwrap()["error"]["data"]["reason"],
        "worker_draining"
    );
    // …but the answer to the approval still reaches the child, and the turn completes.
    send(
        &mut worker,
        &json!({"id": request, "result": {"decision": "accept"}, "sessionId": "s"}),
    );
    let lines = until(&worker, |line| line["method"] == "turn/completed");
    assert_eq!(
        lines.last().unwrap()["params"]["turn"]["status"],
        "completed"
    );
    worker.expect_no_more_output();
    worker.expect_exit_code(0);
}

#[test]
fn the_drain_deadline_interrupts_a_turn_that_will_not_finish() {
    let (mut worker, _state) = worker(
        "--first-delta-ms 5 --deltas 100000 --delta-interval-ms 50",
        &["--drain-timeout-sec", "1"],
    );
    turn(&mut worker, "go on forever");
    until(&worker, |line| line["method"] == "item/agentMessage/delta");
    worker.close_stdin();
    let lines = until(&worker, |line| line["method"] == "turn/completed");
    assert_eq!(
        lines.last().unwrap()["params"]["turn"]["status"],
        "interrupted"
    );
    worker.expect_exit_code(0);
}

#[test]
fn a_child_that_keeps_dying_makes_the_worker_exit_3() {
    let state = tempfile::tempdir().unwrap();
    let mut worker = spawn_with(
        &[
            "--codex-cmd",
            "/bin/false",
            "--state-dir",
            state.path().to_str().unwrap(),
            "--max-child-restarts",
            "2",
        ],
        &[],
    );
    send(
        &mut worker,
        &json!({"id": 1, "method": "initialize", "params": {"clientInfo": {"name": "t", "version": "1"}}, "sessionId": "s"}),
    );
    let reply = worker.json();
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["error"]["data"]["reason"], "child_unavailable");
    worker.stderr_line_containing("giving up");
    worker.expect_exit_code(3);
}

#[test]
fn a_listen_flag_in_the_child_command_is_refused_at_start() {
    let mut worker = spawn_with(&["--codex-cmd", "codex app-server --listen off"], &[]);
    worker.stderr_line_containing("--listen");
    worker.expect_exit_code(2);
}
