//! Layer 4, supervision: keeps one worker running in each slot: spawn, watch, restart per the
//! pool's policy with jittered backoff, mark the slot failed past the restart limit and try it
//! again after the window (or escalate), stop on the daemon's order.
//!
//! A supervisor does not hold the router: it drives its slot's state (core), attaches the worker's
//! pipes (io), and hands what the worker writes, and the requests it will never answer, to a
//! `WorkerSink`.
//!
//! Imports: the core, the pools (router), the worker pipes (io) and the metrics and error leaves.

pub(crate) mod deadlines;
pub(crate) mod instance;
pub(crate) mod orphans;
mod readiness;
mod spawn;

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_config::{Limits, RestartPolicy, Supervision};
use codex_bus_process::{Backoff, RestartLimit};
use codex_bus_protocol::ErrorKind;
use tokio_util::sync::CancellationToken;

use crate::core::sink::WorkerSink;
use crate::core::slot::{Pending, Slot, SlotState};
use crate::core::worker_events::EventKind;
use crate::error::{Error, Kind};
use crate::metrics::{RestartReason, SlotMetrics};
use crate::router::pool::Pool;
use instance::{Ended, Ending, Instance, StopOrder};

/// What every supervisor of the daemon shares.
#[derive(Clone)]
pub(crate) struct Context {
    /// Where workers' output and their unanswerable requests go.
    pub sink: Arc<dyn WorkerSink>,
    /// The restart limit and line limits.
    pub limits: Limits,
    /// Cancelled when a pool escalates: every slot of it is down and it is set to `escalate`.
    pub escalation: CancellationToken,
}

/// Supervises slot `slot_index` of `pool` until the daemon orders the workers to stop.
pub(crate) async fn supervise(
    context: Context,
    pool: Arc<Pool>,
    slot_index: usize,
    mut stop: StopOrder,
) {
    let Context {
        sink,
        limits,
        escalation,
    } = context;
    let fail = |pending: Vec<Pending>, kind| sink.fail(pending, kind, None);
    let slot: Arc<Slot> = pool.slots[slot_index].clone();
    let config = pool.config.clone();
    let settings = &config.supervision;
    let metrics = SlotMetrics::new(&pool.id, slot.index);
    let startup = pool.metrics.startup_duration.clone();
    let mut backoff = backoff_of(settings);
    let mut limit = RestartLimit::new(
        limits.max_restarts,
        Duration::from_secs(limits.restart_window_sec),
    );
    // The event a spawn records: the slot's first worker starts, the others restart.
    let mut spawned = EventKind::Start;
    loop {
        slot.transition(SlotState::Starting);
        let generation = slot.generation();
        let started = Instant::now();
        let ended = match spawn::spawn_worker(&config, slot.index) {
            Ok(child) => {
                slot.set_pid(child.id());
                tracing::info!(?slot, pid = child.id(), "worker started");
                slot.record(spawned, &format!("pid {}", child.id().unwrap_or(0)));
                spawned = EventKind::Restart;
                let on_ready = || {
                    slot.transition(SlotState::Ready);
                    startup.record(started.elapsed());
                    tracing::info!(?slot, "worker ready");
                };
                let instance = Instance {
                    slot: &slot,
                    generation,
                    sink: &sink,
                    max_line: limits.max_worker_line,
                    supervision: settings,
                };
                instance::run(instance, child, on_ready, &mut stop).await
            }
            Err(error) => {
                let context = format!("{slot:?}: worker '{}' failed to start", config.command);
                let _ = Error::because(Kind::Spawn, context, error).log();
                Ended {
                    status: None,
                    ending: Ending::Exited,
                }
            }
        };
        slot.set_pid(None);
        let uptime = started.elapsed();
        if ended.ending == Ending::Stopped || stop.borrow().is_some() {
            fail(slot.transition(SlotState::Stopped), ErrorKind::ShuttingDown);
            tracing::info!(?slot, status = %describe(ended.status), "worker stopped");
            return;
        }
        if slot.draining() {
            // Nothing new will be routed here; a replacement would only be stopped again.
            fail(slot.transition(SlotState::Stopped), ErrorKind::WorkerExited);
            tracing::warn!(?slot, status = %describe(ended.status), "worker exited during the drain; not restarted");
            return;
        }
        sink.worker_exited(&slot);
        match ended.ending {
            Ending::NotReady => slot.record_exit(
                EventKind::NotReady,
                format!("{} (not ready in time)", describe(ended.status)),
            ),
            _ => slot.record_exit(EventKind::Exit, describe(ended.status)),
        }
        if !restarts(settings.restart_policy, ended.status) {
            fail(slot.transition(SlotState::Exited), ErrorKind::WorkerExited);
            tracing::warn!(?slot, status = %describe(ended.status), policy = ?settings.restart_policy, "worker exited; not restarted by the pool's restart policy");
            escalate_if_down(&pool, &escalation);
            return;
        }
        fail(slot.transition(SlotState::Backoff), ErrorKind::WorkerExited);
        tracing::warn!(?slot, status = %describe(ended.status), uptime_ms = uptime.as_millis() as u64, "worker exited");
        if uptime >= Duration::from_secs(settings.stable_after_sec) {
            backoff.reset();
        }
        let reason = restart_reason(&ended);
        if !limit.allow(Instant::now()) {
            metrics.limit_trips.increment(1);
            fail(slot.transition(SlotState::Failed), ErrorKind::WorkerFailed);
            let exceeded = format!(
                "restart limit exceeded ({} restarts in {} s); slot failed",
                limits.max_restarts, limits.restart_window_sec
            );
            if escalate_if_down(&pool, &escalation) || settings.escalate {
                slot.record(EventKind::Failed, &exceeded);
                // The outer supervisor (systemd, Kubernetes) recovers an escalating pool.
                tracing::error!(
                    ?slot,
                    max_restarts = limits.max_restarts,
                    window_sec = limits.restart_window_sec,
                    "restart limit exceeded; slot failed"
                );
                return;
            }
            let retry = limit.next_allowed(Instant::now());
            let retry_in = retry.saturating_duration_since(Instant::now());
            let again = format!("{exceeded} until tried again in {} s", retry_in.as_secs());
            slot.record(EventKind::Failed, &again);
            tracing::error!(
                ?slot,
                max_restarts = limits.max_restarts,
                window_sec = limits.restart_window_sec,
                retry_in_ms = retry_in.as_millis() as u64,
                "restart limit exceeded; slot failed until the window allows a restart"
            );
            // A failed slot holds no request (it refuses them), so a drain has nothing to wait for.
            if !rest_until(&slot, &*sink, retry, &mut stop).await || slot.draining() {
                return;
            }
            limit.allow(Instant::now());
            backoff.reset();
        } else {
            let delay = backoff.next_delay();
            tracing::info!(
                ?slot,
                delay_ms = delay.as_millis() as u64,
                "restarting worker after backoff"
            );
            // Requests queued during the backoff were accepted: even during a drain, the next
            // worker starts (as `Draining`) to answer them.
            if !rest_until(&slot, &*sink, Instant::now() + delay, &mut stop).await {
                return;
            }
        }
        metrics.restarted(reason);
        slot.count_restart();
    }
}

