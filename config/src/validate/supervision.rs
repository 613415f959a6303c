//! A pool's supervision keys: restart policy, backoff, escalation, timeouts, readiness and the
//! rolling-restart bound.

use crate::path::FieldPath;
use crate::schema::PROBE_KEYS;
use crate::tree::Json;
use crate::validate::problems::Problems;
use crate::validate::values::{boolean, integer, non_empty_string, object, string, DAY_SEC};
use crate::{ReadyProbe, RestartPolicy, Supervision};

/// Reads one supervision key into `into`; false if `key` is not a supervision key.
pub(crate) fn field(
    path: &FieldPath<'_>,
    key: &str,
    value: &Json,
    into: &mut Supervision,
    problems: &mut Problems,
) -> bool {
    let s = into;
    match key {
        "restart_policy" => set(&mut s.restart_policy, policy(path, value, problems)),
        "backoff_initial_ms" => set(
            &mut s.backoff_initial_ms,
            integer(path, value, 1, DAY_SEC * 1000, problems),
        ),
        "backoff_max_ms" => set(
            &mut s.backoff_max_ms,
            integer(path, value, 1, DAY_SEC * 1000, problems),
        ),
        "backoff_jitter_pct" => set(
            &mut s.backoff_jitter_pct,
            integer(path, value, 0, 100u8, problems),
        ),
        "stable_after_sec" => set(
            &mut s.stable_after_sec,
            integer(path, value, 0, DAY_SEC, problems),
        ),
        "escalate" => set(&mut s.escalate, boolean(path, value, problems)),
        "request_timeout_sec" => set(
            &mut s.request_timeout_sec,
            integer(path, value, 0, DAY_SEC, problems),
        ),
        "queue_timeout_sec" => set(
            &mut s.queue_timeout_sec,
            integer(path, value, 1, DAY_SEC, problems),
        ),
        "ready_grace_ms" => set(
            &mut s.ready_grace_ms,
            integer(path, value, 0, 60_000, problems),
        ),
        "ready_probe" => s.ready_probe = probe(path, value, problems),
        "ready_timeout_sec" => set(
            &mut s.ready_timeout_sec,
            integer(path, value, 1, DAY_SEC, problems),
        ),
        "roll_timeout_sec" => set(
            &mut s.roll_timeout_sec,
            integer(path, value, 1, DAY_SEC, problems),
        ),
        _ => return false,
    }
    true
}

/// Checks that need several keys at once; `pool` is the pool object's path.
pub(crate) fn check(pool: &FieldPath<'_>, s: &Supervision, problems: &mut Problems) {
    if s.backoff_max_ms < s.backoff_initial_ms {
        problems.add(
            &pool.key("backoff_max_ms"),
            format_args!(
                "must be at least backoff_initial_ms ({}), got {}",
                s.backoff_initial_ms, s.backoff_max_ms
            ),
        );
    }
}

/// Stores a valid value; an invalid one was already reported and leaves the default.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

fn policy(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Option<RestartPolicy> {
    match string(path, value, problems)? {
        "always" => Some(RestartPolicy::Always),
        "on-failure" => Some(RestartPolicy::OnFailure),
        "never" => Some(RestartPolicy::Never),
        other => {
            problems.add(
                path,
                format_args!("must be one of always, on-failure, never; got {other:?}"),
            );
            None
        }
    }
}

fn probe(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Option<ReadyProbe> {
    let entries = object(path, value, problems)?;
    let mut method = None;
    let mut params = None;
    for (key, value) in entries {
        let path = path.key(key);
        match key.as_str() {
            "method" => method = non_empty_string(&path, value, problems).map(str::to_owned),
            "params" => match value {
                // JSON-RPC params are structured: by position or by name.
                Json::Array(_) | Json::Object(_) => params = Some(value.to_value()),
                other => problems.add(
                    &path,
                    format_args!("must be an object or an array, got {}", other.describe()),
                ),
            },
            _ => problems.unknown_key(&path, key, PROBE_KEYS),
        }
    }
    if value.get("method").is_none() {
        problems.add(
            &path.key("method"),
            "missing (required: a non-empty string)",
        );
    }
    Some(ReadyProbe {
        method: method?,
        params,
    })
}
