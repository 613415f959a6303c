//! Request ids and session keys the generator writes, and reading the id back out of a reply.
//!
//! An id names the phase, the connection and the request's number on it (`"m3.1234"`), so a reply
//! alone tells whether it reached the connection that asked and whether it was seen before.

use memchr::memmem::Finder;

/// Which phase of a run a request belongs to: warm-up replies can never count as measured ones.
pub type Tag = u8;

/// Tag of warm-up requests.
pub const WARMUP: Tag = b'w';
/// Tag of measured requests.
pub const MEASURED: Tag = b'm';

/// Appends the JSON string token of a request id.
pub fn write_id(out: &mut Vec<u8>, tag: Tag, conn: usize, seq: usize) {
    out.push(b'"');
    out.push(tag);
    out.extend_from_slice(conn.to_string().as_bytes());
    out.push(b'.');
    out.extend_from_slice(seq.to_string().as_bytes());
    out.push(b'"');
}

/// Appends a 36-character UUID-shaped session key (the size Codex thread ids have), as a JSON
/// string. `space` separates key families that must never collide (e.g. warm-up vs measured).
pub fn write_session(out: &mut Vec<u8>, space: u32, index: u64) {
    let key = format!("{space:08x}-0000-4000-8000-{index:012x}");
    debug_assert_eq!(key.len(), 36);
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.push(b'"');
}

/// A decoded reply id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyId {
    /// Phase tag.
    pub tag: Tag,
    /// Connection that sent the request.
    pub conn: usize,
    /// The request's number on that connection.
    pub seq: usize,
}

/// What a reply line is, as far as the checks care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A reply whose id the generator wrote; `error` if it is an error reply.
    Id {
        /// The decoded id.
        id: ReplyId,
        /// Whether the reply carries `"error"` rather than `"result"`.
        error: bool,
    },
    /// A line with no id this generator could have written (e.g. `"id":null`): always a failure.
    Unidentified,
}

/// Finds ids in reply lines. Replies put `"id"` before `"result"`/`"error"` (the workers copy it in
/// place and the bus restores it in place), so the first `"id":` is the top-level one.
pub struct Scanner {
    id: Finder<'static>,
    error: Finder<'static>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            id: Finder::new(b"\"id\":"),
            error: Finder::new(b"\"error\":"),
        }
    }
}

impl Scanner {
    /// Classifies one reply line.
    pub fn reply(&self, line: &[u8]) -> Reply {
        let Some(at) = self.id.find(line) else {
            return Reply::Unidentified;
        };
        let after = &line[at + 5..];
        let after = trim_start(after);
        match decode(after) {
            Some(id) => Reply::Id {
                id,
                error: self.error.find(line).is_some(),
            },
            None => Reply::Unidentified,
        }
    }
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    &bytes[skip..]
}

/// Decodes `"<tag><conn>.<seq>"` at the start of `bytes`.
fn decode(bytes: &[u8]) -> Option<ReplyId> {
    let [b'"', tag, rest @ ..] = bytes else {
        return None;
    };
    let (conn, rest) = number(rest)?;
    let [b'.', rest @ ..] = rest else {
        return None;
    };
    let (seq, rest) = number(rest)?;
    let [b'"', ..] = rest else {
        return None;
    };
    Some(ReplyId {
        tag: *tag,
        conn,
        seq,
    })
}

fn number(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 18 {
        return None;
    }
    let value = bytes[..digits]
        .iter()
        .fold(0usize, |acc, d| acc * 10 + usize::from(d - b'0'));
    Some((value, &bytes[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_written_is_read_back() {
        let mut line = b"{\"jsonrpc\":\"2.0\",\"id\":".to_vec();
        write_id(&mut line, MEASURED, 17, 123_456);
        line.extend_from_slice(b",\"result\":{\"pid\":1}}");
        let reply = Scanner::default().reply(&line);
        assert_eq!(
            reply,
            Reply::Id {
                id: ReplyId {
                    tag: MEASURED,
                    conn: 17,
                    seq: 123_456
                },
                error: false
            }
        );
    }

    #[test]
    fn error_replies_and_foreign_ids_are_told_apart() {
        let scanner = Scanner::default();
        let error = br#"{"jsonrpc":"2.0","id": "w0.5","error":{"code":-32021}}"#;
        assert!(matches!(
            scanner.reply(error),
            Reply::Id { error: true, id } if id.tag == WARMUP && id.seq == 5
        ));
        for line in [
            &br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700}}"#[..],
            br#"{"id":7,"result":{}}"#,
            br#"{"id":"m1","result":{}}"#,
            br#"{"id":"m1.","result":{}}"#,
            br#"{"method":"x"}"#,
        ] {
            assert_eq!(scanner.reply(line), Reply::Unidentified);
        }
    }

    #[test]
    fn session_keys_are_36_bytes_and_distinct_per_space() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_session(&mut a, 1, 5);
        write_session(&mut b, 2, 5);
        assert_eq!(a.len(), 38);
        assert_ne!(a, b);
    }
}