/// Waits until `until`; false if the daemon's stop order came first, in which case the requests
/// queued in `slot` are refused through `sink` with `shutting_down` (no worker will come to
/// answer them).
async fn rest_until(
    slot: &Slot,
    sink: &dyn WorkerSink,
    until: Instant,
    stop: &mut StopOrder,
) -> bool {
    tokio::select! {
        () = tokio::time::sleep_until(until.into()) => true,
        _ = stop_requested(stop) => {
            sink.fail(slot.transition(SlotState::Stopped), ErrorKind::ShuttingDown, None);
            false
        }
    }
}

/// Escalates if every slot of `pool` is down and the pool is configured to: cancels `escalation`,
/// which makes the daemon drain and exit non-zero. True if the pool escalates.
fn escalate_if_down(pool: &Pool, escalation: &CancellationToken) -> bool {
    if !pool.config.supervision.escalate || !pool.all_down() {
        return false;
    }
    if !escalation.is_cancelled() {
        tracing::error!(pool = %pool.id, "every worker of the pool is down; escalating: the daemon exits");
        escalation.cancel();
    }
    true
}

/// The pool's backoff schedule.
fn backoff_of(settings: &Supervision) -> Backoff {
    Backoff::new(
        Duration::from_millis(settings.backoff_initial_ms),
        Duration::from_millis(settings.backoff_max_ms),
        f64::from(settings.backoff_jitter_pct) / 100.0,
    )
    .expect("the config checks backoff_max_ms >= backoff_initial_ms and backoff_jitter_pct <= 100")
}

/// Whether `policy` restarts a worker that ended with `status` (`None`: it never started, or its
/// status was lost; both count as failures).
fn restarts(policy: RestartPolicy, status: Option<ExitStatus>) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !status.is_some_and(|s| s.success()),
        RestartPolicy::Never => false,
    }
}

/// Waits for the daemon's stop order; returns the SIGKILL deadline.
pub(crate) async fn stop_requested(stop: &mut StopOrder) -> Instant {
    loop {
        if let Some(deadline) = *stop.borrow_and_update() {
            return deadline;
        }
        if stop.changed().await.is_err() {
            // The daemon dropped the sender without an order: it is gone, stop at once.
            return Instant::now();
        }
    }
}

/// How the previous process ended, as a restart reason (no status: it never started).
fn restart_reason(ended: &Ended) -> RestartReason {
    use std::os::unix::process::ExitStatusExt;
    match ended.status {
        _ if ended.ending == Ending::NotReady => RestartReason::NotReady,
        None => RestartReason::SpawnFailed,
        Some(s) if s.signal().is_some() => RestartReason::Signal,
        Some(s) if s.success() => RestartReason::ExitZero,
        Some(_) => RestartReason::ExitNonzero,
    }
}

/// An exit status for logs.
fn describe(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "unknown".to_owned(), |s| s.to_string())
}
