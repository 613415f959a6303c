//! A reload's change to the pools, applied to the routing table in one step: pools added, removed,
//! grown, shrunk or given a new worker config; sessions of removed slots moved; and the list of
//! what the supervisors must now do (start slots, retire slots, roll pools).
//!
//! Runs synchronously on the daemon's one thread, so no message is routed on a half-applied
//! change. What it leaves to others takes time (workers to start, drain and stop); it only
//! decides.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use codex_bus_config::PoolConfig;

use super::placement::{slot_for, Relocation};
use super::pool::{Pool, MAX_POOLS};
use super::{default_index, Router, NO_DEFAULT};
use crate::core::address::SlotAddress;

/// What a reload changed in the routing table, and what the supervisors must do about it.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Slots that need a supervisor now: of pools added or grown (they start with their pool's new
    /// config).
    pub started: Vec<SlotAddress>,
    /// Slots removed (shrunk pools, removed pools): they take no more sessions, finish what they
    /// hold and stop.
    pub retired: Vec<SlotAddress>,
    /// Pools whose worker config changed in more than `instances`, with the config their slots
    /// run now (`previous`), so a failed roll can go back to it: their kept slots are rolled one
    /// at a time.
    pub rolled: Vec<Rolled>,
    /// Sessions moved off removed slots onto the pool's remaining ones.
    pub moved_sessions: usize,
    /// Sessions of removed pools taken out of the table (their next message is placed anew).
    pub dropped_sessions: usize,
    /// One line per change, for the log and the reload's answer, e.g. `pool 'codex': instances 2
    /// -> 4`.
    pub described: Vec<String>,
}

/// A pool whose running slots must move onto a new config.
#[derive(Debug)]
pub(crate) struct Rolled {
    /// The pool's index.
    pub pool: u32,
    /// Its slots that run the previous config (the kept ones; new slots start on the new one).
    pub slots: u32,
    /// The config they run now.
    pub previous: Arc<PoolConfig>,
    /// The config they move to.
    pub next: Arc<PoolConfig>,
}

impl Changes {
    /// Whether the reload changed nothing in the pools.
    pub(crate) fn is_empty(&self) -> bool {
        self.described.is_empty()
    }
}

impl Router {
    /// Puts `pools` (a validated config's pools, in its order) in force, with `default_pool`
    /// (`routing.default_pool`, which names one of them) as the pool of messages that name none:
    /// a pool is known by its id, so a renamed pool is one removed and one added. Sessions stay
    /// where they are, except those of removed slots: moved to `slot_for(key, new instances)` of
    /// their pool, or out of the table when their pool is gone.
    ///
    /// # Errors
    ///
    /// Nothing is changed when the table would need more than [`MAX_POOLS`] pools over the
    /// daemon's life; the message says so.
    pub(crate) fn reconfigure(
        &self,
        pools: &[PoolConfig],
        default_pool: Option<&str>,
    ) -> Result<Changes, String> {
        let current = Arc::clone(&self.pools.load());
        let added = pools
            .iter()
            .filter(|p| !current.iter().any(|c| *c.id == *p.id))
            .count();
        if current.len() + added > MAX_POOLS {
            return Err(format!(
                "the daemon has known {} pools and this config adds {added}; at most {MAX_POOLS} \
                 pools (removed ones included) can be known before a restart",
                current.len()
            ));
        }
        let mut changes = Changes::default();
        let mut table: Vec<Arc<Pool>> = current.iter().cloned().collect();
        let mut shrunk: Vec<(usize, u32)> = Vec::new();
        let mut removed: Vec<usize> = Vec::new();
        for wanted in pools {
            let config = Arc::new(wanted.clone());
            let at = table.iter().position(|p| *p.id == *wanted.id);
            let Some(at) = at else {
                let index = table.len() as u32;
                let pool = Pool::new(
                    index,
                    wanted.clone(),
                    self.worker_queue,
                    &self.worker_events,
                );
                changes.started.extend(addresses(index, 0..pool.active));
                changes.described.push(format!(
                    "pool '{}' added with {}",
                    wanted.id,
                    slots(wanted.instances)
                ));
                table.push(Arc::new(pool));
                continue;
            };
            let old = table[at].clone();
            if old.is_removed() {
                let pool = old.reconfigured(config, self.worker_queue, &self.worker_events);
                changes.started.extend(addresses(old.index, 0..pool.active));
                changes.described.push(format!(
                    "pool '{}' added again with {}",
                    wanted.id,
                    slots(wanted.instances)
                ));
                table[at] = Arc::new(pool);
                continue;
            }
            if *old.config == *wanted {
                continue;
            }
            let (before, after) = (old.active, wanted.instances);
            if after > before {
                changes.started.extend(addresses(old.index, before..after));
            } else if after < before {
                changes.retired.extend(addresses(old.index, after..before));
                shrunk.push((at, after));
            }
            if before != after {
                changes.described.push(format!(
                    "pool '{}': instances {before} -> {after}",
                    wanted.id
                ));
            }
            let mut same_but_size = (*old.config).clone();
            same_but_size.instances = after;
            if same_but_size != *wanted {
                changes.rolled.push(Rolled {
                    pool: old.index,
                    slots: before.min(after),
                    previous: old.config.clone(),
                    next: config.clone(),
                });
                changes.described.push(format!(
                    "pool '{}': {} changed; rolling restart of {}",
                    wanted.id,
                    changed_keys(&same_but_size, wanted).join(", "),
                    slots(before.min(after))
                ));
            }
            table[at] = Arc::new(old.reconfigured(config, self.worker_queue, &self.worker_events));
        }
        for (at, pool) in current.iter().enumerate() {
            if pool.is_removed() || pools.iter().any(|p| *p.id == *pool.id) {
                continue;
            }
            changes
                .retired
                .extend(addresses(pool.index, 0..pool.active));
            changes
                .described
                .push(format!("pool '{}' removed", pool.id));
            table[at] = Arc::new(pool.removed());
            removed.push(at);
        }
        let default = default_index(&table, default_pool);
        let was = self.default_pool.swap(default, Ordering::Relaxed);
        if was != default {
            let name = |index: u32| match table.get(index as usize) {
                Some(pool) => format!("'{}'", pool.id),
                None => "none".to_owned(),
            };
            changes.described.push(format!(
                "routing.default_pool: {} -> {}",
                name(was),
                name(default)
            ));
        }
        let present = table.iter().filter(|p| !p.is_removed()).count();
        if default == NO_DEFAULT
            && present > 1
            && current.iter().filter(|p| !p.is_removed()).count() == 1
        {
            // Valid, but it changes what clients that name no pool get: say so where it is read.
            changes.described.push(
                "several pools and no routing.default_pool: a message that names no pool is now \
                 refused with pool_required"
                    .to_owned(),
            );
        }
        self.pools.replace(table);
        self.relocate_sessions(&shrunk, &removed, &mut changes);
        Ok(changes)
    }

