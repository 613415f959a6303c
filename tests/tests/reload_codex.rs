//! Rolling restarts and shrinks of a `codex-worker` pool (issue 16), over fake `codex app-server`
//! children (`codex-mock app-server`): what a client with a Codex turn in progress sees when its
//! slot is rolled, and whether its thread goes on afterwards, on the same slot (a roll) or on
//! another (a shrink).
//!
//! The daemon runs on loopback TCP with the admin endpoint on; a reload is the CLI
//! (`codex-stdio-bus reload --metrics ADDR`, token in `CODEX_BUS_METRICS_TOKEN`) after the config
//! file was rewritten, run on a thread of its own because it answers only when the roll is done.
//! A roll is triggered by changing the pool's `env` (`ROLL_GENERATION`), which changes nothing
//! else the worker does.
//!
//! Every process is ended by pid: the daemon by [`Bus`]'s drop (its workers die with it through
//! `PR_SET_PDEATHSIG`, and are SIGKILLed by pid too), the CLI by [`run_cli`](codex_bus_tests::admin::run_cli).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use codex_bus_tests::admin::{admin_section, run_cli, CliRun};
use codex_bus_tests::codex::{
    require_codex, rerun_offline, worker_pool_config, Pause, ResponsesServer,
};
use codex_bus_tests::turns::{is_completed, turn_id, user_texts};
use codex_bus_tests::{bin, say, wait_dead, Bus, BusConfig, Mode, WAIT};
use serde_json::{json, Value};

/// The admin endpoint's bearer token (`metrics.bearer_sha256` is its digest).
const ADMIN_TOKEN: &str = "reload-codex-admin-token-8c41d2";

/// The fake child's turns: the first delta 200 ms after `turn/start`, then 40 deltas 100 ms apart,
/// so a turn runs about 4 s: well past the 2 s between a stopped worker's SIGTERM and its SIGKILL,
/// and well within a `roll_timeout_sec` of 30.
const LONG_TURNS: &str =
    "--first-delta-ms 200 --deltas 40 --delta-interval-ms 100 --jitter-pct 0 --thread-started-first";

/// Short turns (about 0.2 s) for the shrink, where no turn is cut.
const SHORT_TURNS: &str =
    "--first-delta-ms 50 --deltas 5 --delta-interval-ms 20 --jitter-pct 0 --thread-started-first";

// ---------------------------------------------------------------------------------------------
// The config

/// Cluster mode's store and shared directory, under the test's state directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cluster {
    Off,
    Sqlite,
}

/// A pool `codex` of `instances` codex-workers over `codex-mock app-server child_args` with
/// `worker_args`, state under `state`, rolled by bumping `generation` (an `env` variable nothing
/// reads).
fn codex_pool(
    state: &Path,
    child_args: &str,
    instances: u32,
    roll_timeout_sec: u64,
    generation: u32,
    cluster: Cluster,
    worker_args: &[&str],
) -> Value {
    let child = format!("{} app-server {child_args}", bin("codex-mock").display());
    let mut args = vec![
        "--codex-cmd".to_owned(),
        child,
        "--state-dir".to_owned(),
        state.join("state").to_str().unwrap().to_owned(),
    ];
    args.extend(worker_args.iter().map(|arg| (*arg).to_owned()));
    if cluster == Cluster::Sqlite {
        args.extend([
            "--store".to_owned(),
            format!("sqlite:{}", state.join("store.sqlite").display()),
            "--shared-dir".to_owned(),
            state.join("shared").to_str().unwrap().to_owned(),
            "--node".to_owned(),
            "node-a".to_owned(),
            "--lease-ttl-sec".to_owned(),
            "3".to_owned(),
        ]);
    }
    json!({
        "id": "codex",
        "command": bin("codex-worker").to_str().unwrap(),
        "args": args,
        "instances": instances,
        "env": {"ROLL_GENERATION": generation.to_string()},
        "ready_grace_ms": 300,
        "roll_timeout_sec": roll_timeout_sec,
    })
}

/// The daemon's config: `pool`, the admin endpoint on a free loopback port behind [`ADMIN_TOKEN`].
fn config(pool: Value) -> Value {
    json!({
        "pools": [pool],
        "limits": {"drain_grace_sec": 0},
        "metrics": admin_section(ADMIN_TOKEN),
    })
}

// ---------------------------------------------------------------------------------------------
// The reload command

