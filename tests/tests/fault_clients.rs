//! Fault-injection suite, items 6, 7 and 8: clients that misbehave, and many at once.
//!
//! - Item 6, a client that stops reading: it is cut off after `backpressure_timeout_sec`, while a
//!   client of the same worker keeps its round trips short (measured). `pipeline.rs` checks the
//!   cut-off itself; this one measures the bystander's latency during the stall.
//! - Item 7, 1,000 client connections at once, all connected before the first request, each served.
//! - Item 8, bad input at every layer: (a) random bytes, NULs, invalid UTF-8, oversize lines, lone
//!   `\r`, 100,000-deep nesting, on several connections at once, with the daemon and its workers
//!   unharmed; (b) partial lines, then a disconnect; (c) a disconnect with requests in flight:
//!   the late replies are dropped and counted, and nothing stays in flight.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_tests::{
    alive, metric, raise_fd_limit, reason, request_line, run_bus, status, Bus, BusConfig, Mode,
    WAIT,
};
use serde_json::{json, Value};

/// Polls a metric until `check` holds; panics with the last value after [`WAIT`].
fn wait_metric(
    addr: &str,
    name: &str,
    labels: &[(&str, &str)],
    check: impl Fn(f64) -> bool,
) -> f64 {
    let start = Instant::now();
    loop {
        let value = metric(addr, name, labels);
        if check(value) {
            return value;
        }
        assert!(start.elapsed() < WAIT, "{name} {labels:?} stuck at {value}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `p`-th percentile of sorted samples.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// Item 6
// ---------------------------------------------------------------------------------------------

/// How long the daemon must have read nothing from clients to count the flooding one as stalled.
const STALLED: Duration = Duration::from_millis(100);

#[test]
fn a_stalled_reader_is_cut_off_while_a_client_of_the_same_worker_keeps_fast_round_trips() {
    const PINGS: usize = 200;
    const FLOOD: usize = 10_000;
    let config = BusConfig::mock(1)
        .limit("max_output_queue", 64 * 1024)
        .limit("backpressure_timeout_sec", 1);
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let metrics = bus.metrics_addr();
    let worker = bus.wait_workers(1);
    let mut healthy = bus.connect();
    healthy.request(json!("warm"), "ping", Value::Null, Some("healthy"));
    let pid = healthy.recv()["result"]["pid"].clone();

    // The stalled client: sends echo requests of 64 KiB each and never reads the replies.
    let (mut stalled_reader, mut stalled_writer) = bus.connect().split();
    let sent = Arc::new(AtomicUsize::new(0));
    let flood = std::thread::spawn({
        let sent = sent.clone();
        move || {
            let blob = "e".repeat(64 * 1024);
            for i in 0..FLOOD {
                let line = request_line(json!(i), "mock/echo", json!({"blob": blob}), "stalled");
                if let Err(error) = stalled_writer.write_all(&line) {
                    return (i, Instant::now(), Some(error));
                }
                sent.store(i + 1, Ordering::SeqCst);
            }
            (FLOOD, Instant::now(), None)
        }
    });

    // The daemon stops reading it once its output queue is full, i.e. once the daemon's write of
    // its replies blocks: from then on it is stalled, and cut off after backpressure_timeout_sec.
    // Seen from outside: the bytes read from clients stop growing (the other client is idle).
    let read_from_clients = || {
        metric(
            &metrics,
            "codex_bus_message_bytes_total",
            &[("direction", "from_client")],
        )
    };
    let start = Instant::now();
    let (mut last, mut since) = (read_from_clients(), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = read_from_clients();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if sent.load(Ordering::SeqCst) > 0 && since.elapsed() >= STALLED {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the daemon never stopped reading the flood ({} sent)",
            sent.load(Ordering::SeqCst)
        );
        assert!(
            !flood.is_finished(),
            "the flood ended before the daemon stopped reading it"
        );
    }
    let stalled_at = Instant::now();

    // Meanwhile the other client of the same worker is served as usual.
    let mut round_trips = Vec::with_capacity(PINGS);
    let mut ping_ends = Vec::with_capacity(PINGS);
    for i in 0..PINGS {
        let t = Instant::now();
        healthy.request(json!(i), "ping", Value::Null, Some("healthy"));
        let reply = healthy.recv();
        round_trips.push(t.elapsed());
        ping_ends.push(Instant::now());
        assert_eq!(reply["id"], json!(i), "{reply}");
        assert_eq!(reply["result"]["pid"], pid, "same worker: {reply}");
    }

    // The stalled client is cut off (bounded wait), and then its blocked write fails: the daemon
    // closed the socket.
    let cut_line = bus.wait_log(
        "client output queue stayed over max_output_queue for backpressure_timeout_sec; disconnecting",
    );
    assert!(cut_line.contains("timeout_sec=1"), "{cut_line}");
    let (written, write_failed_at, error) = flood.join().unwrap();
    let error = error.expect("the stalled client was cut off before it sent everything");
    // And reading what the kernel still holds ends in EOF or a reset, not in a timeout.
    let mut got = Vec::new();
    let read_end = match stalled_reader.read_to_end(&mut got) {
        Ok(_) => "EOF".to_owned(),
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ),
                "the cut-off client's read ends with {e:?}"
            );
            format!("{:?}", e.kind())
        }
    };
    let replies = got.iter().filter(|b| **b == b'\n').count();
    assert!(
        replies < written,
        "cut off before its replies: {replies} of {written}"
    );

    round_trips.sort_unstable();
    let (p50, p99, max) = (
        percentile(&round_trips, 50),
        percentile(&round_trips, 99),
        *round_trips.last().unwrap(),
    );
    let during = ping_ends.iter().filter(|t| **t <= write_failed_at).count();
    println!(
        "stalled client: {written} × 64 KiB requests written; the daemon stopped reading it \
         after {:?} (nothing read for {STALLED:?}); its write failed {:?} later ({:?}: {error}); \
         then it read {replies} replies and {read_end}",
        stalled_at - start,
        write_failed_at.saturating_duration_since(stalled_at),
        error.kind(),
    );
    println!(
        "other client, {PINGS} sequential pings on the same worker ({during} done before the \
         cut-off): p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    assert!(
        matches!(
            error.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
        ),
        "{error:?}"
    );
    assert!(during > 0, "the pings started during the stall");
    assert!(p50 < Duration::from_millis(10), "median round trip {p50:?}");
    assert!(max < Duration::from_secs(1), "slowest round trip {max:?}");
    assert_eq!(
        bus.log()
            .matches("stayed over max_output_queue for backpressure_timeout_sec")
            .count(),
        1,
        "only the stalled client is cut off"
    );
    healthy.request(json!("after"), "ping", Value::Null, Some("healthy"));
    assert_eq!(healthy.recv()["result"]["pid"], pid);
    assert_eq!(bus.worker_pids(), worker, "the worker was never restarted");
}

