//! The keyed requests this worker knows about, between the store's records and the replies.
//!
//! A key is (owner, scoped key) as the store keeps it. Locally it is *running* from the moment
//! its record is asked for (so a retry arriving meanwhile waits for the same reply instead of
//! racing the store), *awaiting* its reply once passed on, and *finishing* from its reply until
//! the store has the reply (a retry then gets it from here: the store may not have it yet).

use std::collections::{HashMap, VecDeque};

use codex_bus_store::Finished;
use codex_bus_worker_io::message::Call;

use super::keys;
use crate::app_server::errors::WorkerError;
use crate::app_server::outbound::{BusLine, Kind};
use crate::app_server::sessions::SessionKey;

/// Most replies kept while the store cannot take them; beyond it the oldest is dropped (logged),
/// and a retry of it asks the store, which still says it runs.
const MAX_FINISHING: usize = 10_000;

/// (owner, scoped key).
pub type Key = (String, String);

/// A request waiting for the reply of the first request with its key.
#[derive(Debug)]
pub struct Waiter {
    /// Its session.
    pub session: SessionKey,
    /// Its `id` token.
    pub id: Vec<u8>,
    /// Its `sessionId` token.
    pub token: Vec<u8>,
}

impl Waiter {
    /// The request `call` of `session`, to answer later; `None` for a notification or a call
    /// without a `sessionId` (nothing to answer, or nowhere to route the answer).
    pub fn of(session: &SessionKey, call: &Call<'_>) -> Option<Self> {
        Some(Self {
            session: session.clone(),
            id: call.id?.get().as_bytes().to_vec(),
            token: call.session?.get().as_bytes().to_vec(),
        })
    }

    /// Its reply, from a stored outcome.
    pub fn replay(&self, outcome: &Finished) -> BusLine {
        match outcome {
            Finished::Reply(outcome) => self.reply(outcome),
            Finished::TooLarge => self.error(&WorkerError::IdempotentReplyTooLarge),
        }
    }

    /// Its reply, from the first request's outcome (`{"result":…}` or `{"error":…}`).
    pub fn reply(&self, outcome: &str) -> BusLine {
        self.bus_line(keys::replay(&self.id, outcome, &self.token))
    }

    /// Its error reply.
    pub fn error(&self, error: &WorkerError) -> BusLine {
        self.bus_line(self.error_line(error))
    }

    fn error_line(&self, error: &WorkerError) -> Vec<u8> {
        let mut line = Vec::new();
        error.write_reply(&mut line, &self.id, Some(&self.token));
        line
    }

    fn bus_line(&self, line: Vec<u8>) -> BusLine {
        BusLine {
            session: Some(self.session.clone()),
            line,
            kind: Kind::Essential,
        }
    }
}

/// Every keyed request in progress here.
#[derive(Debug, Default)]
pub struct Keyed {
    /// Keys whose first request is being begun or runs, with the retries that wait for it.
    running: HashMap<Key, Vec<Waiter>>,
    /// Keyed requests passed on, by (session, request id), until their reply goes out (a
    /// session that reuses an id in flight has several, answered in order).
    awaiting: HashMap<(SessionKey, Vec<u8>), VecDeque<Key>>,
    /// How many entries of `awaiting` each session has, so other sessions' lines are not read.
    awaiting_sessions: HashMap<SessionKey, usize>,
    /// Outcomes the store has not confirmed yet, oldest first.
    finishing: HashMap<Key, Finished>,
    finishing_order: VecDeque<Key>,
}

impl Keyed {
    /// Adds `waiter` to `key` if a request with it runs here; gives it back otherwise.
    pub fn attach(&mut self, key: &Key, waiter: Waiter) -> Result<(), Waiter> {
        match self.running.get_mut(key) {
            Some(waiters) => {
                waiters.push(waiter);
                Ok(())
            }
            None => Err(waiter),
        }
    }

    /// The outcome of `key` if it finished here and the store may not have it yet.
    pub fn finishing(&self, key: &Key) -> Option<&Finished> {
        self.finishing.get(key)
    }

    /// The first request with `key` asks the store for its record.
    pub fn begin(&mut self, key: Key) {
        self.running.insert(key, Vec::new());
    }

    /// Whether a request with `key` runs here.
    #[cfg(test)]
    pub fn runs(&self, key: &Key) -> bool {
        self.running.contains_key(key)
    }

