//! A listener's `tls` object (`transport.tls`; any other listener's `tls` reuses it). The files it
//! names are read by the daemon at start, so a missing file fails there, naming it.

use std::path::PathBuf;

use crate::path::FieldPath;
use crate::schema::TLS_KEYS;
use crate::tree::Json;
use crate::validate::problems::Problems;
use crate::validate::values::{exec_string, object};
use crate::TlsConfig;

/// Validates a `tls` object: `cert_file` and `key_file`, both required non-empty paths.
pub(crate) fn tls(
    path: &FieldPath<'_>,
    value: &Json,
    problems: &mut Problems,
) -> Option<TlsConfig> {
    let entries = object(path, value, problems)?;
    let before = problems.count();
    let (mut cert_file, mut key_file) = (None, None);
    for (key, value) in entries {
        let path = path.key(key);
        let slot = match key.as_str() {
            "cert_file" => &mut cert_file,
            "key_file" => &mut key_file,
            _ => {
                problems.unknown_key(&path, key, TLS_KEYS);
                continue;
            }
        };
        // A path is handed to open(2), where a NUL byte cannot go: the same check as `exec`'s.
        *slot = exec_string(&path, value, true, problems).map(PathBuf::from);
    }
    for (key, what) in [
        ("cert_file", "the PEM certificate chain"),
        ("key_file", "the PEM private key"),
    ] {
        if value.get(key).is_none() {
            problems.add(&path.key(key), format_args!("missing; TLS needs {what}"));
        }
    }
    if problems.count() != before {
        return None;
    }
    Some(TlsConfig {
        cert_file: cert_file?,
        key_file: key_file?,
    })
}
