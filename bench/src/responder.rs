//! The in-process responder (`--target self`): a thread that answers every request at once over
//! the same transport, so a run against it shows the generator's own ceiling.

use std::io::{self, ErrorKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use memchr::memmem::Finder;
use mio::net::{TcpListener, UnixListener};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::io::{index_of, Io};
use crate::lines::Lines;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);

/// Where the responder's connections come from.
pub enum Source {
    /// Accept TCP connections.
    Tcp(TcpListener),
    /// Accept Unix socket connections.
    Unix(UnixListener),
    /// Already connected pipe pairs (the stdio transport).
    Pipes(Vec<Io>),
}

/// A running responder thread; stopped and joined on drop.
pub struct Responder {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

struct Peer {
    io: Io,
    lines: Lines,
    out: Vec<u8>,
    written: usize,
    closed: bool,
}

impl Responder {
    /// Starts serving `source`.
    pub fn start(mut source: Source) -> io::Result<Responder> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        match &mut source {
            Source::Tcp(l) => poll.registry().register(l, LISTENER, Interest::READABLE)?,
            Source::Unix(l) => poll.registry().register(l, LISTENER, Interest::READABLE)?,
            Source::Pipes(_) => {}
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("responder".into())
            .spawn({
                let stop = stop.clone();
                move || serve(poll, source, &stop)
            })?;
        Ok(Responder {
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// Stops the thread; returns the error it ended with, if any.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake()?;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("responder thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        // An error here was already reported through `stop`, or the run failed for another reason.
        let _ = self.shutdown();
    }
}

fn serve(mut poll: Poll, mut source: Source, stop: &AtomicBool) -> io::Result<()> {
    let mut peers: Vec<Peer> = Vec::new();
    if let Source::Pipes(pipes) = &mut source {
        for io in std::mem::take(pipes) {
            add_peer(&poll, &mut peers, io)?;
        }
    }
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 256 * 1024];
    let id = Finder::new(b"\"id\":");
    let mut touched = Vec::new();
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        touched.clear();
        for event in &events {
            match event.token() {
                WAKER => {}
                LISTENER => accept(&poll, &mut source, &mut peers)?,
                token => touched.push(index_of(token)),
            }
        }
        for &index in &touched {
            let peer = &mut peers[index];
            answer(peer, &mut scratch, &id);
            flush(peer);
        }
    }
}

fn add_peer(poll: &Poll, peers: &mut Vec<Peer>, mut io: Io) -> io::Result<()> {
    io.register(poll.registry(), peers.len())?;
    peers.push(Peer {
        io,
        lines: Lines::default(),
        out: Vec::new(),
        written: 0,
        closed: false,
    });
    Ok(())
}

fn accept(poll: &Poll, source: &mut Source, peers: &mut Vec<Peer>) -> io::Result<()> {
    loop {
        let accepted = match source {
            Source::Tcp(l) => l.accept().and_then(|(s, _)| {
                s.set_nodelay(true)?;
                Ok(Io::Tcp(s))
            }),
            Source::Unix(l) => l.accept().map(|(s, _)| Io::Unix(s)),
            Source::Pipes(_) => return Ok(()),
        };
        match accepted {
            Ok(io) => add_peer(poll, peers, io)?,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads all that is available and queues one reply per request line.
fn answer(peer: &mut Peer, scratch: &mut [u8], id: &Finder<'_>) {
    while !peer.closed {
        let n = match peer.io.read(scratch) {
            Ok(0) => {
                peer.closed = true;
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                peer.closed = true;
                return;
            }
        };
        let out = &mut peer.out;
        peer.lines.feed(&scratch[..n], |line| {
            if let Some(token) = id.find(line).and_then(|at| id_token(&line[at + 5..])) {
                out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
                out.extend_from_slice(token);
                out.extend_from_slice(b",\"result\":{}}\n");
            }
        });
    }
}

/// The id token at the start of `rest`: a string up to its closing quote, else up to `,` or `}`.
fn id_token(rest: &[u8]) -> Option<&[u8]> {
    if rest.first() == Some(&b'"') {
        let mut escaped = false;
        for (i, &b) in rest.iter().enumerate().skip(1) {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => return Some(&rest[..=i]),
                _ => {}
            }
        }
        None
    } else {
        let end = rest.iter().position(|&b| b == b',' || b == b'}')?;
        Some(&rest[..end])
    }
}

/// Writes queued replies until done or the kernel pushes back (then a writable event resumes).
fn flush(peer: &mut Peer) {
    while peer.written < peer.out.len() && !peer.closed {
        match peer.io.write(&peer.out[peer.written..]) {
            Ok(0) => peer.closed = true,
            Ok(n) => peer.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => peer.closed = true,
        }
    }
    peer.out.clear();
    peer.written = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_tokens_are_cut_whole() {
        assert_eq!(
            id_token(br#""m1.2","method":"x"}"#),
            Some(&br#""m1.2""#[..])
        );
        assert_eq!(id_token(br#""a\"b","x":1}"#), Some(&br#""a\"b""#[..]));
        assert_eq!(id_token(b"17}"), Some(&b"17"[..]));
        assert_eq!(id_token(br#""open"#), None);
    }
}
