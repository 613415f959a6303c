//! Starting what a run drives, and ending it: the bus daemon (from `--bus-cmd` and a config file
//! written here, so any bus that reads stdio Bus configs runs the same scenarios), the relay in the
//! bus's place (started the same way), the worker alone over its stdin/stdout (`direct`), or the
//! in-process responder (`self`). The epoll engine drives every target; the blocking client
//! (`blocking`) drives the bus's TLS and WebSocket fronts, and plain TCP for comparison.
//! With `--admin` or `--dashboard` the bus also serves its admin endpoint, and with
//! `--dashboard` a stream of it is held open while the target runs (`dashboard`).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use serde::Serialize;

use crate::auth::Credential;
use crate::blocking::{self, Front};
use crate::bus_config::{BusConfig, PoolConfig};
use crate::certs::SelfSigned;
use crate::dashboard::{self, Admin};
use crate::io::Io;
use crate::procfs;
use crate::responder::{Responder, Source};

/// How long a daemon may take to listen and start its workers.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a daemon may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long the daemon gets to forget the readiness probe's connection before its baseline is read.
const PROBE_GONE: Duration = Duration::from_millis(100);

/// What a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The bus daemon from `--bus-cmd`, with a pool of workers.
    Bus,
    /// bus-bench's own byte-copying relay in the bus's place (one worker per connection, nothing
    /// parsed): the floor for any bus's CPU and added latency.
    Relay,
    /// One worker per connection, over its own stdin/stdout: the upper bound for any bus.
    Direct,
    /// A responder thread inside the generator: the generator's own ceiling.
    #[value(name = "self")]
    #[serde(rename = "self")]
    SelfResponder,
}

/// How the generator reaches a bus (or the self responder).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// TCP on 127.0.0.1.
    Tcp,
    /// A Unix socket in a scratch directory.
    Unix,
    /// The process's stdin/stdout (one connection).
    Stdio,
    /// WebSocket on 127.0.0.1 (a `websocket` listener of the bus config), one JSON-RPC message
    /// per text frame; driven by the blocking client.
    Ws,
}

/// Which client loop drives the connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Client {
    /// One `epoll` loop over every connection (`engine`): every target, NDJSON only.
    Epoll,
    /// One blocking thread over one bus connection (`blocking`): TCP or WebSocket, TLS or not.
    Blocking,
}

/// The connections of a started target, for the client that drives them.
pub enum Connections {
    /// Non-blocking streams for the epoll engine.
    Streams(Vec<Io>),
    /// Connected blocking clients.
    Blocking(Vec<blocking::Client>),
}

impl Transport {
    /// The name used on the command line and in labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
            Transport::Stdio => "stdio",
            Transport::Ws => "ws",
        }
    }
}

/// The programs under test.
#[derive(Clone, Debug)]
pub struct Commands {
    /// The bus command line; `--config FILE` and the transport flag are appended.
    pub bus: Vec<String>,
    /// The relay's command line (this binary's hidden `relay` subcommand), completed the same way.
    pub relay: Vec<String>,
    /// The worker program the bus config names (and `direct` runs).
    pub worker: PathBuf,
    /// Its arguments.
    pub worker_args: Vec<String>,
}

/// What to start.
pub struct Launch<'a> {
    /// Bus, relay, direct or self.
    pub kind: Kind,
    /// Transport to the bus or responder (ignored by `direct`, which always uses pipes).
    pub transport: Transport,
    /// TLS on the bus's TCP or WebSocket listener, with a certificate made for the run.
    pub tls: bool,
    /// The client that drives the connections.
    pub client: Client,
    /// Connections to open.
    pub connections: usize,
    /// Worker instances in the bus's pool.
    pub workers: usize,
    /// Extra `limits` members for the bus config.
    pub limits: serde_json::Map<String, serde_json::Value>,
    /// With a credential the bus (not the relay) runs with its `auth` section, and every TCP
    /// connection authenticates before the run uses it.
    pub auth: Option<&'a Credential>,
    /// The bus's (not the relay's) admin endpoint, and whether a dashboard stream is held open.
    pub admin: Admin,
    /// The programs.
    pub commands: &'a Commands,
}

