//! Cuts byte chunks into NDJSON lines with the bus's own framer (`codex-bus-protocol`).

use std::ops::ControlFlow;

use codex_bus_protocol::{Frame, LineFramer};

use crate::log;

/// Longest line accepted from the bus or from a child; Codex results such as `thread/resume`
/// with history can exceed a few MiB, and this matches the bus's `max_worker_line`.
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// A framer that hands out complete, non-blank lines, `\r\n` tolerated.
#[derive(Debug)]
pub struct Lines {
    framer: LineFramer,
    /// Where the stream comes from, for the log line about an oversize line.
    source: &'static str,
}

impl Lines {
    /// A framer for the stream named `source` in log lines.
    pub fn new(source: &'static str) -> Self {
        Self {
            framer: LineFramer::new(MAX_LINE),
            source,
        }
    }

    /// Feeds one chunk and calls `on_line` for every complete line it finishes.
    ///
    /// Stops at the first `Break`, so that an exit hook does not process the lines behind it.
    pub fn feed<B>(
        &mut self,
        mut chunk: &[u8],
        mut on_line: impl FnMut(&[u8]) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        while !chunk.is_empty() {
            let spare = self.framer.spare();
            let n = chunk.len().min(spare.len());
            spare[..n].copy_from_slice(&chunk[..n]);
            self.framer.filled(n);
            chunk = &chunk[n..];
            while let Some(frame) = self.framer.next_frame() {
                deliver(frame, self.source, &mut on_line)?;
            }
        }
        ControlFlow::Continue(())
    }

    /// At end of input: the unterminated last line, if any, so a missing final `\n` loses nothing.
    pub fn finish<B>(
        &mut self,
        mut on_line: impl FnMut(&[u8]) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        while let Some(frame) = self.framer.finish() {
            deliver(frame, self.source, &mut on_line)?;
        }
        ControlFlow::Continue(())
    }
}

fn deliver<B>(
    frame: Frame<'_>,
    source: &str,
    on_line: &mut impl FnMut(&[u8]) -> ControlFlow<B>,
) -> ControlFlow<B> {
    match frame {
        // Whitespace-only lines carry no message; treating them as empty avoids spurious errors.
        Frame::Line(line) if line.iter().all(u8::is_ascii_whitespace) => ControlFlow::Continue(()),
        Frame::Line(line) => on_line(line),
        Frame::Oversize { seen, .. } => {
            log::line(format_args!(
                "{source}: skipping a line longer than {MAX_LINE} bytes ({seen} bytes seen)"
            ));
            ControlFlow::Continue(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(lines: &mut Lines, chunks: &[&[u8]]) -> Vec<String> {
        let mut seen = Vec::new();
        for chunk in chunks {
            let flow: ControlFlow<()> = lines.feed(chunk, |line| {
                seen.push(String::from_utf8(line.to_vec()).unwrap());
                ControlFlow::Continue(())
            });
            assert!(flow.is_continue());
        }
        seen
    }

    #[test]
    fn joins_lines_split_across_chunks_and_skips_blank_ones() {
        let mut lines = Lines::new("test");
        let seen = collect(
            &mut lines,
            &[b"{\"a\"", b":1}\r\n\n  \n{\"b\":2}\n{\"c\"", b":3}\n"],
        );
        assert_eq!(seen, [r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]);
    }

    #[test]
    fn finish_hands_out_the_unterminated_tail() {
        let mut lines = Lines::new("test");
        assert_eq!(collect(&mut lines, &[b"{\"a\":1}\n{\"b\""]), [r#"{"a":1}"#]);
        let mut tail = Vec::new();
        let flow: ControlFlow<()> = lines.finish(|line| {
            tail.push(line.to_vec());
            ControlFlow::Continue(())
        });
        assert!(flow.is_continue());
        assert_eq!(tail, [b"{\"b\"".to_vec()]);
    }

    #[test]
    fn break_stops_before_later_lines() {
        let mut lines = Lines::new("test");
        let mut seen = 0;
        let flow = lines.feed(b"a\nstop\nb\n", |line| {
            seen += 1;
            if line == b"stop" {
                ControlFlow::Break(7)
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(flow, ControlFlow::Break(7));
        assert_eq!(seen, 2);
    }
}
