//! Arbitrary bytes read in arbitrary pieces through `LineFramer`, checked against the documented
//! contract (`codex_bus_protocol_fuzz::check_framing`); every framed line also goes to `parse`.
//!
//! Input layout: `[limit, n, size_1 .. size_n, stream ..]` (see `split_input`).

#![no_main]

use codex_bus_protocol_fuzz::{check_framing, parse_all_paths};
use libfuzzer_sys::fuzz_target;

/// Decodes the per-line limit and the read sizes from the first bytes; the rest is the stream.
fn split_input(data: &[u8]) -> Option<(usize, Vec<usize>, &[u8])> {
    let (&limit, rest) = data.split_first()?;
    // Small limits make oversize lines common; the top values cover larger and unlimited ones.
    let max_line = match limit {
        0..=191 => usize::from(limit % 64),
        192..=254 => usize::from(limit - 191) * 64,
        255 => usize::MAX,
    };
    let (&n, rest) = rest.split_first()?;
    let (sizes, stream) = rest.split_at(usize::from(n % 16).min(rest.len()));
    // Size 0 stands for "everything left in one read".
    let chunks = sizes
        .iter()
        .map(|&s| if s == 0 { usize::MAX } else { usize::from(s) })
        .collect();
    Some((max_line, chunks, stream))
}

fuzz_target!(|data: &[u8]| {
    if let Some((max_line, chunks, stream)) = split_input(data) {
        check_framing(stream, &chunks, max_line, parse_all_paths);
    }
});
