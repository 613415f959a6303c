//! Places for children: a lane that needs a child gets one while fewer than `--max-children`
//! are alive; otherwise it waits for a child that is being stopped, makes room by stopping the
//! least recently used idle child, or, when every child is busy, has its requests refused with a
//! retryable error instead of waiting for a place that may never come.

use std::time::Instant;

use codex_bus_worker_io::log;

use super::lane::Phase;
use super::{Effects, LaneKey, Layout, Manager};
use crate::app_server::bridge::Out;
use crate::app_server::errors::WorkerError;

impl Manager {
    /// Gives the waiting lanes children, in the order they began to wait.
    pub(super) fn seat(&mut self, now: Instant, fx: &mut Effects) {
        if self.seekers.is_empty() {
            return;
        }
        let max = match self.config.layout {
            Layout::Shared => 1,
            Layout::PerSession { max_children, .. } => max_children,
        };
        let alive = self.lanes.values().filter(|lane| lane.is_alive()).count();
        // Children already on their way out: each makes room for one waiting lane.
        let mut leaving = self
            .lanes
            .values()
            .filter(|lane| matches!(lane.phase, Phase::Stopping { .. }))
            .count();
        let mut free = max.saturating_sub(alive);
        for key in std::mem::take(&mut self.seekers) {
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            let Phase::Down { not_before } = lane.phase else {
                lane.seeking = false;
                continue;
            };
            let wants = self.config.layout == Layout::Shared || lane.bridge.wants_child();
            if !wants || self.draining || self.failed {
                lane.seeking = false;
                continue;
            }
            if not_before > now {
                self.seekers.push(key);
            } else if free > 0 {
                free -= 1;
                self.start(&key, now, fx);
            } else if leaving > 0 {
                leaving -= 1;
                self.seekers.push(key);
            } else if let Some(victim) = self.least_recently_used_idle() {
                if let Some(lane) = self.lanes.get_mut(&victim) {
                    lane.stop(&format!("evicted: all {max} children in use"), now, fx);
                }
                self.seekers.push(key);
            } else {
                self.refuse(&key, max, now, fx);
            }
        }
    }

    /// Starts a child for the lane `key`.
    fn start(&mut self, key: &LaneKey, now: Instant, fx: &mut Effects) {
        let Some(lane) = self.lanes.get_mut(key) else {
            return;
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        self.by_generation.insert(generation, key.clone());
        fx.spawn.push(super::Spawn {
            generation,
            dir: lane.dir.clone(),
        });
        lane.started(generation, now, fx);
    }

    /// The running child that has been idle the longest.
    fn least_recently_used_idle(&self) -> Option<LaneKey> {
        self.lanes
            .iter()
            .filter(|(_, lane)| matches!(lane.phase, Phase::Running { .. }))
            .filter_map(|(key, lane)| Some((lane.idle_since?, key)))
            .min()
            .map(|(_, key)| key.clone())
    }

    /// Every child is busy: the requests waiting for one get `children_busy` (retryable).
    fn refuse(&mut self, key: &LaneKey, max: usize, now: Instant, fx: &mut Effects) {
        let Some(lane) = self.lanes.get_mut(key) else {
            return;
        };
        log::line(format_args!(
            "all {max} children are busy: refusing the requests for {}",
            lane.label
        ));
        lane.seeking = false;
        let mut out = Out::default();
        lane.bridge
            .fail_waiting(&WorkerError::ChildrenBusy(max), now, &mut out);
        lane.absorb(out, fx);
        self.settle(key, now, fx, false);
    }
}
