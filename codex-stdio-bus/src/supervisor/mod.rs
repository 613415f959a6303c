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
mod fleet;
pub(crate) mod instance;
mod orders;
pub(crate) mod orphans;
mod readiness;
mod spawn;

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_config::{Limits, PoolConfig, RestartPolicy, Supervision};
use codex_bus_process::{Backoff, RestartLimit};
use codex_bus_protocol::ErrorKind;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::core::sink::WorkerSink;
use crate::core::slot::{Pending, Slot, SlotState};
use crate::core::worker_events::EventKind;
use crate::error::{Error, Kind};
use crate::metrics::{RestartReason, SlotMetrics};
use crate::router::pool::{Pool, Pools};
pub(crate) use fleet::Fleet;
use instance::{Ended, Ending, Instance, StopOrder};
pub(crate) use orders::{Order, Replaced};

/// A stopped worker gets at least this long between SIGTERM and SIGKILL: by the daemon's stop,
/// even when its drain ran out, and by an order (rolling restart, retirement).
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(2);

/// The `data.detail` of the requests a rolled worker leaves unanswered.
const REPLACED_DETAIL: &str = "worker replaced by a rolling restart";

/// The `data.detail` of what a slot removed by a reload still held when its worker was stopped.
const RETIRED_DETAIL: &str = "slot removed by a reload";

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

/// The slot one supervisor keeps a worker in.
struct Post {
    /// The pool the slot belongs to, as it was when the supervisor started (its id and metrics,
    /// which every version of the pool shares).
    pool: Arc<Pool>,
    /// The slot.
    slot: Arc<Slot>,
    /// The config its workers are spawned with, until an [`Order::Replace`] brings another.
    config: Arc<PoolConfig>,
    /// The orders of a reload (see [`Fleet`]).
    orders: mpsc::UnboundedReceiver<Order>,
    /// Answered once the slot's first worker is ready, or is not ([`Fleet::start`]).
    ready: oneshot::Sender<Replaced>,
}

