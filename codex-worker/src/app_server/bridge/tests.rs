//! The bridge's rules, driven with a virtual clock and a scripted child.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Bridge, BridgeConfig, Handshake, Out};
use crate::app_server::approvals::ApprovalIds;
use crate::app_server::handshakes::ClientHandshake;
use crate::app_server::policy::Policy;
use crate::app_server::sessions::SessionKey;
use crate::app_server::threads::ThreadLimits;

const INIT_RESULT: &str =
    r#"{"userAgent":"ua","codexHome":"/h","platformFamily":"unix","platformOs":"linux"}"#;

struct Harness {
    bridge: Bridge,
    now: Instant,
    out: Out,
}

/// The bridge settings the tests use (the manager's tests start from them too).
pub(crate) fn config() -> BridgeConfig {
    BridgeConfig {
        request_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(2),
        approval_timeout: None,
        session_idle: None,
        hold_unknown: Duration::from_secs(1),
        max_in_flight: 100,
        drain_timeout: Duration::from_secs(10),
        interrupt_grace: Duration::from_secs(2),
        handshake: Handshake {
            name: "codex_worker".into(),
            version: "0.1.0".into(),
            experimental_api: false,
        },
        policy: Policy::default(),
        threads: ThreadLimits::default(),
        private_home: false,
    }
}

impl Harness {
    /// A bridge whose first child finished its handshake.
    fn ready() -> Self {
        Self::with(config())
    }

    fn with(config: BridgeConfig) -> Self {
        let now = Instant::now();
        let mut harness = Self {
            bridge: Bridge::new(config, ApprovalIds::default(), now),
            now,
            out: Out::default(),
        };
        assert!(harness.start_child(1).is_empty());
        harness
    }

    /// Starts child `generation` and completes its handshake; returns what else the bridge
    /// sent it right after (lazy resumes).
    fn start_child(&mut self, generation: u64) -> Vec<Value> {
        self.bridge
            .child_started(generation, self.now, &mut self.out);
        let init = self.child_lines();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0]["method"], "initialize");
        assert_eq!(init[0]["params"]["clientInfo"]["name"], "codex_worker");
        self.child_line(json!({"id": init[0]["id"], "result": serde_json::from_str::<Value>(INIT_RESULT).unwrap()}));
        let mut sent = self.child_lines();
        assert_eq!(sent.remove(0), json!({"method": "initialized"}));
        sent
    }

    fn bus_line(&mut self, message: Value) {
        self.bridge
            .bus_line(message.to_string().as_bytes(), self.now, &mut self.out);
    }

    fn child_line(&mut self, message: Value) {
        self.bridge
            .child_line(message.to_string().as_bytes(), self.now, &mut self.out);
    }

    fn request(&mut self, session: &str, id: Value, method: &str, params: Value) {
        self.bus_line(
            json!({"jsonrpc":"2.0","id":id,"method":method,"params":params,"sessionId":session}),
        );
    }

    /// A request as the bus sends it with `auth`: the tenant named, the session id prefixed.
    fn tenant_request(
        &mut self,
        tenant: &str,
        session: &str,
        id: Value,
        method: &str,
        params: Value,
    ) {
        self.bus_line(
            json!({"jsonrpc":"2.0","id":id,"method":method,"params":params,
            "sessionId":format!("{tenant}:{session}"),"tenant":tenant}),
        );
    }

    /// A session of a named tenant that has sent `initialize`.
    fn tenant_session(&mut self, tenant: &str, session: &str) {
        self.tenant_request(
            tenant,
            session,
            json!("init"),
            "initialize",
            json!({"clientInfo":{"name":"c","version":"1"}}),
        );
        assert_eq!(self.bus_lines().len(), 1);
    }

    /// A session that has sent `initialize` (its reply consumed).
    fn session(&mut self, session: &str) {
        self.request(
            session,
            json!("init"),
            "initialize",
            json!({"clientInfo":{"name":"c","version":"1"}}),
        );
        let reply = self.bus_lines();
        assert_eq!(reply.len(), 1, "{reply:?}");
        assert_eq!(reply[0]["result"]["codexHome"], "/h");
    }

    /// Starts a thread for `session` and returns its id.
    fn thread(&mut self, session: &str, thread: &str) -> String {
        self.request(
            session,
            json!("start"),
            "thread/start",
            json!({"model":"m","cwd":"/w","ephemeral":false}),
        );
        let sent = self.child_lines();
        let id = sent[0]["id"].clone();
        self.child_line(json!({"id": id, "result": {"thread": {"id": thread, "ephemeral": false}, "model":"m"}}));
        let reply = self.bus_lines();
        assert_eq!(reply.last().unwrap()["id"], "start");
        thread.to_owned()
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.bridge.on_timer(self.now, &mut self.out);
    }

    fn child_lines(&mut self) -> Vec<Value> {
        let text = String::from_utf8(std::mem::take(&mut self.out.child)).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn bus_lines(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.out.bus)
            .into_iter()
            .map(|line| {
                assert_eq!(line.line.last(), Some(&b'\n'));
                let value: Value = serde_json::from_slice(&line.line).unwrap();
                assert_eq!(value["jsonrpc"], "2.0");
                if let Some(session) = &line.session {
                    assert_eq!(
                        value["sessionId"].as_str().map(str::as_bytes),
                        Some(&session[..]),
                        "every line carries its session"
                    );
                }
                value
            })
            .collect()
    }
}

