//! The scenario knobs (command-line options shared by the mock worker and `codex-mock app-server`)
//! and the per-turn directives a test can put in a turn's input text.

use clap::{Args, ValueEnum};

/// How turns unfold.
#[derive(Debug, Clone, PartialEq, Args)]
#[command(next_help_heading = "scenario (mock worker and app-server)")]
pub struct Knobs {
    /// Milliseconds from `turn/start` to the first agent-message delta.
    #[arg(long, default_value_t = 800)]
    pub first_delta_ms: u64,
    /// Agent-message deltas per turn.
    #[arg(long, default_value_t = 40)]
    pub deltas: u32,
    /// Milliseconds between deltas.
    #[arg(long, default_value_t = 25)]
    pub delta_interval_ms: u64,
    /// Bytes of text per delta.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub delta_bytes: u32,
    /// Every K-th turn asks a command approval first (0: never).
    #[arg(long, default_value_t = 0)]
    pub approval_every: u64,
    /// Every K-th turn fails with `serverOverloaded` (0: never).
    #[arg(long, default_value_t = 0)]
    pub fail_every: u64,
    /// The K-th turn of the process crashes it midway (0: never).
    #[arg(long, default_value_t = 0)]
    pub crash_after_turns: u64,
    /// Deterministic jitter of every delay, in percent.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub jitter_pct: u64,
    /// Seed of the jitter and of the generated text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `virtual`: timestamps count from a fixed epoch by the scheduled delays, so transcripts
    /// are exactly reproducible.
    #[arg(long, value_enum, default_value_t = ClockKind::Real)]
    pub clock: ClockKind,
    /// Multiplies every delay; 0 runs turns as fast as possible.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    pub latency_scale: f64,
    /// Send `thread/started` before the `thread/start` response (Codex may; this forces it).
    #[arg(long)]
    pub thread_started_first: bool,
}

/// Where timestamps come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClockKind {
    /// The system clock.
    Real,
    /// A fixed epoch advanced by the scheduled delays.
    Virtual,
}

fn non_negative(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err(format!("expected a number ≥ 0, got {raw:?}")),
    }
}

/// What one turn's input asks for: words such as `@approval` or `@deltas=3` in its text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `@approval`: ask a command approval before answering.
    pub command_approval: bool,
    /// `@file-approval`: ask a file-change approval before answering.
    pub file_approval: bool,
    /// `@fail`: end the turn failed.
    pub fail: bool,
    /// `@crash`: the process dies midway through the turn.
    pub crash: bool,
    /// `@deltas=N`: this many deltas.
    pub deltas: Option<u32>,
    /// `@first-delta-ms=N`: this first-delta latency.
    pub first_delta_ms: Option<u64>,
    /// `@interval-ms=N`: this gap between deltas.
    pub interval_ms: Option<u64>,
}

impl Directives {
    /// Reads the directives in `text`; other words are ordinary input.
    pub fn parse(text: &str) -> Self {
        let mut directives = Self::default();
        for word in text.split_whitespace() {
            let (name, value) = word.split_once('=').unwrap_or((word, ""));
            match name {
                "@approval" => directives.command_approval = true,
                "@file-approval" => directives.file_approval = true,
                "@fail" => directives.fail = true,
                "@crash" => directives.crash = true,
                "@deltas" => directives.deltas = value.parse().ok(),
                "@first-delta-ms" => directives.first_delta_ms = value.parse().ok(),
                "@interval-ms" => directives.interval_ms = value.parse().ok(),
                _ => {}
            }
        }
        directives
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_read_from_the_text() {
        let directives = Directives::parse("please @approval run it @deltas=3 @interval-ms=x");
        assert!(directives.command_approval);
        assert!(!directives.crash);
        assert_eq!(directives.deltas, Some(3));
        assert_eq!(directives.interval_ms, None);
        assert_eq!(Directives::parse("plain words"), Directives::default());
    }

    #[test]
    fn latency_scale_must_be_non_negative() {
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(non_negative("-1").is_err());
        assert!(non_negative("nan").is_err());
    }
}
