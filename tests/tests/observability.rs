//! Metrics, health, readiness, status and logs, checked against a known workload.

use std::collections::HashSet;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use codex_bus_tests::{http_get, run_bus, Bus, BusConfig, Conn, Mode, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use prometheus_parse::{Sample, Scrape, Value as PromValue};
use serde_json::{json, Value};

/// Scrapes /metrics and parses it as Prometheus exposition text.
fn scrape(addr: &str) -> (String, Scrape) {
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = Scrape::parse(lines).expect("valid Prometheus exposition format");
    (body, parsed)
}

/// The value of one sample, matched by name and labels.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert!(!matching.is_empty(), "no sample {name} {labels:?}");
    matching
        .iter()
        .map(|s| match &s.value {
            PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => *v,
            PromValue::Histogram(_) | PromValue::Summary(_) => panic!("{name} is not a scalar"),
        })
        .sum()
}

/// Waits until `check` holds for a fresh scrape.
fn eventually(addr: &str, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let start = Instant::now();
    loop {
        let (body, scrape) = scrape(addr);
        if check(&scrape) {
            return scrape;
        }
        assert!(start.elapsed() < WAIT, "{what} never held:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_show_exactly_the_known_workload() {
    const REQUESTS: usize = 60;
    const SESSIONS: usize = 12;
    let mut bus = Bus::start_with(
        &BusConfig::mock(2),
        Mode::Tcp,
        &["--metrics", "127.0.0.1:0"],
    );
    let addr = bus.metrics_addr();
    let mut conn = bus.connect();
    for i in 0..REQUESTS {
        conn.request(
            json!(i),
            "ping",
            Value::Null,
            Some(&format!("s{}", i % SESSIONS)),
        );
    }
    let mut pids = HashSet::new();
    for _ in 0..REQUESTS {
        pids.insert(conn.recv()["result"]["pid"].as_i64().unwrap());
    }
    conn.send_raw(b"this is not json\n");
    assert_eq!(conn.recv()["error"]["data"]["reason"], json!("parse_error"));
    let victim = *pids.iter().next().unwrap();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();

    let scrape = eventually(&addr, "one restart, two ready workers", |s| {
        value(
            s,
            "codex_bus_worker_restarts_total",
            &[("reason", "signal")],
        ) == 1.0
            && value(s, "codex_bus_workers", &[("state", "ready")]) == 2.0
    });
    let exact = [
        (
            "codex_bus_messages_total",
            vec![("direction", "from_client")],
            (REQUESTS + 1) as f64,
        ),
        (
            "codex_bus_messages_total",
            vec![("direction", "from_worker")],
            REQUESTS as f64,
        ),
        (
            "codex_bus_error_replies_total",
            vec![("reason", "parse_error")],
            1.0,
        ),
        (
            "codex_bus_error_replies_total",
            vec![("reason", "worker_exited")],
            0.0,
        ),
        (
            "codex_bus_worker_restarts_total",
            vec![("reason", "exit_zero")],
            0.0,
        ),
        ("codex_bus_worker_restart_limit_exceeded_total", vec![], 0.0),
        (
            "codex_bus_session_assignments_total",
            vec![("result", "hashed")],
            SESSIONS as f64,
        ),
        (
            "codex_bus_sessions",
            vec![("pool", "codex")],
            SESSIONS as f64,
        ),
        ("codex_bus_requests_in_flight", vec![], 0.0),
        (
            "codex_bus_client_connections",
            vec![("transport", "tcp")],
            1.0,
        ),
        (
            "codex_bus_client_connections_total",
            vec![("transport", "tcp")],
            1.0,
        ),
        ("codex_bus_workers", vec![("state", "failed")], 0.0),
        ("codex_bus_dropped_messages_total", vec![], 0.0),
        (
            "codex_bus_build_info",
            vec![("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        ),
    ];
    for (name, labels, expected) in exact {
        assert_eq!(value(&scrape, name, &labels), expected, "{name} {labels:?}");
    }
    // Lines are counted where they are read; written ones only in bytes (docs/metrics.md).
    let directions: HashSet<&str> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "codex_bus_messages_total")
        .filter_map(|s| s.labels.get("direction"))
        .collect();
    assert_eq!(directions, HashSet::from(["from_client", "from_worker"]));
    let request_duration = scrape
        .samples
        .iter()
        .find(|s| s.metric == "codex_bus_request_duration_seconds")
        .expect("request duration histogram");
    match &request_duration.value {
        PromValue::Histogram(buckets) => {
            let total = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
            assert_eq!(total, REQUESTS as f64, "every reply timed");
            assert!(
                buckets.iter().any(|b| (b.less_than - 0.0001).abs() < 1e-12),
                "100 µs bucket"
            );
            assert!(
                buckets.iter().any(|b| (b.less_than - 30.0).abs() < 1e-9),
                "30 s bucket"
            );
        }
        other => panic!("a histogram, not {other:?}"),
    }
    let bytes_in = value(
        &scrape,
        "codex_bus_message_bytes_total",
        &[("direction", "from_client")],
    );
    let bytes_out = value(
        &scrape,
        "codex_bus_message_bytes_total",
        &[("direction", "to_client")],
    );
    assert!(
        bytes_in > 0.0 && bytes_out > bytes_in,
        "{bytes_in} in, {bytes_out} out"
    );
    assert!(value(&scrape, "process_open_fds", &[]) >= 5.0);
    assert!(value(&scrape, "process_resident_memory_bytes", &[]) > 1e6);
    let (_, body) = http_get(&addr, "/metrics");
    assert!(
        body.contains("codex_bus_request_duration_seconds_bucket{"),
        "histograms, not summaries"
    );
    assert!(!body.contains("quantile="), "no summaries");
    for forbidden in ["s0\"", "\"ping\""] {
        assert!(
            !body.contains(forbidden),
            "client data {forbidden} must never be a label"
        );
    }
}

#[test]
fn readyz_is_503_while_the_only_worker_is_in_backoff_and_200_after() {
    let bus = Bus::start_with(
        &BusConfig::mock(1),
        Mode::Tcp,
        &["--metrics", "127.0.0.1:0"],
    );
    let addr = bus.metrics_addr();
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".to_owned()));
    let start = Instant::now();
    while http_get(&addr, "/readyz").0 != 200 {
        assert!(start.elapsed() < WAIT, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Kill the worker and look at /readyz during the backoff (100 ms, then 200, 400… if missed).
    let mut saw_503 = None;
    for _ in 0..6 {
        let pid = bus.wait_workers(1)[0];
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let killed = Instant::now();
        while killed.elapsed() < Duration::from_secs(3) {
            let (code, body) = http_get(&addr, "/readyz");
            if code == 503 {
                saw_503 = Some(body);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if saw_503.is_some() {
            break;
        }
    }
    let body: Value = serde_json::from_str(saw_503.expect("503 during backoff").trim()).unwrap();
    assert_eq!(body["ready"], json!(false));
    assert_eq!(body["pools_not_ready"][0]["pool"], json!("codex"));
    let start = Instant::now();
    while http_get(&addr, "/readyz").0 != 200 {
        assert!(start.elapsed() < WAIT, "ready again after the restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http_get(&addr, "/nope").0, 404);
}

#[test]
fn status_prints_every_slot() {
    let worker = codex_bus_tests::bin("codex-mock");
    let pool =
        |id: &str, n: u32| json!({"id": id, "command": worker.to_str().unwrap(), "instances": n});
    let config = BusConfig(
        json!({"pools": [pool("alpha", 2), pool("beta", 3)], "routing": {"default_pool": "alpha"}}),
    );
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();
    let pids = bus.wait_workers(5);
    // A worker counts as ready once it has stayed up for the pool's grace period.
    bus.wait_log_count("worker ready", 5);
    let mut conn = bus.connect();
    conn.request(json!(1), "ping", Value::Null, Some("one-session"));
    conn.recv();
    let (ok, out, err) = {
        let (status, out, err) = run_bus(&["status", "--metrics", &addr]);
        (status.success(), out, err)
    };
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1 + 5 + 1, "header, 5 slots, totals:\n{out}");
    for pid in pids {
        assert!(
            out.contains(&format!(" {pid} ")),
            "pid {pid} listed:\n{out}"
        );
    }
    assert_eq!(
        lines[1..6]
            .iter()
            .filter(|l| l.starts_with("alpha"))
            .count(),
        2
    );
    assert_eq!(
        lines[1..6].iter().filter(|l| l.starts_with("beta")).count(),
        3
    );
    assert!(
        lines[6].starts_with("5 workers (5 ready), 0 requests in flight, 1 sessions, 1 clients"),
        "{out}"
    );
    let (status, _, err) = run_bus(&["status", "--metrics", "127.0.0.1:1"]);
    assert!(!status.success());
    assert!(
        err.contains("cannot reach the daemon at 127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn an_unread_stderr_never_stalls_routing() {
    let dir = tempfile::tempdir().unwrap();
    let config = BusConfig::mock(1).write(dir.path());
    // stderr is a pipe nobody reads, and DEBUG logs a line per message: 10,000 requests write far
    // more than a pipe holds.
    let mut child = Command::new(codex_bus_tests::bin("codex-stdio-bus"))
        .arg("--config")
        .arg(&config)
        .args(["--tcp", "127.0.0.1:0", "--log-level", "debug"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "daemon exited");
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // From here on stderr is never read again.
    let guard = KillOnDrop(child);
    let mut conn = Conn::tcp(&addr);
    for round in 0..10 {
        for i in 0..1000 {
            conn.request(json!(round * 1000 + i), "ping", Value::Null, Some("chatty"));
        }
        for _ in 0..1000 {
            assert!(conn.recv().get("result").is_some());
        }
    }
    drop(stderr);
    drop(guard);
}

/// Kills and reaps a child when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_worker_that_serves_before_it_counts_as_ready_shows_its_uptime() {
    // A long grace period: the worker serves at once but stays `starting` for a while.
    let config = BusConfig::mock(1).pool_key("ready_grace_ms", json!(60_000));
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();
    bus.wait_workers(1);
    let mut conn = bus.connect();
    conn.request(json!(1), "ping", Value::Null, Some("s"));
    assert!(
        conn.recv().get("result").is_some(),
        "it serves while starting"
    );
    let slot = &codex_bus_tests::status(&addr)["pools"][0]["slots"][0];
    assert_eq!(slot["state"], "starting", "{slot}");
    assert!(
        slot["uptime_sec"].as_f64().is_some_and(|u| u > 0.0),
        "uptime counts from the spawn, not from readiness: {slot}"
    );
}

/// Sends `request` (a whole HTTP/1.1 request head) to the admin endpoint; returns the response.
fn raw_http(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[test]
fn the_admin_endpoint_speaks_http_as_clients_expect() {
    let bus = Bus::start_with(
        &BusConfig::mock(1),
        Mode::Tcp,
        &["--metrics", "127.0.0.1:0"],
    );
    let addr = bus.metrics_addr();
    let head = raw_http(
        &addr,
        "HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head:?}");
    let post = raw_http(
        &addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(
        post.to_ascii_lowercase().contains("allow: get,head"),
        "{post}"
    );
    let metrics = raw_http(
        &addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        metrics
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{metrics}"
    );
    // A head larger than the limit is refused, and the endpoint goes on serving.
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let refused = raw_http(&addr, &huge);
    assert!(!refused.starts_with("HTTP/1.1 200"), "{refused}");
    let (code, body) = codex_bus_tests::http_get(&addr, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
}
