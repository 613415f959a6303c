//! Requests in flight to the child: worker-allocated integer ids, what each one is for, and
//! tombstones so that a reply arriving after its timeout is dropped rather than misdelivered.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde_json::{Map, Value};

use super::sessions::{Scope, SessionKey};

/// How many timed-out ids are remembered; beyond this the oldest generation of tombstones is
/// forgotten (a reply that late is dropped as unknown anyway).
const MAX_TOMBSTONES: usize = 65_536;

/// What a thread-creating request will do on success.
#[derive(Debug, Clone, PartialEq)]
pub enum Creation {
    /// `thread/start` or `thread/fork`: a new thread, with the overrides it was started with.
    New(Map<String, Value>),
    /// `thread/resume` by the client, with its overrides.
    Resume(Map<String, Value>),
}

/// A client request forwarded to the child.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarded {
    /// The session that sent it.
    pub session: SessionKey,
    /// Who the session acts for: the owner of a thread the request creates.
    pub scope: Scope,
    /// The client's id token, restored on the reply.
    pub id: Vec<u8>,
    /// The method, for the reply's bookkeeping.
    pub method: String,
    /// `params.threadId`, if any.
    pub thread: Option<String>,
    /// Set for requests whose success makes the session own a thread.
    pub creation: Option<Creation>,
}

/// Why the worker sent a request to the child.
#[derive(Debug, Clone, PartialEq)]
pub enum Purpose {
    /// A client's request.
    Forward(Forwarded),
    /// The worker's own `initialize` to a freshly started child.
    Handshake,
    /// A lazy `thread/resume` before the parked requests of `thread`.
    Resume(String),
    /// A worker-initiated `turn/interrupt` or `thread/unsubscribe`; its reply is not forwarded.
    Internal,
}

/// One request in flight.
#[derive(Debug)]
pub struct Pending {
    /// What it is for.
    pub purpose: Purpose,
    /// When it times out.
    pub deadline: Instant,
}

/// What a child reply's id turned out to be.
#[derive(Debug)]
pub enum Lookup {
    /// A request in flight, now answered.
    Answered(Pending),
    /// A request that already timed out.
    Late,
    /// An id the worker never sent (or forgot).
    Unknown,
}

/// The requests in flight to the current child.
#[derive(Debug, Default)]
pub struct Requests {
    next_id: u64,
    pending: HashMap<u64, Pending>,
    tombstones: HashSet<u64>,
}

impl Requests {
    /// Registers a request and returns the id to send it with; ids are never reused, even across
    /// child restarts, so a reply can never be mistaken for another request's.
    pub fn register(&mut self, purpose: Purpose, deadline: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, Pending { purpose, deadline });
        id
    }

    /// Looks up and removes the request answered by a reply with id `id`.
    pub fn answer(&mut self, id: u64) -> Lookup {
        if let Some(pending) = self.pending.remove(&id) {
            Lookup::Answered(pending)
        } else if self.tombstones.remove(&id) {
            Lookup::Late
        } else {
            Lookup::Unknown
        }
    }

    /// Removes the requests due at `now`, leaving tombstones for their late replies.
    pub fn expire(&mut self, now: Instant) -> Vec<Pending> {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        if self.tombstones.len() + due.len() > MAX_TOMBSTONES {
            self.tombstones.clear();
        }
        let mut expired = Vec::with_capacity(due.len());
        for id in due {
            if let Some(pending) = self.pending.remove(&id) {
                self.tombstones.insert(id);
                expired.push((id, pending));
            }
        }
        expired.sort_by_key(|(id, _)| *id);
        expired.into_iter().map(|(_, pending)| pending).collect()
    }

    /// The child died: takes every request in flight, in the order they were sent.
    pub fn take_all(&mut self) -> Vec<Pending> {
        self.tombstones.clear();
        let mut all: Vec<(u64, Pending)> = self.pending.drain().collect();
        all.sort_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, pending)| pending).collect()
    }

    /// How many requests are in flight.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// How many client requests are in flight (internal ones excluded).
    pub fn forwarded(&self) -> usize {
        self.pending
            .values()
            .filter(|pending| matches!(pending.purpose, Purpose::Forward(_)))
            .count()
    }

    /// The session and scope of the only thread-creating request in flight, if exactly one is:
    /// a `thread/started` that outruns its response belongs to it.
    pub fn sole_creator(&self) -> Option<(&SessionKey, &Scope)> {
        let mut creators = self
            .pending
            .values()
            .filter_map(|pending| match &pending.purpose {
                Purpose::Forward(Forwarded {
                    session,
                    scope,
                    creation: Some(Creation::New(_)),
                    ..
                }) => Some((session, scope)),
                _ => None,
            });
        let first = creators.next()?;
        creators.next().is_none().then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn forwarded(session: &str, creation: Option<Creation>) -> Purpose {
        Purpose::Forward(Forwarded {
            session: Arc::from(session.as_bytes()),
            scope: Scope::Session(Arc::from(session.as_bytes())),
            id: b"\"x\"".to_vec(),
            method: "m".into(),
            thread: None,
            creation,
        })
    }

    #[test]
    fn ids_are_unique_and_replies_find_their_request_once() {
        let now = Instant::now();
        let mut requests = Requests::default();
        let a = requests.register(Purpose::Handshake, now);
        let b = requests.register(forwarded("s", None), now);
        assert_ne!(a, b);
        assert!(matches!(requests.answer(b), Lookup::Answered(_)));
        assert!(matches!(requests.answer(b), Lookup::Unknown));
        assert_eq!(requests.len(), 1);
    }

    #[test]
    fn a_reply_after_the_timeout_is_late_not_misdelivered() {
        let now = Instant::now();
        let mut requests = Requests::default();
        let id = requests.register(forwarded("s", None), now + Duration::from_secs(1));
        assert!(requests.expire(now).is_empty());
        let expired = requests.expire(now + Duration::from_secs(1));
        assert_eq!(expired.len(), 1);
        assert!(matches!(requests.answer(id), Lookup::Late));
        assert!(matches!(requests.answer(id), Lookup::Unknown));
        let next = requests.register(forwarded("s", None), now);
        assert!(next > id, "ids are never reused");
    }

    #[test]
    fn sole_creator_only_when_exactly_one_thread_start_is_in_flight() {
        let now = Instant::now();
        let mut requests = Requests::default();
        assert!(requests.sole_creator().is_none());
        let first = requests.register(forwarded("a", Some(Creation::New(Map::new()))), now);
        requests.register(forwarded("b", None), now);
        requests.register(forwarded("c", Some(Creation::Resume(Map::new()))), now);
        assert_eq!(
            requests.sole_creator().map(|(s, _)| &s[..]),
            Some(&b"a"[..])
        );
        requests.register(forwarded("d", Some(Creation::New(Map::new()))), now);
        assert!(requests.sole_creator().is_none());
        requests.answer(first);
        assert_eq!(
            requests.sole_creator().map(|(s, _)| &s[..]),
            Some(&b"d"[..])
        );
        assert_eq!(requests.forwarded(), 3);
        assert_eq!(requests.take_all().len(), 3);
        assert!(requests.is_empty());
    }
}
