//! The collector that lets validation go on after the first problem.

use std::fmt::Display;

use crate::path::FieldPath;
use crate::suggest::closest;

/// Problems found so far, each already prefixed with its field path.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<String>);

impl Problems {
    /// Records `message` about the value at `path`.
    pub(crate) fn add(&mut self, path: &FieldPath<'_>, message: impl Display) {
        self.0.push(format!("{path}: {message}"));
    }

    /// How many problems have been recorded, so a section can tell whether it added any.
    pub(crate) fn count(&self) -> usize {
        self.0.len()
    }

    /// Records an unknown key at `path`, with the closest known key or else the whole list.
    pub(crate) fn unknown_key(&mut self, path: &FieldPath<'_>, key: &str, known: &[&str]) {
        match closest(key, known) {
            Some(hint) => self.add(path, format_args!("unknown key (did you mean '{hint}'?)")),
            None => self.add(
                path,
                format_args!("unknown key (known keys: {})", known.join(", ")),
            ),
        }
    }

    /// The messages, in the order found.
    pub(crate) fn into_vec(self) -> Vec<String> {
        self.0
    }
}
