//! Human-readable diagnostics on stderr; stdout is reserved for protocol lines.
//!
//! Write errors are ignored on purpose: a closed stderr must not take the worker down (`eprintln!`
//! would panic).

use std::fmt;
use std::io::{self, Write};

/// Writes one diagnostic line on stderr, prefixed so that the bus log shows which worker spoke.
pub fn line(message: fmt::Arguments<'_>) {
    let _ = writeln!(
        io::stderr().lock(),
        "codex-worker[{}]: {message}",
        std::process::id()
    );
}

/// Writes `text` on stderr exactly as given, plus a line ending.
pub fn verbatim(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}
