//! Ids inside messages: members that name one of the sender's earlier requests by the id it gave
//! it, such as LSP's `$/cancelRequest` (`params.id`) and MCP's `notifications/cancelled`
//! (`params.requestId`). A worker only knows bus ids, so the bus rewrites these like request ids.

use crate::envelope::{parse, Message, SessionPath, Span};

/// Which member of which notification names an earlier request (one entry of
/// `routing.id_references`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdReference {
    /// The method as it appears on the wire, quotes included (e.g. `"$/cancelRequest"`), so that
    /// matching a message is one comparison of raw bytes.
    method_token: Box<[u8]>,
    /// Where the id sits, e.g. `params.id`.
    path: SessionPath,
}

impl IdReference {
    /// The reference of `method`'s member at the dotted `path`; `None` if the path is malformed
    /// (empty, or with an empty segment) or the method needs escaping in JSON (a quote, a
    /// backslash or a control character: configured names are plain).
    pub fn new(method: &str, path: &str) -> Option<IdReference> {
        if method.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
            return None;
        }
        Some(IdReference {
            method_token: format!("\"{method}\"").into_bytes().into(),
            path: SessionPath::parse(path)?,
        })
    }
}

/// The configured id references; empty means none is rewritten.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdReferences(Vec<IdReference>);

impl IdReferences {
    /// The list, in configuration order (the first entry for a method wins).
    pub fn new(references: Vec<IdReference>) -> Self {
        IdReferences(references)
    }

    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The path of the id a message with this raw `method` token refers to, if its method is one
    /// of the configured ones. A method written with escapes (`"$\/cancelRequest"`) is not
    /// recognised: clients write method names plainly.
    pub fn path_for(&self, method: &[u8]) -> Option<&SessionPath> {
        self.0
            .iter()
            .find(|r| *r.method_token == *method)
            .map(|r| &r.path)
    }
}

/// The span of the string or number at the dotted `path` of the object in `line` (e.g. the
/// `params.id` of a cancellation): one more validating scan, meant only for the rare messages
/// whose method is an id reference. `None` when the member is absent, is not a string or number,
/// or the line is not an object.
pub fn value_at(line: &[u8], path: &SessionPath) -> Option<Span> {
    match parse(line, path) {
        Ok(Message::Object(envelope)) => envelope.session,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsp_and_mcp() -> IdReferences {
        IdReferences::new(vec![
            IdReference::new("$/cancelRequest", "params.id").unwrap(),
            IdReference::new("notifications/cancelled", "params.requestId").unwrap(),
        ])
    }

    #[test]
    fn methods_match_by_raw_token() {
        let refs = lsp_and_mcp();
        let path = |m: &[u8]| refs.path_for(m).map(SessionPath::as_str);
        assert_eq!(path(b"\"$/cancelRequest\""), Some("params.id"));
        assert_eq!(
            path(b"\"notifications/cancelled\""),
            Some("params.requestId")
        );
        for other in [
            &b"\"$/cancelrequest\""[..],
            b"$/cancelRequest",
            b"\"turn/interrupt\"",
            b"\"$\\/cancelRequest\"",
            b"",
        ] {
            assert_eq!(path(other), None, "{:?}", String::from_utf8_lossy(other));
        }
        assert_eq!(
            IdReferences::default().path_for(b"\"$/cancelRequest\""),
            None
        );
    }

    #[test]
    fn malformed_references_are_refused() {
        assert!(IdReference::new("m", "").is_none());
        assert!(IdReference::new("m", "params..id").is_none());
        assert!(IdReference::new("a\"b", "id").is_none());
        assert!(IdReference::new("a\\b", "id").is_none());
        assert!(IdReference::new("a\nb", "id").is_none());
    }

    #[test]
    fn the_id_is_found_at_its_path_only() {
        let path = SessionPath::parse("params.id").unwrap();
        let at = |line: &str| value_at(line.as_bytes(), &path).map(|s| line[s].to_owned());
        let line = r#"{"method":"$/cancelRequest","id":9,"params":{"x":{"id":1},"id":"a-1"}}"#;
        assert_eq!(at(line).as_deref(), Some("\"a-1\""));
        assert_eq!(
            at(r#"{"params":{"id":101},"method":"m"}"#).as_deref(),
            Some("101")
        );
        assert_eq!(at(r#"{"method":"m","params":{"id":null}}"#), None);
        assert_eq!(at(r#"{"method":"m","params":{"id":{"a":1}}}"#), None);
        assert_eq!(at(r#"{"method":"m","params":{}}"#), None);
        assert_eq!(at(r#"{"method":"m","id":1}"#), None);
        assert_eq!(at(r#"[{"params":{"id":1}}]"#), None);
        assert_eq!(at("not json"), None);
    }
}
