//! Issue 12's hijack, replayed with authentication on: tenant b names tenant a's session id (the
//! attack that used to take over a's events and approvals) and gets none of a's events or approval
//! requests, cannot answer them, and its hit-and-run silences nothing; a's turn streams to the
//! end. With the mock worker, and through `codex-worker` over a fake `codex app-server` child.

use codex_bus_tests::{bin, recv_until, sha256_hex, worker_pool, Bus, BusConfig, Conn, Mode};
use serde_json::{json, Value};

/// Most lines any one wait reads before giving up.
const MAX_LINES: usize = 2_000;

const TOKEN_A: &str = "tenant-a-token-5b0e7a9c1d3f";
const TOKEN_A2: &str = "tenant-a-second-window-8e21";
const TOKEN_B: &str = "tenant-b-token-f4c2a6e8b0d1";

/// The `auth` section: tokens for tenant a (two subjects) and tenant b.
fn auth() -> Value {
    json!({"tokens": [
        {"tenant": "a", "sha256": sha256_hex(TOKEN_A), "subject": "alice"},
        {"tenant": "a", "sha256": sha256_hex(TOKEN_A2), "subject": "alice-2"},
        {"tenant": "b", "sha256": sha256_hex(TOKEN_B), "subject": "bob"},
    ]})
}

/// A TCP connection authenticated with `token`.
fn login(bus: &mut Bus, token: &str) -> Conn {
    let mut conn = bus.connect();
    conn.request(
        json!("auth"),
        "bus/authenticate",
        json!({"token": token}),
        None,
    );
    let reply = conn.recv();
    assert!(reply["result"]["tenant"].is_string(), "{reply}");
    conn
}

fn request(conn: &mut Conn, id: &str, method: &str, params: Value, session: &str) -> Vec<Value> {
    conn.request(json!(id), method, params, Some(session));
    recv_until(conn, MAX_LINES, |line| line["id"] == id)
}

/// Lines a connection has received, up to and including the reply to a ping on its own session:
/// anything of another session's that reached it would come before that reply.
fn drain_with_ping(conn: &mut Conn, session: &str) -> Vec<Value> {
    conn.request(json!("probe"), "ping", Value::Null, Some(session));
    recv_until(conn, MAX_LINES, |line| line["id"] == "probe")
}

/// The attack, on whatever pool `bus` runs: a starts a turn that asks for approval on `s1`; b,
/// and a second window of a's that leaves at once, send lines naming `s1` meanwhile.
fn hijack_is_refused(bus: &mut Bus) {
    let mut a = login(bus, TOKEN_A);
    let mut b = login(bus, TOKEN_B);
    request(
        &mut a,
        "init",
        "initialize",
        json!({"clientInfo": {"name": "a", "version": "1"}}),
        "s1",
    );
    let started = request(&mut a, "start", "thread/start", json!({}), "s1");
    let thread = started.last().unwrap()["result"]["thread"]["id"]
        .as_str()
        .expect("a's thread")
        .to_owned();
    b.request(
        json!("b-init"),
        "initialize",
        json!({"clientInfo": {"name": "b", "version": "1"}}),
        Some("s1"),
    );
    recv_until(&mut b, MAX_LINES, |line| line["id"] == "b-init");
    // a's turn asks for approval, then streams; its first event comes 400 ms after it starts, so
    // the attack below lands while the turn runs, as in the bug report.
    let turn = request(
        &mut a,
        "turn",
        "turn/start",
        json!({"threadId": thread, "input": [{"type": "text",
            "text": "run it @approval @first-delta-ms=400 @deltas=10 @interval-ms=10"}]}),
        "s1",
    );
    assert!(
        turn.last().unwrap()["result"]["turn"]["id"].is_string(),
        "{turn:?}"
    );
    // The attack: one line naming a's session (an unknown notification was enough)...
    b.send(&json!({"jsonrpc": "2.0", "method": "hello", "sessionId": "s1"}));
    // ...and hit-and-runs: b's, and one of a's own second window.
    {
        let mut hit = login(bus, TOKEN_B);
        hit.send(&json!({"jsonrpc": "2.0", "method": "hello", "sessionId": "s1"}));
        drain_with_ping(&mut hit, "s1");
        let mut window = login(bus, TOKEN_A2);
        window.send(&json!({"jsonrpc": "2.0", "method": "hello", "sessionId": "s1"}));
        drain_with_ping(&mut window, "s1");
    }
    let lines = recv_until(&mut a, MAX_LINES, |line| {
        line["method"] == "item/commandExecution/requestApproval"
    });
    let ask = lines.last().unwrap().clone();
    assert_eq!(ask["sessionId"], "s1", "a sees its own session id: {ask}");
    // b answers with the id a was given: b was asked nothing, so it reaches no worker.
    b.send(&json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"decision": "accept"}}));
    a.send(&json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"decision": "decline"}}));
    let rest = recv_until(&mut a, MAX_LINES, |line| line["method"] == "turn/completed");
    let all: Vec<&Value> = lines.iter().chain(&rest).collect();
    assert!(all
        .iter()
        .all(|l| l["sessionId"] == "s1" || l.get("sessionId").is_none()));
    let turn_completed = rest.last().unwrap();
    assert_eq!(turn_completed["params"]["turn"]["status"], "completed");
    let tool = rest
        .iter()
        .find(|l| {
            l["method"] == "item/completed" && l["params"]["item"]["type"] == "commandExecution"
        })
        .expect("the tool item completes");
    assert_eq!(
        tool["params"]["item"]["status"], "declined",
        "a's answer, not b's"
    );
    let deltas = all
        .iter()
        .filter(|l| l["method"] == "item/agentMessage/delta")
        .count();
    assert!(deltas > 0, "a's turn streamed to it: {all:?}");

    // b received none of it: only its own replies, on its own session.
    let seen = drain_with_ping(&mut b, "s1");
    assert!(
        seen.iter().all(|l| l["id"] == "probe"),
        "b got nothing of a's: {seen:?}"
    );
    assert!(
        seen.iter().all(|l| !l.to_string().contains(&thread)),
        "nor a's thread id: {seen:?}"
    );
    // b's own s1 is another session: a's thread does not exist there.
    let foreign = request(
        &mut b,
        "read",
        "thread/read",
        json!({"threadId": thread}),
        "s1",
    );
    assert!(foreign.last().unwrap()["error"].is_object(), "{foreign:?}");
}

