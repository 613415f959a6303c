//! Layer 5, the admin endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz`, `/status` and the
//! dashboard (`/ui`, `/ui/events`, `/` redirecting to `/ui`), rendered from the state the lower
//! layers keep.
//!
//! Served by axum over hyper (HTTP/1.1): the exporter's own listener answers every path with
//! metrics, probes need their own paths on the same port, and the WebSocket front and the
//! dashboard of later issues share this stack. `GET` and `HEAD` are answered; other methods get
//! 405 with an `Allow` header.
//!
//! Imports: the router (to read pools, slots and clients), the core and the metrics leaf.

mod event_list;
mod fetch;
mod rates;
mod scrape;
pub mod status;
mod ui;

pub use fetch::{fetch, TOKEN_VARIABLE};

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::auth::AdminBearer;
use crate::error::Error;
use crate::io::probes::{self, json_answer as json, PLAIN_TEXT};
use crate::io::tls::Tls;
use crate::io::ACCEPT_RETRY;
use crate::router::Router;

/// How long a client may take to send its request head (a connection that sends nothing is
/// closed then, so idle connections cannot pile up).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Smallest read buffer hyper allows; a request head larger than this is refused (431).
const MAX_HEAD: usize = 8 * 1024;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What every admin request reads.
#[derive(Clone)]
struct Admin {
    router: Arc<Router>,
    handle: PrometheusHandle,
    /// `metrics.bearer_sha256`: the token `/metrics`, `/status` and the dashboard require, if
    /// any.
    bearer: Option<Arc<AdminBearer>>,
    /// The dashboard's shared status stream.
    feed: Arc<ui::Feed>,
}

/// The challenge of a 401 from `/metrics` and `/status`, read by programs.
const BEARER_CHALLENGE: &str = "Bearer";

/// The challenge of a 401 from the dashboard: a browser answers it with its login prompt, then
/// sends the typed token as the Basic password with the page and its event stream.
const BROWSER_CHALLENGE: &str = "Basic realm=\"codex-stdio-bus\", charset=\"UTF-8\"";

impl Admin {
    /// `None` when the request may read `/metrics`, `/status` or the dashboard, else the 401
    /// answer, whose `WWW-Authenticate` is `challenge`.
    fn refuse_with(&self, headers: &HeaderMap, challenge: &'static str) -> Option<Response> {
        let bearer = self.bearer.as_deref()?;
        let admitted = headers
            .get(header::AUTHORIZATION)
            .is_some_and(|value| bearer.admits(value.as_bytes()));
        (!admitted).then(|| {
            (
                StatusCode::UNAUTHORIZED,
                [
                    (header::CONTENT_TYPE, PLAIN_TEXT),
                    (header::WWW_AUTHENTICATE, challenge),
                ],
                "unauthorized: send Authorization: Bearer <token>, or Basic with the token as \
                 password (metrics.bearer_sha256)\n",
            )
                .into_response()
        })
    }

    /// [`Admin::refuse_with`] the bearer challenge, for programs.
    fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        self.refuse_with(headers, BEARER_CHALLENGE)
    }
}

/// Binds the admin endpoint (before workers start, like the client listener).
pub async fn bind(address: &str) -> Result<TcpListener, Error> {
    let cannot = |e| Error::bind(format!("cannot listen for metrics on {address}"), e);
    let listener = TcpListener::bind(address).await.map_err(cannot)?;
    let local = listener.local_addr().map_err(cannot)?;
    tracing::info!(transport = "metrics", addr = %local, "listening");
    Ok(listener)
}

/// Serves admin requests for the life of the daemon (through the drain too: `/readyz` then says
/// 503, which is what an orchestrator needs to see). With `bearer`, `/metrics`, `/status`, `/ui`
/// and `/ui/events` require it; `/healthz` and `/readyz` stay open for probes, which cannot send
/// one, and so does the redirect from `/`. With `tls` (`metrics.tls`) every connection is HTTPS,
/// its handshake done in the connection's own task (a slow one holds no other).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    router: Arc<Router>,
    handle: PrometheusHandle,
    bearer: Option<AdminBearer>,
) {
    // Always, so that a page opened now shows the last minutes (cost: `rates`' module docs).
    tokio::spawn(rates::sample(router.clone()));
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_document))
        .route("/", get(ui::root))
        .route("/ui", get(ui::page))
        .route("/ui/events", get(ui::events))
        .fallback(not_found)
        .with_state(Admin {
            router,
            handle,
            bearer: bearer.map(Arc::new),
            feed: Arc::new(ui::Feed::new()),
        });
    let service = TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let (http, service, tls) = (http.clone(), service.clone(), tls.clone());
        tokio::spawn(async move {
            let served = match tls {
                Some(tls) => match tls.accept(stream, peer).await {
                    Some(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                    None => return,
                },
                None => http.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(error) = served {
                tracing::debug!(%error, "metrics request failed");
            }
        });
    }
}

/// `GET /metrics`: the exposition text, with the state gauges refreshed first.
async fn metrics(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Some(refused) = admin.refuse(&headers) {
        return refused;
    }
    let text = scrape::render(&admin.handle, &admin.router);
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response()
}

/// `GET /healthz` (`io::probes`).
async fn healthz() -> Response {
    probes::healthz()
}

/// `GET /readyz` (`io::probes`).
async fn readyz(State(admin): State<Admin>) -> Response {
    probes::readyz(&admin.router)
}

/// `GET /status`: the status document.
async fn status_document(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Some(refused) = admin.refuse(&headers) {
        return refused;
    }
    let body = format!("{}\n", status::snapshot(&admin.router));
    json(StatusCode::OK, body)
}

/// Any other path.
async fn not_found() -> Response {
    let body = "not found: try /ui, /metrics, /healthz, /readyz or /status\n";
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, PLAIN_TEXT)],
        body,
    )
        .into_response()
}
