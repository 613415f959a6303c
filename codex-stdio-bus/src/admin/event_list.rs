//! The dashboard's `events` frame, its event list: the recent worker events (starts, restarts,
//! exits, not-ready kills, restart-limit trips, stderr lines) from [`crate::core::worker_events`],
//! read once per tick of the dashboard's stream.

use serde_json::{json, Value};

use crate::router::Router;

/// Events of each ring sent per frame (lifecycle and stderr each): the page merges frames by
/// `seq`, so it misses an event only if more than this many of its ring happen in one tick.
pub(super) const FRAME_EVENTS: usize = 50;

/// `{"events": [{"seq", "ago_sec", "pool", "slot", "kind", "text"}, …], "dropped": n,
/// "limited": n}`: the last [`FRAME_EVENTS`] lifecycle events and stderr lines, oldest (lowest
/// `seq`) first; `dropped` counts events overwritten in the daemon's rings, `limited` stderr
/// lines never kept (over the per-worker rate), both since the daemon started.
pub(super) fn frame(router: &Router) -> Value {
    let recent = router.worker_events().recent(FRAME_EVENTS);
    let events: Vec<Value> = recent
        .events
        .iter()
        .map(|event| {
            json!({
                "seq": event.seq,
                "ago_sec": event.at.elapsed().as_secs_f64(),
                "pool": &*event.pool,
                "slot": event.slot,
                "kind": event.kind.as_str(),
                "text": &*event.text,
            })
        })
        .collect();
    json!({"events": events, "dropped": recent.dropped, "limited": recent.limited})
}

#[cfg(test)]
mod tests {
    use codex_bus_config::Config;

    use super::*;
    use crate::core::worker_events::EventKind;

    #[test]
    fn the_frame_lists_recent_events_oldest_first() {
        let router = Router::new(&Config::single_pool("p", "cat", &[], 2));
        let slot = &router.pools()[0].slots[1];
        slot.record(EventKind::Start, "pid 7");
        for i in 0..FRAME_EVENTS + 1 {
            slot.record(EventKind::Stderr, &format!("line {i}"));
        }
        slot.record_exit(EventKind::Exit, "signal: 9 (SIGKILL)".to_owned());
        let frame = frame(&router);
        let events = frame["events"].as_array().unwrap();
        assert_eq!(events.len(), FRAME_EVENTS + 2, "{frame}");
        assert_eq!(events[0]["kind"], "start");
        assert_eq!(events[0]["pool"], "p");
        assert_eq!(events[0]["slot"], 1);
        assert_eq!(
            events[1]["text"], "line 1",
            "the oldest line beyond 50 left out"
        );
        let last = &events[FRAME_EVENTS + 1];
        assert_eq!(last["kind"], "exit");
        assert_eq!(last["text"], "signal: 9 (SIGKILL)");
        assert!(last["ago_sec"].as_f64().unwrap() >= 0.0);
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(
            (frame["dropped"].as_u64(), frame["limited"].as_u64()),
            (Some(0), Some(0))
        );
    }
}
