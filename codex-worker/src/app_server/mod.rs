//! `--backend app-server`: bus sessions served on one shared `codex app-server` child.
//!
//! The event loop here does the I/O (stdin from the bus, the child's pipes, timers, signals,
//! restarts); every protocol rule lives in [`bridge`].

mod approvals;
mod bridge;
mod errors;
mod held;
mod home;
mod outbound;
mod owners;
mod policy;
mod process;
mod requests;
mod restart;
mod sessions;
mod threads;
mod wire;

use std::io;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::cli::AppServerArgs;
use crate::input;
use crate::lines::Lines;
use crate::log;
use crate::timer::sleep_until;
use bridge::{Bridge, BridgeConfig, Handshake, Out};
use home::SlotDir;
use outbound::Outbound;
use owners::OwnerLog;
use policy::Policy;
use process::{ChildEvent, ChildProcess};
use restart::RestartPolicy;
use sessions::SessionKey;

/// Exit status when the child keeps dying: the bus supervisor restarts the worker.
const EXIT_CHILD_FAILING: u8 = 3;

/// How long a child gets to exit after its stdin closes before its group is killed.
const CHILD_EXIT_GRACE: Duration = Duration::from_secs(2);

/// Everything the backend needs, resolved from the command line and the environment.
#[derive(Debug)]
pub struct Settings {
    command: Vec<String>,
    slot: SlotDir,
    seed_home: Option<PathBuf>,
    bridge: BridgeConfig,
    queue_bytes: usize,
    max_restarts: u32,
    restart_window: Duration,
}

