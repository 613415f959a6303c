//! The `bus/authenticate` handshake (docs/protocol.md, "Authentication"): with bearer
//! credentials configured, a TCP connection is nobody until its first accepted line is
//! `{"jsonrpc":"2.0","id":…,"method":"bus/authenticate","params":{"token":"…"}}`.
//!
//! The handshake runs before the connection is registered with the router, on its own small
//! framer, and writes its refusals straight to the stream: an unauthenticated client never
//! reaches a queue, a session or a worker. Each refused line gets an `unauthenticated` error;
//! after `max_unauthenticated_lines` of them, or `handshake_timeout_sec` after connecting, the
//! connection is closed. The bytes read past the accepted line are handed on, so requests
//! pipelined behind it are served.

use std::net::SocketAddr;
use std::time::Instant;

use codex_bus_protocol::{append_error_reply, ErrorKind, Frame, LineFramer, AUTHENTICATE_METHOD};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::audit::{Audit, Event};
use crate::auth::{Credentials, Identity, Refusal};
use crate::core::log_limit::LogLimit;
use crate::core::principal::Principal;
use crate::metrics::{self, AuthResult};

/// Longest line read before authentication, in bytes: a JWT is well under 4 KiB, and an
/// unauthenticated client must not make the daemon buffer more.
const MAX_HANDSHAKE_LINE: usize = 16 * 1024;

/// An authenticated connection, ready to be served.
pub(crate) struct Authenticated {
    /// Who it is.
    pub principal: Principal,
    /// The reply to its `bus/authenticate`, newline-terminated, to queue once it is connected.
    pub reply: Vec<u8>,
    /// Bytes it sent after the `bus/authenticate` line, which the NDJSON reader must see first.
    pub pipelined: Vec<u8>,
}

/// Runs the handshake on a new connection; `None` when it ended without authenticating (refused
/// too often, timed out, or closed), and the connection is to be dropped.
///
/// Every outcome is written to the audit trail with the peer's address: the success, each refused
/// line, the timeout.
///
/// Each credential is verified by the authenticator in force when it arrives (a reload may
/// replace it meanwhile); the time allowed and the lines refused before closing are those in
/// force when the handshake began.
pub(crate) async fn handshake<R, W>(
    credentials: &Credentials,
    audit: &Audit,
    refusals: &LogLimit,
    peer: SocketAddr,
    reader: &mut R,
    writer: &mut W,
) -> Option<Authenticated>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // `auth` is never turned off at runtime (a reload refuses it); were it, nobody could
    // authenticate, so the connection is dropped.
    let auth = credentials.current()?;
    let peer = audit.enabled().then(|| peer.to_string());
    let witness = Witness {
        audit,
        refusals,
        peer: peer.as_deref(),
    };
    // The deadline covers the writes too: a client that does not read its refusals cannot hold
    // the connection past it.
    let exchange = exchange(
        credentials,
        auth.max_unauthenticated_lines,
        witness,
        reader,
        writer,
    );
    match tokio::time::timeout(auth.handshake_timeout, exchange).await {
        Ok(outcome) => outcome,
        Err(_) => {
            metrics::get().auth(AuthResult::Timeout);
            witness.refused("handshake timeout");
            None
        }
    }
}

/// Writes a handshake's outcomes to the audit trail and the log.
#[derive(Clone, Copy)]
struct Witness<'a> {
    audit: &'a Audit,
    /// The listener's limit on refusal lines: a client that connects and sends garbage in a loop
    /// must not fill the disk (19,000 refused connections in 4 s, measured, wrote 2.5 MB/s of audit
    /// and 2.9 MB/s of log before it). The metric still counts every refusal.
    refusals: &'a LogLimit,
    /// The peer's address, formatted only when the trail is on.
    peer: Option<&'a str>,
}

