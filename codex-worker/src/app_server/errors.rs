//! The error replies the worker gives itself, in the bus's shape (`data.reason`, `data.retryable`).
//!
//! Codes -32050…-32069 are the worker's: the bus uses -32010…-32049 and Codex -32001. Cluster
//! mode's (docs/node-loss.md) are -32057…-32060.

use std::io::Write;

use codex_bus_worker_io::render::{self, json_string};

/// Why the worker answered a request itself with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerError {
    /// A request before the session's `initialize`, as Codex answers it.
    NotInitialized,
    /// A request without a `sessionId`: the worker cannot scope it.
    SessionRequired,
    /// The request names a thread another session owns (or nobody does).
    ThreadNotOwned,
    /// A session of a named tenant names a thread its tenant does not own: answered the same
    /// whether the thread is another tenant's or does not exist, so nothing about other
    /// tenants leaks (docs/codex-worker.md, "Tenants").
    ThreadNotFound,
    /// A process-global method that the worker's config does not enable.
    MethodNotAllowed(String),
    /// The request asks a thread for more than the operator granted the tenant (a sandbox mode,
    /// a `config` override, an unsandboxed shell command); the text says what.
    NotPermitted(String),
    /// The child exited while the request was in flight.
    ChildExited(u64),
    /// The child did not answer within the per-request timeout.
    RequestTimeout(u64),
    /// The thread did not survive a child restart (ephemeral, or its resume failed).
    ThreadLost(String),
    /// The worker is shutting down and takes no new work.
    Draining,
    /// The child could not be started or keeps failing.
    ChildUnavailable(String),
    /// `--child-per-session`: the session needs a child, and every one of the `--max-children`
    /// running children is busy.
    ChildrenBusy(usize),
    /// Cluster mode: another live holder (`node/pool/slot`) has the thread's lease; it may be
    /// taken in `retry_after_ms` at the latest, or reached at that node now.
    ThreadLeased {
        /// The holder, `node/pool/slot`.
        holder: String,
        /// Milliseconds until the lease expires unless its holder renews it.
        retry_after_ms: u64,
    },
    /// Cluster mode: the shared store cannot be reached; the text says why.
    StoreUnavailable(String),
    /// Cluster mode: a request with this idempotency key runs at the holder named.
    IdempotencyInProgress(String),
    /// Cluster mode: a request with this idempotency key began at a holder that died before it
    /// answered; whether it ran is unknown, so it is not run again.
    IdempotencyOutcomeUnknown,
    /// Cluster mode: the request with this idempotency key ran, but its reply was larger than
    /// `--idempotency-max-reply-bytes` and was not kept.
    IdempotentReplyTooLarge,
    /// Cluster mode: `idempotencyKey` is not a string of 1 to 256 bytes.
    InvalidIdempotencyKey,
    /// Cluster mode: the thread came back from another node while this worker's child still has
    /// its old state loaded; the child must restart to reload it and is busy with other work.
    ThreadReloading,
}

impl WorkerError {
    /// Appends a whole error reply line for the bus:
    /// `{"jsonrpc":"2.0","id":<id>,"error":{"code":C,"message":"M"[,"data":{"reason":"r","retryable":b[,<detail>]}]}[,"sessionId":<session>]}`
    /// with `data` only for the worker's own errors (those that mirror Codex have none).
    pub fn write_reply(&self, out: &mut Vec<u8>, id: &[u8], session: Option<&[u8]>) {
        render::error_reply(out, id, session, |out| self.write_object(out));
    }

