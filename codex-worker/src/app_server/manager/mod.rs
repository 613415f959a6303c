//! The worker's children and their bridges: one shared child for every session (the default),
//! or with `--child-per-session` a child per owning scope (a session, or with `auth` a tenant,
//! whose sessions share its threads), spawned on its first request, within a cap (the least
//! recently used idle child makes room), and stopped after a while idle.
//!
//! Free of process I/O like the bridge, so every rule runs on a virtual clock in the unit tests:
//! the event loop feeds it bus lines, child output, child exits and timer ticks, and carries out
//! the [`Effects`] it returns. Generations are unique across children, so an event names its
//! child by generation alone; server-request ids come from one source, so an answer names one
//! request across children.

mod lane;
mod seats;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use codex_bus_protocol::parse_bus_id;
use nix::sys::signal::Signal;

use codex_bus_worker_io::log;
use codex_bus_worker_io::message::{self, Message};

use super::approvals::ApprovalIds;
use super::bridge::{refuse_unscoped, session_of, BridgeConfig, Out};
use super::errors::WorkerError;
use super::home::SlotDir;
use super::outbound::{BusLine, Kind};
use super::sessions::{Scope, SessionKey};
use super::EXIT_CHILD_FAILING;
use lane::{Lane, Phase};

/// How children are laid out over sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One child serves every session; it starts at once and restarts whenever it dies.
    Shared,
    /// Each owning scope gets a child of its own on its first request: each session, or with
    /// `auth` each tenant, so that all of a tenant's sessions reach its threads (one
    /// `CODEX_HOME` per tenant: two children must not write the same rollouts).
    PerSession {
        /// Most children alive at once.
        max_children: usize,
        /// How long a child may sit idle before it is stopped (`None`: until evicted).
        child_idle: Option<Duration>,
    },
}

/// The manager's settings.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Every bridge's settings.
    pub bridge: BridgeConfig,
    /// Shared child or one per session.
    pub layout: Layout,
    /// Deaths of one child allowed within `restart_window`; one more and the worker exits.
    pub max_restarts: u32,
    /// The window of `max_restarts`.
    pub restart_window: Duration,
}

/// A child to start.
#[derive(Debug)]
pub struct Spawn {
    /// Its generation; every event of the child carries it.
    pub generation: u64,
    /// Its state directory: `CODEX_HOME` is the `codex-home` in it.
    pub dir: SlotDir,
}

/// What the event loop must do after an event, in this order.
#[derive(Debug, Default)]
pub struct Effects {
    /// Children to start (their first bytes are already in `to_child`).
    pub spawn: Vec<Spawn>,
    /// Bytes for the stdin of the child of a generation.
    pub to_child: Vec<(u64, Vec<u8>)>,
    /// Children whose stdin must be closed.
    pub close_stdin: Vec<u64>,
    /// Signals for the process groups of children.
    pub signal: Vec<(u64, Signal)>,
    /// Lines for the bus.
    pub bus: Vec<BusLine>,
    /// Persistent threads that just got an owner (cluster mode records and leases them).
    pub owned: Vec<(String, Scope)>,
    /// Persistent threads whose turn just completed (cluster mode publishes their rollout).
    pub turns_ended: Vec<String>,
}

/// Which lane serves a line: `None` is the shared child's, `Some` a session's own.
type LaneKey = Option<Scope>;

/// Every lane of the worker.
#[derive(Debug)]
pub struct Manager {
    config: ManagerConfig,
    slot: SlotDir,
    lanes: HashMap<LaneKey, Lane>,
    by_generation: HashMap<u64, LaneKey>,
    next_generation: u64,
    approval_ids: ApprovalIds,
    /// Lanes waiting for a child, in the order they began to wait.
    seekers: Vec<LaneKey>,
    draining: bool,
    failed: bool,
}

impl Manager {
    /// The manager of the worker whose state lives in `slot`; the shared lane (if any) is opened
    /// now, so an owner log that cannot be read stops the worker at once.
    pub fn new(config: ManagerConfig, slot: SlotDir, now: Instant) -> io::Result<Self> {
        let mut manager = Self {
            config,
            slot,
            lanes: HashMap::new(),
            by_generation: HashMap::new(),
            next_generation: 1,
            approval_ids: ApprovalIds::default(),
            seekers: Vec::new(),
            draining: false,
            failed: false,
        };
        if manager.config.layout == Layout::Shared {
            let lane = manager.open_lane(&None, now)?;
            manager.lanes.insert(None, lane);
        }
        Ok(manager)
    }

