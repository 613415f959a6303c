//! Classification of one input line, borrowing every token so it can be echoed byte for byte.

use std::borrow::Cow;

use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// What one input line turned out to be.
#[derive(Debug)]
pub enum Message<'a> {
    /// A request (with `id`) or a notification (without).
    Call(Call<'a>),
    /// The client's answer to a request the worker sent.
    Response(Response<'a>),
    /// Valid JSON that is not a JSON-RPC message.
    Invalid {
        /// The `id` member, when there was one to answer to.
        id: Option<&'a RawValue>,
        /// The `sessionId` member, echoed so the bus can route the error.
        session: Option<&'a RawValue>,
    },
    /// Not JSON at all.
    Malformed(serde_json::Error),
}

/// A request or notification.
#[derive(Debug)]
pub struct Call<'a> {
    /// `None` for a notification.
    pub id: Option<&'a RawValue>,
    /// The method as its JSON string token, echoed without re-escaping.
    pub method: &'a RawValue,
    /// The method decoded, for dispatch.
    pub name: Cow<'a, str>,
    /// `params`, absent or `null` alike.
    pub params: Option<&'a RawValue>,
    /// `sessionId`, when the input had one.
    pub session: Option<&'a RawValue>,
    /// `tenant`, set by the bus when `auth` is configured (docs/worker-contract.md, "Tenants").
    pub tenant: Option<&'a RawValue>,
}

/// A client response to a worker-initiated request.
#[derive(Debug)]
pub struct Response<'a> {
    /// The id the worker gave its request.
    pub id: &'a RawValue,
    /// `result`, or `error` when there is no result.
    pub outcome: &'a RawValue,
    /// Whether `outcome` is the `error` member.
    pub is_error: bool,
    /// `sessionId`, when the answer carries one.
    pub session: Option<&'a RawValue>,
    /// `tenant`, set by the bus when `auth` is configured.
    pub tenant: Option<&'a RawValue>,
}

/// The tenant of a message that carries no `tenant` member: without `auth` the bus has one
/// tenant and names none (docs/worker-contract.md, "Tenants").
pub const DEFAULT_TENANT: &str = "default";

/// The tenant a `tenant` member names: its string, or [`DEFAULT_TENANT`] when the member is
/// absent or not a string (the bus only ever sends a string of `[A-Za-z0-9._-]`).
pub fn tenant_name(tenant: Option<&RawValue>) -> Cow<'_, str> {
    tenant
        .and_then(string_token)
        .unwrap_or(Cow::Borrowed(DEFAULT_TENANT))
}

/// The members the worker looks at; the rest are skipped unparsed. A member given twice keeps its
/// last value, as the bus reads it (docs/protocol.md, "Duplicate members"), so a request whose
/// `method` or `params` is repeated still has its id and gets its one reply.
#[derive(Default)]
struct Envelope<'a> {
    id: Option<&'a RawValue>,
    method: Option<&'a RawValue>,
    params: Option<&'a RawValue>,
    session: Option<&'a RawValue>,
    tenant: Option<&'a RawValue>,
    result: Option<&'a RawValue>,
    error: Option<&'a RawValue>,
}

/// A member name of [`Envelope`]; escaped spellings decode to the same field.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Field {
    Id,
    Method,
    Params,
    SessionId,
    Tenant,
    Result,
    Error,
    #[serde(other)]
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Envelope<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        let mut envelope = Envelope::default();
        while let Some(field) = map.next_key::<Field>()? {
            // An explicit `null` is kept as `Some`: `"id": null` still makes a request. Only
            // `params: null` counts as absent, as a call without params.
            let slot = match field {
                Field::Id => &mut envelope.id,
                Field::Method => &mut envelope.method,
                Field::SessionId => &mut envelope.session,
                Field::Tenant => &mut envelope.tenant,
                Field::Result => &mut envelope.result,
                Field::Error => &mut envelope.error,
                Field::Params => {
                    let raw: &RawValue = map.next_value()?;
                    envelope.params = (raw.get() != "null").then_some(raw);
                    continue;
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(envelope)
    }
}

/// Classifies one line (without its line ending).
pub fn classify(line: &[u8]) -> Message<'_> {
    let envelope = match serde_json::from_slice::<Envelope<'_>>(line) {
        Ok(envelope) => envelope,
        Err(err) => {
            return match serde_json::from_slice::<IgnoredAny>(line) {
                Ok(_) => invalid(None, None),
                Err(_) => Message::Malformed(err),
            };
        }
    };
    match envelope {
        Envelope {
            method: Some(method),
            id,
            params,
            session,
            tenant,
            ..
        } => match string_token(method) {
            Some(name) => Message::Call(Call {
                id,
                method,
                name,
                params,
                session,
                tenant,
            }),
            None => invalid(id, session),
        },
        Envelope {
            id: Some(id),
            result: Some(outcome),
            session,
            tenant,
            ..
        } => Message::Response(Response {
            id,
            outcome,
            is_error: false,
            session,
            tenant,
        }),
        Envelope {
            id: Some(id),
            error: Some(outcome),
            session,
            tenant,
            ..
        } => Message::Response(Response {
            id,
            outcome,
            is_error: true,
            session,
            tenant,
        }),
        Envelope { id, session, .. } => invalid(id, session),
    }
}

