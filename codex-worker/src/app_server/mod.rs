//! The bridge: bus sessions served on one shared `codex app-server` child, or with
//! `--child-per-session` on a child per session.
//!
//! The event loop here does the I/O (stdin from the bus, the children's pipes, timers, signals);
//! which child serves what, and when children start and stop, is decided in [`manager`]; every
//! protocol rule lives in [`bridge`].

mod approvals;
mod bridge;
mod child_log;
mod cluster;
mod errors;
mod handshakes;
mod held;
mod home;
mod jsonl_log;
mod manager;
mod outbound;
mod owners;
mod policy;
mod process;
mod requests;
mod restart;
mod sessions;
mod threads;
mod wire;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use codex_bus_worker_io::input;
use codex_bus_worker_io::lines::Lines;
use codex_bus_worker_io::log;
use codex_bus_worker_io::timer::sleep_until;

use crate::cli::Cli;
use bridge::{BridgeConfig, Handshake};
use cluster::{Cluster, ClusterConfig, Done};
use home::SlotDir;
use manager::{Effects, Layout, Manager, ManagerConfig};
use outbound::Outbound;
use policy::{Policy, SandboxGrant};
use process::{ChildEvent, ChildProcess};
use threads::ThreadLimits;

/// Exit status when a child keeps dying: the bus supervisor restarts the worker.
const EXIT_CHILD_FAILING: u8 = 3;

/// Everything the bridge needs, resolved from the command line and the environment.
#[derive(Debug)]
pub struct Settings {
    command: Vec<String>,
    slot: SlotDir,
    seed_home: Option<PathBuf>,
    manager: ManagerConfig,
    queue_bytes: usize,
    cluster: Option<ClusterConfig>,
}

impl Settings {
    /// Resolves `args` for the worker of `pool`/`slot`.
    pub fn new(args: &Cli, pool: &str, slot: Option<i64>) -> Result<Self, String> {
        let command: Vec<String> = args
            .codex_cmd
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if command.is_empty() {
            return Err("--codex-cmd is empty".to_owned());
        }
        if command.iter().any(|arg| arg.starts_with("--listen")) {
            return Err("--codex-cmd must not pass --listen: it turns stdio off".to_owned());
        }
        let state_dir = match &args.state_dir {
            Some(dir) => dir.clone(),
            None => default_state_dir()?,
        };
        let sandboxes = args
            .allow_sandboxes
            .iter()
            .map(|grant| grant.parse())
            .collect::<Result<Vec<SandboxGrant>, String>>()
            .map_err(|err| format!("--allow-sandbox: {err}"))?;
        let seconds = |secs: u64| (secs > 0).then(|| Duration::from_secs(secs));
        let layout = if args.child_per_session {
            Layout::PerSession {
                max_children: usize::try_from(args.max_children).unwrap_or(usize::MAX),
                child_idle: seconds(args.child_idle_sec),
            }
        } else {
            Layout::Shared
        };
        let bridge = BridgeConfig {
            request_timeout: Duration::from_secs(args.request_timeout_sec),
            handshake_timeout: Duration::from_secs(10),
            approval_timeout: seconds(args.approval_timeout_sec),
            session_idle: seconds(args.session_idle_sec),
            hold_unknown: Duration::from_secs(5),
            max_in_flight: usize::try_from(args.max_in_flight).unwrap_or(usize::MAX),
            drain_timeout: Duration::from_secs(args.drain_timeout_sec),
            interrupt_grace: Duration::from_secs(3),
            handshake: Handshake {
                name: args.client_name.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                experimental_api: args.experimental_api,
            },
            policy: Policy::new(&args.allow_methods, &sandboxes),
            threads: ThreadLimits {
                max: usize::try_from(args.max_threads).unwrap_or(usize::MAX),
                ttl: seconds(args.thread_ttl_sec),
            },
            private_home: args.child_per_session,
        };
        let cluster = match (&args.store, &args.shared_dir) {
            (Some(store), Some(shared_dir)) => {
                let node = match &args.node {
                    Some(node) => node.clone(),
                    None => host_name(),
                };
                if node.is_empty() || node.contains('/') {
                    return Err(format!("--node {node:?}: must be non-empty, without '/'"));
                }
                let slot =
                    slot.map_or_else(|| format!("pid-{}", std::process::id()), |n| n.to_string());
                let pool = if pool.is_empty() { "default" } else { pool };
                // `env:NAME` keeps a password out of the command line (`ps` shows it to every
                // user): the URL is read from the worker's environment (the pool's `env`).
                let store = match store.strip_prefix("env:") {
                    Some(name) => std::env::var(name)
                        .map_err(|_| format!("--store env:{name}: {name} is not set"))?,
                    None => store.clone(),
                };
                Some(ClusterConfig {
                    store,
                    shared_dir: shared_dir.clone(),
                    holder: format!("{node}/{pool}/{slot}"),
                    lease_ttl: Duration::from_secs(args.lease_ttl_sec),
                    lease_idle: Duration::from_secs(args.lease_idle_sec),
                    idempotency_ttl: Duration::from_secs(args.idempotency_ttl_sec),
                    max_reply: args.idempotency_max_reply_bytes,
                    request_timeout: Duration::from_secs(args.request_timeout_sec),
                })
            }
            _ => None,
        };
        Ok(Self {
            cluster,
            command,
            slot: SlotDir::new(&state_dir, pool, slot),
            seed_home: args.seed_home.clone(),
            manager: ManagerConfig {
                bridge,
                layout,
                max_restarts: args.max_child_restarts,
                restart_window: Duration::from_secs(args.child_restart_window_sec),
            },
            queue_bytes: args.session_queue_bytes,
        })
    }
}

