//! One non-blocking byte stream to the target: a TCP or Unix socket, or a pair of pipes (a bus's
//! or a worker's stdin/stdout).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ChildStdin, ChildStdout};

use mio::net::{TcpStream, UnixStream};
use mio::unix::pipe;
use mio::{Interest, Registry, Token};

use crate::auth::Credential;

/// A connection the event loops read and write without blocking.
pub enum Io {
    /// A TCP connection (`TCP_NODELAY`).
    Tcp(TcpStream),
    /// A Unix stream socket.
    Unix(UnixStream),
    /// Write to `tx`, read from `rx`.
    Pipe {
        /// Where requests go (the peer's stdin).
        tx: pipe::Sender,
        /// Where replies come from (the peer's stdout).
        rx: pipe::Receiver,
    },
}

/// The token of the reading side of connection `index`; `read_token + 1` is the writing side
/// of a pipe pair (a socket registers both interests on one token).
pub fn read_token(index: usize) -> Token {
    Token(index * 2)
}

/// The connection an event token belongs to.
pub fn index_of(token: Token) -> usize {
    token.0 / 2
}

impl Io {
    /// Connects over TCP; blocking until established (and, with a `credential`, until the bus
    /// has accepted it), then switched to non-blocking.
    pub fn tcp(addr: SocketAddr, credential: Option<&Credential>) -> io::Result<Io> {
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        if let Some(credential) = credential {
            credential.authenticate(&mut stream)?;
        }
        stream.set_nonblocking(true)?;
        Ok(Io::Tcp(TcpStream::from_std(stream)))
    }

    /// Connects to a Unix socket.
    pub fn unix(path: &Path) -> io::Result<Io> {
        let stream = std::os::unix::net::UnixStream::connect(path)?;
        stream.set_nonblocking(true)?;
        Ok(Io::Unix(UnixStream::from_std(stream)))
    }

    /// Talks to a child process over its stdin and stdout.
    pub fn child(stdin: ChildStdin, stdout: ChildStdout) -> io::Result<Io> {
        Io::pipes(pipe::Sender::from(stdin), pipe::Receiver::from(stdout))
    }

    /// Wraps two pipe ends, switching them to non-blocking.
    pub fn pipes(tx: pipe::Sender, rx: pipe::Receiver) -> io::Result<Io> {
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Io::Pipe { tx, rx })
    }

    /// Registers for readiness events as connection `index`.
    pub fn register(&mut self, registry: &Registry, index: usize) -> io::Result<()> {
        let token = read_token(index);
        let both = Interest::READABLE | Interest::WRITABLE;
        match self {
            Io::Tcp(s) => registry.register(s, token, both),
            Io::Unix(s) => registry.register(s, token, both),
            Io::Pipe { tx, rx } => {
                registry.register(rx, token, Interest::READABLE)?;
                registry.register(tx, Token(token.0 + 1), Interest::WRITABLE)
            }
        }
    }

    /// Reads what is available.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Tcp(s) => s.read(buf),
            Io::Unix(s) => s.read(buf),
            Io::Pipe { rx, .. } => rx.read(buf),
        }
    }

    /// Writes what the kernel takes.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Io::Tcp(s) => s.write(buf),
            Io::Unix(s) => s.write(buf),
            Io::Pipe { tx, .. } => tx.write(buf),
        }
    }
}
