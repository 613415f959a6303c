//! Child starts and deaths, timeouts, idle sessions and the drain.

use std::time::Instant;

use serde_json::json;

use codex_bus_worker_io::log;
use codex_bus_worker_io::render::json_string;

use super::{Bridge, ChildState, DrainStage, Out, SWEEP_BUSY, SWEEP_IDLE};
use crate::app_server::approvals::write_decline;
use crate::app_server::errors::WorkerError;
use crate::app_server::requests::Purpose;
use crate::app_server::sessions::SessionKey;
use crate::app_server::threads::Residency;

impl Bridge {
    /// A new child (generation `generation`) is running: send the worker's `initialize`.
    pub fn child_started(&mut self, generation: u64, now: Instant, out: &mut Out) {
        self.now = now;
        self.generation = generation;
        self.child = ChildState::Handshaking;
        let handshake = &self.config.handshake;
        let params = json!({
            "clientInfo": {
                "name": handshake.name,
                "title": "codex-worker",
                "version": handshake.version,
            },
            "capabilities": {"experimentalApi": handshake.experimental_api},
        });
        let deadline = now + self.config.handshake_timeout;
        let id = self.requests.register(Purpose::Handshake, deadline);
        let line = json!({"id": id, "method": "initialize", "params": params});
        out.child.extend_from_slice(line.to_string().as_bytes());
        out.child.push(b'\n');
    }

    /// The child exited: fail what it held, end its turns, and mark its threads for resume.
    pub fn child_exited(&mut self, now: Instant, out: &mut Out) {
        self.now = now;
        self.child = ChildState::Down;
        let generation = self.generation;
        for pending in self.requests.take_all() {
            if let Purpose::Forward(forwarded) = pending.purpose {
                self.reply_error(
                    out,
                    &forwarded.session,
                    &forwarded.id,
                    &WorkerError::ChildExited(generation),
                );
            }
        }
        for (worker_id, request) in self.approvals.take_all() {
            self.resolved_notice(out, &request.session, &request.thread, worker_id);
        }
        for (thread, owner, turn) in self.threads.child_exited() {
            self.synthetic_completion(
                out,
                &owner,
                &thread,
                &turn,
                "failed",
                "codex app-server exited unexpectedly",
            );
        }
        self.held.clear();
        if self.drain.is_some() {
            self.fail_everything_waiting(&WorkerError::Draining, out);
        }
    }

    /// The child is being stopped (idle, evicted or drained): from now on requests wait for the
    /// next child instead of going to one whose stdin is closed.
    pub fn child_stopping(&mut self, now: Instant) {
        self.now = now;
        self.child = ChildState::Down;
    }

    /// The child will not come back (too many restarts, or it cannot start): fail what waits.
    pub fn give_up(&mut self, reason: &str, now: Instant, out: &mut Out) {
        self.child = ChildState::Down;
        self.fail_waiting(&WorkerError::ChildUnavailable(reason.to_owned()), now, out);
    }

    /// Answers every request waiting for the child (or for a lazy resume) with `error`.
    pub fn fail_waiting(&mut self, error: &WorkerError, now: Instant, out: &mut Out) {
        self.now = now;
        self.fail_everything_waiting(error, out);
    }

    /// Begins the drain (SIGTERM or end of input): no new work, active turns get
    /// `drain_timeout` to finish before they are interrupted.
    pub fn begin_drain(&mut self, now: Instant, out: &mut Out) {
        self.now = now;
        if self.drain.is_none() {
            self.drain = Some(DrainStage::Waiting {
                deadline: now + self.config.drain_timeout,
            });
            log::line(format_args!("draining: no new turns or threads"));
        }
        if self.child == ChildState::Down {
            self.fail_everything_waiting(&WorkerError::Draining, out);
        }
        self.drain_step(out);
    }

    /// The bus closed our stdin: no session can answer an approval any more, so decline them
    /// now rather than let turns wait until the drain deadline.
    pub fn input_closed(&mut self, now: Instant, out: &mut Out) {
        self.now = now;
        self.decline_approvals(None, out);
        self.begin_drain(now, out);
    }

