//! Reloads against faults (issue 16, adversarial pass): a reload arriving during the daemon's
//! drain, a failed roll of a pool the same reload grew, and a roll of a pool with a slot its
//! restart policy left empty. In each the config the daemon reports in force must be what its
//! workers run, and the drain must refuse new work to the end.
//!
//! Every pool runs `codex-mock --tag VERSION`, so each reply names the version of the worker that
//! answered (`result.tag`) beside its pool and slot.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use codex_bus_tests::admin::{self, admin_section, http, mock_pool};
use codex_bus_tests::{bin, reason, sha256_hex, Bus, BusConfig, Conn, Mode, WAIT};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// The admin endpoint's bearer token (`metrics.bearer_sha256` is its digest).
const ADMIN_TOKEN: &str = "reload-faults-admin-token-8c1d2e3f";

/// A config of `pools` (the first, `codex`, is the default route), draining at once on SIGTERM
/// for up to 30 s, with the admin endpoint on a free loopback port.
fn config(pools: Vec<Value>) -> Value {
    json!({
        "pools": pools,
        "routing": {"default_pool": "codex"},
        "limits": {"drain_grace_sec": 0, "drain_timeout_sec": 30},
        "metrics": admin_section(ADMIN_TOKEN),
    })
}

/// `POST /reload` on the admin endpoint `addr`; returns the HTTP status and the JSON answer.
fn post_reload(addr: &str) -> (u16, Value) {
    post(addr, "/reload")
}

/// `POST path` on the admin endpoint `addr` with the bearer; returns the HTTP status and the JSON
/// answer.
fn post(addr: &str, path: &str) -> (u16, Value) {
    let (code, json, _) = admin::post(addr, path, Some(ADMIN_TOKEN));
    (code, json)
}

/// Asserts that an admin endpoint's answer `(status, body)` has HTTP status `code` and
/// `"result": result`; returns the body.
fn answered((status, answer): (u16, Value), code: u16, result: &str) -> Value {
    assert_eq!(
        (status, &answer["result"]),
        (code, &json!(result)),
        "{answer}"
    );
    answer
}

/// Pings 64 fresh sessions (to the default pool); returns the (slot, tag) of every worker that
/// answered, panicking on any error reply.
fn versions(conn: &mut Conn, round: &str) -> BTreeSet<(i64, String)> {
    let mut seen = BTreeSet::new();
    for i in 0..64 {
        let id = format!("{round}-{i}");
        conn.send(&json!({"jsonrpc": "2.0", "id": id, "method": "ping", "sessionId": id}));
        let reply = conn.recv();
        assert_eq!(reply["id"], json!(id), "{reply}");
        let result = reply
            .get("result")
            .unwrap_or_else(|| panic!("ping {id} not served: {reply}"));
        seen.insert((
            result["slot"].as_i64().unwrap(),
            result["tag"].as_str().unwrap().to_owned(),
        ));
    }
    seen
}

#[test]
fn a_reload_during_the_drain_starts_no_pool_that_would_take_new_work() {
    let mut bus = Bus::start(
        &BusConfig(config(vec![mock_pool("codex", "v1", 1, &[])])),
        Mode::Tcp,
    );
    bus.wait_workers(1);
    let mut conn = bus.connect();
    // A long request keeps the drain going while the reload arrives.
    conn.send(
        &json!({"jsonrpc": "2.0", "id": "long", "method": "mock/delay",
                      "params": {"ms": 3000}, "sessionId": "a"}),
    );
    std::thread::sleep(Duration::from_millis(200));
    bus.signal(Signal::SIGTERM);
    let start = Instant::now();
    loop {
        conn.send(&json!({"jsonrpc": "2.0", "id": "probe", "method": "ping", "sessionId": "b"}));
        let reply = conn.recv();
        if reason(&reply) == Some("shutting_down") {
            break;
        }
        assert!(start.elapsed() < WAIT, "the drain never began: {reply}");
        std::thread::sleep(Duration::from_millis(20));
    }

    bus.rewrite_config(config(vec![
        mock_pool("codex", "v1", 1, &[]),
        mock_pool("late", "late", 1, &[]),
    ]));
    bus.signal(Signal::SIGHUP);
    let rejected = bus.wait_log("config reload rejected; the config in force is unchanged");
    assert!(
        rejected.contains("the daemon is shutting down"),
        "rejected for the drain, not for something else: {rejected}"
    );
    conn.send(&json!({"jsonrpc": "2.0", "id": "late", "method": "ping",
                      "sessionId": "c", "pool": "late"}));
    let reply = conn.recv();
    assert!(
        reply.get("result").is_none(),
        "a pool added during the drain took new work: {reply}"
    );
    assert!(
        !bus.log().contains("slot=late[0]"),
        "a worker of the pool added during the drain started:\n{}",
        bus.log()
    );
    let long = conn.recv();
    assert_eq!(long["id"], json!("long"), "{long}");
    assert!(long.get("result").is_some(), "the drain answers: {long}");
    assert!(bus.wait_exit().success(), "{}", bus.log());
    // Judged once the daemon is gone: no worker of `late` started at any point of the drain, and
    // the reload was refused once, for the drain, with nothing reloaded.
    let log = bus.log();
    assert!(
        !log.contains("slot=late["),
        "a worker of the pool added during the drain started:\n{log}"
    );
    let rejections: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("config reload rejected"))
        .collect();
    assert!(
        rejections.len() == 1 && rejections[0].contains("the daemon is shutting down"),
        "one rejection, for the drain: {rejections:?}"
    );
    assert!(
        !log.contains("config reloaded"),
        "a reload applied during the drain:\n{log}"
    );
}