#[test]
fn initialize_is_answered_per_session_from_the_cached_handshake() {
    let mut h = Harness::ready();
    h.bus_line(json!({"id":1,"method":"thread/start","sessionId":"a"}));
    let reply = h.bus_lines();
    assert_eq!(
        reply[0]["error"],
        json!({"code":-32600,"message":"Not initialized"})
    );
    h.session("a");
    h.session("b");
    h.request(
        "a",
        json!(2),
        "initialize",
        json!({"clientInfo":{"name":"c","version":"1"}}),
    );
    // Again on the same session (a second connection of the TUI): answered again.
    assert_eq!(
        h.bus_lines()[0],
        json!({"jsonrpc":"2.0","id":2,"result":serde_json::from_str::<Value>(INIT_RESULT).unwrap(),"sessionId":"a"})
    );
    h.bus_line(json!({"method":"initialized","sessionId":"a"}));
    assert!(h.bus_lines().is_empty());
    assert!(
        h.child_lines().is_empty(),
        "neither initialize nor initialized reach the child"
    );
}

#[test]
fn client_ids_are_rewritten_and_restored_exactly() {
    let mut h = Harness::ready();
    h.session("a");
    h.session("b");
    h.request("a", json!("x-1"), "model/list", json!({}));
    h.request("b", json!("x-1"), "model/list", json!({}));
    let sent = h.child_lines();
    assert_eq!(sent.len(), 2);
    assert!(sent[0]["id"].is_u64() && sent[1]["id"].is_u64());
    assert_ne!(sent[0]["id"], sent[1]["id"]);
    h.child_line(json!({"id": sent[1]["id"], "result": {"data": []}}));
    h.child_line(json!({"id": sent[0]["id"], "result": {"data": [1]}}));
    let replies = h.bus_lines();
    assert_eq!(
        replies[0],
        json!({"jsonrpc":"2.0","id":"x-1","result":{"data":[]},"sessionId":"b"})
    );
    assert_eq!(
        replies[1],
        json!({"jsonrpc":"2.0","id":"x-1","result":{"data":[1]},"sessionId":"a"})
    );
}

#[test]
fn threads_belong_to_their_creator_and_foreign_threads_are_refused() {
    let mut h = Harness::ready();
    h.session("a");
    h.session("b");
    let thread = h.thread("a", "t-a");
    for method in [
        "turn/start",
        "thread/read",
        "thread/resume",
        "thread/fork",
        "turn/interrupt",
    ] {
        h.request(
            "b",
            json!(9),
            method,
            json!({"threadId": thread, "input": []}),
        );
        let reply = h.bus_lines();
        assert_eq!(reply[0]["error"]["code"], -32600, "{method}");
        assert_eq!(
            reply[0]["error"]["message"], "thread not owned by session",
            "{method}"
        );
        assert_eq!(reply[0]["sessionId"], "b");
    }
    // A thread no session owns may not be used without resuming it first.
    h.request(
        "b",
        json!(10),
        "turn/start",
        json!({"threadId": "t-unknown", "input": []}),
    );
    assert_eq!(
        h.bus_lines()[0]["error"]["message"],
        "thread not owned by session"
    );
    assert!(h.child_lines().is_empty());
    h.request(
        "a",
        json!(11),
        "turn/start",
        json!({"threadId": thread, "input": []}),
    );
    assert_eq!(h.child_lines()[0]["method"], "turn/start");
}

#[test]
fn listings_show_only_the_sessions_own_threads() {
    let mut h = Harness::ready();
    h.session("a");
    h.session("b");
    h.thread("a", "t-a");
    h.thread("b", "t-b");
    h.request("a", json!(1), "thread/loaded/list", json!({}));
    h.request("b", json!(2), "thread/list", json!({}));
    let sent = h.child_lines();
    h.child_line(
        json!({"id": sent[0]["id"], "result": {"data": ["t-a", "t-b", "t-x"], "nextCursor": null}}),
    );
    h.child_line(json!({"id": sent[1]["id"], "result": {"data": [{"id":"t-a"},{"id":"t-b"}], "readStates": {"t-a":{}, "t-b":{}}}}));
    let replies = h.bus_lines();
    assert_eq!(
        replies[0]["result"],
        json!({"data": ["t-a"], "nextCursor": null})
    );
    assert_eq!(
        replies[1]["result"],
        json!({"data": [{"id":"t-b"}], "readStates": {"t-b":{}}})
    );
}

#[test]
fn process_global_methods_are_refused_unless_enabled() {
    let mut h = Harness::ready();
    h.session("a");
    for method in [
        "config/value/write",
        "account/logout",
        "plugin/install",
        "fs/readFile",
        "command/exec",
        "plugin/list",
    ] {
        h.request("a", json!(1), method, json!({}));
        let reply = h.bus_lines();
        assert_eq!(reply[0]["error"]["code"], -32601, "{method}");
        assert_eq!(reply[0]["error"]["data"]["reason"], "method_not_allowed");
    }
    assert!(h.child_lines().is_empty());
    let mut config = config();
    config.policy = Policy::new(&["config/*".to_owned()], &[]);
    let mut h = Harness::with(config);
    h.session("a");
    h.request("a", json!(1), "config/read", json!({}));
    let sent = h.child_lines();
    assert_eq!(sent[0]["method"], "config/read");
    // Enabled, it is no longer redacted.
    h.child_line(json!({"id": sent[0]["id"], "result": {"config": {"mcp_servers": {}}, "origins": {"x": 1}}}));
    assert_eq!(
        h.bus_lines()[0]["result"],
        json!({"config": {"mcp_servers": {}}, "origins": {"x": 1}})
    );
}

