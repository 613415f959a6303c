//! The daemon's life: bind, spawn the pools, serve clients, then drain and stop in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_config::Config;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::metrics::exporter;
use crate::router::Router;
use crate::signals::Signals;
use crate::supervisor::{self, spawn::resolve_command};
use crate::transport::{self, listen::Endpoint};

/// Workers get at least this long between SIGTERM and SIGKILL, even when the drain ran out.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How often the drain checks whether every in-flight request has been answered.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// How long queued replies may take to reach clients once the workers are stopped.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the daemon ended after a clean start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A signal or stdin EOF asked for the drain: exit status 0.
    Drained,
    /// Every slot of an escalating pool was down: exit status [`Outcome::ESCALATED_STATUS`], so the
    /// service manager restarts the daemon.
    Escalated,
}

impl Outcome {
    /// The exit status after an escalation.
    pub const ESCALATED_STATUS: u8 = 3;
}

/// Runs the daemon until it has drained; `Err` is a startup failure, reported before any worker ran.
///
/// `metrics` is the admin endpoint's HOST:PORT, if any.
pub async fn run(
    config: Config,
    endpoint: Endpoint,
    metrics: Option<String>,
) -> Result<Outcome, String> {
    check_commands(&config)?;
    let signals = Signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    // Bind first: a bad address must fail before a single worker is spawned.
    let bound = transport::listen::bind(&endpoint).await?;
    let admin = match &metrics {
        // The recorder goes in before the router resolves its metric handles.
        Some(address) => Some((admin::bind(address).await?, exporter::install()?)),
        None => None,
    };
    let limits = config.limits;
    let router = Arc::new(Router::new(&config));
    if let Some((listener, handle)) = admin {
        tokio::spawn(exporter::upkeep(handle.clone()));
        tokio::spawn(admin::serve(listener, router.clone(), handle));
    }

    let (stop, stop_order) = watch::channel(None);
    let supervisors = TaskTracker::new();
    for (pool_index, pool) in router.pools().iter().enumerate() {
        for slot_index in 0..pool.slots.len() {
            let task = supervisor::supervise(
                router.clone(),
                pool_index,
                slot_index,
                limits,
                stop_order.clone(),
            );
            supervisors.spawn(task);
        }
        let deadlines =
            supervisor::deadlines::enforce(router.clone(), pool_index, stop_order.clone());
        supervisors.spawn(deadlines);
    }
    supervisors.close();
    let workers: usize = router.pools().iter().map(|p| p.slots.len()).sum();
    tracing::info!(
        pools = router.pools().len(),
        workers,
        version = env!("CARGO_PKG_VERSION"),
        "codex-stdio-bus started"
    );

    let drain = CancellationToken::new();
    tokio::spawn(signals.watch(drain.clone(), router.clone()));
    let writers = TaskTracker::new();
    let serving = tokio::spawn(transport::serve(
        bound,
        router.clone(),
        limits,
        writers.clone(),
        drain.clone(),
    ));

    let outcome = tokio::select! {
        () = drain.cancelled() => Outcome::Drained,
        () = router.escalated() => {
            drain.cancel();
            Outcome::Escalated
        }
    };
    // Stop accepting (dropping the listener removes a Unix socket file), refuse new requests, and
    // keep routing replies to the requests already in flight.
    let _ = serving.await;
    router.begin_drain();
    let deadline = Instant::now() + Duration::from_secs(limits.drain_timeout_sec);
    while router.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let unanswered = router.in_flight();
    tracing::info!(unanswered, "drain finished; stopping workers");
    let _ = stop.send(Some(deadline.max(Instant::now() + STOP_GRACE)));
    supervisors.wait().await;

    router.close_clients();
    writers.close();
    if tokio::time::timeout(FLUSH_TIMEOUT, writers.wait())
        .await
        .is_err()
    {
        tracing::warn!("some clients did not take their last replies in time");
    }
    tracing::info!(?outcome, "codex-stdio-bus stopped");
    Ok(outcome)
}

/// Refuses to start a pool whose program does not exist, rather than crash-looping it.
fn check_commands(config: &Config) -> Result<(), String> {
    for (i, pool) in config.pools.iter().enumerate() {
        if resolve_command(&pool.command, pool.cwd.as_deref()).is_none() {
            return Err(format!(
                "pools[{i}].command: '{}' (pool '{}') is not an executable file or not on PATH",
                pool.command, pool.id
            ));
        }
    }
    Ok(())
}
