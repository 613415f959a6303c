//! One JSON-RPC message per WebSocket text frame, each way, as `codex app-server --listen ws://`
//! frames them (../shared/reference/codex-remote.md, "Transport and framing").
//!
//! Toward the worker a message must be one NDJSON line: raw newlines between its tokens (legal
//! JSON whitespace) become spaces ([`one_line`]); and one that names no session gets the bound
//! one ([`worker_view`]), so the worker sees the session its contract requires. Toward the client, what the bus and the
//! worker add for their own sake is taken out again ([`client_view`]): the `jsonrpc` member
//! while the client's own messages carry none, and the session member of its bound session while
//! the client has named no session itself. That is a scan of each message each way, paid by
//! WebSocket connections only (the router's NDJSON path is unchanged): the queue toward a client holds the same newline-ended lines as for NDJSON,
//! and the WebSocket writer reframes them.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use codex_bus_protocol::{
    append_with_member, append_without_members, is_named, key_bytes, top_level_members, ErrorKind,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, StreamExt};
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use crate::core::client::Client;
use crate::core::outbox::WriteFailed;
use crate::io::connection::{MessageSink, MessageSource};
use crate::metrics::{self, Direction};
use crate::router::{send_error, Router};

/// Close code 1001, "going away": the daemon's drain ended.
const GOING_AWAY: u16 = 1001;

/// Close code 1009, "message too big": a frame or message over the listener's limits.
pub(super) const TOO_BIG: u16 = 1009;

/// Close code 1002: the client broke the WebSocket protocol.
const PROTOCOL_ERROR: u16 = 1002;

/// Close code 1007: a text message that is not UTF-8.
const INVALID_PAYLOAD: u16 = 1007;

/// Close code 1000: the connection ended normally.
const NORMAL: u16 = 1000;

/// What the client's own messages have shown so far, which decides what it is sent back.
#[derive(Default)]
pub(super) struct Seen {
    /// A message of the client carried a top-level `jsonrpc` member.
    jsonrpc: AtomicBool,
    /// A message of the client named a session itself.
    session: AtomicBool,
    /// The close code the reader asks the writer to end with (0: none asked).
    close: AtomicU16,
}

/// What the worker gets of `message` (one line) from a client bound to `bound`: a request or
/// notification that names no session gets `"<session_field>":"<bound>"` as its first member, so
/// the worker sees the session its contract requires (the router then prefixes it with the
/// tenant like any other); a message that names one, an answer to a worker request, and a line
/// that is no JSON object (the router refuses it) pass unchanged. Records in `seen` whether the
/// client sends `jsonrpc` and names sessions itself.
pub(super) fn worker_view<'m>(
    message: &'m [u8],
    seen: &Seen,
    session_field: &str,
    bound: &str,
) -> Cow<'m, [u8]> {
    let Some(members) = top_level_members(message) else {
        return Cow::Borrowed(message);
    };
    let has = |name: &str| members.iter().any(|m| is_named(message, m, name));
    if has("jsonrpc") {
        seen.jsonrpc.store(true, Ordering::Relaxed);
    }
    if has(session_field) {
        seen.session.store(true, Ordering::Relaxed);
        return Cow::Borrowed(message);
    }
    let answer = !has("method") && has("id") && (has("result") || has("error"));
    if answer {
        return Cow::Borrowed(message);
    }
    let mut named = Vec::with_capacity(message.len() + session_field.len() + bound.len() + 8);
    match append_with_member(&mut named, message, session_field, bound) {
        Some(()) => Cow::Owned(named),
        None => Cow::Borrowed(message),
    }
}

/// `message` as one line: each raw `\n` or `\r` outside a string (where JSON allows them only
/// as whitespace) becomes a space; nothing else changes. Borrowed when it holds neither. A raw
/// newline inside a string is invalid JSON and is left for the router to refuse as such.
pub(super) fn one_line(message: &[u8]) -> Cow<'_, [u8]> {
    if !message.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Cow::Borrowed(message);
    }
    let mut out = message.to_vec();
    let (mut in_string, mut escaped) = (false, false);
    for byte in &mut out {
        match (*byte, in_string, escaped) {
            (_, true, true) => escaped = false,
            (b'\\', true, false) => escaped = true,
            (b'"', _, false) => in_string = !in_string,
            (b'\n' | b'\r', false, _) => *byte = b' ',
            _ => {}
        }
    }
    Cow::Owned(out)
}

