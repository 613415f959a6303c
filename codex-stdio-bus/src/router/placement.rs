//! Where a session lives: xxh3 of its key, jump-hashed onto the pool's slot numbers, then remembered.
//!
//! Hashing onto slot *numbers* (not processes) means a restarted worker keeps its sessions. The sticky
//! table is the source of truth once a session is placed, so a later change in the number of slots
//! moves no live session; and because jump hashing is deterministic, a daemon that lost its table
//! places every session where it was before.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use twox_hash::XxHash3_64;

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

/// Where one session lives, and who spoke on it last.
pub struct Placement {
    /// Index of the pool.
    pub pool: usize,
    /// Slot number within the pool.
    pub slot: u32,
    /// The client that last sent on this session: worker-initiated messages go there.
    last_client: AtomicU64,
}

/// The sticky session table. Entries outlive connections, so a client that reconnects with the
/// same session id reaches the same worker.
#[derive(Default)]
pub struct Sessions {
    // SipHash (the default) rather than a fixed-seed hash: keys come from clients, and a fixed seed
    // would let one craft colliding session ids.
    table: DashMap<Box<[u8]>, Placement>,
}

impl Sessions {
    /// The session's (pool, slot), placing it with `place` on first sight; records `client` as the
    /// session's latest sender.
    pub fn locate<E>(
        &self,
        key: &[u8],
        client: u64,
        place: impl FnOnce() -> Result<(usize, u32), E>,
    ) -> Result<(usize, u32), E> {
        if let Some(found) = self.table.get(key) {
            if found.last_client.load(Ordering::Relaxed) != client {
                found.last_client.store(client, Ordering::Relaxed);
            }
            return Ok((found.pool, found.slot));
        }
        // First sight: only now is the key copied. Another client may have placed it meanwhile;
        // the entry API keeps the first placement.
        match self.table.entry(key.into()) {
            Entry::Occupied(found) => {
                let found = found.get();
                found.last_client.store(client, Ordering::Relaxed);
                Ok((found.pool, found.slot))
            }
            Entry::Vacant(vacant) => {
                let (pool, slot) = place()?;
                vacant.insert(Placement {
                    pool,
                    slot,
                    last_client: AtomicU64::new(client),
                });
                Ok((pool, slot))
            }
        }
    }

    /// The client that last sent on this session, if the session is known.
    pub fn last_client(&self, key: &[u8]) -> Option<u64> {
        self.table
            .get(key)
            .map(|p| p.last_client.load(Ordering::Relaxed))
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

    #[test]
    fn placement_is_sticky_and_tracks_the_last_client() {
        let sessions = Sessions::default();
        let first: Result<_, ()> = sessions.locate(b"s1", 7, || Ok((0, 3)));
        assert_eq!(first, Ok((0, 3)));
        let again: Result<_, ()> = sessions.locate(b"s1", 9, || panic!("already placed"));
        assert_eq!(again, Ok((0, 3)));
        assert_eq!(sessions.last_client(b"s1"), Some(9));
        assert_eq!(sessions.last_client(b"s2"), None);
        let refused = sessions.locate(b"s2", 1, || Err("no pool"));
        assert_eq!(refused, Err("no pool"));
        assert_eq!(
            sessions.last_client(b"s2"),
            None,
            "a refused placement leaves nothing behind"
        );
    }
}
