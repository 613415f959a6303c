//! One turn's plan: the steps after `turn/started`, each with its delay, decided up front from
//! the knobs, the directives in the input and the seeded jitter.

use std::collections::VecDeque;

use super::knobs::{Directives, Knobs};
use super::rng::Rng;

/// What an approval asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalKind {
    /// `item/commandExecution/requestApproval`.
    Command,
    /// `item/fileChange/requestApproval`.
    File,
}

impl ApprovalKind {
    /// The server request method.
    pub fn method(self) -> &'static str {
        match self {
            Self::Command => "item/commandExecution/requestApproval",
            Self::File => "item/fileChange/requestApproval",
        }
    }
}

/// One step of a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Start a tool item and ask for approval; the turn pauses until the answer.
    Approval(ApprovalKind),
    /// Start the agent message item.
    AgentStart,
    /// One agent message delta.
    Delta,
    /// The process dies here.
    Crash,
    /// Complete the agent message item and report token usage.
    AgentDone,
    /// End the turn.
    Finish {
        /// Whether it ends `failed` (after an `error` notification).
        failed: bool,
    },
}

/// A step and the delay before it, in unscaled milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Delay after the previous step.
    pub delay_ms: u64,
    /// What happens.
    pub step: Step,
}

/// Plans turn number `number` (1-based, per process).
pub fn plan(
    knobs: &Knobs,
    directives: &Directives,
    number: u64,
    rng: &mut Rng,
) -> VecDeque<Planned> {
    let every = |k: u64| k > 0 && number % k == 0;
    let deltas = directives.deltas.unwrap_or(knobs.deltas);
    let first = directives.first_delta_ms.unwrap_or(knobs.first_delta_ms);
    let interval = directives.interval_ms.unwrap_or(knobs.delta_interval_ms);
    let approval = if directives.file_approval {
        Some(ApprovalKind::File)
    } else if directives.command_approval || every(knobs.approval_every) {
        Some(ApprovalKind::Command)
    } else {
        None
    };
    let failed = directives.fail || every(knobs.fail_every);
    let crash =
        directives.crash || (knobs.crash_after_turns > 0 && number == knobs.crash_after_turns);
    let pct = knobs.jitter_pct;
    let mut steps = VecDeque::with_capacity(usize::try_from(deltas).unwrap_or(0) + 5);
    let mut until_agent = first;
    if let Some(kind) = approval {
        let half = first / 2;
        steps.push_back(Planned {
            delay_ms: rng.jitter(half, pct),
            step: Step::Approval(kind),
        });
        until_agent = first - half;
    }
    steps.push_back(Planned {
        delay_ms: rng.jitter(until_agent, pct),
        step: Step::AgentStart,
    });
    let crash_at = deltas / 2;
    for n in 0..deltas {
        if crash && n == crash_at {
            steps.push_back(Planned {
                delay_ms: 0,
                step: Step::Crash,
            });
        }
        let delay_ms = if n == 0 { 0 } else { rng.jitter(interval, pct) };
        steps.push_back(Planned {
            delay_ms,
            step: Step::Delta,
        });
    }
    if crash && deltas == 0 {
        steps.push_back(Planned {
            delay_ms: 0,
            step: Step::Crash,
        });
    }
    steps.push_back(Planned {
        delay_ms: 0,
        step: Step::AgentDone,
    });
    steps.push_back(Planned {
        delay_ms: 0,
        step: Step::Finish { failed },
    });
    steps
}

/// Adds `count` deltas to a running turn (steer, or a second `turn/start` joining it): before
/// the agent message completes, or as a new agent message when it already did.
pub fn extend(steps: &mut VecDeque<Planned>, count: u32, interval_ms: u64) {
    let delta = Planned {
        delay_ms: interval_ms,
        step: Step::Delta,
    };
    let count = usize::try_from(count).unwrap_or(0);
    if let Some(at) = steps
        .iter()
        .position(|planned| planned.step == Step::AgentDone)
    {
        for _ in 0..count {
            steps.insert(at, delta);
        }
        return;
    }
    let at = steps
        .iter()
        .position(|planned| matches!(planned.step, Step::Finish { .. }))
        .unwrap_or(steps.len());
    steps.insert(
        at,
        Planned {
            delay_ms: 0,
            step: Step::AgentDone,
        },
    );
    for _ in 0..count {
        steps.insert(at, delta);
    }
    steps.insert(
        at,
        Planned {
            delay_ms: interval_ms,
            step: Step::AgentStart,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    #[command(args_override_self = true)]
    struct Wrapper {
        #[command(flatten)]
        knobs: Knobs,
    }

    fn knobs(args: &[&str]) -> Knobs {
        Wrapper::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
            .knobs
    }

    fn steps(plan: &VecDeque<Planned>) -> Vec<Step> {
        plan.iter().map(|planned| planned.step).collect()
    }

    #[test]
    fn a_plain_turn_streams_deltas_between_start_and_done() {
        let knobs = knobs(&["--deltas", "3", "--jitter-pct", "0"]);
        let plan = plan(&knobs, &Directives::default(), 1, &mut Rng::new(0));
        assert_eq!(
            steps(&plan),
            [
                Step::AgentStart,
                Step::Delta,
                Step::Delta,
                Step::Delta,
                Step::AgentDone,
                Step::Finish { failed: false }
            ]
        );
        let delays: Vec<u64> = plan.iter().map(|planned| planned.delay_ms).collect();
        assert_eq!(delays, [800, 0, 25, 25, 0, 0]);
    }

    #[test]
    fn knobs_and_directives_add_approvals_failures_and_crashes() {
        let knobs = knobs(&[
            "--deltas",
            "2",
            "--approval-every",
            "2",
            "--fail-every",
            "3",
        ]);
        let mut rng = Rng::new(0);
        assert!(!steps(&plan(&knobs, &Directives::default(), 1, &mut rng))
            .contains(&Step::Approval(ApprovalKind::Command)));
        assert_eq!(
            steps(&plan(&knobs, &Directives::default(), 2, &mut rng))[0],
            Step::Approval(ApprovalKind::Command)
        );
        assert!(steps(&plan(&knobs, &Directives::default(), 3, &mut rng))
            .contains(&Step::Finish { failed: true }));
        let crash = Directives::parse("@crash @file-approval");
        let planned = steps(&plan(&knobs, &crash, 1, &mut rng));
        assert_eq!(planned[0], Step::Approval(ApprovalKind::File));
        assert_eq!(planned[3], Step::Crash);
    }

    #[test]
    fn extending_adds_deltas_before_the_message_completes() {
        let knobs = knobs(&["--deltas", "1"]);
        let mut plan = plan(&knobs, &Directives::default(), 1, &mut Rng::new(0));
        extend(&mut plan, 2, 5);
        assert_eq!(
            steps(&plan)
                .iter()
                .filter(|step| **step == Step::Delta)
                .count(),
            3
        );
        plan.retain(|planned| matches!(planned.step, Step::Finish { .. }));
        extend(&mut plan, 1, 5);
        assert_eq!(
            steps(&plan),
            [
                Step::AgentStart,
                Step::Delta,
                Step::AgentDone,
                Step::Finish { failed: false }
            ]
        );
    }
}