/// What a client bound to `bound` is sent of `line` (a message of the queue toward it, without
/// its newline): without the top-level `jsonrpc` member unless `seen` says its own messages
/// carry one, and without the `session_field` member naming `bound` unless it named a session
/// itself, so it gets what `codex app-server` would send it. Borrowed when nothing is removed.
pub(super) fn client_view<'l>(
    line: &'l [u8],
    seen: &Seen,
    session_field: &str,
    bound: &str,
) -> Cow<'l, [u8]> {
    let keep_jsonrpc = seen.jsonrpc.load(Ordering::Relaxed);
    let keep_session = seen.session.load(Ordering::Relaxed);
    if keep_jsonrpc && keep_session {
        return Cow::Borrowed(line);
    }
    let Some(members) = top_level_members(line) else {
        return Cow::Borrowed(line);
    };
    let drop = |member: &codex_bus_protocol::Member| {
        (!keep_jsonrpc && is_named(line, member, "jsonrpc"))
            || (!keep_session
                && is_named(line, member, session_field)
                && key_bytes(&line[member.value.clone()]).as_deref() == Some(bound.as_bytes()))
    };
    if !members.iter().any(drop) {
        return Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len());
    append_without_members(&mut out, line, &members, drop);
    Cow::Owned(out)
}

/// The reading half of a WebSocket connection.
pub(super) struct WsSource {
    pub stream: SplitStream<WebSocket>,
    pub seen: Arc<Seen>,
    /// `routing.session_id_field` (a top-level name).
    pub session_field: Arc<str>,
    /// The session the connection is bound to.
    pub bound: Box<str>,
}

