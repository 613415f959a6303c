//! Property tests: framing matches its documented contract for any bytes and any read boundaries,
//! `parse` agrees with serde_json and never panics, and a request id survives the bus-id round trip
//! byte for byte. The oracles are shared with the cargo-fuzz targets in `protocol/fuzz`.
//!
//! Failures print the shrunk input; add it below as a plain `#[test]` regression.

#[path = "../fuzz/src/lib.rs"]
mod oracle;

use codex_bus_protocol::{parse, ErrorKind, Message, SessionPath};
use oracle::{check_error_reply, check_framing, check_line, check_rewrite, Out, SESSION_PATHS};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

/// Cases per property; sized so the whole file runs in a few seconds in a debug build.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // No regression files outside the test sources; shrunk failures are copied in by hand.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// JSON whitespace between tokens (no `\n`: a framed line never holds one).
fn ws() -> impl Strategy<Value = &'static str> {
    select(vec!["", "", "", " ", "\t", "  ", "\r", " \t\r "])
}

/// One piece of a JSON string's content: plain text, any non-control char, or an escape.
fn string_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec![
            "a", "id", "sessionId", "params", "x y", "é", "✓", "😀", "\u{7f}", "\u{2028}", "{", "]",
        ])
        .prop_map(String::from),
        2 => any::<char>()
            .prop_filter("needs escaping", |c| *c >= ' ' && *c != '"' && *c != '\\')
            .prop_map(String::from),
        2 => select(vec![
            "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t", "\\u0069", "\\u00e9",
            "\\uD83D\\uDE00", "\\ud800", "\\uDFFF", "\\u0000", "\\u001F", "\\u000a",
        ])
        .prop_map(String::from),
        1 => any::<u16>().prop_map(|u| format!("\\u{u:04X}")),
    ]
}

/// A valid JSON string token, quotes included.
fn json_string() -> impl Strategy<Value = String> {
    vec(string_piece(), 0..6).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
}

/// A valid JSON number token, from small integers to exponents and 30-digit integers.
fn json_number() -> impl Strategy<Value = String> {
    let exponent = prop::option::of((select(vec!["e", "E", "e+", "e-", "E-"]), 0u32..400));
    prop_oneof![
        3 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => select(vec!["0", "-0", "0.0", "-0.0e-0", "123456789012345678901234567890"])
            .prop_map(String::from),
        2 => (any::<i32>(), prop::option::of(0u32..100_000), exponent).prop_map(|(i, frac, exp)| {
            let mut n = i.to_string();
            if let Some(frac) = frac {
                n.push_str(&format!(".{frac}"));
            }
            if let Some((e, digits)) = exp {
                n.push_str(&format!("{e}{digits}"));
            }
            n
        }),
    ]
}

/// Keys: the routing names (plain and escaped) mixed with arbitrary strings.
fn object_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "\"id\"", "\"method\"", "\"params\"", "\"sessionId\"", "\"pool\"", "\"result\"",
            "\"error\"", "\"_meta\"", "\"\\u0069d\"", "\"session\\u0049d\"", "\"p\\u0061rams\"",
        ])
        .prop_map(String::from),
        1 => json_string(),
    ]
}

/// Any valid JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        3 => json_string(),
        3 => json_number(),
        1 => select(vec!["true", "false", "null"]).prop_map(String::from),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            (vec(inner.clone(), 0..5), ws())
                .prop_map(|(items, w)| format!("[{w}{}{w}]", items.join(&format!("{w},")))),
            (vec((object_key(), ws(), inner), 0..5)).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, w, v)| format!("{k}{w}:{w}{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// Ids a client may send: mostly numbers and strings, sometimes other values.
fn id_token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => json_number(),
        4 => json_string(),
        1 => json_value(),
    ]
}

/// A `params` object that may carry `sessionId` (and `_meta.sessionId`) among other members.
fn params() -> impl Strategy<Value = String> {
    let session = prop_oneof![json_string(), json_number(), json_value()];
    let member = prop_oneof![
        2 => session.clone().prop_map(|v| format!("\"sessionId\":{v}")),
        1 => session.prop_map(|v| format!("\"_meta\":{{\"sessionId\":{v}}}")),
        2 => (object_key(), json_value()).prop_map(|(k, v)| format!("{k}:{v}")),
    ];
    prop_oneof![
        4 => vec(member, 0..4).prop_map(|m| format!("{{{}}}", m.join(","))),
        1 => json_value(),
    ]
}

