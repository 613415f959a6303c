//! The real-Codex tier: the daemon, `codex-worker` and the real `codex app-server` (npm
//! `@openai/codex@0.169.0`), offline against a loopback mock of the Responses API written here.
//! Two sessions each run `initialize`, `thread/start` and one `turn/start` streamed to
//! `turn/completed`.
//!
//! A tier (see `codex_bus_tests`): the test is `#[ignore]`d with the reason, so without Codex the
//! runner reports it as ignored; `CODEX_REAL=1 bash .ci/run` installs Codex and runs it with
//! `--ignored`. Codex is found through `CODEX_BIN`, else under `~/.cache/codex-npm`. Where
//! `unshare -n` works the test re-runs itself in a network namespace that has only loopback;
//! elsewhere every proxy variable points at a closed loopback port, so Codex's own startup
//! traffic (plugin sync) cannot leave the machine either.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_tests::{bin, recv_until, say, Bus, BusConfig, Conn, Mode};
use serde_json::{json, Value};

/// Set in the re-run inside the network namespace.
const INNER: &str = "CODEX_REAL_INNER";

/// The text the mock model streams, one delta per word.
const ANSWER: &[&str] = &["hello ", "from ", "the ", "loopback ", "model"];

/// Most lines one wait reads.
const MAX_LINES: usize = 5_000;

