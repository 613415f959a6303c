//! The probes every HTTP port of the daemon answers, the admin endpoint's and each WebSocket
//! listener's (as `codex app-server --listen ws://` answers them on its own port): `/healthz`
//! and `/readyz`, so a load balancer can check a node on the port it sends clients to.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::router::Router;

/// Content type of the plain-text answers.
pub(crate) const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// `GET /healthz`: 200 `ok`, the process answers.
pub(crate) fn healthz() -> Response {
    ([(header::CONTENT_TYPE, PLAIN_TEXT)], "ok\n").into_response()
}

/// `GET /readyz`: 200 `{"ready":true}` while every pool has a ready worker and no shutdown was
/// requested (the drain grace included), else 503 with what is not ready ([`Router::readiness`]).
pub(crate) fn readyz(router: &Router) -> Response {
    match router.readiness() {
        Ok(body) => json_answer(StatusCode::OK, body),
        Err(body) => json_answer(StatusCode::SERVICE_UNAVAILABLE, body),
    }
}

/// A JSON answer with `status`.
pub(crate) fn json_answer(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
