//! Swapping the request id of a line for the bus id and back, copying every other byte verbatim.

use crate::envelope::Span;

/// Appends `line` to `out` with `span` replaced by the decimal `bus_id`, then `\n`. The span is
/// any token: the top-level `id` of a request, or an id inside a message that names an earlier
/// request (see [`crate::reference`](mod@crate::reference)).
pub fn append_with_bus_id(out: &mut Vec<u8>, line: &[u8], span: Span, bus_id: u64) {
    append_with_token(
        out,
        line,
        span,
        itoa::Buffer::new().format(bus_id).as_bytes(),
    );
}

/// Appends `line` to `out` with `span` replaced by `token` (e.g. the client's original id), then `\n`.
///
/// A span reaching past the line is clamped to it rather than trusted, so a stale span cannot panic.
pub fn append_with_token(out: &mut Vec<u8>, line: &[u8], span: Span, token: &[u8]) {
    let end = span.end.min(line.len());
    let start = span.start.min(end);
    out.reserve(line.len() - (end - start) + token.len() + 1);
    out.extend_from_slice(&line[..start]);
    out.extend_from_slice(token);
    out.extend_from_slice(&line[end..]);
    out.push(b'\n');
}

/// The bus id in an id token, if it is a plain non-negative decimal integer that fits u64 (no sign, no
/// leading zeros except "0", no fraction/exponent). Anything else is None.
pub fn parse_bus_id(token: &[u8]) -> Option<u64> {
    match token {
        [b'0'] => Some(0),
        [b'1'..=b'9', ..] => token.iter().try_fold(0u64, |acc, &c| {
            let digit = char::from(c).to_digit(10)?;
            acc.checked_mul(10)?.checked_add(u64::from(digit))
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{parse, Message, SessionPath};

    fn id_span(line: &[u8]) -> Span {
        match parse(line, &SessionPath::default()) {
            Ok(Message::Object(env)) => env.id.expect("line has an id"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_trip_restores_original_bytes() {
        for id in ["1.5e3", "\"req-\\u00e9\"", "-0", "{\"a\":[1]}", "null", "7"] {
            let line =
                format!(r#"{{"jsonrpc":"2.0", "id" : {id} ,"method":"m","params":{{"id":3}}}}"#);
            let span = id_span(line.as_bytes());
            let original = &line.as_bytes()[span.clone()];

            let mut forwarded = Vec::new();
            append_with_bus_id(
                &mut forwarded,
                line.as_bytes(),
                span,
                18_446_744_073_709_551_615,
            );
            let forwarded = forwarded.strip_suffix(b"\n").unwrap();
            let bus_span = id_span(forwarded);
            assert_eq!(&forwarded[bus_span.clone()], b"18446744073709551615");
            assert_eq!(parse_bus_id(&forwarded[bus_span.clone()]), Some(u64::MAX));

            let mut restored = b"prefix".to_vec();
            append_with_token(&mut restored, forwarded, bus_span, original);
            assert_eq!(restored, format!("prefix{line}\n").into_bytes());
        }
    }

    #[test]
    fn out_of_range_spans_are_clamped() {
        let mut out = Vec::new();
        append_with_token(&mut out, b"abc", 1..99, b"X");
        append_with_token(&mut out, b"abc", 5..9, b"Y");
        append_with_bus_id(&mut out, b"abc", 0..0, 9);
        assert_eq!(out, b"aX\nabcY\n9abc\n");
    }

    #[test]
    fn bus_id_parsing() {
        assert_eq!(parse_bus_id(b"0"), Some(0));
        assert_eq!(parse_bus_id(b"42"), Some(42));
        assert_eq!(parse_bus_id(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b"18446744073709551616"[..],
            b"99999999999999999999999",
            b"01",
            b"00",
            b"-1",
            b"-0",
            b"+1",
            b"1.0",
            b"1e3",
            b"\"1\"",
            b"",
            b" 1",
            b"1 ",
            b"null",
        ] {
            assert_eq!(
                parse_bus_id(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
