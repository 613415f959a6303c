//! A streaming scan for the bus id of a line too long to buffer: fed the line's bytes in pieces,
//! it finds the top-level `"id"` member of an object and keeps its token if it is short enough to
//! be a bus id. A line with a top-level `"method"` is a worker's own request or notification,
//! whose id is the worker's and names no request of the bus: it yields none. It holds a few bytes
//! of state, never the line.
//!
//! It validates nothing: the line is being discarded anyway, and a wrong guess only matters if it
//! names a request in flight, which a well-formed reply of that worker would have answered too.

use crate::rewrite::parse_bus_id;

/// Longest id token kept: `u64::MAX` has 20 digits.
const MAX_TOKEN: usize = 20;

/// Longest member name kept: `method`.
const MAX_NAME: usize = 6;

/// Where the scan stands inside the top-level object (depth 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A member name (after `{` or `,`).
    Key,
    /// The `:` after a name.
    Colon,
    /// A member's value.
    Value,
    /// `,` or `}` after a value.
    Comma,
}

/// The scan's state between pieces of one line.
#[derive(Debug)]
pub(crate) struct TopLevelId {
    /// Open `{`/`[` outside strings; 1 inside the top-level object.
    depth: u32,
    /// Whether the first non-blank byte was `{` (only an object has members).
    object: bool,
    started: bool,
    in_string: bool,
    escaped: bool,
    expect: Expect,
    /// Whether a name at depth 1 is being read.
    in_name: bool,
    /// Its first bytes; `name_len` past `MAX_NAME` (or an escape) means it is neither name sought.
    name: [u8; MAX_NAME],
    name_len: usize,
    /// The name just read was `id`.
    id_member: bool,
    /// A top-level `method` member was seen: the line is no reply.
    method: bool,
    /// The top-level `id`'s token while it is read (a number token, at most `MAX_TOKEN` bytes).
    token: [u8; MAX_TOKEN],
    token_len: usize,
    /// Whether a number token of the `id` member is being read.
    in_token: bool,
    /// The last top-level `id` found, as a bus id.
    found: Option<u64>,
}

impl Default for TopLevelId {
    fn default() -> Self {
        TopLevelId {
            depth: 0,
            object: false,
            started: false,
            in_string: false,
            escaped: false,
            expect: Expect::Key,
            in_name: false,
            name: [0; MAX_NAME],
            name_len: 0,
            id_member: false,
            method: false,
            token: [0; MAX_TOKEN],
            token_len: 0,
            in_token: false,
            found: None,
        }
    }
}

