//! The dashboard on the admin endpoint: the page at `/ui`, the redirect from `/`, the status
//! stream at `/ui/events` (every slot named, a session counted on its tenant, a killed worker not
//! ready within a second and ready again later, at most two snapshots a second, a bounded number
//! of streams), its guard, the worker events it lists (a stderr line, an exit, a restart) and
//! its `rates` frame (requests by tenant, error replies by reason).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use codex_bus_tests::{http_get, login, sha256_hex, Bus, BusConfig, Mode, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// The admin bearer token of the guarded daemon.
const TOKEN: &str = "dashboard-test-token";

/// `Authorization` with [`TOKEN`] as a program sends it.
const BEARER: &str = "Bearer dashboard-test-token";

/// `Authorization` with [`TOKEN`] as a browser sends it after its login prompt:
/// Basic base64("operator:dashboard-test-token").
const BASIC: &str = "Basic b3BlcmF0b3I6ZGFzaGJvYXJkLXRlc3QtdG9rZW4=";

/// Streams served at once (`admin/ui.rs`, `MAX_STREAMS`, documented in docs/metrics.md).
const MAX_STREAMS: usize = 16;

/// `GET path` over HTTP/1.0 (so that a streamed body is close-delimited, not chunked), with an
/// optional `Authorization` value; returns the status code, the head and the connection,
/// positioned at the start of the body.
fn get(addr: &str, path: &str, auth: Option<&str>) -> (u16, String, BufReader<TcpStream>) {
    get_as(addr, addr, path, auth)
}

/// [`get`] with `host` as the `Host` header, as a browser sends the name in its address bar.
fn get_as(
    addr: &str,
    host: &str,
    path: &str,
    auth: Option<&str>,
) -> (u16, String, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(addr).expect("connect to the admin endpoint");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let authorization = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\n{authorization}\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, head, reader)
}

/// An open `/ui/events` stream.
struct Events(BufReader<TcpStream>);

impl Events {
    /// Opens the stream; panics unless it is answered 200 as `text/event-stream`.
    fn open(addr: &str, auth: Option<&str>) -> Events {
        let (code, head, reader) = get(addr, "/ui/events", auth);
        assert_eq!(code, 200, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{head}"
        );
        Events(reader)
    }

    /// The next `status` event's document (other events and keep-alive comments are skipped).
    fn next(&mut self) -> Value {
        self.next_named("status")
    }

    /// The next event named `name`, as JSON (other events and keep-alive comments are skipped).
    fn next_named(&mut self, name: &str) -> Value {
        let mut event = String::new();
        loop {
            let mut line = String::new();
            let read = self.0.read_line(&mut line).expect("an event within WAIT");
            assert!(read > 0, "the stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(named) = line.strip_prefix("event:") {
                event = named.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                if event == name {
                    return serde_json::from_str(data.trim()).expect("a JSON document");
                }
            }
        }
    }

    /// Reads `status` events until `check` holds for one; returns it and when it arrived. Panics
    /// after `within`.
    fn until(&mut self, within: Duration, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.until_named("status", within, what, check)
    }

    /// Reads events named `name` until `check` holds for one; returns it. Panics after `within`.
    fn until_named(
        &mut self,
        name: &str,
        within: Duration,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let frame = self.next_named(name);
            assert!(start.elapsed() <= within, "{what}: not within {within:?}");
            if check(&frame) {
                return frame;
            }
        }
    }
}

/// The slot `index` of pool `pool` in a status document.
fn slot<'a>(status: &'a Value, pool: &str, index: u64) -> &'a Value {
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == json!(pool))
        .and_then(|p| {
            p["slots"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["slot"] == json!(index))
        })
        .unwrap_or_else(|| panic!("no slot {pool}[{index}] in {status}"))
}

/// Whether every slot of a status document is ready.
fn all_ready(status: &Value) -> bool {
    status["totals"]["ready"] == status["totals"]["workers"]
}

