//! A child's stderr, read as lines of bounded length.

#![forbid(unsafe_code)]

use codex_bus_protocol::{Frame, LineFramer};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads `stderr` until it closes (or fails) and hands each line to `on_line`: without its line
/// ending (`\n`, `\r\n`), as text (invalid UTF-8 replaced by U+FFFD); blank lines are skipped.
///
/// A line longer than `max_line` bytes is never buffered whole: `on_line` gets the note
/// `(stderr line over {max_line} bytes skipped)` in its place and the rest of it is dropped. The
/// stream is read to its end whatever it holds, so a child never blocks on a full stderr pipe.
pub async fn capture_stderr(
    mut stderr: impl AsyncRead + Unpin,
    max_line: usize,
    mut on_line: impl FnMut(&str),
) {
    let mut framer = LineFramer::new(max_line);
    loop {
        match stderr.read(framer.spare()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => framer.filled(n),
        }
        while let Some(frame) = framer.next_frame() {
            deliver(frame, max_line, &mut on_line);
        }
    }
    if let Some(frame) = framer.finish() {
        deliver(frame, max_line, &mut on_line);
    }
}

/// Hands one framed line, or the note that replaces an oversize one, to `on_line`.
fn deliver(frame: Frame<'_>, max_line: usize, on_line: &mut impl FnMut(&str)) {
    match frame {
        Frame::Line(line) => on_line(&String::from_utf8_lossy(line)),
        Frame::Oversize { .. } => on_line(&format!("(stderr line over {max_line} bytes skipped)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Spec;

    async fn lines(stderr: impl AsyncRead + Unpin, max_line: usize) -> Vec<String> {
        let mut got = Vec::new();
        capture_stderr(stderr, max_line, |line| got.push(line.to_owned())).await;
        got
    }

    #[tokio::test]
    async fn long_lines_are_replaced_by_a_note() {
        let long = "x".repeat(100_000);
        let input = format!("first\r\n{long}\n\nshort\n{long}");
        assert_eq!(
            lines(input.as_bytes(), 10).await,
            [
                "first",
                "(stderr line over 10 bytes skipped)",
                "short",
                "(stderr line over 10 bytes skipped)"
            ]
        );
    }

    #[tokio::test]
    async fn invalid_utf8_is_replaced_not_fatal() {
        let input: &[u8] = b"a\xffb\nlast";
        assert_eq!(lines(input, 10).await, ["a\u{fffd}b", "last"]);
    }

    #[tokio::test]
    async fn a_childs_stderr_is_captured() {
        let mut child = Spec::new("sh")
            .args([
                "-c",
                "echo one >&2; printf '%05000d\\n' 0 >&2; echo two >&2",
            ])
            .spawn()
            .unwrap();
        let got = lines(child.stderr.take().unwrap(), 1000).await;
        assert!(child.wait().await.unwrap().success());
        assert_eq!(got, ["one", "(stderr line over 1000 bytes skipped)", "two"]);
    }
}
