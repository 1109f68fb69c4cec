//! Every decision about an execution's lifecycle, as pure functions of (the execution as stored,
//! an event, the policy, now). Nothing here reads a clock, a database or a socket: the store reads
//! a `Stored`, calls one of the functions in `decide`, and applies the `Change` it returns as one
//! conditional statement guarded by what the decision read (`Guard`: status, attempt, and for
//! fenced events the lease and the worker holding it). A decision made on a read that is no longer
//! true therefore changes nothing; the store reads again and decides again.
//!
//! A `Change` can only be built here (`#[non_exhaustive]`), and only through `Change::new`, which
//! checks the transition against the state machine (`ExecutionStatus::check`): whatever the store
//! applies has already passed it.
//!
//! Deliveries are not transitions: handing a `scheduled` task to a worker (claim), taking it back
//! when the poller is gone (unclaim) or when it was not started in time (delivery expiry) set or
//! clear its lease and leave the status alone. They live in the store's queue (`attune-store`,
//! `queue.rs`), with the claim rule's one parameter (`AVOID_WINDOW`) here.

mod decide;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

pub use decide::{
    cancel, engine_finish, engine_start, inquiry_answer, inquiry_open, inquiry_timeout, lease_lost, report,
    schedule_timeout, start, LeaseLoss, ENGINE_ACTOR,
};

use crate::{ExecutionStatus, Report, Timestamp, TransitionError};

/// A retried attempt is kept from the worker that lost the previous one for this long after it
/// becomes eligible, unless no other active worker serves its queue; after that any worker may take
/// it (the failed worker may be the only one left). Applied by the claim.
pub const AVOID_WINDOW: Duration = Duration::from_secs(10);

/// What a decision reads of an execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub id: Uuid,
    pub status: ExecutionStatus,
    /// 0 until the first attempt starts.
    pub attempt: u32,
    pub max_attempts: u32,
    /// From the execution's snapshot of its action's retry policy.
    pub backoff_seconds: u64,
    pub lease_token: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    /// The worker holding (or that last held) the lease.
    pub worker_id: Option<Uuid>,
    pub worker_name: Option<String>,
    /// That worker's last heartbeat, when the worker is known.
    pub worker_heartbeat: Option<Timestamp>,
    /// When it was last put in the queue.
    pub scheduled_at: Option<Timestamp>,
    /// Its own schedule-to-start timeout (the action's or the submission's), if it has one.
    pub scheduled_timeout: Option<std::time::Duration>,
}

/// A worker's claim to a lease: the token of the delivery and the worker making the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder<'a> {
    pub token: &'a str,
    pub worker: Uuid,
}

/// What must still be true when a change is applied: exactly what the decision read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub status: ExecutionStatus,
    pub attempt: u32,
    /// Fenced events: this token must still be the execution's lease …
    pub lease_token: Option<String>,
    /// … held by this worker.
    pub worker: Option<Uuid>,
    /// Lease expiry: the lease must not have been renewed since it was read (it still ends here).
    pub lease_expires_at: Option<Timestamp>,
}

/// What happens to the lease with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    Keep,
    /// An attempt starts: its lease runs until then (heartbeats extend it).
    Until(Timestamp),
    /// The attempt is over: the token stays, so that a repeated report of it is recognised, but
    /// nothing expires any more.
    Ended,
    /// Nobody holds the execution any more: token and expiry are cleared.
    Dropped,
}

/// What happens to the execution's `error` with a change.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorChange {
    Keep,
    Set(Option<Value>),
}

/// Why a change dead-letters its execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterCause {
    /// Waited in the queue longer than it may.
    QueueTtl,
    /// Its worker vanished (or shut down) during its last attempt.
    Abandoned,
    /// It failed every attempt its retry policy allowed.
    RetriesExhausted,
}

impl DeadLetterCause {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterCause::QueueTtl => "queue_ttl",
            DeadLetterCause::Abandoned => "abandoned",
            DeadLetterCause::RetriesExhausted => "retries_exhausted",
        }
    }
}

/// One decided transition, to be applied to the execution `Guard` describes. Built only by the
/// functions of this module, after the state machine allowed it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Change {
    pub id: Uuid,
    pub guard: Guard,
    pub to: ExecutionStatus,
    /// The attempt number afterwards.
    pub attempt: u32,
    pub at: Timestamp,
    /// Who made the change (`worker:<name>`, `api`, `execution_timeout_monitor`, …), for history.
    pub actor: String,
    pub reason: Option<String>,
    /// How the attempt ending with this change ended, when that is not `to` (a failed attempt
    /// that is retried, an attempt whose worker vanished: `abandoned`).
    pub attempt_outcome: Option<ExecutionStatus>,
    pub error: ErrorChange,
    pub lease: LeaseChange,
    /// Back in the queue, eligible from then on, kept from the worker that had it for a while.
    pub requeue_at: Option<Timestamp>,
    /// The attempt's output to record (`status` and `error` of the report are not used from here).
    pub output: Option<Report>,
    pub dead_letter: Option<DeadLetterCause>,
    /// Set when the change answers a report the server refused: why (the caller is told, too).
    pub refused_report: Option<String>,
}

impl Change {
    /// The one way to build a change: checked against the state machine, everything else at its
    /// neutral value (refined by the caller through the `with_*` methods).
    fn new(s: &Stored, to: ExecutionStatus, at: Timestamp, actor: String) -> Result<Change, Refusal> {
        s.status.check(to).map_err(Refusal::Invalid)?;
        Ok(Change {
            id: s.id,
            guard: Guard {
                status: s.status,
                attempt: s.attempt,
                lease_token: None,
                worker: None,
                lease_expires_at: None,
            },
            to,
            attempt: s.attempt,
            at,
            actor,
            reason: None,
            attempt_outcome: None,
            error: ErrorChange::Keep,
            lease: LeaseChange::Keep,
            requeue_at: None,
            output: None,
            dead_letter: None,
            refused_report: None,
        })
    }

    fn fenced(mut self, h: &Holder<'_>) -> Change {
        self.guard.lease_token = Some(h.token.to_owned());
        self.guard.worker = Some(h.worker);
        self
    }

    fn reason(mut self, r: impl Into<String>) -> Change {
        self.reason = Some(r.into());
        self
    }

    /// Whether the change ends the execution.
    pub fn is_terminal(&self) -> bool {
        self.to.is_terminal()
    }

    /// Whether the change starts an attempt (a worker's, the engine's, or an inquiry's wait).
    pub fn starts_attempt(&self) -> bool {
        self.guard.status == ExecutionStatus::Scheduled
            && matches!(self.to, ExecutionStatus::Running | ExecutionStatus::Pending)
    }
}

/// Why an event changes nothing and is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The caller's lease is not the execution's current one (fencing).
    Stale(String),
    /// The lease is current but another worker's: that worker's to report on, not the caller's.
    Foreign(String),
    /// The state machine does not allow it.
    Invalid(TransitionError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Stale(m) | Refusal::Foreign(m) => f.write_str(m),
            Refusal::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Apply(Box<Change>),
    /// Nothing to change: the event was already applied (a repeated start or report, a second
    /// cancel) or no longer concerns the execution (its lease moved on).
    Unchanged,
    Refuse(Refusal),
}

impl From<Result<Change, Refusal>> for Decision {
    fn from(r: Result<Change, Refusal>) -> Decision {
        match r {
            Ok(c) => Decision::Apply(Box::new(c)),
            Err(e) => Decision::Refuse(e),
        }
    }
}