/// Supervises `post`'s slot until the daemon orders the workers to stop (`stop`), the slot is
/// retired, or its pool's policy leaves it empty or failed for good. `pools` is the pool table
/// in force, for the escalation check.
async fn supervise(context: Context, pools: Arc<Pools>, post: Post, mut stop: StopOrder) {
    let Context {
        sink,
        limits,
        escalation,
    } = context;
    let Post {
        pool,
        slot,
        mut config,
        mut orders,
        ready,
    } = post;
    let fail = |pending: Vec<Pending>, kind| sink.fail(pending, kind, None);
    let metrics = SlotMetrics::new(&pool.id, slot.index);
    let startup = pool.metrics.startup_duration.clone();
    let mut backoff = backoff_of(&config.supervision);
    let fresh_limit = || {
        RestartLimit::new(
            limits.max_restarts,
            Duration::from_secs(limits.restart_window_sec),
        )
    };
    let mut limit = fresh_limit();
    // The event a spawn records: the slot's first worker starts, the others restart.
    let mut spawned = EventKind::Start;
    // The answer owed to whoever started the slot (a reload waits for a new slot's first worker),
    // and the one owed to a Replace order: once its worker is ready, or is not. Only the latter
    // exempts a worker that fails first from the pool's policy (see below): a first worker that
    // fails is judged as any other.
    let mut first: Option<oneshot::Sender<Replaced>> = Some(ready);
    let mut replacing: Option<oneshot::Sender<Replaced>> = None;
    loop {
        slot.transition(SlotState::Starting);
        let generation = slot.generation();
        let started = Instant::now();
        let mut ordered: Option<Order> = None;
        let mut spawn_error = None;
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
                    for done in [first.take(), replacing.take()].into_iter().flatten() {
                        let _ = done.send(Replaced::Ready);
                    }
                };
                let instance = Instance {
                    slot: &slot,
                    generation,
                    sink: &sink,
                    max_line: limits.max_worker_line,
                    supervision: &config.supervision,
                };
                let halt = halt(&slot, &mut stop, &mut orders, &mut ordered);
                instance::run(instance, child, on_ready, halt).await
            }
            Err(error) => {
                let context = format!("{slot:?}: worker '{}' failed to start", config.command);
                spawn_error = Some(format!("spawn failed: {error}"));
                let _ = Error::because(Kind::Spawn, context, error).log();
                Ended {
                    status: None,
                    ending: Ending::Exited,
                }
            }
        };
        slot.set_pid(None);
        let uptime = started.elapsed();
        if stop.borrow().is_some() {
            // The daemon's stop wins over any order: an order taken meanwhile goes unanswered.
            fail(slot.transition(SlotState::Stopped), ErrorKind::ShuttingDown);
            tracing::info!(?slot, status = %describe(ended.status), "worker stopped");
            return;
        }
        match ordered {
            Some(Order::Retire { done, .. }) => {
                slot.record(EventKind::Retired, &describe(ended.status));
                let left = slot.transition(SlotState::Stopped);
                sink.fail(left, ErrorKind::ShuttingDown, Some(RETIRED_DETAIL));
                tracing::info!(?slot, status = %describe(ended.status), "worker stopped; slot retired");
                let _ = done.send(());
                return;
            }
            Some(Order::Replace {
                config: next, done, ..
            }) => {
                // Its sessions' state in the process is gone, whoever ended it.
                sink.worker_exited(&slot);
                let old = slot.transition(SlotState::Backoff);
                if ended.ending == Ending::Stopped {
                    slot.record(EventKind::Replaced, &describe(ended.status));
                    sink.fail(old, ErrorKind::WorkerExited, Some(REPLACED_DETAIL));
                    tracing::info!(?slot, status = %describe(ended.status), "worker stopped for a rolling restart");
                } else {
                    let kind = match ended.ending {
                        Ending::NotReady => EventKind::NotReady,
                        _ => EventKind::Exit,
                    };
                    slot.record_exit(kind, describe(ended.status));
                    fail(old, ErrorKind::WorkerExited);
                    tracing::warn!(?slot, status = %describe(ended.status), "worker exited during a rolling restart");
                }
                supersede(&mut replacing, done);
                // The replacement starts afresh, as a new slot's worker would.
                config = next;
                backoff = backoff_of(&config.supervision);
                limit = fresh_limit();
                continue;
            }
            None => {}
        }
        // A replacement that failed to become ready is not the pool's policy to judge: the roll
        // orders the slot back onto the previous config at once, which must find the supervisor
        // resting here (not ended by `never`, failed by the restart limit, or escalating).
        let failed_replacement = replacing.is_some();
        let owed = [first.take(), replacing.take()];
        if owed.iter().any(Option::is_some) {
            let reason = spawn_error.unwrap_or_else(|| describe_ending(&ended));
            for done in owed.into_iter().flatten() {
                let _ = done.send(Replaced::Failed(reason.clone()));
            }
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
        let settings = &config.supervision;
        if !failed_replacement && !restarts(settings.restart_policy, ended.status) {
            fail(slot.transition(SlotState::Exited), ErrorKind::WorkerExited);
            tracing::warn!(?slot, status = %describe(ended.status), policy = ?settings.restart_policy, "worker exited; not restarted by the pool's restart policy");
            escalate_if_down(&pools, &slot, &escalation);
            return;
        }
        fail(slot.transition(SlotState::Backoff), ErrorKind::WorkerExited);
        tracing::warn!(?slot, status = %describe(ended.status), uptime_ms = uptime.as_millis() as u64, "worker exited");
        if uptime >= Duration::from_secs(settings.stable_after_sec) {
            backoff.reset();
        }
        let reason = restart_reason(&ended);
        let failed = !failed_replacement && !limit.allow(Instant::now());
        let rested = if failed {
            metrics.limit_trips.increment(1);
            fail(slot.transition(SlotState::Failed), ErrorKind::WorkerFailed);
            let exceeded = format!(
                "restart limit exceeded ({} restarts in {} s); slot failed",
                limits.max_restarts, limits.restart_window_sec
            );
            if escalate_if_down(&pools, &slot, &escalation) || settings.escalate {
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
            let rested = rest_until(&slot, &*sink, retry, &mut stop, &mut orders).await;
            limit.allow(Instant::now());
            backoff.reset();
            rested
        } else {
            let delay = backoff.next_delay();
            tracing::info!(
                ?slot,
                delay_ms = delay.as_millis() as u64,
                "restarting worker after backoff"
            );
            // Requests queued during the backoff were accepted: even during a drain, the next
            // worker starts (as `Draining`) to answer them.
            rest_until(
                &slot,
                &*sink,
                Instant::now() + delay,
                &mut stop,
                &mut orders,
            )
            .await
        };
        match rested {
            // A failed slot holds no request (it refuses them), so a drain has nothing to wait for.
            Rested::Elapsed if failed && slot.draining() => return,
            Rested::Elapsed => {}
            Rested::Stopped => return,
            Rested::Retired(done) => {
                let _ = done.send(());
                return;
            }
            Rested::Replace { config: next, done } => {
                // No worker runs to finish anything: the replacement starts at once, afresh.
                supersede(&mut replacing, done);
                config = next;
                backoff = backoff_of(&config.supervision);
                limit = fresh_limit();
            }
        }
        metrics.restarted(reason);
        slot.count_restart();
    }
}

