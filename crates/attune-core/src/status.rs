//! The one execution state machine. Every status change anywhere in Attune is checked here first
//! (`check`, `can_become`) against the status the store read; the store's update is conditional on
//! that status, so a transition this module forbids cannot happen in the database either.
//!
//! ```text
//! requested ─► scheduled ─► running ─► succeeded | failed | timeout | abandoned
//!                  │  ▲         │ └──► canceling ─► canceled (or the outcome that won the race)
//!                  │  └─────────┘ (retry: a new attempt)
//!                  ├─► canceled | failed (schedule-to-start timeout, dead letter)
//!                  └─► pending ─► succeeded (answered) | timeout | failed | canceled  (inquiries)
//! ```

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Requested,
    Scheduled,
    /// An inquiry waits for a person's response; no worker holds it.
    Pending,
    Running,
    Canceling,
    Succeeded,
    Failed,
    Timeout,
    Canceled,
    Abandoned,
}

use ExecutionStatus::*;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("execution is {from}, it cannot become {to}")]
pub struct TransitionError {
    pub from: ExecutionStatus,
    pub to: ExecutionStatus,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 10] =
        [Requested, Scheduled, Pending, Running, Canceling, Succeeded, Failed, Timeout, Canceled, Abandoned];

    pub fn as_str(self) -> &'static str {
        match self {
            Requested => "requested",
            Scheduled => "scheduled",
            Pending => "pending",
            Running => "running",
            Canceling => "canceling",
            Succeeded => "succeeded",
            Failed => "failed",
            Timeout => "timeout",
            Canceled => "canceled",
            Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Succeeded | Failed | Timeout | Canceled | Abandoned)
    }

    /// Whether a worker holds (or may hold) a lease on the execution in this status.
    pub fn is_active(self) -> bool {
        matches!(self, Running | Canceling)
    }

    /// The statuses that may move to `to`. The store turns this into `status IN (…)`.
    pub fn sources_of(to: ExecutionStatus) -> &'static [ExecutionStatus] {
        match to {
            Requested => &[],
            Scheduled => &[Requested, Running],
            Pending => &[Scheduled],
            Running => &[Scheduled],
            Canceling => &[Running],
            Succeeded | Timeout => &[Running, Canceling, Pending],
            Failed => &[Requested, Scheduled, Running, Canceling, Pending],
            Canceled => &[Requested, Scheduled, Running, Canceling, Pending],
            Abandoned => &[Running, Canceling],
        }
    }

    pub fn can_become(self, to: ExecutionStatus) -> bool {
        Self::sources_of(to).contains(&self)
    }

    pub fn check(self, to: ExecutionStatus) -> Result<(), TransitionError> {
        if self.can_become(to) {
            Ok(())
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl std::fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ExecutionStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| {
            let all: Vec<_> = Self::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown status {s:?}; expected one of {}", all.join(", "))
        })
    }
}

/// A worker is `active` while it heartbeats; `inactive` once its last heartbeat is older than
/// the staleness window, or once it starts draining or deregisters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    Active,
    Inactive,
}

impl WorkerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Active => "active",
            WorkerStatus::Inactive => "inactive",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(WorkerStatus::Active),
            "inactive" => Some(WorkerStatus::Inactive),
            _ => None,
        }
    }
}

impl std::fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_are_final() {
        for from in ExecutionStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in ExecutionStatus::ALL {
                assert!(!from.can_become(to), "{from} -> {to} must be impossible");
            }
        }
    }

    #[test]
    fn happy_path_and_cancel() {
        assert!(Requested.can_become(Scheduled));
        assert!(Scheduled.can_become(Running));
        assert!(Running.can_become(Succeeded));
        assert!(Running.can_become(Canceling));
        assert!(Canceling.can_become(Canceled));
        assert!(Scheduled.can_become(Canceled));
        assert!(!Scheduled.can_become(Succeeded), "a task must start before it succeeds");
        assert!(!Canceling.can_become(Running));
        assert!(Running.check(Requested).is_err());
    }

    #[test]
    fn parse_round_trips() {
        for s in ExecutionStatus::ALL {
            assert_eq!(ExecutionStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("bogus".parse::<ExecutionStatus>().is_err());
    }
}
