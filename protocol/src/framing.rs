//! NDJSON line framing over a reusable read buffer.
//!
//! The caller reads straight into [`LineFramer::spare`], reports the count with
//! [`LineFramer::filled`], then drains [`LineFramer::next_frame`] until it returns `None`.
//! Lines are handed out as borrowed slices, so framing never allocates per message.

use std::ops::Range;

use crate::top_id::TopLevelId;

/// Smallest writable tail handed out by `spare`, so one read syscall can move a useful amount.
const MIN_SPARE: usize = 64 * 1024;

/// A buffer grown past this by a long line goes back to [`MIN_SPARE`] once that line is consumed,
/// so an idle connection holds 64 KiB, not the ~1 MiB its largest line needed (measured). Lines
/// this long cost far more to handle than the reallocation.
const SHRINK_ABOVE: usize = 4 * MIN_SPARE;

/// The spare space of a [`LineFramer::lean`] framer whose last read was shorter than this: the
/// whole buffer of a connection that sends a line now and then. 64 KiB per idle client connection
/// was 94 % of the daemon's RSS per connection (bus-bench `idle-connections`).
const SMALL_SPARE: usize = 2 * 1024;

/// Splits a byte stream into newline-terminated lines with a per-line size limit.
#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    /// Made by [`LineFramer::lean`]: sized by the traffic.
    lean: bool,
    /// With `lean`: the last read (or none yet) was shorter than [`SMALL_SPARE`], so the buffer
    /// holds only that much spare space, and goes back to it once drained.
    small: bool,
    /// First byte not yet handed out.
    start: usize,
    /// End of the bytes written by the reader.
    end: usize,
    /// Bytes in `start..scan` are known to hold no `\n`, so they are never searched twice.
    scan: usize,
    max_line: usize,
    /// An oversize line was reported and its remainder is being dropped up to its `\n`.
    skipping: bool,
    /// Set by [`LineFramer::with_ids`]: the scan for an oversize line's top-level id, fed every
    /// byte of such a line (and no byte of any other).
    ids: Option<Box<TopLevelId>>,
    /// With `ids`: bytes of the oversize line being skipped so far.
    skipped: usize,
}

/// One unit of framed input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One complete line, without its `\n` and without one trailing `\r`. Never empty (empty lines are skipped).
    Line(&'a [u8]),
    /// A line exceeded `max_line`. Emitted ONCE, as soon as the limit is passed; the rest of that line
    /// (up to and including its `\n`) is then discarded without being buffered. `seen` = bytes seen so far.
    ///
    /// A framer made by [`LineFramer::with_ids`] emits it once the line has ENDED instead (at its
    /// `\n` or at end of input), with `seen` = the whole line and `id` = its top-level id.
    Oversize {
        /// Bytes of the line received when the limit was passed (with `with_ids`: in the whole
        /// line), not counting its `\n`.
        seen: usize,
        /// With `with_ids`: the line's top-level `"id"` member when it is a bus id (a plain
        /// non-negative integer, see [`crate::parse_bus_id`]); the last one if there are several.
        /// Always `None` otherwise.
        id: Option<u64>,
    },
}

/// A frame located in the buffer; resolved to a borrowed [`Frame`] only at the API boundary.
enum Found {
    Line(Range<usize>),
    Oversize { seen: usize, id: Option<u64> },
}

impl LineFramer {
    /// `max_line` = longest accepted line in bytes, excluding the `\n` (and an optional `\r` before it).
    pub fn new(max_line: usize) -> Self {
        LineFramer {
            buf: Vec::new(),
            lean: false,
            small: false,
            start: 0,
            end: 0,
            scan: 0,
            max_line,
            skipping: false,
            ids: None,
            skipped: 0,
        }
    }

    /// Like [`LineFramer::new`], but an oversize line is reported when it ends, with its top-level
    /// bus id (found by a streaming scan of every byte of that line, which is still never
    /// buffered), so the request it answers can be answered. Lines within the limit cost the same.
    pub fn with_ids(max_line: usize) -> Self {
        LineFramer {
            ids: Some(Box::default()),
            ..LineFramer::new(max_line)
        }
    }

