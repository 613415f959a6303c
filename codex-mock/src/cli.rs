//! Command-line interface: the mock worker by default, the fake child as a subcommand.

use clap::{Parser, Subcommand};

use crate::scenario::knobs::Knobs;

/// Command-line arguments of `codex-mock`.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Runs the fake child instead of the mock worker.
    #[command(subcommand)]
    pub tool: Option<Tool>,
    /// Ignore SIGTERM and end of input from the start, as `mock/stubborn` does: only SIGKILL
    /// ends the worker.
    #[arg(long)]
    pub stubborn: bool,
    /// Adds `"tag":"TEXT"` to every reply that names the worker (beside `pool`, `slot`, `pid`):
    /// which version of a pool's worker answered, e.g. across a rolling restart.
    #[arg(long, value_name = "TEXT")]
    pub tag: Option<String>,
    /// How the mock worker's turns unfold.
    #[command(flatten)]
    pub scenario: Knobs,
}

/// What runs instead of the mock worker.
#[derive(Debug, Subcommand)]
pub enum Tool {
    /// A fake `codex app-server` child (the child's wire format, scripted turns), for testing
    /// `codex-worker` without Codex: `codex-worker --codex-cmd "codex-mock app-server"`.
    AppServer(Knobs),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_subcommand_is_the_mock_worker() {
        let cli = Cli::try_parse_from(["codex-mock", "--deltas", "2"]).unwrap();
        assert!(cli.tool.is_none());
        assert_eq!(cli.scenario.deltas, 2);
    }

    #[test]
    fn app_server_takes_the_scenario_knobs() {
        let cli = Cli::try_parse_from([
            "codex-mock",
            "app-server",
            "--deltas",
            "3",
            "--latency-scale",
            "0",
        ])
        .unwrap();
        let Some(Tool::AppServer(knobs)) = cli.tool else {
            panic!("expected the fake child");
        };
        assert_eq!(knobs.deltas, 3);
        assert_eq!(knobs.latency_scale, 0.0);
    }

    #[test]
    fn stubborn_is_off_by_default_and_not_a_fake_child_option() {
        assert!(!Cli::try_parse_from(["codex-mock"]).unwrap().stubborn);
        assert!(
            Cli::try_parse_from(["codex-mock", "--stubborn"])
                .unwrap()
                .stubborn
        );
        assert!(Cli::try_parse_from(["codex-mock", "app-server", "--stubborn"]).is_err());
    }

    #[test]
    fn tag_is_unset_by_default_and_not_a_fake_child_option() {
        assert_eq!(Cli::try_parse_from(["codex-mock"]).unwrap().tag, None);
        let cli = Cli::try_parse_from(["codex-mock", "--tag", "v2", "--deltas", "1"]).unwrap();
        assert_eq!(cli.tag.as_deref(), Some("v2"));
        assert!(Cli::try_parse_from(["codex-mock", "app-server", "--tag", "v2"]).is_err());
    }

    #[test]
    fn bridge_options_and_the_old_subcommand_name_are_refused() {
        assert!(Cli::try_parse_from(["codex-mock", "--codex-cmd", "x"]).is_err());
        assert!(Cli::try_parse_from(["codex-mock", "mock-app-server"]).is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
