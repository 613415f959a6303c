//! The dashboard: `GET /ui` serves one page embedded in the binary, `GET /ui/events` streams it
//! the daemon's state as Server-Sent Events ([`frames`]: the status document, the rates, the
//! recent worker events), `GET /` redirects to `/ui`.
//!
//! A tick's frames are built by one shared ticker, at most once per [`PERIOD`], and only while at
//! least one stream is connected: with no page open the stream costs nothing, with many open it
//! costs one tick per period, not one per page. Every stream gets the latest tick (a `watch`
//! keeps one value), so a slow reader skips ticks rather than queueing them. At most
//! [`MAX_STREAMS`] streams are served at once; one more is answered 503.
//!
//! `/ui` and `/ui/events` are guarded like `/status` (`metrics.bearer_sha256`), but their 401
//! challenges HTTP Basic: a page load or an `EventSource` cannot send a bearer token, while a
//! browser shows its login prompt for Basic and then sends the typed token (as the password)
//! with the page and its stream ([`crate::auth::AdminBearer::admits`]). The redirect reveals
//! nothing and stays open.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::MissedTickBehavior;

use super::{event_list, rates, status, Admin, BROWSER_CHALLENGE};
use crate::io::probes::PLAIN_TEXT;
use crate::router::Router;

/// The page: plain HTML, CSS and a small script, no build step.
const PAGE: &str = include_str!("ui.html");

/// The page may run its own inline script and style and open its event stream on this origin,
/// and load nothing else; no other site may frame it.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'";

/// How often the shared ticker builds a snapshot while a stream is connected.
pub(super) const PERIOD: Duration = Duration::from_millis(500);

/// Event streams served at once; one more is refused with 503. An operator opens a few pages;
/// the bound keeps a forgotten script from holding connections without end.
pub(super) const MAX_STREAMS: usize = 16;

