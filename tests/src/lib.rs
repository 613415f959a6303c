//! Helpers for end-to-end tests: start the real `codex-stdio-bus` with a config, talk to it over
//! stdio, a Unix socket or TCP on loopback, run a worker program on its own ([`worker`]), and
//! always end every process started.
//!
//! The binaries are the ones cargo built beside the test executable (`cargo test --workspace`
//! builds them: the daemon, `codex-worker` and `codex-mock` crates have integration tests of
//! their own).
//!
//! **Tiers.** A test that needs a component the machine may lack (promtool, Chromium, real Codex)
//! is a tier: it is marked `#[ignore = "tier NAME: needs …; how to run it"]`, so a plain
//! `cargo test --workspace` reports it as ignored with that reason (the runner's own term for a
//! skip), and `.ci/run` runs each tier whose component is present with `-- --ignored`, or says
//! why it did not. Inside, a tier fails if its component is missing: when it runs, it runs for real.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod browser;
pub mod codex;
pub mod postgres;
pub mod tmux;
pub mod turns;
pub mod worker;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// How long one daemon may live in a test before the watchdog kills it.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Path of a binary built by this workspace.
pub fn bin(name: &str) -> PathBuf {
    // target/debug/deps/<test-exe> → target/debug/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace`",
        path.display()
    );
    // `cargo test -p codex-bus-tests` alone does not rebuild the binaries it runs: refuse to
    // test yesterday's daemon in silence.
    let built = modified(&path);
    if let Some(source) = newest_source(name).filter(|(time, _)| Some(*time) > built) {
        panic!(
            "{} is older than {}: run `cargo build --workspace --bins` (or the whole suite, \
             `cargo test --workspace`) first",
            path.display(),
            source.1.display()
        );
    }
    path
}

/// The workspace crates whose code ends up in each binary the end-to-end tests run.
fn sources_of(binary: &str) -> &'static [&'static str] {
    match binary {
        "codex-stdio-bus" => &["codex-stdio-bus", "protocol", "config", "process"],
        "codex-worker" => &["codex-worker", "protocol", "process", "worker-io", "store"],
        "codex-mock" => &["codex-mock", "protocol", "worker-io"],
        _ => &[],
    }
}

