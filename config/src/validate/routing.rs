//! The `routing` object.

use crate::path::FieldPath;
use crate::schema::{ID_REFERENCE_KEYS, ROUTING_KEYS};
use crate::tree::Json;
use crate::validate::problems::Problems;
use crate::validate::values::{non_empty_string, object, string};
use crate::{IdReferenceConfig, RoutingConfig};

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
                if let Some(field) = dotted_path(&path, value, problems) {
                    routing.session_id_field = field.to_owned();
                }
            }
            "default_pool" => routing.default_pool = default_pool(&path, value, pool_ids, problems),
            "id_references" => {
                if let Some(list) = id_references(&path, value, problems) {
                    routing.id_references = list;
                }
            }
            _ => problems.unknown_key(&path, key, ROUTING_KEYS),
        }
    }
    (problems.count() == before).then_some(routing)
}

/// Rejects exactly what the protocol crate's path parser would: empty, or with an empty segment.
fn dotted_path<'j>(
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

/// `routing.id_references`: an array of `{method, path}`, each method listed once; `[]` turns the
/// rewriting off. The method must be writable in JSON without escapes, as the protocol crate
/// matches it by raw bytes.
fn id_references(
    path: &FieldPath<'_>,
    value: &Json,
    problems: &mut Problems,
) -> Option<Vec<IdReferenceConfig>> {
    let Json::Array(items) = value else {
        problems.add(
            path,
            format_args!(
                "must be an array of {{\"method\", \"path\"}} objects, got {}",
                value.describe()
            ),
        );
        return None;
    };
    let before = problems.count();
    let mut list: Vec<IdReferenceConfig> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let path = path.index(index);
        let Some(entries) = object(&path, item, problems) else {
            continue;
        };
        let (mut method, mut member) = (None, None);
        for (key, value) in entries {
            let path = path.key(key);
            match key.as_str() {
                "method" => method = reference_method(&path, value, problems),
                "path" => member = dotted_path(&path, value, problems),
                _ => problems.unknown_key(&path, key, ID_REFERENCE_KEYS),
            }
        }
        for key in ID_REFERENCE_KEYS {
            if item.get(key).is_none() {
                problems.add(&path.key(key), "missing (required: a non-empty string)");
            }
        }
        let (Some(method), Some(member)) = (method, member) else {
            continue;
        };
        if let Some(first) = list.iter().position(|r| r.method == method) {
            problems.add(
                &path.key("method"),
                format_args!("'{method}' is listed twice (first at index {first})"),
            );
            continue;
        }
        list.push(IdReferenceConfig {
            method: method.to_owned(),
            path: member.to_owned(),
        });
    }
    (problems.count() == before).then_some(list)
}

fn reference_method<'j>(
    path: &FieldPath<'_>,
    value: &'j Json,
    problems: &mut Problems,
) -> Option<&'j str> {
    let method = non_empty_string(path, value, problems)?;
    if method
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        problems.add(
            path,
            format_args!(
                "must not contain quotes, backslashes or control characters, got {method:?}"
            ),
        );
        return None;
    }
    Some(method)
}
