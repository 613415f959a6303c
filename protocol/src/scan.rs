//! Iterative validating JSON scanner (RFC 8259 grammar) and JSON string decoding.
//!
//! The scanner keeps no per-level state except one bit (object or array), so arbitrarily deep
//! input costs no stack and, up to 128 levels, no heap. It does not check UTF-8: callers validate
//! the whole line once with `std::str::from_utf8`, which is faster than checking inside strings.

use std::ops::Range;

/// Receives the structure of a document while the scanner validates it.
///
/// Depth 0 is the top-level value; members of a top-level container are at depth 1. Events are
/// delivered even if the document later turns out invalid, so visitors must not act on them
/// before the scan succeeds.
pub(crate) trait Visitor {
    /// An object member key at `depth`; `content` excludes the quotes, `escaped` = it holds a backslash.
    fn key(&mut self, depth: usize, content: Range<usize>, escaped: bool);
    /// A string, number, `true`, `false` or `null` value.
    fn scalar(&mut self, depth: usize, span: Range<usize>, kind: Scalar);
    /// An object (`object`) or array starts at byte `at`.
    fn open(&mut self, depth: usize, at: usize, object: bool);
    /// The container opened at the same depth ends just before `end`.
    fn close(&mut self, depth: usize, end: usize);
}

/// Which kind of scalar a value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scalar {
    String,
    Number,
    Literal,
}

/// The input is not one valid JSON text. No position: callers only ever answer "Parse error".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Invalid;

/// What the scanner expects next.
enum State {
    Value,
    AfterValue,
    /// A member key; whitespace before it is already skipped.
    Key,
}

/// Validates `b` as exactly one JSON value surrounded by optional whitespace, reporting its structure.
pub(crate) fn scan<V: Visitor>(b: &[u8], v: &mut V) -> Result<(), Invalid> {
    let mut nest = Nesting::default();
    let mut i = 0;
    let mut state = State::Value;
    loop {
        match state {
            State::Value => {
                i = skip_ws(b, i);
                let depth = nest.depth();
                let (end, kind) = match b.get(i).copied().ok_or(Invalid)? {
                    c @ (b'{' | b'[') => {
                        let object = c == b'{';
                        v.open(depth, i, object);
                        nest.push(object);
                        i = skip_ws(b, i + 1);
                        if b.get(i) == Some(if object { &b'}' } else { &b']' }) {
                            i += 1;
                            nest.pop();
                            v.close(depth, i);
                            state = State::AfterValue;
                        } else if object {
                            state = State::Key;
                        }
                        continue;
                    }
                    b'"' => (string(b, i)?.0, Scalar::String),
                    b'-' | b'0'..=b'9' => (number(b, i)?, Scalar::Number),
                    b't' => (literal(b, i, b"true")?, Scalar::Literal),
                    b'f' => (literal(b, i, b"false")?, Scalar::Literal),
                    b'n' => (literal(b, i, b"null")?, Scalar::Literal),
                    _ => return Err(Invalid),
                };
                v.scalar(depth, i..end, kind);
                i = end;
                state = State::AfterValue;
            }
            State::AfterValue => {
                i = skip_ws(b, i);
                let Some(object) = nest.top() else {
                    return if i == b.len() { Ok(()) } else { Err(Invalid) };
                };
                match b.get(i) {
                    Some(b',') => {
                        i = skip_ws(b, i + 1);
                        state = if object { State::Key } else { State::Value };
                    }
                    Some(b'}') if object => close(&mut nest, v, &mut i),
                    Some(b']') if !object => close(&mut nest, v, &mut i),
                    _ => return Err(Invalid),
                }
            }
            State::Key => {
                if b.get(i) != Some(&b'"') {
                    return Err(Invalid);
                }
                let (end, escaped) = string(b, i)?;
                v.key(nest.depth(), i + 1..end - 1, escaped);
                i = skip_ws(b, end);
                if b.get(i) != Some(&b':') {
                    return Err(Invalid);
                }
                i += 1;
                state = State::Value;
            }
        }
    }
}

