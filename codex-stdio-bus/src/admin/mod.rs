//! Layer 5, the admin endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz`, `/status` and the
//! dashboard (`/ui`, `/ui/events`, `/` redirecting to `/ui`), rendered from the state the lower
//! layers keep; and two controls, `POST /reload` (re-read the config file and apply it) and
//! `POST /restart?pool=NAME` (roll a pool's workers), answered once they are complete.
//!
//! Served by axum over hyper (HTTP/1.1): the exporter's own listener answers every path with
//! metrics, probes need their own paths on the same port, and the WebSocket front and the
//! dashboard of later issues share this stack. The read paths answer `GET` and `HEAD`, the
//! controls `POST` only; any other method gets 405 with an `Allow` header naming those.
//!
//! The controls change what the daemon runs, so they are refused (403) unless
//! `metrics.bearer_sha256` is configured, and then need the token like `/metrics` (401): an
//! endpoint left open for scraping must not let anyone who reaches it restart workers.
//!
//! Imports: the router (to read pools, slots and clients), the core, the metrics leaf and the
//! reload interface it calls.

mod control;
mod event_list;
mod fetch;
mod rates;
mod scrape;
pub mod status;
mod ui;

pub use control::{report, Report};
pub use fetch::{encode, fetch, submit, Answer, TOKEN_VARIABLE};

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

use crate::auth::AdminCredentials;
use crate::error::Error;
use crate::io::capacity::HEADROOM;
use crate::io::probes::{self, json_answer as json, PLAIN_TEXT};
use crate::io::tls::Tls;
use crate::io::websocket::upgrade::decode;
use crate::io::ACCEPT_RETRY;
use crate::reload::{Outcome, Reload, ReloadResult};
use crate::router::Router;

/// How long a client may take to send its request head (a connection that sends nothing is
/// closed then, so idle connections cannot pile up).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write to a client may stay blocked (the client not reading) before its connection
/// is closed: a dashboard stream whose page stopped reading would otherwise keep its seat
/// ([`ui::MAX_STREAMS`]) and its connection ([`MAX_CONNECTIONS`]) for good, since hyper has no
/// write timeout of its own. A browser reads its event stream even in a background tab.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The kernel send buffer of an admin connection, in bytes (Linux doubles it): fixed rather than
/// autotuned (up to 4 MiB by default), so that a client that stops reading blocks a write, and
/// meets [`WRITE_TIMEOUT`], after seconds of dashboard frames rather than minutes.
const SEND_BUFFER: usize = 64 * 1024;

/// Smallest read buffer hyper allows; a request head larger than this is refused (431).
const MAX_HEAD: usize = 8 * 1024;

/// Admin connections served at once: room for every dashboard stream ([`ui::MAX_STREAMS`]) and
/// a few scrapes and probes. Each holds an fd, and the client listener's cap keeps only
/// [`HEADROOM`] fds free beyond the workers' (`io::capacity`): unbounded, a peer opening
/// connections faster than [`READ_TIMEOUT`] closes them took the fds a worker restart needs
/// (seen: `accept failed: Too many open files`). Beyond it the listener waits for a connection
/// to end before accepting the next (they queue in the kernel's backlog).
const MAX_CONNECTIONS: usize = ui::MAX_STREAMS + 8;

const _: () = assert!(
    (MAX_CONNECTIONS as u64) < HEADROOM,
    "admin connections must fit in the fds the client cap leaves free"
);

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What every admin request reads.
#[derive(Clone)]
struct Admin {
    router: Arc<Router>,
    handle: PrometheusHandle,
    /// `metrics.bearer_sha256` in force: the token `/metrics`, `/status`, the dashboard and the
    /// controls require, if any (a reload may replace it).
    bearer: Arc<AdminCredentials>,
    /// What `POST /reload` and `POST /restart` call.
    reload: Arc<dyn Reload>,
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
        let bearer = self.bearer.current()?;
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

    /// `None` when a request for the daemon's state (`/status`, `/ui`, `/ui/events`) may be
    /// answered: its `Host` is local or a token is configured ([`Admin::refuse_foreign_host`],
    /// 403), and it carries the token if one is ([`Admin::refuse_with`] `challenge`, 401).
    fn guard_state(&self, headers: &HeaderMap, challenge: &'static str) -> Option<Response> {
        self.refuse_foreign_host(headers)
            .or_else(|| self.refuse_with(headers, challenge))
    }