impl TopLevelId {
    /// Scans the next piece of the line.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.byte(byte);
        }
    }

    /// The line ended: its top-level `id` as a bus id (see [`parse_bus_id`]), if it had one and
    /// no top-level `method`; the scan is reset for the next line.
    pub(crate) fn finish(&mut self) -> Option<u64> {
        self.end_token();
        let found = self.found.filter(|_| !self.method);
        *self = TopLevelId::default();
        found
    }

    fn byte(&mut self, byte: u8) {
        if self.in_string {
            self.string_byte(byte);
            return;
        }
        if self.in_token {
            if matches!(byte, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                if self.token_len < MAX_TOKEN {
                    self.token[self.token_len] = byte;
                }
                // One past the limit marks the token as too long.
                self.token_len = (self.token_len + 1).min(MAX_TOKEN + 1);
                return;
            }
            self.end_token();
        }
        if matches!(byte, b' ' | b'\t' | b'\r' | b'\n') {
            return;
        }
        if !self.started {
            self.started = true;
            self.object = byte == b'{';
        }
        let top = self.object && self.depth == 1;
        if top && self.expect == Expect::Value {
            self.expect = Expect::Comma;
            if self.id_member && matches!(byte, b'0'..=b'9' | b'-') {
                self.in_token = true;
                self.token[0] = byte;
                self.token_len = 1;
                return;
            }
            if self.id_member {
                // A string, object, array or literal id is no bus id.
                self.found = None;
            }
        }
        match byte {
            b'"' => {
                self.in_string = true;
                self.in_name = top && self.expect == Expect::Key;
                self.name_len = 0;
            }
            b'{' | b'[' => self.depth = self.depth.saturating_add(1),
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            b':' if top && self.expect == Expect::Colon => self.expect = Expect::Value,
            b',' if top => self.expect = Expect::Key,
            _ => {}
        }
    }

    fn string_byte(&mut self, byte: u8) {
        if self.escaped {
            self.escaped = false;
            // An escaped name is never taken for `id` or `method`.
            self.name_len = MAX_NAME + 1;
            return;
        }
        match byte {
            b'\\' => self.escaped = true,
            b'"' => {
                self.in_string = false;
                if self.in_name {
                    self.in_name = false;
                    let name = self.name.get(..self.name_len).unwrap_or_default();
                    self.id_member = name == b"id";
                    self.method |= name == b"method";
                    self.expect = Expect::Colon;
                }
            }
            _ if self.in_name => {
                if let Some(slot) = self.name.get_mut(self.name_len) {
                    *slot = byte;
                }
                self.name_len = (self.name_len + 1).min(MAX_NAME + 1);
            }
            _ => {}
        }
    }

    /// Ends a number token of the `id` member, keeping it if it is a bus id.
    fn end_token(&mut self) {
        if !self.in_token {
            return;
        }
        self.in_token = false;
        self.found = if self.token_len <= MAX_TOKEN {
            parse_bus_id(&self.token[..self.token_len])
        } else {
            None
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(line: &[u8]) -> Option<u64> {
        let whole = {
            let mut s = TopLevelId::default();
            s.feed(line);
            s.finish()
        };
        // Any split gives the same answer.
        for chunk in [1, 2, 3, 7] {
            let mut s = TopLevelId::default();
            for piece in line.chunks(chunk) {
                s.feed(piece);
            }
            assert_eq!(s.finish(), whole, "chunks of {chunk}");
        }
        whole
    }

    #[test]
    fn finds_the_top_level_id_before_or_after_a_body() {
        assert_eq!(
            scan(br#"{"jsonrpc":"2.0","id":17,"result":{"a":"xxxx"}}"#),
            Some(17)
        );
        assert_eq!(
            scan(br#"{"jsonrpc":"2.0","result":{"id":3,"a":"x"},"id":42}"#),
            Some(42)
        );
        assert_eq!(
            scan(br#" { "id" : 0 , "result" : [ {"id":1} ] } "#),
            Some(0)
        );
        assert_eq!(
            scan(br#"{"result":"\"id\":5,","id":18446744073709551615}"#),
            Some(u64::MAX)
        );
        assert_eq!(scan(br#"{"result":{"k":"a\\"},"id":9}"#), Some(9));
        // The id token may end the line without a closing brace (a truncated line).
        assert_eq!(scan(br#"{"result":1,"id":12"#), Some(12));
        // Names near the ones sought are neither.
        assert_eq!(
            scan(br#"{"methods":1,"metho":2,"result":{"method":3},"id":8}"#),
            Some(8)
        );
    }

    #[test]
    fn ids_that_are_no_bus_ids_and_lines_without_one() {
        for line in [
            &br#"{"result":1}"#[..],
            br#"{"id":"7","result":1}"#,
            br#"{"id":-1,"result":1}"#,
            br#"{"id":1.5,"result":1}"#,
            br#"{"id":1e3,"result":1}"#,
            br#"{"id":01,"result":1}"#,
            br#"{"id":18446744073709551616,"result":1}"#,
            br#"{"id":null,"result":1}"#,
            br#"{"id":[1],"result":1}"#,
            br#"{"\u0069d":1,"result":1}"#,
            br#"{"idx":1,"result":1}"#,
            br#"{"i":1,"result":1}"#,
            br#"[{"id":1}]"#,
            br#"{"a":{"id":1}}"#,
            br#"{"a":"id","b":1}"#,
            // A worker's own request: its id is the worker's, not a bus id.
            br#"{"id":0,"method":"item/commandExecution/requestApproval","params":{}}"#,
            br#"{"params":{},"id":0,"method":"x"}"#,
            b"",
        ] {
            assert_eq!(scan(line), None, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn state_is_reset_between_lines() {
        let mut s = TopLevelId::default();
        s.feed(br#"{"id":5,"result":"unterminated"#);
        assert_eq!(s.finish(), Some(5));
        s.feed(br#"{"result":1}"#);
        assert_eq!(s.finish(), None);
    }
}
