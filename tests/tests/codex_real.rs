//! The real-Codex tier: the daemon, `codex-worker` and the real `codex app-server` (npm
//! `@openai/codex@0.169.0`), offline against the loopback mock of the Responses API in `codex_bus_tests::codex`.
//! Two sessions each run `initialize`, `thread/start` and one `turn/start` streamed to
//! `turn/completed`; and, with `auth` on, two tenants each play the Codex TUI's startup and
//! resume-picker sequence (docs/codex-worker.md, "The Codex TUI's startup, method by method").
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
use codex_bus_tests::{login, recv_until, say, sha256_hex, Bus, Conn, Mode};
use serde_json::{json, Value};

/// Most lines one wait reads.
const MAX_LINES: usize = 5_000;

#[test]
#[ignore = "tier real-codex: needs a codex binary (CODEX_BIN or ~/.cache/codex-npm); `CODEX_REAL=1 bash .ci/run` installs @openai/codex@0.169.0 and runs it"]
fn real_codex_serves_two_sessions_through_the_bus() {
    let codex = require_codex();
    if !rerun_offline("real_codex_serves_two_sessions_through_the_bus", &codex) {
        run(&codex);
    }
}

#[test]
#[ignore = "tier real-codex: needs a codex binary (CODEX_BIN or ~/.cache/codex-npm); `CODEX_REAL=1 bash .ci/run` installs @openai/codex@0.169.0 and runs it"]
fn real_codex_serves_the_tui_startup_to_two_tenants() {
    let codex = require_codex();
    if !rerun_offline("real_codex_serves_the_tui_startup_to_two_tenants", &codex) {
        tui_startup(&codex);
    }
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

/// Tenant a's and tenant b's capability tokens (the bus keeps their SHA-256).
const TOKEN_A: &str = "tui-tenant-a-token-3f9c1e77";
const TOKEN_B: &str = "tui-tenant-b-token-8a2d7b05";

/// Codex's answer to `thread/turns/list` and `thread/items/list` on a thread without paginated
/// history: its own error, which the TUI tolerates (codex-remote.md, section 3).
const CODEX_UNPAGINATED: &str = "paginated_threads";

/// One TUI user on the bus: a connection authenticated as its tenant, sending what the TUI sends
/// on the session the WebSocket front binds it to (`user:<subject>`, docs/ws-contract).
struct Tui {
    conn: Conn,
    session: &'static str,
    next: u64,
    /// `method → "result"` or the error's code and message, in order, for the log.
    seen: Vec<String>,
}

impl Tui {
    fn connect(bus: &mut Bus, token: &str, session: &'static str) -> Self {
        Self {
            conn: login(bus, token),
            session,
            next: 0,
            seen: Vec::new(),
        }
    }

    /// Sends one request with a string id, as the TUI does, and returns its reply.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = json!(format!("{method}-{}", self.next));
        self.conn
            .request(id.clone(), method, params, Some(self.session));
        let reply = recv_until(&mut self.conn, MAX_LINES, |line| line["id"] == id)
            .pop()
            .unwrap();
        assert_eq!(reply["sessionId"], self.session, "{reply}");
        self.seen.push(match reply.get("error") {
            Some(error) => format!("{method} → error {} {}", error["code"], error["message"]),
            None => format!("{method} → result"),
        });
        reply
    }

    /// A request every tenant must get a result for.
    fn ok(&mut self, method: &str, params: Value) -> Value {
        let reply = self.call(method, params);
        assert!(reply.get("result").is_some(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// A request the worker refuses on purpose: the documented code and reason.
    fn refused(&mut self, method: &str, params: Value, code: i64, reason: &str) {
        let reply = self.call(method, params);
        assert_eq!(reply["error"]["code"], code, "{method}: {reply}");
        assert_eq!(
            reply["error"]["data"]["reason"], reason,
            "{method}: {reply}"
        );
    }

    /// A thread-scoped read on a thread without paginated history: a result, or Codex's own
    /// "not supported" error passed through.
    fn paged(&mut self, method: &str, params: Value) {
        let reply = self.call(method, params);
        if let Some(error) = reply.get("error") {
            let message = error["message"].as_str().unwrap_or_default();
            assert!(
                error["data"]["reason"].is_null() && message.contains(CODEX_UNPAGINATED),
                "{method}: {reply}"
            );
        }
    }

    /// `initialize` as the TUI sends it, then `initialized`; checks what the TUI reads.
    fn initialize(&mut self) {
        let result = self.ok(
            "initialize",
            json!({"clientInfo": {"name": "codex-tui", "title": null, "version": "0.169.0"},
                   "capabilities": {"requiredHumanApproval": true, "experimentalApi": true,
                                    "requestAttestation": false, "optOutNotificationMethods": null}}),
        );
        let agent = result["userAgent"].as_str().unwrap_or_default();
        let version = agent
            .split_once('/')
            .map(|(_, rest)| rest.split_whitespace().next());
        assert_eq!(version, Some(Some("0.169.0")), "{result}");
        assert!(result["codexHome"].is_string(), "{result}");
        self.conn
            .send(&json!({"method": "initialized", "sessionId": self.session}));
    }

    /// Ids of the threads a listing returned.
    fn listed(&mut self, method: &str, params: Value) -> Vec<String> {
        let result = self.ok(method, params);
        result["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{method}: {result}"))
            .iter()
            .filter_map(|item| item.as_str().or_else(|| item["id"].as_str()))
            .map(str::to_owned)
            .collect()
    }

    /// The startup of `codex --remote` up to its first turn's end (codex-remote.md, section 3);
    /// returns the thread it started and the ids every listing showed.
    fn startup(&mut self) -> (String, Vec<String>) {
        self.initialize();
        let account = self.ok("account/read", json!({}));
        assert_eq!(account["requiresOpenaiAuth"], false, "{account}");
        assert!(
            account["account"].is_null(),
            "no operator account: {account}"
        );
        let models = self.ok("model/list", json!({"includeHidden": true}));
        assert!(
            models["data"].as_array().is_some_and(|d| !d.is_empty()),
            "{models}"
        );
        let cwd = "/home/user/project";
        self.ok("hooks/list", json!({"cwds": [cwd], "threadId": null}));
        self.ok("account/bedrock/checkGovCloudRequirements", json!({}));
        let config = self.ok("config/read", json!({"includeLayers": true, "cwd": "."}));
        assert_eq!(config["config"]["model"], "mock-model", "{config}");
        assert_eq!(config["origins"], json!({}), "{config}");
        let text = config.to_string();
        assert!(
            !text.contains("127.0.0.1") && !text.contains("codex-home"),
            "{text}"
        );
        self.ok("account/read", json!({}));
        self.ok("configRequirements/read", Value::Null);
        self.ok("collaborationMode/list", json!({}));
        let started = self.ok(
            "thread/start",
            json!({"model": null, "modelProvider": null, "cwd": null, "sandbox": "read-only",
                   "config": {}, "ephemeral": false, "historyMode": "paginated",
                   "threadSource": "user"}),
        );
        let thread = started["thread"]["id"]
            .as_str()
            .expect("thread id")
            .to_owned();
        let mut listed = Vec::new();
        for params in [
            json!({"sortKey": "updated_at", "limit": 100}),
            json!({"sortKey": "recency_at", "limit": 10}),
        ] {
            listed.extend(self.listed("thread/list", params));
        }
        self.ok("skills/list", json!({"cwds": [cwd]}));
        self.ok("plugin/installed", json!({}));
        listed.extend(self.listed("thread/loaded/list", json!({})));
        self.ok("thread/read", json!({"threadId": thread}));
        let turn = self.ok(
            "turn/start",
            json!({"threadId": thread, "clientUserMessageId": "m-1", "turnTrigger": "user",
                   "input": [{"type": "text", "text": "say hello", "text_elements": []}],
                   "approvalPolicy": "never", "model": "mock-model"}),
        );
        assert_eq!(turn["turn"]["status"], "inProgress", "{turn}");
        let lines = recv_until(&mut self.conn, MAX_LINES, |line| {
            line["method"] == "turn/completed"
        });
        let done = lines.last().unwrap();
        assert_eq!(done["params"]["turn"]["status"], "completed", "{done}");
        // The TUI marks the thread read at the revision the turn's events reported.
        let revision = lines
            .iter()
            .rev()
            .find(|line| line["method"] == "thread/readState/changed")
            .map(|line| line["params"]["readState"]["revision"].clone())
            .expect("thread/readState/changed during the turn");
        self.paged("thread/turns/list", json!({"threadId": thread, "limit": 1}));
        self.ok(
            "thread/readState/update",
            json!({"threadId": thread, "operation": {"type": "read"},
                   "expectedRevision": revision}),
        );
        (thread, listed)
    }

    /// What no tenant may do by default: the documented refusals.
    fn overreach(&mut self, thread: &str) {
        self.refused(
            "thread/start",
            json!({"sandbox": "danger-full-access"}),
            -32056,
            "not_permitted",
        );
        self.refused(
            "turn/start",
            json!({"threadId": thread, "input": [{"type": "text", "text": "rm"}],
                   "sandboxPolicy": {"type": "dangerFullAccess"}}),
            -32056,
            "not_permitted",
        );
        self.refused(
            "thread/shellCommand",
            json!({"threadId": thread, "command": "id"}),
            -32056,
            "not_permitted",
        );
        self.refused(
            "config/value/write",
            json!({"keyPath": "model", "value": "x", "mergeStrategy": "replace"}),
            -32601,
            "method_not_allowed",
        );
        self.refused("account/logout", Value::Null, -32601, "method_not_allowed");
    }

    /// `codex resume --remote`: the picker's listing on one connection, then a second
    /// connection (the same session) that initializes again and resumes `thread`.
    fn resume(mut self, bus: &mut Bus, token: &str, thread: &str) -> Self {
        let picker = self.listed(
            "thread/list",
            json!({"currentAccountOnly": true, "limit": 25, "sortKey": "updated_at",
                   "sourceKinds": ["cli", "vscode"], "archived": false, "cwd": null}),
        );
        assert!(
            picker.iter().any(|id| id == thread),
            "the picker shows {thread}: {picker:?}"
        );
        let mut second = Tui::connect(bus, token, self.session);
        second.seen = std::mem::take(&mut self.seen);
        second.initialize();
        second.ok("thread/read", json!({"threadId": thread}));
        second.ok(
            "thread/resume",
            json!({"threadId": thread, "cwd": null, "excludeTurns": true}),
        );
        second.paged(
            "thread/turns/list",
            json!({"threadId": thread, "limit": 5, "sortDirection": "desc"}),
        );
        second.paged("thread/items/list", json!({"threadId": thread}));
        second.ok("thread/goal/get", json!({"threadId": thread}));
        second.ok("thread/unsubscribe", json!({"threadId": thread}));
        second
    }
}

/// Tenants a and b, each one TUI user on the session the WebSocket front would bind it to,
/// play the TUI's startup and resume picker on one worker over one real `codex app-server`.
fn tui_startup(codex: &Path) {
    let started = Instant::now();
    let server = ResponsesServer::start();
    let state = tempfile::tempdir().expect("state dir");
    let config = worker_pool_config(codex, &server, state.path(), &["--experimental-api"]).section(
        "auth",
        json!({"tokens": [
            {"tenant": "a", "sha256": sha256_hex(TOKEN_A), "subject": "alice"},
            {"tenant": "b", "sha256": sha256_hex(TOKEN_B), "subject": "bob"},
        ]}),
    );
    let mut bus = Bus::start(&config, Mode::Tcp);
    let mut alice = Tui::connect(&mut bus, TOKEN_A, "user:alice");
    let (thread_a, listed_a) = alice.startup();
    assert!(
        listed_a.contains(&thread_a),
        "a lists its own thread: {listed_a:?}"
    );
    alice.overreach(&thread_a);
    let alice = alice.resume(&mut bus, TOKEN_A, &thread_a);

    let mut bob = Tui::connect(&mut bus, TOKEN_B, "user:bob");
    let (thread_b, listed_b) = bob.startup();
    assert_ne!(thread_a, thread_b);
    assert!(
        listed_b.contains(&thread_b),
        "b lists its own thread: {listed_b:?}"
    );
    assert!(
        !listed_b.contains(&thread_a),
        "b sees a's thread: {listed_b:?}"
    );
    for method in ["thread/read", "thread/resume"] {
        bob.refused(
            method,
            json!({"threadId": thread_a}),
            -32600,
            "thread_not_found",
        );
    }
    let bob = bob.resume(&mut bus, TOKEN_B, &thread_b);
    for (name, tui) in [("a", &alice), ("b", &bob)] {
        say(&format!(
            "real Codex tier, TUI startup of tenant {name}: {}",
            tui.seen.join("; ")
        ));
    }
    say(&format!(
        "real Codex tier TUI startup PASSED in {} ms ({} model requests)",
        started.elapsed().as_millis(),
        server.requests()
    ));
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
