//! The `websocket` array (our extension): the WebSocket listeners.

use crate::path::FieldPath;
use crate::schema::WEBSOCKET_KEYS;
use crate::tree::Json;
use crate::validate::problems::Problems;
use crate::validate::transport::is_host_port;
use crate::validate::values::{integer, non_empty_string, object, string};
use crate::WebSocketConfig;

/// Largest frame or message limit accepted: 1 GiB. Codex's own are 16 and 64 MiB; more is
/// almost surely a unit mistake, and a message is held whole in memory.
const MAX_MESSAGE_LIMIT: usize = 1 << 30;

/// Validates `websocket`; empty when absent. `session_field` is `routing.session_id_field`: a
/// connection's session is given to its worker as that member, so it must be a top-level name.
pub(crate) fn websocket(
    path: &FieldPath<'_>,
    value: Option<&Json>,
    session_field: Option<&str>,
    problems: &mut Problems,
) -> Option<Vec<WebSocketConfig>> {
    let Some(value) = value else {
        return Some(Vec::new());
    };
    let Json::Array(items) = value else {
        problems.add(
            path,
            format_args!(
                "must be an array of listener objects, got {}",
                value.describe()
            ),
        );
        return None;
    };
    let before = problems.count();
    if let Some(field) = session_field.filter(|f| f.contains('.') && !items.is_empty()) {
        problems.add(
            path,
            format_args!(
                "needs routing.session_id_field to be a top-level member name (the session of a \
                 WebSocket connection is added to its messages there), got {field:?}"
            ),
        );
    }
    let listeners: Vec<WebSocketConfig> = items
        .iter()
        .enumerate()
        .filter_map(|(index, item)| listener(&path.index(index), item, problems))
        .collect();
    (problems.count() == before).then_some(listeners)
}

/// One listener.
fn listener(
    path: &FieldPath<'_>,
    value: &Json,
    problems: &mut Problems,
) -> Option<WebSocketConfig> {
    let entries = object(path, value, problems)?;
    let before = problems.count();
    let mut listener = WebSocketConfig::on("");
    for (key, value) in entries {
        let path = path.key(key);
        match key.as_str() {
            "listen" => match string(&path, value, problems) {
                Some(listen) if is_host_port(listen) => listener.listen = listen.to_owned(),
                Some(listen) => problems.add(
                    &path,
                    format_args!("must be HOST:PORT (port 0 to 65535), got {listen:?}"),
                ),
                None => {}
            },
            "session_header" => {
                if let Some(name) = header_name(&path, value, problems) {
                    listener.session_header = name;
                }
            }
            "session_query" => {
                if let Some(name) = query_name(&path, value, problems) {
                    listener.session_query = name;
                }
            }
            "allowed_origins" => {
                if let Some(origins) = origins(&path, value, problems) {
                    listener.allowed_origins = origins;
                }
            }
            "max_frame_bytes" => {
                if let Some(n) = integer(&path, value, 1, MAX_MESSAGE_LIMIT, problems) {
                    listener.max_frame_bytes = n;
                }
            }
            "max_message_bytes" => {
                if let Some(n) = integer(&path, value, 1, MAX_MESSAGE_LIMIT, problems) {
                    listener.max_message_bytes = n;
                }
            }
            _ => problems.unknown_key(&path, key, WEBSOCKET_KEYS),
        }
    }
    if value.get("listen").is_none() {
        problems.add(&path.key("listen"), "missing; every listener needs it");
    }
    if listener.max_frame_bytes > listener.max_message_bytes {
        problems.add(
            &path.key("max_frame_bytes"),
            format_args!(
                "must be at most max_message_bytes ({}), got {}",
                listener.max_message_bytes, listener.max_frame_bytes
            ),
        );
    }
    (problems.count() == before).then_some(listener)
}

/// An HTTP header name (RFC 9110 token), kept in lower case as HTTP/1.1 compares it.
fn header_name(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Option<String> {
    let name = non_empty_string(path, value, problems)?;
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.bytes().all(token) {
        Some(name.to_ascii_lowercase())
    } else {
        problems.add(
            path,
            format_args!("must be an HTTP header name (letters, digits, '-', …), got {name:?}"),
        );
        None
    }
}

/// A query parameter name that needs no percent-encoding.
fn query_name(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Option<String> {
    let name = non_empty_string(path, value, problems)?;
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    if name.bytes().all(unreserved) {
        Some(name.to_owned())
    } else {
        problems.add(
            path,
            format_args!("must be letters, digits, '-', '.', '_' or '~', got {name:?}"),
        );
        None
    }
}

/// `allowed_origins`: non-empty strings, compared byte for byte with the `Origin` header.
fn origins(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Option<Vec<String>> {
    let Json::Array(items) = value else {
        problems.add(
            path,
            format_args!("must be an array of strings, got {}", value.describe()),
        );
        return None;
    };
    let before = problems.count();
    let origins: Vec<String> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| non_empty_string(&path.index(i), item, problems))
        .map(str::to_owned)
        .collect();
    (problems.count() == before).then_some(origins)
}