/// One top-level member other than `id`, as `(key, value)`.
fn member() -> impl Strategy<Value = (String, String)> {
    let named = |key: &'static str| move |v: String| (format!("\"{key}\""), v);
    prop_oneof![
        1 => Just(("\"jsonrpc\"".to_owned(), "\"2.0\"".to_owned())),
        3 => json_string().prop_map(named("method")),
        3 => params().prop_map(named("params")),
        2 => prop_oneof![json_string(), json_number(), json_value()].prop_map(named("sessionId")),
        2 => prop_oneof![3 => json_string(), 1 => json_value()].prop_map(named("pool")),
        1 => json_value().prop_map(named("result")),
        1 => json_value().prop_map(named("error")),
        1 => (object_key(), json_value()),
    ]
}

/// Joins members into an object with varied whitespace.
fn object(members: &[(String, String)], w: &str) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{w}{k}{w}:{w}{v}{w}"))
        .collect();
    format!("{w}{{{}}}{w}", members.join(","))
}

/// Whether a key token decodes to `id` (so a second one would be a duplicate id).
fn is_id_key(key: &str) -> bool {
    serde_json::from_str::<String>(key).is_ok_and(|k| k == "id")
}

/// A JSON-RPC-shaped object with exactly one top-level `id`, and that id's token.
fn request_with_id() -> impl Strategy<Value = (String, String)> {
    let others = vec(
        member().prop_filter("a second id", |(k, _)| !is_id_key(k)),
        0..6,
    );
    (others, id_token(), any::<Index>(), ws()).prop_map(|(mut members, id, at, w)| {
        let key = if at.index(4) == 0 {
            "\"\\u0069d\""
        } else {
            "\"id\""
        };
        members.insert(at.index(members.len() + 1), (key.to_owned(), id.clone()));
        (object(&members, w), id)
    })
}

/// A JSON-RPC-shaped object whose members (duplicate ids included) are drawn freely.
fn envelope_line() -> impl Strategy<Value = String> {
    let members = vec(
        prop_oneof![4 => member(), 1 => id_token().prop_map(|v| ("\"id\"".to_owned(), v))],
        0..7,
    );
    (members, ws()).prop_map(|(members, w)| object(&members, w))
}

/// Bytes that turn valid JSON into near-valid JSON, plus line breaks for the framer.
const NASTY: &[u8] = b"{}[]\",:0-.eE\\u \t\r\n\x00\x1f\x7f\xc3\xa9\xff";

/// Applies up to a few truncations, deletions, insertions, overwrites and duplications.
fn mutated(base: impl Strategy<Value = String>) -> impl Strategy<Value = Vec<u8>> {
    let edit = (0u8..5, any::<Index>(), any::<Index>(), any::<u8>());
    (base, vec(edit, 0..4)).prop_map(|(base, edits)| {
        let mut b = base.into_bytes();
        for (op, at, from, byte) in edits {
            let at = at.index(b.len() + 1);
            let byte = if byte < 192 {
                NASTY[usize::from(byte) % NASTY.len()]
            } else {
                byte
            };
            match op {
                0 => b.truncate(at),
                1 if at < b.len() => {
                    b.remove(at);
                }
                2 if at < b.len() => b[at] = byte,
                3 => {
                    let from = from.index(b.len() + 1);
                    let piece = b[from..(from + 8).min(b.len())].to_vec();
                    b.splice(at..at, piece);
                }
                _ => b.insert(at, byte),
            }
        }
        b
    })
}

/// A line for `parse`: JSON-RPC-shaped, any JSON, mutated near-JSON, or raw bytes.
fn any_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => envelope_line().prop_map(String::into_bytes),
        2 => request_with_id().prop_map(|(line, _)| line.into_bytes()),
        1 => json_value().prop_map(String::into_bytes),
        4 => mutated(envelope_line()),
        1 => vec(any::<u8>(), 0..64),
    ]
}

/// A byte stream for the framer: raw bytes, line-break-heavy bytes, or lines with mixed endings.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let ending = select(vec![
        "\n", "\n", "\r\n", "", "\r", "\n\n", "\r\r\n", "\n\r\n",
    ]);
    prop_oneof![
        1 => vec(any::<u8>(), 0..300),
        1 => vec(select(b"\n\r\r{a".to_vec()), 0..120),
        4 => vec((any_line(), ending), 0..8).prop_map(|lines| {
            lines
                .into_iter()
                .flat_map(|(line, end)| [line, end.as_bytes().to_vec()])
                .flatten()
                .collect()
        }),
    ]
}

/// Per-line limits: tiny ones that most lines pass, ones near typical line lengths, and none.
fn max_line() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => 0usize..8,
        4 => 0usize..160,
        1 => Just(usize::MAX),
    ]
}

