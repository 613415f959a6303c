//! `append_error_reply` with arbitrary detail text, every kind and a few id shapes must produce one
//! line of valid JSON with the documented fields (`codex_bus_protocol_fuzz::check_error_reply`).
//!
//! Input layout: `[kind, id choice, detail ..]`.

#![no_main]

use codex_bus_protocol::ErrorKind;
use codex_bus_protocol_fuzz::check_error_reply;
use libfuzzer_sys::fuzz_target;

/// Id tokens as clients send them, including one serde_json cannot turn into a value.
const IDS: [Option<&[u8]>; 6] = [
    None,
    Some(b"7"),
    Some(b"-12.5e3"),
    Some(b"\"a\\\"b\\u00e9\""),
    Some(b"\"\\ud800x\""),
    Some(b"{\"a\":[1,null]}"),
];

fuzz_target!(|data: &[u8]| {
    let [kind, choice, detail @ ..] = data else {
        return;
    };
    let kind = ErrorKind::ALL[usize::from(*kind) % ErrorKind::ALL.len()];
    let id = IDS[usize::from(*choice & 0x7f) % IDS.len()];
    // The detail is a `&str`; invalid UTF-8 is replaced rather than skipped so every input counts.
    let detail = String::from_utf8_lossy(detail);
    let detail = (choice & 0x80 == 0).then_some(&*detail);
    check_error_reply(id, kind, detail);
});
