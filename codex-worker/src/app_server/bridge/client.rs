//! What sessions send: requests (scoped, then forwarded with worker ids), `initialize` answered
//! from the cached handshake, and answers to the child's server requests.

use std::time::Instant;

use codex_bus_protocol::{append_with_bus_id, parse_bus_id};
use serde_json::{Map, Value};

use codex_bus_worker_io::log;
use codex_bus_worker_io::message::{self, Call, Message, Response};
use codex_bus_worker_io::render;

use super::{Bridge, ChildState, Out};
use crate::app_server::approvals::{write_decline, Refusal};
use crate::app_server::errors::WorkerError;
use crate::app_server::handshakes::{opt_outs, ClientHandshake};
use crate::app_server::outbound::{BusLine, Kind};
use crate::app_server::policy::{starts_work, Class};
use crate::app_server::requests::{Creation, Forwarded, Purpose};
use crate::app_server::sessions::{key_of, Scope, SessionKey};
use crate::app_server::threads::{Queued, Residency, Standing};
use crate::app_server::wire::{self, span_of};

/// The `thread/start` parameters a lazy `thread/resume` replays (the resume params that share
/// their meaning), so a resumed thread keeps its model, cwd and policies.
const RESUME_OVERRIDES: &[&str] = &[
    "approvalPolicy",
    "approvalsReviewer",
    "baseInstructions",
    "config",
    "cwd",
    "developerInstructions",
    "model",
    "modelProvider",
    "personality",
    "sandbox",
    "serviceTier",
];

/// The routing key of a call's `sessionId`, when it has a usable one.
pub fn session_of(call: &Call<'_>) -> Option<SessionKey> {
    call.session
        .and_then(|token| key_of(token.get().as_bytes()))
}

/// Answers a line from the bus that belongs to no session: unreadable, not a message, or a call
/// without a usable `sessionId`. Returns `false` (doing nothing) for every other line.
pub fn refuse_unscoped(message: &Message<'_>, line: &[u8], out: &mut Out) -> bool {
    let (reply, session) = match message {
        Message::Call(call) if session_of(call).is_none() => {
            let Some(id) = call.id else {
                log::line(format_args!(
                    "notification {} without a sessionId dropped",
                    call.name
                ));
                return true;
            };
            let mut reply = Vec::new();
            WorkerError::SessionRequired.write_reply(&mut reply, id.get().as_bytes(), None);
            (reply, None)
        }
        Message::Invalid { id, session } => {
            log::line(format_args!(
                "invalid request from the bus: {}",
                preview(line)
            ));
            let Some(id) = id else {
                return true;
            };
            let mut reply = Vec::new();
            render::invalid_request(
                &mut reply,
                id.get().as_bytes(),
                session.map(|session| session.get().as_bytes()),
            );
            (
                reply,
                session.and_then(|session| key_of(session.get().as_bytes())),
            )
        }
        Message::Malformed(err) => {
            log::line(format_args!("parse error ({err}): {}", preview(line)));
            (render::PARSE_ERROR.to_vec(), None)
        }
        Message::Call(_) | Message::Response(_) => return false,
    };
    out.bus.push(BusLine {
        session,
        line: reply,
        kind: Kind::Essential,
    });
    true
}

impl Bridge {
    /// Handles one line from the bus.
    pub fn bus_line(&mut self, line: &[u8], now: Instant, out: &mut Out) {
        self.now = now;
        let message = message::classify(line);
        if refuse_unscoped(&message, line, out) {
            return;
        }
        match message {
            Message::Call(call) => self.call(&call, line, out),
            Message::Response(response) => self.session_answer(&response, out),
            Message::Invalid { .. } | Message::Malformed(_) => {}
        }
    }

