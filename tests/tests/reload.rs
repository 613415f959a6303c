//! Hot reload and rolling restarts (issue 16): the config file re-read on `codex-stdio-bus reload`,
//! `POST /reload` and SIGHUP, applied without losing a request (pools grown, shrunk, added,
//! removed, rolled onto a new worker version), refused whole when invalid, tokens rotated, and
//! `codex-stdio-bus restart --pool` rolling one pool slot by slot while a long request finishes
//! on the worker that took it.
//!
//! Every pool runs `codex-mock --tag VERSION`, so each reply names the version of the worker that
//! answered (`result.tag`) beside its pool, slot and pid.
//!
//! How the daemon's answers are read is kept in a few helpers, the one place to adjust if a format
//! differs: [`reload_cli`] / [`restart_cli`] (exit status 0 for applied or unchanged, 1 otherwise;
//! stdout and stderr searched together), [`post`] (HTTP status and the JSON body
//! `{"result","reason","changes"}`), [`reloads`] (the counter `codex_bus_config_reloads_total`),
//! [`slot_states`] and [`REPLACING`] (`/status`), and the reason texts [`SYNTAX_REASON`], [`INSTANCES_REASON`] and
//! [`RESTART_REASON`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use codex_bus_tests::admin::{admin_section, http, mock_pool, post, run_cli, CliRun, RELOAD_WAIT};
use codex_bus_tests::{login, reason, sha256_hex, wait_dead, Bus, BusConfig, Conn, Mode, WAIT};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// The admin endpoint's bearer token (`metrics.bearer_sha256` is its digest).
const ADMIN_TOKEN: &str = "reload-admin-token-5f3a9c1e7b2d4068";

/// The prefix of every metric the daemon exports (codex-stdio-bus/src/metrics/mod.rs).
const PREFIX: &str = "codex_bus_";

/// A fragment of the reason a reload gives for a config file that is not JSON (as
/// `codex-stdio-bus check` words it: `invalid JSON at line L column C: …`).
const SYNTAX_REASON: &str = "invalid JSON";

/// A fragment of the reason a reload gives for `instances: 0` (`pools[0].instances: must be an
/// integer ≥ 1, got 0`).
const INSTANCES_REASON: &str = "instances";

/// A fragment of the reason a reload gives for a change that needs a restart (the section named).
const RESTART_REASON: &str = "limits";

// ---------------------------------------------------------------------------------------------
// The config

/// A config of `pools` (the first, `codex`, is the default route) with the admin endpoint on a
/// free loopback port guarded by [`ADMIN_TOKEN`]. Only `pools` changes from one reload to the next.
fn config(pools: Vec<Value>) -> Value {
    json!({
        "pools": pools,
        "routing": {"default_pool": "codex"},
        "limits": {"drain_grace_sec": 0},
        "metrics": admin_section(ADMIN_TOKEN),
    })
}

/// A running daemon started from a config file the test rewrites, and its admin address.
struct Daemon {
    bus: Bus,
    admin: String,
}

impl Daemon {
    /// Starts the daemon on TCP (loopback) with `config`; waits for its admin endpoint and for
    /// `workers` workers.
    fn start(config: Value, workers: usize) -> Daemon {
        let bus = Bus::start(&BusConfig(config), Mode::Tcp);
        let admin = bus.metrics_addr();
        bus.wait_workers(workers);
        Daemon { bus, admin }
    }

    /// Replaces the config file the daemon started with (written aside, then renamed over it, so
    /// a reload never reads half a file).
    fn rewrite(&self, text: &str) {
        self.bus.rewrite_config(text);
    }

    /// Rewrites the config file with `config`.
    fn write(&self, config: &Value) {
        self.rewrite(&config.to_string());
    }