#[test]
fn a_failed_roll_puts_the_slots_the_reload_grew_back_on_the_previous_config() {
    let mut bus = Bus::start(
        &BusConfig(config(vec![mock_pool("codex", "v1", 2, &[])])),
        Mode::Tcp,
    );
    bus.wait_workers(2);
    let admin = bus.metrics_addr();
    // Grown to 4 with a worker that refuses its arguments: slots 2 and 3 start on it at once, the
    // roll of slot 0 fails and goes back.
    bus.rewrite_config(config(vec![mock_pool(
        "codex",
        "v2",
        4,
        &["--no-such-flag"],
    )]));
    let (code, answer) = post_reload(&admin);
    assert_eq!(code, 500, "{answer}");
    assert_eq!(answer["result"], json!("failed"), "{answer}");

    // The config in force is the previous one at 4 instances: every slot runs it.
    let mut conn = bus.connect();
    let expected: BTreeSet<(i64, String)> = (0..4).map(|s| (s, "v1".to_owned())).collect();
    assert_eq!(versions(&mut conn, "after-failure"), expected);
    // Which is why writing it back changes nothing.
    bus.rewrite_config(config(vec![mock_pool("codex", "v1", 4, &[])]));
    let (code, answer) = post_reload(&admin);
    assert_eq!((code, &answer["result"]), (200, &json!("unchanged")));
    assert_eq!(versions(&mut conn, "reverted"), expected);
}

