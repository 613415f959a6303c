//! Binding the listening endpoint, before any worker is spawned (a bad address must cost nothing).

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

use crate::core::client::Transport;
use crate::error::Error;

/// Where clients come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The daemon's stdin and stdout are one client.
    Stdio,
    /// A Unix domain socket at this path.
    Unix(PathBuf),
    /// TCP on HOST:PORT (IPv4, IPv6 in brackets, or a host name).
    Tcp(String),
}

/// A bound endpoint, ready to accept.
pub enum Bound {
    /// stdin/stdout.
    Stdio,
    /// A Unix socket; the guard removes its file on exit.
    Unix(UnixListener, SocketFile),
    /// A TCP listener.
    Tcp(TcpListener),
}

impl Bound {
    /// The transport its clients come in on.
    pub(crate) fn transport(&self) -> Transport {
        match self {
            Bound::Stdio => Transport::Stdio,
            Bound::Unix(..) => Transport::Unix,
            Bound::Tcp(_) => Transport::Tcp,
        }
    }
}

/// Removes the socket file when the daemon is done with it.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds `endpoint`; fails as [`Error::bind`] says.
pub async fn bind(endpoint: &Endpoint) -> Result<Bound, Error> {
    match endpoint {
        Endpoint::Stdio => Ok(Bound::Stdio),
        Endpoint::Tcp(address) => {
            let cannot = |e| Error::bind(format!("cannot listen on TCP {address}"), e);
            let listener = bind_tcp(address).await.map_err(cannot)?;
            let local = listener.local_addr().map_err(cannot)?;
            tracing::info!(transport = "tcp", addr = %local, "listening");
            Ok(Bound::Tcp(listener))
        }
        Endpoint::Unix(path) => {
            let listener = bind_unix(path).map_err(|e| {
                let context = format!("cannot listen on Unix socket {}", path.display());
                Error::bind(context, e)
            })?;
            tracing::info!(transport = "unix", path = %path.display(), "listening");
            Ok(Bound::Unix(listener, SocketFile(path.clone())))
        }
    }
}

/// Resolves HOST:PORT and binds the first address that works.
pub(super) async fn bind_tcp(address: &str) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address resolved");
    for candidate in tokio::net::lookup_host(address).await? {
        match TcpListener::bind(candidate).await {
            Ok(listener) => {
                deepen_backlog(&listener)?;
                return Ok(listener);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Binds a Unix socket readable and writable by the daemon's user only.
///
/// Never replaces a file that is not a socket, nor a socket a live daemon answers on; a stale
/// socket left by a dead daemon is replaced.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; refusing to replace it",
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is listening on this socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    // The umask applies at bind time, so the socket never exists with wider permissions. Nothing
    // else in the daemon creates files concurrently at startup.
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(previous);
    let listener = bound?;
    deepen_backlog(&listener)?;
    Ok(listener)
}

/// Raises the accept backlog from std's 128 to the system maximum (`somaxconn`), so a burst of
/// connections (a fleet reconnecting after a deploy) queues instead of having SYNs dropped and
/// retried a second later. Linux lets `listen` be called again on a listening socket to do this.
fn deepen_backlog(listener: &impl std::os::fd::AsFd) -> io::Result<()> {
    nix::sys::socket::listen(listener, nix::sys::socket::Backlog::MAXCONN)?;
    Ok(())
}
