//! The one table of error replies the bus sends, and their JSON-RPC encoding.

/// Who is at fault (pingora-style): decides logging level and whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The peer that sent the message did something wrong.
    Client,
    /// A worker process misbehaved or went away.
    Worker,
    /// The bus itself cannot serve the message right now.
    Bus,
}

/// Every error reply the bus can send. Stable: codes and reasons are a public contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The line is not valid JSON.
    ParseError,
    /// Valid JSON but not a usable JSON-RPC message.
    InvalidRequest,
    /// A JSON array (batch) was sent; the bus does not route batches.
    BatchNotSupported,
    /// The line exceeded the configured maximum length.
    MessageTooLarge,
    /// The message names a pool that does not exist.
    UnknownPool,
    /// The message names no pool and there is no default.
    PoolRequired,
    /// The message's session key is longer than `limits.max_session_id_bytes`.
    SessionIdTooLong,
    /// The pool has no live worker for a message without a session (all failed or stopped).
    NoWorker,
    /// The worker handling the request exited before replying.
    WorkerExited,
    /// The slot of the request's session exceeded its restart limit and is marked failed.
    WorkerFailed,
    /// No reply came within the pool's `request_timeout_sec`, or no worker started within its
    /// `queue_timeout_sec`.
    Timeout,
    /// The worker's reply was longer than `limits.max_worker_line`, so it was not delivered.
    ReplyTooLarge,
    /// The message starts a new session while the session table holds `limits.max_sessions`;
    /// sessions idle for `limits.session_idle_sec` leave it, so a retry later may succeed.
    TooManySessions,
    /// The bus is shutting down and accepts no new requests.
    ShuttingDown,
    /// Sent to a worker whose request names a session without a client.
    NoClient,
    /// Sent to a worker whose request's client has disconnected.
    ClientDisconnected,
    /// The connection has not authenticated (`bus/authenticate`) or its credential was refused.
    Unauthenticated,
    /// The tenant's request rate (`tenants.*.requests_per_sec`, a token bucket) is exhausted;
    /// `data.retry_after_ms` says when one more request will be admitted.
    RateLimited,
    /// One of the tenant's quotas (sessions, connections, requests in flight) is reached;
    /// `data.quota` names it and `data.retry_after_ms` suggests a wait.
    QuotaExceeded,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [ErrorKind] = &[
        ErrorKind::ParseError,
        ErrorKind::InvalidRequest,
        ErrorKind::BatchNotSupported,
        ErrorKind::MessageTooLarge,
        ErrorKind::UnknownPool,
        ErrorKind::PoolRequired,
        ErrorKind::SessionIdTooLong,
        ErrorKind::NoWorker,
        ErrorKind::WorkerExited,
        ErrorKind::WorkerFailed,
        ErrorKind::Timeout,
        ErrorKind::ReplyTooLarge,
        ErrorKind::TooManySessions,
        ErrorKind::ShuttingDown,
        ErrorKind::NoClient,
        ErrorKind::ClientDisconnected,
        ErrorKind::Unauthenticated,
        ErrorKind::RateLimited,
        ErrorKind::QuotaExceeded,
    ];

    /// The JSON-RPC error code.
    pub fn code(self) -> i64 {
        self.row().0
    }

    /// The JSON-RPC error message.
    pub fn message(self) -> &'static str {
        self.row().1
    }

    /// The stable machine-readable reason, sent as `data.reason`.
    pub fn reason(self) -> &'static str {
        self.row().2
    }

    /// Whether sending the same message again may succeed.
    pub fn retryable(self) -> bool {
        self.row().3
    }

    /// Who is at fault.
    pub fn fault(self) -> Fault {
        self.row().4
    }

    /// The whole contract of one kind in one place, so no column can drift from the others.
    fn row(self) -> (i64, &'static str, &'static str, bool, Fault) {
        use ErrorKind::*;
        use Fault::{Bus, Client, Worker};
        match self {
            ParseError => (-32700, "Parse error", "parse_error", false, Client),
            InvalidRequest => (-32600, "Invalid Request", "invalid_request", false, Client),
            BatchNotSupported => (
                -32600,
                "Invalid Request",
                "batch_not_supported",
                false,
                Client,
            ),
            MessageTooLarge => (
                -32600,
                "Message too large",
                "message_too_large",
                false,
                Client,
            ),
            UnknownPool => (-32010, "Unknown pool", "unknown_pool", false, Client),
            PoolRequired => (-32011, "Pool required", "pool_required", false, Client),
            SessionIdTooLong => (
                -32012,
                "Session id too long",
                "session_id_too_long",
                false,
                Client,
            ),
            NoWorker => (-32020, "No worker available", "no_worker", true, Bus),
            WorkerExited => (-32021, "Worker exited", "worker_exited", true, Worker),
            WorkerFailed => (-32022, "Worker failed", "worker_failed", true, Worker),
            Timeout => (-32023, "Request timed out", "timeout", true, Worker),
            ReplyTooLarge => (-32024, "Reply too large", "reply_too_large", false, Worker),
            TooManySessions => (-32025, "Too many sessions", "too_many_sessions", true, Bus),
            ShuttingDown => (-32030, "Shutting down", "shutting_down", true, Bus),
            NoClient => (-32040, "No client for session", "no_client", true, Client),
            ClientDisconnected => (
                -32041,
                "Client disconnected",
                "client_disconnected",
                true,
                Client,
            ),
            Unauthenticated => (-32050, "Unauthenticated", "unauthenticated", false, Client),
            RateLimited => (-32051, "Rate limited", "rate_limited", true, Client),
            QuotaExceeded => (-32052, "Quota exceeded", "quota_exceeded", true, Client),
        }
    }
}

