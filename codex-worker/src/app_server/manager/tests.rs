//! The manager's rules on a virtual clock, with scripted children.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use super::{Effects, Layout, Manager, ManagerConfig};
use crate::app_server::bridge::BridgeConfig;
use crate::app_server::home::SlotDir;

struct Harness {
    manager: Manager,
    now: Instant,
    fx: Effects,
    slot: SlotDir,
    _state: tempfile::TempDir,
}

fn config(layout: Layout) -> ManagerConfig {
    ManagerConfig {
        bridge: BridgeConfig {
            request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            ..crate::app_server::bridge::tests::config()
        },
        layout,
        max_restarts: 2,
        restart_window: Duration::from_secs(60),
    }
}

impl Harness {
    fn new(layout: Layout) -> Self {
        let state = tempfile::tempdir().unwrap();
        let slot = SlotDir::new(state.path(), "pool", Some(0));
        let now = Instant::now();
        let mut manager = Manager::new(config(layout), slot.clone(), now).unwrap();
        let mut fx = Effects::default();
        manager.begin(now, &mut fx);
        Self {
            manager,
            now,
            fx,
            slot,
            _state: state,
        }
    }

    fn per_session(max_children: usize, idle_sec: Option<u64>) -> Self {
        Self::new(Layout::PerSession {
            max_children,
            child_idle: idle_sec.map(Duration::from_secs),
        })
    }

    fn request(&mut self, session: &str, id: Value, method: &str, params: Value) {
        let line =
            json!({"jsonrpc":"2.0","id":id,"method":method,"params":params,"sessionId":session});
        self.bus(&line);
    }

    fn bus(&mut self, line: &Value) {
        self.manager
            .bus_line(line.to_string().as_bytes(), self.now, &mut self.fx);
    }

    fn initialize(&mut self, session: &str) {
        self.request(
            session,
            json!("init"),
            "initialize",
            json!({"clientInfo":{"name":"c","version":"1"}}),
        );
    }

    /// Sends one line as the child of `generation`.
    fn child(&mut self, generation: u64, line: Value) {
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        self.manager
            .child_output(generation, &bytes, self.now, &mut self.fx);
    }

    fn exited(&mut self, generation: u64) {
        self.manager
            .child_exited(generation, "exit status: 0", self.now, &mut self.fx);
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.manager.on_timer(self.now, &mut self.fx);
    }

    /// Children spawned since the last call, as (generation, CODEX_HOME).
    fn spawned(&mut self) -> Vec<(u64, String)> {
        std::mem::take(&mut self.fx.spawn)
            .into_iter()
            .map(|spawn| {
                let home = spawn.dir.codex_home().to_string_lossy().into_owned();
                (spawn.generation, home)
            })
            .collect()
    }

    /// Lines written to the child of `generation` since the last call.
    fn child_lines(&mut self, generation: u64) -> Vec<Value> {
        let mut lines = Vec::new();
        self.fx.to_child.retain(|(to, bytes)| {
            if *to != generation {
                return true;
            }
            let text = std::str::from_utf8(bytes).unwrap();
            lines.extend(
                text.lines()
                    .map(|line| serde_json::from_str::<Value>(line).unwrap()),
            );
            false
        });
        lines
    }

    fn bus_lines(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.fx.bus)
            .into_iter()
            .map(|line| serde_json::from_slice(&line.line).unwrap())
            .collect()
    }

    fn closed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.fx.close_stdin)
    }

    /// Completes the handshake of the child of `generation`, which reports `home`; returns
    /// what the worker sent the child right after `initialized` (lazy resumes).
    fn handshake(&mut self, generation: u64, home: &str) -> Vec<Value> {
        let sent = self.child_lines(generation);
        assert_eq!(sent[0]["method"], "initialize", "{sent:?}");
        let result =
            json!({"userAgent":"ua","codexHome":home,"platformFamily":"unix","platformOs":"linux"});
        self.child(generation, json!({"id": sent[0]["id"], "result": result}));
        let mut sent = self.child_lines(generation);
        assert_eq!(sent.remove(0), json!({"method":"initialized"}));
        sent
    }

    /// A session with a child of its own, initialized; returns the child's generation and home.
    fn session(&mut self, session: &str) -> (u64, String) {
        self.initialize(session);
        let spawned = self.spawned();
        assert_eq!(spawned.len(), 1, "{session} gets one child");
        let (generation, home) = spawned[0].clone();
        assert!(self.handshake(generation, &home).is_empty());
        let reply = self.bus_lines();
        assert_eq!(reply.len(), 1, "{reply:?}");
        assert_eq!(reply[0]["sessionId"], session);
        assert_eq!(reply[0]["result"]["codexHome"], home.as_str());
        (generation, home)
    }

    /// Starts thread `thread` for `session` on its child `generation`.
    fn thread(&mut self, session: &str, generation: u64, thread: &str) {
        self.request(
            session,
            json!("start"),
            "thread/start",
            json!({"model":"m"}),
        );
        let sent = self.child_lines(generation);
        assert_eq!(sent[0]["method"], "thread/start");
        self.child(
            generation,
            json!({"id": sent[0]["id"], "result": {"thread": {"id": thread, "ephemeral": false}}}),
        );
        assert_eq!(self.bus_lines().last().unwrap()["id"], "start");
    }
}

