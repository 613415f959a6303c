//! Scale-out (issue 13): three bus nodes behind a real HAProxy running the shipped
//! `docs/deploy/haproxy.cfg`, WebSocket clients through it. Each session is served by exactly one
//! node; a SIGKILLed node's sessions move to the others with nothing answered twice; a fourth node
//! takes at most 1/4 + 5 % of the sessions; a rolling restart (SIGTERM, drain grace, restart, next)
//! under load gives every request a result or a retryable error.
//!
//! Every node is a real `codex-stdio-bus` whose one pool is named after the node (`node-1`, …) and
//! runs `codex-mock` workers, whose default reply names pool, slot and pid: the reply itself says
//! which node served it. The numbers measured are printed with `say`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codex_bus_tests::{alive, metric, say, sha256_hex, watchdog, worker_pool, Bus, Mode, WAIT};
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Capability tokens of the two tenants, `a` (subject `alice`) and `b` (subject `bob`).
const TOKENS: [(&str, &str, &str); 2] = [
    ("a", "alice", "scale-out-token-a-5f1c2e9d7b3a8c4e6f0d"),
    ("b", "bob", "scale-out-token-b-0a9e8d7c6b5a4f3e2d1c"),
];

/// Sessions opened through the balancer.
const SESSIONS: usize = 300;
/// Requests per session in a round.
const REQUESTS: usize = 10;
/// Sessions running at once.
const CONCURRENCY: usize = 50;
/// Mock workers per node (each node: one daemon and this many workers).
const WORKERS: u32 = 2;
/// How long a client keeps trying to reach a node through the balancer (connect refused, 502/503
/// while HAProxy has not yet marked a dead node down) before the test fails.
const RECONNECT_FOR: Duration = Duration::from_secs(20);
/// How long a client waits for one reply on an open connection before calling it hung.
const REPLY_WITHIN: Duration = Duration::from_secs(15);

/// `n` loopback ports nobody listens on now. They are picked together (every listener held until
/// all are picked) so two cannot be the same.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// `GET path` on loopback; `None` while nothing answers there.
fn try_http_get(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after `within`.
fn wait_until(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes

/// One bus node: a daemon on a fixed WebSocket port (the balancer knows it by address, so a
/// restarted node comes back on the same port), killed with its workers when dropped.
struct Node {
    name: String,
    ws_port: u16,
    bus: Option<Bus>,
}

impl Node {
    fn new(index: usize, ws_port: u16) -> Node {
        let mut node = Node {
            name: format!("node-{index}"),
            ws_port,
            bus: None,
        };
        node.start();
        node
    }

    /// WebSocket connections this node has accepted since it started, from its admin port.
    fn ws_connections(&self) -> f64 {
        let bus = self.bus.as_ref().expect("the node runs");
        metric(
            &bus.metrics_addr(),
            "codex_bus_client_connections_total",
            &[("transport", "websocket")],
        )
    }

    fn ws_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ws_port)
    }

    /// Starts the daemon and waits until `/readyz` on its WebSocket port answers 200. The node
    /// also listens on TCP (the harness waits on that listener's log line) and on an admin port.
    fn start(&mut self) {
        assert!(self.bus.is_none(), "{} already runs", self.name);
        let mut config = worker_pool("codex-mock", WORKERS, &[]);
        config.0["pools"][0]["id"] = json!(self.name);
        let tokens: Vec<Value> = TOKENS
            .iter()
            .map(|(tenant, subject, token)| {
                json!({"tenant": tenant, "subject": subject, "sha256": sha256_hex(token)})
            })
            .collect();
        let config = config
            .section("websocket", json!([{"listen": self.ws_addr()}]))
            .section("auth", json!({"tokens": tokens}))
            .limit("drain_grace_sec", 1);
        let bus = Bus::start_with(&config, Mode::Tcp, &["--metrics", "127.0.0.1:0"]);
        let addr = self.ws_addr();
        wait_until(WAIT, &format!("{} ready on {addr}", self.name), || {
            try_http_get(&addr, "/readyz") == Some(200)
        });
        self.bus = Some(bus);
    }

    /// Sends `signal` to the daemon and waits for it to exit (its workers end with it).
    fn stop(&mut self, signal: Signal) {
        let mut bus = self.bus.take().expect("the node runs");
        let workers = bus.worker_pids();
        bus.signal(signal);
        let status = bus.wait_exit();
        if signal == Signal::SIGTERM {
            assert!(
                status.success(),
                "{} drained with {status}; log:\n{}",
                self.name,
                bus.log()
            );
        }
        wait_until(WAIT, "the node's workers to exit", || {
            workers.iter().all(|p| !alive(*p))
        });
    }
}