/// Starts a reload on a thread of its own (it answers once the roll is done).
fn reload_in_background(admin: &str) -> JoinHandle<CliRun> {
    let admin = admin.to_owned();
    std::thread::spawn(move || run_cli(&["reload", "--metrics", &admin], ADMIN_TOKEN))
}

/// Joins a background reload and asserts it applied.
fn applied(reload: JoinHandle<CliRun>) -> Duration {
    let run = reload.join().expect("reload thread");
    assert_eq!(
        run.code,
        Some(0),
        "reload failed after {:?}: {}",
        run.took,
        run.output
    );
    run.took
}

// ---------------------------------------------------------------------------------------------
// A client of one session

/// One TCP connection carrying one session, whose reads wait at most a given time (a stream that
/// goes quiet is an observation here, not a failure).
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    /// The part of a line read before a timeout.
    partial: String,
    session: String,
    /// Every line received, in order.
    seen: Vec<Value>,
}

impl Client {
    fn connect(addr: &str, session: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the daemon");
        stream.set_nodelay(true).unwrap();
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
            partial: String::new(),
            session: session.to_owned(),
            seen: Vec::new(),
        }
    }

    fn send(&mut self, id: &str, method: &str, params: Value) {
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params,
                          "sessionId": self.session});
        writeln!(self.writer, "{line}").expect("send to the daemon");
    }

    fn notify(&mut self, method: &str) {
        let line = json!({"jsonrpc": "2.0", "method": method, "sessionId": self.session});
        writeln!(self.writer, "{line}").expect("send to the daemon");
    }

    /// The next line within `within`; `None` if none came (or the connection closed).
    fn next(&mut self, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.reader.read_line(&mut self.partial) {
                Ok(0) => return None,
                Ok(_) if self.partial.ends_with('\n') => {
                    let line = std::mem::take(&mut self.partial);
                    let value: Value = serde_json::from_str(line.trim_end())
                        .unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
                    self.seen.push(value.clone());
                    return Some(value);
                }
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(err) => panic!("read from the daemon: {err}"),
            }
        }
    }

    /// Lines until one satisfies `last` (returned, with those before it); panics after [`WAIT`].
    fn until(&mut self, what: &str, mut last: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let start = Instant::now();
        let mut lines = Vec::new();
        while start.elapsed() < WAIT {
            if let Some(line) = self.next(WAIT - start.elapsed()) {
                let done = last(&line);
                lines.push(line);
                if done {
                    return lines;
                }
            }
        }
        panic!("no {what} within {WAIT:?}; got {lines:?}");
    }

    /// Sends request `id` and returns its reply (the lines before it stay in `seen`).
    fn call(&mut self, id: &str, method: &str, params: Value) -> Value {
        self.send(id, method, params);
        self.until(&format!("reply to {method}"), |line| line["id"] == id)
            .pop()
            .unwrap()
    }

    /// `initialize` then `initialized`; returns the result (`codexHome` names the slot).
    fn initialize(&mut self, id: &str) -> Value {
        let reply = self.call(
            id,
            "initialize",
            json!({"clientInfo": {"name": "reload-codex", "version": "1"}}),
        );
        self.notify("initialized");
        reply["result"].clone()
    }

    /// `thread/start`; returns the thread id.
    fn start_thread(&mut self) -> String {
        let reply = self.call("thread", "thread/start", json!({}));
        reply["result"]["thread"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("thread/start failed: {reply}"))
            .to_owned()
    }

    /// `turn/start` with `text` on `thread`; returns the reply.
    fn start_turn(&mut self, id: &str, thread: &str, text: &str) -> Value {
        self.call(
            id,
            "turn/start",
            json!({"threadId": thread, "input": [{"type": "text", "text": text}]}),
        )
    }

    /// Runs a whole turn; returns its `turn/completed` line.
    fn turn(&mut self, id: &str, thread: &str, text: &str) -> Value {
        let reply = self.start_turn(id, thread, text);
        let turn = turn_id(&reply);
        self.until("turn/completed", |line| is_completed(line, &turn))
            .pop()
            .unwrap()
    }

    /// Lines until `quiet` passes without one; returns them.
    fn drain_for(&mut self, quiet: Duration) -> Vec<Value> {
        let mut lines = Vec::new();
        while let Some(line) = self.next(quiet) {
            lines.push(line);
        }
        lines
    }
}

