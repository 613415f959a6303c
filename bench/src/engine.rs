//! The client side of a run: one thread, one `epoll` loop over every connection, a window of
//! requests in flight per connection, and a check of every reply.

use std::io::{self, ErrorKind};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Poll};
use serde::Serialize;

use crate::ids::{Reply, Scanner, Tag};
use crate::io::{index_of, Io};
use crate::lines::Lines;
use crate::requests::Prebuilt;

/// At most this many requests per `write`, as in stdio Bus's published method: big enough to
/// batch, small enough that one connection does not starve the others.
const MAX_LINES_PER_WRITE: usize = 512;

/// Size of the shared read buffer.
const READ_BUFFER: usize = 256 * 1024;

/// Longest wait in `epoll` so timers (churn, stall) are looked at often enough.
const TICK: Duration = Duration::from_millis(50);

/// What came back in one phase.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Tally {
    /// First replies carrying `result`.
    pub ok: u64,
    /// First replies carrying `error` (allowed only where a scenario says so).
    pub errors: u64,
    /// Requests that never got a reply.
    pub lost: u64,
    /// Second and later replies to one request.
    pub duplicates: u64,
    /// Replies that reached a connection other than the one that asked.
    pub misrouted: u64,
    /// Replies to ids never sent in this phase.
    pub stray: u64,
    /// Lines without an id this generator could have written.
    pub unidentified: u64,
}

impl Tally {
    /// Everything that breaks "exactly one reply per request, to the right connection".
    pub fn failures(&self) -> u64 {
        self.lost + self.duplicates + self.misrouted + self.stray + self.unidentified
    }

    /// Adds another tally's counts.
    pub fn add(&mut self, other: &Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.misrouted += other.misrouted;
        self.stray += other.stray;
        self.unidentified += other.unidentified;
    }
}

/// The result of one phase.
pub struct Outcome {
    /// Reply counts.
    pub tally: Tally,
    /// Round-trip latency of each first reply, in nanoseconds.
    pub latency: Histogram<u64>,
    /// First write to last first-reply (also when the phase stalled).
    pub elapsed: Duration,
    /// Workers killed during the phase.
    pub kills: u64,
    /// Whether the phase gave up waiting (no new reply for the stall timeout).
    pub stalled: bool,
}

/// Kills a worker every `every` while a phase runs, the first time right after the first writes.
pub struct Churn<'a> {
    /// Interval between kills.
    pub every: Duration,
    /// Kills one worker; false if none was alive to kill.
    pub kill: &'a mut dyn FnMut() -> bool,
}

/// How a phase runs.
pub struct Phase<'a> {
    /// Tag of this phase's ids.
    pub tag: Tag,
    /// Requests in flight per connection at most.
    pub window: usize,
    /// Give up when no new reply arrived for this long.
    pub stall: Duration,
    /// After the last reply, keep reading this long to catch duplicates.
    pub linger: Duration,
    /// Worker killing, if any.
    pub churn: Option<Churn<'a>>,
    /// Called once, right after the last reply (before lingering): the moment to read counters.
    pub on_done: &'a mut dyn FnMut(),
}

struct Conn {
    io: Io,
    lines: Lines,
    closed: bool,
}

/// One connection's requests in a phase (also the blocking client's, `blocking`).
pub(crate) struct Lane {
    pub(crate) reqs: Prebuilt,
    /// Bytes written.
    off: usize,
    /// Requests written whole.
    pub(crate) sent: usize,
    /// Requests with a first reply.
    pub(crate) answered: usize,
    seen: Vec<bool>,
    /// When each request was written, in ns since the phase started.
    pub(crate) sent_at: Vec<u64>,
}

impl Lane {
    pub(crate) fn new(reqs: Prebuilt) -> Lane {
        let n = reqs.len();
        Lane {
            reqs,
            off: 0,
            sent: 0,
            answered: 0,
            seen: vec![false; n],
            sent_at: vec![0; n],
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.answered == self.reqs.len()
    }
}

/// The connections of a run and the loop that drives them.
pub struct Engine {
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    scratch: Vec<u8>,
    scanner: Scanner,
}

/// Counters a reply updates.
pub(crate) struct Books<'a> {
    pub(crate) tag: Tag,
    pub(crate) tally: &'a mut Tally,
    pub(crate) latency: &'a mut Histogram<u64>,
    pub(crate) answered: &'a mut usize,
}

impl Engine {
    /// Takes over connected streams.
    pub fn new(streams: Vec<Io>) -> io::Result<Engine> {
        let poll = Poll::new()?;
        let mut conns = Vec::with_capacity(streams.len());
        for (index, mut io) in streams.into_iter().enumerate() {
            io.register(poll.registry(), index)?;
            conns.push(Conn {
                io,
                lines: Lines::default(),
                closed: false,
            });
        }
        Ok(Engine {
            poll,
            events: Events::with_capacity(1024),
            conns,
            scratch: vec![0; READ_BUFFER],
            scanner: Scanner::default(),
        })
    }

