//! A pool's least-privilege fields (our extension): `user`, `group`, `umask`, `rlimits`,
//! `no_new_privs`, `cgroup`. Users and groups are resolved here, when the config is loaded, so a typo or a
//! request only root could grant fails at startup (and in `check`), not in a crash loop.

use std::ffi::CString;

use nix::unistd::{getegid, geteuid, getgrouplist, Gid, Group, Uid, User};

use crate::path::FieldPath;
use crate::schema::{CGROUP_KEYS, RLIMIT_KEYS};
use crate::tree::Json;
use crate::validate::problems::Problems;
use crate::validate::values::{boolean, integer, object};
use crate::{Account, CgroupLimits, GroupId, Privileges, Rlimits};

/// Handles `key` if it is a privilege field; returns whether it was one.
pub(crate) fn field(
    path: &FieldPath<'_>,
    key: &str,
    value: &Json,
    into: &mut Privileges,
    problems: &mut Problems,
) -> bool {
    match key {
        "user" => into.user = user(path, value, problems),
        "group" => into.group = group(path, value, problems),
        "umask" => into.umask = umask(path, value, problems),
        "rlimits" => into.rlimits = rlimits(path, value, problems),
        "no_new_privs" => into.no_new_privs = boolean(path, value, problems).unwrap_or(false),
        "cgroup" => into.cgroup = cgroup(path, value, problems),
        _ => return false,
    }
    true
}

/// Checks the pool's privileges against the rights the daemon has: only root may run workers as
/// another user or group.
pub(crate) fn check(path: &FieldPath<'_>, privileges: &Privileges, problems: &mut Problems) {
    let (euid, egid) = (geteuid(), getegid());
    if euid.is_root() {
        if let Some(account) = &privileges.user {
            if account.gid.is_none() && privileges.group.is_none() {
                problems.add(
                    &path.key("user"),
                    format_args!(
                        "uid {} has no entry in the user database, so its group is unknown: set `group` too",
                        account.uid
                    ),
                );
            }
        }
        return;
    }
    if let Some(account) = &privileges.user {
        if account.uid != euid.as_raw() {
            problems.add(
                &path.key("user"),
                format_args!(
                    "asks for user '{}' (uid {}), but the daemon runs as uid {}, not root: only a daemon started as root can run a pool's workers as another user",
                    account.name, account.uid, euid
                ),
            );
        }
    }
    if let Some(group) = &privileges.group {
        if group.gid != egid.as_raw() {
            problems.add(
                &path.key("group"),
                format_args!(
                    "asks for group '{}' (gid {}), but the daemon runs as gid {} and uid {}, not root: only a daemon started as root can run a pool's workers in another group",
                    group.name, group.gid, egid, euid
                ),
            );
        }
    }
}

/// A name, or a number written as a JSON integer or a string of digits.
fn name_or_id(
    path: &FieldPath<'_>,
    value: &Json,
    what: &str,
    problems: &mut Problems,
) -> Option<(String, Option<u32>)> {
    match value {
        Json::String(s) if s.is_empty() || s.contains('\0') => {
            problems.add(
                path,
                format_args!(
                    "must be a {what} name or a numeric id, got an empty string or one with NUL"
                ),
            );
            None
        }
        Json::String(s) => Some((
            s.clone(),
            s.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| s.parse().ok())
                .flatten(),
        )),
        Json::Number(_) => {
            integer(path, value, 0, u32::MAX, problems).map(|n| (n.to_string(), Some(n)))
        }
        other => {
            problems.add(
                path,
                format_args!(
                    "must be a {what} name or a numeric id, got {}",
                    other.describe()
                ),
            );
            None
        }
    }
}