    /// Starts what must run from the beginning (the shared child).
    pub fn begin(&mut self, now: Instant, fx: &mut Effects) {
        let keys: Vec<LaneKey> = self.lanes.keys().cloned().collect();
        for key in keys {
            self.settle(&key, now, fx, false);
        }
        self.seat(now, fx);
    }

    /// Handles one line from the bus: to the shared child's bridge, or to the bridge of the
    /// session it belongs to (an answer to a server request: of the child that asked).
    pub fn bus_line(&mut self, line: &[u8], now: Instant, fx: &mut Effects) {
        let key = match self.config.layout {
            Layout::Shared => None,
            Layout::PerSession { .. } => match self.session_lane(line, now, fx) {
                Some(key) => key,
                None => return,
            },
        };
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        let mut out = Out::default();
        lane.bridge.bus_line(line, now, &mut out);
        lane.absorb(out, fx);
        self.settle(&key, now, fx, true);
        self.seat(now, fx);
    }

    /// Finds (opening it if needed) the lane of a line in per-session mode; answers the lines
    /// that belong to no session and returns `None` for them.
    fn session_lane(&mut self, line: &[u8], now: Instant, fx: &mut Effects) -> Option<LaneKey> {
        let message = message::classify(line);
        let mut out = Out::default();
        if refuse_unscoped(&message, line, &mut out) {
            fx.bus.extend(out.bus);
            return None;
        }
        match &message {
            Message::Call(call) => {
                let key = Some(Scope::of(&session_of(call)?, call.tenant));
                if self.lanes.contains_key(&key) {
                    return Some(key);
                }
                match self.open_lane(&key, now) {
                    Ok(mut lane) => {
                        if self.draining {
                            let mut out = Out::default();
                            lane.bridge.begin_drain(now, &mut out);
                            lane.absorb(out, fx);
                        }
                        self.lanes.insert(key.clone(), lane);
                        Some(key)
                    }
                    Err(err) => {
                        log::line(format_args!("cannot open a session's state: {err}"));
                        if let (Some(id), Some(token)) = (call.id, call.session) {
                            let error = WorkerError::ChildUnavailable(format!(
                                "cannot open the session's state directory: {err}"
                            ));
                            let mut reply = Vec::new();
                            error.write_reply(
                                &mut reply,
                                id.get().as_bytes(),
                                Some(token.get().as_bytes()),
                            );
                            fx.bus.push(BusLine {
                                session: session_of(call),
                                line: reply,
                                kind: Kind::Essential,
                            });
                        }
                        None
                    }
                }
            }
            Message::Response(response) => {
                let id = parse_bus_id(response.id.get().as_bytes());
                let owner = id.and_then(|id| {
                    self.lanes
                        .iter()
                        .find(|(_, lane)| lane.bridge.awaits_answer(id))
                        .map(|(key, _)| key.clone())
                });
                if owner.is_none() {
                    log::line(format_args!(
                        "answer with id {} matches no server request; dropped",
                        response.id.get()
                    ));
                }
                owner
            }
            Message::Invalid { .. } | Message::Malformed(_) => None,
        }
    }

    /// The lane of `key`, restored from its owner log.
    fn open_lane(&self, key: &LaneKey, now: Instant) -> io::Result<Lane> {
        let dir = self.lane_dir(key);
        let label = match key {
            None => "codex app-server".to_owned(),
            Some(Scope::Session(_)) => format!("codex app-server of session {:.12}", dir.name()),
            Some(Scope::Tenant(tenant)) => format!("codex app-server of tenant {tenant}"),
        };
        Lane::open(dir, label, &self.config, self.approval_ids.clone(), now)
    }

    /// The directory of the lane of `key`: the slot's own for the shared child, or the scope's.
    fn lane_dir(&self, key: &LaneKey) -> SlotDir {
        match key {
            None => self.slot.clone(),
            Some(Scope::Session(session)) => self.slot.session(session),
            Some(Scope::Tenant(tenant)) => self.slot.tenant(tenant),
        }
    }

    /// The lane that serves `scope`: the shared child's, or the scope's own.
    fn lane_key(&self, scope: &Scope) -> LaneKey {
        match self.config.layout {
            Layout::Shared => None,
            Layout::PerSession { .. } => Some(scope.clone()),
        }
    }

    /// The `CODEX_HOME` whose rollouts hold `scope`'s threads (cluster mode imports and
    /// publishes them there).
    pub fn codex_home(&self, scope: &Scope) -> std::path::PathBuf {
        self.lane_dir(&self.lane_key(scope)).codex_home()
    }

