//! Pipelined load: one thread writes while the test thread reads.

use std::io::{BufWriter, Write};
use std::thread;

use crate::support;

const REQUESTS: u64 = 100_000;

#[test]
fn hundred_thousand_pipelined_requests_all_answered_in_order() {
    let mut worker = support::spawn();
    let stdin = worker.take_stdin();
    let writer = thread::spawn(move || {
        let mut stdin = BufWriter::new(stdin);
        for id in 0..REQUESTS {
            writeln!(
                stdin,
                "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"bench\",\"sessionId\":\"s-{}\"}}",
                id % 8
            )
            .expect("write request");
        }
        stdin.flush().expect("flush requests");
    });
    for id in 0..REQUESTS {
        let line = worker.line();
        let prefix = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":");
        assert!(line.starts_with(&prefix), "reply {id} out of place: {line}");
        let suffix = format!(",\"sessionId\":\"s-{}\"}}", id % 8);
        assert!(
            line.ends_with(&suffix),
            "reply {id} lost its session: {line}"
        );
    }
    writer.join().expect("writer thread");
    worker.expect_no_more_output();
    worker.expect_exit_code(0);
}
