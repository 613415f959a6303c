//! A bounded byte queue with one writer task draining it.
//!
//! Producers append whole NDJSON lines straight into the queue's buffer (the id rewrite writes into it
//! directly, so a message costs no allocation of its own). The single consumer swaps the whole buffer
//! out and writes it with as few syscalls as the kernel allows: every message queued since the last
//! write goes out in one batch.
//!
//! The bound is soft on purpose: a push never fails and never drops (nothing is lost). Producers that
//! can wait (client readers feeding a worker) call [`Outbox::wait_for_space`] first, which is the
//! backpressure; producers that must not wait (a worker's reply to a slow client) push anyway, and the
//! owner of the queue stops reading new input while it is over the limit.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// Queued bytes plus state `S` that must change atomically with them.
pub(crate) struct Queued<S> {
    /// Complete lines not yet taken by the writer.
    pub buf: Vec<u8>,
    /// Set once the queue stops taking lines (its writer is gone for good).
    pub closed: bool,
    /// The owner's state guarded by the same lock (e.g. a worker slot's pending requests).
    pub state: S,
}

/// A write to the queue's sink failed: the error, and how many lines it leaves undelivered.
#[derive(Debug)]
pub(crate) struct WriteFailed {
    /// Why the write failed.
    pub error: io::Error,
    /// Lines taken from the queue but not (completely) written.
    pub unsent: usize,
}

/// A bounded, never-dropping byte queue drained by one writer.
pub(crate) struct Outbox<S = ()> {
    queued: Mutex<Queued<S>>,
    /// Wakes the writer when bytes arrive or the queue closes.
    readable: Notify,
    /// Wakes producers waiting for the queue to fall below its limit.
    writable: Notify,
    limit: usize,
}

/// Batches larger than this are not kept around between writes: one huge message must not pin its
/// buffer for the life of the connection.
const KEEP_CAPACITY: usize = 1 << 20;

impl<S> Outbox<S> {
    /// A queue holding about `limit` bytes before producers are asked to wait.
    pub(crate) fn new(limit: usize, state: S) -> Self {
        Outbox {
            queued: Mutex::new(Queued {
                buf: Vec::new(),
                closed: false,
                state,
            }),
            readable: Notify::new(),
            writable: Notify::new(),
            limit,
        }
    }

    /// Locks the queue and its state (to read it or take from it; append through
    /// [`Outbox::with_queue`], which wakes the writer).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Queued<S>> {
        // A poisoned lock means a panic elsewhere already; the data is plain bytes and counters, still
        // consistent enough to keep routing other clients' traffic.
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the locked queue, then wakes the writer if `f` appended to an empty queue.
    ///
    /// Only the first line after the writer took the queue needs a wake-up: the writer takes
    /// whatever has accumulated when it comes back, so later lines ride along for free.
    pub(crate) fn with_queue<R>(&self, f: impl FnOnce(&mut Queued<S>) -> R) -> R {
        let (result, wake) = {
            let mut q = self.lock();
            let was_empty = q.buf.is_empty();
            let result = f(&mut q);
            (result, was_empty && !q.buf.is_empty())
        };
        if wake {
            self.readable.notify_one();
        }
        result
    }

    /// Appends with `fill` unless the queue is closed; returns whether it was appended.
    pub(crate) fn push(&self, fill: impl FnOnce(&mut Vec<u8>)) -> bool {
        self.with_queue(|q| {
            if !q.closed {
                fill(&mut q.buf);
            }
            !q.closed
        })
    }

    /// True while the queued bytes exceed the limit.
    pub(crate) fn over_limit(&self) -> bool {
        let q = self.lock();
        !q.closed && q.buf.len() >= self.limit
    }

    /// Waits until the queue is below its limit (or closed).
    pub(crate) async fn wait_for_space(&self) {
        // The common case costs one lock and no waiter registration.
        if !self.over_limit() {
            return;
        }
        loop {
            let mut notified = pin!(self.writable.notified());
            // Registered before the check, so a writer that drains in between still wakes us.
            notified.as_mut().enable();
            if !self.over_limit() {
                return;
            }
            notified.await;
        }
    }

