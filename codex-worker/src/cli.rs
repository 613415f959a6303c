//! Command-line interface.

use clap::{Parser, ValueEnum};

/// Command-line arguments of `codex-worker`.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Backend that answers the requests read from stdin.
    #[arg(long, value_enum, default_value_t = BackendKind::Mock)]
    pub backend: BackendKind,
}

/// The backends a worker can run; the flag exists so that real backends can join `mock` later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Deterministic in-process answers plus `mock/*` test hooks.
    Mock,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_is_the_default_backend() {
        let cli = Cli::try_parse_from(["codex-worker"]).unwrap();
        assert_eq!(cli.backend, BackendKind::Mock);
    }

    #[test]
    fn unknown_backend_is_rejected() {
        assert!(Cli::try_parse_from(["codex-worker", "--backend", "nope"]).is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
