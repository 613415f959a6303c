//! The probes every HTTP port of the daemon answers, the admin endpoint's and each WebSocket
//! listener's (as `codex app-server --listen ws://` answers them on its own port): `/healthz`
//! and `/readyz`, so a load balancer can check a node on the port it sends clients to.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::router::Router;

/// Content type of the plain-text answers.
pub(crate) const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// `GET /healthz`: 200 `ok`, the process answers.
pub(crate) fn healthz() -> Response {
    ([(header::CONTENT_TYPE, PLAIN_TEXT)], "ok\n").into_response()
}

/// `GET /readyz`: 200 `{"ready":true}` while every pool has a ready worker and no drain runs,
/// else 503 with what is not ready.
pub(crate) fn readyz(router: &Router) -> Response {
    match readiness(router) {
        Ok(()) => json_answer(StatusCode::OK, "{\"ready\":true}\n".to_owned()),
        Err(body) => json_answer(StatusCode::SERVICE_UNAVAILABLE, format!("{body}\n")),
    }
}

/// Readiness: every pool has a ready worker and the daemon is not draining. `Err` carries the
/// JSON body naming what is not ready.
fn readiness(router: &Router) -> Result<(), Value> {
    let not_ready: Vec<Value> = router
        .pools()
        .iter()
        .filter_map(|pool| {
            let states: Vec<&str> = pool.slots.iter().map(|s| s.state().as_str()).collect();
            let ready = states.iter().filter(|s| **s == "ready").count();
            (ready == 0).then(|| json!({"pool": &*pool.id, "ready_workers": 0, "slots": states}))
        })
        .collect();
    if not_ready.is_empty() && !router.draining() {
        return Ok(());
    }
    Err(json!({"ready": false, "draining": router.draining(), "pools_not_ready": not_ready}))
}

/// A JSON answer with `status`.
pub(crate) fn json_answer(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