    /// Appends the `error` object.
    fn write_object(&self, out: &mut Vec<u8>) {
        let (code, message, data) = self.row();
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{{\"code\":{code},\"message\":\"{message}\"");
        if let Some((reason, retryable, _, detail)) = data {
            let _ = write!(
                out,
                ",\"data\":{{\"reason\":\"{reason}\",\"retryable\":{retryable}"
            );
            let _ = match detail {
                Detail::None => Ok(()),
                Detail::Text(text) => write!(out, ",\"detail\":{}", json_string(text)),
                Detail::NotAllowed(method) => write!(
                    out,
                    ",\"detail\":{}",
                    json_string(&format!(
                        "{method} is process-global; enable it with --allow-method"
                    ))
                ),
                Detail::Number(name, value) => write!(out, ",\"{name}\":{value}"),
                Detail::Holder(holder, retry_after_ms) => {
                    let node = holder.split('/').next().unwrap_or(holder);
                    let _ = write!(
                        out,
                        ",\"holder\":{},\"node\":{}",
                        json_string(holder),
                        json_string(node)
                    );
                    match retry_after_ms {
                        Some(ms) => write!(out, ",\"retryAfterMs\":{ms}"),
                        None => Ok(()),
                    }
                }
            };
            out.push(b'}');
        }
        out.push(b'}');
    }

    /// The whole contract of one kind in one place, as in `codex_bus_protocol::ErrorKind`'s
    /// table, so no column can drift from the others: the JSON-RPC code, the message, and the
    /// `data` of the worker's own errors (`None` for those that mirror Codex, which carry none):
    /// its stable `reason` word, whether sending the same request again may succeed, whether the
    /// request may have reached Codex (cluster mode releases the idempotency key of one that
    /// never did, [`not_run`]), and what the kind adds to it.
    fn row(&self) -> (i32, &'static str, Option<Data<'_>>) {
        use Detail::{Number, Text};
        use Reached::{Maybe, Never};
        use WorkerError::*;
        match self {
            NotInitialized => (-32600, "Not initialized", None),
            SessionRequired => (
                -32600,
                "sessionId required",
                Some(("session_required", false, Never, Detail::None)),
            ),
            ThreadNotOwned => (
                -32600,
                "thread not owned by session",
                Some(("thread_not_owned", false, Never, Detail::None)),
            ),
            ThreadNotFound => (
                -32600,
                "no such thread",
                Some(("thread_not_found", false, Never, Detail::None)),
            ),
            MethodNotAllowed(method) => (
                -32601,
                "Method not allowed by codex-worker",
                Some((
                    "method_not_allowed",
                    false,
                    Never,
                    Detail::NotAllowed(method),
                )),
            ),
            NotPermitted(detail) => (
                -32056,
                "Not permitted by codex-worker policy",
                Some(("not_permitted", false, Never, Text(detail))),
            ),
            ChildExited(generation) => (
                -32050,
                "codex app-server exited",
                Some((
                    "child_exited",
                    true,
                    Maybe,
                    Number("generation", *generation),
                )),
            ),
            RequestTimeout(secs) => (
                -32051,
                "Request timed out",
                Some(("request_timeout", true, Maybe, Number("timeoutSec", *secs))),
            ),
            ThreadLost(detail) => (
                -32052,
                "Thread lost",
                Some(("thread_lost", false, Maybe, Text(detail))),
            ),
            Draining => (
                -32053,
                "Worker draining",
                Some(("worker_draining", true, Never, Detail::None)),
            ),
            ChildUnavailable(detail) => (
                -32054,
                "codex app-server unavailable",
                Some(("child_unavailable", false, Maybe, Text(detail))),
            ),
            ChildrenBusy(max) => (
                -32055,
                "All codex app-server children are busy",
                Some((
                    "children_busy",
                    true,
                    Never,
                    Number("maxChildren", *max as u64),
                )),
            ),
            ThreadLeased {
                holder,
                retry_after_ms,
            } => (
                -32057,
                "Thread leased by another node",
                Some((
                    "thread_leased",
                    true,
                    Never,
                    Detail::Holder(holder, Some(*retry_after_ms)),
                )),
            ),
            StoreUnavailable(detail) => (
                -32058,
                "Shared store unavailable",
                Some(("store_unavailable", true, Never, Text(detail))),
            ),
            IdempotencyInProgress(holder) => (
                -32059,
                "A request with this idempotency key is in progress",
                Some((
                    "idempotency_in_progress",
                    true,
                    Maybe,
                    Detail::Holder(holder, None),
                )),
            ),
            IdempotencyOutcomeUnknown => (
                -32059,
                "The request with this idempotency key may have run; its outcome is unknown",
                Some(("idempotency_outcome_unknown", false, Maybe, Detail::None)),
            ),
            InvalidIdempotencyKey => (
                -32602,
                "Invalid params: idempotencyKey must be a string of 1 to 256 bytes",
                Some(("invalid_idempotency_key", false, Maybe, Detail::None)),
            ),
            ThreadReloading => (
                -32060,
                "Thread changed on another node; codex app-server must reload it",
                Some(("thread_reloading", true, Never, Detail::None)),
            ),
            IdempotentReplyTooLarge => (
                -32059,
                "The request with this idempotency key ran; its reply was too large to keep",
                Some(("idempotent_reply_too_large", false, Maybe, Detail::None)),
            ),
        }
    }
}

/// The `data` of a worker's own error, as [`WorkerError::row`] gives it: `reason`, `retryable`,
/// whether the request may have reached Codex, and what the kind adds.
type Data<'a> = (&'static str, bool, Reached, Detail<'a>);

/// Whether a request the worker answered with an error may have reached Codex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reached {
    /// Refused before it reached Codex: it did not run.
    Never,
    /// It may have run (a timeout, a child that died with it in flight), or the answer is not
    /// about running it at all: its idempotency key stays.
    Maybe,
}

