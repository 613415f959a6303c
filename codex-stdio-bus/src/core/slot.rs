//! One numbered place in a pool where a worker process runs.
//!
//! Sessions are hashed onto slots, not onto processes: a worker that dies and restarts comes back in
//! the same slot, so its sessions keep their placement. The slot owns what must survive a restart:
//! the queue of bytes toward the worker's stdin and the table of requests awaiting a reply, both
//! under one lock so that a request is either queued-and-pending or refused, never half of each.

use std::fmt;
use std::ops::Range;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_protocol::{append_with_bus_id, ErrorKind};
use tokio::sync::{watch, Notify};

use super::address::SlotAddress;
use super::client::Client;
use super::id_map::IdMap;
use super::id_token::IdToken;
use super::log_limit::LogLimit;
use super::outbox::Outbox;
use super::worker_events::{EventKind, WorkerEvents};

/// The readiness probe's request id, as it appears on the wire. Bus ids are integers, so a string
/// cannot be mistaken for a client's request; the router recognises the probe's answer by it.
pub(crate) const PROBE_ID: &[u8] = b"\"codex-stdio-bus:ready\"";

/// Lifecycle of a slot, as the supervisor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// Spawned, not yet known to be serving.
    Starting,
    /// A worker process is running.
    Ready,
    /// The worker exited; waiting before the next start. Requests queue meanwhile.
    Backoff,
    /// The restart limit was exceeded; requests are refused until the slot is tried again.
    Failed,
    /// The worker exited and the pool's restart policy leaves the slot empty; requests are refused.
    Exited,
    /// A rolling restart holds new work for the next worker while the running one finishes
    /// what it has ([`Slot::hold`]).
    Replacing,
    /// The daemon is draining, or the slot is retired: new requests are refused, the worker still
    /// finishes what it holds.
    Draining,
    /// The daemon stopped the worker; everything is refused.
    Stopped,
}

impl SlotState {
    /// The lower-case name used in logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SlotState::Starting => "starting",
            SlotState::Ready => "ready",
            SlotState::Backoff => "backoff",
            SlotState::Failed => "failed",
            SlotState::Exited => "exited",
            SlotState::Replacing => "replacing",
            SlotState::Draining => "draining",
            SlotState::Stopped => "stopped",
        }
    }

    /// Whether a ready worker serves the slot: `Ready`, or `Replacing` (its worker finishes what it
    /// holds while new work waits for the next). What `/readyz` and `/status` count as ready.
    pub(crate) fn serves(self) -> bool {
        matches!(self, SlotState::Ready | SlotState::Replacing)
    }

    /// Whether no worker will come back without the supervisor trying again (counts toward escalation).
    pub(crate) fn is_down(self) -> bool {
        matches!(self, SlotState::Failed | SlotState::Exited)
    }

    /// Whether the worker is not (yet) running, so requests wait in the queue for a start.
    fn is_restarting(self) -> bool {
        matches!(self, SlotState::Starting | SlotState::Backoff)
    }

    /// Whether new work (requests, notifications) routed here waits in the queue.
    fn takes_work(self) -> bool {
        matches!(
            self,
            SlotState::Starting | SlotState::Ready | SlotState::Backoff | SlotState::Replacing
        )
    }

    /// Whether answers to the worker's own requests are still delivered: during a drain they are,
    /// since the worker may need them to finish the requests it holds.
    fn takes_answers(self) -> bool {
        self.takes_work() || self == SlotState::Draining
    }

    /// The refusal for a state that takes no work.
    fn refusal(self) -> ErrorKind {
        match self {
            SlotState::Draining | SlotState::Stopped => ErrorKind::ShuttingDown,
            SlotState::Exited => ErrorKind::NoWorker,
            _ => ErrorKind::WorkerFailed,
        }
    }
}

/// Which setting a request outlived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// `request_timeout_sec`: the worker took too long to answer.
    Request,
    /// `queue_timeout_sec`: no worker started in time to take it.
    Queue,
}

impl Deadline {
    /// The `data.detail` of the timeout error.
    pub(crate) fn detail(self) -> &'static str {
        match self {
            Deadline::Request => "no reply within request_timeout_sec",
            Deadline::Queue => "no worker started within queue_timeout_sec",
        }
    }
}

/// A client request the worker has not answered yet.
pub(crate) struct Pending {
    /// Who asked: the reply goes to this client's output queue.
    pub client: Arc<Client>,
    /// The client's original id token, restored byte for byte on the reply.
    pub id: IdToken,
    /// When the request was queued (request latency, timeouts).
    pub since: Instant,
}

/// The slot's bookkeeping, guarded together with its input queue.
pub(crate) struct SlotBook {
    pending: IdMap<Pending>,
    next_bus_id: u64,
    state: SlotState,
    /// Set once the daemon drains: no worker (re)started here takes new work again.
    draining: bool,
    /// Set by [`Slot::retire`]: the slot refuses new work until a worker is started here again.
    retired: bool,
    /// While a rolling restart holds new work ([`Slot::hold`]): the first bus id held. Requests
    /// from it on (and the lines naming them) wait in the queue's `aside` for the next worker.
    hold: Option<u64>,
    /// Counts worker processes started in this slot; answers from a client to an older process's
    /// request must not reach its successor.
    generation: u64,
    /// When the running worker was started (spawned), for its uptime.
    started_at: Option<Instant>,
    /// How the previous worker ended, and when (for status and the dashboard).
    last_exit: Option<LastExit>,
}

