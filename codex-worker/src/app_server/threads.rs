//! Thread ownership: which session each thread belongs to, and whether the child has it loaded.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde_json::{Map, Value};

use super::sessions::SessionKey;

/// A request waiting inside the worker (for the child, or for its thread's lazy resume).
#[derive(Debug)]
pub struct Queued {
    /// The session that sent it.
    pub session: SessionKey,
    /// The line as the session sent it.
    pub line: Vec<u8>,
    /// When it arrived; its timeout counts from here.
    pub arrived: Instant,
}

/// Whether the current child has a thread loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Loaded in the running child.
    Loaded,
    /// Not loaded (child restarted, or Codex closed it): the next request resumes it first.
    NeedsResume,
    /// A worker-initiated `thread/resume` is in flight; requests park until it answers.
    Resuming,
    /// Cannot come back: ephemeral when the child died, or its resume failed.
    Lost,
}

/// One owned thread.
#[derive(Debug)]
pub struct ThreadEntry {
    /// The session the thread belongs to.
    pub owner: SessionKey,
    /// Ephemeral threads have no rollout and die with the child.
    pub ephemeral: bool,
    /// The turn in progress, from `turn/started` until `turn/completed`.
    pub active_turn: Option<String>,
    /// Whether the child has it loaded.
    pub residency: Residency,
    /// The overrides the thread was started with, replayed by a lazy `thread/resume`.
    pub overrides: Map<String, Value>,
    /// Requests waiting for the lazy resume.
    pub parked: VecDeque<Queued>,
}

/// How a session stands to a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The session owns it.
    Owner,
    /// Another session owns it.
    Foreign,
    /// Nobody owns it (never seen, or known only to the child).
    Unknown,
}

/// Every thread owned through this worker.
#[derive(Debug, Default)]
pub struct Threads {
    map: HashMap<String, ThreadEntry>,
}

impl Threads {
    /// How `session` stands to `thread`.
    pub fn standing(&self, thread: &str, session: &[u8]) -> Standing {
        match self.map.get(thread) {
            Some(entry) if *entry.owner == *session => Standing::Owner,
            Some(_) => Standing::Foreign,
            None => Standing::Unknown,
        }
    }

    /// The owner of `thread`.
    pub fn owner(&self, thread: &str) -> Option<&SessionKey> {
        self.map.get(thread).map(|entry| &entry.owner)
    }

    /// The entry of `thread`.
    pub fn get(&self, thread: &str) -> Option<&ThreadEntry> {
        self.map.get(thread)
    }

    /// The entry of `thread`, for changes.
    pub fn get_mut(&mut self, thread: &str) -> Option<&mut ThreadEntry> {
        self.map.get_mut(thread)
    }

    /// Records `thread` as loaded and owned by `owner`; returns whether it is new to the worker.
    ///
    /// An existing owner is never replaced: callers check standing first, and a `thread/started`
    /// attributed during the start race is confirmed, not overridden, by the response.
    pub fn claim(
        &mut self,
        thread: &str,
        owner: &SessionKey,
        ephemeral: bool,
        overrides: Option<Map<String, Value>>,
    ) -> bool {
        match self.map.get_mut(thread) {
            Some(entry) => {
                entry.residency = Residency::Loaded;
                entry.ephemeral = ephemeral;
                if let Some(overrides) = overrides {
                    entry.overrides = overrides;
                }
                false
            }
            None => {
                self.map.insert(
                    thread.to_owned(),
                    ThreadEntry {
                        owner: owner.clone(),
                        ephemeral,
                        active_turn: None,
                        residency: Residency::Loaded,
                        overrides: overrides.unwrap_or_default(),
                        parked: VecDeque::new(),
                    },
                );
                true
            }
        }
    }

    /// Records a thread known from an earlier worker life: owned, but not loaded in the child.
    pub fn restore(&mut self, thread: &str, owner: SessionKey) {
        self.map
            .entry(thread.to_owned())
            .or_insert_with(|| ThreadEntry {
                owner,
                ephemeral: false,
                active_turn: None,
                residency: Residency::NeedsResume,
                overrides: Map::new(),
                parked: VecDeque::new(),
            });
    }

    /// The child died: returns `(thread, owner, turn)` for every active turn, and marks every
    /// thread as needing a resume (ephemeral ones as lost).
    pub fn child_exited(&mut self) -> Vec<(String, SessionKey, String)> {
        let mut active = Vec::new();
        for (thread, entry) in &mut self.map {
            if let Some(turn) = entry.active_turn.take() {
                active.push((thread.clone(), entry.owner.clone(), turn));
            }
            entry.residency = match entry.residency {
                Residency::Lost => Residency::Lost,
                _ if entry.ephemeral => Residency::Lost,
                _ => Residency::NeedsResume,
            };
        }
        active.sort();
        active
    }

