//! The Codex child's stderr, made fit for the bus's log: colour codes stripped, and a line that
//! repeats (Codex logs some warnings many times per run) written once with a count.
//!
//! The level word Codex writes (`WARN`, `ERROR`, …) stays in the line; the daemon reads it to log
//! the line at that level.

use codex_bus_worker_io::log;

/// Writes one child's stderr lines to the worker's own stderr, prefixed with its generation.
pub struct ChildLog {
    generation: u64,
    /// The last line written, without its timestamp.
    last: String,
    /// How many times `last` came again since it was written.
    repeats: u32,
}

impl ChildLog {
    /// The log of the child running as `generation`.
    pub fn new(generation: u64) -> Self {
        Self {
            generation,
            last: String::new(),
            repeats: 0,
        }
    }

    /// Takes one stderr line of the child.
    pub fn line(&mut self, raw: &str) {
        let line = strip_ansi(raw);
        let body = without_timestamp(&line);
        if !self.last.is_empty() && body == self.last {
            self.repeats += 1;
            return;
        }
        self.flush();
        self.last.clear();
        self.last.push_str(body);
        log::line(format_args!("codex[{}]: {line}", self.generation));
    }

    /// Writes the count of repeats not yet reported (call when the child's stderr ends, too).
    pub fn flush(&mut self) {
        if self.repeats > 0 {
            log::line(format_args!(
                "codex[{}]: (the line above came {} more times)",
                self.generation, self.repeats
            ));
            self.repeats = 0;
        }
    }
}

/// `line` without terminal escape sequences (`ESC [ … final byte`, and two-byte `ESC x`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // A control sequence ends with a byte in @..~; any other escape is two characters.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// `line` without a leading RFC 3339 timestamp (how Codex's log lines start), so that a repeated
/// message is recognised whatever its time.
fn without_timestamp(line: &str) -> &str {
    match line.split_once(' ') {
        Some((first, rest))
            if first.len() >= 20
                && first.starts_with(|c: char| c.is_ascii_digit())
                && first.contains('T') =>
        {
            rest.trim_start()
        }
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_stripped() {
        let raw = "\u{1b}[2m2026-11-30T20:00:00.1Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m \u{1b}[2mcodex_core\u{1b}[0m: no network";
        assert_eq!(
            strip_ansi(raw),
            "2026-11-30T20:00:00.1Z  WARN codex_core: no network"
        );
        assert_eq!(strip_ansi("plain"), "plain");
        assert_eq!(strip_ansi("cut \u{1b}[3"), "cut ");
    }

    #[test]
    fn repeats_are_recognised_whatever_their_timestamp() {
        assert_eq!(
            without_timestamp("2026-11-30T20:00:00.123456Z  WARN x: y"),
            "WARN x: y"
        );
        assert_eq!(without_timestamp("WARN x: y"), "WARN x: y");
        let mut log = ChildLog::new(1);
        log.line("2026-11-30T20:00:00.1Z  WARN a: b");
        log.line("2026-11-30T20:00:01.1Z  WARN a: b");
        log.line("2026-11-30T20:00:02.1Z  WARN a: b");
        assert_eq!((log.last.as_str(), log.repeats), ("WARN a: b", 2));
        log.line("2026-11-30T20:00:03.1Z  ERROR c: d");
        assert_eq!((log.last.as_str(), log.repeats), ("ERROR c: d", 0));
    }
}
