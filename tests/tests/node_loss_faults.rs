//! Regressions of cluster mode's faults (docs/node-loss.md, "Idempotent retries" and "Leases"),
//! found by an adversarial run: one `codex-worker` driven directly over its stdin and stdout (no
//! bus), over the fake child `codex-mock app-server`, with a SQLite store and a shared directory
//! in a scratch directory.
//!
//! - **A timed-out keyed `turn/start` runs once.** Its child stopped (SIGSTOP), the request gets
//!   `request_timeout`; the child resumed, the same key gets that stored error again, not a new
//!   turn, and the thread holds exactly one turn with that input.
//! - **An `idempotencyKey` that is no key** (a number, empty, 300 bytes) is refused with -32602
//!   `invalid_idempotency_key` and starts nothing.
//! - **A key is scoped by call and thread.** Key "R" on thread T1 and then on T2 starts two
//!   turns; on `thread/start` it starts a thread.
//! - **A lease that lapses while a turn runs.** The store locked by another process for longer
//!   than the TTL, the running turn ends `failed` naming the lost lease within TTL + 2 s of the
//!   lock, and the log says the lease lapsed; the lock released, the thread runs a turn again.
//!
//! Every process a test starts (the worker, its child, the process locking the store) is ended
//! by its pid when the test ends, whatever the outcome.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use codex_bus_tests::turns::user_texts;
use codex_bus_tests::worker::Worker;
use codex_bus_tests::{bin, children_of, say};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// `--lease-ttl-sec` of these workers (the least the worker takes).
const TTL_SEC: u64 = 3;

/// The fake child's pacing: a turn ends within a few tens of milliseconds unless its input asks
/// otherwise (`@first-delta-ms=N`, `@deltas=N`, `@interval-ms=N`).
const CHILD: &str = "app-server --first-delta-ms 10 --deltas 3 --delta-interval-ms 5";

/// Most lines one wait reads.
const MAX_LINES: usize = 5_000;

/// The tenant and session every request names, as the bus sends them with `auth` on.
const TENANT: &str = "a";
const SESSION: &str = "a:s1";

/// A worker in cluster mode with its scratch directory; dropping it ends the worker and every
/// child it started, by pid.
struct Node {
    worker: Worker,
    dir: tempfile::TempDir,
    next_id: u64,
}

impl Node {
    /// Starts a worker whose store and shared directory are in a fresh scratch directory, with
    /// `extra` arguments.
    fn start(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("scratch dir");
        let child = format!("{} {CHILD}", bin("codex-mock").display());
        let store = format!("sqlite:{}", dir.path().join("store.sqlite").display());
        let shared = dir.path().join("shared").display().to_string();
        let state = dir.path().join("state").display().to_string();
        let ttl = TTL_SEC.to_string();
        let mut args = vec![
            "--codex-cmd",
            &child,
            "--state-dir",
            &state,
            "--store",
            &store,
            "--shared-dir",
            &shared,
            "--node",
            "a",
            "--lease-ttl-sec",
            &ttl,
        ];
        args.extend_from_slice(extra);
        let worker = Worker::start(
            &bin("codex-worker"),
            &args,
            &[("CODEX_BUS_POOL", "codex"), ("CODEX_BUS_SLOT", "0")],
        );
        let mut node = Node {
            worker,
            dir,
            next_id: 0,
        };
        let reply = node.reply(
            "initialize",
            json!({"clientInfo": {"name": "test", "version": "1"}}),
            None,
        );
        assert!(reply["result"].is_object(), "{reply}");
        node
    }

    /// The SQLite store's file.
    fn store_path(&self) -> PathBuf {
        self.dir.path().join("store.sqlite")
    }

