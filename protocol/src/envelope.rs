//! Borrowed JSON-RPC envelope extraction: one validating pass that records where the routing
//! fields of a line are, without building a document or allocating for an object.

use std::borrow::Cow;
use std::ops::Range;

use crate::scan::{self, Scalar, Unescape, Visitor};

/// Byte range into the line.
pub type Span = Range<usize>;

/// Dotted path of a member, e.g. "sessionId" or "params.sessionId": where the session key sits, and
/// where an id reference (`crate::reference`) names an earlier request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionPath {
    dotted: String,
    /// End offset of each segment within `dotted`; the next one starts after its dot.
    ends: Vec<usize>,
}

impl SessionPath {
    /// Parses a dotted path; `None` if it is empty or has an empty segment.
    pub fn parse(dotted: &str) -> Option<SessionPath> {
        let mut ends = Vec::new();
        let mut from = 0;
        for part in dotted.split('.') {
            if part.is_empty() {
                return None;
            }
            ends.push(from + part.len());
            from += part.len() + 1;
        }
        Some(SessionPath {
            dotted: dotted.to_owned(),
            ends,
        })
    }

    /// The dotted form.
    pub fn as_str(&self) -> &str {
        &self.dotted
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn segment(&self, index: usize) -> &[u8] {
        let start = index.checked_sub(1).map_or(0, |prev| self.ends[prev] + 1);
        &self.dotted.as_bytes()[start..self.ends[index]]
    }
}

impl Default for SessionPath {
    /// The top-level `"sessionId"` member.
    fn default() -> Self {
        SessionPath {
            dotted: "sessionId".to_owned(),
            ends: vec!["sessionId".len()],
        }
    }
}

/// What one line holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A JSON object: its routing fields.
    Object(Envelope),
    /// A JSON array (a batch): the number of its elements, which are validated but not parsed
    /// further. Only counted, not collected: the bus refuses batches, and the spans of a 1 MiB
    /// line of `[0,0,…]` took 8 MiB.
    Batch(usize),
}

/// Where the routing fields of a top-level object are (spans into the line).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Raw token of top-level "id" (any JSON value, exact bytes, incl quotes).
    pub id: Option<Span>,
    /// Raw token of top-level "method" (string incl quotes, or whatever was there).
    pub method: Option<Span>,
    /// Top-level "result" present.
    pub has_result: bool,
    /// Top-level "error" present.
    pub has_error: bool,
    /// Raw token of the value at the session path (only if string or number).
    pub session: Option<Span>,
    /// Raw token of top-level "pool" (only if a string).
    pub pool: Option<Span>,
    /// A top-level "tenant" member is present (any value). With authentication the bus sets that
    /// member itself, so a client's own is refused.
    pub has_tenant: bool,
    /// A key on the session path occurs more than once with a session found before the last
    /// (`session` holds the last one's): with authentication such a message is refused, since only
    /// one occurrence gets the tenant's prefix and a worker might read another.
    pub duplicate_session: bool,
}

/// JSON-RPC role of a message, judged from which members are present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Has "method" and "id".
    Request,
    /// Has "method" but no "id".
    Notification,
    /// Has "id", no "method", and "result" or "error".
    Response,
    /// Anything else, e.g. `{}` or a result without id.
    Invalid,
}

impl Envelope {
    /// Request = method + id; Notification = method, no id; Response = id, no method, result or error;
    /// Invalid otherwise (e.g. `{}` or result without id).
    pub fn kind(&self) -> Kind {
        match (self.method.is_some(), self.id.is_some()) {
            (true, true) => Kind::Request,
            (true, false) => Kind::Notification,
            (false, true) if self.has_result || self.has_error => Kind::Response,
            _ => Kind::Invalid,
        }
    }
}

/// Why a line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not valid JSON (or not UTF-8, or control char in a string, or trailing bytes).
    Parse,
    /// Valid JSON but not an object or array (e.g. `"str"`, `42`, `null`).
    NotObject,
    /// The top-level object has the key "id" more than once (ambiguous: refuse).
    DuplicateId,
}