    /// Takes on `thread` of `scope`, whose rollout cluster mode just brought into the scope's
    /// `CODEX_HOME`: owned, its events going to `session`, resumed on its next request. A thread
    /// the lane already knows keeps its entry.
    pub fn restore_owner(&mut self, thread: &str, scope: Scope, session: SessionKey, now: Instant) {
        let key = self.lane_key(&scope);
        if !self.lanes.contains_key(&key) {
            match self.open_lane(&key, now) {
                Ok(lane) => {
                    self.lanes.insert(key.clone(), lane);
                }
                Err(err) => {
                    log::line(format_args!("cannot open a session's state: {err}"));
                    return;
                }
            }
        }
        if let Some(lane) = self.lanes.get_mut(&key) {
            lane.restore(thread, scope, session);
        }
    }

    /// Interrupts the turn running on `thread` in whichever lane has it (cluster mode lost the
    /// thread's lease).
    pub fn interrupt_thread(&mut self, thread: &str, now: Instant, fx: &mut Effects) {
        for lane in self.lanes.values_mut() {
            if lane.bridge.thread_busy(thread) {
                let mut out = Out::default();
                lane.bridge.interrupt_thread(thread, now, &mut out);
                lane.absorb(out, fx);
            }
        }
    }

    /// Whether the child serving `scope` has `thread` loaded.
    pub fn thread_loaded(&self, scope: &Scope, thread: &str) -> bool {
        self.lanes
            .get(&self.lane_key(scope))
            .is_some_and(|lane| lane.is_alive() && lane.bridge.thread_loaded(thread))
    }

    /// Restarts the child serving `scope` so that it reloads its threads from their rollouts
    /// (one changed on another node); only when the child is idle, since its running turns
    /// would fail. Returns whether the next request reaches a child that loads threads afresh
    /// (restarting now, already stopping, or none running).
    pub fn reload_child(
        &mut self,
        scope: &Scope,
        why: &str,
        now: Instant,
        fx: &mut Effects,
    ) -> bool {
        let key = self.lane_key(scope);
        let Some(lane) = self.lanes.get_mut(&key) else {
            return true;
        };
        match lane.phase {
            Phase::Running { .. } if !lane.bridge.is_idle() => false,
            Phase::Running { .. } => {
                lane.stop(why, now, fx);
                true
            }
            Phase::Stopping { .. } | Phase::Down { .. } | Phase::GaveUp => true,
        }
    }

    /// Whether a turn runs on `thread`, or requests wait for it, in any lane.
    pub fn thread_busy(&self, thread: &str) -> bool {
        self.lanes
            .values()
            .any(|lane| lane.bridge.thread_busy(thread))
    }

    /// Handles a chunk of the stdout of the child of `generation`.
    pub fn child_output(&mut self, generation: u64, chunk: &[u8], now: Instant, fx: &mut Effects) {
        let Some(key) = self.by_generation.get(&generation).cloned() else {
            return;
        };
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        lane.child_output(chunk, now, fx);
        self.settle(&key, now, fx, false);
        self.seat(now, fx);
    }

    /// The child of `generation` exited (`how` says how): a stop that completed, or a death
    /// that is restarted with backoff, up to the restart limit.
    pub fn child_exited(&mut self, generation: u64, how: &str, now: Instant, fx: &mut Effects) {
        let Some(key) = self.by_generation.remove(&generation) else {
            return;
        };
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        log::line(format_args!(
            "{} generation {generation} exited: {how}",
            lane.label
        ));
        let expected = lane.child_exited(now, fx);
        if !expected && !self.draining {
            match lane.died(now) {
                Some(delay) => {
                    let when = match self.config.layout {
                        Layout::Shared => "",
                        Layout::PerSession { .. } => ", once its session sends a request",
                    };
                    log::line(format_args!(
                        "restarting {} in {} ms{when}",
                        lane.label,
                        delay.as_millis()
                    ));
                }
                None => {
                    log::line(format_args!(
                        "{} keeps dying: giving up, exit status {EXIT_CHILD_FAILING}",
                        lane.label
                    ));
                    let mut out = Out::default();
                    lane.bridge
                        .give_up("codex app-server keeps exiting", now, &mut out);
                    lane.phase = Phase::GaveUp;
                    lane.absorb(out, fx);
                    self.fail(fx);
                }
            }
        }
        self.settle(&key, now, fx, false);
        self.seat(now, fx);
    }