#[test]
fn the_tui_startup_reads_are_answered_without_the_operators_state() {
    let mut h = Harness::ready();
    h.tenant_session("t", "s");
    h.tenant_request("t", "s", json!(1), "account/read", json!({}));
    h.tenant_request(
        "t",
        "s",
        json!("h"),
        "hooks/list",
        json!({"cwds": ["/home/u"], "threadId": null}),
    );
    h.tenant_request("t", "s", json!(2), "skills/list", json!({"cwds": ["/"]}));
    h.tenant_request("t", "s", json!(3), "plugin/installed", json!({}));
    let replies = h.bus_lines();
    assert_eq!(
        replies[0],
        json!({"jsonrpc":"2.0","id":1,"result":{"account":null,"userId":null,"requiresOpenaiAuth":false,"workspaceRouting":null},"sessionId":"t:s"})
    );
    assert_eq!(replies[1]["result"], json!({"data": []}));
    assert_eq!(replies[2]["result"], json!({"data": []}));
    assert_eq!(replies[3]["result"]["marketplaces"], json!([]));
    assert!(h.child_lines().is_empty(), "none of them reaches the child");
    // Harmless reads pass through.
    for method in [
        "collaborationMode/list",
        "configRequirements/read",
        "model/list",
    ] {
        h.tenant_request("t", "s", json!(4), method, json!({}));
        assert_eq!(h.child_lines()[0]["method"], method);
    }
}

#[test]
fn config_read_shows_the_model_and_policies_only() {
    let mut h = Harness::ready();
    h.tenant_session("t", "s");
    h.tenant_request(
        "t",
        "s",
        json!("c"),
        "config/read",
        json!({"includeLayers": true, "cwd": "."}),
    );
    let sent = h.child_lines();
    assert_eq!(sent[0]["method"], "config/read");
    h.child_line(json!({"id": sent[0]["id"], "result": {
        "config": {"model": "m", "sandbox_mode": "read-only", "instructions": "secret plan",
                   "mcp_servers": {"db": {"env": {"TOKEN": "x"}}}, "model_providers": {}},
        "origins": {"model": {"name": {"type": "user", "file": "/srv/home/config.toml"}}},
        "layers": [{"name": {"type": "user"}}]}}));
    assert_eq!(
        h.bus_lines()[0],
        json!({"jsonrpc":"2.0","id":"c","result":{"config":{"model":"m","sandbox_mode":"read-only"},"origins":{},"layers":null},"sessionId":"t:s"})
    );
}

#[test]
fn what_a_thread_may_do_is_the_operators_grant() {
    let mut h = Harness::ready();
    h.tenant_session("t", "s");
    h.tenant_session("ops", "s");
    let refused = |h: &mut Harness, tenant: &str, method: &str, params: Value| {
        h.tenant_request(tenant, "s", json!(9), method, params);
        let reply = h.bus_lines();
        assert_eq!(reply[0]["error"]["code"], -32056, "{method}: {reply:?}");
        assert_eq!(reply[0]["error"]["data"]["reason"], "not_permitted");
        assert!(h.child_lines().is_empty(), "{method} reached the child");
    };
    refused(
        &mut h,
        "t",
        "thread/start",
        json!({"sandbox": "danger-full-access"}),
    );
    refused(
        &mut h,
        "t",
        "thread/start",
        json!({"config": {"sandbox_mode": "danger-full-access"}}),
    );
    refused(
        &mut h,
        "t",
        "thread/start",
        json!({"config": {"mcp_servers": {"x": {"command": "sh"}}}}),
    );
    refused(
        &mut h,
        "t",
        "thread/resume",
        json!({"threadId": "x", "sandbox": "danger-full-access"}),
    );
    h.tenant_request(
        "t",
        "s",
        json!(1),
        "thread/start",
        json!({"sandbox": "read-only", "config": {"model_reasoning_effort": "low"}}),
    );
    assert_eq!(h.child_lines()[0]["method"], "thread/start");

    let mut config = config();
    config.policy = Policy::new(&[], &["ops=danger-full-access".parse().unwrap()]);
    let mut h = Harness::with(config);
    h.tenant_session("t", "s");
    h.tenant_session("ops", "s");
    refused(
        &mut h,
        "t",
        "thread/start",
        json!({"sandbox": "danger-full-access"}),
    );
    h.tenant_request(
        "ops",
        "s",
        json!(1),
        "thread/start",
        json!({"sandbox": "danger-full-access"}),
    );
    assert_eq!(h.child_lines()[0]["method"], "thread/start");
}

#[test]
fn notifications_reach_only_the_owner_and_global_ones_nobody() {
    let mut h = Harness::ready();
    h.session("a");
    h.session("b");
    h.thread("a", "t-a");
    h.thread("b", "t-b");
    h.child_line(json!({"method":"item/agentMessage/delta","params":{"threadId":"t-b","itemId":"i","delta":"x"},"emittedAtMs":5}));
    h.child_line(json!({"method":"configWarning","params":{"summary":"s"},"emittedAtMs":5}));
    h.child_line(json!({"method":"turn/started","params":{"threadId":"t-a","turn":{"id":"u"}},"emittedAtMs":6}));
    let lines = h.bus_lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["sessionId"], "b");
    assert_eq!(
        lines[0]["emittedAtMs"], 5,
        "other top-level fields pass through"
    );
    assert_eq!(lines[1]["sessionId"], "a");
    assert_eq!(lines[1]["method"], "turn/started");
}

#[test]
fn opted_out_notifications_are_not_delivered() {
    let mut h = Harness::ready();
    h.request("a", json!(0), "initialize", json!({"clientInfo":{"name":"c","version":"1"},"capabilities":{"optOutNotificationMethods":["item/agentMessage/delta"]}}));
    h.bus_lines();
    h.thread("a", "t");
    h.child_line(json!({"method":"item/agentMessage/delta","params":{"threadId":"t","itemId":"i","delta":"x"}}));
    h.child_line(json!({"method":"item/completed","params":{"threadId":"t","item":{}}}));
    let lines = h.bus_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["method"], "item/completed");
}