/// `$XDG_STATE_HOME/codex-worker`, else `~/.local/state/codex-worker`: outside `/tmp`, where
/// Codex warns it cannot create its PATH helpers.
fn default_state_dir() -> Result<PathBuf, String> {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(state).join("codex-worker"));
    }
    std::env::var_os("HOME")
        .filter(|dir| !dir.is_empty())
        .map(|home| PathBuf::from(home).join(".local/state/codex-worker"))
        .ok_or_else(|| "no --state-dir, and neither XDG_STATE_HOME nor HOME is set".to_owned())
}

/// The host name, the default `--node`.
fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The next report of cluster mode's tasks; never, without cluster mode.
async fn cluster_report(done: &mut Option<mpsc::UnboundedReceiver<Done>>) -> Option<Done> {
    match done {
        Some(done) => done.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs the bridge until the drain completes; returns the exit status.
pub fn run(settings: Settings) -> io::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(serve(settings));
    // A copy to a hung shared directory may still hold a blocking thread: the worker exits
    // anyway (dropping the runtime would wait for it).
    runtime.shutdown_timeout(Duration::from_secs(1));
    status
}

async fn serve(settings: Settings) -> io::Result<u8> {
    // A state or seed directory that cannot be used stops the worker now, not at the first child.
    fs::create_dir_all(&settings.slot.root)?;
    if let Some(seed) = &settings.seed_home {
        fs::read_dir(seed)?;
    }
    let outbound = Outbound::start(settings.queue_bytes)?;
    let mut manager = Manager::new(
        settings.manager.clone(),
        settings.slot.clone(),
        Instant::now(),
    )?;
    let (mut cluster, mut cluster_done) = match &settings.cluster {
        Some(config) => {
            let (cluster, done) = Cluster::open(config.clone())
                .await
                .map_err(io::Error::other)?;
            (Some(cluster), Some(done))
        }
        None => (None, None),
    };
    let (events_tx, mut events) = mpsc::channel(16);
    let mut chunks = input::spawn_stdin_reader()?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut stdin_lines = Lines::new("stdin");
    let mut children = HashMap::new();
    let mut reading = true;
    let mut fx = Effects::default();
    manager.begin(Instant::now(), &mut fx);
    let status = loop {
        if let Some(cluster) = &mut cluster {
            cluster.follow_up(Instant::now(), &mut manager, &mut fx);
        }
        apply(
            &settings,
            fx,
            &mut manager,
            &mut children,
            &events_tx,
            &outbound,
        );
        if manager.failed() {
            break EXIT_CHILD_FAILING;
        }
        if manager.drained() {
            break 0;
        }
        fx = Effects::default();
        let timer = [
            manager.next_deadline(Instant::now()),
            cluster.as_ref().and_then(Cluster::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            biased;
            _ = sigterm.recv() => {
                log::line(format_args!("SIGTERM: draining"));
                manager.begin_drain(Instant::now(), false, &mut fx);
            }
            Some(done) = cluster_report(&mut cluster_done) => {
                if let Some(cluster) = &mut cluster {
                    cluster.done(done, Instant::now(), &mut manager, &mut fx);
                }
            }
            event = events.recv() => match event {
                Some(ChildEvent::Stdout(generation, chunk)) => {
                    manager.child_output(generation, &chunk, Instant::now(), &mut fx);
                }
                Some(ChildEvent::Exited(generation, exit)) => {
                    children.remove(&generation);
                    manager.child_exited(generation, &describe(&exit), Instant::now(), &mut fx);
                }
                // Every sender gone: cannot happen, we hold one.
                None => {}
            },
            chunk = chunks.recv(), if reading && !cluster.as_ref().is_some_and(Cluster::saturated) => {
                let now = Instant::now();
                match chunk {
                    Some(chunk) => {
                        let _: ControlFlow<()> = stdin_lines.feed(&chunk, |line| {
                            match &mut cluster {
                                Some(cluster) => cluster.bus_line(line, now, &mut manager, &mut fx),
                                None => manager.bus_line(line, now, &mut fx),
                            }
                            ControlFlow::Continue(())
                        });
                    }
                    None => {
                        reading = false;
                        let _: ControlFlow<()> = stdin_lines.finish(|line| {
                            match &mut cluster {
                                Some(cluster) => cluster.bus_line(line, now, &mut manager, &mut fx),
                                None => manager.bus_line(line, now, &mut fx),
                            }
                            ControlFlow::Continue(())
                        });
                        log::line(format_args!("end of input: draining"));
                        manager.begin_drain(now, true, &mut fx);
                    }
                }
            }
            () = sleep_until(timer) => {
                let now = Instant::now();
                manager.on_timer(now, &mut fx);
                if let Some(cluster) = &mut cluster {
                    cluster.on_timer(now, &manager);
                }
            }
        }
    };
    if let Some(cluster) = &mut cluster {
        // Published first, so the `turn/completed` lines still held go out once their turn is.
        cluster.release_all().await;
        let mut fx = Effects::default();
        cluster.finish(&mut fx).await;
        outbound.push_all(fx.bus);
    }
    outbound.finish();
    Ok(status)
}

/// Carries out what the manager asked for; a child that cannot even be spawned counts as a
/// death, which the manager handles like any other (and may ask for more).
fn apply(
    settings: &Settings,
    mut fx: Effects,
    manager: &mut Manager,
    children: &mut HashMap<u64, ChildProcess>,
    events: &mpsc::Sender<ChildEvent>,
    outbound: &Outbound,
) {
    loop {
        let mut failed = Vec::new();
        for spawn in fx.spawn {
            let started = spawn
                .dir
                .prepare(settings.seed_home.as_deref())
                .and_then(|()| {
                    ChildProcess::spawn(
                        &settings.command,
                        &spawn.dir.codex_home(),
                        spawn.generation,
                        events.clone(),
                    )
                });
            match started {
                Ok(process) => {
                    children.insert(spawn.generation, process);
                }
                Err(err) => {
                    log::line(format_args!(
                        "cannot start {}: {err}",
                        settings.command.join(" ")
                    ));
                    failed.push((spawn.generation, err));
                }
            }
        }
        for (generation, bytes) in fx.to_child {
            if let Some(process) = children.get(&generation) {
                process.write(bytes);
            }
        }
        for generation in fx.close_stdin {
            if let Some(process) = children.get_mut(&generation) {
                process.close_stdin();
            }
        }
        for (generation, signal) in fx.signal {
            if let Some(process) = children.get(&generation) {
                process.signal(signal);
            }
        }
        outbound.push_all(fx.bus);
        if failed.is_empty() {
            return;
        }
        fx = Effects::default();
        for (generation, err) in failed {
            let how = format!("could not start ({err})");
            manager.child_exited(generation, &how, Instant::now(), &mut fx);
        }
    }
}

fn describe(exit: &io::Result<std::process::ExitStatus>) -> String {
    match exit {
        Ok(status) => status.to_string(),
        Err(err) => format!("unknown ({err})"),
    }
}
