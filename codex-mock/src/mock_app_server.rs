//! `codex-mock app-server`: a stand-in for `codex app-server` with the child's exact wire
//! format (no `jsonrpc` member, integer server-request ids from 0, `emittedAtMs` on
//! notifications, `Not initialized`/`Already initialized`, exit at end of input), driven by the
//! scenario engine, so `codex-worker` is tested without Codex.
//!
//! Persistent threads are rollouts in `$CODEX_HOME` laid out as Codex lays them out, with
//! Codex's per-thread writer lock, so that a restarted fake child resumes them and a thread moves
//! to another home by copying its rollout, as with Codex (docs/thread-resume.md).

use std::io;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use serde::Deserialize;

use codex_bus_worker_io::input;
use codex_bus_worker_io::lines::Lines;
use codex_bus_worker_io::log;
use codex_bus_worker_io::message::{self, Call, Message, DEFAULT_TENANT};
use codex_bus_worker_io::timer::sleep_until;

use crate::event_loop::flush;
use crate::scenario::knobs::Knobs;
use crate::scenario::{Emit, Engine, RpcError, Tag, STEPS_PER_RELEASE};

/// Exit status of a scripted crash, like a child that died of an error.
const CRASH_STATUS: u8 = 1;

/// Runs the fake child until end of input (status 0) or a scripted crash (status 1).
pub fn run(knobs: Knobs) -> io::Result<u8> {
    let home = std::env::var_os("CODEX_HOME").map(PathBuf::from);
    let engine = Engine::fake_child(knobs, home.clone())?;
    let mut child = FakeChild {
        engine,
        initialized: false,
        home: home.map_or_else(String::new, |home| home.to_string_lossy().into_owned()),
        tag: Tag::from(&b""[..]),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(child.serve())
}

/// The fake child's state.
struct FakeChild {
    engine: Engine,
    initialized: bool,
    home: String,
    /// Every thread's events go to the one client.
    tag: Tag,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InitializeParams {
    client_info: ClientInfo,
}

#[derive(Deserialize)]
struct ClientInfo {
    name: String,
    version: String,
}

impl FakeChild {
    async fn serve(&mut self) -> io::Result<u8> {
        let mut chunks = input::spawn_stdin_reader()?;
        let mut lines = Lines::new("stdin");
        let mut out = Vec::new();
        let mut stdout = io::stdout().lock();
        loop {
            let due = self.engine.next_due();
            let flow = tokio::select! {
                biased;
                () = sleep_until(due) => {
                    let mut emits = Vec::new();
                    self.engine.fire_due(Instant::now(), STEPS_PER_RELEASE, &mut emits);
                    render(&emits, None, &mut out)
                }
                chunk = chunks.recv() => match chunk {
                    Some(chunk) => lines.feed(&chunk, |line| self.handle_line(line, &mut out)),
                    None => {
                        let flow = lines.finish(|line| self.handle_line(line, &mut out));
                        flush(&mut stdout, &mut out)?;
                        // Codex in stdio mode serves one client and exits when it leaves.
                        return Ok(if flow.is_break() { CRASH_STATUS } else { 0 });
                    }
                },
            };
            flush(&mut stdout, &mut out)?;
            if flow.is_break() {
                log::line(format_args!("mock-app-server: scripted crash"));
                return Ok(CRASH_STATUS);
            }
        }
    }

    fn handle_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> ControlFlow<()> {
        let now = Instant::now();
        match message::classify(line) {
            Message::Call(call) => self.call(&call, now, out),
            Message::Response(response) => {
                let id = response.id.get().parse::<u64>().ok();
                let result = (!response.is_error).then_some(response.outcome);
                let mut emits = Vec::new();
                // Codex knows no tenants: codex-worker scopes threads before anything reaches it.
                let known = id.is_some_and(|id| {
                    self.engine
                        .answer(id, result, DEFAULT_TENANT, now, &mut emits)
                });
                if !known {
                    log::line(format_args!(
                        "mock-app-server: answer to unknown request {}",
                        response.id.get()
                    ));
                }
                render(&emits, None, out)
            }
            // Codex logs a line it cannot parse and skips it without a reply.
            Message::Invalid { .. } | Message::Malformed(_) => {
                log::line(format_args!("mock-app-server: skipping an unreadable line"));
                ControlFlow::Continue(())
            }
        }
    }

    fn call(&mut self, call: &Call<'_>, now: Instant, out: &mut Vec<u8>) -> ControlFlow<()> {
        let Some(id) = call.id else {
            if call.name != "initialized" {
                log::line(format_args!(
                    "mock-app-server: ignoring notification {}",
                    call.name
                ));
            }
            return ControlFlow::Continue(());
        };
        let id = id.get().as_bytes();
        if call.name == "initialize" {
            self.initialize(call, id, out);
            return ControlFlow::Continue(());
        }
        if !self.initialized {
            error(
                out,
                id,
                &RpcError {
                    code: -32600,
                    message: "Not initialized".into(),
                },
            );
            return ControlFlow::Continue(());
        }
        let mut emits = Vec::new();
        if self.engine.call(
            &call.name,
            call.params,
            &self.tag,
            DEFAULT_TENANT,
            now,
            &mut emits,
        ) {
            return render(&emits, Some(id), out);
        }
        let message = format!("Invalid request: unknown variant `{}`", call.name);
        error(
            out,
            id,
            &RpcError {
                code: -32600,
                message,
            },
        );
        ControlFlow::Continue(())
    }

    fn initialize(&mut self, call: &Call<'_>, id: &[u8], out: &mut Vec<u8>) {
        if self.initialized {
            error(
                out,
                id,
                &RpcError {
                    code: -32600,
                    message: "Already initialized".into(),
                },
            );
            return;
        }
        let Some(params) = call
            .params
            .and_then(|raw| serde_json::from_str::<InitializeParams>(raw.get()).ok())
        else {
            error(
                out,
                id,
                &RpcError {
                    code: -32602,
                    message: "Invalid params: clientInfo is required".into(),
                },
            );
            return;
        };
        self.initialized = true;
        let info = params.client_info;
        let result = serde_json::json!({
            "userAgent": format!("{}/0.169.0 (mock-app-server; {}) ({}; {})", info.name, env!("CARGO_PKG_VERSION"), info.name, info.version),
            "codexHome": self.home,
            "platformFamily": "unix",
            "platformOs": std::env::consts::OS,
        });
        reply(out, id, &result.to_string());
        // Codex sends these process-global notifications right after the response.
        let at = u128::from(self.engine.now_ms());
        notification(
            out,
            "configWarning",
            r#"{"summary":"mock-app-server: no sandbox","details":null}"#,
            at,
        );
        notification(
            out,
            "remoteControl/status/changed",
            r#"{"status":"disabled","serverName":"mock","installationId":"00000000-0000-0000-0000-000000000000","environmentId":null}"#,
            at,
        );
    }
}

/// Writes `emits` in the child's format; `id` answers the request being handled.
fn render(emits: &[Emit], id: Option<&[u8]>, out: &mut Vec<u8>) -> ControlFlow<()> {
    for emit in emits {
        match emit {
            Emit::Reply(Ok(result)) => reply(out, id.unwrap_or(b"null"), result),
            Emit::Reply(Err(rpc)) => error(out, id.unwrap_or(b"null"), rpc),
            Emit::Notify {
                method,
                params,
                at_ms,
                ..
            } => notification(out, method, params, u128::from(*at_ms)),
            Emit::Ask {
                id, method, params, ..
            } => {
                out.extend_from_slice(
                    format!("{{\"id\":{id},\"method\":\"{method}\",\"params\":{params}}}\n")
                        .as_bytes(),
                );
            }
            Emit::Crash => return ControlFlow::Break(()),
        }
    }
    ControlFlow::Continue(())
}

fn reply(out: &mut Vec<u8>, id: &[u8], result: &str) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id);
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result.as_bytes());
    out.extend_from_slice(b"}\n");
}

/// Codex puts `error` before `id` in its error replies.
fn error(out: &mut Vec<u8>, id: &[u8], rpc: &RpcError) {
    let body = serde_json::json!({"code": rpc.code, "message": rpc.message});
    out.extend_from_slice(format!("{{\"error\":{body},\"id\":").as_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(b"}\n");
}

fn notification(out: &mut Vec<u8>, method: &str, params: &str, at_ms: u128) {
    out.extend_from_slice(
        format!("{{\"method\":\"{method}\",\"params\":{params},\"emittedAtMs\":{at_ms}}}\n")
            .as_bytes(),
    );
}