/// The user texts of every turn of a `thread/resume` (or `thread/read`) result, in order.
fn history(result: &Value) -> Vec<String> {
    result["thread"]["turns"]
        .as_array()
        .unwrap_or_else(|| panic!("no turns in {result}"))
        .iter()
        .map(|turn| user_texts(turn).join(" "))
        .collect()
}

/// The slot number in an `initialize` result's `codexHome` (`…/codex/slot-<n>/codex-home`).
fn slot_of(init: &Value) -> u32 {
    let home = init["codexHome"].as_str().expect("codexHome");
    let slot = home
        .split('/')
        .find_map(|part| part.strip_prefix("slot-"))
        .unwrap_or_else(|| panic!("no slot in {home}"));
    slot.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The roll

/// What a client saw of a turn that was in progress when its slot was rolled.
struct Rolled {
    /// The session's client, after the roll.
    client: Client,
    thread: String,
    /// The turn in progress when the reload began.
    turn: String,
    /// Its deltas seen before the reload began.
    deltas_before: usize,
    /// Lines that reached the client after the reload began, until 2 s of silence.
    after: Vec<Value>,
    /// How long the reload took.
    took: Duration,
    /// Where the session's thread lives (`codexHome` of the first `initialize`).
    home: String,
    bus: Bus,
    _state: tempfile::TempDir,
}

/// The first turn's text (completed before the roll), the cut one's, and the one after the roll.
const FIRST: &str = "the first turn";
const CUT: &str = "the turn in progress";
const NEXT: &str = "the turn after the roll";

/// One slot, one session, one thread with one completed turn, then a second turn in progress (its
/// first deltas seen) when the pool is rolled with `roll_timeout_sec`; the codex-worker has
/// `worker_args`, in cluster mode or not.
fn roll_during_a_turn(roll_timeout_sec: u64, worker_args: &[&str], cluster: Cluster) -> Rolled {
    let state = tempfile::tempdir().unwrap();
    let pool = |generation| {
        codex_pool(
            state.path(),
            LONG_TURNS,
            1,
            roll_timeout_sec,
            generation,
            cluster,
            worker_args,
        )
    };
    let bus = Bus::start(&BusConfig(config(pool(1))), Mode::Tcp);
    let admin = bus.metrics_addr();
    let old = bus.wait_workers(1);
    let mut client = Client::connect(bus.tcp_addr(), "roller");
    let home = client.initialize("init")["codexHome"]
        .as_str()
        .expect("codexHome")
        .to_owned();
    let thread = client.start_thread();
    client.turn("turn-1", &thread, FIRST);

    let reply = client.start_turn("turn-2", &thread, CUT);
    let turn = turn_id(&reply);
    let mut deltas_before = 0;
    client.until("two deltas", |line| {
        if line["method"] == "item/agentMessage/delta" {
            deltas_before += 1;
        }
        deltas_before >= 2
    });
    bus.rewrite_config(config(pool(2)));
    let reload = reload_in_background(&admin);
    let after = client.drain_for(Duration::from_secs(2));
    let took = applied(reload);
    wait_dead(&old);
    let new = bus.wait_workers(1);
    assert_ne!(new, old, "the roll replaced the worker");
    say(&format!(
        "roll with roll_timeout_sec {roll_timeout_sec}, worker {worker_args:?}: the reload took {took:?}; \
         {} line(s) reached the client after it began",
        after.len()
    ));
    Rolled {
        client,
        thread,
        turn,
        deltas_before,
        after,
        took,
        home,
        bus,
        _state: state,
    }
}

/// The number of `item/agentMessage/delta` lines in `lines`, and the `turn/completed` of `turn`
/// among them.
fn outcome(lines: &[Value], turn: &str) -> (usize, Option<Value>) {
    let deltas = lines
        .iter()
        .filter(|line| line["method"] == "item/agentMessage/delta")
        .count();
    let completed = lines.iter().find(|line| is_completed(line, turn)).cloned();
    (deltas, completed)
}

/// How the client takes its thread up again on the replacement.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// `thread/resume` by id first, its history checked, then `turn/start`.
    Explicit,
    /// `turn/start` at once: codex-worker knows the thread from the slot's owner log and resumes it
    /// in its child by itself (lazy resume).
    ByTheWorker,
}