/// Parses one line.
pub fn parse(line: &[u8], session: &SessionPath) -> Result<Message, EnvelopeError> {
    if std::str::from_utf8(line).is_err() {
        return Err(EnvelopeError::Parse);
    }
    let mut c = Collector::new(line, session);
    scan::scan(line, &mut c).map_err(|scan::Invalid| EnvelopeError::Parse)?;
    match c.top {
        Top::Object if c.duplicate_id => Err(EnvelopeError::DuplicateId),
        Top::Object => Ok(Message::Object(c.env)),
        Top::Array => Ok(Message::Batch(c.batch)),
        Top::Scalar => Err(EnvelopeError::NotObject),
    }
}

/// The bytes of a string or number token as a routing key: the string's content without quotes,
/// unescaped (Cow::Owned) only when it contains a backslash; a number's raw text. None for other tokens.
pub fn key_bytes(token: &[u8]) -> Option<Cow<'_, [u8]>> {
    match token.first()? {
        b'"' => {
            let (end, escaped) = scan::string(token, 0).ok()?;
            if end != token.len() {
                return None;
            }
            let content = &token[1..end - 1];
            Some(if escaped {
                Cow::Owned(Unescape::new(content).fold(Vec::new(), |mut v, p| {
                    v.extend_from_slice(p.bytes());
                    v
                }))
            } else {
                Cow::Borrowed(content)
            })
        }
        b'-' | b'0'..=b'9' => {
            let end = scan::number(token, 0).ok()?;
            (end == token.len()).then_some(Cow::Borrowed(token))
        }
        _ => None,
    }
}

/// Compares a raw key with `target` after decoding escapes, without allocating.
pub(crate) fn key_eq(raw: &[u8], escaped: bool, target: &[u8]) -> bool {
    if !escaped {
        return raw == target;
    }
    let mut rest = target;
    for piece in Unescape::new(raw) {
        match rest.strip_prefix(piece.bytes()) {
            Some(tail) => rest = tail,
            None => return false,
        }
    }
    rest.is_empty()
}

/// What the top-level value turned out to be.
#[derive(Clone, Copy)]
enum Top {
    Scalar,
    Object,
    Array,
}

/// Which envelope field a top-level member fills.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Ignored,
    Id,
    Method,
    Pool,
}

/// Top-level keys the envelope cares about; escaped keys are decoded against this list.
const TOP_KEYS: [&[u8]; 6] = [b"id", b"method", b"pool", b"result", b"error", b"tenant"];

/// Scanner visitor that fills an [`Envelope`] (or counts a batch) in the same pass as validation.
struct Collector<'a> {
    line: &'a [u8],
    path: &'a SessionPath,
    top: Top,
    env: Envelope,
    /// Elements of a top-level array.
    batch: usize,
    duplicate_id: bool,
    /// Field for the top-level member whose key was just read.
    field: Field,
    /// Field and start of the top-level member container being scanned.
    open_field: Field,
    open_at: usize,
    /// Depth of the innermost open object lying on the session path (0 = the top-level object).
    path_depth: usize,
    /// The key just read lies on the session path, so the value that follows does too.
    path_value: bool,
}

impl<'a> Collector<'a> {
    fn new(line: &'a [u8], path: &'a SessionPath) -> Self {
        Collector {
            line,
            path,
            top: Top::Scalar,
            env: Envelope::default(),
            batch: 0,
            duplicate_id: false,
            field: Field::Ignored,
            open_field: Field::Ignored,
            open_at: 0,
            path_depth: 0,
            path_value: false,
        }
    }

    fn top_level_key(&mut self, raw: &[u8], escaped: bool) -> Field {
        let key = if escaped {
            TOP_KEYS
                .into_iter()
                .find(|name| key_eq(raw, true, name))
                .unwrap_or_default()
        } else {
            raw
        };
        match key {
            b"id" => {
                self.duplicate_id |= self.env.id.is_some();
                Field::Id
            }
            b"method" => Field::Method,
            b"pool" => Field::Pool,
            b"result" => {
                self.env.has_result = true;
                Field::Ignored
            }
            b"error" => {
                self.env.has_error = true;
                Field::Ignored
            }
            b"tenant" => {
                self.env.has_tenant = true;
                Field::Ignored
            }
            _ => Field::Ignored,
        }
    }

