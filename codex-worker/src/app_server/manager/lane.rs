//! One bridge with its child: where the child is in its life, how it is stopped, how long it has
//! been idle, and the owner and handshake logs its threads and sessions are recorded in.

use std::fs;
use std::io;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use codex_bus_worker_io::lines::Lines;
use codex_bus_worker_io::log;

use super::{Effects, ManagerConfig};
use crate::app_server::approvals::ApprovalIds;
use crate::app_server::bridge::{Bridge, Out};
use crate::app_server::handshakes::{ClientHandshake, HandshakeLog};
use crate::app_server::home::SlotDir;
use crate::app_server::owners::OwnerLog;
use crate::app_server::restart::RestartPolicy;
use crate::app_server::sessions::{Scope, SessionKey};

/// How long a child gets to exit after its stdin closes (Codex exits at end of input) before its
/// group is sent SIGTERM.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long each signal gets before the next, stronger step.
const SIGNAL_GRACE: Duration = Duration::from_secs(1);

/// Where a lane's child is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No child; one may start from `not_before` on (later after a crash: the backoff).
    Down {
        /// The earliest start.
        not_before: Instant,
    },
    /// The child of `generation` runs.
    Running {
        /// Its generation.
        generation: u64,
    },
    /// The child's stdin is closed; at `at`, `next` happens unless it exited before.
    Stopping {
        /// Its generation.
        generation: u64,
        /// The step due at `at`.
        next: StopStep,
        /// When `next` is due.
        at: Instant,
    },
    /// The child kept dying: the worker exits.
    GaveUp,
}

/// The escalation of a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopStep {
    /// SIGTERM the group.
    Terminate,
    /// SIGKILL the group.
    Kill,
    /// Stop waiting for an exit that does not come (something outside the group holds its
    /// stdout open): count the child as gone.
    Forget,
}

/// One bridge and its child.
#[derive(Debug)]
pub struct Lane {
    /// The session-scoping state of the child.
    pub bridge: Bridge,
    /// Where `CODEX_HOME` and the owner log live.
    pub dir: SlotDir,
    /// How log lines name the child.
    pub label: String,
    /// Where the child is.
    pub phase: Phase,
    /// Since when the child has been idle (`None`: busy now).
    pub idle_since: Option<Instant>,
    /// Whether the lane is in the manager's queue of lanes waiting for a child.
    pub seeking: bool,
    /// Opened when the first thread is owned, so a session that never ran a child leaves no
    /// directory behind.
    owners: Option<OwnerLog>,
    /// Opened when the first session's handshake is recorded, for the same reason.
    handshakes: Option<HandshakeLog>,
    lines: Lines,
    restarts: RestartPolicy,
    /// `--max-threads`: the sessions and threads the logs keep.
    keep: usize,
}

impl Lane {
    /// Opens the lane of `dir`: its owner log, if any, tells which threads are owned and must
    /// be resumed, and its handshake log which sessions initialized with an earlier worker.
    pub fn open(
        dir: SlotDir,
        label: String,
        config: &ManagerConfig,
        approval_ids: ApprovalIds,
        now: Instant,
    ) -> io::Result<Self> {
        let keep = config.bridge.threads.max;
        let (owners, records) = if dir.owner_log().exists() {
            let (owners, records) = OwnerLog::open(&dir.owner_log(), keep)?;
            (Some(owners), records)
        } else {
            (None, Vec::new())
        };
        let (handshakes, remembered) = if dir.handshake_log().exists() {
            let (handshakes, remembered) = HandshakeLog::open(&dir.handshake_log(), keep)?;
            (Some(handshakes), remembered)
        } else {
            (None, Vec::new())
        };
        let mut bridge = Bridge::new(config.bridge.clone(), approval_ids, now);
        for owned in records {
            bridge.restore_owner(&owned.thread, owned.scope, owned.session);
        }
        for (session, handshake) in remembered {
            bridge.restore_handshake(&session, handshake);
        }
        Ok(Self {
            bridge,
            dir,
            label,
            phase: Phase::Down { not_before: now },
            idle_since: None,
            seeking: false,
            owners,
            handshakes,
            lines: Lines::new("codex app-server"),
            restarts: RestartPolicy::new(config.max_restarts, config.restart_window),
            keep,
        })
    }

    /// The generation of the child that is alive (running or stopping).
    pub fn generation(&self) -> Option<u64> {
        match self.phase {
            Phase::Running { generation } | Phase::Stopping { generation, .. } => Some(generation),
            Phase::Down { .. } | Phase::GaveUp => None,
        }
    }

    /// Whether the child holds one of the `--max-children` places.
    pub fn is_alive(&self) -> bool {
        self.generation().is_some()
    }

    /// The child of `generation` starts: a fresh framer for its stdout, and the worker's
    /// `initialize`.
    pub fn started(&mut self, generation: u64, now: Instant, fx: &mut Effects) {
        self.phase = Phase::Running { generation };
        self.seeking = false;
        self.idle_since = None;
        self.lines = Lines::new("codex app-server");
        let mut out = Out::default();
        self.bridge.child_started(generation, now, &mut out);
        self.absorb(out, fx);
    }

    /// Hands a chunk of the child's stdout to the bridge.
    pub fn child_output(&mut self, chunk: &[u8], now: Instant, fx: &mut Effects) {
        let mut out = Out::default();
        let bridge = &mut self.bridge;
        let _: ControlFlow<()> = self.lines.feed(chunk, |line| {
            bridge.child_line(line, now, &mut out);
            ControlFlow::Continue(())
        });
        self.absorb(out, fx);
    }