// ---------------------------------------------------------------------------------------------
// Item 7
// ---------------------------------------------------------------------------------------------

/// Linux's initial SYN retransmission timeout: a connect this slow had its SYN dropped.
const SYN_RETRANSMIT: Duration = Duration::from_millis(900);

#[test]
fn a_thousand_clients_connected_at_once_each_get_their_reply() {
    const CLIENTS: usize = 1_000;
    let (soft, hard) = raise_fd_limit();
    assert!(
        hard >= CLIENTS as u64 + 100,
        "this test needs {} open files; the hard limit is {hard}",
        CLIENTS + 100
    );
    let bus = Bus::start_with(
        &BusConfig::mock(4),
        Mode::Tcp,
        &["--metrics", "127.0.0.1:0"],
    );
    let metrics = bus.metrics_addr();
    let addr = bus.tcp_addr().to_owned();
    let workers = bus.wait_workers(4);
    bus.wait_log_count("worker ready", 4);

    let started = Instant::now();
    let mut streams = Vec::with_capacity(CLIENTS);
    let mut connect_times = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let t = Instant::now();
        let stream = TcpStream::connect(&addr)
            .unwrap_or_else(|e| panic!("connection {i} refused after {} others: {e}", i));
        connect_times.push(t.elapsed());
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        streams.push(stream);
    }
    let connected = started.elapsed();
    // A connect on loopback takes microseconds, unless the listener's accept queue was full and
    // the kernel dropped the SYN: then the client retransmits it after 1 s (3 s, 7 s…).
    let retransmitted: Vec<(usize, Duration)> = connect_times
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, t)| *t >= SYN_RETRANSMIT)
        .collect();
    connect_times.sort_unstable();
    // All of them accepted by the daemon before anyone sends a byte.
    wait_metric(
        &metrics,
        "codex_bus_client_connections",
        &[("transport", "tcp")],
        |v| v == CLIENTS as f64,
    );
    let accepted = started.elapsed();

    for (i, stream) in streams.iter_mut().enumerate() {
        let line = request_line(json!(i), "ping", Value::Null, &format!("conn-{i}"));
        stream.write_all(&line).unwrap();
    }
    let mut per_slot = BTreeMap::new();
    for (i, stream) in streams.iter().enumerate() {
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("client {i}: no reply in time: {e}"));
        let reply: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("client {i}: bad reply {line:?}: {e}"));
        assert_eq!(reply["id"], json!(i), "client {i}: {reply}");
        assert!(reply.get("result").is_some(), "client {i}: {reply}");
        assert_eq!(reply["sessionId"], json!(format!("conn-{i}")), "{reply}");
        *per_slot
            .entry(reply["result"]["slot"].as_u64().unwrap())
            .or_insert(0) += 1;
    }
    let served = started.elapsed();
    println!(
        "fd limit {soft} → {hard}; {CLIENTS} clients connected in {connected:?} (connect p50 \
         {:?}, p99 {:?}, max {:?}; {} waited for a SYN retransmission: {retransmitted:?}), all \
         accepted by {accepted:?}, all {CLIENTS} replies by {served:?} (requests + replies {:?}); \
         replies per slot {per_slot:?}",
        percentile(&connect_times, 50),
        percentile(&connect_times, 99),
        connect_times.last().unwrap(),
        retransmitted.len(),
        served - accepted
    );
    assert_eq!(per_slot.values().sum::<usize>(), CLIENTS);
    assert_eq!(per_slot.len(), 4, "sessions spread over the 4 workers");
    assert_eq!(
        metric(
            &metrics,
            "codex_bus_client_connections_total",
            &[("transport", "tcp")]
        ),
        CLIENTS as f64
    );
    assert!(!bus.log().contains("accept failed"), "{}", bus.log());
    // None had to wait for a SYN retransmission: the listen backlog holds a burst of this size.
    assert!(
        retransmitted.is_empty(),
        "{} of {CLIENTS} connects waited ≥ {SYN_RETRANSMIT:?} for a SYN retransmission (the \
         listener's accept queue overflowed; `ss -ltn` shows its backlog): {retransmitted:?}",
        retransmitted.len()
    );
    drop(streams);
    wait_metric(
        &metrics,
        "codex_bus_client_connections",
        &[("transport", "tcp")],
        |v| v == 0.0,
    );
    assert_eq!(bus.worker_pids(), workers);
}

