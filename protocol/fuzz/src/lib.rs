//! Oracles shared by the cargo-fuzz targets and `protocol/tests/properties.rs`.
//!
//! Each `check_*` function panics (via `assert!`) when `codex-bus-protocol` breaks a documented
//! contract on the given input, so a fuzzer crash and a failing property mean the same thing.
//! The property suite includes this file with `#[path]`, which keeps the two in lockstep; hence no
//! crate-level attributes here.

use codex_bus_protocol::{
    append_error_reply, append_with_bus_id, append_with_token, key_bytes, parse, parse_bus_id,
    Envelope, EnvelopeError, ErrorKind, Frame, Kind, LineFramer, Message, SessionPath, Span,
};
use serde::de::IgnoredAny;
use serde_json::{json, Value};
use std::borrow::Cow;

/// An owned [`Frame`], so frames can be collected and compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// `Frame::Line`.
    Line(Vec<u8>),
    /// `Frame::Oversize { seen }`.
    Oversize(usize),
}

/// The session paths every line is parsed with: top level, the usual nested one, and a deeper one.
pub const SESSION_PATHS: [&str; 3] = ["sessionId", "params.sessionId", "params._meta.sessionId"];

/// Feeds `data` through a fresh framer, reading `chunks[i % len]` bytes at a time (all at once if
/// `chunks` is empty), draining after every read as the daemon does, then draining `finish`.
///
/// Returns the frames and the stream offset reached after each read (the read boundaries).
/// Calls `on_line` for every `Frame::Line`.
pub fn run_framer(
    data: &[u8],
    chunks: &[usize],
    max_line: usize,
    mut on_line: impl FnMut(&[u8]),
) -> (Vec<Out>, Vec<usize>) {
    let mut framer = LineFramer::new(max_line);
    let mut frames = Vec::new();
    let mut reads = Vec::new();
    let mut own = |frame: Frame<'_>, frames: &mut Vec<Out>| match frame {
        Frame::Line(line) => {
            on_line(line);
            frames.push(Out::Line(line.to_vec()));
        }
        Frame::Oversize { seen, .. } => frames.push(Out::Oversize(seen)),
    };
    let mut at = 0;
    let mut sizes = chunks.iter().copied().map(|n| n.max(1)).cycle();
    while at < data.len() {
        let want = sizes.next().unwrap_or(data.len());
        let spare = framer.spare();
        // At least the first tail (4 KiB); it grows to 64 KiB as reads fill it.
        assert!(spare.len() >= 4 * 1024, "spare shrank to {}", spare.len());
        let n = want.min(spare.len()).min(data.len() - at);
        spare[..n].copy_from_slice(&data[at..at + n]);
        framer.filled(n);
        at += n;
        reads.push(at);
        while let Some(frame) = framer.next_frame() {
            own(frame, &mut frames);
        }
        // Draining is idempotent, and a drained framer holds at most one line plus a `\r` of slack.
        assert_eq!(framer.next_frame(), None);
        assert!(
            framer.buffered() <= max_line.saturating_add(1),
            "{} bytes buffered after draining with max_line {max_line}",
            framer.buffered()
        );
    }
    while let Some(frame) = framer.finish() {
        own(frame, &mut frames);
    }
    assert_eq!(framer.finish(), None);
    assert_eq!(framer.buffered(), 0, "bytes left after finish");
    (frames, reads)
}

/// The frames `LineFramer` documents for `data` read with the given read boundaries.
///
/// Lines are what splitting on `\n` gives, minus one trailing `\r`; empty ones are skipped. A line
/// longer than `max_line` is one `Oversize`: if it was still unterminated after some read and that
/// read already passed the limit, `seen` = its bytes received by then (the framer reports as soon
/// as it can tell, keeping one byte of slack for a `\r` that may precede the `\n`), otherwise
/// `seen` = its whole length including any `\r`.
pub fn expected_frames(data: &[u8], reads: &[usize], max_line: usize) -> Vec<Out> {
    let slack = max_line.saturating_add(1);
    let mut frames = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let newline = data[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| start + i);
        let end = newline.unwrap_or(data.len());
        // `reads` ascends; searching keeps this linear for byte-at-a-time reads of long inputs.
        let first = reads.partition_point(|&read| read <= start);
        let early = reads[first..]
            .iter()
            .take_while(|&&read| read <= end)
            .find_map(|&read| {
                let pending = read - start;
                let over = pending > slack || (pending == slack && data[read - 1] != b'\r');
                over.then_some(pending)
            });
        if let Some(seen) = early {
            frames.push(Out::Oversize(seen));
        } else {
            let to = if end > start && data[end - 1] == b'\r' {
                end - 1
            } else {
                end
            };
            if to - start > max_line {
                frames.push(Out::Oversize(end - start));
            } else if to > start {
                frames.push(Out::Line(data[start..to].to_vec()));
            }
        }
        start = end + 1;
    }
    frames
}