    /// Active turns as `(thread, owner, turn)`, optionally only those of `owner`.
    pub fn active_turns(&self, owner: Option<&[u8]>) -> Vec<(String, SessionKey, String)> {
        let mut active: Vec<_> = self
            .map
            .iter()
            .filter(|(_, entry)| owner.is_none_or(|owner| *entry.owner == *owner))
            .filter_map(|(thread, entry)| {
                let turn = entry.active_turn.clone()?;
                Some((thread.clone(), entry.owner.clone(), turn))
            })
            .collect();
        active.sort();
        active
    }

    /// Loaded threads of `owner`.
    pub fn loaded_of(&self, owner: &[u8]) -> Vec<String> {
        let mut loaded: Vec<String> = self
            .map
            .iter()
            .filter(|(_, entry)| *entry.owner == *owner && entry.residency == Residency::Loaded)
            .map(|(thread, _)| thread.clone())
            .collect();
        loaded.sort();
        loaded
    }

    /// Threads that hold parked requests but have no resume in flight.
    pub fn awaiting_resume(&self) -> Vec<String> {
        let mut threads: Vec<String> = self
            .map
            .iter()
            .filter(|(_, entry)| {
                entry.residency == Residency::NeedsResume && !entry.parked.is_empty()
            })
            .map(|(thread, _)| thread.clone())
            .collect();
        threads.sort();
        threads
    }

    /// Takes every parked request of every thread.
    pub fn take_all_parked(&mut self) -> Vec<Queued> {
        self.map
            .values_mut()
            .flat_map(|entry| entry.parked.drain(..))
            .collect()
    }

    /// Takes the parked requests that arrived before `cutoff`.
    pub fn take_parked_before(&mut self, cutoff: Instant) -> Vec<Queued> {
        let mut expired = Vec::new();
        for entry in self.map.values_mut() {
            while entry
                .parked
                .front()
                .is_some_and(|queued| queued.arrived < cutoff)
            {
                expired.extend(entry.parked.pop_front());
            }
        }
        expired
    }

    /// How many requests are parked in all.
    pub fn parked(&self) -> usize {
        self.map.values().map(|entry| entry.parked.len()).sum()
    }

    /// Whether any turn is active.
    pub fn any_active(&self) -> bool {
        self.map.values().any(|entry| entry.active_turn.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(name: &str) -> SessionKey {
        Arc::from(name.as_bytes())
    }

    #[test]
    fn ownership_is_exclusive_and_first_claim_wins() {
        let mut threads = Threads::default();
        let (a, b) = (key("a"), key("b"));
        assert_eq!(threads.standing("t", &a), Standing::Unknown);
        assert!(threads.claim("t", &a, false, None));
        assert_eq!(threads.standing("t", &a), Standing::Owner);
        assert_eq!(threads.standing("t", &b), Standing::Foreign);
        assert!(!threads.claim("t", &b, false, None));
        assert_eq!(threads.owner("t"), Some(&a));
    }

    #[test]
    fn child_exit_fails_active_turns_and_marks_residency() {
        let mut threads = Threads::default();
        let a = key("a");
        threads.claim("kept", &a, false, None);
        threads.claim("gone", &a, true, None);
        threads.get_mut("kept").unwrap().active_turn = Some("u1".into());
        let active = threads.child_exited();
        assert_eq!(
            active,
            vec![("kept".to_owned(), a.clone(), "u1".to_owned())]
        );
        assert_eq!(
            threads.get("kept").unwrap().residency,
            Residency::NeedsResume
        );
        assert_eq!(threads.get("gone").unwrap().residency, Residency::Lost);
        assert!(!threads.any_active());
        assert!(threads.loaded_of(&a).is_empty());
    }

    #[test]
    fn parked_requests_expire_in_arrival_order() {
        let now = Instant::now();
        let mut threads = Threads::default();
        let a = key("a");
        threads.claim("t", &a, false, None);
        let entry = threads.get_mut("t").unwrap();
        entry.residency = Residency::NeedsResume;
        for (n, at) in [(1u8, 0u64), (2, 5)] {
            entry.parked.push_back(Queued {
                session: a.clone(),
                line: vec![n],
                arrived: now + std::time::Duration::from_secs(at),
            });
        }
        assert_eq!(threads.awaiting_resume(), vec!["t".to_owned()]);
        let expired = threads.take_parked_before(now + std::time::Duration::from_secs(1));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].line, vec![1]);
        assert_eq!(threads.parked(), 1);
    }
}
