//! The `transport` object.

use crate::path::FieldPath;
use crate::schema::{TRANSPORT_KEYS, TRANSPORT_OPTION_KEYS};
use crate::tree::Json;
use crate::validate::problems::Problems;
use crate::validate::tls::tls;
use crate::validate::values::{exec_string, object, string};
use crate::{TransportConfig, TransportMode};

/// Validates `transport`; absent fields keep their defaults.
pub(crate) fn transport(
    path: &FieldPath<'_>,
    value: Option<&Json>,
    problems: &mut Problems,
) -> Option<TransportConfig> {
    let mut transport = TransportConfig::default();
    let Some(value) = value else {
        return Some(transport);
    };
    let entries = object(path, value, problems)?;
    let before = problems.count();
    let mut mode_is_valid = true;
    for (key, value) in entries {
        let path = path.key(key);
        match key.as_str() {
            "mode" => match mode(&path, value, problems) {
                Some(mode) => transport.mode = mode,
                None => mode_is_valid = false,
            },
            "framing" => only(
                &path,
                value,
                "ndjson",
                &["length", "raw", "capnp"],
                "framing",
                problems,
            ),
            "protocol" => only(&path, value, "json", &["binary"], "protocol", problems),
            "options" => options(&path, value, problems),
            "address" => {
                transport.address = exec_string(&path, value, true, problems).map(str::to_owned)
            }
            "tls" => transport.tls = tls(&path, value, problems),
            _ => problems.unknown_key(&path, key, TRANSPORT_KEYS),
        }
    }
    // The shape of an address depends on the mode, so it is judged only once the mode is known.
    if let (Some(address), true) = (&transport.address, mode_is_valid) {
        if transport.mode == TransportMode::Tcp && !is_host_port(address) {
            problems.add(
                &path.key("address"),
                format_args!("must be HOST:PORT (port 0 to 65535) in tcp mode, got {address:?}"),
            );
        }
    }
    (problems.count() == before).then_some(transport)
}

fn mode(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Option<TransportMode> {
    match string(path, value, problems)? {
        "stdio" => Some(TransportMode::Stdio),
        "unix" => Some(TransportMode::Unix),
        "tcp" => Some(TransportMode::Tcp),
        known @ ("mqueue" | "shm") => {
            problems.add(
                path,
                format_args!(
                    "'{known}' is not supported by codex-stdio-bus (supported: stdio, unix, tcp)"
                ),
            );
            None
        }
        other => {
            problems.add(
                path,
                format_args!("unknown mode '{other}' (supported: stdio, unix, tcp)"),
            );
            None
        }
    }
}

/// Accepts only `supported`; values stdio Bus knows get a different message from typos.
fn only(
    path: &FieldPath<'_>,
    value: &Json,
    supported: &str,
    stdio_bus_only: &[&str],
    what: &str,
    problems: &mut Problems,
) {
    match string(path, value, problems) {
        Some(v) if v == supported => {}
        Some(v) if stdio_bus_only.contains(&v) => problems.add(
            path,
            format_args!("'{v}' is not supported by codex-stdio-bus (only '{supported}' {what} is supported)"),
        ),
        Some(v) => problems.add(
            path,
            format_args!("unknown {what} '{v}' (only '{supported}' is supported)"),
        ),
        None => {}
    }
}

/// The stdio Bus shm/mqueue settings are accepted, unchecked, so that their files load; their modes are
/// rejected anyway.
fn options(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) {
    let Some(entries) = object(path, value, problems) else {
        return;
    };
    for (key, _) in entries {
        if !TRANSPORT_OPTION_KEYS.contains(&key.as_str()) {
            problems.unknown_key(&path.key(key), key, TRANSPORT_OPTION_KEYS);
        }
    }
}

pub(crate) fn is_host_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}