/// Consumes the closing bracket at `*i` of the innermost container.
fn close<V: Visitor>(nest: &mut Nesting, v: &mut V, i: &mut usize) {
    *i += 1;
    nest.pop();
    v.close(nest.depth(), *i);
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

fn literal(b: &[u8], at: usize, word: &[u8]) -> Result<usize, Invalid> {
    let end = at + word.len();
    if b.get(at..end) == Some(word) {
        Ok(end)
    } else {
        Err(Invalid)
    }
}

/// Validates the string starting with the quote at `at`: returns the index after its closing quote
/// and whether it contains any escape.
pub(crate) fn string(b: &[u8], at: usize) -> Result<(usize, bool), Invalid> {
    let mut i = at + 1;
    let mut escaped = false;
    loop {
        i = skip_plain(b, i);
        match b.get(i).copied().ok_or(Invalid)? {
            b'"' => return Ok((i + 1, escaped)),
            b'\\' => {
                escaped = true;
                i += match b.get(i + 1).copied().ok_or(Invalid)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                    b'u' if hex4(b, i + 2).is_some() => 6,
                    _ => return Err(Invalid),
                };
            }
            0x00..=0x1f => return Err(Invalid),
            _ => i += 1,
        }
    }
}

/// Skips string bytes that need no attention, eight at a time: long string values dominate
/// large messages, and a byte-by-byte loop would be several times slower.
fn skip_plain(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let w = u64::from_le_bytes(*chunk);
        // Classic SWAR byte tests; borrows can only flag bytes after a real hit, so the lowest
        // flagged byte is always exact.
        let control = w.wrapping_sub(ONES * 0x20);
        let quote = (w ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES);
        let backslash = (w ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
        let hits = (control | quote | backslash) & !w & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i
}

/// Validates the number starting at `at` and returns the index after it.
pub(crate) fn number(b: &[u8], at: usize) -> Result<usize, Invalid> {
    let mut i = at;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i + 1),
        _ => return Err(Invalid),
    }
    if b.get(i) == Some(&b'.') {
        i = some_digits(b, i + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        i = some_digits(b, i)?;
    }
    Ok(i)
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = b.get(i) {
        i += 1;
    }
    i
}

/// Like `digits`, but at least one is required.
fn some_digits(b: &[u8], i: usize) -> Result<usize, Invalid> {
    let end = digits(b, i);
    if end == i {
        Err(Invalid)
    } else {
        Ok(end)
    }
}

/// The value of the four hex digits at `at`, if they are there.
fn hex4(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)?
        .iter()
        .try_fold(0u32, |acc, &c| {
            Some((acc << 4) | char::from(c).to_digit(16)?)
        })
}

/// Container kinds of all open levels, one bit each (1 = object).
///
/// The innermost 128 levels live in `bits`; older full words spill to the heap, so ordinary
/// documents never allocate while hostile depth costs one bit per level.
#[derive(Default)]
struct Nesting {
    bits: u128,
    depth: usize,
    spill: Vec<u128>,
}

impl Nesting {
    fn depth(&self) -> usize {
        self.depth
    }

    fn push(&mut self, object: bool) {
        if self.depth != 0 && self.depth % 128 == 0 {
            self.spill.push(self.bits);
            self.bits = 0;
        }
        self.bits = (self.bits << 1) | u128::from(object);
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.bits >>= 1;
        self.depth -= 1;
        if self.depth != 0 && self.depth % 128 == 0 {
            self.bits = self.spill.pop().unwrap_or_default();
        }
    }

    /// Kind of the innermost open container (`true` = object), `None` at top level.
    fn top(&self) -> Option<bool> {
        (self.depth != 0).then_some(self.bits & 1 == 1)
    }
}

/// Decoded pieces of a JSON string's content (the bytes between its quotes).
///
/// Lone surrogates are encoded as WTF-8 (three bytes each) so that distinct escaped strings stay
/// distinct. Malformed escapes, which validated input never holds, pass through as raw bytes.
pub(crate) struct Unescape<'a> {
    rest: &'a [u8],
}

/// One decoded piece: a run of bytes copied as-is, or one decoded escape.
pub(crate) enum Piece<'a> {
    Run(&'a [u8]),
    Char([u8; 4], usize),
}

