//! `limits.max_connections`, lowered below the daemon's open-file limit: connections over the cap
//! are closed at once, so however many clients connect, a crashed worker is still restarted, the
//! clients served keep being served and the daemon's peak RSS stays bounded.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use codex_bus_tests::{metric, reason, rss_kib, Bus, BusConfig, Conn, Mode};
use serde_json::{json, Value};

/// The daemon's open-file limit (soft = hard, so it cannot raise it).
const NOFILE: u64 = 128;

/// Connections served before the flood: fewer than any cap the daemon can compute at [`NOFILE`].
const SERVED: usize = 20;

/// Connections opened past everything the daemon could hold at [`NOFILE`].
const FLOOD: usize = 2 * NOFILE as usize;

/// How far the daemon's peak RSS may rise above its RSS once listening: the served connections,
/// the refused ones (closed at once) and a worker restart.
const FLOOD_RSS_KIB: u64 = 16 * 1024;

fn ping(conn: &mut Conn, id: u64) -> Value {
    conn.request(json!(id), "ping", Value::Null, Some("s"));
    conn.recv()
}

#[test]
fn connections_over_the_cap_are_closed_and_a_crashed_worker_still_restarts() {
    // util-linux's prlimit is on every Debian machine (an essential package).
    std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .expect("prlimit (util-linux) starts the daemon under a low open-file limit");
    let nofile = format!("--nofile={NOFILE}:{NOFILE}");
    let mut bus = Bus::start_under(
        &["prlimit", &nofile, "--"],
        &BusConfig::mock(1),
        Mode::Unix,
        &["--metrics", "127.0.0.1:0"],
    );
    let admin = bus.metrics_addr();
    let cap_line = bus.wait_log("max_connections lowered to keep fds for worker restarts");
    let cap: usize = cap_line
        .split("max_connections=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cap in {cap_line:?}"));
    assert!(cap > SERVED && cap < NOFILE as usize, "cap {cap}");
    let (idle_rss, _) = rss_kib(bus.pid());

    let mut served: Vec<Conn> = (0..SERVED).map(|_| bus.connect()).collect();
    for (i, conn) in served.iter_mut().enumerate() {
        let reply = ping(conn, i as u64);
        assert!(reply.get("result").is_some(), "{reply}");
    }
    // More connections than the daemon has fds: those over the cap are closed at once.
    let flood: Vec<UnixStream> = (0..FLOOD)
        .map(|_| UnixStream::connect(bus.socket_path()).expect("connect"))
        .collect();
    let mut closed = 0;
    for mut stream in flood.iter().skip(cap - SERVED) {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => closed += 1,
            other => panic!("a connection over the cap was not closed: {other:?}"),
        }
    }
    assert_eq!(closed, FLOOD - cap + SERVED);

    // The worker crashes; with no fd to spare it could not be respawned.
    let conn = &mut served[0];
    conn.request(json!("crash"), "mock/crash", Value::Null, Some("s"));
    let reply = conn.recv();
    assert_eq!(reason(&reply), Some("worker_exited"), "{reply}");
    for (i, conn) in served.iter_mut().enumerate() {
        let reply = ping(conn, 1000 + i as u64);
        assert!(
            reply.get("result").is_some(),
            "the restarted worker serves: {reply}\nlog:\n{}",
            bus.log()
        );
    }
    let refused = metric(
        &admin,
        "codex_bus_client_connections_refused_total",
        &[("transport", "unix")],
    );
    assert_eq!(refused, (FLOOD - cap + SERVED) as f64);
    let (rss, peak) = rss_kib(bus.pid());
    println!(
        "open-file limit {NOFILE}, connection cap {cap}: {FLOOD} more connections ({refused} \
         refused), a worker crash and restart; daemon RSS idle {idle_rss} KiB, peak {peak} KiB, \
         now {rss} KiB"
    );
    assert!(
        peak < idle_rss + FLOOD_RSS_KIB,
        "peak RSS {peak} KiB, idle {idle_rss} KiB"
    );
    drop(flood);
}
