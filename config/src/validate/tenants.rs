//! The `tenants` object (our extension): per-tenant limits that differ from `limits.tenant_*`.

use std::collections::BTreeMap;

use crate::path::FieldPath;
use crate::schema::TENANT_KEYS;
use crate::tenant::validate_tenant_name;
use crate::tree::Json;
use crate::validate::limits::set;
use crate::validate::problems::Problems;
use crate::validate::values::{integer, object};
use crate::{Limits, TenantLimits};

/// Validates `tenants`: an object of tenant name → limits, each field defaulting to `limits`'.
pub(crate) fn tenants(
    path: &FieldPath<'_>,
    value: Option<&Json>,
    limits: &Limits,
    problems: &mut Problems,
) -> Option<BTreeMap<String, TenantLimits>> {
    let mut tenants = BTreeMap::new();
    let Some(value) = value else {
        return Some(tenants);
    };
    let entries = object(path, value, problems)?;
    let before = problems.count();
    for (name, value) in entries {
        let path = path.key(name);
        if let Err(why) = validate_tenant_name(name) {
            problems.add(&path, why);
            continue;
        }
        if let Some(limits) = tenant(&path, value, limits.tenant_defaults(), problems) {
            tenants.insert(name.clone(), limits);
        }
    }
    (problems.count() == before).then_some(tenants)
}

/// One tenant's limits, starting from `limits`.
fn tenant(
    path: &FieldPath<'_>,
    value: &Json,
    mut limits: TenantLimits,
    problems: &mut Problems,
) -> Option<TenantLimits> {
    let entries = object(path, value, problems)?;
    let before = problems.count();
    for (key, value) in entries {
        let path = path.key(key);
        let p = &path;
        match key.as_str() {
            "max_sessions" => set(
                &mut limits.max_sessions,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "max_connections" => set(
                &mut limits.max_connections,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "max_in_flight" => set(
                &mut limits.max_in_flight,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "requests_per_sec" => set(
                &mut limits.requests_per_sec,
                integer(p, value, 0, u32::MAX, problems),
            ),
            "request_burst" => set(
                &mut limits.request_burst,
                integer(p, value, 0, u32::MAX, problems),
            ),
            _ => problems.unknown_key(p, key, TENANT_KEYS),
        }
    }
    (problems.count() == before).then_some(limits)
}
