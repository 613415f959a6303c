//! bus-bench: the load generator and benchmark scenarios of codex-stdio-bus.
//!
//! It starts the bus under test itself (any binary that takes `--config FILE` plus `--tcp`,
//! `--unix` or `--stdio`, as stdio Bus does), drives it from one `epoll` loop with prebuilt
//! requests, checks that every request gets exactly one reply on the connection that sent it, and
//! reports throughput, latency percentiles and the daemon's CPU time and memory. See
//! docs/benchmarks.md.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod blocking;
mod bus_config;
mod certs;
mod cli;
mod dashboard;
mod engine;
mod ids;
mod io;
mod lines;
mod load;
mod procfs;
mod relay;
mod report;
mod requests;
mod responder;
mod run;
mod scenario;
mod summary;
mod target;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use cli::{Cli, Command, Common, RunArgs};
use load::Load;
use report::{Machine, Report, RowReport, ScenarioReport};
use run::{RunSpec, Settings};
use scenario::{Row, Rows};
use summary::Summary;
use target::Commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Relay(args) = &cli.command {
        return relay::main(args);
    }
    let settings = match settings(&cli.common) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bus-bench: {e}");
            return ExitCode::from(2);
        }
    };
    prepare_process();
    let plan: Vec<(String, Option<scenario::Name>, Vec<Row>)> = match &cli.command {
        Command::Run(args) => vec![("run".into(), None, vec![row_of(args)])],
        Command::Scenario(args) => {
            let which = if args.bus_only {
                Rows::BusOnly
            } else {
                Rows::All
            };
            args.name
                .expand()
                .into_iter()
                .map(|name| {
                    let rows = scenario::rows(name, args.scale, which);
                    (name.as_str().to_owned(), Some(name), rows)
                })
                .collect()
        }
        Command::Relay(_) => unreachable!("handled above"),
    };
    let runs = cli.common.runs as usize;
    let mut report = Report {
        machine: Machine::read(),
        bus_cmd: settings.commands.bus.clone(),
        worker_cmd: std::iter::once(settings.commands.worker.display().to_string())
            .chain(settings.commands.worker_args.iter().cloned())
            .collect(),
        runs,
        auth: settings.auth.is_some(),
        admin: settings.admin,
        scenarios: Vec::new(),
    };
    for (name, which, rows) in plan {
        let rows = run_rows(&name, rows, runs, &settings);
        let summaries: Vec<(String, Option<Summary>)> = rows
            .iter()
            .map(|r| (r.label.clone(), r.summary.clone()))
            .collect();
        let derived = which.map_or_else(Vec::new, |n| scenario::derived(n, &summaries));
        let done = ScenarioReport {
            name,
            rows,
            derived,
        };
        println!("{}", report::table(&done));
        report.scenarios.push(done);
    }
    if let Some(path) = &cli.common.json {
        let text = serde_json::to_string_pretty(&report).expect("the report serialises");
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("bus-bench: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "bus-bench: FAILED: lost, duplicated or misrouted replies, or a run did not complete"
        );
        ExitCode::FAILURE
    }
}

/// Runs every row `runs` times, in rounds (each row once per round), so that a slow drift in
/// the machine's background load touches every row alike and ratios between rows stay fair. A
/// row whose run cannot complete is not run again.
fn run_rows(scenario: &str, rows: Vec<Row>, runs: usize, settings: &Settings) -> Vec<RowReport> {
    let mut reports: Vec<RowReport> = rows
        .into_iter()
        .map(|row| RowReport {
            label: row.label,
            spec: row.spec,
            runs: Vec::new(),
            error: None,
            summary: None,
        })
        .collect();
    for i in 1..=runs {
        for row in reports.iter_mut().filter(|r| r.error.is_none()) {
            eprint!("[{}] {scenario} / {}: run {i}/{runs}: ", clock(), row.label);
            match run::run_once(&row.spec, settings) {
                Ok(r) => {
                    eprintln!(
                        "{:.0} msg/s, p50 {:.1} µs, p99 {:.1} µs, daemon CPU {}, {:?}{}{}",
                        r.throughput,
                        r.latency_us.p50,
                        r.latency_us.p99,
                        r.daemon_cpu_s_per_100k
                            .map_or_else(|| "–".into(), |c| format!("{c:.3} s/100k")),
                        r.tally,
                        r.dashboard.map_or_else(String::new, |d| format!(
                            ", dashboard: {} status events ({} measured)",
                            d.run.status, d.measured_status
                        )),
                        if r.passed { "" } else { " FAILED" }
                    );
                    row.runs.push(r);
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    row.error = Some(e);
                }
            }
        }
    }
    for row in &mut reports {
        row.summary = Summary::of(&row.runs);
    }
    reports
}