#[test]
fn each_session_gets_a_child_and_a_home_of_its_own() {
    let mut h = Harness::per_session(4, None);
    assert!(h.spawned().is_empty(), "no child before a session asks");
    let (a, home_a) = h.session("a");
    let (b, home_b) = h.session("b");
    assert_ne!(a, b);
    assert_ne!(home_a, home_b);
    let sessions = h.slot.root.join("sessions");
    for home in [&home_a, &home_b] {
        assert!(home.starts_with(sessions.to_str().unwrap()), "{home}");
        assert!(!home.contains("/a/") && !home.contains("/b/"));
    }
    assert_eq!(home_a, h.slot.session(b"a").codex_home().to_str().unwrap());
    // Each session's requests go to its own child only.
    h.request("a", json!(1), "model/list", json!({}));
    assert_eq!(h.child_lines(a).len(), 1);
    assert!(h.child_lines(b).is_empty());
}

#[test]
fn the_least_recently_used_idle_child_makes_room_for_a_new_session() {
    let mut h = Harness::per_session(2, None);
    let (a, _) = h.session("a");
    h.advance(10);
    let (b, _) = h.session("b");
    h.advance(10);
    // a is used again, so b is now the least recently used.
    h.request("a", json!(1), "model/list", json!({}));
    let sent = h.child_lines(a);
    h.child(a, json!({"id": sent[0]["id"], "result": {"data": []}}));
    h.bus_lines();
    h.advance(10);
    h.initialize("c");
    assert!(h.spawned().is_empty(), "c waits until b is gone");
    assert_eq!(h.closed(), vec![b]);
    h.exited(b);
    let spawned = h.spawned();
    assert_eq!(spawned.len(), 1);
    let (c, home_c) = spawned[0].clone();
    assert!(h.handshake(c, &home_c).is_empty());
    let reply = h.bus_lines();
    assert_eq!(reply[0]["sessionId"], "c");
    assert_eq!(reply[0]["result"]["codexHome"], home_c.as_str());
    assert!(h.closed().is_empty(), "a keeps its child");
}

#[test]
fn when_every_child_is_busy_a_new_session_is_refused_with_a_retryable_error() {
    let mut h = Harness::per_session(2, None);
    let (a, _) = h.session("a");
    let (b, _) = h.session("b");
    let mut in_flight = Vec::new();
    for (session, generation) in [("a", a), ("b", b)] {
        h.request(session, json!(1), "model/list", json!({}));
        let sent = h.child_lines(generation);
        assert_eq!(sent.len(), 1);
        in_flight.push(sent[0]["id"].clone());
    }
    h.initialize("c");
    let reply = h.bus_lines();
    assert_eq!(reply.len(), 1, "{reply:?}");
    assert_eq!(reply[0]["id"], "init");
    assert_eq!(reply[0]["sessionId"], "c");
    assert_eq!(reply[0]["error"]["code"], -32055);
    assert_eq!(reply[0]["error"]["data"]["reason"], "children_busy");
    assert_eq!(reply[0]["error"]["data"]["retryable"], true);
    assert!(h.spawned().is_empty() && h.closed().is_empty());
    assert_eq!(
        h.manager.lanes.len(),
        2,
        "the refused session left nothing behind"
    );
    assert!(!h.slot.session(b"c").root.exists(), "nor a directory");
    // Once a child is idle again, the retry gets a child by evicting it.
    h.child(a, json!({"id": in_flight[0], "result": {"data": []}}));
    h.bus_lines();
    h.initialize("c");
    assert_eq!(h.closed(), vec![a]);
    h.exited(a);
    assert_eq!(h.spawned().len(), 1);
}