    fn call(&mut self, call: &Call<'_>, line: &[u8], out: &mut Out) {
        let (Some(key), Some(token)) = (session_of(call), call.session) else {
            return;
        };
        let state = self.sessions.touch(&key, token.get().as_bytes(), self.now);
        let Some(id) = call.id else {
            if call.name != "initialized" {
                log::line(format_args!(
                    "client notification {} dropped: Codex takes none but `initialized`",
                    call.name
                ));
            }
            return;
        };
        if call.name == "initialize" {
            // Every `initialize` of a session is answered, unlike Codex's one per connection: a
            // session outlives connections (the TUI's `codex resume --remote` opens a second
            // one on the same session and initializes it again). The latest opt-outs apply.
            state.initialized = true;
            let params = call
                .params
                .and_then(|params| serde_json::from_str::<Value>(params.get()).ok());
            state.opt_outs = opt_outs(params.as_ref());
        } else if !state.initialized {
            // A session this process has not seen initialize (it did with the worker this one
            // replaced, or before a crash) is initialized from its handshake as recorded then, so
            // a rolling restart is transparent to a client that keeps its connection.
            let scope = Scope::of(&key, call.tenant);
            let Some(handshake) = self.remembered.get(&key, scope.tenant()) else {
                self.reply_error(out, &key, id.get().as_bytes(), &WorkerError::NotInitialized);
                return;
            };
            state.initialized = true;
            state.opt_outs = handshake.opt_outs();
            log::line(format_args!(
                "session {} initialized from its handshake with an earlier worker",
                String::from_utf8_lossy(&key)
            ));
        }
        let queued = Queued {
            scope: Scope::of(&key, call.tenant),
            session: key,
            line: line.to_vec(),
            arrived: self.now,
        };
        self.dispatch(queued, false, out);
    }

    /// Scopes one request and forwards it, parks it behind a lazy resume, or queues it for the
    /// child. `from_queue` is set when the request is being taken from the waiting queue.
    pub(super) fn dispatch(&mut self, queued: Queued, from_queue: bool, out: &mut Out) {
        let Message::Call(call) = message::classify(&queued.line) else {
            return;
        };
        let Some(id) = call.id else {
            return;
        };
        let id_token = id.get().as_bytes();
        let refs = wire::params_refs(call.params);
        let class = self
            .config
            .policy
            .classify(&call.name, refs.thread_id.as_deref());
        if class == Class::Initialize {
            let id = id_token.to_vec();
            self.answer_initialize(queued, &id, out);
            return;
        }
        if self.drain.is_some() && starts_work(&call.name) {
            self.reply_error(out, &queued.session, id_token, &WorkerError::Draining);
            return;
        }
        let thread = match class {
            Class::Refused => {
                let error = WorkerError::MethodNotAllowed(call.name.to_string());
                self.reply_error(out, &queued.session, id_token, &error);
                return;
            }
            Class::Answered(result) => {
                let id = id_token.to_vec();
                self.reply_result(out, &queued.session, &id, result.as_bytes());
                return;
            }
            Class::Thread(thread) | Class::Resume(thread) | Class::Fork(thread) => Some(thread),
            _ => None,
        };
        if let Err(detail) =
            self.config
                .policy
                .permits(&call.name, queued.scope.tenant(), call.params)
        {
            let error = WorkerError::NotPermitted(detail);
            self.reply_error(out, &queued.session, id_token, &error);
            return;
        }
        if let Some(thread) = thread {
            // A named tenant learns nothing about threads not its own: another tenant's and a
            // missing one get the same answer.
            let hidden = if queued.scope.tenant().is_some() {
                WorkerError::ThreadNotFound
            } else {
                WorkerError::ThreadNotOwned
            };
            match self.threads.standing(thread, &queued.scope) {
                Standing::Foreign => {
                    self.reply_error(out, &queued.session, id_token, &hidden);
                    return;
                }
                // Only resume and fork may name a thread the worker does not know: thread ids are
                // unguessable and filtered out of listings, so knowing one is the capability.
                // Not for a named tenant on a shared home, where the rollout may be another
                // tenant's whose entry the bound forgot.
                Standing::Unknown
                    if matches!(class, Class::Thread(_))
                        || (queued.scope.tenant().is_some() && !self.config.private_home) =>
                {
                    self.reply_error(out, &queued.session, id_token, &hidden);
                    return;
                }
                Standing::Unknown => {}
                Standing::Owner => {
                    // A resume, or new work on it, moves the thread's events to the session
                    // sending it: another session of the tenant picks the thread up. (A fork
                    // leaves its source where it is.)
                    let attach = matches!(class, Class::Resume(_))
                        || (matches!(class, Class::Thread(_)) && starts_work(&call.name));
                    self.threads
                        .used_by(thread, &queued.session, attach, self.now);
                    let residency = self.threads.get(thread).map(|entry| entry.residency);
                    match residency {
                        Some(Residency::Lost) => {
                            let error = WorkerError::ThreadLost(format!(
                                "thread {thread} did not survive a restart of codex app-server"
                            ));
                            self.reply_error(out, &queued.session, id_token, &error);
                            return;
                        }
                        Some(Residency::NeedsResume | Residency::Resuming)
                            if !matches!(class, Class::Resume(_)) =>
                        {
                            let thread = thread.to_owned();
                            self.park(&thread, queued, out);
                            return;
                        }
                        _ => {}
                    }
                }
            }
        }
        let must_wait = self.child != ChildState::Ready
            || self.requests.len() >= self.config.max_in_flight
            || (!from_queue && !self.waiting.is_empty());
        if must_wait {
            self.waiting.push_back(queued);
            return;
        }
        let creation = match class {
            Class::Start | Class::Fork(_) => Some(Creation::New(overrides(call.params))),
            Class::Resume(_) => Some(Creation::Resume(overrides(call.params))),
            _ => None,
        };
        let forwarded = Forwarded {
            session: queued.session.clone(),
            scope: queued.scope.clone(),
            id: id_token.to_vec(),
            method: call.name.to_string(),
            thread: thread.map(str::to_owned),
            creation,
        };
        let deadline = queued.arrived + self.config.request_timeout;
        let child_id = self
            .requests
            .register(Purpose::Forward(forwarded), deadline);
        append_with_bus_id(
            &mut out.child,
            &queued.line,
            span_of(&queued.line, id),
            child_id,
        );
    }

