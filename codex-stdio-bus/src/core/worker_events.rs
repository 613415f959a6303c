//! The recent worker events the dashboard lists: starts, restarts, exits (with their status, as
//! the supervisor logs them), not-ready kills, restart-limit trips and worker stderr lines, each
//! numbered in one increasing sequence.
//!
//! Bounded twice over, so that one chatty worker cannot hide a crash:
//! - **two rings**: lifecycle events (everything but stderr) keep the last
//!   [`LIFECYCLE_CAPACITY`], stderr lines the last [`STDERR_CAPACITY`]; when a ring is full its
//!   oldest event is overwritten and counted in [`Recent::dropped`]. Stderr never overwrites an
//!   exit or a restart.
//! - **a rate per worker** ([`StderrRate`]): at most [`STDERR_PER_SECOND`] stderr lines of one
//!   worker process are kept per second; the others are only logged (as every stderr line is),
//!   counted in [`Recent::limited`] (one atomic add, no lock), and a `stderr_dropped` event
//!   saying how many precedes that worker's next line kept (or follows its exit).
//!
//! Each text is cut to [`MAX_TEXT`] bytes at a character boundary (`…` marks a cut). A push takes
//! one uncontended lock and allocates the text only (the rings are allocated whole up front); no
//! push happens on the message path. Memory: at most about
//! `(LIFECYCLE_CAPACITY + STDERR_CAPACITY) × (MAX_TEXT + 80)` bytes, 153 KiB.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::log_limit::Window;

/// Lifecycle events kept (exits, restarts, …), the oldest overwritten.
pub(crate) const LIFECYCLE_CAPACITY: usize = 64;

/// Stderr lines kept (of every worker together), the oldest overwritten.
pub(crate) const STDERR_CAPACITY: usize = 200;

/// Longest text kept, in bytes (a stderr line is cut there, at a character boundary).
pub(crate) const MAX_TEXT: usize = 512;

/// Stderr lines kept per second (the [`Window`] period) of one worker process; more are logged
/// only.
pub(crate) const STDERR_PER_SECOND: u32 = 20;

/// What happened to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// The slot's first worker was spawned (text: its pid).
    Start,
    /// A worker was spawned after a backoff (text: its pid).
    Restart,
    /// The worker exited on its own (text: its status).
    Exit,
    /// The worker was killed for not answering its readiness probe in time (text: its status).
    NotReady,
    /// The slot passed the restart limit and is failed (text: when it is tried again).
    Failed,
    /// The supervisor stopped the worker for a rolling restart (text: its status).
    Replaced,
    /// The supervisor stopped the worker of a slot leaving its pool (text: its status).
    Retired,
    /// A line the worker wrote to stderr.
    Stderr,
    /// Stderr lines of the worker not kept, over [`STDERR_PER_SECOND`] (text: how many).
    StderrDropped,
}

impl EventKind {
    /// The name the dashboard shows (`kind` in the `events` frame).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventKind::Start => "start",
            EventKind::Restart => "restart",
            EventKind::Exit => "exit",
            EventKind::NotReady => "not_ready",
            EventKind::Failed => "failed",
            EventKind::Replaced => "replaced",
            EventKind::Retired => "retired",
            EventKind::Stderr => "stderr",
            EventKind::StderrDropped => "stderr_dropped",
        }
    }
}

/// One recorded event.
#[derive(Clone, Debug)]
pub(crate) struct WorkerEvent {
    /// Its number: 1, 2, … in the order recorded, across both rings.
    pub seq: u64,
    /// When it was recorded.
    pub at: Instant,
    /// The worker's pool.
    pub pool: Arc<str>,
    /// The worker's slot in its pool.
    pub slot: u32,
    /// What happened.
    pub kind: EventKind,
    /// What the supervisor or the worker said, at most [`MAX_TEXT`] bytes (plus `…`).
    pub text: Arc<str>,
}

/// The daemon's recent worker events (one per daemon, shared by every slot).
#[derive(Debug)]
pub(crate) struct WorkerEvents {
    rings: Mutex<Rings>,
    /// Stderr lines not kept for the rate (an atomic: a flooding worker takes no lock for them).
    limited: AtomicU64,
}

#[derive(Debug)]
struct Rings {
    next_seq: u64,
    lifecycle: VecDeque<WorkerEvent>,
    stderr: VecDeque<WorkerEvent>,
    /// Events overwritten in either ring.
    dropped: u64,
}

