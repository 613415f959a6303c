//! `daemon::run(config, listeners, shutdown)` driven by futures instead of signals, as an embedder
//! (or a test) drives it: real listeners, a real worker process (`cat`, which echoes every line
//! back, so a notification on a session returns to the client that sent it).

use std::time::Duration;

use codex_bus_config::Config;
use codex_stdio_bus::daemon::{self, Listeners, Outcome, Shutdown};
use codex_stdio_bus::io::listen::Endpoint;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

/// A daemon with one `cat` worker on a Unix socket in a fresh directory, and the two triggers of
/// its shutdown.
struct Embedded {
    socket: std::path::PathBuf,
    drain: oneshot::Sender<()>,
    now: oneshot::Sender<()>,
    run: tokio::task::JoinHandle<Result<Outcome, codex_stdio_bus::error::Error>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Embedded {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bus.sock");
    let mut config = Config::single_pool("echo", "cat", &[], 1);
    // These tests time the drain; the grace before it is drain.rs's subject (tests/).
    config.limits.drain_grace_sec = 0;
    let listeners = Listeners::bind(&Endpoint::Unix(socket.clone()), None)
        .await
        .unwrap();
    let (drain, drain_rx) = oneshot::channel::<()>();
    let (now, now_rx) = oneshot::channel::<()>();
    let shutdown = Shutdown::new(
        async move {
            let _ = drain_rx.await;
        },
        async move {
            let _ = now_rx.await;
        },
    );
    let run = tokio::spawn(daemon::run(config, listeners, shutdown));
    Embedded {
        socket,
        drain,
        now,
        run,
        _dir: dir,
    }
}

/// Sends one notification on session `s` and reads the worker's echo of it.
async fn round_trip(socket: &std::path::Path) -> String {
    let stream = UnixStream::connect(socket).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    writer
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"hello\",\"sessionId\":\"s\"}\n")
        .await
        .unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(reader);
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .expect("the echo comes back")
        .unwrap();
    line
}

#[tokio::test]
async fn a_drain_future_drains_and_run_returns() {
    let bus = start().await;
    let echo = round_trip(&bus.socket).await;
    assert!(echo.contains("\"method\":\"hello\""), "{echo}");
    bus.drain.send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), bus.run)
        .await
        .expect("run returns after the drain")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Drained);
    assert_eq!(outcome.exit_status(), 0);
    assert!(!bus.socket.exists(), "the socket file is removed");
    drop(bus.now);
}

#[tokio::test]
async fn a_second_future_stops_at_once() {
    let bus = start().await;
    round_trip(&bus.socket).await;
    bus.drain.send(()).unwrap();
    bus.now.send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), bus.run)
        .await
        .expect("run returns at once")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Stopped);
    assert_eq!(outcome.exit_status(), 1);
}
