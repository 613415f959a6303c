//! Writers of outgoing JSON-RPC lines, spliced from raw tokens so nothing is re-serialised.

use std::io::Write;

/// The exact reply to a line that is not JSON (worker contract); it can carry no `sessionId` since
/// none was readable.
pub const PARSE_ERROR: &[u8] =
    b"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"Parse error\"}}\n";

/// The error object of the reply to valid JSON that is not a request, notification or response
/// (worker contract): JSON-RPC's own code and message, no `data`.
const INVALID_REQUEST: &[u8] = b"{\"code\":-32600,\"message\":\"Invalid Request\"}";

/// Appends a success response; `body` writes the result value.
pub fn result(
    out: &mut Vec<u8>,
    id: &[u8],
    session: Option<&[u8]>,
    body: impl FnOnce(&mut Vec<u8>),
) {
    response(out, id, "result", session, body);
}

/// Appends an error response; `object` writes the `error` object.
pub fn error_reply(
    out: &mut Vec<u8>,
    id: &[u8],
    session: Option<&[u8]>,
    object: impl FnOnce(&mut Vec<u8>),
) {
    response(out, id, "error", session, object);
}

/// Appends an error response `{"code":code,"message":message}`, with `"data":data` (a string)
/// when given.
pub fn error(
    out: &mut Vec<u8>,
    id: &[u8],
    session: Option<&[u8]>,
    code: i32,
    message: &str,
    data: Option<&str>,
) {
    error_reply(out, id, session, |out| {
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "{{\"code\":{code},\"message\":{}",
            json_string(message)
        );
        if let Some(data) = data {
            let _ = write!(out, ",\"data\":{}", json_string(data));
        }
        out.push(b'}');
    });
}

/// Appends the `-32600 Invalid Request` reply to a line that is valid JSON but no JSON-RPC
/// message; `id` and `session` are the line's own, when they could be read (`null` otherwise).
pub fn invalid_request(out: &mut Vec<u8>, id: &[u8], session: Option<&[u8]>) {
    error_reply(out, id, session, |out| {
        out.extend_from_slice(INVALID_REQUEST);
    });
}

/// Appends a worker-initiated request with an integer id.
pub fn request(
    out: &mut Vec<u8>,
    id: u64,
    method: &str,
    session: Option<&[u8]>,
    params: impl FnOnce(&mut Vec<u8>),
) {
    let _ = write!(
        out,
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"{method}\",\"params\":"
    );
    params(out);
    end(out, session);
}

/// Appends a notification.
pub fn notification(
    out: &mut Vec<u8>,
    method: &str,
    session: Option<&[u8]>,
    params: impl FnOnce(&mut Vec<u8>),
) {
    let _ = write!(
        out,
        "{{\"jsonrpc\":\"2.0\",\"method\":\"{method}\",\"params\":"
    );
    params(out);
    end(out, session);
}

/// Appends a notification stamped with `emittedAtMs`, as Codex sends them.
pub fn timed_notification(
    out: &mut Vec<u8>,
    method: &str,
    session: Option<&[u8]>,
    at_ms: u64,
    params: &[u8],
) {
    let _ = write!(
        out,
        "{{\"jsonrpc\":\"2.0\",\"method\":\"{method}\",\"params\":"
    );
    out.extend_from_slice(params);
    let _ = write!(out, ",\"emittedAtMs\":{at_ms}");
    end(out, session);
}

/// Quotes free text as a JSON string: the returned value's `Display` form is the quoted, escaped
/// token, ready to splice into a line.
pub fn json_string(text: &str) -> serde_json::Value {
    serde_json::Value::from(text)
}

/// Appends a response whose `member` (`result` or `error`) `body` writes.
fn response(
    out: &mut Vec<u8>,
    id: &[u8],
    member: &str,
    session: Option<&[u8]>,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let _ = write!(out, "{{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id);
    let _ = write!(out, ",\"{member}\":");
    body(out);
    end(out, session);
}

/// Closes a line, adding `sessionId` last because the bus routes by it.
fn end(out: &mut Vec<u8>, session: Option<&[u8]>) {
    if let Some(session) = session {
        out.extend_from_slice(b",\"sessionId\":");
        out.extend_from_slice(session);
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: Vec<u8>) -> String {
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn result_with_and_without_session() {
        let mut out = Vec::new();
        result(&mut out, b"1.5e3", Some(b"\"s\""), |out| {
            out.extend_from_slice(b"{}")
        });
        result(&mut out, b"\"x\"", None, |out| out.extend_from_slice(b"7"));
        assert_eq!(
            text(out),
            "{\"jsonrpc\":\"2.0\",\"id\":1.5e3,\"result\":{},\"sessionId\":\"s\"}\n\
             {\"jsonrpc\":\"2.0\",\"id\":\"x\",\"result\":7}\n"
        );
    }

    #[test]
    fn error_with_data() {
        let mut out = Vec::new();
        error(
            &mut out,
            b"null",
            None,
            -32602,
            "Invalid params",
            Some("need \"ms\""),
        );
        assert_eq!(
            text(out),
            "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32602,\"message\":\"Invalid params\",\"data\":\"need \\\"ms\\\"\"}}\n"
        );
    }

    #[test]
    fn request_and_notification() {
        let mut out = Vec::new();
        request(&mut out, 4, "m/a", Some(b"9"), |out| {
            out.extend_from_slice(b"[]")
        });
        notification(&mut out, "m/e", None, |out| out.extend_from_slice(b"{}"));
        timed_notification(&mut out, "m/t", Some(b"\"s\""), 5, b"{}");
        assert_eq!(
            text(out),
            "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"m/a\",\"params\":[],\"sessionId\":9}\n\
             {\"jsonrpc\":\"2.0\",\"method\":\"m/e\",\"params\":{}}\n\
             {\"jsonrpc\":\"2.0\",\"method\":\"m/t\",\"params\":{},\"emittedAtMs\":5,\"sessionId\":\"s\"}\n"
        );
    }

    #[test]
    fn every_line_is_valid_json() {
        let mut out = Vec::new();
        invalid_request(&mut out, b"1", Some(b"\"s\""));
        out.extend_from_slice(PARSE_ERROR);
        for line in text(out).lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }
}