    /// Answers `initialize` from the child's cached handshake, or waits for the first one
    /// (the cache outlives child restarts, so only the very first handshake is waited for).
    /// An answered `initialize` is remembered, and goes to the handshake log when it differs
    /// from the session's last one.
    fn answer_initialize(&mut self, queued: Queued, id: &[u8], out: &mut Out) {
        let Some(result) = self.init_result.clone() else {
            self.waiting.push_back(queued);
            return;
        };
        let params = match message::classify(&queued.line) {
            Message::Call(call) => call.params,
            _ => None,
        };
        if let Some(handshake) = ClientHandshake::new(params, queued.scope.tenant()) {
            if self.remembered.remember(&queued.session, handshake.clone()) {
                out.handshakes
                    .push((queued.session.clone(), Some(handshake)));
            }
        }
        self.reply_result(out, &queued.session, id, &result);
    }

    /// Parks a request until its thread is resumed in the current child, starting the resume.
    fn park(&mut self, thread: &str, queued: Queued, out: &mut Out) {
        let Some(entry) = self.threads.get_mut(thread) else {
            return;
        };
        entry.parked.push_back(queued);
        if entry.residency == Residency::NeedsResume && self.child == ChildState::Ready {
            self.start_resume(thread, out);
        }
    }

    /// Sends the lazy `thread/resume` of `thread`, replaying its recorded overrides.
    pub(super) fn start_resume(&mut self, thread: &str, out: &mut Out) {
        let Some(entry) = self.threads.get_mut(thread) else {
            return;
        };
        entry.residency = Residency::Resuming;
        let mut params = entry.overrides.clone();
        params.insert("threadId".into(), Value::from(thread));
        params.insert("excludeTurns".into(), Value::from(true));
        let deadline = self.now + self.config.request_timeout;
        let id = self
            .requests
            .register(Purpose::Resume(thread.to_owned()), deadline);
        log::line(format_args!(
            "resuming thread {thread} in child generation {}",
            self.generation
        ));
        write_request(&mut out.child, id, "thread/resume", &Value::Object(params));
    }

