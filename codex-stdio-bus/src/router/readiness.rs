//! Readiness, the one answer every `/readyz` gives (the admin port's and each WebSocket port's):
//! whether a load balancer or an orchestrator should send this daemon new clients.
//!
//! It lives in the router, below the transports and the admin endpoint, so both can ask it.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::Router;
use crate::core::slot::SlotState;

impl Router {
    /// Stops advertising readiness, for good: `/readyz` answers 503 from now on, while requests
    /// are still served. The daemon calls it when a shutdown is requested, before the grace of
    /// `limits.drain_grace_sec` in which balancers take this node out of rotation; the drain
    /// itself ([`Router::begin_drain`]) implies it.
    pub(crate) fn leave_rotation(&self) {
        self.leaving.store(true, Ordering::SeqCst);
    }

    /// Whether a shutdown was requested (the grace or the drain runs).
    pub(crate) fn leaving(&self) -> bool {
        self.leaving.load(Ordering::Relaxed)
    }

    /// The answer of every `GET /readyz`, as its JSON body (newline-terminated): `Ok` with
    /// `{"ready":true}` (HTTP 200) while every pool has a ready worker and no shutdown was
    /// requested; else `Err` (HTTP 503) with `{"ready":false,"draining":bool,"pools_not_ready":
    /// [{"pool","ready_workers":0,"slots":[state…]}]}`, `draining` true from the shutdown request
    /// on, the grace included. Every front answers with this, so they cannot disagree.
    pub(crate) fn readiness(&self) -> Result<String, String> {
        let not_ready: Vec<Value> = self
            .pools()
            .iter()
            .filter(|pool| !pool.is_removed())
            .filter_map(|pool| {
                let states: Vec<SlotState> =
                    pool.active_slots().iter().map(|s| s.state()).collect();
                let ready = states.iter().any(|s| s.serves());
                let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
                (!ready).then(|| json!({"pool": &*pool.id, "ready_workers": 0, "slots": names}))
            })
            .collect();
        let leaving = self.leaving();
        if not_ready.is_empty() && !leaving {
            return Ok("{\"ready\":true}\n".to_owned());
        }
        let body = json!({"ready": false, "draining": leaving, "pools_not_ready": not_ready});
        Err(format!("{body}\n"))
    }
}