#[test]
fn an_idle_child_is_stopped_and_the_next_request_resumes_its_threads_in_a_new_one() {
    let mut h = Harness::per_session(2, Some(300));
    let (first, home) = h.session("a");
    h.thread("a", first, "t");
    h.advance(299);
    assert!(h.closed().is_empty());
    h.advance(2);
    assert_eq!(h.closed(), vec![first]);
    h.exited(first);
    assert!(
        h.spawned().is_empty(),
        "a stopped child is not restarted by itself"
    );
    assert!(h.bus_lines().is_empty(), "nothing was in flight");
    // The session stays initialized; its turn resumes the thread in a new child first.
    h.request(
        "a",
        json!("turn"),
        "turn/start",
        json!({"threadId": "t", "input": []}),
    );
    let spawned = h.spawned();
    assert_eq!(spawned.len(), 1);
    let (second, again) = spawned[0].clone();
    assert_eq!(again, home, "the same CODEX_HOME, so the rollout is there");
    let sent = h.handshake(second, &home);
    assert_eq!(sent[0]["method"], "thread/resume");
    assert_eq!(
        sent[0]["params"],
        json!({"threadId":"t","excludeTurns":true,"model":"m"})
    );
    h.child(
        second,
        json!({"id": sent[0]["id"], "result": {"thread": {"id": "t"}}}),
    );
    assert_eq!(h.child_lines(second)[0]["method"], "turn/start");
}

#[test]
fn a_restarted_worker_restores_the_sessions_threads_from_its_owner_log() {
    let mut h = Harness::per_session(2, None);
    let (a, _) = h.session("a");
    h.thread("a", a, "t");
    let owner_log = h.slot.session(b"a").owner_log();
    assert!(std::fs::read_to_string(owner_log)
        .unwrap()
        .contains("\"t\""));
    // A new worker on the same state directory.
    h.manager = Manager::new(h.manager.config.clone(), h.slot.clone(), h.now).unwrap();
    h.fx = Effects::default();
    let (second, _) = h.session("a");
    h.session("b");
    h.request("b", json!(1), "thread/read", json!({"threadId": "t"}));
    assert_eq!(
        h.bus_lines()[0]["error"]["message"],
        "thread not owned by session"
    );
    h.request("a", json!(2), "thread/read", json!({"threadId": "t"}));
    assert_eq!(
        h.child_lines(second)[0]["method"],
        "thread/resume",
        "the restored thread is resumed before use"
    );
}

#[test]
fn a_restarted_worker_serves_a_session_from_its_handshake_log_without_initialize() {
    // Shared child: the log is the slot's.
    let mut h = Harness::new(Layout::Shared);
    let first = h.spawned()[0].0;
    h.handshake(first, "/h");
    h.initialize("a");
    assert_eq!(h.bus_lines()[0]["id"], "init");
    let log = std::fs::read_to_string(h.slot.handshake_log()).unwrap();
    assert!(log.contains("\"session\":\"a\""), "{log}");
    h.manager = Manager::new(h.manager.config.clone(), h.slot.clone(), h.now).unwrap();
    h.fx = Effects::default();
    h.manager.begin(h.now, &mut h.fx);
    let second = h.spawned()[0].0;
    h.handshake(second, "/h");
    h.request("a", json!(1), "model/list", json!({}));
    assert_eq!(h.child_lines(second)[0]["method"], "model/list");
    h.request("b", json!(2), "model/list", json!({}));
    assert_eq!(h.bus_lines()[0]["error"]["message"], "Not initialized");

    // A child per session: the log is the session's directory's, read when its lane opens.
    let mut h = Harness::per_session(2, None);
    h.session("a");
    assert!(h.slot.session(b"a").handshake_log().exists());
    h.manager = Manager::new(h.manager.config.clone(), h.slot.clone(), h.now).unwrap();
    h.fx = Effects::default();
    h.request("a", json!(1), "model/list", json!({}));
    let (generation, home) = h.spawned()[0].clone();
    let sent = h.handshake(generation, &home);
    assert_eq!(sent[0]["method"], "model/list", "{sent:?}");
    assert!(h.bus_lines().is_empty(), "{:?}", h.fx.bus);
}

