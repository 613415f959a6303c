//! The blocking client: one connection driven by one thread with blocking reads and writes, for
//! the fronts the epoll engine does not speak, TLS and WebSocket (rustls and tungstenite are at
//! home on a blocking socket; in the epoll loop the TLS bytes rustls buffers would need writable
//! events of their own), and for plain TCP through the same loop, so that every front is
//! compared with a baseline driven alike.
//!
//! The loop: write requests while at most half the window is in flight (so every front gets
//! batches of about W/2 requests, whatever its reads return; W = 1 is strictly sequential),
//! block on one read, check what it brought with the engine's own books, repeat. It drives one
//! connection, which is what the `single` and `latency` scenarios use. Small requests only:
//! a write of W/2 requests must fit the socket buffers while the daemon's replies wait unread.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use tungstenite::client::{client_with_config, IntoClientRequest};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, Utf8Bytes, WebSocket};

use crate::auth::Credential;
use crate::engine::{check, latency_histogram, Books, Lane, Outcome, Phase, Tally};
use crate::ids::Scanner;
use crate::lines::Lines;
use crate::requests::Prebuilt;

/// Size of the NDJSON read buffer.
const READ_BUFFER: usize = 256 * 1024;

/// tungstenite's read buffer. It zero-fills this much spare capacity before every socket read
/// (`FrameCodec::read_in`), so its 128 KiB default costs a 128 KiB memset per read: 16 KiB
/// still takes a window-1000 batch of replies in a few reads.
const WS_READ_BUFFER: usize = 16 * 1024;

/// Where and how the blocking client connects.
#[derive(Clone)]
pub struct Front {
    /// The daemon's TCP or WebSocket listener.
    pub addr: SocketAddr,
    /// TLS with these client settings (they trust the run's certificate), or plaintext.
    pub tls: Option<Arc<ClientConfig>>,
    /// WebSocket (one message per text frame, path `/sessions/bench-{connection}`), or NDJSON.
    pub websocket: bool,
}

/// A TCP stream, plain or under TLS.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    /// For TLS, writes out the records rustls holds.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// How messages are framed on the stream.
enum Wire {
    /// One JSON-RPC message per line.
    Ndjson {
        stream: Stream,
        lines: Lines,
        scratch: Vec<u8>,
    },
    /// One JSON-RPC message per text frame.
    WebSocket(Box<WebSocket<Stream>>),
}

/// One connection to a front, driven by the calling thread.
pub struct Client {
    wire: Wire,
    /// The socket under `wire`, for its read timeout.
    socket: TcpStream,
    scanner: Scanner,
}

