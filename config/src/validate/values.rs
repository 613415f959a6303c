//! Checks of single values shared by every section.

use crate::path::FieldPath;
use crate::tree::Json;
use crate::validate::problems::Problems;

/// One day in seconds: the ceiling of every duration in the config. Anything longer is almost surely
/// a unit mistake, and the bound keeps `Instant + duration` from overflowing (an unbounded
/// `drain_timeout_sec` of 2^63 panicked the drain).
pub(crate) const DAY_SEC: u64 = 86_400;

/// The entries of an object, or a problem naming what was found instead.
pub(crate) fn object<'j>(
    path: &FieldPath<'_>,
    value: &'j Json,
    problems: &mut Problems,
) -> Option<&'j [(String, Json)]> {
    match value {
        Json::Object(entries) => Some(entries),
        other => {
            problems.add(
                path,
                format_args!("must be an object, got {}", other.describe()),
            );
            None
        }
    }
}

/// A string, or a problem naming what was found instead.
pub(crate) fn string<'j>(
    path: &FieldPath<'_>,
    value: &'j Json,
    problems: &mut Problems,
) -> Option<&'j str> {
    match value {
        Json::String(s) => Some(s),
        other => {
            problems.add(
                path,
                format_args!("must be a string, got {}", other.describe()),
            );
            None
        }
    }
}

/// A boolean, or a problem naming what was found instead.
pub(crate) fn boolean(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Option<bool> {
    match value {
        Json::Bool(b) => Some(*b),
        other => {
            problems.add(
                path,
                format_args!("must be true or false, got {}", other.describe()),
            );
            None
        }
    }
}

/// A non-empty string.
pub(crate) fn non_empty_string<'j>(
    path: &FieldPath<'_>,
    value: &'j Json,
    problems: &mut Problems,
) -> Option<&'j str> {
    match value {
        Json::String(s) if !s.is_empty() => Some(s),
        other => {
            problems.add(
                path,
                format_args!("must be a non-empty string, got {}", other.describe()),
            );
            None
        }
    }
}

/// A string handed to `exec` (program, argument, environment value or directory), where a NUL byte would
/// make the spawn fail long after startup.
pub(crate) fn exec_string<'j>(
    path: &FieldPath<'_>,
    value: &'j Json,
    non_empty: bool,
    problems: &mut Problems,
) -> Option<&'j str> {
    let s = if non_empty {
        non_empty_string(path, value, problems)?
    } else {
        string(path, value, problems)?
    };
    if s.contains('\0') {
        problems.add(path, "must not contain a NUL character");
        return None;
    }
    Some(s)
}

/// A JSON integer (no fraction, no exponent) between `min` and `max`, converted to the field's type.
pub(crate) fn integer<T>(
    path: &FieldPath<'_>,
    value: &Json,
    min: u64,
    max: T,
    problems: &mut Problems,
) -> Option<T>
where
    T: TryFrom<u64> + PartialOrd + Copy + std::fmt::Display,
{
    // as_u64 is None for negative numbers and for any number written with a fraction or exponent.
    let Some(n) = (match value {
        Json::Number(n) => n.as_u64(),
        _ => None,
    }) else {
        problems.add(path, expected_integer(min, &value.describe()));
        return None;
    };
    if n < min {
        problems.add(path, expected_integer(min, &n.to_string()));
        return None;
    }
    match T::try_from(n) {
        Ok(v) if v <= max => Some(v),
        _ => {
            problems.add(path, format_args!("must be at most {max}, got {n}"));
            None
        }
    }
}

fn expected_integer(min: u64, got: &str) -> String {
    if min == 0 {
        format!("must be a non-negative integer, got {got}")
    } else {
        format!("must be an integer ≥ {min}, got {got}")
    }
}