#[test]
fn the_page_is_served_and_its_stream_shows_a_killed_worker_down_within_a_second_and_back() {
    let config = BusConfig::mock_pools(&[("alpha", 2), ("beta", 1)]);
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();

    let (code, head, _) = get(&addr, "/", None);
    assert_eq!(code, 307, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("location: /ui"),
        "{head}"
    );
    let (code, page) = http_get(&addr, "/ui");
    assert_eq!(code, 200);
    assert!(page.contains("<title>codex-stdio-bus</title>"), "{page}");
    assert!(page.contains("new EventSource(\"ui/events\")"), "{page}");

    let mut events = Events::open(&addr, None);
    let first = events.next();
    assert_eq!(first["version"], json!(env!("CARGO_PKG_VERSION")));
    for (pool, index) in [("alpha", 0), ("alpha", 1), ("beta", 0)] {
        let s = slot(&first, pool, index);
        assert!(s["state"].is_string() && s["restarts"].is_u64(), "{s}");
    }
    assert_eq!(first["totals"]["workers"], json!(3), "{first}");
    events.until(WAIT, "every worker ready", all_ready);

    // A client's session shows on its slot and its tenant (`default`, without auth).
    let mut client = bus.connect();
    client.request(json!(1), "ping", Value::Null, Some("dashboard-session"));
    client.recv();
    let ready = events.until(Duration::from_secs(2), "the session counted", |s| {
        s["totals"]["sessions"] == json!(1)
    });
    let tenant = ready["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == json!("default"))
        .unwrap_or_else(|| panic!("tenant default in {ready}"));
    assert_eq!(tenant["sessions"], json!(1), "{tenant}");
    assert_eq!(tenant["connections"], json!(1), "{tenant}");
    assert!(all_ready(&ready), "{ready}");
    assert_eq!(ready["ready"], json!(true), "as /readyz: {ready}");

    // At most one snapshot per 500 ms: five more take at least two seconds (with 10% slack for
    // when each was read).
    let start = Instant::now();
    for _ in 0..5 {
        events.next();
    }
    assert!(
        start.elapsed() >= Duration::from_millis(1800),
        "5 snapshots in {:?}",
        start.elapsed()
    );

    let victim = slot(&ready, "alpha", 1)["pid"].as_u64().expect("a pid");
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let down = events.until(Duration::from_secs(1), "the killed worker not ready", |s| {
        slot(s, "alpha", 1)["state"] != json!("ready")
    });
    eprintln!(
        "alpha[1] {} after {:?}",
        slot(&down, "alpha", 1)["state"],
        killed.elapsed()
    );
    assert!(killed.elapsed() <= Duration::from_secs(1));
    assert_eq!(slot(&down, "alpha", 0)["state"], json!("ready"), "{down}");
    let back = events.until(WAIT, "the slot ready again", |s| {
        slot(s, "alpha", 1)["state"] == json!("ready")
    });
    let again = slot(&back, "alpha", 1);
    assert_ne!(again["pid"], json!(victim), "{again}");
    assert_eq!(again["restarts"], json!(1), "{again}");
    let exit = again["last_exit"]["status"].as_str().unwrap_or_default();
    assert!(exit.contains("SIGKILL"), "{again}");
    assert_eq!(slot(&back, "alpha", 0)["last_exit"], Value::Null, "{back}");
}

#[test]
fn with_a_bearer_token_the_page_and_stream_need_it_as_bearer_or_basic_password() {
    let config = BusConfig::mock(1).section("metrics", json!({"bearer_sha256": sha256_hex(TOKEN)}));
    let bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();
    // base64("operator:wrong"), base64("dashboard-test-token:") (the token as the user name).
    let refused = [
        None,
        Some("Bearer wrong"),
        Some("Basic b3BlcmF0b3I6d3Jvbmc="),
        Some("Basic ZGFzaGJvYXJkLXRlc3QtdG9rZW46"),
    ];
    for path in ["/ui", "/ui/events"] {
        for auth in refused {
            let (code, head, mut body) = get(&addr, path, auth);
            let mut text = String::new();
            body.read_to_string(&mut text).unwrap();
            assert_eq!(code, 401, "{path} with {auth:?}: {head}{text}");
            // The browser's login prompt.
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: basic realm=\"codex-stdio-bus\""),
                "{head}"
            );
        }
    }
    // Programs are still challenged for a bearer token.
    let (code, head, _) = get(&addr, "/status", None);
    assert_eq!(code, 401, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    for auth in [BEARER, BASIC] {
        let (code, head, _) = get(&addr, "/ui", Some(auth));
        assert_eq!(code, 200, "{auth}: {head}");
        let status = Events::open(&addr, Some(auth)).next();
        assert_eq!(status["totals"]["workers"], json!(1), "{status}");
    }
    assert_eq!(get(&addr, "/status", Some(BASIC)).0, 200);
    // The redirect reveals nothing and stays open.
    assert_eq!(get(&addr, "/", None).0, 307);
}