/// How a slot's previous worker ended.
#[derive(Clone, Debug)]
pub(crate) struct LastExit {
    /// Its exit status as the supervisor describes it, e.g. `signal: 9 (SIGKILL)`.
    pub status: Arc<str>,
    /// When the supervisor saw it end.
    pub at: Instant,
}

/// What a slot looks like at one moment (for status and metrics).
#[derive(Clone, Debug)]
pub(crate) struct SlotSnapshot {
    /// Its state.
    pub state: SlotState,
    /// The running worker's pid.
    pub pid: Option<u32>,
    /// How long the running worker has been running (since it was spawned).
    pub uptime: Option<Duration>,
    /// Requests awaiting a reply.
    pub in_flight: usize,
    /// Bytes queued toward the worker (those held for its successor included).
    pub queued_bytes: usize,
    /// Sessions placed on this slot.
    pub sessions: usize,
    /// Workers restarted in this slot so far.
    pub restarts: u64,
    /// How the previous worker ended, if one did (a stop by the daemon is not recorded).
    pub last_exit: Option<LastExit>,
}

/// A numbered worker place in a pool.
pub(crate) struct Slot {
    /// The pool's id, for logs.
    pub pool: Arc<str>,
    /// The slot number, 0-based.
    pub index: u32,
    /// Where the slot sits among the pools.
    pub address: SlotAddress,
    /// Bytes toward the worker's stdin, plus the pending table.
    pub queue: Outbox<SlotBook>,
    /// Mirror of the pending table's size, read lock-free for least-loaded placement.
    in_flight: AtomicUsize,
    /// The running worker's pid (its process group id too), 0 when none runs.
    pid: AtomicU32,
    /// Sessions placed here (they are never moved away).
    sessions: AtomicUsize,
    /// Restarts so far.
    restarts: AtomicU64,
    /// Signalled when `in_flight` drops to zero during a drain or a retirement (and whenever the
    /// worker goes), and whenever a request leaves the table while work is held.
    idle: Notify,
    /// The latest worker generation that answered the pool's readiness probe.
    probe_answered: watch::Sender<u64>,
    /// Limits the warnings about this slot's worker lines (bad, unroutable, oversize).
    pub warnings: LogLimit,
    /// The daemon's recent worker events, which this slot's starts, exits and stderr join.
    pub events: Arc<WorkerEvents>,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.pool, self.index)
    }
}

impl Slot {
    /// A slot in `Starting` state at `address` of pool `pool`, whose input queue holds about
    /// `queue_limit` bytes, recording its worker events into `events`.
    pub(crate) fn new(
        pool: Arc<str>,
        address: SlotAddress,
        queue_limit: usize,
        events: Arc<WorkerEvents>,
    ) -> Self {
        let book = SlotBook {
            pending: IdMap::default(),
            next_bus_id: 1,
            state: SlotState::Starting,
            draining: false,
            retired: false,
            hold: None,
            generation: 0,
            started_at: None,
            last_exit: None,
        };
        Slot {
            pool,
            index: address.slot,
            address,
            queue: Outbox::new(queue_limit, book),
            in_flight: AtomicUsize::new(0),
            pid: AtomicU32::new(0),
            sessions: AtomicUsize::new(0),
            restarts: AtomicU64::new(0),
            idle: Notify::new(),
            probe_answered: watch::Sender::new(0),
            warnings: LogLimit::default(),
            events,
        }
    }

    /// Records that the worker running as `generation` answered the readiness probe.
    pub(crate) fn probe_answered(&self, generation: u64) {
        self.probe_answered.send_replace(generation);
    }

    /// Waits until the worker running as `generation` has answered the readiness probe.
    pub(crate) async fn wait_probe(&self, generation: u64) {
        let mut answered = self.probe_answered.subscribe();
        // The sender lives in `self`, so the wait cannot fail while we borrow it.
        let _ = answered.wait_for(|&g| g == generation).await;
    }