#[test]
fn a_stop_escalates_to_sigterm_then_sigkill() {
    let mut h = Harness::per_session(2, Some(10));
    let (a, _) = h.session("a");
    h.advance(10);
    assert_eq!(h.closed(), vec![a]);
    h.advance(2);
    assert_eq!(std::mem::take(&mut h.fx.signal), vec![(a, Signal::SIGTERM)]);
    h.advance(1);
    assert_eq!(std::mem::take(&mut h.fx.signal), vec![(a, Signal::SIGKILL)]);
    h.advance(1);
    assert!(h.fx.signal.is_empty());
    // Given up on: the place is free, and a late exit event changes nothing.
    h.exited(a);
    h.request("a", json!(1), "model/list", json!({}));
    assert_eq!(h.spawned().len(), 1);
}

#[test]
fn approval_ids_are_unique_across_children_and_answers_reach_the_child_that_asked() {
    let mut h = Harness::per_session(2, None);
    let (a, _) = h.session("a");
    let (b, _) = h.session("b");
    h.thread("a", a, "ta");
    h.thread("b", b, "tb");
    for (generation, thread) in [(a, "ta"), (b, "tb")] {
        h.child(
            generation,
            json!({"id": 0, "method": "item/commandExecution/requestApproval",
                   "params": {"threadId": thread, "turnId": "u", "itemId": "i", "startedAtMs": 1}}),
        );
    }
    let asked = h.bus_lines();
    assert_eq!(asked.len(), 2);
    assert_eq!(
        (&asked[0]["sessionId"], &asked[1]["sessionId"]),
        (&json!("a"), &json!("b"))
    );
    let (id_a, id_b) = (asked[0]["id"].clone(), asked[1]["id"].clone());
    assert_ne!(id_a, id_b, "both children asked with id 0");
    // a cannot answer b's request; b's answer reaches b's child with the child's own id.
    h.bus(&json!({"jsonrpc":"2.0","id": id_b, "result": {"decision":"accept"}, "sessionId":"a"}));
    assert!(h.child_lines(a).is_empty() && h.child_lines(b).is_empty());
    h.bus(&json!({"jsonrpc":"2.0","id": id_b, "result": {"decision":"accept"}, "sessionId":"b"}));
    assert_eq!(
        h.child_lines(b),
        vec![json!({"id":0,"result":{"decision":"accept"}})]
    );
    // The bus's own error answers carry no sessionId: the id alone finds the child.
    h.bus(&json!({"jsonrpc":"2.0","id": id_a, "error": {"code":-32040,"message":"No client"}}));
    assert_eq!(
        h.child_lines(a),
        vec![json!({"id":0,"result":{"decision":"decline"}})]
    );
    assert!(h.child_lines(b).is_empty());
}

#[test]
fn a_crash_fails_the_sessions_turn_and_the_restart_waits_for_its_next_request() {
    let mut h = Harness::per_session(2, None);
    let (a, _) = h.session("a");
    h.thread("a", a, "t");
    h.child(
        a,
        json!({"method":"turn/started","params":{"threadId":"t","turn":{"id":"u"}}}),
    );
    h.bus_lines();
    h.exited(a);
    let lines = h.bus_lines();
    assert_eq!(lines[0]["method"], "turn/completed");
    assert_eq!(lines[0]["params"]["turn"]["status"], "failed");
    assert!(h.spawned().is_empty());
    h.request(
        "a",
        json!(1),
        "turn/start",
        json!({"threadId": "t", "input": []}),
    );
    assert!(h.spawned().is_empty(), "not before the backoff");
    h.advance(1);
    assert_eq!(h.spawned().len(), 1);
    // Two more deaths within the window exceed --max-child-restarts 2: the worker gives up.
    for _ in 0..2 {
        let generation = h.manager.next_generation - 1;
        h.exited(generation);
        h.advance(2);
    }
    assert!(h.manager.failed());
    assert_eq!(
        h.bus_lines().last().unwrap()["error"]["data"]["reason"],
        "child_unavailable"
    );
}