    /// `None` when a request for the status document (`/status`, `/ui`, `/ui/events`) may be
    /// answered whatever names its `Host`, else the 403 answer. Without `metrics.bearer_sha256`
    /// the endpoint (on loopback) trusts whoever connects, and a web page can connect too: a
    /// domain that an attacker re-points at 127.0.0.1 (DNS rebinding) is same-origin with its own
    /// page, which could then read the status (pids, pool ids, config path, worker stderr).
    /// Such a request names that domain in `Host`; a page the operator opens names an IP
    /// literal, `localhost` or a `*.localhost` name (RFC 6761: loopback only), which
    /// [`local_host`] admits, as it admits a request without `Host` (not a browser's). With a
    /// bearer token the rebound page cannot authenticate, so any `Host` is served.
    fn refuse_foreign_host(&self, headers: &HeaderMap) -> Option<Response> {
        if self.bearer.current().is_some() {
            return None;
        }
        let host = headers.get(header::HOST)?;
        (!local_host(host.as_bytes())).then(|| {
            (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, PLAIN_TEXT)],
                "forbidden: the Host header is not an IP address, localhost or *.localhost; \
                 open the dashboard by address (http://127.0.0.1:PORT/ui), or set \
                 metrics.bearer_sha256 to serve any host name\n",
            )
                .into_response()
        })
    }
}

impl Admin {
    /// `None` when a control request (`POST /reload`, `POST /restart`) may run: a token is
    /// configured and presented as a bearer token ([`crate::auth::AdminBearer::admits_bearer`]: Basic, which
    /// a browser would attach to a cross-site form's POST, is refused). Without one configured,
    /// 403 saying how to enable them; with a wrong or missing one, 401.
    fn guard_control(&self, headers: &HeaderMap) -> Option<Response> {
        let Some(bearer) = self.bearer.current() else {
            return Some(
                (
                    StatusCode::FORBIDDEN,
                    [(header::CONTENT_TYPE, PLAIN_TEXT)],
                    "forbidden: POST /reload and POST /restart need a bearer token; set \
                     metrics.bearer_sha256 (SIGHUP still reloads the config)\n",
                )
                    .into_response(),
            );
        };
        let admitted = headers
            .get(header::AUTHORIZATION)
            .is_some_and(|value| bearer.admits_bearer(value.as_bytes()));
        (!admitted).then(|| {
            (
                StatusCode::UNAUTHORIZED,
                [
                    (header::CONTENT_TYPE, PLAIN_TEXT),
                    (header::WWW_AUTHENTICATE, BEARER_CHALLENGE),
                ],
                "unauthorized: send Authorization: Bearer <token> (metrics.bearer_sha256)\n",
            )
                .into_response()
        })
    }

    /// Runs a control request to its end in a task of its own, so that a client that hangs up
    /// cannot cancel a reload halfway (hyper drops the handler of a closed connection).
    async fn control(
        &self,
        headers: &HeaderMap,
        run: impl FnOnce(Arc<dyn Reload>) -> tokio::task::JoinHandle<Outcome>,
    ) -> Response {
        if let Some(refused) = self.guard_control(headers) {
            return refused;
        }
        match run(self.reload.clone()).await {
            Ok(outcome) => answer(&outcome),
            Err(error) => {
                tracing::error!(%error, "reload task failed");
                let outcome = Outcome {
                    result: ReloadResult::Failed,
                    reason: Some(format!("the reload task failed: {error}")),
                    changes: Vec::new(),
                };
                answer(&outcome)
            }
        }
    }
}

/// The answer to a control request: `{"result": …, "reason": … (or null), "changes": […]}`,
/// with 200 for applied or unchanged, 409 busy, 422 rejected, 500 failed, 404 unknown pool.
fn answer(outcome: &Outcome) -> Response {
    let status = match outcome.result {
        ReloadResult::Applied | ReloadResult::Unchanged => StatusCode::OK,
        ReloadResult::Busy => StatusCode::CONFLICT,
        ReloadResult::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
        ReloadResult::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        ReloadResult::UnknownPool => StatusCode::NOT_FOUND,
    };
    let body = serde_json::json!({
        "result": outcome.result.label(),
        "reason": outcome.reason,
        "changes": outcome.changes,
    });
    json(status, format!("{body}\n"))
}