#[test]
fn without_a_token_a_host_name_that_is_not_local_is_refused_against_dns_rebinding() {
    let bus = Bus::start_with(
        &BusConfig::mock(1),
        Mode::Tcp,
        &["--metrics", "127.0.0.1:0"],
    );
    let addr = bus.metrics_addr();
    let port = addr.rsplit_once(':').unwrap().1;
    // A page of a domain re-pointed at 127.0.0.1 sends that domain as Host.
    let rebound = format!("evil.example:{port}");
    for path in ["/ui", "/ui/events", "/status"] {
        let (code, head, mut body) = get_as(&addr, &rebound, path, None);
        let mut text = String::new();
        body.read_to_string(&mut text).unwrap();
        assert_eq!(code, 403, "{path}: {head}{text}");
        assert!(text.contains("Host header"), "{text}");
    }
    // What the operator types: the address, localhost, a *.localhost name.
    for host in [
        addr.clone(),
        format!("localhost:{port}"),
        format!("dash.localhost:{port}"),
    ] {
        assert_eq!(get_as(&addr, &host, "/ui", None).0, 200, "{host}");
        assert_eq!(get_as(&addr, &host, "/status", None).0, 200, "{host}");
    }
    // Probes, the scrape and the redirect answer any Host.
    for path in ["/healthz", "/metrics", "/"] {
        let (code, head, _) = get_as(&addr, &rebound, path, None);
        assert!(code == 200 || code == 307, "{path}: {head}");
    }
}

#[test]
fn with_a_bearer_token_any_host_name_is_served_to_whoever_sends_it() {
    let config = BusConfig::mock(1).section("metrics", json!({"bearer_sha256": sha256_hex(TOKEN)}));
    let bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();
    let host = "bus.internal.example:9100";
    assert_eq!(get_as(&addr, host, "/ui", None).0, 401);
    assert_eq!(get_as(&addr, host, "/ui", Some(BASIC)).0, 200);
    assert_eq!(get_as(&addr, host, "/status", Some(BEARER)).0, 200);
}

/// Admin connections served at once (`admin/mod.rs`, `MAX_CONNECTIONS`): the streams and 8 more.
const MAX_ADMIN_CONNECTIONS: usize = MAX_STREAMS + 8;