impl Witness<'_> {
    fn authenticated(self, method: &str, principal: &Principal) {
        self.audit.record(&Event::Authenticated {
            transport: "tcp",
            peer: self.peer,
            method,
            tenant: &principal.tenant,
            subject: &principal.subject,
        });
    }

    /// Records a refusal for `reason`: at most one log and audit line a second per listener.
    fn refused(self, reason: &str) {
        let Some(suppressed) = self.refusals.admit(Instant::now()) else {
            return;
        };
        tracing::info!(reason, suppressed, "client not authenticated");
        self.audit.record(&Event::AuthenticationRefused {
            transport: "tcp",
            peer: self.peer,
            reason,
            suppressed,
        });
    }
}

/// Reads lines until one authenticates, the refusals reach their limit, or the input ends.
async fn exchange<R, W>(
    credentials: &Credentials,
    max_refused: u32,
    witness: Witness<'_>,
    reader: &mut R,
    writer: &mut W,
) -> Option<Authenticated>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut framer = LineFramer::lean(MAX_HANDSHAKE_LINE);
    let mut refused = 0;
    let mut out = Vec::new();
    loop {
        match reader.read(framer.spare()).await {
            Ok(0) | Err(_) => {
                witness.refused("closed before authenticating");
                return None;
            }
            Ok(n) => framer.filled(n),
        }
        while let Some(frame) = framer.next_frame() {
            let (id, why) = match frame {
                Frame::Line(line) => match attempt(credentials, line) {
                    Ok((id, identity)) => {
                        let method = identity.method;
                        let principal = super::principal(identity);
                        witness.authenticated(method, &principal);
                        metrics::get().auth(AuthResult::Ok);
                        tracing::info!(
                            tenant = %principal.tenant,
                            subject = %principal.subject,
                            "client authenticated"
                        );
                        let reply = success_reply(&id, &principal);
                        return Some(Authenticated {
                            principal,
                            reply,
                            pipelined: framer.unframed().to_vec(),
                        });
                    }
                    Err(refused) => refused,
                },
                Frame::Oversize { .. } => (None, Why::Oversize),
            };
            refused += 1;
            witness.refused(why.detail());
            metrics::get().auth(AuthResult::Refused);
            out.clear();
            append_error_reply(
                &mut out,
                id.as_deref(),
                ErrorKind::Unauthenticated,
                Some(why.detail()),
            );
            if writer.write_all(&out).await.is_err() {
                return None;
            }
            if refused >= max_refused {
                tracing::debug!(refused, "too many unauthenticated lines; closing");
                let _ = writer.shutdown().await;
                return None;
            }
        }
    }
}

/// Why a line before authentication was refused.
#[derive(Clone, Copy)]
enum Why {
    /// Not a `bus/authenticate` request.
    NotAuthenticate,
    /// A `bus/authenticate` without a string `params.token`.
    NoToken,
    /// A line longer than [`MAX_HANDSHAKE_LINE`].
    Oversize,
    /// The credential was refused.
    Credential(Refusal),
}

impl Why {
    /// The error reply's detail: what to do, or why the credential failed; never the credential.
    fn detail(self) -> &'static str {
        match self {
            Why::NotAuthenticate => "authenticate first: send a bus/authenticate request",
            Why::NoToken => "bus/authenticate needs params.token, a string",
            Why::Oversize => "line longer than 16384 bytes before authentication",
            Why::Credential(refusal) => refusal.reason(),
        }
    }
}

/// A refused line: its id as JSON text (if it has one) and why.
type Refused = (Option<Vec<u8>>, Why);

/// Judges one line: the request's id (as JSON text) and who its credential names, or why it was
/// refused.
fn attempt(credentials: &Credentials, line: &[u8]) -> Result<(Vec<u8>, Identity), Refused> {
    let Some(request) = Request::parse(line) else {
        return Err((None, Why::NotAuthenticate));
    };
    let id = request.id.as_ref().map(id_text);
    let (Some(id), true) = (
        id.clone(),
        request.method.as_deref() == Some(AUTHENTICATE_METHOD),
    ) else {
        return Err((id, Why::NotAuthenticate));
    };
    let Some(token) = request.token else {
        return Err((Some(id), Why::NoToken));
    };
    let Some(auth) = credentials.current() else {
        return Err((Some(id), Why::Credential(Refusal::UnknownToken)));
    };
    match auth.verify(&token) {
        Ok(identity) => Ok((id, identity)),
        Err(refusal) => Err((Some(id), Why::Credential(refusal))),
    }
}

