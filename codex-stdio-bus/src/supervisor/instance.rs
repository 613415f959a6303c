//! One running worker process, from its pipes being attached until it exits or is stopped.

use std::future::Future;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_config::Supervision;
use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::sync::watch;

use super::readiness::{self, NotReady};
use super::STOP_GRACE;
use crate::core::sink::WorkerSink;
use crate::core::slot::Slot;
use crate::io::worker::{self, WorkerStdio};

/// How long replies already in the worker's stdout pipe may take to be read after it exits.
const STDOUT_LINGER: Duration = Duration::from_secs(2);

/// How long a worker whose stdout closed may take to exit on its own before it is killed: a worker
/// that exits closes its stdout first, and its exit status must stay its own.
const STDOUT_CLOSED_GRACE: Duration = Duration::from_secs(1);

/// The daemon's order to its workers: `None` while running; `Some(deadline)` once they must stop,
/// with SIGKILL at the deadline.
pub(crate) type StopOrder = watch::Receiver<Option<Instant>>;

/// Why a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// It exited (or never started) on its own.
    Exited,
    /// The supervisor stopped it: the daemon's stop order, or an order to the slot's supervisor.
    Stopped,
    /// It was killed for not answering its readiness probe in time.
    NotReady,
}

/// How a worker process ended.
pub(crate) struct Ended {
    /// Its exit status, if it could be collected (`None`: it never started, or the status was lost).
    pub status: Option<ExitStatus>,
    /// Why.
    pub ending: Ending,
}

/// What a running worker's supervisor hands it.
pub(crate) struct Instance<'a> {
    /// Where it runs.
    pub slot: &'a Arc<Slot>,
    /// Which process of the slot it is.
    pub generation: u64,
    /// Where its stdout lines and unanswerable requests go.
    pub sink: &'a Arc<dyn WorkerSink>,
    /// `limits.max_worker_line`: its longest stdout line accepted, in bytes.
    pub max_line: usize,
    /// The pool's supervision settings (readiness).
    pub supervision: &'a Supervision,
}

/// Runs `child` until it exits or `halt` resolves (with the SIGKILL deadline of the stop that
/// follows: stdin EOF once its queue is flushed, SIGTERM to its group, SIGKILL at the deadline);
/// `on_ready` runs once the worker counts as ready under the pool's supervision settings.
pub(crate) async fn run(
    instance: Instance<'_>,
    mut child: Child,
    on_ready: impl FnOnce(),
    halt: impl Future<Output = Instant>,
) -> Ended {
    let Instance {
        slot,
        generation,
        sink,
        max_line,
        supervision,
    } = instance;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("spawn_worker pipes all three");
    };
    if let Some(probe) = &supervision.ready_probe {
        // First on the fresh pipe, before anything queued for the slot: the pipe is empty, so
        // this write completes at once; if the worker is already gone, its exit is handled below.
        if let Err(error) = stdin.write_all(&readiness::probe_line(probe)).await {
            tracing::debug!(?slot, %error, "could not send the readiness probe");
        }
    }
    let stdio = WorkerStdio {
        stdin,
        stdout,
        stderr,
    };
    let mut pipes = worker::attach(slot, generation, stdio, sink.clone(), max_line);

    let mut ending = Ending::Exited;
    // When a worker that has not answered its readiness probe is killed for it.
    let not_ready_by = supervision
        .ready_probe
        .as_ref()
        .map(|_| Instant::now() + Duration::from_secs(supervision.ready_timeout_sec));
    let ready = readiness::wait_ready(slot, generation, supervision);
    tokio::pin!(ready);
    tokio::pin!(halt);
    let mut on_ready = Some(on_ready);
    let status = loop {
        tokio::select! {
            status = codex_bus_process::reap(&mut child) => break status.ok(),
            () = pipes.stdout_closed() => break stdout_closed(slot, &mut child).await,
            deadline = &mut halt => {
                ending = Ending::Stopped;
                // A worker still short of its readiness answer gets no longer to stop than it had
                // to become ready (a rolling restart's bound is for ready workers finishing their
                // work): one hung before it was ever ready must not hold a roll, or the reload
                // that fixes its config, for the whole roll_timeout_sec.
                let deadline = match not_ready_by.filter(|_| on_ready.is_some()) {
                    Some(by) => deadline.min(by.max(Instant::now() + STOP_GRACE)),
                    None => deadline,
                };
                break stop_worker(slot, &mut child, deadline).await;
            }
            result = &mut ready, if on_ready.is_some() => match result {
                Ok(()) => on_ready.take().map_or((), |f| f()),
                Err(NotReady) => {
                    tracing::warn!(?slot, timeout_sec = supervision.ready_timeout_sec, "worker did not answer its readiness probe; killing it");
                    ending = Ending::NotReady;
                    signal_group(slot, Signal::SIGKILL);
                    break child.wait().await.ok();
                }
            },
        }
    };
    // Replies the worker wrote just before exiting are still in the pipe: deliver them before its
    // pending requests are failed.
    if !pipes.finish(STDOUT_LINGER).await {
        tracing::warn!(
            ?slot,
            "worker stdout still open after exit (a child of the worker holds it?)"
        );
    }
    Ended { status, ending }
}

/// A worker's stdout ended: it can answer nothing more. One that is exiting anyway gets
/// `STDOUT_CLOSED_GRACE` to do so with its own status; one that keeps running is a failed worker,
/// killed with its process group (its status then says SIGKILL, a failure to every restart policy).
async fn stdout_closed(slot: &Slot, child: &mut Child) -> Option<ExitStatus> {
    if let Ok(status) =
        tokio::time::timeout(STDOUT_CLOSED_GRACE, codex_bus_process::reap(child)).await
    {
        return status.ok();
    }
    tracing::warn!(
        ?slot,
        grace_ms = STDOUT_CLOSED_GRACE.as_millis() as u64,
        "worker closed its stdout but kept running; killing its process group"
    );
    signal_group(slot, Signal::SIGKILL);
    child.wait().await.ok()
}

/// Stops a worker: EOF on its stdin once its queue is flushed, SIGTERM to its group, SIGKILL to the
/// group at `deadline`.
async fn stop_worker(slot: &Slot, child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    slot.queue.close();
    let stopped = codex_bus_process::stop(child, deadline).await;
    if stopped.killed {
        tracing::warn!(
            ?slot,
            "worker did not stop in time; killing its process group"
        );
    }
    stopped.status.ok()
}

/// Sends `signal` to the slot's worker process group, if a worker runs.
pub(crate) fn signal_group(slot: &Slot, signal: Signal) {
    if let Some(pid) = slot.pid() {
        if let Err(error) = codex_bus_process::signal_group(pid, signal) {
            tracing::debug!(?slot, %error, ?signal, "could not signal the worker group");
        }
    }
}
