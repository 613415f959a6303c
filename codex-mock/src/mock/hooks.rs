//! The `mock/*` test hooks the daemon's end-to-end tests rely on.

use std::borrow::Cow;
use std::io::Write;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use codex_bus_worker_io::log;
use codex_bus_worker_io::message::Call;
use codex_bus_worker_io::render;

use super::{params, raw, Mock, PendingAsk, Stop};

#[derive(Deserialize)]
struct DelayParams {
    ms: u64,
}

/// The params of LSP's `$/cancelRequest` (`id`) and MCP's `notifications/cancelled`
/// (`requestId`).
#[derive(Deserialize)]
struct CancelParams<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "requestId")]
    request_id: Option<&'a RawValue>,
}

/// LSP's `RequestCancelled` code, which the mock answers a cancelled `mock/delay` with.
const REQUEST_CANCELLED: i32 = -32800;

#[derive(Deserialize)]
struct ExitParams {
    code: u8,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BigParams {
    bytes: usize,
    #[serde(default)]
    id_last: bool,
}

#[derive(Deserialize)]
struct NotifyParams {
    count: u64,
}

#[derive(Deserialize)]
struct SpewParams {
    count: u64,
}

#[derive(Deserialize)]
struct StderrParams<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

/// The line `mock/garbage` writes before its reply.
const GARBAGE: &[u8] = b"this is not json\n";

/// JSON-RPC's code for params that do not fit, which a hook answers with its expected shape.
const INVALID_PARAMS: i32 = -32602;

/// What the mock asks the client in its `mock/approval` request.
const QUESTION: &[u8] = br#"{"question":"Allow the mock action?"}"#;

impl Mock {
    /// Runs the `mock/*` hook `call` names (unknown hook names get the default result).
    pub(super) fn hook(&mut self, call: &Call<'_>, out: &mut Vec<u8>) -> ControlFlow<Stop> {
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
                        let id = call.id.map(raw).unwrap_or_default().to_vec();
                        self.delayed.push(deadline, id, line);
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
            "mock/segv" => return ControlFlow::Break(Stop::Segv),
            "mock/hang" => return ControlFlow::Break(Stop::Hang),
            "mock/close-stdout" => return ControlFlow::Break(Stop::CloseStdout),
            "mock/big" => match params::<BigParams>(call.params) {
                Some(big) => big_reply(out, call, &big),
                None => invalid_params(
                    out,
                    call,
                    "mock/big needs params {\"bytes\": <usize>, \"idLast\": <bool>}",
                ),
            },
            "mock/stubborn" => {
                self.become_stubborn();
                // The reply tells the test that SIGTERM is ignored from here on.
                self.default_reply(out, call);
            }
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
            "mock/spew" => match params::<SpewParams>(call.params) {
                Some(spew) => {
                    // Replies to string ids: the bus's own ids are integers, so none was issued.
                    let session = call.session.map(raw);
                    for seq in 0..spew.count {
                        let id = format!("\"mock-spew-{seq}\"");
                        render::result(out, id.as_bytes(), session, |out| {
                            out.extend_from_slice(b"{}");
                        });
                    }
                    self.default_reply(out, call);
                }
                None => invalid_params(out, call, "mock/spew needs params {\"count\": <u64>}"),
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

    /// A cancellation notification: a held `mock/delay` reply with the id it names is replaced
    /// at once by the error `-32800 "Request cancelled"` (`data` `"cancelled"`), so a test sees
    /// which request a cancellation reached. Anything else is logged and ignored.
    pub(super) fn cancel(&mut self, call: &Call<'_>, out: &mut Vec<u8>) {
        let named = params::<CancelParams<'_>>(call.params).and_then(|p| p.id.or(p.request_id));
        match named {
            Some(id) if self.delayed.withdraw(raw(id)) => render::error(
                out,
                raw(id),
                call.session.map(raw),
                REQUEST_CANCELLED,
                "Request cancelled",
                Some("cancelled"),
            ),
            _ => log::line(format_args!(
                "cancellation of no held request ignored: {}",
                call.params.map_or("", RawValue::get)
            )),
        }
    }

    fn ask(&mut self, out: &mut Vec<u8>, call: &Call<'_>) {
        let Some(id) = call.id else {
            log::line(format_args!(
                "mock/ask sent as a notification: nothing to answer, ignored"
            ));
            return;
        };
        // One id space with the scenario's approvals, so an answer finds exactly one asker.
        let ask_id = self.engine.allocate_request_id();
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
}

/// `mock/big`'s reply: `result: {"pad": "xx…"}` with `bytes` x's, the `id` member first or, with
/// `idLast`, after the result and the `sessionId`, where a reader must scan the whole line for it.
fn big_reply(out: &mut Vec<u8>, call: &Call<'_>, big: &BigParams) {
    let Some(id) = call.id else { return };
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",");
    if !big.id_last {
        out.extend_from_slice(b"\"id\":");
        out.extend_from_slice(raw(id));
        out.push(b',');
    }
    out.extend_from_slice(b"\"result\":{\"pad\":\"");
    out.resize(out.len() + big.bytes, b'x');
    out.extend_from_slice(b"\"}");
    if let Some(session) = call.session {
        out.extend_from_slice(b",\"sessionId\":");
        out.extend_from_slice(raw(session));
    }
    if big.id_last {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(raw(id));
    }
    out.extend_from_slice(b"}\n");
}

/// Rejects a hook call whose params do not fit; a notification has nobody to tell but the log.
fn invalid_params(out: &mut Vec<u8>, call: &Call<'_>, expected: &str) {
    match call.id {
        Some(id) => render::error(
            out,
            raw(id),
            call.session.map(raw),
            INVALID_PARAMS,
            "Invalid params",
            Some(expected),
        ),
        None => log::line(format_args!("invalid params, ignored: {expected}")),
    }
}
