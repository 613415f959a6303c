//! The `pools` array and each pool in it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::path::FieldPath;
use crate::schema::{MAX_INSTANCES, POOL_KEYS};
use crate::tree::Json;
use crate::validate::problems::Problems;
use crate::validate::values::{exec_string, integer, object};
use crate::validate::{privileges, supervision};
use crate::{PoolConfig, Privileges, Supervision};

/// What the rest of validation needs from the pools section.
pub(crate) struct Pools {
    /// The pools, if every one of them is valid.
    pub(crate) pools: Option<Vec<PoolConfig>>,
    /// The well-formed ids, so `routing.default_pool` can be checked even when some pool has problems;
    /// `None` when `pools` itself is unusable and any check against it would only add noise.
    pub(crate) ids: Option<Vec<String>>,
}

/// Validates the value of the top-level `pools` key (`None` when the key is absent).
pub(crate) fn pools(path: &FieldPath<'_>, value: Option<&Json>, problems: &mut Problems) -> Pools {
    let unusable = Pools {
        pools: None,
        ids: None,
    };
    let items = match value {
        None => {
            problems.add(path, "missing; at least one worker pool is required");
            return unusable;
        }
        Some(Json::Array(items)) if items.is_empty() => {
            problems.add(path, "must contain at least one pool, got an empty array");
            return unusable;
        }
        Some(Json::Array(items)) => items,
        Some(other) => {
            problems.add(
                path,
                format_args!("must be an array of pool objects, got {}", other.describe()),
            );
            return unusable;
        }
    };

    let before = problems.count();
    let mut pools = Vec::with_capacity(items.len());
    let mut first_index_of: HashMap<String, usize> = HashMap::new();
    let mut ids = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let item_path = path.index(index);
        let (pool, id) = pool(&item_path, item, problems);
        if let Some(id) = id {
            match first_index_of.get(&id) {
                Some(first) => problems.add(
                    &item_path.key("id"),
                    format_args!("duplicate pool id '{id}' (also {})", path.index(*first)),
                ),
                None => {
                    first_index_of.insert(id.clone(), index);
                    ids.push(id);
                }
            }
        }
        pools.extend(pool);
    }
    Pools {
        pools: (problems.count() == before).then_some(pools),
        ids: Some(ids),
    }
}

/// Validates one pool; returns it if valid, and its id whenever the id itself is valid.
fn pool(
    path: &FieldPath<'_>,
    value: &Json,
    problems: &mut Problems,
) -> (Option<PoolConfig>, Option<String>) {
    let Some(entries) = object(path, value, problems) else {
        return (None, None);
    };
    let before = problems.count();
    let mut id = None;
    let mut command = None;
    let mut args = Vec::new();
    let mut instances = None;
    let mut env = BTreeMap::new();
    let mut cwd = None;
    let mut supervision = Supervision::default();
    let mut privileges = Privileges::default();
    for (key, value) in entries {
        let path = path.key(key);
        match key.as_str() {
            // Handed to every worker as `CODEX_BUS_POOL`, so held to what `exec` takes.
            "id" => id = exec_string(&path, value, true, problems).map(str::to_owned),
            "command" => command = exec_string(&path, value, true, problems).map(str::to_owned),
            "args" => args = string_array(&path, value, problems),
            "instances" => instances = integer(&path, value, 1, MAX_INSTANCES, problems),
            "env" => env = environment(&path, value, problems),
            "cwd" => cwd = exec_string(&path, value, true, problems).map(PathBuf::from),
            _ => {
                if !supervision::field(&path, key, value, &mut supervision, problems)
                    && !privileges::field(&path, key, value, &mut privileges, problems)
                {
                    problems.unknown_key(&path, key, POOL_KEYS);
                }
            }
        }
    }
    supervision::check(path, &supervision, problems);
    privileges::check(path, &privileges, problems);
    let required = [
        ("id", "a non-empty string", value.get("id").is_some()),
        (
            "command",
            "a non-empty string",
            value.get("command").is_some(),
        ),
        (
            "instances",
            "an integer ≥ 1",
            value.get("instances").is_some(),
        ),
    ];
    for (key, expected, present) in required {
        if !present {
            problems.add(
                &path.key(key),
                format_args!("missing (required: {expected})"),
            );
        }
    }
    let pool = match (&id, command, instances) {
        (Some(id), Some(command), Some(instances)) if problems.count() == before => {
            Some(PoolConfig {
                id: id.clone(),
                command,
                args,
                instances,
                env,
                cwd,
                supervision,
                privileges,
            })
        }
        _ => None,
    };
    (pool, id)
}

fn string_array(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Vec<String> {
    let Json::Array(items) = value else {
        problems.add(
            path,
            format_args!("must be an array of strings, got {}", value.describe()),
        );
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            exec_string(&path.index(i), item, false, problems).map(str::to_owned)
        })
        .collect()
}

fn environment(
    path: &FieldPath<'_>,
    value: &Json,
    problems: &mut Problems,
) -> BTreeMap<String, String> {
    let Some(entries) = object(path, value, problems) else {
        return BTreeMap::new();
    };
    let mut env = BTreeMap::new();
    for (name, value) in entries {
        let path = path.key(name);
        // Such names cannot be set in a process environment, so the spawn would fail later.
        if name.is_empty() || name.contains(['=', '\0']) {
            problems.add(
                &path,
                "environment variable names must be non-empty and contain neither '=' nor NUL",
            );
        }
        if let Some(value) = exec_string(&path, value, false, problems) {
            env.insert(name.clone(), value.to_owned());
        }
    }
    env
}