#[test]
fn thread_started_before_its_response_goes_to_the_only_creator() {
    let mut h = Harness::ready();
    h.session("a");
    h.request("a", json!("s"), "thread/start", json!({}));
    let sent = h.child_lines();
    h.child_line(
        json!({"method":"thread/started","params":{"thread":{"id":"t1","ephemeral":true}}}),
    );
    h.child_line(json!({"method":"thread/status/changed","params":{"threadId":"t1","status":{"type":"idle"}}}));
    h.child_line(json!({"id": sent[0]["id"], "result": {"thread": {"id":"t1","ephemeral":true}}}));
    let lines = h.bus_lines();
    let methods: Vec<_> = lines.iter().map(|line| line["method"].clone()).collect();
    assert_eq!(
        methods,
        [
            json!("thread/started"),
            json!("thread/status/changed"),
            Value::Null
        ]
    );
    assert!(lines.iter().all(|line| line["sessionId"] == "a"));
    assert_eq!(lines[2]["id"], "s");
}

#[test]
fn with_two_creations_in_flight_early_notifications_wait_for_their_owner() {
    let mut h = Harness::ready();
    h.session("a");
    h.session("b");
    h.request("a", json!("sa"), "thread/start", json!({}));
    h.request("b", json!("sb"), "thread/start", json!({}));
    let sent = h.child_lines();
    h.child_line(json!({"method":"thread/started","params":{"thread":{"id":"tb"}}}));
    h.child_line(json!({"method":"thread/status/changed","params":{"threadId":"tb","status":{"type":"idle"}}}));
    assert!(h.bus_lines().is_empty(), "held until the owner is known");
    h.child_line(json!({"id": sent[0]["id"], "result": {"thread": {"id":"ta"}}}));
    h.child_line(json!({"id": sent[1]["id"], "result": {"thread": {"id":"tb"}}}));
    let lines = h.bus_lines();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        (lines[0]["id"].clone(), lines[0]["sessionId"].clone()),
        (json!("sa"), json!("a"))
    );
    assert_eq!(lines[1]["method"], "thread/started");
    assert_eq!(lines[2]["method"], "thread/status/changed");
    assert_eq!(lines[3]["id"], "sb");
    assert!(lines[1..].iter().all(|line| line["sessionId"] == "b"));
    // A notification about a thread nobody ever claims is dropped after the hold.
    h.child_line(
        json!({"method":"turn/started","params":{"threadId":"t-nobody","turn":{"id":"u"}}}),
    );
    h.advance(Duration::from_secs(2));
    h.child_line(json!({"method":"turn/started","params":{"threadId":"ta","turn":{"id":"u"}}}));
    let lines = h.bus_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["params"]["threadId"], "ta");
}

#[test]
fn subagent_threads_belong_to_the_parents_owner() {
    let mut h = Harness::ready();
    h.session("a");
    h.thread("a", "parent");
    h.child_line(json!({"method":"thread/started","params":{"thread":{"id":"child","parentThreadId":"parent"}}}));
    h.child_line(json!({"method":"turn/started","params":{"threadId":"child","turn":{"id":"u"}}}));
    let lines = h.bus_lines();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|line| line["sessionId"] == "a"));
}

#[test]
fn approvals_get_worker_ids_and_only_the_owner_answers() {
    let mut h = Harness::ready();
    h.session("a");
    h.session("b");
    h.thread("a", "t");
    let params = json!({"threadId":"t","turnId":"u","itemId":"c","startedAtMs":1});
    h.child_line(json!({"id":0,"method":"item/commandExecution/requestApproval","params":params}));
    let asked = h.bus_lines();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["sessionId"], "a");
    let worker_id = asked[0]["id"].clone();
    // Another session's answer never reaches the child.
    h.bus_line(json!({"id": worker_id, "result": {"decision":"accept"}, "sessionId":"b"}));
    assert!(h.child_lines().is_empty());
    h.bus_line(
        json!({"jsonrpc":"2.0","id": worker_id, "result": {"decision":"accept"}, "sessionId":"a"}),
    );
    assert_eq!(
        h.child_lines(),
        vec![json!({"id":0,"result":{"decision":"accept"}})]
    );
    // A second answer is dropped.
    h.bus_line(json!({"id": worker_id, "result": {"decision":"decline"}}));
    assert!(h.child_lines().is_empty());
    h.child_line(
        json!({"method":"serverRequest/resolved","params":{"threadId":"t","requestId":0}}),
    );
    let resolved = h.bus_lines();
    assert_eq!(resolved[0]["params"]["requestId"], worker_id);
}

#[test]
fn error_answers_decline_and_unowned_requests_are_declined_at_once() {
    let mut h = Harness::ready();
    h.session("a");
    h.thread("a", "t");
    h.child_line(json!({"id":3,"method":"item/fileChange/requestApproval","params":{"threadId":"t","turnId":"u","itemId":"f","startedAtMs":1}}));
    let worker_id = h.bus_lines()[0]["id"].clone();
    // The bus answers with client_disconnected when the client leaves without answering.
    h.bus_line(json!({"jsonrpc":"2.0","id": worker_id, "error": {"code":-32041,"message":"Client disconnected"}}));
    assert_eq!(
        h.child_lines(),
        vec![json!({"id":3,"result":{"decision":"decline"}})]
    );
    h.child_line(json!({"id":4,"method":"item/commandExecution/requestApproval","params":{"threadId":"t-nobody","turnId":"u","itemId":"c","startedAtMs":1}}));
    assert!(h.bus_lines().is_empty());
    assert_eq!(
        h.child_lines(),
        vec![json!({"id":4,"result":{"decision":"decline"}})]
    );
}

