//! The leases this worker holds, as it last heard from the store.
//!
//! A lease counts as held only until the time the store would let it expire: the last renewal's
//! send time plus the TTL. So when the store cannot be reached, the worker stops driving a
//! thread no later than another node may take it (docs/node-loss.md, "Leases").

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use codex_bus_worker_io::log;

/// Most published epochs remembered for threads no longer leased here; beyond it the memory is
/// cleared, which costs at most one needless import per thread.
const MAX_KNOWN: usize = 10_000;

/// One lease held here.
#[derive(Debug)]
struct Lease {
    /// The fencing token the store granted.
    epoch: u64,
    /// After this the store may give the lease to someone else.
    valid_until: Instant,
    /// The last request that named the thread, or turn that ended on it.
    last_used: Instant,
    /// The `CODEX_HOME` whose rollout of the thread is published.
    home: PathBuf,
}

/// Every lease held here, and when to renew them.
#[derive(Debug)]
pub struct Leases {
    ttl: Duration,
    idle: Duration,
    map: HashMap<String, Lease>,
    /// The epoch whose rollout each thread's local copy is (so an unchanged one is not copied
    /// again when the lease comes back).
    known: HashMap<String, u64>,
    next_renew: Instant,
    renewing: bool,
    /// Threads whose lease lapsed or moved on while held here, until taken again: a turn that
    /// ends on one is not published (it cannot be) and is reported failed.
    lost: HashSet<String>,
    /// Threads lost since the last [`Leases::take_newly_lost`]: their running turns must stop.
    newly_lost: Vec<String>,
    /// Leased threads whose last publish failed, to publish again.
    unpublished: HashSet<String>,
}

impl Leases {
    /// No leases; leases live `ttl` after their last renewal and are released after `idle`.
    pub fn new(ttl: Duration, idle: Duration, now: Instant) -> Self {
        Self {
            ttl,
            idle,
            map: HashMap::new(),
            known: HashMap::new(),
            next_renew: now + ttl / 3,
            renewing: false,
            lost: HashSet::new(),
            newly_lost: Vec::new(),
            unpublished: HashSet::new(),
        }
    }

    /// Records a lease the store just granted at `epoch`.
    pub fn granted(&mut self, thread: &str, epoch: u64, home: PathBuf, now: Instant) {
        self.lost.remove(thread);
        self.map.insert(
            thread.to_owned(),
            Lease {
                epoch,
                valid_until: now + self.ttl,
                last_used: now,
                home,
            },
        );
    }

    /// Whether the lease of `thread` is held and has not lapsed.
    pub fn holds(&self, thread: &str, now: Instant) -> bool {
        self.map
            .get(thread)
            .is_some_and(|lease| lease.valid_until > now)
    }

    /// A request named `thread`.
    pub fn used(&mut self, thread: &str, now: Instant) {
        if let Some(lease) = self.map.get_mut(thread) {
            lease.last_used = now;
        }
    }

    /// The epoch of the rollout the local copy of `thread` is.
    pub fn known_epoch(&self, thread: &str) -> Option<u64> {
        self.known.get(thread).copied()
    }

    /// The local copy of `thread` is now the rollout published at `epoch`.
    pub fn published(&mut self, thread: &str, epoch: u64) {
        if self.known.len() >= MAX_KNOWN && !self.known.contains_key(thread) {
            self.known.clear();
        }
        self.known.insert(thread.to_owned(), epoch);
    }

    /// The store says the lease moved on: the thread is no longer driven here.
    pub fn lost(&mut self, thread: &str) {
        if self.map.remove(thread).is_some() {
            self.note_lost(thread);
        }
    }

    /// Whether the lease of `thread` lapsed or moved on while held here (and was not taken
    /// again since).
    pub fn was_lost(&self, thread: &str) -> bool {
        self.lost.contains(thread)
    }

    /// The last publish of `thread` failed: it is published again at the next renewal.
    pub fn unpublished(&mut self, thread: &str) {
        if self.map.contains_key(thread) {
            self.unpublished.insert(thread.to_owned());
        }
    }

