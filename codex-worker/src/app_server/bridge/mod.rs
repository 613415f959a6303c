//! The session-scoping core of the bridge, free of I/O so every rule is unit-tested.
//!
//! The event loop feeds it lines from the bus and from the child, child life-cycle events and
//! timer ticks; it answers with lines for the child, lines for the bus (per session) and whether
//! the child must be killed. `client` handles what sessions send, `child` what the child sends,
//! `lifecycle` child restarts, timeouts, idle sessions and the drain.

mod child;
mod client;
mod lifecycle;
#[cfg(test)]
pub(crate) mod tests;

pub use client::{refuse_unscoped, session_of};

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use super::approvals::{ApprovalIds, Approvals};
use super::errors::WorkerError;
use super::handshakes::{ClientHandshake, Remembered};
use super::held::Held;
use super::outbound::{BusLine, Kind};
use super::policy::Policy;
use super::requests::Requests;
use super::sessions::{Scope, SessionKey, Sessions};
use super::threads::{Queued, ThreadLimits, Threads};
use super::wire;

use codex_bus_worker_io::log;

/// How often timers are checked while anything is outstanding; timeouts are seconds long, so
/// this granularity is invisible and costs nothing when idle.
const SWEEP_BUSY: Duration = Duration::from_millis(100);

/// How often idle sessions are looked for when nothing else is outstanding.
const SWEEP_IDLE: Duration = Duration::from_secs(1);

/// The worker's settings that shape the protocol.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Per-request timeout toward the child.
    pub request_timeout: Duration,
    /// Limit for the child's answer to the worker's own `initialize`.
    pub handshake_timeout: Duration,
    /// Unanswered approvals older than this are declined (`None`: wait like Codex does).
    pub approval_timeout: Option<Duration>,
    /// Sessions silent this long lose their subscriptions (`None`: never).
    pub session_idle: Option<Duration>,
    /// How long notifications for a thread nobody owns yet are held.
    pub hold_unknown: Duration,
    /// Most requests in flight to the child; Codex's own queues hold 128.
    pub max_in_flight: usize,
    /// How long a drain waits for active turns before interrupting them.
    pub drain_timeout: Duration,
    /// How long interrupted turns get to report `turn/completed` during a drain.
    pub interrupt_grace: Duration,
    /// `clientInfo` and capabilities of the worker's own `initialize`.
    pub handshake: Handshake,
    /// Which methods are allowed and how they are scoped.
    pub policy: Policy,
    /// The bound on the thread-ownership table.
    pub threads: ThreadLimits,
    /// Whether the child's `CODEX_HOME` serves one scope only (`--child-per-session`), so every
    /// rollout in it is that scope's and a named tenant may resume a thread the table does not
    /// know; with a shared home the table is the only record of whose a rollout is.
    pub private_home: bool,
}

/// What the worker tells the child about itself in `initialize`.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// `clientInfo.name` (appears in Codex's user agent and OpenAI's logs).
    pub name: String,
    /// `clientInfo.version`.
    pub version: String,
    /// `capabilities.experimentalApi`, fixed for the child's life.
    pub experimental_api: bool,
}

/// What the bridge wants done after handling an event.
#[derive(Debug, Default)]
pub struct Out {
    /// Bytes for the child's stdin (whole lines).
    pub child: Vec<u8>,
    /// Lines for the bus.
    pub bus: Vec<BusLine>,
    /// The child misbehaves (e.g. no handshake answer) and must be killed.
    pub kill_child: bool,
    /// Persistent threads that just got an owner, for the owner log: thread, owning scope,
    /// receiving session.
    pub owned: Vec<(String, Scope, SessionKey)>,
    /// Threads whose turn just completed: their rollout grew, so cluster mode publishes it.
    pub turns_ended: Vec<String>,
    /// Sessions whose handshake changed, for the handshake log: the session's latest answered
    /// `initialize`, or `None` when the session was forgotten.
    pub handshakes: Vec<(SessionKey, Option<ClientHandshake>)>,
}

/// Where the child is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildState {
    /// Not running (starting up, backing off before a restart, or given up on).
    Down,
    /// Running; the worker's `initialize` is in flight.
    Handshaking,
    /// Running and initialized.
    Ready,
}

/// Where a drain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainStage {
    /// Waiting for active turns and requests in flight, until the deadline.
    Waiting { deadline: Instant },
    /// Active turns were interrupted; waiting for their `turn/completed` until `until`.
    Interrupting { until: Instant },
    /// Nothing is left: the child's stdin can be closed.
    Done,
}

