//! One running worker process: its stdin writer, stdout reader and stderr logger, until it exits.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_config::Supervision;
use codex_bus_protocol::{Frame, LineFramer};
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::watch;

use super::readiness::{self, NotReady};
use crate::metrics::{self, Direction, Discard};
use crate::router::Router;
use crate::slot::Slot;

/// Longest worker stderr line logged; a longer one is replaced by a note (it is not buffered).
const STDERR_LINE: usize = 16 * 1024;

/// How long replies already in the worker's stdout pipe may take to be read after it exits.
const STDOUT_LINGER: Duration = Duration::from_secs(2);

/// The daemon's order to its workers: `None` while running; `Some(deadline)` once they must stop,
/// with SIGKILL at the deadline.
pub type StopOrder = watch::Receiver<Option<Instant>>;

/// How a worker process ended.
pub struct Ended {
    /// Its exit status, if it could be collected.
    pub status: Option<ExitStatus>,
    /// Whether the daemon stopped it (rather than it exiting on its own).
    pub stopped: bool,
    /// Whether it was killed for not answering its readiness probe in time.
    pub not_ready: bool,
}

/// Runs `child` in `slot` until it exits or the daemon stops it; `on_ready` runs once the worker
/// counts as ready under `supervision`.
pub async fn run(
    router: Arc<Router>,
    slot: Arc<Slot>,
    generation: u64,
    mut child: Child,
    supervision: &Supervision,
    on_ready: impl FnOnce(),
    stop: &mut StopOrder,
) -> Ended {
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
    let max_line = router.max_worker_line();
    let writer = tokio::spawn({
        let slot = slot.clone();
        async move {
            let written = metrics::get().bytes(Direction::ToWorker);
            // What the worker could not take is answered when it exits: its requests are pending.
            if let Err(failed) = slot.queue.drain_into(&mut stdin, None, written).await {
                tracing::debug!(?slot, error = %failed.error, "worker stdin closed");
            }
        }
    });
    let reader = tokio::spawn(read_stdout(
        router,
        slot.clone(),
        generation,
        stdout,
        max_line,
    ));
    tokio::spawn(log_stderr(slot.clone(), stderr));

    let (mut stopped, mut not_ready) = (false, false);
    let ready = readiness::wait_ready(&slot, generation, supervision);
    tokio::pin!(ready);
    let mut on_ready = Some(on_ready);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.ok(),
            deadline = super::stop_requested(stop) => {
                stopped = true;
                break stop_worker(&slot, &mut child, deadline).await;
            }
            result = &mut ready, if on_ready.is_some() => match result {
                Ok(()) => on_ready.take().map_or((), |f| f()),
                Err(NotReady) => {
                    tracing::warn!(?slot, timeout_sec = supervision.ready_timeout_sec, "worker did not answer its readiness probe; killing it");
                    not_ready = true;
                    signal_group(&slot, Signal::SIGKILL);
                    break child.wait().await.ok();
                }
            },
        }
    };
    // Replies the worker wrote just before exiting are still in the pipe: deliver them before its
    // pending requests are failed.
    if tokio::time::timeout(STDOUT_LINGER, reader).await.is_err() {
        tracing::warn!(
            ?slot,
            "worker stdout still open after exit (a child of the worker holds it?)"
        );
    }
    writer.abort();
    Ended {
        status,
        stopped,
        not_ready,
    }
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
pub fn signal_group(slot: &Slot, signal: Signal) {
    if let Some(pid) = slot.pid() {
        if let Err(error) = codex_bus_process::signal_group(pid, signal) {
            tracing::debug!(?slot, %error, ?signal, "could not signal the worker group");
        }
    }
}

/// Routes every line the worker writes on stdout until it closes.
async fn read_stdout(
    router: Arc<Router>,
    slot: Arc<Slot>,
    generation: u64,
    mut stdout: impl AsyncRead + Unpin,
    max_line: usize,
) {
    let mut framer = LineFramer::new(max_line);
    let (bytes, messages) = (
        metrics::get().bytes(Direction::FromWorker),
        metrics::get().messages(Direction::FromWorker),
    );
    loop {
        match stdout.read(framer.spare()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.increment(n as u64);
                framer.filled(n);
            }
        }
        let read_at = Instant::now();
        while let Some(frame) = framer.next_frame() {
            messages.increment(1);
            match frame {
                Frame::Line(line) => router.worker_line(&slot, generation, line, read_at),
                Frame::Oversize { seen } => {
                    tracing::warn!(
                        ?slot,
                        seen,
                        max_line,
                        "worker line over max_worker_line skipped"
                    );
                    metrics::get().dropped(Discard::OversizeWorkerLine);
                }
            }
        }
    }
    if let Some(Frame::Line(line)) = framer.finish() {
        router.worker_line(&slot, generation, line, Instant::now());
    }
}

/// Copies the worker's stderr into the daemon's log, one event per line, with pool and slot.
async fn log_stderr(slot: Arc<Slot>, stderr: impl AsyncRead + Unpin) {
    let (pool, index) = (&*slot.pool, slot.index);
    codex_bus_process::capture_stderr(stderr, STDERR_LINE, |line| {
        tracing::info!(target: "worker", pool, slot = index, "{line}");
    })
    .await;
}
