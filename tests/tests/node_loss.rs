//! Node loss (issue 15): two daemons, nodes A and B, whose `codex-worker`s share one thread store
//! (`--store`) and one state directory (`--shared-dir`), as two hosts behind a balancer would.
//!
//! - **Failover.** A tenant runs a turn on A; A's daemon is SIGKILLed (its workers and their
//!   app-server children die with it); on B the thread is refused with `thread_leased` (naming A)
//!   until A's lease expires, within `--lease-ttl-sec` plus a margin of the kill; then the turn
//!   runs on B and `thread/resume` shows A's turn and B's. Another tenant gets `thread_not_found`
//!   throughout, and a retry of A's keyed `turn/start` on B replays A's stored reply.
//! - **Idempotency.** One `turn/start` sent four times with one key (twice at once, once while the
//!   turn streams, once after it completed) starts one turn and gets one reply four times; the
//!   same key from another tenant starts that tenant's own turn. Likewise with
//!   `params.clientUserMessageId`.
//! - **Store loss** (PostgreSQL): with the cluster stopped, what needs the store gets the
//!   retryable `store_unavailable` promptly, the rest works and no process dies; restarted, the
//!   same request succeeds.
//!
//! With SQLite the tests always run; with PostgreSQL they are the `postgres` tier (a throwaway
//! cluster, `codex_bus_tests::postgres`), and over real `codex app-server` the `real-codex` tier.
//! Workers run the fake child `codex-mock app-server`, which writes Codex-style rollouts into its
//! `CODEX_HOME` and resumes from them. What the tests measure is printed with `say`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use codex_bus_tests::codex::{
    require_codex, rerun_offline, worker_pool_config, ResponsesServer, ANSWER,
};
use codex_bus_tests::postgres::PgCluster;
use codex_bus_tests::turns::{is_completed, turn_id};
use codex_bus_tests::{
    alive, bin, children_of, login, say, sha256_hex, worker_pool, Bus, BusConfig, Conn, Mode,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// The tenants' capability tokens: (tenant, token).
const TOKENS: [(&str, &str); 2] = [
    ("a", "node-loss-token-a-6c1f0e93b2d7"),
    ("b", "node-loss-token-b-3a8e5d2c9f41"),
];

/// `--lease-ttl-sec` of the failover tests: a dead holder's lease must be gone this long after
/// its last renewal.
const TTL_SEC: u64 = 3;

/// What the failover may take beyond the TTL: the poll interval, a store round trip, the
/// import of the rollout and the child's resume.
const MARGIN: Duration = Duration::from_secs(3);

/// The fake child's pacing: a turn streams for about a second, so a retry can be sent while it
/// streams.
const CHILD: &str = "app-server --first-delta-ms 300 --deltas 8 --delta-interval-ms 80";

/// Most lines one client reads in a test before giving up.
const MAX_LINES: usize = 5_000;

/// The tree of processes a node started must be gone this long after its daemon's SIGKILL.
const TREE_GONE_WITHIN: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Nodes

/// What the nodes of one test share: a scratch directory (holding the shared state directory
/// `shared/`, each node's own state directory `<node>/`, and the SQLite store) and the store URL.
struct Shared {
    dir: tempfile::TempDir,
    store: String,
}

impl Shared {
    /// A SQLite store in the scratch directory.
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("scratch dir");
        let store = format!("sqlite:{}", dir.path().join("store.sqlite").display());
        Self { dir, store }
    }

    /// The store at `url` (a PostgreSQL cluster's).
    fn at(url: &str) -> Self {
        Self {
            dir: tempfile::tempdir().expect("scratch dir"),
            store: url.to_owned(),
        }
    }

    /// The shared state directory.
    fn shared_dir(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    /// The cluster-mode arguments of node `name`'s worker.
    fn cluster_args(&self, name: &str, ttl: u64) -> Vec<String> {
        vec![
            "--store".into(),
            self.store.clone(),
            "--shared-dir".into(),
            self.shared_dir().display().to_string(),
            "--node".into(),
            name.into(),
            "--lease-ttl-sec".into(),
            ttl.to_string(),
        ]
    }

    /// Starts node `name`: a daemon with `auth` and one `codex-worker` over the fake child.
    fn node(&self, name: &str, ttl: u64) -> Bus {
        self.node_with(name, ttl, &[])
    }

    /// Like [`Shared::node`], with `extra` worker arguments.
    fn node_with(&self, name: &str, ttl: u64, extra: &[&str]) -> Bus {
        let child = format!("{} {CHILD}", bin("codex-mock").display());
        let state = self.dir.path().join(name).display().to_string();
        let mut args = vec!["--codex-cmd".to_owned(), child, "--state-dir".into(), state];
        args.extend(self.cluster_args(name, ttl));
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let bus = Bus::start(&with_auth(worker_pool("codex-worker", 1, &args)), Mode::Tcp);
        bus.wait_workers(1);
        bus
    }
}

/// `config` with both tenants' tokens.
fn with_auth(config: BusConfig) -> BusConfig {
    let tokens: Vec<Value> = TOKENS
        .iter()
        .map(|(tenant, token)| json!({"tenant": tenant, "sha256": sha256_hex(token)}))
        .collect();
    config.section("auth", json!({ "tokens": tokens }))
}

/// A process identified by pid and start time, so a pid the kernel reused is never signalled.
#[derive(Clone, Copy, Debug)]
struct Proc {
    pid: u32,
    start: u64,
}

impl Proc {
    fn of(pid: u32) -> Option<Proc> {
        start_time(pid).map(|start| Proc { pid, start })
    }

    /// Whether this very process still runs (not a zombie, not a reused pid).
    fn alive(&self) -> bool {
        alive(self.pid) && start_time(self.pid) == Some(self.start)
    }

    fn kill(&self) {
        if self.alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                Signal::SIGKILL,
            );
        }
    }
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Every process below `pid`, depth first.
fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    for child in children_of(pid) {
        all.push(child);
        all.extend(descendants(child));
    }
    all
}