// ---------------------------------------------------------------------------------------------
// Item 8 (a)
// ---------------------------------------------------------------------------------------------

/// What a connection of the bad-input test must get before its sentinel's reply.
enum Expect {
    /// Exactly these, in order: a reason of an error reply, or `result:<id>`.
    Exactly(Vec<&'static str>),
    /// Any number of error replies with a client-fault reason and `id: null` (random bytes).
    OnlyErrors,
}

/// The error reasons a client's bad input may get.
const CLIENT_FAULTS: [&str; 4] = [
    "parse_error",
    "invalid_request",
    "batch_not_supported",
    "message_too_large",
];

#[test]
fn bad_input_at_every_layer_gets_error_replies_and_harms_neither_daemon_nor_workers() {
    let mut bus = Bus::start_with(
        &BusConfig::mock(2),
        Mode::Tcp,
        &["--metrics", "127.0.0.1:0"],
    );
    let metrics = bus.metrics_addr();
    let workers = bus.wait_workers(2);
    bus.wait_log_count("worker ready", 2);
    let daemon = bus.pid();
    let limit = 1024 * 1024; // the default max_input_buffer
    let mut rng = fastrand::Rng::with_seed(0x5eed_c0de);

    let deep = 100_000;
    let mut cases: Vec<(&str, Vec<u8>, Expect)> = Vec::new();
    for seed in 0..2 {
        // Every byte value: NULs, lone \r, invalid UTF-8, about one \n per 256 bytes.
        let mut bytes = Vec::new();
        let mut chunk = fastrand::Rng::with_seed(seed);
        for _ in 0..64 {
            let n = chunk.usize(1..=8 * 1024);
            bytes.extend(std::iter::repeat_with(|| chunk.u8(..)).take(n));
        }
        cases.push(("random", bytes, Expect::OnlyErrors));
    }
    cases.push((
        "nul",
        [
            &b"\0\0\0\n"[..],
            b"{\"id\":1,\"method\":\"ping\"}\0\n",
            b"{\"id\":\"a\0b\",\"method\":\"ping\"}\n",
            b"\0{\"id\":2,\"method\":\"ping\"}\n",
        ]
        .concat(),
        Expect::Exactly(vec!["parse_error"; 4]),
    ));
    cases.push((
        "utf8",
        [
            &b"\xff\xfe\xfd\n"[..],
            b"{\"id\":2,\"method\":\"p\xc3\x28\"}\n",
            b"{\"id\":3,\"method\":\"ping\",\"params\":\"\xed\xa0\x80\"}\n",
            b"{\"id\":4,\"method\":\"ping\",\"params\":\"\xc0\x80\"}\n",
            b"{\"id\":5,\"method\":\"ping\",\"params\":\"\xf4\x90\x80\x80\"}\n",
        ]
        .concat(),
        Expect::Exactly(vec!["parse_error"; 5]),
    ));
    let mut huge: Vec<u8> = std::iter::repeat_with(|| rng.u8(..))
        .take(2 * limit)
        .map(|b| if b == b'\n' { b' ' } else { b })
        .collect();
    huge.push(b'\n');
    huge.extend(request_line(
        json!(6),
        "ping",
        json!("x".repeat(limit)),
        "huge",
    ));
    cases.push(("huge", huge, Expect::Exactly(vec!["message_too_large"; 2])));
    cases.push((
        "cr",
        [
            &b"\r\n"[..],
            b"{\"id\":\"cr\",\r\"method\":\"ping\",\r\"sessionId\":\"cr\"\r}\r\n",
            b"{\"id\":7,\"method\":\"ping\"}\r{\"id\":8,\"method\":\"ping\"}\n",
            b"\r\r\n",
        ]
        .concat(),
        Expect::Exactly(vec!["result:cr", "parse_error", "parse_error"]),
    ));
    cases.push((
        "deep",
        [
            "[".repeat(deep).into_bytes(),
            b"\n".to_vec(),
            "[".repeat(deep).into_bytes(),
            "]".repeat(deep).into_bytes(),
            b"\n".to_vec(),
            "{\"a\":".repeat(deep).into_bytes(),
            b"\n".to_vec(),
            format!(
                "{{\"id\":\"deep\",\"method\":\"ping\",\"params\":{}{},\"sessionId\":\"deep\"}}\n",
                "[".repeat(deep),
                "]".repeat(deep)
            )
            .into_bytes(),
        ]
        .concat(),
        Expect::Exactly(vec![
            "parse_error",
            "batch_not_supported",
            "parse_error",
            "result:deep",
        ]),
    ));

    // All connections at once; each is fed by its own thread (a random one gets thousands of
    // error replies, which must be read while it writes) and ends with a valid request.
    let mut readers = Vec::new();
    let mut feeders = Vec::new();
    for (n, (name, bytes, expect)) in cases.into_iter().enumerate() {
        let (reader, mut writer) = bus.connect().split();
        let sentinel = format!("sentinel-{n}");
        let mut tail = b"\n".to_vec();
        tail.extend(request_line(
            json!(sentinel),
            "ping",
            Value::Null,
            &format!("bad-{n}"),
        ));
        let mut pieces = fastrand::Rng::with_seed(n as u64 + 100);
        feeders.push(std::thread::spawn(move || {
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = pieces.usize(1..=16 * 1024).min(rest.len());
                writer.write_all(&rest[..n]).unwrap();
                rest = &rest[n..];
            }
            writer.write_all(&tail).unwrap();
            writer
        }));
        readers.push((name, reader, sentinel, expect));
    }
    let mut summary = Vec::new();
    for (name, mut reader, sentinel, expect) in readers {
        let mut got = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("{name}: reply in time: {e}"));
            assert!(
                n > 0,
                "{name}: connection closed before the sentinel's reply"
            );
            let reply: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{name}: bad JSON from the bus ({e}): {line}"));
            assert_eq!(reply["jsonrpc"], json!("2.0"), "{name}: {reply}");
            if reply["id"] == json!(sentinel) {
                assert!(reply.get("result").is_some(), "{name}: {reply}");
                break;
            }
            match reason(&reply) {
                Some(r) => {
                    assert!(CLIENT_FAULTS.contains(&r), "{name}: {reply}");
                    assert_eq!(reply["error"]["data"]["retryable"], json!(false), "{reply}");
                    got.push(r.to_owned());
                }
                None => {
                    assert!(reply.get("result").is_some(), "{name}: {reply}");
                    got.push(format!("result:{}", reply["id"].as_str().unwrap_or("?")));
                }
            }
            if matches!(expect, Expect::OnlyErrors) {
                assert_eq!(reply["id"], Value::Null, "{name}: {reply}");
            }
        }
        match &expect {
            Expect::Exactly(want) => {
                // The bus's own error replies come at once, a worker's result later: only the
                // replies themselves are fixed, not how they interleave.
                let (mut got, mut want) = (got.clone(), want.clone());
                got.sort_unstable();
                want.sort_unstable();
                assert_eq!(got, want, "{name}")
            }
            Expect::OnlyErrors => {
                assert!(
                    got.iter().all(|r| !r.starts_with("result:")),
                    "{name}: {got:?}"
                )
            }
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &got {
            *counts.entry(r.as_str()).or_insert(0) += 1;
        }
        summary.push(format!("{name}: {counts:?}"));
    }
    for feeder in feeders {
        drop(feeder.join().expect("every byte was taken"));
    }
    println!("replies before each sentinel: {}", summary.join("; "));

    // Nothing reached a worker that could hurt it (a worker logs every line it cannot parse,
    // and the bus every worker line it cannot route), and the daemon is unharmed.
    let log = bus.log();
    assert!(!log.contains("parse error ("), "{log}");
    assert!(!log.contains("worker line skipped"), "{log}");
    assert!(alive(daemon), "daemon alive");
    assert_eq!(bus.worker_pids(), workers, "same workers");
    assert_eq!(
        metric(&metrics, "codex_bus_worker_restarts_total", &[]),
        0.0
    );
    assert_eq!(
        metric(&metrics, "codex_bus_workers", &[("state", "ready")]),
        2.0
    );
    assert_eq!(metric(&metrics, "codex_bus_requests_in_flight", &[]), 0.0);
    let mut bystander = bus.connect();
    bystander.request(json!("after"), "ping", Value::Null, Some("after"));
    assert!(bystander.recv().get("result").is_some());
}

