//! The sticky session table is bounded: long session ids are refused, idle sessions expire, and
//! a full table refuses new sessions while the ones in it keep working.

use std::time::{Duration, Instant};

use codex_bus_tests::{metric, reason, status, Bus, BusConfig, Conn, Mode};
use serde_json::{json, Value};

fn start(config: BusConfig) -> (Bus, String) {
    let bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let metrics = bus.metrics_addr();
    (bus, metrics)
}

/// Sessions in the table now, from `/status`.
fn sessions(metrics: &str) -> u64 {
    status(metrics)["totals"]["sessions"].as_u64().unwrap()
}

fn ping(conn: &mut Conn, id: i64, session: &str) -> Value {
    conn.request(json!(id), "ping", Value::Null, Some(session));
    let reply = conn.recv();
    assert_eq!(reply["id"], json!(id), "{reply}");
    reply
}

#[test]
fn a_1_mb_session_id_is_refused_and_leaves_no_entry() {
    let config = BusConfig::mock(1).limit("max_input_buffer", 2 * 1024 * 1024);
    let (mut bus, metrics) = start(config);
    let mut conn = bus.connect();
    let long = "s".repeat(1_000_000);
    conn.request(json!(1), "ping", Value::Null, Some(&long));
    let reply = conn.recv();
    // The reply names no session, so it is short; a routed one would echo the 1 MB id.
    let shown: String = reply.to_string().chars().take(300).collect();
    assert_eq!(reply["id"], json!(1), "{shown}");
    assert_eq!(reason(&reply), Some("session_id_too_long"), "{shown}");
    assert_eq!(reply["error"]["data"]["retryable"], json!(false));
    let dropped = [("reason", "unroutable_notification")];
    let before = metric(&metrics, "codex_bus_dropped_messages_total", &dropped);
    conn.send(&json!({"jsonrpc": "2.0", "method": "note", "sessionId": long}));
    // 256 bytes, the default limit, is still a session.
    let longest = "k".repeat(256);
    assert!(ping(&mut conn, 2, &longest).get("result").is_some());
    assert_eq!(
        metric(&metrics, "codex_bus_dropped_messages_total", &dropped),
        before + 1.0
    );
    assert_eq!(
        sessions(&metrics),
        1,
        "only the 256-byte session is in the table"
    );
}

#[test]
fn idle_sessions_expire_and_the_gauge_goes_back_down() {
    let config = BusConfig::mock(2).limit("session_idle_sec", 1);
    let (mut bus, metrics) = start(config);
    let mut conn = bus.connect();
    for (id, session) in ["a", "b", "c"].into_iter().enumerate() {
        assert!(ping(&mut conn, id as i64, session).get("result").is_some());
    }
    assert_eq!(metric(&metrics, "codex_bus_sessions", &[]), 3.0);
    let start = Instant::now();
    while metric(&metrics, "codex_bus_sessions", &[]) > 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sessions never expired"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "expired after {waited:?}"
    );
    assert_eq!(
        metric(&metrics, "codex_bus_sessions_expired_total", &[]),
        3.0
    );
    assert_eq!(sessions(&metrics), 0);
    // A returning session is placed again.
    assert!(ping(&mut conn, 9, "a").get("result").is_some());
    assert_eq!(sessions(&metrics), 1);
    assert_eq!(
        metric(&metrics, "codex_bus_session_assignments_total", &[]),
        4.0
    );
}

#[test]
fn a_full_table_refuses_new_sessions_while_old_ones_still_work() {
    let config = BusConfig::mock(2).limit("max_sessions", 2);
    let (mut bus, metrics) = start(config);
    let mut conn = bus.connect();
    assert!(ping(&mut conn, 1, "one").get("result").is_some());
    assert!(ping(&mut conn, 2, "two").get("result").is_some());
    let refused = ping(&mut conn, 3, "three");
    assert_eq!(reason(&refused), Some("too_many_sessions"), "{refused}");
    assert_eq!(refused["error"]["data"]["retryable"], json!(true));
    conn.send(&json!({"jsonrpc": "2.0", "method": "note", "sessionId": "four"}));
    assert!(ping(&mut conn, 4, "one").get("result").is_some());
    assert!(ping(&mut conn, 5, "two").get("result").is_some());
    assert_eq!(sessions(&metrics), 2);
    assert_eq!(metric(&metrics, "codex_bus_sessions", &[]), 2.0);
}