    /// Puts pool `index` back on `config` at its current size, after a roll onto a newer config
    /// failed: what the pool runs and what the table says agree again, for slots started later
    /// and for the next reload's comparison.
    pub(crate) fn restore_config(&self, index: u32, config: Arc<PoolConfig>) {
        let mut table: Vec<Arc<Pool>> = self.pools.load().iter().cloned().collect();
        let Some(pool) = table.get(index as usize).cloned() else {
            return;
        };
        let mut config = (*config).clone();
        config.instances = pool.active;
        let restored = pool.reconfigured(Arc::new(config), self.worker_queue, &self.worker_events);
        table[index as usize] = Arc::new(restored);
        self.pools.replace(table);
    }

    /// Moves the sessions of the slots `shrunk` pools lost, and drops those of `removed` pools
    /// (both by index), counting them into `changes`.
    fn relocate_sessions(&self, shrunk: &[(usize, u32)], removed: &[usize], changes: &mut Changes) {
        if shrunk.is_empty() && removed.is_empty() {
            return;
        }
        let pools = self.pools.load();
        let (mut moved, mut dropped) = (0, 0);
        self.sessions.relocate(
            |key, placement| {
                if removed.contains(&placement.pool) {
                    return Relocation::Remove;
                }
                match shrunk.iter().find(|(at, _)| *at == placement.pool) {
                    Some(&(_, active)) if placement.slot >= active => {
                        Relocation::Move(slot_for(key, active))
                    }
                    _ => Relocation::Keep,
                }
            },
            |_, placement, to| {
                let slots = &pools[placement.pool].slots;
                slots[placement.slot as usize].forget_session();
                match to {
                    Some(slot) => {
                        slots[slot as usize].count_session();
                        moved += 1;
                    }
                    None => {
                        placement.owner.session_gone();
                        dropped += 1;
                    }
                }
            },
        );
        if dropped > 0 {
            self.tenants.prune();
        }
        changes.moved_sessions = moved;
        changes.dropped_sessions = dropped;
    }
}

/// `n` slots, in words (`1 slot`, `2 slots`).
pub(crate) fn slots(n: u32) -> String {
    match n {
        1 => "1 slot".to_owned(),
        n => format!("{n} slots"),
    }
}

/// The keys of a pool's config (as the file writes them) whose values differ between `old` and
/// `new`, in the file's order, e.g. `["args", "env"]`.
fn changed_keys(old: &PoolConfig, new: &PoolConfig) -> Vec<String> {
    let as_object = |pool: &PoolConfig| match serde_json::to_value(pool) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (old, new) = (as_object(old), as_object(new));
    let mut keys: Vec<String> = new
        .keys()
        .chain(old.keys().filter(|k| !new.contains_key(*k)))
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    keys.dedup();
    keys
}

