//! Shutdown: end of input and SIGTERM both deliver held replies before exiting 0.

use crate::support::{self, default_reply};

#[test]
fn eof_waits_for_delayed_replies_then_exits_zero() {
    let mut worker = support::spawn();
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mock/delay\",\"params\":{\"ms\":200},\"sessionId\":\"s\"}\n");
    worker.close_stdin();
    assert_eq!(
        worker.line(),
        default_reply(&worker, "1", "mock/delay", Some("\"s\""))
    );
    worker.expect_no_more_output();
    worker.expect_exit_code(0);
}

#[test]
fn unterminated_last_line_is_answered_at_eof() {
    let mut worker = support::spawn();
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"last\"}");
    worker.close_stdin();
    assert_eq!(worker.line(), default_reply(&worker, "1", "last", None));
    worker.expect_exit_code(0);
}

#[test]
fn sigterm_finishes_the_pending_delay_then_exits_zero() {
    let mut worker = support::spawn();
    worker
        .send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mock/delay\",\"params\":{\"ms\":300}}\n");
    // The delay is registered once a later request on the same stream has been answered.
    worker.send("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\n");
    assert_eq!(worker.line(), default_reply(&worker, "2", "ping", None));
    worker.sigterm();
    assert_eq!(
        worker.line(),
        default_reply(&worker, "1", "mock/delay", None)
    );
    worker.expect_no_more_output();
    worker.expect_exit_code(0);
}