/// When `path` was last modified.
fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The most recently modified `.rs` file in the `src/` folders of `binary`'s crates.
fn newest_source(binary: &str) -> Option<(std::time::SystemTime, PathBuf)> {
    fn walk(dir: &Path, newest: &mut Option<(std::time::SystemTime, PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if path.extension().is_some_and(|e| e == "rs") {
                if let Some(time) = modified(&path) {
                    if newest.as_ref().is_none_or(|(t, _)| time > *t) {
                        *newest = Some((time, path));
                    }
                }
            }
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let mut newest = None;
    for name in sources_of(binary) {
        walk(&workspace.join(name).join("src"), &mut newest);
    }
    newest
}

/// Writes a line the runner must show (why a test skipped, what a tier measured) to the real
/// stderr: the test harness captures `eprintln!` of a test that passes, so a skip printed that way
/// would pass in silence.
pub fn say(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// The lowercase hex SHA-256 of `text`: how a token is configured (`auth.tokens[].sha256`,
/// `metrics.bearer_sha256`).
pub fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A new connection to `bus` authenticated with capability `token` (`bus/authenticate`, id
/// `"auth"`); panics unless the bus names a tenant.
pub fn login(bus: &mut Bus, token: &str) -> Conn {
    let mut conn = bus.connect();
    conn.request(
        json!("auth"),
        "bus/authenticate",
        json!({"token": token}),
        None,
    );
    let reply = conn.recv();
    assert!(reply["result"]["tenant"].is_string(), "{reply}");
    conn
}

/// A config document for the daemon, built in JSON.
pub struct BusConfig(pub Value);

impl BusConfig {
    /// One pool `codex` of `instances` mock workers (`codex-mock`).
    pub fn mock(instances: u32) -> Self {
        worker_pool("codex-mock", instances, &[])
    }

    /// Pools of mock workers (`codex-mock`), one per `(id, instances)`; the first is the default
    /// route. `limits.drain_grace_sec` is 0, as in [`worker_pool`]. The dashboard tests show
    /// alpha (2) and beta (1).
    pub fn mock_pools(pools: &[(&str, u32)]) -> Self {
        let worker = bin("codex-mock");
        let pools: Vec<Value> = pools
            .iter()
            .map(|(id, n)| json!({"id": id, "command": worker.to_str().unwrap(), "instances": n}))
            .collect();
        BusConfig(json!({
            "pools": pools,
            "routing": {"default_pool": pools[0]["id"]},
            "limits": {"drain_grace_sec": 0}
        }))
    }

    /// Sets `limits.<name>`.
    pub fn limit(mut self, name: &str, value: u64) -> Self {
        let limits = self
            .0
            .as_object_mut()
            .unwrap()
            .entry("limits")
            .or_insert(json!({}));
        limits[name] = json!(value);
        self
    }

    /// Writes the config as `bus.json` into `dir`; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("bus.json");
        std::fs::write(&path, self.0.to_string()).unwrap();
        path
    }

    /// Sets `key` on every pool, e.g. `request_timeout_sec`.
    pub fn pool_key(mut self, key: &str, value: Value) -> Self {
        for pool in self.0["pools"].as_array_mut().unwrap() {
            pool[key] = value.clone();
        }
        self
    }

    /// Sets a top-level section, e.g. `routing`.
    pub fn section(mut self, name: &str, value: Value) -> Self {
        self.0[name] = value;
        self
    }
}

/// How the daemon under test takes clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `--stdio`: the test holds the daemon's stdin and stdout.
    Stdio,
    /// `--unix <tempdir>/bus.sock`.
    Unix,
    /// `--tcp 127.0.0.1:0`; the port is read from the daemon's log.
    Tcp,
    /// `--ws 127.0.0.1:0` alone (no NDJSON endpoint); the port is read from the daemon's log.
    WebSocket,
}

/// A running daemon; killed (with its process group's workers) when dropped.
pub struct Bus {
    child: Child,
    /// Scratch directory holding the config, the log and the socket.
    pub dir: tempfile::TempDir,
    mode: Mode,
    tcp: Option<String>,
    stdio: Option<Conn>,
    done: Arc<AtomicBool>,
}

/// SIGKILLs process `pid` (the daemon, or another program a test runs, such as HAProxy) if the
/// test is still running after [`DEADLINE`] and has not set `done`: reads from its stdout cannot
/// time out, and a hung test must fail rather than hang the suite.
pub fn watchdog(pid: u32, done: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if done.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !done.load(Ordering::SeqCst) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
}

impl Bus {
    /// Starts the daemon with `config` in `mode`, and waits until it listens.
    pub fn start(config: &BusConfig, mode: Mode) -> Bus {
        Bus::start_with(config, mode, &[])
    }

    /// Like [`Bus::start`], with extra command-line arguments.
    pub fn start_with(config: &BusConfig, mode: Mode, extra: &[&str]) -> Bus {
        Bus::start_under(&[], config, mode, extra)
    }

    /// Like [`Bus::start_with`], run through `wrapper` (a program and its arguments that execs
    /// the daemon's command line, such as `prlimit --nofile=N:N`), so the daemon keeps its pid.
    pub fn start_under(wrapper: &[&str], config: &BusConfig, mode: Mode, extra: &[&str]) -> Bus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = config.write(dir.path());
        let log = std::fs::File::create(dir.path().join("bus.log")).unwrap();
        let daemon = bin("codex-stdio-bus");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(daemon);
                cmd
            }
            None => Command::new(daemon),
        };
        cmd.arg("--config").arg(&config_path).args(extra);
        match mode {
            Mode::Stdio => cmd.arg("--stdio"),
            Mode::Unix => cmd.arg("--unix").arg(dir.path().join("bus.sock")),
            Mode::Tcp => cmd.args(["--tcp", "127.0.0.1:0"]),
            Mode::WebSocket => cmd.args(["--ws", "127.0.0.1:0"]),
        };
        cmd.env("RUST_LOG", "info")
            .stdin(if mode == Mode::Stdio {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if mode == Mode::Stdio {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn codex-stdio-bus");
        let done = Arc::new(AtomicBool::new(false));
        watchdog(child.id(), done.clone());
        let stdio = (mode == Mode::Stdio).then(|| {
            let stdin = child.stdin.take().unwrap();
            let stdout = child.stdout.take().unwrap();
            Conn::from_stdio(stdin, stdout)
        });
        let mut bus = Bus {
            child,
            dir,
            mode,
            tcp: None,
            stdio,
            done,
        };
        match mode {
            Mode::Tcp | Mode::WebSocket => {
                let transport = if mode == Mode::Tcp {
                    "tcp"
                } else {
                    "websocket"
                };
                bus.tcp = Some(bus.listen_addr(transport));
            }
            Mode::Unix => {
                bus.wait_log("transport=\"unix\"");
            }
            Mode::Stdio => {}
        }
        bus
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The Unix socket path (Unix mode).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("bus.sock")
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bus.log")).unwrap_or_default()
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_count(needle, 1)
    }

    /// Waits until `count` log lines contain `needle`; returns the last of them.
    pub fn wait_log_count(&self, needle: &str, count: usize) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            let found: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
            if found.len() >= count {
                return found[count - 1].to_owned();
            }
            assert!(
                start.elapsed() < WAIT,
                "no {count}× {needle:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TCP address the daemon listens on (`Mode::Tcp`, or its WebSocket port in
    /// `Mode::WebSocket`), for tests that open sockets of their own.
    pub fn tcp_addr(&self) -> &str {
        self.tcp
            .as_deref()
            .expect("the daemon runs in Mode::Tcp or Mode::WebSocket")
    }

    /// A new client connection (the daemon's stdio in stdio mode, once).
    pub fn connect(&mut self) -> Conn {
        match self.mode {
            Mode::Stdio => self.stdio.take().expect("stdio mode has one client"),
            Mode::Unix => Conn::unix(&self.socket_path()),
            Mode::Tcp => Conn::tcp(self.tcp.as_deref().unwrap()),
            Mode::WebSocket => panic!("WebSocket clients connect with a WebSocket client"),
        }
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    /// Waits for the daemon to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < WAIT,
                "daemon did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pids of the daemon's live worker processes, once they have exec'd their program (right
    /// after fork a child is still a copy of the daemon, with its environment and fds).
    pub fn worker_pids(&self) -> Vec<u32> {
        let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let daemon = exe(self.pid());
        children_of(self.pid())
            .into_iter()
            .filter(|pid| exe(*pid).is_some_and(|e| Some(&e) != daemon.as_ref()))
            .collect()
    }

    /// Waits until the daemon has `n` live workers; returns their pids.
    pub fn wait_workers(&self, n: usize) -> Vec<u32> {
        let start = Instant::now();
        loop {
            let pids = self.worker_pids();
            if pids.len() == n {
                return pids;
            }
            assert!(
                start.elapsed() < WAIT,
                "expected {n} workers, have {pids:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let workers = self.worker_pids();
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.done.store(true, Ordering::SeqCst);
        // PDEATHSIG ends the workers; this makes sure even if a test broke that.
        for pid in workers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Direct children of `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let mut pids: Vec<u32> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    // Threads other than the main one may have spawned some; include theirs too.
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let tid = task.file_name();
            if tid.to_str() == Some(&pid.to_string()) {
                continue;
            }
            let more = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            pids.extend(
                more.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids.sort_unstable();
    pids
}

/// A process's memory from `/proc/<pid>/status`, in KiB: (`VmRSS`, its resident set now; `VmHWM`,
/// the peak resident set since it started). A flood test bounds the peak, so a spike between two
/// samples cannot hide.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Raises this process's soft open-file limit to its hard limit (a test that opens thousands of
/// connections); returns (soft before, hard).
pub fn raise_fd_limit() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    (soft, hard)
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Waits until no pid of `pids` is alive (at most [`WAIT`]); returns how long that took.
pub fn wait_dead(pids: &[u32]) -> Duration {
    let start = Instant::now();
    while pids.iter().any(|pid| alive(*pid)) {
        assert!(start.elapsed() < WAIT, "workers {pids:?} still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// A line-oriented client connection with bounded waits.
pub struct Conn {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: Box<dyn Write + Send>,
}

impl Conn {
    /// Connects to a Unix socket.
    pub fn unix(path: &Path) -> Conn {
        let stream = UnixStream::connect(path).expect("connect unix");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let writer = stream.try_clone().unwrap();
        Conn {
            reader: BufReader::new(Box::new(stream)),
            writer: Box::new(writer),
        }
    }

    /// Connects over TCP.
    pub fn tcp(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect tcp");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let writer = stream.try_clone().unwrap();
        Conn {
            reader: BufReader::new(Box::new(stream)),
            writer: Box::new(writer),
        }
    }

    /// Wraps the daemon's stdin/stdout (reads are bounded by the test's own timeouts on the child).
    fn from_stdio(stdin: ChildStdin, stdout: std::process::ChildStdout) -> Conn {
        Conn::from_halves(Box::new(stdout), Box::new(stdin))
    }

    /// A connection over a stream the caller opened (a TLS client, say), read through `reader`
    /// and written through `writer`; reads must be bounded by a timeout of the stream's own.
    pub fn from_halves(reader: Box<dyn Read + Send>, writer: Box<dyn Write + Send>) -> Conn {
        Conn {
            reader: BufReader::new(reader),
            writer,
        }
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
        self.writer.flush().unwrap();
    }

    /// Sends one JSON value as a line.
    pub fn send(&mut self, value: &Value) {
        let mut line = value.to_string().into_bytes();
        line.push(b'\n');
        self.send_raw(&line);
    }

    /// Sends a request `{jsonrpc, id, method, params?, sessionId?}`.
    pub fn request(&mut self, id: Value, method: &str, params: Value, session: Option<&str>) {
        let mut msg = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if !params.is_null() {
            msg["params"] = params;
        }
        if let Some(session) = session {
            msg["sessionId"] = json!(session);
        }
        self.send(&msg);
    }

    /// Receives one raw line (without the newline); panics on timeout or EOF.
    pub fn recv_line(&mut self) -> String {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .expect("read a line in time");
        assert!(n > 0, "connection closed while a line was expected");
        line.truncate(line.trim_end_matches(['\n', '\r']).len());
        line
    }

    /// Receives one JSON line.
    pub fn recv(&mut self) -> Value {
        let line = self.recv_line();
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad JSON from the bus ({e}): {line}"))
    }

    /// Reads until EOF; returns what came.
    pub fn read_to_end(&mut self) -> String {
        let mut rest = String::new();
        self.reader
            .read_to_string(&mut rest)
            .expect("read to EOF in time");
        rest
    }

    /// Closes the sending side (EOF for the daemon) but keeps reading.
    pub fn close_send(&mut self) {
        self.writer = Box::new(std::io::sink());
    }

    /// Splits into independently usable reading and writing halves.
    pub fn split(self) -> (BufReader<Box<dyn Read + Send>>, Box<dyn Write + Send>) {
        (self.reader, self.writer)
    }
}

/// One request line `{jsonrpc, id, method, params, sessionId}` with its newline, for tests that
/// write raw bytes (several lines in one write, sockets of their own).
pub fn request_line(id: Value, method: &str, params: Value, session: &str) -> Vec<u8> {
    let mut line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params,
        "sessionId": session})
    .to_string()
    .into_bytes();
    line.push(b'\n');
    line
}

/// Asserts that `conn` still routes a request: a `ping` with `id` gets its result.
pub fn still_works(conn: &mut Conn, id: i64) {
    conn.request(json!(id), "ping", Value::Null, Some("alive"));
    let reply = conn.recv();
    assert_eq!(reply["id"], json!(id), "{reply}");
    assert!(reply.get("result").is_some(), "{reply}");
}

/// The error reason of a reply, if it is an error.
pub fn reason(reply: &Value) -> Option<&str> {
    reply["error"]["data"]["reason"].as_str()
}

/// Runs `codex-stdio-bus` with `args` to completion; returns (status, stdout, stderr).
pub fn run_bus(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(bin("codex-stdio-bus"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run codex-stdio-bus");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Bus {
    /// The admin endpoint's address (the daemon must run with `--metrics 127.0.0.1:0`).
    pub fn metrics_addr(&self) -> String {
        self.listen_addr("metrics")
    }

    /// The address the daemon logged for its first `transport` listener (`tcp`, `websocket`,
    /// `metrics`), once it has.
    pub fn listen_addr(&self, transport: &str) -> String {
        let line = self.wait_log(&format!("transport=\"{transport}\""));
        let addr = line.split("addr=").nth(1).expect("addr in listening line");
        addr.split_whitespace().next().unwrap().to_owned()
    }
}

/// A plain HTTP GET on loopback, without a bearer; returns (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    admin::http(addr, "GET", path, None)
}

/// One pool `codex` of `instances` workers running the workspace binary `program` with `args`
/// (e.g. `codex-worker` with `--codex-cmd …`, or `codex-mock` with `--stubborn`).
///
/// `limits.drain_grace_sec` is 0: no load balancer watches a test's daemon, and the default 5 s
/// of grace would add up over every test that ends one with SIGTERM. A test of the grace sets it.
pub fn worker_pool(program: &str, instances: u32, args: &[&str]) -> BusConfig {
    BusConfig(json!({
        "pools": [{
            "id": "codex",
            "command": bin(program).to_str().unwrap(),
            "args": args,
            "instances": instances
        }],
        "limits": {"drain_grace_sec": 0}
    }))
}

/// Reads lines from `conn` until one satisfies `last`; returns them all, that one included.
/// Bounded: every read has the connection's timeout, and at most `max` lines are read.
pub fn recv_until(conn: &mut Conn, max: usize, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut lines = Vec::new();
    for _ in 0..max {
        let line = conn.recv();
        let done = last(&line);
        lines.push(line);
        if done {
            return lines;
        }
    }
    panic!("no matching line within {max} lines: {lines:?}");
}

/// The sum of the `/metrics` samples named `name` whose labels include every pair of `labels`, as
/// scraped now from the admin endpoint at `addr` (the daemon must run with `--metrics`). Panics if
/// no sample matches or one of them is a histogram or summary. For tests that check exact counts
/// (drops, gauges back to zero) without a copy of the scrape code each.
pub fn metric(addr: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::{Scrape, Value as PromValue};
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "/metrics answered {code}: {body}");
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus exposition format");
    let values: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => *v,
            PromValue::Histogram(_) | PromValue::Summary(_) => panic!("{name} is not a scalar"),
        })
        .collect();
    assert!(
        !values.is_empty(),
        "no sample {name} {labels:?} in:\n{body}"
    );
    values.iter().sum()
}

/// The daemon's `/status` document, from the admin endpoint at `addr`.
pub fn status(addr: &str) -> Value {
    let (code, body) = http_get(addr, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("/status is JSON")
}
