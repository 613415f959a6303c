//! The mock worker: hooks, default results and the Codex scenario in the bus's format.

use std::ops::ControlFlow;
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};

use codex_bus_worker_io::render;

use super::{Mock, Stop};
use crate::identity::Identity;
use crate::scenario::knobs::Knobs;

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    knobs: Knobs,
}

const ME: &str = r#""pool":"p","slot":1,"pid":9"#;

fn mock() -> Mock {
    mock_with(&[])
}

fn mock_with(knobs: &[&str]) -> Mock {
    let knobs = Wrapper::try_parse_from(std::iter::once("x").chain(knobs.iter().copied()))
        .unwrap()
        .knobs;
    Mock::new(Identity::new("p", Some(1), 9), knobs)
}

fn run(mock: &mut Mock, line: &str) -> (String, ControlFlow<Stop>) {
    let mut out = Vec::new();
    let flow = mock.handle_line(line.as_bytes(), &mut out);
    (String::from_utf8(out).unwrap(), flow)
}

fn output(mock: &mut Mock, line: &str) -> String {
    let (out, flow) = run(mock, line);
    assert!(flow.is_continue());
    out
}

#[test]
fn default_result_copies_id_method_and_session() {
    let out = output(
        &mut mock(),
        r#"{"id":1.5e3,"method":"a\/b","sessionId":{"k":1}}"#,
    );
    assert_eq!(
        out,
        format!("{{\"jsonrpc\":\"2.0\",\"id\":1.5e3,\"result\":{{{ME},\"method\":\"a\\/b\"}},\"sessionId\":{{\"k\":1}}}}\n")
    );
}