#[test]
fn a_roll_skips_a_slot_its_restart_policy_left_empty_and_rolls_the_others() {
    let never = |tag: &str| {
        let mut pool = mock_pool("codex", tag, 2, &[]);
        pool["restart_policy"] = json!("never");
        pool
    };
    let mut bus = Bus::start(&BusConfig(config(vec![never("v1")])), Mode::Tcp);
    let workers = bus.wait_workers(2);
    let admin = bus.metrics_addr();
    let mut conn = bus.connect();
    // Kill one worker: its slot stays empty (`never`).
    let victim = workers[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    bus.wait_workers(1);

    bus.rewrite_config(config(vec![never("v2")]));
    answered(post_reload(&admin), 200, "applied");
    // The live slot runs v2; the empty one answers `no_worker`.
    let mut tags = BTreeSet::new();
    let mut no_worker = 0;
    for i in 0..32 {
        let id = format!("s{i}");
        conn.send(&json!({"jsonrpc": "2.0", "id": id, "method": "ping", "sessionId": id}));
        let reply = conn.recv();
        match reply.get("result") {
            Some(result) => {
                tags.insert(result["tag"].as_str().unwrap().to_owned());
            }
            None => {
                assert_eq!(reason(&reply), Some("no_worker"), "{reply}");
                no_worker += 1;
            }
        }
    }
    assert_eq!(tags, BTreeSet::from(["v2".to_owned()]));
    // The empty slot stayed empty (32 sessions over 2 slots: some land on it), and the roll
    // started no worker for it: one worker runs, as before the reload.
    assert!(
        no_worker > 0,
        "no session landed on the empty slot, or the roll filled it"
    );
    let running = bus.worker_pids();
    assert_eq!(running.len(), 1, "one worker after the roll: {running:?}");
    assert!(
        !running.contains(&victim),
        "the killed worker is gone: {running:?}"
    );
}

#[test]
fn a_cancellation_reaches_a_request_a_removed_slot_is_finishing() {
    let slow = |instances: u32| {
        let mut pool = mock_pool("codex", "v1", instances, &[]);
        pool["roll_timeout_sec"] = json!(120);
        pool
    };
    let mut bus = Bus::start(&BusConfig(config(vec![slow(2)])), Mode::Tcp);
    bus.wait_workers(2);
    let admin = bus.metrics_addr();
    let mut conn = bus.connect();
    // A session on slot 1, the slot the reload removes.
    let session = (0..200)
        .map(|i| format!("k{i}"))
        .find(|s| {
            conn.send(&json!({"jsonrpc": "2.0", "id": s, "method": "ping", "sessionId": s}));
            conn.recv()["result"]["slot"] == json!(1)
        })
        .expect("a session on slot 1");
    // Far longer than the test waits for a reply: only the cancellation answers it in time.
    conn.send(
        &json!({"jsonrpc": "2.0", "id": "long", "method": "mock/delay",
                      "params": {"ms": 600_000}, "sessionId": session}),
    );
    std::thread::sleep(Duration::from_millis(200));
    bus.rewrite_config(config(vec![slow(1)]));
    let reload = std::thread::spawn(move || post_reload(&admin));
    // The session moves to slot 0 at once, while slot 1 finishes its request.
    let start = Instant::now();
    loop {
        conn.send(&json!({"jsonrpc": "2.0", "id": "where", "method": "ping",
                          "sessionId": session}));
        let reply = conn.recv();
        if reply["result"]["slot"] == json!(0) {
            break;
        }
        assert!(start.elapsed() < WAIT, "the session never moved: {reply}");
        std::thread::sleep(Duration::from_millis(20));
    }
    conn.send(&json!({"jsonrpc": "2.0", "method": "$/cancelRequest",
                      "params": {"id": "long"}, "sessionId": session}));
    let reply = conn.recv();
    assert_eq!(reply["id"], json!("long"), "{reply}");
    assert_eq!(reply["error"]["code"], json!(-32800), "cancelled: {reply}");
    answered(reload.join().unwrap(), 200, "applied");
}

#[test]
fn a_restart_of_a_pool_whose_program_is_gone_is_refused_and_stops_no_worker() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("mock-copy");
    std::fs::copy(bin("codex-mock"), &program).unwrap();
    let mut copy = mock_pool("codex", "v1", 2, &[]);
    copy["command"] = json!(program.to_str().unwrap());
    let mut bus = Bus::start(&BusConfig(config(vec![copy])), Mode::Tcp);
    let workers: BTreeSet<u32> = bus.wait_workers(2).into_iter().collect();
    let admin = bus.metrics_addr();
    std::fs::remove_file(&program).unwrap();

    let answer = answered(post(&admin, "/restart?pool=codex"), 422, "rejected");
    assert!(
        answer["reason"].as_str().unwrap().contains("mock-copy"),
        "the reason names the program: {answer}"
    );
    // Both workers still run and serve every session.
    let now: BTreeSet<u32> = bus.wait_workers(2).into_iter().collect();
    assert_eq!(now, workers, "no worker was stopped");
    let mut conn = bus.connect();
    let expected: BTreeSet<(i64, String)> = (0..2).map(|s| (s, "v1".to_owned())).collect();
    assert_eq!(versions(&mut conn, "after-restart"), expected);
}

#[test]
fn a_reload_that_leaves_tcp_clients_no_credential_is_refused() {
    let token = "reload-faults-client-token-1";
    let mut secured = config(vec![mock_pool("codex", "v1", 1, &[])]);
    secured["auth"] = json!({"tokens": [{"tenant": "acme", "sha256": sha256_hex(token)}]});
    let mut bus = Bus::start(&BusConfig(secured.clone()), Mode::Tcp);
    bus.wait_workers(1);
    let admin = bus.metrics_addr();
    // `auth` kept, its credentials gone, `insecure_no_auth` set: clients would get in unchecked.
    let mut open = secured.clone();
    open["auth"] = json!({"insecure_no_auth": true});
    bus.rewrite_config(&open);
    let answer = answered(post_reload(&admin), 422, "rejected");
    assert!(
        answer["reason"].as_str().unwrap().contains("restart"),
        "{answer}"
    );
    let mut conn = bus.connect();
    conn.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "sessionId": "s"}));
    let reply = conn.recv();
    assert_eq!(reason(&reply), Some("unauthenticated"), "{reply}");
    // Rotating the credentials is still a reload's business.
    let mut rotated = secured;
    rotated["auth"] = json!({"tokens": [{"tenant": "acme", "sha256": sha256_hex("other")}]});
    bus.rewrite_config(&rotated);
    answered(post_reload(&admin), 200, "applied");
}

