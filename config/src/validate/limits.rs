//! The `limits` object.

use crate::path::FieldPath;
use crate::schema::LIMIT_KEYS;
use crate::tree::Json;
use crate::validate::problems::Problems;
use crate::validate::values::{integer, object, DAY_SEC};
use crate::Limits;

/// Validates `limits`; absent fields keep their defaults.
pub(crate) fn limits(
    path: &FieldPath<'_>,
    value: Option<&Json>,
    problems: &mut Problems,
) -> Option<Limits> {
    let mut limits = Limits::default();
    let Some(value) = value else {
        return Some(limits);
    };
    let entries = object(path, value, problems)?;
    let before = problems.count();
    let mut cap_set = false;
    for (key, value) in entries {
        let path = path.key(key);
        let p = &path;
        match key.as_str() {
            "max_input_buffer" => set(
                &mut limits.max_input_buffer,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "max_output_queue" => set(
                &mut limits.max_output_queue,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "max_output_bytes" => {
                cap_set = true;
                set(
                    &mut limits.max_output_bytes,
                    integer(p, value, 1, usize::MAX, problems),
                );
            }
            "max_restarts" => set(
                &mut limits.max_restarts,
                integer(p, value, 0, u32::MAX, problems),
            ),
            "restart_window_sec" => set(
                &mut limits.restart_window_sec,
                integer(p, value, 1, DAY_SEC, problems),
            ),
            "drain_timeout_sec" => set(
                &mut limits.drain_timeout_sec,
                integer(p, value, 0, DAY_SEC, problems),
            ),
            "drain_grace_sec" => set(
                &mut limits.drain_grace_sec,
                integer(p, value, 0, DAY_SEC, problems),
            ),
            "backpressure_timeout_sec" => {
                set(
                    &mut limits.backpressure_timeout_sec,
                    integer(p, value, 1, DAY_SEC, problems),
                );
            }
            "max_worker_queue" => set(
                &mut limits.max_worker_queue,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "max_worker_line" => set(
                &mut limits.max_worker_line,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "max_connections" => set(
                &mut limits.max_connections,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "client_idle_sec" => set(
                &mut limits.client_idle_sec,
                integer(p, value, 1, DAY_SEC, problems),
            ),
            "max_session_id_bytes" => set(
                &mut limits.max_session_id_bytes,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "session_idle_sec" => set(
                &mut limits.session_idle_sec,
                integer(p, value, 1, DAY_SEC * 365, problems),
            ),
            "max_sessions" => set(
                &mut limits.max_sessions,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "max_tenants" => set(
                &mut limits.max_tenants,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "tenant_max_sessions" => set(
                &mut limits.tenant_max_sessions,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "tenant_max_connections" => set(
                &mut limits.tenant_max_connections,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "tenant_max_in_flight" => set(
                &mut limits.tenant_max_in_flight,
                integer(p, value, 1, usize::MAX, problems),
            ),
            "tenant_requests_per_sec" => set(
                &mut limits.tenant_requests_per_sec,
                integer(p, value, 0, u32::MAX, problems),
            ),
            "tenant_request_burst" => set(
                &mut limits.tenant_request_burst,
                integer(p, value, 0, u32::MAX, problems),
            ),
            _ => problems.unknown_key(p, key, LIMIT_KEYS),
        }
    }
    if !cap_set {
        // Raising only the soft limit must not make the default cap refuse the file.
        limits.max_output_bytes = limits.max_output_bytes.max(limits.max_output_queue);
    } else if limits.max_output_bytes < limits.max_output_queue {
        problems.add(
            &path.key("max_output_bytes"),
            format_args!(
                "must be at least max_output_queue ({}), got {}",
                limits.max_output_queue, limits.max_output_bytes
            ),
        );
    }
    (problems.count() == before).then_some(limits)
}

pub(crate) fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}
