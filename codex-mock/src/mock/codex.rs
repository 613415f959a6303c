//! The Codex methods of the mock worker: `initialize` answered at once, everything the
//! scenario engine implements rendered in the bus's format (`jsonrpc`, `sessionId`).

use std::ops::ControlFlow;
use std::time::Instant;

use codex_bus_worker_io::message::{tenant_name, Call};
use codex_bus_worker_io::render;

use super::{raw, Mock, Stop};
use crate::scenario::{self, Emit, Tag};

/// What `initialize` answers: the shape of Codex's `InitializeResponse`.
const INITIALIZE_RESULT: &[u8] = br#"{"userAgent":"codex_worker_mock/0.169.0","codexHome":"","platformFamily":"unix","platformOs":"linux"}"#;

impl Mock {
    /// Handles `call` if it is a Codex method the mock implements.
    pub(super) fn codex(
        &mut self,
        call: &Call<'_>,
        out: &mut Vec<u8>,
    ) -> Option<ControlFlow<Stop>> {
        // Codex takes no notifications but `initialized`; a mock of it has nothing to do either.
        let id = call.id?;
        let session = call.session.map(raw);
        if call.name == "initialize" {
            render::result(out, raw(id), session, |out| {
                out.extend_from_slice(INITIALIZE_RESULT);
            });
            return Some(ControlFlow::Continue(()));
        }
        if !scenario::implements(&call.name) {
            return None;
        }
        let tag = Tag::from(session.unwrap_or_default());
        let tenant = tenant_name(call.tenant);
        let mut emits = Vec::new();
        self.engine
            .call(
                &call.name,
                call.params,
                &tag,
                &tenant,
                Instant::now(),
                &mut emits,
            )
            .then(|| render(&emits, Some((raw(id), session)), out))
    }
}

/// Writes `emits` for the bus; `request` is the id and session of the request being answered.
pub(super) fn render(
    emits: &[Emit],
    request: Option<(&[u8], Option<&[u8]>)>,
    out: &mut Vec<u8>,
) -> ControlFlow<Stop> {
    for emit in emits {
        match emit {
            Emit::Reply(reply) => {
                let Some((id, session)) = request else {
                    continue;
                };
                match reply {
                    Ok(result) => render::result(out, id, session, |out| {
                        out.extend_from_slice(result.as_bytes());
                    }),
                    Err(error) => render::error(out, id, session, error.code, &error.message, None),
                }
            }
            Emit::Notify {
                tag,
                method,
                params,
                at_ms,
            } => {
                render::timed_notification(out, method, session_of(tag), *at_ms, params.as_bytes())
            }
            Emit::Ask {
                tag,
                id,
                method,
                params,
            } => render::request(out, *id, method, session_of(tag), |out| {
                out.extend_from_slice(params.as_bytes());
            }),
            Emit::Crash => return ControlFlow::Break(Stop::Crash),
        }
    }
    ControlFlow::Continue(())
}

/// A thread started without a session has events without one.
fn session_of(tag: &Tag) -> Option<&[u8]> {
    (!tag.is_empty()).then_some(&tag[..])
}
