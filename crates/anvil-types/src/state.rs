//! The machine lifecycle, as MAAS users know it. The allowed transitions are
//! defined here and nowhere else.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use utoipa::ToSchema;

/// Lifecycle state of a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    /// Known to Anvil (enrolled or discovered), not yet commissioned.
    New,
    /// The agent is taking the hardware inventory.
    Commissioning,
    /// Commissioned and free to be allocated.
    Ready,
    /// Reserved for a user, not yet deployed.
    Allocated,
    /// An image is being written.
    Deploying,
    /// Running its deployed operating system.
    Deployed,
    /// Being erased and returned to the pool.
    Releasing,
    /// Booted into the rescue environment.
    Rescue,
    /// Taken out of service by an operator.
    Broken,
    /// An automatic step failed; the reason says which.
    Failed,
}

use MachineState::*;

impl MachineState {
    /// Every state, in lifecycle order.
    pub const ALL: [MachineState; 10] = [
        New,
        Commissioning,
        Ready,
        Allocated,
        Deploying,
        Deployed,
        Releasing,
        Rescue,
        Broken,
        Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            New => "new",
            Commissioning => "commissioning",
            Ready => "ready",
            Allocated => "allocated",
            Deploying => "deploying",
            Deployed => "deployed",
            Releasing => "releasing",
            Rescue => "rescue",
            Broken => "broken",
            Failed => "failed",
        }
    }

    /// The states this one may move to. This table is the single definition
    /// of the lifecycle; API, UI and CLI all consult it through `check_transition`.
    pub fn next_states(self) -> &'static [MachineState] {
        match self {
            New => &[Commissioning, Ready, Broken, Failed],
            Commissioning => &[Ready, Failed, New, Broken],
            Ready => &[Commissioning, Allocated, Rescue, Broken],
            Allocated => &[Deploying, Ready, Releasing, Broken],
            Deploying => &[Deployed, Failed, Broken],
            Deployed => &[Releasing, Rescue, Broken],
            Releasing => &[Ready, Failed, Broken],
            Rescue => &[Deployed, Ready, Broken, Failed],
            // A broken or failed machine can be erased (released) or
            // rescued to look at what went wrong, as MAAS allows.
            Broken => &[Ready, New, Commissioning, Rescue, Releasing],
            Failed => &[Commissioning, Releasing, Ready, New, Broken, Rescue],
        }
    }

    /// Whether a move from `self` to `to` is part of the lifecycle.
    pub fn can_move_to(self, to: MachineState) -> bool {
        self.next_states().contains(&to)
    }

    /// Checks a transition, and that a reason is given where one is required
    /// (a machine only becomes `failed` with a reason).
    pub fn check_transition(
        self,
        to: MachineState,
        reason: Option<&str>,
    ) -> Result<(), TransitionError> {
        if !self.can_move_to(to) {
            return Err(TransitionError::NotAllowed { from: self, to });
        }
        if to == Failed && reason.map(str::trim).unwrap_or("").is_empty() {
            return Err(TransitionError::ReasonRequired { to });
        }
        Ok(())
    }

    /// States whose reason field is meaningful (kept when entering them).
    pub fn keeps_reason(self) -> bool {
        matches!(self, Failed | Broken)
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MachineState {
    type Err = crate::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        MachineState::ALL
            .into_iter()
            .find(|st| st.as_str() == lower)
            .ok_or_else(|| crate::ParseError::new("state", s, "not a lifecycle state"))
    }
}

/// Why a lifecycle transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("a machine in state {from} cannot move to {to}")]
    NotAllowed {
        from: MachineState,
        to: MachineState,
    },
    #[error("moving a machine to {to} needs a reason")]
    ReasonRequired { to: MachineState },
    /// An action that only applies to one state (exit rescue: `rescue`)
    /// asked of a machine in another; names both rather than a target state
    /// the machine was never going to.
    #[error("the machine is {from}, not {expected}")]
    NotIn {
        from: MachineState,
        expected: MachineState,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_name() {
        for s in MachineState::ALL {
            assert_eq!(s.as_str().parse::<MachineState>().unwrap(), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!("deleted".parse::<MachineState>().is_err());
    }

    #[test]
    fn lifecycle_follows_maas() {
        assert!(New.can_move_to(Commissioning));
        assert!(Commissioning.can_move_to(Ready));
        assert!(Ready.can_move_to(Allocated));
        assert!(Allocated.can_move_to(Deploying));
        assert!(Deploying.can_move_to(Deployed));
        assert!(Deployed.can_move_to(Releasing));
        assert!(Releasing.can_move_to(Ready));
        assert!(Broken.can_move_to(Ready));
        assert!(
            Broken.can_move_to(Releasing),
            "a broken machine can be erased"
        );
        assert!(
            Failed.can_move_to(Rescue),
            "a failed deployment can be rescued"
        );
        assert!(!New.can_move_to(Deployed));
        assert!(!Deployed.can_move_to(Allocated));
        assert!(!Ready.can_move_to(Deployed));
        for s in MachineState::ALL {
            assert!(!s.can_move_to(s), "{s} must not move to itself");
            assert!(
                s.can_move_to(Broken) || s == Broken,
                "{s} can be marked broken"
            );
        }
    }

    #[test]
    fn failed_needs_a_reason() {
        assert_eq!(
            Deploying.check_transition(Failed, None),
            Err(TransitionError::ReasonRequired { to: Failed })
        );
        assert_eq!(
            Deploying.check_transition(Failed, Some("  ")),
            Err(TransitionError::ReasonRequired { to: Failed })
        );
        assert!(Deploying.check_transition(Failed, Some("disk")).is_ok());
        assert_eq!(
            New.check_transition(Deployed, None),
            Err(TransitionError::NotAllowed {
                from: New,
                to: Deployed
            })
        );
    }
}
