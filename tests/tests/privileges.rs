//! Least privilege per pool (our extension): `user`, `group`, `umask`, `rlimits`,
//! `no_new_privs` and `cgroup` reach the workers, a daemon that is not root refuses a pool asking
//! for another user, one without a delegated cgroup v2 refuses `cgroup` limits, and a worker
//! killed by its address-space or memory limit is a failed worker like any other.
//!
//! The tests that switch users need root: they are the `root` tier (`#[ignore = "tier root: …"]`,
//! see tests/src/lib.rs), which `.ci/run` runs when it runs as root. The test that applies cgroup
//! limits needs a delegated cgroup v2 with the memory and cpu controllers: it is the `cgroup2`
//! tier, which `.ci/run` runs (with `CODEX_BUS_CGROUP` naming that cgroup) where it can set one up.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use codex_bus_tests::{bin, metric, reason, still_works, Bus, BusConfig, Mode};
use serde_json::{json, Value};

/// The exit status of a config error (`EX_CONFIG` of sysexits.h).
const EX_CONFIG: i32 = 78;

/// A worker of the contract in docs/worker-contract.md, small enough to read: it answers every
/// request with an empty result, except `read` (tries to read `params.path` and says whether it
/// could) and `hog` (allocates and fills 200 MiB, which kills it under a smaller address-space or
/// memory limit: filled, so the pages are really charged to its cgroup).
const WORKER: &str = r#"
import json, sys
for line in sys.stdin:
    if not line.strip():
        continue
    msg = json.loads(line)
    if "id" not in msg or "method" not in msg:
        continue
    result = {}
    if msg["method"] == "read":
        try:
            with open(msg["params"]["path"]) as f:
                result = {"read": True, "text": f.read()}
        except OSError as e:
            result = {"read": False, "error": e.strerror}
    elif msg["method"] == "hog":
        hog = bytearray(b"x" * (200 << 20))
        result = {"allocated": len(hog)}
    out = {"jsonrpc": "2.0", "id": msg["id"], "result": result}
    if "sessionId" in msg:
        out["sessionId"] = msg["sessionId"]
    print(json.dumps(out), flush=True)
"#;

/// A Python 3 every user can run: the system's (a user's own, such as pyenv's shims under
/// /root, may be out of reach of the pool's user).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A directory every user can enter, holding the script worker (world-readable).
fn world_readable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.path().join("worker.py");
    std::fs::write(&script, WORKER).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    dir
}

/// A pool running the script worker in `dir`, plus the given extra fields.
fn script_pool(id: &str, dir: &Path, extra: Value) -> Value {
    let mut pool = json!({
        "id": id,
        "command": python(),
        "args": ["-u", dir.join("worker.py").to_str().unwrap()],
        "instances": 1,
    });
    for (key, value) in extra.as_object().unwrap() {
        pool[key] = value.clone();
    }
    pool
}

/// Sends `method` to `pool` and returns the reply.
fn call(
    conn: &mut codex_bus_tests::Conn,
    id: i64,
    pool: &str,
    method: &str,
    params: Value,
) -> Value {
    conn.send(&json!({
        "jsonrpc": "2.0", "id": id, "method": method, "params": params,
        "pool": pool, "sessionId": format!("s-{pool}"),
    }));
    let reply = conn.recv();
    assert_eq!(reply["id"], json!(id), "{reply}");
    reply
}

/// The worker of `pool` (its `CODEX_BUS_POOL`), once it runs its program.
fn worker_of(bus: &Bus, pool: &str) -> u32 {
    let start = std::time::Instant::now();
    loop {
        let found = bus.worker_pids().into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|&b| b == 0)
                    .any(|v| v == format!("CODEX_BUS_POOL={pool}").as_bytes())
            })
        });
        if let Some(pid) = found {
            return pid;
        }
        assert!(
            start.elapsed() < codex_bus_tests::WAIT,
            "no worker of pool {pool}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The value of `field` in /proc/`pid`/status, its words.
fn status_field(pid: u32, field: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"));
    line.split_whitespace().skip(1).map(str::to_owned).collect()
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the root tier runs as root (cargo test … -- --ignored as root)"
    );
}