    /// Counts a session newly placed here.
    pub(crate) fn count_session(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a session of this slot gone from the sticky table (expired).
    pub(crate) fn forget_session(&self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records how the worker ended (`status` as the supervisor describes it), now: as the
    /// slot's last exit and as a worker event of `kind` ([`EventKind::Exit`] or
    /// [`EventKind::NotReady`]).
    pub(crate) fn record_exit(&self, kind: EventKind, status: String) {
        self.record(kind, &status);
        self.queue.lock().state.last_exit = Some(LastExit {
            status: status.into(),
            at: Instant::now(),
        });
    }

    /// Records a worker event of this slot (see [`WorkerEvents::push`]).
    pub(crate) fn record(&self, kind: EventKind, text: &str) {
        self.events.push(&self.pool, self.index, kind, text);
    }

    /// Counts a restart of this slot's worker.
    pub(crate) fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// The slot's figures at this moment.
    pub(crate) fn snapshot(&self) -> SlotSnapshot {
        let q = self.queue.lock();
        SlotSnapshot {
            state: q.state.state,
            pid: self.pid(),
            uptime: q.state.started_at.map(|t| t.elapsed()),
            in_flight: self.in_flight(),
            queued_bytes: q.buf.len() + q.aside.len(),
            sessions: self.sessions.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            last_exit: q.state.last_exit.clone(),
        }
    }

    /// The running worker's pid, if one runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }

    /// Records the running worker's pid (None once it has exited).
    pub(crate) fn set_pid(&self, pid: Option<u32>) {
        self.pid.store(pid.unwrap_or(0), Ordering::Relaxed);
    }

    /// Requests sent to the worker and not yet answered.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The current state.
    pub(crate) fn state(&self) -> SlotState {
        self.queue.lock().state.state
    }

    /// The current worker generation.
    pub(crate) fn generation(&self) -> u64 {
        self.queue.lock().state.generation
    }

    /// Queues a client request with its id replaced by a fresh bus id, and records it as pending
    /// since `received` (when its read completed: one clock read per read, not per message).
    /// While work is held ([`Slot::hold`]) it waits for the next worker instead.
    ///
    /// # Errors
    ///
    /// The state's refusal when the slot takes no work: `shutting_down` (draining, retired,
    /// stopped), `no_worker` (exited), `worker_failed` (failed).
    pub(crate) fn enqueue_request(
        &self,
        client: &Arc<Client>,
        line: &[u8],
        id: Range<usize>,
        received: Instant,
    ) -> Result<(), ErrorKind> {
        self.queue.with_queue(|q| {
            if !q.state.state.takes_work() {
                return Err(q.state.state.refusal());
            }
            let bus_id = q.state.next_bus_id;
            q.state.next_bus_id += 1;
            let original = IdToken::new(&line[id.clone()]);
            q.state.pending.insert(
                bus_id,
                Pending {
                    client: client.clone(),
                    id: original,
                    since: received,
                },
            );
            let out = if q.state.hold.is_some() {
                &mut q.aside
            } else {
                &mut q.buf
            };
            append_with_bus_id(out, line, id, bus_id);
            Ok(())
        })?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        client.request_started();
        Ok(())
    }

    /// Queues a line that needs no reply bookkeeping (a notification, or an answer to the worker).
    ///
    /// `generation`, when given, must match the running worker: an answer meant for a process that
    /// has since exited is refused rather than handed to its successor. An answer goes to the
    /// running worker even while work is held; a notification (`None`) is then held for the next
    /// one, behind the requests held before it.
    ///
    /// # Errors
    ///
    /// The state's refusal (see [`Slot::enqueue_request`]; answers are still taken while
    /// draining or retired), or `worker_exited` for an answer to a process that has exited.
    pub(crate) fn enqueue_line(
        &self,
        generation: Option<u64>,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), ErrorKind> {
        self.queue.with_queue(|q| {
            let state = q.state.state;
            let open = match generation {
                Some(_) => state.takes_answers(),
                None => state.takes_work(),
            };
            if !open {
                return Err(state.refusal());
            }
            if generation.is_some_and(|g| g != q.state.generation) {
                return Err(ErrorKind::WorkerExited);
            }
            if generation.is_none() && q.state.hold.is_some() {
                fill(&mut q.aside);
            } else {
                fill(&mut q.buf);
            }
            Ok(())
        })
    }

    /// Queues a notification that names one of `client`'s requests in flight here by the id the
    /// client gave it (the token at `span`, e.g. a cancellation's `params.id`), with that token
    /// replaced by the request's bus id. `Ok(false)` queues nothing: no such request is in flight
    /// here (unknown, finished, or sent on another slot, whose bus ids mean nothing to this
    /// worker), and passing the client's id on could match another client's request. Refused
    /// like any notification when the slot takes no work.
    ///
    /// The pending table is scanned (the newest match wins when a client reused an id in
    /// flight): cancellations are rare, and an index by client id would cost every request.
    ///
    /// While work is held, a line naming a request of the running worker goes to it (it may be
    /// a cancellation that lets it finish sooner); one naming a held request is held with it.
    /// For the same reason a draining or retired slot, which refuses new work, still takes a line
    /// naming a request its worker is finishing.
    pub(crate) fn enqueue_reference(
        &self,
        client: &Client,
        line: &[u8],
        span: Range<usize>,
    ) -> Result<bool, ErrorKind> {
        let token = &line[span.clone()];
        self.queue.with_queue(|q| {
            if !q.state.state.takes_answers() {
                return Err(q.state.state.refusal());
            }
            let Some(bus_id) = named(&q.state, client, token) else {
                return Ok(false);
            };
            let out = if q.state.hold.is_some_and(|mark| bus_id >= mark) {
                &mut q.aside
            } else {
                &mut q.buf
            };
            append_with_bus_id(out, line, span, bus_id);
            Ok(true)
        })
    }

    /// Whether `token` names a request of `client` that is held for the next worker (a rolling
    /// restart's hold), rather than one the running worker has: a line naming the running
    /// worker's request goes to it, past the work held for its successor, so it need only wait
    /// for room in that worker's own queue ([`Outbox::wait_for_own_space`]).
    pub(crate) fn names_held(&self, client: &Client, token: &[u8]) -> bool {
        let q = self.queue.lock();
        let Some(mark) = q.state.hold else {
            return false;
        };
        named(&q.state, client, token).is_some_and(|bus_id| bus_id >= mark)
    }

    /// Removes and returns the pending request with this bus id (its `since` times the reply),
    /// if the reply comes from the worker running now: `generation` is the process whose stdout
    /// the reply was read from. Anything a dead worker left behind (a child holding its stdout)
    /// must not answer for its successor, whose bus ids continue the same sequence.
    pub(crate) fn take_pending(&self, bus_id: u64, generation: u64) -> Option<Pending> {
        let (taken, draining, holding) = {
            let mut q = self.queue.lock();
            if q.state.generation != generation {
                return None;
            }
            let draining = q.state.draining || q.state.retired;
            (
                q.state.pending.remove(&bus_id),
                draining,
                q.state.hold.is_some(),
            )
        };
        if taken.is_some() {
            let was = self.in_flight.fetch_sub(1, Ordering::Relaxed);
            // Only a drain, a retirement or a roll waits for the slot to go idle: the hot path
            // skips the wake-up. A roll waits for the old requests only, which the count does not
            // tell apart from the held ones: it looks again at every reply.
            if (was == 1 && draining) || holding {
                self.idle.notify_waiters();
            }
        }
        taken
    }

    /// Waits until no request is in flight here. Meant for the drain: wake-ups come from replies
    /// only once [`Slot::begin_drain`] (or [`Slot::retire`]) has run, and from expiries and worker
    /// exits at any time.
    pub(crate) async fn wait_idle(&self) {
        self.wait_until(|| self.in_flight() == 0).await;
    }

    /// Waits until the running worker has nothing left to answer: while work is held
    /// ([`Slot::hold`]), until no request below the hold mark is pending (the held ones are the
    /// next worker's); otherwise (a retired slot) until no request at all is pending. Meant for a
    /// roll or a retirement, whose replies, expiries and worker exits wake it.
    pub(crate) async fn wait_old_idle(&self) {
        self.wait_until(|| {
            let q = self.queue.lock();
            match q.state.hold {
                Some(mark) => !q.state.pending.keys().any(|&id| id < mark),
                None => q.state.pending.is_empty(),
            }
        })
        .await;
    }

    /// Waits until `idle` holds, looking again at every wake-up of `self.idle`.
    async fn wait_until(&self, idle: impl Fn() -> bool) {
        loop {
            let mut notified = pin!(self.idle.notified());
            // Registered before the check, so a wake-up in between is not lost.
            notified.as_mut().enable();
            if idle() {
                return;
            }
            notified.await;
        }
    }

    /// Whether the daemon has started draining this slot.
    pub(crate) fn draining(&self) -> bool {
        self.queue.lock().state.draining
    }

    /// Whether `bus_id` was ever handed out here (a reply to it that finds nothing pending is late,
    /// not invented).
    pub(crate) fn issued(&self, bus_id: u64) -> bool {
        bus_id < self.queue.lock().state.next_bus_id
    }

    /// Removes and returns the pending requests past their deadline at `now`: older than
    /// `request_timeout` (if any), or older than `queue_timeout` while no worker is up to take
    /// them (the slot is restarting, or they are held for the next worker). Each comes with the
    /// setting it exceeded, for the error's detail.
    pub(crate) fn expire(
        &self,
        now: Instant,
        request_timeout: Option<Duration>,
        queue_timeout: Duration,
    ) -> Vec<(Pending, Deadline)> {
        let mut q = self.queue.lock();
        let restarting = q.state.state.is_restarting();
        let hold = q.state.hold;
        let over = |bus_id: u64, since: Instant| {
            let age = now.saturating_duration_since(since);
            let waiting = restarting || hold.is_some_and(|mark| bus_id >= mark);
            if request_timeout.is_some_and(|t| age >= t) {
                Some(Deadline::Request)
            } else if waiting && age >= queue_timeout {
                Some(Deadline::Queue)
            } else {
                None
            }
        };
        let late: Vec<(u64, Deadline)> = q
            .state
            .pending
            .iter()
            .filter_map(|(&id, p)| over(id, p.since).map(|d| (id, d)))
            .collect();
        let expired: Vec<(Pending, Deadline)> = late
            .into_iter()
            .filter_map(|(id, d)| q.state.pending.remove(&id).map(|p| (p, d)))
            .collect();
        drop(q);
        self.forget(expired.len());
        if hold.is_some() && !expired.is_empty() {
            // A roll waiting for the old requests must look again (see `take_pending`).
            self.idle.notify_waiters();
        }
        expired
    }

    /// Takes `n` requests off the in-flight count after they were removed from the table.
    fn forget(&self, n: usize) {
        if n > 0 && self.in_flight.fetch_sub(n, Ordering::Relaxed) == n {
            self.idle.notify_waiters();
        }
    }

    /// Moves to `state`, discarding the queue and returning every pending request when the worker
    /// that was meant to answer them is gone (`Backoff`, `Failed`, `Exited`, `Stopped`).
    ///
    /// Once draining, a slot never takes new work again: a worker (re)started during the drain
    /// reports `Draining`, not `Starting` or `Ready`. A retired slot reports `Draining` too until
    /// a worker is started here again (`Starting` revives it).
    ///
    /// While work is held ([`Slot::hold`]): a ready worker reports `Replacing`; `Backoff` (the
    /// old worker is gone, its successor comes next) returns only the requests below the hold
    /// mark and keeps the held bytes and requests; `Starting` ends the hold and hands the held
    /// bytes to the new worker. `Failed`, `Exited` and `Stopped` end the hold and return every
    /// pending request: no successor is coming to answer the held ones soon.
    pub(crate) fn transition(&self, state: SlotState) -> Vec<Pending> {
        let mut q = self.queue.lock();
        if state == SlotState::Starting {
            q.state.retired = false;
        }
        let refusing = q.state.draining || q.state.retired;
        q.state.state = match state {
            SlotState::Starting | SlotState::Ready if refusing => SlotState::Draining,
            SlotState::Ready if q.state.hold.is_some() => SlotState::Replacing,
            other => other,
        };
        match state {
            SlotState::Starting => {
                q.state.generation += 1;
                q.state.started_at = Some(Instant::now());
                // The previous worker's writer stopped with its process (a stop closed the queue):
                // this worker's writer takes what was held for it, after anything queued since.
                q.closed = false;
                if q.state.hold.take().is_some() {
                    let held = std::mem::take(&mut q.aside);
                    q.buf.extend_from_slice(&held);
                }
                Vec::new()
            }
            SlotState::Ready | SlotState::Replacing | SlotState::Draining => Vec::new(),
            SlotState::Backoff | SlotState::Failed | SlotState::Exited | SlotState::Stopped => {
                q.state.started_at = None;
                q.buf.clear();
                // The requests from the hold mark on stay for the next worker, if one comes.
                let held_from = match q.state.hold {
                    Some(mark) if state == SlotState::Backoff => Some(mark),
                    _ => {
                        q.state.hold = None;
                        q.aside = Vec::new();
                        None
                    }
                };
                let old: Vec<u64> = q
                    .state
                    .pending
                    .keys()
                    .copied()
                    .filter(|&id| held_from.is_none_or(|mark| id < mark))
                    .collect();
                let failed: Vec<Pending> = old
                    .into_iter()
                    .filter_map(|id| q.state.pending.remove(&id))
                    .collect();
                drop(q);
                self.forget(failed.len());
                // A roll waits for the old requests alone, which may leave held ones in flight.
                self.idle.notify_waiters();
                self.queue.wake_producers();
                failed
            }
        }
    }

    /// Starts the drain: new work is refused while what is queued or pending is untouched, so the
    /// worker still gets its input and its replies are still delivered.
    pub(crate) fn begin_drain(&self) {
        let mut q = self.queue.lock();
        q.state.draining = true;
        if !q.state.state.is_down() {
            q.state.state = SlotState::Draining;
        }
    }

    /// Starts a handover to a new worker (a rolling restart): from now on, new requests,
    /// notifications and lines naming the new requests are held for the next worker (started
    /// with [`SlotState::Starting`]) instead of reaching the running one, which still gets the
    /// answers to its own requests and the cancellations of its pending ones. Held bytes count
    /// toward the queue's limit. The slot reports [`SlotState::Replacing`] while it takes work.
    /// Holding already, it keeps its mark.
    pub(crate) fn hold(&self) {
        let mut q = self.queue.lock();
        if q.state.hold.is_none() {
            q.state.hold = Some(q.state.next_bus_id);
        }
        // A worker still starting stays `Starting` (its queue deadline applies to every request
        // it will be handed); it reports `Replacing` once ready (`transition`).
        if q.state.state == SlotState::Ready {
            q.state.state = SlotState::Replacing;
        }
    }

    /// Retires the slot (it leaves the pool): like [`Slot::begin_drain`] for this slot alone,
    /// new work is refused with `shutting_down` while the worker still gets its input and the
    /// answers to its requests. No worker started during the retirement takes work; one started
    /// later, by a new supervisor, does ([`Slot::transition`] to `Starting`).
    pub(crate) fn retire(&self) {
        let mut q = self.queue.lock();
        q.state.retired = true;
        if q.state.state != SlotState::Stopped {
            q.state.state = SlotState::Draining;
        }
        drop(q);
        // A drain of the slot waits for replies, which wake it only from now on.
        self.idle.notify_waiters();
    }
}

/// The bus id of `client`'s pending request whose id token is `token`: the newest, when the
/// client reused an id in flight. The table is scanned: cancellations are rare, and an index by
/// client id would cost every request.
fn named(book: &SlotBook, client: &Client, token: &[u8]) -> Option<u64> {
    book.pending
        .iter()
        .filter(|(_, p)| p.client.id == client.id && *p.id == *token)
        .map(|(&bus_id, _)| bus_id)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> Slot {
        let events = Arc::default();
        Slot::new("p".into(), SlotAddress { pool: 0, slot: 0 }, 1024, events)
    }

    fn client_number(id: u64) -> Arc<Client> {
        Client::for_test(id)
    }

    fn client() -> Arc<Client> {
        client_number(1)
    }

    #[test]
    fn requests_are_pending_until_taken_and_failed_when_the_worker_goes() {
        let slot = slot();
        let client = client();
        slot.transition(SlotState::Starting);
        slot.enqueue_request(&client, br#"{"id":"a","method":"m"}"#, 6..9, Instant::now())
            .unwrap();
        slot.enqueue_request(&client, br#"{"id":"b","method":"m"}"#, 6..9, Instant::now())
            .unwrap();
        assert_eq!(slot.in_flight(), 2);
        assert_eq!(
            slot.queue.lock().buf,
            b"{\"id\":1,\"method\":\"m\"}\n{\"id\":2,\"method\":\"m\"}\n"
        );
        let taken = slot.take_pending(1, slot.generation()).unwrap();
        assert_eq!(&*taken.id, b"\"a\"");
        assert!(
            slot.take_pending(1, slot.generation()).is_none(),
            "a reply is matched once"
        );
        let failed = slot.transition(SlotState::Backoff);
        assert_eq!(failed.len(), 1);
        assert_eq!(&*failed[0].id, b"\"b\"");
        assert_eq!(slot.in_flight(), 0);
        assert!(
            slot.queue.lock().buf.is_empty(),
            "the dead worker's input is discarded"
        );
    }

    #[test]
    fn a_draining_slot_refuses_new_work_even_after_a_restart_but_takes_answers() {
        let slot = slot();
        let client = client();
        slot.transition(SlotState::Starting);
        slot.transition(SlotState::Ready);
        slot.begin_drain();
        let line = br#"{"id":1,"method":"m"}"#;
        assert_eq!(
            slot.enqueue_request(&client, line, 6..7, Instant::now()),
            Err(ErrorKind::ShuttingDown)
        );
        slot.transition(SlotState::Starting);
        slot.transition(SlotState::Ready);
        assert_eq!(slot.state(), SlotState::Draining);
        assert_eq!(
            slot.enqueue_request(&client, line, 6..7, Instant::now()),
            Err(ErrorKind::ShuttingDown)
        );
        let generation = slot.generation();
        assert!(slot
            .enqueue_line(Some(generation), |b| b.push(b'x'))
            .is_ok());
        assert_eq!(
            slot.enqueue_line(Some(generation - 1), |b| b.push(b'x')),
            Err(ErrorKind::WorkerExited)
        );
        assert_eq!(
            slot.enqueue_line(None, |b| b.push(b'x')),
            Err(ErrorKind::ShuttingDown)
        );
    }

    #[tokio::test]
    async fn a_draining_slot_wakes_its_drain_when_the_last_reply_is_taken() {
        let slot = Arc::new(slot());
        let client = client();
        slot.transition(SlotState::Ready);
        let line = br#"{"id":1,"method":"m"}"#;
        slot.enqueue_request(&client, line, 6..7, Instant::now())
            .unwrap();
        slot.enqueue_request(&client, line, 6..7, Instant::now())
            .unwrap();
        slot.begin_drain();
        assert!(slot.draining());
        let waiter = tokio::spawn({
            let slot = slot.clone();
            async move { slot.wait_idle().await }
        });
        tokio::task::yield_now().await;
        assert!(slot.take_pending(1, slot.generation()).is_some());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one request is still in flight");
        assert!(slot.take_pending(2, slot.generation()).is_some());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the last reply wakes the drain")
            .unwrap();
    }

    #[test]
    fn references_find_the_senders_pending_requests_only() {
        let slot = slot();
        let (a, b) = (client(), client_number(2));
        let request = br#"{"id":"x","method":"m"}"#;
        let cancel = br#"{"params":{"id":"x"}}"#;
        let named = 16..19;
        slot.enqueue_request(&a, request, 6..9, Instant::now())
            .unwrap();
        slot.queue.lock().buf.clear();
        assert_eq!(slot.enqueue_reference(&b, cancel, named.clone()), Ok(false));
        assert_eq!(slot.enqueue_reference(&a, cancel, named.clone()), Ok(true));
        assert_eq!(slot.queue.lock().buf, b"{\"params\":{\"id\":1}}\n");
        // A reused id names the latest request; the older one finishing leaves it in place.
        slot.enqueue_request(&a, request, 6..9, Instant::now())
            .unwrap();
        assert!(slot.take_pending(1, slot.generation()).is_some());
        slot.queue.lock().buf.clear();
        assert_eq!(slot.enqueue_reference(&a, cancel, named.clone()), Ok(true));
        assert_eq!(slot.queue.lock().buf, b"{\"params\":{\"id\":2}}\n");
        // Answered, expired or failed requests can no longer be named.
        assert!(slot.take_pending(2, slot.generation()).is_some());
        assert_eq!(slot.enqueue_reference(&a, cancel, named.clone()), Ok(false));
        slot.enqueue_request(&a, request, 6..9, Instant::now())
            .unwrap();
        assert_eq!(
            slot.expire(Instant::now(), Some(Duration::ZERO), Duration::MAX)
                .len(),
            1
        );
        assert_eq!(slot.enqueue_reference(&a, cancel, named.clone()), Ok(false));
        slot.enqueue_request(&a, request, 6..9, Instant::now())
            .unwrap();
        assert_eq!(slot.transition(SlotState::Backoff).len(), 1);
        // Failed with its worker: nothing left to name.
        assert_eq!(slot.enqueue_reference(&a, cancel, named), Ok(false));
    }

    #[test]
    fn a_failed_slot_refuses_with_worker_failed() {
        let slot = slot();
        let client = client();
        slot.transition(SlotState::Failed);
        let line = br#"{"id":1,"method":"m"}"#;
        assert_eq!(
            slot.enqueue_request(&client, line, 6..7, Instant::now()),
            Err(ErrorKind::WorkerFailed)
        );
    }

    #[test]
    fn a_held_slot_keeps_new_work_for_the_next_worker_and_fails_only_the_old() {
        let slot = slot();
        let client = client();
        slot.transition(SlotState::Starting);
        slot.transition(SlotState::Ready);
        let old_gen = slot.generation();
        let request = |id: &str| format!(r#"{{"id":"{id}","method":"m"}}"#);
        slot.enqueue_request(&client, request("a").as_bytes(), 6..9, Instant::now())
            .unwrap();
        slot.queue.lock().buf.clear();
        slot.hold();
        assert_eq!(slot.state(), SlotState::Replacing);
        slot.enqueue_request(&client, request("b").as_bytes(), 6..9, Instant::now())
            .unwrap();
        slot.enqueue_line(None, |b| b.extend_from_slice(b"note\n"))
            .unwrap();
        slot.enqueue_line(Some(old_gen), |b| b.extend_from_slice(b"answer\n"))
            .unwrap();
        let cancel = br#"{"params":{"id":"a"}}"#;
        assert_eq!(slot.enqueue_reference(&client, cancel, 16..19), Ok(true));
        let cancel_b = br#"{"params":{"id":"b"}}"#;
        assert_eq!(slot.enqueue_reference(&client, cancel_b, 16..19), Ok(true));
        {
            let q = slot.queue.lock();
            assert_eq!(
                q.buf, b"answer\n{\"params\":{\"id\":1}}\n",
                "the running worker gets its answers and cancellations only"
            );
            assert_eq!(
                q.aside,
                b"{\"id\":2,\"method\":\"m\"}\nnote\n{\"params\":{\"id\":2}}\n"
            );
        }
        assert_eq!(slot.snapshot().queued_bytes, 27 + 47);
        // The old worker turning ready late does not end the hold.
        slot.transition(SlotState::Ready);
        assert_eq!(slot.state(), SlotState::Replacing);
        assert_eq!(slot.in_flight(), 2);
        let failed = slot.transition(SlotState::Backoff);
        assert_eq!(failed.len(), 1, "only the old worker's request fails");
        assert_eq!(&*failed[0].id, b"\"a\"");
        assert_eq!(slot.in_flight(), 1);
        assert!(slot.queue.lock().buf.is_empty());
        assert_eq!(
            slot.queue.lock().aside.len(),
            47,
            "held bytes survive the old worker"
        );
        slot.transition(SlotState::Starting);
        assert_eq!(slot.state(), SlotState::Starting);
        {
            let q = slot.queue.lock();
            assert!(q.aside.is_empty());
            assert_eq!(
                q.buf, b"{\"id\":2,\"method\":\"m\"}\nnote\n{\"params\":{\"id\":2}}\n",
                "the new worker gets the held work"
            );
        }
        assert!(slot.take_pending(2, slot.generation()).is_some());
        // The hold is over: new work goes straight to the new worker.
        slot.enqueue_line(None, |b| b.extend_from_slice(b"x\n"))
            .unwrap();
        assert!(slot.queue.lock().buf.ends_with(b"x\n"));
        slot.transition(SlotState::Ready);
        assert_eq!(slot.state(), SlotState::Ready);
    }

    #[test]
    fn the_daemon_stopping_a_holding_slot_fails_held_work_too() {
        let slot = slot();
        let client = client();
        slot.transition(SlotState::Ready);
        let line = br#"{"id":1,"method":"m"}"#;
        slot.enqueue_request(&client, line, 6..7, Instant::now())
            .unwrap();
        slot.hold();
        slot.enqueue_request(&client, line, 6..7, Instant::now())
            .unwrap();
        assert_eq!(slot.transition(SlotState::Stopped).len(), 2);
        assert_eq!(slot.in_flight(), 0);
        assert!(slot.queue.lock().aside.is_empty());
        assert_eq!(
            slot.enqueue_request(&client, line, 6..7, Instant::now()),
            Err(ErrorKind::ShuttingDown),
            "stopped: refused"
        );
    }

    #[tokio::test]
    async fn held_bytes_hold_producers_back_until_they_drain_or_are_dropped() {
        let slot = Arc::new(Slot::new(
            "p".into(),
            SlotAddress { pool: 0, slot: 0 },
            32,
            Arc::default(),
        ));
        let client = client();
        slot.transition(SlotState::Ready);
        slot.hold();
        let line = br#"{"id":1,"method":"a-long-method-name"}"#;
        slot.enqueue_request(&client, line, 6..7, Instant::now())
            .unwrap();
        assert!(slot.queue.lock().buf.is_empty());
        assert!(slot.queue.over_limit(), "held bytes count toward the limit");
        // The old worker is being stopped (its queue closed): held bytes still count.
        slot.queue.close();
        assert!(slot.queue.over_limit());
        let producer = tokio::spawn({
            let slot = slot.clone();
            async move { slot.queue.wait_for_space().await }
        });
        tokio::task::yield_now().await;
        assert!(
            !producer.is_finished(),
            "a producer waits while held bytes fill the queue"
        );
        slot.transition(SlotState::Backoff);
        slot.transition(SlotState::Starting);
        assert!(slot.queue.over_limit(), "now queued for the new worker");
        assert!(!slot.queue.lock().closed, "the new worker's queue is open");
        slot.transition(SlotState::Stopped);
        tokio::time::timeout(Duration::from_secs(5), producer)
            .await
            .expect("discarding the queue wakes producers")
            .unwrap();
    }

    #[test]
    fn held_requests_wait_for_a_worker_under_the_queue_timeout() {
        let slot = slot();
        let client = client();
        slot.transition(SlotState::Ready);
        let line = br#"{"id":1,"method":"m"}"#;
        let long_ago = Instant::now() - Duration::from_secs(60);
        slot.enqueue_request(&client, line, 6..7, long_ago).unwrap();
        slot.hold();
        slot.enqueue_request(&client, line, 6..7, long_ago).unwrap();
        let expired = slot.expire(Instant::now(), None, Duration::from_secs(30));
        assert_eq!(
            expired.len(),
            1,
            "the running worker's request is not queued"
        );
        assert_eq!(expired[0].1, Deadline::Queue);
        assert_eq!(slot.in_flight(), 1);
        assert!(slot.take_pending(1, slot.generation()).is_some());
    }

    #[tokio::test]
    async fn waiting_for_the_old_worker_ignores_held_requests() {
        let slot = Arc::new(slot());
        let client = client();
        slot.transition(SlotState::Ready);
        let line = br#"{"id":1,"method":"m"}"#;
        for _ in 0..2 {
            slot.enqueue_request(&client, line, 6..7, Instant::now())
                .unwrap();
        }
        slot.hold();
        slot.enqueue_request(&client, line, 6..7, Instant::now())
            .unwrap();
        let waiter = tokio::spawn({
            let slot = slot.clone();
            async move { slot.wait_old_idle().await }
        });
        tokio::task::yield_now().await;
        assert!(slot.take_pending(1, slot.generation()).is_some());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "request 2 is still the old worker's");
        assert_eq!(
            slot.expire(Instant::now(), Some(Duration::ZERO), Duration::MAX)
                .len(),
            2,
            "an expiry takes the old request (and the held one)"
        );
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the expiry wakes the wait")
            .unwrap();
    }

    #[tokio::test]
    async fn a_retired_slot_refuses_new_work_finishes_the_old_and_can_be_revived() {
        let slot = Arc::new(slot());
        let client = client();
        slot.transition(SlotState::Starting);
        slot.transition(SlotState::Ready);
        let line = br#"{"id":1,"method":"m"}"#;
        slot.enqueue_request(&client, line, 6..7, Instant::now())
            .unwrap();
        slot.retire();
        assert_eq!(slot.state(), SlotState::Draining);
        assert_eq!(
            slot.enqueue_request(&client, line, 6..7, Instant::now()),
            Err(ErrorKind::ShuttingDown)
        );
        assert_eq!(
            slot.enqueue_line(None, |b| b.push(b'x')),
            Err(ErrorKind::ShuttingDown)
        );
        let generation = slot.generation();
        slot.queue.lock().buf.clear();
        slot.enqueue_line(Some(generation), |b| b.push(b'x'))
            .unwrap();
        assert_eq!(
            slot.queue.lock().buf,
            b"x",
            "answers still reach the worker"
        );
        slot.transition(SlotState::Ready);
        assert_eq!(
            slot.state(),
            SlotState::Draining,
            "a late ready takes no work"
        );
        let waiter = tokio::spawn({
            let slot = slot.clone();
            async move { slot.wait_old_idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(slot.take_pending(1, generation).is_some());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the last reply wakes the retirement")
            .unwrap();
        assert!(slot.transition(SlotState::Stopped).is_empty());
        slot.queue.close();
        // A new supervisor brings the slot back.
        slot.transition(SlotState::Starting);
        assert_eq!(slot.state(), SlotState::Starting);
        assert!(!slot.queue.lock().closed);
        slot.enqueue_request(&client, line, 6..7, Instant::now())
            .unwrap();
        // The daemon-wide drain still wins over a revival.
        slot.begin_drain();
        slot.transition(SlotState::Starting);
        assert_eq!(slot.state(), SlotState::Draining);
    }
}