fn invalid<'a>(id: Option<&'a RawValue>, session: Option<&'a RawValue>) -> Message<'a> {
    Message::Invalid { id, session }
}

/// Decodes a JSON string token (a method, a tenant), borrowing unless it contains escapes.
fn string_token(raw: &RawValue) -> Option<Cow<'_, str>> {
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(name) => Some(Cow::Borrowed(name)),
        Err(_) => serde_json::from_str::<String>(raw.get())
            .ok()
            .map(Cow::Owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(line: &str) -> Call<'_> {
        match classify(line.as_bytes()) {
            Message::Call(call) => call,
            other => panic!("expected a call, got {other:?}"),
        }
    }

    #[test]
    fn request_keeps_exact_tokens() {
        let call = call(
            r#"{"jsonrpc":"2.0","id":1.5e3,"method":"a/b","params":{"x":2.50},"sessionId":"s"}"#,
        );
        assert_eq!(call.id.unwrap().get(), "1.5e3");
        assert_eq!(call.method.get(), r#""a/b""#);
        assert_eq!(call.name, "a/b");
        assert_eq!(call.params.unwrap().get(), r#"{"x":2.50}"#);
        assert_eq!(call.session.unwrap().get(), r#""s""#);
    }

    #[test]
    fn tenant_is_read_and_defaults_when_absent() {
        let named = call(r#"{"id":1,"method":"m","sessionId":"a:s","tenant":"a\u002eb"}"#);
        assert_eq!(named.tenant.unwrap().get(), r#""a\u002eb""#);
        assert_eq!(tenant_name(named.tenant), "a.b");
        let plain = call(r#"{"id":1,"method":"m","sessionId":"s"}"#);
        assert_eq!(tenant_name(plain.tenant), DEFAULT_TENANT);
        let Message::Response(answer) = classify(br#"{"id":0,"result":1,"tenant":"b"}"#) else {
            panic!("expected a response");
        };
        assert_eq!(tenant_name(answer.tenant), "b");
    }

    #[test]
    fn notification_has_no_id_but_null_id_is_a_request() {
        assert!(call(r#"{"method":"m"}"#).id.is_none());
        assert_eq!(
            call(r#"{"id":null,"method":"m"}"#).id.unwrap().get(),
            "null"
        );
    }

    #[test]
    fn escaped_method_is_decoded() {
        let call = call(r#"{"id":1,"method":"mock\/echo"}"#);
        assert_eq!(call.name, "mock/echo");
        assert_eq!(call.method.get(), r#""mock\/echo""#);
    }

    #[test]
    fn response_prefers_result_then_error() {
        let Message::Response(response) = classify(br#"{"id":0,"result":{"ok":true}}"#) else {
            panic!("expected a response");
        };
        assert_eq!(response.id.get(), "0");
        assert_eq!(response.outcome.get(), r#"{"ok":true}"#);
        assert!(!response.is_error);
        let Message::Response(response) = classify(br#"{"id":0,"error":{"code":1}}"#) else {
            panic!("expected a response");
        };
        assert_eq!(response.outcome.get(), r#"{"code":1}"#);
        assert!(response.is_error);
    }

    #[test]
    fn valid_json_that_is_not_a_message_is_invalid() {
        for line in [r#"[1,"m"]"#, "42", r#"{"id":3}"#, r#"{"id":3,"method":7}"#] {
            assert!(
                matches!(classify(line.as_bytes()), Message::Invalid { .. }),
                "{line}"
            );
        }
        let Message::Invalid { id, .. } = classify(br#"{"id":3,"method":7}"#) else {
            panic!("expected invalid");
        };
        assert_eq!(id.unwrap().get(), "3");
    }

    #[test]
    fn duplicate_members_keep_the_id_and_the_last_value() {
        let last = call(
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":1},"sessionId":"s","method":"mock/echo","params":[2],"sessionId":"t"}"#,
        );
        assert_eq!(last.id.unwrap().get(), "1");
        assert_eq!(last.name, "mock/echo");
        assert_eq!(last.params.unwrap().get(), "[2]");
        assert_eq!(last.session.unwrap().get(), r#""t""#);
        // An escaped member name is the same member.
        let call = call(r#"{"id":2,"method":"x","\u006dethod":"y","params":{},"params":null}"#);
        assert_eq!(call.name, "y");
        assert!(call.params.is_none());
        let Message::Response(response) = classify(br#"{"id":0,"result":1,"result":2}"#) else {
            panic!("expected a response");
        };
        assert_eq!(response.outcome.get(), "2");
    }

    #[test]
    fn non_json_is_malformed() {
        for line in ["not json", r#"{"id":1"#, r#"{"id":1,"method":"m"} x"#] {
            assert!(
                matches!(classify(line.as_bytes()), Message::Malformed(_)),
                "{line}"
            );
        }
    }
}
