//! Request deadlines of one pool: a request past `request_timeout_sec`, or waiting longer than
//! `queue_timeout_sec` for its slot's worker to start, gets a `timeout` error reply.
//!
//! One task per pool scans the pending tables on a tick rather than arming a timer per request:
//! the hot path stays free of timer bookkeeping, and a deadline is met within one tick.

use std::sync::Arc;
use std::time::{Duration, Instant};

use codex_bus_config::PoolConfig;
use codex_bus_protocol::ErrorKind;
use tokio::time::MissedTickBehavior;

use super::instance::StopOrder;
use crate::core::sink::WorkerSink;
use crate::core::slot::Deadline;
use crate::router::pool::{Pool, Pools};

/// Shortest scan period: a 1 s timeout is met within 10 %.
const MIN_TICK: Duration = Duration::from_millis(100);

/// Longest scan period, so a 30 s queue deadline is met within about a second.
const MAX_TICK: Duration = Duration::from_secs(1);

/// The timeouts of a pool's config: `request_timeout_sec` (none if 0), `queue_timeout_sec`, and
/// the scan period that meets them.
fn timeouts(config: &PoolConfig) -> (Option<Duration>, Duration, Duration) {
    let settings = &config.supervision;
    let request = (settings.request_timeout_sec > 0)
        .then(|| Duration::from_secs(settings.request_timeout_sec));
    let queue = Duration::from_secs(settings.queue_timeout_sec);
    let tick = (request.map_or(queue, |r| r.min(queue)) / 10).clamp(MIN_TICK, MAX_TICK);
    (request, queue, tick)
}

/// Enforces the deadlines of `pool` until the daemon orders the workers to stop; expired requests
/// are answered through `sink`. Each scan reads the pool's version in force in `pools`, which
/// holds `pool` already: a reload may change its timeouts and add slots (retired slots are still
/// scanned: they may hold requests).
pub(crate) async fn enforce(
    pools: Arc<Pools>,
    pool: Arc<Pool>,
    sink: Arc<dyn WorkerSink>,
    mut stop: StopOrder,
) {
    let index = pool.index;
    let mut config = pool.config.clone();
    let (mut request, mut queue, mut tick) = timeouts(&config);
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = super::stop_requested(&mut stop) => return,
        }
        // Pools are never taken out of the table, only marked removed.
        let Some(pool) = pools.get(index) else {
            return;
        };
        if !Arc::ptr_eq(&pool.config, &config) {
            config = pool.config.clone();
            let period = tick;
            (request, queue, tick) = timeouts(&config);
            if tick != period {
                ticks = tokio::time::interval(tick);
                ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            }
        }
        let now = Instant::now();
        for slot in pool.slots.iter().filter(|s| s.in_flight() > 0) {
            let (by_request, by_queue): (Vec<_>, Vec<_>) = slot
                .expire(now, request, queue)
                .into_iter()
                .partition(|(_, deadline)| *deadline == Deadline::Request);
            for (expired, deadline) in
                [(by_request, Deadline::Request), (by_queue, Deadline::Queue)]
            {
                if expired.is_empty() {
                    continue;
                }
                tracing::warn!(
                    ?slot,
                    requests = expired.len(),
                    detail = deadline.detail(),
                    "requests timed out"
                );
                let pending = expired.into_iter().map(|(p, _)| p).collect();
                sink.fail(pending, ErrorKind::Timeout, Some(deadline.detail()));
            }
        }
    }
}