    /// The child is gone: its last unterminated line, then the bridge's clean-up. Returns
    /// whether the exit was expected (the lane was stopping it).
    pub fn child_exited(&mut self, now: Instant, fx: &mut Effects) -> bool {
        let mut out = Out::default();
        let bridge = &mut self.bridge;
        let _: ControlFlow<()> = self.lines.finish(|line| {
            bridge.child_line(line, now, &mut out);
            ControlFlow::Continue(())
        });
        let expected = matches!(self.phase, Phase::Stopping { .. });
        self.bridge.child_exited(now, &mut out);
        self.phase = Phase::Down { not_before: now };
        self.absorb(out, fx);
        expected
    }

    /// Records an unexpected death; returns the backoff before the next start, or `None` when
    /// the restart limit is exceeded.
    pub fn died(&mut self, now: Instant) -> Option<Duration> {
        let delay = self.restarts.on_death(now)?;
        self.phase = Phase::Down {
            not_before: now + delay,
        };
        Some(delay)
    }

    /// Stops the running child: its stdin is closed (Codex exits at end of input) and requests
    /// wait for the next child from now on.
    pub fn stop(&mut self, why: &str, now: Instant, fx: &mut Effects) {
        let Phase::Running { generation } = self.phase else {
            return;
        };
        log::line(format_args!(
            "stopping {} generation {generation}: {why}",
            self.label
        ));
        fx.close_stdin.push(generation);
        self.bridge.child_stopping(now);
        self.phase = Phase::Stopping {
            generation,
            next: StopStep::Terminate,
            at: now + EXIT_GRACE,
        };
    }

    /// Takes the next step of a stop that is due; returns the generation to count as gone when
    /// even SIGKILL did not bring its exit.
    pub fn escalate(&mut self, now: Instant, fx: &mut Effects) -> Option<u64> {
        let Phase::Stopping {
            generation,
            next,
            at,
        } = self.phase
        else {
            return None;
        };
        if at > now {
            return None;
        }
        let (signal, then) = match next {
            StopStep::Terminate => (Signal::SIGTERM, StopStep::Kill),
            StopStep::Kill => (Signal::SIGKILL, StopStep::Forget),
            StopStep::Forget => return Some(generation),
        };
        log::line(format_args!(
            "{} generation {generation} still running after its stdin closed: {signal}",
            self.label
        ));
        fx.signal.push((generation, signal));
        self.phase = Phase::Stopping {
            generation,
            next: then,
            at: now + SIGNAL_GRACE,
        };
        None
    }

    /// Notes whether the child is busy after an event; `used` marks a line from the session,
    /// which makes the child recently used even when it was answered at once.
    pub fn track_idle(&mut self, now: Instant, used: bool) {
        if !self.bridge.is_idle() {
            self.idle_since = None;
        } else if used || self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
    }

    /// Carries out what the bridge asked for: bytes and kills for the child alive now, owner
    /// and handshake records, lines for the bus; new owners and ended turns go on to cluster mode.
    pub fn absorb(&mut self, out: Out, fx: &mut Effects) {
        if let Some(generation) = self.generation() {
            if !out.child.is_empty() {
                fx.to_child.push((generation, out.child));
            }
            if out.kill_child {
                fx.signal.push((generation, Signal::SIGKILL));
            }
        }
        self.log_owners(&out.owned);
        self.log_handshakes(&out.handshakes);
        fx.owned.extend(
            out.owned
                .into_iter()
                .map(|(thread, scope, _)| (thread, scope)),
        );
        fx.turns_ended.extend(out.turns_ended);
        fx.bus.extend(out.bus);
    }

    /// Takes on a thread another node (or an earlier life) owned, resumed on its next request,
    /// and records it in the owner log so a restarted worker still knows it.
    pub fn restore(&mut self, thread: &str, scope: Scope, session: SessionKey) {
        self.bridge
            .restore_owner(thread, scope.clone(), session.clone());
        self.log_owners(&[(thread.to_owned(), scope, session)]);
    }

    /// Appends owner records, opening the log on the first one.
    fn log_owners(&mut self, owned: &[(String, Scope, SessionKey)]) {
        if owned.is_empty() {
            return;
        }
        let path = self.dir.owner_log();
        let open = |path: &Path| OwnerLog::open(path, usize::MAX).map(|(log, _)| log);
        if let Some(owners) = open_once(&mut self.owners, &self.dir.root, &path, open) {
            for (thread, scope, session) in owned {
                owners.append(thread, scope, session);
            }
        }
    }

    /// Appends handshake records (`None`: the session was forgotten), opening the log on the
    /// first one.
    fn log_handshakes(&mut self, handshakes: &[(SessionKey, Option<ClientHandshake>)]) {
        if handshakes.is_empty() {
            return;
        }
        let path = self.dir.handshake_log();
        let keep = self.keep;
        let open = |path: &Path| HandshakeLog::open(path, keep).map(|(log, _)| log);
        if let Some(log) = open_once(&mut self.handshakes, &self.dir.root, &path, open) {
            for (session, handshake) in handshakes {
                log.append(session, handshake.as_ref());
            }
        }
    }
}

/// The log in `slot`, opened at `path` (creating `root`, its directory) when it is not yet;
/// `None` when it cannot be (logged; the next record tries again).
fn open_once<'a, L>(
    slot: &'a mut Option<L>,
    root: &Path,
    path: &Path,
    open: impl FnOnce(&Path) -> io::Result<L>,
) -> Option<&'a mut L> {
    if slot.is_none() {
        match fs::create_dir_all(root).and_then(|()| open(path)) {
            Ok(log) => *slot = Some(log),
            Err(err) => log::line(format_args!("cannot open {}: {err}", path.display())),
        }
    }
    slot.as_mut()
}