/// Resolves with the SIGKILL deadline once the running worker of `slot` must stop: at the
/// daemon's stop order, or once an order (moved into `taken`) has held or retired the slot and
/// the worker has answered its requests, or the order's `within` has passed; the deadline is then
/// the end of `within` (at least [`STOP_GRACE`] away). The daemon's stop wins even then.
async fn halt(
    slot: &Slot,
    stop: &mut StopOrder,
    orders: &mut mpsc::UnboundedReceiver<Order>,
    taken: &mut Option<Order>,
) -> Instant {
    let ordered = async {
        let Some(order) = orders.recv().await else {
            // The fleet is gone: only the daemon's stop ends this worker now.
            return std::future::pending().await;
        };
        let within = order.within();
        match &order {
            Order::Replace { .. } => slot.hold(),
            Order::Retire { .. } => slot.retire(),
        }
        let bound = Instant::now() + within;
        // Kept before the wait: a worker that exits meanwhile still leaves the order to carry out.
        *taken = Some(order);
        if tokio::time::timeout(within, slot.wait_old_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                ?slot,
                roll_timeout_sec = within.as_secs(),
                in_flight = slot.in_flight(),
                "roll_timeout_sec ran out with requests still pending; stopping the worker"
            );
        }
        // As in the daemon's drain, the bound covers the stop too: a worker with nothing pending
        // may still be finishing work of its own (codex-worker's active turns, whose `turn/start`
        // was answered long ago) once its stdin is closed, so SIGKILL waits for the rest of the
        // bound, and at least STOP_GRACE after SIGTERM.
        bound.max(Instant::now() + STOP_GRACE)
    };
    tokio::select! {
        biased;
        deadline = stop_requested(stop) => deadline,
        deadline = ordered => deadline,
    }
}

/// Keeps `done` as the answer owed for the latest Replace; one still owed for an earlier
/// Replace is answered `Failed`: its replacement is itself being replaced before it was ready.
fn supersede(owed: &mut Option<oneshot::Sender<Replaced>>, done: oneshot::Sender<Replaced>) {
    if let Some(earlier) = owed.replace(done) {
        let reason = "replaced again before it was ready".to_owned();
        let _ = earlier.send(Replaced::Failed(reason));
    }
}

/// How a rest between workers ended.
enum Rested {
    /// Its time passed: the next worker starts.
    Elapsed,
    /// The daemon's stop order came first; the slot is stopped.
    Stopped,
    /// A Retire order came; the slot is stopped, the order is to be answered on this.
    Retired(oneshot::Sender<()>),
    /// A Replace order came: the next worker starts at once with `config`.
    Replace {
        /// The pool's new config.
        config: Arc<PoolConfig>,
        /// Answered once the replacement is ready (or is not).
        done: oneshot::Sender<Replaced>,
    },
}

/// Waits until `until`, the daemon's stop order, or an order. On the stop order, or a Retire,
/// the requests queued in `slot` are refused through `sink` with `shutting_down` (no worker will
/// come to answer them) and the slot is stopped.
async fn rest_until(
    slot: &Slot,
    sink: &dyn WorkerSink,
    until: Instant,
    stop: &mut StopOrder,
    orders: &mut mpsc::UnboundedReceiver<Order>,
) -> Rested {
    let order = async {
        match orders.recv().await {
            Some(order) => order,
            // The fleet is gone: only the daemon's stop or the time ends the rest now.
            None => std::future::pending().await,
        }
    };
    let stopped = |slot: &Slot| {
        sink.fail(
            slot.transition(SlotState::Stopped),
            ErrorKind::ShuttingDown,
            None,
        );
    };
    tokio::select! {
        biased;
        _ = stop_requested(stop) => {
            stopped(slot);
            Rested::Stopped
        }
        order = order => match order {
            Order::Retire { done, .. } => {
                slot.retire();
                stopped(slot);
                slot.record(EventKind::Retired, "no worker was running");
                tracing::info!(?slot, "slot retired");
                Rested::Retired(done)
            }
            Order::Replace { config, done, .. } => Rested::Replace { config, done },
        },
        () = tokio::time::sleep_until(until.into()) => Rested::Elapsed,
    }
}

/// Escalates if every active slot of `slot`'s pool (its version in force in `pools`) is down
/// and the pool is configured to: cancels `escalation`, which makes the daemon drain and exit
/// non-zero. True if the pool escalates.
fn escalate_if_down(pools: &Pools, slot: &Slot, escalation: &CancellationToken) -> bool {
    let Some(pool) = pools.get(slot.address.pool) else {
        return false;
    };
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

/// How a worker ended, as the reason its replacement failed.
fn describe_ending(ended: &Ended) -> String {
    match ended.ending {
        Ending::NotReady => format!("{} (not ready in time)", describe(ended.status)),
        _ => format!("exited: {}", describe(ended.status)),
    }
}
