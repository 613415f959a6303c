//! The sticky session table is bounded: long session ids are refused, idle sessions expire, and
//! a full table refuses new sessions while the ones in it keep working. The floods (200,000
//! sessions over the cap, a stream of 1 MB session ids) keep the daemon's peak RSS within a stated
//! bound while another client is served.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use codex_bus_tests::{metric, reason, rss_kib, status, Bus, BusConfig, Conn, Mode, WAIT};
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

/// Pings `conn` on `session` until `done` holds; returns how many pings it answered meanwhile.
fn serve_until(conn: &mut Conn, session: &str, mut done: impl FnMut() -> bool) -> i64 {
    let start = Instant::now();
    let mut pings = 0;
    while !done() {
        assert!(ping(conn, pings, session).get("result").is_some());
        pings += 1;
        assert!(start.elapsed() < WAIT, "gave up after {pings} pings");
        std::thread::sleep(Duration::from_millis(10));
    }
    pings
}

fn read_from_clients(metrics: &str) -> f64 {
    metric(
        metrics,
        "codex_bus_messages_total",
        &[("direction", "from_client")],
    )
}

/// Sessions the flood names, each new: 200 times the cap.
const FLOOD_SESSIONS: usize = 200_000;

/// How far the daemon's peak RSS may rise above its idle RSS in the session flood: a table of
/// 1,000 sessions and the flood's read buffers. Without the cap the table alone grew by about
/// 40 MB for 200,000 sessions.
const SESSION_FLOOD_RSS_KIB: u64 = 16 * 1024;

#[test]
fn two_hundred_thousand_sessions_over_the_cap_leave_the_table_at_the_cap() {
    let config = BusConfig::mock(2).limit("max_sessions", 1000);
    let (mut bus, metrics) = start(config);
    let mut healthy = bus.connect();
    assert!(ping(&mut healthy, 0, "healthy").get("result").is_some());
    let (idle_rss, _) = rss_kib(bus.pid());
    let (_, mut writer) = bus.connect().split();
    let start = Instant::now();
    let flood = std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(1 << 20);
        for i in 0..FLOOD_SESSIONS {
            let note =
                json!({"jsonrpc": "2.0", "method": "note", "sessionId": format!("flood-{i}")});
            batch.extend_from_slice(note.to_string().as_bytes());
            batch.push(b'\n');
            if batch.len() > 60_000 {
                writer.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        writer.write_all(&batch).unwrap();
        writer
    });
    let before = read_from_clients(&metrics);
    let pings = serve_until(&mut healthy, "healthy", || {
        read_from_clients(&metrics) >= before + FLOOD_SESSIONS as f64
    });
    let took = start.elapsed();
    drop(flood.join().unwrap());
    let (rss, peak) = rss_kib(bus.pid());
    let dropped = metric(
        &metrics,
        "codex_bus_dropped_messages_total",
        &[("reason", "unroutable_notification")],
    );
    println!(
        "{FLOOD_SESSIONS} new sessions sent in {took:?}; {} in the table, {dropped} dropped; \
         daemon RSS idle {idle_rss} KiB, peak {peak} KiB, now {rss} KiB; {pings} pings of \
         another client answered meanwhile",
        sessions(&metrics)
    );
    assert_eq!(sessions(&metrics), 1000);
    assert_eq!(dropped, (FLOOD_SESSIONS - 999) as f64);
    assert!(
        peak < idle_rss + SESSION_FLOOD_RSS_KIB,
        "peak RSS {peak} KiB, idle {idle_rss} KiB"
    );
    assert!(pings > 0);
    assert!(ping(&mut healthy, 99, "healthy").get("result").is_some());
}

/// Requests with a 1 MB session id in the flood.
const LONG_IDS: usize = 40;

/// How far the daemon's peak RSS may rise above its idle RSS in the long-id flood: the
/// connection's read buffer (up to `max_input_buffer`, 2 MiB) and the allocator's slack. Without
/// the limit the ids were kept: +311 MB from one connection in 1.6 s.
const LONG_ID_RSS_KIB: u64 = 16 * 1024;

#[test]
fn a_stream_of_1_mb_session_ids_gets_short_refusals_and_leaves_memory_flat() {
    let config = BusConfig::mock(1).limit("max_input_buffer", 2 * 1024 * 1024);
    let (mut bus, metrics) = start(config);
    let mut healthy = bus.connect();
    assert!(ping(&mut healthy, 0, "healthy").get("result").is_some());
    let (idle_rss, _) = rss_kib(bus.pid());
    let (mut reader, mut writer) = bus.connect().split();
    let start = Instant::now();
    let flood = std::thread::spawn(move || {
        for i in 0..LONG_IDS {
            let id = format!("{i:07}").repeat(1_000_000 / 7);
            let request = json!({"jsonrpc": "2.0", "id": i, "method": "ping", "sessionId": id});
            writer.write_all(format!("{request}\n").as_bytes()).unwrap();
        }
        writer
    });
    // Every refusal is one short line.
    let mut reply = String::new();
    let mut pings = 0;
    for i in 0..LONG_IDS {
        reply.clear();
        reader.read_line(&mut reply).unwrap();
        assert!(reply.len() < 512, "a short refusal: {} bytes", reply.len());
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["id"], json!(i));
        assert_eq!(reason(&reply), Some("session_id_too_long"));
        if i % 10 == 0 {
            assert!(ping(&mut healthy, i as i64, "healthy")
                .get("result")
                .is_some());
            pings += 1;
        }
    }
    let took = start.elapsed();
    drop(flood.join().unwrap());
    let (rss, peak) = rss_kib(bus.pid());
    println!(
        "{LONG_IDS} requests with 1 MB session ids refused in {took:?}; daemon RSS idle \
         {idle_rss} KiB, peak {peak} KiB, now {rss} KiB; {pings} pings of another client \
         answered meanwhile"
    );
    assert_eq!(sessions(&metrics), 1, "only the other client's session");
    assert!(
        peak < idle_rss + LONG_ID_RSS_KIB,
        "peak RSS {peak} KiB, idle {idle_rss} KiB"
    );
}
