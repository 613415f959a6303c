//! Where a session lives: xxh3 of its key, jump-hashed onto the pool's slot numbers, then remembered.
//!
//! Hashing onto slot *numbers* (not processes) means a restarted worker keeps its sessions. The sticky
//! table is the source of truth once a session is placed, so a later change in the number of slots
//! moves no live session; and because jump hashing is deterministic, a daemon that lost its table
//! places every session where it was before. That same determinism makes expiry free: an idle
//! session leaves the table (bounding its memory), and on its return is hashed onto the same slot.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use twox_hash::XxHash3_64;

/// How many of a session's latest senders it remembers: worker-initiated messages go to the
/// latest that can still take them, so one that leaves does not black-hole the others.
pub const RECENT_CLIENTS: usize = 3;

/// Jump consistent hash (Lamping & Veach, 2014): maps `key` onto `0..buckets` so that growing the
/// number of buckets by one moves only 1/(n+1) of the keys, all of them to the new bucket.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    debug_assert!(buckets > 0);
    let (mut bucket, mut next) = (-1i64, 0i64);
    while next < i64::from(buckets) {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    bucket as u32
}

/// The slot a session key hashes to in a pool of `slots` slots.
pub fn slot_for(key: &[u8], slots: u32) -> u32 {
    jump_hash(XxHash3_64::oneshot(key), slots)
}

/// Where one session lives, whose it is (`owner`: the router keeps the tenant there), and who
/// spoke on it last.
pub struct Placement<T> {
    /// Index of the pool.
    pub pool: usize,
    /// Slot number within the pool.
    pub slot: u32,
    /// Who owns the session: for the router, its tenant (whose quota it counts against).
    pub owner: T,
    /// The latest distinct clients that sent on this session, latest first; 0 is an empty place
    /// (client ids start at 1). Updated only when the sender changes.
    recent: [AtomicU64; RECENT_CLIENTS],
    /// When a client last sent on this session, in whole seconds on the caller's clock (the
    /// router's: seconds since it started). Written only when the second changes.
    last_seen: AtomicU32,
}

/// What becomes of one session when a reload changes its pool ([`Sessions::relocate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relocation {
    /// It stays where it is.
    Keep,
    /// Its slot was removed: it moves to this slot of the same pool.
    Move(u32),
    /// Its pool was removed: it leaves the table, and its next message is placed again.
    Remove,
}

/// A new session refused because the table holds its maximum.
#[derive(Debug, PartialEq, Eq)]
pub struct TableFull;

/// The sticky session table. Entries outlive connections, so a client that reconnects with the
/// same session id reaches the same worker. Bounded by `limits.max_sessions`; entries idle for
/// `limits.session_idle_sec` are removed by [`Sessions::expire`].
pub struct Sessions<T> {
    // SipHash (the default) rather than a fixed-seed hash: keys come from clients, and a fixed seed
    // would let one craft colliding session ids.
    table: DashMap<Box<[u8]>, Placement<T>>,
    /// Entries in `table`, kept beside it so the cap is checked without visiting every shard.
    count: AtomicUsize,
    /// The cap on `count`.
    max: usize,
}