/// Bus ids: the small ones a fresh bus hands out, and the extremes.
fn bus_id() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..1000,
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    /// Framing equals splitting on `\n` for any stream, read size pattern and limit, and every
    /// framed line survives `parse` (with all the cross-checks of `check_line`).
    #[test]
    fn framing_matches_split_and_lines_parse(
        data in stream(),
        chunks in vec(1usize..48, 0..12),
        max_line in max_line(),
        bus_id in bus_id(),
    ) {
        let mut lines = 0;
        check_framing(&data, &chunks, max_line, |line| {
            lines += 1;
            check_line(line, bus_id);
        });
        // Guards against a generator that never produces lines, which would make this vacuous.
        if max_line == usize::MAX {
            let nonblank = data
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty() && *l != b"\r")
                .count();
            prop_assert_eq!(lines, nonblank);
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Longer streams (many reads, lines spanning many of them, large limits) keep the contract;
    /// lines are only parsed for panics here, to keep this cheap.
    #[test]
    fn framing_long_streams(
        pool in vec(any_line(), 1..8),
        // Lines are drawn from a small pool: generating hundreds of fresh ones per case is slow.
        picks in vec((any::<Index>(), select(vec!["\n", "\r\n", "\r"])), 0..300),
        chunks in vec(1usize..600, 0..8),
        max_line in prop_oneof![0usize..400, Just(usize::MAX)],
    ) {
        let data: Vec<u8> = picks
            .into_iter()
            .flat_map(|(at, end)| [pool[at.index(pool.len())].as_slice(), end.as_bytes()])
            .flatten()
            .copied()
            .collect();
        check_framing(&data, &chunks, max_line, oracle::parse_all_paths);
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// `parse` agrees with serde_json and its own contract on near-JSON lines, for every session path.
    #[test]
    fn parse_agrees_with_serde(line in any_line(), bus_id in bus_id()) {
        check_line(&line, bus_id);
    }

    /// A request's id is found exactly, swapped for the bus id, and restored byte for byte.
    #[test]
    fn id_round_trip_restores_exact_bytes((line, id) in request_with_id(), bus_id in bus_id()) {
        for dotted in SESSION_PATHS {
            let path = SessionPath::parse(dotted).unwrap();
            let Ok(Message::Object(env)) = parse(line.as_bytes(), &path) else {
                panic!("generated request does not parse: {line}");
            };
            let span = env.id.clone().expect("generated request has an id");
            prop_assert_eq!(&line[span], id.as_str());
            check_rewrite(line.as_bytes(), &env, &path, bus_id);
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Error replies are one line of valid JSON for any detail text and any valid id token.
    #[test]
    fn error_reply_is_one_json_line(
        kind in select(ErrorKind::ALL.to_vec()),
        id in prop::option::of(id_token()),
        detail in prop::option::of(vec(any::<char>(), 0..40).prop_map(String::from_iter)),
    ) {
        check_error_reply(id.as_deref().map(str::as_bytes), kind, detail.as_deref());
    }
}

/// The oracle itself must see the documented examples; otherwise a wrong model could agree with a
/// wrong framer.
#[test]
fn framing_model_matches_documented_examples() {
    let line = |s: &str| Out::Line(s.as_bytes().to_vec());
    let frames =
        |data: &[u8], reads: &[usize], max: usize| oracle::expected_frames(data, reads, max);
    assert_eq!(
        frames(b"a\n\r\n b\r\nok\r\r\nlast\r", &[19], 10),
        [line("a"), line(" b"), line("ok\r"), line("last")]
    );
    assert_eq!(frames(b"12345\r\n", &[6, 7], 5), [line("12345")]);
    assert_eq!(
        frames(b"12345\rx\nok\n", &[6, 11], 5),
        [Out::Oversize(7), line("ok")]
    );
    assert_eq!(
        frames(b"123456\nok\n", &[6, 10], 5),
        [Out::Oversize(6), line("ok")]
    );
    assert_eq!(frames(b"12345\rxy", &[6, 8], 5), [Out::Oversize(8)]);
    assert_eq!(frames(b"\nx\n\r\n", &[5], 0), [Out::Oversize(1)]);
    assert_eq!(
        frames(b"abcdefgh\nnew\n", &[6, 13], 3),
        [Out::Oversize(6), line("new")]
    );
    // The same through the real framer with those read sizes.
    check_framing(b"abcdefgh\nnew\n", &[6, 7], 3, |_| {});
    check_framing(b"12345\rxy", &[6, 2], 5, |_| {});
}