/// The session-scoping state of one child.
#[derive(Debug)]
pub struct Bridge {
    config: BridgeConfig,
    sessions: Sessions,
    threads: Threads,
    requests: Requests,
    approvals: Approvals,
    held: Held,
    /// Requests waiting for the child (not ready, or too many in flight), in arrival order.
    waiting: VecDeque<Queued>,
    child: ChildState,
    generation: u64,
    /// The child's `InitializeResponse`, answered to every session's `initialize`.
    init_result: Option<Vec<u8>>,
    /// Sessions' handshakes, this worker's and (from the handshake log) earlier ones', to
    /// initialize a session that sends a request without having initialized with this worker.
    remembered: Remembered,
    drain: Option<DrainStage>,
    /// The time of the event being handled.
    now: Instant,
    next_sweep: Instant,
}

impl Bridge {
    /// A bridge with no child yet, numbering server requests from `approval_ids`.
    pub fn new(config: BridgeConfig, approval_ids: ApprovalIds, now: Instant) -> Self {
        let limits = config.threads;
        Self {
            config,
            sessions: Sessions::default(),
            threads: Threads::new(limits),
            requests: Requests::default(),
            approvals: Approvals::new(approval_ids),
            held: Held::default(),
            waiting: VecDeque::new(),
            child: ChildState::Down,
            generation: 0,
            init_result: None,
            remembered: Remembered::new(limits.max),
            drain: None,
            now,
            next_sweep: now,
        }
    }

    /// Whether `thread` has a turn running or requests waiting for it: cluster mode keeps the
    /// lease of such a thread however long it has been since a client named it.
    pub fn thread_busy(&self, thread: &str) -> bool {
        self.threads.get(thread).is_some_and(|entry| {
            entry.active_turn.is_some()
                || !entry.parked.is_empty()
                || entry.residency == super::threads::Residency::Resuming
        })
    }

    /// Interrupts the turn running on `thread`, if any: cluster mode lost the thread's lease, so
    /// this node must stop driving it.
    pub fn interrupt_thread(&mut self, thread: &str, now: Instant, out: &mut Out) {
        self.now = now;
        let turn = self
            .threads
            .get(thread)
            .and_then(|entry| entry.active_turn.clone());
        if let (Some(turn), ChildState::Ready) = (turn, self.child) {
            self.internal_request(
                out,
                "turn/interrupt",
                &serde_json::json!({"threadId": thread, "turnId": turn}),
            );
        }
    }

    /// Whether the child has `thread` loaded (or is loading it): cluster mode must restart the
    /// child before the thread's rollout, changed on another node, is used here.
    pub fn thread_loaded(&self, thread: &str) -> bool {
        self.threads.get(thread).is_some_and(|entry| {
            matches!(
                entry.residency,
                super::threads::Residency::Loaded | super::threads::Residency::Resuming
            )
        })
    }

    /// Marks threads owned in an earlier worker life (from the owner log), or on another node
    /// (cluster mode), as resumable.
    pub fn restore_owner(&mut self, thread: &str, scope: Scope, session: SessionKey) {
        self.threads.restore(thread, scope, session, self.now);
    }

    /// Remembers the handshake `session` sent to an earlier worker (from the handshake log), so
    /// its next request initializes it without an `initialize` of its own.
    pub fn restore_handshake(&mut self, session: &SessionKey, handshake: ClientHandshake) {
        self.remembered.remember(session, handshake);
    }

    /// When `on_timer` must run next, if anything is outstanding.
    pub fn next_deadline(&self) -> Option<Instant> {
        let busy = !self.requests.is_empty()
            || !self.waiting.is_empty()
            || !self.held.is_empty()
            || self.drain.is_some_and(|stage| stage != DrainStage::Done)
            || self.threads.parked() > 0
            || (self.config.approval_timeout.is_some() && self.approvals.unanswered() > 0);
        if busy {
            Some(self.next_sweep.max(self.now).min(self.now + SWEEP_BUSY))
        } else if self.config.session_idle.is_some() && !self.sessions.is_empty() {
            Some(self.next_sweep.max(self.now + SWEEP_IDLE))
        } else {
            None
        }
    }

    /// Whether the drain finished: nothing is in flight and the child's stdin may be closed.
    pub fn drained(&self) -> bool {
        self.drain == Some(DrainStage::Done)
    }

    /// Whether the child has nothing to do: no request in flight or waiting, no active turn, no
    /// approval waiting for its session. Only such a child may be stopped to save resources.
    pub fn is_idle(&self) -> bool {
        self.requests.is_empty()
            && self.waiting.is_empty()
            && self.threads.parked() == 0
            && !self.threads.any_active()
            && self.approvals.unanswered() == 0
            && self.held.is_empty()
    }