/// Members of an error reply's `data` beyond `reason`, `retryable` and `detail`: the hints a
/// retryable refusal gives (`rate_limited`, `quota_exceeded`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorHint<'a> {
    /// `data.quota`: which quota was reached, e.g. `"sessions"`.
    pub quota: Option<&'a str>,
    /// `data.retry_after_ms`: how long to wait before a retry may succeed, in milliseconds.
    pub retry_after_ms: Option<u64>,
}

/// Appends one error reply line (with `\n`) to `out`:
/// `{"jsonrpc":"2.0","id":<id or null>,"error":{"code":C,"message":"M","data":{"reason":"r","retryable":b}}}`
/// `id` is the raw original id token (None → null). If `detail` is Some, add `"detail":"<json-escaped>"` inside data.
pub fn append_error_reply(
    out: &mut Vec<u8>,
    id: Option<&[u8]>,
    kind: ErrorKind,
    detail: Option<&str>,
) {
    append_error_reply_hinted(out, id, kind, detail, ErrorHint::default());
}

/// [`append_error_reply`] with the `hint`'s members added to `data` (after `detail`).
pub fn append_error_reply_hinted(
    out: &mut Vec<u8>,
    id: Option<&[u8]>,
    kind: ErrorKind,
    detail: Option<&str>,
    hint: ErrorHint<'_>,
) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.unwrap_or(b"null"));
    out.extend_from_slice(b",\"error\":{\"code\":");
    out.extend_from_slice(itoa::Buffer::new().format(kind.code()).as_bytes());
    out.extend_from_slice(b",\"message\":\"");
    out.extend_from_slice(kind.message().as_bytes());
    out.extend_from_slice(b"\",\"data\":{\"reason\":\"");
    out.extend_from_slice(kind.reason().as_bytes());
    out.extend_from_slice(b"\",\"retryable\":");
    out.extend_from_slice(if kind.retryable() { b"true" } else { b"false" });
    if let Some(detail) = detail {
        out.extend_from_slice(b",\"detail\":");
        push_json_string(out, detail);
    }
    if let Some(quota) = hint.quota {
        out.extend_from_slice(b",\"quota\":");
        push_json_string(out, quota);
    }
    if let Some(ms) = hint.retry_after_ms {
        out.extend_from_slice(b",\"retry_after_ms\":");
        out.extend_from_slice(itoa::Buffer::new().format(ms).as_bytes());
    }
    out.extend_from_slice(b"}}}\n");
}