    /// Like [`LineFramer::new`], but sized by the traffic, for streams that are mostly idle (client
    /// connections): while reads are shorter than 2 KiB the spare space is 2 KiB, and a buffer
    /// that held more shrinks back to 2 KiB once every byte in it has been handed out. A read
    /// that fills the spare space brings back the 64 KiB reads of [`LineFramer::new`], so a
    /// stream of pipelined lines is read in the same 64 KiB reads. A stream whose last read was
    /// long keeps its 64 KiB until a short one.
    pub fn lean(max_line: usize) -> Self {
        LineFramer {
            lean: true,
            small: true,
            ..LineFramer::new(max_line)
        }
    }

    /// Writable space at the tail of the buffer (at least 64 KiB, or 2 KiB for a
    /// [`LineFramer::lean`] framer after a short read; compacts consumed bytes first, grows if
    /// needed, and shrinks back to 64 KiB once a long line has been consumed).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scan -= self.start;
            self.start = 0;
        }
        if self.buf.len() > SHRINK_ABOVE && self.end <= MIN_SPARE {
            self.buf.truncate(MIN_SPARE);
            self.buf.shrink_to_fit();
        }
        let min_spare = if self.small { SMALL_SPARE } else { MIN_SPARE };
        if self.small && self.end == 0 && self.buf.len() > SMALL_SPARE {
            self.buf.truncate(SMALL_SPARE);
            self.buf.shrink_to_fit();
        }
        let need = self.end.saturating_add(min_spare);
        if self.buf.len() < need {
            // Grow geometrically to avoid quadratic copying while a long line arrives, but never past
            // the largest size a drained framer can need, so hostile input cannot inflate memory.
            let ceiling = self.max_line.saturating_add(1).saturating_add(MIN_SPARE);
            let target = need.max(self.buf.len().saturating_mul(2).min(ceiling));
            self.buf.reserve_exact(target - self.buf.len());
            self.buf.resize(target, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written into the slice last returned by `spare`.
    pub fn filled(&mut self, n: usize) {
        self.small = self.lean && n < SMALL_SPARE;
        // Clamped so that a caller bug cannot turn into an out-of-bounds panic later.
        self.end = self.end.saturating_add(n).min(self.buf.len());
    }

    /// Next complete frame, or `None` when more input is needed.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        let found = self.advance(false)?;
        Some(self.resolve(found))
    }

    /// At end of input: the unterminated last line, if any (as `Line`, or `Oversize` if it is too
    /// long; nothing if an oversize line was already being skipped), then `None`.
    pub fn finish(&mut self) -> Option<Frame<'_>> {
        let found = self.advance(true)?;
        Some(self.resolve(found))
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The bytes buffered but not yet returned as frames (empty while an oversize line is being
    /// skipped, whose bytes are never kept): what a reader that takes over the stream after the
    /// last frame returned must see first, e.g. requests pipelined behind a handshake line.
    pub fn unframed(&self) -> &[u8] {
        if self.skipping {
            &[]
        } else {
            &self.buf[self.start..self.end]
        }
    }

    fn resolve(&self, found: Found) -> Frame<'_> {
        match found {
            Found::Line(range) => Frame::Line(&self.buf[range]),
            Found::Oversize { seen, id } => Frame::Oversize { seen, id },
        }
    }

    /// Finds the next frame; with `at_eof`, the unterminated tail counts as a final line.
    fn advance(&mut self, at_eof: bool) -> Option<Found> {
        loop {
            if self.skipping {
                match memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                    Some(i) => {
                        self.skip(self.start, self.start + i);
                        self.start += i + 1;
                        self.scan = self.start;
                        self.skipping = false;
                        if let Some(found) = self.skipped_line() {
                            return Some(found);
                        }
                    }
                    None => {
                        // The remainder of an oversize line is dropped as it arrives, never kept.
                        self.skip(self.start, self.end);
                        self.skipping = !at_eof;
                        self.reset();
                        return if at_eof { self.skipped_line() } else { None };
                    }
                }
            }
            let Some(i) = memchr::memchr(b'\n', &self.buf[self.scan..self.end]) else {
                return self.incomplete(at_eof);
            };
            let newline = self.scan + i;
            let line_start = self.start;
            self.start = newline + 1;
            self.scan = self.start;
            if let Some(found) = self.classify(line_start, newline) {
                return Some(found);
            }
        }
    }

    /// Judges a complete line `from..newline`; `None` for an empty line, which is skipped.
    fn classify(&mut self, from: usize, newline: usize) -> Option<Found> {
        let mut to = newline;
        if to > from && self.buf[to - 1] == b'\r' {
            to -= 1;
        }
        if to == from {
            None
        } else if to - from > self.max_line {
            self.skip(from, newline);
            self.skipped_line().or(Some(Found::Oversize {
                seen: newline - from,
                id: None,
            }))
        } else {
            Some(Found::Line(from..to))
        }
    }

    /// Handles buffered bytes that hold no `\n`.
    fn incomplete(&mut self, at_eof: bool) -> Option<Found> {
        self.scan = self.end;
        let pending = self.end - self.start;
        if at_eof {
            let (from, to) = (self.start, self.end);
            self.reset();
            return self.classify(from, to);
        }
        // One byte of slack: a line of exactly `max_line` bytes may still be waiting for the `\n` of its `\r\n`.
        let slack = self.max_line.saturating_add(1);
        let over = pending > slack || (pending == slack && self.buf[self.end - 1] != b'\r');
        if over {
            self.skipping = true;
            self.skip(self.start, self.end);
            self.reset();
            // With the id scan, the line is reported when it ends.
            return self.ids.is_none().then_some(Found::Oversize {
                seen: pending,
                id: None,
            });
        }
        if pending == 0 {
            self.reset();
        }
        None
    }

    /// With the id scan: feeds `from..to`, bytes of an oversize line, to it.
    fn skip(&mut self, from: usize, to: usize) {
        if let Some(ids) = &mut self.ids {
            ids.feed(&self.buf[from..to]);
            self.skipped += to - from;
        }
    }

    /// With the id scan: the report of the oversize line that just ended (its trailing `\r`, if
    /// any, counted in `seen`); `None` without the scan.
    fn skipped_line(&mut self) -> Option<Found> {
        let ids = self.ids.as_mut()?;
        let seen = std::mem::take(&mut self.skipped);
        Some(Found::Oversize {
            seen,
            id: ids.finish(),
        })
    }

    /// Forgets all buffered bytes; cheap, so an idle connection costs no compaction on the next read.
    fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.scan = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        Line(Vec<u8>),
        Oversize(usize),
    }

    fn own(frame: Frame<'_>) -> Out {
        match frame {
            Frame::Line(line) => Out::Line(line.to_vec()),
            Frame::Oversize { seen, .. } => Out::Oversize(seen),
        }
    }

    fn line(s: &str) -> Out {
        Out::Line(s.as_bytes().to_vec())
    }

    /// Writes `chunk` through `spare`/`filled` and drains every frame it completes; returns the
    /// size of each read's spare space.
    fn feed(f: &mut LineFramer, mut chunk: &[u8], out: &mut Vec<Out>) -> Vec<usize> {
        let mut sizes = Vec::new();
        while !chunk.is_empty() {
            let lean = f.lean;
            let spare = f.spare();
            assert!(spare.len() >= if lean { SMALL_SPARE } else { MIN_SPARE });
            sizes.push(spare.len());
            let n = chunk.len().min(spare.len());
            spare[..n].copy_from_slice(&chunk[..n]);
            f.filled(n);
            chunk = &chunk[n..];
            while let Some(frame) = f.next_frame() {
                out.push(own(frame));
            }
        }
        sizes
    }

    fn finish(f: &mut LineFramer, out: &mut Vec<Out>) {
        while let Some(frame) = f.finish() {
            out.push(own(frame));
        }
    }

    #[test]
    fn the_buffer_shrinks_back_after_a_long_line() {
        let mut f = LineFramer::new(1 << 20);
        let mut out = Vec::new();
        let mut long = vec![b'x'; 900_000];
        long.push(b'\n');
        feed(&mut f, &long, &mut out);
        assert_eq!(out, vec![Out::Line(vec![b'x'; 900_000])]);
        assert_eq!(f.spare().len(), MIN_SPARE, "the buffer is small again");
        feed(&mut f, b"next\n", &mut out);
        assert_eq!(out.last(), Some(&line("next")));
    }

    #[test]
    fn what_follows_the_last_frame_taken_is_handed_on() {
        let mut f = LineFramer::new(64);
        let spare = f.spare();
        let input = b"first\nsecond\nthi";
        spare[..input.len()].copy_from_slice(input);
        f.filled(input.len());
        assert_eq!(f.next_frame(), Some(Frame::Line(b"first")));
        assert_eq!(f.unframed(), b"second\nthi");
        let mut f = LineFramer::new(4);
        let spare = f.spare();
        spare[..7].copy_from_slice(b"toolong");
        f.filled(7);
        assert!(matches!(f.next_frame(), Some(Frame::Oversize { .. })));
        assert_eq!(
            f.unframed(),
            b"",
            "an oversize line's bytes are never handed on"
        );
    }

    /// The frames of `chunks`, the same from a lean framer as from a plain one.
    fn frames(max_line: usize, chunks: &[&[u8]]) -> Vec<Out> {
        let [plain, lean] = [LineFramer::new(max_line), LineFramer::lean(max_line)].map(|mut f| {
            let mut out = Vec::new();
            for chunk in chunks {
                feed(&mut f, chunk, &mut out);
            }
            finish(&mut f, &mut out);
            assert_eq!(f.buffered(), 0);
            out
        });
        assert_eq!(plain, lean);
        plain
    }

    /// Deterministic xorshift so chunk boundaries are varied but reproducible.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    const STREAM: &[u8] =
        b"{\"a\":1}\n\n\r\n  \nline two\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\nok\r\r\n\
                            yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\nabcdefghij\r\nlast";

    /// The frames of `STREAM`; `seen` of an oversize line depends on where the limit was passed.
    fn expected(seen: [usize; 2]) -> Vec<Out> {
        vec![
            line("{\"a\":1}"),
            line("  "),
            line("line two"),
            Out::Oversize(seen[0]),
            line("ok\r"),
            Out::Oversize(seen[1]),
            line("abcdefghij"),
            line("last"),
        ]
    }

    #[test]
    fn whole_stream() {
        assert_eq!(frames(10, &[STREAM]), expected([32, 41]));
    }

    #[test]
    fn byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(frames(10, &chunks), expected([11, 11]));
    }

    #[test]
    fn random_chunks() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..500 {
            let mut chunks = Vec::new();
            let mut rest = STREAM;
            while !rest.is_empty() {
                let (head, tail) = rest.split_at(1 + rng.below(rest.len().min(16)));
                chunks.push(head);
                rest = tail;
            }
            let mut got = frames(10, &chunks);
            // An oversize line that arrives in pieces is reported as soon as the limit is passed,
            // so only `seen` may differ from the one-chunk run, and only within the line's length.
            for (frame, max) in got
                .iter_mut()
                .filter(|o| matches!(o, Out::Oversize(_)))
                .zip([32, 41])
            {
                if let Out::Oversize(seen) = frame {
                    assert!((11..=max).contains(seen), "seen {seen}");
                    *seen = max;
                }
            }
            assert_eq!(got, expected([32, 41]));
        }
    }

    #[test]
    fn empty_lines_are_skipped_but_whitespace_is_not() {
        assert_eq!(
            frames(10, &[b"\n\r\n\n \n\t\r\n\r\r\n"]),
            [line(" "), line("\t"), line("\r")]
        );
        assert_eq!(frames(10, &[b""]), []);
        assert_eq!(frames(10, &[b"\r"]), []);
    }

    #[test]
    fn limit_is_inclusive() {
        assert_eq!(frames(5, &[b"12345\n"]), [line("12345")]);
        assert_eq!(frames(5, &[b"12345\r\n"]), [line("12345")]);
        assert_eq!(frames(5, &[b"12345\r", b"\n"]), [line("12345")]);
        assert_eq!(frames(5, &[b"12345"]), [line("12345")]);
        assert_eq!(frames(5, &[b"12345\r"]), [line("12345")]);
        assert_eq!(
            frames(5, &[b"123456\nok\n"]),
            [Out::Oversize(6), line("ok")]
        );
        assert_eq!(
            frames(5, &[b"123456", b"\nok\n"]),
            [Out::Oversize(6), line("ok")]
        );
        assert_eq!(
            frames(5, &[b"12345\r", b"x\nok\n"]),
            [Out::Oversize(7), line("ok")]
        );
        assert_eq!(frames(5, &[b"12345\r", b"xy"]), [Out::Oversize(8)]);
        assert_eq!(frames(5, &[b"123456"]), [Out::Oversize(6)]);
        assert_eq!(frames(0, &[b"\nx\n\r\n"]), [Out::Oversize(1)]);
    }

    #[test]
    fn oversize_is_reported_once_and_never_buffered() {
        let max_line = 100_000;
        let bound = max_line + 1 + MIN_SPARE;
        let mut f = LineFramer::new(max_line);
        let mut out = Vec::new();
        let junk = vec![b'x'; 7_777];
        for _ in 0..1_000 {
            feed(&mut f, &junk, &mut out);
            assert!(f.buf.capacity() <= bound, "capacity {}", f.buf.capacity());
            assert!(f.buffered() <= max_line + 1);
        }
        // Detected after the 13th read, the first to pass the limit.
        assert_eq!(out, [Out::Oversize(7_777 * 13)]);
        feed(&mut f, b"tail\nnext", &mut out);
        finish(&mut f, &mut out);
        assert_eq!(out, [Out::Oversize(7_777 * 13), line("next")]);

        // Reads larger than the limit still report the whole read as seen, once.
        let mut f = LineFramer::new(10);
        let mut out = Vec::new();
        feed(&mut f, &[b'y'; 50_000], &mut out);
        feed(&mut f, &[b'y'; 50_000], &mut out);
        assert_eq!(out, [Out::Oversize(50_000)]);
        assert!(f.buf.capacity() <= 10 + 1 + MIN_SPARE);
        assert_eq!(f.buffered(), 0);
        finish(&mut f, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn long_accepted_line_over_many_reads() {
        let max_line = 300_000;
        let mut data = vec![b'z'; max_line];
        data.extend_from_slice(b"\r\nshort\n");
        let mut f = LineFramer::new(max_line);
        let mut out = Vec::new();
        for chunk in data.chunks(4_096) {
            feed(&mut f, chunk, &mut out);
            assert!(f.buf.capacity() <= max_line + 1 + MIN_SPARE);
        }
        assert_eq!(out, [Out::Line(vec![b'z'; max_line]), line("short")]);
    }

    #[test]
    fn finish_returns_tail_once() {
        let mut f = LineFramer::new(10);
        let mut out = Vec::new();
        feed(&mut f, b"a\nb\ntail", &mut out);
        assert_eq!(f.buffered(), 4);
        assert_eq!(f.finish().map(own), Some(line("tail")));
        assert_eq!(f.finish(), None);
        assert_eq!(f.buffered(), 0);
        assert_eq!(out, [line("a"), line("b")]);

        // Complete lines still pending are returned by `finish` before the tail.
        let mut f = LineFramer::new(10);
        let spare = f.spare();
        spare[..6].copy_from_slice(b"1\n2\n3\r");
        f.filled(6);
        let mut out = Vec::new();
        finish(&mut f, &mut out);
        assert_eq!(out, [line("1"), line("2"), line("3")]);

        // A tail being skipped as oversize yields nothing more.
        assert_eq!(frames(3, &[b"abcdef"]), [Out::Oversize(6)]);
        let mut f = LineFramer::new(3);
        let mut out = Vec::new();
        feed(&mut f, b"abcdef", &mut out);
        feed(&mut f, b"gh", &mut out);
        assert_eq!(f.finish(), None);
        feed(&mut f, b"new\n", &mut out);
        assert_eq!(out, [Out::Oversize(6), line("new")]);
    }

    #[test]
    fn with_ids_reports_an_oversize_line_once_it_ends_with_its_id() {
        let body = "x".repeat(200_000);
        let stream = format!(
            "{{\"id\":3,\"result\":\"{body}\"}}\nok\n{{\"result\":\"{body}\",\"id\":4}}\r\n\
             {{\"method\":\"{body}\"}}\n{{\"result\":\"{body}\",\"id\":5}}"
        );
        let len = body.len() + 20;
        let expected = [
            (Some(len), None, Some(3)),
            (None, Some("ok"), None),
            (Some(len + 1), None, Some(4)),
            (Some(body.len() + 13), None, None),
            (Some(len), None, Some(5)),
        ];
        for chunk in [1_000, 7_777, MIN_SPARE] {
            let mut f = LineFramer::with_ids(100);
            let mut got = Vec::new();
            let own = |frame: Frame<'_>| match frame {
                Frame::Line(line) => (None, Some(String::from_utf8(line.to_vec()).unwrap()), None),
                Frame::Oversize { seen, id } => (Some(seen), None, id),
            };
            for piece in stream.as_bytes().chunks(chunk) {
                f.spare()[..piece.len()].copy_from_slice(piece);
                f.filled(piece.len());
                while let Some(frame) = f.next_frame() {
                    got.push(own(frame));
                }
                // Never the line: the buffer stays near one read.
                assert!(f.buf.capacity() <= 2 * MIN_SPARE);
            }
            while let Some(frame) = f.finish() {
                got.push(own(frame));
            }
            let expected: Vec<_> = expected
                .iter()
                .map(|&(seen, line, id)| (seen, line.map(str::to_owned), id))
                .collect();
            assert_eq!(got, expected, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_lean_framer_holds_2_kib_between_short_reads_and_64_kib_under_load() {
        let mut f = LineFramer::lean(1 << 20);
        let mut out = Vec::new();
        assert_eq!(f.spare().len(), SMALL_SPARE, "a new connection reads 2 KiB");
        feed(&mut f, b"{\"id\":1}\n", &mut out);
        assert_eq!(f.spare().len(), SMALL_SPARE);
        assert!(
            f.buf.capacity() <= SMALL_SPARE,
            "an idle connection holds 2 KiB"
        );
        // Pipelined lines: the first read fills the 2 KiB, and from then on reads are 64 KiB.
        let burst: Vec<u8> = b"0123456789abcdef\n".repeat(10_000);
        let sizes = feed(&mut f, &burst, &mut out);
        assert_eq!(out.len(), 10_001);
        assert_eq!(sizes[0], SMALL_SPARE);
        assert!(sizes[1..].iter().all(|&s| s >= MIN_SPARE), "{sizes:?}");
        // One short read, and once drained the buffer is small again.
        feed(&mut f, b"{\"id\":2}\n", &mut out);
        assert_eq!(f.spare().len(), SMALL_SPARE);
        assert!(f.buf.capacity() <= SMALL_SPARE);
        // A short read in the middle of a line keeps the line, and grows to fit it.
        feed(&mut f, b"{\"id\":", &mut out);
        feed(&mut f, &[b' '; 3_000], &mut out);
        feed(&mut f, b"3}\n", &mut out);
        assert_eq!(out.len(), 10_003);
        assert_eq!(
            out[10_002],
            Out::Line([&b"{\"id\":"[..], &[b' '; 3_000], b"3}"].concat())
        );
        f.spare();
        assert!(
            f.buf.capacity() <= SMALL_SPARE,
            "drained after a short read"
        );
        // The long-line rules hold as for `new`.
        let mut long = vec![b'x'; 900_000];
        long.push(b'\n');
        feed(&mut f, &long, &mut out);
        assert_eq!(out.last(), Some(&Out::Line(vec![b'x'; 900_000])));
        assert!(f.spare().len() <= MIN_SPARE);
    }

    #[test]
    fn overfilling_is_clamped() {
        let mut f = LineFramer::new(10);
        let len = f.spare().len();
        f.filled(len + 1_000);
        assert_eq!(f.buffered(), len);
        let mut g = LineFramer::new(10);
        g.filled(5);
        assert_eq!(g.buffered(), 0);
        assert_eq!(g.next_frame(), None);
    }
}
