//! Thread ownership: which scope (tenant, or session without one) each thread belongs to, which
//! session receives its events, whether the child has it loaded, and the bound on all of it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::sessions::{Scope, SessionKey};

/// A request waiting inside the worker (for the child, or for its thread's lazy resume).
#[derive(Debug)]
pub struct Queued {
    /// The session that sent it.
    pub session: SessionKey,
    /// Who the session acts for.
    pub scope: Scope,
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
    /// Who the thread belongs to: only requests of this scope may name it.
    pub scope: Scope,
    /// The session its events and server requests go to: the one that created it, or the
    /// session of its scope that last resumed it or started work on it.
    pub session: SessionKey,
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
    /// The last request that named it, or event it sent; the bound forgets the oldest first.
    pub last_used: Instant,
}

impl ThreadEntry {
    /// Whether forgetting the entry loses nothing in flight: no turn, no parked request, no
    /// resume under way.
    fn is_quiet(&self) -> bool {
        self.active_turn.is_none()
            && self.parked.is_empty()
            && self.residency != Residency::Resuming
    }
}

/// How a scope stands to a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The scope owns it.
    Owner,
    /// Another scope owns it.
    Foreign,
    /// Nobody owns it (never seen, forgotten by the bound, or known only to the child).
    Unknown,
}

/// The bound on the ownership table (docs/codex-worker.md, "Tenants").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadLimits {
    /// Most entries; beyond it the least recently used quiet ones are forgotten.
    pub max: usize,
    /// Quiet entries unused this long are forgotten (`None`: never).
    pub ttl: Option<Duration>,
}

impl Default for ThreadLimits {
    fn default() -> Self {
        Self {
            max: 10_000,
            ttl: None,
        }
    }
}

/// Every thread owned through this worker, bounded by [`ThreadLimits`].
#[derive(Debug, Default)]
pub struct Threads {
    map: HashMap<String, ThreadEntry>,
    limits: ThreadLimits,
}

impl Threads {
    /// An empty table bounded by `limits`.
    pub fn new(limits: ThreadLimits) -> Self {
        Self {
            map: HashMap::new(),
            limits,
        }
    }

    /// How `scope` stands to `thread`.
    pub fn standing(&self, thread: &str, scope: &Scope) -> Standing {
        match self.map.get(thread) {
            Some(entry) if entry.scope == *scope => Standing::Owner,
            Some(_) => Standing::Foreign,
            None => Standing::Unknown,
        }
    }

    /// The session that receives the events of `thread`.
    pub fn owner(&self, thread: &str) -> Option<&SessionKey> {
        self.map.get(thread).map(|entry| &entry.session)
    }

    /// The scope and the receiving session of `thread`.
    pub fn owner_and_scope(&self, thread: &str) -> Option<(SessionKey, Scope)> {
        self.map
            .get(thread)
            .map(|entry| (entry.session.clone(), entry.scope.clone()))
    }

    /// The entry of `thread`.
    pub fn get(&self, thread: &str) -> Option<&ThreadEntry> {
        self.map.get(thread)
    }

    /// The entry of `thread`, for changes.
    pub fn get_mut(&mut self, thread: &str) -> Option<&mut ThreadEntry> {
        self.map.get_mut(thread)
    }

    /// A request of `session` named `thread` at `now`; with `attach` (a resume, or new work on
    /// it) the thread's events go to that session from now on. The caller checked that the
    /// session's scope owns it.
    pub fn used_by(&mut self, thread: &str, session: &SessionKey, attach: bool, now: Instant) {
        if let Some(entry) = self.map.get_mut(thread) {
            entry.last_used = now;
            if attach && entry.session != *session {
                entry.session = session.clone();
            }
        }
    }

    /// Records `thread` as loaded and owned by `scope`, its events going to `session`; returns
    /// whether it is new to the worker.
    ///
    /// An existing owner is never replaced: callers check standing first, and a `thread/started`
    /// attributed during the start race is confirmed, not overridden, by the response.
    pub fn claim(
        &mut self,
        thread: &str,
        scope: &Scope,
        session: &SessionKey,
        ephemeral: bool,
        overrides: Option<Map<String, Value>>,
        now: Instant,
    ) -> bool {
        match self.map.get_mut(thread) {
            Some(entry) => {
                entry.residency = Residency::Loaded;
                entry.ephemeral = ephemeral;
                entry.last_used = now;
                if entry.scope == *scope && entry.session != *session {
                    entry.session = session.clone();
                }
                if let Some(overrides) = overrides {
                    entry.overrides = overrides;
                }
                false
            }
            None => {
                self.map.insert(
                    thread.to_owned(),
                    ThreadEntry {
                        scope: scope.clone(),
                        session: session.clone(),
                        ephemeral,
                        active_turn: None,
                        residency: Residency::Loaded,
                        overrides: overrides.unwrap_or_default(),
                        parked: VecDeque::new(),
                        last_used: now,
                    },
                );
                true
            }
        }
    }

