//! Threads belong to tenants (issue 12, docs/worker-contract.md "Tenants"): the daemon with a
//! `codex-worker` pool over fake `codex app-server` children, and with the mock worker pool.
//!
//! Clients here send what the bus sends a worker once `auth` is on: a top-level `tenant` and the
//! session id `"<tenant>:<client's id>"` (the daemon passes unknown top-level members through, so
//! the workers see exactly those lines). Tenant b naming tenant a's thread gets the answer for a
//! thread that does not exist, its listings omit a's threads, and a's second session resumes a's
//! thread; without tenant members everything is as before.

use codex_bus_tests::{bin, recv_until, worker_pool, Bus, BusConfig, Conn, Mode};
use serde_json::{json, Value};

/// Most lines any one wait in these tests reads before giving up.
const MAX_LINES: usize = 2_000;

/// The thread-naming requests a foreign tenant tries.
const NAMING: &[&str] = &[
    "thread/resume",
    "thread/read",
    "thread/fork",
    "turn/start",
    "turn/interrupt",
];

/// A bus with one `codex-worker` over a fake child (`worker_args` added); the state directory
/// lives as long as the returned guard.
fn codex_bus(worker_args: &[&str]) -> (Bus, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("state dir");
    let child = format!(
        "{} app-server --first-delta-ms 10 --deltas 4 --delta-interval-ms 2",
        bin("codex-mock").display()
    );
    let mut args = vec![
        "--codex-cmd",
        &child,
        "--state-dir",
        state.path().to_str().unwrap(),
    ];
    args.extend_from_slice(worker_args);
    (
        Bus::start(&worker_pool("codex-worker", 1, &args), Mode::Unix),
        state,
    )
}

/// One client session: its connection, the tenant the bus would name (none without auth) and
/// the session id the worker sees.
struct Client {
    conn: Conn,
    tenant: Option<&'static str>,
    session: String,
}

impl Client {
    fn of(bus: &mut Bus, tenant: &'static str, session: &str) -> Self {
        Self {
            conn: bus.connect(),
            tenant: Some(tenant),
            session: format!("{tenant}:{session}"),
        }
    }

    fn plain(bus: &mut Bus, session: &str) -> Self {
        Self {
            conn: bus.connect(),
            tenant: None,
            session: session.to_owned(),
        }
    }

