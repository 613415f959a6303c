//! SIGTERM for the mock worker, read from a signalfd instead of caught by a handler.
//!
//! A handler (tokio's) would replace SIGTERM's default action for the life of the process, and
//! only an `unsafe` `sigaction` could put it back. Blocking the signal and reading it from a
//! signalfd keeps the default action in place, so the fault hooks get both behaviours safely:
//! `mock/stubborn` leaves SIGTERM blocked and ignores what it reads, and `mock/hang` unblocks it so
//! that SIGTERM kills the process the way it kills a stuck program.

use std::io;
use std::thread;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tokio::sync::mpsc;

use codex_bus_worker_io::log;

/// Blocks SIGTERM in the calling thread and starts a thread that reports every SIGTERM on the
/// returned channel.
///
/// Call it before any other thread exists: threads inherit the mask they start with, and a
/// process-directed SIGTERM takes its default action in any thread that leaves it unblocked.
pub fn watch() -> io::Result<mpsc::Receiver<()>> {
    let mask = only_sigterm();
    mask.thread_block()?;
    // Blocking reads: a thread rather than tokio's `AsyncFd`, whose constructors are `unsafe`.
    let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)?;
    // One queued report is enough: SIGTERMs that arrive together mean the same thing.
    let (sender, receiver) = mpsc::channel(1);
    thread::Builder::new()
        .name("sigterm".to_owned())
        .spawn(move || loop {
            match fd.read_signal() {
                Ok(_) => {
                    if let Err(mpsc::error::TrySendError::Closed(())) = sender.try_send(()) {
                        return;
                    }
                }
                Err(Errno::EINTR) => {}
                Err(errno) => {
                    // SIGTERM then stays blocked, so the worker ignores it from here on.
                    log::line(format_args!(
                        "cannot read SIGTERM from its signalfd: {errno}"
                    ));
                    return;
                }
            }
        })?;
    Ok(receiver)
}

/// Unblocks SIGTERM in the calling thread, so that the next SIGTERM (or one already pending)
/// terminates the process by its default action.
pub fn restore_default() -> io::Result<()> {
    Ok(only_sigterm().thread_unblock()?)
}

fn only_sigterm() -> SigSet {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask
}
