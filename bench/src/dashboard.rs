//! `--admin` and `--dashboard`: the bus runs with its admin endpoint (`metrics.listen` on a
//! loopback port bus-bench chooses), and with `--dashboard` one dashboard stream
//! (`GET /ui/events`, Server-Sent Events, docs/metrics.md) is held open from before the warm-up
//! to the end of every bus run, as a page open in a browser would be. Issue 14 asks that the
//! daemon's CPU per round trip in `single` with a page open be within noise of the same without
//! one. `--admin` alone is the baseline to compare with: the admin endpoint also installs the
//! daemon's metrics recorder, which the message path then feeds, so a comparison with neither
//! option would count the recorder as well as the page.
//!
//! The stream is read by a plain HTTP/1.0 GET on a blocking socket (so the body is
//! close-delimited rather than chunked) in a thread of its own, which counts the events by their
//! `event:` line: that the `status` count grows shows the stream was live for the whole run.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

/// The path of the dashboard's event stream.
const EVENTS_PATH: &str = "/ui/events";

/// The event every tick of the daemon's shared ticker sends first (the `/status` document).
const STATUS_EVENT: &str = "status";

/// What bus runs carry besides their load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Admin {
    /// No admin endpoint (the bus config has no `metrics` section).
    Off,
    /// The admin endpoint on loopback, nobody reading it: the baseline of `Dashboard`.
    Endpoint,
    /// The admin endpoint and one `/ui/events` stream held open through the run.
    Dashboard,
}

impl Admin {
    /// From the command line's `--admin` and `--dashboard` (which implies `--admin`).
    pub fn of(admin: bool, dashboard: bool) -> Admin {
        match (admin, dashboard) {
            (_, true) => Admin::Dashboard,
            (true, false) => Admin::Endpoint,
            (false, false) => Admin::Off,
        }
    }

    /// The bus config's `metrics` section for an endpoint at `addr`, if any.
    pub fn config(self, addr: SocketAddr) -> Option<serde_json::Value> {
        (self != Admin::Off).then(|| serde_json::json!({ "listen": addr.to_string() }))
    }
}

/// What a stream delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// `status` events (one per tick of the daemon's ticker, every 500 ms).
    pub status: u64,
    /// Events of any name (later ticks send more than `status`).
    pub events: u64,
    /// Whether the daemon ended the stream (or it failed) before bus-bench closed it.
    pub ended_early: bool,
}

/// Counters shared with the reading thread.
#[derive(Default)]
struct Counts {
    status: AtomicU64,
    events: AtomicU64,
    ended: AtomicBool,
}

/// An open `/ui/events` stream and the thread that reads it; closed when dropped.
pub struct Stream {
    /// The socket, to end the reader's blocking read with a shutdown.
    socket: TcpStream,
    counts: Arc<Counts>,
    reader: Option<JoinHandle<()>>,
}

impl Stream {
    /// Opens the stream at `addr` and waits for its first `status` event (the daemon sends one
    /// at once), so that the daemon's ticker runs before the caller goes on. An error when the
    /// endpoint cannot be reached, does not answer `200` with `text/event-stream`, or sends no
    /// `status` event within `within`.
    pub fn open(addr: SocketAddr, within: Duration) -> Result<Stream, String> {
        let failed = |e: std::io::Error| format!("dashboard stream {addr}{EVENTS_PATH}: {e}");
        let mut socket = TcpStream::connect(addr).map_err(failed)?;
        socket.set_read_timeout(Some(within)).map_err(failed)?;
        write!(socket, "GET {EVENTS_PATH} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(failed)?;
        let mut reader = BufReader::new(socket.try_clone().map_err(failed)?);
        let head = read_head(&mut reader).map_err(failed)?;
        let status_line = head.lines().next().unwrap_or_default();
        if status_line.split(' ').nth(1) != Some("200")
            || !head
                .to_ascii_lowercase()
                .contains("content-type: text/event-stream")
        {
            return Err(format!(
                "dashboard stream {addr}{EVENTS_PATH}: answered {status_line:?}, not a 200 \
                 event stream"
            ));
        }
        let counts = Arc::new(Counts::default());
        let mut line = String::new();
        while counts.status.load(Ordering::Relaxed) == 0 {
            line.clear();
            if reader.read_line(&mut line).map_err(failed)? == 0 {
                return Err(format!(
                    "dashboard stream {addr}{EVENTS_PATH}: ended before its first event"
                ));
            }
            count(&line, &counts);
        }
        socket.set_read_timeout(None).map_err(failed)?;
        let shared = counts.clone();
        let reader = std::thread::Builder::new()
            .name("dashboard".into())
            .spawn(move || read_events(reader, &shared))
            .map_err(failed)?;
        Ok(Stream {
            socket,
            counts,
            reader: Some(reader),
        })
    }

    /// `status` events received so far.
    pub fn status_events(&self) -> u64 {
        self.counts.status.load(Ordering::Relaxed)
    }

    /// Closes the stream; what it delivered.
    pub fn close(mut self) -> Seen {
        self.stop()
    }

    fn stop(&mut self) -> Seen {
        // Whether the daemon ended it first is decided before bus-bench's own shutdown ends it.
        let ended_early = self.counts.ended.load(Ordering::SeqCst);
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Seen {
            status: self.counts.status.load(Ordering::SeqCst),
            events: self.counts.events.load(Ordering::SeqCst),
            ended_early,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The response head up to its blank line.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            return Ok(head);
        }
        head.push_str(&line);
    }
}

/// Counts events until the stream ends (the daemon closed it, or [`Stream::stop`] shut it down).
fn read_events(mut reader: impl BufRead, counts: &Counts) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => count(&line, counts),
        }
    }
    counts.ended.store(true, Ordering::SeqCst);
}