    /// One child kept dying, so the worker exits: the other children, whose sessions the bus
    /// fails over anyway, are killed rather than left running without a reader.
    fn fail(&mut self, fx: &mut Effects) {
        self.failed = true;
        for lane in self.lanes.values() {
            if let Some(generation) = lane.generation() {
                fx.close_stdin.push(generation);
                fx.signal.push((generation, Signal::SIGKILL));
            }
        }
    }

    /// Begins the drain (SIGTERM, or end of input when `input_closed`): every bridge drains,
    /// then its child is stopped.
    pub fn begin_drain(&mut self, now: Instant, input_closed: bool, fx: &mut Effects) {
        self.draining = true;
        let keys: Vec<LaneKey> = self.lanes.keys().cloned().collect();
        for key in keys {
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            let mut out = Out::default();
            if input_closed {
                lane.bridge.input_closed(now, &mut out);
            } else {
                lane.bridge.begin_drain(now, &mut out);
            }
            lane.absorb(out, fx);
            self.settle(&key, now, fx, false);
        }
    }

    /// Runs what is due at `now`: the bridges' timers, stop escalation, idle children.
    pub fn on_timer(&mut self, now: Instant, fx: &mut Effects) {
        let child_idle = match self.config.layout {
            Layout::PerSession { child_idle, .. } => child_idle,
            Layout::Shared => None,
        };
        let keys: Vec<LaneKey> = self.lanes.keys().cloned().collect();
        for key in keys {
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            if lane.bridge.next_deadline().is_some_and(|at| at <= now) {
                let mut out = Out::default();
                lane.bridge.on_timer(now, &mut out);
                lane.absorb(out, fx);
            }
            if let (Some(idle), Some(since), Phase::Running { .. }) =
                (child_idle, lane.idle_since, lane.phase)
            {
                if since + idle <= now {
                    lane.stop(&format!("idle for {} s", idle.as_secs()), now, fx);
                }
            }
            if let Some(generation) = lane.escalate(now, fx) {
                self.child_exited(generation, "gone without a trace after SIGKILL", now, fx);
            }
            self.settle(&key, now, fx, false);
        }
        self.seat(now, fx);
    }

    /// When `on_timer` must run next, if anything is pending.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let child_idle = match self.config.layout {
            Layout::PerSession { child_idle, .. } => child_idle,
            Layout::Shared => None,
        };
        let mut next: Option<Instant> = None;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |next| next.min(at)));
            }
        };
        for lane in self.lanes.values() {
            consider(lane.bridge.next_deadline());
            match lane.phase {
                Phase::Running { .. } => {
                    consider(
                        child_idle
                            .zip(lane.idle_since)
                            .map(|(idle, since)| since + idle),
                    );
                }
                Phase::Stopping { at, .. } => consider(Some(at)),
                // A start waiting for its backoff; one waiting for room is woken by the exit
                // that makes room.
                Phase::Down { not_before } if lane.seeking && not_before > now => {
                    consider(Some(not_before));
                }
                Phase::Down { .. } | Phase::GaveUp => {}
            }
        }
        next
    }

    /// Whether the drain finished and every child is gone: the worker may exit 0.
    pub fn drained(&self) -> bool {
        self.draining
            && self
                .lanes
                .values()
                .all(|lane| !lane.is_alive() && lane.bridge.drained())
    }

    /// Whether a child kept dying: the worker must exit with status 3.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// After an event of the lane `key`: tracks idleness, stops a drained child, queues the lane
    /// for a child when requests wait for one, and forgets a lane nobody depends on.
    fn settle(&mut self, key: &LaneKey, now: Instant, fx: &mut Effects, used: bool) {
        let per_session = self.config.layout != Layout::Shared;
        let Some(lane) = self.lanes.get_mut(key) else {
            return;
        };
        lane.track_idle(now, used);
        if self.draining {
            if !lane.is_alive() && lane.bridge.wants_child() {
                // No child comes during a drain: what waits for one is refused now.
                let mut out = Out::default();
                lane.bridge.begin_drain(now, &mut out);
                lane.absorb(out, fx);
            }
            if lane.bridge.drained() {
                lane.stop("drained", now, fx);
            }
        }
        let down = matches!(lane.phase, Phase::Down { .. });
        let wants = down && (!per_session || lane.bridge.wants_child());
        if wants && !lane.seeking && !self.draining && !self.failed {
            lane.seeking = true;
            self.seekers.push(key.clone());
        } else if per_session
            && down
            && !lane.seeking
            && lane.bridge.is_idle()
            && !lane.bridge.holds_sessions()
        {
            // Its threads are in the owner log: a later lane of the session restores them.
            self.lanes.remove(key);
        }
    }
}
