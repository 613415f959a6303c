//! The `audit` object (our extension).

use std::path::PathBuf;

use crate::path::FieldPath;
use crate::schema::AUDIT_KEYS;
use crate::tree::Json;
use crate::validate::problems::Problems;
use crate::validate::values::{exec_string, object};
use crate::AuditConfig;

/// Validates `audit`.
pub(crate) fn audit(
    path: &FieldPath<'_>,
    value: Option<&Json>,
    problems: &mut Problems,
) -> Option<AuditConfig> {
    let mut audit = AuditConfig::default();
    let Some(value) = value else {
        return Some(audit);
    };
    let entries = object(path, value, problems)?;
    let before = problems.count();
    for (key, value) in entries {
        let path = path.key(key);
        match key.as_str() {
            // A path reaches open(2), which stops at a NUL: the same rule as a worker's cwd.
            "path" => audit.path = exec_string(&path, value, true, problems).map(PathBuf::from),
            _ => problems.unknown_key(&path, key, AUDIT_KEYS),
        }
    }
    (problems.count() == before).then_some(audit)
}