/// Whether a `Host` header value (`host[:port]`, RFC 9110 §7.2) names an IP literal (`[::1]`
/// for IPv6), `localhost` or a name under `.localhost`, in any case, with or without a trailing
/// dot; a name any DNS server can answer for is not local.
fn local_host(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let port_ok = |port: &str| port.is_empty() || port.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']').is_some_and(|(ip, tail)| {
            ip.parse::<std::net::Ipv6Addr>().is_ok()
                && (tail.is_empty() || tail.strip_prefix(':').is_some_and(port_ok))
        });
    }
    let host = match value.rsplit_once(':') {
        Some((host, port)) if port_ok(port) => host,
        Some(_) => return false,
        None => value,
    };
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
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
/// 503, which is what an orchestrator needs to see). With a bearer in force (`bearer`, which a
/// reload may replace), `/metrics`, `/status`, `/ui` and `/ui/events` require it; `/healthz` and
/// `/readyz` stay open for probes, which cannot send one, and so does the redirect from `/`.
/// `POST /reload` and `POST /restart` call `reload`, and only with a bearer
/// configured and presented. With `tls` (`metrics.tls`) every connection is HTTPS, its handshake
/// done in the connection's own task (a slow one holds no other).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    router: Arc<Router>,
    handle: PrometheusHandle,
    bearer: Arc<AdminCredentials>,
    reload: Arc<dyn Reload>,
) {
    // Always, so that a page opened now shows the last minutes (cost: `rates`' module docs).
    tokio::spawn(rates::sample(router.clone()));
    let app = app(router, handle, bearer, reload);
    let service = TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false);
    if let Some(tls) = &tls {
        tracing::info!(
            transport = "metrics",
            field = tls.field(),
            "speaking HTTPS only"
        );
    }
    let seats = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // The semaphore is never closed.
        let Ok(seat) = seats.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        if let Err(error) = setsockopt(&stream, sockopt::SndBuf, &SEND_BUFFER) {
            tracing::debug!(%error, "cannot set an admin connection's send buffer");
        }
        let (http, service, tls) = (http.clone(), service.clone(), tls.clone());
        tokio::spawn(async move {
            let served = match tls {
                Some(tls) => match tls.accept(stream, peer).await {
                    Some(stream) => {
                        let stream = write_deadline(stream);
                        http.serve_connection(TokioIo::new(stream), service).await
                    }
                    None => return,
                },
                None => {
                    let stream = write_deadline(stream);
                    http.serve_connection(TokioIo::new(stream), service).await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "metrics request failed");
            }
            drop(seat);
        });
    }
}

/// The admin endpoint's routes, over the state they share.
fn app(
    router: Arc<Router>,
    handle: PrometheusHandle,
    bearer: Arc<AdminCredentials>,
    reload: Arc<dyn Reload>,
) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_document))
        .route("/reload", post(reload_config))
        .route("/restart", post(restart_pool))
        .route("/", get(ui::root))
        .route("/ui", get(ui::page))
        .route("/ui/events", get(ui::events))
        .fallback(not_found)
        .with_state(Admin {
            router,
            handle,
            bearer,
            reload,
            feed: Arc::new(ui::Feed::new()),
        })
}

/// `stream` whose writes fail once blocked for [`WRITE_TIMEOUT`], which ends its connection.
fn write_deadline<S: AsyncRead + AsyncWrite>(stream: S) -> Pin<Box<TimeoutStream<S>>> {
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(WRITE_TIMEOUT));
    Box::pin(stream)
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
    if let Some(refused) = admin.guard_state(&headers, BEARER_CHALLENGE) {
        return refused;
    }
    let body = format!("{}\n", status::snapshot(&admin.router));
    json(StatusCode::OK, body)
}

/// `POST /reload`: re-reads the config file and applies it ([`Reload::reload`]).
async fn reload_config(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    admin
        .control(&headers, |reload| {
            tokio::spawn(async move { reload.reload().await })
        })
        .await
}

/// `POST /restart?pool=NAME`: rolls the workers of pool `NAME` (percent-decoded;
/// [`Reload::restart`]); 400 without one.
async fn restart_pool(
    State(admin): State<Admin>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let pool = uri.query().and_then(|query| {
        query.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name == "pool").then(|| decode(value))
        })
    });
    let pool = match pool {
        Some(Ok(pool)) if !pool.is_empty() => pool,
        _ => {
            // Before the guard: a usage error reveals nothing, and tells more than a 401 would.
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, PLAIN_TEXT)],
                "bad request: name the pool, POST /restart?pool=NAME\n",
            )
                .into_response();
        }
    };
    admin
        .control(&headers, move |reload| {
            tokio::spawn(async move { reload.restart(&pool).await })
        })
        .await
}