    /// Forwards waiting requests while the child is ready and has room.
    pub(super) fn pump(&mut self, out: &mut Out) {
        while self.child == ChildState::Ready && self.requests.len() < self.config.max_in_flight {
            let Some(queued) = self.waiting.pop_front() else {
                return;
            };
            self.dispatch(queued, true, out);
        }
    }

    /// A session answers a server request: only the asked session's answer reaches the child,
    /// with the child's own id restored; error answers (the bus's `no_client`,
    /// `client_disconnected`, or a client's refusal) become the declining answer.
    fn session_answer(&mut self, response: &Response<'_>, out: &mut Out) {
        let Some(id) = parse_bus_id(response.id.get().as_bytes()) else {
            log::line(format_args!(
                "answer with id {} matches no server request; dropped",
                response.id.get()
            ));
            return;
        };
        let from = response
            .session
            .and_then(|token| key_of(token.get().as_bytes()));
        let request = match self.approvals.answer(id, from.as_deref()) {
            Ok(request) => request,
            Err(Refusal::Unknown) => {
                log::line(format_args!(
                    "answer to server request {id}, which is not waiting; dropped"
                ));
                return;
            }
            Err(Refusal::WrongSession) => {
                log::line(format_args!(
                    "refused an answer to server request {id} from a session that was not asked"
                ));
                return;
            }
        };
        if let Some(session) = self.sessions.get_mut(&request.session) {
            session.last_activity = self.now;
        }
        if request.generation != self.generation || self.child == ChildState::Down {
            log::line(format_args!(
                "answer to server request {id} of a child that is gone; dropped"
            ));
            return;
        }
        if response.is_error {
            write_decline(&mut out.child, &request.child_id, &request.method);
            return;
        }
        out.child.extend_from_slice(b"{\"id\":");
        out.child.extend_from_slice(&request.child_id);
        out.child.extend_from_slice(b",\"result\":");
        out.child
            .extend_from_slice(response.outcome.get().as_bytes());
        out.child.extend_from_slice(b"}\n");
    }

    /// Sends a worker-initiated request whose answer is not forwarded.
    pub(super) fn internal_request(&mut self, out: &mut Out, method: &str, params: &Value) {
        let deadline = self.now + self.config.request_timeout;
        let id = self.requests.register(Purpose::Internal, deadline);
        write_request(&mut out.child, id, method, params);
    }

    /// The requests waiting for the child whose session is `session`, or all of them.
    pub(super) fn take_waiting(&mut self, session: Option<&SessionKey>) -> Vec<Queued> {
        let mut taken = Vec::new();
        for queued in std::mem::take(&mut self.waiting) {
            if session.is_none_or(|session| queued.session == *session) {
                taken.push(queued);
            } else {
                self.waiting.push_back(queued);
            }
        }
        taken
    }

    /// Answers a request that will never reach the child with `error`.
    pub(super) fn fail_queued(&mut self, queued: &Queued, error: &WorkerError, out: &mut Out) {
        let Message::Call(call) = message::classify(&queued.line) else {
            return;
        };
        let Some(id) = call.id else {
            return;
        };
        if call.name == "initialize" {
            if let Some(session) = self.sessions.get_mut(&queued.session) {
                session.initialized = false;
            }
        }
        self.reply_error(out, &queued.session, id.get().as_bytes(), error);
    }
}

/// The thread overrides in `params` worth replaying on a lazy resume.
fn overrides(params: Option<&serde_json::value::RawValue>) -> Map<String, Value> {
    let Some(Value::Object(mut params)) =
        params.and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
    else {
        return Map::new();
    };
    params.retain(|key, _| RESUME_OVERRIDES.contains(&key.as_str()));
    params
}

/// Appends a request line in the child's wire format (no `jsonrpc`).
fn write_request(out: &mut Vec<u8>, id: u64, method: &str, params: &Value) {
    let line = serde_json::json!({"id": id, "method": method, "params": params});
    out.extend_from_slice(line.to_string().as_bytes());
    out.push(b'\n');
}

/// The start of an offending line, enough to recognise it without flooding the log.
pub(super) fn preview(line: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(&line[..line.len().min(160)])
}