/// Checks framing of `data` (see [`run_framer`] for `chunks`) against [`expected_frames`] and the
/// chunking-independent part of the contract; `on_line` sees every line.
pub fn check_framing(data: &[u8], chunks: &[usize], max_line: usize, on_line: impl FnMut(&[u8])) {
    let (got, reads) = run_framer(data, chunks, max_line, on_line);
    assert_eq!(
        got,
        expected_frames(data, &reads, max_line),
        "max_line {max_line}, reads {reads:?}, data {:?}",
        String::from_utf8_lossy(data)
    );
    // Independent of read boundaries: the same frames as reading everything at once, except that
    // an oversize line may be reported before all of it arrived.
    let whole = expected_frames(data, &[data.len()], max_line);
    assert_eq!(got.len(), whole.len());
    for (frame, one_read) in got.iter().zip(&whole) {
        match (frame, one_read) {
            (Out::Line(line), Out::Line(same)) => {
                assert_eq!(line, same);
                assert!(!line.is_empty() && line.len() <= max_line && !line.contains(&b'\n'));
            }
            (Out::Oversize(seen), Out::Oversize(total)) => {
                assert!(*seen > max_line && seen <= total, "seen {seen} of {total}");
            }
            _ => panic!("{frame:?} where one read gives {one_read:?}"),
        }
    }
}

/// Parses `line` with every path in [`SESSION_PATHS`]; for callers that only need "no panic".
pub fn parse_all_paths(line: &[u8]) {
    for path in SESSION_PATHS {
        let path = SessionPath::parse(path).expect("valid path");
        let _ = parse(line, &path);
    }
}

/// Whether serde_json accepts `bytes` as one JSON text (grammar only: numbers are not converted,
/// lone surrogate escapes are allowed, exactly as the bus's scanner treats them).
fn serde_accepts(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok() && serde_json::from_slice::<IgnoredAny>(bytes).is_ok()
}

/// The token at `span` as a serde value; `None` if serde cannot build one (e.g. lone surrogates).
fn token_value(line: &[u8], span: &Span) -> Option<Value> {
    serde_json::from_slice(&line[span.clone()]).ok()
}

/// Everything `parse` promises about `line`, cross-checked with serde_json, plus the id
/// rewrite→restore identity for `bus_id` and the error reply built from the line's id.
pub fn check_line(line: &[u8], bus_id: u64) {
    // serde_json refuses nesting past 128 levels; the bus has no limit, so only compare below it.
    let comparable = line.iter().filter(|&&c| c == b'[' || c == b'{').count() < 100;
    let accepted = serde_accepts(line);
    let value: Option<Value> = if comparable && accepted {
        serde_json::from_slice(line).ok()
    } else {
        None
    };
    for dotted in SESSION_PATHS {
        let path = SessionPath::parse(dotted).expect("valid path");
        let got = parse(line, &path);
        if comparable {
            assert_eq!(
                got != Err(EnvelopeError::Parse),
                accepted,
                "verdict differs from serde_json: {got:?} for {:?}",
                String::from_utf8_lossy(line)
            );
        }
        match got {
            Ok(Message::Object(env)) => {
                check_spans(line, &env);
                if let Some(v) = &value {
                    check_against_serde(line, &env, dotted, v);
                }
                check_rewrite(line, &env, &path, bus_id);
                if let Some(id) = &env.id {
                    let kind = ErrorKind::ALL[line.len() % ErrorKind::ALL.len()];
                    check_error_reply(Some(&line[id.clone()]), kind, Some(&lossy(line)));
                }
            }
            Ok(Message::Batch(elements)) => {
                if let Some(v) = &value {
                    let items = v.as_array().expect("a batch is an array");
                    assert_eq!(elements, items.len());
                }
            }
            Err(EnvelopeError::NotObject) => {
                assert!(accepted);
                if let Some(v) = &value {
                    assert!(!v.is_object() && !v.is_array(), "{v}");
                }
            }
            Err(EnvelopeError::DuplicateId) => {
                assert!(accepted);
                let text = std::str::from_utf8(line).expect("accepted lines are UTF-8");
                assert!(text.trim_start().starts_with('{'));
            }
            Err(EnvelopeError::Parse) => {}
        }
    }
}

fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Spans lie inside the line and hold tokens of the documented kind.
fn check_spans(line: &[u8], env: &Envelope) {
    for span in [&env.id, &env.method, &env.session, &env.pool]
        .into_iter()
        .flatten()
    {
        assert!(span.start < span.end && span.end <= line.len(), "{span:?}");
        assert!(serde_accepts(&line[span.clone()]), "token {span:?}");
    }
    if let Some(span) = &env.session {
        let token = &line[span.clone()];
        assert!(matches!(token[0], b'"' | b'-' | b'0'..=b'9'));
        let key = key_bytes(token).expect("a session token is a string or number");
        assert_eq!(
            matches!(key, Cow::Borrowed(_)),
            !token.contains(&b'\\'),
            "key_bytes borrows exactly when nothing needs unescaping"
        );
    }
    if let Some(span) = &env.pool {
        assert_eq!(line[span.start], b'"');
        assert!(key_bytes(&line[span.clone()]).is_some());
    }
    let kind = match (env.method.is_some(), env.id.is_some()) {
        (true, true) => Kind::Request,
        (true, false) => Kind::Notification,
        (false, true) if env.has_result || env.has_error => Kind::Response,
        _ => Kind::Invalid,
    };
    assert_eq!(env.kind(), kind);
}

/// The envelope agrees with serde_json's reading of the same document (last duplicate wins).
fn check_against_serde(line: &[u8], env: &Envelope, dotted: &str, v: &Value) {
    let map = v.as_object().expect("an envelope comes from an object");
    assert_eq!(
        env.id.as_ref().and_then(|s| token_value(line, s)),
        map.get("id").cloned()
    );
    assert_eq!(
        env.method.as_ref().and_then(|s| token_value(line, s)),
        map.get("method").cloned()
    );
    assert_eq!(env.has_result, map.contains_key("result"));
    assert_eq!(env.has_error, map.contains_key("error"));
    let pool = map.get("pool").filter(|p| p.is_string());
    assert_eq!(
        env.pool
            .as_ref()
            .and_then(|s| token_value(line, s))
            .as_ref(),
        pool
    );
    let mut at = Some(v);
    for segment in dotted.split('.') {
        at = at.and_then(Value::as_object).and_then(|m| m.get(segment));
    }
    let session = at.filter(|s| s.is_string() || s.is_number());
    assert_eq!(
        env.session
            .as_ref()
            .and_then(|s| token_value(line, s))
            .as_ref(),
        session,
        "session at {dotted}"
    );
    // The routing key of a string session is its decoded content, of a number its raw text.
    if let (Some(span), Some(session)) = (&env.session, session) {
        let token = &line[span.clone()];
        let key = key_bytes(token).expect("session token");
        match session {
            Value::String(s) => assert_eq!(&*key, s.as_bytes()),
            _ => assert_eq!(&*key, token),
        }
    }
}