    /// Whether requests wait for a child that is not running.
    pub fn wants_child(&self) -> bool {
        self.child == ChildState::Down && (!self.waiting.is_empty() || self.threads.parked() > 0)
    }

    /// Whether a session depends on this bridge's memory (it sent `initialize`); otherwise the
    /// bridge can be dropped and rebuilt from the owner log.
    pub fn holds_sessions(&self) -> bool {
        self.sessions.any_initialized()
    }

    /// Whether the server request with worker id `id` is this bridge's.
    pub fn awaits_answer(&self, id: u64) -> bool {
        self.approvals.contains(id)
    }

    /// Records that `scope` owns `thread`, its events going to `session`; new persistent
    /// threads go to the owner log, and a new thread may push the table over its bound.
    fn claim(
        &mut self,
        out: &mut Out,
        thread: &str,
        (scope, session): (&Scope, &SessionKey),
        ephemeral: bool,
        overrides: Option<serde_json::Map<String, serde_json::Value>>,
    ) {
        if self
            .threads
            .claim(thread, scope, session, ephemeral, overrides, self.now)
        {
            if !ephemeral {
                out.owned
                    .push((thread.to_owned(), scope.clone(), session.clone()));
            }
            self.enforce_thread_bound(out);
        }
    }

    /// Forgets the threads the bound evicts; those still loaded in the child are unsubscribed,
    /// so the child does not keep them (and their events) for nobody.
    fn enforce_thread_bound(&mut self, out: &mut Out) {
        let (count, forgotten) = self.threads.enforce_bound(self.now);
        if count > 0 {
            log::line(format_args!(
                "thread table bound: forgot {count} thread(s), {} of them loaded",
                forgotten.len()
            ));
        }
        if self.child != ChildState::Ready {
            return;
        }
        for thread in forgotten {
            self.internal_request(
                out,
                "thread/unsubscribe",
                &serde_json::json!({"threadId": thread}),
            );
        }
    }

    /// Appends a line for `session` (or for no session), rewriting the id at `id` when given.
    fn emit(
        &mut self,
        out: &mut Out,
        session: &SessionKey,
        line: &[u8],
        id: Option<(Range<usize>, &[u8])>,
        kind: Kind,
    ) {
        let token = self.sessions.token(session);
        if let Some(known) = self.sessions.get_mut(session) {
            known.last_activity = self.now;
        }
        let mut bytes = Vec::with_capacity(line.len() + token.len() + 32);
        wire::to_bus(&mut bytes, line, id, &token);
        out.bus.push(BusLine {
            session: Some(session.clone()),
            line: bytes,
            kind,
        });
    }

    /// Appends a line the worker composed itself (already complete, `\n` included).
    fn emit_own(&mut self, out: &mut Out, session: Option<&SessionKey>, line: Vec<u8>) {
        out.bus.push(BusLine {
            session: session.cloned(),
            line,
            kind: Kind::Essential,
        });
    }

    /// Answers request `id` of `session` with a worker error.
    fn reply_error(&mut self, out: &mut Out, session: &SessionKey, id: &[u8], error: &WorkerError) {
        let token = self.sessions.token(session);
        let mut line = Vec::new();
        error.write_reply(&mut line, id, Some(&token));
        self.emit_own(out, Some(session), line);
    }

    /// Answers request `id` of `session` with `result` (a JSON value).
    fn reply_result(&mut self, out: &mut Out, session: &SessionKey, id: &[u8], result: &[u8]) {
        let token = self.sessions.token(session);
        let mut line = Vec::with_capacity(result.len() + id.len() + token.len() + 40);
        line.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
        line.extend_from_slice(id);
        line.extend_from_slice(b",\"result\":");
        line.extend_from_slice(result);
        line.extend_from_slice(b",\"sessionId\":");
        line.extend_from_slice(&token);
        line.extend_from_slice(b"}\n");
        self.emit_own(out, Some(session), line);
    }

    /// Appends a notification the worker composed; `params` is a JSON object.
    fn notify(&mut self, out: &mut Out, session: &SessionKey, method: &str, params: &str) {
        let token = self.sessions.token(session);
        let mut line = format!(
            "{{\"jsonrpc\":\"2.0\",\"method\":\"{method}\",\"params\":{params},\"emittedAtMs\":{},\"sessionId\":",
            epoch_ms()
        )
        .into_bytes();
        line.extend_from_slice(&token);
        line.extend_from_slice(b"}\n");
        self.emit_own(out, Some(session), line);
    }
}

/// Milliseconds since the Unix epoch, as Codex stamps `emittedAtMs`.
fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis())
}
