//! Keeps one worker running in each slot: spawn, watch, restart with backoff, give up past the
//! restart limit, stop on the daemon's order.

mod backoff;
pub mod instance;
mod restart_limit;
pub mod spawn;

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_config::Limits;
use codex_bus_protocol::ErrorKind;

use crate::metrics::{RestartReason, SlotMetrics};
use crate::router::{fail_pending, Router};
use crate::slot::{Slot, SlotState};
use backoff::Backoff;
use instance::StopOrder;
use restart_limit::RestartLimit;

/// A worker that stayed up this long is considered healthy again: the backoff starts over.
const STABLE_UPTIME: Duration = Duration::from_secs(60);

/// Supervises slot `slot_index` of pool `pool_index` until the daemon orders the workers to stop
/// or the slot fails for good.
pub async fn supervise(
    router: Arc<Router>,
    pool_index: usize,
    slot_index: usize,
    limits: Limits,
    mut stop: StopOrder,
) {
    let pool = &router.pools()[pool_index];
    let slot: Arc<Slot> = pool.slots[slot_index].clone();
    let config = pool.config.clone();
    let metrics = SlotMetrics::new(&pool.id, slot.index);
    let startup = pool.metrics.startup_duration.clone();
    let mut backoff = Backoff::standard();
    let mut limit = RestartLimit::new(
        limits.max_restarts,
        Duration::from_secs(limits.restart_window_sec),
    );
    loop {
        slot.transition(SlotState::Starting);
        let generation = slot.generation();
        let started = Instant::now();
        let ended = match spawn::spawn_worker(&config, slot.index) {
            Ok(child) => {
                slot.set_pid(child.id());
                slot.transition(SlotState::Ready);
                startup.record(started.elapsed());
                tracing::info!(?slot, pid = child.id(), "worker started");
                let max_line = limits.max_worker_line;
                instance::run(
                    router.clone(),
                    slot.clone(),
                    generation,
                    child,
                    max_line,
                    &mut stop,
                )
                .await
            }
            Err(error) => {
                tracing::error!(?slot, command = %config.command, %error, "worker failed to start");
                instance::Ended {
                    status: None,
                    stopped: false,
                }
            }
        };
        slot.set_pid(None);
        let uptime = started.elapsed();
        if ended.stopped || stop.borrow().is_some() {
            fail_pending(slot.transition(SlotState::Stopped), ErrorKind::ShuttingDown);
            tracing::info!(?slot, status = %describe(ended.status), "worker stopped");
            return;
        }
        if router.draining() {
            // Nothing new will be routed here; a replacement would only be stopped again.
            fail_pending(slot.transition(SlotState::Stopped), ErrorKind::WorkerExited);
            tracing::warn!(?slot, status = %describe(ended.status), "worker exited during the drain; not restarted");
            return;
        }
        fail_pending(slot.transition(SlotState::Backoff), ErrorKind::WorkerExited);
        tracing::warn!(?slot, status = %describe(ended.status), uptime_ms = uptime.as_millis() as u64, "worker exited");
        if uptime >= STABLE_UPTIME {
            backoff.reset();
        }
        if !limit.allow(Instant::now()) {
            metrics.limit_trips.increment(1);
            fail_pending(slot.transition(SlotState::Failed), ErrorKind::WorkerFailed);
            tracing::error!(
                ?slot,
                max_restarts = limits.max_restarts,
                window_sec = limits.restart_window_sec,
                "restart limit exceeded; slot failed"
            );
            return;
        }
        metrics.restarted(restart_reason(ended.status));
        slot.count_restart();
        let delay = backoff.next_delay();
        tracing::info!(
            ?slot,
            delay_ms = delay.as_millis() as u64,
            "restarting worker after backoff"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop_requested(&mut stop) => {
                fail_pending(slot.transition(SlotState::Stopped), ErrorKind::ShuttingDown);
                return;
            }
        }
    }
}

/// Waits for the daemon's stop order; returns the SIGKILL deadline.
pub async fn stop_requested(stop: &mut StopOrder) -> Instant {
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

/// How the previous process ended, as a restart reason (`None`: it never started).
fn restart_reason(status: Option<ExitStatus>) -> RestartReason {
    use std::os::unix::process::ExitStatusExt;
    match status {
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