    /// `key` no longer runs here: its waiters, to answer.
    pub fn end(&mut self, key: &Key) -> Vec<Waiter> {
        self.running.remove(key).unwrap_or_default()
    }

    /// The request `id` of `session` with `key` was passed on: its reply is the key's outcome.
    pub fn expect_reply(&mut self, session: &SessionKey, id: Vec<u8>, key: Key) {
        *self.awaiting_sessions.entry(session.clone()).or_default() += 1;
        self.awaiting
            .entry((session.clone(), id))
            .or_default()
            .push_back(key);
    }

    /// Whether a line toward `session` may be a keyed request's reply.
    pub fn awaits(&self, session: &SessionKey) -> bool {
        self.awaiting_sessions.contains_key(session)
    }

    /// The key whose reply `id` toward `session` is, if it is one.
    pub fn replied(&mut self, session: &SessionKey, id: Vec<u8>) -> Option<Key> {
        let entry = (session.clone(), id);
        let keys = self.awaiting.get_mut(&entry)?;
        let key = keys.pop_front()?;
        if keys.is_empty() {
            self.awaiting.remove(&entry);
        }
        if let Some(count) = self.awaiting_sessions.get_mut(session) {
            *count -= 1;
            if *count == 0 {
                self.awaiting_sessions.remove(session);
            }
        }
        Some(key)
    }

    /// Keeps `outcome` until the store confirms it; returns a key dropped to stay in bounds.
    pub fn finish(&mut self, key: Key, outcome: Finished) -> Option<Key> {
        let mut dropped = None;
        if !self.finishing.contains_key(&key) {
            if self.finishing_order.len() >= MAX_FINISHING {
                dropped = self.finishing_order.pop_front();
                if let Some(old) = &dropped {
                    self.finishing.remove(old);
                }
            }
            self.finishing_order.push_back(key.clone());
        }
        self.finishing.insert(key, outcome);
        dropped
    }

    /// The store has the outcome of `key`.
    pub fn stored(&mut self, key: &Key) {
        if self.finishing.remove(key).is_some() {
            self.finishing_order.retain(|old| old != key);
        }
    }

    /// Outcomes still to store (after a failure), to try again.
    pub fn unstored(&self) -> Vec<(Key, Finished)> {
        self.finishing
            .iter()
            .map(|(key, outcome)| (key.clone(), outcome.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn key(name: &str) -> Key {
        ("t:a".to_owned(), name.to_owned())
    }

    fn waiter(session: &str, id: &str) -> Waiter {
        Waiter {
            session: Arc::from(session.as_bytes()),
            id: id.as_bytes().to_vec(),
            token: format!("\"{session}\"").into_bytes(),
        }
    }

    #[test]
    fn retries_attach_while_a_key_runs_and_get_its_outcome() {
        let mut keyed = Keyed::default();
        assert!(keyed.attach(&key("k"), waiter("s", "2")).is_err());
        keyed.begin(key("k"));
        assert!(keyed.attach(&key("k"), waiter("s2", "9")).is_ok());
        let session: SessionKey = Arc::from(&b"s"[..]);
        keyed.expect_reply(&session, b"1".to_vec(), key("k"));
        assert!(keyed.awaits(&session));
        assert_eq!(keyed.replied(&session, b"1".to_vec()), Some(key("k")));
        assert!(!keyed.awaits(&session));
        let waiters = keyed.end(&key("k"));
        assert_eq!(waiters.len(), 1);
        let line = waiters[0].replay(&Finished::Reply(r#"{"result":{"ok":1}}"#.to_owned()));
        assert_eq!(
            String::from_utf8(line.line).unwrap(),
            "{\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{\"ok\":1},\"sessionId\":\"s2\"}\n"
        );
        assert!(!keyed.runs(&key("k")));
    }

    #[test]
    fn outcomes_wait_for_the_store_within_a_bound() {
        let mut keyed = Keyed::default();
        for n in 0..MAX_FINISHING {
            assert_eq!(keyed.finish(key(&n.to_string()), Finished::TooLarge), None);
        }
        assert_eq!(
            keyed.finish(key("last"), Finished::TooLarge),
            Some(key("0"))
        );
        assert!(keyed.finishing(&key("0")).is_none());
        keyed.stored(&key("last"));
        assert!(keyed.finishing(&key("last")).is_none());
        assert_eq!(keyed.unstored().len(), MAX_FINISHING - 1);
    }
}
