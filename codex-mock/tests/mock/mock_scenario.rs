//! The mock worker playing Codex turns: an exact transcript on the virtual clock, in the bus's
//! format, and a worker that waits for running turns before exiting at end of input.

use serde_json::Value;

use crate::support::{self, Worker};

fn mock(args: &[&str]) -> Worker {
    support::spawn_with(args, &[("CODEX_BUS_POOL", "p"), ("CODEX_BUS_SLOT", "0")])
}

#[test]
fn the_virtual_clock_gives_an_exact_transcript() {
    let mut worker = mock(&[
        "--clock",
        "virtual",
        "--latency-scale",
        "0",
        "--seed",
        "3",
        "--deltas",
        "2",
        "--delta-bytes",
        "6",
    ]);
    worker.send(concat!(
        r#"{"jsonrpc":"2.0","id":1,"method":"thread/start","params":{"cwd":"/w"},"sessionId":"s"}"#,
        "\n",
        r#"{"jsonrpc":"2.0","id":2,"method":"turn/start","params":{"threadId":"thr_0001","input":[{"type":"text","text":"hi"}]},"sessionId":"s"}"#,
        "\n"
    ));
    let mut transcript = Vec::new();
    loop {
        let line = worker.line();
        let done = serde_json::from_str::<Value>(&line).unwrap()["method"] == "turn/completed";
        transcript.push(line);
        if done {
            break;
        }
    }
    let expected: Vec<&str> = include_str!("golden/mock_backend_turn.ndjson")
        .lines()
        .collect();
    assert_eq!(transcript, expected);
}

#[test]
fn end_of_input_waits_for_running_turns() {
    let mut worker = mock(&[
        "--first-delta-ms",
        "50",
        "--deltas",
        "3",
        "--delta-interval-ms",
        "20",
    ]);
    worker.send(r#"{"id":1,"method":"thread/start","sessionId":"s"}"#);
    worker.send("\n");
    let started: Value = worker.json();
    let thread = started["result"]["thread"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    worker.send(&format!(
        "{{\"id\":2,\"method\":\"turn/start\",\"params\":{{\"threadId\":\"{thread}\",\"input\":[]}},\"sessionId\":\"s\"}}\n"
    ));
    worker.close_stdin();
    let mut last = Value::Null;
    for _ in 0..100 {
        last = worker.json();
        if last["method"] == "turn/completed" {
            break;
        }
    }
    assert_eq!(last["params"]["turn"]["status"], "completed");
    worker.expect_no_more_output();
    worker.expect_exit_code(0);
}