impl<T> Sessions<T> {
    /// An empty table holding at most `max` sessions.
    pub fn new(max: usize) -> Self {
        Sessions {
            table: DashMap::new(),
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// Sessions in the table now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The session's (pool, slot), placing it with `place` on first sight (which also names the
    /// tenant that owns it); records `client` as the session's latest sender, seen at second
    /// `now`. A new session while the table is full is refused with `full()`, and `place` is not
    /// called.
    pub fn locate<E>(
        &self,
        key: &[u8],
        client: u64,
        now: u32,
        place: impl FnOnce() -> Result<(usize, u32, T), E>,
        full: impl FnOnce() -> E,
    ) -> Result<(usize, u32), E> {
        if let Some(found) = self.table.get(key) {
            if found.recent[0].load(Ordering::Relaxed) != client {
                found.remember(client);
            }
            if found.last_seen.load(Ordering::Relaxed) != now {
                found.last_seen.store(now, Ordering::Relaxed);
            }
            return Ok((found.pool, found.slot));
        }
        // First sight: only now is the key copied. Another client may have placed it meanwhile;
        // the entry API keeps the first placement.
        match self.table.entry(key.into()) {
            Entry::Occupied(found) => {
                let found = found.get();
                found.remember(client);
                found.last_seen.store(now, Ordering::Relaxed);
                Ok((found.pool, found.slot))
            }
            Entry::Vacant(vacant) => {
                // Reserve the place first, so that concurrent first sights on other shards cannot
                // together pass the cap.
                if self.count.fetch_add(1, Ordering::Relaxed) >= self.max {
                    self.count.fetch_sub(1, Ordering::Relaxed);
                    return Err(full());
                }
                let (pool, slot, owner) = place().inspect_err(|_| {
                    self.count.fetch_sub(1, Ordering::Relaxed);
                })?;
                vacant.insert(Placement {
                    pool,
                    slot,
                    owner,
                    recent: [AtomicU64::new(client), AtomicU64::new(0), AtomicU64::new(0)],
                    last_seen: AtomicU32::new(now),
                });
                Ok((pool, slot))
            }
        }
    }

    /// Removes every session last seen more than `idle` seconds before second `now`, calling
    /// `gone(key, placement)` for each; returns how many left. Strictly more, because seconds are
    /// whole: a session seen at 10.9 s has `last_seen` 10, and must not leave at 11.0 s with
    /// `idle` 1. Locks one shard of the table at a time, as a write does.
    pub fn expire(&self, now: u32, idle: u32, mut gone: impl FnMut(&[u8], &Placement<T>)) -> usize {
        let mut removed = 0;
        self.table.retain(|key, placement| {
            let seen = placement.last_seen.load(Ordering::Relaxed);
            let keep = now.saturating_sub(seen) <= idle;
            if !keep {
                gone(key, placement);
                removed += 1;
            }
            keep
        });
        self.count.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Re-places sessions after a reload: `decide(key, placement)` says of each whether it stays
    /// ([`Relocation::Keep`]), moves to another slot of its pool ([`Relocation::Move`]) or leaves
    /// the table ([`Relocation::Remove`], its pool is gone). `moved(placement, to)` runs for each
    /// session that moves or leaves (`to` is `None` when it leaves), before the change, so the
    /// caller can count it. Returns how many left. Locks one shard at a time, as
    /// [`Sessions::expire`] does; a reload calls it once, never per message.
    pub fn relocate(
        &self,
        mut decide: impl FnMut(&[u8], &Placement<T>) -> Relocation,
        mut moved: impl FnMut(&[u8], &Placement<T>, Option<u32>),
    ) -> usize {
        let mut removed = 0;
        self.table
            .retain(|key, placement| match decide(key, placement) {
                Relocation::Keep => true,
                Relocation::Move(slot) => {
                    moved(key, placement, Some(slot));
                    placement.slot = slot;
                    true
                }
                Relocation::Remove => {
                    moved(key, placement, None);
                    removed += 1;
                    false
                }
            });
        self.count.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// The (pool, slot) the session is placed on, if it is known; its senders are not touched.
    pub fn placed(&self, key: &[u8]) -> Option<(usize, u32)> {
        self.table.get(key).map(|p| (p.pool, p.slot))
    }

    /// The latest distinct clients that sent on this session, latest first (0: none), if the
    /// session is known.
    pub fn recent_clients(&self, key: &[u8]) -> Option<[u64; RECENT_CLIENTS]> {
        self.table
            .get(key)
            .map(|p| p.recent.each_ref().map(|c| c.load(Ordering::Relaxed)))
    }
}

impl<T> Placement<T> {
    /// Moves `client` to the front of the recent senders, shifting the others back (the last
    /// falls off unless `client` was among them). Each place is swapped atomically: two clients
    /// remembered at the same instant may leave one of them listed twice, never a torn id.
    fn remember(&self, client: u64) {
        let mut carry = client;
        for place in &self.recent {
            let was = place.swap(carry, Ordering::Relaxed);
            if was == client || was == 0 {
                return;
            }
            carry = was;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_is_balanced_and_moves_little_when_growing() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("session-{i:08}")).collect();
        let mut counts = [0u32; 8];
        for k in &keys {
            counts[slot_for(k.as_bytes(), 8) as usize] += 1;
        }
        let mean = keys.len() as f64 / 8.0;
        for c in counts {
            assert!((f64::from(c) - mean).abs() < mean * 0.1, "{counts:?}");
        }
        let moved = keys
            .iter()
            .filter(|k| slot_for(k.as_bytes(), 8) != slot_for(k.as_bytes(), 9))
            .count();
        let share = moved as f64 / keys.len() as f64;
        assert!((share - 1.0 / 9.0).abs() < 0.02, "moved {share}");
        for k in &keys {
            let (a, b) = (slot_for(k.as_bytes(), 8), slot_for(k.as_bytes(), 9));
            assert!(a == b || b == 8, "keys only move to the new slot");
        }
    }

    #[test]
    fn jump_hash_single_bucket() {
        assert_eq!(jump_hash(u64::MAX, 1), 0);
        assert_eq!(jump_hash(0, 1), 0);
    }

    fn full() -> &'static str {
        "full"
    }

    #[test]
    fn placement_is_sticky_and_tracks_the_last_client() {
        let sessions = Sessions::<()>::new(10);
        let first: Result<_, &str> = sessions.locate(b"s1", 7, 0, || Ok((0, 3, ())), full);
        assert_eq!(first, Ok((0, 3)));
        let again = sessions.locate(b"s1", 9, 0, || panic!("already placed"), full);
        assert_eq!(again, Ok((0, 3)));
        assert_eq!(sessions.recent_clients(b"s1"), Some([9, 7, 0]));
        assert_eq!(sessions.recent_clients(b"s2"), None);
        let refused = sessions.locate(b"s2", 1, 0, || Err("no pool"), full);
        assert_eq!(refused, Err("no pool"));
        assert_eq!(
            sessions.recent_clients(b"s2"),
            None,
            "a refused placement leaves nothing behind"
        );
        assert_eq!(sessions.count(), 1, "nor counts");
    }

    #[test]
    fn a_session_remembers_its_latest_distinct_senders() {
        let sessions = Sessions::<()>::new(10);
        let send = |client| {
            sessions
                .locate(b"s", client, 0, || Ok((0, 0, ())), full)
                .unwrap();
        };
        send(1);
        send(1);
        assert_eq!(sessions.recent_clients(b"s"), Some([1, 0, 0]));
        send(2);
        send(3);
        assert_eq!(sessions.recent_clients(b"s"), Some([3, 2, 1]));
        send(1);
        assert_eq!(
            sessions.recent_clients(b"s"),
            Some([1, 3, 2]),
            "moved to the front"
        );
        send(4);
        assert_eq!(
            sessions.recent_clients(b"s"),
            Some([4, 1, 3]),
            "the oldest falls off"
        );
        send(3);
        assert_eq!(sessions.recent_clients(b"s"), Some([3, 4, 1]));
    }

    #[test]
    fn the_table_never_exceeds_its_cap_and_known_sessions_still_work() {
        let sessions = Sessions::<()>::new(2);
        for key in [&b"a"[..], b"b"] {
            assert_eq!(
                sessions.locate(key, 1, 0, || Ok((0, 1, ())), full),
                Ok((0, 1))
            );
        }
        let refused = sessions.locate(b"c", 1, 0, || panic!("not placed when full"), full);
        assert_eq!(refused, Err("full"));
        assert_eq!(sessions.count(), 2);
        assert_eq!(sessions.recent_clients(b"c"), None);
        assert_eq!(
            sessions.locate(b"a", 2, 0, || panic!("already placed"), full),
            Ok((0, 1))
        );
    }

    #[test]
    fn relocation_moves_and_removes_only_what_it_is_told_and_keeps_the_count() {
        let sessions = Sessions::<()>::new(10);
        for (key, pool, slot) in [(&b"a"[..], 0, 1), (b"b", 0, 3), (b"c", 1, 0)] {
            sessions
                .locate(key, 1, 0, || Ok((pool, slot, ())), full)
                .unwrap();
        }
        let mut seen = Vec::new();
        let removed = sessions.relocate(
            |_, p| match (p.pool, p.slot) {
                (0, 3) => Relocation::Move(0),
                (1, _) => Relocation::Remove,
                _ => Relocation::Keep,
            },
            |key, p, to| seen.push((key.to_vec(), p.slot, to)),
        );
        assert_eq!(removed, 1);
        seen.sort();
        assert_eq!(
            seen,
            [(b"b".to_vec(), 3, Some(0)), (b"c".to_vec(), 0, None)]
        );
        assert_eq!(sessions.placed(b"a"), Some((0, 1)), "kept");
        assert_eq!(sessions.placed(b"b"), Some((0, 0)), "moved");
        assert_eq!(sessions.placed(b"c"), None, "removed");
        assert_eq!(sessions.count(), 2);
        assert_eq!(
            sessions.locate(b"b", 2, 0, || panic!("still placed"), full),
            Ok((0, 0))
        );
    }

    #[test]
    fn idle_sessions_expire_and_a_returning_one_is_placed_again() {
        let sessions = Sessions::<()>::new(2);
        let place = || Ok((0, 5, ()));
        sessions.locate(b"old", 1, 10, place, full).unwrap();
        sessions.locate(b"new", 1, 10, place, full).unwrap();
        sessions
            .locate(b"new", 1, 12, || panic!("placed"), full)
            .unwrap();
        let mut gone = Vec::new();
        assert_eq!(
            sessions.expire(11, 1, |_, p| gone.push((p.pool, p.slot))),
            0,
            "1 s is not more than 1 s"
        );
        assert_eq!(
            sessions.expire(12, 1, |_, p| gone.push((p.pool, p.slot))),
            1
        );
        assert_eq!(gone, [(0, 5)]);
        assert_eq!(sessions.count(), 1);
        assert_eq!(sessions.recent_clients(b"old"), None);
        // The room it left takes a new session; the old one returns by hashing again.
        sessions.locate(b"third", 1, 12, place, full).unwrap();
        assert_eq!(sessions.locate(b"old", 1, 12, place, full), Err("full"));
        assert_eq!(sessions.expire(20, 1, |_, _| ()), 2);
        assert_eq!(sessions.count(), 0);
        assert_eq!(sessions.locate(b"old", 1, 20, place, full), Ok((0, 5)));
    }
}