/// The daemon as it was once ready, before bus-bench opened its connections: the baseline of the
/// per-connection memory figures.
#[derive(Clone, Copy, Debug)]
pub struct AtReady {
    /// `VmRSS`, kB.
    pub rss_kb: u64,
    /// Open file descriptors.
    pub fds: usize,
}

/// A started target; every process it started is killed and reaped when it is dropped.
pub struct Target {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    at_ready: Option<AtReady>,
    direct: Vec<Child>,
    responder: Option<Responder>,
    dashboard: Option<dashboard::Stream>,
}

impl Target {
    /// Starts the target and opens `launch.connections` connections to it.
    pub fn start(launch: &Launch<'_>) -> Result<(Target, Connections), String> {
        refuse_unsupported(launch)?;
        let dir = tempfile::Builder::new()
            .prefix("bus-bench")
            .tempdir()
            .map_err(|e| format!("scratch directory: {e}"))?;
        let mut target = Target {
            dir,
            daemon: None,
            at_ready: None,
            direct: Vec::new(),
            responder: None,
            dashboard: None,
        };
        if launch.transport == Transport::Stdio
            && launch.kind != Kind::Direct
            && launch.connections != 1
        {
            return Err("the stdio transport carries exactly one connection".into());
        }
        if launch.kind == Kind::Relay {
            if launch.transport == Transport::Stdio {
                return Err("the relay listens on tcp or unix, not stdio".into());
            }
            if launch.connections > launch.workers {
                return Err(format!(
                    "the relay gives each connection a worker of its own: {} connections need \
                     at least as many workers, not {}",
                    launch.connections, launch.workers
                ));
            }
        }
        let connections = match launch.kind {
            Kind::Bus => target.start_daemon(launch, &launch.commands.bus)?,
            Kind::Relay => target.start_daemon(launch, &launch.commands.relay)?,
            Kind::Direct => Connections::Streams(target.start_direct(launch)?),
            Kind::SelfResponder => Connections::Streams(target.start_self(launch)?),
        };
        Ok((target, connections))
    }

    /// The pid of the bus daemon (or of the relay in its place).
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// The daemon's memory and fds once it was ready, before any connection of the run.
    pub fn daemon_at_ready(&self) -> Option<AtReady> {
        self.at_ready
    }

    /// The open dashboard stream (`--dashboard`, bus runs).
    pub fn dashboard(&self) -> Option<&dashboard::Stream> {
        self.dashboard.as_ref()
    }

    /// Closes the dashboard stream; what it delivered.
    pub fn close_dashboard(&mut self) -> Option<dashboard::Seen> {
        self.dashboard.take().map(dashboard::Stream::close)
    }

    /// The worker processes alive now (the bus's children, or the direct workers).
    pub fn worker_pids(&self) -> Vec<u32> {
        match self.daemon_pid() {
            Some(pid) => procfs::children(pid),
            None => self.direct.iter().map(Child::id).collect(),
        }
    }

    /// Ends the target; an error if the in-process responder failed.
    pub fn stop(mut self) -> Result<(), String> {
        match self.responder.take() {
            Some(responder) => responder.stop().map_err(|e| format!("responder: {e}")),
            None => Ok(()),
        }
    }