// ---------------------------------------------------------------------------------------------
// Item 8 (b)
// ---------------------------------------------------------------------------------------------

#[test]
fn partial_lines_then_a_disconnect_leave_nothing_behind() {
    let config = BusConfig::mock(1);
    let mut bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
    let metrics = bus.metrics_addr();
    let addr = bus.tcp_addr().to_owned();
    let workers = bus.wait_workers(1);
    let mut bystander = bus.connect();
    bystander.request(json!(0), "ping", Value::Null, Some("by"));
    assert!(bystander.recv().get("result").is_some());

    let stderr_request = |id: u64, text: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "mock/stderr", "params": {"text": text}})
            .to_string()
    };
    let complete = stderr_request(1, "COMPLETE-AT-EOF");
    let half = stderr_request(2, "HALF-LINE-NEVER-SENT");
    let rude: Vec<(Vec<u8>, usize)> = vec![
        // A whole request without its newline: still a message at end of input.
        (complete.clone().into_bytes(), 1),
        // A request without its closing braces.
        (half.as_bytes()[..half.len() - 2].to_vec(), 1),
        // A line cut inside a multi-byte UTF-8 character.
        (
            b"{\"id\":3,\"method\":\"ping\",\"params\":\"\xe2\x82".to_vec(),
            1,
        ),
        // A line longer than max_input_buffer, cut before its end.
        (vec![b'x'; 2 * 1024 * 1024], 1),
        // A complete request, then half of the next.
        (
            b"{\"id\":5,\"method\":\"ping\"}\n{\"id\":6,\"meth".to_vec(),
            2,
        ),
    ];
    let lines: usize = rude.iter().map(|(_, n)| n).sum();
    let before = metric(
        &metrics,
        "codex_bus_messages_total",
        &[("direction", "from_client")],
    );
    for (bytes, _) in &rude {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream.write_all(bytes).unwrap();
        drop(stream);
    }
    // Every rude connection is served to its end and forgotten.
    wait_metric(
        &metrics,
        "codex_bus_client_connections",
        &[("transport", "tcp")],
        |v| v == 1.0,
    );
    wait_metric(&metrics, "codex_bus_requests_in_flight", &[], |v| v == 0.0);
    let read = metric(
        &metrics,
        "codex_bus_messages_total",
        &[("direction", "from_client")],
    ) - before;
    // The worker got the complete request, and not the half one: the bystander's marker, sent
    // after every rude connection ended, comes after anything they could have forwarded.
    bystander.send(&json!({"jsonrpc": "2.0", "id": 9, "method": "mock/stderr",
        "params": {"text": "BYSTANDER-AFTER"}, "sessionId": "by"}));
    assert_eq!(bystander.recv()["id"], json!(9));
    bus.wait_log("BYSTANDER-AFTER");
    let log = bus.log();
    println!(
        "{} rude connections, {read} messages read from them (expected {lines}); the complete \
         line without newline reached the worker: {}",
        rude.len(),
        log.contains("COMPLETE-AT-EOF")
    );
    assert_eq!(
        read, lines as f64,
        "every partial line is read as one message"
    );
    assert!(log.contains("COMPLETE-AT-EOF"), "{log}");
    // A worker logs every line it cannot parse ("parse error (…): <line>"): none reached one.
    assert!(!log.contains("HALF-LINE-NEVER-SENT"), "{log}");
    assert!(!log.contains("parse error ("), "{log}");
    assert_eq!(bus.worker_pids(), workers, "same worker");
    assert_eq!(
        metric(&metrics, "codex_bus_worker_restarts_total", &[]),
        0.0
    );
}

