//! What the child sends: replies (back to the asking session with its id restored), server
//! requests (to the thread's owner with a worker-unique id) and notifications (to the thread's
//! owner, held briefly when the owner is not known yet).

use serde_json::Value;

use codex_bus_worker_io::log;
use codex_bus_worker_io::message::{self, Call, Message, Response};

use super::client::preview;
use super::{Bridge, ChildState, Out};
use crate::app_server::approvals::{write_decline, ServerRequest};
use crate::app_server::errors::WorkerError;
use crate::app_server::outbound::Kind;
use crate::app_server::policy::redact_config;
use crate::app_server::requests::{Creation, Forwarded, Lookup, Purpose};
use crate::app_server::sessions::SessionKey;
use crate::app_server::threads::{Residency, Standing};
use crate::app_server::wire::{self, span_of, ParamsRefs};

impl Bridge {
    /// Handles one line from the child of the current generation.
    pub fn child_line(&mut self, line: &[u8], now: std::time::Instant, out: &mut Out) {
        self.now = now;
        match message::classify(line) {
            Message::Response(response) => self.child_reply(&response, line, out),
            Message::Call(call) if call.id.is_some() => self.server_request(&call, line, out),
            Message::Call(call) => self.notification(&call, line, out),
            Message::Invalid { .. } | Message::Malformed(_) => {
                log::line(format_args!(
                    "unreadable line from the child: {}",
                    preview(line)
                ));
            }
        }
    }

    fn child_reply(&mut self, response: &Response<'_>, line: &[u8], out: &mut Out) {
        let Some(id) = codex_bus_protocol::parse_bus_id(response.id.get().as_bytes()) else {
            log::line(format_args!(
                "child reply with id {} the worker never sent; dropped",
                response.id.get()
            ));
            return;
        };
        let pending = match self.requests.answer(id) {
            Lookup::Answered(pending) => pending,
            Lookup::Late => {
                log::line(format_args!(
                    "child reply to request {id} after its timeout; dropped"
                ));
                return;
            }
            Lookup::Unknown => {
                log::line(format_args!("child reply to unknown request {id}; dropped"));
                return;
            }
        };
        match pending.purpose {
            Purpose::Handshake => self.handshake_reply(response, out),
            Purpose::Forward(forwarded) => self.forwarded_reply(forwarded, response, line, out),
            Purpose::Resume(thread) => self.resume_reply(&thread, response, out),
            Purpose::Internal => {}
        }
        self.pump(out);
    }

    fn handshake_reply(&mut self, response: &Response<'_>, out: &mut Out) {
        if response.is_error {
            log::line(format_args!(
                "codex app-server refused initialize: {}",
                response.outcome.get()
            ));
            out.kill_child = true;
            return;
        }
        self.init_result = Some(response.outcome.get().as_bytes().to_vec());
        out.child
            .extend_from_slice(b"{\"method\":\"initialized\"}\n");
        self.child = ChildState::Ready;
        log::line(format_args!(
            "codex app-server generation {} initialized",
            self.generation
        ));
        for thread in self.threads.awaiting_resume() {
            self.start_resume(&thread, out);
        }
    }