/// The addresses of slots `range` of pool `pool`.
fn addresses(pool: u32, range: std::ops::Range<u32>) -> impl Iterator<Item = SlotAddress> {
    range.map(move |slot| SlotAddress { pool, slot })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use codex_bus_config::Config;

    use super::*;
    use crate::core::client::Transport;
    use crate::core::principal::Principal;

    fn pools(text: &str) -> Vec<PoolConfig> {
        let text = format!(r#"{{"pools":[{text}]}}"#);
        Config::from_json_str(&text, "t").unwrap().pools
    }

    /// Sends one request on each of `sessions`; returns each session's (pool, slot).
    async fn place(router: &Router, sessions: &[String]) -> Vec<(usize, u32)> {
        let client = router.connect(Transport::Tcp, Principal::anonymous("tcp"), None);
        for (i, session) in sessions.iter().enumerate() {
            let line = format!(r#"{{"id":{i},"method":"m","sessionId":"{session}"}}"#);
            router
                .client_message(&client, line.as_bytes(), Instant::now())
                .await;
        }
        sessions
            .iter()
            .map(|s| router.sessions.placed(s.as_bytes()).unwrap())
            .collect()
    }

    fn sessions(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    #[tokio::test]
    async fn growing_keeps_every_session_and_shrinking_moves_only_those_of_removed_slots() {
        let router = Router::new(&Config::single_pool("p", "cat", &[], 2));
        let names = sessions(64);
        let before = place(&router, &names).await;

        let grown = router
            .reconfigure(&pools(r#"{"id":"p","command":"cat","instances":4}"#), None)
            .unwrap();
        let started: Vec<u32> = grown.started.iter().map(|a| a.slot).collect();
        assert_eq!(started, [2, 3]);
        assert!(grown.retired.is_empty() && grown.rolled.is_empty());
        assert_eq!(grown.described, ["pool 'p': instances 2 -> 4"]);
        assert_eq!(router.pools()[0].active, 4);
        let after_growth: Vec<_> = names
            .iter()
            .map(|s| router.sessions.placed(s.as_bytes()).unwrap())
            .collect();
        assert_eq!(
            after_growth, before,
            "no live session moves when a pool grows"
        );

        // New sessions now hash over 4 slots; then shrink back to 2.
        let newer: Vec<String> = (0..64).map(|i| format!("n{i}")).collect();
        let placed = place(&router, &newer).await;
        assert!(
            placed.iter().any(|(_, slot)| *slot >= 2),
            "new slots take new sessions"
        );
        let shrunk = router
            .reconfigure(&pools(r#"{"id":"p","command":"cat","instances":2}"#), None)
            .unwrap();
        let retired: Vec<u32> = shrunk.retired.iter().map(|a| a.slot).collect();
        assert_eq!(retired, [2, 3]);
        let on_removed = placed.iter().filter(|(_, slot)| *slot >= 2).count();
        assert_eq!(shrunk.moved_sessions, on_removed);
        for (name, was) in newer.iter().chain(&names).zip(placed.iter().chain(&before)) {
            let now = router.sessions.placed(name.as_bytes()).unwrap();
            if was.1 < 2 {
                assert_eq!(now, *was, "{name} was on a kept slot: it stays");
            } else {
                assert_eq!(
                    now.1,
                    slot_for(name.as_bytes(), 2),
                    "{name} moves by the new hash"
                );
            }
        }
        let slots = &router.pools()[0].slots;
        assert_eq!(
            slots.len(),
            4,
            "removed slots stay addressable while they drain"
        );
        let counted: usize = slots.iter().map(|s| s.snapshot().sessions).sum();
        assert_eq!(counted, 128, "every session counted once, on its slot");
        assert_eq!(
            slots[2].snapshot().sessions + slots[3].snapshot().sessions,
            0
        );
    }

    #[tokio::test]
    async fn a_removed_pool_releases_its_sessions_and_comes_back_at_its_index() {
        let config = Config::from_json_str(
            r#"{"pools":[{"id":"a","command":"cat","instances":1},
                         {"id":"b","command":"cat","instances":2}],
                "routing":{"default_pool":"a"}}"#,
            "t",
        )
        .unwrap();
        let router = Router::new(&config);
        let client = router.connect(Transport::Tcp, Principal::anonymous("tcp"), None);
        let line = br#"{"id":1,"method":"m","sessionId":"x","pool":"b"}"#;
        router.client_message(&client, line, Instant::now()).await;
        assert_eq!(router.sessions.placed(b"x").map(|p| p.0), Some(1));

        let only_a = pools(r#"{"id":"a","command":"cat","instances":1}"#);
        let removed = router.reconfigure(&only_a, Some("a")).unwrap();
        assert_eq!(removed.described, ["pool 'b' removed"]);
        assert_eq!(removed.retired.len(), 2);
        assert_eq!(removed.dropped_sessions, 1);
        assert_eq!(router.sessions.placed(b"x"), None);
        assert!(router.pools()[1].is_removed());
        assert!(
            !router.pools()[1].all_down(),
            "a removed pool is not a failed one"
        );

        let both = pools(
            r#"{"id":"a","command":"cat","instances":1},{"id":"b","command":"cat","instances":3}"#,
        );
        let back = router.reconfigure(&both, Some("a")).unwrap();
        assert_eq!(back.described, ["pool 'b' added again with 3 slots"]);
        assert!(back.started.iter().all(|a| a.pool == 1));
        assert_eq!(back.started.len(), 3);
        assert_eq!(
            router.pools().len(),
            2,
            "the index is taken back, not a new one"
        );
    }

    #[tokio::test]
    async fn a_changed_worker_config_rolls_the_kept_slots_and_restoring_undoes_it() {
        let router = Router::new(&Config::single_pool("p", "cat", &[], 3));
        let changed = router
            .reconfigure(
                &pools(r#"{"id":"p","command":"cat","args":["-u"],"instances":2}"#),
                None,
            )
            .unwrap();
        assert_eq!(changed.rolled.len(), 1);
        let rolled = &changed.rolled[0];
        assert_eq!((rolled.pool, rolled.slots), (0, 2), "only kept slots roll");
        assert!(rolled.previous.args.is_empty());
        assert_eq!(rolled.next.args, ["-u"]);
        assert_eq!(changed.retired.len(), 1);
        assert_eq!(
            changed.described,
            [
                "pool 'p': instances 3 -> 2",
                "pool 'p': args changed; rolling restart of 2 slots"
            ],
            "the changed keys are named"
        );
        router.restore_config(0, rolled.previous.clone());
        let pool = router.pools()[0].clone();
        assert!(pool.config.args.is_empty());
        assert_eq!(pool.config.instances, 2, "restored at its current size");

        let same = router
            .reconfigure(&pools(r#"{"id":"p","command":"cat","instances":2}"#), None)
            .unwrap();
        assert!(same.is_empty(), "{:?}", same.described);
    }

    #[test]
    fn any_pool_field_but_instances_rolls_the_pool_and_order_is_no_change() {
        let two =
            r#"{"id":"a","command":"cat","instances":2},{"id":"b","command":"cat","instances":1}"#;
        for change in [
            r#""args": ["-u"]"#,
            r#""env": {"K": "v"}"#,
            r#""cwd": "/""#,
            r#""ready_timeout_sec": 5"#,
            r#""roll_timeout_sec": 5"#,
            r#""restart_policy": "never""#,
            r#""no_new_privs": true"#,
            r#""umask": "0077""#,
        ] {
            let router = Router::new(
                &Config::from_json_str(&format!(r#"{{"pools":[{two}]}}"#), "t").unwrap(),
            );
            let reordered = pools(
                r#"{"id":"b","command":"cat","instances":1},{"id":"a","command":"cat","instances":2}"#,
            );
            assert!(
                router.reconfigure(&reordered, None).unwrap().is_empty(),
                "pool order is no change"
            );
            let changed = pools(&format!(
                r#"{{"id":"a","command":"cat","instances":2,{change}}},{{"id":"b","command":"cat","instances":1}}"#
            ));
            let other_command = pools(
                r#"{"id":"a","command":"tac","instances":2},{"id":"b","command":"cat","instances":1}"#,
            );
            assert_eq!(other_command[0].command, "tac");
            let changes = router.reconfigure(&changed, None).unwrap();
            let rolled: Vec<u32> = changes.rolled.iter().map(|r| r.pool).collect();
            assert_eq!(rolled, [0], "{change}");
            assert!(
                changes.started.is_empty() && changes.retired.is_empty(),
                "{change}"
            );
            let changes = router.reconfigure(&other_command, None).unwrap();
            assert_eq!(changes.rolled.len(), 1, "a new command rolls too");
        }
    }

    #[test]
    fn the_pool_table_is_bounded() {
        let router = Router::new(&Config::single_pool("p", "cat", &[], 1));
        let many: Vec<String> = (0..MAX_POOLS)
            .map(|i| format!(r#"{{"id":"q{i}","command":"cat","instances":1}}"#))
            .collect();
        let refused = router
            .reconfigure(&pools(&many.join(",")), None)
            .unwrap_err();
        assert!(refused.contains("at most 256 pools"), "{refused}");
        assert_eq!(router.pools().len(), 1, "nothing changed");
    }
}
