//! The pieces of the real-Codex tier shared by its tests (`codex_real.rs`, the app-server through
//! the bus; `codex_tui.rs`, the TUI through the bus): finding the npm-installed `codex` binary,
//! re-running a test inside a network namespace that has only loopback, the loopback mock of the
//! Responses API the model calls go to, and the `codex-worker` pool over `codex app-server`.
//!
//! The recipe is the one measured in `../shared/reference/codex-remote.md` §4: offline, every proxy
//! variable at a closed loopback port, `config.toml` pointing the model provider at the mock.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::{bin, say, BusConfig};

/// Set in the re-run inside the network namespace.
const INNER: &str = "CODEX_REAL_INNER";

/// The text the mock model streams, one delta per word.
pub const ANSWER: &[&str] = &["hello ", "from ", "the ", "loopback ", "model"];

/// A closed loopback port: every proxy variable points here, so traffic Codex would send off the
/// machine (plugin sync, update checks) fails at once instead.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

/// `CODEX_BIN`, else the native binary of the npm install under `~/.cache/codex-npm`.
pub fn codex_binary() -> Option<PathBuf> {
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

/// The codex binary, or a panic that says how to get one (a tier that runs, runs for real).
pub fn require_codex() -> PathBuf {
    codex_binary().expect(
        "the real-Codex tier runs only with a codex binary: set CODEX_BIN, or run .ci/run with CODEX_REAL=1",
    )
}

/// Whether this machine lets us create a network namespace with loopback up.
fn namespace_available() -> bool {
    Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up"])
        .status()
        .is_ok_and(|status| status.success())
}

/// Re-runs the test `name` (of the current test executable) inside `unshare -n` with loopback up,
/// where it can, and returns true once that run passed: the caller then returns. Returns false
/// when the caller is that inner run, or when no namespace can be made (then the proxy variables
/// alone keep Codex offline).
pub fn rerun_offline(name: &str, codex: &Path) -> bool {
    if std::env::var_os(INNER).is_some() || !namespace_available() {
        return false;
    }
    say(&format!(
        "real Codex tier: re-running {name} inside `unshare -n` (only loopback)"
    ));
    let exe = std::env::current_exe().expect("test executable");
    let status = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(exe)
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER, "1")
        .env("CODEX_BIN", codex)
        .status()
        .expect("run unshare");
    assert!(status.success(), "the namespaced run failed: {status}");
    true
}

/// The environment that keeps Codex offline: every proxy variable at a closed port, loopback
/// exempt. As (name, value) pairs.
pub fn offline_env() -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("NO_PROXY", "127.0.0.1,localhost"),
        ("no_proxy", "127.0.0.1,localhost"),
    ];
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        env.push((name, DEAD_PROXY));
    }
    env
}

/// A bus config with one pool `codex` of one `codex-worker` over `codex app-server`, its Codex
/// homes seeded from `server`'s `config.toml` and kept under `state` (a directory the caller owns),
/// with `worker_args` added to the worker's command line.
pub fn worker_pool_config(
    codex: &Path,
    server: &ResponsesServer,
    state: &Path,
    worker_args: &[&str],
) -> BusConfig {
    let seed = state.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::write(seed.join("config.toml"), server.config_toml()).unwrap();
    let command = format!("{} app-server", codex.display());
    let state_dir = state.join("state");
    let env: serde_json::Map<String, Value> = offline_env()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), json!(value)))
        .collect();
    let mut args = vec![
        "--codex-cmd".to_owned(),
        command,
        "--state-dir".to_owned(),
        state_dir.to_str().unwrap().to_owned(),
        "--seed-home".to_owned(),
        seed.to_str().unwrap().to_owned(),
    ];
    args.extend(worker_args.iter().map(|arg| (*arg).to_owned()));
    BusConfig(json!({
        "pools": [{
            "id": "codex",
            "command": bin("codex-worker").to_str().unwrap(),
            "args": args,
            "instances": 1,
            "env": env,
        }]
    }))
}

/// A loopback HTTP server that answers `POST …/responses` with a streamed Responses API turn
/// ([`ANSWER`]). Its threads end with the test process.
pub struct ResponsesServer {
    port: u16,
    requests: Arc<AtomicUsize>,
}

/// A model request the mock answers slowly: the `nth` request (counted from 1) stops after its
/// first delta for `pause`, then finishes, so the turn it belongs to is in progress meanwhile.
#[derive(Clone, Copy)]
pub struct Pause {
    /// Which request, from 1.
    pub nth: usize,
    /// How long it stops after its first delta.
    pub pause: Duration,
}

impl ResponsesServer {
    /// Binds a free loopback port and serves it on a thread.
    pub fn start() -> Self {
        Self::start_pausing(None)
    }

    /// Like [`ResponsesServer::start`], with one request answered slowly (see [`Pause`]).
    pub fn start_pausing(pause: Option<Pause>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the mock model");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || serve(stream, &counter, pause));
            }
        });
        Self { port, requests }
    }

    /// How many model requests (`POST …/responses`) it answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The `config.toml` that points Codex at this server (the reference recipe), without the
    /// shell snapshot: Codex runs it as `bash -lc` in a session of its own, so it outlives a
    /// SIGKILLed node (and hangs on a `.bashrc` that waits, as pyenv's rehash lock does), which
    /// the tests that count a node's processes would report.
    pub fn config_toml(&self) -> String {
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

[features]
shell_snapshot = false
"#,
            self.port
        )
    }

    /// A fresh Codex home under `dir` holding [`ResponsesServer::config_toml`]; returns its path.
    pub fn home(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.toml"), self.config_toml()).unwrap();
        dir.to_owned()
    }
}

/// Answers one connection: the request is read whole, then one turn is streamed as SSE.
fn serve(stream: TcpStream, requests: &AtomicUsize, pause: Option<Pause>) {
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
    let nth = requests.fetch_add(1, Ordering::SeqCst) + 1;
    let body = sse_turn();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    match pause.filter(|pause| pause.nth == nth) {
        Some(pause) => {
            // Up to the end of the first delta event, then the pause, then the rest.
            let first = body.find("response.output_text.delta").unwrap_or(0);
            let cut = first + body[first..].find("\n\n").map_or(0, |end| end + 2);
            let _ = stream.write_all(&body.as_bytes()[..cut]);
            let _ = stream.flush();
            std::thread::sleep(pause.pause);
            let _ = stream.write_all(&body.as_bytes()[cut..]);
        }
        None => {
            let _ = stream.write_all(body.as_bytes());
        }
    }
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
