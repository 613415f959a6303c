//! The deployment examples in docs/deploy (and the Dockerfile) stay consistent with the daemon:
//! the service manager's stop deadline covers the longest drain, the embedded config is valid,
//! the balancer hashes the session key the bus binds sessions from. Tiers run the real tools:
//! systemd-analyze, haproxy, kubernetes-validate, docker.

use std::path::PathBuf;
use std::process::Command;

use codex_bus_tests::bin;

/// The longest shutdown with the default `drain_grace_sec` (5) and `drain_timeout_sec` (30): the
/// grace, the drain, then at least 2 s between SIGTERM and SIGKILL of the workers, then up to 5 s
/// to flush replies (daemon.rs).
const LONGEST_SHUTDOWN_SEC: u64 = 5 + 30 + 2 + 5;

fn deploy(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of the first `key=value` (systemd) or `key: value` (YAML) line for `key`.
fn setting<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .map(str::trim)
        .find_map(|l| {
            l.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('=').or_else(|| rest.strip_prefix(':')))
        })
        .unwrap_or_else(|| panic!("no {key}"))
        .trim()
}

#[test]
fn systemd_unit_kills_mixed_and_waits_longer_than_the_drain() {
    let unit = deploy("codex-stdio-bus.service");
    assert_eq!(setting(&unit, "KillMode"), "mixed");
    let stop: u64 = setting(&unit, "TimeoutStopSec").parse().unwrap();
    assert!(stop > LONGEST_SHUTDOWN_SEC, "TimeoutStopSec={stop}");
    assert_eq!(
        setting(&unit, "Restart"),
        "on-failure",
        "restarts after an escalation"
    );
    assert_eq!(
        setting(&unit, "RestartPreventExitStatus"),
        "78",
        "a config error (EX_CONFIG) is not restarted in a loop"
    );
}

/// A file of docs/deploy/kubernetes.
fn kubernetes(name: &str) -> String {
    deploy(&format!("kubernetes/{name}"))
}

/// The seconds of `key: N` in `text`, the first such line.
fn seconds(text: &str, key: &str) -> u64 {
    setting(text, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

#[test]
fn kubernetes_grace_period_covers_prestop_and_the_drain_and_its_config_is_valid() {
    let manifest = kubernetes("bus.yaml");
    // The ConfigMap's block scalar: the lines indented below `config.json: |`.
    let config: String = manifest
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("config.json: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // The listeners are on 0.0.0.0: clients authenticate with tokens from a mounted Secret.
    // `check` reads that file as the daemon does, so a stand-in for it is written here.
    let mounted = "/etc/codex-stdio-bus/auth/tokens.json";
    assert!(config.contains(mounted), "{config}");
    assert!(manifest.contains("secretName: codex-stdio-bus-tokens"));
    assert!(manifest.contains("kind: Secret"));
    let tokens = dir.path().join("tokens.json");
    let digest = "0123456789abcdef".repeat(4);
    let entry = format!(r#"[{{"tenant": "acme", "sha256": "{digest}"}}]"#);
    std::fs::write(&tokens, entry).unwrap();
    let config = config.replace(mounted, tokens.to_str().unwrap());
    assert!(config.contains("\"bearer_sha256\""), "{config}");
    let path = dir.path().join("config.json");
    std::fs::write(&path, &config).unwrap();
    // `check` refuses a pool program it cannot find, as the daemon does: the image has
    // `codex-worker` on PATH, and so has this run, from the workspace's build.
    let daemon = bin("codex-stdio-bus");
    let built = daemon.parent().unwrap();
    let path_var = format!(
        "{}:{}",
        built.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let checked = Command::new(&daemon)
        .args(["check", "--config", path.to_str().unwrap()])
        .env("PATH", path_var)
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr),
    );
    assert!(checked.status.success(), "{config}\n{out}{err}");
    let effective: serde_json::Value = serde_json::from_str(&out).expect("check prints JSON");
    let limit = |name: &str| effective["limits"][name].as_u64().unwrap();

    // Kubernetes counts terminationGracePeriodSeconds from the start of preStop, then SIGTERM,
    // then the daemon's grace, drain, stop grace (2 s) and flush (5 s) (daemon.rs).
    let pre_stop = {
        let after: String = manifest
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("preStop:"))
            .take(4)
            .collect::<Vec<_>>()
            .join("\n");
        seconds(&after, "seconds")
    };
    let longest = pre_stop + limit("drain_grace_sec") + limit("drain_timeout_sec") + 2 + 5;
    let grace = seconds(&manifest, "terminationGracePeriodSeconds");
    assert!(
        grace > longest,
        "terminationGracePeriodSeconds {grace} <= {longest}"
    );
    for piece in [
        "kind: StatefulSet",
        "clusterIP: None",
        "volumeClaimTemplates:",
        "mountPath: /var/lib/codex-bus",
        "path: /readyz",
        "path: /healthz",
        "runAsNonRoot: true",
        "\"--ws\", \"0.0.0.0:8765\"",
    ] {
        assert!(manifest.contains(piece), "bus.yaml has no {piece:?}");
    }
}

#[test]
fn haproxy_hashes_the_session_key_the_bus_binds_and_outlasts_the_drain() {
    let cfg = deploy("haproxy.cfg");
    let directives: Vec<&str> = cfg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let has = |prefix: &str| directives.iter().any(|l| l.starts_with(prefix));
    for prefix in [
        "balance hash var(txn.session_key)",
        "hash-type consistent",
        "option httpchk",
        "http-check send meth GET uri /readyz",
        "timeout tunnel",
        "hard-stop-after",
    ] {
        assert!(has(prefix), "haproxy.cfg has no {prefix:?}");
    }
    // The key, in the bus's order of binding a session (docs/ws-contract, scale-out.md).
    let keys: Vec<&str> = directives
        .iter()
        .filter(|l| l.starts_with("http-request set-var(txn.session_key)"))
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "path,field(3,/),url_dec",
            "url_param(session),url_dec",
            "req.hdr(x-codex-session)",
            "req.hdr(authorization)",
            "src"
        ]
    );
    // A reload must not cut the tunnels of a node in its drain; HAProxy's own pods outlast it.
    let hard_stop: u64 = directives
        .iter()
        .find_map(|l| l.strip_prefix("hard-stop-after"))
        .and_then(|v| v.trim().strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .expect("hard-stop-after in seconds");
    assert!(
        hard_stop > LONGEST_SHUTDOWN_SEC,
        "hard-stop-after {hard_stop}s"
    );
    let balancer = kubernetes("haproxy.yaml");
    assert!(seconds(&balancer, "terminationGracePeriodSeconds") > hard_stop);
    // A stopping node leaves rotation within its grace (default 5 s): inter × fall.
    let line = directives
        .iter()
        .find(|l| l.starts_with("default-server"))
        .unwrap();
    let word = |name: &str| -> u64 {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name).unwrap();
        words.next().unwrap().trim_end_matches('s').parse().unwrap()
    };
    assert!(
        word("inter") * word("fall") < 5,
        "out of rotation only after {} s: {line}",
        word("inter") * word("fall")
    );
}