    /// Starts `command` (the bus, or the relay in its place) with a config and an endpoint.
    fn start_daemon(
        &mut self,
        launch: &Launch<'_>,
        command: &[String],
    ) -> Result<Connections, String> {
        let (program, args) = command.split_first().ok_or("--bus-cmd is empty")?;
        let auth = launch.auth.filter(|_| launch.kind == Kind::Bus);
        let certificate = match launch.tls {
            true => Some(SelfSigned::generate(self.dir.path())?),
            false => None,
        };
        let mut config = self.config(launch, auth);
        let admin = match launch.admin {
            Admin::Off => None,
            _ if launch.kind != Kind::Bus => None,
            _ => Some(free_port()?),
        };
        config.metrics = admin.and_then(|addr| launch.admin.config(addr));
        let mut cmd = Command::new(program);
        cmd.args(args);
        let endpoint = match launch.transport {
            Transport::Tcp => {
                let addr = free_port()?;
                cmd.arg("--tcp").arg(addr.to_string());
                if let Some(certificate) = &certificate {
                    config.transport = Some(serde_json::json!({"tls": certificate.config()}));
                }
                Endpoint::Tcp(addr)
            }
            // A listener of the config rather than `--ws`, so that it can carry `tls`.
            Transport::Ws => {
                let addr = free_port()?;
                let mut listener = serde_json::json!({"listen": addr.to_string()});
                if let Some(certificate) = &certificate {
                    listener["tls"] = certificate.config();
                }
                config.websocket = Some(serde_json::json!([listener]));
                Endpoint::Tcp(addr)
            }
            Transport::Unix => {
                let path = self.dir.path().join("bus.sock");
                cmd.arg("--unix").arg(&path);
                Endpoint::Unix(path)
            }
            Transport::Stdio => {
                cmd.arg("--stdio");
                Endpoint::Stdio
            }
        };
        let path = self.dir.path().join("bus.json");
        config.write(&path)?;
        cmd.arg("--config").arg(&path);
        let stdio = launch.transport == Transport::Stdio;
        let piped = || if stdio { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(piped())
            .stdout(piped())
            .stderr(self.log_file("bus.log")?);
        let daemon = cmd
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let pid = daemon.id();
        self.daemon = Some(daemon);
        self.wait_ready(&endpoint, pid, launch.workers)?;
        if let (Some(addr), Admin::Dashboard) = (admin, launch.admin) {
            // Before the baseline below, so that it holds the stream's socket (the daemon's fds
            // are compared with it once the run's connections are gone).
            self.dashboard = Some(dashboard::Stream::open(addr, READY_TIMEOUT)?);
        }
        // The readiness probe's connection is closed by now on this side; give the daemon a
        // moment to close its own, so the baseline holds no connection.
        std::thread::sleep(PROBE_GONE);
        self.at_ready = procfs::status_kb(pid, "VmRSS")
            .zip(procfs::open_fds(pid))
            .map(|(rss_kb, fds)| AtReady { rss_kb, fds });
        let streams = match (endpoint, launch.client) {
            (Endpoint::Tcp(addr), Client::Blocking) => {
                let front = Front {
                    addr,
                    tls: certificate.map(|c| c.client),
                    websocket: launch.transport == Transport::Ws,
                };
                let clients = (0..launch.connections)
                    .map(|i| {
                        blocking::Client::connect(&front, i, auth)
                            .map_err(|e| format!("connection {i}: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
                return Ok(Connections::Blocking(clients));
            }
            (Endpoint::Tcp(addr), _) => connect_n(launch.connections, || Io::tcp(addr, auth)),
            (Endpoint::Unix(path), _) => connect_n(launch.connections, || Io::unix(&path)),
            (Endpoint::Stdio, _) => {
                let daemon = self.daemon.as_mut().expect("just started");
                let (stdin, stdout) = (daemon.stdin.take(), daemon.stdout.take());
                let io = Io::child(stdin.expect("piped"), stdout.expect("piped"));
                Ok(vec![io.map_err(|e| format!("bus stdio: {e}"))?])
            }
        };
        Ok(Connections::Streams(streams?))
    }

    /// The stdio Bus config format, which codex-stdio-bus reads unchanged (the fronts add their
    /// listeners' sections).
    fn config(&self, launch: &Launch<'_>, auth: Option<&Credential>) -> BusConfig {
        let commands = launch.commands;
        BusConfig {
            pools: vec![PoolConfig {
                id: "bench".into(),
                command: commands.worker.clone(),
                args: commands.worker_args.clone(),
                instances: launch.workers,
            }],
            limits: launch.limits.clone(),
            auth: auth.map(Credential::config),
            transport: None,
            websocket: None,
            metrics: None,
        }
    }

    /// Waits until the bus accepts connections and runs `workers` worker processes.
    fn wait_ready(&mut self, endpoint: &Endpoint, pid: u32, workers: usize) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let listening = match endpoint {
                Endpoint::Tcp(addr) => std::net::TcpStream::connect(addr).is_ok(),
                Endpoint::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
                Endpoint::Stdio => true,
            };
            if listening && procfs::children(pid).len() >= workers {
                return Ok(());
            }
            let daemon = self.daemon.as_mut().expect("started");
            if let Ok(Some(status)) = daemon.try_wait() {
                return Err(format!("the bus exited ({status}) {}", self.log_tail()));
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "the bus was not ready within {READY_TIMEOUT:?} {}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn start_direct(&mut self, launch: &Launch<'_>) -> Result<Vec<Io>, String> {
        let commands = launch.commands;
        let mut streams = Vec::with_capacity(launch.connections);
        for i in 0..launch.connections {
            let mut worker = Command::new(&commands.worker)
                .args(&commands.worker_args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(self.log_file(&format!("worker-{i}.log"))?)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", commands.worker.display()))?;
            let (stdin, stdout) = (worker.stdin.take(), worker.stdout.take());
            self.direct.push(worker);
            let io = Io::child(stdin.expect("piped"), stdout.expect("piped"));
            streams.push(io.map_err(|e| format!("worker pipes: {e}"))?);
        }
        Ok(streams)
    }

    fn start_self(&mut self, launch: &Launch<'_>) -> Result<Vec<Io>, String> {
        let fail = |e: std::io::Error| format!("in-process responder: {e}");
        let n = launch.connections;
        match launch.transport {
            Transport::Ws => unreachable!("refused by refuse_unsupported"),
            Transport::Tcp => {
                let listener = TcpListener::bind("127.0.0.1:0").map_err(fail)?;
                let addr = listener.local_addr().map_err(fail)?;
                listener.set_nonblocking(true).map_err(fail)?;
                let listener = mio::net::TcpListener::from_std(listener);
                self.responder = Some(Responder::start(Source::Tcp(listener)).map_err(fail)?);
                connect_n(n, || Io::tcp(addr, None))
            }
            Transport::Unix => {
                let path = self.dir.path().join("self.sock");
                let listener = mio::net::UnixListener::bind(&path).map_err(fail)?;
                self.responder = Some(Responder::start(Source::Unix(listener)).map_err(fail)?);
                connect_n(n, || Io::unix(&path))
            }
            Transport::Stdio => {
                let (mut ours, mut theirs) = (Vec::new(), Vec::new());
                for _ in 0..n {
                    let (req_tx, req_rx) = mio::unix::pipe::new().map_err(fail)?;
                    let (rep_tx, rep_rx) = mio::unix::pipe::new().map_err(fail)?;
                    ours.push(Io::pipes(req_tx, rep_rx).map_err(fail)?);
                    theirs.push(Io::pipes(rep_tx, req_rx).map_err(fail)?);
                }
                self.responder = Some(Responder::start(Source::Pipes(theirs)).map_err(fail)?);
                Ok(ours)
            }
        }
    }

    fn log_file(&self, name: &str) -> Result<File, String> {
        File::create(self.dir.path().join(name)).map_err(|e| format!("log file {name}: {e}"))
    }

    /// The end of the bus's log, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("bus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        format!("; log tail:\n{tail}")
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Closed first: the daemon need not end a stream while it stops.
        drop(self.dashboard.take());
        if let Some(responder) = self.responder.take() {
            // The run already failed if this is reached with an error: nothing more to report.
            let _ = responder.stop();
        }
        // The daemon's workers and theirs, named before it stops: only they are swept below,
        // not other children of this process (other targets' in a test binary, whose tests run
        // at once).
        let mut workers = Vec::new();
        if let Some(daemon) = self.daemon.take() {
            workers = procfs::descendants(daemon.id());
            stop_daemon(daemon);
        }
        for mut worker in self.direct.drain(..) {
            let _ = worker.kill();
            let _ = worker.wait();
        }
        // bus-bench is a child subreaper: the bus's workers were reparented to it when the bus
        // died, whatever the bus does about its children (stdio Bus does nothing). End them.
        let orphans = procfs::children(std::process::id());
        for pid in workers.into_iter().filter(|pid| orphans.contains(pid)) {
            let pid = Pid::from_raw(pid as i32);
            if kill(pid, Signal::SIGKILL).is_ok() {
                let _ = waitpid(pid, None);
            }
        }
    }
}

/// SIGTERM, then SIGKILL if the daemon has not exited within [`STOP_GRACE`]: a daemon (or a
/// profiler wrapped around it in `--bus-cmd`) gets to exit on its own and write what it holds.
fn stop_daemon(mut daemon: Child) {
    let _ = kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < STOP_GRACE {
        if let Ok(Some(_)) = daemon.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// Refuses, before anything starts, what only the other client can drive: TLS and WebSocket need
/// the blocking client, which drives one connection to the bus.
fn refuse_unsupported(launch: &Launch<'_>) -> Result<(), String> {
    let front = if launch.tls {
        "TLS"
    } else {
        "the ws transport"
    };
    match launch.client {
        Client::Epoll if launch.tls || launch.transport == Transport::Ws => Err(format!(
            "{front} is driven by the blocking client only (--client blocking)"
        )),
        Client::Blocking if launch.kind != Kind::Bus => {
            Err("the blocking client drives the bus only (--target bus)".into())
        }
        Client::Blocking if !matches!(launch.transport, Transport::Tcp | Transport::Ws) => {
            Err(format!(
                "TLS and the blocking client take --transport tcp or ws, not {}",
                launch.transport.as_str()
            ))
        }
        Client::Blocking if launch.connections != 1 => Err(format!(
            "the blocking client (TLS, ws) drives one connection, as the single and latency \
             scenarios do, not {}",
            launch.connections
        )),
        _ => Ok(()),
    }
}

enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Stdio,
}

/// A loopback port free right now (the bus binds it a moment later; stdio Bus cannot report the
/// port it picked for `:0`, so the generator chooses).
fn free_port() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))
}

fn connect_n(
    n: usize,
    mut connect: impl FnMut() -> std::io::Result<Io>,
) -> Result<Vec<Io>, String> {
    (0..n)
        .map(|i| connect().map_err(|e| format!("connection {i}: {e}")))
        .collect()
}

/// Whether `path` names a program that can be started (for early, clear errors).
pub fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(commands: &Commands, transport: Transport, connections: usize) -> Launch<'_> {
        Launch {
            kind: Kind::Relay,
            transport,
            tls: false,
            client: Client::Epoll,
            connections,
            workers: 2,
            limits: serde_json::Map::new(),
            auth: None,
            admin: Admin::Off,
            commands,
        }
    }

    /// Programs that do not exist: a launch that gets as far as starting one fails saying so.
    fn missing_programs() -> Commands {
        Commands {
            bus: vec!["/nonexistent/bus".into()],
            relay: vec!["/nonexistent/bus-bench".into(), "relay".into()],
            worker: "/nonexistent/worker".into(),
            worker_args: Vec::new(),
        }
    }

    #[test]
    fn the_relay_refuses_loads_it_cannot_carry_before_starting_anything() {
        let commands = missing_programs();
        let error = |l: &Launch<'_>| Target::start(l).err().expect("refused");
        assert!(error(&launch(&commands, Transport::Tcp, 3)).contains("3 connections"));
        assert!(error(&launch(&commands, Transport::Stdio, 1)).contains("not stdio"));
        // Within its limits it gets as far as starting the (missing) relay program.
        assert!(error(&launch(&commands, Transport::Tcp, 2)).contains("cannot start"));
    }

    #[test]
    fn the_fronts_are_refused_where_the_blocking_client_cannot_go() {
        let commands = missing_programs();
        let error = |l: &Launch<'_>| Target::start(l).err().expect("refused");
        let front = |transport, tls, client, connections| Launch {
            kind: Kind::Bus,
            tls,
            client,
            ..launch(&commands, transport, connections)
        };
        let epoll_ws = error(&front(Transport::Ws, false, Client::Epoll, 1));
        assert!(epoll_ws.contains("blocking client only"), "{epoll_ws}");
        let unix_tls = error(&front(Transport::Unix, true, Client::Blocking, 1));
        assert!(unix_tls.contains("not unix"), "{unix_tls}");
        let two = error(&front(Transport::Ws, true, Client::Blocking, 2));
        assert!(two.contains("one connection"), "{two}");
        let relay = Launch {
            kind: Kind::Relay,
            ..front(Transport::Tcp, true, Client::Blocking, 1)
        };
        assert!(error(&relay).contains("bus only"));
        // Within its limits it gets as far as starting the (missing) bus.
        let within = error(&front(Transport::Ws, true, Client::Blocking, 1));
        assert!(within.contains("cannot start"), "{within}");
    }
}