/// What the handshake reads of a line.
struct Request {
    id: Option<Value>,
    method: Option<String>,
    token: Option<String>,
}

impl Request {
    /// The id, method and `params.token` of a JSON object line; `None` for anything else.
    fn parse(line: &[u8]) -> Option<Request> {
        let Value::Object(mut object) = serde_json::from_slice(line).ok()? else {
            return None;
        };
        let id = object
            .remove("id")
            .filter(|id| matches!(id, Value::String(_) | Value::Number(_)));
        let method = match object.remove("method") {
            Some(Value::String(method)) => Some(method),
            _ => None,
        };
        let token = match object.remove("params") {
            Some(Value::Object(mut params)) => match params.remove("token") {
                Some(Value::String(token)) => Some(token),
                _ => None,
            },
            _ => None,
        };
        Some(Request { id, method, token })
    }
}

/// An id as JSON text, to echo in a reply.
fn id_text(id: &Value) -> Vec<u8> {
    serde_json::to_vec(id).expect("a string or a number always serializes")
}

/// `{"jsonrpc":"2.0","id":…,"result":{"tenant":…,"subject":…}}` and a newline.
fn success_reply(id: &[u8], principal: &Principal) -> Vec<u8> {
    let result = serde_json::json!({"tenant": &*principal.tenant, "subject": &*principal.subject});
    let mut reply = Vec::with_capacity(64 + id.len());
    reply.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    reply.extend_from_slice(id);
    reply.extend_from_slice(b",\"result\":");
    reply.extend_from_slice(result.to_string().as_bytes());
    reply.extend_from_slice(b"}\n");
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_success_reply_echoes_the_id_and_names_the_principal() {
        let principal = Principal {
            tenant: "acme".into(),
            subject: "ide \"1\"".into(),
        };
        let reply = success_reply(b"7", &principal);
        let value: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"jsonrpc": "2.0", "id": 7, "result": {"tenant": "acme", "subject": "ide \"1\""}})
        );
        assert!(reply.ends_with(b"}\n"));
    }
    /// Credentials naming `tenant` for the token `t0k`.
    fn credentials_of(tenant: &str) -> std::sync::Arc<crate::auth::Authenticator> {
        use sha2::Digest as _;
        let hex: String = sha2::Sha256::digest(b"t0k")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let config = codex_bus_config::AuthConfig {
            tokens: vec![codex_bus_config::TokenEntry {
                tenant: tenant.to_owned(),
                secret: codex_bus_config::TokenSecret::Sha256(hex),
                subject: None,
            }],
            ..codex_bus_config::AuthConfig::default()
        };
        std::sync::Arc::new(crate::auth::Authenticator::load(&config).unwrap())
    }

    /// A connection that began its handshake before a reload authenticates with the credentials
    /// in force when its line arrives.
    #[tokio::test]
    async fn a_credential_is_checked_by_the_authenticator_in_force_when_it_arrives() {
        let credentials = Credentials::new(Some(credentials_of("before")));
        let (audit, refusals) = (Audit::off(), LogLimit::default());
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (mut client, server) = tokio::io::duplex(4096);
        let (mut reader, mut writer) = tokio::io::split(server);
        let handshake = handshake(
            &credentials,
            &audit,
            &refusals,
            peer,
            &mut reader,
            &mut writer,
        );
        let client = async {
            // The handshake has begun (it awaits the first line) when the reload lands.
            tokio::task::yield_now().await;
            credentials.replace(Some(credentials_of("after")));
            let line =
                br#"{"jsonrpc":"2.0","id":1,"method":"bus/authenticate","params":{"token":"t0k"}}"#;
            tokio::io::AsyncWriteExt::write_all(&mut client, line)
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut client, b"\n")
                .await
                .unwrap();
            client
        };
        let (done, _client) = tokio::join!(handshake, client);
        assert_eq!(&*done.expect("authenticated").principal.tenant, "after");
    }
}