impl MessageSource for WsSource {
    async fn pump(&mut self, router: &Router, client: &Arc<Client>) {
        let messages = metrics::get().messages(Direction::FromClient);
        let bytes = metrics::get().bytes(Direction::FromClient);
        loop {
            // Backpressure toward a client that does not read its replies: stop reading it.
            client.out.wait_for_space().await;
            let Some(next) = self.stream.next().await else {
                return;
            };
            match next {
                Ok(Message::Text(text)) => {
                    let read_at = Instant::now();
                    messages.increment(1);
                    bytes.increment(text.len() as u64);
                    let line = one_line(text.as_bytes());
                    let line = worker_view(&line, &self.seen, &self.session_field, &self.bound);
                    router.client_message(client, &line, read_at).await;
                }
                Ok(Message::Binary(_)) => {
                    // Codex drops them with a warning; a reply tells the client why.
                    let detail = "binary frames are not accepted";
                    send_error(client, None, ErrorKind::InvalidRequest, Some(detail));
                }
                // tungstenite has queued the pong; the next read or write sends it.
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(Message::Close(_)) => return,
                Err(error) => {
                    if let Some(code) = failed_read_code(error) {
                        self.seen.close.store(code, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    }
}

/// The close code a failed read ends the connection with (RFC 6455, 7.4.1), `None` when the
/// connection itself failed: 1009 over the listener's frame or message limit, 1007 for a text
/// message that is not UTF-8, 1002 for any other breach of the protocol (an unmasked frame,
/// reserved bits, a stray continuation, a control frame over 125 bytes), so a client is never
/// told its broken frame ended the connection normally.
fn failed_read_code(error: axum::Error) -> Option<u16> {
    let inner = error.into_inner();
    let error = inner.downcast_ref::<tungstenite::Error>()?;
    tracing::debug!(%error, "websocket read failed");
    match error {
        tungstenite::Error::Capacity(_) => Some(TOO_BIG),
        tungstenite::Error::Utf8(_) => Some(INVALID_PAYLOAD),
        tungstenite::Error::Protocol(_) => Some(PROTOCOL_ERROR),
        _ => None,
    }
}

/// The writing half of a WebSocket connection.
pub(super) struct WsSink {
    pub sink: SplitSink<WebSocket, Message>,
    pub seen: Arc<Seen>,
    /// `routing.session_id_field` (a top-level name).
    pub session_field: Arc<str>,
    /// The session the connection is bound to.
    pub bound: Box<str>,
    /// The daemon's drain: once it has begun, the end of the queue is the end of the drain.
    pub drain: CancellationToken,
}

impl MessageSink for WsSink {
    async fn drain(self, client: &Client, stall: Duration) -> Result<(), WriteFailed> {
        let WsSink {
            sink,
            seen,
            session_field,
            bound,
            drain,
        } = self;
        let written = metrics::get().bytes(Direction::ToClient);
        let mut frames = Frames {
            sink,
            seen: &seen,
            session_field: &session_field,
            bound: &bound,
        };
        let result = client
            .out
            .drain_into(&mut frames, Some(stall), |n| written.increment(n as u64))
            .await;
        if result.is_ok() {
            let code = match seen.close.load(Ordering::Relaxed) {
                0 if drain.is_cancelled() => GOING_AWAY,
                0 => NORMAL,
                code => code,
            };
            let reason = match code {
                GOING_AWAY => "going away",
                TOO_BIG => "message too big",
                PROTOCOL_ERROR => "protocol error",
                INVALID_PAYLOAD => "text is not UTF-8",
                _ => "",
            };
            let close = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            // The client may have closed first; then there is no one to tell.
            let _ = frames.sink.send(close).await;
        }
        result
    }
}

/// The queue's lines written as text frames, one per line, each as [`client_view`] shows it.
struct Frames<'a> {
    sink: SplitSink<WebSocket, Message>,
    seen: &'a Seen,
    session_field: &'a str,
    bound: &'a str,
}

impl Frames<'_> {
    /// One text frame for `line`.
    fn frame(&self, line: &[u8]) -> Message {
        // Every line in the queue is UTF-8: the router parsed it, or wrote it. A line that lost
        // members is already a buffer of its own: it becomes the frame without another copy.
        let text = match client_view(line, self.seen, self.session_field, self.bound) {
            Cow::Borrowed(line) => String::from_utf8_lossy(line).into_owned(),
            Cow::Owned(view) => String::from_utf8(view)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        };
        Message::Text(text.into())
    }
}

impl AsyncWrite for Frames<'_> {
    /// Sends every whole line of `bytes` as a frame, as many as the sink takes now; a batch from
    /// the queue holds whole lines only, so a last piece without its newline is a whole line too.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut taken = 0;
        while taken < bytes.len() {
            match Pin::new(&mut this.sink).poll_ready(cx) {
                Poll::Pending if taken > 0 => break,
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => result.map_err(io::Error::other)?,
            }
            let rest = &bytes[taken..];
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let frame = this.frame(&rest[..end]);
            Pin::new(&mut this.sink)
                .start_send(frame)
                .map_err(io::Error::other)?;
            taken += (end + 1).min(rest.len());
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.sink).poll_flush(cx)).map_err(io::Error::other)?;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.sink).poll_close(cx)).map_err(io::Error::other)?;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_between_tokens_become_spaces_and_nothing_else_changes() {
        let text = "{\n  \"id\": 1,\r\n  \"params\": {\"t\": \"a\\\"\\n\"}\n}";
        assert_eq!(
            one_line(text.as_bytes()),
            "{   \"id\": 1,    \"params\": {\"t\": \"a\\\"\\n\"} }".as_bytes()
        );
        assert!(matches!(one_line(b"{\"id\":1}"), Cow::Borrowed(_)));
        // Inside a string a raw newline is invalid JSON; it stays so.
        assert_eq!(one_line(b"{\"a\":\"x\ny\"}\n"), &b"{\"a\":\"x\ny\"} "[..]);
    }

    #[test]
    fn the_worker_gets_the_bound_session_on_what_names_none() {
        let seen = Seen::default();
        let view = |line: &str| {
            String::from_utf8(worker_view(line.as_bytes(), &seen, "sessionId", "u\"1").into_owned())
                .unwrap()
        };
        assert_eq!(
            view(r#"{"id":1,"method":"m"}"#),
            r#"{"sessionId":"u\"1","id":1,"method":"m"}"#
        );
        assert_eq!(
            view(r#"{"method":"n"}"#),
            r#"{"sessionId":"u\"1","method":"n"}"#
        );
        // An answer to a worker request goes back by its id; a bad line is the router's to refuse.
        for same in [
            r#"{"id":0,"result":{}}"#,
            r#"{"id":0,"error":{}}"#,
            "[1]",
            "{",
        ] {
            assert_eq!(view(same), same);
        }
        assert!(!seen.session.load(Ordering::Relaxed));
        assert_eq!(
            view(r#"{"method":"n","sessionId":"s"}"#),
            r#"{"method":"n","sessionId":"s"}"#
        );
        assert!(seen.session.load(Ordering::Relaxed));
        // An escaped spelling names the session too: the router would see two.
        let escaped = r#"{"method":"n","session\u0049d":"s"}"#;
        assert_eq!(view(escaped), escaped);
    }

    #[test]
    fn the_client_gets_back_only_what_it_would_from_codex() {
        let seen = Seen::default();
        let view = |line: &str, seen: &Seen| {
            String::from_utf8(
                client_view(line.as_bytes(), seen, "sessionId", "user:a").into_owned(),
            )
            .unwrap()
        };
        let reply = r#"{"jsonrpc":"2.0","id":1,"result":{"sessionId":"T"},"sessionId":"user:a"}"#;
        assert_eq!(view(reply, &seen), r#"{"id":1,"result":{"sessionId":"T"}}"#);
        // Another session's member is the client's business: it stays.
        let other = r#"{"method":"n","sessionId":"other"}"#;
        assert_eq!(view(other, &seen), other);
        worker_view(
            br#"{"jsonrpc":"2.0","id":2,"method":"m"}"#,
            &seen,
            "sessionId",
            "user:a",
        );
        assert_eq!(
            view(reply, &seen),
            r#"{"jsonrpc":"2.0","id":1,"result":{"sessionId":"T"}}"#
        );
        worker_view(
            br#"{"id":3,"method":"m","sessionId":"user:a"}"#,
            &seen,
            "sessionId",
            "user:a",
        );
        assert_eq!(view(reply, &seen), reply);
        assert_eq!(view("not json", &Seen::default()), "not json");
    }
}
