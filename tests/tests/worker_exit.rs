//! Workers that die: every request they held gets an error reply, the slot restarts, and the
//! session's next request is served.

use std::collections::HashSet;

use codex_bus_tests::{reason, Bus, BusConfig, Mode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

#[test]
fn sigkill_with_requests_in_flight_answers_each_and_restarts_the_slot() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let mut conn = bus.connect();
    conn.request(json!(0), "ping", Value::Null, Some("victim"));
    let first = conn.recv();
    let pid = first["result"]["pid"].as_i64().unwrap();
    for id in 1..=10 {
        conn.request(
            json!(id),
            "mock/delay",
            json!({"ms": 60_000}),
            Some("victim"),
        );
    }
    // Let the worker take them in before it dies.
    conn.request(json!("probe"), "ping", Value::Null, Some("victim"));
    assert_eq!(conn.recv()["id"], json!("probe"));
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let mut failed = HashSet::new();
    for _ in 1..=10 {
        let reply = conn.recv();
        assert_eq!(reason(&reply), Some("worker_exited"), "{reply}");
        assert_eq!(reply["error"]["data"]["retryable"], json!(true));
        assert!(failed.insert(reply["id"].as_i64().unwrap()));
    }
    assert_eq!(failed, (1..=10).collect());
    conn.request(json!("after"), "ping", Value::Null, Some("victim"));
    let reply = conn.recv();
    assert_eq!(reply["id"], json!("after"));
    assert_eq!(reply["result"]["slot"], json!(0), "same slot");
    assert_ne!(
        reply["result"]["pid"].as_i64().unwrap(),
        pid,
        "a new process"
    );
    bus.wait_log("worker exited");
}

#[test]
fn a_worker_that_exits_zero_is_restarted() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let mut conn = bus.connect();
    conn.request(json!(1), "ping", Value::Null, None);
    let pid = conn.recv()["result"]["pid"].as_i64().unwrap();
    conn.request(json!(2), "mock/exit", json!({"code": 0}), None);
    let reply = conn.recv();
    assert_eq!(reason(&reply), Some("worker_exited"), "{reply}");
    conn.request(json!(3), "ping", Value::Null, None);
    let reply = conn.recv();
    assert_eq!(reply["id"], json!(3));
    assert_ne!(reply["result"]["pid"].as_i64().unwrap(), pid);
}

#[test]
fn past_the_restart_limit_the_slot_fails_and_requests_get_errors() {
    let config = BusConfig::mock(1)
        .limit("max_restarts", 1)
        .limit("restart_window_sec", 60);
    let mut bus = Bus::start(&config, Mode::Tcp);
    let mut conn = bus.connect();
    for round in 0..2 {
        conn.request(json!(round), "mock/exit", json!({"code": 3}), None);
        assert_eq!(reason(&conn.recv()), Some("worker_exited"));
    }
    bus.wait_log("restart limit exceeded");
    conn.request(json!("late"), "ping", Value::Null, Some("any"));
    let reply = conn.recv();
    assert_eq!(reply["id"], json!("late"));
    assert!(
        matches!(reason(&reply), Some("worker_failed") | Some("no_worker")),
        "{reply}"
    );
}

#[test]
fn garbage_on_worker_stdout_is_skipped_and_the_worker_keeps_serving() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let mut conn = bus.connect();
    conn.request(json!(1), "ping", Value::Null, None);
    let pid = conn.recv()["result"]["pid"].clone();
    conn.request(json!(2), "mock/garbage", Value::Null, None);
    assert_eq!(conn.recv()["id"], json!(2));
    conn.request(json!(3), "ping", Value::Null, None);
    assert_eq!(
        conn.recv()["result"]["pid"],
        pid,
        "same worker still serving"
    );
    bus.wait_log("worker line skipped");
}