#[test]
fn requests_time_out_with_a_clear_error_and_late_replies_are_dropped() {
    let mut h = Harness::ready();
    h.session("a");
    h.request("a", json!(7), "model/list", json!({}));
    let sent = h.child_lines();
    h.advance(Duration::from_secs(4));
    assert!(h.bus_lines().is_empty());
    h.advance(Duration::from_secs(2));
    let reply = h.bus_lines();
    assert_eq!(reply[0]["id"], 7);
    assert_eq!(reply[0]["error"]["code"], -32051);
    assert_eq!(reply[0]["error"]["data"]["reason"], "request_timeout");
    h.child_line(json!({"id": sent[0]["id"], "result": {}}));
    assert!(h.bus_lines().is_empty());
}

#[test]
fn child_death_fails_in_flight_work_then_the_thread_resumes_lazily() {
    let mut h = Harness::ready();
    h.session("a");
    let thread = h.thread("a", "t");
    h.request(
        "a",
        json!("turn"),
        "turn/start",
        json!({"threadId": thread, "input": []}),
    );
    let sent = h.child_lines();
    h.child_line(json!({"id": sent[0]["id"], "result": {"turn": {"id":"u1","status":"inProgress","items":[]}}}));
    h.child_line(json!({"method":"turn/started","params":{"threadId":"t","turn":{"id":"u1"}}}));
    h.child_line(json!({"id":0,"method":"item/commandExecution/requestApproval","params":{"threadId":"t","turnId":"u1","itemId":"c","startedAtMs":1}}));
    h.request(
        "a",
        json!("read"),
        "thread/read",
        json!({"threadId": thread}),
    );
    h.child_lines();
    let before = h.bus_lines();
    let approval_id = before.last().unwrap()["id"].clone();

    h.bridge.child_exited(h.now, &mut h.out);
    let lines = h.bus_lines();
    let read = lines.iter().find(|line| line["id"] == "read").unwrap();
    assert_eq!(read["error"]["data"]["reason"], "child_exited");
    assert_eq!(read["error"]["data"]["retryable"], true);
    let resolved = lines
        .iter()
        .find(|line| line["method"] == "serverRequest/resolved")
        .unwrap();
    assert_eq!(resolved["params"]["requestId"], approval_id);
    let completed = lines
        .iter()
        .find(|line| line["method"] == "turn/completed")
        .unwrap();
    assert_eq!(completed["params"]["threadId"], "t");
    assert_eq!(completed["params"]["turn"]["id"], "u1");
    assert_eq!(completed["params"]["turn"]["status"], "failed");

    // While the child is down, requests wait; the answer to the dead child's approval is dropped.
    h.request(
        "a",
        json!("next"),
        "turn/start",
        json!({"threadId": thread, "input": []}),
    );
    h.bus_line(json!({"id": approval_id, "result": {"decision":"accept"}}));
    assert!(h.child_lines().is_empty());
    let sent = h.start_child(2);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["method"], "thread/resume");
    assert_eq!(
        sent[0]["params"],
        json!({"threadId":"t","excludeTurns":true,"model":"m","cwd":"/w"})
    );
    h.child_line(json!({"id": sent[0]["id"], "result": {"thread": {"id":"t"}}}));
    let sent = h.child_lines();
    assert_eq!(sent[0]["method"], "turn/start");
    assert!(
        h.bus_lines().is_empty(),
        "the lazy resume is not shown to the session"
    );
    h.child_line(json!({"id": sent[0]["id"], "result": {"turn": {"id":"u2"}}}));
    assert_eq!(h.bus_lines()[0]["id"], "next");
}

#[test]
fn an_ephemeral_thread_is_reported_lost_after_a_restart() {
    let mut h = Harness::ready();
    h.session("a");
    h.request("a", json!("s"), "thread/start", json!({"ephemeral": true}));
    let sent = h.child_lines();
    h.child_line(json!({"id": sent[0]["id"], "result": {"thread": {"id":"e","ephemeral":true}}}));
    h.bus_lines();
    h.bridge.child_exited(h.now, &mut h.out);
    h.start_child(2);
    h.request(
        "a",
        json!(1),
        "turn/start",
        json!({"threadId":"e","input":[]}),
    );
    let reply = h.bus_lines();
    assert_eq!(reply[0]["error"]["code"], -32052);
    assert_eq!(reply[0]["error"]["data"]["reason"], "thread_lost");
    assert!(h.child_lines().is_empty());
}

#[test]
fn a_failed_lazy_resume_fails_the_parked_requests() {
    let mut h = Harness::ready();
    h.session("a");
    h.thread("a", "t");
    h.bridge.child_exited(h.now, &mut h.out);
    h.start_child(2);
    h.request(
        "a",
        json!(1),
        "turn/start",
        json!({"threadId":"t","input":[]}),
    );
    let sent = h.child_lines();
    assert_eq!(sent[0]["method"], "thread/resume");
    h.child_line(
        json!({"id": sent[0]["id"], "error": {"code":-32600,"message":"no rollout found"}}),
    );
    let reply = h.bus_lines();
    assert_eq!(reply[0]["id"], 1);
    assert_eq!(reply[0]["error"]["data"]["reason"], "thread_lost");
}

#[test]
fn in_flight_requests_are_capped_and_the_rest_wait_in_order() {
    let mut config = config();
    config.max_in_flight = 1;
    let mut h = Harness::with(config);
    h.session("a");
    h.request("a", json!(1), "model/list", json!({}));
    h.request("a", json!(2), "model/list", json!({}));
    let sent = h.child_lines();
    assert_eq!(sent.len(), 1);
    h.child_line(json!({"id": sent[0]["id"], "result": {}}));
    let next = h.child_lines();
    assert_eq!(next.len(), 1);
    assert_ne!(next[0]["id"], sent[0]["id"]);
}