impl Piece<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Piece::Run(run) => run,
            Piece::Char(buf, len) => &buf[..*len],
        }
    }
}

impl<'a> Unescape<'a> {
    pub(crate) fn new(content: &'a [u8]) -> Self {
        Unescape { rest: content }
    }

    /// Decodes the escape at the start of `rest`: the piece and the bytes it used.
    fn escape(&self) -> (Piece<'a>, usize) {
        let one = |c: u8| Piece::Char([c, 0, 0, 0], 1);
        match self.rest.get(1) {
            Some(&c @ (b'"' | b'\\' | b'/')) => (one(c), 2),
            Some(b'b') => (one(0x08), 2),
            Some(b'f') => (one(0x0c), 2),
            Some(b'n') => (one(b'\n'), 2),
            Some(b'r') => (one(b'\r'), 2),
            Some(b't') => (one(b'\t'), 2),
            Some(b'u') => match hex4(self.rest, 2) {
                Some(hi) => {
                    let lo = (self.rest.get(6..8) == Some(b"\\u"))
                        .then(|| hex4(self.rest, 8))
                        .flatten()
                        .filter(|lo| (0xdc00..0xe000).contains(lo));
                    match lo {
                        Some(lo) if (0xd800..0xdc00).contains(&hi) => {
                            (encode(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)), 12)
                        }
                        _ => (encode(hi), 6),
                    }
                }
                None => (Piece::Run(&self.rest[..1]), 1),
            },
            _ => (Piece::Run(&self.rest[..1]), 1),
        }
    }
}

impl<'a> Iterator for Unescape<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let (piece, used) = match memchr::memchr(b'\\', self.rest) {
            Some(0) => self.escape(),
            Some(n) => (Piece::Run(&self.rest[..n]), n),
            None => (Piece::Run(self.rest), self.rest.len()),
        };
        self.rest = &self.rest[used..];
        Some(piece)
    }
}