    fn forwarded_reply(
        &mut self,
        forwarded: Forwarded,
        response: &Response<'_>,
        line: &[u8],
        out: &mut Out,
    ) {
        let session = forwarded.session.clone();
        if response.is_error {
            self.emit(
                out,
                &session,
                line,
                Some((span_of(line, response.id), &forwarded.id)),
                Kind::Essential,
            );
            return;
        }
        let refs = wire::result_refs(response.outcome);
        if let (Some(creation), Some(thread)) = (&forwarded.creation, &refs.thread) {
            let overrides = match creation {
                Creation::New(overrides) | Creation::Resume(overrides) => overrides.clone(),
            };
            // A client's resume brings its own overrides; keep the start's when it gave none.
            let keep = matches!(creation, Creation::Resume(_)) && overrides.is_empty();
            self.claim(
                out,
                &thread.id,
                (&forwarded.scope, &session),
                thread.ephemeral,
                (!keep).then_some(overrides),
            );
            self.release_held(&thread.id, out);
        }
        if let Some(review) = refs.review_thread_id.as_deref() {
            if self.threads.standing(review, &forwarded.scope) == Standing::Unknown {
                self.claim(out, review, (&forwarded.scope, &session), false, None);
                self.release_held(review, out);
            }
        }
        let thread = forwarded.thread.as_deref();
        match (forwarded.method.as_str(), thread) {
            ("turn/start", Some(thread)) => {
                // A turn/start during an active turn joins it (Codex answers with that turn).
                let turn = refs
                    .turn
                    .as_ref()
                    .filter(|turn| {
                        turn.status
                            .as_deref()
                            .is_none_or(|status| status == "inProgress")
                    })
                    .map(|turn| turn.id.to_string());
                if let (Some(entry), Some(turn)) = (self.threads.get_mut(thread), turn) {
                    entry.active_turn.get_or_insert(turn);
                }
            }
            ("thread/unsubscribe", Some(thread)) => {
                if let Some(entry) = self.threads.get_mut(thread) {
                    entry.residency = Residency::NeedsResume;
                }
            }
            ("thread/list" | "thread/loaded/list", _) => {
                self.filtered_reply(&forwarded, response, out);
                return;
            }
            ("config/read", _) if self.config.policy.redacts(&forwarded.method) => {
                self.redacted_reply(&forwarded, response, out);
                return;
            }
            _ => {}
        }
        self.emit(
            out,
            &session,
            line,
            Some((span_of(line, response.id), &forwarded.id)),
            Kind::Essential,
        );
    }

    /// Answers a listing with only the threads of the session's scope in it.
    fn filtered_reply(&mut self, forwarded: &Forwarded, response: &Response<'_>, out: &mut Out) {
        let Ok(mut result) = serde_json::from_str::<Value>(response.outcome.get()) else {
            return;
        };
        let session = &forwarded.session;
        let owns =
            |thread: &str| self.threads.standing(thread, &forwarded.scope) == Standing::Owner;
        if let Some(data) = result.get_mut("data").and_then(Value::as_array_mut) {
            data.retain(|item| {
                item.as_str()
                    .or_else(|| item.get("id").and_then(Value::as_str))
                    .is_some_and(owns)
            });
        }
        if let Some(states) = result.get_mut("readStates").and_then(Value::as_object_mut) {
            states.retain(|thread, _| owns(thread));
        }
        self.reply_result(out, session, &forwarded.id, result.to_string().as_bytes());
    }

    /// Answers a `config/read` with only what [`redact_config`] leaves of it.
    fn redacted_reply(&mut self, forwarded: &Forwarded, response: &Response<'_>, out: &mut Out) {
        let Ok(mut result) = serde_json::from_str::<Value>(response.outcome.get()) else {
            return;
        };
        redact_config(&mut result);
        let session = &forwarded.session;
        self.reply_result(out, session, &forwarded.id, result.to_string().as_bytes());
    }

    fn resume_reply(&mut self, thread: &str, response: &Response<'_>, out: &mut Out) {
        let Some(entry) = self.threads.get_mut(thread) else {
            return;
        };
        let parked: Vec<_> = entry.parked.drain(..).collect();
        if response.is_error {
            entry.residency = Residency::Lost;
            log::line(format_args!(
                "lazy resume of thread {thread} failed: {}",
                response.outcome.get()
            ));
            let error = WorkerError::ThreadLost(format!(
                "codex app-server could not resume thread {thread}: {}",
                response.outcome.get()
            ));
            for queued in &parked {
                self.fail_queued(queued, &error, out);
            }
            return;
        }
        entry.residency = Residency::Loaded;
        for queued in parked {
            self.dispatch(queued, true, out);
        }
    }

    /// A server request: to the owner of its thread with a worker-unique id; declined at once
    /// when no session owns the thread, so the child's turn never waits for nobody.
    fn server_request(&mut self, call: &Call<'_>, line: &[u8], out: &mut Out) {
        let Some(id) = call.id else {
            return;
        };
        let refs = wire::params_refs(call.params);
        let owner = refs
            .thread()
            .and_then(|thread| Some((thread.to_owned(), self.threads.owner(thread)?.clone())));
        let Some((thread, session)) = owner else {
            log::line(format_args!(
                "server request {} for no session's thread; declined",
                call.name
            ));
            write_decline(&mut out.child, id.get().as_bytes(), &call.name);
            return;
        };
        let worker_id = self.approvals.register(ServerRequest {
            generation: self.generation,
            child_id: id.get().as_bytes().to_vec(),
            session: session.clone(),
            thread,
            method: call.name.to_string(),
            since: self.now,
            answered: false,
        });
        let token = worker_id.to_string();
        self.emit(
            out,
            &session,
            line,
            Some((span_of(line, id), token.as_bytes())),
            Kind::Essential,
        );
    }