#[test]
fn with_the_mock_worker_a_session_id_is_no_password() {
    let config = BusConfig::mock(2).section("auth", auth());
    let mut bus = Bus::start(&config, Mode::Tcp);
    hijack_is_refused(&mut bus);
}

#[test]
fn through_codex_worker_a_session_id_is_no_password() {
    let state = tempfile::tempdir().expect("state dir");
    let child = format!(
        "{} app-server --first-delta-ms 10 --deltas 4 --delta-interval-ms 2",
        bin("codex-mock").display()
    );
    let args = [
        "--codex-cmd",
        &child,
        "--state-dir",
        state.path().to_str().unwrap(),
    ];
    let config = worker_pool("codex-worker", 1, &args).section("auth", auth());
    let mut bus = Bus::start(&config, Mode::Tcp);
    hijack_is_refused(&mut bus);
}

#[test]
fn the_audit_trail_names_who_authenticated_and_why_others_were_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let config = BusConfig::mock(1)
        .section("auth", auth())
        .section("audit", json!({"path": path}));
    let mut bus = Bus::start(&config, Mode::Tcp);
    let mut a = login(&mut bus, TOKEN_A);
    let mut stranger = bus.connect();
    stranger.request(
        json!(1),
        "bus/authenticate",
        json!({"token": "not-a-token"}),
        None,
    );
    assert_eq!(
        stranger.recv()["error"]["data"]["reason"],
        "unauthenticated"
    );
    // b claims to be a through a top-level tenant member: refused, and audited.
    let mut b = login(&mut bus, TOKEN_B);
    b.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "ping", "tenant": "a", "sessionId": "s"}));
    assert_eq!(b.recv()["error"]["data"]["reason"], "invalid_request");
    a.request(json!(3), "ping", Value::Null, Some("s"));
    assert!(a.recv().get("result").is_some());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(TOKEN_A) && !text.contains("not-a-token"),
        "no credential: {text}"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let event =
        |name: &str| -> Vec<&Value> { lines.iter().filter(|l| l["event"] == name).collect() };
    let ok = event("authenticated");
    assert_eq!(ok.len(), 2, "{text}");
    assert_eq!(
        (
            &ok[0]["tenant"],
            &ok[0]["subject"],
            &ok[0]["method"],
            &ok[0]["transport"]
        ),
        (&json!("a"), &json!("alice"), &json!("token"), &json!("tcp"))
    );
    assert!(ok[0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let refused = event("authentication_refused");
    assert_eq!(refused.len(), 1, "{text}");
    assert_eq!(refused[0]["reason"], "unknown token");
    let claim = event("tenant_claim_refused");
    assert_eq!(
        (&claim[0]["tenant"], &claim[0]["subject"]),
        (&json!("b"), &json!("bob"))
    );
    let created = event("session_created");
    assert_eq!(
        (&created[0]["tenant"], &created[0]["session"]),
        (&json!("a"), &json!("s"))
    );
}