#[test]
fn notifications_and_unknown_responses_produce_nothing() {
    let mut mock = mock();
    assert_eq!(output(&mut mock, r#"{"method":"x","sessionId":"s"}"#), "");
    assert_eq!(output(&mut mock, r#"{"id":5,"result":1}"#), "");
}

#[test]
fn echo_returns_params_verbatim() {
    let out = output(
        &mut mock(),
        r#"{"id":2,"method":"mock/echo","params":[1, 2.50]}"#,
    );
    assert_eq!(
        out,
        format!("{{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{{\"params\":[1, 2.50],{ME}}}}}\n")
    );
}

#[test]
fn a_tag_is_in_default_echo_and_delayed_results() {
    let knobs = Wrapper::try_parse_from(["x"]).unwrap().knobs;
    let mut mock = Mock::new(Identity::new("p", Some(1), 9).tagged(Some("v2")), knobs);
    let tagged = |line: &str| -> Value {
        let reply: Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(reply["result"]["tag"], json!("v2"), "{line}");
        assert_eq!(reply["result"]["pid"], json!(9), "{line}");
        reply
    };
    tagged(&output(&mut mock, r#"{"id":1,"method":"ping"}"#));
    let echo = tagged(&output(
        &mut mock,
        r#"{"id":2,"method":"mock/echo","params":{"a":1}}"#,
    ));
    assert_eq!(echo["result"]["params"], json!({"a": 1}));
    let held = output(
        &mut mock,
        r#"{"id":3,"method":"mock/delay","params":{"ms":0}}"#,
    );
    assert_eq!(held, "");
    let mut out = Vec::new();
    let flow = mock.release_due(mock.next_deadline().unwrap(), &mut out);
    assert!(flow.is_continue());
    let delayed = tagged(&String::from_utf8(out).unwrap());
    assert_eq!(delayed["id"], json!(3));
}

#[test]
fn delay_holds_the_reply_until_due() {
    let mut mock = mock();
    assert_eq!(
        output(
            &mut mock,
            r#"{"id":1,"method":"mock/delay","params":{"ms":0}}"#
        ),
        ""
    );
    assert!(mock.has_pending());
    let mut out = Vec::new();
    let flow = mock.release_due(mock.next_deadline().unwrap(), &mut out);
    assert!(flow.is_continue());
    assert!(String::from_utf8(out)
        .unwrap()
        .starts_with("{\"jsonrpc\":\"2.0\",\"id\":1,"));
    assert!(!mock.has_pending());
}

#[test]
fn a_cancellation_answers_its_held_delay_at_once() {
    let mut mock = mock();
    for id in [1, 2, 3] {
        let line = format!(r#"{{"id":{id},"method":"mock/delay","params":{{"ms":60000}}}}"#);
        assert_eq!(output(&mut mock, &line), "");
    }
    let lsp = output(
        &mut mock,
        r#"{"method":"$/cancelRequest","params":{"id":2},"sessionId":"s"}"#,
    );
    assert_eq!(
        lsp,
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"error\":{\"code\":-32800,\"message\":\"Request cancelled\",\"data\":\"cancelled\"},\"sessionId\":\"s\"}\n"
    );
    let mcp = output(
        &mut mock,
        r#"{"method":"notifications/cancelled","params":{"requestId":3}}"#,
    );
    assert!(mcp.starts_with("{\"jsonrpc\":\"2.0\",\"id\":3,"), "{mcp}");
    for ignored in [
        r#"{"method":"$/cancelRequest","params":{"id":2}}"#,
        r#"{"method":"$/cancelRequest","params":{"id":9}}"#,
        r#"{"method":"$/cancelRequest"}"#,
    ] {
        assert_eq!(output(&mut mock, ignored), "", "{ignored}");
    }
    assert!(mock.has_pending(), "request 1 is still held");
}

#[test]
fn hooks_with_bad_params_answer_invalid_params() {
    let mut mock = mock();
    for line in [
        r#"{"id":1,"method":"mock/delay"}"#,
        r#"{"id":1,"method":"mock/exit","params":{"code":256}}"#,
        r#"{"id":1,"method":"mock/notify","params":{"count":-1}}"#,
        r#"{"id":1,"method":"mock/stderr","params":{"text":1}}"#,
    ] {
        let out = output(&mut mock, line);
        assert!(out.contains("\"code\":-32602"), "{line}: {out}");
    }
    assert!(!mock.has_pending());
}

#[test]
fn exit_and_crash_stop_processing() {
    let mut mock = mock();
    let (out, flow) = run(
        &mut mock,
        r#"{"id":1,"method":"mock/exit","params":{"code":3}}"#,
    );
    assert_eq!(
        (out.as_str(), flow),
        ("", ControlFlow::Break(Stop::Exit(3)))
    );
    let (out, flow) = run(&mut mock, r#"{"id":1,"method":"mock/crash"}"#);
    assert_eq!((out.as_str(), flow), ("", ControlFlow::Break(Stop::Crash)));
}

#[test]
fn exit_zero_is_a_plain_exit() {
    let (out, flow) = run(
        &mut mock(),
        r#"{"id":1,"method":"mock/exit","params":{"code":0}}"#,
    );
    assert_eq!(
        (out.as_str(), flow),
        ("", ControlFlow::Break(Stop::Exit(0)))
    );
}

#[test]
fn close_stdout_stops_reading_the_batch_without_a_reply() {
    let (out, flow) = run(&mut mock(), r#"{"id":1,"method":"mock/close-stdout"}"#);
    assert_eq!(
        (out.as_str(), flow),
        ("", ControlFlow::Break(Stop::CloseStdout))
    );
}

#[test]
fn big_pads_its_result_with_the_id_first_or_last() {
    let mut mock = mock();
    assert_eq!(
        output(
            &mut mock,
            r#"{"id":1,"method":"mock/big","params":{"bytes":3}}"#
        ),
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"pad\":\"xxx\"}}\n"
    );
    assert_eq!(
        output(
            &mut mock,
            r#"{"id":"b","method":"mock/big","params":{"bytes":2,"idLast":true},"sessionId":"s"}"#
        ),
        "{\"jsonrpc\":\"2.0\",\"result\":{\"pad\":\"xx\"},\"sessionId\":\"s\",\"id\":\"b\"}\n"
    );
    assert_eq!(
        output(&mut mock, r#"{"method":"mock/big","params":{"bytes":2}}"#),
        ""
    );
    let out = output(&mut mock, r#"{"id":2,"method":"mock/big"}"#);
    assert!(out.contains("-32602"), "{out}");
}

#[test]
fn segv_and_hang_stop_without_a_reply() {
    let mut mock = mock();
    for (line, stop) in [
        (r#"{"id":1,"method":"mock/segv"}"#, Stop::Segv),
        (
            r#"{"method":"mock/segv","params":{"ignored":1}}"#,
            Stop::Segv,
        ),
        (
            r#"{"id":2,"method":"mock/hang","sessionId":"s"}"#,
            Stop::Hang,
        ),
        (r#"{"method":"mock/hang"}"#, Stop::Hang),
    ] {
        let (out, flow) = run(&mut mock, line);
        assert_eq!(
            (out.as_str(), flow),
            ("", ControlFlow::Break(stop)),
            "{line}"
        );
    }
    assert!(!mock.is_stubborn());
}

#[test]
fn stubborn_replies_and_stays_stubborn() {
    let mut mock = mock();
    assert!(!mock.is_stubborn());
    let out = output(
        &mut mock,
        r#"{"id":1,"method":"mock/stubborn","sessionId":"s"}"#,
    );
    assert_eq!(
        out,
        format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{{ME},\"method\":\"mock/stubborn\"}},\"sessionId\":\"s\"}}\n")
    );
    assert!(mock.is_stubborn());
    // Nothing undoes it, and it holds no reply back: the worker has nothing pending.
    assert_eq!(output(&mut mock, r#"{"method":"mock/stubborn"}"#), "");
    assert!(mock.is_stubborn());
    assert!(!mock.has_pending());
}

#[test]
fn notify_emits_events_then_replies() {
    let out = output(
        &mut mock(),
        r#"{"id":1,"method":"mock/notify","params":{"count":2},"sessionId":"s"}"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0],
        r#"{"jsonrpc":"2.0","method":"mock/event","params":{"seq":0},"sessionId":"s"}"#
    );
    assert_eq!(
        lines[1],
        r#"{"jsonrpc":"2.0","method":"mock/event","params":{"seq":1},"sessionId":"s"}"#
    );
    assert!(lines[2].starts_with(r#"{"jsonrpc":"2.0","id":1,"result":"#));
}

#[test]
fn ask_round_trip_answers_with_client_outcome() {
    let mut mock = mock();
    let out = output(
        &mut mock,
        r#"{"id":"a","method":"mock/ask","sessionId":"s"}"#,
    );
    assert_eq!(
        out,
        "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"mock/approval\",\"params\":{\"question\":\"Allow the mock action?\"},\"sessionId\":\"s\"}\n"
    );
    assert_eq!(mock.unanswered_asks(), 1);
    let out = output(&mut mock, r#"{"id":0,"error":{"code":1}}"#);
    assert_eq!(
        out,
        format!("{{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{{\"answer\":{{\"code\":1}},{ME}}},\"sessionId\":\"s\"}}\n")
    );
    assert_eq!(mock.unanswered_asks(), 0);
}

#[test]
fn garbage_precedes_the_reply() {
    let out = output(&mut mock(), r#"{"id":1,"method":"mock/garbage"}"#);
    assert!(out.starts_with("this is not json\n{\"jsonrpc\""));
}

#[test]
fn bad_lines_get_error_replies() {
    let mut mock = mock();
    assert_eq!(
        output(&mut mock, "not json").as_bytes(),
        render::PARSE_ERROR
    );
    assert_eq!(
        output(&mut mock, r#"{"id":4,"sessionId":"s"}"#),
        "{\"jsonrpc\":\"2.0\",\"id\":4,\"error\":{\"code\":-32600,\"message\":\"Invalid Request\"},\"sessionId\":\"s\"}\n"
    );
}

/// Every line of `out` as JSON.
fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Releases everything due, as if time passed.
fn release_all(mock: &mut Mock) -> (Vec<Value>, ControlFlow<Stop>) {
    let mut out = Vec::new();
    let mut flow = ControlFlow::Continue(());
    while let Some(due) = mock.next_deadline() {
        flow = mock.release_due(due + Duration::from_millis(1), &mut out);
        if flow.is_break() {
            break;
        }
    }
    (lines(&String::from_utf8(out).unwrap()), flow)
}

#[test]
fn codex_turns_stream_in_the_bus_format() {
    let mut mock = mock_with(&[
        "--latency-scale",
        "0",
        "--deltas",
        "2",
        "--clock",
        "virtual",
    ]);
    let init = lines(&output(
        &mut mock,
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{},"sessionId":"s"}"#,
    ));
    assert_eq!(init[0]["result"]["platformFamily"], "unix");
    let started = lines(&output(
        &mut mock,
        r#"{"jsonrpc":"2.0","id":1,"method":"thread/start","sessionId":"s"}"#,
    ));
    assert_eq!(started[0]["id"], 1);
    assert_eq!(started[1]["method"], "thread/started");
    let thread = started[0]["result"]["thread"]["id"].clone();
    let turn = json!({"jsonrpc":"2.0","id":2,"method":"turn/start","params":{"threadId":thread,"input":[{"type":"text","text":"hi"}]},"sessionId":"s"});
    let reply = lines(&output(&mut mock, &turn.to_string()));
    assert_eq!(reply[0]["result"]["turn"]["status"], "inProgress");
    assert!(mock.has_pending(), "the turn keeps the worker alive");
    let (events, flow) = release_all(&mut mock);
    assert!(flow.is_continue());
    let methods: Vec<&str> = events
        .iter()
        .map(|line| line["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "item/started",
            "item/agentMessage/delta",
            "item/agentMessage/delta",
            "item/completed",
            "thread/tokenUsage/updated",
            "thread/status/changed",
            "turn/completed"
        ]
    );
    for line in reply.iter().chain(&events) {
        assert_eq!(line["jsonrpc"], "2.0");
        assert_eq!(line["sessionId"], "s");
    }
    assert!(events[1]["emittedAtMs"].as_u64().unwrap() >= 1_700_000_000_000);
    assert!(!mock.has_pending());
}

#[test]
fn scenario_approvals_share_ids_with_mock_ask_and_a_crash_stops() {
    let mut mock = mock_with(&["--latency-scale", "0", "--deltas", "2"]);
    let asked = lines(&output(
        &mut mock,
        r#"{"id":"a","method":"mock/ask","sessionId":"s"}"#,
    ));
    assert_eq!(asked[0]["id"], 0);
    let started = lines(&output(
        &mut mock,
        r#"{"id":1,"method":"thread/start","sessionId":"s"}"#,
    ));
    let thread = started[0]["result"]["thread"]["id"].clone();
    let turn = json!({"id":2,"method":"turn/start","params":{"threadId":thread,"input":[{"type":"text","text":"@approval"}]},"sessionId":"s"});
    output(&mut mock, &turn.to_string());
    let (events, _) = release_all(&mut mock);
    let request = events.last().unwrap();
    assert_eq!(request["method"], "item/commandExecution/requestApproval");
    assert_eq!(request["id"], 1, "one id space with mock/ask");
    let resolved = lines(&output(
        &mut mock,
        r#"{"id":1,"result":{"decision":"decline"}}"#,
    ));
    assert_eq!(resolved[1]["params"]["item"]["status"], "declined");
    let (events, _) = release_all(&mut mock);
    assert_eq!(
        events.last().unwrap()["params"]["turn"]["status"],
        "completed"
    );
    let answered = lines(&output(&mut mock, r#"{"id":0,"result":true}"#));
    assert_eq!(answered[0]["id"], "a");

    let crash = json!({"id":3,"method":"turn/start","params":{"threadId":thread,"input":[{"type":"text","text":"@crash"}]},"sessionId":"s"});
    output(&mut mock, &crash.to_string());
    let (_, flow) = release_all(&mut mock);
    assert_eq!(flow, ControlFlow::Break(Stop::Crash));
}

#[test]
fn unimplemented_codex_methods_get_the_default_result() {
    let out = lines(&output(
        &mut mock(),
        r#"{"id":1,"method":"config/read","sessionId":"s"}"#,
    ));
    assert_eq!(out[0]["result"]["method"], "config/read");
    let out = lines(&output(
        &mut mock(),
        r#"{"id":1,"method":"turn/start","params":{"threadId":"none"},"sessionId":"s"}"#,
    ));
    assert_eq!(out[0]["error"]["message"], "thread not found: none");
}
