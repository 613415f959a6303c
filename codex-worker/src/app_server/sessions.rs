//! Bus sessions as the worker knows them: routing token, handshake state, notification opt-outs,
//! and the scope that owns the threads they create.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use codex_bus_protocol::key_bytes;
use codex_bus_worker_io::message::tenant_name;

/// A session's identity: the bus's routing key (a string's content, or a number's text), so that
/// `"7"` and `7` are one session, exactly as the bus places them.
pub type SessionKey = Arc<[u8]>;

/// The routing key of a `sessionId` token; `None` for values the bus does not route by.
pub fn key_of(token: &[u8]) -> Option<SessionKey> {
    key_bytes(token).map(|key| Arc::from(key.as_ref()))
}

/// A `sessionId` token for `key`: the key as a JSON string, from which the bus derives the same
/// routing key.
pub fn key_token(key: &[u8]) -> Vec<u8> {
    serde_json::Value::from(String::from_utf8_lossy(key).into_owned())
        .to_string()
        .into_bytes()
}

/// Who owns the threads a session creates (docs/codex-worker.md, "Tenants").
///
/// With `auth` the bus names a tenant on every message and vouches for it: the tenant owns the
/// thread and any of its sessions may use it. Without `auth` there is one tenant, `default`,
/// which the bus does not name and whose clients it does not tell apart: there the session is
/// the only identity the worker has, so it owns the thread, as before tenants existed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// A tenant the bus named with a `tenant` member.
    Tenant(Arc<str>),
    /// A session of the unnamed default tenant, by routing key.
    Session(SessionKey),
}

impl Scope {
    /// The scope of a message from session `key` whose `tenant` member is `tenant`.
    pub fn of(key: &SessionKey, tenant: Option<&RawValue>) -> Self {
        match tenant {
            Some(tenant) => Self::Tenant(Arc::from(tenant_name(Some(tenant)).as_ref())),
            None => Self::Session(key.clone()),
        }
    }

    /// The tenant's name, for a scope the bus named.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Self::Tenant(tenant) => Some(tenant),
            Self::Session(_) => None,
        }
    }
}

/// What the worker remembers about one session.
#[derive(Debug)]
pub struct Session {
    /// The `sessionId` token the session last sent, copied onto every line toward it.
    pub token: Vec<u8>,

    /// Whether the session sent `initialize` (answered or waiting for the child's handshake).
    pub initialized: bool,
    /// Notification methods the session asked not to receive.
    pub opt_outs: HashSet<String>,
    /// Last input from the session or output toward it; idle sessions are reaped.
    pub last_activity: Instant,
}

/// Every session seen on this worker.
#[derive(Debug, Default)]
pub struct Sessions {
    map: HashMap<SessionKey, Session>,
}

impl Sessions {
    /// Records input from the session `key` sent with `token`, creating it on first sight.
    pub fn touch(&mut self, key: &SessionKey, token: &[u8], now: Instant) -> &mut Session {
        let session = self.map.entry(key.clone()).or_insert_with(|| Session {
            token: token.to_vec(),
            initialized: false,
            opt_outs: HashSet::new(),
            last_activity: now,
        });
        if session.token != token {
            session.token = token.to_vec();
        }

        session.last_activity = now;
        session
    }

    /// The session, if known.
    pub fn get(&self, key: &[u8]) -> Option<&Session> {
        self.map.get(key)
    }

    /// The session, if known, for changes.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut Session> {
        self.map.get_mut(key)
    }

    /// The token to put on a line for `key`: the last one it sent, else the key as a JSON string
    /// (the bus derives the same routing key from it).
    pub fn token(&self, key: &[u8]) -> Vec<u8> {
        match self.map.get(key) {
            Some(session) => session.token.clone(),
            None => key_token(key),
        }
    }

    /// Sessions with no activity for `idle`.
    pub fn idle(&self, now: Instant, idle: Duration) -> Vec<SessionKey> {
        self.map
            .iter()
            .filter(|(_, session)| now.saturating_duration_since(session.last_activity) >= idle)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Forgets a session; its next request must `initialize` again.
    pub fn remove(&mut self, key: &[u8]) {
        self.map.remove(key);
    }

    /// Whether some session has sent `initialize` (and so must not have to send it again).
    pub fn any_initialized(&self) -> bool {
        self.map.values().any(|session| session.initialized)
    }

    /// Whether no session is known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_and_number_tokens_are_one_session() {
        assert_eq!(key_of(b"\"7\""), key_of(b"7"));
        assert_eq!(key_of(b"\"a\\u0062\"").as_deref(), Some(&b"ab"[..]));
        assert_eq!(key_of(b"{\"a\":1}"), None);
    }

    #[test]
    fn token_follows_the_last_input_and_falls_back_to_the_key() {
        let now = Instant::now();
        let mut sessions = Sessions::default();
        let key = key_of(b"7").unwrap();
        assert_eq!(sessions.token(&key), b"\"7\"");
        sessions.touch(&key, b"7", now);
        assert_eq!(sessions.token(&key), b"7");
        sessions.touch(&key, b"\"7\"", now);
        assert_eq!(sessions.token(&key), b"\"7\"");
        assert!(!sessions.any_initialized());
        sessions.touch(&key, b"7", now).initialized = true;
        assert!(sessions.any_initialized());
    }

    #[test]
    fn a_named_tenant_is_the_scope_and_without_one_the_session_is() {
        let key = key_of(b"\"a:s1\"").unwrap();
        let named = RawValue::from_string("\"a\"".to_owned()).unwrap();
        assert_eq!(Scope::of(&key, Some(&named)), Scope::Tenant(Arc::from("a")));
        assert_eq!(Scope::of(&key, Some(&named)).tenant(), Some("a"));
        assert_eq!(Scope::of(&key, None), Scope::Session(key.clone()));
        assert_eq!(Scope::of(&key, None).tenant(), None);
    }

    #[test]
    fn idle_sessions_are_listed() {
        let now = Instant::now();
        let mut sessions = Sessions::default();
        let old = key_of(b"\"old\"").unwrap();
        let new = key_of(b"\"new\"").unwrap();
        sessions.touch(&old, b"\"old\"", now);
        sessions.touch(&new, b"\"new\"", now + Duration::from_secs(10));
        let idle = sessions.idle(now + Duration::from_secs(12), Duration::from_secs(5));
        assert_eq!(idle, vec![old.clone()]);
        sessions.remove(&old);
        assert!(sessions.get(&old).is_none());
        assert!(!sessions.is_empty());
    }
}
