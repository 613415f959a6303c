//! What a WebSocket upgrade request is answered from, before any frame: its `Origin`, its
//! bearer credential, and the session it binds the connection to. Pure functions of the request
//! head, so each rule is tested on its own.
//!
//! The answers are Codex's own (../shared/reference/codex-remote.md, "Auth"): a request with an
//! `Origin` gets 403 with an empty body, checked before the credential; a bad credential gets a
//! plain 401 whose body names what was wrong, in Codex's words.

use axum::http::{header, HeaderMap, HeaderValue, Uri};

use crate::auth::{bearer_token, Refusal};

/// The path prefix that names a connection's session: `/sessions/{id}`.
const SESSIONS_PATH: &str = "/sessions/";

/// Whether a request may upgrade as far as its `Origin` goes: one without the header may (the
/// Codex TUI sends none); one with it only if it is listed in `allowed` (byte for byte), since
/// a browser page on another site could otherwise use the visitor's credentials.
pub(super) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()),
    }
}

/// Why a request carries no usable bearer credential, or why it was refused: the 401 body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unauthorized {
    /// No `Authorization` header (or an empty token).
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    NotBearer,
    /// A credential the authenticator refused.
    Refused(Refusal),
}

impl Unauthorized {
    /// The 401 body, as `codex app-server` words it (it holds nothing of the credential).
    pub(super) fn body(self) -> &'static str {
        match self {
            Unauthorized::Missing => "missing websocket bearer token",
            Unauthorized::NotBearer => "invalid authorization header",
            Unauthorized::Refused(refusal) => match refusal {
                Refusal::UnknownToken => "invalid websocket bearer token",
                Refusal::Expired => "expired websocket jwt",
                Refusal::NotYetValid => "websocket jwt is not valid yet",
                Refusal::IssuerMismatch => "websocket jwt issuer mismatch",
                Refusal::AudienceMismatch => "websocket jwt audience mismatch",
                Refusal::InvalidJwt
                | Refusal::BadSignature
                | Refusal::BadTenant
                | Refusal::BadSubject => "invalid websocket jwt",
            },
        }
    }

    /// The reason for the log and the audit trail.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Unauthorized::Missing => "missing bearer token",
            Unauthorized::NotBearer => "invalid authorization header",
            Unauthorized::Refused(refusal) => refusal.reason(),
        }
    }
}

/// The bearer token of an `Authorization` header: `Bearer <token>`, the scheme in any case and
/// the token trimmed, as Codex reads it. Two `Authorization` headers are refused as
/// [`Unauthorized::NotBearer`]: the header is no list (RFC 9110, 11.6.2), and a balancer that
/// hashes on it may take the other one (HAProxy's `req.hdr` takes the last), so one user's
/// connections would reach different nodes.
pub(super) fn bearer(headers: &HeaderMap) -> Result<&str, Unauthorized> {
    let value = single(headers, header::AUTHORIZATION.as_str())
        .map_err(|()| Unauthorized::NotBearer)?
        .ok_or(Unauthorized::Missing)?;
    let value = value.to_str().map_err(|_| Unauthorized::NotBearer)?;
    let token = bearer_token(value.as_bytes()).ok_or(Unauthorized::NotBearer)?;
    // A part of a `str` after an ASCII prefix, cut at ASCII whitespace: still UTF-8.
    match std::str::from_utf8(token).map_err(|_| Unauthorized::NotBearer)? {
        "" => Err(Unauthorized::Missing),
        token => Ok(token),
    }
}

/// The one value of the header `name`, `None` if absent; `Err` if it appears more than once,
/// since a balancer in front may read another occurrence than the bus would.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h HeaderValue>, ()> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    match values.next() {
        None => Ok(first),
        Some(_) => Err(()),
    }
}

/// Where a connection's session comes from: the names of the query parameter and header that
/// may carry it (`websocket[].session_query`, `session_header`) and the longest id accepted
/// (`limits.max_session_id_bytes`).
pub(super) struct Binding<'a> {
    /// The query parameter.
    pub query: &'a str,
    /// The header (lower case).
    pub header: &'a str,
    /// The longest session id, in bytes.
    pub max_bytes: usize,
}

