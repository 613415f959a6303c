//! Strict JSON parsing: serde_json's grammar (no trailing commas, no trailing text) plus a rejection of
//! duplicate keys, which serde_json's own `Value` would silently resolve to the last one.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::error::Category;
use serde_json::Number;

use crate::path::FieldPath;
use crate::tree::Json;

/// The visitor's wording for a repeated key, shared so that the hint is attached to exactly those errors.
const DUPLICATE_KEY: &str = ": duplicate key '";

/// Said after the leniencies stdio Bus has, so that a user migrating a working file knows why it now fails.
const STRICT_HINT: &str = "stdio Bus tolerated this; codex-stdio-bus requires strict JSON";

/// Parses `text` into a tree, or returns the one problem that stopped the parse.
pub(crate) fn parse_strict(text: &str) -> Result<Json, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = NodeSeed {
        path: &FieldPath::Root,
    }
    .deserialize(&mut de)
    .and_then(|tree| de.end().map(|()| tree));
    parsed.map_err(|e| describe_error(&e))
}

fn describe_error(error: &serde_json::Error) -> String {
    let (line, column) = (error.line(), error.column());
    let full = error.to_string();
    // serde_json appends the position to every message; we place it ourselves.
    let bare = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full);
    match error.classify() {
        // Only our visitor raises data errors, and its messages already start with the field path.
        Category::Data if bare.contains(DUPLICATE_KEY) => format!(
            "{bare} at line {line} column {column} (stdio Bus kept the last value; codex-stdio-bus rejects duplicates)"
        ),
        Category::Data => format!("{bare} at line {line} column {column}"),
        _ if bare.starts_with("trailing comma") || bare.starts_with("trailing characters") => {
            format!("invalid JSON at line {line} column {column}: {bare} ({STRICT_HINT})")
        }
        _ => format!("invalid JSON at line {line} column {column}: {bare}"),
    }
}

/// Deserializes one value, knowing its path so that a duplicate key can be named.
struct NodeSeed<'p> {
    path: &'p FieldPath<'p>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom(format!("{}: number is not finite", self.path)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = self.path.index(items.len());
            match seq.next_element_seed(NodeSeed { path: &path })? {
                Some(item) => items.push(item),
                None => return Ok(Json::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            // Checked before the value is read so that the reported position points at the repeated key.
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!(
                    "{}{DUPLICATE_KEY}{key}'",
                    self.path
                )));
            }
            let value = {
                let path = self.path.key(&key);
                map.next_value_seed(NodeSeed { path: &path })?
            };
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_strict;
    use crate::tree::Json;

    #[test]
    fn keeps_object_entries_in_document_order() {
        let tree = parse_strict(r#"{"b": 1, "a": [true, null, "x"]}"#);
        let keys: Vec<String> = match tree {
            Ok(Json::Object(entries)) => entries.into_iter().map(|(k, _)| k).collect(),
            other => panic!("expected an object, got {other:?}"),
        };
        assert_eq!(keys, ["b", "a"]);
    }

    #[test]
    fn names_the_path_of_a_nested_duplicate() {
        let err = parse_strict("{\"pools\": [{}, {\"env\": {\"A\": \"1\", \"A\": \"2\"}}]}");
        assert_eq!(
            err,
            Err("pools[1].env: duplicate key 'A' at line 1 column 37 \
                 (stdio Bus kept the last value; codex-stdio-bus rejects duplicates)"
                .to_owned())
        );
    }

    #[test]
    fn reports_eof_with_position() {
        assert_eq!(
            parse_strict("{\"pools\": ["),
            Err("invalid JSON at line 1 column 11: EOF while parsing a list".to_owned())
        );
    }
}
