//! Requests whose reply cannot be delivered the ordinary way still get exactly one reply, promptly,
//! with a stable reason (issue 11): a worker that closes its stdout but keeps running, a client
//! that closes its input while a worker waits on its answer, duplicate members in a request.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use codex_bus_tests::{alive, reason, Bus, BusConfig, Mode, WAIT};
use serde_json::{json, Value};

/// Every JSON line of `text`.
fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[test]
fn a_worker_that_closes_its_stdout_is_killed_its_requests_answered_and_it_restarts() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let mut conn = bus.connect();
    conn.request(json!(0), "ping", Value::Null, Some("s"));
    let pid = conn.recv()["result"]["pid"].as_i64().unwrap();
    conn.request(json!(1), "mock/delay", json!({"ms": 60_000}), Some("s"));
    conn.request(json!(2), "mock/close-stdout", Value::Null, Some("s"));
    let started = Instant::now();
    let mut failed = HashSet::new();
    for _ in 0..2 {
        let reply = conn.recv();
        assert_eq!(reason(&reply), Some("worker_exited"), "{reply}");
        assert!(failed.insert(reply["id"].as_i64().unwrap()));
    }
    assert_eq!(failed, HashSet::from([1, 2]));
    // Promptly: the grace for a worker that is exiting anyway, not a request timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    bus.wait_log("worker closed its stdout but kept running");
    assert!(!alive(pid as u32), "the worker was killed");
    conn.request(json!(3), "ping", Value::Null, Some("s"));
    let reply = conn.recv();
    assert_eq!(reply["id"], json!(3), "{reply}");
    assert_ne!(
        reply["result"]["pid"].as_i64().unwrap(),
        pid,
        "a new process"
    );
}

#[test]
fn a_client_that_closes_its_input_before_the_approval_still_gets_its_reply_and_the_bus_exits() {
    // The issue's repro: `printf '<mock/ask>\n' | codex-stdio-bus` hung forever.
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Stdio);
    let mut conn = bus.connect();
    conn.send_raw(
        b"{\"jsonrpc\":\"2.0\",\"id\":\"ask\",\"method\":\"mock/ask\",\"sessionId\":\"a\"}\n",
    );
    conn.close_send();
    let out = lines(&conn.read_to_end());
    let reply = out
        .iter()
        .find(|line| line["id"] == json!("ask"))
        .unwrap_or_else(|| panic!("no reply to ask: {out:?}"));
    let answer = &reply["result"]["answer"];
    assert_eq!(
        reason(&json!({"error": answer})),
        Some("client_disconnected"),
        "{reply}"
    );
    assert!(bus.wait_exit().success());
}

#[test]
fn a_client_that_closes_its_input_after_the_approval_arrived_refuses_it_at_once() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Stdio);
    let mut conn = bus.connect();
    conn.request(json!("ask"), "mock/ask", Value::Null, Some("a"));
    let approval = conn.recv();
    assert_eq!(approval["method"], json!("mock/approval"), "{approval}");
    conn.close_send();
    let out = lines(&conn.read_to_end());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["id"], json!("ask"));
    let answer = &out[0]["result"]["answer"];
    assert_eq!(
        reason(&json!({"error": answer})),
        Some("client_disconnected"),
        "{out:?}"
    );
    assert!(bus.wait_exit().success());
}

#[test]
fn a_socket_client_that_half_closes_gets_its_reply_then_eof_and_the_bus_keeps_serving() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Unix);
    let mut stream = UnixStream::connect(bus.socket_path()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"mock/ask\",\"sessionId\":\"h\"}\n")
        .unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("EOF in time");
    let out = lines(&text);
    let reply = out
        .iter()
        .find(|line| line["id"] == json!(9))
        .unwrap_or_else(|| panic!("no reply to 9: {out:?}"));
    let answer = &reply["result"]["answer"];
    assert_eq!(
        reason(&json!({"error": answer})),
        Some("client_disconnected"),
        "{reply}"
    );
    // The worker and the daemon are unaffected.
    let mut conn = bus.connect();
    conn.request(json!(10), "ping", Value::Null, Some("h"));
    assert_eq!(conn.recv()["id"], json!(10));
}

#[test]
fn duplicate_method_params_or_session_members_get_one_reply_with_the_id() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let mut conn = bus.connect();
    let cases: [(&str, &[u8]); 4] = [
        ("method", br#"{"jsonrpc":"2.0","id":1,"method":"x","method":"mock/echo"}"#),
        ("params", br#"{"jsonrpc":"2.0","id":2,"method":"mock/echo","params":{"a":1},"params":[2]}"#),
        ("session", br#"{"jsonrpc":"2.0","id":3,"method":"mock/echo","sessionId":"a","sessionId":"b"}"#),
        ("escaped", br#"{"jsonrpc":"2.0","id":4,"method":"x","\u006dethod":"mock/echo","params":null,"params":7}"#),
    ];
    for (what, line) in cases {
        conn.send_raw(&[line, &b"\n"[..]].concat());
        let reply = conn.recv();
        assert!(reply["error"].is_null(), "{what}: {reply}");
        assert_eq!(reply["result"]["slot"], json!(0), "{what}: {reply}");
        match what {
            "method" => assert_eq!(reply["id"], json!(1)),
            "params" => {
                assert_eq!(reply["id"], json!(2));
                assert_eq!(reply["result"]["params"], json!([2]));
            }
            "session" => {
                assert_eq!(reply["id"], json!(3));
                assert_eq!(reply["sessionId"], json!("b"));
            }
            _ => {
                assert_eq!(reply["id"], json!(4));
                assert_eq!(reply["result"]["params"], json!(7));
            }
        }
    }
}

#[test]
fn a_reply_over_max_worker_line_is_answered_reply_too_large_wherever_its_id_is() {
    let config = BusConfig::mock(1).limit("max_worker_line", 4096);
    let mut bus = Bus::start(&config, Mode::Tcp);
    let mut conn = bus.connect();
    conn.request(json!(0), "ping", Value::Null, Some("s"));
    let pid = conn.recv()["result"]["pid"].clone();
    // The id first, last (after a body far larger than the limit and than one read), and a reply
    // that fits, each answered in order.
    let cases = [
        (json!("first"), json!({"bytes": 10_000})),
        (json!({"x": [1]}), json!({"bytes": 300_000, "idLast": true})),
        (json!(7), json!({"bytes": 100})),
    ];
    for (id, params) in cases {
        conn.request(id.clone(), "mock/big", params, Some("s"));
    }
    for reply in [conn.recv(), conn.recv()] {
        assert_eq!(reason(&reply), Some("reply_too_large"), "{reply}");
        assert_eq!(reply["error"]["code"], json!(-32024));
        assert_eq!(reply["error"]["data"]["retryable"], json!(false));
        assert!(
            reply["id"] == json!("first") || reply["id"] == json!({"x": [1]}),
            "{reply}"
        );
    }
    let fits = conn.recv();
    assert_eq!(fits["id"], json!(7), "{fits}");
    assert_eq!(fits["result"]["pad"].as_str().unwrap().len(), 100);
    // The worker was not blamed for more than its reply.
    conn.request(json!(8), "ping", Value::Null, Some("s"));
    assert_eq!(
        conn.recv()["result"]["pid"],
        pid,
        "same worker still serving"
    );
    bus.wait_log("worker line over max_worker_line skipped");
}