/// The processes a node started (its workers and everything below them), SIGKILLed on drop if
/// any outlived the test: after a daemon's SIGKILL the `Bus` guard no longer sees them.
struct Tree(Vec<Proc>);

impl Tree {
    fn of(bus: &Bus) -> Tree {
        let mut pids = descendants(bus.pid());
        pids.sort_unstable();
        pids.dedup();
        let procs: Vec<Proc> = pids.into_iter().filter_map(Proc::of).collect();
        assert!(!procs.is_empty(), "a node without workers");
        Tree(procs)
    }

    fn alive(&self) -> Vec<Proc> {
        self.0.iter().filter(|p| p.alive()).copied().collect()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for proc in &self.0 {
            proc.kill();
        }
    }
}

/// SIGKILLs `bus`'s daemon and waits until every process it started is gone (they die by their
/// parent-death signal; leftovers are killed and fail the test). Returns the instant of the kill.
fn kill_node(name: &str, bus: &mut Bus, tree: &Tree) -> Instant {
    bus.signal(Signal::SIGKILL);
    let killed = Instant::now();
    bus.wait_exit();
    loop {
        let left = tree.alive();
        if left.is_empty() {
            break;
        }
        if killed.elapsed() > TREE_GONE_WITHIN {
            for proc in &left {
                proc.kill();
            }
            panic!("node {name}'s processes outlived its daemon's SIGKILL: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    say(&format!(
        "node loss: node {name} SIGKILLed; its {} other processes (workers, app-servers) gone after {} ms",
        tree.0.len(),
        killed.elapsed().as_millis()
    ));
    killed
}

// ---------------------------------------------------------------------------------------------
// Clients

/// One authenticated client session; every line it receives is kept in `log`.
struct Client {
    conn: Conn,
    session: &'static str,
    next: u64,
    log: Vec<Value>,
}

impl Client {
    /// Logs in to `bus` as `tenant` (a name in [`TOKENS`]) on `session` and initializes.
    fn new(bus: &mut Bus, tenant: &str, session: &'static str) -> Client {
        let token = TOKENS
            .iter()
            .find(|(name, _)| *name == tenant)
            .expect("a tenant of TOKENS")
            .1;
        let mut client = Client {
            conn: login(bus, token),
            session,
            next: 0,
            log: Vec::new(),
        };
        let init = client.call(
            "initialize",
            json!({"clientInfo": {"name": "node_loss", "version": "1"}}),
        );
        assert!(init["result"].is_object(), "{init}");
        client
            .conn
            .send(&json!({"jsonrpc": "2.0", "method": "initialized", "sessionId": session}));
        client
    }

    /// Sends a request (with top-level `idempotencyKey` `key`, if any); returns its id.
    fn send(&mut self, method: &str, params: Value, key: Option<&str>) -> String {
        self.next += 1;
        let id = format!("{method}-{}", self.next);
        let mut line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params,
            "sessionId": self.session});
        if let Some(key) = key {
            line["idempotencyKey"] = json!(key);
        }
        self.conn.send(&line);
        id
    }

    /// Receives one line into the log.
    fn recv(&mut self) -> &Value {
        assert!(self.log.len() < MAX_LINES, "too many lines: {:?}", self.log);
        let line = self.conn.recv();
        self.log.push(line);
        self.log.last().unwrap()
    }

    /// The reply to request `id` (from the log, else the next lines).
    fn reply(&mut self, id: &str) -> Value {
        let is_reply = |line: &Value| line["id"] == id && line.get("method").is_none();
        if let Some(line) = self.log.iter().find(|line| is_reply(line)) {
            return line.clone();
        }
        loop {
            if is_reply(self.recv()) {
                let line = self.log.last().unwrap().clone();
                assert_eq!(line["sessionId"], self.session, "{line}");
                return line;
            }
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params, None);
        self.reply(&id)
    }

    /// Reads until a line of the log satisfies `done`.
    fn wait(&mut self, what: &str, done: impl Fn(&Value) -> bool) {
        while !self.log.iter().any(&done) {
            assert!(
                self.log.len() + 1 < MAX_LINES,
                "no {what} in {:?}",
                self.log
            );
            self.recv();
        }
    }

    /// How many lines of the log satisfy `what`.
    fn count(&self, what: impl Fn(&Value) -> bool) -> usize {
        self.log.iter().filter(|line| what(line)).count()
    }

    /// Starts a thread; returns its id.
    fn start_thread(&mut self) -> String {
        let reply = self.call("thread/start", json!({}));
        reply["result"]["thread"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("thread/start failed: {reply}"))
            .to_owned()
    }

    /// Waits for `turn`'s `turn/completed` and checks that it completed.
    fn wait_turn(&mut self, turn: &str) {
        self.wait(&format!("turn/completed of {turn}"), |line| {
            is_completed(line, turn)
        });
        let done = self
            .log
            .iter()
            .find(|line| is_completed(line, turn))
            .unwrap();
        assert_eq!(done["params"]["turn"]["status"], "completed", "{done}");
    }

    /// Runs `sync` (a request that needs nothing but the worker) and returns after its reply, so
    /// every line sent before it is in the log.
    fn sync(&mut self) {
        let reply = self.call("thread/loaded/list", json!({}));
        assert!(reply["result"].is_object(), "{reply}");
    }
}