/// UTC time of day, to line progress up with other logs of the machine's load.
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day / 60 % 60, day % 60)
}

fn row_of(args: &RunArgs) -> Row {
    let load = Load {
        connections: args.connections as usize,
        window: args.window as usize,
        requests: args.requests as usize,
        sessions: args.sessions,
        payload: args.payload,
        method: args.method.clone(),
    };
    let fronts = args.tls || args.transport == target::Transport::Ws;
    let spec = RunSpec {
        kind: args.target,
        transport: args.transport,
        tls: args.tls,
        client: args.client.unwrap_or(if fronts {
            target::Client::Blocking
        } else {
            target::Client::Epoll
        }),
        load,
        workers: args.workers as usize,
        churn_ms: args.churn_ms,
        allow_errors: args.allow_errors || args.churn_ms.is_some(),
        rss_per_connection: args.rss_per_connection,
    };
    // As the scenarios name the fronts: the client is named only where both could drive it.
    let front = match (spec.transport, spec.tls, spec.client) {
        (target::Transport::Ws, true, _) => "wss".to_owned(),
        (transport, true, _) => format!("{}+tls", transport.as_str()),
        (transport, false, target::Client::Blocking) if transport != target::Transport::Ws => {
            format!("{} blocking", transport.as_str())
        }
        (transport, false, _) => transport.as_str().to_owned(),
    };
    let target = match spec.kind {
        target::Kind::Bus => format!("bus {front}"),
        target::Kind::Relay => format!("relay {}", spec.transport.as_str()),
        target::Kind::Direct => "direct".to_owned(),
        target::Kind::SelfResponder => format!("self {}", spec.transport.as_str()),
    };
    let label = format!(
        "{target} c={} w={} n={} s={} p={}",
        spec.load.connections,
        spec.load.window,
        spec.load.requests,
        spec.load.sessions,
        spec.load.payload
    );
    Row { label, spec }
}

fn settings(common: &Common) -> Result<Settings, String> {
    let own = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let beside = |name: &str| own.with_file_name(name);
    let bus: Vec<String> = match &common.bus_cmd {
        Some(cmd) => cmd.split_whitespace().map(str::to_owned).collect(),
        None => vec![beside("codex-stdio-bus").display().to_string()],
    };
    let program = bus.first().ok_or("--bus-cmd is empty")?;
    if program.contains('/') && !target::executable(Path::new(program)) {
        return Err(format!("bus command {program} is not an executable file"));
    }
    let worker = match &common.worker_cmd {
        Some(path) => path.clone(),
        None => beside("codex-mock"),
    };
    if !target::executable(&worker) {
        return Err(format!(
            "worker {} is not an executable file (build it: cargo build --release --workspace --bins)",
            worker.display()
        ));
    }
    if !(common.stall_timeout > 0.0 && common.stall_timeout.is_finite()) {
        return Err("--stall-timeout must be a positive number of seconds".into());
    }
    Ok(Settings {
        commands: Commands {
            bus,
            relay: vec![own.display().to_string(), "relay".to_owned()],
            worker: std::path::absolute(&worker).map_err(|e| format!("worker path: {e}"))?,
            worker_args: common
                .worker_args
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        },
        auth: if common.auth {
            Some(auth::Credential::generate()?)
        } else {
            None
        },
        admin: dashboard::Admin::of(common.admin, common.dashboard),
        stall: Duration::from_secs_f64(common.stall_timeout),
        linger: Duration::from_millis(common.linger_ms),
    })
}

/// Process-wide setup: room for thousands of sockets, and adoption of orphaned workers so that
/// every process a run started can be ended and reaped.
fn prepare_process() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        // Best effort: a lower limit only matters to the `connections` scenario, which then
        // reports the failed connect.
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!(
            "bus-bench: cannot become a child subreaper ({e}); stray workers may outlive runs"
        );
    }
}