impl Settings {
    /// Resolves `args` for the worker of `pool`/`slot`.
    pub fn new(args: &AppServerArgs, pool: &str, slot: Option<i64>) -> Result<Self, String> {
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
        let seconds = |secs: u64| (secs > 0).then(|| Duration::from_secs(secs));
        Ok(Self {
            command,
            slot: SlotDir::new(&state_dir, pool, slot),
            seed_home: args.seed_home.clone(),
            bridge: BridgeConfig {
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
                policy: Policy::new(&args.allow_methods),
            },
            queue_bytes: args.session_queue_bytes,
            max_restarts: args.max_child_restarts,
            restart_window: Duration::from_secs(args.child_restart_window_sec),
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

/// Runs the backend until the drain completes; returns the exit status.
pub fn run(settings: Settings) -> io::Result<u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(settings))
}

/// The loop's view of the child.
struct ChildSlot {
    process: Option<ChildProcess>,
    generation: u64,
    lines: Lines,
    /// When to start the next child (`None` while one runs or after giving up).
    start_at: Option<Instant>,
    restarts: RestartPolicy,
}

async fn serve(settings: Settings) -> io::Result<u8> {
    settings.slot.prepare(settings.seed_home.as_deref())?;
    let (mut owner_log, owners) = OwnerLog::open(&settings.slot.owner_log())?;
    let outbound = Outbound::start(settings.queue_bytes)?;
    let mut bridge = Bridge::new(settings.bridge.clone(), Instant::now());
    for (thread, session) in owners {
        bridge.restore_owner(&thread, SessionKey::from(session));
    }
    let (events_tx, mut events) = mpsc::channel(16);
    let mut chunks = input::spawn_stdin_reader()?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut stdin_lines = Lines::new("stdin");
    let mut child = ChildSlot {
        process: None,
        generation: 0,
        lines: Lines::new("codex app-server"),
        start_at: Some(Instant::now()),
        restarts: RestartPolicy::new(settings.max_restarts, settings.restart_window),
    };
    let mut reading = true;
    let mut status = 0;
    loop {
        let mut out = Out::default();
        if child.start_at.is_some_and(|at| at <= Instant::now()) && !bridge.draining() {
            start_child(&settings, &mut child, &mut bridge, &events_tx, &mut out);
        }
        let timer = [bridge.next_deadline(), child.start_at]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            biased;
            _ = sigterm.recv() => {
                log::line(format_args!("SIGTERM: draining"));
                bridge.begin_drain(Instant::now(), &mut out);
            }
            event = events.recv() => match event {
                Some(ChildEvent::Stdout(generation, chunk)) if generation == child.generation => {
                    let now = Instant::now();
                    let _: ControlFlow<()> = child.lines.feed(&chunk, |line| {
                        bridge.child_line(line, now, &mut out);
                        ControlFlow::Continue(())
                    });
                }
                Some(ChildEvent::Exited(generation, exit)) if generation == child.generation => {
                    let now = Instant::now();
                    let _: ControlFlow<()> = child.lines.finish(|line| {
                        bridge.child_line(line, now, &mut out);
                        ControlFlow::Continue(())
                    });
                    log::line(format_args!("codex app-server generation {generation} exited: {}", describe(&exit)));
                    child.process = None;
                    bridge.child_exited(now, &mut out);
                    if !bridge.draining() && !child_died(&mut child, &mut bridge, now, &mut out) {
                        status = EXIT_CHILD_FAILING;
                    }
                }
                // Events of an earlier child, or every sender gone (cannot happen: we hold one).
                Some(_) | None => {}
            },
            chunk = chunks.recv(), if reading => {
                let now = Instant::now();
                match chunk {
                    Some(chunk) => {
                        let _: ControlFlow<()> = stdin_lines.feed(&chunk, |line| {
                            bridge.bus_line(line, now, &mut out);
                            ControlFlow::Continue(())
                        });
                    }
                    None => {
                        reading = false;
                        let _: ControlFlow<()> = stdin_lines.finish(|line| {
                            bridge.bus_line(line, now, &mut out);
                            ControlFlow::Continue(())
                        });
                        log::line(format_args!("end of input: draining"));
                        bridge.input_closed(now, &mut out);
                    }
                }
            }
            () = sleep_until(timer) => bridge.on_timer(Instant::now(), &mut out),
        }
        apply(out, &mut child, &outbound, &mut owner_log);
        if status != 0 || (bridge.drained() && child.process.is_none()) {
            break;
        }
        if bridge.drained() {
            stop_child(&mut child, &mut events).await;
            break;
        }
    }
    outbound.finish();
    Ok(status)
}

/// Starts the next child; a child that cannot even be spawned counts as a death.
fn start_child(
    settings: &Settings,
    child: &mut ChildSlot,
    bridge: &mut Bridge,
    events: &mpsc::Sender<ChildEvent>,
    out: &mut Out,
) {
    child.start_at = None;
    child.generation += 1;
    child.lines = Lines::new("codex app-server");
    let now = Instant::now();
    let started = settings
        .slot
        .prepare(settings.seed_home.as_deref())
        .and_then(|()| {
            ChildProcess::spawn(
                &settings.command,
                &settings.slot.codex_home(),
                child.generation,
                events.clone(),
            )
        });
    match started {
        Ok(process) => {
            child.process = Some(process);
            bridge.child_started(child.generation, now, out);
        }
        Err(err) => {
            log::line(format_args!(
                "cannot start {}: {err}",
                settings.command.join(" ")
            ));
            child_died(child, bridge, now, out);
        }
    }
}

/// Schedules a restart after a death; returns `false` when the restart limit is exceeded.
fn child_died(child: &mut ChildSlot, bridge: &mut Bridge, now: Instant, out: &mut Out) -> bool {
    match child.restarts.on_death(now) {
        Some(delay) => {
            log::line(format_args!(
                "restarting codex app-server in {} ms",
                delay.as_millis()
            ));
            child.start_at = Some(now + delay);
            true
        }
        None => {
            log::line(format_args!(
                "codex app-server keeps dying: giving up, exit status {EXIT_CHILD_FAILING}"
            ));
            bridge.give_up("codex app-server keeps exiting", now, out);
            child.start_at = None;
            false
        }
    }
}

/// Carries out what the bridge asked for.
fn apply(out: Out, child: &mut ChildSlot, outbound: &Outbound, owner_log: &mut OwnerLog) {
    if let Some(process) = &child.process {
        process.write(out.child);
        if out.kill_child {
            process.kill();
        }
    }
    for (thread, session) in &out.owned {
        owner_log.append(thread, session);
    }
    outbound.push_all(out.bus);
}

/// Closes the child's stdin and waits for it to exit, killing its group if it lingers.
async fn stop_child(child: &mut ChildSlot, events: &mut mpsc::Receiver<ChildEvent>) {
    let Some(process) = &mut child.process else {
        return;
    };
    process.close_stdin();
    let deadline = tokio::time::Instant::now() + CHILD_EXIT_GRACE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ChildEvent::Exited(generation, exit))) if generation == child.generation => {
                log::line(format_args!("codex app-server exited: {}", describe(&exit)));
                return;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                log::line(format_args!(
                    "codex app-server still running {} s after its stdin closed; killing it",
                    CHILD_EXIT_GRACE.as_secs()
                ));
                process.kill();
                return;
            }
        }
    }
}

fn describe(exit: &io::Result<std::process::ExitStatus>) -> String {
    match exit {
        Ok(status) => status.to_string(),
        Err(err) => format!("unknown ({err})"),
    }
}