fn turn_params(thread: &str, text: &str) -> Value {
    json!({"threadId": thread, "input": [{"type": "text", "text": text}]})
}

fn is_started(line: &Value) -> bool {
    line["method"] == "turn/started"
}

/// Asserts `reply` is the worker's `thread_leased` refusal naming node `node`.
fn assert_leased(reply: &Value, node: &str) {
    let error = &reply["error"];
    assert_eq!(error["code"], -32057, "{reply}");
    assert_eq!(error["data"]["reason"], "thread_leased", "{reply}");
    assert_eq!(error["data"]["retryable"], true, "{reply}");
    assert_eq!(error["data"]["node"], node, "{reply}");
    assert_eq!(
        error["data"]["holder"],
        format!("{node}/codex/0"),
        "{reply}"
    );
    assert!(error["data"]["retryAfterMs"].is_u64(), "{reply}");
}

/// Asserts `reply` is the answer for a thread the tenant does not own.
fn assert_not_found(reply: &Value) {
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    assert_eq!(
        reply["error"]["data"]["reason"], "thread_not_found",
        "{reply}"
    );
}

/// Waits (bounded) until node A's rollout of `thread`, holding `text`, is published in the
/// shared directory (`threads/<thread>/e<epoch>.jsonl`); returns how long that took.
fn wait_published(shared: &Path, thread: &str, text: &str) -> Duration {
    let dir = shared.join("threads").join(thread);
    let start = Instant::now();
    loop {
        let published = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name.starts_with('e')
                    && name.ends_with(".jsonl")
                    && std::fs::read_to_string(entry.path()).is_ok_and(|body| body.contains(text))
            });
        if published {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no rollout of {thread} holding {text:?} published under {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// The failover scenario over `shared`'s store; `label` names the store in what is printed.
fn failover(shared: &Shared, label: &str) {
    let mut a = shared.node("A", TTL_SEC);
    let mut b = shared.node("B", TTL_SEC);
    // Tenant a: a thread and a keyed turn on A, to its end.
    let mut on_a = Client::new(&mut a, "a", "s1");
    let thread = on_a.start_thread();
    let key = "failover-turn-1";
    let id = on_a.send(
        "turn/start",
        turn_params(&thread, "first words on A"),
        Some(key),
    );
    let first = on_a.reply(&id);
    let turn_a = turn_id(&first);
    on_a.wait_turn(&turn_a);
    let publish = wait_published(&shared.shared_dir(), &thread, "first words on A");
    say(&format!(
        "node loss [{label}]: turn {turn_a} on A completed; its rollout was published {} ms after turn/completed",
        publish.as_millis()
    ));

    // Taken now: the workers start their app-server children on demand.
    let tree_a = Tree::of(&a);
    let killed = kill_node("A", &mut a, &tree_a);

    // On B, tenant b learns nothing of the thread, leased or not.
    let mut other = Client::new(&mut b, "b", "s1");
    for method in ["turn/start", "thread/resume"] {
        assert_not_found(&other.call(method, turn_params(&thread, "not mine")));
    }

    // Tenant a reconnects to B: refused while A's lease lives, naming A.
    let mut on_b = Client::new(&mut b, "a", "s1");
    let refused = on_b.call("turn/start", turn_params(&thread, "then words on B"));
    assert_leased(&refused, "A");
    say(&format!(
        "node loss [{label}]: on B {} ms after the kill: {}",
        killed.elapsed().as_millis(),
        refused["error"]
    ));

    // The keyed retry of A's turn, while A's lease lives: a replay of A's reply, or refused.
    let retry = on_b.send(
        "turn/start",
        turn_params(&thread, "first words on A"),
        Some(key),
    );
    let early = on_b.reply(&retry);
    let replayed_early = early.get("result").is_some();
    if replayed_early {
        assert_eq!(early["result"], first["result"], "{early}");
    } else {
        assert_leased(&early, "A");
    }
    say(&format!(
        "node loss [{label}]: keyed retry on B while A's lease lives: {}",
        if replayed_early {
            "replayed A's reply".to_owned()
        } else {
            format!("refused {}", early["error"])
        }
    ));

    // Poll until A's lease has expired and the turn runs on B.
    let mut refusals = 1;
    let (reply, took) = loop {
        std::thread::sleep(Duration::from_millis(200));
        let reply = on_b.call("turn/start", turn_params(&thread, "then words on B"));
        if reply.get("result").is_some() {
            break (reply, killed.elapsed());
        }
        assert_leased(&reply, "A");
        refusals += 1;
        assert!(
            killed.elapsed() < Duration::from_secs(TTL_SEC) + MARGIN + Duration::from_secs(5),
            "B still refuses the thread: {reply}"
        );
    };
    say(&format!(
        "node loss [{label}]: turn/start on B succeeded {} ms after A's SIGKILL (lease TTL {TTL_SEC} s, {refusals} refusals before)",
        took.as_millis()
    ));
    assert!(
        took <= Duration::from_secs(TTL_SEC) + MARGIN,
        "A's lease outlived TTL + margin: {} ms",
        took.as_millis()
    );
    let turn_b = turn_id(&reply);
    assert_ne!(turn_b, turn_a);
    on_b.wait_turn(&turn_b);
    let _tree_b = Tree::of(&b);

    // The keyed retry now: A's stored reply again, and no turn started for it.
    let retry = on_b.send(
        "turn/start",
        turn_params(&thread, "first words on A"),
        Some(key),
    );
    let late = on_b.reply(&retry);
    assert_eq!(late["result"], first["result"], "{late}");
    std::thread::sleep(Duration::from_millis(300));
    on_b.sync();
    assert_eq!(
        on_b.count(is_started),
        1,
        "only B's own turn started on B: {:?}",
        on_b.log
    );

    // B's history holds A's turn and B's.
    let resumed = on_b.call("thread/resume", json!({"threadId": thread}));
    let turns = resumed["result"]["thread"]["turns"]
        .as_array()
        .unwrap_or_else(|| panic!("thread/resume on B: {resumed}"));
    let ids: Vec<&str> = turns.iter().filter_map(|t| t["id"].as_str()).collect();
    assert!(
        ids.contains(&turn_a.as_str()) && ids.contains(&turn_b.as_str()),
        "{ids:?}"
    );
    let history = resumed["result"]["thread"]["turns"].to_string();
    assert!(history.contains("first words on A"), "{history}");
    assert!(history.contains("then words on B"), "{history}");
    say(&format!(
        "node loss [{label}]: thread/resume on B shows {} turns: {ids:?}",
        turns.len()
    ));

    // Still nothing for tenant b, now that B holds the thread.
    assert_not_found(&other.call("thread/resume", json!({"threadId": thread})));
}

/// How a test names one `turn/start` as a retry of another.
#[derive(Clone, Copy)]
enum Key {
    /// The top-level `idempotencyKey`.
    TopLevel(&'static str),
    /// `params.clientUserMessageId`, what the Codex TUI sends.
    ClientMessage(&'static str),
}

impl Key {
    /// Sends `turn/start` on `thread` keyed by `self`; returns the request id.
    fn send(self, client: &mut Client, thread: &str, text: &str) -> String {
        let mut params = turn_params(thread, text);
        match self {
            Key::TopLevel(key) => client.send("turn/start", params, Some(key)),
            Key::ClientMessage(id) => {
                params["clientUserMessageId"] = json!(id);
                client.send("turn/start", params, None)
            }
        }
    }

    fn name(self) -> String {
        match self {
            Key::TopLevel(key) => format!("idempotencyKey {key:?}"),
            Key::ClientMessage(id) => format!("clientUserMessageId {id:?}"),
        }
    }
}

/// One keyed `turn/start` sent four times by `client`: twice at once, once while the turn
/// streams, once after it completed. Exactly one turn starts; every reply is the first one.
/// Returns the turn's id.
fn one_turn_for_four_sends(client: &mut Client, thread: &str, key: Key, label: &str) -> String {
    let started_before = client.count(is_started);
    let text = format!("once, keyed by {}", key.name());
    let first = key.send(client, thread, &text);
    let second = key.send(client, thread, &text);
    let first = client.reply(&first);
    let turn = turn_id(&first);
    let second = client.reply(&second);
    assert_eq!(second["result"], first["result"], "a retry sent at once");
    assert_eq!(
        client.count(|line| is_completed(line, &turn)),
        0,
        "the turn still streams when the third send goes out"
    );
    let third = key.send(client, thread, &text);
    let third = client.reply(&third);
    assert_eq!(third["result"], first["result"], "a retry while it streams");
    assert_eq!(
        client.count(|line| is_completed(line, &turn)),
        0,
        "the third reply came while the turn streamed (slow machine?)"
    );
    client.wait_turn(&turn);
    let fourth = key.send(client, thread, &text);
    let fourth = client.reply(&fourth);
    assert_eq!(
        fourth["result"], first["result"],
        "a retry after it completed"
    );
    // A second turn would start right after its reply: give it time to show.
    std::thread::sleep(Duration::from_millis(300));
    client.sync();
    let started: Vec<&Value> = client
        .log
        .iter()
        .filter(|line| is_started(line))
        .skip(started_before)
        .collect();
    assert_eq!(started.len(), 1, "one turn for four sends: {started:?}");
    assert_eq!(started[0]["params"]["turn"]["id"], turn.as_str());
    // Codex adds a turn/start's input to a turn still running and answers with that turn: a
    // retry that reached the child would show as a second user message in the turn.
    let inputs = client.count(|line| {
        line["method"] == "item/completed"
            && line["params"]["turnId"] == turn.as_str()
            && line["params"]["item"]["type"] == "userMessage"
    });
    assert_eq!(inputs, 1, "the input reached the turn once");
    say(&format!(
        "node loss [{label}]: four sends of one turn/start with {} → one turn {turn}, one reply",
        key.name()
    ));
    turn
}

/// The idempotency scenario on one node over `shared`'s store.
fn idempotency(shared: &Shared, label: &str) {
    let mut node = shared.node("A", 15);
    let mut a = Client::new(&mut node, "a", "s1");
    let mut b = Client::new(&mut node, "b", "s1");
    let thread_a = a.start_thread();
    let thread_b = b.start_thread();
    for key in [Key::TopLevel("turn-key-1"), Key::ClientMessage("msg-1")] {
        let turn_a = one_turn_for_four_sends(&mut a, &thread_a, key, label);
        // The same key from tenant b is b's own key: its own turn on its own thread.
        let turn_b = one_turn_for_four_sends(&mut b, &thread_b, key, label);
        assert_ne!(turn_a, turn_b);
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite: always runs

#[test]
fn failover_to_another_node_with_sqlite() {
    failover(&Shared::sqlite(), "sqlite");
}

#[test]
fn a_keyed_turn_starts_once_with_sqlite() {
    idempotency(&Shared::sqlite(), "sqlite");
}

/// The TTL of the hand-over tests: long enough that only a release frees a thread in time.
const LONG_TTL_SEC: u64 = 15;

/// Asserts `client`'s `thread/resume` of `thread` shows every text of `texts`.
fn assert_history(client: &mut Client, thread: &str, texts: &[&str]) {
    let resumed = client.call("thread/resume", json!({"threadId": thread}));
    let history = resumed["result"]["thread"]["turns"].to_string();
    for text in texts {
        assert!(history.contains(text), "{text:?} missing: {resumed}");
    }
}

#[test]
fn a_draining_node_hands_its_threads_over_at_once_with_sqlite() {
    let shared = Shared::sqlite();
    let mut a = shared.node("A", LONG_TTL_SEC);
    let mut b = shared.node("B", LONG_TTL_SEC);
    let mut on_a = Client::new(&mut a, "a", "s1");
    let thread = on_a.start_thread();
    let turn = turn_id(&on_a.call("turn/start", turn_params(&thread, "before the drain")));
    on_a.wait_turn(&turn);
    let _tree_a = Tree::of(&a);

    // SIGTERM: the worker publishes and releases its leases as it drains.
    a.signal(Signal::SIGTERM);
    let drained = Instant::now();
    a.wait_exit();
    let mut on_b = Client::new(&mut b, "a", "s1");
    let reply = on_b.call("turn/start", turn_params(&thread, "after the drain"));
    let took = drained.elapsed();
    let turn = turn_id(&reply);
    on_b.wait_turn(&turn);
    say(&format!(
        "node loss [sqlite]: node A drained (SIGTERM); B ran the thread's next turn at its first try, {} ms after the signal (lease TTL {LONG_TTL_SEC} s)",
        took.as_millis()
    ));
    assert_history(&mut on_b, &thread, &["before the drain", "after the drain"]);
}

#[test]
fn an_idle_lease_moves_to_another_live_node_and_back_with_sqlite() {
    const IDLE_SEC: u64 = 2;
    let idle = IDLE_SEC.to_string();
    let shared = Shared::sqlite();
    let mut a = shared.node_with("A", LONG_TTL_SEC, &["--lease-idle-sec", &idle]);
    let mut b = shared.node_with("B", LONG_TTL_SEC, &["--lease-idle-sec", &idle]);
    let mut on_a = Client::new(&mut a, "a", "s1");
    let thread = on_a.start_thread();
    let turn = turn_id(&on_a.call("turn/start", turn_params(&thread, "first on A")));
    on_a.wait_turn(&turn);
    let idle_since = Instant::now();

    // B waits for A's lease to go idle; A lives on.
    let mut on_b = Client::new(&mut b, "a", "s2");
    let mut refusals = 0;
    let reply = loop {
        let reply = on_b.call("turn/start", turn_params(&thread, "then on B"));
        if reply.get("result").is_some() {
            break reply;
        }
        assert_leased(&reply, "A");
        refusals += 1;
        assert!(
            idle_since.elapsed() < Duration::from_secs(IDLE_SEC) + MARGIN,
            "A's idle lease was not released: {reply}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = idle_since.elapsed();
    assert!(refusals > 0, "B was refused while A's lease was in use");
    assert!(
        took >= Duration::from_secs(IDLE_SEC) - Duration::from_millis(300),
        "released before it was idle: {} ms",
        took.as_millis()
    );
    say(&format!(
        "node loss [sqlite]: A's lease released {} ms after the thread went idle (--lease-idle-sec {IDLE_SEC}); B refused {refusals} times before",
        took.as_millis()
    ));
    let turn_b = turn_id(&reply);

    // Now B holds the thread: A, alive, must not drive it.
    let refused = on_a.call("turn/start", turn_params(&thread, "again on A"));
    assert_leased(&refused, "B");
    on_b.wait_turn(&turn_b);
    assert_history(&mut on_b, &thread, &["first on A", "then on B"]);
    on_a.sync();
    assert_eq!(
        on_a.count(is_started),
        1,
        "A started only its own turn: {:?}",
        on_a.log
    );
    // And back: once B's lease idles out, A, whose child still has the thread loaded from
    // before, takes it again and continues from the history B added.
    let idle_since = Instant::now();
    let reply = loop {
        let reply = on_a.call("turn/start", turn_params(&thread, "back on A"));
        if reply.get("result").is_some() {
            break reply;
        }
        assert_leased(&reply, "B");
        assert!(
            idle_since.elapsed() < Duration::from_secs(IDLE_SEC) + MARGIN + Duration::from_secs(1),
            "B's idle lease was not released: {reply}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    on_a.wait_turn(&turn_id(&reply));
    assert_history(
        &mut on_a,
        &thread,
        &["first on A", "then on B", "back on A"],
    );
    wait_published(&shared.shared_dir(), &thread, "back on A");
    say(&format!(
        "node loss [sqlite]: the thread moved back to A {} ms after B's turn; A's history holds all three turns",
        idle_since.elapsed().as_millis()
    ));
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: the postgres tier

/// A throwaway PostgreSQL cluster; a cluster that cannot start fails the test. The tier's tests
/// are `#[ignore]`d and run only on purpose (.ci/run runs them where PostgreSQL is installed and
/// says why it skips them otherwise), so a start failure here is a failure, not a skip.
fn postgres(test: &str) -> PgCluster {
    PgCluster::start()
        .unwrap_or_else(|why| panic!("tier postgres: {test}: no PostgreSQL cluster: {why}"))
}

#[test]
#[ignore = "tier postgres: needs PostgreSQL's server binaries (Debian package postgresql) to start a throwaway cluster; .ci/run runs it"]
fn failover_to_another_node_with_postgres() {
    let cluster = postgres("failover_to_another_node_with_postgres");
    failover(&Shared::at(&cluster.url()), "postgres");
}

#[test]
#[ignore = "tier postgres: needs PostgreSQL's server binaries (Debian package postgresql) to start a throwaway cluster; .ci/run runs it"]
fn a_keyed_turn_starts_once_with_postgres() {
    let cluster = postgres("a_keyed_turn_starts_once_with_postgres");
    idempotency(&Shared::at(&cluster.url()), "postgres");
}

/// A thread id (a UUIDv7, as Codex makes them) that no node holds.
const ELSEWHERE: &str = "019ad0c4-0000-7000-8000-000000000000";

/// How long a request that needs a stopped store may take to be refused.
const REFUSED_WITHIN: Duration = Duration::from_secs(10);

/// Sends `turn/start` keyed `key` on `thread`; returns the reply and how long it took.
fn timed_keyed_turn(client: &mut Client, thread: &str, key: &str) -> (Value, Duration) {
    let start = Instant::now();
    let id = client.send("turn/start", turn_params(thread, "keyed"), Some(key));
    let reply = client.reply(&id);
    (reply, start.elapsed())
}

fn assert_store_unavailable(reply: &Value, took: Duration, what: &str) {
    assert_eq!(reply["error"]["code"], -32058, "{what}: {reply}");
    assert_eq!(
        reply["error"]["data"]["reason"], "store_unavailable",
        "{what}: {reply}"
    );
    assert_eq!(reply["error"]["data"]["retryable"], true, "{what}: {reply}");
    assert!(
        took < REFUSED_WITHIN,
        "{what} took {} ms to be refused",
        took.as_millis()
    );
}

#[test]
#[ignore = "tier postgres: needs PostgreSQL's server binaries (Debian package postgresql) to start a throwaway cluster; .ci/run runs it"]
fn store_loss_refuses_what_needs_the_store_and_recovers_with_postgres() {
    let mut cluster =
        postgres("store_loss_refuses_what_needs_the_store_and_recovers_with_postgres");
    let shared = Shared::at(&cluster.url());
    let mut node = shared.node("A", 15);
    let daemon = Proc::of(node.pid()).expect("the daemon runs");
    let mut a = Client::new(&mut node, "a", "s1");
    let thread = a.start_thread();
    let turn = turn_id(&a.call("turn/start", turn_params(&thread, "before the loss")));
    a.wait_turn(&turn);
    let tree = Tree::of(&node);

    cluster.stop();
    let stopped = Instant::now();
    // What needs the store is refused, retryably and promptly: a keyed request.
    let (reply, took) = timed_keyed_turn(&mut a, &thread, "during-the-loss");
    assert_store_unavailable(&reply, took, "keyed turn/start");
    say(&format!(
        "node loss [postgres]: store stopped; keyed turn/start refused after {} ms: {}",
        took.as_millis(),
        reply["error"]
    ));
    // A thread this node holds no lease on: only the store can say whose it is.
    let start = Instant::now();
    let reply = a.call("turn/start", turn_params(ELSEWHERE, "not held here"));
    assert_store_unavailable(
        &reply,
        start.elapsed(),
        "turn/start on a thread not held here",
    );
    // What does not: a new session's initialize, and a turn on the thread this node holds.
    let mut fresh = Client::new(&mut node, "a", "s2");
    fresh.sync();
    let reply = a.call(
        "turn/start",
        turn_params(&thread, "during the loss, unkeyed"),
    );
    let turn = turn_id(&reply);
    a.wait_turn(&turn);
    // A new thread is the worker's to record once the store is back: whatever it answers now,
    // it answers at once.
    let start = Instant::now();
    let reply = a.call("thread/start", json!({}));
    say(&format!(
        "node loss [postgres]: thread/start during the loss answered after {} ms: {}",
        start.elapsed().as_millis(),
        reply
            .get("error")
            .unwrap_or(&reply["result"]["thread"]["id"])
    ));
    assert!(start.elapsed() < REFUSED_WITHIN, "{reply}");
    assert!(daemon.alive(), "the daemon lives");
    assert_eq!(
        tree.alive().len(),
        tree.0.len(),
        "every worker and child lives"
    );
    say(&format!(
        "node loss [postgres]: during the loss initialize and an unkeyed turn on the held thread worked ({} ms into the loss)",
        stopped.elapsed().as_millis()
    ));

    cluster.restart();
    let restarted = Instant::now();
    let (reply, took) = loop {
        let (reply, took) = timed_keyed_turn(&mut a, &thread, "during-the-loss");
        if reply.get("result").is_some() {
            break (reply, restarted.elapsed());
        }
        assert_store_unavailable(&reply, took, "keyed turn/start while the store comes back");
        assert!(
            restarted.elapsed() < REFUSED_WITHIN,
            "still refused after the restart: {reply}"
        );
        std::thread::sleep(Duration::from_millis(200));
        let _ = took;
    };
    a.wait_turn(&turn_id(&reply));
    let reply = a.call("thread/start", json!({}));
    assert!(reply["result"]["thread"]["id"].is_string(), "{reply}");
    say(&format!(
        "node loss [postgres]: store restarted; the keyed turn/start succeeded {} ms later",
        took.as_millis()
    ));
    assert!(daemon.alive(), "the daemon lives");
    assert_eq!(
        tree.alive().len(),
        tree.0.len(),
        "every worker and child lives"
    );
}

// ---------------------------------------------------------------------------------------------
// Real Codex: the real-codex tier

#[test]
#[ignore = "tier real-codex: needs a codex binary (CODEX_BIN or ~/.cache/codex-npm); `CODEX_REAL=1 bash .ci/run` installs @openai/codex@0.169.0 and runs it"]
fn real_codex_failover_to_another_node() {
    let codex = require_codex();
    if !rerun_offline("real_codex_failover_to_another_node", &codex) {
        real_failover(&codex);
    }
}

/// The failover over real `codex app-server` children: a thread and a turn on A, A SIGKILLed,
/// the thread resumed and a turn run on B, A's turn in B's history.
fn real_failover(codex: &Path) {
    let started = Instant::now();
    let server = ResponsesServer::start();
    let shared = Shared::sqlite();
    let node = |name: &str| {
        let state = shared.dir.path().join(name);
        let args = shared.cluster_args(name, TTL_SEC);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let config = with_auth(worker_pool_config(codex, &server, &state, &args));
        let bus = Bus::start(&config, Mode::Tcp);
        bus.wait_workers(1);
        bus
    };
    let mut a = node("A");
    let mut b = node("B");

    let mut on_a = Client::new(&mut a, "a", "s1");
    let thread = on_a.start_thread();
    let reply = on_a.call("turn/start", turn_params(&thread, "say hello on A"));
    let turn_a = turn_id(&reply);
    on_a.wait_turn(&turn_a);
    let text: String = on_a
        .log
        .iter()
        .filter(|line| line["method"] == "item/agentMessage/delta")
        .filter_map(|line| line["params"]["delta"].as_str())
        .collect();
    assert_eq!(text, ANSWER.concat());
    say(&format!(
        "real Codex failover: thread {thread}, turn {turn_a} on A streamed {text:?} ({} ms)",
        started.elapsed().as_millis()
    ));
    let publish = wait_published(&shared.shared_dir(), &thread, "say hello on A");
    say(&format!(
        "real Codex failover: A's rollout published {} ms after turn/completed",
        publish.as_millis()
    ));

    let tree_a = Tree::of(&a);
    let killed = kill_node("A", &mut a, &tree_a);

    let mut on_b = Client::new(&mut b, "a", "s1");
    let mut seen = Vec::new();
    let reply = loop {
        let reply = on_b.call("turn/start", turn_params(&thread, "say hello on B"));
        if reply.get("result").is_some() {
            break reply;
        }
        assert_leased(&reply, "A");
        seen.push(format!(
            "{} ms: {}",
            killed.elapsed().as_millis(),
            reply["error"]["data"]
        ));
        assert!(
            killed.elapsed() < Duration::from_secs(TTL_SEC) + MARGIN + Duration::from_secs(10),
            "B still refuses the thread: {reply}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = killed.elapsed();
    say(&format!(
        "real Codex failover: on B, refused {} times ({}); turn/start succeeded {} ms after the kill",
        seen.len(),
        seen.first().map(String::as_str).unwrap_or("none"),
        took.as_millis()
    ));
    assert!(!seen.is_empty(), "B first refused the thread A held");
    let turn_b = turn_id(&reply);
    on_b.wait_turn(&turn_b);
    let _tree_b = Tree::of(&b);
    let resumed = on_b.call("thread/resume", json!({"threadId": thread}));
    let turns = resumed["result"]["thread"]["turns"]
        .as_array()
        .unwrap_or_else(|| panic!("thread/resume on B: {resumed}"));
    let history = resumed["result"]["thread"]["turns"].to_string();
    assert!(history.contains("say hello on A"), "{history}");
    assert!(history.contains("say hello on B"), "{history}");
    assert_eq!(
        history.matches(&ANSWER.concat()).count(),
        2,
        "both answers: {history}"
    );
    say(&format!(
        "real Codex failover: thread/resume on B shows {} turns ({turn_a} from A, {turn_b} from B); PASSED in {} ms ({} model requests)",
        turns.len(),
        started.elapsed().as_millis(),
        server.requests()
    ));
}

#[test]
#[ignore = "tier real-codex: needs a codex binary (CODEX_BIN or ~/.cache/codex-npm); `CODEX_REAL=1 bash .ci/run` installs @openai/codex@0.169.0 and runs it"]
fn real_codex_idle_thread_moves_to_another_node_and_back() {
    let codex = require_codex();
    if !rerun_offline(
        "real_codex_idle_thread_moves_to_another_node_and_back",
        &codex,
    ) {
        real_move_back(&codex);
    }
}

/// A thread idle on A moves to B (A alive) and, idle on B, back to A, whose app-server still
/// has it loaded. Every turn must reach the shared directory: a node that has never seen the
/// thread (C) resumes all three. What A itself shows is printed (docs/node-loss.md, "A thread
/// that moves back": its child's view may lag).
fn real_move_back(codex: &Path) {
    const IDLE_SEC: &str = "2";
    let server = ResponsesServer::start();
    let shared = Shared::sqlite();
    let node = |name: &str| {
        let state = shared.dir.path().join(name);
        let mut args = shared.cluster_args(name, LONG_TTL_SEC);
        args.extend(["--lease-idle-sec".to_owned(), IDLE_SEC.to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let config = with_auth(worker_pool_config(codex, &server, &state, &args));
        let bus = Bus::start(&config, Mode::Tcp);
        bus.wait_workers(1);
        bus
    };
    let mut a = node("A");
    let mut b = node("B");
    let mut on_a = Client::new(&mut a, "a", "s1");
    let mut on_b = Client::new(&mut b, "a", "s1");
    let thread = on_a.start_thread();
    let run = |client: &mut Client, text: &str, holder: &str| {
        let start = Instant::now();
        let reply = loop {
            let reply = client.call("turn/start", turn_params(&thread, text));
            if reply.get("result").is_some() {
                break reply;
            }
            assert_leased(&reply, holder);
            assert!(start.elapsed() < Duration::from_secs(15), "{reply}");
            std::thread::sleep(Duration::from_millis(200));
        };
        client.wait_turn(&turn_id(&reply));
        say(&format!(
            "real Codex move: {text:?} ran after {} ms",
            start.elapsed().as_millis()
        ));
    };
    run(&mut on_a, "first on A", "B");
    run(&mut on_b, "then on B", "A");
    run(&mut on_a, "back on A", "B");
    let texts = |resumed: &Value| -> Vec<&str> {
        ["first on A", "then on B", "back on A"]
            .into_iter()
            .filter(|text| {
                resumed["result"]["thread"]["turns"]
                    .to_string()
                    .contains(text)
            })
            .collect()
    };
    let resumed = on_a.call("thread/resume", json!({"threadId": thread}));
    say(&format!(
        "real Codex move: thread/resume on A after moving back shows {:?}",
        texts(&resumed)
    ));
    // The turn run after moving back must reach the shared directory too, or the next node to
    // take the thread loses it.
    wait_published(&shared.shared_dir(), &thread, "back on A");
    say(&format!(
        "real Codex move: the published rollout repeats {} line ordinals",
        repeated_ordinals(&shared.shared_dir().join("threads").join(&thread))
    ));
    let mut c = node("C");
    let mut on_c = Client::new(&mut c, "a", "s1");
    let start = Instant::now();
    let resumed = loop {
        let reply = on_c.call("thread/resume", json!({"threadId": thread}));
        if reply.get("result").is_some() {
            break reply;
        }
        assert_leased(&reply, "A");
        assert!(start.elapsed() < Duration::from_secs(15), "{reply}");
        std::thread::sleep(Duration::from_millis(200));
    };
    say(&format!(
        "real Codex move: thread/resume on a third node C shows {:?}",
        texts(&resumed)
    ));
    for text in ["first on A", "then on B", "back on A"] {
        assert!(
            texts(&resumed).contains(&text),
            "{text:?} missing on C: {resumed}"
        );
    }
}

/// How many lines of the newest rollout published under `dir` carry an `ordinal` an earlier line
/// already had: Codex numbers a rollout's lines, and a child that appends to a thread it loaded
/// before another node's turns goes on from its own count.
fn repeated_ordinals(dir: &Path) -> usize {
    let newest = std::fs::read_dir(dir)
        .expect("published rollouts")
        .flatten()
        .map(|entry| entry.path())
        .max_by_key(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            name.trim_start_matches('e').parse::<u64>().unwrap_or(0)
        })
        .expect("a published rollout");
    let body = std::fs::read_to_string(newest).unwrap();
    let mut seen = std::collections::HashSet::new();
    body.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|line| line["ordinal"].as_u64())
        .filter(|ordinal| !seen.insert(*ordinal))
        .count()
}