#[test]
fn worker_stderr_goes_to_the_log_with_pool_and_slot() {
    let mut bus = Bus::start(&BusConfig::mock(2), Mode::Tcp);
    let mut conn = bus.connect();
    conn.request(
        json!(1),
        "mock/stderr",
        json!({"text": "hello from the worker"}),
        Some("z"),
    );
    let slot = conn.recv()["result"]["slot"].as_i64().unwrap();
    let line = bus.wait_log("hello from the worker");
    assert!(line.contains("pool=\"codex\""), "{line}");
    assert!(line.contains(&format!("slot={slot}")), "{line}");
}

#[test]
fn workers_get_pool_env_cwd_and_their_own_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let worker = codex_bus_tests::bin("codex-mock");
    let config = BusConfig(json!({"pools": [{
        "id": "envy", "command": worker.to_str().unwrap(), "instances": 1,
        "env": {"CODEX_TEST_MARKER": "m1"}, "cwd": dir.path().to_str().unwrap()
    }]}));
    let bus = Bus::start(&config, Mode::Tcp);
    let pids = bus.wait_workers(1);
    let environ = std::fs::read(format!("/proc/{}/environ", pids[0])).unwrap();
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    for wanted in [
        &b"CODEX_TEST_MARKER=m1"[..],
        b"CODEX_BUS_POOL=envy",
        b"CODEX_BUS_SLOT=0",
    ] {
        assert!(
            vars.contains(&wanted),
            "{}",
            String::from_utf8_lossy(wanted)
        );
    }
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", pids[0])).unwrap();
    assert_eq!(cwd, dir.path().canonicalize().unwrap());
    let pgid = nix::unistd::getpgid(Some(Pid::from_raw(pids[0] as i32))).unwrap();
    assert_eq!(pgid.as_raw() as u32, pids[0], "its own process group");
}

#[test]
fn a_restarted_worker_holds_no_fd_of_the_daemon_but_its_pipes() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Tcp);
    let mut conn = bus.connect();
    conn.request(json!(1), "ping", Value::Null, None);
    let old = conn.recv()["result"]["pid"].as_i64().unwrap();
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    // Restarted while a client is connected: the new worker must not inherit the client's socket,
    // the listener, or anything else the daemon opened.
    let start = std::time::Instant::now();
    let new = loop {
        let pids = bus.worker_pids();
        if let Some(p) = pids.into_iter().find(|p| i64::from(*p) != old) {
            break p;
        }
        assert!(start.elapsed() < codex_bus_tests::WAIT, "no restart");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    conn.request(json!(2), "ping", Value::Null, None);
    assert_eq!(
        conn.recv()["result"]["pid"].as_i64().unwrap(),
        i64::from(new)
    );
    let targets = |pid: u32| -> Vec<(String, String)> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .map(|fd| {
                let target = std::fs::read_link(fd.path()).unwrap_or_default();
                (
                    fd.file_name().to_string_lossy().into_owned(),
                    target.to_string_lossy().into_owned(),
                )
            })
            .collect()
    };
    let daemon: Vec<String> = targets(bus.pid()).into_iter().map(|(_, t)| t).collect();
    // Sockets and pipes carry inode numbers, so a shared one is the same object (anon inodes do not).
    let opened_by_daemon = |t: &str| {
        (t.starts_with("socket:") || t.starts_with("pipe:")) && daemon.iter().any(|d| d == t)
    };
    for (fd, target) in targets(new) {
        if ["0", "1", "2"].contains(&fd.as_str()) {
            continue;
        }
        assert!(
            !opened_by_daemon(&target),
            "worker fd {fd} is the daemon's {target}"
        );
    }
}

