//! Authentication (issue 12): the `bus/authenticate` handshake on TCP with capability tokens and
//! HS256 JWTs, Unix peers by uid, stdio as the local operator, secure-by-default listeners, the
//! metrics bearer token, and no secret in any log line.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use codex_bus_tests::{bin, metric, reason, run_bus, sha256_hex, Bus, BusConfig, Conn, Mode, WAIT};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// Tenant `a`'s capability token.
const TOKEN: &str = "cap-token-7c1e9f2a4b6d8e0f13579bdf";
/// The JWT secret (at least 32 bytes).
const SECRET: &str = "jwt-shared-secret-0123456789abcdef-xyz";
/// The metrics bearer token.
const METRICS_TOKEN: &str = "metrics-token-2468ace0bdf13579";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A JWT with `claims`, signed HS256 with `secret`.
fn jwt_signed(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A good JWT for tenant `b`, subject `bob`, audience `bus`.
fn good_jwt() -> String {
    jwt_signed(
        &json!({"exp": now() + 300, "tenant": "b", "sub": "bob", "aud": "bus"}),
        SECRET,
    )
}

/// The `auth` section: tenant `a`'s token, JWTs with audience `bus`, the secret in `dir`.
fn auth_section(dir: &Path, extra: Value) -> Value {
    let secret_file = dir.join("jwt.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let mut auth = json!({
        "tokens": [{"tenant": "a", "sha256": sha256_hex(TOKEN), "subject": "ci"}],
        "jwt": {"secret_file": secret_file, "audience": "bus"},
    });
    for (key, value) in extra.as_object().unwrap() {
        auth[key] = value.clone();
    }
    auth
}

/// A mock pool behind `auth`.
fn config(dir: &Path, extra: Value) -> BusConfig {
    BusConfig::mock(1).section("auth", auth_section(dir, extra))
}

/// Sends `bus/authenticate` with `token` and returns the reply.
fn authenticate(conn: &mut Conn, id: i64, token: &str) -> Value {
    conn.request(json!(id), "bus/authenticate", json!({"token": token}), None);
    conn.recv()
}

/// A ping in session `s` answered.
fn ping(conn: &mut Conn, id: i64) {
    conn.request(json!(id), "ping", Value::Null, Some("s"));
    let reply = conn.recv();
    assert_eq!(reply["id"], json!(id), "{reply}");
    assert_eq!(reply["result"]["method"], json!("ping"), "{reply}");
}