    /// The leased threads to publish again: (thread, epoch, home).
    pub fn take_unpublished(&mut self) -> Vec<(String, u64, PathBuf)> {
        std::mem::take(&mut self.unpublished)
            .into_iter()
            .filter_map(|thread| {
                let lease = self.map.get(&thread)?;
                Some((thread, lease.epoch, lease.home.clone()))
            })
            .collect()
    }

    /// The threads lost since the last call.
    pub fn take_newly_lost(&mut self) -> Vec<String> {
        std::mem::take(&mut self.newly_lost)
    }

    fn note_lost(&mut self, thread: &str) {
        self.newly_lost.push(thread.to_owned());
        // Bounded like the published epochs: forgetting only loses the failure report.
        if self.lost.len() >= MAX_KNOWN {
            self.lost.clear();
        }
        self.lost.insert(thread.to_owned());
    }

    /// When a turn of `thread` ended: the epoch and home to publish under, if leased here.
    pub fn publishable(&mut self, thread: &str, now: Instant) -> Option<(u64, PathBuf)> {
        let lease = self.map.get_mut(thread)?;
        lease.last_used = now;
        (lease.valid_until > now).then(|| (lease.epoch, lease.home.clone()))
    }

    /// Whether a renewal is due: if so, the leases to renew (possibly none; the tick also
    /// retries what failed to reach the store).
    pub fn due_renewal(&mut self, now: Instant) -> Option<Vec<(String, u64)>> {
        if self.renewing || now < self.next_renew {
            return None;
        }
        self.next_renew = now + self.ttl / 3;
        self.renewing = !self.map.is_empty();
        Some(
            self.map
                .iter()
                .map(|(thread, lease)| (thread.clone(), lease.epoch))
                .collect(),
        )
    }

    /// The store renewed the leases as of `sent`, except `lost` (taken over or gone).
    pub fn renewed(&mut self, sent: Instant, lost: &[String]) {
        self.renewing = false;
        for thread in lost {
            if self.map.remove(thread).is_some() {
                self.note_lost(thread);
                log::line(format_args!(
                    "the lease of thread {thread} was lost: it is no longer driven here"
                ));
            }
        }
        for lease in self.map.values_mut() {
            lease.valid_until = lease.valid_until.max(sent + self.ttl);
        }
    }

    /// The renewal did not reach the store: the leases lapse at their time unless the next does.
    pub fn renew_failed(&mut self) {
        self.renewing = false;
    }

    /// Takes out the leases idle for the idle time whose thread is not `busy`: (thread,
    /// epoch, home) of each, to publish and release. A busy one counts as used now, so its idle
    /// time starts when its turn ends.
    pub fn idle(
        &mut self,
        now: Instant,
        busy: impl Fn(&str) -> bool,
    ) -> Vec<(String, u64, PathBuf)> {
        let mut idle = Vec::new();
        for (thread, lease) in &mut self.map {
            if lease.last_used + self.idle <= now {
                if busy(thread) {
                    lease.last_used = now;
                } else {
                    idle.push(thread.clone());
                }
            }
        }
        idle.into_iter()
            .filter_map(|thread| {
                let lease = self.map.remove(&thread)?;
                Some((thread, lease.epoch, lease.home))
            })
            .collect()
    }

    /// Forgets leases past the time the store may have given them away.
    pub fn expire(&mut self, now: Instant) {
        let lapsed: Vec<String> = self
            .map
            .iter()
            .filter(|(_, lease)| lease.valid_until <= now)
            .map(|(thread, _)| thread.clone())
            .collect();
        for thread in lapsed {
            self.map.remove(&thread);
            self.note_lost(&thread);
            log::line(format_args!(
                "the lease of thread {thread} lapsed (the store could not renew it)"
            ));
        }
    }

    /// When something is due: a renewal (also when `retry` asks for the tick), a lapse, an idle
    /// release.
    pub fn next_deadline(&self, retry: bool) -> Option<Instant> {
        let mut next = (retry || !self.map.is_empty()).then_some(self.next_renew);
        for lease in self.map.values() {
            let due = lease.valid_until.min(lease.last_used + self.idle);
            next = Some(next.map_or(due, |next| next.min(due)));
        }
        next
    }