#[test]
fn the_dockerfile_builds_in_stages_runs_as_a_user_and_ships_every_binary() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap();
    // Instructions, with continuation lines joined (as Docker reads them).
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (word, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (word.to_uppercase(), rest.trim().to_owned())
        })
        .collect();
    let of = |name: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(w, _)| w == name)
            .map(|(_, rest)| rest.as_str())
            .collect()
    };
    let stages = of("FROM");
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    assert!(
        stages[0].starts_with("rust:"),
        "built with Rust: {stages:?}"
    );
    let runtime = stages.last().unwrap();
    assert!(
        runtime.starts_with("debian:") && runtime.contains("slim"),
        "{runtime}"
    );
    // What the last stage does.
    let last_from = instructions.iter().rposition(|(w, _)| w == "FROM").unwrap();
    let last = &instructions[last_from..];
    let user = last
        .iter()
        .rev()
        .find(|(w, _)| w == "USER")
        .map(|(_, u)| u.split(':').next().unwrap().to_owned())
        .expect("the runtime stage sets USER");
    assert!(
        user != "root" && user != "0" && user.parse::<u32>().is_ok(),
        "a numeric non-root USER (Kubernetes' runAsNonRoot checks it): {user}"
    );
    let copies: Vec<&str> = last
        .iter()
        .filter(|(w, _)| w == "COPY")
        .map(|(_, c)| c.as_str())
        .collect();
    for binary in ["codex-stdio-bus", "codex-worker", "codex-mock"] {
        assert!(
            copies
                .iter()
                .any(|c| c.starts_with("--from=") && c.contains(&format!("/{binary} "))),
            "the runtime stage copies {binary}: {copies:?}"
        );
    }
    assert!(of("ENTRYPOINT")
        .iter()
        .any(|e| e.contains("\"codex-stdio-bus\"")));
    assert!(of("EXPOSE").iter().any(|e| e.contains("8765")));
    assert!(of("RUN")
        .iter()
        .any(|r| r.contains("cargo build --release --locked")));
    // The build context leaves out the build output.
    let ignore = std::fs::read_to_string(path.with_file_name(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "{ignore}");
}