    /// Sends every request of `phase` (one `Prebuilt` per connection) and checks every reply.
    pub fn run(&mut self, requests: Vec<Prebuilt>, mut phase: Phase<'_>) -> io::Result<Outcome> {
        assert_eq!(requests.len(), self.conns.len(), "one lane per connection");
        let total: usize = requests.iter().map(Prebuilt::len).sum();
        let mut lanes: Vec<Lane> = requests.into_iter().map(Lane::new).collect();
        let mut tally = Tally::default();
        let mut latency = latency_histogram();
        let mut answered = 0usize;
        let mut kills = 0u64;
        let mut stalled = false;
        let mut touched = Vec::new();

        let start = Instant::now();
        for (index, lane) in lanes.iter_mut().enumerate() {
            self.send(index, lane, phase.window, start);
        }
        let mut last_progress = start;
        // The first kill comes right after the first writes: the worker is up (the warm-up proved
        // it) and requests are in flight, so even a tiny run sees a worker die under load.
        let mut next_kill = phase.churn.as_ref().map(|_| start);
        let mut finished: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if let Some(done) = finished {
                if now >= done + phase.linger {
                    break;
                }
            } else if answered == total {
                finished = Some(now);
                (phase.on_done)();
                continue;
            } else if now - last_progress >= phase.stall || self.all_closed(&lanes) {
                stalled = true;
                break;
            }
            if let (Some(churn), Some(at)) = (phase.churn.as_mut(), next_kill) {
                if finished.is_none() && now >= at {
                    kills += u64::from((churn.kill)());
                    next_kill = Some(at + churn.every);
                }
            }
            let mut wait = TICK;
            if let Some(at) = next_kill {
                wait = wait.min(at.saturating_duration_since(now));
            }
            match self.poll.poll(&mut self.events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            touched.clear();
            touched.extend(self.events.iter().map(|e| index_of(e.token())));
            touched.dedup();
            let before = answered;
            for &index in &touched {
                let mut books = Books {
                    tag: phase.tag,
                    tally: &mut tally,
                    latency: &mut latency,
                    answered: &mut answered,
                };
                self.receive(index, &mut lanes, &mut books, start);
                self.send(index, &mut lanes[index], phase.window, start);
            }
            if answered > before {
                last_progress = Instant::now();
            }
        }
        tally.lost = lanes
            .iter()
            .map(|l| (l.reqs.len() - l.answered) as u64)
            .sum();
        // A stalled phase ends at its last reply: the stall timeout is not part of the run.
        let end = finished.unwrap_or(last_progress);
        Ok(Outcome {
            tally,
            latency,
            elapsed: end - start,
            kills,
            stalled,
        })
    }

    /// Whether every connection that still owes replies is closed (nothing more can arrive).
    fn all_closed(&self, lanes: &[Lane]) -> bool {
        lanes
            .iter()
            .zip(&self.conns)
            .all(|(lane, conn)| lane.done() || conn.closed)
    }

    /// Writes as many of the lane's requests as its window and the kernel allow.
    fn send(&mut self, index: usize, lane: &mut Lane, window: usize, start: Instant) {
        let conn = &mut self.conns[index];
        while !conn.closed {
            let allowed = lane.reqs.len().min(lane.answered + window);
            let upto = allowed.min(lane.sent + MAX_LINES_PER_WRITE);
            if upto <= lane.sent {
                return;
            }
            let end = lane.reqs.ends[upto - 1];
            let now = start.elapsed().as_nanos() as u64;
            match conn.io.write(&lane.reqs.bytes[lane.off..end]) {
                Ok(0) => conn.closed = true,
                Ok(n) => {
                    lane.off += n;
                    while lane.sent < lane.reqs.len() && lane.reqs.ends[lane.sent] <= lane.off {
                        lane.sent_at[lane.sent] = now;
                        lane.sent += 1;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A reset or a closed pipe: whatever was not answered is lost, and counted so.
                Err(_) => conn.closed = true,
            }
        }
    }

    /// Reads everything available on connection `index` and checks each reply.
    fn receive(&mut self, index: usize, lanes: &mut [Lane], books: &mut Books<'_>, start: Instant) {
        let Engine {
            conns,
            scratch,
            scanner,
            ..
        } = self;
        let conn = &mut conns[index];
        while !conn.closed {
            let n = match conn.io.read(scratch) {
                Ok(0) => {
                    conn.closed = true;
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    conn.closed = true;
                    return;
                }
            };
            let now = start.elapsed().as_nanos() as u64;
            conn.lines.feed(&scratch[..n], |line| {
                check(scanner.reply(line), index, lanes, books, now);
            });
        }
    }
}

/// An empty round-trip histogram: 1 ns to an hour, 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Books one reply line that arrived on connection `index` at `now`.
pub(crate) fn check(
    reply: Reply,
    index: usize,
    lanes: &mut [Lane],
    books: &mut Books<'_>,
    now: u64,
) {
    let Reply::Id { id, error } = reply else {
        books.tally.unidentified += 1;
        return;
    };
    if id.tag != books.tag {
        books.tally.stray += 1;
        return;
    }
    if id.conn != index {
        books.tally.misrouted += 1;
        return;
    }
    let lane = &mut lanes[index];
    if id.seq >= lane.sent {
        books.tally.stray += 1;
        return;
    }
    if std::mem::replace(&mut lane.seen[id.seq], true) {
        books.tally.duplicates += 1;
        return;
    }
    lane.answered += 1;
    *books.answered += 1;
    if error {
        books.tally.errors += 1;
    } else {
        books.tally.ok += 1;
    }
    books
        .latency
        .saturating_record(now.saturating_sub(lane.sent_at[id.seq]).max(1));
}
