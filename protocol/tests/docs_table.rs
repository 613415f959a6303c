//! docs/protocol.md's error table must say exactly what the code sends.

use codex_bus_protocol::{ErrorKind, Fault};

#[test]
fn every_error_kind_has_its_exact_row_in_docs_protocol_md() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("docs/protocol.md");
    let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| -32")).collect();
    assert_eq!(rows.len(), ErrorKind::ALL.len(), "one row per kind");
    for kind in ErrorKind::ALL {
        let fault = match kind.fault() {
            Fault::Client => "client",
            Fault::Worker => "worker",
            Fault::Bus => "bus",
        };
        let prefix = format!(
            "| {} | {} | `{}` | {} | {} |",
            kind.code(),
            kind.message(),
            kind.reason(),
            kind.retryable(),
            fault
        );
        assert!(
            rows.iter().any(|r| r.starts_with(&prefix)),
            "no row starting {prefix}"
        );
    }
}