/// UTF-8 encoding of a code point, extended to surrogates (WTF-8), which `char` cannot hold.
fn encode(cp: u32) -> Piece<'static> {
    // Each `as u8` keeps only bits already masked or shifted into range.
    let cont = |shift: u32| 0x80 | ((cp >> shift) & 0x3f) as u8;
    match cp {
        0..0x80 => Piece::Char([cp as u8, 0, 0, 0], 1),
        0x80..0x800 => Piece::Char([0xc0 | (cp >> 6) as u8, cont(0), 0, 0], 2),
        0x800..0x10000 => Piece::Char([0xe0 | (cp >> 12) as u8, cont(6), cont(0), 0], 3),
        _ => Piece::Char([0xf0 | (cp >> 18) as u8, cont(12), cont(6), cont(0)], 4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts events so tests can check the scanner reports structure, not only validity.
    #[derive(Default)]
    struct Count {
        keys: usize,
        scalars: usize,
        opens: usize,
        closes: usize,
    }

    impl Visitor for Count {
        fn key(&mut self, _: usize, _: Range<usize>, _: bool) {
            self.keys += 1;
        }
        fn scalar(&mut self, _: usize, _: Range<usize>, _: Scalar) {
            self.scalars += 1;
        }
        fn open(&mut self, _: usize, _: usize, _: bool) {
            self.opens += 1;
        }
        fn close(&mut self, _: usize, _: usize) {
            self.closes += 1;
        }
    }

    fn valid(s: &[u8]) -> bool {
        std::str::from_utf8(s).is_ok() && scan(s, &mut Count::default()).is_ok()
    }

    #[test]
    fn grammar_table() {
        let good: &[&[u8]] = &[
            b"0",
            b"-0",
            b"1e5",
            b"-1.25E+10",
            b"1E-0",
            b"123456789012345678901234567890",
            b"true",
            b"false",
            b"null",
            b"\"\"",
            b"\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"",
            b"\"\\u00e9\\uD83D\\uDE00\\ud800\"",
            "\"h\u{e9}llo \u{1F600}\"".as_bytes(),
            b"[]",
            b"{}",
            b" \t\r\n[ 1 , [ ] , { } , \"x\" ] \n",
            b"{\"a\":{\"b\":[null,true]},\"c\":-0.5e-3}",
            b"{\"a\":1,\"a\":2}",
        ];
        let bad: &[&[u8]] = &[
            b"",
            b"   ",
            b"01",
            b"-01",
            b"1.",
            b".5",
            b"-",
            b"+1",
            b"1e",
            b"1e+",
            b"0x10",
            b"1.5.",
            b"NaN",
            b"tru",
            b"nul",
            b"True",
            b"\"abc",
            b"\"\\x\"",
            b"\"\\u12\"",
            b"\"\\u12G4\"",
            b"\"a\x00b\"",
            b"\"tab\there\"",
            b"\"\xff\"",
            b"\"\xc3\"",
            b"{\"a\":1,}",
            b"[1,]",
            b"[,1]",
            b"{\"a\"}",
            b"{\"a\" 1}",
            b"{1:2}",
            b"{'a':1}",
            b"[1 2]",
            b"{\"a\":1]",
            b"[1}",
            b"{} x",
            b"{}{}",
            b"1 2",
            b"[",
            b"]",
            b"{\"a\":",
        ];
        for s in good {
            assert!(valid(s), "should accept {:?}", String::from_utf8_lossy(s));
        }
        for s in bad {
            assert!(!valid(s), "should reject {:?}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn events_follow_structure() {
        let mut c = Count::default();
        scan(b"{\"a\":[1,{\"b\":null}],\"c\":\"d\"}", &mut c).unwrap();
        assert_eq!((c.keys, c.scalars, c.opens, c.closes), (3, 3, 3, 3));
    }

    fn deep(open: &[u8], close: &[u8], n: usize, terminated: bool) -> Vec<u8> {
        let mut v = open.repeat(n);
        v.extend_from_slice(b"1");
        if terminated {
            v.extend(close.repeat(n));
        }
        v
    }

    #[test]
    fn deep_nesting_uses_no_stack() {
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                for n in [127, 128, 129, 256, 257, 10_000] {
                    assert!(valid(&deep(b"[", b"]", n, true)), "array depth {n}");
                    assert!(valid(&deep(b"{\"k\":", b"}", n, true)), "object depth {n}");
                    assert!(!valid(&deep(b"[", b"]", n, false)));
                    assert!(!valid(&deep(b"{\"k\":", b"}", n, false)));
                }
                // Closing with the wrong kind at every spill boundary must be caught.
                let mut mixed = deep(b"[{\"k\":", b"}]", 5_000, true);
                let last = mixed.len() - 1;
                mixed[last] = b'}';
                assert!(!valid(&mixed));
            })
            .unwrap();
        handle.join().unwrap();
    }

    fn decode(s: &[u8]) -> Vec<u8> {
        Unescape::new(s).flat_map(|p| p.bytes().to_vec()).collect()
    }

    #[test]
    fn unescape_decodes_every_escape() {
        assert_eq!(decode(b"plain"), b"plain");
        assert_eq!(
            decode(b"a\\\"b\\\\c\\/\\b\\f\\n\\r\\t"),
            b"a\"b\\c/\x08\x0c\n\r\t"
        );
        assert_eq!(decode(b"\\u0069d"), b"id");
        assert_eq!(decode(b"\\u00e9\\u20AC"), "\u{e9}\u{20ac}".as_bytes());
        assert_eq!(decode(b"\\uD83D\\uDE00"), "\u{1F600}".as_bytes());
        assert_eq!(decode(b"\\ud800"), [0xed, 0xa0, 0x80]);
        assert_eq!(decode(b"\\ud800\\u0041"), [0xed, 0xa0, 0x80, b'A']);
        assert_eq!(
            decode(b"\\udc00\\udc00"),
            [0xed, 0xb0, 0x80, 0xed, 0xb0, 0x80]
        );
        // Malformed input (never produced by the scanner) passes through instead of panicking.
        assert_eq!(decode(b"\\"), b"\\");
        assert_eq!(decode(b"\\u12"), b"\\u12");
        assert_eq!(decode(b"\\q"), b"\\q");
    }
}