// ---------------------------------------------------------------------------------------------
// HAProxy

/// A running `haproxy` in the foreground (`-db`), started on the shipped config and ended by its
/// pid when dropped (or by the harness's watchdog, should the test hang).
struct HaProxy {
    child: Child,
    dir: tempfile::TempDir,
    done: Arc<AtomicBool>,
}

impl HaProxy {
    /// The admin socket the test adds (a second `global` section in a file of its own).
    fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// One runtime API command over the admin socket; returns the answer.
    fn command(&self, command: &str) -> String {
        let mut stream = UnixStream::connect(self.socket()).expect("HAProxy admin socket");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(command.as_bytes()).unwrap();
        stream.write_all(b"\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    /// The servers of the balancing backend: (name, port, operational state: 2 = up).
    fn servers(&self) -> Vec<(String, String, u16, u32)> {
        let state = self.command("show servers state");
        let mut header: Vec<&str> = Vec::new();
        let mut servers = Vec::new();
        for line in state.lines() {
            if let Some(names) = line.strip_prefix("# ") {
                header = names.split(' ').collect();
                continue;
            }
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() != header.len() {
                continue;
            }
            let get = |name: &str| fields[header.iter().position(|h| *h == name).unwrap()];
            servers.push((
                get("be_name").to_owned(),
                get("srv_name").to_owned(),
                get("srv_port").parse().unwrap(),
                get("srv_op_state").parse().unwrap(),
            ));
        }
        servers
    }

    /// Waits until HAProxy's health checks see the server on `port` as `up` (or down).
    fn wait_server(&self, port: u16, up: bool) {
        let start = Instant::now();
        loop {
            let servers = self.servers();
            let state = servers.iter().find(|s| s.2 == port).map(|s| s.3);
            if state.is_some_and(|s| (s == 2) == up) {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "HAProxy does not see the server on port {port} {}: {servers:?}\n{}",
                if up { "up" } else { "down" },
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HaProxy {
    /// SIGTERM (HAProxy's hard stop: a master, if the config runs one, ends its workers too),
    /// then SIGKILL if it is still there after 2 s.
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// Session `index`: its name, whether it names itself by the `x-codex-session` header (else by
/// the `/sessions/{id}` path), and the token it presents.
struct Session {
    name: String,
    by_header: bool,
    token: &'static str,
}

fn sessions() -> Vec<Session> {
    (0..SESSIONS)
        .map(|i| Session {
            name: format!("sess-{i:03}"),
            by_header: i % 3 == 0,
            token: TOKENS[i % 2].2,
        })
        .collect()
}

/// Who answered one request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Served {
    pool: String,
    slot: i64,
}

/// What the clients saw in one stretch of load.
#[derive(Default, Debug)]
struct Tally {
    /// Per session, in order, who answered each of its requests.
    served: HashMap<usize, Vec<Served>>,
    /// Results received.
    results: u64,
    /// JSON-RPC errors with `data.retryable: true`, by reason; retried on a new connection.
    retryable: BTreeMap<String, u64>,
    /// Requests sent whose connection then closed without a reply and without a close frame
    /// (the node died): retried on a new connection.
    lost_on_close: u64,
    /// The sessions those requests belonged to.
    lost_by: HashSet<usize>,
    /// Requests sent when the node then said "going away" (close 1001) without answering them:
    /// the drain had stopped reading them; retried.
    refused_by_close: u64,
    /// The longest a request refused that way had been sent before the close came: a request
    /// the node held for long and then dropped would show here.
    refused_oldest: Duration,
    /// Sends that failed (the connection was already closed): retried on a new connection.
    unsent: u64,
    /// Failed upgrades through the balancer (connect refused, HTTP 502/503), by kind; retried.
    connect_failures: BTreeMap<String, u64>,
    /// Replies to an id already answered.
    duplicates: u64,
    /// Replies whose id is not the request in flight on that connection.
    strays: u64,
    /// What must never happen: a non-retryable error, a hung request, a malformed reply.
    fatal: Vec<String>,
}

impl Tally {
    fn retries(&self) -> u64 {
        self.retryable.values().sum::<u64>()
            + self.lost_on_close
            + self.refused_by_close
            + self.unsent
    }

    fn summary(&self) -> String {
        format!(
            "{} results, retryable errors {:?}, lost on close {}, refused by close 1001 {} \
             (sent at most {:?} before), unsent {}, connect failures {:?}, duplicates {}, \
             strays {}, fatal {}",
            self.results,
            self.retryable,
            self.lost_on_close,
            self.refused_by_close,
            self.refused_oldest,
            self.unsent,
            self.connect_failures,
            self.duplicates,
            self.strays,
            self.fatal.len()
        )
    }

    fn assert_clean(&self, what: &str) {
        assert!(
            self.fatal.is_empty(),
            "{what}: {} failures, first: {:?}",
            self.fatal.len(),
            &self.fatal[..self.fatal.len().min(5)]
        );
        assert_eq!(self.duplicates, 0, "{what}: a request answered twice");
        assert_eq!(self.strays, 0, "{what}: a reply to a request not in flight");
    }

    /// The one server each session saw; fails if a session saw two.
    fn one_server_each(&self, what: &str) -> HashMap<usize, Served> {
        self.served
            .iter()
            .map(|(session, served)| {
                let first = served[0].clone();
                assert!(
                    served.iter().all(|s| *s == first),
                    "{what}: session {session} served by several workers: {served:?}"
                );
                (*session, first)
            })
            .collect()
    }
}

/// Shared by every client task: where the balancer is, the request id counter (ids are unique
/// across the whole test, so a reply answers exactly one request), the ids answered, the tally.
struct Load {
    balancer: String,
    sessions: Vec<Session>,
    next_id: AtomicU64,
    answered: Mutex<HashSet<u64>>,
    tally: Mutex<Tally>,
    stop: AtomicBool,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Load {
    fn fatal(&self, text: String) {
        self.tally.lock().unwrap().fatal.push(text);
    }

    /// Opens the session's WebSocket through the balancer, retrying what a client retries.
    async fn connect(&self, index: usize) -> Option<Ws> {
        let session = &self.sessions[index];
        let start = Instant::now();
        loop {
            let url = if session.by_header {
                format!("ws://{}/", self.balancer)
            } else {
                format!("ws://{}/sessions/{}", self.balancer, session.name)
            };
            let mut request = url.into_client_request().unwrap();
            let headers = request.headers_mut();
            headers.insert(
                "authorization",
                format!("Bearer {}", session.token).parse().unwrap(),
            );
            if session.by_header {
                headers.insert("x-codex-session", session.name.parse().unwrap());
            }
            let failure =
                match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await {
                    Ok(Ok((ws, _))) => return Some(ws),
                    Ok(Err(WsError::Http(response))) => {
                        let status = response.status().as_u16();
                        if !matches!(status, 502..=504) {
                            self.fatal(format!("{}: upgrade answered {status}", session.name));
                            return None;
                        }
                        format!("http {status}")
                    }
                    Ok(Err(WsError::Io(e))) => format!("io {:?}", e.kind()),
                    Ok(Err(e)) => format!("{e}"),
                    Err(_) => "timeout".to_owned(),
                };
            *self
                .tally
                .lock()
                .unwrap()
                .connect_failures
                .entry(failure)
                .or_default() += 1;
            if start.elapsed() > RECONNECT_FOR {
                self.fatal(format!(
                    "{}: no node reachable for {RECONNECT_FOR:?}",
                    session.name
                ));
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50 + fastrand::u64(0..50))).await;
        }
    }

    /// Runs `requests` requests of session `index`, one at a time, each until it has a result:
    /// a retryable error or a closed connection makes the client retry it on a new connection
    /// (with a new id).
    async fn session(&self, index: usize, requests: usize, delay_ms: u64) {
        let mut ws: Option<Ws> = None;
        let mut done = 0;
        while done < requests {
            let conn = match ws.as_mut() {
                Some(conn) => conn,
                None => match self.connect(index).await {
                    Some(conn) => ws.insert(conn),
                    None => return,
                },
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let request = if delay_ms > 0 {
                json!({"id": id, "method": "mock/delay", "params": {"ms": delay_ms}})
            } else {
                json!({"id": id, "method": "ping"})
            };
            let sent_at = Instant::now();
            if conn.send(Message::text(request.to_string())).await.is_err() {
                self.tally.lock().unwrap().unsent += 1;
                ws = None;
                continue;
            }
            match self.reply(conn, id, index, sent_at).await {
                Reply::Result(served) => {
                    let mut tally = self.tally.lock().unwrap();
                    tally.results += 1;
                    tally.served.entry(index).or_default().push(served);
                    done += 1;
                }
                Reply::Retry => {
                    ws = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Reply::Fatal => return,
            }
        }
        if let Some(mut conn) = ws {
            let _ = conn.close(None).await;
        }
    }

    /// Reads until the reply to `id` (or the end of the connection).
    async fn reply(&self, conn: &mut Ws, id: u64, index: usize, sent_at: Instant) -> Reply {
        let name = &self.sessions[index].name;
        loop {
            let frame = match tokio::time::timeout(REPLY_WITHIN, conn.next()).await {
                Err(_) => {
                    self.fatal(format!(
                        "{name}: request {id} unanswered on an open connection"
                    ));
                    return Reply::Fatal;
                }
                Ok(frame) => frame,
            };
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(Some(close)))) if close.code == CloseCode::Away => {
                    let mut tally = self.tally.lock().unwrap();
                    tally.refused_by_close += 1;
                    tally.refused_oldest = tally.refused_oldest.max(sent_at.elapsed());
                    return Reply::Retry;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    let mut tally = self.tally.lock().unwrap();
                    tally.lost_on_close += 1;
                    tally.lost_by.insert(index);
                    return Reply::Retry;
                }
                Some(Ok(other)) => {
                    self.fatal(format!("{name}: unexpected frame {other:?}"));
                    return Reply::Fatal;
                }
            };
            let reply: Value = match serde_json::from_str(&text) {
                Ok(reply) => reply,
                Err(e) => {
                    self.fatal(format!("{name}: bad JSON ({e}): {text}"));
                    return Reply::Fatal;
                }
            };
            let Some(got) = reply["id"].as_u64() else {
                // A notification: the mock sends none for these methods; not a reply.
                self.fatal(format!("{name}: unexpected message {reply}"));
                return Reply::Fatal;
            };
            let first = self.answered.lock().unwrap().insert(got);
            let mut tally = self.tally.lock().unwrap();
            if !first {
                tally.duplicates += 1;
                continue;
            }
            if got != id {
                tally.strays += 1;
                continue;
            }
            if let Some(result) = reply.get("result") {
                let pool = result["pool"].as_str().unwrap_or_default().to_owned();
                let slot = result["slot"].as_i64().unwrap_or(-1);
                return Reply::Result(Served { pool, slot });
            }
            let error = &reply["error"];
            if error["data"]["retryable"] == json!(true) {
                let reason = error["data"]["reason"].as_str().unwrap_or("?").to_owned();
                *tally.retryable.entry(reason).or_default() += 1;
                return Reply::Retry;
            }
            tally
                .fatal
                .push(format!("{name}: non-retryable error: {reply}"));
            return Reply::Fatal;
        }
    }
}

enum Reply {
    Result(Served),
    Retry,
    Fatal,
}

/// Runs every session for `requests` requests of `delay_ms` each, `CONCURRENCY` at a time; with
/// `until_stopped`, starts over until `load.stop` is set. Returns the tally of this stretch.
async fn round(load: Arc<Load>, requests: usize, delay_ms: u64, until_stopped: bool) -> Tally {
    *load.tally.lock().unwrap() = Tally::default();
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    loop {
        let mut tasks = Vec::new();
        for index in 0..SESSIONS {
            let permit = permits.clone().acquire_owned().await.unwrap();
            let load = load.clone();
            tasks.push(tokio::spawn(async move {
                load.session(index, requests, delay_ms).await;
                drop(permit);
            }));
        }
        for task in tasks {
            task.await.expect("client task");
        }
        if !until_stopped || load.stop.load(Ordering::SeqCst) {
            break;
        }
    }
    std::mem::take(&mut *load.tally.lock().unwrap())
}

// ---------------------------------------------------------------------------------------------
// The shipped balancer config

/// The shipped balancer config.
fn shipped_config() -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/haproxy.cfg");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

/// Starts HAProxy on the shipped `docs/deploy/haproxy.cfg` as shipped: its listener and its
/// three servers come from the environment (`BUS_LISTEN`, `BUS1`…`BUS3`), as the file says. The
/// test adds only an admin socket, in a second `global` section of a file of its own.
fn start_haproxy(front_port: u16, nodes: &[&Node]) -> HaProxy {
    let (config, _) = shipped_config();
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("test.cfg");
    std::fs::write(
        &extra,
        format!(
            "global\n    stats socket {} level admin\n",
            dir.path().join("admin.sock").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
    let mut command = Command::new("haproxy");
    command
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .arg("-f")
        .arg(&extra)
        .env("BUS_LISTEN", format!("127.0.0.1:{front_port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (i, node) in nodes.iter().enumerate() {
        command.env(format!("BUS{}", i + 1), node.ws_addr());
    }
    let child = command
        .spawn()
        .expect("haproxy (Debian package haproxy) on PATH");
    let done = Arc::new(AtomicBool::new(false));
    watchdog(child.id(), done.clone());
    let haproxy = HaProxy { child, dir, done };
    wait_until(WAIT, "HAProxy's admin socket", || haproxy.socket().exists());
    for node in nodes {
        haproxy.wait_server(node.ws_port, true);
    }
    haproxy
}

/// Adds `node` to the balancing backend at run time, the way an operator adds capacity without
/// a reload: a new name and a new id, as the shipped file asks, and the health-check options of
/// its `default-server` line (a server added at run time does not inherit them). Waits until
/// HAProxy sees it up.
fn add_server(haproxy: &HaProxy, id: usize, node: &Node) {
    let (_, text) = shipped_config();
    let defaults: Vec<&str> = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("default-server "))
        .expect("a default-server line")
        .split_whitespace()
        .collect();
    let mut check = vec!["check"];
    for pair in defaults.windows(2) {
        if ["inter", "fall", "rise"].contains(&pair[0]) {
            check.extend(pair);
        }
    }
    let backend = haproxy.servers()[0].0.clone();
    let server = format!("{backend}/bus{id}");
    let answer = haproxy.command(&format!(
        "add server {server} {} id {id} {}",
        node.ws_addr(),
        check.join(" ")
    ));
    assert!(answer.contains("New server registered"), "{answer}");
    for command in ["enable health", "enable server"] {
        let answer = haproxy.command(&format!("{command} {server}"));
        assert!(answer.trim().is_empty(), "{command}: {answer}");
    }
    haproxy.wait_server(node.ws_port, true);
}

// ---------------------------------------------------------------------------------------------
// The test

#[test]
#[ignore = "tier haproxy: needs haproxy (Debian package haproxy); .ci/run installs it"]
fn sessions_spread_over_nodes_behind_haproxy_survive_a_kill_a_join_and_a_rolling_restart() {
    let started = Instant::now();
    let ports = free_ports(5);
    let mut nodes: Vec<Node> = (1..=3).map(|i| Node::new(i, ports[i])).collect();
    let haproxy = start_haproxy(ports[0], &nodes.iter().collect::<Vec<_>>());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load = Arc::new(Load {
        balancer: format!("127.0.0.1:{}", ports[0]),
        sessions: sessions(),
        next_id: AtomicU64::new(1),
        answered: Mutex::new(HashSet::new()),
        tally: Mutex::new(Tally::default()),
        stop: AtomicBool::new(false),
    });
    let node_of = |served: &HashMap<usize, Served>| -> HashMap<usize, String> {
        served.iter().map(|(s, w)| (*s, w.pool.clone())).collect()
    };

    // 1. Steady state: 300 sessions × 10 requests; each session stays on one worker of one node.
    let at = Instant::now();
    let steady = runtime.block_on(round(load.clone(), REQUESTS, 0, false));
    steady.assert_clean("steady");
    assert_eq!(
        steady.results,
        (SESSIONS * REQUESTS) as u64,
        "{}",
        steady.summary()
    );
    let placed = node_of(&steady.one_server_each("steady"));
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for node in placed.values() {
        *per_node.entry(node).or_default() += 1;
    }
    say(&format!(
        "scale-out steady: {} requests in {:?}, sessions per node {per_node:?}; {}",
        steady.results,
        at.elapsed(),
        steady.summary()
    ));
    assert_eq!(
        per_node.len(),
        3,
        "every node serves sessions: {per_node:?}"
    );
    // The nodes' own count agrees: one connection per session, each accepted by its node.
    for node in &nodes {
        assert_eq!(
            node.ws_connections(),
            per_node[node.name.as_str()] as f64,
            "{}'s websocket connections",
            node.name
        );
    }

    // 2. SIGKILL node-1 under load: its sessions reconnect and are served by the others.
    let victim = nodes[0].name.clone();
    let handle = runtime.spawn(round(load.clone(), REQUESTS, 20, false));
    std::thread::sleep(Duration::from_millis(400));
    let killed_at = Instant::now();
    nodes[0].stop(Signal::SIGKILL);
    haproxy.wait_server(nodes[0].ws_port, false);
    let marked_down = killed_at.elapsed();
    let kill = runtime.block_on(handle).unwrap();
    kill.assert_clean("kill");
    assert!(
        kill.lost_by.iter().all(|s| placed[s] == victim),
        "only the dead node's connections closed under their requests"
    );
    assert_eq!(
        kill.results,
        (SESSIONS * REQUESTS) as u64,
        "{}",
        kill.summary()
    );
    let mut moved_away = 0;
    for (session, served) in &kill.served {
        let home = &placed[session];
        let nodes_seen: Vec<&String> = {
            let mut seen: Vec<&String> = served.iter().map(|s| &s.pool).collect();
            seen.dedup();
            seen
        };
        if *home == victim {
            // Its node, then (after the kill) exactly one other.
            assert!(nodes_seen.len() <= 2, "session {session}: {nodes_seen:?}");
            if nodes_seen.last() != Some(&home) {
                moved_away += 1;
            }
        } else {
            assert_eq!(
                nodes_seen,
                vec![home],
                "session {session} moved though its node lived"
            );
        }
    }
    say(&format!(
        "scale-out SIGKILL {victim}: {moved_away} of its {} sessions moved to the others; \
         HAProxy marked it down {marked_down:?} after the kill; {}",
        per_node[victim.as_str()],
        kill.summary()
    ));
    // After HAProxy marked it down, every session of the dead node is served elsewhere.
    let after = runtime.block_on(round(load.clone(), 1, 0, false));
    after.assert_clean("after kill");
    for (session, served) in after.one_server_each("after kill") {
        assert_ne!(served.pool, victim, "session {session} on the dead node");
        if placed[&session] != victim {
            assert_eq!(served.pool, placed[&session], "session {session} moved");
        }
    }

    // 3. node-1 comes back: consistent hashing gives it back exactly its sessions.
    nodes[0].start();
    haproxy.wait_server(nodes[0].ws_port, true);
    let back = runtime.block_on(round(load.clone(), 2, 0, false));
    back.assert_clean("back");
    assert_eq!(
        node_of(&back.one_server_each("back")),
        placed,
        "sessions went home"
    );

    // 4. A fourth node joins: only sessions that move to it move, at most 1/4 + 5 % of them.
    nodes.push(Node::new(4, ports[4]));
    add_server(&haproxy, 4, &nodes[3]);
    let join = runtime.block_on(round(load.clone(), 2, 0, false));
    join.assert_clean("join");
    let joined = node_of(&join.one_server_each("join"));
    let moved: Vec<usize> = (0..SESSIONS).filter(|s| joined[s] != placed[s]).collect();
    say(&format!(
        "scale-out join node-4: {} of {SESSIONS} sessions moved ({:.1} %, bound 30 %)",
        moved.len(),
        100.0 * moved.len() as f64 / SESSIONS as f64
    ));
    assert!(
        moved.iter().all(|s| joined[s] == nodes[3].name),
        "a session moved between old nodes"
    );
    assert!(
        moved.len() as f64 <= SESSIONS as f64 * (0.25 + 0.05),
        "{} sessions moved",
        moved.len()
    );

    // 5. Rolling restart under load: SIGTERM each node in turn (drain grace 1 s), restart it,
    //    wait until HAProxy sees it up, then the next.
    load.stop.store(false, Ordering::SeqCst);
    let handle = runtime.spawn(round(load.clone(), REQUESTS, 5, true));
    let at = Instant::now();
    for node in nodes.iter_mut() {
        std::thread::sleep(Duration::from_millis(300));
        node.stop(Signal::SIGTERM);
        node.start();
        haproxy.wait_server(node.ws_port, true);
    }
    load.stop.store(true, Ordering::SeqCst);
    let rolling = runtime.block_on(handle).unwrap();
    rolling.assert_clean("rolling restart");
    say(&format!(
        "scale-out rolling restart of 4 nodes in {:?}: {} retries; {}",
        at.elapsed(),
        rolling.retries(),
        rolling.summary()
    ));
    assert_eq!(
        rolling.lost_on_close, 0,
        "a drained node closed a connection with a request unanswered"
    );
    say(&format!("scale-out total {:?}", started.elapsed()));
    drop(haproxy);
}
