//! "Never run a step twice": the agent's memory of the steps it started in
//! this boot, and the pure decision what to do with a step `next` hands out.

use std::collections::HashMap;

use anvil_api_types::agent::{AgentStep, StepStatus};
use uuid::Uuid;

/// What the agent knows about a step it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalStep {
    /// The last `seq` Anvil accepted from us.
    pub last_seq: u32,
    pub finished: bool,
}

#[derive(Debug, Default)]
pub struct Ledger {
    steps: HashMap<Uuid, LocalStep>,
}

/// What to do with a step handed out by `next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Never started anywhere: report `started` (seq 1), then run it.
    Run,
    /// Started before but not by this agent's running code (an earlier boot,
    /// or a report that could not be delivered): do NOT run it; report it
    /// `failed`, first `started` if Anvil never saw that.
    ReportLost { next_seq: u32, needs_start: bool },
}

impl Ledger {
    /// Called once Anvil accepted the `started` report (seq 1): only then
    /// does the step run.
    pub fn started(&mut self, id: Uuid) {
        self.steps.insert(
            id,
            LocalStep {
                last_seq: 1,
                finished: false,
            },
        );
    }

    pub fn accepted(&mut self, id: Uuid, seq: u32, finished: bool) {
        let e = self.steps.entry(id).or_insert(LocalStep {
            last_seq: 0,
            finished: false,
        });
        e.last_seq = e.last_seq.max(seq);
        e.finished |= finished;
    }

    pub fn get(&self, id: Uuid) -> Option<LocalStep> {
        self.steps.get(&id).copied()
    }

    pub fn decide(&self, step: &AgentStep) -> Decision {
        let ours = self.get(step.id);
        match (step.status, ours) {
            (StepStatus::Pending, None) => Decision::Run,
            // We started it, yet Anvil says pending: our `started` never
            // counted. Running it again is exactly what must not happen.
            (StepStatus::Pending, Some(_)) => Decision::ReportLost {
                next_seq: 1,
                needs_start: true,
            },
            // Started (by an earlier boot, or by us with a final report that
            // could not be delivered): it is not running now.
            (_, _) => Decision::ReportLost {
                next_seq: step.last_seq + 1,
                needs_start: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_api_types::agent::{CpuTestParams, StepSpec};

    fn step(id: u128, status: StepStatus, last_seq: u32) -> AgentStep {
        AgentStep {
            id: Uuid::from_u128(id),
            index: 0,
            spec: StepSpec::CpuTest(CpuTestParams { duration_secs: 1 }),
            status,
            last_seq,
        }
    }

    #[test]
    fn a_new_step_runs() {
        assert_eq!(
            Ledger::default().decide(&step(1, StepStatus::Pending, 0)),
            Decision::Run
        );
    }

    #[test]
    fn a_step_started_by_an_earlier_boot_is_reported_lost_not_run() {
        let l = Ledger::default();
        assert_eq!(
            l.decide(&step(1, StepStatus::Started, 1)),
            Decision::ReportLost {
                next_seq: 2,
                needs_start: false
            }
        );
        assert_eq!(
            l.decide(&step(1, StepStatus::Progress, 7)),
            Decision::ReportLost {
                next_seq: 8,
                needs_start: false
            }
        );
    }

    #[test]
    fn a_step_we_started_is_never_run_again() {
        let mut l = Ledger::default();
        l.started(Uuid::from_u128(1));
        l.accepted(Uuid::from_u128(1), 3, false);
        assert_eq!(
            l.get(Uuid::from_u128(1)),
            Some(LocalStep {
                last_seq: 3,
                finished: false
            })
        );
        // Anvil lost our reports (or says pending): still not run.
        assert_eq!(
            l.decide(&step(1, StepStatus::Pending, 0)),
            Decision::ReportLost {
                next_seq: 1,
                needs_start: true
            }
        );
        // Handed out again while "progress" (our final report was refused).
        l.accepted(Uuid::from_u128(1), 4, true);
        assert_eq!(
            l.decide(&step(1, StepStatus::Progress, 3)),
            Decision::ReportLost {
                next_seq: 4,
                needs_start: false
            }
        );
        // Other steps are unaffected.
        assert_eq!(l.decide(&step(2, StepStatus::Pending, 0)), Decision::Run);
    }
}
