//! One run: start the target, warm up, measure one phase, read the counters, end the target.

use std::time::Duration;

use hdrhistogram::Histogram;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::auth::Credential;
use crate::blocking;
use crate::dashboard::{self, Admin};
use crate::engine::{Churn, Engine, Outcome, Phase, Tally};
use crate::ids::{MEASURED, WARMUP};
use crate::load::{Load, Sessions};
use crate::procfs;
use crate::requests;
use crate::requests::Prebuilt;
use crate::target::{Client, Commands, Connections, Kind, Launch, Target, Transport};

/// The daemon's default `limits.max_connections`: a load with more connections raises it (only
/// then, so that other buses never see the key).
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Connections beyond the load's that the cap leaves room for: the readiness probe's, which the
/// daemon may not have closed yet when the load connects.
const SPARE_CONNECTIONS: usize = 16;

/// How long the daemon gets to close the sockets of clients that left, before the RSS it keeps
/// is read anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Warm-up requests before the clock starts: they open the connections' state in the bus, start
/// the workers' first reads and grow every buffer to its working size.
const MAX_WARMUP: usize = 10_000;

/// Everything that defines one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunSpec {
    /// What is driven.
    pub kind: Kind,
    /// How it is reached.
    pub transport: Transport,
    /// TLS on the bus's listener (the blocking client only).
    pub tls: bool,
    /// The client loop that drives the connections.
    pub client: Client,
    /// The traffic.
    pub load: Load,
    /// Worker instances in the bus's pool (`direct` runs one per connection).
    pub workers: usize,
    /// Kill a worker this often (ms) during the measured phase.
    pub churn_ms: Option<u64>,
    /// Whether error replies are acceptable (they are under churn).
    pub allow_errors: bool,
    /// Measure the daemon's memory per connection: its RSS with every connection open after the
    /// measured phase against its RSS before the first connection, and (once the connections are
    /// closed and the daemon has closed their sockets) the RSS it keeps.
    pub rss_per_connection: bool,
}

/// Settings shared by every run of an invocation.
pub struct Settings {
    /// The programs under test.
    pub commands: Commands,
    /// Give up when no reply arrived for this long.
    pub stall: Duration,
    /// Keep reading this long after the last reply, to catch duplicates.
    pub linger: Duration,
    /// `--auth`: the token bus rows authenticate with.
    pub auth: Option<Credential>,
    /// `--admin` / `--dashboard`: the bus rows' admin endpoint and dashboard stream.
    pub admin: Admin,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Measured requests sent.
    pub requests: usize,
    /// Reply counts.
    pub tally: Tally,
    /// Reply counts of the warm-up before the clock started.
    pub warmup: Tally,
    /// Whether the run stopped waiting for replies that never came.
    pub stalled: bool,
    /// Workers killed during the run.
    pub kills: u64,
    /// First request written to last reply read, seconds.
    pub wall_s: f64,
    /// Replies per second.
    pub throughput: f64,
    /// Round-trip latency.
    pub latency_us: Percentiles,
    /// Daemon CPU seconds per 100k round trips (bus runs).
    pub daemon_cpu_s_per_100k: Option<f64>,
    /// Workers' CPU seconds per 100k round trips (not measurable when workers were killed).
    pub workers_cpu_s_per_100k: Option<f64>,
    /// The generator's own CPU seconds per 100k round trips (with the self responder's).
    pub client_cpu_s_per_100k: f64,
    /// The daemon's peak resident set, kB.
    pub daemon_peak_rss_kb: Option<u64>,
    /// The daemon's resident set before the measured phase, kB.
    pub daemon_rss_before_kb: Option<u64>,
    /// The daemon's resident set after the last reply, kB.
    pub daemon_rss_after_kb: Option<u64>,
    /// RSS growth per session opened in the measured phase, bytes (`unique` sessions only).
    pub rss_bytes_per_session: Option<f64>,
    /// The daemon's resident set once ready, before the run's first connection, kB.
    pub daemon_rss_ready_kb: Option<u64>,
    /// With `rss_per_connection`: RSS after the last reply (every connection still open) minus
    /// RSS once ready, per connection, bytes.
    pub rss_bytes_per_connection: Option<f64>,
    /// With `rss_per_connection`: the daemon's resident set after the connections closed and it
    /// closed their sockets, kB (what its allocator kept).
    pub daemon_rss_closed_kb: Option<u64>,
    /// With `rss_per_connection`: `daemon_rss_closed_kb` minus RSS once ready, per connection,
    /// bytes.
    pub rss_bytes_kept_per_connection: Option<f64>,
    /// With `--dashboard`: the `status` events the stream received (bus runs).
    pub dashboard: Option<DashboardSeen>,
    /// Exactly one reply per request, to the right connection (and no error where none is allowed).
    pub passed: bool,
}