/// Any other path.
async fn not_found() -> Response {
    let body = "not found: try /ui, /metrics, /healthz, /readyz, /status, POST /reload or \
                POST /restart?pool=NAME\n";
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, PLAIN_TEXT)],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use tokio::io::AsyncWriteExt;

    use super::{local_host, write_deadline, WRITE_TIMEOUT};

    /// A client that stops reading: writes go on while its buffer has room, then one stays
    /// blocked, and fails when the deadline passes (which ends the connection and frees its
    /// seats); a client that reads again in time is not cut off.
    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_past_the_deadline_fails() {
        let (server, mut client) = tokio::io::duplex(64);
        let mut server = write_deadline(server);
        server
            .write_all(&[b'x'; 64])
            .await
            .expect("room for 64 bytes");

        // Blocked for less than the deadline, then the client reads: the write completes.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(WRITE_TIMEOUT / 2).await;
            let mut buffer = [0; 64];
            tokio::io::AsyncReadExt::read_exact(&mut client, &mut buffer)
                .await
                .unwrap();
            client
        });
        server.write_all(&[b'y'; 64]).await.expect("read in time");
        let _client = reader.await.unwrap();

        // Blocked for good: the deadline fails the write.
        let start = tokio::time::Instant::now();
        let error = server.write_all(&[b'z'; 64]).await.expect_err("never read");
        assert_eq!(error.kind(), ErrorKind::TimedOut, "{error}");
        assert_eq!(start.elapsed(), WRITE_TIMEOUT);
    }

    #[test]
    fn only_ip_literals_and_localhost_names_are_local_hosts() {
        for local in [
            "127.0.0.1",
            "127.0.0.1:9100",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:9100",
            "localhost",
            "LocalHost:9100",
            "localhost.:9100",
            "dash.localhost:9100",
        ] {
            assert!(local_host(local.as_bytes()), "{local}");
        }
        for foreign in [
            "evil.example",
            "evil.example:9100",
            "localhost.evil.example",
            "127.0.0.1.evil.example:9100",
            "evillocalhost",
            "127.0.0.1:http",
            "[::1]x",
            "[::1",
            "::1",
            "",
            "\u{ff}",
        ] {
            assert!(!local_host(foreign.as_bytes()), "{foreign}");
        }
        assert!(!local_host(b"\xff127.0.0.1"), "not UTF-8");
    }
    /// The control requests' guard, answers and argument, against a stand-in reloader.
    mod controls {
        use std::sync::{Arc, Mutex};

        use axum::extract::State;
        use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
        use axum::response::Response;
        use codex_bus_config::Config;
        use metrics_exporter_prometheus::PrometheusBuilder;

        use super::super::{reload_config, restart_pool, ui, Admin};
        use crate::auth::{AdminBearer, AdminCredentials};
        use crate::reload::{Outcome, Pending, Reload, ReloadResult};
        use crate::router::Router;

        /// Records its calls ("reload", "restart NAME") and answers `outcome`.
        struct Fake {
            calls: Mutex<Vec<String>>,
            outcome: Outcome,
        }

        impl Reload for Fake {
            fn reload(&self) -> Pending<'_> {
                self.calls.lock().unwrap().push("reload".to_owned());
                Box::pin(async { self.outcome.clone() })
            }

            fn restart<'a>(&'a self, pool: &'a str) -> Pending<'a> {
                self.calls.lock().unwrap().push(format!("restart {pool}"));
                Box::pin(async { self.outcome.clone() })
            }
        }

        /// The admin bearer of `token` (as `metrics.bearer_sha256` configures it).
        fn bearer(token: &str) -> Option<Arc<AdminBearer>> {
            use sha2::Digest as _;
            let hex: String = sha2::Sha256::digest(token.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            AdminBearer::new(&hex).map(Arc::new)
        }

        /// The admin state with `token` configured (none: `None`), its reloader answering
        /// `result`.
        fn admin(token: Option<&str>, result: ReloadResult) -> (Admin, Arc<Fake>) {
            let bearer = token.and_then(bearer);
            let fake = Arc::new(Fake {
                calls: Mutex::default(),
                outcome: Outcome {
                    result,
                    reason: Some("why".to_owned()),
                    changes: vec!["pool p rolled".to_owned()],
                },
            });
            let admin = Admin {
                router: Arc::new(Router::new(&Config::single_pool("p", "cat", &[], 1))),
                handle: PrometheusBuilder::new().build_recorder().handle(),
                bearer: Arc::new(AdminCredentials::new(bearer)),
                reload: fake.clone(),
                feed: Arc::new(ui::Feed::new()),
            };
            (admin, fake)
        }

        fn authorized(token: &str) -> HeaderMap {
            let mut headers = HeaderMap::new();
            let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
            headers.insert(header::AUTHORIZATION, value);
            headers
        }

        async fn text(response: Response) -> (StatusCode, String) {
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }

        #[tokio::test]
        async fn without_a_configured_token_the_controls_are_forbidden() {
            let (admin, fake) = admin(None, ReloadResult::Applied);
            let (status, body) =
                text(reload_config(State(admin.clone()), authorized("x")).await).await;
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(body.contains("set metrics.bearer_sha256"), "{body}");
            assert!(body.contains("SIGHUP"), "{body}");
            let uri = Uri::from_static("/restart?pool=p");
            let (status, _) = text(restart_pool(State(admin), uri, HeaderMap::new()).await).await;
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(fake.calls.lock().unwrap().is_empty(), "nothing ran");
        }

        #[tokio::test]
        async fn a_missing_or_wrong_token_is_unauthorized() {
            let (admin, fake) = admin(Some("s3cret"), ReloadResult::Applied);
            // base64("operator:s3cret"): the right token, but as a browser's Basic password.
            let mut basic = HeaderMap::new();
            let value = HeaderValue::from_static("Basic b3BlcmF0b3I6czNjcmV0");
            basic.insert(header::AUTHORIZATION, value);
            for headers in [HeaderMap::new(), authorized("s3cre"), authorized(""), basic] {
                let response = reload_config(State(admin.clone()), headers).await;
                assert_eq!(
                    response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
                    "Bearer"
                );
                assert_eq!(text(response).await.0, StatusCode::UNAUTHORIZED);
            }
            assert!(fake.calls.lock().unwrap().is_empty(), "nothing ran");
        }

        #[tokio::test]
        async fn an_authorized_reload_answers_its_outcome_as_json() {
            let (admin, fake) = admin(Some("s3cret"), ReloadResult::Applied);
            let (status, body) =
                text(reload_config(State(admin), authorized("s3cret")).await).await;
            assert_eq!(status, StatusCode::OK);
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                answer,
                serde_json::json!({"result": "applied", "reason": "why", "changes": ["pool p rolled"]})
            );
            assert_eq!(*fake.calls.lock().unwrap(), ["reload"]);
        }

        #[tokio::test]
        async fn each_result_has_its_status() {
            for (result, expected) in [
                (ReloadResult::Unchanged, StatusCode::OK),
                (ReloadResult::Busy, StatusCode::CONFLICT),
                (ReloadResult::Rejected, StatusCode::UNPROCESSABLE_ENTITY),
                (ReloadResult::Failed, StatusCode::INTERNAL_SERVER_ERROR),
                (ReloadResult::UnknownPool, StatusCode::NOT_FOUND),
            ] {
                let (admin, _) = admin(Some("t"), result);
                let (status, body) = text(reload_config(State(admin), authorized("t")).await).await;
                assert_eq!(status, expected, "{result:?}");
                assert!(
                    body.contains(&format!("\"result\":\"{}\"", result.label())),
                    "{body}"
                );
            }
        }

        #[tokio::test]
        async fn a_restart_names_its_pool_percent_decoded() {
            let (admin, fake) = admin(Some("t"), ReloadResult::Applied);
            let uri = Uri::from_static("/restart?x=1&pool=my%20pool");
            let (status, _) =
                text(restart_pool(State(admin.clone()), uri, authorized("t")).await).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(*fake.calls.lock().unwrap(), ["restart my pool"]);
            for uri in ["/restart", "/restart?pool=", "/restart?pool=%ff"] {
                let uri = Uri::from_static(uri);
                let (status, _) =
                    text(restart_pool(State(admin.clone()), uri, authorized("t")).await).await;
                assert_eq!(status, StatusCode::BAD_REQUEST);
            }
        }

        #[tokio::test]
        async fn a_replaced_token_applies_to_the_next_request() {
            let (admin, _) = admin(Some("old"), ReloadResult::Applied);
            admin.bearer.replace(bearer("new"));
            let old = reload_config(State(admin.clone()), authorized("old")).await;
            assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
            let new = reload_config(State(admin), authorized("new")).await;
            assert_eq!(new.status(), StatusCode::OK);
        }
    }
}
