//! A bounded byte queue with one writer task draining it.
//!
//! Producers append whole NDJSON lines straight into the queue's buffer (the id rewrite writes into it
//! directly, so a message costs no allocation of its own). The single consumer swaps the whole buffer
//! out and writes it with as few syscalls as the kernel allows: every message queued since the last
//! write goes out in one batch.
//!
//! The limit is soft: a push never waits. Producers that can wait (client readers feeding a worker)
//! call [`Outbox::wait_for_space`] first, which is the backpressure; producers that must not wait (a
//! worker's reply or notification to a slow client) push anyway, and the owner of the queue stops
//! reading new input while it is over the limit.
//!
//! Two bounds stand behind it for a queue with a stalled peer (see [`Outbox::with_cap`]): a hard
//! cap, which a push that would exceed closes the queue and discards what it holds (the writer
//! stops at once with [`Stop::Overflow`]), and a stall timer: once the queued bytes (including
//! the batch the writer holds, still unwritten) have stayed at or over the soft limit for the
//! writer's stall time, it stops with [`Stop::Stalled`], however the individual writes progress.
//! Producers read the clock only when the queue crosses the limit; the writer clears the mark when
//! the queue falls back below it.

use std::io;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
    /// Complete lines set aside for a later writer (a slot holding work for its next worker):
    /// the writer does not take them, but they count toward the soft limit, so producers still
    /// wait for space while they pile up.
    pub aside: Vec<u8>,
    /// Bytes the writer has taken and not yet written: still queued, as far as the bounds go.
    writing: usize,
    /// When the queued bytes last rose to the soft limit; `None` while they are below it.
    over_since: Option<Instant>,
    /// Set when a push took the queue over its hard cap (the queue is then closed and empty).
    overflow: Option<Overflowed>,
}

/// What a push over the hard cap left behind.
#[derive(Clone, Copy, Debug)]
struct Overflowed {
    /// Bytes the queue would have held with that push.
    queued: usize,
    /// Lines discarded from the queue (the writer adds those of its batch).
    discarded: usize,
}

/// Why a queue's writer stopped before the queue was closed and empty.
#[derive(Debug)]
pub(crate) enum Stop {
    /// A write to the sink failed.
    Write(io::Error),
    /// A push would have taken the queue to `queued` bytes, over its hard cap.
    Overflow {
        /// Bytes the queue would have held.
        queued: usize,
    },
    /// The queue stayed at or over its soft limit for the stall time; it held `queued` bytes.
    Stalled {
        /// Bytes queued when the writer gave up.
        queued: usize,
    },
}

/// The writer stopped early: why, and how many lines it leaves undelivered.
#[derive(Debug)]
pub(crate) struct WriteFailed {
    /// Why it stopped.
    pub stop: Stop,
    /// Lines taken from the queue (or discarded from it by an overflow) but not (completely)
    /// written.
    pub unsent: usize,
}

/// A bounded, never-dropping byte queue drained by one writer.
pub(crate) struct Outbox<S = ()> {
    queued: Mutex<Queued<S>>,
    /// Wakes the writer when bytes arrive or the queue closes.
    readable: Notify,
    /// Wakes producers waiting for the queue to fall below its limit.
    writable: Notify,
    /// Wakes a writer blocked in a write when the queue crosses its soft limit or overflows.
    alarm: Notify,
    /// The soft limit, in bytes.
    limit: usize,
    /// The hard cap, in bytes.
    cap: usize,
}

/// Batches larger than this are not kept around between writes: one huge message must not pin its
/// buffer for the life of the connection.
const KEEP_CAPACITY: usize = 1 << 20;

impl<S> Outbox<S> {
    /// A queue holding about `limit` bytes before producers are asked to wait, with no hard cap
    /// (its producers all wait, or are bounded elsewhere).
    pub(crate) fn new(limit: usize, state: S) -> Self {
        Self::with_cap(limit, usize::MAX, state)
    }