impl WorkerError {
    /// One error of every kind (`docs_codex_worker_md_has_every_row` and the wire-form tests
    /// check that it lists every kind), to look a `reason` word up by.
    fn every_kind() -> [Self; 19] {
        use WorkerError::*;
        [
            NotInitialized,
            SessionRequired,
            ThreadNotOwned,
            ThreadNotFound,
            MethodNotAllowed(String::new()),
            NotPermitted(String::new()),
            ChildExited(0),
            RequestTimeout(0),
            ThreadLost(String::new()),
            Draining,
            ChildUnavailable(String::new()),
            ChildrenBusy(0),
            ThreadLeased {
                holder: String::new(),
                retry_after_ms: 0,
            },
            StoreUnavailable(String::new()),
            IdempotencyInProgress(String::new()),
            IdempotencyOutcomeUnknown,
            IdempotentReplyTooLarge,
            InvalidIdempotencyKey,
            ThreadReloading,
        ]
    }
}

/// Whether an error reply with `reason` (its `data.reason`) says the worker refused the request
/// before it reached Codex: it did not run, so its idempotency key is released for the retry.
pub fn not_run(reason: &str) -> bool {
    WorkerError::every_kind().iter().any(|kind| {
        kind.row()
            .2
            .is_some_and(|(word, _, reached, _)| word == reason && reached == Reached::Never)
    })
}