    /// Sends a request (with `key` as its `idempotencyKey` unless `None`) and returns every
    /// line up to its reply, the reply last.
    fn call(&mut self, method: &str, params: Value, key: Option<Value>) -> Vec<Value> {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        let mut line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params,
            "sessionId": SESSION, "tenant": TENANT});
        if let Some(key) = key {
            line["idempotencyKey"] = key;
        }
        self.worker.send(&format!("{line}\n"));
        self.until(|line| line["id"] == id.as_str())
    }

    /// The reply to a request.
    fn reply(&mut self, method: &str, params: Value, key: Option<Value>) -> Value {
        self.call(method, params, key).pop().expect("a reply")
    }

    /// Reads lines until one satisfies `last`; returns them all. Fails after [`MAX_LINES`]
    /// lines or 20 s.
    fn until(&self, last: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.until_by(Instant::now() + Duration::from_secs(20), last)
    }

    /// Like [`Node::until`], failing at `deadline` (checked at every line).
    fn until_by(&self, deadline: Instant, last: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut lines = Vec::new();
        while lines.len() < MAX_LINES && Instant::now() < deadline {
            let line = self.worker.json();
            let done = last(&line);
            lines.push(line);
            if done {
                return lines;
            }
        }
        let tail = &lines[lines.len().saturating_sub(3)..];
        panic!(
            "no matching line among {} lines (the last: {tail:?})",
            lines.len()
        );
    }

    fn start_thread(&mut self) -> String {
        let reply = self.reply("thread/start", json!({}), None);
        reply["result"]["thread"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("thread/start failed: {reply}"))
            .to_owned()
    }

    /// `turn/start` on `thread` with `text`; returns every line up to its reply.
    fn turn_start(&mut self, thread: &str, text: &str, key: Option<Value>) -> Vec<Value> {
        self.call(
            "turn/start",
            json!({"threadId": thread, "input": [{"type": "text", "text": text}]}),
            key,
        )
    }

    /// The turns `thread/read` shows of `thread`.
    fn turns(&mut self, thread: &str) -> Vec<Value> {
        let reply = self.reply(
            "thread/read",
            json!({"threadId": thread, "includeTurns": true}),
            None,
        );
        reply["result"]["thread"]["turns"]
            .as_array()
            .unwrap_or_else(|| panic!("thread/read failed: {reply}"))
            .clone()
    }

    /// The fake child's pid (the worker's one child).
    fn child_pid(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let children = children_of(self.worker.pid());
            if let [pid] = children[..] {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "the worker has not one child: {children:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The worker first, so it restarts no child; then its children (resumed, should a test
        // have stopped one), each by pid.
        let children = children_of(self.worker.pid());
        let worker = Pid::from_raw(i32::try_from(self.worker.pid()).expect("pid fits i32"));
        let _ = signal::kill(worker, Signal::SIGKILL);
        for pid in children {
            let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
            let _ = signal::kill(pid, Signal::SIGCONT);
            let _ = signal::kill(pid, Signal::SIGKILL);
        }
    }
}

/// Sends `signal` to `pid`.
fn send_signal(pid: u32, signal: Signal) {
    let target = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
    signal::kill(target, signal).unwrap_or_else(|err| panic!("{signal} to {pid}: {err}"));
}

/// How many of `turns` have `text` as input.
fn with_input(turns: &[Value], text: &str) -> usize {
    turns
        .iter()
        .filter(|turn| user_texts(turn).iter().any(|input| input == text))
        .count()
}

/// Another process holding the SQLite store's write lock (`BEGIN EXCLUSIVE`) until dropped;
/// killed by its pid.
struct StoreLock {
    child: Child,
}

