//! The error returned for an unusable config: all of its problems at once.

use std::fmt;

/// Every problem found, each naming its field path.
#[derive(Debug)]
pub struct ConfigError {
    /// The file path, or a label such as `<built-in>`, that prefixes every line of the message.
    pub source_name: String,
    /// One message per problem, each starting with the field path it concerns.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {problem}", self.source_name)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
