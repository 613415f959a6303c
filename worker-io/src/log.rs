//! Human-readable diagnostics on stderr; stdout is reserved for protocol lines.
//!
//! Write errors are ignored on purpose: a closed stderr must not take the worker down (`eprintln!`
//! would panic).

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::sync::OnceLock;

/// Writes one diagnostic line on stderr, prefixed `<program>[<pid>]: ` so that the bus log shows
/// which worker spoke (`codex-worker[12]: …`, `codex-mock[13]: …`).
pub fn line(message: fmt::Arguments<'_>) {
    let _ = writeln!(
        io::stderr().lock(),
        "{}[{}]: {message}",
        program(),
        std::process::id()
    );
}

/// Writes `text` on stderr exactly as given, plus a line ending.
pub fn verbatim(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

/// The file name the program was started by (argv\[0\]), as Unix tools name themselves in their
/// diagnostics; `worker` when there is none.
fn program() -> &'static str {
    static PROGRAM: OnceLock<String> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        std::env::args_os()
            .next()
            .as_deref()
            .map(Path::new)
            .and_then(Path::file_name)
            .map_or_else(
                || "worker".to_owned(),
                |name| name.to_string_lossy().into_owned(),
            )
    })
}