    /// Stores a top-level member value; duplicates simply overwrite (last one wins).
    fn assign(&mut self, field: Field, span: Span, string: bool) {
        match field {
            Field::Id => self.env.id = Some(span),
            Field::Method => self.env.method = Some(span),
            Field::Pool => self.env.pool = string.then_some(span),
            Field::Ignored => {}
        }
    }
}

impl Visitor for Collector<'_> {
    fn key(&mut self, depth: usize, content: Range<usize>, escaped: bool) {
        let raw = &self.line[content];
        if depth == 1 {
            self.field = self.top_level_key(raw, escaped);
        }
        self.path_value = depth == self.path_depth + 1
            && depth <= self.path.len()
            && key_eq(raw, escaped, self.path.segment(depth - 1));
        if self.path_value {
            // A later occurrence of any key on the path replaces everything beneath the earlier one.
            self.env.duplicate_session |= self.env.session.is_some();
            self.env.session = None;
        }
    }

    fn scalar(&mut self, depth: usize, span: Range<usize>, kind: Scalar) {
        if depth == 1 {
            match self.top {
                Top::Array => self.batch += 1,
                Top::Object => self.assign(self.field, span.clone(), kind == Scalar::String),
                Top::Scalar => {}
            }
        }
        if std::mem::take(&mut self.path_value)
            && depth == self.path.len()
            && kind != Scalar::Literal
        {
            self.env.session = Some(span);
        }
    }

    fn open(&mut self, depth: usize, at: usize, object: bool) {
        match depth {
            0 => self.top = if object { Top::Object } else { Top::Array },
            1 => {
                self.open_field = self.field;
                self.open_at = at;
            }
            _ => {}
        }
        if std::mem::take(&mut self.path_value) && object && depth < self.path.len() {
            self.path_depth = depth;
        }
    }

    fn close(&mut self, depth: usize, end: usize) {
        if depth == 1 {
            let span = self.open_at..end;
            match self.top {
                Top::Array => self.batch += 1,
                Top::Object => self.assign(self.open_field, span, false),
                Top::Scalar => {}
            }
        }
        if depth != 0 && depth == self.path_depth {
            self.path_depth = depth - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(line: &str) -> (Envelope, &str) {
        match parse(line.as_bytes(), &SessionPath::default()) {
            Ok(Message::Object(env)) => (env, line),
            other => panic!("{line}: {other:?}"),
        }
    }

    fn text<'a>(line: &'a str, span: &Option<Span>) -> Option<&'a str> {
        span.clone().map(|s| &line[s])
    }

    #[test]
    fn id_tokens_are_exact() {
        for id in [
            "\"abc\"",
            "\"a\\\"b\"",
            "7",
            "-1.5",
            "1.5e3",
            "{\"x\":[1,2]}",
            "[]",
            "null",
            "true",
        ] {
            let line = format!("{{\"jsonrpc\":\"2.0\",\"id\": {id} ,\"method\":\"m\"}}");
            let (env, line) = object(&line);
            assert_eq!(text(line, &env.id), Some(id));
            assert_eq!(env.kind(), Kind::Request);
        }
    }

    #[test]
    fn small_request_spans() {
        let line = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","sessionId":"s"}"#;
        assert_eq!(line.len(), 63);
        let (env, _) = object(line);
        let want = Envelope {
            id: Some(22..24),
            method: Some(34..46),
            session: Some(59..62),
            ..Envelope::default()
        };
        assert_eq!(env, want);
        assert_eq!(env.kind(), Kind::Request);
    }

    #[test]
    fn method_takes_any_value() {
        let (env, line) = object(r#"{"method":{"a":1}}"#);
        assert_eq!(text(line, &env.method), Some(r#"{"a":1}"#));
        assert_eq!(env.kind(), Kind::Notification);
    }

    #[test]
    fn kinds() {
        let kind = |line: &str| object(line).0.kind();
        assert_eq!(kind(r#"{"id":1,"method":"m"}"#), Kind::Request);
        assert_eq!(kind(r#"{"id":null,"method":"m"}"#), Kind::Request);
        assert_eq!(kind(r#"{"method":"m","params":[]}"#), Kind::Notification);
        assert_eq!(kind(r#"{"id":1,"result":null}"#), Kind::Response);
        assert_eq!(kind(r#"{"id":1,"error":{"code":1}}"#), Kind::Response);
        assert_eq!(kind(r#"{"id":1}"#), Kind::Invalid);
        assert_eq!(kind(r#"{"result":1}"#), Kind::Invalid);
        assert_eq!(kind(r#"{}"#), Kind::Invalid);
        let (env, _) = object(r#"{"id":1,"result":{"error":1},"error":2}"#);
        assert!(env.has_result && env.has_error);
        let (env, _) = object(r#"{"params":{"result":1,"error":2}}"#);
        assert!(!env.has_result && !env.has_error);
    }

    #[test]
    fn session_at_top_level() {
        let (env, line) = object(r#"{"method":"m","sessionId":"s-1"}"#);
        assert_eq!(text(line, &env.session), Some("\"s-1\""));
        let (env, line) = object(r#"{"method":"m","sessionId":12.5}"#);
        assert_eq!(text(line, &env.session), Some("12.5"));
        for ignored in ["null", "true", "{\"a\":\"b\"}", "[\"x\"]"] {
            let line = format!("{{\"sessionId\":{ignored}}}");
            assert_eq!(object(&line).0.session, None, "{line}");
        }
        let (env, line) = object(r#"{"sessionId":"a","sessionId":"b"}"#);
        assert_eq!(text(line, &env.session), Some("\"b\""));
        let (env, _) = object(r#"{"sessionId":"a","sessionId":null}"#);
        assert_eq!(env.session, None);
        let (env, _) = object(r#"{"params":{"sessionId":"deep"}}"#);
        assert_eq!(env.session, None);
    }

    #[test]
    fn session_at_nested_path() {
        let path = SessionPath::parse("params.sessionId").unwrap();
        let session = |line: &str| match parse(line.as_bytes(), &path) {
            Ok(Message::Object(env)) => env.session.map(|s| line[s].to_owned()),
            other => panic!("{line}: {other:?}"),
        };
        let hit = r#"{"id":1,"params":{"a":{"sessionId":"no"},"sessionId":"yes","b":[{"sessionId":"no"}]}}"#;
        assert_eq!(session(hit).as_deref(), Some("\"yes\""));
        assert_eq!(session(r#"{"params":{"x":1},"sessionId":"top"}"#), None);
        assert_eq!(session(r#"{"other":{"sessionId":"s"}}"#), None);
        assert_eq!(session(r#"{"params":[{"sessionId":"s"}]}"#), None);
        assert_eq!(session(r#"{"params":{"sessionId":{"v":1}}}"#), None);
        let last_wins = r#"{"params":{"sessionId":"a"},"params":{"sessionId":"b"}}"#;
        assert_eq!(session(last_wins).as_deref(), Some("\"b\""));
        let replaced = r#"{"params":{"sessionId":"a"},"params":{"x":1}}"#;
        assert_eq!(session(replaced), None);
        let escaped = r#"{"\u0070arams":{"session\u0049d":7}}"#;
        assert_eq!(session(escaped).as_deref(), Some("7"));

        let three = SessionPath::parse("a.b.c").unwrap();
        let line = r#"{"a":{"b":{"c":"x"},"c":"no"},"b":{"c":"no"}}"#;
        match parse(line.as_bytes(), &three) {
            Ok(Message::Object(env)) => assert_eq!(text(line, &env.session), Some("\"x\"")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pool_only_if_string() {
        let (env, line) = object(r#"{"method":"m","pool":"gpu"}"#);
        assert_eq!(text(line, &env.pool), Some("\"gpu\""));
        assert_eq!(object(r#"{"pool":3}"#).0.pool, None);
        assert!(object(r#"{"method":"m","tenant":{"x":1}}"#).0.has_tenant);
        assert!(object(r#"{"method":"m","ten\u0061nt":1}"#).0.has_tenant);
        assert!(
            !object(r#"{"method":"m","params":{"tenant":1}}"#)
                .0
                .has_tenant
        );
        assert!(
            !object(r#"{"method":"m","sessionId":"a"}"#)
                .0
                .duplicate_session
        );
        assert!(
            object(r#"{"sessionId":"a","method":"m","sessionId":"b"}"#)
                .0
                .duplicate_session
        );
        assert_eq!(object(r#"{"pool":"a","pool":{"x":1}}"#).0.pool, None);
    }

    #[test]
    fn duplicate_id_is_refused() {
        let p = |s: &str| parse(s.as_bytes(), &SessionPath::default());
        assert_eq!(p(r#"{"id":1,"id":2}"#), Err(EnvelopeError::DuplicateId));
        assert_eq!(
            p(r#"{"id":1,"\u0069d":1}"#),
            Err(EnvelopeError::DuplicateId)
        );
        assert_eq!(p(r#"{"id":1,"id":2"#), Err(EnvelopeError::Parse));
        assert!(matches!(
            p(r#"{"id":1,"params":{"id":2}}"#),
            Ok(Message::Object(_))
        ));
        let (env, line) = object(r#"{"method":"a","method":"b"}"#);
        assert_eq!(text(line, &env.method), Some("\"b\""));
    }

    #[test]
    fn escaped_keys_match() {
        let (env, line) =
            object(r#"{"\u0069d":5,"m\u0065thod":"x","\u0072esult":1,"p\u006fol":"q"}"#);
        assert_eq!(text(line, &env.id), Some("5"));
        assert_eq!(text(line, &env.method), Some("\"x\""));
        assert!(env.has_result);
        assert_eq!(text(line, &env.pool), Some("\"q\""));
        assert_eq!(object(r#"{"i\u0064x":5}"#).0.id, None);
    }

    #[test]
    fn batches_and_non_objects() {
        let p = |s: &str| parse(s.as_bytes(), &SessionPath::default());
        assert_eq!(p("[]"), Ok(Message::Batch(0)));
        assert_eq!(p("[1,2]"), Ok(Message::Batch(2)));
        assert_eq!(p(r#" [ {"id":1} , "s" ,[[]]] "#), Ok(Message::Batch(3)));
        assert_eq!(p(r#"[ {"id":1} , "s" ,[[]] "#), Err(EnvelopeError::Parse));
        for scalar in ["\"str\"", "42", "null", " true "] {
            assert_eq!(p(scalar), Err(EnvelopeError::NotObject), "{scalar}");
        }
        for bad in [
            "",
            " ",
            "{",
            "[1,",
            "{\"id\":1} x",
            "\"a\u{0}\"",
            "{\"a\":01}",
        ] {
            assert_eq!(p(bad), Err(EnvelopeError::Parse), "{bad:?}");
        }
        assert_eq!(
            parse(b"{\"id\":\"\xff\"}", &SessionPath::default()),
            Err(EnvelopeError::Parse)
        );
        assert!(matches!(p(" \t{\"id\":1}\r\n "), Ok(Message::Object(_))));
    }

    #[test]
    fn session_path_parsing() {
        assert_eq!(
            SessionPath::parse("sessionId"),
            Some(SessionPath::default())
        );
        assert_eq!(SessionPath::default().as_str(), "sessionId");
        let p = SessionPath::parse("params.sessionId").unwrap();
        assert_eq!(p.as_str(), "params.sessionId");
        assert_eq!(
            (p.segment(0), p.segment(1)),
            (&b"params"[..], &b"sessionId"[..])
        );
        for bad in ["", ".", "a.", ".a", "a..b"] {
            assert_eq!(SessionPath::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn key_bytes_of_tokens() {
        assert_eq!(key_bytes(b"\"abc\""), Some(Cow::Borrowed(&b"abc"[..])));
        assert!(matches!(key_bytes(b"\"abc\""), Some(Cow::Borrowed(_))));
        let owned = key_bytes(b"\"a\\u0062\\n\"");
        assert!(matches!(owned, Some(Cow::Owned(_))));
        assert_eq!(owned.as_deref(), Some(&b"ab\n"[..]));
        assert_eq!(key_bytes(b"-12.5e3").as_deref(), Some(&b"-12.5e3"[..]));
        assert_eq!(key_bytes(b"\"\"").as_deref(), Some(&b""[..]));
        for other in [
            &b"null"[..],
            b"true",
            b"{}",
            b"[1]",
            b"",
            b"\"",
            b"\"a",
            b"\"a\"x",
            b"01",
            b"1 ",
            b"\"\\x\"",
        ] {
            assert_eq!(
                key_bytes(other),
                None,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
        assert_ne!(key_bytes(b"\"\\ud800\""), key_bytes(b"\"\\ud801\""));
    }
}
