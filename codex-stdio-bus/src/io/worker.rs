//! A worker's pipes: the slot's input queue written to its stdin, its stdout lines handed to the
//! [`WorkerSink`], its stderr lines logged (captured by the process crate, capped per line).
//!
//! The stdout reader never waits on a client: lines toward clients are pushed whatever their queues
//! hold (a slow client's own reader pauses instead), so one slow client cannot stall a worker.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::metrics::Counter;
use codex_bus_protocol::{ErrorKind, Frame, LineFramer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tracing::Level;

use super::frames::{read_frames, FrameHandler};
use crate::core::sink::WorkerSink;
use crate::core::slot::Slot;
use crate::core::worker_events::StderrRate;
use crate::metrics::{self, Direction, Discard};

/// Longest worker stderr line logged; a longer one is replaced by a note (it is not buffered).
const STDERR_LINE: usize = 16 * 1024;

/// The tasks serving one worker process's pipes.
pub(crate) struct Pipes {
    writer: JoinHandle<()>,
    /// The stdout reader; `None` once [`Pipes::stdout_closed`] saw it end.
    reader: Option<JoinHandle<()>>,
}

/// The three pipes of the worker running as `generation` in `slot`.
pub(crate) struct WorkerStdio<I, O, E> {
    /// Its stdin.
    pub stdin: I,
    /// Its stdout.
    pub stdout: O,
    /// Its stderr.
    pub stderr: E,
}

/// Starts serving the pipes of the worker running as `generation` in `slot`: stdout lines of at
/// most `max_line` bytes go to `sink`.
pub(crate) fn attach<I, O, E>(
    slot: &Arc<Slot>,
    generation: u64,
    pipes: WorkerStdio<I, O, E>,
    sink: Arc<dyn WorkerSink>,
    max_line: usize,
) -> Pipes
where
    I: AsyncWrite + Unpin + Send + 'static,
    O: AsyncRead + Unpin + Send + 'static,
    E: AsyncRead + Unpin + Send + 'static,
{
    let WorkerStdio {
        mut stdin,
        mut stdout,
        mut stderr,
    } = pipes;
    let writer = tokio::spawn({
        let slot = slot.clone();
        async move {
            let written = metrics::get().bytes(Direction::ToWorker);
            let counted = |n: usize| written.increment(n as u64);
            // What the worker could not take is answered when it exits: its requests are pending.
            if let Err(failed) = slot.queue.drain_into(&mut stdin, None, counted).await {
                tracing::debug!(?slot, stop = ?failed.stop, "worker stdin closed");
            }
        }
    });
    let reader = tokio::spawn({
        let mut handler = ToSink {
            slot: slot.clone(),
            generation,
            sink,
            max_line,
            messages: metrics::get().messages(Direction::FromWorker),
        };
        async move {
            let bytes = metrics::get().bytes(Direction::FromWorker);
            // Worker lines are cut with the id scan, so that an oversize reply can be answered.
            let framer = LineFramer::with_ids(max_line);
            read_frames(&mut stdout, framer, bytes, &mut handler).await;
        }
    });
    tokio::spawn({
        let slot = slot.clone();
        async move {
            let (pool, index) = (&*slot.pool, slot.index);
            // Every line is logged; the dashboard's event list keeps them at a bounded rate.
            let mut rate = StderrRate::default();
            codex_bus_process::capture_stderr(&mut stderr, STDERR_LINE, |line| {
                rate.record(&slot.events, &slot.pool, index, line, Instant::now());
                // The worker's own level word decides the level (INFO when it names none).
                match level_of(line) {
                    Level::ERROR => tracing::error!(target: "worker", pool, slot = index, "{line}"),
                    Level::WARN => tracing::warn!(target: "worker", pool, slot = index, "{line}"),
                    Level::DEBUG => tracing::debug!(target: "worker", pool, slot = index, "{line}"),
                    Level::TRACE => tracing::trace!(target: "worker", pool, slot = index, "{line}"),
                    _ => tracing::info!(target: "worker", pool, slot = index, "{line}"),
                }
            })
            .await;
            rate.flush(&slot.events, &slot.pool, index);
        }
    });
    Pipes {
        writer,
        reader: Some(reader),
    }
}

impl Pipes {
    /// Resolves once the worker's stdout is read to its end (EOF or a read error), with every line
    /// before it handed to the sink; never, if that was already seen. Cancel-safe.
    pub(crate) async fn stdout_closed(&mut self) {
        match &mut self.reader {
            Some(reader) => {
                // The reader task does not panic (and is never aborted while running); either
                // way its end is the end of stdout.
                let _ = reader.await;
                self.reader = None;
            }
            None => std::future::pending().await,
        }
    }

    /// Once the worker has exited: waits up to `linger` for its stdout to be read to the end (the
    /// replies it wrote just before exiting are still in the pipe), then stops reading its stdout
    /// and writing its stdin. False if stdout stayed open (a process the worker left behind holds
    /// it).
    pub(crate) async fn finish(mut self, linger: Duration) -> bool {
        let closed = match &mut self.reader {
            Some(reader) => {
                let closed = tokio::time::timeout(linger, &mut *reader).await.is_ok();
                // Stopped for real, not just forgotten: whatever still holds the pipe is not
                // this worker, and nothing it writes may be routed.
                reader.abort();
                closed
            }
            None => true,
        };
        self.writer.abort();
        closed
    }
}

/// How far into a stderr line its level word is looked for: past a prefix such as
/// `codex-worker[123]: codex[1]: 2026-11-30T20:00:00.123456Z`, not into the message.
const LEVEL_WITHIN: usize = 96;

/// The level a worker's stderr line names (`ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE` as a word
/// near its start, as tracing and most loggers write it); INFO when it names none.
fn level_of(line: &str) -> Level {
    let head = &line.as_bytes()[..line.len().min(LEVEL_WITHIN)];
    for word in head.split(|b| !b.is_ascii_alphabetic()) {
        match word {
            b"ERROR" => return Level::ERROR,
            b"WARN" | b"WARNING" => return Level::WARN,
            b"INFO" => return Level::INFO,
            b"DEBUG" => return Level::DEBUG,
            b"TRACE" => return Level::TRACE,
            _ => {}
        }
    }
    Level::INFO
}

/// Hands a worker's stdout lines to the sink.
struct ToSink {
    slot: Arc<Slot>,
    generation: u64,
    sink: Arc<dyn WorkerSink>,
    max_line: usize,
    messages: &'static Counter,
}

impl FrameHandler for ToSink {
    /// Handles the line at once and returns a future that is already done: nothing here waits,
    /// and a future that holds the frame across its first poll would cost every reply more.
    fn frame(&mut self, frame: Frame<'_>, read_at: Instant) -> impl Future<Output = ()> + Send {
        self.messages.increment(1);
        match frame {
            Frame::Line(line) => self
                .sink
                .worker_line(&self.slot, self.generation, line, read_at),
            Frame::Oversize { seen, id } => {
                metrics::get().dropped(Discard::OversizeWorkerLine);
                // Rate-limited with the slot's other warnings about its worker's lines.
                let (slot, max_line) = (&self.slot, self.max_line);
                if let Some(suppressed) = slot.warnings.admit(read_at) {
                    tracing::warn!(
                        ?slot,
                        seen,
                        max_line,
                        bus_id = id,
                        suppressed,
                        "worker line over max_worker_line skipped"
                    );
                }
                // A reply the client can never get: answered in its place rather than left in
                // flight. Without a readable id (or for a request no longer pending) it is
                // only skipped.
                if let Some(pending) = id.and_then(|id| slot.take_pending(id, self.generation)) {
                    let detail = format!("reply longer than max_worker_line ({max_line} bytes)");
                    self.sink
                        .fail(vec![pending], ErrorKind::ReplyTooLarge, Some(&detail));
                }
            }
        }
        std::future::ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stderr_line_is_logged_at_the_level_it_names() {
        let codex = "codex-worker[7]: codex[1]: 2026-11-30T20:00:00.123456Z  WARN codex_core::plugins: sync failed";
        assert_eq!(level_of(codex), Level::WARN);
        assert_eq!(level_of("ERROR: disk full"), Level::ERROR);
        assert_eq!(level_of("[DEBUG] x"), Level::DEBUG);
        assert_eq!(level_of("codex-mock[3]: started"), Level::INFO);
        // A level word deep in the message is not the line's level.
        let deep = format!("{} ERROR in a quoted message", "x".repeat(LEVEL_WITHIN));
        assert_eq!(level_of(&deep), Level::INFO);
        assert_eq!(level_of("WARNINGS are words too"), Level::INFO);
    }
}
