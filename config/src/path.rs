//! Field paths such as `pools[1].instances`, so that every problem says where it is.

use std::fmt;

/// A path from the document root, each step borrowing its parent so that walking the tree allocates nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FieldPath<'a> {
    /// The document itself.
    Root,
    /// A key inside an object.
    Key(&'a FieldPath<'a>, &'a str),
    /// An element of an array.
    Index(&'a FieldPath<'a>, usize),
}

impl<'a> FieldPath<'a> {
    /// The path of `key` inside the object at `self`.
    pub(crate) fn key(&'a self, key: &'a str) -> FieldPath<'a> {
        FieldPath::Key(self, key)
    }

    /// The path of element `index` of the array at `self`.
    pub(crate) fn index(&'a self, index: usize) -> FieldPath<'a> {
        FieldPath::Index(self, index)
    }

    fn write_steps(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldPath::Root => Ok(()),
            FieldPath::Key(parent, key) => {
                parent.write_steps(f)?;
                if !is_plain_key(key) {
                    // Keys with dots, spaces or quotes would make the dotted form ambiguous.
                    write!(f, "[{key:?}]")
                } else if matches!(parent, FieldPath::Root) {
                    f.write_str(key)
                } else {
                    write!(f, ".{key}")
                }
            }
            FieldPath::Index(parent, index) => {
                parent.write_steps(f)?;
                write!(f, "[{index}]")
            }
        }
    }
}

fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for FieldPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldPath::Root => f.write_str("top level"),
            _ => self.write_steps(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FieldPath;

    #[test]
    fn renders_keys_and_indices_like_the_spec() {
        let root = FieldPath::Root;
        let pools = root.key("pools");
        let first = pools.index(1);
        assert_eq!(first.key("instances").to_string(), "pools[1].instances");
        assert_eq!(root.to_string(), "top level");
    }

    #[test]
    fn quotes_keys_that_are_not_plain_identifiers() {
        let root = FieldPath::Root;
        let env = root.key("env");
        assert_eq!(env.key("a.b").to_string(), r#"env["a.b"]"#);
        assert_eq!(root.key("").to_string(), r#"[""]"#);
    }
}