#[test]
fn a_handshake_that_never_comes_kills_the_child() {
    let now = Instant::now();
    let mut bridge = Bridge::new(config(), ApprovalIds::default(), now);
    let mut out = Out::default();
    bridge.child_started(1, now, &mut out);
    bridge.on_timer(now + Duration::from_secs(3), &mut out);
    assert!(out.kill_child);
}

#[test]
fn drain_refuses_new_work_and_waits_for_active_turns() {
    let mut h = Harness::ready();
    h.session("a");
    h.thread("a", "t");
    h.child_line(json!({"method":"turn/started","params":{"threadId":"t","turn":{"id":"u"}}}));
    h.bus_lines();
    h.bridge.begin_drain(h.now, &mut h.out);
    h.request(
        "a",
        json!(1),
        "turn/start",
        json!({"threadId":"t","input":[]}),
    );
    let reply = h.bus_lines();
    assert_eq!(reply[0]["error"]["data"]["reason"], "worker_draining");
    assert!(!h.bridge.drained());
    h.advance(Duration::from_secs(1));
    h.child_line(json!({"method":"turn/completed","params":{"threadId":"t","turn":{"id":"u","status":"completed"}}}));
    h.advance(Duration::from_millis(100));
    assert!(h.bridge.drained());
}

#[test]
fn drain_interrupts_turns_at_the_deadline_then_gives_up_on_them() {
    let mut h = Harness::ready();
    h.session("a");
    h.thread("a", "t");
    h.child_line(json!({"method":"turn/started","params":{"threadId":"t","turn":{"id":"u"}}}));
    h.bus_lines();
    h.bridge.begin_drain(h.now, &mut h.out);
    h.advance(Duration::from_secs(11));
    let sent = h.child_lines();
    assert_eq!(sent[0]["method"], "turn/interrupt");
    assert_eq!(sent[0]["params"], json!({"threadId":"t","turnId":"u"}));
    h.advance(Duration::from_secs(3));
    assert!(h.bridge.drained());
    let lines = h.bus_lines();
    assert_eq!(lines[0]["method"], "turn/completed");
    assert_eq!(lines[0]["params"]["turn"]["status"], "interrupted");
}

#[test]
fn closed_input_declines_pending_approvals() {
    let mut h = Harness::ready();
    h.session("a");
    h.thread("a", "t");
    h.child_line(json!({"id":5,"method":"item/commandExecution/requestApproval","params":{"threadId":"t","turnId":"u","itemId":"c","startedAtMs":1}}));
    h.bus_lines();
    h.bridge.input_closed(h.now, &mut h.out);
    assert_eq!(
        h.child_lines(),
        vec![json!({"id":5,"result":{"decision":"decline"}})]
    );
}

#[test]
fn idle_sessions_lose_their_subscriptions_and_resume_lazily() {
    let mut config = config();
    config.session_idle = Some(Duration::from_secs(60));
    let mut h = Harness::with(config);
    h.session("a");
    h.thread("a", "t");
    h.advance(Duration::from_secs(61));
    let sent = h.child_lines();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["method"], "thread/unsubscribe");
    h.child_line(json!({"id": sent[0]["id"], "result": {"status":"unsubscribed"}}));
    h.session("a");
    h.request(
        "a",
        json!(1),
        "turn/start",
        json!({"threadId":"t","input":[]}),
    );
    assert_eq!(h.child_lines()[0]["method"], "thread/resume");
}

#[test]
fn lines_without_a_session_are_refused() {
    let mut h = Harness::ready();
    h.bus_line(json!({"id":1,"method":"model/list"}));
    let out = std::mem::take(&mut h.out.bus);
    let reply: Value = serde_json::from_slice(&out[0].line).unwrap();
    assert_eq!(reply["error"]["data"]["reason"], "session_required");
    h.bridge.bus_line(b"not json", h.now, &mut h.out);
    let out = std::mem::take(&mut h.out.bus);
    assert_eq!(out[0].line, codex_bus_worker_io::render::PARSE_ERROR);
}

#[test]
fn a_tenants_sessions_share_its_threads_and_other_tenants_see_no_such_thread() {
    let mut h = Harness::ready();
    h.tenant_session("a", "s1");
    h.tenant_session("a", "s2");
    h.tenant_session("b", "s1");
    h.tenant_request(
        "a",
        "s1",
        json!("start"),
        "thread/start",
        json!({"cwd": "/w"}),
    );
    let sent = h.child_lines();
    h.child_line(
        json!({"id": sent[0]["id"], "result": {"thread": {"id": "t-a", "ephemeral": false}}}),
    );
    assert_eq!(h.bus_lines()[0]["sessionId"], "a:s1");
    assert_eq!(h.out.owned.len(), 1, "recorded for the owner log");
    // Tenant b: a's thread and a thread that exists nowhere get the very same answer, and
    // nothing reaches the child.
    for thread in ["t-a", "t-missing"] {
        for method in [
            "thread/resume",
            "thread/read",
            "thread/fork",
            "turn/start",
            "turn/interrupt",
            "thread/archive",
        ] {
            h.tenant_request(
                "b",
                "s1",
                json!(9),
                method,
                json!({"threadId": thread, "input": []}),
            );
            let reply = h.bus_lines();
            assert_eq!(
                reply[0]["error"],
                json!({"code":-32600,"message":"no such thread","data":{"reason":"thread_not_found","retryable":false}}),
                "{method} {thread}"
            );
            assert_eq!(reply[0]["sessionId"], "b:s1");
        }
    }
    assert!(h.child_lines().is_empty());
    // b's attempts moved nothing: a's events still go to a.
    h.child_line(
        json!({"method": "thread/name/updated", "params": {"threadId": "t-a", "name": "n"}}),
    );
    assert_eq!(h.bus_lines()[0]["sessionId"], "a:s1");
    // b lists nothing of a's.
    h.tenant_request("b", "s1", json!(3), "thread/list", json!({}));
    let sent = h.child_lines();
    h.child_line(
        json!({"id": sent[0]["id"], "result": {"data": [{"id": "t-a"}], "nextCursor": null}}),
    );
    assert_eq!(h.bus_lines()[0]["result"]["data"], json!([]));
    // a's second session resumes the thread, and its events follow that session.
    h.tenant_request(
        "a",
        "s2",
        json!(4),
        "thread/resume",
        json!({"threadId": "t-a"}),
    );
    let sent = h.child_lines();
    assert_eq!(sent[0]["method"], "thread/resume");
    h.child_line(
        json!({"id": sent[0]["id"], "result": {"thread": {"id": "t-a", "ephemeral": false}}}),
    );
    assert_eq!(h.bus_lines()[0]["sessionId"], "a:s2");
    h.child_line(
        json!({"method": "turn/started", "params": {"threadId": "t-a", "turn": {"id": "u1"}}}),
    );
    let events = h.bus_lines();
    assert_eq!(events[0]["sessionId"], "a:s2");
    h.tenant_request("a", "s1", json!(5), "thread/list", json!({}));
    let sent = h.child_lines();
    h.child_line(
        json!({"id": sent[0]["id"], "result": {"data": [{"id": "t-a"}], "nextCursor": null}}),
    );
    assert_eq!(h.bus_lines()[0]["result"]["data"], json!([{"id": "t-a"}]));
}

