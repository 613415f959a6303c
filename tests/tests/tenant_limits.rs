//! Issue 12: per-tenant quotas and rate limits are exact and say when to retry, and the audit trail
//! records security events with the documented fields (docs/operations.md, "Audit trail").
//! Without `auth` every connection is the tenant `default`.

use std::collections::BTreeMap;
use std::path::Path;

use codex_bus_tests::{metric, reason, recv_until, still_works, Bus, BusConfig, Mode};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// The audit lines written so far, parsed.
fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits up to 5 s for an audit line with `event`.
fn wait_audit(path: &Path, event: &str) -> Vec<Value> {
    for _ in 0..100 {
        let lines = audit_lines(path);
        if lines.iter().any(|l| l["event"] == event) {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("no {event} in {:?}", audit_lines(path));
}

#[test]
fn the_request_rate_is_a_token_bucket_and_refusals_say_when_to_retry() {
    // One token a second, five in the bucket: twenty requests sent at once get exactly five
    // admitted (the test sends them within far less than the second a sixth token needs).
    let config = BusConfig::mock(1)
        .limit("tenant_requests_per_sec", 1)
        .limit("tenant_request_burst", 5);
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let mut conn = bus.connect();
    let mut batch = String::new();
    for id in 0..20 {
        batch.push_str(
            &json!({"jsonrpc": "2.0", "id": id, "method": "ping", "sessionId": "s"}).to_string(),
        );
        batch.push('\n');
    }
    conn.send_raw(batch.as_bytes());
    let replies: Vec<Value> = (0..20).map(|_| conn.recv()).collect();
    let limited: Vec<&Value> = replies
        .iter()
        .filter(|r| reason(r) == Some("rate_limited"))
        .collect();
    assert_eq!(replies.len() - limited.len(), 5, "{replies:?}");
    for reply in &limited {
        let data = &reply["error"]["data"];
        assert_eq!(reply["error"]["code"], -32051);
        assert_eq!(data["retryable"], true);
        let wait = data["retry_after_ms"].as_u64().unwrap();
        assert!((1..=1000).contains(&wait), "{reply}");
    }
    let addr = bus.metrics_addr();
    let refused = metric(
        &addr,
        "codex_bus_tenant_refusals_total",
        &[("tenant", "default"), ("reason", "rate_limited")],
    );
    assert_eq!(refused, 15.0);
    // After the wait it names, a request is admitted again.
    let wait = limited[0]["error"]["data"]["retry_after_ms"]
        .as_u64()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(wait + 1000));
    still_works(&mut conn, 100);
}

#[test]
fn quotas_on_requests_in_flight_sessions_and_connections_are_exact() {
    let config = BusConfig::mock(2)
        .limit("tenant_max_in_flight", 3)
        .limit("tenant_max_sessions", 2)
        .limit("tenant_max_connections", 2);
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let (mut a, mut b) = (bus.connect(), bus.connect());
    // Three held requests over two connections fill the in-flight quota; a fourth is refused.
    a.request(json!(1), "mock/delay", json!({"ms": 1500}), Some("s1"));
    a.request(json!(2), "mock/delay", json!({"ms": 1500}), Some("s1"));
    b.request(json!(3), "mock/delay", json!({"ms": 1500}), Some("s2"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    b.request(json!(4), "ping", Value::Null, Some("s2"));
    let refused = b.recv();
    assert_eq!(refused["id"], 4);
    assert_eq!(reason(&refused), Some("quota_exceeded"), "{refused}");
    assert_eq!(refused["error"]["data"]["quota"], "in_flight");
    assert!(refused["error"]["data"]["retry_after_ms"]
        .as_u64()
        .is_some());
    let addr = bus.metrics_addr();
    let gauge = |name| metric(&addr, name, &[("tenant", "default")]);
    assert_eq!(gauge("codex_bus_tenant_requests_in_flight"), 3.0);
    assert_eq!(gauge("codex_bus_tenant_sessions"), 2.0);
    assert_eq!(gauge("codex_bus_tenant_connections"), 2.0);
    // Answers free their places.
    let mut held: Vec<Value> = vec![a.recv(), a.recv(), b.recv()];
    held.sort_by_key(|r| r["id"].as_i64());
    assert!(held.iter().all(|r| r.get("result").is_some()), "{held:?}");
    b.request(json!(5), "ping", Value::Null, Some("s2"));
    assert!(b.recv().get("result").is_some());

    // A third session is refused; the two that exist keep working.
    a.request(json!(6), "ping", Value::Null, Some("s3"));
    let refused = a.recv();
    assert_eq!(refused["error"]["data"]["quota"], "sessions", "{refused}");
    a.request(json!(7), "ping", Value::Null, Some("s1"));
    assert!(a.recv().get("result").is_some());

    // A third connection gets one refusal line and is closed.
    let mut c = bus.connect();
    let refused = c.recv();
    assert_eq!(refused["id"], Value::Null);
    assert_eq!(
        refused["error"]["data"]["quota"], "connections",
        "{refused}"
    );
    assert_eq!(c.read_to_end(), "", "closed after the refusal");
    drop(b);
    // Its place comes back once the daemon has seen the connection go.
    let mut d = None;
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if gauge("codex_bus_tenant_connections") == 1.0 {
            d = Some(bus.connect());
            break;
        }
    }
    let mut d = d.expect("the connection count falls when a client leaves");
    d.request(json!(8), "ping", Value::Null, Some("s2"));
    assert!(d.recv().get("result").is_some());
}

#[test]
fn the_audit_trail_records_sessions_approvals_and_refusals_and_is_reopened_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let config = BusConfig::mock(1)
        .limit("session_idle_sec", 1)
        .limit("tenant_max_sessions", 1)
        .section("audit", json!({"path": path}));
    let mut bus = Bus::start(&config, Mode::Tcp);
    let mut conn = bus.connect();
    conn.request(json!(1), "mock/ask", Value::Null, Some("s1"));
    let ask = conn.recv();
    assert_eq!(ask["method"], "mock/approval", "{ask}");
    conn.send(&json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"decision": "accept"}}));
    let answered = recv_until(&mut conn, 5, |v| v["id"] == 1);
    assert!(answered.last().unwrap().get("result").is_some());
    conn.request(json!(2), "ping", Value::Null, Some("s2"));
    assert_eq!(reason(&conn.recv()), Some("quota_exceeded"));
    let lines = wait_audit(&path, "session_expired");
    let by_event: BTreeMap<&str, &Value> = lines
        .iter()
        .map(|l| (l["event"].as_str().unwrap(), l))
        .collect();
    let created = by_event["session_created"];
    assert_eq!(
        (&created["tenant"], &created["session"], &created["pool"]),
        (&json!("default"), &json!("s1"), &json!("codex"))
    );
    assert_eq!(created["subject"], "tcp");
    assert!(created["slot"].is_u64() && created["ts"].is_string());
    let forwarded = by_event["worker_request_forwarded"];
    assert_eq!(forwarded["method"], "mock/approval");
    assert_eq!(forwarded["session"], "s1");
    let answered = by_event["worker_request_answered"];
    assert_eq!(answered["request_id"], forwarded["request_id"]);
    assert_eq!(answered["tenant"], "default");
    let quota = by_event["quota_refused"];
    assert_eq!(
        (&quota["reason"], &quota["quota"], &quota["suppressed"]),
        (&json!("quota_exceeded"), &json!("sessions"), &json!(0))
    );
    assert_eq!(by_event["session_expired"]["session"], "s1");

    // Rotation: the file is moved away, SIGHUP, and new lines go to a new file at the path.
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    bus.signal(Signal::SIGHUP);
    bus.wait_log("files reopened");
    conn.request(json!(3), "ping", Value::Null, Some("s3"));
    assert!(conn.recv().get("result").is_some());
    wait_audit(&path, "session_created");
    let fresh = wait_audit(&path, "config_changed");
    let created = fresh.iter().find(|l| l["event"] == "session_created");
    assert_eq!(
        created.map(|l| &l["session"]),
        Some(&json!("s3")),
        "{fresh:?}"
    );
    // SIGHUP also reloads the config (the same file: unchanged), which the new file records.
    let reloaded = fresh.iter().find(|l| l["event"] == "config_changed");
    assert_eq!(
        reloaded.map(|l| (&l["action"], &l["by"], &l["result"])),
        Some((&json!("reload"), &json!("sighup"), &json!("unchanged"))),
        "{fresh:?}"
    );
    // Nothing that predates the rotation is in the new file: its lines are the reload's and
    // session s3's (created after it; idle, it may also have expired by now).
    let stale: Vec<&Value> = fresh
        .iter()
        .filter(|l| l["event"] != "config_changed" && l["session"] != "s3")
        .collect();
    assert!(
        stale.is_empty(),
        "lines from before the rotation in the reopened file: {stale:?}"
    );
    assert!(audit_lines(&rotated).len() >= 5);
}