    fn connect(&mut self) -> Conn {
        self.bus.connect()
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the daemon's answers (adjust here if a format differs)

/// `codex-stdio-bus reload --metrics ADMIN`.
fn reload_cli(admin: &str) -> CliRun {
    run_cli(&["reload", "--metrics", admin], ADMIN_TOKEN)
}

/// `codex-stdio-bus restart --pool POOL --metrics ADMIN`.
fn restart_cli(admin: &str, pool: &str) -> CliRun {
    run_cli(
        &["restart", "--pool", pool, "--metrics", admin],
        ADMIN_TOKEN,
    )
}

/// Reloads with the CLI and asserts it applied (exit 0); returns how long it took.
fn reload_applied(admin: &str, what: &str) -> Duration {
    let run = reload_cli(admin);
    assert!(run.succeeded(), "reload ({what}) failed: {run:?}");
    run.took
}

/// `codex_bus_config_reloads_total{result}` now (0 before the first reload of that result: a
/// labelled counter may appear only once used). `None` sums every result.
fn reloads(addr: &str, result: Option<&str>) -> f64 {
    use prometheus_parse::{Scrape, Value as PromValue};
    let (code, body) = http(addr, "GET", "/metrics", Some(ADMIN_TOKEN));
    assert_eq!(code, 200, "/metrics answered {code}: {body}");
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus exposition format");
    let name = format!("{PREFIX}config_reloads_total");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| result.is_none_or(|r| s.labels.get("result") == Some(r)))
        .map(|s| match &s.value {
            PromValue::Counter(v) | PromValue::Untyped(v) => *v,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

/// Sends SIGHUP and waits until the daemon has counted one more reload (of any result); returns
/// how long that took.
fn sighup_reload(daemon: &Daemon) -> Duration {
    let before = reloads(&daemon.admin, None);
    let start = Instant::now();
    daemon.bus.signal(Signal::SIGHUP);
    while reloads(&daemon.admin, None) <= before {
        assert!(
            start.elapsed() < RELOAD_WAIT,
            "no reload counted after SIGHUP; log:\n{}",
            daemon.bus.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Every slot on `/status`: (pool, slot, state, pid).
fn slot_states(addr: &str) -> Vec<(String, u64, String, Option<u64>)> {
    let (code, body) = http(addr, "GET", "/status", Some(ADMIN_TOKEN));
    assert_eq!(code, 200, "/status: {body}");
    let status: Value = serde_json::from_str(&body).expect("/status is JSON");
    let mut slots = Vec::new();
    for pool in status["pools"].as_array().expect("pools on /status") {
        for slot in pool["slots"].as_array().expect("slots of a pool") {
            slots.push((
                pool["pool"].as_str().unwrap_or_default().to_owned(),
                slot["slot"].as_u64().unwrap_or_default(),
                slot["state"].as_str().unwrap_or_default().to_owned(),
                slot["pid"].as_u64(),
            ));
        }
    }
    slots
}

/// The state of slot `slot` of `pool` on `/status` (`"replacing"` while a roll holds its work).
const REPLACING: &str = "replacing";

/// Polls `/status` until slot `slot` of `pool` shows `state`; panics with what `gave_up` says
/// when it says something (the command that should cause the state ended), or after [`WAIT`].
fn wait_state(
    addr: &str,
    (pool, slot): (&str, u64),
    state: &str,
    gave_up: &mut dyn FnMut() -> Option<String>,
) {
    let start = Instant::now();
    loop {
        let slots = slot_states(addr);
        if slots
            .iter()
            .any(|(p, s, st, _)| p == pool && *s == slot && st == state)
        {
            return;
        }
        if let Some(why) = gave_up() {
            panic!("{pool}/{slot} never {state} ({slots:?}): {why}");
        }
        assert!(
            start.elapsed() < WAIT,
            "{pool}/{slot} never {state}: {slots:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// Replies

/// Who answered a request: the mock's identity members.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Worker {
    pool: String,
    slot: i64,
    pid: i64,
    tag: String,
}

/// The worker named in a result, if the reply is one.
fn worker_of(reply: &Value) -> Option<Worker> {
    let result = reply.get("result")?;
    Some(Worker {
        pool: result["pool"].as_str()?.to_owned(),
        slot: result["slot"].as_i64()?,
        pid: result["pid"].as_i64()?,
        tag: result["tag"].as_str()?.to_owned(),
    })
}

/// Sends a ping with `id` in `session` (to `pool`, or the default route) and returns the worker
/// that answered; panics on an error reply.
fn ping(conn: &mut Conn, id: &str, session: &str, pool: Option<&str>) -> Worker {
    let reply = call(conn, id, session, pool);
    worker_of(&reply).unwrap_or_else(|| panic!("ping {id} not served: {reply}"))
}

/// Sends a ping and returns the reply, whatever it is.
fn call(conn: &mut Conn, id: &str, session: &str, pool: Option<&str>) -> Value {
    let mut msg = json!({"jsonrpc": "2.0", "id": id, "method": "ping", "sessionId": session});
    if let Some(pool) = pool {
        msg["pool"] = json!(pool);
    }
    conn.send(&msg);
    let reply = conn.recv();
    assert_eq!(reply["id"], json!(id), "{reply}");
    reply
}

/// Pings fresh sessions until every slot of `pool` (`instances` of them) has answered; returns
/// slot → worker.
fn workers_by_slot(
    conn: &mut Conn,
    pool: &str,
    instances: i64,
    label: &str,
) -> BTreeMap<i64, Worker> {
    let mut seen = BTreeMap::new();
    for n in 0..2000 {
        let session = format!("{label}-probe-{n}");
        let worker = ping(conn, &format!("{label}-{n}"), &session, Some(pool));
        seen.insert(worker.slot, worker);
        if seen.len() as i64 == instances {
            return seen;
        }
    }
    panic!("not every slot of {pool} answered: {seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Load

/// One request of the load and its answer.
#[derive(Debug)]
struct Record {
    session: String,
    sent: Instant,
    answered: Instant,
    answer: Answer,
}

#[derive(Debug)]
enum Answer {
    Served(Worker),
    /// An error reply: its reason and whether it said it is retryable.
    Refused {
        reason: String,
        retryable: bool,
    },
}

/// Requests in flight per connection: one per session of the batch.
const WINDOW: usize = 8;
/// Batches a session takes part in before a new generation of sessions starts, so sessions are
/// placed in every phase (before and after a pool grows or shrinks).
const LIFE: usize = 40;

/// A client connection sending batches of [`WINDOW`] pings (one per session) until `stop`, each
/// batch read back whole before the next; counts answered requests in `answered`.
fn load(
    addr: String,
    client: usize,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
) -> JoinHandle<Vec<Record>> {
    std::thread::spawn(move || {
        let mut conn = Conn::tcp(&addr);
        let mut records = Vec::new();
        let mut batch = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let mut pending = HashMap::new();
            for k in 0..WINDOW {
                let id = format!("c{client}-b{batch}-k{k}");
                let session = format!("c{client}-g{}-k{k}", batch / LIFE);
                conn.send(&json!({"jsonrpc": "2.0", "id": id, "method": "ping",
                    "sessionId": session}));
                pending.insert(id, (session, Instant::now()));
            }
            for _ in 0..WINDOW {
                let reply = conn.recv();
                let answered_at = Instant::now();
                let id = reply["id"].as_str().unwrap_or_default().to_owned();
                let (session, sent) = pending
                    .remove(&id)
                    .unwrap_or_else(|| panic!("a reply to no pending request: {reply}"));
                let answer = match worker_of(&reply) {
                    Some(worker) => {
                        // The worker's result carries the session (a bus error need not).
                        assert_eq!(
                            reply["sessionId"],
                            json!(session),
                            "the reply carries its request's session: {reply}"
                        );
                        Answer::Served(worker)
                    }
                    None => Answer::Refused {
                        reason: reason(&reply).unwrap_or("(no reason)").to_owned(),
                        retryable: reply["error"]["data"]["retryable"] == json!(true),
                    },
                };
                records.push(Record {
                    session,
                    sent,
                    answered: answered_at,
                    answer,
                });
                answered.fetch_add(1, Ordering::SeqCst);
            }
            batch += 1;
        }
        records
    })
}

/// Waits until `n` more requests of the load have been answered (the load runs on while the test
/// looks); bounded by [`WAIT`].
fn let_run(answered: &AtomicUsize, n: usize) {
    let target = answered.load(Ordering::SeqCst) + n;
    let start = Instant::now();
    while answered.load(Ordering::SeqCst) < target {
        assert!(start.elapsed() < WAIT, "the load stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Requests answered between two phases of the load test (about 0.1 s of load).
const PHASE: usize = 2000;

/// One reload of the load test: when it ran, and how long its command (or SIGHUP until counted)
/// took.
struct Window {
    label: &'static str,
    start: Instant,
    end: Instant,
    took: Duration,
}

impl Window {
    /// Runs `reload` (which returns how long it took) and records when.
    fn of(label: &'static str, reload: impl FnOnce() -> Duration) -> Window {
        let start = Instant::now();
        let took = reload();
        Window {
            label,
            start,
            end: Instant::now(),
            took,
        }
    }

    /// Whether `at` falls while this reload ran.
    fn holds(&self, at: Instant) -> bool {
        at >= self.start && at <= self.end
    }
}

/// The `q`-quantile of `values` (sorted here).
fn quantile(values: &mut [Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Under steady load (4 connections, 8 sessions in flight each, new sessions all along), a pool
/// grows from 2 to 4 instances (CLI reload), a second pool is added and removed, the pool rolls
/// from worker version v1 to v2, and shrinks back to 2 (SIGHUP): no request is lost (each gets its
/// reply: a result naming pool, slot, pid and tag, or a retryable error), no session moves except
/// from a slot that shrinking removed, and each reply's tag is the version in force (v1 answers
/// everything answered before the roll began, v2 everything sent after the reload returned).
#[test]
fn reloads_under_load_lose_no_request_and_move_only_sessions_of_removed_slots() {
    const CLIENTS: usize = 4;
    let mut daemon = Daemon::start(config(vec![mock_pool("codex", "v1", 2, &[])]), 2);
    let addr = daemon.bus.tcp_addr().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| load(addr.clone(), c, stop.clone(), answered.clone()))
        .collect();
    let_run(&answered, PHASE);
    let mut windows: Vec<Window> = Vec::new();

    // Grow 2 → 4.
    daemon.write(&config(vec![mock_pool("codex", "v1", 4, &[])]));
    windows.push(Window::of("grow 2→4 (cli)", || {
        reload_applied(&daemon.admin, "grow")
    }));
    daemon.bus.wait_workers(4);
    let_run(&answered, PHASE);

    // Add a second pool, serve it, remove it.
    let mut side = daemon.connect();
    daemon.write(&config(vec![
        mock_pool("codex", "v1", 4, &[]),
        mock_pool("extra", "x1", 1, &[]),
    ]));
    windows.push(Window::of("add pool (cli)", || {
        reload_applied(&daemon.admin, "add pool")
    }));
    daemon.bus.wait_workers(5);
    let extra = ping(&mut side, "extra-1", "extra-session", Some("extra"));
    assert_eq!(
        (extra.pool.as_str(), extra.tag.as_str()),
        ("extra", "x1"),
        "{extra:?}"
    );
    let_run(&answered, PHASE);
    daemon.write(&config(vec![mock_pool("codex", "v1", 4, &[])]));
    windows.push(Window::of("remove pool (cli)", || {
        reload_applied(&daemon.admin, "remove pool")
    }));
    daemon.bus.wait_workers(4);
    let gone = call(&mut side, "extra-2", "extra-session", Some("extra"));
    assert!(
        gone.get("error").is_some(),
        "a removed pool serves no more: {gone}"
    );
    let_run(&answered, PHASE);

    // Roll v1 → v2 at 4 instances.
    let before: HashSet<u32> = daemon.bus.worker_pids().into_iter().collect();
    daemon.write(&config(vec![mock_pool("codex", "v2", 4, &[])]));
    let roll = Window::of("roll v1→v2 (cli)", || {
        reload_applied(&daemon.admin, "roll")
    });
    let (roll_started, roll_done) = (roll.start, roll.end);
    windows.push(roll);
    let after: HashSet<u32> = daemon.bus.wait_workers(4).into_iter().collect();
    assert!(
        before.is_disjoint(&after),
        "every worker replaced: {before:?} then {after:?}"
    );
    let_run(&answered, PHASE);

    // Shrink 4 → 2 by SIGHUP.
    daemon.write(&config(vec![mock_pool("codex", "v2", 2, &[])]));
    let shrink = Window::of("shrink 4→2 (sighup)", || sighup_reload(&daemon));
    let shrink_started = shrink.start;
    windows.push(shrink);
    daemon.bus.wait_workers(2);
    let_run(&answered, PHASE);
    assert_eq!(
        reloads(&daemon.admin, Some("applied")),
        5.0,
        "grow, add, remove, roll and shrink each counted as applied"
    );

    stop.store(true, Ordering::SeqCst);
    let mut records = Vec::new();
    for client in clients {
        records.extend(
            client
                .join()
                .expect("a client thread failed: a reply lost, late or wrong"),
        );
    }

    // Every reply: a served ping of pool codex with the right version, or a retryable error.
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut refused = Vec::new();
    let mut wrong_version = Vec::new();
    for record in &records {
        match &record.answer {
            Answer::Served(worker) => {
                assert_eq!(worker.pool, "codex", "{record:?}");
                let expected = if record.answered < roll_started {
                    Some("v1")
                } else if record.sent > roll_done {
                    Some("v2")
                } else {
                    None
                };
                if expected.is_some_and(|tag| tag != worker.tag) {
                    wrong_version.push(record);
                }
            }
            Answer::Refused { reason, retryable } => {
                assert!(retryable, "an error that is not retryable: {record:?}");
                *errors.entry(reason.clone()).or_default() += 1;
                refused.push(record);
            }
        }
    }
    assert!(
        wrong_version.is_empty(),
        "{} replies from the wrong version, first: {:?}",
        wrong_version.len(),
        wrong_version.first()
    );

    // Sessions: a session answered by slot a and later by slot b ≠ a must have been on a slot the
    // shrink removed (a ≥ 2), moved once the shrink began.
    let mut by_session: HashMap<&str, Vec<&Record>> = HashMap::new();
    for record in &records {
        by_session.entry(&record.session).or_default().push(record);
    }
    let mut moved = 0;
    let mut wrongly_moved = Vec::new();
    for (session, mut list) in by_session {
        list.sort_by_key(|r| r.sent);
        let served: Vec<(&Record, i64)> = list
            .iter()
            .filter_map(|r| match &r.answer {
                Answer::Served(w) => Some((*r, w.slot)),
                Answer::Refused { .. } => None,
            })
            .collect();
        for pair in served.windows(2) {
            let ((_, from), (later, to)) = (pair[0], pair[1]);
            if from != to {
                moved += 1;
                if from < 2 || later.answered < shrink_started {
                    wrongly_moved.push((session, from, to));
                }
            }
        }
    }
    assert!(
        wrongly_moved.is_empty(),
        "sessions moved off a slot that stayed: {wrongly_moved:?}"
    );

    // Figures for the notes.
    let mut in_windows: Vec<Duration> = records
        .iter()
        .filter(|r| windows.iter().any(|w| w.holds(r.sent)))
        .map(|r| r.answered - r.sent)
        .collect();
    let mut all: Vec<Duration> = records.iter().map(|r| r.answered - r.sent).collect();
    eprintln!(
        "reload under load: {} requests over {CLIENTS} connections ({WINDOW} in flight each), \
         {} errors {errors:?}, {moved} session moves (all off removed slots)",
        records.len(),
        errors.values().sum::<usize>()
    );
    eprintln!(
        "latency overall: p99 {:?}, max {:?}; sent during reloads ({} requests): p99 {:?}, max {:?}",
        quantile(&mut all, 0.99),
        quantile(&mut all, 1.0),
        in_windows.len(),
        quantile(&mut in_windows, 0.99),
        quantile(&mut in_windows, 1.0)
    );
    // The load ran through the reloads (else nothing above was tested under them), and none of
    // its requests was refused: the reloads hand sessions over without a single error (every
    // run measured so far shows 0).
    assert!(
        !in_windows.is_empty(),
        "no request was sent while a reload ran: {:?}",
        windows
            .iter()
            .map(|w| (w.label, w.took))
            .collect::<Vec<_>>()
    );
    assert!(
        refused.is_empty(),
        "requests refused during the reloads ({errors:?}), first: {:?}",
        refused.first()
    );
    for window in &windows {
        let mut latencies: Vec<Duration> = records
            .iter()
            .filter(|r| window.holds(r.sent))
            .map(|r| r.answered - r.sent)
            .collect();
        eprintln!(
            "reload {}: took {:?}; {} requests sent meanwhile, p99 {:?}, max {:?}",
            window.label,
            window.took,
            latencies.len(),
            quantile(&mut latencies, 0.99),
            quantile(&mut latencies, 1.0)
        );
    }
}

/// An invalid config file (a JSON syntax error, then `instances: 0`, then a change that needs a
/// restart) is refused on reload: the command exits 1 naming the reason, `POST /reload` answers
/// 422 `rejected`, the old config keeps serving (same workers, old version), and
/// `codex_bus_config_reloads_total{result="rejected"}` counts each; a valid file then applies.
#[test]
fn an_invalid_config_is_rejected_and_the_old_one_keeps_serving() {
    let mut daemon = Daemon::start(config(vec![mock_pool("codex", "v1", 2, &[])]), 2);
    let mut conn = daemon.connect();
    let old = workers_by_slot(&mut conn, "codex", 2, "before");
    let rejected = reloads(&daemon.admin, Some("rejected"));
    let still_old = |conn: &mut Conn, label: &str| {
        let now = workers_by_slot(conn, "codex", 2, label);
        assert_eq!(now, old, "the old workers serve on after {label}");
    };

    daemon.rewrite(r#"{"pools": [{"id": "codex", "#);
    let run = reload_cli(&daemon.admin);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.output.contains(SYNTAX_REASON), "{run:?}");
    still_old(&mut conn, "syntax");

    let mut zero = config(vec![mock_pool("codex", "v2", 0, &[])]);
    daemon.write(&zero);
    let run = reload_cli(&daemon.admin);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.output.contains(INSTANCES_REASON), "{run:?}");
    still_old(&mut conn, "instances 0");

    // The same file over HTTP: 422 with the result and its reason.
    let (code, body, raw) = post(&daemon.admin, "/reload", Some(ADMIN_TOKEN));
    assert_eq!(code, 422, "{raw}");
    assert_eq!(body["result"], json!("rejected"), "{raw}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains(INSTANCES_REASON)),
        "{raw}"
    );

    // A valid file that changes what needs a restart.
    zero["pools"] = json!([mock_pool("codex", "v2", 2, &[])]);
    zero["limits"]["max_sessions"] = json!(1000);
    daemon.write(&zero);
    let run = reload_cli(&daemon.admin);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.output.contains(RESTART_REASON), "{run:?}");
    still_old(&mut conn, "a limits change");

    assert_eq!(
        reloads(&daemon.admin, Some("rejected")),
        rejected + 4.0,
        "each rejection counted"
    );
    daemon.bus.wait_workers(2);

    // A valid file applies after all that.
    let applied = reloads(&daemon.admin, Some("applied"));
    daemon.write(&config(vec![mock_pool("codex", "v2", 2, &[])]));
    reload_applied(&daemon.admin, "valid");
    let new = workers_by_slot(&mut conn, "codex", 2, "after");
    assert!(new.values().all(|w| w.tag == "v2"), "{new:?}");
    assert_eq!(
        reloads(&daemon.admin, Some("applied")),
        applied + 1.0,
        "the valid file counted once as applied"
    );
}

/// A token rotated in `auth.tokens_file` takes effect on reload: a new connection with the old
/// token is refused, one with the new token is served, and a connection authenticated before the
/// reload keeps working.
#[test]
fn a_rotated_token_applies_to_new_connections_only() {
    const OLD: &str = "old-capability-token-0a1b2c3d4e5f6789";
    const NEW: &str = "new-capability-token-9f8e7d6c5b4a3210";
    let secrets = tempfile::tempdir().unwrap();
    let tokens = secrets.path().join("tokens.json");
    let write_tokens = |token: &str| {
        let next = secrets.path().join("tokens.json.next");
        std::fs::write(
            &next,
            json!([{"tenant": "a", "sha256": sha256_hex(token)}]).to_string(),
        )
        .unwrap();
        std::fs::rename(&next, &tokens).unwrap();
    };
    write_tokens(OLD);
    let mut cfg = config(vec![mock_pool("codex", "v1", 1, &[])]);
    cfg["auth"] = json!({"tokens_file": tokens});
    let mut daemon = Daemon::start(cfg, 1);

    let mut before = login(&mut daemon.bus, OLD);
    ping(&mut before, "b1", "s-before", None);

    write_tokens(NEW);
    reload_applied(&daemon.admin, "rotated token");

    let mut refused = daemon.connect();
    refused.request(
        json!("auth"),
        "bus/authenticate",
        json!({"token": OLD}),
        None,
    );
    let reply = refused.recv();
    assert!(
        reply.get("error").is_some() && reply["result"]["tenant"].is_null(),
        "the old token is refused after the rotation: {reply}"
    );
    assert_eq!(reason(&reply), Some("unauthenticated"), "{reply}");

    let mut after = login(&mut daemon.bus, NEW);
    ping(&mut after, "a1", "s-after", None);
    ping(&mut before, "b2", "s-before", None);
}

/// `codex-stdio-bus restart --pool codex` rolls that pool slot by slot (each slot's pid changes; a
/// replacement appears while the other slot's old worker still runs; the other pool is left
/// alone) with every request of a client running meanwhile answered; `POST /reload` and `POST
/// /restart` need the bearer (401 without it, 404 for an unknown pool, 200 and the JSON outcome
/// with it), and without `metrics.bearer_sha256` they are forbidden (403) while SIGHUP still
/// reloads.
#[test]
fn restart_rolls_one_pool_slot_by_slot_and_the_admin_posts_need_the_bearer() {
    // Without ready_probe, each replacement is ready ready_grace_ms after its spawn: long enough
    // to see that the next slot's old worker still runs meanwhile.
    let mut codex = mock_pool("codex", "v1", 2, &[]);
    codex.as_object_mut().unwrap().remove("ready_probe");
    codex["ready_grace_ms"] = json!(300);
    let mut daemon = Daemon::start(config(vec![codex, mock_pool("other", "o1", 1, &[])]), 3);
    let mut conn = daemon.connect();
    let old = workers_by_slot(&mut conn, "codex", 2, "before");
    let other = workers_by_slot(&mut conn, "other", 1, "other-before");
    let old_pids: Vec<u32> = old.values().map(|w| w.pid as u32).collect();
    let keep = other[&0].pid as u32;

    // The bearer is required.
    for path in ["/reload", "/restart?pool=codex"] {
        let (code, _, raw) = post(&daemon.admin, path, None);
        assert_eq!(code, 401, "{path} without the bearer: {raw}");
        let (code, _, raw) = post(&daemon.admin, path, Some("wrong-token"));
        assert_eq!(code, 401, "{path} with a wrong bearer: {raw}");
    }
    let (code, _, raw) = post(&daemon.admin, "/restart?pool=nope", Some(ADMIN_TOKEN));
    assert_eq!(code, 404, "an unknown pool: {raw}");

    // A client pings all along; a watcher samples the workers.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let client = load(
        daemon.bus.tcp_addr().to_owned(),
        0,
        stop.clone(),
        answered.clone(),
    );
    let_run(&answered, 100);
    // Both codex slots ready (their first workers past ready_grace_ms) before the watcher looks.
    for slot in 0..2 {
        wait_state(&daemon.admin, ("codex", slot), "ready", &mut || None);
    }
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let daemon_pid = daemon.bus.pid();
        let admin = daemon.admin.clone();
        let watching = watching.clone();
        let old_pids = old_pids.clone();
        std::thread::spawn(move || {
            // A timeline of samples: the daemon's live children that are replacements (neither
            // an old codex worker nor the other pool's), then which old workers still run (not
            // zombies), checked after the listing so that a sample never counts an old worker
            // alive that had already gone when the replacements were listed.
            // Beside each sample, the codex slots `/status` shows handing over (not `ready`:
            // replacing, or its replacement starting until it is ready).
            type Sample = (Duration, Vec<u32>, Vec<u32>);
            let mut timeline: Vec<Sample> = Vec::new();
            let mut handing: Vec<(Duration, Vec<(u64, String)>)> = Vec::new();
            let start = Instant::now();
            while watching.load(Ordering::SeqCst) {
                let states: Vec<(u64, String)> = slot_states(&admin)
                    .into_iter()
                    .filter(|(pool, _, state, _)| pool == "codex" && state != "ready")
                    .map(|(_, slot, state, _)| (slot, state))
                    .collect();
                handing.push((start.elapsed(), states));
                let new: Vec<u32> = codex_bus_tests::children_of(daemon_pid)
                    .into_iter()
                    .filter(|p| !old_pids.contains(p) && *p != keep)
                    .filter(|p| codex_bus_tests::alive(*p))
                    .collect();
                let running: Vec<u32> = old_pids
                    .iter()
                    .copied()
                    .filter(|p| codex_bus_tests::alive(*p))
                    .collect();
                timeline.push((start.elapsed(), new, running));
                std::thread::sleep(Duration::from_millis(5));
            }
            (timeline, handing)
        })
    };
    let run = restart_cli(&daemon.admin, "codex");
    watching.store(false, Ordering::SeqCst);
    assert!(run.succeeded(), "{run:?}");
    let (timeline, handing) = watcher.join().unwrap();
    // At most one slot hands over at a time, as `/status` shows them; and a handover was seen.
    let together: Vec<_> = handing.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(
        together.is_empty(),
        "two codex slots handing over at once: {together:?}"
    );
    assert!(
        handing.iter().any(|(_, s)| s.len() == 1),
        "no slot was ever seen handing over: {handing:?}"
    );
    let (_, first_new, running) = timeline
        .iter()
        .find(|(_, new, _)| !new.is_empty())
        .cloned()
        .expect("a replacement was seen");
    assert!(
        !running.is_empty(),
        "slot by slot: an old worker still ran when the first replacement appeared \
         (old {old_pids:?}, then {first_new:?})"
    );
    // One slot hands over at a time: a second replacement appears only once an old worker has
    // gone, so at no sample do the replacements outnumber the old workers gone by more than one
    // (a roll that spawned every replacement first would show 2 new with 2 old still running).
    let overlapping: Vec<_> = timeline
        .iter()
        .filter(|(_, new, running)| new.len() > 1 + (old_pids.len() - running.len()))
        .collect();
    assert!(
        overlapping.is_empty(),
        "more than one slot handing over at once (old {old_pids:?}): {overlapping:?}"
    );
    // And slot 0's old worker is gone before slot 1's replacement is seen.
    let (old0, old1) = (old[&0].pid as u32, old[&1].pid as u32);
    let old0_gone = timeline
        .iter()
        .position(|(_, _, running)| !running.contains(&old0));
    let two_new = timeline
        .iter()
        .position(|(_, new, _)| new.len() >= 2)
        .expect("both replacements seen before the restart returned");
    assert!(
        old0_gone.is_some_and(|gone| gone <= two_new),
        "slot 1's replacement appeared while slot 0's old worker {old0} still ran \
         (slot 1's old {old1}): {:?}",
        &timeline[..=two_new]
    );
    let_run(&answered, 100);
    stop.store(true, Ordering::SeqCst);
    let records = client.join().expect("every request of the client answered");
    for record in &records {
        if let Answer::Refused { retryable, .. } = &record.answer {
            assert!(retryable, "{record:?}");
        }
    }

    let new = workers_by_slot(&mut conn, "codex", 2, "after");
    for (slot, worker) in &new {
        assert_ne!(worker.pid, old[slot].pid, "slot {slot} got a new worker");
        assert_eq!(worker.tag, "v1", "same config: {worker:?}");
    }
    wait_dead(&old_pids);
    let other_now = workers_by_slot(&mut conn, "other", 1, "other-after");
    assert_eq!(
        other_now[&0].pid as u32, keep,
        "the other pool is left alone"
    );
    eprintln!(
        "restart --pool codex (2 slots, ready_grace_ms 300): {:?}, {} requests meanwhile",
        run.took,
        records.len()
    );

    // `POST /restart` with the bearer: 200 and the outcome in JSON, once the roll is done.
    let (code, body, raw) = post(&daemon.admin, "/restart?pool=other", Some(ADMIN_TOKEN));
    assert_eq!(code, 200, "{raw}");
    assert_eq!(body["result"], json!("applied"), "{raw}");
    assert!(body["changes"].is_array(), "{raw}");
    let other_now = workers_by_slot(&mut conn, "other", 1, "other-restarted");
    assert_ne!(other_now[&0].pid as u32, keep, "other rolled: {raw}");

    // Without a configured bearer the admin posts are forbidden; SIGHUP still reloads.
    let mut open = config(vec![mock_pool("codex", "v1", 1, &[])]);
    open["metrics"] = json!({"listen": "127.0.0.1:0"});
    let mut open = Daemon::start(open, 1);
    for path in ["/reload", "/restart?pool=codex"] {
        let (code, _, raw) = post(&open.admin, path, Some(ADMIN_TOKEN));
        assert_eq!(code, 403, "{path} without metrics.bearer_sha256: {raw}");
        assert!(
            raw.contains("bearer_sha256"),
            "the answer says what to set: {raw}"
        );
    }
    let mut open_conn = open.connect();
    assert_eq!(ping(&mut open_conn, "o1", "s", None).tag, "v1");
    let mut v2 = config(vec![mock_pool("codex", "v2", 1, &[])]);
    v2["metrics"] = json!({"listen": "127.0.0.1:0"});
    open.write(&v2);
    sighup_reload(&open);
    assert_eq!(reloads(&open.admin, Some("applied")), 1.0);
    assert_eq!(ping(&mut open_conn, "o2", "s", None).tag, "v2");
}

/// A rolling restart waits for a long request: a `mock/delay` of 1.5 s in flight when the roll
/// starts is answered by the old worker (its version and pid), a request sent while the slot is
/// handed over is answered by the new one, and the reload answers only after the roll is done.
#[test]
fn a_roll_lets_the_old_worker_finish_its_long_request() {
    let mut daemon = Daemon::start(config(vec![mock_pool("codex", "v1", 1, &[])]), 1);
    let mut conn = daemon.connect();
    let old = ping(&mut conn, "warm", "long", None);
    assert_eq!(old.tag, "v1");

    // The long request, then a ping on the same session: once the ping is answered, the worker has
    // read the delay before it.
    let delay_sent = Instant::now();
    conn.send(
        &json!({"jsonrpc": "2.0", "id": "long", "method": "mock/delay",
        "params": {"ms": 1500}, "sessionId": "long"}),
    );
    let sync = ping(&mut conn, "sync", "long", None);
    assert_eq!(sync.pid, old.pid);

    daemon.write(&config(vec![mock_pool("codex", "v2", 1, &[])]));
    let admin = daemon.admin.clone();
    let reload = std::thread::spawn(move || {
        let run = reload_cli(&admin);
        (run, Instant::now())
    });
    let mut reload = Some(reload);
    wait_state(&daemon.admin, ("codex", 0), REPLACING, &mut || {
        if reload.as_ref().is_some_and(|r| r.is_finished()) {
            let (run, _) = reload.take().unwrap().join().unwrap();
            Some(format!("the reload ended first: {run:?}"))
        } else {
            None
        }
    });
    let reload = reload.unwrap();

    // During the handover: held for the next worker.
    let mut other = daemon.connect();
    other.send(
        &json!({"jsonrpc": "2.0", "id": "handover", "method": "ping",
        "sessionId": "long"}),
    );
    let long = conn.recv();
    assert_eq!(long["id"], json!("long"), "{long}");
    let by = worker_of(&long).unwrap_or_else(|| panic!("the long request served: {long}"));
    assert_eq!(
        (by.pid, by.tag.as_str()),
        (old.pid, "v1"),
        "answered by the old worker: {long}"
    );

    let handover = other.recv();
    assert_eq!(handover["id"], json!("handover"), "{handover}");
    let by = worker_of(&handover).unwrap_or_else(|| panic!("the handover ping served: {handover}"));
    assert_eq!(by.tag, "v2", "answered by the new worker: {handover}");
    assert_ne!(by.pid, old.pid, "{handover}");

    let (run, done_at) = reload.join().unwrap();
    assert!(run.succeeded(), "{run:?}");
    assert!(
        done_at >= delay_sent + Duration::from_millis(1500),
        "the reload answered only once the roll was done, after the long request ({:?})",
        run.took
    );
    wait_dead(&[old.pid as u32]);
    eprintln!(
        "roll waiting for a 1.5 s request: reload took {:?}",
        run.took
    );
}

/// A pool added whose worker cannot start makes the reload `failed` (exit 1, the slot and the
/// worker's exit named) instead of `applied`, while the other pools serve on; the default route
/// (`routing.default_pool`) moves with a reload; and a change to what a flag overrides
/// (`metrics.listen` under `--metrics`) is no change.
#[test]
fn a_new_pool_that_cannot_start_fails_the_reload_and_the_default_route_follows_the_file() {
    let mut base = config(vec![mock_pool("codex", "v1", 1, &[])]);
    let mut daemon = Daemon::start(base.clone(), 1);
    let mut conn = daemon.connect();
    assert_eq!(ping(&mut conn, "a", "s-a", None).pool, "codex");

    // A pool whose worker exits at once (codex-mock refuses an unknown flag).
    let mut broken = mock_pool("broken", "b1", 1, &[]);
    broken["args"] = json!(["--no-such-flag"]);
    base["pools"] = json!([mock_pool("codex", "v1", 1, &[]), broken]);
    let failed = reloads(&daemon.admin, Some("failed"));
    daemon.write(&base);
    let run = reload_cli(&daemon.admin);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.output.contains("failed")
            && run
                .output
                .contains("pool 'broken' slot 0: the new worker did not become ready"),
        "{run:?}"
    );
    assert!(
        run.output.contains("pool 'broken' added with 1 slot"),
        "{run:?}"
    );
    assert_eq!(
        ping(&mut conn, "b", "s-b", None).tag,
        "v1",
        "the default pool serves on"
    );
    assert_eq!(
        reloads(&daemon.admin, Some("failed")),
        failed + 1.0,
        "the reload counted once as failed"
    );

    // The default route moves to a pool added by the same reload; the broken one goes.
    base["pools"] = json!([
        mock_pool("codex", "v1", 1, &[]),
        mock_pool("other", "o1", 1, &[])
    ]);
    base["routing"]["default_pool"] = json!("other");
    daemon.write(&base);
    let run = reload_cli(&daemon.admin);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.output
            .contains("routing.default_pool: 'codex' -> 'other'"),
        "{run:?}"
    );
    assert_eq!(
        ping(&mut conn, "c", "s-c", None).tag,
        "o1",
        "a new session takes the new default"
    );
    assert_eq!(
        ping(&mut conn, "d", "s-a", None).tag,
        "v1",
        "a placed session stays"
    );

    // No default any more, with two pools: valid, and the change says what it means.
    base["routing"] = json!({});
    daemon.write(&base);
    let run = reload_cli(&daemon.admin);
    assert_eq!(run.code, Some(0), "{run:?}");
    let reply = call(&mut conn, "e", "s-e", None);
    assert_eq!(
        reply["error"]["data"]["reason"],
        json!("pool_required"),
        "{reply}"
    );
    assert_eq!(ping(&mut conn, "f", "s-f", Some("codex")).tag, "v1");
}