    /// Runs the timers due at `now`.
    pub fn on_timer(&mut self, now: Instant, out: &mut Out) {
        self.now = now;
        self.next_sweep = now + if self.busy() { SWEEP_BUSY } else { SWEEP_IDLE };
        self.expire_requests(out);
        let dropped = self.held.expire(now);
        if dropped > 0 {
            log::line(format_args!(
                "dropped {dropped} notification(s) for threads no session owns"
            ));
        }
        if let Some(limit) = self.config.approval_timeout {
            let cutoff = now.checked_sub(limit);
            let expired = self
                .approvals
                .take_unanswered(|request| cutoff.is_some_and(|cutoff| request.since <= cutoff));
            self.decline_taken(expired, out);
        }
        if let Some(idle) = self.config.session_idle {
            for session in self.sessions.idle(now, idle) {
                self.reap(&session, out);
            }
        }
        if self.config.threads.ttl.is_some() {
            self.enforce_thread_bound(out);
        }
        self.drain_step(out);
    }

    fn busy(&self) -> bool {
        !self.requests.is_empty()
            || !self.waiting.is_empty()
            || !self.held.is_empty()
            || self.drain.is_some()
            || self.threads.parked() > 0
    }

    fn expire_requests(&mut self, out: &mut Out) {
        let timeout = self.config.request_timeout.as_secs();
        for pending in self.requests.expire(self.now) {
            match pending.purpose {
                Purpose::Forward(forwarded) => {
                    log::line(format_args!(
                        "{} of session {} timed out after {timeout} s",
                        forwarded.method,
                        String::from_utf8_lossy(&forwarded.session)
                    ));
                    self.reply_error(
                        out,
                        &forwarded.session,
                        &forwarded.id,
                        &WorkerError::RequestTimeout(timeout),
                    );
                }
                Purpose::Handshake => {
                    log::line(format_args!(
                        "codex app-server did not answer initialize in time; killing it"
                    ));
                    out.kill_child = true;
                }
                Purpose::Resume(thread) => {
                    let parked: Vec<_> = match self.threads.get_mut(&thread) {
                        Some(entry) => {
                            entry.residency = Residency::NeedsResume;
                            entry.parked.drain(..).collect()
                        }
                        None => Vec::new(),
                    };
                    for queued in &parked {
                        self.fail_queued(queued, &WorkerError::RequestTimeout(timeout), out);
                    }
                }
                Purpose::Internal => {}
            }
        }
        let Some(cutoff) = self.now.checked_sub(self.config.request_timeout) else {
            return;
        };
        let mut expired = Vec::new();
        for queued in std::mem::take(&mut self.waiting) {
            if queued.arrived <= cutoff {
                expired.push(queued);
            } else {
                self.waiting.push_back(queued);
            }
        }
        let parked = self.threads.take_parked_before(cutoff);
        for queued in expired.iter().chain(&parked) {
            self.fail_queued(queued, &WorkerError::RequestTimeout(timeout), out);
        }
    }

    /// An idle session: decline its approvals, interrupt its turns, unsubscribe its threads
    /// (they resume lazily if it comes back) and forget it and its handshake.
    fn reap(&mut self, session: &SessionKey, out: &mut Out) {
        log::line(format_args!(
            "session {} idle: releasing its threads",
            String::from_utf8_lossy(session)
        ));
        self.decline_approvals(Some(session), out);
        if self.child == ChildState::Ready {
            for (thread, _, turn) in self.threads.active_turns(Some(session)) {
                self.internal_request(
                    out,
                    "turn/interrupt",
                    &json!({"threadId": thread, "turnId": turn}),
                );
            }
            for thread in self.threads.loaded_of(session) {
                self.internal_request(out, "thread/unsubscribe", &json!({"threadId": thread}));
                if let Some(entry) = self.threads.get_mut(&thread) {
                    entry.residency = Residency::NeedsResume;
                }
            }
        }
        self.sessions.remove(session);
        // Forgotten here, so forgotten by a later worker too: the session must `initialize`
        // again either way.
        if self.remembered.forget(session) {
            out.handshakes.push((session.clone(), None));
        }
    }