/// The newest events, for a snapshot.
#[derive(Debug)]
pub(crate) struct Recent {
    /// The last `n` of each ring, merged: oldest (lowest `seq`) first.
    pub events: Vec<WorkerEvent>,
    /// Events overwritten by newer ones since the daemon started.
    pub dropped: u64,
    /// Stderr lines not kept since the daemon started, over [`STDERR_PER_SECOND`].
    pub limited: u64,
}

impl Default for WorkerEvents {
    fn default() -> Self {
        WorkerEvents {
            rings: Mutex::new(Rings {
                next_seq: 1,
                lifecycle: VecDeque::with_capacity(LIFECYCLE_CAPACITY),
                stderr: VecDeque::with_capacity(STDERR_CAPACITY),
                dropped: 0,
            }),
            limited: AtomicU64::new(0),
        }
    }
}

impl WorkerEvents {
    /// Records `kind` for slot `slot` of `pool`, now, with `text` cut to [`MAX_TEXT`] bytes.
    pub(crate) fn push(&self, pool: &Arc<str>, slot: u32, kind: EventKind, text: &str) {
        let text = cut(text);
        let at = Instant::now();
        let overwritten = {
            let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
            let seq = rings.next_seq;
            rings.next_seq += 1;
            let (ring, capacity) = match kind {
                EventKind::Stderr | EventKind::StderrDropped => {
                    (&mut rings.stderr, STDERR_CAPACITY)
                }
                _ => (&mut rings.lifecycle, LIFECYCLE_CAPACITY),
            };
            let overwritten = (ring.len() == capacity).then(|| ring.pop_front());
            ring.push_back(WorkerEvent {
                seq,
                at,
                pool: pool.clone(),
                slot,
                kind,
                text,
            });
            rings.dropped += u64::from(overwritten.is_some());
            overwritten
        };
        // Freed after the lock.
        drop(overwritten);
    }

    /// Counts a stderr line not kept for the rate.
    fn count_limited(&self) {
        self.limited.fetch_add(1, Ordering::Relaxed);
    }

    /// The last `n` events of each ring, oldest first, and the counts of those lost.
    pub(crate) fn recent(&self, n: usize) -> Recent {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let mut events: Vec<WorkerEvent> = newest(&rings.lifecycle, n)
            .chain(newest(&rings.stderr, n))
            .cloned()
            .collect();
        let dropped = rings.dropped;
        drop(rings);
        events.sort_unstable_by_key(|e| e.seq);
        Recent {
            events,
            dropped,
            limited: self.limited.load(Ordering::Relaxed),
        }
    }
}

/// The last `n` events of `ring`.
fn newest(ring: &VecDeque<WorkerEvent>, n: usize) -> impl Iterator<Item = &WorkerEvent> {
    ring.iter().skip(ring.len().saturating_sub(n))
}