#[test]
fn connections_that_never_finish_their_request_head_hold_a_bounded_number_of_fds() {
    let bus = Bus::start_with(
        &BusConfig::mock(1),
        Mode::Tcp,
        &["--metrics", "127.0.0.1:0"],
    );
    let addr = bus.metrics_addr();
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", bus.pid()))
            .unwrap()
            .count()
    };
    let before = fds();
    // Half a request head each: held until the daemon's 5 s read timeout. Four times the bound:
    // those the daemon does not accept wait in the listener's backlog (128), not in the daemon.
    let slow: Vec<TcpStream> = (0..4 * MAX_ADMIN_CONNECTIONS)
        .map(|_| {
            let mut stream = TcpStream::connect(&addr).unwrap();
            stream.write_all(b"GET /ui HTTP/1.1\r\nHost: 127").unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = fds();
    eprintln!(
        "{} half heads: daemon fds {before} before, {during} during",
        slow.len()
    );
    // Slack for the worker's pipes, still opening when `before` was read.
    assert!(
        during <= before + MAX_ADMIN_CONNECTIONS + 16,
        "{during} fds (from {before})"
    );
    // Once they go, the endpoint answers again.
    drop(slow);
    let start = Instant::now();
    while http_get(&addr, "/healthz").0 != 200 {
        assert!(start.elapsed() < WAIT, "healthz after the slow connections");
    }
    eprintln!("healthz again after {:?}", start.elapsed());
}

#[test]
fn at_most_sixteen_streams_are_served_at_once() {
    let bus = Bus::start_with(
        &BusConfig::mock(1),
        Mode::Tcp,
        &["--metrics", "127.0.0.1:0"],
    );
    let addr = bus.metrics_addr();
    let mut open: Vec<Events> = (0..MAX_STREAMS)
        .map(|_| Events::open(&addr, None))
        .collect();
    let (code, head, mut body) = get(&addr, "/ui/events", None);
    let mut text = String::new();
    body.read_to_string(&mut text).unwrap();
    assert_eq!(code, 503, "{head}{text}");
    assert!(text.contains("at most 16"), "{text}");
    // Every stream connected gets the snapshots.
    for events in &mut open {
        assert_eq!(events.next()["totals"]["workers"], json!(1));
    }
    // A closed stream's seat is freed once the daemon notices (its next write fails).
    drop(open.pop());
    let start = Instant::now();
    loop {
        let (code, _, reader) = get(&addr, "/ui/events", None);
        if code == 200 {
            let mut events = Events(reader);
            assert_eq!(events.next()["totals"]["workers"], json!(1));
            break;
        }
        assert!(start.elapsed() < WAIT, "a seat freed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The events of an `events` frame of kind `kind` whose text contains `text`.
fn events_of<'a>(frame: &'a Value, kind: &str, text: &str) -> Vec<&'a Value> {
    frame["events"]
        .as_array()
        .unwrap_or_else(|| panic!("events in {frame}"))
        .iter()
        .filter(|e| e["kind"] == json!(kind) && e["text"].as_str().unwrap().contains(text))
        .collect()
}

#[test]
fn the_event_list_shows_a_stderr_line_a_killed_workers_exit_and_its_restart_in_order() {
    let worker = codex_bus_tests::bin("codex-mock");
    let config = BusConfig(json!({
        "pools": [{"id": "alpha", "command": worker.to_str().unwrap(), "instances": 1}],
        "limits": {"drain_grace_sec": 0}
    }));
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();
    // The status document names the config file the daemon was started with.
    let config_path = bus.dir.path().join("bus.json");
    let status = codex_bus_tests::status(&addr);
    assert_eq!(
        status["config"],
        json!(config_path.to_str().unwrap()),
        "{status}"
    );

    let mut events = Events::open(&addr, None);
    events.until(WAIT, "the worker ready", all_ready);
    let started = events.until_named("events", WAIT, "the start", |f| {
        !events_of(f, "start", "pid ").is_empty()
    });
    let start = events_of(&started, "start", "pid ")[0];
    assert_eq!(
        (&start["pool"], &start["slot"]),
        (&json!("alpha"), &json!(0)),
        "{start}"
    );

    // The worker writes a line to its stderr (multi-byte characters kept whole).
    let line = "dashboard-stderr-line é ✓";
    let mut client = bus.connect();
    client.request(json!(1), "mock/stderr", json!({"text": line}), None);
    client.recv();
    let written = events.until_named("events", WAIT, "the stderr line", |f| {
        !events_of(f, "stderr", line).is_empty()
    });
    let stderr = events_of(&written, "stderr", line)[0].clone();
    assert_eq!(stderr["text"], json!(line), "{stderr}");

    // SIGKILLed: its exit, then its successor's start, numbered after the line.
    let victim = codex_bus_tests::status(&addr)["pools"][0]["slots"][0]["pid"]
        .as_u64()
        .expect("a pid");
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let restarted = events.until_named("events", WAIT, "the exit and the restart", |f| {
        !events_of(f, "exit", "SIGKILL").is_empty() && !events_of(f, "restart", "pid ").is_empty()
    });
    let exit = events_of(&restarted, "exit", "SIGKILL")[0];
    let restart = events_of(&restarted, "restart", "pid ")[0];
    eprintln!("events: {restarted}");
    let seq = |e: &Value| e["seq"].as_u64().unwrap();
    assert!(seq(start) < seq(&stderr), "{restarted}");
    assert!(
        seq(&stderr) < seq(exit) && seq(exit) < seq(restart),
        "{restarted}"
    );
    assert_ne!(restart["text"], json!(format!("pid {victim}")), "{restart}");
    // The frame is in order, and still holds the line (the rings are far from full).
    let seqs: Vec<u64> = restarted["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(seq)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(
        events_of(&restarted, "stderr", line).len(),
        1,
        "{restarted}"
    );
    assert_eq!(restarted["dropped"], json!(0), "{restarted}");
    assert_eq!(restarted["limited"], json!(0), "{restarted}");
}

#[test]
fn a_worker_killed_for_missing_its_readiness_probe_is_listed_as_not_ready_then_restarted() {
    let worker = codex_bus_tests::bin("codex-mock");
    let config = BusConfig(json!({
        "pools": [{"id": "silent", "command": worker.to_str().unwrap(), "instances": 1,
                   "ready_probe": {"method": "mock/hang", "params": {}},
                   "ready_timeout_sec": 1, "backoff_initial_ms": 10}],
        "limits": {"drain_grace_sec": 0}
    }));
    let bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let mut events = Events::open(&bus.metrics_addr(), None);
    // The only pool has no ready worker: the status says what /readyz says.
    let status = events.next_named("status");
    assert_eq!(status["ready"], json!(false), "{status}");
    let frame = events.until_named("events", WAIT, "a not-ready kill and a restart", |f| {
        let kills = events_of(f, "not_ready", "(not ready in time)");
        kills.first().is_some_and(|kill| {
            events_of(f, "restart", "pid ")
                .iter()
                .any(|r| r["seq"].as_u64() > kill["seq"].as_u64())
        })
    });
    let kill = events_of(&frame, "not_ready", "(not ready in time)")[0];
    assert_eq!(
        (&kill["pool"], &kill["slot"]),
        (&json!("silent"), &json!(0)),
        "{kill}"
    );
    assert!(kill["text"].as_str().unwrap().contains("SIGKILL"), "{kill}");
}

/// The sum of a series of the `rates` frame (`null` when the series is absent: 0).
fn sum(series: &Value) -> u64 {
    series
        .as_array()
        .map_or(0, |s| s.iter().map(|n| n.as_u64().expect("a count")).sum())
}

#[test]
fn the_rates_frame_counts_requests_per_tenant_and_error_replies_by_reason() {
    const TOKEN_A: &str = "rates-tenant-a-token-5b1e";
    const TOKEN_B: &str = "rates-tenant-b-token-c07d";
    let config = BusConfig::mock(1).section(
        "auth",
        json!({"tokens": [
            {"tenant": "a", "sha256": sha256_hex(TOKEN_A)},
            {"tenant": "b", "sha256": sha256_hex(TOKEN_B)},
        ]}),
    );
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let addr = bus.metrics_addr();
    let mut events = Events::open(&addr, None);

    // Sampled from the start: every label is named, nothing counted yet.
    let first = events.next_named("rates");
    assert_eq!(first["period_sec"], json!(1), "{first}");
    for label in ["a", "b", "default", "(other)"] {
        assert!(first["tenants"][label].is_array(), "{label} in {first}");
        assert_eq!(first["totals"]["tenants"][label], json!(0), "{first}");
    }
    assert_eq!(first["totals"]["requests"], json!(0), "{first}");
    assert_eq!(first["totals"]["errors"], json!(0), "{first}");

    // Tenant a: five requests answered. Tenant b: two answered, three to a pool that does not
    // exist (requests, each refused `unknown_pool`), and a line that is not JSON (no request,
    // one `parse_error`).
    let mut a = login(&mut bus, TOKEN_A);
    for id in 0..5 {
        a.request(json!(id), "ping", Value::Null, None);
        assert!(a.recv()["result"].is_object());
    }
    let mut b = login(&mut bus, TOKEN_B);
    for id in 0..2 {
        b.request(json!(id), "ping", Value::Null, None);
        assert!(b.recv()["result"].is_object());
    }
    for id in 2..5 {
        b.send(&json!({"jsonrpc": "2.0", "id": id, "method": "m", "pool": "gamma"}));
        assert_eq!(codex_bus_tests::reason(&b.recv()), Some("unknown_pool"));
    }
    b.send_raw(b"not json\n");
    assert_eq!(codex_bus_tests::reason(&b.recv()), Some("parse_error"));

    // The running totals at once, the series within a period or two (sampled once a second).
    let moved = events.until_named("rates", Duration::from_secs(4), "the series", |r| {
        sum(&r["requests"]) == 10 && sum(&r["errors"]["unknown_pool"]) == 3
    });
    let totals = &moved["totals"];
    assert_eq!(totals["requests"], json!(10), "{moved}");
    assert_eq!(totals["errors"], json!(4), "{moved}");
    assert_eq!(
        totals["errors_by_reason"],
        json!({"unknown_pool": 3, "parse_error": 1}),
        "{moved}"
    );
    assert_eq!(totals["tenants"]["a"], json!(5), "{moved}");
    assert_eq!(totals["tenants"]["b"], json!(5), "{moved}");
    assert_eq!(totals["tenants"]["default"], json!(0), "{moved}");
    assert_eq!(sum(&moved["tenants"]["a"]), 5, "{moved}");
    assert_eq!(sum(&moved["tenants"]["b"]), 5, "{moved}");
    assert_eq!(sum(&moved["errors"]["parse_error"]), 1, "{moved}");
    let periods = moved["requests"].as_array().unwrap().len();
    assert!(periods >= 1, "{moved}");
    for series in moved["tenants"].as_object().unwrap().values() {
        assert_eq!(series.as_array().unwrap().len(), periods, "{moved}");
    }
    for series in moved["errors"].as_object().unwrap().values() {
        assert_eq!(series.as_array().unwrap().len(), periods, "{moved}");
    }
    // The newest period is last: three idle periods later the counts are behind, the sums kept.
    let later = events.until_named("rates", WAIT, "three periods more", |r| {
        r["requests"].as_array().unwrap().len() >= periods + 3
    });
    let requests = later["requests"].as_array().unwrap();
    assert_eq!(sum(&later["requests"]), 10, "{later}");
    assert_eq!(requests.last(), Some(&json!(0)), "{later}");
    let text = later.to_string();
    eprintln!(
        "rates frame after {} periods: {} bytes",
        requests.len(),
        text.len()
    );
}
