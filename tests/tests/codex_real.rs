//! The real-Codex tier: the daemon, `codex-worker` and the real `codex app-server` (npm
//! `@openai/codex@0.169.0`), offline against the loopback mock of the Responses API in `codex_bus_tests::codex`.
//! Two sessions each run `initialize`, `thread/start` and one `turn/start` streamed to
//! `turn/completed`.
//!
//! A tier (see `codex_bus_tests`): the test is `#[ignore]`d with the reason, so without Codex the
//! runner reports it as ignored; `CODEX_REAL=1 bash .ci/run` installs Codex and runs it with
//! `--ignored`. Codex is found through `CODEX_BIN`, else under `~/.cache/codex-npm`. Where
//! `unshare -n` works the test re-runs itself in a network namespace that has only loopback;
//! elsewhere every proxy variable points at a closed loopback port, so Codex's own startup
//! traffic (plugin sync) cannot leave the machine either.

use std::path::Path;
use std::time::Instant;

use codex_bus_tests::codex::{
    require_codex, rerun_offline, worker_pool_config, ResponsesServer, ANSWER,
};
use codex_bus_tests::{recv_until, say, Bus, Conn, Mode};
use serde_json::json;

/// Most lines one wait reads.
const MAX_LINES: usize = 5_000;

#[test]
#[ignore = "tier real-codex: needs a codex binary (CODEX_BIN or ~/.cache/codex-npm); `CODEX_REAL=1 bash .ci/run` installs @openai/codex@0.169.0 and runs it"]
fn real_codex_serves_two_sessions_through_the_bus() {
    let codex = require_codex();
    if rerun_offline("real_codex_serves_two_sessions_through_the_bus", &codex) {
        return;
    }
    run(&codex);
}

fn run(codex: &Path) {
    let started = Instant::now();
    let server = ResponsesServer::start();
    let state = tempfile::tempdir().expect("state dir");
    let config = worker_pool_config(codex, &server, state.path(), &[]);
    let mut bus = Bus::start(&config, Mode::Unix);
    let sessions: Vec<_> = ["alice", "bob"]
        .into_iter()
        .map(|session| (session, bus.connect()))
        .collect();
    let runs: Vec<_> = sessions
        .into_iter()
        .map(|(session, conn)| std::thread::spawn(move || session_turn(session, conn)))
        .collect();
    let mut threads = Vec::new();
    for run in runs {
        let (session, thread, summary) = run.join().expect("session");
        say(&format!("real Codex tier: {session}: {summary}"));
        threads.push(thread);
    }
    assert_ne!(threads[0], threads[1], "each session has its own thread");
    assert!(server.requests() >= 2, "both turns reached the mock model");
    say(&format!(
        "real Codex tier PASSED in {} ms ({} model requests to the loopback mock)",
        started.elapsed().as_millis(),
        server.requests()
    ));
}

/// One session's whole exchange; returns its name, thread id and a one-line summary.
fn session_turn(session: &'static str, mut conn: Conn) -> (&'static str, String, String) {
    let begun = Instant::now();
    conn.request(
        json!(1),
        "initialize",
        json!({"clientInfo": {"name": "bus_test", "version": "1"}}),
        Some(session),
    );
    let init = recv_until(&mut conn, MAX_LINES, |line| line["id"] == 1);
    let user_agent = init.last().unwrap()["result"]["userAgent"].clone();
    assert!(
        user_agent.as_str().is_some_and(|ua| ua.contains("0.169.0")),
        "{user_agent}"
    );
    conn.send(&json!({"jsonrpc": "2.0", "method": "initialized", "sessionId": session}));
    conn.request(json!(2), "thread/start", json!({}), Some(session));
    let lines = recv_until(&mut conn, MAX_LINES, |line| line["id"] == 2);
    let thread = lines.last().unwrap()["result"]["thread"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("thread/start failed: {:?}", lines.last()))
        .to_owned();
    conn.request(
        json!(3),
        "turn/start",
        json!({"threadId": thread, "input": [{"type": "text", "text": "say hello"}]}),
        Some(session),
    );
    let lines = recv_until(&mut conn, MAX_LINES, |line| {
        line["method"] == "turn/completed"
    });
    for line in &lines {
        assert_eq!(line["sessionId"], session, "{line}");
        if let Some(other) = line["params"]["threadId"].as_str() {
            assert_eq!(other, thread, "{session} saw another thread's event");
        }
    }
    let reply = lines
        .iter()
        .find(|line| line["id"] == 3)
        .expect("turn/start reply");
    assert_eq!(reply["result"]["turn"]["status"], "inProgress", "{reply}");
    let text: String = lines
        .iter()
        .filter(|line| line["method"] == "item/agentMessage/delta")
        .map(|line| line["params"]["delta"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(text, ANSWER.concat());
    let done = lines.last().unwrap();
    assert_eq!(done["params"]["turn"]["status"], "completed", "{done}");
    let methods: Vec<&str> = lines
        .iter()
        .filter_map(|line| line["method"].as_str())
        .collect();
    let summary = format!(
        "thread {thread}, {} lines, {} deltas \"{text}\", turn/completed status {} after {} ms; methods: {}",
        lines.len(),
        methods.iter().filter(|m| **m == "item/agentMessage/delta").count(),
        done["params"]["turn"]["status"],
        begun.elapsed().as_millis(),
        dedup(&methods).join(" → ")
    );
    (session, thread, summary)
}

/// Consecutive duplicates collapsed, so the delta stream shows once.
fn dedup<'a>(methods: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for method in methods {
        if out.last() != Some(method) {
            out.push(method);
        }
    }
    out
}