#[test]
fn a_failed_roll_of_a_never_restarted_escalating_pool_goes_back_and_keeps_the_daemon_up() {
    let strict = |tag: &str, extra: &[&str]| {
        let mut pool = mock_pool("codex", tag, 1, extra);
        pool["restart_policy"] = json!("never");
        pool["escalate"] = json!(true);
        pool
    };
    let mut bus = Bus::start(&BusConfig(config(vec![strict("v1", &[])])), Mode::Tcp);
    bus.wait_workers(1);
    let admin = bus.metrics_addr();
    bus.rewrite_config(config(vec![strict("v2", &["--no-such-flag"])]));
    answered(post_reload(&admin), 500, "failed");
    // The slot went back to v1, as the answer says: neither left empty by `never` nor escalated.
    let mut conn = bus.connect();
    let expected = BTreeSet::from([(0, "v1".to_owned())]);
    assert_eq!(versions(&mut conn, "after-failure"), expected);
    assert!(
        !bus.log().contains("escalating"),
        "the daemon escalated:\n{}",
        bus.log()
    );
}

/// A daemon of one slot whose roll and queue wait up to 120 s, with a deep worker queue (so held
/// work can fill it), and a connection to it.
fn one_slow_slot() -> (Bus, Conn) {
    let mut slow = mock_pool("codex", "v1", 1, &[]);
    slow["roll_timeout_sec"] = json!(120);
    slow["queue_timeout_sec"] = json!(120);
    let mut small = config(vec![slow]);
    small["limits"]["max_worker_queue"] = json!(65536);
    let mut bus = Bus::start(&BusConfig(small), Mode::Tcp);
    bus.wait_workers(1);
    let conn = bus.connect();
    (bus, conn)
}

/// The state of slot `slot` of pool `pool` on the admin endpoint `addr`'s `/status`, if listed.
fn slot_state(addr: &str, pool: &str, slot: u64) -> Option<String> {
    let (code, body) = http(addr, "GET", "/status", Some(ADMIN_TOKEN));
    assert_eq!(code, 200, "{body}");
    let json = &body[body.find('{')?..=body.rfind('}')?];
    let status: Value = serde_json::from_str(json).expect("/status is JSON");
    status["pools"]
        .as_array()?
        .iter()
        .filter(|p| p["pool"] == json!(pool))
        .flat_map(|p| p["slots"].as_array().cloned().unwrap_or_default())
        .find(|s| s["slot"] == json!(slot))
        .and_then(|s| s["state"].as_str().map(str::to_owned))
}

