//! The `routing` object.

use crate::path::FieldPath;
use crate::schema::ROUTING_KEYS;
use crate::tree::Json;
use crate::validate::problems::Problems;
use crate::validate::values::{object, string};
use crate::RoutingConfig;

/// Validates `routing`; `pool_ids` is `None` when the pools are too broken to check `default_pool` against.
pub(crate) fn routing(
    path: &FieldPath<'_>,
    value: Option<&Json>,
    pool_ids: Option<&[String]>,
    problems: &mut Problems,
) -> Option<RoutingConfig> {
    let mut routing = RoutingConfig::default();
    let Some(value) = value else {
        return Some(routing);
    };
    let entries = object(path, value, problems)?;
    let before = problems.count();
    for (key, value) in entries {
        let path = path.key(key);
        match key.as_str() {
            "session_id_field" => {
                if let Some(field) = session_id_field(&path, value, problems) {
                    routing.session_id_field = field.to_owned();
                }
            }
            "default_pool" => routing.default_pool = default_pool(&path, value, pool_ids, problems),
            _ => problems.unknown_key(&path, key, ROUTING_KEYS),
        }
    }
    (problems.count() == before).then_some(routing)
}

/// Rejects exactly what the protocol crate's session path parser would: empty, or with an empty segment.
fn session_id_field<'j>(
    path: &FieldPath<'_>,
    value: &'j Json,
    problems: &mut Problems,
) -> Option<&'j str> {
    let field = string(path, value, problems)?;
    if field.split('.').any(str::is_empty) {
        problems.add(
            path,
            format_args!(
                "must be a dotted path without empty segments, like \"sessionId\" or \"params.sessionId\", got {field:?}"
            ),
        );
        return None;
    }
    Some(field)
}

fn default_pool(
    path: &FieldPath<'_>,
    value: &Json,
    pool_ids: Option<&[String]>,
    problems: &mut Problems,
) -> Option<String> {
    let name = string(path, value, problems)?;
    match pool_ids {
        Some(ids) if !ids.iter().any(|id| id == name) => {
            problems.add(
                path,
                format_args!("no pool named '{name}' (pools: {})", ids.join(", ")),
            );
            None
        }
        _ => Some(name.to_owned()),
    }
}