impl StoreLock {
    /// Takes the lock on `path` and returns once it is held; `None` when no `python3` with its
    /// `sqlite3` module is installed.
    fn take(path: &Path) -> Option<StoreLock> {
        let script = "import sqlite3, sys, time\n\
                      c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n\
                      c.execute('BEGIN EXCLUSIVE')\n\
                      print('locked', flush=True)\n\
                      time.sleep(120)\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let lock = StoreLock { child };
        if read.is_err() || line.trim() != "locked" {
            // Dropping `lock` ends the process.
            return None;
        }
        Some(lock)
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn a_keyed_turn_start_that_timed_out_is_not_run_again() {
    let started = Instant::now();
    let mut node = Node::start(&["--request-timeout-sec", "2"]);
    let thread = node.start_thread();
    let child = node.child_pid();

    send_signal(child, Signal::SIGSTOP);
    let sent = Instant::now();
    let first = node.turn_start(&thread, "only once", Some(json!("K")));
    let timed_out = sent.elapsed();
    send_signal(child, Signal::SIGCONT);
    let reply = first.last().unwrap();
    assert_eq!(reply["error"]["code"], -32051, "{reply}");
    assert_eq!(
        reply["error"]["data"]["reason"], "request_timeout",
        "{reply}"
    );

    // The child, resumed, starts the turn it was sent; let it run to its end.
    let deadline = Instant::now() + Duration::from_secs(5);
    let turns = loop {
        let turns = node.turns(&thread);
        if turns.iter().any(|turn| turn["status"] == "completed") {
            break turns;
        }
        assert!(
            Instant::now() < deadline,
            "the turn never completed: {turns:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(with_input(&turns, "only once"), 1, "{turns:?}");

    // The retry gets the stored error, and runs nothing.
    let retry = node.turn_start(&thread, "only once", Some(json!("K")));
    let again = retry.last().unwrap();
    assert_eq!(
        again["error"]["code"], -32051,
        "a retry starts no new turn: {again}"
    );
    assert_eq!(
        again["error"], reply["error"],
        "the stored outcome: {again}"
    );
    assert!(
        !retry.iter().any(|line| line["method"] == "turn/started"),
        "{retry:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let turns = node.turns(&thread);
    assert_eq!(turns.len(), 1, "exactly one turn: {turns:?}");
    assert_eq!(with_input(&turns, "only once"), 1, "{turns:?}");
    say(&format!(
        "node_loss_faults: timed out after {timed_out:?}; test took {:?}",
        started.elapsed()
    ));
}

#[test]
fn an_idempotency_key_that_is_no_key_is_refused_and_runs_nothing() {
    let mut node = Node::start(&[]);
    let thread = node.start_thread();
    let long = "k".repeat(300);
    for key in [json!(7), json!(""), json!(long)] {
        let lines = node.turn_start(&thread, "never", Some(key.clone()));
        let reply = lines.last().unwrap();
        assert_eq!(reply["error"]["code"], -32602, "key {key}: {reply}");
        assert_eq!(
            reply["error"]["data"]["reason"], "invalid_idempotency_key",
            "key {key}: {reply}"
        );
        assert!(
            !lines.iter().any(|line| line["method"] == "turn/started"),
            "key {key}: {lines:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let turns = node.turns(&thread);
    assert!(turns.is_empty(), "no turn started: {turns:?}");
    // A valid key still works on the same thread.
    let lines = node.turn_start(&thread, "keyed", Some(json!("ok")));
    let reply = lines.last().unwrap();
    assert!(reply["result"]["turn"]["id"].is_string(), "{reply}");
}

#[test]
fn a_key_reused_for_another_thread_or_call_is_another_key() {
    let mut node = Node::start(&[]);
    let first = node.start_thread();
    let second = node.start_thread();

    let one = node.turn_start(&first, "on the first", Some(json!("R")));
    let one = one.last().unwrap().clone();
    let one_id = one["result"]["turn"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{one}"))
        .to_owned();
    node.until(|line| line["method"] == "turn/completed" && line["params"]["threadId"] == first);

    let two = node.turn_start(&second, "on the second", Some(json!("R")));
    let two = two.last().unwrap().clone();
    let two_id = two["result"]["turn"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("the second thread's own turn: {two}"))
        .to_owned();
    assert_ne!(one_id, two_id, "a new turn, not a replay: {one} / {two}");
    node.until(|line| line["method"] == "turn/completed" && line["params"]["threadId"] == second);
    let turns = node.turns(&second);
    assert_eq!(with_input(&turns, "on the second"), 1, "{turns:?}");
    assert_eq!(node.turns(&first).len(), 1);

    // The same key on another method is another key too.
    let third = node.reply("thread/start", json!({}), Some(json!("R")));
    let third_id = third["result"]["thread"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("thread/start with key R: {third}"));
    assert!(third_id != first && third_id != second, "{third}");
}

#[test]
fn a_lease_that_lapses_while_a_turn_runs_fails_the_turn_then_the_thread_works_again() {
    let mut node = Node::start(&[]);
    let thread = node.start_thread();
    let lines = node.turn_start(
        &thread,
        "a long one @first-delta-ms=50 @deltas=100000 @interval-ms=50",
        None,
    );
    let reply = lines.last().unwrap();
    let turn = reply["result"]["turn"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"))
        .to_owned();
    node.until(|line| line["method"] == "item/agentMessage/delta");

    // python3 (with its standard sqlite3 module) is one of the suite's needs already: the
    // layering test runs ../shared/tools/module-cycles with it. Without it this test fails, it
    // does not pass without having locked anything.
    let lock = StoreLock::take(&node.store_path())
        .expect("python3 with its sqlite3 module locks the store (the suite needs python3)");
    let locked = Instant::now();
    let lines = node.until_by(locked + Duration::from_secs(TTL_SEC + 4), |line| {
        line["method"] == "turn/completed"
    });
    let failed_after = locked.elapsed();
    let completed = &lines.last().unwrap()["params"]["turn"];
    assert_eq!(completed["id"], turn.as_str(), "{completed}");
    assert_eq!(completed["status"], "failed", "{completed}");
    let message = completed["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("lost the thread's lease"), "{completed}");
    assert!(
        failed_after < Duration::from_secs(TTL_SEC + 2),
        "the turn failed {failed_after:?} after the lock (TTL {TTL_SEC} s)"
    );
    let logged = node.worker.stderr_line_containing("lapsed");
    assert!(logged.contains(&thread), "{logged}");

    drop(lock);
    let released = Instant::now();
    // The store is back: the thread runs a turn again (the worker takes its lease anew).
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        let lines = node.turn_start(&thread, "after the lock", None);
        let reply = lines.last().unwrap().clone();
        if reply["error"]["data"]["reason"] == "store_unavailable" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        break reply;
    };
    assert!(again["result"]["turn"]["id"].is_string(), "{again}");
    let lines = node.until(|line| line["method"] == "turn/completed");
    let completed = &lines.last().unwrap()["params"]["turn"];
    assert_eq!(completed["status"], "completed", "{completed}");
    say(&format!(
        "node_loss_faults: the turn failed {failed_after:?} after the store was locked; \
         a new turn completed {:?} after it was released",
        released.elapsed()
    ));
}