#[test]
fn an_approval_of_a_tenants_thread_never_goes_to_another_tenant() {
    let mut h = Harness::ready();
    h.tenant_session("a", "s1");
    h.tenant_session("b", "s1");
    h.tenant_request("a", "s1", json!("start"), "thread/start", json!({}));
    let sent = h.child_lines();
    h.child_line(
        json!({"id": sent[0]["id"], "result": {"thread": {"id": "t-a", "ephemeral": false}}}),
    );
    h.bus_lines();
    h.tenant_request(
        "b",
        "s1",
        json!(1),
        "thread/resume",
        json!({"threadId": "t-a"}),
    );
    h.bus_lines();
    h.child_line(json!({"id": 77, "method": "item/commandExecution/requestApproval", "params": {"threadId": "t-a", "turnId": "u1"}}));
    let asked = h.bus_lines();
    assert_eq!(asked[0]["sessionId"], "a:s1");
    // b answering with the id it never saw is refused; a's answer reaches the child.
    h.bus_line(json!({"jsonrpc":"2.0","id": asked[0]["id"],"result":{"decision":"accept"},"sessionId":"b:s1","tenant":"b"}));
    assert!(h.child_lines().is_empty());
    h.bus_line(json!({"jsonrpc":"2.0","id": asked[0]["id"],"result":{"decision":"accept"},"sessionId":"a:s1","tenant":"a"}));
    assert_eq!(h.child_lines()[0]["id"], 77);
}

#[test]
fn with_a_home_of_its_own_a_tenant_resumes_threads_the_table_does_not_know() {
    let mut shared = Harness::ready();
    shared.tenant_session("a", "s1");
    shared.tenant_request(
        "a",
        "s1",
        json!(1),
        "thread/resume",
        json!({"threadId": "t-old"}),
    );
    assert_eq!(shared.bus_lines()[0]["error"]["message"], "no such thread");
    let mut own = Harness::with(BridgeConfig {
        private_home: true,
        ..config()
    });
    own.tenant_session("a", "s1");
    own.tenant_request(
        "a",
        "s1",
        json!(1),
        "thread/resume",
        json!({"threadId": "t-old"}),
    );
    assert_eq!(own.child_lines()[0]["method"], "thread/resume");
    // Without a tenant the capability rule of before stays: the id is enough to resume.
    let mut plain = Harness::ready();
    plain.session("s1");
    plain.request(
        "s1",
        json!(1),
        "thread/resume",
        json!({"threadId": "t-old"}),
    );
    assert_eq!(plain.child_lines()[0]["method"], "thread/resume");
}

#[test]
fn the_thread_bound_forgets_and_unsubscribes_the_least_recently_used() {
    let mut h = Harness::with(BridgeConfig {
        threads: ThreadLimits { max: 2, ttl: None },
        ..config()
    });
    h.session("a");
    h.thread("a", "t1");
    h.now += Duration::from_secs(1);
    h.thread("a", "t2");
    h.now += Duration::from_secs(1);
    h.thread("a", "t3");
    // Over the cap of 2: t1, the least recently used, is forgotten and unsubscribed.
    let sent = h.child_lines();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["method"], "thread/unsubscribe");
    assert_eq!(sent[0]["params"], json!({"threadId": "t1"}));
    // Forgotten: its owner now gets the answer for a thread nobody owns.
    h.request(
        "a",
        json!(1),
        "turn/start",
        json!({"threadId": "t1", "input": []}),
    );
    assert_eq!(
        h.bus_lines()[0]["error"]["message"],
        "thread not owned by session"
    );
    h.request(
        "a",
        json!(2),
        "turn/start",
        json!({"threadId": "t2", "input": []}),
    );
    assert_eq!(h.child_lines()[0]["method"], "turn/start");
}