impl Binding<'_> {
    /// The session a connection is bound to, the first that applies: the path
    /// `/sessions/{id}` (percent-decoded), the query parameter, the header, else
    /// `user:<subject>`, one session per user, so that every connection of a plain Codex TUI
    /// (path `/`, no header) lands on that user's worker. `Err` is the 400 body.
    pub(super) fn session(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        subject: &str,
    ) -> Result<String, String> {
        let named = if let Some(id) = uri.path().strip_prefix(SESSIONS_PATH) {
            Some(("the path", decode(id)))
        } else if let Some(id) = self.query_value(uri) {
            Some(("the query", decode(id)))
        } else {
            let value = single(headers, self.header)
                .map_err(|()| format!("the header {} appears more than once", self.header))?;
            value.map(|value| {
                let id = value.to_str().map(str::to_owned).map_err(|_| ());
                ("the header", id)
            })
        };
        let session = match named {
            None => return Ok(format!("user:{subject}")),
            Some((source, Err(()))) => {
                return Err(format!("the session id in {source} is not UTF-8 text"))
            }
            Some((source, Ok(id))) if id.is_empty() => {
                return Err(format!("the session id in {source} is empty"))
            }
            Some((_, Ok(id))) => id,
        };
        if session.len() > self.max_bytes {
            return Err(format!(
                "the session id has {} bytes; limits.max_session_id_bytes is {}",
                session.len(),
                self.max_bytes
            ));
        }
        Ok(session)
    }

    /// The raw value of the session query parameter, if present.
    fn query_value<'u>(&self, uri: &'u Uri) -> Option<&'u str> {
        uri.query()?.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name == self.query).then_some(value)
        })
    }
}

/// Percent-decodes `text` (RFC 3986; `+` stays itself); `Err` if the result is not UTF-8. A `%`
/// not followed by two hex digits is kept as it is. Also reads the admin endpoint's
/// `/restart?pool=` value.
pub(crate) fn decode(text: &str) -> Result<String, ()> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn an_origin_is_refused_unless_listed() {
        let allowed = ["https://ok.example".to_owned()];
        assert!(origin_allowed(&headers(&[]), &[]));
        assert!(!origin_allowed(
            &headers(&[("origin", "https://ok.example")]),
            &[]
        ));
        assert!(origin_allowed(
            &headers(&[("origin", "https://ok.example")]),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(&[("origin", "https://evil.example")]),
            &allowed
        ));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_trimmed() {
        let token = |value: &str| bearer(&headers(&[("authorization", value)])).map(str::to_owned);
        assert_eq!(token("Bearer abc").as_deref(), Ok("abc"));
        assert_eq!(token("bearer  abc ").as_deref(), Ok("abc"));
        assert_eq!(token("BEARER abc").as_deref(), Ok("abc"));
        assert_eq!(token("Basic abc"), Err(Unauthorized::NotBearer));
        assert_eq!(token("abc"), Err(Unauthorized::NotBearer));
        assert_eq!(token("Bearer  "), Err(Unauthorized::Missing));
        assert_eq!(bearer(&headers(&[])), Err(Unauthorized::Missing));
        let mut twice = headers(&[("authorization", "Bearer abc")]);
        twice.append("authorization", HeaderValue::from_static("Bearer def"));
        assert_eq!(bearer(&twice), Err(Unauthorized::NotBearer));
        assert_eq!(
            Unauthorized::Missing.body(),
            "missing websocket bearer token"
        );
        assert_eq!(
            Unauthorized::Refused(Refusal::UnknownToken).body(),
            "invalid websocket bearer token"
        );
        assert_eq!(
            Unauthorized::Refused(Refusal::Expired).body(),
            "expired websocket jwt"
        );
    }

    #[test]
    fn the_session_comes_from_the_path_the_query_the_header_or_the_user() {
        let binding = Binding {
            query: "session",
            header: "x-codex-session",
            max_bytes: 16,
        };
        let session = |uri: &str, pairs: &[(&'static str, &str)]| {
            binding.session(&uri.parse().unwrap(), &headers(pairs), "alice")
        };
        let header = [("x-codex-session", "from-header")];
        assert_eq!(
            session("/sessions/a%20b?session=q", &header).unwrap(),
            "a b"
        );
        assert_eq!(session("/rpc?x=1&session=q%2F1", &header).unwrap(), "q/1");
        assert_eq!(session("/", &header).unwrap(), "from-header");
        assert_eq!(session("/", &[]).unwrap(), "user:alice");
        assert_eq!(session("/sessions", &[]).unwrap(), "user:alice");
        assert!(session("/sessions/", &[]).unwrap_err().contains("empty"));
        assert!(session("/sessions/%ff", &[]).unwrap_err().contains("UTF-8"));
        assert!(session("/?session=12345678901234567", &[])
            .unwrap_err()
            .contains("max_session_id_bytes is 16"));
        assert_eq!(session("/sessions/100%", &[]).unwrap(), "100%");
        let mut twice = headers(&[("x-codex-session", "h1")]);
        twice.append("x-codex-session", HeaderValue::from_static("h2"));
        let twice = binding.session(&"/".parse().unwrap(), &twice, "alice");
        assert!(twice.unwrap_err().contains("more than once"));
    }
}