/// After the roll: the replacement never saw the session's `initialize`, but codex-worker finds
/// the session's handshake in the slot's handshake log (`handshakes.jsonl` beside `codex-home`,
/// 0600) and initializes the session by itself, so the client just goes on, without `initialize`:
/// the thread is taken up as `how` says, with `expected` as its history, and a new turn runs on
/// it to completion. Returns the history after that turn.
fn continue_after_the_roll(rolled: &mut Rolled, expected: &[&str], how: Resume) -> Vec<String> {
    let thread = rolled.thread.clone();
    let log = Path::new(&rolled.home)
        .parent()
        .expect("slot directory")
        .join("handshakes.jsonl");
    let mode = std::fs::metadata(&log)
        .unwrap_or_else(|err| panic!("{}: {err}", log.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", log.display());
    let client = &mut rolled.client;
    if how == Resume::Explicit {
        let resumed = client.call("resume", "thread/resume", json!({"threadId": thread}));
        assert!(resumed["result"].is_object(), "thread/resume: {resumed}");
        assert_eq!(history(&resumed["result"]), expected, "{resumed}");
    }

    let done = client.turn("turn-3", &thread, NEXT);
    assert_eq!(done["params"]["turn"]["status"], "completed", "{done}");
    let read = client.call("resume-2", "thread/resume", json!({"threadId": thread}));
    let after = history(&read["result"]);
    let mut want: Vec<String> = expected.iter().map(|text| (*text).to_owned()).collect();
    want.push(NEXT.to_owned());
    assert_eq!(after, want, "{read}");
    let log = rolled.bus.log();
    assert_eq!(
        log.matches("initialized from its handshake with an earlier worker")
            .count(),
        1,
        "the replacement restored the session once: {log}"
    );
    after
}

/// (a) A turn that ends within `roll_timeout_sec` ends on the worker being replaced: the client
/// gets every delta and `turn/completed`; the replacement takes over the slot only then, and the
/// thread goes on there: the client's next `turn/start` needs neither `initialize` nor
/// `thread/resume` (codex-worker restores the session and resumes the thread by itself), and all
/// three turns are in it.
#[test]
fn a_turn_that_ends_within_roll_timeout_completes_on_the_old_worker() {
    let started = Instant::now();
    // codex-worker's own drain (--drain-timeout-sec, 20 s by default) lets the 4 s turn end.
    let mut rolled = roll_during_a_turn(30, &[], Cluster::Off);
    let (deltas, completed) = outcome(&rolled.after, &rolled.turn);
    let completed = completed.unwrap_or_else(|| {
        panic!(
            "no turn/completed after the roll began ({} deltas came); log:\n{}",
            deltas,
            rolled.bus.log()
        )
    });
    assert_eq!(
        completed["params"]["turn"]["status"], "completed",
        "{completed}"
    );
    assert_eq!(
        rolled.deltas_before + deltas,
        40,
        "every delta of the turn reached the client"
    );
    // The roll waited for the turn: about 4 s of turn after the second delta, not the 2 s
    // between SIGTERM and SIGKILL.
    assert!(
        rolled.took >= Duration::from_millis(3_000),
        "the roll did not wait for the turn: {:?}",
        rolled.took
    );
    assert!(
        rolled
            .bus
            .log()
            .contains("worker stopped for a rolling restart"),
        "{}",
        rolled.bus.log()
    );
    continue_after_the_roll(&mut rolled, &[FIRST, CUT], Resume::ByTheWorker);
    say(&format!(
        "(a) PASSED in {:?}: the turn completed on the old worker, the roll took {:?}",
        started.elapsed(),
        rolled.took
    ));
}

/// (b) A turn longer than the bound: codex-worker's drain (`--drain-timeout-sec 1`, below the
/// pool's `roll_timeout_sec` 5) interrupts it, the client gets `turn/completed` `interrupted`,
/// and the thread resumes on the replacement by id, its completed history intact.
#[test]
fn a_turn_longer_than_the_bound_is_interrupted_and_its_thread_resumes_on_the_replacement() {
    let started = Instant::now();
    let mut rolled = roll_during_a_turn(5, &["--drain-timeout-sec", "1"], Cluster::Off);
    let (deltas, completed) = outcome(&rolled.after, &rolled.turn);
    let completed = completed.unwrap_or_else(|| {
        panic!(
            "no turn/completed after the roll began ({deltas} deltas came); log:\n{}",
            rolled.bus.log()
        )
    });
    assert_eq!(
        completed["params"]["turn"]["status"], "interrupted",
        "{completed}"
    );
    assert!(
        rolled.deltas_before + deltas < 40,
        "the turn was cut short ({} deltas)",
        rolled.deltas_before + deltas
    );
    assert!(
        rolled.took < Duration::from_secs(5),
        "the worker left once its turn was interrupted, before the bound: {:?}",
        rolled.took
    );
    let history = continue_after_the_roll(&mut rolled, &[FIRST, CUT], Resume::Explicit);
    say(&format!(
        "(b) PASSED in {:?}: interrupted after {} deltas, roll {:?}, history {history:?}",
        started.elapsed(),
        rolled.deltas_before + deltas,
        rolled.took
    ));
}

/// (b') A bound shorter than codex-worker's own drain (`roll_timeout_sec` 1, `--drain-timeout-sec`
/// left at 20 s): the worker is SIGKILLed 2 s after SIGTERM with the turn still running, and the
/// client is told nothing: the deltas stop, no `turn/completed` comes, no error (the bus held no
/// request of it). The thread still resumes on the replacement, without the cut turn.
#[test]
fn a_bound_below_the_workers_drain_cuts_the_turn_without_a_word() {
    cut_without_a_word(Cluster::Off);
}

/// (b') in cluster mode: the replacement is the same lease holder (`node/pool/slot`), so it takes
/// the SIGKILLed worker's lease at once, and the thread resumes the same way.
#[test]
fn a_bound_below_the_workers_drain_cuts_the_turn_without_a_word_in_cluster_mode() {
    cut_without_a_word(Cluster::Sqlite);
}

fn cut_without_a_word(cluster: Cluster) {
    let started = Instant::now();
    let mut rolled = roll_during_a_turn(1, &[], cluster);
    let (deltas, completed) = outcome(&rolled.after, &rolled.turn);
    assert!(completed.is_none(), "turn/completed came: {completed:?}");
    assert!(
        rolled.deltas_before + deltas < 40,
        "the turn was cut short ({} deltas)",
        rolled.deltas_before + deltas
    );
    assert!(
        rolled.after.iter().all(|line| line.get("error").is_none()
            && line["method"] != "turn/completed"
            && line["method"] != "error"),
        "nothing but deltas reached the client: {:?}",
        rolled.after
    );
    // SIGKILL came STOP_GRACE (2 s) after SIGTERM.
    assert!(
        rolled.took >= Duration::from_millis(1_800) && rolled.took < Duration::from_secs(5),
        "the roll took {:?}",
        rolled.took
    );
    let history = continue_after_the_roll(&mut rolled, &[FIRST], Resume::Explicit);
    say(&format!(
        "(b') PASSED in {:?}: cut after {} deltas without turn/completed, roll {:?}, history {history:?}",
        started.elapsed(),
        rolled.deltas_before + deltas,
        rolled.took
    ));
}

// ---------------------------------------------------------------------------------------------
// The shrink

/// Connects sessions until one is placed on slot 1 (its `initialize` names the slot's home);
/// returns it and its `codexHome`.
fn session_on_slot_1(addr: &str) -> (Client, String) {
    for n in 0..64 {
        let mut client = Client::connect(addr, &format!("mover-{n}"));
        let init = client.initialize("init");
        if slot_of(&init) == 1 {
            return (client, init["codexHome"].as_str().unwrap().to_owned());
        }
    }
    panic!("no session of 64 was placed on slot 1");
}

/// Two slots; a session on slot 1 runs a turn on its thread; the pool shrinks to one slot. The
/// session's next request goes to slot 0, which has no record of it (the handshake log is the
/// slot's) and refuses it `Not initialized`; there it initializes again and resumes its thread by
/// id; returns the `thread/resume` reply there (and the client, and what to keep alive).
fn shrink(cluster: Cluster) -> (Value, Client, String, Bus, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let pool = |instances| codex_pool(state.path(), SHORT_TURNS, instances, 30, 1, cluster, &[]);
    let bus = Bus::start(&BusConfig(config(pool(2))), Mode::Tcp);
    let admin = bus.metrics_addr();
    let workers = bus.wait_workers(2);
    let (mut client, home) = session_on_slot_1(bus.tcp_addr());
    let thread = client.start_thread();
    let done = client.turn("turn-1", &thread, FIRST);
    assert_eq!(done["params"]["turn"]["status"], "completed", "{done}");

    bus.rewrite_config(config(pool(1)));
    applied(reload_in_background(&admin));
    let left = bus.wait_workers(1);
    assert_eq!(left.len(), 1);
    assert!(workers.contains(&left[0]), "slot 0's worker kept running");

    let refused = client.start_turn("turn-refused", &thread, NEXT);
    assert_eq!(refused["error"]["message"], "Not initialized", "{refused}");
    let init = client.initialize("init-again");
    assert_eq!(slot_of(&init), 0, "the session moved to slot 0");
    assert_ne!(init["codexHome"], home.as_str());
    let resumed = client.call("resume", "thread/resume", json!({"threadId": thread}));
    (resumed, client, thread, bus, state)
}

/// In cluster mode (`--store sqlite:…`, `--shared-dir`), the mode where "resumed elsewhere" is
/// designed to work: the thread of a removed slot resumes on the remaining one with its history,
/// and a turn runs there.
#[test]
fn a_shrink_moves_a_thread_to_the_remaining_slot_in_cluster_mode() {
    let started = Instant::now();
    let (resumed, mut client, thread, _bus, _state) = shrink(Cluster::Sqlite);
    assert!(resumed["result"].is_object(), "thread/resume: {resumed}");
    assert_eq!(history(&resumed["result"]), [FIRST], "{resumed}");
    let done = client.turn("turn-2", &thread, NEXT);
    assert_eq!(done["params"]["turn"]["status"], "completed", "{done}");
    let again = client.call("resume-2", "thread/resume", json!({"threadId": thread}));
    assert_eq!(history(&again["result"]), [FIRST, NEXT], "{again}");
    say(&format!(
        "shrink, cluster mode: PASSED in {:?}",
        started.elapsed()
    ));
}

/// Without cluster mode a slot's threads live in its own `CODEX_HOME`: the remaining slot has no
/// rollout of the moved thread, and `thread/resume` is refused the way Codex refuses an unknown
/// thread (`-32600` `no rollout found for thread id …`).
#[test]
fn a_shrink_without_cluster_mode_loses_the_moved_thread() {
    let (resumed, _client, thread, _bus, _state) = shrink(Cluster::Off);
    assert_eq!(resumed["error"]["code"], -32600, "{resumed}");
    let message = resumed["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no rollout found") && message.contains(&thread),
        "{resumed}"
    );
}

// ---------------------------------------------------------------------------------------------
// The real-Codex tier

/// (b) with the real `codex app-server` (the real-Codex tier, gated as `codex_real.rs`): the mock
/// model stalls the second turn after its first delta, the pool is rolled with `roll_timeout_sec`
/// 5 and codex-worker's `--drain-timeout-sec 1`, Codex reports the turn interrupted, and the
/// thread resumes on the replacement (the session restored there without `initialize`) with its
/// first turn and takes a new one.
#[test]
#[ignore = "tier real-codex: needs a codex binary (CODEX_BIN or ~/.cache/codex-npm); `CODEX_REAL=1 bash .ci/run` installs @openai/codex@0.169.0 and runs it"]
fn real_codex_turn_cut_by_a_roll_resumes_on_the_replacement() {
    let codex = require_codex();
    if !rerun_offline(
        "real_codex_turn_cut_by_a_roll_resumes_on_the_replacement",
        &codex,
    ) {
        real_roll(&codex, Cut::Interrupted);
    }
}

/// (b') with the real `codex app-server`: `roll_timeout_sec` 1 and codex-worker's default drain,
/// so the worker is SIGKILLed 2 s after SIGTERM with the turn stalled; the client gets no
/// `turn/completed`, and the thread still resumes on the replacement, the cut turn in its history
/// as `interrupted`.
#[test]
#[ignore = "tier real-codex: needs a codex binary (CODEX_BIN or ~/.cache/codex-npm); `CODEX_REAL=1 bash .ci/run` installs @openai/codex@0.169.0 and runs it"]
fn real_codex_turn_killed_by_a_roll_resumes_on_the_replacement() {
    let codex = require_codex();
    if !rerun_offline(
        "real_codex_turn_killed_by_a_roll_resumes_on_the_replacement",
        &codex,
    ) {
        real_roll(&codex, Cut::Killed);
    }
}

/// How the stalled real turn ends in [`real_roll`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cut {
    /// codex-worker's drain (`--drain-timeout-sec 1`) interrupts it within `roll_timeout_sec` 5.
    Interrupted,
    /// `roll_timeout_sec` 1: SIGKILL 2 s after SIGTERM, codex-worker's drain (20 s) still waiting.
    Killed,
}