    /// Closes the queue: later pushes are refused; the writer finishes what is queued, then stops.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_one();
        self.writable.notify_waiters();
    }

    /// Closes the queue after its writer failed and discards what it holds; returns how many lines
    /// were discarded, so the loss is counted rather than silent.
    pub(crate) fn close_discarding(&self) -> usize {
        let discarded = {
            let mut q = self.lock();
            q.closed = true;
            let lines = count_lines(&q.buf);
            q.buf = Vec::new();
            lines
        };
        self.writable.notify_waiters();
        discarded
    }

    /// Wakes producers after bytes were discarded under [`Outbox::lock`].
    pub(crate) fn wake_producers(&self) {
        self.writable.notify_waiters();
    }

    /// Waits for queued bytes and swaps them into `batch`; false once closed and empty.
    async fn take_batch(&self, batch: &mut Vec<u8>) -> bool {
        loop {
            let notified = self.readable.notified();
            {
                let mut q = self.lock();
                if !q.buf.is_empty() {
                    std::mem::swap(&mut q.buf, batch);
                    drop(q);
                    self.writable.notify_waiters();
                    return true;
                }
                if q.closed {
                    return false;
                }
            }
            notified.await;
        }
    }

    /// Drains the queue into `sink` until it is closed and empty, or a write fails; reports the
    /// size of every batch delivered to `written` (bytes).
    ///
    /// With `stall`, a single write that makes no progress for that long fails with `TimedOut`: a
    /// peer that reads nothing must not hold its queue (and our memory) forever.
    pub(crate) async fn drain_into<W>(
        &self,
        sink: &mut W,
        stall: Option<Duration>,
        mut written: impl FnMut(usize),
    ) -> Result<(), WriteFailed>
    where
        W: AsyncWrite + Unpin,
    {
        let mut batch = Vec::new();
        while self.take_batch(&mut batch).await {
            let mut done = 0;
            let failed = |error, done: usize, batch: &[u8]| WriteFailed {
                error,
                unsent: count_lines(&batch[done..]),
            };
            while done < batch.len() {
                let n = match with_stall(stall, sink.write(&batch[done..])).await {
                    Ok(0) => return Err(failed(io::ErrorKind::WriteZero.into(), done, &batch)),
                    Ok(n) => n,
                    Err(error) => return Err(failed(error, done, &batch)),
                };
                done += n;
            }
            // Flushing an unbuffered sink (pipe, socket) writes nothing: the batch is delivered.
            sink.flush()
                .await
                .map_err(|e| failed(e, batch.len(), &batch))?;
            written(batch.len());
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch = Vec::new();
            }
        }
        sink.flush()
            .await
            .map_err(|error| WriteFailed { error, unsent: 0 })
    }
}

/// Complete lines (or a line's unwritten tail) in `bytes`.
fn count_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// Runs `io` under the stall deadline, if there is one.
async fn with_stall<T>(
    stall: Option<Duration>,
    io: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match stall {
        None => io.await,
        Some(limit) => tokio::time::timeout(limit, io)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn batches_everything_queued_in_order() {
        let out = Arc::new(Outbox::new(1024, ()));
        for i in 0..100 {
            assert!(out.push(|b| b.extend_from_slice(format!("{i}\n").as_bytes())));
        }
        out.close();
        let mut sink = Vec::new();
        out.drain_into(&mut sink, None, |_| {}).await.unwrap();
        let expected: String = (0..100).map(|i| format!("{i}\n")).collect();
        assert_eq!(String::from_utf8(sink).unwrap(), expected);
        assert!(!out.push(|b| b.push(b'x')), "closed queue refuses pushes");
    }

    #[tokio::test]
    async fn producers_wait_until_the_writer_drains() {
        let out = Arc::new(Outbox::new(4, ()));
        out.push(|b| b.extend_from_slice(b"abcdef\n"));
        assert!(out.over_limit());
        let waiter = tokio::spawn({
            let out = out.clone();
            async move { out.wait_for_space().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "must wait while over the limit");
        let (mut near, mut far) = tokio::io::duplex(64);
        let writer = tokio::spawn({
            let out = out.clone();
            async move { out.drain_into(&mut near, None, |_| {}).await }
        });
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken once drained")
            .unwrap();
        out.close();
        writer.await.unwrap().unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut far, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"abcdef\n");
    }

    #[tokio::test]
    async fn a_peer_that_reads_nothing_times_out() {
        let out = Outbox::new(1 << 20, ());
        out.push(|b| {
            b.resize(256 * 1024, b'x');
            b.push(b'\n');
        });
        let (mut near, _far) = tokio::io::duplex(1024);
        let err = out
            .drain_into(&mut near, Some(Duration::from_millis(50)), |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.unsent, 1, "the one line was not delivered");
    }

    #[tokio::test]
    async fn a_failed_write_reports_the_lines_it_could_not_deliver() {
        let out = Outbox::new(1 << 20, ());
        out.push(|b| b.extend_from_slice(b"one\ntwo\nthree\n"));
        let (mut near, far) = tokio::io::duplex(4);
        drop(far);
        let err = out.drain_into(&mut near, None, |_| {}).await.unwrap_err();
        assert_eq!(err.unsent, 3);
        out.push(|b| b.extend_from_slice(b"four\nfive\n"));
        assert_eq!(out.close_discarding(), 2);
        assert!(!out.push(|b| b.push(b'x')), "closed");
        assert_eq!(out.close_discarding(), 0);
    }
}