impl Client {
    /// Connects as connection `index`: TCP, the TLS handshake, then the WebSocket upgrade (with
    /// `Authorization: Bearer` from `credential`) or, for NDJSON, `bus/authenticate`.
    pub fn connect(
        front: &Front,
        index: usize,
        credential: Option<&Credential>,
    ) -> io::Result<Client> {
        let socket = TcpStream::connect(front.addr)?;
        socket.set_nodelay(true)?;
        let handle = socket.try_clone()?;
        let mut stream = match &front.tls {
            None => Stream::Plain(socket),
            Some(config) => {
                let name = ServerName::IpAddress(front.addr.ip().into());
                let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
                let mut tls = StreamOwned::new(conn, socket);
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock)?;
                }
                Stream::Tls(Box::new(tls))
            }
        };
        let wire = if front.websocket {
            let scheme = if front.tls.is_some() { "wss" } else { "ws" };
            let url = format!("{scheme}://{}/sessions/bench-{index}", front.addr);
            let mut request = url.into_client_request().map_err(io::Error::other)?;
            if let Some(credential) = credential {
                let bearer = format!("Bearer {}", credential.token());
                request
                    .headers_mut()
                    .insert("authorization", bearer.parse().map_err(io::Error::other)?);
            }
            let config = WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER);
            let (socket, _response) = client_with_config(request, stream, Some(config))
                .map_err(|e| io::Error::other(format!("WebSocket upgrade: {e}")))?;
            Wire::WebSocket(Box::new(socket))
        } else {
            if let Some(credential) = credential {
                credential.authenticate(&mut stream)?;
            }
            Wire::Ndjson {
                stream,
                lines: Lines::default(),
                scratch: vec![0; READ_BUFFER],
            }
        };
        Ok(Client {
            wire,
            socket: handle,
            scanner: Scanner::default(),
        })
    }

    /// Sends every request of `phase` (one `Prebuilt`: this client is one connection) and checks
    /// every reply, as `Engine::run` does; churn is not supported (the caller refuses it).
    pub fn run(&mut self, requests: Vec<Prebuilt>, phase: Phase<'_>) -> io::Result<Outcome> {
        let [reqs]: [Prebuilt; 1] = requests
            .try_into()
            .map_err(|_| io::Error::other("the blocking client drives exactly one connection"))?;
        // Text frames are prebuilt like the NDJSON bytes, so the clock times no copying.
        let frames: Vec<Utf8Bytes> = match self.wire {
            Wire::WebSocket(_) => frames(&reqs)?,
            Wire::Ndjson { .. } => Vec::new(),
        };
        let mut lane = Lane::new(reqs);
        let total = lane.reqs.len();
        let mut tally = Tally::default();
        let mut latency = latency_histogram();
        let mut answered = 0usize;
        let mut stalled = false;
        self.socket.set_read_timeout(Some(phase.stall))?;

        let start = Instant::now();
        let mut finished: Option<Instant> = None;
        let mut last_reply = start;
        loop {
            match finished {
                None if answered == total => {
                    let now = Instant::now();
                    finished = Some(now);
                    (phase.on_done)();
                    if phase.linger.is_zero() {
                        break;
                    }
                    self.socket.set_read_timeout(Some(phase.linger))?;
                }
                None => self.send(&mut lane, &frames, phase.window, start)?,
                Some(done) if done.elapsed() >= phase.linger => break,
                Some(_) => {}
            }
            let mut books = Books {
                tag: phase.tag,
                tally: &mut tally,
                latency: &mut latency,
                answered: &mut answered,
            };
            let before = *books.answered;
            match self.receive(&mut lane, &mut books, start) {
                Ok(true) => {}
                // Closed, reset, or no reply for the stall timeout (the linger's end, once done).
                Ok(false) | Err(_) => {
                    stalled = finished.is_none();
                    break;
                }
            }
            if answered > before {
                last_reply = Instant::now();
            }
        }
        tally.lost = (total - lane.answered) as u64;
        Ok(Outcome {
            tally,
            latency,
            // A stalled phase ends at its last reply: the stall timeout is not part of the run.
            elapsed: finished.unwrap_or(last_reply) - start,
            kills: 0,
            stalled,
        })
    }

    /// Writes the next requests once at most half the window is in flight, and flushes them.
    fn send(
        &mut self,
        lane: &mut Lane,
        frames: &[Utf8Bytes],
        window: usize,
        start: Instant,
    ) -> io::Result<()> {
        let total = lane.reqs.len();
        if lane.sent == total || lane.sent - lane.answered > window / 2 {
            return Ok(());
        }
        let upto = total.min(lane.answered + window);
        let now = start.elapsed().as_nanos() as u64;
        match &mut self.wire {
            Wire::Ndjson { stream, .. } => {
                let from = lane.sent.checked_sub(1).map_or(0, |i| lane.reqs.ends[i]);
                stream.write_all(&lane.reqs.bytes[from..lane.reqs.ends[upto - 1]])?;
                stream.flush()?;
            }
            Wire::WebSocket(socket) => {
                for frame in &frames[lane.sent..upto] {
                    socket
                        .write(Message::Text(frame.clone()))
                        .map_err(io_error)?;
                }
                socket.flush().map_err(io_error)?;
            }
        }
        lane.sent_at[lane.sent..upto].fill(now);
        lane.sent = upto;
        Ok(())
    }

    /// Blocks for the next read and checks the replies it completes; `Ok(false)` once the
    /// connection is closed.
    fn receive(
        &mut self,
        lane: &mut Lane,
        books: &mut Books<'_>,
        start: Instant,
    ) -> io::Result<bool> {
        let Client { wire, scanner, .. } = self;
        let lanes = std::slice::from_mut(lane);
        match wire {
            Wire::Ndjson {
                stream,
                lines,
                scratch,
            } => {
                let n = stream.read(scratch)?;
                if n == 0 {
                    return Ok(false);
                }
                let now = start.elapsed().as_nanos() as u64;
                lines.feed(&scratch[..n], |line| {
                    check(scanner.reply(line), 0, lanes, books, now)
                });
            }
            Wire::WebSocket(socket) => match socket.read() {
                Ok(Message::Text(text)) => {
                    let now = start.elapsed().as_nanos() as u64;
                    check(scanner.reply(text.as_bytes()), 0, lanes, books, now);
                }
                Ok(Message::Binary(_)) => books.tally.unidentified += 1,
                Ok(Message::Close(_)) => return Ok(false),
                // Pings are answered by tungstenite with the next write or flush.
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(false)
                }
                Err(e) => return Err(io_error(e)),
            },
        }
        Ok(true)
    }
}

/// Each request line of `reqs` as a text frame's payload (newline dropped).
fn frames(reqs: &Prebuilt) -> io::Result<Vec<Utf8Bytes>> {
    let mut from = 0;
    reqs.ends
        .iter()
        .map(|&end| {
            let line = &reqs.bytes[from..end - 1];
            from = end;
            let text = String::from_utf8(line.to_vec()).map_err(io::Error::other)?;
            Ok(Utf8Bytes::from(text))
        })
        .collect()
}

/// A tungstenite error as the I/O error it wraps, or as `other`.
fn io_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        e => io::Error::other(e),
    }
}