    /// A queue holding about `limit` bytes before producers are asked to wait, and never more than
    /// `cap` bytes (`cap` ≥ `limit`): the push that would exceed it closes the queue, discards
    /// what it holds and stops the writer with [`Stop::Overflow`].
    pub(crate) fn with_cap(limit: usize, cap: usize, state: S) -> Self {
        Outbox {
            queued: Mutex::new(Queued {
                buf: Vec::new(),
                closed: false,
                state,
                aside: Vec::new(),
                writing: 0,
                over_since: None,
                overflow: None,
            }),
            readable: Notify::new(),
            writable: Notify::new(),
            alarm: Notify::new(),
            limit,
            cap,
        }
    }

    /// The soft limit, in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The hard cap, in bytes (`usize::MAX` for none).
    pub(crate) fn cap(&self) -> usize {
        self.cap
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
    ///
    /// Below the soft limit this costs one addition and one comparison more than the append; at
    /// or over it, the first push marks when the queue crossed, and a push over the hard cap
    /// closes the queue and discards everything (that push's line included).
    pub(crate) fn with_queue<R>(&self, f: impl FnOnce(&mut Queued<S>) -> R) -> R {
        let (result, wake, alarm) = {
            let mut q = self.lock();
            let was_empty = q.buf.is_empty();
            let result = f(&mut q);
            let queued = q.buf.len() + q.writing;
            let mut alarm = false;
            if queued >= self.limit {
                if queued > self.cap {
                    let discarded = count_lines(&q.buf);
                    q.overflow = Some(Overflowed { queued, discarded });
                    q.closed = true;
                    q.buf = Vec::new();
                    alarm = true;
                } else if q.over_since.is_none() {
                    q.over_since = Some(Instant::now());
                    alarm = true;
                }
            }
            (result, was_empty && !q.buf.is_empty(), alarm)
        };
        if wake {
            self.readable.notify_one();
        }
        if alarm {
            // The writer may be blocked in a write (the usual reason for crossing): it must look.
            self.alarm.notify_one();
            self.readable.notify_one();
            self.writable.notify_waiters();
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

    /// True while the queued bytes (those set aside included) exceed the limit.
    ///
    /// A closed queue's own bytes never drain to a writer, so they no longer hold producers back;
    /// bytes set aside still do: they wait for the next writer, which reopens the queue.
    pub(crate) fn over_limit(&self) -> bool {
        let q = self.lock();
        let own = if q.closed { 0 } else { q.buf.len() };
        own + q.aside.len() >= self.limit
    }

    /// Waits until the queue is below its limit (or closed).
    pub(crate) async fn wait_for_space(&self) {
        self.wait_while(|| self.over_limit()).await;
    }

    /// Waits until the bytes for the running writer alone are below the limit (or the queue is
    /// closed), whatever is set aside for the next one. For lines the running worker needs to
    /// finish what it holds (answers to its own requests): while a rolling restart holds new work,
    /// the bytes set aside drain only once that worker is done, so waiting for them as well could
    /// never end before the roll's bound cut the worker off.
    pub(crate) async fn wait_for_own_space(&self) {
        self.wait_while(|| {
            let q = self.lock();
            !q.closed && q.buf.len() >= self.limit
        })
        .await;
    }

    /// Waits while `full` holds, looking again whenever a writer drains or the queue closes.
    async fn wait_while(&self, full: impl Fn() -> bool) {
        // The common case costs one lock and no waiter registration.
        if !full() {
            return;
        }
        loop {
            let mut notified = pin!(self.writable.notified());
            // Registered before the check, so a writer that drains in between still wakes us.
            notified.as_mut().enable();
            if !full() {
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
            q.writing = 0;
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

    /// Waits for queued bytes and swaps them into `batch` (the previous batch was written);
    /// `Ok(false)` once closed and empty; fails when the queue overflowed, or has stayed over its
    /// soft limit for `stall`.
    async fn take_batch(
        &self,
        batch: &mut Vec<u8>,
        stall: Option<Duration>,
    ) -> Result<bool, WriteFailed> {
        loop {
            let notified = self.readable.notified();
            {
                let mut q = self.lock();
                q.writing = 0;
                self.check(&mut q, stall)?;
                if !q.buf.is_empty() {
                    std::mem::swap(&mut q.buf, batch);
                    q.writing = batch.len();
                    drop(q);
                    self.writable.notify_waiters();
                    return Ok(true);
                }
                if q.closed {
                    return Ok(false);
                }
            }
            notified.await;
        }
    }

    /// The writer's look at the bounds, under the lock: clears the crossing mark if the queue is
    /// below the soft limit; fails on an overflow, or once the mark is `stall` old.
    fn check(&self, q: &mut Queued<S>, stall: Option<Duration>) -> Result<(), WriteFailed> {
        if let Some(o) = q.overflow {
            return Err(WriteFailed {
                stop: Stop::Overflow { queued: o.queued },
                unsent: o.discarded,
            });
        }
        let queued = q.buf.len() + q.writing;
        if queued < self.limit {
            q.over_since = None;
        }
        match (q.over_since, stall) {
            (Some(since), Some(stall)) if since.elapsed() >= stall => Err(WriteFailed {
                stop: Stop::Stalled { queued },
                unsent: 0,
            }),
            _ => Ok(()),
        }
    }

    /// When the writer must next look at the bounds, if it keeps blocking: at the stall deadline
    /// once the queue is over its limit; otherwise only when a producer raises the alarm.
    fn next_check(
        &self,
        unwritten: usize,
        stall: Option<Duration>,
    ) -> Result<Option<Instant>, WriteFailed> {
        let mut q = self.lock();
        q.writing = unwritten;
        self.check(&mut q, stall)?;
        Ok(q.over_since.zip(stall).map(|(since, stall)| since + stall))
    }

    /// One write of `bytes` (the rest of the writer's batch) into `sink`, abandoned when the queue
    /// overflows or stalls meanwhile.
    async fn write_watched<W>(
        &self,
        sink: &mut W,
        bytes: &[u8],
        stall: Option<Duration>,
    ) -> Result<usize, WriteFailed>
    where
        W: AsyncWrite + Unpin,
    {
        // Only a write that blocks looks at the bounds (one lock per wake-up, a timer only while
        // the queue is over its limit); the write is polled first, so one that completes at once
        // costs nothing more.
        let watch = async {
            loop {
                let alarm = self.alarm.notified();
                let deadline = match self.next_check(bytes.len(), stall) {
                    Ok(deadline) => deadline,
                    Err(failed) => return failed,
                };
                let sleep = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = alarm => {}
                    () = sleep => {}
                }
            }
        };
        tokio::select! {
            biased;
            done = sink.write(bytes) => done.map_err(|error| WriteFailed {
                stop: Stop::Write(error),
                unsent: 0,
            }),
            failed = watch => Err(failed),
        }
    }

    /// Drains the queue into `sink` until it is closed and empty, or the writer stops early;
    /// reports the size of every batch delivered to `written` (bytes).
    ///
    /// With `stall`, the writer stops with [`Stop::Stalled`] once the queue has stayed at or over
    /// its soft limit that long: a peer that reads too little must not hold its queue (and our
    /// memory) forever. A push over the hard cap stops it with [`Stop::Overflow`], even in the
    /// middle of a blocked write.
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
        while self.take_batch(&mut batch, stall).await? {
            let mut done = 0;
            let unsent = |mut failed: WriteFailed, done: usize, batch: &[u8]| {
                failed.unsent += count_lines(&batch[done..]);
                failed
            };
            while done < batch.len() {
                match self.write_watched(sink, &batch[done..], stall).await {
                    Ok(0) => {
                        let failed = WriteFailed {
                            stop: Stop::Write(io::ErrorKind::WriteZero.into()),
                            unsent: 0,
                        };
                        return Err(unsent(failed, done, &batch));
                    }
                    Ok(n) => done += n,
                    Err(failed) => return Err(unsent(failed, done, &batch)),
                }
            }
            // Flushing an unbuffered sink (pipe, socket) writes nothing: the batch is delivered.
            sink.flush().await.map_err(|error| WriteFailed {
                stop: Stop::Write(error),
                unsent: 0,
            })?;
            written(batch.len());
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch = Vec::new();
            }
        }
        sink.flush().await.map_err(|error| WriteFailed {
            stop: Stop::Write(error),
            unsent: 0,
        })
    }
}

/// Complete lines (or a line's unwritten tail) in `bytes`.
fn count_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
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

    fn line(len: usize) -> impl FnOnce(&mut Vec<u8>) {
        move |b| {
            b.resize(b.len() + len - 1, b'x');
            b.push(b'\n');
        }
    }

    #[tokio::test]
    async fn a_peer_that_reads_nothing_is_cut_off_once_over_the_limit_for_the_stall_time() {
        let out = Outbox::with_cap(64 * 1024, 1 << 20, ());
        out.push(line(256 * 1024));
        let (mut near, _far) = tokio::io::duplex(1024);
        let t = Instant::now();
        let err = out
            .drain_into(&mut near, Some(Duration::from_millis(50)), |_| {})
            .await
            .unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(
            matches!(err.stop, Stop::Stalled { queued } if queued > 250_000),
            "{err:?}"
        );
        assert_eq!(err.unsent, 1, "the one line was not delivered");
    }

    #[tokio::test]
    async fn a_peer_below_the_limit_is_not_cut_off_however_slow() {
        let out = Arc::new(Outbox::with_cap(64 * 1024, 1 << 20, ()));
        out.push(line(32 * 1024));
        out.close();
        let (mut near, mut far) = tokio::io::duplex(1024);
        let writer = tokio::spawn({
            let out = out.clone();
            async move {
                out.drain_into(&mut near, Some(Duration::from_millis(20)), |_| {})
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut far, &mut got)
            .await
            .unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(got.len(), 32 * 1024);
    }

    #[tokio::test]
    async fn a_trickling_peer_is_cut_off_although_every_write_progresses() {
        let out = Arc::new(Outbox::with_cap(16 * 1024, 1 << 30, ()));
        let (mut near, mut far) = tokio::io::duplex(1024);
        let stall = Duration::from_millis(200);
        let writer = tokio::spawn({
            let out = out.clone();
            async move { out.drain_into(&mut near, Some(stall), |_| {}).await }
        });
        // The producer keeps the queue over the limit; the peer reads 1 KiB every 10 ms, so no
        // single write waits long.
        let t = Instant::now();
        let mut buf = vec![0; 1024];
        while !writer.is_finished() {
            out.push(line(4096));
            let _ = tokio::io::AsyncReadExt::read(&mut far, &mut buf).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(t.elapsed() < Duration::from_secs(5), "never cut off");
        }
        let err = writer.await.unwrap().unwrap_err();
        assert!(matches!(err.stop, Stop::Stalled { .. }), "{err:?}");
        assert!(t.elapsed() >= stall);
    }

    #[tokio::test]
    async fn a_push_over_the_cap_closes_and_empties_the_queue_and_stops_a_blocked_writer() {
        let out = Arc::new(Outbox::with_cap(1024, 8 * 1024, ()));
        let (mut near, _far) = tokio::io::duplex(512);
        let writer = tokio::spawn({
            let out = out.clone();
            async move {
                out.drain_into(&mut near, Some(Duration::from_secs(60)), |_| {})
                    .await
            }
        });
        let mut pushed = 0;
        while out.push(line(1000)) {
            pushed += 1;
            tokio::task::yield_now().await;
        }
        let err = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the blocked writer stops at once")
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err.stop, Stop::Overflow { queued } if queued > 8 * 1024),
            "{err:?}"
        );
        assert_eq!(err.unsent, pushed, "every undelivered line is counted");
        assert!(out.lock().buf.capacity() == 0, "the memory is released");
        assert_eq!(out.close_discarding(), 0);
    }

    #[tokio::test]
    async fn a_failed_write_reports_the_lines_it_could_not_deliver() {
        let out = Outbox::new(1 << 20, ());
        out.push(|b| b.extend_from_slice(b"one\ntwo\nthree\n"));
        let (mut near, far) = tokio::io::duplex(4);
        drop(far);
        let err = out.drain_into(&mut near, None, |_| {}).await.unwrap_err();
        assert!(matches!(err.stop, Stop::Write(_)), "{err:?}");
        assert_eq!(err.unsent, 3);
        out.push(|b| b.extend_from_slice(b"four\nfive\n"));
        assert_eq!(out.close_discarding(), 2);
        assert!(!out.push(|b| b.push(b'x')), "closed");
        assert_eq!(out.close_discarding(), 0);
    }
}