    /// Records a thread known from an earlier worker life: owned, but not loaded in the child.
    pub fn restore(&mut self, thread: &str, scope: Scope, session: SessionKey, now: Instant) {
        self.map
            .entry(thread.to_owned())
            .or_insert_with(|| ThreadEntry {
                scope,
                session,
                ephemeral: false,
                active_turn: None,
                residency: Residency::NeedsResume,
                overrides: Map::new(),
                parked: VecDeque::new(),
                last_used: now,
            });
    }

    /// Forgets quiet entries unused for the TTL, then, while the table is over its cap, the
    /// least recently used quiet ones (an eighth of the cap at once, so the sort is paid rarely).
    /// Returns how many were forgotten, and those of them the child still has loaded (to be
    /// unsubscribed).
    pub fn enforce_bound(&mut self, now: Instant) -> (usize, Vec<String>) {
        let before = self.map.len();
        let mut forgotten = Vec::new();
        if let Some(cutoff) = self.limits.ttl.and_then(|ttl| now.checked_sub(ttl)) {
            self.map.retain(|thread, entry| {
                let expired = entry.is_quiet() && entry.last_used <= cutoff;
                if expired && entry.residency == Residency::Loaded {
                    forgotten.push(thread.clone());
                }
                !expired
            });
        }
        if self.map.len() > self.limits.max {
            let target = self.limits.max - self.limits.max / 8;
            let mut quiet: Vec<(Instant, String)> = self
                .map
                .iter()
                .filter(|(_, entry)| entry.is_quiet())
                .map(|(thread, entry)| (entry.last_used, thread.clone()))
                .collect();
            quiet.sort_unstable();
            let excess = self.map.len().saturating_sub(target);
            for (_, thread) in quiet.into_iter().take(excess) {
                if let Some(entry) = self.map.remove(&thread) {
                    if entry.residency == Residency::Loaded {
                        forgotten.push(thread);
                    }
                }
            }
        }
        forgotten.sort();
        (before - self.map.len(), forgotten)
    }

