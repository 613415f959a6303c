//! One arbitrary line through `parse` with every session path, cross-checked with serde_json; for
//! objects with an id, the bus-id rewrite→restore identity and the error reply for that id
//! (`codex_bus_protocol_fuzz::check_line`).

#![no_main]

use codex_bus_protocol_fuzz::check_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Vary the bus id's width with the input so short and long replacements are both covered.
    let bus_id = [0, 42, u64::MAX][data.len() % 3];
    check_line(data, bus_id);
});
