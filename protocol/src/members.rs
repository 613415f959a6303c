//! Top-level members of a message, for transports whose clients see a message differently from
//! workers: a WebSocket client bound to one session names no session and may send no
//! `jsonrpc`, while its worker needs the session and the client must get back only what it would
//! from `codex app-server` (docs/protocol.md, "WebSocket clients").
//!
//! These cost one more scan of the message, so only the WebSocket front's reader and writer use
//! them; NDJSON lines never pass here.

use crate::envelope::{key_eq, Span};
use crate::error::push_json_string;
use crate::scan::{self, Scalar, Visitor};

/// One member of the top-level object: where its key starts and its value spans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The key's content, without its quotes (raw bytes: escapes not decoded).
    pub key: Span,
    /// Whether the key holds a backslash (its escapes are decoded before it is compared).
    pub escaped: bool,
    /// The value's raw token, or the whole nested object or array.
    pub value: Span,
}

impl Member {
    /// The member from its key's opening quote to the end of its value.
    fn whole(&self) -> Span {
        self.key.start - 1..self.value.end
    }
}

/// Collects the members at depth 1 of a top-level object.
#[derive(Default)]
struct Collect {
    members: Vec<Member>,
    object: bool,
    /// The current member's key, until its value is known.
    key: Option<(Span, bool)>,
    /// Where the current member's container value opened.
    open: Option<usize>,
}

impl Visitor for Collect {
    fn key(&mut self, depth: usize, content: Span, escaped: bool) {
        if depth == 1 {
            self.key = Some((content, escaped));
        }
    }

    fn scalar(&mut self, depth: usize, span: Span, _: Scalar) {
        if depth == 1 {
            self.push(span);
        }
    }

    fn open(&mut self, depth: usize, at: usize, object: bool) {
        match depth {
            0 => self.object = object,
            1 => self.open = Some(at),
            _ => {}
        }
    }

    fn close(&mut self, depth: usize, end: usize) {
        if depth == 1 {
            if let Some(start) = self.open.take() {
                self.push(start..end);
            }
        }
    }
}

impl Collect {
    fn push(&mut self, value: Span) {
        if let Some((key, escaped)) = self.key.take() {
            self.members.push(Member {
                key,
                escaped,
                value,
            });
        }
    }
}

/// The members of the top-level object in `line`, in order; `None` unless `line` is one valid
/// JSON object (UTF-8 is not checked here: callers pass text).
pub fn top_level_members(line: &[u8]) -> Option<Vec<Member>> {
    let mut collect = Collect::default();
    scan::scan(line, &mut collect).ok()?;
    collect.object.then_some(collect.members)
}

/// Whether `member`'s key is `name`, however it is spelt: `"session\u0049d"` is `sessionId`, as
/// the router's envelope reads it, so a WebSocket client that escapes a key is not given a
/// second session member that the router would then refuse as a duplicate.
pub fn is_named(line: &[u8], member: &Member, name: &str) -> bool {
    key_eq(&line[member.key.clone()], member.escaped, name.as_bytes())
}

/// Appends `line`, a JSON object whose members are `members`, to `out` without the members
/// `drop` selects; the whitespace between members is not kept, every other byte is. No newline.
pub fn append_without_members(
    out: &mut Vec<u8>,
    line: &[u8],
    members: &[Member],
    mut drop: impl FnMut(&Member) -> bool,
) {
    let (Some(first), Some(last)) = (members.first(), members.last()) else {
        out.extend_from_slice(line);
        return;
    };
    out.extend_from_slice(&line[..first.whole().start]);
    for (kept, member) in members.iter().filter(|m| !drop(m)).enumerate() {
        if kept > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&line[member.whole()]);
    }
    out.extend_from_slice(&line[last.whole().end..]);
}

/// Appends `line` (a JSON object) to `out` with a member `"<name>":"<value>"` first (`value`
/// JSON-escaped; `name` must need no escaping). No newline. Returns `None`, appending nothing,
/// if `line` holds no `{`.
pub fn append_with_member(out: &mut Vec<u8>, line: &[u8], name: &str, value: &str) -> Option<()> {
    let open = line.iter().position(|&c| c == b'{')?;
    let empty = line[open + 1..]
        .iter()
        .find(|c| !c.is_ascii_whitespace())
        .is_some_and(|&c| c == b'}');
    out.reserve(line.len() + name.len() + value.len() + 8);
    out.extend_from_slice(&line[..=open]);
    push_json_string(out, name);
    out.push(b':');
    push_json_string(out, value);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(&line[open + 1..]);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn without(line: &str, names: &[&str]) -> String {
        let members = top_level_members(line.as_bytes()).unwrap();
        let mut out = Vec::new();
        append_without_members(&mut out, line.as_bytes(), &members, |m| {
            names.iter().any(|n| is_named(line.as_bytes(), m, n))
        });
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn members_are_found_at_the_top_level_only() {
        let line = r#" {"a":1, "b":{"a":[2]} ,"c":"x\"y","d":[],"e":{}} "#;
        let members = top_level_members(line.as_bytes()).unwrap();
        let shown: Vec<(&str, &str)> = members
            .iter()
            .map(|m| (&line[m.key.clone()], &line[m.value.clone()]))
            .collect();
        assert_eq!(
            shown,
            [
                ("a", "1"),
                ("b", r#"{"a":[2]}"#),
                ("c", r#""x\"y""#),
                ("d", "[]"),
                ("e", "{}")
            ]
        );
        assert_eq!(top_level_members(b"[1]"), None);
        assert_eq!(top_level_members(b"{\"a\":}"), None);
        assert_eq!(top_level_members(b"{}"), Some(vec![]));
    }

    #[test]
    fn dropped_members_leave_valid_json_with_the_rest_unchanged() {
        let line = r#"{"jsonrpc":"2.0","id":1,"result":{"sessionId":"s"},"sessionId":"s"}"#;
        assert_eq!(
            without(line, &["jsonrpc", "sessionId"]),
            r#"{"id":1,"result":{"sessionId":"s"}}"#
        );
        assert_eq!(without(line, &["id"]), line.replace(r#""id":1,"#, ""));
        assert_eq!(
            without(r#"{ "jsonrpc" : "2.0" }"#, &["jsonrpc"]),
            "{  }",
            "the only member: the blanks around it stay"
        );
        assert_eq!(without(r#"{"a":1}"#, &[]), r#"{"a":1}"#);
        // An escaped spelling is the same key, as JSON (and the router's envelope) reads it.
        let escaped = r#"{"json\u0072pc":"2.0","a":1}"#;
        assert_eq!(without(escaped, &["jsonrpc"]), r#"{"a":1}"#);
        assert_eq!(without(escaped, &["jsonrpx"]), escaped);
    }

    #[test]
    fn a_member_goes_first_with_its_value_escaped() {
        let add = |line: &str, value: &str| {
            let mut out = Vec::new();
            append_with_member(&mut out, line.as_bytes(), "sessionId", value).map(|()| out)
        };
        assert_eq!(
            add(r#" {"id":1}"#, "a\"b").unwrap(),
            br#" {"sessionId":"a\"b","id":1}"#
        );
        assert_eq!(add("{ }", "s").unwrap(), br#"{"sessionId":"s" }"#);
        assert_eq!(add("[]", "s"), None);
    }
}