#[test]
#[ignore = "tier root: needs root to run a pool as another user; .ci/run runs it when it is root"]
fn a_pool_running_as_nobody_cannot_read_a_root_only_file() {
    require_root();
    let dir = world_readable_dir();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = BusConfig(json!({
        "pools": [
            script_pool("asroot", dir.path(), json!({})),
            script_pool("asnobody", dir.path(), json!({"user": "nobody"})),
        ],
        "routing": {"default_pool": "asroot"},
        "limits": {"drain_grace_sec": 0}
    }));
    let mut bus = Bus::start(&config, Mode::Unix);
    let mut conn = bus.connect();
    let path = json!({"path": secret.to_str().unwrap()});

    // The same worker as root reads it: the file and the request are right.
    let reply = call(&mut conn, 1, "asroot", "read", path.clone());
    assert_eq!(reply["result"]["read"], json!(true), "{reply}");

    let reply = call(&mut conn, 2, "asnobody", "read", path);
    assert_eq!(reply["result"]["read"], json!(false), "{reply}");
    assert_eq!(
        reply["result"]["error"],
        json!("Permission denied"),
        "{reply}"
    );

    let pid = worker_of(&bus, "asnobody");
    assert_eq!(status_field(pid, "Uid"), ["65534"; 4]);
    assert_eq!(status_field(pid, "Gid"), ["65534"; 4]);
    // nobody's own groups (nogroup), never root's.
    assert!(!status_field(pid, "Groups").contains(&"0".to_owned()));
    let root_pid = worker_of(&bus, "asroot");
    assert_eq!(status_field(root_pid, "Uid"), ["0"; 4]);
}

/// Runs the daemon with `args` as nobody:nogroup without supplementary groups.
fn as_nobody(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(bin("codex-stdio-bus"))
        .args(args)
        .output()
        .expect("run setpriv");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "tier root: needs root to start the daemon as another user (setpriv); .ci/run runs it when it is root"]