/// SIGKILLs every pid listed in the file at `path`, one per line: read once the daemon is gone,
/// so the children of generations started after the test looked are ended too.
fn kill_listed(path: &std::path::Path) {
    let listed = std::fs::read_to_string(path).unwrap_or_default();
    for pid in listed.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// One worker running the shell `script` with `env`, restarted 100 ms after each exit.
fn shell_pool(script: &str, env: Value) -> BusConfig {
    BusConfig(json!({
        "pools": [{
            "id": "shell",
            "command": "/bin/sh",
            "args": ["-c", script],
            "instances": 1,
            "env": env,
            "backoff_initial_ms": 100,
            "backoff_max_ms": 100
        }]
    }))
}

/// A worker's first generation leaves a ghost behind that holds its stdout and, a while later,
/// writes replies with the small integer ids the bus hands out; the next generation reads three
/// requests, waits two seconds and answers each with `"real"`. Bus ids are per slot and
/// sequential, so the ghost's lines name exactly the ids of the replacement's requests, and it
/// writes them while those requests are pending (the daemon waits up to 2 s for a dead worker's
/// stdout before restarting it).
const GHOST_WORKER: &str = r#"
if [ ! -e "$MARKER" ]; then
    : > "$MARKER"
    (sleep 3.5; i=1; while [ $i -le 20 ]; do echo "{\"id\":$i,\"result\":\"ghost\"}"; i=$((i+1)); done; sleep 5) &
    exit 1
fi
ids=""
for n in 1 2 3; do
    IFS= read -r line || exit 0
    ids="$ids $(printf '%s' "$line" | sed 's/.*"id":\([0-9]*\).*/\1/')"
done
sleep 2
for id in $ids; do echo "{\"id\":$id,\"result\":\"real\"}"; done
cat > /dev/null
"#;

#[test]
fn a_dead_workers_leftover_cannot_answer_for_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("first-generation-ran");
    let config = shell_pool(GHOST_WORKER, json!({"MARKER": marker.to_str().unwrap()}));
    let mut bus = Bus::start(&config, Mode::Tcp);
    bus.wait_log("restarting worker after backoff");
    bus.wait_log_count("worker started", 2);
    let mut conn = bus.connect();
    for id in 1..=3 {
        conn.request(json!(id), "work", Value::Null, Some("s"));
    }
    // The ghost writes at about 3.5 s; the real worker answers at about 4 s.
    for _ in 1..=3 {
        let reply = conn.recv();
        assert_eq!(
            reply["result"],
            json!("real"),
            "only the running worker answers its requests: {reply}"
        );
    }
}

#[test]
fn a_crashed_workers_children_die_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("children");
    // Every generation starts a long sleep in its own process group, says its pid, and crashes.
    let script = r#"sleep 300 & echo $! >> "$PIDS"; exit 1"#;
    let config = shell_pool(script, json!({"PIDS": pids.to_str().unwrap()}));
    let bus = Bus::start(&config, Mode::Tcp);
    bus.wait_log_count("worker started", 3);
    let children: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(children.len() >= 2, "{children:?}");
    // Every child but the newest generation's (which may still be running) is gone.
    let older = &children[..children.len() - 1];
    let alive: Vec<_> = older
        .iter()
        .filter(|&&pid| codex_bus_tests::alive(pid as u32))
        .collect();
    assert!(
        alive.is_empty(),
        "a crashed worker's children outlived it: {alive:?}"
    );
    drop(bus);
    kill_listed(&pids);
}

#[test]
fn what_a_crashed_worker_left_in_another_session_is_killed_too() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("escaped");
    // Each generation starts a sleep in a session (and group) of its own, then crashes.
    let script =
        r#"setsid sleep 300 < /dev/null > /dev/null 2>&1 & echo $! >> "$PIDS"; sleep 0.2; exit 1"#;
    let config = shell_pool(script, json!({"PIDS": pids.to_str().unwrap()}));
    let bus = Bus::start(&config, Mode::Tcp);
    bus.wait_log_count("worker started", 3);
    let escaped: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let first = escaped[0];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while codex_bus_tests::alive(first) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let alive = codex_bus_tests::alive(first);
    drop(bus);
    kill_listed(&pids);
    assert!(
        !alive,
        "a process a crashed worker left in its own session outlived it"
    );
}