#[test]
fn reading_or_forking_a_tenants_thread_leaves_its_events_where_they_are() {
    let mut h = Harness::ready();
    h.tenant_session("a", "s1");
    h.tenant_session("a", "s2");
    h.tenant_request("a", "s1", json!("start"), "thread/start", json!({}));
    let sent = h.child_lines();
    h.child_line(
        json!({"id": sent[0]["id"], "result": {"thread": {"id": "t-a", "ephemeral": false}}}),
    );
    h.bus_lines();
    h.tenant_request(
        "a",
        "s2",
        json!(1),
        "thread/read",
        json!({"threadId": "t-a"}),
    );
    h.tenant_request(
        "a",
        "s2",
        json!(2),
        "thread/fork",
        json!({"threadId": "t-a"}),
    );
    let sent = h.child_lines();
    assert_eq!(sent.len(), 2);
    h.child_line(json!({"method": "thread/name/updated", "params": {"threadId": "t-a"}}));
    assert_eq!(h.bus_lines()[0]["sessionId"], "a:s1");
    // New work moves them.
    h.tenant_request(
        "a",
        "s2",
        json!(3),
        "turn/start",
        json!({"threadId": "t-a", "input": []}),
    );
    h.child_line(json!({"method": "thread/name/updated", "params": {"threadId": "t-a"}}));
    assert_eq!(h.bus_lines()[0]["sessionId"], "a:s2");
}

/// What the first bridge wrote to the handshake log, as a later worker's lane reads it back.
fn handshakes_of(h: &mut Harness) -> Vec<(SessionKey, ClientHandshake)> {
    std::mem::take(&mut h.out.handshakes)
        .into_iter()
        .filter_map(|(session, handshake)| handshake.map(|handshake| (session, handshake)))
        .collect()
}

#[test]
fn a_fresh_bridge_serves_a_session_that_initialized_with_an_earlier_one() {
    let mut first = Harness::ready();
    first.request("a", json!(0), "initialize", json!({"clientInfo":{"name":"ide","version":"1"},"capabilities":{"optOutNotificationMethods":["item/agentMessage/delta"]},"extra":true}));
    first.bus_lines();
    first.session("b");
    // The same handshake again (a reconnection) is not worth another line.
    first.session("b");
    let logged = handshakes_of(&mut first);
    assert_eq!(logged.len(), 2);
    assert_eq!(
        Value::Object(logged[0].1.params.clone()),
        json!({"clientInfo":{"name":"ide","version":"1"},"capabilities":{"optOutNotificationMethods":["item/agentMessage/delta"]}})
    );

    // The replacement: it has the log's records, and never saw `initialize` from a or c.
    let mut h = Harness::ready();
    for (session, handshake) in logged {
        h.bridge.restore_handshake(&session, handshake);
    }
    h.request("a", json!(1), "model/list", json!({}));
    let sent = h.child_lines();
    assert_eq!(sent.len(), 1, "served without initialize: {sent:?}");
    assert_eq!(sent[0]["method"], "model/list");
    assert!(
        h.bus_lines().is_empty(),
        "no initialize answer reaches the client"
    );
    assert!(h.out.handshakes.is_empty(), "nothing new to log");
    // The opt-outs came back with it.
    h.thread("a", "t");
    h.child_line(json!({"method":"item/agentMessage/delta","params":{"threadId":"t","itemId":"i","delta":"x"}}));
    h.child_line(json!({"method":"item/completed","params":{"threadId":"t","item":{}}}));
    let lines = h.bus_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["method"], "item/completed");

    h.request("c", json!(2), "model/list", json!({}));
    assert_eq!(
        h.bus_lines()[0]["error"],
        json!({"code":-32600,"message":"Not initialized"})
    );
    assert!(h.child_lines().is_empty());
}

#[test]
fn a_handshake_initializes_only_the_tenant_it_was_sent_under() {
    let mut first = Harness::ready();
    first.tenant_session("acme", "s");
    let logged = handshakes_of(&mut first);
    assert_eq!(logged[0].0[..], b"acme:s"[..]);
    assert_eq!(logged[0].1.tenant.as_deref(), Some("acme"));

    let mut h = Harness::ready();
    for (session, handshake) in logged {
        h.bridge.restore_handshake(&session, handshake);
    }
    // The same session key without the tenant (no `auth`), or under another tenant's name.
    h.request("acme:s", json!(1), "model/list", json!({}));
    h.bus_line(json!({"jsonrpc":"2.0","id":2,"method":"model/list","params":{},"sessionId":"acme:s","tenant":"evil"}));
    let refused = h.bus_lines();
    assert_eq!(refused.len(), 2);
    assert!(refused
        .iter()
        .all(|reply| reply["error"]["message"] == "Not initialized"));
    assert!(h.child_lines().is_empty());
    h.tenant_request("acme", "s", json!(3), "model/list", json!({}));
    assert_eq!(h.child_lines()[0]["method"], "model/list");
}

#[test]
fn an_idle_session_forgets_its_handshake_and_an_unanswered_initialize_is_not_logged() {
    let mut idle = config();
    idle.session_idle = Some(Duration::from_secs(60));
    let mut h = Harness::with(idle);
    h.session("a");
    assert_eq!(h.out.handshakes.len(), 1);
    h.out.handshakes.clear();
    h.advance(Duration::from_secs(61));
    assert_eq!(
        std::mem::take(&mut h.out.handshakes),
        vec![(SessionKey::from(&b"a"[..]), None)]
    );
    h.request("a", json!(1), "model/list", json!({}));
    assert_eq!(h.bus_lines()[0]["error"]["message"], "Not initialized");

    // Before the first child's handshake, `initialize` waits; it is logged once answered.
    let mut fresh = Harness {
        bridge: Bridge::new(config(), ApprovalIds::default(), h.now),
        now: h.now,
        out: Out::default(),
    };
    fresh.request("b", json!(0), "initialize", json!({}));
    assert!(fresh.out.handshakes.is_empty());
    assert!(fresh.start_child(1).is_empty());
    assert_eq!(fresh.bus_lines()[0]["id"], 0);
    assert_eq!(fresh.out.handshakes.len(), 1);
}