#[test]
#[ignore = "tier real-codex: needs a codex binary (CODEX_BIN or ~/.cache/codex-npm); `CODEX_REAL=1 bash .ci/run` installs @openai/codex@0.169.0 and runs it"]
fn real_codex_serves_two_sessions_through_the_bus() {
    let codex = codex_binary().expect(
        "the real-Codex tier runs only with a codex binary: set CODEX_BIN, or run .ci/run with CODEX_REAL=1",
    );
    if std::env::var_os(INNER).is_none() && namespace_available() {
        say("real Codex tier: re-running inside `unshare -n` (only loopback)");
        let exe = std::env::current_exe().expect("test executable");
        let status = Command::new("unshare")
            .args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
            .arg(exe)
            .args([
                "--exact",
                "real_codex_serves_two_sessions_through_the_bus",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(INNER, "1")
            .env("CODEX_BIN", &codex)
            .status()
            .expect("run unshare");
        assert!(status.success(), "the namespaced run failed: {status}");
        return;
    }
    run(&codex);
}

fn run(codex: &Path) {
    let started = Instant::now();
    let server = ResponsesServer::start();
    let state = tempfile::tempdir().expect("state dir");
    let seed = state.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    std::fs::write(seed.join("config.toml"), server.config_toml()).unwrap();
    let command = format!("{} app-server", codex.display());
    let state_dir = state.path().join("state");
    let dead_proxy = "http://127.0.0.1:9";
    let mut env = json!({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"});
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        env[name] = json!(dead_proxy);
    }
    let config = BusConfig(json!({
        "pools": [{
            "id": "codex",
            "command": bin("codex-worker").to_str().unwrap(),
            "args": [
                "--codex-cmd", command,
                "--state-dir", state_dir.to_str().unwrap(),
                "--seed-home", seed.to_str().unwrap(),
            ],
            "instances": 1,
            "env": env,
        }]
    }));
    let mut bus = Bus::start(&config, Mode::Unix);
    let sessions: Vec<_> = ["alice", "bob"]
        .into_iter()
        .map(|session| (session, bus.connect()))
        .collect();
    let runs: Vec<_> = sessions
        .into_iter()
        .map(|(session, conn)| std::thread::spawn(move || session_turn(session, conn)))
        .collect();
    let mut threads = Vec::new();
    for run in runs {
        let (session, thread, summary) = run.join().expect("session");
        say(&format!("real Codex tier: {session}: {summary}"));
        threads.push(thread);
    }
    assert_ne!(threads[0], threads[1], "each session has its own thread");
    assert!(server.requests() >= 2, "both turns reached the mock model");
    say(&format!(
        "real Codex tier PASSED in {} ms ({} model requests to the loopback mock)",
        started.elapsed().as_millis(),
        server.requests()
    ));
}

/// One session's whole exchange; returns its name, thread id and a one-line summary.
fn session_turn(session: &'static str, mut conn: Conn) -> (&'static str, String, String) {
    let begun = Instant::now();
    conn.request(
        json!(1),
        "initialize",
        json!({"clientInfo": {"name": "bus_test", "version": "1"}}),
        Some(session),
    );
    let init = recv_until(&mut conn, MAX_LINES, |line| line["id"] == 1);
    let user_agent = init.last().unwrap()["result"]["userAgent"].clone();
    assert!(
        user_agent.as_str().is_some_and(|ua| ua.contains("0.169.0")),
        "{user_agent}"
    );
    conn.send(&json!({"jsonrpc": "2.0", "method": "initialized", "sessionId": session}));
    conn.request(json!(2), "thread/start", json!({}), Some(session));
    let lines = recv_until(&mut conn, MAX_LINES, |line| line["id"] == 2);
    let thread = lines.last().unwrap()["result"]["thread"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("thread/start failed: {:?}", lines.last()))
        .to_owned();
    conn.request(
        json!(3),
        "turn/start",
        json!({"threadId": thread, "input": [{"type": "text", "text": "say hello"}]}),
        Some(session),
    );
    let lines = recv_until(&mut conn, MAX_LINES, |line| {
        line["method"] == "turn/completed"
    });
    for line in &lines {
        assert_eq!(line["sessionId"], session, "{line}");
        if let Some(other) = line["params"]["threadId"].as_str() {
            assert_eq!(other, thread, "{session} saw another thread's event");
        }
    }
    let reply = lines
        .iter()
        .find(|line| line["id"] == 3)
        .expect("turn/start reply");
    assert_eq!(reply["result"]["turn"]["status"], "inProgress", "{reply}");
    let text: String = lines
        .iter()
        .filter(|line| line["method"] == "item/agentMessage/delta")
        .map(|line| line["params"]["delta"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(text, ANSWER.concat());
    let done = lines.last().unwrap();
    assert_eq!(done["params"]["turn"]["status"], "completed", "{done}");
    let methods: Vec<&str> = lines
        .iter()
        .filter_map(|line| line["method"].as_str())
        .collect();
    let summary = format!(
        "thread {thread}, {} lines, {} deltas \"{text}\", turn/completed status {} after {} ms; methods: {}",
        lines.len(),
        methods.iter().filter(|m| **m == "item/agentMessage/delta").count(),
        done["params"]["turn"]["status"],
        begun.elapsed().as_millis(),
        dedup(&methods).join(" → ")
    );
    (session, thread, summary)
}

/// Consecutive duplicates collapsed, so the delta stream shows once.
fn dedup<'a>(methods: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for method in methods {
        if out.last() != Some(method) {
            out.push(method);
        }
    }
    out
}

/// `CODEX_BIN`, else the native binary of the npm install under `~/.cache/codex-npm`.
fn codex_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CODEX_BIN").filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let home = PathBuf::from(std::env::var_os("HOME")?);
    let vendor = home.join(".cache/codex-npm/node_modules/@openai");
    std::fs::read_dir(vendor)
        .ok()?
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("codex-"))
        .flat_map(|entry| {
            std::fs::read_dir(entry.path().join("vendor"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|target| target.path().join("bin/codex"))
        .find(|path| path.is_file())
}

/// Whether this machine lets us create a network namespace with loopback up.
fn namespace_available() -> bool {
    Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up"])
        .status()
        .is_ok_and(|status| status.success())
}

/// A loopback HTTP server that answers `POST …/responses` with a streamed Responses API turn.
struct ResponsesServer {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl ResponsesServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the mock model");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || serve(stream, &counter));
            }
        });
        Self { port, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The `config.toml` that points Codex at this server (the reference recipe).
    fn config_toml(&self) -> String {
        format!(
            r#"model = "mock-model"
model_provider = "mock_provider"
approval_policy = "never"
sandbox_mode = "read-only"
check_for_update_on_startup = false

[model_providers.mock_provider]
name = "Loopback mock provider"
base_url = "http://127.0.0.1:{}/v1"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"#,
            self.port
        )
    }
}

/// Answers one connection: the request is read whole, then one turn is streamed as SSE.
fn serve(stream: TcpStream, requests: &AtomicUsize) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut length = 0;
    let mut chunked = false;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        read_chunked(&mut reader);
    } else {
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
    }
    let mut stream = stream;
    if !(request_line.starts_with("POST ") && request_line.contains("/responses")) {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return;
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let body = sse_turn();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

fn read_chunked(reader: &mut impl BufRead) {
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size).unwrap_or(0) == 0 {
            return;
        }
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return;
        };
        let mut chunk = vec![0; size + 2];
        if reader.read_exact(&mut chunk).is_err() || size == 0 {
            return;
        }
    }
}

/// One assistant message streamed as Responses API events.
fn sse_turn() -> String {
    let message = |content: Value| json!({"type": "message", "role": "assistant", "id": "msg-1", "content": content});
    let mut events = vec![
        json!({"type": "response.created", "response": {"id": "resp-1"}}),
        json!({"type": "response.output_item.added", "item": message(json!([]))}),
    ];
    for delta in ANSWER {
        events.push(json!({"type": "response.output_text.delta", "delta": delta}));
    }
    events.push(json!({"type": "response.output_item.done", "item": message(json!([{"type": "output_text", "text": ANSWER.concat()}]))}));
    events.push(
        json!({"type": "response.completed", "response": {"id": "resp-1", "usage": {
        "input_tokens": 0, "input_tokens_details": null, "output_tokens": 0,
        "output_tokens_details": null, "total_tokens": 0}}}),
    );
    events
        .iter()
        .map(|event| {
            format!(
                "event: {}\ndata: {event}\n\n",
                event["type"].as_str().unwrap()
            )
        })
        .collect()
}