    /// A notification: bookkeeping, then to the owner of its thread (or held, or dropped when
    /// it is process-global).
    pub(super) fn notification(&mut self, call: &Call<'_>, line: &[u8], out: &mut Out) {
        let refs = wire::params_refs(call.params);
        let Some(thread) = refs.thread().map(str::to_owned) else {
            // Process-global (configWarning, account/*, …): no session may see another's state.
            return;
        };
        let owner = match self.threads.owner(&thread) {
            Some(owner) => owner.clone(),
            None => match self.adopt(&call.name, &refs, out) {
                Some(owner) => owner,
                None => {
                    let deadline = self.now + self.config.hold_unknown;
                    self.held.hold(&thread, line, deadline);
                    return;
                }
            },
        };
        self.track(&call.name, &thread, &refs, out);
        if call.name == "serverRequest/resolved" {
            self.resolved(&owner, &refs, line, out);
            return;
        }
        if self
            .sessions
            .get(&owner)
            .is_some_and(|session| session.opt_outs.contains(call.name.as_ref()))
        {
            return;
        }
        self.emit(out, &owner, line, None, Kind::of_method(&call.name));
    }

    /// Finds the owner of a thread the worker has not seen: subagent and fork threads belong to
    /// their parent's scope (and session), and a `thread/started` that outruns its
    /// `thread/start` response belongs to the only session with a thread creation in flight.
    fn adopt(&mut self, method: &str, refs: &ParamsRefs<'_>, out: &mut Out) -> Option<SessionKey> {
        if method != "thread/started" {
            return None;
        }
        let thread = refs.thread.as_ref()?;
        let parent_owner = [&thread.parent_thread_id, &thread.forked_from_id]
            .into_iter()
            .flatten()
            .find_map(|parent| self.threads.owner_and_scope(parent));
        let (session, scope) = parent_owner.or_else(|| {
            self.requests
                .sole_creator()
                .map(|(session, scope)| (session.clone(), scope.clone()))
        })?;
        self.claim(out, &thread.id, (&scope, &session), thread.ephemeral, None);
        Some(session)
    }

    /// Keeps the turn state that child death, drain and cluster mode's publishing rely on.
    fn track(&mut self, method: &str, thread: &str, refs: &ParamsRefs<'_>, out: &mut Out) {
        match method {
            "turn/started" => {
                if let (Some(entry), Some(turn)) = (self.threads.get_mut(thread), &refs.turn) {
                    entry.active_turn = Some(turn.id.to_string());
                }
            }
            "turn/completed" => {
                if let Some(entry) = self.threads.get_mut(thread) {
                    entry.active_turn = None;
                    if !entry.ephemeral {
                        out.turns_ended.push(thread.to_owned());
                    }
                }
                self.approvals.forget_thread(thread);
            }
            // Codex unloaded the thread; the next request must resume it.
            "thread/closed" => {
                if let Some(entry) = self.threads.get_mut(thread) {
                    entry.residency = Residency::NeedsResume;
                }
            }
            _ => {}
        }
    }

    /// `serverRequest/resolved`: its `requestId` becomes the worker id the session saw.
    fn resolved(&mut self, owner: &SessionKey, refs: &ParamsRefs<'_>, line: &[u8], out: &mut Out) {
        let child_id = refs.request_id.map(|id| id.get().as_bytes().to_vec());
        let Some((worker_id, _)) =
            child_id.and_then(|child_id| self.approvals.resolved(self.generation, &child_id))
        else {
            // A request the worker declined itself; the session never saw it.
            return;
        };
        let Ok(mut value) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        value["params"]["requestId"] = Value::from(worker_id);
        self.emit(
            out,
            owner,
            value.to_string().as_bytes(),
            None,
            Kind::Essential,
        );
    }

    /// Delivers the notifications held for `thread`, now that its owner is known.
    pub(super) fn release_held(&mut self, thread: &str, out: &mut Out) {
        for line in self.held.release(thread) {
            if let Message::Call(call) = message::classify(&line) {
                self.notification(&call, &line, out);
            }
        }
    }
}
