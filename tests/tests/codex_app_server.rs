//! The daemon driving `codex-worker` over fake `codex app-server` children (`codex-mock
//! app-server`): concurrent isolated sessions, approvals, interrupt, a child crash with restart and
//! lazy resume, and the SIGTERM drain.

use std::thread;

use codex_bus_tests::{
    alive, bin, children_of, recv_until, worker_pool, Bus, BusConfig, Conn, Mode,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// Most lines any one wait in these tests reads before giving up.
const MAX_LINES: usize = 2_000;

/// A bus whose `codex-worker`s bridge onto fake children with `child_args`; the state directory
/// lives as long as the returned guard.
fn bus(instances: u32, child_args: &str, worker_args: &[&str]) -> (Bus, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("state dir");
    let child = format!("{} app-server {child_args}", bin("codex-mock").display());
    let mut args = vec![
        "--codex-cmd",
        &child,
        "--state-dir",
        state.path().to_str().unwrap(),
    ];
    args.extend_from_slice(worker_args);
    let config: BusConfig = worker_pool("codex-worker", instances, &args);
    (Bus::start(&config, Mode::Unix), state)
}

/// Sends `initialize` for `session` and returns its result.
fn initialize(conn: &mut Conn, session: &str) -> Value {
    conn.request(
        json!("init"),
        "initialize",
        json!({"clientInfo": {"name": "test", "version": "1"}}),
        Some(session),
    );
    let reply = recv_until(conn, MAX_LINES, |line| line["id"] == "init");
    reply.last().unwrap()["result"].clone()
}

/// Starts a thread for `session`; returns its id.
fn start_thread(conn: &mut Conn, session: &str) -> String {
    start_thread_lines(conn, session).0
}

/// Starts a thread for `session`; returns its id and the lines up to the reply.
fn start_thread_lines(conn: &mut Conn, session: &str) -> (String, Vec<Value>) {
    conn.request(json!("start"), "thread/start", json!({}), Some(session));
    let lines = recv_until(conn, MAX_LINES, |line| line["id"] == "start");
    let thread = &lines.last().unwrap()["result"]["thread"]["id"];
    (thread.as_str().expect("thread id").to_owned(), lines)
}

/// Starts a turn with `text`; returns its id.
fn start_turn(conn: &mut Conn, session: &str, thread: &str, text: &str) -> String {
    conn.request(
        json!("turn"),
        "turn/start",
        json!({"threadId": thread, "input": [{"type": "text", "text": text}]}),
        Some(session),
    );
    let lines = recv_until(conn, MAX_LINES, |line| line["id"] == "turn");
    let reply = lines.last().unwrap();
    reply["result"]["turn"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("turn/start failed: {reply}"))
        .to_owned()
}

fn is_turn_completed(line: &Value) -> bool {
    line["method"] == "turn/completed"
}

/// The thread a line is about, if any.
fn thread_of(line: &Value) -> Option<&str> {
    line["params"]["threadId"]
        .as_str()
        .or_else(|| line["params"]["thread"]["id"].as_str())
}

#[test]
fn sixteen_sessions_run_concurrent_turns_on_two_workers_in_isolation() {
    let (mut bus, _state) = bus(
        2,
        "--first-delta-ms 40 --deltas 12 --delta-interval-ms 5 --thread-started-first",
        &[],
    );
    bus.wait_workers(2);
    let sessions: Vec<(String, Conn)> = (0..16)
        .map(|n| (format!("session-{n:02}"), bus.connect()))
        .collect();
    let runs: Vec<_> = sessions
        .into_iter()
        .map(|(session, mut conn)| {
            thread::spawn(move || {
                let init = initialize(&mut conn, &session);
                let (thread, mut lines) = start_thread_lines(&mut conn, &session);
                start_turn(&mut conn, &session, &thread, "hello");
                lines.extend(recv_until(&mut conn, MAX_LINES, is_turn_completed));
                (session, conn, init, thread, lines)
            })
        })
        .collect();
    let mut homes = std::collections::BTreeSet::new();
    let mut finished = Vec::new();
    for run in runs {
        let (session, conn, init, thread, lines) = run.join().expect("session thread");
        homes.insert(init["codexHome"].as_str().unwrap().to_owned());
        for line in &lines {
            assert_eq!(line["sessionId"], session.as_str(), "{line}");
            if let Some(other) = thread_of(line) {
                assert_eq!(
                    other, thread,
                    "{session} saw another thread's event: {line}"
                );
            }
            assert_ne!(
                line["method"], "configWarning",
                "global notifications stay in the worker"
            );
        }
        // The child sends thread/started before the thread/start response; with 16 sessions
        // starting threads at once the worker must still attribute each to its creator.
        let started: Vec<_> = lines
            .iter()
            .filter(|line| line["method"] == "thread/started")
            .collect();
        assert_eq!(started.len(), 1, "{session}: {lines:?}");
        let deltas: String = lines
            .iter()
            .filter(|line| line["method"] == "item/agentMessage/delta")
            .map(|line| line["params"]["delta"].as_str().unwrap())
            .collect();
        assert_eq!(deltas.len(), 12 * 16, "{session}: every delta arrived");
        let done = lines.last().unwrap();
        assert_eq!(done["params"]["turn"]["status"], "completed");
        assert_eq!(done["params"]["turn"]["items"][0]["text"], deltas.as_str());
        finished.push((session, conn, thread));
    }
    assert_eq!(
        homes.len(),
        2,
        "the sessions were spread over both workers: {homes:?}"
    );

    // Another session's thread is refused, whichever worker holds it; listings are filtered.
    let victim = finished[0].2.clone();
    let (intruder, conn, _) = &mut finished[1];
    conn.request(
        json!("steal"),
        "turn/start",
        json!({"threadId": victim, "input": []}),
        Some(intruder),
    );
    let reply = recv_until(conn, MAX_LINES, |line| line["id"] == "steal");
    let error = &reply.last().unwrap()["error"];
    assert_eq!(error["code"], -32600);
    assert_eq!(error["message"], "thread not owned by session");
    let (session, conn, own) = &mut finished[2];
    conn.request(
        json!("list"),
        "thread/loaded/list",
        json!({}),
        Some(session),
    );
    let reply = recv_until(conn, MAX_LINES, |line| line["id"] == "list");
    assert_eq!(
        reply.last().unwrap()["result"]["data"],
        json!([own.clone()])
    );
    conn.request(json!("cfg"), "config/value/write", json!({}), Some(session));
    let reply = recv_until(conn, MAX_LINES, |line| line["id"] == "cfg");
    assert_eq!(
        reply.last().unwrap()["error"]["data"]["reason"],
        "method_not_allowed"
    );
}

#[test]
fn approvals_are_answered_declined_and_abandoned() {
    let (mut bus, _state) = bus(
        1,
        "--first-delta-ms 20 --deltas 2 --delta-interval-ms 5",
        &[],
    );
    for (session, decision) in [("approve", "accept"), ("refuse", "decline")] {
        let mut conn = bus.connect();
        initialize(&mut conn, session);
        let thread = start_thread(&mut conn, session);
        start_turn(&mut conn, session, &thread, "run it @approval");
        let lines = recv_until(&mut conn, MAX_LINES, |line| {
            line["method"] == "item/commandExecution/requestApproval"
        });
        let request = lines.last().unwrap();
        assert_eq!(request["sessionId"], session);
        assert_eq!(request["params"]["threadId"], thread.as_str());
        conn.send(
            &json!({"jsonrpc": "2.0", "id": request["id"], "result": {"decision": decision}}),
        );
        let lines = recv_until(&mut conn, MAX_LINES, is_turn_completed);
        let tool = lines
            .iter()
            .find(|line| {
                line["method"] == "item/completed"
                    && line["params"]["item"]["type"] == "commandExecution"
            })
            .expect("the tool item completes");
        let expected = if decision == "accept" {
            "completed"
        } else {
            "declined"
        };
        assert_eq!(tool["params"]["item"]["status"], expected);
        assert!(lines
            .iter()
            .any(|line| line["method"] == "serverRequest/resolved"));
        assert_eq!(
            lines.last().unwrap()["params"]["turn"]["status"],
            "completed"
        );
    }

    // Abandoned: the asked client leaves without answering; the session's other client sees
    // the worker decline it and the turn finish.
    let mut asked_client = bus.connect();
    let mut watcher = bus.connect();
    initialize(&mut asked_client, "gone");
    let thread = start_thread(&mut asked_client, "gone");
    start_turn(&mut asked_client, "gone", &thread, "@approval");
    let lines = recv_until(&mut asked_client, MAX_LINES, |line| {
        line["method"] == "item/commandExecution/requestApproval"
    });
    let request_id = lines.last().unwrap()["id"].clone();
    watcher.request(json!("hello"), "model/list", json!({}), Some("gone"));
    recv_until(&mut watcher, MAX_LINES, |line| line["id"] == "hello");
    drop(asked_client);
    let lines = recv_until(&mut watcher, MAX_LINES, is_turn_completed);
    let resolved = lines
        .iter()
        .find(|line| line["method"] == "serverRequest/resolved")
        .expect("the abandoned approval is resolved");
    assert_eq!(resolved["params"]["threadId"], thread.as_str());
    let tool = lines
        .iter()
        .find(|line| {
            line["method"] == "item/completed"
                && line["params"]["item"]["type"] == "commandExecution"
        })
        .expect("the tool item completes");
    assert_eq!(tool["params"]["item"]["status"], "declined");
    assert!(
        request_id.is_u64(),
        "the bus gives each client its own request ids"
    );
}

#[test]
fn interrupt_ends_a_streaming_turn() {
    let (mut bus, _state) = bus(
        1,
        "--first-delta-ms 10 --deltas 2000 --delta-interval-ms 20",
        &[],
    );
    let mut conn = bus.connect();
    initialize(&mut conn, "s");
    let thread = start_thread(&mut conn, "s");
    let turn = start_turn(&mut conn, "s", &thread, "talk");
    recv_until(&mut conn, MAX_LINES, |line| {
        line["method"] == "item/agentMessage/delta"
    });
    conn.request(
        json!("stop"),
        "turn/interrupt",
        json!({"threadId": thread, "turnId": turn}),
        Some("s"),
    );
    let lines = recv_until(&mut conn, MAX_LINES, is_turn_completed);
    let reply = lines
        .iter()
        .find(|line| line["id"] == "stop")
        .expect("interrupt reply");
    assert_eq!(reply["result"], json!({}));
    let done = lines.last().unwrap();
    assert_eq!(done["params"]["turn"]["id"], turn.as_str());
    assert_eq!(done["params"]["turn"]["status"], "interrupted");
}

#[test]
fn a_child_crash_fails_the_turn_then_the_thread_resumes_and_works() {
    let (mut bus, _state) = bus(
        1,
        "--first-delta-ms 10 --deltas 6 --delta-interval-ms 5",
        &[],
    );
    let worker = bus.wait_workers(1)[0];
    let mut conn = bus.connect();
    initialize(&mut conn, "s");
    let thread = start_thread(&mut conn, "s");
    let first_child = children_of(worker);
    let crashed = start_turn(&mut conn, "s", &thread, "@crash");
    let lines = recv_until(&mut conn, MAX_LINES, is_turn_completed);
    let done = lines.last().unwrap();
    assert_eq!(done["params"]["threadId"], thread.as_str());
    assert_eq!(done["params"]["turn"]["id"], crashed.as_str());
    assert_eq!(done["params"]["turn"]["status"], "failed");
    assert!(
        lines
            .iter()
            .any(|line| line["method"] == "item/agentMessage/delta"),
        "it crashed mid-turn"
    );

    // The next request on the thread restarts nothing by itself: the worker already restarted
    // the child, and resumes the thread in it before forwarding the turn.
    let next = start_turn(&mut conn, "s", &thread, "again");
    assert_ne!(next, crashed);
    let lines = recv_until(&mut conn, MAX_LINES, is_turn_completed);
    assert_eq!(
        lines.last().unwrap()["params"]["turn"]["status"],
        "completed"
    );
    bus.wait_log("resuming thread");
    let second_child = children_of(worker);
    assert_eq!(second_child.len(), 1);
    assert_ne!(first_child, second_child, "a new child serves the thread");
}

#[test]
fn sigterm_lets_active_turns_finish_then_everything_exits() {
    let (mut bus, _state) = bus(
        1,
        "--first-delta-ms 10 --deltas 30 --delta-interval-ms 30",
        &[],
    );
    let worker = bus.wait_workers(1)[0];
    let mut conn = bus.connect();
    initialize(&mut conn, "s");
    let thread = start_thread(&mut conn, "s");
    let child = children_of(worker);
    assert_eq!(child.len(), 1);
    start_turn(&mut conn, "s", &thread, "a long answer");
    recv_until(&mut conn, MAX_LINES, |line| {
        line["method"] == "item/agentMessage/delta"
    });
    bus.signal(Signal::SIGTERM);
    let lines = recv_until(&mut conn, MAX_LINES, is_turn_completed);
    assert_eq!(
        lines.last().unwrap()["params"]["turn"]["status"],
        "completed"
    );
    assert!(bus.wait_exit().success(), "log:\n{}", bus.log());
    assert!(!alive(worker), "worker gone");
    assert!(!alive(child[0]), "child gone");
    assert!(
        bus.log().contains("drain complete"),
        "the worker drained:\n{}",
        bus.log()
    );
}

#[test]
fn a_child_per_session_is_capped_evicted_refused_when_busy_reaped_and_resumed() {
    let child_args = "--first-delta-ms 5 --deltas 2 --delta-interval-ms 1";
    let per_session = ["--child-per-session", "--max-children", "2"];
    // Children never idle out in this part, so what stops them is the cap alone.
    let (mut bus_1, state) = bus(
        1,
        child_args,
        &[&per_session[..], &["--child-idle-sec", "3600"]].concat(),
    );
    let worker = bus_1.wait_workers(1)[0];
    assert!(children_of(worker).is_empty(), "no child before a session");
    let sessions_dir = state.path().join("codex/slot-0/sessions");
    let mut a = bus_1.connect();
    let home_a = initialize(&mut a, "a")["codexHome"].clone();
    let thread_a = start_thread(&mut a, "a");
    start_turn(&mut a, "a", &thread_a, "hello");
    recv_until(&mut a, MAX_LINES, is_turn_completed);
    let child_a = children_of(worker);
    let mut b = bus_1.connect();
    let home_b = initialize(&mut b, "b")["codexHome"].clone();
    let both = children_of(worker);
    assert_eq!(both.len(), 2, "a child each: {both:?}");
    assert!(both.contains(&child_a[0]));
    for home in [&home_a, &home_b] {
        let home = std::path::Path::new(home.as_str().expect("codexHome"));
        let name = home.parent().and_then(|dir| dir.file_name()).unwrap();
        assert_eq!(
            home.parent().and_then(|dir| dir.parent()),
            Some(&*sessions_dir)
        );
        assert!(name
            .to_str()
            .unwrap()
            .bytes()
            .all(|c| c.is_ascii_hexdigit()));
    }
    assert_ne!(home_a, home_b);

    // c finds the cap reached: a, the least recently used idle child, makes room.
    let mut c = bus_1.connect();
    let home_c = initialize(&mut c, "c")["codexHome"].clone();
    assert!(home_c != home_a && home_c != home_b);
    assert!(!alive(child_a[0]), "a's child was evicted");
    assert_eq!(children_of(worker).len(), 2);

    // b and c wait for approvals, so no child is idle: d is refused, retryably.
    let mut asked = Vec::new();
    for (session, conn) in [("b", &mut b), ("c", &mut c)] {
        let thread = start_thread(conn, session);
        start_turn(conn, session, &thread, "run it @approval");
        let lines = recv_until(conn, MAX_LINES, |line| {
            line["method"] == "item/commandExecution/requestApproval"
        });
        asked.push(lines.last().unwrap()["id"].clone());
    }
    let mut d = bus_1.connect();
    d.request(
        json!("init"),
        "initialize",
        json!({"clientInfo": {"name": "test", "version": "1"}}),
        Some("d"),
    );
    let reply = recv_until(&mut d, MAX_LINES, |line| line["id"] == "init");
    let error = &reply.last().unwrap()["error"];
    assert_eq!(error["code"], -32055, "{error}");
    assert_eq!(error["data"]["reason"], "children_busy");
    assert_eq!(error["data"]["retryable"], true);
    for ((session, conn), id) in [("b", &mut b), ("c", &mut c)].into_iter().zip(&asked) {
        conn.send(&json!({"jsonrpc": "2.0", "id": id, "result": {"decision": "accept"}}));
        let lines = recv_until(conn, MAX_LINES, is_turn_completed);
        assert_eq!(lines.last().unwrap()["sessionId"], session);
    }

    // a comes back: a new child in its own CODEX_HOME resumes its thread, and the turn works.
    start_turn(&mut a, "a", &thread_a, "again");
    let lines = recv_until(&mut a, MAX_LINES, is_turn_completed);
    assert_eq!(
        lines.last().unwrap()["params"]["turn"]["status"],
        "completed"
    );
    bus_1.wait_log("resuming thread");
    assert_eq!(children_of(worker).len(), 2);
    drop(bus_1);

    // Idle children are reaped; the session's next turn brings a new child that resumes.
    let (mut bus_2, _state) = bus(
        1,
        child_args,
        &[&per_session[..], &["--child-idle-sec", "2"]].concat(),
    );
    let worker = bus_2.wait_workers(1)[0];
    let mut e = bus_2.connect();
    initialize(&mut e, "e");
    let thread_e = start_thread(&mut e, "e");
    let napping = children_of(worker);
    assert_eq!(napping.len(), 1);
    bus_2.wait_log("idle for 2 s");
    let start = std::time::Instant::now();
    while alive(napping[0]) {
        assert!(
            start.elapsed() < codex_bus_tests::WAIT,
            "the idle child exits"
        );
        thread::sleep(std::time::Duration::from_millis(20));
    }
    start_turn(&mut e, "e", &thread_e, "after the nap");
    let lines = recv_until(&mut e, MAX_LINES, is_turn_completed);
    assert_eq!(
        lines.last().unwrap()["params"]["turn"]["status"],
        "completed"
    );
    let awake = children_of(worker);
    assert!(awake.len() == 1 && awake != napping, "{awake:?}");
}
