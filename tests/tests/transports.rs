//! Round trips over stdio, a Unix socket and TCP; the endpoints' safety rules.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use codex_bus_tests::{run_bus, Bus, BusConfig, Conn, Mode};
use serde_json::{json, Value};

/// One request and one notification-free reply, checked field by field.
fn round_trip(conn: &mut Conn) {
    conn.request(json!(7), "ping", Value::Null, Some("s-1"));
    let reply = conn.recv();
    assert_eq!(reply["id"], json!(7));
    assert_eq!(reply["sessionId"], json!("s-1"));
    assert_eq!(reply["result"]["method"], json!("ping"));
    assert_eq!(reply["result"]["pool"], json!("codex"));
    conn.request(json!("str-id"), "mock/echo", json!({"x": [1, 2]}), None);
    let reply = conn.recv();
    assert_eq!(reply["id"], json!("str-id"));
    assert_eq!(reply["result"]["params"], json!({"x": [1, 2]}));
}

#[test]
fn stdio_round_trip_and_eof_drains_and_exits_zero() {
    let mut bus = Bus::start(&BusConfig::mock(2), Mode::Stdio);
    let mut conn = bus.connect();
    round_trip(&mut conn);
    // A request sent right before EOF is still answered: EOF drains, it does not drop.
    conn.request(json!(99), "mock/delay", json!({"ms": 300}), None);
    conn.close_send();
    let rest = conn.read_to_end();
    let last: Value = serde_json::from_str(rest.trim()).expect("one reply after EOF");
    assert_eq!(last["id"], json!(99));
    assert!(bus.wait_exit().success(), "log:\n{}", bus.log());
}

#[test]
fn stdio_reads_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = BusConfig::mock(1).write(dir.path());
    let input = dir.path().join("in.ndjson");
    std::fs::write(
        &input,
        "{\"id\":1,\"method\":\"a\"}\n{\"id\":2,\"method\":\"b\"}",
    )
    .unwrap();
    let out = std::process::Command::new(codex_bus_tests::bin("codex-stdio-bus"))
        .arg("--config")
        .arg(&config)
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success());
    let ids: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].clone())
        .collect();
    assert_eq!(
        ids.len(),
        2,
        "the last line had no newline and is still served"
    );
    assert!(ids.contains(&json!(1)) && ids.contains(&json!(2)));
}

#[test]
fn unix_round_trip_mode_0600_and_removed_on_exit() {
    let mut bus = Bus::start(&BusConfig::mock(1), Mode::Unix);
    let path = bus.socket_path();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let mut conn = bus.connect();
    round_trip(&mut conn);
    bus.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(bus.wait_exit().success(), "log:\n{}", bus.log());
    assert!(!path.exists(), "socket file removed on exit");
}

#[test]
fn unix_refuses_a_regular_file_and_a_live_socket() {
    let bus = Bus::start(&BusConfig::mock(1), Mode::Unix);
    let dir = tempfile::tempdir().unwrap();
    let config = BusConfig::mock(1).write(dir.path());
    let config = config.to_str().unwrap();

    let live = bus.socket_path();
    let (status, _, err) = run_bus(&["--config", config, "--unix", live.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("another process is listening"), "{err}");
    assert!(live.exists(), "the live daemon's socket is untouched");

    let file = dir.path().join("precious.txt");
    std::fs::write(&file, "keep me").unwrap();
    let (status, _, err) = run_bus(&["--config", config, "--unix", file.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn unix_replaces_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a dead listener leaves its file behind");
    let config = BusConfig::mock(1).write(dir.path());
    let mut child = std::process::Command::new(codex_bus_tests::bin("codex-stdio-bus"))
        .arg("--config")
        .arg(&config)
        .arg("--unix")
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let mut conn = loop {
        if let Ok(stream) = std::os::unix::net::UnixStream::connect(&path) {
            drop(stream);
            break Conn::unix(&path);
        }
        assert!(
            start.elapsed() < codex_bus_tests::WAIT,
            "stale socket not replaced"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    round_trip(&mut conn);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn tcp_round_trip() {
    let mut bus = Bus::start(&BusConfig::mock(2), Mode::Tcp);
    let mut conn = bus.connect();
    round_trip(&mut conn);
}

#[test]
fn tcp_accepts_ipv6_and_host_names_and_refuses_bad_ports() {
    let dir = tempfile::tempdir().unwrap();
    let config = BusConfig::mock(1).write(dir.path());
    let config = config.to_str().unwrap();
    let (status, _, err) = run_bus(&["--config", config, "--tcp", "127.0.0.1:99999"]);
    assert!(!status.success());
    assert!(
        err.contains("cannot listen on TCP 127.0.0.1:99999"),
        "{err}"
    );
    for address in ["[::1]:0", "localhost:0"] {
        if address.starts_with('[') && std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("skipping {address}: this machine has no IPv6 loopback");
            continue;
        }
        let mut child = std::process::Command::new(codex_bus_tests::bin("codex-stdio-bus"))
            .args(["--config", config, "--tcp", address])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let listening = loop {
            line.clear();
            if std::io::BufRead::read_line(&mut err, &mut line).unwrap() == 0 {
                break None;
            }
            if line.contains("listening") {
                break Some(line.clone());
            }
        };
        let listening = listening.unwrap_or_else(|| panic!("{address}: never listened"));
        let addr = listening
            .split("addr=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        let mut conn = Conn::tcp(addr);
        round_trip(&mut conn);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn a_missing_worker_program_fails_at_startup() {
    let config = BusConfig(
        json!({"pools": [{"id": "p", "command": "/nonexistent/worker", "instances": 1}]}),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = config.write(dir.path());
    let (status, _, err) = run_bus(&["--config", path.to_str().unwrap(), "--tcp", "127.0.0.1:0"]);
    assert!(!status.success());
    assert!(err.contains("pools[0].command"), "{err}");
}
