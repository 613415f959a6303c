//! One running worker process: its stdin writer, stdout reader and stderr logger, until it exits.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_protocol::{Frame, LineFramer};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::sync::watch;

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
}

/// Runs `child` in `slot` until it exits or the daemon stops it.
pub async fn run(
    router: Arc<Router>,
    slot: Arc<Slot>,
    generation: u64,
    mut child: Child,
    max_line: usize,
    stop: &mut StopOrder,
) -> Ended {
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("spawn_worker pipes all three");
    };
    let writer = tokio::spawn({
        let slot = slot.clone();
        async move {
            let written = metrics::get().bytes(Direction::ToWorker);
            if let Err(error) = slot.queue.drain_into(&mut stdin, None, written).await {
                tracing::debug!(?slot, %error, "worker stdin closed");
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

    let mut stopped = false;
    let status = tokio::select! {
        status = child.wait() => status.ok(),
        deadline = super::stop_requested(stop) => {
            stopped = true;
            stop_worker(&slot, &mut child, deadline).await
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
    Ended { status, stopped }
}

/// Stops a worker: EOF on its stdin once its queue is flushed, SIGTERM to its group, SIGKILL to the
/// group at `deadline`.
async fn stop_worker(slot: &Slot, child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    slot.queue.close();
    signal_group(slot, Signal::SIGTERM);
    tokio::select! {
        status = child.wait() => return status.ok(),
        () = tokio::time::sleep_until(deadline.into()) => {}
    }
    tracing::warn!(
        ?slot,
        "worker did not stop in time; killing its process group"
    );
    signal_group(slot, Signal::SIGKILL);
    child.wait().await.ok()
}

/// Sends `signal` to the slot's worker process group, if a worker runs.
pub fn signal_group(slot: &Slot, signal: Signal) {
    if let Some(pid) = slot.pid() {
        if let Err(error) = killpg(Pid::from_raw(pid as i32), signal) {
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

/// Copies the worker's stderr into the daemon's log, one event per line, prefixed by pool and slot.
async fn log_stderr(slot: Arc<Slot>, mut stderr: impl AsyncRead + Unpin) {
    let mut framer = LineFramer::new(STDERR_LINE);
    let pool = slot.pool.clone();
    let pool = &*pool;
    loop {
        match stderr.read(framer.spare()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => framer.filled(n),
        }
        while let Some(frame) = framer.next_frame() {
            log_stderr_line(pool, slot.index, frame);
        }
    }
    if let Some(frame) = framer.finish() {
        log_stderr_line(pool, slot.index, frame);
    }
}

/// Logs one framed stderr line of a worker.
fn log_stderr_line(pool: &str, slot: u32, frame: Frame<'_>) {
    match frame {
        Frame::Line(line) => {
            let text = String::from_utf8_lossy(line);
            tracing::info!(target: "worker", pool, slot, "{text}");
        }
        Frame::Oversize { .. } => {
            tracing::info!(target: "worker", pool, slot, "(stderr line over {STDERR_LINE} bytes skipped)");
        }
    }
}
