//! The mock worker: Codex-like threads and turns from the scenario engine, the `mock/*` test
//! hooks, and a default answer for every other request, all at once unless a delay says
//! otherwise (it is the daemon's benchmark load, so it stays cheap).

mod codex;
mod hooks;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;

use codex_bus_worker_io::log;
use codex_bus_worker_io::message::{self, Call, Message, Response};
use codex_bus_worker_io::render;

use crate::delay_queue::DelayQueue;
use crate::identity::Identity;
use crate::scenario::knobs::Knobs;
use crate::scenario::{Engine, STEPS_PER_RELEASE};

/// Why the worker must stop before reading further input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `mock/exit`: flush what is written so far, then exit with this status.
    Exit(u8),
    /// `mock/crash` or a scripted crash: die by SIGKILL without flushing anything.
    Crash,
    /// `mock/segv`: die by SIGSEGV without flushing anything, like a segfaulting program.
    Segv,
    /// `mock/hang`: flush what is written so far, then do nothing ever again.
    Hang,
    /// `mock/close-stdout`: flush what is written so far, close stdout (it becomes `/dev/null`),
    /// then keep serving: a worker whose output is gone but whose process is not.
    CloseStdout,
}

/// State of the mock worker across lines.
#[derive(Debug)]
pub struct Mock {
    identity: Identity,
    delayed: DelayQueue,
    asks: HashMap<u64, PendingAsk>,
    engine: Engine,
    /// Set by `mock/stubborn` or `--stubborn`: SIGTERM and end of input no longer stop the worker.
    stubborn: bool,
}

/// A `mock/ask` request waiting for the client's answer; owned because the input buffer moves on.
#[derive(Debug)]
struct PendingAsk {
    id: Vec<u8>,
    session: Option<Vec<u8>>,
}

impl Mock {
    /// A mock that reports `identity` in its results and plays turns by `knobs`.
    pub fn new(identity: Identity, knobs: Knobs) -> Self {
        Self {
            identity,
            delayed: DelayQueue::default(),
            asks: HashMap::new(),
            engine: Engine::new(knobs),
            stubborn: false,
        }
    }

    /// From now on SIGTERM and end of input are ignored; only SIGKILL ends the worker.
    pub fn become_stubborn(&mut self) {
        if !self.stubborn {
            log::line(format_args!(
                "stubborn: ignoring SIGTERM and end of input from now on (only SIGKILL ends me)"
            ));
        }
        self.stubborn = true;
    }

    /// Whether SIGTERM and end of input are to be ignored.
    pub fn is_stubborn(&self) -> bool {
        self.stubborn
    }

    /// Handles one input line, appending any output lines to `out`.
    pub fn handle_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> ControlFlow<Stop> {
        match message::classify(line) {
            Message::Call(call) if call.name.starts_with("mock/") => return self.hook(&call, out),
            Message::Call(call) if call.id.is_none() && is_cancellation(&call.name) => {
                self.cancel(&call, out)
            }
            Message::Call(call) => return self.call(&call, out),
            Message::Response(response) => self.answer(&response, out),
            Message::Invalid { id, session } => {
                log::line(format_args!("invalid request: {}", preview(line)));
                render::invalid_request(out, id.map_or(b"null", raw), session.map(raw));
            }
            Message::Malformed(err) => {
                log::line(format_args!("parse error ({err}): {}", preview(line)));
                out.extend_from_slice(render::PARSE_ERROR);
            }
        }
        ControlFlow::Continue(())
    }

    /// When the earliest delayed reply or turn step is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.delayed.next_deadline(), self.engine.next_due()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Appends the delayed replies and a slice of the turn events due at `now`; a scripted
    /// crash stops.
    pub fn release_due(&mut self, now: Instant, out: &mut Vec<u8>) -> ControlFlow<Stop> {
        self.delayed.release_due(now, out);
        let mut emits = Vec::new();
        self.engine.fire_due(now, STEPS_PER_RELEASE, &mut emits);
        codex::render(&emits, None, out)
    }

    /// Whether delayed replies or running turns remain (the worker must not exit before them).
    pub fn has_pending(&self) -> bool {
        !self.delayed.is_empty() || self.engine.has_timers()
    }

    /// How many `mock/ask` requests still wait for the client; they die with the input.
    pub fn unanswered_asks(&self) -> usize {
        self.asks.len()
    }

    /// Anything without a hook: a Codex method of the scenario, else the default result.
    fn call(&mut self, call: &Call<'_>, out: &mut Vec<u8>) -> ControlFlow<Stop> {
        if let Some(flow) = self.codex(call, out) {
            return flow;
        }
        self.default_reply(out, call);
        ControlFlow::Continue(())
    }

    /// `{"pool","slot","pid","method"}`: the answer to everything the mock does not implement.
    fn default_reply(&self, out: &mut Vec<u8>, call: &Call<'_>) {
        self.reply(out, call, |out, identity| {
            out.push(b'{');
            out.extend_from_slice(identity.members());
            out.extend_from_slice(b",\"method\":");
            out.extend_from_slice(raw(call.method));
            out.push(b'}');
        });
    }

    /// Writes a result when `call` is a request; notifications get nothing.
    fn reply(
        &self,
        out: &mut Vec<u8>,
        call: &Call<'_>,
        body: impl FnOnce(&mut Vec<u8>, &Identity),
    ) {
        if let Some(id) = call.id {
            render::result(out, raw(id), call.session.map(raw), |out| {
                body(out, &self.identity);
            });
        }
    }

    /// A client's answer: to a `mock/ask`, or to a scenario approval.
    fn answer(&mut self, response: &Response<'_>, out: &mut Vec<u8>) {
        let Ok(id) = response.id.get().parse::<u64>() else {
            log::line(format_args!(
                "ignoring response to unknown request id {}",
                response.id.get()
            ));
            return;
        };
        if let Some(ask) = self.asks.remove(&id) {
            render::result(out, &ask.id, ask.session.as_deref(), |out| {
                out.extend_from_slice(b"{\"answer\":");
                out.extend_from_slice(raw(response.outcome));
                out.push(b',');
                out.extend_from_slice(self.identity.members());
                out.push(b'}');
            });
            return;
        }
        let result = (!response.is_error).then_some(response.outcome);
        let mut emits = Vec::new();
        let tenant = message::tenant_name(response.tenant);
        if self
            .engine
            .answer(id, result, &tenant, Instant::now(), &mut emits)
        {
            // A scripted crash only comes from timers, never from an answer.
            let _ = codex::render(&emits, None, out);
        } else {
            log::line(format_args!("ignoring response to unknown request id {id}"));
        }
    }
}

/// LSP's and MCP's cancellation notifications.
fn is_cancellation(method: &str) -> bool {
    matches!(method, "$/cancelRequest" | "notifications/cancelled")
}

fn params<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<T> {
    serde_json::from_str(raw?.get()).ok()
}

fn raw(value: &RawValue) -> &[u8] {
    value.get().as_bytes()
}

/// The start of an offending line, enough to recognise it without flooding the log.
fn preview(line: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(&line[..line.len().min(120)])
}