    /// Takes out every lease: (thread, epoch, home), to publish and release at the end.
    pub fn drain_all(&mut self) -> Vec<(String, u64, PathBuf)> {
        self.map
            .drain()
            .map(|(thread, lease)| (thread, lease.epoch, lease.home))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(15);
    const IDLE: Duration = Duration::from_secs(300);

    #[test]
    fn a_lease_holds_until_the_last_renewal_plus_the_ttl() {
        let t0 = Instant::now();
        let mut leases = Leases::new(TTL, IDLE, t0);
        leases.granted("a", 1, PathBuf::from("/h"), t0);
        assert!(leases.holds("a", t0 + TTL - Duration::from_millis(1)));
        assert!(!leases.holds("a", t0 + TTL));
        assert!(leases.due_renewal(t0).is_none());
        let due = leases.due_renewal(t0 + TTL / 3).unwrap();
        assert_eq!(due, vec![("a".to_owned(), 1)]);
        // One renewal at a time.
        assert!(leases.due_renewal(t0 + TTL).is_none());
        leases.renewed(t0 + TTL / 3, &[]);
        assert!(leases.holds("a", t0 + TTL + TTL / 4));
    }

    #[test]
    fn a_failed_renewal_lets_the_lease_lapse_and_a_lost_one_is_dropped() {
        let t0 = Instant::now();
        let mut leases = Leases::new(TTL, IDLE, t0);
        leases.granted("a", 1, PathBuf::from("/h"), t0);
        leases.granted("b", 4, PathBuf::from("/h"), t0);
        leases.due_renewal(t0 + TTL / 3).unwrap();
        leases.renewed(t0 + TTL / 3, &["b".to_owned()]);
        assert!(!leases.holds("b", t0));
        leases.due_renewal(t0 + TTL).unwrap();
        leases.renew_failed();
        leases.expire(t0 + TTL + TTL / 3);
        assert!(leases.drain_all().is_empty());
    }

    #[test]
    fn idle_threads_are_released_unless_busy() {
        let t0 = Instant::now();
        let mut leases = Leases::new(TTL, IDLE, t0);
        leases.granted("quiet", 1, PathBuf::from("/h"), t0);
        leases.granted("turning", 2, PathBuf::from("/h"), t0);
        assert_eq!(leases.next_deadline(false), Some(t0 + TTL / 3));
        // Renewed all along.
        leases.due_renewal(t0 + IDLE).unwrap();
        leases.renewed(t0 + IDLE, &[]);
        let released = leases.idle(t0 + IDLE, |thread| thread == "turning");
        assert_eq!(released, vec![("quiet".to_owned(), 1, PathBuf::from("/h"))]);
        // The busy one's idle time starts over, so the timer does not fire again at once.
        assert!(leases.next_deadline(false).unwrap() > t0 + IDLE);
        assert_eq!(
            leases.publishable("turning", t0 + IDLE),
            Some((2, PathBuf::from("/h")))
        );
        assert_eq!(leases.publishable("quiet", t0 + IDLE), None);
    }

    #[test]
    fn a_failed_publish_is_retried_while_the_lease_lives() {
        let t0 = Instant::now();
        let mut leases = Leases::new(TTL, IDLE, t0);
        leases.granted("a", 2, PathBuf::from("/h"), t0);
        leases.unpublished("a");
        leases.unpublished("not leased");
        assert_eq!(
            leases.take_unpublished(),
            vec![("a".to_owned(), 2, PathBuf::from("/h"))]
        );
        assert!(leases.take_unpublished().is_empty());
        leases.unpublished("a");
        leases.lost("a");
        assert!(leases.take_unpublished().is_empty());
    }

    #[test]
    fn known_epochs_are_bounded() {
        let mut leases = Leases::new(TTL, IDLE, Instant::now());
        for n in 0..=MAX_KNOWN {
            leases.published(&n.to_string(), 1);
        }
        assert!(leases.known.len() <= MAX_KNOWN);
        assert_eq!(leases.known_epoch(&MAX_KNOWN.to_string()), Some(1));
    }
}