/// Appends `s` as a quoted JSON string, escaping only what JSON requires.
pub(crate) fn push_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &c in s.as_bytes() {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x00..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
            }
            _ => out.push(c),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::collections::HashSet;

    #[test]
    fn table_matches_contract() {
        let rows: Vec<_> = ErrorKind::ALL
            .iter()
            .map(|k| (k.code(), k.message(), k.reason(), k.retryable(), k.fault()))
            .collect();
        assert_eq!(
            rows,
            [
                (-32700, "Parse error", "parse_error", false, Fault::Client),
                (
                    -32600,
                    "Invalid Request",
                    "invalid_request",
                    false,
                    Fault::Client
                ),
                (
                    -32600,
                    "Invalid Request",
                    "batch_not_supported",
                    false,
                    Fault::Client
                ),
                (
                    -32600,
                    "Message too large",
                    "message_too_large",
                    false,
                    Fault::Client
                ),
                (-32010, "Unknown pool", "unknown_pool", false, Fault::Client),
                (
                    -32011,
                    "Pool required",
                    "pool_required",
                    false,
                    Fault::Client
                ),
                (
                    -32012,
                    "Session id too long",
                    "session_id_too_long",
                    false,
                    Fault::Client
                ),
                (-32020, "No worker available", "no_worker", true, Fault::Bus),
                (
                    -32021,
                    "Worker exited",
                    "worker_exited",
                    true,
                    Fault::Worker
                ),
                (
                    -32022,
                    "Worker failed",
                    "worker_failed",
                    true,
                    Fault::Worker
                ),
                (-32023, "Request timed out", "timeout", true, Fault::Worker),
                (
                    -32024,
                    "Reply too large",
                    "reply_too_large",
                    false,
                    Fault::Worker
                ),
                (
                    -32025,
                    "Too many sessions",
                    "too_many_sessions",
                    true,
                    Fault::Bus
                ),
                (-32030, "Shutting down", "shutting_down", true, Fault::Bus),
                (
                    -32040,
                    "No client for session",
                    "no_client",
                    true,
                    Fault::Client
                ),
                (
                    -32041,
                    "Client disconnected",
                    "client_disconnected",
                    true,
                    Fault::Client
                ),
                (
                    -32050,
                    "Unauthenticated",
                    "unauthenticated",
                    false,
                    Fault::Client
                ),
                (-32051, "Rate limited", "rate_limited", true, Fault::Client),
                (
                    -32052,
                    "Quota exceeded",
                    "quota_exceeded",
                    true,
                    Fault::Client
                ),
            ]
        );
    }

    #[test]
    fn reasons_are_unique_and_codes_distinct_outside_invalid_request() {
        let reasons: HashSet<_> = ErrorKind::ALL.iter().map(|k| k.reason()).collect();
        assert_eq!(reasons.len(), ErrorKind::ALL.len());
        let kinds: HashSet<_> = ErrorKind::ALL.iter().collect();
        assert_eq!(kinds.len(), ErrorKind::ALL.len());
        let codes: HashSet<_> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        // Only the three -32600 kinds share a code; `reason` tells them apart.
        assert_eq!(codes.len(), ErrorKind::ALL.len() - 2);
    }

    #[test]
    fn every_reply_is_valid_json_with_documented_fields() {
        let ids: [Option<&[u8]>; 4] = [None, Some(b"7"), Some(b"\"a\\\"b\""), Some(b"1.5e3")];
        for &kind in ErrorKind::ALL {
            for id in ids {
                for detail in [
                    None,
                    Some("plain"),
                    Some("q\"b\\s\n\t\u{1}\u{1f} \u{e9}\u{1F600}"),
                ] {
                    let mut out = b"x\n".to_vec();
                    append_error_reply(&mut out, id, kind, detail);
                    let line = out.strip_prefix(b"x\n").unwrap();
                    assert_eq!(line.iter().filter(|&&c| c == b'\n').count(), 1);
                    let line = line.strip_suffix(b"\n").expect("ends with a newline");
                    let v: Value = serde_json::from_slice(line).unwrap();
                    let want_id: Value =
                        id.map_or(Value::Null, |t| serde_json::from_slice(t).unwrap());
                    let mut data = json!({"reason": kind.reason(), "retryable": kind.retryable()});
                    if let Some(d) = detail {
                        data["detail"] = json!(d);
                    }
                    let want = json!({
                        "jsonrpc": "2.0",
                        "id": want_id,
                        "error": {"code": kind.code(), "message": kind.message(), "data": data},
                    });
                    assert_eq!(v, want);
                }
            }
        }
        let mut out = Vec::new();
        let hint = ErrorHint {
            quota: Some("sessions"),
            retry_after_ms: Some(250),
        };
        append_error_reply_hinted(&mut out, Some(b"3"), ErrorKind::QuotaExceeded, None, hint);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["error"]["data"],
            json!({"reason": "quota_exceeded", "retryable": true, "quota": "sessions", "retry_after_ms": 250})
        );
        let mut out = Vec::new();
        append_error_reply(&mut out, Some(b"1.5e3"), ErrorKind::NoWorker, None);
        assert!(out.starts_with(b"{\"jsonrpc\":\"2.0\",\"id\":1.5e3,"));
    }
}
