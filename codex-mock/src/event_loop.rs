//! The mock worker's single-threaded loop: input chunks, delayed-reply timers and SIGTERM, plus
//! the deaths and hangs of the fault hooks.
//!
//! Output is gathered per read batch and written with one flush, so a busy worker makes a few large
//! writes rather than one syscall per message.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::time::Instant;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{self, Signal};
use nix::unistd::{self, Pid};
use tokio::sync::mpsc;

use codex_bus_worker_io::input;
use codex_bus_worker_io::lines::Lines;
use codex_bus_worker_io::log;
use codex_bus_worker_io::timer::sleep_until;

use crate::mock::{Mock, Stop};
use crate::sigterm;

/// Output buffer capacity kept between batches; a burst beyond it is released afterwards.
const OUT_CAPACITY: usize = 64 * 1024;

/// Runs the worker until end of input, SIGTERM or an exit hook (a stubborn one: until SIGKILL),
/// and returns the exit status.
pub fn run(mock: Mock) -> io::Result<u8> {
    // Before the runtime and the stdin reader start, so that every thread inherits the mask.
    let sigterm = sigterm::watch()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(mock, sigterm))
}

async fn serve(mut mock: Mock, mut sigterm: mpsc::Receiver<()>) -> io::Result<u8> {
    let mut chunks = input::spawn_stdin_reader()?;
    let mut framer = Lines::new("stdin");
    let mut out = Vec::with_capacity(OUT_CAPACITY);
    let mut stdout = io::stdout().lock();
    let mut reading = true;

    // A stubborn worker stays in the loop with nothing to do, until SIGKILL.
    while reading || mock.has_pending() || mock.is_stubborn() {
        let stubborn = mock.is_stubborn();
        let deadline = mock.next_deadline();
        let flow = tokio::select! {
            // Biased so that a flood of input can delay neither shutdown nor due replies.
            biased;
            // `None` (the watch failed and said so) leaves SIGTERM blocked: ignored.
            Some(()) = sigterm.recv(), if reading || stubborn => {
                if stubborn {
                    log::line(format_args!("SIGTERM ignored (stubborn)"));
                } else {
                    log::line(format_args!(
                        "SIGTERM: no more input, finishing held replies and turns"
                    ));
                    reading = false;
                }
                ControlFlow::Continue(())
            }
            () = sleep_until(deadline) => mock.release_due(Instant::now(), &mut out),
            chunk = chunks.recv(), if reading => match chunk {
                Some(chunk) => framer.feed(&chunk, |line| mock.handle_line(line, &mut out)),
                None => {
                    reading = false;
                    let flow = framer.finish(|line| mock.handle_line(line, &mut out));
                    if mock.is_stubborn() {
                        log::line(format_args!("end of input ignored (stubborn)"));
                    }
                    flow
                }
            },
        };
        match flow {
            ControlFlow::Continue(()) => flush(&mut stdout, &mut out)?,
            ControlFlow::Break(Stop::Exit(code)) => {
                flush(&mut stdout, &mut out)?;
                return Ok(code);
            }
            ControlFlow::Break(Stop::Crash) => crash(),
            ControlFlow::Break(Stop::Segv) => segv(),
            ControlFlow::Break(Stop::Hang) => {
                flush(&mut stdout, &mut out)?;
                // Without a receiver the reader quits after its current read, so stdin fills up
                // behind the worker as it would behind a stuck one.
                drop(chunks);
                hang(mock.is_stubborn());
            }
            ControlFlow::Break(Stop::CloseStdout) => {
                flush(&mut stdout, &mut out)?;
                close_stdout()?;
            }
        }
    }
    if mock.unanswered_asks() > 0 {
        log::line(format_args!(
            "input closed with {} mock/ask request(s) unanswered; they get no reply",
            mock.unanswered_asks()
        ));
    }
    Ok(0)
}

/// Writes what a batch gathered in `out` with one write and one flush, then empties `out`,
/// releasing what a burst grew it beyond [`OUT_CAPACITY`]. The fake child writes this way too.
pub fn flush(stdout: &mut impl Write, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    stdout.write_all(out)?;
    stdout.flush()?;
    out.clear();
    out.shrink_to(OUT_CAPACITY);
    Ok(())
}

/// Closes the stdout pipe while the process keeps running: `/dev/null` takes fd 1's place, so
/// later replies are written (and lost) without a write error ending the worker.
fn close_stdout() -> io::Result<()> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    unistd::dup2_stdout(&null)?;
    log::line(format_args!(
        "mock/close-stdout: stdout closed, still serving (replies go to /dev/null)"
    ));
    Ok(())
}

/// Dies the way a crashed worker would: SIGKILL, so nothing buffered or held gets out.
fn crash() -> ! {
    log::line(format_args!(
        "crash (mock/crash or scripted): killing myself with SIGKILL"
    ));
    let _ = signal::kill(Pid::this(), Signal::SIGKILL);
    // SIGKILL on oneself cannot be blocked; this only runs if the kill call itself failed.
    std::process::abort()
}

/// Dies the way a segfaulting program does, by SIGSEGV, without flushing anything.
fn segv() -> ! {
    log::line(format_args!("mock/segv: raising SIGSEGV"));
    // A test suite may segfault many workers; nobody wants their core dumps.
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_CORE) {
        let _ = setrlimit(Resource::RLIMIT_CORE, 0, hard);
    }
    // The Rust runtime's stack-overflow handler catches the first SIGSEGV; for a fault outside
    // the guard page it restores the default action and returns (expecting the faulting
    // instruction to fault again), so a raised signal needs a second raise to kill.
    for _ in 0..2 {
        let _ = signal::raise(Signal::SIGSEGV);
    }
    // Only reached if something else handles SIGSEGV.
    std::process::abort()
}

/// Stops doing anything, like a worker stuck in a loop or a deadlock: no output, no input.
///
/// SIGTERM gets its default action back (it kills), unless the worker is stubborn; SIGKILL
/// always kills.
fn hang(stubborn: bool) -> ! {
    if stubborn {
        log::line(format_args!("mock/hang: hanging until SIGKILL (stubborn)"));
    } else {
        match sigterm::restore_default() {
            // Logged once SIGTERM kills, so that a test can wait for the line before sending it.
            Ok(()) => log::line(format_args!("mock/hang: hanging until SIGTERM or SIGKILL")),
            Err(err) => log::line(format_args!(
                "mock/hang: cannot unblock SIGTERM ({err}), hanging until SIGKILL"
            )),
        }
    }
    loop {
        // Sleeps without spinning; pause returns only after a signal handler ran, and none of
        // the signals this process handles is expected here.
        unistd::pause();
    }
}
