//! The parsed document: like `serde_json::Value`, but objects keep document order so problems are reported
//! in the order a reader meets them.

use serde_json::Number;

/// Longest string shown verbatim in a problem; longer ones are cut so one bad value cannot flood the output.
const SHOWN_STRING_CHARS: usize = 60;

/// One JSON value.
#[derive(Debug, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Json>),
    /// Entries in document order; the parser guarantees the keys are distinct.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The value as it should appear after "got" in a problem.
    pub(crate) fn describe(&self) -> String {
        match self {
            Json::Null => "null".to_owned(),
            Json::Bool(b) => b.to_string(),
            Json::Number(n) => n.to_string(),
            Json::String(s) if s.chars().count() > SHOWN_STRING_CHARS => {
                let shown: String = s.chars().take(SHOWN_STRING_CHARS).collect();
                format!("{shown:?}…")
            }
            Json::String(s) => format!("{s:?}"),
            Json::Array(_) => "an array".to_owned(),
            Json::Object(_) => "an object".to_owned(),
        }
    }

    /// The same value as a `serde_json::Value`, for settings passed on verbatim (a probe's params).
    pub(crate) fn to_value(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::String(s) => Value::String(s.clone()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// The entry named `key`, if this is an object that has one.
    pub(crate) fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Json;

    #[test]
    fn describes_floats_with_their_fraction() {
        let two = serde_json::Number::from_f64(2.0).map(Json::Number);
        assert_eq!(two.map(|v| v.describe()).as_deref(), Some("2.0"));
    }

    #[test]
    fn cuts_long_strings() {
        let long = Json::String("x".repeat(200));
        assert_eq!(long.describe(), format!("{:?}…", "x".repeat(60)));
    }
}
