//! The error replies the worker gives itself, in the bus's shape (`data.reason`, `data.retryable`).
//!
//! Codes -32050…-32059 are the worker's: the bus uses -32010…-32049 and Codex -32001.

use std::io::Write;

/// Why the worker answered a request itself with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerError {
    /// A second `initialize` in a session, answered exactly as Codex does.
    AlreadyInitialized,
    /// A request before the session's `initialize`, as Codex answers it.
    NotInitialized,
    /// A request without a `sessionId`: the worker cannot scope it.
    SessionRequired,
    /// The request names a thread another session owns (or nobody does).
    ThreadNotOwned,
    /// A process-global method that the worker's config does not enable.
    MethodNotAllowed(String),
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
    /// Valid JSON that is not a JSON-RPC message.
    InvalidRequest,
}

impl WorkerError {
    /// The JSON-RPC error code.
    pub fn code(&self) -> i32 {
        match self {
            Self::AlreadyInitialized
            | Self::NotInitialized
            | Self::SessionRequired
            | Self::ThreadNotOwned
            | Self::InvalidRequest => -32600,
            Self::MethodNotAllowed(_) => -32601,
            Self::ChildExited(_) => -32050,
            Self::RequestTimeout(_) => -32051,
            Self::ThreadLost(_) => -32052,
            Self::Draining => -32053,
            Self::ChildUnavailable(_) => -32054,
            Self::ChildrenBusy(_) => -32055,
        }
    }

    /// The stable `data.reason` word, or `None` for the errors that mirror Codex exactly.
    pub fn reason(&self) -> Option<&'static str> {
        Some(match self {
            Self::AlreadyInitialized | Self::NotInitialized | Self::InvalidRequest => return None,
            Self::SessionRequired => "session_required",
            Self::ThreadNotOwned => "thread_not_owned",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::ChildExited(_) => "child_exited",
            Self::RequestTimeout(_) => "request_timeout",
            Self::ThreadLost(_) => "thread_lost",
            Self::Draining => "worker_draining",
            Self::ChildUnavailable(_) => "child_unavailable",
            Self::ChildrenBusy(_) => "children_busy",
        })
    }

    /// The JSON-RPC error message.
    pub fn message(&self) -> &'static str {
        match self {
            Self::AlreadyInitialized => "Already initialized",
            Self::NotInitialized => "Not initialized",
            Self::SessionRequired => "sessionId required",
            Self::ThreadNotOwned => "thread not owned by session",
            Self::MethodNotAllowed(_) => "Method not allowed by codex-worker",
            Self::ChildExited(_) => "codex app-server exited",
            Self::RequestTimeout(_) => "Request timed out",
            Self::ThreadLost(_) => "Thread lost",
            Self::Draining => "Worker draining",
            Self::ChildUnavailable(_) => "codex app-server unavailable",
            Self::ChildrenBusy(_) => "All codex app-server children are busy",
            Self::InvalidRequest => "Invalid Request",
        }
    }

    /// Whether sending the same request again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::ChildExited(_) | Self::RequestTimeout(_) | Self::Draining | Self::ChildrenBusy(_)
        )
    }

    /// Appends the members of `data` after `reason` and `retryable`.
    fn detail(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail.
        let _ = match self {
            Self::MethodNotAllowed(method) => write!(
                out,
                ",\"detail\":{}",
                json_string(&format!(
                    "{method} is process-global; enable it with --allow-method"
                ))
            ),
            Self::ChildExited(generation) => write!(out, ",\"generation\":{generation}"),
            Self::RequestTimeout(secs) => write!(out, ",\"timeoutSec\":{secs}"),
            Self::ChildrenBusy(max) => write!(out, ",\"maxChildren\":{max}"),
            Self::ThreadLost(detail) | Self::ChildUnavailable(detail) => {
                write!(out, ",\"detail\":{}", json_string(detail))
            }
            _ => Ok(()),
        };
    }

    /// Appends the `error` object.
    pub fn write_object(&self, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "{{\"code\":{},\"message\":\"{}\"",
            self.code(),
            self.message()
        );
        if let Some(reason) = self.reason() {
            let _ = write!(
                out,
                ",\"data\":{{\"reason\":\"{reason}\",\"retryable\":{}",
                self.retryable()
            );
            self.detail(out);
            out.push(b'}');
        }
        out.push(b'}');
    }

    /// Appends a whole error reply line for the bus.
    pub fn write_reply(&self, out: &mut Vec<u8>, id: &[u8], session: Option<&[u8]>) {
        out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
        out.extend_from_slice(id);
        out.extend_from_slice(b",\"error\":");
        self.write_object(out);
        if let Some(session) = session {
            out.extend_from_slice(b",\"sessionId\":");
            out.extend_from_slice(session);
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Quotes free text as a JSON string.
pub fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
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

    #[test]
    fn codex_mirrored_errors_have_no_data() {
        assert_eq!(
            reply(&WorkerError::AlreadyInitialized),
            json!({"jsonrpc":"2.0","id":7,"error":{"code":-32600,"message":"Already initialized"},"sessionId":"s"})
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
}