/// What the daemon does with a request id: forward with the bus id, then restore the original.
pub fn check_rewrite(line: &[u8], env: &Envelope, path: &SessionPath, bus_id: u64) {
    let Some(id) = env.id.clone() else {
        return;
    };
    let original = &line[id.clone()];
    let digits = bus_id.to_string();

    // Appending must leave earlier queued bytes alone and end the line with exactly one `\n`.
    let queued = b"queued line\n";
    let mut out = queued.to_vec();
    append_with_bus_id(&mut out, line, id.clone(), bus_id);
    let forwarded = out
        .strip_prefix(queued)
        .and_then(|rest| rest.strip_suffix(b"\n"))
        .expect("prefix kept and `\\n` appended");
    let want = [&line[..id.start], digits.as_bytes(), &line[id.end..]].concat();
    assert_eq!(forwarded, &want[..]);

    let Ok(Message::Object(fwd)) = parse(forwarded, path) else {
        panic!("forwarded line does not parse: {:?}", lossy(forwarded));
    };
    let bus_span = fwd.id.clone().expect("forwarded line has an id");
    assert_eq!(bus_span, id.start..id.start + digits.len());
    assert_eq!(parse_bus_id(&forwarded[bus_span.clone()]), Some(bus_id));
    // Every other routing field still points at the same bytes.
    let text = |l: &[u8], s: &Option<Span>| s.clone().map(|s| l[s].to_vec());
    assert_eq!(text(forwarded, &fwd.method), text(line, &env.method));
    assert_eq!(text(forwarded, &fwd.session), text(line, &env.session));
    assert_eq!(text(forwarded, &fwd.pool), text(line, &env.pool));
    assert_eq!(
        (fwd.has_result, fwd.has_error, fwd.kind()),
        (env.has_result, env.has_error, env.kind())
    );

    // Restoring the original token into the forwarded line gives back the client's exact bytes.
    let mut restored = queued.to_vec();
    append_with_token(&mut restored, forwarded, bus_span, original);
    assert_eq!(restored, [queued, line, b"\n"].concat());

    // A worker's reply carrying the bus id gets the client's id back, byte for byte.
    let reply = format!("{{\"jsonrpc\":\"2.0\",\"id\":{digits},\"result\":{{\"ok\":true}}}}");
    let Ok(Message::Object(r)) = parse(reply.as_bytes(), path) else {
        panic!("reply does not parse");
    };
    let reply_id = r.id.expect("reply id");
    assert_eq!(
        parse_bus_id(&reply.as_bytes()[reply_id.clone()]),
        Some(bus_id)
    );
    let mut delivered = Vec::new();
    append_with_token(&mut delivered, reply.as_bytes(), reply_id, original);
    let delivered = delivered.strip_suffix(b"\n").expect("`\\n` appended");
    let Ok(Message::Object(d)) = parse(delivered, path) else {
        panic!("delivered reply does not parse: {:?}", lossy(delivered));
    };
    assert_eq!(d.kind(), Kind::Response);
    assert_eq!(d.id.map(|s| &delivered[s]), Some(original));
}

/// `append_error_reply` writes exactly one line of valid JSON with the documented fields;
/// `id`, if given, must be a valid JSON token.
pub fn check_error_reply(id: Option<&[u8]>, kind: ErrorKind, detail: Option<&str>) {
    let mut out = b"x\n".to_vec();
    append_error_reply(&mut out, id, kind, detail);
    let reply = out.strip_prefix(b"x\n").expect("earlier bytes kept");
    // One line: the only `\n`s besides the terminator are those inside the id token itself (a
    // framed line never has any), since the detail is escaped.
    let newlines = |b: &[u8]| b.iter().filter(|&&c| c == b'\n').count();
    assert_eq!(reply.last(), Some(&b'\n'));
    assert_eq!(newlines(reply), newlines(id.unwrap_or_default()) + 1);
    let body = &reply[..reply.len() - 1];

    // The bus's own scanner reads its reply as a response to the same id.
    let Ok(Message::Object(env)) = parse(body, &SessionPath::default()) else {
        panic!("error reply does not parse: {:?}", lossy(body));
    };
    assert_eq!(env.kind(), Kind::Response);
    assert!(env.has_error && !env.has_result);
    let token = id.unwrap_or(b"null");
    assert_eq!(env.id.map(|s| &body[s]), Some(token));

    assert!(serde_accepts(body));
    // serde cannot build a value for an id holding lone surrogates; everything else must match.
    let Ok(want_id) = serde_json::from_slice::<Value>(token) else {
        return;
    };
    let mut data = json!({"reason": kind.reason(), "retryable": kind.retryable()});
    if let Some(detail) = detail {
        data["detail"] = json!(detail);
    }
    let want = json!({
        "jsonrpc": "2.0",
        "id": want_id,
        "error": {"code": kind.code(), "message": kind.message(), "data": data},
    });
    let got: Value = serde_json::from_slice(body).expect("serde_json reads the reply");
    assert_eq!(got, want);
}