#[test]
#[ignore = "tier systemd: needs systemd-analyze (Debian package `systemd`); .ci/run installs it and runs this tier"]
fn systemd_unit_verifies_and_its_exposure_is_at_most_4() {
    let version = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("the systemd tier runs only where systemd-analyze is installed");
    assert!(version.status.success());
    // A copy whose ExecStart is the binary just built: verify checks that it is executable.
    let unit = deploy("codex-stdio-bus.service").replace(
        "/usr/local/bin/codex-stdio-bus",
        bin("codex-stdio-bus").to_str().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("codex-stdio-bus.service");
    std::fs::write(&path, unit).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("systemd-analyze")
            .args(args)
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    // verify prints what it ignores (a key in the wrong section) but still exits 0: no output
    // at all is the pass.
    let (ok, text) = run(&["verify"]);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    // --threshold is the exposure times 10.
    let (ok, text) = run(&["security", "--offline=true", "--threshold=40"]);
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure"))
        .unwrap_or("");
    assert!(ok, "exposure above 4:\n{text}");
    codex_bus_tests::say(&format!("systemd unit: {}", overall.trim()));
}

#[test]
fn under_type_notify_the_daemon_says_ready_then_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&notify).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let config = codex_bus_tests::BusConfig::mock(1).write(dir.path());
    let mut daemon = Command::new(codex_bus_tests::bin("codex-stdio-bus"))
        .arg("--config")
        .arg(&config)
        .args(["--tcp", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &notify)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = manager.recv(&mut buf).expect("READY=1 within 20 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = manager.recv(&mut buf).expect("STOPPING=1 within 20 s");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    let status = daemon.wait().unwrap();
    assert_eq!(ready.trim(), "READY=1", "{ready:?}");
    assert_eq!(stopping.trim(), "STOPPING=1", "{stopping:?}");
    assert!(status.success(), "{status}");
    // The unit asks for exactly this.
    let unit = deploy("codex-stdio-bus.service");
    assert_eq!(setting(&unit, "Type"), "notify");
    assert_eq!(setting(&unit, "NotifyAccess"), "main");
}

/// The environment haproxy.cfg reads its listener and servers from.
fn haproxy_env(listen: &str, servers: &[String]) -> Vec<(String, String)> {
    let mut env = vec![("BUS_LISTEN".to_owned(), listen.to_owned())];
    for (i, server) in servers.iter().enumerate() {
        env.push((format!("BUS{}", i + 1), server.clone()));
    }
    env
}

#[test]
#[ignore = "tier haproxy: needs haproxy 2.6+ (Debian package `haproxy`); .ci/run installs it and runs this tier"]
fn haproxy_accepts_the_shipped_config() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/haproxy.cfg");
    let servers: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:{}", 9000 + i)).collect();
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .envs(haproxy_env(&free_address(), &servers))
        .output()
        .expect("the haproxy tier runs only where haproxy is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "haproxy -c:\n{text}");
    // A warning is a setting HAProxy ignores or will refuse one day: none.
    assert!(!text.contains("[WARNING]"), "haproxy -c:\n{text}");
    // Without the servers' variables the file is refused, rather than balancing onto nothing.
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .env("BUS_LISTEN", free_address())
        .env_remove("BUS1")
        .env_remove("BUS2")
        .env_remove("BUS3")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// A loopback address no one listens on now (HAProxy takes no port 0).
fn free_address() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().to_string()
}

/// A stand-in for a bus node's WebSocket port, as HAProxy sees it: `GET /readyz` answers 200 or
/// 503 (`ready`), any other request answers the node's name.
struct FakeNode {
    address: String,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeNode {
    fn start(name: &'static str) -> FakeNode {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let ready = std::sync::Arc::new(AtomicBool::new(true));
        let flag = ready.clone();
        // Ends with the test process: a thread blocked in accept holds no child process.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(&stream);
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let (status, body) = if first.starts_with("GET /readyz") {
                    if flag.load(Ordering::SeqCst) {
                        ("200 OK", "{\"ready\":true}")
                    } else {
                        ("503 Service Unavailable", "{\"ready\":false}")
                    }
                } else {
                    ("200 OK", name)
                };
                // One write: pieces would wait on Nagle and delayed ACKs (40 ms each).
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = (&stream).write_all(response.as_bytes());
            }
        });
        FakeNode { address, ready }
    }
}