/// What one tick sends to every page: named Server-Sent Events (`event:` name, `data:` JSON
/// text), in order. Built by [`frames`].
type Frames = Arc<[(&'static str, Box<str>)]>;

/// The latest snapshot, shared by every stream, and the ticker that refreshes it.
pub(super) struct Feed {
    /// The latest tick's events; `None` until the ticker's first tick. Its receiver count is the
    /// number of streams connected.
    latest: watch::Sender<Option<Frames>>,
    /// Whether a ticker task runs (it stops when the last stream goes).
    ticking: AtomicBool,
    /// One permit per stream ([`MAX_STREAMS`]).
    seats: Arc<Semaphore>,
}

impl Feed {
    /// A feed with no stream and no ticker.
    pub(super) fn new() -> Self {
        Feed {
            latest: watch::Sender::new(None),
            ticking: AtomicBool::new(false),
            seats: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }

    /// A stream of the events of each tick ([`frames`]), starting with the latest; `None` when
    /// [`MAX_STREAMS`] are connected. Starts the ticker if none runs.
    fn subscribe(
        self: &Arc<Self>,
        router: &Arc<Router>,
    ) -> Option<impl Stream<Item = Result<Event, Infallible>>> {
        let seat = self.seats.clone().try_acquire_owned().ok()?;
        // Subscribe before looking at `ticking`: a ticker that is about to stop for want of
        // streams then sees this one (see `tick`).
        let mut receiver = self.latest.subscribe();
        if self.ticking.swap(true, Ordering::SeqCst) {
            // A ticker runs: send its latest snapshot now rather than at its next tick.
            receiver.mark_changed();
        } else {
            tokio::spawn(tick(self.clone(), router.clone()));
        }
        let ticks = stream::unfold(
            (receiver, seat),
            |(mut receiver, seat): (_, OwnedSemaphorePermit)| async move {
                loop {
                    // The sender lives in the `Admin` state, as long as the endpoint.
                    receiver.changed().await.ok()?;
                    let latest = receiver.borrow_and_update().clone();
                    if let Some(frames) = latest {
                        return Some((frames, (receiver, seat)));
                    }
                }
            },
        );
        Some(ticks.flat_map(|frames| {
            let events: Vec<_> = frames
                .iter()
                .map(|(name, json)| Ok(Event::default().event(*name).data(&**json)))
                .collect();
            stream::iter(events)
        }))
    }
}

/// The shared ticker: builds a snapshot every [`PERIOD`] while a stream is connected, and stops
/// when none is.
async fn tick(feed: Arc<Feed>, router: Arc<Router>) {
    let mut interval = tokio::time::interval(PERIOD);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if feed.latest.receiver_count() == 0 {
            feed.ticking.store(false, Ordering::SeqCst);
            // A stream that subscribed meanwhile either saw `ticking` false and started a ticker
            // of its own (the swap returns true: this one stops), or saw it true before the store
            // (the swap returns false: this one goes on for it).
            if feed.latest.receiver_count() == 0 || feed.ticking.swap(true, Ordering::SeqCst) {
                return;
            }
        }
        feed.latest.send_replace(Some(frames(&router)));
    }
}

/// One tick's events: `status`, the status document ([`status::snapshot`]); `rates`, the
/// series of the last minutes ([`rates::frame`]); `events`, the recent worker events
/// ([`event_list::frame`]).
fn frames(router: &Router) -> Frames {
    Arc::new([
        ("status", status::snapshot(router).to_string().into()),
        ("rates", rates::frame(router)),
        ("events", event_list::frame(router).to_string().into()),
    ])
}

/// `GET /`: to the dashboard.
pub(super) async fn root() -> Redirect {
    Redirect::temporary("/ui")
}

/// `GET /ui`: the page.
pub(super) async fn page(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Some(refused) = admin.guard_state(&headers, BROWSER_CHALLENGE) {
        return refused;
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /ui/events`: the dashboard's stream (each tick's [`frames`] as named events), with a
/// comment every 15 s so that proxies keep an idle stream open.
pub(super) async fn events(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Some(refused) = admin.guard_state(&headers, BROWSER_CHALLENGE) {
        return refused;
    }
    match admin.feed.subscribe(&admin.router) {
        Some(stream) => Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, PLAIN_TEXT)],
            format!("too many dashboard streams: at most {MAX_STREAMS} at once\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use codex_bus_config::Config;
    use futures_util::StreamExt;

    use super::*;

    #[tokio::test]
    async fn the_ticker_runs_only_while_a_stream_is_connected_and_seats_are_bounded() {
        let feed = Arc::new(Feed::new());
        let router = Arc::new(Router::new(&Config::single_pool("p", "cat", &[], 2)));
        assert!(!feed.ticking.load(Ordering::SeqCst), "no stream, no ticker");

        // Boxed, not pinned on the stack, so that dropping one ends the stream.
        let mut first = Box::pin(feed.subscribe(&router).expect("a seat"));
        assert!(feed.ticking.load(Ordering::SeqCst));
        // A tick sends every frame at once; the next tick's first comes a period later.
        let per_tick = frames(&router).len();
        let start = Instant::now();
        // Two ticks, each sending one event per frame.
        for _ in 0..2 * per_tick {
            assert!(matches!(first.next().await, Some(Ok(_))), "a snapshot");
        }
        let took = start.elapsed();
        assert!(
            took >= PERIOD.mul_f32(0.9) && took < PERIOD * 3,
            "two snapshots in {took:?}"
        );

        // A second stream gets the latest snapshot at once, not at the next tick.
        let start = Instant::now();
        let mut second = Box::pin(feed.subscribe(&router).expect("a seat"));
        assert!(matches!(second.next().await, Some(Ok(_))), "the latest");
        assert!(start.elapsed() < PERIOD / 2, "{:?}", start.elapsed());

        // Sixteen at once; the seventeenth is refused until one goes.
        let mut more: Vec<_> = (2..MAX_STREAMS)
            .map(|_| Box::pin(feed.subscribe(&router).expect("a seat")))
            .collect();
        assert!(feed.subscribe(&router).is_none(), "a 17th stream");
        more.pop();
        assert!(feed.subscribe(&router).is_some(), "the freed seat");

        // Every stream gone: the ticker stops at its next tick.
        drop(more);
        drop(first);
        drop(second);
        tokio::time::sleep(PERIOD * 2).await;
        assert!(!feed.ticking.load(Ordering::SeqCst), "the ticker stopped");
        assert_eq!(feed.latest.receiver_count(), 0);

        // And starts again with the next stream.
        let mut again = Box::pin(feed.subscribe(&router).expect("a seat"));
        assert!(matches!(again.next().await, Some(Ok(_))), "a snapshot");
        assert!(feed.ticking.load(Ordering::SeqCst));
    }
}