    /// Sends a request and returns every line up to its reply (the reply last).
    fn call(&mut self, id: &str, method: &str, params: Value) -> Vec<Value> {
        let mut line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params,
            "sessionId": self.session});
        if let Some(tenant) = self.tenant {
            line["tenant"] = json!(tenant);
        }
        self.conn.send(&line);
        let lines = recv_until(&mut self.conn, MAX_LINES, |line| line["id"] == id);
        for line in &lines {
            assert_eq!(line["sessionId"], self.session.as_str(), "{line}");
        }
        lines
    }

    /// The reply to a request, with no other line before it.
    fn reply(&mut self, id: &str, method: &str, params: Value) -> Value {
        let lines = self.call(id, method, params);
        assert_eq!(lines.len(), 1, "nothing else arrives: {lines:?}");
        lines[0].clone()
    }

    fn initialize(&mut self) {
        let reply = self.reply(
            "init",
            "initialize",
            json!({"clientInfo": {"name": "test", "version": "1"}}),
        );
        assert!(reply["result"].is_object(), "{reply}");
    }

    fn start_thread(&mut self) -> String {
        let lines = self.call("start", "thread/start", json!({}));
        let reply = lines.last().unwrap();
        reply["result"]["thread"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("thread/start failed: {reply}"))
            .to_owned()
    }

    /// Runs a turn on `thread` to its end; returns its lines.
    fn turn(&mut self, thread: &str) -> Vec<Value> {
        let mut lines = self.call(
            "turn",
            "turn/start",
            json!({"threadId": thread, "input": [{"type": "text", "text": "hi"}]}),
        );
        let reply = lines.last().unwrap().clone();
        assert!(reply["result"]["turn"]["id"].is_string(), "{reply}");
        lines.extend(recv_until(&mut self.conn, MAX_LINES, |line| {
            line["method"] == "turn/completed"
        }));
        for line in &lines {
            assert_eq!(line["sessionId"], self.session.as_str(), "{line}");
        }
        assert_eq!(
            lines.last().unwrap()["params"]["turn"]["status"],
            "completed"
        );
        lines
    }

    /// The ids `thread/list` shows (a `thread/started` still on its way may come first).
    fn listed(&mut self) -> Vec<String> {
        let lines = self.call("list", "thread/list", json!({}));
        let reply = lines.last().unwrap();
        reply["result"]["data"]
            .as_array()
            .unwrap_or_else(|| panic!("thread/list failed: {reply}"))
            .iter()
            .map(|thread| thread["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// What `client` gets for each thread-naming method on `thread`, with the id made generic so a
/// foreign thread's answer can be compared with a missing one's.
fn answers(client: &mut Client, thread: &str) -> Vec<Value> {
    NAMING
        .iter()
        .map(|method| {
            let params = json!({"threadId": thread, "turnId": "turn_x", "input": []});
            let reply = client.reply("probe", method, params);
            let text = reply["error"].to_string().replace(thread, "<id>");
            assert!(reply["error"].is_object(), "{method}: {reply}");
            serde_json::from_str(&text).unwrap()
        })
        .collect()
}

/// The scenario both codex-worker layouts must pass.
fn tenants_own_their_threads(bus: &mut Bus) {
    let mut a1 = Client::of(bus, "a", "s1");
    let mut b = Client::of(bus, "b", "s1");
    a1.initialize();
    b.initialize();
    let thread = a1.start_thread();
    a1.turn(&thread);

    // b learns nothing: a's thread is answered exactly as a thread that does not exist.
    let foreign = answers(&mut b, &thread);
    let missing = answers(&mut b, "0198c0de-0000-7000-8000-000000000000");
    assert_eq!(foreign, missing);
    assert_eq!(foreign[1]["message"], "no such thread", "{foreign:?}");
    assert!(b.listed().is_empty(), "b lists none of a's threads");
    assert_eq!(a1.listed(), [thread.as_str()]);

    // a's first session leaves; a's second session resumes the thread and drives a turn, whose
    // events reach it and nobody else.
    drop(a1);
    let mut a2 = Client::of(bus, "a", "s2");
    a2.initialize();
    let resumed = a2.reply("resume", "thread/resume", json!({"threadId": thread}));
    assert_eq!(
        resumed["result"]["thread"]["id"],
        thread.as_str(),
        "{resumed}"
    );
    let lines = a2.turn(&thread);
    assert!(lines
        .iter()
        .any(|line| line["method"] == "item/agentMessage/delta"));
    // b, which tried every method on a's thread, got none of its events: nothing on b's
    // session id names a's thread.
    let lines = b.call("loaded", "thread/loaded/list", json!({}));
    assert!(
        lines.iter().all(|line| !line.to_string().contains(&thread)),
        "{lines:?}"
    );
    assert_eq!(lines.last().unwrap()["result"]["data"], json!([]));
}

#[test]
fn through_codex_worker_tenants_own_their_threads() {
    let (mut bus, _state) = codex_bus(&[]);
    tenants_own_their_threads(&mut bus);
}

#[test]
fn with_a_child_per_tenant_a_second_session_resumes_the_tenants_thread() {
    let (mut bus, state) = codex_bus(&["--child-per-session", "--max-children", "4"]);
    tenants_own_their_threads(&mut bus);
    // The tenants' homes are under tenants/, one per tenant, none under sessions/.
    let slot = state.path().join("codex").join("slot-0");
    let homes = std::fs::read_dir(slot.join("tenants")).unwrap().count();
    assert_eq!(homes, 2, "one home for a, one for b");
    assert!(!slot.join("sessions").exists());
}

#[test]
fn without_tenant_members_sessions_keep_their_threads_as_before() {
    let (mut bus, _state) = codex_bus(&[]);
    let mut s1 = Client::plain(&mut bus, "s1");
    let mut s2 = Client::plain(&mut bus, "s2");
    s1.initialize();
    s2.initialize();
    let thread = s1.start_thread();
    s1.turn(&thread);
    let stolen = s2.reply(
        "steal",
        "turn/start",
        json!({"threadId": thread, "input": []}),
    );
    assert_eq!(stolen["error"]["message"], "thread not owned by session");
    assert!(s2.listed().is_empty());
    assert_eq!(s1.listed(), [thread.as_str()]);
    s1.turn(&thread);
}

#[test]
fn the_mock_worker_keeps_threads_per_tenant() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Unix);
    let mut a1 = Client::of(&mut bus, "a", "s1");
    let mut b = Client::of(&mut bus, "b", "s1");
    let thread = a1.start_thread();
    a1.turn(&thread);
    // The mock answers a foreign thread with each method's own not-found answer.
    let foreign: Vec<Value> = NAMING
        .iter()
        .map(|method| {
            let params = json!({"threadId": thread, "turnId": "turn_x", "input": []});
            b.reply("probe", method, params)["error"]
                .to_string()
                .replace(&thread, "<id>")
                .into()
        })
        .collect();
    let missing: Vec<Value> = NAMING
        .iter()
        .map(|method| {
            let params = json!({"threadId": "thr_9999", "turnId": "turn_x", "input": []});
            b.reply("probe", method, params)["error"]
                .to_string()
                .replace("thr_9999", "<id>")
                .into()
        })
        .collect();
    assert_eq!(foreign, missing);
    assert!(foreign.iter().all(|error| error != "null"), "{foreign:?}");
    assert!(b.listed().is_empty());
    // a's second session resumes a's thread; its turn's events go to that session.
    let mut a2 = Client::of(&mut bus, "a", "s2");
    let resumed = a2.reply("resume", "thread/resume", json!({"threadId": thread}));
    assert_eq!(
        resumed["result"]["thread"]["id"],
        thread.as_str(),
        "{resumed}"
    );
    a2.turn(&thread);
    assert_eq!(a2.listed(), [thread.as_str()]);
    // Without tenant members every session is the default tenant, as before: one session may
    // resume another's thread.
    let mut s1 = Client::plain(&mut bus, "s1");
    let mut s2 = Client::plain(&mut bus, "s2");
    let plain = s1.start_thread();
    let resumed = s2.reply("resume", "thread/resume", json!({"threadId": plain}));
    assert_eq!(
        resumed["result"]["thread"]["id"],
        plain.as_str(),
        "{resumed}"
    );
    assert_eq!(s1.listed(), [plain.as_str()]);
}