/// `POST /restart?pool=codex` on a thread of its own (it answers once the roll is done); returns
/// once `/status` shows slot 0 `replacing` (the roll holds new work for its replacement).
fn restart_in_background(bus: &Bus) -> JoinHandle<(u16, Value)> {
    let admin = bus.metrics_addr();
    let restart = {
        let admin = admin.clone();
        std::thread::spawn(move || post(&admin, "/restart?pool=codex"))
    };
    bus.wait_log("rolling restart requested");
    let start = Instant::now();
    loop {
        let state = slot_state(&admin, "codex", 0);
        if state.as_deref() == Some("replacing") {
            return restart;
        }
        assert!(
            !restart.is_finished(),
            "the restart ended before slot 0 was seen replacing (last {state:?})"
        );
        assert!(start.elapsed() < WAIT, "slot 0 never replacing: {state:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A new connection that sends session `a` padded pings (held for the replacement of the slot
/// being rolled) until the bus stops reading it (a write blocks past its timeout); kept open by
/// the caller, with whether a write did block (else the queue never filled within [`WAIT`]).
fn fill_with_held_work(bus: &Bus) -> (TcpStream, bool) {
    let mut flood = TcpStream::connect(bus.tcp_addr()).unwrap();
    flood
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let pad = "x".repeat(4000);
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < WAIT {
        let line = json!({"jsonrpc": "2.0", "id": i, "method": "ping", "sessionId": "a",
                          "params": {"pad": pad}});
        if flood.write_all(format!("{line}\n").as_bytes()).is_err() {
            return (flood, true);
        }
        i += 1;
    }
    (flood, false)
}

#[test]
fn an_approval_reaches_the_worker_being_replaced_when_held_work_fills_its_queue() {
    let (bus, mut conn) = one_slow_slot();
    // The worker asks the client a question and waits for the answer.
    conn.send(&json!({"jsonrpc": "2.0", "id": "ask", "method": "mock/ask", "sessionId": "a"}));
    let question = conn.recv();
    assert_eq!(question["method"], json!("mock/approval"), "{question}");

    let restart = restart_in_background(&bus);
    // Another client fills the slot's queue with work held for the replacement.
    let (flood, blocked) = fill_with_held_work(&bus);
    assert!(
        blocked,
        "the held work never filled the slot's queue: nothing tested"
    );
    // The answer still reaches the worker being replaced: it finishes now, not at the roll's bound.
    conn.send(
        &json!({"jsonrpc": "2.0", "id": question["id"], "result": {"ok": true},
                      "sessionId": "a"}),
    );
    let reply = conn.recv();
    assert_eq!(reply["id"], json!("ask"), "{reply}");
    assert_eq!(reply["result"]["answer"], json!({"ok": true}), "{reply}");
    answered(restart.join().unwrap(), 200, "applied");
    drop(flood);
}

#[test]
fn a_removed_pool_whose_slot_its_policy_left_empty_leaves_the_status() {
    let mut extra = mock_pool("extra", "e", 1, &[]);
    extra["restart_policy"] = json!("never");
    let mut bus = Bus::start(
        &BusConfig(config(vec![mock_pool("codex", "v1", 1, &[]), extra])),
        Mode::Tcp,
    );
    let admin = bus.metrics_addr();
    let mut conn = bus.connect();
    conn.send(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "sessionId": "x",
                      "pool": "extra"}),
    );
    let pid = conn.recv()["result"]["pid"].as_u64().expect("extra serves") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    bus.wait_workers(1);
    bus.rewrite_config(config(vec![mock_pool("codex", "v1", 1, &[])]));
    answered(post_reload(&admin), 200, "applied");
    let (code, body) = http(&admin, "GET", "/status", Some(ADMIN_TOKEN));
    assert_eq!(code, 200, "{body}");
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let status: Value = serde_json::from_str(json).expect("/status is JSON");
    let pools: Vec<&str> = status["pools"]
        .as_array()
        .expect("pools on /status")
        .iter()
        .map(|p| p["pool"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        pools,
        ["codex"],
        "a removed pool with nothing to drain is still on /status: {body}"
    );
}

/// A cancellation of a request the worker being replaced is finishing reaches it at once, even
/// when work held for its successor fills the slot's queue: it waits only for room in the running
/// worker's own queue (before, it waited behind the held work until the roll's bound cut the
/// worker off, and the request ended `worker_exited`).
#[test]
fn a_cancellation_reaches_the_worker_being_replaced_when_held_work_fills_its_queue() {
    let (bus, mut conn) = one_slow_slot();
    // Far longer than the test waits: only the cancellation answers it in time.
    conn.send(
        &json!({"jsonrpc": "2.0", "id": "long", "method": "mock/delay",
                "params": {"ms": 600_000}, "sessionId": "a"}),
    );
    std::thread::sleep(Duration::from_millis(200));
    let restart = restart_in_background(&bus);
    // Another client fills the slot's queue with work held for the replacement.
    let (flood, blocked) = fill_with_held_work(&bus);
    assert!(
        blocked,
        "the held work never filled the slot's queue: nothing tested"
    );
    let sent = Instant::now();
    conn.send(&json!({"jsonrpc": "2.0", "method": "$/cancelRequest",
                      "params": {"id": "long"}, "sessionId": "a"}));
    let reply = conn.recv();
    assert_eq!(reply["id"], json!("long"), "{reply}");
    assert_eq!(reply["error"]["code"], json!(-32800), "cancelled: {reply}");
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "answered by the cancellation, not at the roll's bound: {:?}",
        sent.elapsed()
    );
    answered(restart.join().unwrap(), 200, "applied");
    drop(flood);
}

#[test]
fn a_failed_roll_restarts_on_the_previous_config_the_grown_slots_a_never_policy_left_empty() {
    let never = |tag: &str, instances: u32, extra: &[&str]| {
        let mut pool = mock_pool("codex", tag, instances, extra);
        pool["restart_policy"] = json!("never");
        pool
    };
    let mut bus = Bus::start(&BusConfig(config(vec![never("v1", 1, &[])])), Mode::Tcp);
    bus.wait_workers(1);
    let admin = bus.metrics_addr();
    // Grown to 2 with a worker that refuses its arguments: slot 1's first worker exits and
    // `never` ends its supervisor before the roll of slot 0 fails and goes back.
    bus.rewrite_config(config(vec![never("v2", 2, &["--no-such-flag"])]));
    let (code, answer) = post_reload(&admin);
    assert_eq!(
        (code, &answer["result"]),
        (500, &json!("failed")),
        "{answer}"
    );
    // The config in force is v1 at 2 instances, and slot 1 runs it too: it died of v2 only.
    let mut conn = bus.connect();
    let expected = BTreeSet::from([(0, "v1".to_owned()), (1, "v1".to_owned())]);
    assert_eq!(versions(&mut conn, "after-failure"), expected);
    bus.rewrite_config(config(vec![never("v1", 2, &[])]));
    let (code, answer) = post_reload(&admin);
    assert_eq!((code, &answer["result"]), (200, &json!("unchanged")));
    assert_eq!(versions(&mut conn, "reverted"), expected);
}

#[test]
fn a_roll_stops_a_worker_hung_before_its_readiness_answer_within_its_ready_timeout() {
    // Its probe is never answered (far longer than the test): the worker hangs starting.
    let mut hung = mock_pool("codex", "v1", 1, &[]);
    hung["ready_probe"] = json!({"method": "mock/delay", "params": {"ms": 600_000}});
    hung["ready_timeout_sec"] = json!(3);
    hung["roll_timeout_sec"] = json!(60);
    let mut bus = Bus::start(&BusConfig(config(vec![hung.clone()])), Mode::Tcp);
    bus.wait_log("worker started");
    let admin = bus.metrics_addr();
    // The fix: a probe it answers. The roll stops the hung worker, which serves nothing, by its
    // readiness deadline, not at the end of roll_timeout_sec.
    let mut fixed = hung;
    fixed["ready_probe"] = json!({"method": "ping"});
    bus.rewrite_config(config(vec![fixed]));
    let start = Instant::now();
    let (code, answer) = post_reload(&admin);
    assert_eq!(
        (code, &answer["result"]),
        (200, &json!("applied")),
        "{answer}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the roll waited {:?} for a worker that was never ready",
        start.elapsed()
    );
    let mut conn = bus.connect();
    assert_eq!(
        versions(&mut conn, "fixed"),
        BTreeSet::from([(0, "v1".to_owned())])
    );
}

/// A roll that fails on slot 1 after slot 0 took the new config puts slot 0 back too: the whole
/// pool runs the previous config, as the table says, and writing the previous file back is
/// `unchanged` with every slot on it (before, slot 0 stayed on the new config for good).
#[test]
fn a_roll_that_fails_part_way_puts_the_slots_already_rolled_back() {
    let mut bus = Bus::start(
        &BusConfig(config(vec![mock_pool("codex", "v1", 2, &[])])),
        Mode::Tcp,
    );
    bus.wait_workers(2);
    let admin = bus.metrics_addr();
    // v2 starts on slot 0 and exits at once on slot 1 (the bus names the slot in CODEX_BUS_SLOT).
    let mock = bin("codex-mock");
    let script = format!(
        r#"[ "$CODEX_BUS_SLOT" = 1 ] && exit 3; exec "{}" --tag v2"#,
        mock.display()
    );
    let mut v2 = mock_pool("codex", "v2", 2, &[]);
    v2["command"] = json!("/bin/sh");
    v2["args"] = json!(["-c", script]);
    bus.rewrite_config(config(vec![v2]));
    let (code, answer) = post_reload(&admin);
    assert_eq!(code, 500, "{answer}");
    assert!(
        answer["reason"]
            .as_str()
            .is_some_and(|r| r.contains("slot 1")),
        "{answer}"
    );
    let mut conn = bus.connect();
    let expected: BTreeSet<(i64, String)> = (0..2).map(|s| (s, "v1".to_owned())).collect();
    assert_eq!(
        versions(&mut conn, "after-failure"),
        expected,
        "slot 0 went back too"
    );
    bus.rewrite_config(config(vec![mock_pool("codex", "v1", 2, &[])]));
    let (code, answer) = post_reload(&admin);
    assert_eq!(
        (code, &answer["result"]),
        (200, &json!("unchanged")),
        "{answer}"
    );
    assert_eq!(versions(&mut conn, "reverted"), expected);
}