    /// The child died: returns `(thread, session, turn)` for every active turn, and marks every
    /// thread as needing a resume (ephemeral ones as lost).
    pub fn child_exited(&mut self) -> Vec<(String, SessionKey, String)> {
        let mut active = Vec::new();
        for (thread, entry) in &mut self.map {
            if let Some(turn) = entry.active_turn.take() {
                active.push((thread.clone(), entry.session.clone(), turn));
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

    /// Active turns as `(thread, session, turn)`, optionally only those whose events go to
    /// `session`.
    pub fn active_turns(&self, session: Option<&[u8]>) -> Vec<(String, SessionKey, String)> {
        let mut active: Vec<_> = self
            .map
            .iter()
            .filter(|(_, entry)| session.is_none_or(|session| *entry.session == *session))
            .filter_map(|(thread, entry)| {
                let turn = entry.active_turn.clone()?;
                Some((thread.clone(), entry.session.clone(), turn))
            })
            .collect();
        active.sort();
        active
    }

    /// Loaded threads whose events go to `session`.
    pub fn loaded_of(&self, session: &[u8]) -> Vec<String> {
        let mut loaded: Vec<String> = self
            .map
            .iter()
            .filter(|(_, entry)| *entry.session == *session && entry.residency == Residency::Loaded)
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

    fn alone(name: &str) -> Scope {
        Scope::Session(key(name))
    }

    fn tenant(name: &str) -> Scope {
        Scope::Tenant(Arc::from(name))
    }

    #[test]
    fn ownership_is_exclusive_and_first_claim_wins() {
        let now = Instant::now();
        let mut threads = Threads::default();
        let (a, b) = (key("a"), key("b"));
        assert_eq!(threads.standing("t", &alone("a")), Standing::Unknown);
        assert!(threads.claim("t", &alone("a"), &a, false, None, now));
        assert_eq!(threads.standing("t", &alone("a")), Standing::Owner);
        assert_eq!(threads.standing("t", &alone("b")), Standing::Foreign);
        assert!(!threads.claim("t", &alone("b"), &b, false, None, now));
        assert_eq!(threads.owner("t"), Some(&a));
    }

    #[test]
    fn a_tenants_sessions_share_its_threads_and_events_follow_the_last_user() {
        let now = Instant::now();
        let mut threads = Threads::default();
        let (s1, s2) = (key("a:s1"), key("a:s2"));
        threads.claim("t", &tenant("a"), &s1, false, None, now);
        assert_eq!(threads.standing("t", &tenant("a")), Standing::Owner);
        assert_eq!(threads.standing("t", &tenant("b")), Standing::Foreign);
        // The session id alone is not the scope: a tenant-less "a:s1" is someone else.
        assert_eq!(threads.standing("t", &alone("a:s1")), Standing::Foreign);
        threads.used_by("t", &s2, false, now);
        assert_eq!(threads.owner("t"), Some(&s1));
        threads.used_by("t", &s2, true, now);
        assert_eq!(threads.owner("t"), Some(&s2));
        assert_eq!(
            threads.owner_and_scope("t"),
            Some((s2.clone(), tenant("a")))
        );
        // Another tenant's claim (a start race) never moves the thread or its events.
        threads.claim("t", &tenant("b"), &key("b:s1"), false, None, now);
        assert_eq!(threads.owner_and_scope("t"), Some((s2, tenant("a"))));
    }

    #[test]
    fn the_table_forgets_the_least_recently_used_quiet_threads_over_its_cap() {
        let now = Instant::now();
        let mut threads = Threads::new(ThreadLimits { max: 8, ttl: None });
        let a = key("a");
        for n in 0..9u64 {
            let at = now + Duration::from_secs(n);
            threads.claim(&format!("t{n}"), &alone("a"), &a, false, None, at);
        }
        // The oldest is busy: it stays, and the next oldest go instead.
        threads.get_mut("t0").unwrap().active_turn = Some("u".into());
        threads.get_mut("t1").unwrap().residency = Residency::NeedsResume;
        let (count, forgotten) = threads.enforce_bound(now + Duration::from_secs(10));
        assert_eq!((count, threads.map.len()), (2, 7));
        assert!(threads.get("t0").is_some());
        assert!(threads.get("t1").is_none() && threads.get("t2").is_none());
        // t1 was not loaded: only t2 needs unsubscribing from the child.
        assert_eq!(forgotten, vec!["t2".to_owned()]);
        assert_eq!(
            threads.enforce_bound(now + Duration::from_secs(10)),
            (0, Vec::new())
        );
    }

    #[test]
    fn quiet_threads_expire_after_the_ttl() {
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut threads = Threads::new(ThreadLimits {
            max: 100,
            ttl: Some(ttl),
        });
        let a = key("a");
        threads.claim("old", &alone("a"), &a, false, None, now);
        threads.claim("used", &alone("a"), &a, false, None, now);
        threads.claim("busy", &alone("a"), &a, false, None, now);
        threads.get_mut("busy").unwrap().active_turn = Some("u".into());
        threads.used_by("used", &a, false, now + Duration::from_secs(30));
        assert_eq!(
            threads.enforce_bound(now + ttl),
            (1, vec!["old".to_owned()])
        );
        assert_eq!(threads.standing("old", &alone("a")), Standing::Unknown);
        assert_eq!(threads.standing("used", &alone("a")), Standing::Owner);
        assert_eq!(threads.standing("busy", &alone("a")), Standing::Owner);
    }

    #[test]
    fn child_exit_fails_active_turns_and_marks_residency() {
        let now = Instant::now();
        let mut threads = Threads::default();
        let a = key("a");
        threads.claim("kept", &alone("a"), &a, false, None, now);
        threads.claim("gone", &alone("a"), &a, true, None, now);
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
        threads.claim("t", &alone("a"), &a, false, None, now);
        let entry = threads.get_mut("t").unwrap();
        entry.residency = Residency::NeedsResume;
        for (n, at) in [(1u8, 0u64), (2, 5)] {
            entry.parked.push_back(Queued {
                session: a.clone(),
                scope: alone("a"),
                line: vec![n],
                arrived: now + Duration::from_secs(at),
            });
        }
        assert_eq!(threads.awaiting_resume(), vec!["t".to_owned()]);
        let expired = threads.take_parked_before(now + Duration::from_secs(1));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].line, vec![1]);
        assert_eq!(threads.parked(), 1);
    }
}