// ---------------------------------------------------------------------------------------------
// Item 8 (c)
// ---------------------------------------------------------------------------------------------

/// How a client leaves with its requests in flight.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// Closes its Unix socket: the daemon's next write to it fails with EPIPE.
    UnixClose,
    /// Resets its TCP connection (SO_LINGER 0): the daemon's read fails with ECONNRESET.
    TcpReset,
}

/// Sends 20 × `mock/delay` 300 ms, leaves as `leave` says, and checks that the 20 late replies
/// are dropped and counted as `client_gone` and that nothing stays in flight.
fn leave_with_requests_in_flight(leave: Leave) {
    const REQUESTS: usize = 20;
    let mode = match leave {
        Leave::UnixClose => Mode::Unix,
        Leave::TcpReset => Mode::Tcp,
    };
    let bus = Bus::start_with(&BusConfig::mock(2), mode, &["--metrics", "127.0.0.1:0"]);
    let metrics = bus.metrics_addr();
    let workers = bus.wait_workers(2);
    let gone = [("reason", "client_gone")];
    assert_eq!(
        metric(&metrics, "codex_bus_dropped_messages_total", &gone),
        0.0
    );
    let mut batch = Vec::new();
    for i in 0..REQUESTS {
        batch.extend(request_line(
            json!(i),
            "mock/delay",
            json!({"ms": 300}),
            &format!("leaver-{i}"),
        ));
    }
    let sent = Instant::now();
    match leave {
        Leave::UnixClose => {
            let mut stream = UnixStream::connect(bus.socket_path()).unwrap();
            stream.write_all(&batch).unwrap();
            wait_metric(&metrics, "codex_bus_requests_in_flight", &[], |v| {
                v == REQUESTS as f64
            });
            drop(stream);
        }
        Leave::TcpReset => {
            let mut stream = TcpStream::connect(bus.tcp_addr()).unwrap();
            stream.write_all(&batch).unwrap();
            wait_metric(&metrics, "codex_bus_requests_in_flight", &[], |v| {
                v == REQUESTS as f64
            });
            let linger = nix::sys::socket::sockopt::Linger;
            let off = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            nix::sys::socket::setsockopt(&stream, linger, &off).unwrap();
            drop(stream);
        }
    }
    let left = sent.elapsed();
    assert!(
        left < Duration::from_millis(300),
        "the client must leave before the replies are due (left after {left:?})"
    );
    let cleared = wait_metric(&metrics, "codex_bus_requests_in_flight", &[], |v| v == 0.0);
    let drained = sent.elapsed();
    wait_metric(&metrics, "codex_bus_client_connections", &[], |v| v == 0.0);
    let dropped = metric(&metrics, "codex_bus_dropped_messages_total", &gone);
    let late = metric(
        &metrics,
        "codex_bus_dropped_messages_total",
        &[("reason", "late_reply")],
    );
    let written = metric(
        &metrics,
        "codex_bus_message_bytes_total",
        &[("direction", "to_client")],
    );
    let doc = status(&metrics);
    let (ok, table, err) = {
        let (code, out, err) = run_bus(&["status", "--metrics", &metrics]);
        (code.success(), out, err)
    };
    assert!(ok, "{err}");
    println!(
        "{leave:?}: {REQUESTS} requests of 300 ms, client left after {left:?}; in flight back to \
         {cleared} after {drained:?}; dropped client_gone {dropped}, late_reply {late}; bytes \
         written to clients {written}; status: {}",
        table.lines().last().unwrap_or("")
    );
    assert_eq!(doc["totals"]["in_flight"], json!(0), "{doc}");
    assert_eq!(doc["clients"], json!(0), "{doc}");
    assert!(
        table.contains(" 0 requests in flight, ") && table.contains(" 0 clients"),
        "{table}"
    );
    assert_eq!(
        late, 0.0,
        "the replies were not late: their client had left"
    );
    assert_eq!(bus.worker_pids(), workers, "same workers");
    // Every reply had nobody to go to: each is dropped and counted once.
    assert_eq!(
        dropped,
        REQUESTS as f64,
        "{leave:?}: {REQUESTS} late replies to a client that left, counted as client_gone \
         (bytes written to clients: {written}); log:\n{}",
        bus.log()
    );
}

#[test]
fn a_unix_client_that_closes_with_requests_in_flight_has_its_replies_dropped_and_counted() {
    leave_with_requests_in_flight(Leave::UnixClose);
}

#[test]
fn a_tcp_client_that_resets_with_requests_in_flight_has_its_replies_dropped_and_counted() {
    leave_with_requests_in_flight(Leave::TcpReset);
}
