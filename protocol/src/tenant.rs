//! Tenant namespaces in messages: what the bus adds to a client's message on its way to a worker
//! when connections are authenticated, and removes from a worker's message on its way back.
//!
//! A worker sees the session id `"<tenant>:<the client's id>"`, which cannot collide across
//! tenants because a tenant name holds no `:`; and a top-level `"tenant"` member naming the
//! sender's tenant. The client sees its own session id again in everything sent back. Only the
//! bytes named here change: every other byte passes verbatim.

use crate::envelope::{Envelope, Span};

/// The separator between the tenant and the client's session id.
pub const TENANT_SEPARATOR: u8 = b':';

/// The method a connection presents its credential with; with authentication the bus answers it
/// and a worker never sees it.
pub const AUTHENTICATE_METHOD: &str = "bus/authenticate";

/// Appends `line` (a JSON object whose envelope is `envelope`) to `out` with a
/// `"tenant":"<tenant>"` member first and, when the envelope has a session (a JSON string),
/// `<tenant>:` at the start of that string's content; no newline. Returns the envelope of what was
/// appended: the same fields, their spans moved by the bytes inserted before them (relative to the
/// start of what was appended), so the copy needs no second parse.
///
/// `tenant` must be a valid tenant name (ASCII letters, digits, `.`, `_`, `-`: nothing to escape).
/// Returns `None`, appending nothing, if `line` holds no object or the session is not a string.
pub fn append_namespaced(
    out: &mut Vec<u8>,
    line: &[u8],
    tenant: &str,
    envelope: &Envelope,
) -> Option<Envelope> {
    let open = line.iter().position(|&c| c == b'{')?;
    let session = envelope.session.clone();
    if let Some(span) = &session {
        if line.get(span.start) != Some(&b'"') || span.start <= open {
            return None;
        }
    }
    let empty = line[open + 1..]
        .iter()
        .find(|c| !c.is_ascii_whitespace())
        .is_some_and(|&c| c == b'}');
    let base = out.len();
    out.reserve(line.len() + 2 * tenant.len() + 16);
    out.extend_from_slice(&line[..=open]);
    out.extend_from_slice(b"\"tenant\":\"");
    out.extend_from_slice(tenant.as_bytes());
    out.push(b'"');
    if !empty {
        out.push(b',');
    }
    // Bytes inserted after the `{` (the member), and after the session's opening quote (the prefix).
    let member = out.len() - base - (open + 1);
    let prefix = tenant.len() + 1;
    match &session {
        Some(span) => {
            out.extend_from_slice(&line[open + 1..=span.start]);
            out.extend_from_slice(tenant.as_bytes());
            out.push(TENANT_SEPARATOR);
            out.extend_from_slice(&line[span.start + 1..]);
        }
        None => out.extend_from_slice(&line[open + 1..]),
    }
    let quote = session.as_ref().map(|span| span.start + 1);
    let moved = |at: usize| {
        let mut to = at;
        if at > open {
            to += member;
        }
        if quote.is_some_and(|q| at >= q) {
            to += prefix;
        }
        to
    };
    let shift = |span: &Option<Span>| span.as_ref().map(|s| moved(s.start)..moved(s.end));
    Some(Envelope {
        id: shift(&envelope.id),
        method: shift(&envelope.method),
        session: shift(&envelope.session),
        pool: shift(&envelope.pool),
        has_tenant: true,
        ..envelope.clone()
    })
}

/// The bytes of `prefix` (`<tenant>:`) at the start of the string token `session` in `line`, to
/// be cut on the way to the client; `None` if the token does not start with them verbatim (a
/// worker must echo the session id it was given, and JSON encoders leave these bytes unescaped).
pub fn session_prefix(line: &[u8], session: Span, prefix: &[u8]) -> Option<Span> {
    let start = session.start + 1;
    let token = line.get(session.clone())?;
    (token.first() == Some(&b'"') && token[1..].starts_with(prefix))
        .then(|| start..start + prefix.len())
}

/// Appends `line` to `out` with the bytes at `cut` removed, then `\n`.
pub fn append_without(out: &mut Vec<u8>, line: &[u8], cut: Span) {
    out.reserve(line.len() + 1 - cut.len());
    out.extend_from_slice(&line[..cut.start]);
    out.extend_from_slice(&line[cut.end..]);
    out.push(b'\n');
}

