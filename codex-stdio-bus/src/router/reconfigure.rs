//! A reload's change to the pools, applied to the routing table in one step: pools added, removed,
//! grown, shrunk or given a new worker config; sessions of removed slots moved; and the list of
//! what the supervisors must now do (start slots, retire slots, roll pools).
//!
//! Runs synchronously on the daemon's one thread, so no message is routed on a half-applied
//! change. What it leaves to others takes time (workers to start, drain and stop); it only
//! decides.

use std::sync::Arc;

use codex_bus_config::PoolConfig;

use super::placement::{slot_for, Relocation};
use super::pool::{Pool, MAX_POOLS};
use super::Router;
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
    /// Puts `pools` (a validated config's pools, in its order) in force: a pool is known by its
    /// id, so a renamed pool is one removed and one added. Sessions stay where they are, except
    /// those of removed slots: moved to `slot_for(key, new instances)` of their pool, or out of
    /// the table when their pool is gone.
    ///
    /// # Errors
    ///
    /// Nothing is changed when the table would need more than [`MAX_POOLS`] pools over the
    /// daemon's life; the message says so.
    pub(crate) fn reconfigure(&self, pools: &[PoolConfig]) -> Result<Changes, String> {
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
                    "pool '{}' added with {} instances",
                    wanted.id, wanted.instances
                ));
                table.push(Arc::new(pool));
                continue;
            };
            let old = table[at].clone();
            if old.is_removed() {
                let pool = old.reconfigured(config, self.worker_queue, &self.worker_events);
                changes.started.extend(addresses(old.index, 0..pool.active));
                changes.described.push(format!(
                    "pool '{}' added again with {} instances",
                    wanted.id, wanted.instances
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
                    "pool '{}': worker config changed; rolling restart of {} slots",
                    wanted.id,
                    before.min(after)
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
        self.pools.replace(table);
        self.relocate_sessions(&shrunk, &removed, &mut changes);
        Ok(changes)
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

/// The addresses of slots `range` of pool `pool`.
fn addresses(pool: u32, range: std::ops::Range<u32>) -> impl Iterator<Item = SlotAddress> {
    range.map(move |slot| SlotAddress { pool, slot })
}