/// What one kind adds to its `data`, after `reason` and `retryable`.
enum Detail<'a> {
    /// Nothing.
    None,
    /// `"detail"`: free text.
    Text(&'a str),
    /// `"detail"`: why the named method is refused, and the option that enables it.
    NotAllowed(&'a str),
    /// A number under its own member name.
    Number(&'static str, u64),
    /// `"holder"` (`node/pool/slot`), `"node"` (its first part) and, when given,
    /// `"retryAfterMs"`.
    Holder(&'a str, Option<u64>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn reply(error: &WorkerError) -> Value {
        let mut out = Vec::new();
        error.write_reply(&mut out, b"7", Some(b"\"s\""));
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).unwrap()
    }

    /// One error of every kind, with its exact `error` object on the wire.
    fn every_kind() -> Vec<(WorkerError, Value)> {
        use WorkerError::*;
        vec![
            (
                NotInitialized,
                json!({"code":-32600,"message":"Not initialized"}),
            ),
            (
                SessionRequired,
                json!({"code":-32600,"message":"sessionId required","data":{"reason":"session_required","retryable":false}}),
            ),
            (
                ThreadNotOwned,
                json!({"code":-32600,"message":"thread not owned by session","data":{"reason":"thread_not_owned","retryable":false}}),
            ),
            (
                ThreadNotFound,
                json!({"code":-32600,"message":"no such thread","data":{"reason":"thread_not_found","retryable":false}}),
            ),
            (
                MethodNotAllowed("config/read".into()),
                json!({"code":-32601,"message":"Method not allowed by codex-worker","data":{"reason":"method_not_allowed","retryable":false,"detail":"config/read is process-global; enable it with --allow-method"}}),
            ),
            (
                NotPermitted("sandbox \"danger-full-access\" is not granted".into()),
                json!({"code":-32056,"message":"Not permitted by codex-worker policy","data":{"reason":"not_permitted","retryable":false,"detail":"sandbox \"danger-full-access\" is not granted"}}),
            ),
            (
                ChildExited(3),
                json!({"code":-32050,"message":"codex app-server exited","data":{"reason":"child_exited","retryable":true,"generation":3}}),
            ),
            (
                RequestTimeout(30),
                json!({"code":-32051,"message":"Request timed out","data":{"reason":"request_timeout","retryable":true,"timeoutSec":30}}),
            ),
            (
                ThreadLost("no \"rollout\"".into()),
                json!({"code":-32052,"message":"Thread lost","data":{"reason":"thread_lost","retryable":false,"detail":"no \"rollout\""}}),
            ),
            (
                Draining,
                json!({"code":-32053,"message":"Worker draining","data":{"reason":"worker_draining","retryable":true}}),
            ),
            (
                ChildUnavailable("spawn failed".into()),
                json!({"code":-32054,"message":"codex app-server unavailable","data":{"reason":"child_unavailable","retryable":false,"detail":"spawn failed"}}),
            ),
            (
                ChildrenBusy(2),
                json!({"code":-32055,"message":"All codex app-server children are busy","data":{"reason":"children_busy","retryable":true,"maxChildren":2}}),
            ),
            (
                ThreadLeased {
                    holder: "a/codex/0".into(),
                    retry_after_ms: 1500,
                },
                json!({"code":-32057,"message":"Thread leased by another node","data":{"reason":"thread_leased","retryable":true,"holder":"a/codex/0","node":"a","retryAfterMs":1500}}),
            ),
            (
                StoreUnavailable("connection refused".into()),
                json!({"code":-32058,"message":"Shared store unavailable","data":{"reason":"store_unavailable","retryable":true,"detail":"connection refused"}}),
            ),
            (
                IdempotencyInProgress("b/codex/1".into()),
                json!({"code":-32059,"message":"A request with this idempotency key is in progress","data":{"reason":"idempotency_in_progress","retryable":true,"holder":"b/codex/1","node":"b"}}),
            ),
            (
                IdempotencyOutcomeUnknown,
                json!({"code":-32059,"message":"The request with this idempotency key may have run; its outcome is unknown","data":{"reason":"idempotency_outcome_unknown","retryable":false}}),
            ),
            (
                InvalidIdempotencyKey,
                json!({"code":-32602,"message":"Invalid params: idempotencyKey must be a string of 1 to 256 bytes","data":{"reason":"invalid_idempotency_key","retryable":false}}),
            ),
            (
                ThreadReloading,
                json!({"code":-32060,"message":"Thread changed on another node; codex app-server must reload it","data":{"reason":"thread_reloading","retryable":true}}),
            ),
            (
                IdempotentReplyTooLarge,
                json!({"code":-32059,"message":"The request with this idempotency key ran; its reply was too large to keep","data":{"reason":"idempotent_reply_too_large","retryable":false}}),
            ),
        ]
    }

    #[test]
    fn codex_mirrored_errors_have_no_data() {
        assert_eq!(
            reply(&WorkerError::NotInitialized),
            json!({"jsonrpc":"2.0","id":7,"error":{"code":-32600,"message":"Not initialized"},"sessionId":"s"})
        );
    }

    #[test]
    fn worker_errors_carry_reason_and_retryable() {
        let value = reply(&WorkerError::ChildExited(3));
        assert_eq!(
            value["error"],
            json!({"code":-32050,"message":"codex app-server exited","data":{"reason":"child_exited","retryable":true,"generation":3}})
        );
        let value = reply(&WorkerError::MethodNotAllowed("config/read".into()));
        assert_eq!(value["error"]["code"], -32601);
        assert_eq!(value["error"]["data"]["retryable"], false);
        assert!(value["error"]["data"]["detail"]
            .as_str()
            .unwrap()
            .contains("config/read"));
        assert_eq!(
            reply(&WorkerError::ThreadNotOwned)["error"]["message"],
            "thread not owned by session"
        );
        assert_eq!(
            reply(&WorkerError::ChildrenBusy(2))["error"],
            json!({"code":-32055,"message":"All codex app-server children are busy","data":{"reason":"children_busy","retryable":true,"maxChildren":2}})
        );
    }

    #[test]
    fn every_kind_has_its_exact_wire_form() {
        for (error, object) in every_kind() {
            assert_eq!(
                reply(&error),
                json!({"jsonrpc":"2.0","id":7,"error":object,"sessionId":"s"}),
                "{error:?}"
            );
        }
        let mut out = Vec::new();
        WorkerError::Draining.write_reply(&mut out, b"1.5e3", None);
        assert!(out.starts_with(b"{\"jsonrpc\":\"2.0\",\"id\":1.5e3,\"error\":"));
        assert!(!out.windows(11).any(|w| w == b"\"sessionId\""));
    }

    #[test]
    fn reasons_are_unique_and_only_codex_mirrors_lack_them() {
        let kinds = every_kind();
        let mut reasons: Vec<_> = kinds
            .iter()
            .filter_map(|(error, _)| error.row().2.map(|(reason, _, _, _)| reason))
            .collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), kinds.len() - 1, "{reasons:?}");
    }

    #[test]
    fn reasons_are_looked_up_among_every_kind() {
        use std::collections::HashSet;
        use std::mem::discriminant;
        let listed: HashSet<_> = every_kind()
            .iter()
            .map(|(error, _)| discriminant(error))
            .collect();
        let looked_up: HashSet<_> = WorkerError::every_kind().iter().map(discriminant).collect();
        assert_eq!(looked_up, listed);
        assert_eq!(WorkerError::every_kind().len(), listed.len());
        for reason in [
            "worker_draining",
            "children_busy",
            "thread_leased",
            "thread_not_found",
        ] {
            assert!(not_run(reason), "{reason}");
        }
        for reason in [
            "request_timeout",
            "child_exited",
            "idempotency_in_progress",
            "nope",
        ] {
            assert!(!not_run(reason), "{reason}");
        }
    }

    /// docs/codex-worker.md's table of the worker's own errors says exactly what the code sends.
    #[test]
    fn docs_codex_worker_md_has_every_row() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/codex-worker.md");
        let doc = std::fs::read_to_string(path).expect("docs/codex-worker.md");
        let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| -32")).collect();
        for (error, _) in every_kind() {
            let (code, message, data) = error.row();
            let found = match data {
                Some((reason, retryable, _, _)) => {
                    let prefix = format!("| {code} | {message} | `{reason}` | {retryable} |");
                    rows.iter().any(|row| row.starts_with(&prefix))
                }
                None => rows.iter().any(|row| {
                    row.starts_with(&format!("| {code} | "))
                        && row.contains(message)
                        && row.contains("(none, as Codex)")
                }),
            };
            assert!(found, "no row for {error:?} in docs/codex-worker.md");
        }
    }
}
