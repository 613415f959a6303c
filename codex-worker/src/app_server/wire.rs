//! The routing fields of app-server messages, and splicing lines between the bus and a child.
//!
//! Payloads stay opaque: only `id`, `method`, `params.threadId`, `params.thread.*`,
//! `params.turn.id`, `params.requestId` and the `result` fields that create threads or turns are
//! read (the pinned protocol changes quickly; everything else passes through byte for byte).

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Byte range of a token borrowed from `line` (both come from the same parse).
pub fn span_of(line: &[u8], token: &RawValue) -> Range<usize> {
    let start = token.get().as_ptr() as usize - line.as_ptr() as usize;
    start..start + token.get().len()
}

/// The routing fields of a message's `params`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParamsRefs<'a> {
    /// `params.threadId`, present on nearly every thread-scoped message.
    #[serde(borrow, default)]
    pub thread_id: Option<Cow<'a, str>>,
    /// `params.thread`, the thread object of `thread/started`.
    #[serde(borrow, default)]
    pub thread: Option<ThreadRef<'a>>,
    /// `params.turn`, the turn object of `turn/started` and `turn/completed`.
    #[serde(borrow, default)]
    pub turn: Option<TurnRef<'a>>,
    /// `params.requestId` of `serverRequest/resolved`.
    #[serde(borrow, default)]
    pub request_id: Option<&'a RawValue>,
}

impl ParamsRefs<'_> {
    /// The thread a message concerns: `params.threadId`, else `params.thread.id`.
    pub fn thread(&self) -> Option<&str> {
        self.thread_id
            .as_deref()
            .or_else(|| self.thread.as_ref().map(|thread| thread.id.as_ref()))
    }
}

/// The parts of a Thread object the worker needs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadRef<'a> {
    /// The thread id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// Set when the thread was forked from another.
    #[serde(borrow, default)]
    pub forked_from_id: Option<Cow<'a, str>>,
    /// Set for subagent threads.
    #[serde(borrow, default)]
    pub parent_thread_id: Option<Cow<'a, str>>,
    /// Ephemeral threads have no rollout, so they cannot survive a child restart.
    #[serde(default)]
    pub ephemeral: bool,
}

/// The parts of a Turn object the worker needs.
#[derive(Debug, Deserialize)]
pub struct TurnRef<'a> {
    /// The turn id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// `inProgress`, `completed`, `interrupted` or `failed`.
    #[serde(borrow, default)]
    pub status: Option<Cow<'a, str>>,
}

/// The routing fields of a successful `result`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultRefs<'a> {
    /// `result.thread` of `thread/start`, `thread/resume` and `thread/fork`.
    #[serde(borrow, default)]
    pub thread: Option<ThreadRef<'a>>,
    /// `result.turn` of `turn/start` and `review/start`.
    #[serde(borrow, default)]
    pub turn: Option<TurnRef<'a>>,
    /// `result.reviewThreadId` of a detached `review/start`.
    #[serde(borrow, default)]
    pub review_thread_id: Option<Cow<'a, str>>,
}

/// Reads the routing fields of `params`; anything unreadable counts as absent.
pub fn params_refs(params: Option<&RawValue>) -> ParamsRefs<'_> {
    params
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default()
}

/// Reads the routing fields of a `result`; anything unreadable counts as absent.
pub fn result_refs(result: &RawValue) -> ResultRefs<'_> {
    serde_json::from_str(result.get()).unwrap_or_default()
}

/// Appends `line` (a JSON object) for the bus: `"jsonrpc":"2.0"` first, the token at `id`
/// replaced when given, every other member verbatim, `"sessionId"` last, then `\n`.
pub fn to_bus(out: &mut Vec<u8>, line: &[u8], id: Option<(Range<usize>, &[u8])>, session: &[u8]) {
    let Some(open) = line.iter().position(|&byte| byte == b'{') else {
        return;
    };
    let close = line
        .iter()
        .rposition(|&byte| byte == b'}')
        .unwrap_or(line.len());
    let body = &line[open + 1..close.max(open + 1)];
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\"");
    if !body.iter().all(u8::is_ascii_whitespace) {
        out.push(b',');
        match id {
            Some((span, token)) if span.start > open && span.end <= close => {
                out.extend_from_slice(&line[open + 1..span.start]);
                out.extend_from_slice(token);
                out.extend_from_slice(&line[span.end..close]);
            }
            _ => out.extend_from_slice(body),
        }
    }
    out.extend_from_slice(b",\"sessionId\":");
    out.extend_from_slice(session);
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct WithId<'a> {
        #[serde(borrow)]
        id: &'a RawValue,
    }

    #[test]
    fn to_bus_replaces_the_id_and_adds_jsonrpc_and_session() {
        let line = br#"{"id":17,"result":{"x":1.50}}"#;
        let parsed: WithId<'_> = serde_json::from_slice(line).unwrap();
        let span = span_of(line, parsed.id);
        assert_eq!(&line[span.clone()], b"17");
        let mut out = Vec::new();
        to_bus(&mut out, line, Some((span, b"\"a\"")), b"\"s\"");
        assert_eq!(
            out,
            b"{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{\"x\":1.50},\"sessionId\":\"s\"}\n"
        );
    }

    #[test]
    fn to_bus_keeps_notifications_verbatim() {
        let mut out = Vec::new();
        to_bus(
            &mut out,
            br#"{"method":"m","params":{},"emittedAtMs":5}"#,
            None,
            b"7",
        );
        assert_eq!(
            out,
            b"{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":{},\"emittedAtMs\":5,\"sessionId\":7}\n"
        );
    }

    #[test]
    fn routing_fields_come_from_thread_id_or_thread_object() {
        let raw: &RawValue =
            serde_json::from_str(r#"{"threadId":"t1","turn":{"id":"u","status":"failed"}}"#)
                .unwrap();
        let refs = params_refs(Some(raw));
        assert_eq!(refs.thread(), Some("t1"));
        assert_eq!(refs.turn.unwrap().status.as_deref(), Some("failed"));
        let raw: &RawValue = serde_json::from_str(
            r#"{"thread":{"id":"t2","parentThreadId":"t1","ephemeral":true,"turns":[]}}"#,
        )
        .unwrap();
        let refs = params_refs(Some(raw));
        assert_eq!(refs.thread(), Some("t2"));
        let thread = refs.thread.unwrap();
        assert_eq!(thread.parent_thread_id.as_deref(), Some("t1"));
        assert!(thread.ephemeral);
        assert!(params_refs(None).thread().is_none());
    }
}
