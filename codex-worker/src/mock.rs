//! The mock backend: answers every request at once, except where a `mock/*` test hook says otherwise.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::delay_queue::DelayQueue;
use crate::identity::Identity;
use crate::log;
use crate::message::{self, Call, Message, Response};
use crate::render;

/// Why the worker must stop before reading further input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `mock/exit`: flush what is written so far, then exit with this status.
    Exit(u8),
    /// `mock/crash`: die by SIGKILL without flushing anything.
    Crash,
}

/// State of the mock backend across lines.
#[derive(Debug)]
pub struct Mock {
    identity: Identity,
    delayed: DelayQueue,
    asks: HashMap<u64, PendingAsk>,
    next_ask_id: u64,
}

/// A `mock/ask` request waiting for the client's answer; owned because the input buffer moves on.
#[derive(Debug)]
struct PendingAsk {
    id: Vec<u8>,
    session: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct DelayParams {
    ms: u64,
}

#[derive(Deserialize)]
struct ExitParams {
    code: u8,
}

#[derive(Deserialize)]
struct NotifyParams {
    count: u64,
}

#[derive(Deserialize)]
struct StderrParams<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

/// The line `mock/garbage` writes before its reply.
const GARBAGE: &[u8] = b"this is not json\n";

/// What the mock asks the client in its `mock/approval` request.
const QUESTION: &[u8] = br#"{"question":"Allow the mock action?"}"#;

impl Mock {
    /// A backend that reports `identity` in its results.
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            delayed: DelayQueue::default(),
            asks: HashMap::new(),
            next_ask_id: 0,
        }
    }

    /// Handles one input line, appending any output lines to `out`.
    pub fn handle_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> ControlFlow<Stop> {
        match message::classify(line) {
            Message::Call(call) => return self.call(&call, out),
            Message::Response(response) => self.answer(&response, out),
            Message::Invalid { id, session } => {
                log::line(format_args!("invalid request: {}", preview(line)));
                render::error(
                    out,
                    id.map_or(b"null", raw),
                    session.map(raw),
                    render::INVALID_REQUEST,
                    "Invalid Request",
                    None,
                );
            }
            Message::Malformed(err) => {
                log::line(format_args!("parse error ({err}): {}", preview(line)));
                out.extend_from_slice(render::PARSE_ERROR);
            }
        }
        ControlFlow::Continue(())
    }

    /// When the earliest delayed reply is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.delayed.next_deadline()
    }

    /// Appends the delayed replies due at `now`.
    pub fn release_due(&mut self, now: Instant, out: &mut Vec<u8>) {
        self.delayed.release_due(now, out);
    }

    /// Whether delayed replies are still held (the worker must not exit before writing them).
    pub fn has_delayed(&self) -> bool {
        !self.delayed.is_empty()
    }

    /// How many `mock/ask` requests still wait for the client; they die with the input.
    pub fn unanswered_asks(&self) -> usize {
        self.asks.len()
    }

    fn call(&mut self, call: &Call<'_>, out: &mut Vec<u8>) -> ControlFlow<Stop> {
        match &*call.name {
            "mock/echo" => self.reply(out, call, |out, identity| {
                out.extend_from_slice(b"{\"params\":");
                out.extend_from_slice(call.params.map_or(b"null", raw));
                out.push(b',');
                out.extend_from_slice(identity.members());
                out.push(b'}');
            }),
            "mock/delay" => {
                let deadline = params::<DelayParams>(call.params)
                    .and_then(|delay| Instant::now().checked_add(Duration::from_millis(delay.ms)));
                match deadline {
                    Some(deadline) if call.id.is_some() => {
                        let mut line = Vec::new();
                        self.default_reply(&mut line, call);
                        self.delayed.push(deadline, line);
                    }
                    Some(_) => {}
                    None => invalid_params(out, call, "mock/delay needs params {\"ms\": <u64>}"),
                }
            }
            "mock/exit" => match params::<ExitParams>(call.params) {
                Some(exit) => return ControlFlow::Break(Stop::Exit(exit.code)),
                None => invalid_params(out, call, "mock/exit needs params {\"code\": <0..=255>}"),
            },
            "mock/crash" => return ControlFlow::Break(Stop::Crash),
            "mock/notify" => match params::<NotifyParams>(call.params) {
                Some(notify) => {
                    let session = call.session.map(raw);
                    for seq in 0..notify.count {
                        render::notification(out, "mock/event", session, |out| {
                            let _ = write!(out, "{{\"seq\":{seq}}}");
                        });
                    }
                    self.default_reply(out, call);
                }
                None => invalid_params(out, call, "mock/notify needs params {\"count\": <u64>}"),
            },
            "mock/ask" => self.ask(out, call),
            "mock/stderr" => match params::<StderrParams<'_>>(call.params) {
                Some(stderr) => {
                    log::verbatim(&stderr.text);
                    self.default_reply(out, call);
                }
                None => invalid_params(out, call, "mock/stderr needs params {\"text\": <string>}"),
            },
            "mock/garbage" => {
                out.extend_from_slice(GARBAGE);
                self.default_reply(out, call);
            }
            _ => self.default_reply(out, call),
        }
        ControlFlow::Continue(())
    }

    /// `{"pool","slot","pid","method"}`: the answer to everything without a hook.
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

    fn ask(&mut self, out: &mut Vec<u8>, call: &Call<'_>) {
        let Some(id) = call.id else {
            log::line(format_args!(
                "mock/ask sent as a notification: nothing to answer, ignored"
            ));
            return;
        };
        let ask_id = self.next_ask_id;
        self.next_ask_id += 1;
        let session = call.session.map(raw);
        render::request(out, ask_id, "mock/approval", session, |out| {
            out.extend_from_slice(QUESTION);
        });
        self.asks.insert(
            ask_id,
            PendingAsk {
                id: raw(id).to_vec(),
                session: session.map(<[u8]>::to_vec),
            },
        );
    }

    fn answer(&mut self, response: &Response<'_>, out: &mut Vec<u8>) {
        let pending = response
            .id
            .get()
            .parse::<u64>()
            .ok()
            .and_then(|id| self.asks.remove(&id));
        let Some(ask) = pending else {
            log::line(format_args!(
                "ignoring response to unknown request id {}",
                response.id.get()
            ));
            return;
        };
        render::result(out, &ask.id, ask.session.as_deref(), |out| {
            out.extend_from_slice(b"{\"answer\":");
            out.extend_from_slice(raw(response.outcome));
            out.push(b',');
            out.extend_from_slice(self.identity.members());
            out.push(b'}');
        });
    }
}