fn real_roll(codex: &Path, cut: Cut) {
    let started = Instant::now();
    let (roll_timeout_sec, worker_args): (u64, &[&str]) = match cut {
        Cut::Interrupted => (5, &["--drain-timeout-sec", "1"]),
        Cut::Killed => (1, &[]),
    };
    let server = ResponsesServer::start_pausing(Some(Pause {
        nth: 2,
        pause: Duration::from_secs(30),
    }));
    let state = tempfile::tempdir().expect("state dir");
    let config = |generation: u32| {
        let mut config = worker_pool_config(codex, &server, state.path(), worker_args).0;
        let pool = &mut config["pools"][0];
        pool["roll_timeout_sec"] = json!(roll_timeout_sec);
        pool["env"]["ROLL_GENERATION"] = json!(generation.to_string());
        config["limits"] = json!({"drain_grace_sec": 0});
        config["metrics"] = admin_section(ADMIN_TOKEN);
        config
    };
    let bus = Bus::start(&BusConfig(config(1)), Mode::Tcp);
    let admin = bus.metrics_addr();
    let old = bus.wait_workers(1);
    let mut client = Client::connect(bus.tcp_addr(), "real-roller");
    client.initialize("init");
    let thread = client.start_thread();
    let done = client.turn("turn-1", &thread, FIRST);
    assert_eq!(done["params"]["turn"]["status"], "completed", "{done}");

    let reply = client.start_turn("turn-2", &thread, CUT);
    let turn = turn_id(&reply);
    client.until("the stalled turn's first delta", |line| {
        line["method"] == "item/agentMessage/delta"
    });
    bus.rewrite_config(config(2));
    let reload = reload_in_background(&admin);
    match cut {
        Cut::Interrupted => {
            let lines = client.until("the cut turn's turn/completed", |line| {
                is_completed(line, &turn)
            });
            let completed = lines.last().unwrap();
            assert_eq!(
                completed["params"]["turn"]["status"], "interrupted",
                "{completed}"
            );
        }
        Cut::Killed => {
            let after = client.drain_for(Duration::from_secs(3));
            assert!(
                after
                    .iter()
                    .all(|line| !is_completed(line, &turn) && line.get("error").is_none()),
                "the killed turn was reported: {after:?}"
            );
        }
    }
    let took = applied(reload);
    wait_dead(&old);
    assert_ne!(bus.wait_workers(1), old, "the roll replaced the worker");

    // No `initialize`: the replacement restores the session from the slot's handshake log.
    let resumed = client.call("resume", "thread/resume", json!({"threadId": thread}));
    assert!(resumed["result"].is_object(), "thread/resume: {resumed}");
    // Codex writes a turn's user message into the rollout when the turn starts, so the cut turn
    // is there, interrupted, even when its worker was SIGKILLed (measured with 0.169.0).
    let before = history(&resumed["result"]);
    let statuses: Vec<Value> = resumed["result"]["thread"]["turns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|turn| turn["status"].clone())
        .collect();
    assert_eq!(before, [FIRST, CUT], "{resumed}");
    assert_eq!(
        statuses,
        [json!("completed"), json!("interrupted")],
        "{resumed}"
    );
    let done = client.turn("turn-3", &thread, NEXT);
    assert_eq!(done["params"]["turn"]["status"], "completed", "{done}");
    let again = client.call("resume-2", "thread/resume", json!({"threadId": thread}));
    let after = history(&again["result"]);
    assert_eq!(after, [FIRST, CUT, NEXT], "{again}");
    let log = bus.log();
    assert_eq!(
        log.matches("initialized from its handshake with an earlier worker")
            .count(),
        1,
        "the replacement restored the session once: {log}"
    );
    say(&format!(
        "real Codex tier: roll ({cut:?}) PASSED in {:?}: the roll took {took:?}; \
         history on the replacement {before:?} ({statuses:?}), then {after:?}; {} model requests",
        started.elapsed(),
        server.requests()
    ));
}
