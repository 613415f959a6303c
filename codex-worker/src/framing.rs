//! NDJSON framing: cuts arbitrary stdin chunks into lines without copying complete lines.

use std::ops::ControlFlow;

/// Holds the unterminated tail of the input between chunks.
#[derive(Debug, Default)]
pub struct LineFramer {
    partial: Vec<u8>,
}

impl LineFramer {
    /// Feeds one chunk and calls `on_line` for every complete, non-blank line, `\r\n` tolerated.
    ///
    /// Stops at the first `Break`, so that an exit hook does not process the lines behind it.
    pub fn feed<B>(
        &mut self,
        chunk: &[u8],
        mut on_line: impl FnMut(&[u8]) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        if self.partial.is_empty() {
            // Common case under load: frame straight from the chunk, copy only its tail.
            let (consumed, flow) = split_lines(chunk, &mut on_line);
            self.partial.extend_from_slice(&chunk[consumed..]);
            return flow;
        }
        self.partial.extend_from_slice(chunk);
        let (consumed, flow) = split_lines(&self.partial, &mut on_line);
        self.partial.drain(..consumed);
        flow
    }

    /// Hands out the unterminated last line at end of input, so a missing final `\n` loses nothing.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let mut last = std::mem::take(&mut self.partial);
        if last.last() == Some(&b'\r') {
            last.pop();
        }
        (!is_blank(&last)).then_some(last)
    }
}

/// Returns how many bytes of `data` were complete lines, plus where `on_line` stopped.
fn split_lines<B>(
    data: &[u8],
    on_line: &mut impl FnMut(&[u8]) -> ControlFlow<B>,
) -> (usize, ControlFlow<B>) {
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', data) {
        let line = trim_cr(&data[start..end]);
        start = end + 1;
        if !is_blank(line) {
            if let ControlFlow::Break(stop) = on_line(line) {
                return (start, ControlFlow::Break(stop));
            }
        }
    }
    (start, ControlFlow::Continue(()))
}

/// Strips the `\r` of a `\r\n` line ending.
fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Whitespace-only lines carry no message; treating them as empty avoids spurious parse errors.
fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(framer: &mut LineFramer, chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = Vec::new();
        for chunk in chunks {
            let flow: ControlFlow<()> = framer.feed(chunk, |line| {
                lines.push(String::from_utf8(line.to_vec()).unwrap());
                ControlFlow::Continue(())
            });
            assert!(flow.is_continue());
        }
        lines
    }

    #[test]
    fn joins_lines_split_across_chunks() {
        let mut framer = LineFramer::default();
        let lines = collect(
            &mut framer,
            &[b"{\"a\"", b":1}\n{\"b\":2}\n{\"c\"", b":3}\n"],
        );
        assert_eq!(lines, [r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]);
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn strips_crlf_and_skips_blank_lines() {
        let mut framer = LineFramer::default();
        let lines = collect(&mut framer, &[b"\n\r\n  \n{\"a\":1}\r\n\n{\"b\":2}\n"]);
        assert_eq!(lines, [r#"{"a":1}"#, r#"{"b":2}"#]);
    }

    #[test]
    fn finish_returns_unterminated_tail() {
        let mut framer = LineFramer::default();
        let lines = collect(&mut framer, &[b"{\"a\":1}\n{\"b\"", b":2}\r"]);
        assert_eq!(lines, [r#"{"a":1}"#]);
        assert_eq!(framer.finish().as_deref(), Some(&br#"{"b":2}"#[..]));
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn break_stops_before_later_lines() {
        let mut framer = LineFramer::default();
        let mut seen = 0;
        let flow = framer.feed(b"a\nstop\nb\n", |line| {
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