fn a_daemon_that_is_not_root_refuses_a_pool_asking_for_root() {
    require_root();
    let dir = world_readable_dir();
    let mock = bin("codex-mock");
    let write = |name: &str, user: &str| {
        let path = dir.path().join(name);
        let config = json!({"pools": [{"id": "p", "command": mock.to_str().unwrap(), "instances": 1, "user": user}]});
        std::fs::write(&path, config.to_string()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let root = write("root.json", "root");
    let socket = dir.path().join("bus.sock");

    let (code, err) = as_nobody(&["--config", &root, "--unix", socket.to_str().unwrap()]);
    assert_eq!(code, Some(EX_CONFIG), "{err}");
    assert!(err.contains("pools[0].user"), "{err}");
    assert!(
        err.contains("asks for user 'root' (uid 0), but the daemon runs as uid 65534, not root"),
        "{err}"
    );
    assert!(!socket.exists(), "it never listened");

    let (code, check) = as_nobody(&["check", "--config", &root]);
    assert_eq!(code, Some(EX_CONFIG), "{check}");
    assert!(check.contains("pools[0].user"), "{check}");
    assert!(
        check.contains("asks for user 'root' (uid 0), but the daemon runs as uid 65534, not root"),
        "{check}"
    );

    // Its own user is no change, and accepted.
    let own = write("own.json", "nobody");
    let (code, err) = as_nobody(&["check", "--config", &own]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_worker_past_its_address_space_limit_dies_and_restarts_while_its_neighbour_serves() {
    let dir = world_readable_dir();
    let mock = bin("codex-mock");
    let config = BusConfig(json!({
        "pools": [
            {"id": "mock", "command": mock.to_str().unwrap(), "instances": 1},
            script_pool("hog", dir.path(), json!({
                "rlimits": {"address_space_bytes": 64u64 << 20},
                "backoff_initial_ms": 50,
            })),
        ],
        "routing": {"default_pool": "mock"},
        "limits": {"drain_grace_sec": 0}
    }));
    let mut bus = Bus::start_with(&config, Mode::Unix, &["--metrics", "127.0.0.1:0"]);
    let mut hog = bus.connect();
    let mut neighbour = bus.connect();
    still_works(&mut neighbour, 1);

    let first = worker_of(&bus, "hog");
    let limits = std::fs::read_to_string(format!("/proc/{first}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>()[3..5],
        ["67108864", "67108864"],
        "{line}"
    );
    assert_eq!(
        call(&mut hog, 1, "hog", "ping", json!({}))["result"],
        json!({})
    );

    // Past its limit: the allocation fails (MemoryError), the worker dies, the request is
    // answered with an error, and the supervisor starts another worker.
    let reply = call(&mut hog, 2, "hog", "hog", json!({}));
    assert_eq!(reason(&reply), Some("worker_exited"), "{reply}");
    bus.wait_log("MemoryError");
    bus.wait_log("worker exited");
    still_works(&mut neighbour, 2);
    let start = std::time::Instant::now();
    let second = loop {
        let pid = worker_of(&bus, "hog");
        if pid != first {
            break pid;
        }
        assert!(start.elapsed() < codex_bus_tests::WAIT, "hog not restarted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!codex_bus_tests::alive(first));
    let restarts = metric(
        &bus.metrics_addr(),
        "codex_bus_worker_restarts_total",
        &[("pool", "hog"), ("reason", "exit_nonzero")],
    );
    assert_eq!(restarts, 1.0);
    assert_eq!(
        call(&mut hog, 3, "hog", "ping", json!({}))["result"],
        json!({}),
        "pid {second}"
    );
    for id in 3..20 {
        still_works(&mut neighbour, id);
    }
}

/// A config whose pool asks for cgroup limits, in `dir`.
fn cgroup_config(dir: &Path) -> String {
    let config = json!({"pools": [
        {"id": "plain", "command": bin("codex-mock").to_str().unwrap(), "instances": 1},
        {"id": "limited", "command": bin("codex-mock").to_str().unwrap(), "instances": 1,
         "cgroup": {"memory_max_bytes": 64u64 << 20, "cpu_max_percent": 50}},
    ]});
    let path = dir.join("cgroup.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// This process's own cgroup v2 directory when it offers the memory and cpu controllers and it,
/// its `cgroup.procs` and its `cgroup.subtree_control` are writable: the rule the daemon's
/// `probe` (process/src/cgroup.rs) applies to its own cgroup, which it inherits from this one.
fn own_delegated_cgroup() -> Option<std::path::PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?.to_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let unescape = |f: &str| {
        f.replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\")
    };
    let (root, point) = mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split(' ').next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = before.split(' ').collect();
        Some((unescape(fields.get(3)?), unescape(fields.get(4)?)))
    })?;
    let relative = Path::new(&path).strip_prefix(&root).ok()?;
    let dir = Path::new(&point).join(relative);
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
    let offered: Vec<&str> = controllers.split_whitespace().collect();
    if !(offered.contains(&"memory") && offered.contains(&"cpu")) {
        return None;
    }
    for file in ["", "cgroup.procs", "cgroup.subtree_control"] {
        nix::unistd::access(&dir.join(file), nix::unistd::AccessFlags::W_OK).ok()?;
    }
    Some(dir)
}

#[test]
fn cgroup_limits_are_refused_where_no_delegated_cgroup_v2_offers_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = cgroup_config(dir.path());
    let expected = "pools[1].cgroup: the cgroup v2 memory and cpu controllers are not available to this daemon (";
    let remedy = "): remove the field or run the daemon in a delegated cgroup v2 (systemd Delegate=memory cpu; see docs/operations.md, \"cgroup v2 limits\")";

    let (status, _, check) = codex_bus_tests::run_bus(&["check", "--config", &config]);
    // Decided by the daemon's own rule (process/src/cgroup.rs `probe`), not by the status: the
    // daemon, a child of this process, starts in this process's cgroup.
    if let Some(dir) = own_delegated_cgroup() {
        // Only a cgroup v2 offering memory and cpu may accept the field; what it does with it is
        // the cgroup2 tier's test.
        assert!(
            status.success(),
            "{} is delegated with memory and cpu, yet `check` refused `cgroup`: {check}",
            dir.display()
        );
        codex_bus_tests::say(&format!("privileges: this process's cgroup {} is delegated with memory and cpu, so `check` accepts `cgroup` (no refusal to test; the cgroup2 tier applies the limits)", dir.display()));
        return;
    }
    assert_eq!(status.code(), Some(EX_CONFIG), "{check}");
    assert!(check.contains(expected), "{check}");
    assert!(check.contains(remedy), "{check}");

    let socket = dir.path().join("bus.sock");
    let (status, _, err) =
        codex_bus_tests::run_bus(&["--config", &config, "--unix", socket.to_str().unwrap()]);
    assert_eq!(status.code(), Some(EX_CONFIG), "{err}");
    assert!(err.contains(expected), "{err}");
    assert!(err.contains(remedy), "{err}");
    assert!(!err.contains("codex-stdio-bus started"), "{err}");
    assert!(!socket.exists(), "its socket is gone with it");
}

/// The cgroup v2 directory the `cgroup2` tier may make cgroups in (`CODEX_BUS_CGROUP`), with
/// memory and cpu enabled for its children.
fn delegated_cgroup() -> std::path::PathBuf {
    let dir = std::env::var_os("CODEX_BUS_CGROUP").map(std::path::PathBuf::from);
    let dir = dir.expect(
        "the cgroup2 tier needs CODEX_BUS_CGROUP: a cgroup v2 directory with memory and cpu in its cgroup.subtree_control, writable (.ci/run sets one up where it can)",
    );
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for controller in ["memory", "cpu"] {
        assert!(
            enabled.split_whitespace().any(|c| c == controller),
            "{} does not enable {controller} for its children: {enabled:?}",
            dir.display()
        );
    }
    dir
}

#[test]
#[ignore = "tier cgroup2: needs a delegated cgroup v2 with memory and cpu (CODEX_BUS_CGROUP); .ci/run runs it where it can set one up"]
fn cgroup_limits_reach_the_worker_and_its_oom_kill_is_a_failed_worker_while_its_neighbour_serves() {
    let base = delegated_cgroup();
    // A cgroup of the daemon's own, as systemd's Delegate= gives a service: the shell joins it,
    // then execs the daemon, which keeps its pid.
    let own = base.join(format!("bus-test-{}", std::process::id()));
    std::fs::create_dir_all(&own).unwrap();
    let join = format!(
        "echo $$ > '{}/cgroup.procs' && exec \"$0\" \"$@\"",
        own.display()
    );
    let dir = world_readable_dir();
    let config = BusConfig(json!({
        "pools": [
            {"id": "mock", "command": bin("codex-mock").to_str().unwrap(), "instances": 1},
            script_pool("hog", dir.path(), json!({
                "cgroup": {"memory_max_bytes": 64u64 << 20, "cpu_max_percent": 50},
                "backoff_initial_ms": 50,
            })),
        ],
        "routing": {"default_pool": "mock"},
        "limits": {"drain_grace_sec": 0}
    }));
    let mut bus = Bus::start_under(
        &["sh", "-c", &join],
        &config,
        Mode::Unix,
        &["--metrics", "127.0.0.1:0"],
    );
    let mut hog = bus.connect();
    let mut neighbour = bus.connect();
    still_works(&mut neighbour, 1);

    // The daemon moved itself to a leaf; the worker is in its slot's cgroup, with the limits.
    let daemon = std::fs::read_to_string(own.join("daemon/cgroup.procs")).unwrap();
    assert!(
        daemon.lines().any(|p| p == bus.pid().to_string()),
        "{daemon}"
    );
    let first = worker_of(&bus, "hog");
    let slot = own.join("workers/pool-hog-0");
    let procs = std::fs::read_to_string(slot.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|p| p == first.to_string()), "{procs}");
    let read = |file: &str| std::fs::read_to_string(slot.join(file)).unwrap();
    assert_eq!(read("cpu.max").trim(), "50000 100000");
    assert_eq!(read("memory.max").trim(), "67108864");
    // The neighbour has no cgroup of its own.
    let mock = worker_of(&bus, "mock");
    let mock_cgroup = std::fs::read_to_string(format!("/proc/{mock}/cgroup")).unwrap();
    assert!(!mock_cgroup.contains("/workers/"), "{mock_cgroup}");

    assert_eq!(
        call(&mut hog, 1, "hog", "ping", json!({}))["result"],
        json!({})
    );
    // Past memory.max the OOM killer ends the worker: its request is answered with an error and
    // the supervisor starts another one, in the same cgroup.
    let reply = call(&mut hog, 2, "hog", "hog", json!({}));
    assert_eq!(reason(&reply), Some("worker_exited"), "{reply}");
    bus.wait_log("worker exited");
    still_works(&mut neighbour, 2);
    let start = std::time::Instant::now();
    let second = loop {
        let pid = worker_of(&bus, "hog");
        if pid != first {
            break pid;
        }
        assert!(start.elapsed() < codex_bus_tests::WAIT, "hog not restarted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        read("memory.events").contains("oom_kill 1"),
        "{}",
        read("memory.events")
    );
    let restarts = metric(
        &bus.metrics_addr(),
        "codex_bus_worker_restarts_total",
        &[("pool", "hog"), ("reason", "signal")],
    );
    assert_eq!(restarts, 1.0);
    assert_eq!(
        call(&mut hog, 3, "hog", "ping", json!({}))["result"],
        json!({}),
        "pid {second}"
    );
    assert!(read("cgroup.procs")
        .lines()
        .any(|p| p == second.to_string()));
    for id in 3..20 {
        still_works(&mut neighbour, id);
    }

    // A clean stop removes the workers' cgroups; the daemon's leaf goes with its cgroup, here.
    bus.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(bus.wait_exit().success());
    assert!(
        !own.join("workers").exists(),
        "workers/ is removed at a clean stop"
    );
    let _ = std::fs::remove_dir(own.join("daemon"));
    let _ = std::fs::remove_dir(&own);
}

#[test]
fn umask_no_new_privs_and_limits_reach_the_worker() {
    let config = BusConfig::mock(1)
        .pool_key("umask", json!("077"))
        .pool_key("no_new_privs", json!(true))
        .pool_key(
            "rlimits",
            json!({"open_files": 256, "core_bytes": 0, "cpu_seconds": 3600}),
        );
    let mut bus = Bus::start(&config, Mode::Unix);
    let mut conn = bus.connect();
    still_works(&mut conn, 1);
    let pid = bus.wait_workers(1)[0];
    assert_eq!(status_field(pid, "Umask"), ["0077"]);
    assert_eq!(status_field(pid, "NoNewPrivs"), ["1"]);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    for (name, value) in [
        ("Max open files", "256"),
        ("Max core file size", "0"),
        ("Max cpu time", "3600"),
    ] {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
        let words: Vec<&str> = line[name.len()..].split_whitespace().collect();
        assert_eq!(words[..2], [value, value], "{line}");
    }
    // And the daemon's own umask is untouched.
    assert_ne!(status_field(bus.pid(), "Umask"), ["0077"]);
}