fn user(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Option<Account> {
    let (name, id) = name_or_id(path, value, "user", problems)?;
    let lookup = match id {
        Some(uid) => User::from_uid(Uid::from_raw(uid)),
        None => User::from_name(&name),
    };
    let entry = match lookup {
        Ok(entry) => entry,
        Err(e) => {
            problems.add(path, format_args!("cannot look up user '{name}': {e}"));
            return None;
        }
    };
    match (entry, id) {
        (Some(entry), _) => {
            let groups = CString::new(entry.name.clone())
                .ok()
                .and_then(|c| getgrouplist(&c, entry.gid).ok())
                .unwrap_or_default();
            Some(Account {
                name,
                uid: entry.uid.as_raw(),
                gid: Some(entry.gid.as_raw()),
                groups: groups.into_iter().map(Gid::as_raw).collect(),
            })
        }
        (None, Some(uid)) => Some(Account {
            name,
            uid,
            gid: None,
            groups: Vec::new(),
        }),
        (None, None) => {
            problems.add(
                path,
                format_args!("no such user '{name}' in the user database"),
            );
            None
        }
    }
}

fn group(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Option<GroupId> {
    let (name, id) = name_or_id(path, value, "group", problems)?;
    if let Some(gid) = id {
        return Some(GroupId { name, gid });
    }
    match Group::from_name(&name) {
        Ok(Some(entry)) => Some(GroupId {
            name,
            gid: entry.gid.as_raw(),
        }),
        Ok(None) => {
            problems.add(
                path,
                format_args!("no such group '{name}' in the group database"),
            );
            None
        }
        Err(e) => {
            problems.add(path, format_args!("cannot look up group '{name}': {e}"));
            None
        }
    }
}

/// An octal string such as "077" or "0022", at most 0777.
fn umask(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Option<u32> {
    let parsed = match value {
        Json::String(s)
            if (1..=4).contains(&s.len()) && s.bytes().all(|b| (b'0'..=b'7').contains(&b)) =>
        {
            u32::from_str_radix(s, 8).ok().filter(|&m| m <= 0o777)
        }
        _ => None,
    };
    if parsed.is_none() {
        problems.add(
            path,
            format_args!(
                "must be an octal mode string from \"000\" to \"777\" (e.g. \"077\"), got {}",
                value.describe()
            ),
        );
    }
    parsed
}

fn rlimits(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Rlimits {
    let mut limits = Rlimits::default();
    let Some(entries) = object(path, value, problems) else {
        return limits;
    };
    for (key, value) in entries {
        let path = path.key(key);
        // A core size of 0 is the usual setting (no core dumps); any other limit of 0 would only
        // stop the worker from starting.
        let min = if key == "core_bytes" { 0 } else { 1 };
        let slot = match key.as_str() {
            "address_space_bytes" => &mut limits.address_space_bytes,
            "open_files" => &mut limits.open_files,
            "processes" => &mut limits.processes,
            "cpu_seconds" => &mut limits.cpu_seconds,
            "core_bytes" => &mut limits.core_bytes,
            _ => {
                problems.unknown_key(&path, key, RLIMIT_KEYS);
                continue;
            }
        };
        *slot = integer(&path, value, min, u64::MAX, problems);
    }
    limits
}

/// The smallest `cgroup.memory_max_bytes`: below 1 MiB no program gets as far as its `main`.
const MIN_MEMORY_MAX: u64 = 1 << 20;

/// The largest `cgroup.cpu_max_percent`: 100 CPUs, beyond any host this runs on, so a typo such
/// as 250000 is caught rather than read as "unlimited".
const MAX_CPU_PERCENT: u32 = 10_000;

/// `{"memory_max_bytes": N, "cpu_max_percent": P}`, each optional. Whether this host can apply
/// them is checked before the config is put in force (the daemon's preflight), not here.
fn cgroup(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> CgroupLimits {
    let mut limits = CgroupLimits::default();
    let Some(entries) = object(path, value, problems) else {
        return limits;
    };
    for (key, value) in entries {
        let path = path.key(key);
        match key.as_str() {
            "memory_max_bytes" => {
                limits.memory_max_bytes = integer(&path, value, MIN_MEMORY_MAX, u64::MAX, problems);
            }
            "cpu_max_percent" => {
                limits.cpu_max_percent = integer(&path, value, 1, MAX_CPU_PERCENT, problems);
            }
            _ => problems.unknown_key(&path, key, CGROUP_KEYS),
        }
    }
    limits
}