/// What the dashboard stream of a run delivered.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct DashboardSeen {
    /// Over the whole run, from before the warm-up (the first is sent at once).
    pub run: dashboard::Seen,
    /// `status` events during the measured phase (ticks come every 500 ms, so a measured phase
    /// shorter than that may see none).
    pub measured_status: u64,
}

/// Counter readings at one instant.
#[derive(Clone, Copy, Default)]
struct Counters {
    daemon_cpu: Option<u64>,
    workers_cpu: Option<u64>,
    own_cpu: u64,
    rss_kb: Option<u64>,
    peak_kb: Option<u64>,
    status_events: Option<u64>,
}

impl Counters {
    fn read(daemon: Option<u32>, workers: &[u32], stream: Option<&dashboard::Stream>) -> Counters {
        let workers_cpu = workers
            .iter()
            .map(|&w| procfs::cpu_ns(w))
            .sum::<Option<u64>>();
        Counters {
            daemon_cpu: daemon.and_then(procfs::cpu_ns),
            workers_cpu,
            own_cpu: procfs::own_cpu_ns(),
            rss_kb: daemon.and_then(|d| procfs::status_kb(d, "VmRSS")),
            peak_kb: daemon.and_then(|d| procfs::status_kb(d, "VmHWM")),
            status_events: stream.map(dashboard::Stream::status_events),
        }
    }
}

/// Runs `spec` once.
pub fn run_once(spec: &RunSpec, settings: &Settings) -> Result<RunResult, String> {
    let load = &spec.load;
    let mut limits = serde_json::Map::new();
    // A run ends with SIGTERM and gives the daemon 5 s to exit (target.rs, STOP_GRACE), in which
    // a profiler wrapped around it writes its data: no balancer here needs the drain's grace.
    limits.insert("drain_grace_sec".into(), 0.into());
    if spec.churn_ms.is_some() {
        // Killed workers must come back for the whole run, not fail after the default 5 restarts.
        limits.insert("max_restarts".into(), 1_000_000.into());
    }
    if load.connections + SPARE_CONNECTIONS > DEFAULT_MAX_CONNECTIONS {
        let cap = load.connections + SPARE_CONNECTIONS;
        limits.insert("max_connections".into(), cap.into());
    }
    if spec.client == Client::Blocking && (spec.churn_ms.is_some() || spec.rss_per_connection) {
        return Err(
            "the blocking client measures round trips only: no churn, no RSS per connection".into(),
        );
    }
    let launch = Launch {
        kind: spec.kind,
        transport: spec.transport,
        tls: spec.tls,
        client: spec.client,
        connections: load.connections,
        workers: spec.workers,
        limits,
        auth: settings.auth.as_ref(),
        admin: settings.admin,
        commands: &settings.commands,
    };
    let (mut target, connections) = Target::start(&launch)?;
    let mut engine = Driver::new(connections).map_err(|e| format!("event loop: {e}"))?;
    let io_error = |e: std::io::Error| format!("event loop: {e}");

    let mut warm_load = load.with_requests(load.requests.min(MAX_WARMUP));
    if load.sessions == Sessions::Unique {
        // The measured phase is to open every session from an empty table (its RSS growth is
        // the figure), so the warm-up opens none.
        warm_load.sessions = Sessions::None;
    }
    let warm = engine
        .run(
            requests::build(&warm_load, WARMUP),
            Phase {
                tag: WARMUP,
                window: load.window,
                stall: settings.stall,
                linger: Duration::ZERO,
                churn: None,
                on_done: &mut || {},
            },
        )
        .map_err(io_error)?;

    let measured = requests::build(load, MEASURED);
    let daemon = target.daemon_pid();
    let workers = target.worker_pids();
    let stream = target.dashboard();
    let before = Counters::read(daemon, &workers, stream);
    let mut after = None;
    let mut victim = 0usize;
    let mut kill_worker = || {
        let alive = target.worker_pids();
        let Some(&pid) = alive.get(victim % alive.len().max(1)) else {
            return false;
        };
        victim += 1;
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok()
    };
    let outcome = engine
        .run(
            measured,
            Phase {
                tag: MEASURED,
                window: load.window,
                stall: settings.stall,
                linger: settings.linger,
                churn: spec.churn_ms.map(|ms| Churn {
                    every: Duration::from_millis(ms),
                    kill: &mut kill_worker,
                }),
                on_done: &mut || after = Some(Counters::read(daemon, &workers, stream)),
            },
        )
        .map_err(io_error)?;
    let after = after.unwrap_or_else(|| Counters::read(daemon, &workers, stream));
    drop(engine);
    let ready = target.daemon_at_ready();
    let closed_kb = match (spec.rss_per_connection, daemon, ready) {
        (true, Some(pid), Some(ready)) => rss_once_closed(pid, ready.fds),
        _ => None,
    };
    let seen = target.close_dashboard();
    target.stop()?;
    let mut result = result(spec, &warm.tally, &outcome, &before, &after);
    if let Some(seen) = seen {
        result.dashboard = Some(DashboardSeen {
            run: seen,
            measured_status: after
                .status_events
                .zip(before.status_events)
                .map_or(0, |(a, b)| a - b),
        });
        // A page that lost its stream was not open for the whole run.
        result.passed &= !seen.ended_early;
    }
    result.daemon_rss_ready_kb = ready.map(|r| r.rss_kb);
    if spec.rss_per_connection {
        let per_connection = |kb: Option<u64>| {
            let grown = kb?.checked_sub(ready?.rss_kb)?;
            Some(grown as f64 * 1024.0 / load.connections as f64)
        };
        result.rss_bytes_per_connection = per_connection(after.rss_kb);
        result.daemon_rss_closed_kb = closed_kb;
        result.rss_bytes_kept_per_connection = per_connection(closed_kb);
    }
    Ok(result)
}