/// Rejects a hook call whose params do not fit; a notification has nobody to tell but the log.
fn invalid_params(out: &mut Vec<u8>, call: &Call<'_>, expected: &str) {
    match call.id {
        Some(id) => render::error(
            out,
            raw(id),
            call.session.map(raw),
            render::INVALID_PARAMS,
            "Invalid params",
            Some(expected),
        ),
        None => log::line(format_args!("invalid params, ignored: {expected}")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = r#""pool":"p","slot":1,"pid":9"#;

    fn mock() -> Mock {
        Mock::new(Identity::new("p", Some(1), 9))
    }

    fn run(mock: &mut Mock, line: &str) -> (String, ControlFlow<Stop>) {
        let mut out = Vec::new();
        let flow = mock.handle_line(line.as_bytes(), &mut out);
        (String::from_utf8(out).unwrap(), flow)
    }

    fn output(mock: &mut Mock, line: &str) -> String {
        let (out, flow) = run(mock, line);
        assert!(flow.is_continue());
        out
    }

    #[test]
    fn default_result_copies_id_method_and_session() {
        let out = output(
            &mut mock(),
            r#"{"id":1.5e3,"method":"a\/b","sessionId":{"k":1}}"#,
        );
        assert_eq!(
            out,
            format!("{{\"jsonrpc\":\"2.0\",\"id\":1.5e3,\"result\":{{{ME},\"method\":\"a\\/b\"}},\"sessionId\":{{\"k\":1}}}}\n")
        );
    }

    #[test]
    fn notifications_and_unknown_responses_produce_nothing() {
        let mut mock = mock();
        assert_eq!(output(&mut mock, r#"{"method":"x","sessionId":"s"}"#), "");
        assert_eq!(output(&mut mock, r#"{"id":5,"result":1}"#), "");
    }

    #[test]
    fn echo_returns_params_verbatim() {
        let out = output(
            &mut mock(),
            r#"{"id":2,"method":"mock/echo","params":[1, 2.50]}"#,
        );
        assert_eq!(
            out,
            format!("{{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{{\"params\":[1, 2.50],{ME}}}}}\n")
        );
    }

    #[test]
    fn delay_holds_the_reply_until_due() {
        let mut mock = mock();
        assert_eq!(
            output(
                &mut mock,
                r#"{"id":1,"method":"mock/delay","params":{"ms":0}}"#
            ),
            ""
        );
        assert!(mock.has_delayed());
        let mut out = Vec::new();
        mock.release_due(mock.next_deadline().unwrap(), &mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("{\"jsonrpc\":\"2.0\",\"id\":1,"));
        assert!(!mock.has_delayed());
    }

    #[test]
    fn hooks_with_bad_params_answer_invalid_params() {
        let mut mock = mock();
        for line in [
            r#"{"id":1,"method":"mock/delay"}"#,
            r#"{"id":1,"method":"mock/exit","params":{"code":256}}"#,
            r#"{"id":1,"method":"mock/notify","params":{"count":-1}}"#,
            r#"{"id":1,"method":"mock/stderr","params":{"text":1}}"#,
        ] {
            let out = output(&mut mock, line);
            assert!(out.contains("\"code\":-32602"), "{line}: {out}");
        }
        assert!(!mock.has_delayed());
    }

    #[test]
    fn exit_and_crash_stop_processing() {
        let mut mock = mock();
        let (out, flow) = run(
            &mut mock,
            r#"{"id":1,"method":"mock/exit","params":{"code":3}}"#,
        );
        assert_eq!(
            (out.as_str(), flow),
            ("", ControlFlow::Break(Stop::Exit(3)))
        );
        let (out, flow) = run(&mut mock, r#"{"id":1,"method":"mock/crash"}"#);
        assert_eq!((out.as_str(), flow), ("", ControlFlow::Break(Stop::Crash)));
    }

    #[test]
    fn notify_emits_events_then_replies() {
        let out = output(
            &mut mock(),
            r#"{"id":1,"method":"mock/notify","params":{"count":2},"sessionId":"s"}"#,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            r#"{"jsonrpc":"2.0","method":"mock/event","params":{"seq":0},"sessionId":"s"}"#
        );
        assert_eq!(
            lines[1],
            r#"{"jsonrpc":"2.0","method":"mock/event","params":{"seq":1},"sessionId":"s"}"#
        );
        assert!(lines[2].starts_with(r#"{"jsonrpc":"2.0","id":1,"result":"#));
    }

    #[test]
    fn ask_round_trip_answers_with_client_outcome() {
        let mut mock = mock();
        let out = output(
            &mut mock,
            r#"{"id":"a","method":"mock/ask","sessionId":"s"}"#,
        );
        assert_eq!(
            out,
            "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"mock/approval\",\"params\":{\"question\":\"Allow the mock action?\"},\"sessionId\":\"s\"}\n"
        );
        assert_eq!(mock.unanswered_asks(), 1);
        let out = output(&mut mock, r#"{"id":0,"error":{"code":1}}"#);
        assert_eq!(
            out,
            format!("{{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{{\"answer\":{{\"code\":1}},{ME}}},\"sessionId\":\"s\"}}\n")
        );
        assert_eq!(mock.unanswered_asks(), 0);
    }

    #[test]
    fn garbage_precedes_the_reply() {
        let out = output(&mut mock(), r#"{"id":1,"method":"mock/garbage"}"#);
        assert!(out.starts_with("this is not json\n{\"jsonrpc\""));
    }

    #[test]
    fn bad_lines_get_error_replies() {
        let mut mock = mock();
        assert_eq!(
            output(&mut mock, "not json").as_bytes(),
            render::PARSE_ERROR
        );
        assert_eq!(
            output(&mut mock, r#"{"id":4,"sessionId":"s"}"#),
            "{\"jsonrpc\":\"2.0\",\"id\":4,\"error\":{\"code\":-32600,\"message\":\"Invalid Request\"},\"sessionId\":\"s\"}\n"
        );
    }
}