/// Appends `line` to `out` with `id` replaced by `token` and the bytes at `cut` removed (spans
/// must not overlap), then `\n`: a worker's reply or request on its way to a client.
pub fn append_with_token_without(
    out: &mut Vec<u8>,
    line: &[u8],
    id: Span,
    token: &[u8],
    cut: Span,
) {
    out.reserve(line.len() + token.len() + 1);
    let (first, second) = if id.start < cut.start {
        ((id, token), (cut, &b""[..]))
    } else {
        ((cut, &b""[..]), (id, token))
    };
    out.extend_from_slice(&line[..first.0.start]);
    out.extend_from_slice(first.1);
    out.extend_from_slice(&line[first.0.end..second.0.start]);
    out.extend_from_slice(second.1);
    out.extend_from_slice(&line[second.0.end..]);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, Message, SessionPath};

    fn envelope(line: &str, path: &str) -> crate::Envelope {
        match parse(line.as_bytes(), &SessionPath::parse(path).unwrap()) {
            Ok(Message::Object(e)) => e,
            _ => panic!("not an object: {line}"),
        }
    }

    /// The namespaced line, after checking that the envelope returned is the one a parse of it
    /// gives.
    fn namespaced(line: &str, path: &str, tenant: &str) -> Option<String> {
        let mut out = b"old".to_vec();
        let moved = append_namespaced(&mut out, line.as_bytes(), tenant, &envelope(line, path))?;
        let out = String::from_utf8(out.split_off(3)).unwrap();
        assert_eq!(moved, envelope(&out, path), "{out}");
        Some(out)
    }

    #[test]
    fn the_worker_sees_the_tenant_and_a_prefixed_session() {
        assert_eq!(
            namespaced(
                r#" {"id":1,"method":"m","sessionId":"s\u0031"}"#,
                "sessionId",
                "a"
            )
            .unwrap(),
            r#" {"tenant":"a","id":1,"method":"m","sessionId":"a:s\u0031"}"#
        );
        assert_eq!(
            namespaced(
                r#"{"method":"m","params":{"sessionId":"x"}}"#,
                "params.sessionId",
                "t-1"
            )
            .unwrap(),
            r#"{"tenant":"t-1","method":"m","params":{"sessionId":"t-1:x"}}"#
        );
        assert_eq!(
            namespaced(r#"{"id":1,"method":"m"}"#, "sessionId", "a").unwrap(),
            r#"{"tenant":"a","id":1,"method":"m"}"#
        );
        assert_eq!(
            namespaced(r#"{ }"#, "sessionId", "a").unwrap(),
            r#"{"tenant":"a" }"#
        );
        assert_eq!(
            namespaced(r#"{"sessionId":7}"#, "sessionId", "a"),
            None,
            "numbers are refused"
        );
        for line in [
            r#" {"id":1,"method":"m","sessionId":"s\u0031"}"#,
            r#"{"method":"m","params":{"sessionId":"x"}}"#,
        ] {
            let out = namespaced(line, "params.sessionId", "a").unwrap();
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["tenant"], "a");
        }
    }

    #[test]
    fn the_client_gets_its_own_session_id_back() {
        let line = br#"{"id":12,"result":{},"sessionId":"a:s1"}"#;
        let e = envelope(std::str::from_utf8(line).unwrap(), "sessionId");
        let session = e.session.unwrap();
        assert_eq!(session_prefix(line, session.clone(), b"b:"), None);
        let cut = session_prefix(line, session, b"a:").unwrap();
        let mut out = Vec::new();
        append_without(&mut out, line, cut.clone());
        assert_eq!(out, b"{\"id\":12,\"result\":{},\"sessionId\":\"s1\"}\n");
        out.clear();
        append_with_token_without(&mut out, line, e.id.unwrap(), b"\"x\"", cut);
        assert_eq!(out, b"{\"id\":\"x\",\"result\":{},\"sessionId\":\"s1\"}\n");
        let line = br#"{"sessionId":"a:s1","id":12}"#;
        let e = envelope(std::str::from_utf8(line).unwrap(), "sessionId");
        let cut = session_prefix(line, e.session.unwrap(), b"a:").unwrap();
        out.clear();
        append_with_token_without(&mut out, line, e.id.unwrap(), b"7", cut);
        assert_eq!(out, b"{\"sessionId\":\"s1\",\"id\":7}\n");
    }
}
