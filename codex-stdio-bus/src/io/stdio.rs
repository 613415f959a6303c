//! The daemon's own stdin and stdout as one client.
//!
//! tokio's `stdin()`/`stdout()` hand every read and write to a blocking thread, which halves
//! throughput. When they are pipes (how a parent process runs the daemon) they are polled
//! directly instead; anything else (a terminal, a regular file, /dev/null) keeps the portable path.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;

/// Reading half of the stdio client.
pub(crate) type Input = Pin<Box<dyn AsyncRead + Send>>;
/// Writing half of the stdio client.
pub(crate) type Output = Pin<Box<dyn AsyncWrite + Send>>;

/// stdin and stdout, polled directly when they are pipes.
pub(crate) fn streams() -> (Input, Output) {
    let input: Input = match stdin_pipe() {
        Ok(pipe) => Box::pin(pipe),
        Err(_) => Box::pin(tokio::io::stdin()),
    };
    let output: Output = match stdout_pipe() {
        Ok(pipe) => Box::pin(pipe),
        Err(_) => Box::pin(tokio::io::stdout()),
    };
    (input, output)
}

/// stdin as a non-blocking pipe reader (fails unless it is a FIFO).
fn stdin_pipe() -> io::Result<pipe::Receiver> {
    // A duplicate: the original fd 0 stays open for the life of the process either way.
    let fd = io::stdin().as_fd().try_clone_to_owned()?;
    pipe::Receiver::from_owned_fd(fd)
}

/// stdout as a non-blocking pipe writer (fails unless it is a FIFO).
fn stdout_pipe() -> io::Result<pipe::Sender> {
    let fd = io::stdout().as_fd().try_clone_to_owned()?;
    pipe::Sender::from_owned_fd(fd)
}