/// `text` as kept: at most [`MAX_TEXT`] bytes cut at a character boundary, `…` added if cut.
fn cut(text: &str) -> Arc<str> {
    if text.len() <= MAX_TEXT {
        return text.into();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// How many stderr lines of one worker process are kept: at most [`STDERR_PER_SECOND`] in each
/// second from its first line of that second (a [`Window`]). Owned by the task reading that
/// worker's stderr.
#[derive(Debug, Default)]
pub(crate) struct StderrRate(Window);

impl StderrRate {
    /// Records stderr `line` of slot `slot` of `pool` into `events` if the rate allows, at `now`;
    /// else counts it. A line kept after some were not is preceded by a `stderr_dropped` event.
    pub(crate) fn record(
        &mut self,
        events: &WorkerEvents,
        pool: &Arc<str>,
        slot: u32,
        line: &str,
        now: Instant,
    ) {
        match self.0.admit(now, STDERR_PER_SECOND) {
            None => events.count_limited(),
            Some(held) => {
                note_held(events, pool, slot, held);
                events.push(pool, slot, EventKind::Stderr, line);
            }
        }
    }

    /// Records a `stderr_dropped` event if lines were not kept since the last one kept (called
    /// when the worker's stderr ends too, so the count is not lost).
    pub(crate) fn flush(&mut self, events: &WorkerEvents, pool: &Arc<str>, slot: u32) {
        note_held(events, pool, slot, self.0.take_held());
    }
}

/// A `stderr_dropped` event for `held` lines not kept, if any.
fn note_held(events: &WorkerEvents, pool: &Arc<str>, slot: u32, held: u64) {
    if held > 0 {
        let text = format!(
            "{held} stderr lines not kept: over {STDERR_PER_SECOND} per second (see the log)"
        );
        events.push(pool, slot, EventKind::StderrDropped, &text);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pool() -> Arc<str> {
        "p".into()
    }

    fn texts(recent: &Recent) -> Vec<(u64, &str, &str)> {
        recent
            .events
            .iter()
            .map(|e| (e.seq, e.kind.as_str(), &*e.text))
            .collect()
    }

    #[test]
    fn events_come_oldest_first_numbered_across_both_rings() {
        let events = WorkerEvents::default();
        events.push(&pool(), 0, EventKind::Start, "pid 10");
        events.push(&pool(), 0, EventKind::Stderr, "hello");
        events.push(&pool(), 0, EventKind::Exit, "signal: 9 (SIGKILL)");
        events.push(&pool(), 1, EventKind::Stderr, "other");
        let recent = events.recent(50);
        assert_eq!(
            texts(&recent),
            [
                (1, "start", "pid 10"),
                (2, "stderr", "hello"),
                (3, "exit", "signal: 9 (SIGKILL)"),
                (4, "stderr", "other"),
            ]
        );
        assert_eq!(recent.events[3].slot, 1);
        assert_eq!((recent.dropped, recent.limited), (0, 0));
        // The last n of each ring.
        let last = events.recent(1);
        assert_eq!(
            texts(&last),
            [(3, "exit", "signal: 9 (SIGKILL)"), (4, "stderr", "other")]
        );
    }

    #[test]
    fn a_full_ring_overwrites_its_oldest_and_counts_it_and_stderr_keeps_exits() {
        let events = WorkerEvents::default();
        events.push(&pool(), 0, EventKind::Exit, "exit status: 1");
        for i in 0..STDERR_CAPACITY + 5 {
            events.push(&pool(), 0, EventKind::Stderr, &format!("line {i}"));
        }
        let recent = events.recent(usize::MAX);
        assert_eq!(recent.dropped, 5);
        assert_eq!(recent.events.len(), STDERR_CAPACITY + 1);
        assert_eq!(texts(&recent)[0], (1, "exit", "exit status: 1"));
        assert_eq!(&*recent.events[1].text, "line 5");
        assert_eq!(&*recent.events.last().unwrap().text, "line 204");
        for i in 0..LIFECYCLE_CAPACITY {
            events.push(&pool(), 0, EventKind::Restart, &format!("pid {i}"));
        }
        let recent = events.recent(usize::MAX);
        assert_eq!(recent.dropped, 6, "the first exit overwritten too");
        assert!(recent.events.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(
            recent.events.len(),
            LIFECYCLE_CAPACITY + STDERR_CAPACITY,
            "both rings full"
        );
    }

    #[test]
    fn a_long_text_is_cut_at_a_character_boundary() {
        let events = WorkerEvents::default();
        let exact = "x".repeat(MAX_TEXT);
        events.push(&pool(), 0, EventKind::Stderr, &exact);
        // 'é' is two bytes: with one byte before it, byte MAX_TEXT falls inside the last whole one.
        let accents = format!("a{}", "é".repeat(MAX_TEXT));
        events.push(&pool(), 0, EventKind::Stderr, &accents);
        let recent = events.recent(50);
        assert_eq!(&*recent.events[0].text, exact);
        let cut = &*recent.events[1].text;
        let kept = cut.strip_suffix('…').expect("marked as cut");
        assert_eq!(kept.len(), MAX_TEXT - 1, "the half character left out");
        assert!(accents.starts_with(kept));
    }

    #[test]
    fn a_chatty_worker_keeps_its_rate_and_says_how_many_lines_were_not_kept() {
        let events = WorkerEvents::default();
        let mut rate = StderrRate::default();
        let start = Instant::now();
        for i in 0..100 {
            let now = start + Duration::from_millis(i);
            rate.record(&events, &pool(), 0, &format!("line {i}"), now);
        }
        let recent = events.recent(usize::MAX);
        assert_eq!(recent.events.len(), STDERR_PER_SECOND as usize);
        assert_eq!(recent.limited, 80);
        // The next second: the count first, then the line.
        rate.record(&events, &pool(), 0, "later", start + Duration::from_secs(1));
        let recent = events.recent(2);
        assert_eq!(
            texts(&recent)[..],
            [
                (
                    21,
                    "stderr_dropped",
                    "80 stderr lines not kept: over 20 per second (see the log)"
                ),
                (22, "stderr", "later"),
            ]
        );
        // Nothing held: no note at the end.
        rate.flush(&events, &pool(), 0);
        assert_eq!(events.recent(usize::MAX).events.len(), 22);
    }
}