    /// Declines the unanswered approvals of `session` (of everyone with `None`).
    fn decline_approvals(&mut self, session: Option<&SessionKey>, out: &mut Out) {
        let taken = self
            .approvals
            .take_unanswered(|request| session.is_none_or(|session| request.session == *session));
        self.decline_taken(taken, out);
    }

    fn decline_taken(
        &mut self,
        taken: Vec<(u64, crate::app_server::approvals::ServerRequest)>,
        out: &mut Out,
    ) {
        for (worker_id, request) in taken {
            log::line(format_args!(
                "declining {} {worker_id}: its session cannot answer",
                request.method
            ));
            if request.generation == self.generation && self.child != ChildState::Down {
                write_decline(&mut out.child, &request.child_id, &request.method);
            }
            self.resolved_notice(out, &request.session, &request.thread, worker_id);
        }
    }

    /// Advances the drain: done once nothing is active, interrupting turns at the deadline and
    /// giving up on them after the grace period.
    fn drain_step(&mut self, out: &mut Out) {
        let Some(stage) = self.drain else {
            return;
        };
        let quiet = !self.threads.any_active()
            && self.requests.forwarded() == 0
            && self.waiting.is_empty()
            && self.threads.parked() == 0;
        let next = match stage {
            DrainStage::Done => return,
            _ if quiet => DrainStage::Done,
            DrainStage::Waiting { deadline } if self.now >= deadline => {
                if self.child == ChildState::Ready {
                    for (thread, _, turn) in self.threads.active_turns(None) {
                        log::line(format_args!("drain deadline: interrupting turn {turn}"));
                        self.internal_request(
                            out,
                            "turn/interrupt",
                            &json!({"threadId": thread, "turnId": turn}),
                        );
                    }
                }
                DrainStage::Interrupting {
                    until: self.now + self.config.interrupt_grace,
                }
            }
            DrainStage::Interrupting { until } if self.now >= until => {
                self.abandon_everything(out);
                DrainStage::Done
            }
            stage => stage,
        };
        if next == DrainStage::Done {
            log::line(format_args!("drain complete"));
        }
        self.drain = Some(next);
    }

    /// The end of a drain that ran out of time: every session still waiting gets an answer.
    fn abandon_everything(&mut self, out: &mut Out) {
        for (thread, owner, turn) in self.threads.active_turns(None) {
            if let Some(entry) = self.threads.get_mut(&thread) {
                entry.active_turn = None;
            }
            self.synthetic_completion(
                out,
                &owner,
                &thread,
                &turn,
                "interrupted",
                "codex-worker shut down before the turn finished",
            );
        }
        for pending in self.requests.take_all() {
            if let Purpose::Forward(forwarded) = pending.purpose {
                self.reply_error(
                    out,
                    &forwarded.session,
                    &forwarded.id,
                    &WorkerError::Draining,
                );
            }
        }
        self.decline_approvals(None, out);
        self.fail_everything_waiting(&WorkerError::Draining, out);
    }

    fn fail_everything_waiting(&mut self, error: &WorkerError, out: &mut Out) {
        let mut queued = self.take_waiting(None);
        queued.extend(self.threads.take_all_parked());
        for request in &queued {
            self.fail_queued(request, error, out);
        }
    }

    /// A `turn/completed` the child will never send, so the session's turn ends.
    fn synthetic_completion(
        &mut self,
        out: &mut Out,
        owner: &SessionKey,
        thread: &str,
        turn: &str,
        status: &str,
        message: &str,
    ) {
        let params = format!(
            "{{\"threadId\":{},\"turn\":{{\"id\":{},\"items\":[],\"status\":\"{status}\",\"error\":{{\"message\":{},\"codexErrorInfo\":\"other\"}}}}}}",
            json_string(thread),
            json_string(turn),
            json_string(message)
        );
        self.notify(out, owner, "turn/completed", &params);
    }

    /// Tells a session that a server request it saw needs no answer any more.
    fn resolved_notice(&mut self, out: &mut Out, session: &SessionKey, thread: &str, id: u64) {
        let params = format!(
            "{{\"threadId\":{},\"requestId\":{id}}}",
            json_string(thread)
        );
        self.notify(out, session, "serverRequest/resolved", &params);
    }
}