/// Counts `line` if it names an event (`data:` lines, comments and blank lines are not counted).
fn count(line: &str, counts: &Counts) {
    if let Some(name) = line.strip_prefix("event:") {
        counts.events.fetch_add(1, Ordering::Relaxed);
        if name.trim() == STATUS_EVENT {
            counts.status.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A one-connection server that answers with `head`, then writes `body` in pieces.
    fn serve(head: &'static str, body: Vec<&'static str>) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = BufReader::new(socket.try_clone().unwrap());
            let asked = read_head(&mut request).unwrap();
            assert!(asked.starts_with("GET /ui/events HTTP/1.0\r\n"), "{asked}");
            socket.write_all(head.as_bytes()).unwrap();
            for piece in body {
                socket.write_all(piece.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            // Hold the connection until the client closes it.
            let _ = std::io::Read::read(&mut request, &mut [0; 1]);
        });
        (addr, server)
    }

    const EVENT_STREAM: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";

    #[test]
    fn counts_status_and_other_events_until_closed() {
        let (addr, server) = serve(
            EVENT_STREAM,
            vec![
                "event: status\ndata: {\"a\":1}\n\n",
                ": keep-alive\n\n",
                "event: status\ndata: {}\n\nevent: rates\ndata: {\"event: status\":1}\n\n",
                "event:status\ndata: {}\n\n",
            ],
        );
        let stream = Stream::open(addr, Duration::from_secs(5)).unwrap();
        assert!(stream.status_events() >= 1, "open waits for the first");
        let start = std::time::Instant::now();
        while stream.status_events() < 3 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = stream.close();
        assert_eq!(
            seen,
            Seen {
                status: 3,
                events: 4,
                ended_early: false
            }
        );
        server.join().unwrap();
    }

    #[test]
    fn a_stream_the_server_ends_is_reported_as_ended_early() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            read_head(&mut BufReader::new(socket.try_clone().unwrap())).unwrap();
            socket
                .write_all(format!("{EVENT_STREAM}event: status\ndata: {{}}\n\n").as_bytes())
                .unwrap();
        });
        let stream = Stream::open(addr, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        let start = std::time::Instant::now();
        while !stream.counts.ended.load(Ordering::SeqCst)
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(stream.close().ended_early);
    }

    #[test]
    fn anything_but_an_event_stream_is_refused() {
        let (addr, server) = serve(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\n\r\n",
            vec!["unauthorized\n"],
        );
        let error = Stream::open(addr, Duration::from_secs(5)).err().unwrap();
        assert!(error.contains("401 Unauthorized"), "{error}");
        server.join().unwrap();
    }

    #[test]
    fn only_dashboard_and_endpoint_write_a_metrics_section() {
        let addr: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        assert_eq!(Admin::of(false, false).config(addr), None);
        assert_eq!(Admin::of(false, true), Admin::Dashboard);
        assert_eq!(
            Admin::of(true, false).config(addr).unwrap()["listen"],
            "127.0.0.1:9464"
        );
    }
}