#[test]
fn the_shared_child_starts_at_once_and_serves_every_session() {
    let mut h = Harness::new(Layout::Shared);
    let spawned = h.spawned();
    assert_eq!(spawned.len(), 1);
    let (child, home) = spawned[0].clone();
    assert_eq!(home, h.slot.codex_home().to_str().unwrap());
    assert!(h.handshake(child, &home).is_empty());
    h.initialize("a");
    h.initialize("b");
    assert_eq!(h.bus_lines().len(), 2);
    assert!(h.spawned().is_empty());
    // It restarts after a crash whether or not a session waits.
    h.exited(child);
    h.advance(1);
    assert_eq!(h.spawned().len(), 1);
}

#[test]
fn the_drain_stops_every_child_and_ends_when_they_are_gone() {
    let mut h = Harness::per_session(4, None);
    let (a, _) = h.session("a");
    let (b, _) = h.session("b");
    h.manager.begin_drain(h.now, false, &mut h.fx);
    let mut closed = h.closed();
    closed.sort_unstable();
    assert_eq!(closed, vec![a, b]);
    assert!(!h.manager.drained());
    h.initialize("late");
    assert_eq!(
        h.bus_lines()[0]["error"]["data"]["reason"],
        "worker_draining"
    );
    assert!(h.spawned().is_empty(), "no child starts during a drain");
    h.exited(a);
    h.exited(b);
    assert!(h.manager.drained());
}

#[test]
fn a_tenants_sessions_share_one_child_and_home_and_its_threads_survive_a_restart() {
    let mut h = Harness::per_session(4, None);
    let tenant_line = |tenant: &str, session: &str, id: Value, method: &str, params: Value| {
        json!({"jsonrpc":"2.0","id":id,"method":method,"params":params,
            "sessionId":format!("{tenant}:{session}"),"tenant":tenant})
    };
    let init = json!({"clientInfo":{"name":"c","version":"1"}});
    h.bus(&tenant_line(
        "a",
        "s1",
        json!("init"),
        "initialize",
        init.clone(),
    ));
    let spawned = h.spawned();
    assert_eq!(spawned.len(), 1);
    let (a, home) = spawned[0].clone();
    assert_eq!(home, h.slot.tenant("a").codex_home().to_string_lossy());
    h.handshake(a, &home);
    h.bus_lines();
    h.bus(&tenant_line(
        "a",
        "s1",
        json!("start"),
        "thread/start",
        json!({}),
    ));
    let sent = h.child_lines(a);
    h.child(
        a,
        json!({"id": sent[0]["id"], "result": {"thread": {"id": "t-a", "ephemeral": false}}}),
    );
    assert_eq!(h.bus_lines()[0]["sessionId"], "a:s1");
    let owner_log = std::fs::read_to_string(h.slot.tenant("a").owner_log()).unwrap();
    assert!(owner_log.contains("\"tenant\":\"a\""), "{owner_log}");
    // a's second session is served by the same child: no spawn, and it may use a's thread.
    h.bus(&tenant_line(
        "a",
        "s2",
        json!("init"),
        "initialize",
        init.clone(),
    ));
    assert!(h.spawned().is_empty());
    h.bus_lines();
    h.bus(&tenant_line(
        "a",
        "s2",
        json!(1),
        "thread/read",
        json!({"threadId": "t-a"}),
    ));
    assert_eq!(h.child_lines(a)[0]["method"], "thread/read");
    // Tenant b gets a child and home of its own, where a's thread does not exist.
    h.bus(&tenant_line(
        "b",
        "s1",
        json!("init"),
        "initialize",
        init.clone(),
    ));
    let (b, b_home) = h.spawned()[0].clone();
    assert_ne!(b_home, home);
    h.handshake(b, &b_home);
    h.bus_lines();
    h.bus(&tenant_line(
        "b",
        "s1",
        json!(2),
        "turn/start",
        json!({"threadId": "t-a"}),
    ));
    assert_eq!(h.bus_lines()[0]["error"]["message"], "no such thread");
    // A new worker on the same state: a reconnecting session of a finds the thread again.
    h.manager = Manager::new(h.manager.config.clone(), h.slot.clone(), h.now).unwrap();
    h.fx = Effects::default();
    h.bus(&tenant_line("a", "s3", json!("init"), "initialize", init));
    let (again, _) = h.spawned()[0].clone();
    h.handshake(again, &home);
    h.bus_lines();
    h.bus(&tenant_line(
        "a",
        "s3",
        json!(3),
        "turn/start",
        json!({"threadId": "t-a"}),
    ));
    assert_eq!(
        h.child_lines(again)[0]["method"],
        "thread/resume",
        "the restored thread is resumed before use"
    );
}
