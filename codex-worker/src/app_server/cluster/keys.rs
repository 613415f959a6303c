//! Idempotency keys: where a request carries one, and the replies a retry receives.
//!
//! A request's key is its top-level `idempotencyKey` (a string of 1 to [`MAX_KEY`] bytes) or,
//! for `turn/start` without one, `params.clientUserMessageId`, which the Codex TUI sends with
//! every prompt (docs/node-loss.md, "Idempotent retries"). The key is scoped by the request's
//! method and thread as well as by its tenant: a retry is always the same call on the same
//! thread, and a key reused by mistake for another call must not answer it with a stale reply.

use serde::Deserialize;
use serde_json::value::RawValue;

use codex_bus_worker_io::render;

use crate::app_server::errors;

/// Longest key kept; a longer one is not a key (the request runs unkeyed).
pub const MAX_KEY: usize = 256;

/// Longest method and thread id a key is scoped by (Codex's are far shorter); a request with a
/// longer one runs unkeyed, so a record's size stays bounded.
const MAX_SCOPE: usize = 128;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyedRequest<'a> {
    #[serde(borrow, default)]
    idempotency_key: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    #[serde(default)]
    thread_id: Option<String>,
    #[serde(default)]
    client_user_message_id: Option<String>,
}

/// The idempotency key of the request `line` calling `method`, if it carries one, as the store
/// keeps it: `<len>:<method><len>:<threadId><key>` (the thread empty for a call that names none;
/// `initialize` is never keyed). `Err` for an `idempotencyKey` that is not a string of 1 to
/// [`MAX_KEY`] bytes, or on a method or thread id longer than `MAX_SCOPE`: the client asked for
/// protection it would not get, so the request is refused rather than run unkeyed.
pub fn key_of(line: &[u8], method: &str) -> Result<Option<String>, ()> {
    // A session's handshake is its own: a replay would answer it without initializing it.
    if method == "initialize" {
        return Ok(None);
    }
    let Ok(request) = serde_json::from_slice::<KeyedRequest<'_>>(line) else {
        return Ok(None);
    };
    let valid = |key: &String| !key.is_empty() && key.len() <= MAX_KEY;
    let params: Params = request
        .params
        .and_then(|params| serde_json::from_str(params.get()).ok())
        .unwrap_or_default();
    let thread = params.thread_id.unwrap_or_default();
    let scoped = method.len() <= MAX_SCOPE && thread.len() <= MAX_SCOPE;
    let key = match request.idempotency_key {
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(key) if valid(&key) && scoped => key,
            _ => return Err(()),
        },
        // Codex's own field: one it would not accept as a key leaves the request unkeyed.
        None if method == "turn/start" => match params.client_user_message_id {
            Some(key) if valid(&key) => key,
            _ => return Ok(None),
        },
        None => return Ok(None),
    };
    if !scoped {
        return Ok(None);
    }
    // Lengths first, so no method, thread and key can spell another's.
    Ok(Some(format!(
        "{}:{method}{}:{thread}{key}",
        method.len(),
        thread.len()
    )))
}

/// The outcome of a reply line toward the bus: `{"result":…}` or `{"error":…}` as JSON text,
/// with the `id` it answers; `None` for any other line (notifications, server requests).
pub fn outcome_of(line: &[u8]) -> Option<(Vec<u8>, String, bool)> {
    #[derive(Deserialize)]
    struct Reply<'a> {
        #[serde(borrow, default)]
        id: Option<&'a RawValue>,
        #[serde(borrow, default)]
        method: Option<&'a RawValue>,
        #[serde(borrow, default)]
        result: Option<&'a RawValue>,
        #[serde(borrow, default)]
        error: Option<&'a RawValue>,
    }
    let reply: Reply<'_> = serde_json::from_slice(line).ok()?;
    if reply.method.is_some() {
        return None;
    }
    let id = reply.id?.get().as_bytes().to_vec();
    match (reply.result, reply.error) {
        (Some(result), _) => Some((id, format!("{{\"result\":{}}}", result.get()), false)),
        (None, Some(error)) => Some((id, format!("{{\"error\":{}}}", error.get()), true)),
        (None, None) => None,
    }
}

/// Whether an error `outcome` says the request never reached Codex ([`errors::not_run`]): it did
/// not run, so its key is released for the retry. A timeout or a child that died with the request
/// in flight do not say so: the request may have run.
pub fn not_run(outcome: &str) -> bool {
    #[derive(Deserialize)]
    struct Outcome {
        error: Option<Error>,
    }
    #[derive(Deserialize)]
    struct Error {
        data: Option<Data>,
    }
    #[derive(Deserialize)]
    struct Data {
        reason: Option<String>,
    }
    serde_json::from_str::<Outcome>(outcome)
        .ok()
        .and_then(|outcome| outcome.error?.data?.reason)
        .is_some_and(|reason| errors::not_run(&reason))
}