/// Whichever client loop drives the run's connections.
enum Driver {
    Epoll(Engine),
    Blocking(blocking::Client),
}

impl Driver {
    fn new(connections: Connections) -> std::io::Result<Driver> {
        match connections {
            Connections::Streams(streams) => Ok(Driver::Epoll(Engine::new(streams)?)),
            Connections::Blocking(clients) => {
                let [client]: [blocking::Client; 1] = clients.try_into().map_err(|_| {
                    std::io::Error::other("the blocking client drives exactly one connection")
                })?;
                Ok(Driver::Blocking(client))
            }
        }
    }

    fn run(&mut self, requests: Vec<Prebuilt>, phase: Phase<'_>) -> std::io::Result<Outcome> {
        match self {
            Driver::Epoll(engine) => engine.run(requests, phase),
            Driver::Blocking(client) => client.run(requests, phase),
        }
    }
}

/// The daemon's `VmRSS` (kB) once it holds no more fds than `fds_at_ready` (it has closed the
/// sockets of the clients that left, so their state is freed), or after [`CLOSE_TIMEOUT`].
fn rss_once_closed(pid: u32, fds_at_ready: usize) -> Option<u64> {
    let start = std::time::Instant::now();
    while procfs::open_fds(pid).is_some_and(|fds| fds > fds_at_ready)
        && start.elapsed() < CLOSE_TIMEOUT
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Writer tasks end just after their sockets close; a beat for them too.
    std::thread::sleep(Duration::from_millis(100));
    procfs::status_kb(pid, "VmRSS")
}

/// A warm-up that loses replies fails the run, but the measured phase still runs: a bus that
/// drops messages gets its figures (and its losses) reported rather than a bare failure.
fn result(
    spec: &RunSpec,
    warmup: &Tally,
    outcome: &Outcome,
    before: &Counters,
    after: &Counters,
) -> RunResult {
    let n = spec.load.requests;
    let per_100k = |ns: u64| ns as f64 / 1e9 / n.max(1) as f64 * 100_000.0;
    let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
    let wall_s = outcome.elapsed.as_secs_f64();
    let answered = outcome.tally.ok + outcome.tally.errors;
    let rss_growth = delta(before.rss_kb, after.rss_kb);
    let tally = outcome.tally;
    RunResult {
        requests: n,
        tally,
        warmup: *warmup,
        stalled: outcome.stalled,
        kills: outcome.kills,
        wall_s,
        throughput: answered as f64 / wall_s.max(1e-9),
        latency_us: Percentiles::of(&outcome.latency),
        daemon_cpu_s_per_100k: delta(before.daemon_cpu, after.daemon_cpu).map(per_100k),
        workers_cpu_s_per_100k: if outcome.kills == 0 {
            delta(before.workers_cpu, after.workers_cpu).map(per_100k)
        } else {
            None
        },
        client_cpu_s_per_100k: per_100k(after.own_cpu.saturating_sub(before.own_cpu)),
        daemon_peak_rss_kb: after.peak_kb,
        daemon_rss_before_kb: before.rss_kb,
        daemon_rss_after_kb: after.rss_kb,
        rss_bytes_per_session: match spec.load.sessions {
            Sessions::Unique => rss_growth.map(|kb| kb as f64 * 1024.0 / n.max(1) as f64),
            _ => None,
        },
        daemon_rss_ready_kb: None,
        rss_bytes_per_connection: None,
        daemon_rss_closed_kb: None,
        rss_bytes_kept_per_connection: None,
        dashboard: None,
        passed: tally.failures() == 0
            && warmup.failures() == 0
            && warmup.errors == 0
            && !outcome.stalled
            && (spec.allow_errors || tally.errors == 0),
    }
}