#[test]
fn unauthenticated_lines_are_refused_and_the_connection_closes_after_the_limit() {
    let keys = tempfile::tempdir().unwrap();
    let cfg = config(keys.path(), json!({"handshake_timeout_sec": 2}));
    let bus = Bus::start_with(&cfg, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let mut conn = bus_tcp(&bus);
    conn.request(json!(1), "ping", Value::Null, Some("s"));
    let reply = conn.recv();
    assert_eq!(reply["id"], json!(1), "{reply}");
    assert_eq!(reply["error"]["code"], json!(-32050), "{reply}");
    assert_eq!(reason(&reply), Some("unauthenticated"));
    conn.send_raw(b"not json\n");
    let reply = conn.recv();
    assert_eq!(
        (reply["id"].clone(), reason(&reply)),
        (Value::Null, Some("unauthenticated"))
    );
    // The third refused line is the last: its error comes, then the end of the stream.
    conn.send(&json!({"jsonrpc": "2.0", "method": "bus/authenticate", "params": {"token": TOKEN}}));
    let reply = conn.recv();
    assert_eq!(
        reason(&reply),
        Some("unauthenticated"),
        "a notification cannot authenticate"
    );
    assert_eq!(
        conn.read_to_end(),
        "",
        "closed after max_unauthenticated_lines"
    );

    // A client that says nothing is closed after handshake_timeout_sec.
    let mut silent = bus_tcp(&bus);
    let start = Instant::now();
    assert_eq!(silent.read_to_end(), "");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    bus.wait_log("handshake timeout");

    let addr = bus.metrics_addr();
    let refused = metric(&addr, "codex_bus_auth_total", &[("result", "refused")]);
    let timeout = metric(&addr, "codex_bus_auth_total", &[("result", "timeout")]);
    assert_eq!((refused, timeout), (3.0, 1.0));
    // No unauthenticated connection ever reached the router.
    assert_eq!(
        metric(
            &addr,
            "codex_bus_client_connections_total",
            &[("transport", "tcp")]
        ),
        0.0
    );
}

#[test]
fn bad_credentials_are_refused_with_their_reason_and_never_echoed() {
    let keys = tempfile::tempdir().unwrap();
    let cfg = config(keys.path(), json!({"max_unauthenticated_lines": 10}));
    let bus = Bus::start(&cfg, Mode::Tcp);
    let mut conn = bus_tcp(&bus);
    let t = now();
    let cases = [
        ("wrong-token-value-123".to_owned(), "unknown token"),
        (
            jwt_signed(
                &json!({"exp": t - 120, "tenant": "b", "aud": "bus"}),
                SECRET,
            ),
            "expired jwt",
        ),
        (
            jwt_signed(
                &json!({"exp": t + 300, "tenant": "b", "aud": "bus"}),
                "another-secret-of-at-least-32-bytes!!",
            ),
            "jwt signature does not verify",
        ),
        (
            jwt_signed(
                &json!({"exp": t + 900, "nbf": t + 600, "tenant": "b", "aud": "bus"}),
                SECRET,
            ),
            "jwt is not valid yet",
        ),
        (
            jwt_signed(
                &json!({"exp": t + 300, "tenant": "b", "aud": "web"}),
                SECRET,
            ),
            "jwt audience mismatch",
        ),
        (
            jwt_signed(
                &json!({"exp": t + 300, "tenant": "b c", "aud": "bus"}),
                SECRET,
            ),
            "jwt tenant claim missing or not a tenant name",
        ),
    ];
    for (i, (token, why)) in cases.iter().enumerate() {
        let reply = authenticate(&mut conn, i as i64, token);
        assert_eq!(reply["id"], json!(i), "{reply}");
        assert_eq!(reason(&reply), Some("unauthenticated"), "{reply}");
        assert_eq!(reply["error"]["data"]["detail"], json!(why), "{reply}");
        assert!(!reply.to_string().contains(token.as_str()), "{reply}");
    }
    // Refusals under the limit leave the connection open: a good token still works.
    let reply = authenticate(&mut conn, 100, TOKEN);
    assert_eq!(
        reply["result"],
        json!({"tenant": "a", "subject": "ci"}),
        "{reply}"
    );
    ping(&mut conn, 101);
}

#[test]
fn a_good_token_and_a_good_jwt_reach_a_worker_and_a_second_authenticate_is_invalid() {
    let keys = tempfile::tempdir().unwrap();
    let bus = Bus::start_with(
        &config(keys.path(), json!({})),
        Mode::Tcp,
        &["--metrics", "127.0.0.1:0"],
    );
    let mut a = bus_tcp(&bus);
    let reply = authenticate(&mut a, 1, TOKEN);
    assert_eq!(
        reply,
        json!({"jsonrpc": "2.0", "id": 1, "result": {"tenant": "a", "subject": "ci"}})
    );
    ping(&mut a, 2);
    let mut b = bus_tcp(&bus);
    let reply = authenticate(&mut b, 1, &good_jwt());
    assert_eq!(
        reply["result"],
        json!({"tenant": "b", "subject": "bob"}),
        "{reply}"
    );
    ping(&mut b, 2);
    // Once authenticated, bus/authenticate is a mistake, not a way to change tenant.
    let reply = authenticate(&mut b, 3, TOKEN);
    assert_eq!(reply["id"], json!(3), "{reply}");
    assert_eq!(reason(&reply), Some("invalid_request"), "{reply}");
    ping(&mut b, 4);
    let ok = metric(
        &bus.metrics_addr(),
        "codex_bus_auth_total",
        &[("result", "ok")],
    );
    assert_eq!(ok, 2.0);
    bus.wait_log("client authenticated tenant=a subject=ci");
}

#[test]
fn requests_pipelined_behind_bus_authenticate_in_one_write_are_served() {
    let keys = tempfile::tempdir().unwrap();
    let bus = Bus::start(&config(keys.path(), json!({})), Mode::Tcp);
    let mut conn = bus_tcp(&bus);
    let mut batch = String::new();
    batch.push_str(
        &json!({"jsonrpc": "2.0", "id": "auth", "method": "bus/authenticate", "params": {"token": TOKEN}})
            .to_string(),
    );
    batch.push('\n');
    for id in 1..=3 {
        batch.push_str(
            &json!({"jsonrpc": "2.0", "id": id, "method": "ping", "sessionId": "s"}).to_string(),
        );
        batch.push('\n');
    }
    conn.send_raw(batch.as_bytes());
    let first = conn.recv();
    assert_eq!(
        first["id"],
        json!("auth"),
        "the reply to bus/authenticate comes first: {first}"
    );
    assert_eq!(first["result"]["tenant"], json!("a"));
    let mut ids: Vec<Value> = (0..3).map(|_| conn.recv()["id"].clone()).collect();
    ids.sort_by_key(|v| v.as_i64());
    assert_eq!(ids, vec![json!(1), json!(2), json!(3)]);
}

#[test]
fn a_non_loopback_tcp_listener_without_auth_refuses_to_start_unless_insecure_is_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let plain = BusConfig::mock(1).write(dir.path());
    let (status, _, err) = run_bus(&["--config", plain.to_str().unwrap(), "--tcp", "0.0.0.0:0"]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(
        err.contains("refusing to start a TCP listener on the non-loopback address 0.0.0.0:"),
        "{err}"
    );
    // `check` says the same of a listener the config names, before anything starts.
    let named = BusConfig::mock(1).section(
        "transport",
        json!({"mode": "tcp", "address": "0.0.0.0:7000"}),
    );
    let path = named.write(dir.path());
    let (status, _, err) = run_bus(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.contains("non-loopback address 0.0.0.0:7000"), "{err}");
    // An auth section that gives TCP clients no credential is a mistake on any address.
    let no_credential = BusConfig::mock(1).section("auth", json!({"stdio_tenant": "ops"}));
    let path = no_credential.write(dir.path());
    let (status, _, err) = run_bus(&["--config", path.to_str().unwrap(), "--tcp", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.contains("gives TCP clients no credential"), "{err}");
    // A short JWT secret stops the start with a clear message and without printing it.
    std::fs::write(dir.path().join("short"), "short-secret").unwrap();
    let short = BusConfig::mock(1).section(
        "auth",
        json!({"jwt": {"secret_file": dir.path().join("short")}}),
    );
    let path = short.write(dir.path());
    let (status, _, err) = run_bus(&["--config", path.to_str().unwrap(), "--tcp", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.contains("must be at least 32 bytes"), "{err}");
    assert!(!err.contains("short-secret"), "{err}");

    // insecure_no_auth: it starts, says so, and serves anyone as the default tenant.
    let insecure = BusConfig::mock(1).section("auth", json!({"insecure_no_auth": true}));
    let mut daemon = Daemon::spawn(&insecure, &["--tcp", "0.0.0.0:0"]);
    daemon.wait_log("auth.insecure_no_auth");
    let port = daemon.port("transport=\"tcp\"");
    let mut conn = Conn::tcp(&format!("127.0.0.1:{port}"));
    ping(&mut conn, 1);
    daemon.stop();
}

#[test]
fn a_non_loopback_metrics_listener_needs_a_bearer_token_which_guards_metrics_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let plain = BusConfig::mock(1).write(dir.path());
    let socket = dir.path().join("bus.sock");
    let (status, _, err) = run_bus(&[
        "--config",
        plain.to_str().unwrap(),
        "--unix",
        socket.to_str().unwrap(),
        "--metrics",
        "0.0.0.0:0",
    ]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(
        err.contains("refusing to start the metrics listener on the non-loopback address"),
        "{err}"
    );

    let guarded = BusConfig::mock(1).section(
        "metrics",
        json!({"bearer_sha256": sha256_hex(METRICS_TOKEN)}),
    );
    let mut daemon = Daemon::spawn(&guarded, &["--stdio", "--metrics", "0.0.0.0:0"]);
    let addr = format!("127.0.0.1:{}", daemon.port("transport=\"metrics\""));
    for path in ["/metrics", "/status"] {
        assert_eq!(get(&addr, path, None).0, 401, "{path} without a token");
        assert_eq!(
            get(&addr, path, Some("wrong")).0,
            401,
            "{path} with a wrong token"
        );
        let (code, body) = get(&addr, path, Some(METRICS_TOKEN));
        assert_eq!(code, 200, "{path}: {body}");
    }
    assert_eq!(get(&addr, "/healthz", None).0, 200, "probes stay open");
    let (code, _) = get(&addr, "/readyz", None);
    assert!(code == 200 || code == 503, "{code}");
    // `codex-stdio-bus status` sends the token from the environment.
    let status = Command::new(bin("codex-stdio-bus"))
        .args(["status", "--metrics", &addr])
        .env("CODEX_BUS_METRICS_TOKEN", METRICS_TOKEN)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    daemon.stop();

    let insecure = BusConfig::mock(1).section("auth", json!({"insecure_no_auth": true}));
    let mut daemon = Daemon::spawn(&insecure, &["--stdio", "--metrics", "0.0.0.0:0"]);
    daemon.wait_log("/metrics and /status on a non-loopback address are open to anyone");
    let addr = format!("127.0.0.1:{}", daemon.port("transport=\"metrics\""));
    assert_eq!(get(&addr, "/metrics", None).0, 200);
    daemon.stop();
}

#[test]
fn unix_clients_get_the_tenant_of_their_uid_and_stdio_the_local_operator() {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let mapped = config(
        keys.path(),
        json!({"unix_tenants": {uid.to_string(): "ops"}}),
    );
    let mut bus = Bus::start_with(&mapped, Mode::Unix, &["--log-level", "debug"]);
    let mut conn = bus.connect();
    ping(&mut conn, 1);
    bus.wait_log(&format!("(unix, ops/uid {uid})"));
    let reply = authenticate(&mut conn, 2, TOKEN);
    assert_eq!(
        reason(&reply),
        Some("invalid_request"),
        "no handshake on a Unix socket: {reply}"
    );
    drop(bus);

    let unmapped = config(keys.path(), json!({}));
    let mut bus = Bus::start_with(&unmapped, Mode::Unix, &["--log-level", "debug"]);
    let mut conn = bus.connect();
    ping(&mut conn, 1);
    bus.wait_log(&format!("(unix, uid-{uid}/uid {uid})"));
    drop(bus);

    let mut bus = Bus::start_with(
        &config(keys.path(), json!({})),
        Mode::Stdio,
        &["--log-level", "debug"],
    );
    let mut conn = bus.connect();
    ping(&mut conn, 1);
    bus.wait_log("(stdio, local/stdio)");
}

#[test]
fn no_token_jwt_or_secret_reaches_the_log_even_at_trace_level() {
    let keys = tempfile::tempdir().unwrap();
    let cfg = config(keys.path(), json!({"max_unauthenticated_lines": 10}));
    let bus = Bus::start_with(&cfg, Mode::Tcp, &["--log-level", "trace"]);
    let jwt = good_jwt();
    let bad_jwt = jwt_signed(
        &json!({"exp": now() - 300, "tenant": "b", "aud": "bus"}),
        SECRET,
    );
    let wrong = "wrong-token-must-not-be-logged";
    let mut conn = bus_tcp(&bus);
    for (i, token) in [wrong, bad_jwt.as_str()].iter().enumerate() {
        let reply = authenticate(&mut conn, i as i64, token);
        assert_eq!(reason(&reply), Some("unauthenticated"), "{reply}");
    }
    assert_eq!(
        authenticate(&mut conn, 5, TOKEN)["result"]["tenant"],
        json!("a")
    );
    ping(&mut conn, 6);
    let mut other = bus_tcp(&bus);
    assert_eq!(
        authenticate(&mut other, 1, &jwt)["result"]["tenant"],
        json!("b")
    );
    ping(&mut other, 2);
    bus.wait_log_count("client authenticated", 2);
    // Refusals are logged at most once a second per listener (the metric counts each).
    bus.wait_log("client not authenticated");
    let log = bus.log();
    for secret in [TOKEN, SECRET, jwt.as_str(), bad_jwt.as_str(), wrong] {
        assert!(!log.contains(secret), "{secret:?} is in the log:\n{log}");
    }
    // Nor in the parts of a JWT (its signature is derived from the secret).
    let signature = jwt.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "{log}");
    // The refusals came within a second: the first is logged with its reason, the rest counted.
    assert!(
        log.contains("client not authenticated reason=\"unknown token\""),
        "{log}"
    );

    // `check` prints the effective config: digests and paths, never the secret.
    let (status, out, err) = run_bus(&[
        "check",
        "--config",
        bus.dir.path().join("bus.json").to_str().unwrap(),
    ]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains(&sha256_hex(TOKEN)), "{out}");
    assert!(!out.contains(SECRET) && !out.contains(TOKEN), "{out}");
}

/// A TCP connection to the daemon (loopback).
fn bus_tcp(bus: &Bus) -> Conn {
    Conn::tcp(bus.tcp_addr())
}

/// `GET path` with an optional bearer token; (status code, body).
fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    (code, body.to_owned())
}

/// A daemon started with its own listener flags (the harness's `Bus` binds loopback only).
struct Daemon {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn spawn(config: &BusConfig, args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let path = config.write(dir.path());
        let log = std::fs::File::create(dir.path().join("bus.log")).unwrap();
        let child = Command::new(bin("codex-stdio-bus"))
            .arg("--config")
            .arg(path)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Daemon { child, dir }
    }

    fn wait_log(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let log = std::fs::read_to_string(self.dir.path().join("bus.log")).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(start.elapsed() < WAIT, "no {needle:?} in the log:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port of the listener whose "listening" line contains `needle`.
    fn port(&self, needle: &str) -> u16 {
        let line = self.wait_log(needle);
        let addr = line.split("addr=").nth(1).unwrap();
        let addr = addr.split_whitespace().next().unwrap();
        addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
