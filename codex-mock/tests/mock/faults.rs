//! The fault hooks of the daemon's fault-injection tests: deaths, hangs and a worker that will
//! not stop.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{self, default_reply, POOL, SLOT};

/// Long enough for a worker that was going to answer or exit to have done it.
const QUIET: Duration = Duration::from_millis(300);

/// How long a stubborn worker must outlive SIGTERM and end of input.
const STUBBORN: Duration = Duration::from_millis(500);

#[test]
fn exit_zero_flushes_earlier_replies_then_exits_zero() {
    let mut worker = support::spawn();
    worker.send(concat!(
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"before\"}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"mock/exit\",\"params\":{\"code\":0}}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"after\"}\n",
    ));
    assert_eq!(worker.line(), default_reply(&worker, "1", "before", None));
    worker.expect_no_more_output();
    worker.expect_exit_code(0);
}

#[test]
fn segv_dies_by_sigsegv() {
    let mut worker = support::spawn();
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mock/segv\"}\n");
    worker.expect_killed_by(Signal::SIGSEGV);
}

#[test]
fn hang_answers_nothing_and_outlives_eof_but_not_sigterm() {
    let mut worker = support::spawn();
    worker.send(concat!(
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mock/delay\",\"params\":{\"ms\":50}}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"before\"}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"mock/hang\"}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"after\"}\n",
    ));
    // Replies written before the hang are flushed; the delayed one never falls due.
    assert_eq!(worker.line(), default_reply(&worker, "2", "before", None));
    worker.expect_silence_for(QUIET);
    worker.close_stdin();
    worker.expect_alive_for(QUIET);
    worker.stderr_line_containing("mock/hang: hanging until SIGTERM");
    worker.sigterm();
    worker.expect_killed_by(Signal::SIGTERM);
}

#[test]
fn stubborn_answers_then_outlives_sigterm_and_eof_until_sigkill() {
    let mut worker = support::spawn();
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mock/stubborn\"}\n");
    assert_eq!(
        worker.line(),
        default_reply(&worker, "1", "mock/stubborn", None)
    );
    worker.sigterm();
    worker.stderr_line_containing("SIGTERM ignored (stubborn)");
    // Still serving: SIGTERM did not stop the reading either.
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\n");
    assert_eq!(worker.line(), default_reply(&worker, "2", "ping", None));
    worker.close_stdin();
    worker.stderr_line_containing("end of input ignored (stubborn)");
    worker.sigterm();
    worker.expect_alive_for(STUBBORN);
    worker.sigkill();
    worker.expect_killed_by(Signal::SIGKILL);
}

#[test]
fn stubborn_flag_ignores_sigterm_and_eof_from_the_start() {
    let mut worker = support::spawn_with(
        &["--stubborn"],
        &[("CODEX_BUS_POOL", POOL), ("CODEX_BUS_SLOT", SLOT)],
    );
    // A reply proves the worker is past its start, where SIGTERM still has its default action.
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n");
    assert_eq!(worker.line(), default_reply(&worker, "1", "ping", None));
    worker.sigterm();
    worker.close_stdin();
    worker.expect_alive_for(STUBBORN);
    worker.sigkill();
    worker.expect_killed_by(Signal::SIGKILL);
}

#[test]
fn stubborn_hang_outlives_sigterm() {
    let mut worker = support::spawn();
    worker.send(concat!(
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mock/stubborn\"}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"mock/hang\"}\n",
    ));
    assert_eq!(
        worker.line(),
        default_reply(&worker, "1", "mock/stubborn", None)
    );
    worker.stderr_line_containing("mock/hang: hanging until SIGKILL");
    worker.sigterm();
    worker.expect_alive_for(QUIET);
    worker.sigkill();
    worker.expect_killed_by(Signal::SIGKILL);
}