/// The reply line to request `id` of the session whose token is `session`, from a stored
/// `outcome` (`{"result":…}` or `{"error":…}`).
pub fn replay(id: &[u8], outcome: &str, session: &[u8]) -> Vec<u8> {
    #[derive(Deserialize)]
    struct Outcome<'a> {
        #[serde(borrow, default)]
        result: Option<&'a RawValue>,
        #[serde(borrow, default)]
        error: Option<&'a RawValue>,
    }
    let mut line = Vec::with_capacity(outcome.len() + id.len() + session.len() + 40);
    match serde_json::from_str::<Outcome<'_>>(outcome) {
        Ok(Outcome {
            error: Some(error),
            result: None,
        }) => render::error_reply(&mut line, id, Some(session), |out| {
            out.extend_from_slice(error.get().as_bytes());
        }),
        // Only this module writes outcomes, so one that is not an error is a result.
        parsed => {
            let result = parsed.ok().and_then(|outcome| outcome.result);
            render::result(&mut line, id, Some(session), |out| {
                out.extend_from_slice(result.map_or("null", |result| result.get()).as_bytes());
            });
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn the_top_level_key_wins_and_turn_start_falls_back_to_the_client_message_id() {
        let key = |line: &[u8], method: &str| key_of(line, method).unwrap();
        let keyed = br#"{"id":1,"method":"turn/start","idempotencyKey":"k1","params":{"clientUserMessageId":"m1"}}"#;
        assert_eq!(
            key(keyed, "turn/start").as_deref(),
            Some("10:turn/start0:k1")
        );
        let tui = br#"{"id":1,"method":"turn/start","params":{"threadId":"t","clientUserMessageId":"m1"}}"#;
        assert_eq!(
            key(tui, "turn/start").as_deref(),
            Some("10:turn/start1:tm1")
        );
        // One key on another thread, or for another call, is another key.
        let other_thread =
            br#"{"id":2,"method":"turn/start","idempotencyKey":"m1","params":{"threadId":"u"}}"#;
        assert_eq!(
            key(other_thread, "turn/start").as_deref(),
            Some("10:turn/start1:um1")
        );
        let start = br#"{"id":3,"method":"thread/start","idempotencyKey":"m1","params":{}}"#;
        assert_eq!(
            key(start, "thread/start").as_deref(),
            Some("12:thread/start0:m1")
        );
        // Only turn/start's message id is a key; one Codex would not take leaves it unkeyed.
        let other = br#"{"id":1,"method":"thread/resume","params":{"clientUserMessageId":"m1"}}"#;
        assert_eq!(key(other, "thread/resume"), None);
        let long_id = json!({"id":1,"method":"turn/start","params":{"clientUserMessageId":"m".repeat(MAX_KEY + 1)}});
        assert_eq!(key(long_id.to_string().as_bytes(), "turn/start"), None);
        let long_thread = json!({"id":1,"method":"turn/start","params":{"clientUserMessageId":"k","threadId":"t".repeat(MAX_SCOPE + 1)}});
        assert_eq!(key(long_thread.to_string().as_bytes(), "turn/start"), None);
        // A handshake is never keyed.
        let init = br#"{"id":1,"method":"initialize","idempotencyKey":"i","params":{}}"#;
        assert_eq!(key(init, "initialize"), None);
        // Spaces cannot make one thread's key another's.
        let spaced =
            br#"{"id":1,"method":"turn/start","idempotencyKey":"y","params":{"threadId":"T x"}}"#;
        let plain =
            br#"{"id":1,"method":"turn/start","idempotencyKey":"x y","params":{"threadId":"T"}}"#;
        assert_ne!(key(spaced, "turn/start"), key(plain, "turn/start"));
    }

    #[test]
    fn an_idempotency_key_that_is_no_key_is_an_error() {
        for bad in [
            json!(""),
            json!(7),
            json!(["k"]),
            json!("x".repeat(MAX_KEY + 1)),
        ] {
            let line = json!({"id":1,"method":"turn/start","idempotencyKey":bad}).to_string();
            assert_eq!(key_of(line.as_bytes(), "turn/start"), Err(()), "{bad}");
        }
        let long_thread = json!({"id":1,"method":"turn/start","idempotencyKey":"k","params":{"threadId":"t".repeat(MAX_SCOPE + 1)}});
        assert_eq!(
            key_of(long_thread.to_string().as_bytes(), "turn/start"),
            Err(())
        );
        // `null` is JSON-RPC's absent member.
        let null = json!({"id":1,"method":"turn/start","idempotencyKey":null}).to_string();
        assert_eq!(key_of(null.as_bytes(), "turn/start"), Ok(None));
    }

    #[test]
    fn outcomes_are_read_from_replies_and_replayed_with_the_retry_s_id() {
        let reply =
            br#"{"jsonrpc":"2.0","id":"w:7","result":{"turn":{"id":"t1"}},"sessionId":"s"}"#;
        let (id, outcome, is_error) = outcome_of(reply).unwrap();
        assert_eq!((id.as_slice(), is_error), (&br#""w:7""#[..], false));
        let line = replay(b"9", &outcome, br#""other""#);
        let value: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            value,
            json!({"jsonrpc":"2.0","id":9,"result":{"turn":{"id":"t1"}},"sessionId":"other"})
        );
        assert!(outcome_of(br#"{"method":"turn/started","params":{}}"#).is_none());
        assert!(
            outcome_of(br#"{"id":3,"method":"item/commandExecution/requestApproval"}"#).is_none()
        );
    }

    #[test]
    fn only_refusals_before_codex_release_the_key() {
        assert!(not_run(
            r#"{"error":{"code":-32053,"data":{"reason":"worker_draining","retryable":true}}}"#
        ));
        assert!(!not_run(
            r#"{"error":{"code":-32600,"message":"no such thread"}}"#
        ));
        assert!(!not_run(r#"{"result":{}}"#));
    }
}