/// GET `path` with `headers` through the balancer at `address`: (status, body); status 0 when
/// nothing listens there (yet).
fn get_through(address: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!("GET {path} HTTP/1.1\r\nHost: bus\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_owned())
}

#[test]
#[ignore = "tier haproxy: needs haproxy 2.6+ (Debian package `haproxy`); .ci/run installs it and runs this tier"]
fn haproxy_sends_each_session_key_to_one_node_and_moves_only_a_leaving_nodes_keys() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::{Duration, Instant};
    let nodes = [
        FakeNode::start("node1"),
        FakeNode::start("node2"),
        FakeNode::start("node3"),
    ];
    let servers: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    let front = free_address();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/haproxy.cfg");
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .envs(haproxy_env(&front, &servers))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("the haproxy tier runs only where haproxy is installed");
    /// Ends HAProxy however the test ends.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _haproxy = Kill(child);
    let node_of = |path: &str, headers: &[(&str, &str)]| -> String {
        let (code, body) = get_through(&front, path, headers);
        assert_eq!(code, 200, "{path} {headers:?}: {code} {body}");
        body
    };
    // Up once every node has passed its first checks (rise 2 × inter 1 s).
    let start = Instant::now();
    loop {
        let seen: BTreeSet<String> = (0..30)
            .filter_map(|i| {
                let (code, body) = get_through(&front, &format!("/sessions/w{i}"), &[]);
                (code == 200).then_some(body)
            })
            .collect();
        if seen.len() == 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not every node up: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every place a key can come from lands on the node of that key, every time.
    let keys: Vec<String> = (0..60).map(|i| format!("session-{i}")).collect();
    let mut placed = BTreeMap::new();
    for key in &keys {
        let node = node_of(&format!("/sessions/{key}"), &[]);
        assert_eq!(node_of(&format!("/sessions/{key}"), &[]), node);
        assert_eq!(
            node_of(&format!("/?session={key}"), &[]),
            node,
            "{key} by query"
        );
        assert_eq!(
            node_of("/", &[("x-codex-session", key)]),
            node,
            "{key} by header"
        );
        // The path wins over the header, as in the bus.
        assert_eq!(
            node_of(&format!("/sessions/{key}"), &[("x-codex-session", "other")]),
            node
        );
        placed.insert(key.clone(), node);
    }
    let used: BTreeSet<&String> = placed.values().collect();
    assert_eq!(used.len(), 3, "60 keys over 3 nodes: {placed:?}");
    // A user with no session key stays on one node, by the bearer token.
    let bearer = [("authorization", "Bearer token-of-alice")];
    let alice = node_of("/", &bearer);
    for _ in 0..5 {
        assert_eq!(node_of("/", &bearer), alice);
    }
    // node1 starts its grace: /readyz 503. Within inter × fall its keys go to the others, and
    // no other key moves (consistent hashing).
    nodes[0]
        .ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let left = Instant::now();
    let moved_by = loop {
        let moved = keys
            .iter()
            .filter(|k| placed[*k] == "node1")
            .all(|k| node_of(&format!("/sessions/{k}"), &[]) != "node1");
        if moved {
            break left.elapsed();
        }
        assert!(
            left.elapsed() < Duration::from_secs(10),
            "node1 still gets new sessions"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut moved = 0;
    for key in &keys {
        let now = node_of(&format!("/sessions/{key}"), &[]);
        if placed[key] == "node1" {
            moved += 1;
        } else {
            assert_eq!(now, placed[key], "{key} moved though its node stayed");
        }
    }
    codex_bus_tests::say(&format!(
        "haproxy: 60 keys on 3 nodes ({} on node1); node1 out of rotation {moved_by:?} after \
         /readyz 503; {moved} keys moved, all of them node1's",
        keys.iter().filter(|k| placed[*k] == "node1").count()
    ));
}

#[test]
#[ignore = "tier kubernetes-validate: needs kubernetes-validate (PyPI, bundled schemas); .ci/run installs it in a venv and runs this tier"]
fn kubernetes_manifests_validate_strictly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .expect("the kubernetes-validate tier runs only where it is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("ERROR"),
        "kubernetes-validate:\n{text}"
    );
    let passed = text.lines().filter(|l| l.contains("passed")).count();
    assert!(passed >= 6, "every resource checked:\n{text}");
    codex_bus_tests::say(&format!(
        "kubernetes-validate --strict: {passed} resources passed"
    ));
}

#[test]
#[ignore = "tier docker: needs a Docker daemon (`docker info` answers); .ci/run runs it where one does"]
fn the_image_builds_and_runs_as_its_user() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let tag = "codex-stdio-bus:deploy-docs-test";
    let built = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(&root)
        .status()
        .expect("the docker tier runs only where docker is installed");
    assert!(built.success(), "docker build failed");
    let run = |args: &[&str]| {
        let out = Command::new("docker")
            .args(["run", "--rm"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "docker run {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(run(&[tag, "--version"]).starts_with("codex-stdio-bus"));
    assert_eq!(run(&["--entrypoint", "id", tag, "-u"]), "10001");
    for binary in ["codex-worker", "codex-mock", "codex"] {
        run(&[
            "--entrypoint",
            "sh",
            tag,
            "-c",
            &format!("command -v {binary}"),
        ]);
    }
}
