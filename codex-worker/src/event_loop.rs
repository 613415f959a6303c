//! The worker's single-threaded loop: input chunks, delayed-reply timers and SIGTERM.
//!
//! Output is gathered per read batch and written with one flush, so a busy worker makes a few large
//! writes rather than one syscall per message.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::time::Instant;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal as unix_signal, SignalKind};

use crate::input;
use crate::lines::Lines;
use crate::log;
use crate::mock::{Mock, Stop};
use crate::timer::sleep_until;

/// Output buffer capacity kept between batches; a burst beyond it is released afterwards.
const OUT_CAPACITY: usize = 64 * 1024;

/// Runs the worker until end of input, SIGTERM or an exit hook, and returns the exit status.
pub fn run(backend: Mock) -> io::Result<u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(backend))
}

async fn serve(mut mock: Mock) -> io::Result<u8> {
    let mut sigterm = unix_signal(SignalKind::terminate())?;
    let mut chunks = input::spawn_stdin_reader()?;
    let mut framer = Lines::new("stdin");
    let mut out = Vec::with_capacity(OUT_CAPACITY);
    let mut stdout = io::stdout().lock();
    let mut reading = true;

    while reading || mock.has_pending() {
        let deadline = mock.next_deadline();
        let flow = tokio::select! {
            // Biased so that a flood of input can delay neither shutdown nor due replies.
            biased;
            _ = sigterm.recv(), if reading => {
                log::line(format_args!("SIGTERM: no more input, finishing held replies and turns"));
                reading = false;
                ControlFlow::Continue(())
            }
            () = sleep_until(deadline) => mock.release_due(Instant::now(), &mut out),
            chunk = chunks.recv(), if reading => match chunk {
                Some(chunk) => framer.feed(&chunk, |line| mock.handle_line(line, &mut out)),
                None => {
                    reading = false;
                    framer.finish(|line| mock.handle_line(line, &mut out))
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

fn flush(stdout: &mut impl Write, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    stdout.write_all(out)?;
    stdout.flush()?;
    out.clear();
    out.shrink_to(OUT_CAPACITY);
    Ok(())
}

/// Dies the way a crashed backend would: SIGKILL, so nothing buffered or held gets out.
fn crash() -> ! {
    log::line(format_args!(
        "crash (mock/crash or scripted): killing myself with SIGKILL"
    ));
    let _ = signal::kill(Pid::this(), Signal::SIGKILL);
    // SIGKILL on oneself cannot be blocked; this only runs if the kill call itself failed.
    std::process::abort()
}
