//! The decisions, one function per event. Each reads only its arguments.

use std::time::Duration;

use serde_json::{json, Value};

use super::{Change, DeadLetterCause, Decision, ErrorChange, Holder, LeaseChange, Refusal, Stored};
use crate::{ExecutionStatus, Report, Timestamp};

use ExecutionStatus::*;

fn worker_actor(s: &Stored) -> String {
    match (&s.worker_name, s.worker_id) {
        (Some(n), _) => format!("worker:{n}"),
        (None, Some(id)) => format!("worker:{id}"),
        (None, None) => "worker".into(),
    }
}

/// Whether `h` holds the execution's current lease; the refusal says why not.
fn check_holder(s: &Stored, h: &Holder<'_>, what: &str) -> Result<(), Refusal> {
    if s.lease_token.as_deref() != Some(h.token) {
        return Err(Refusal::Stale(format!("the execution is {} and {what}", s.status)));
    }
    if s.worker_id != Some(h.worker) {
        return Err(Refusal::Foreign(format!(
            "the execution is {} and its lease is held by another worker",
            s.status
        )));
    }
    Ok(())
}

/// A worker confirms it starts the task it was handed: `scheduled → running`, the next attempt,
/// leased until `lease_until`. Repeating it while the attempt runs changes nothing.
pub fn start(s: &Stored, h: &Holder<'_>, at: Timestamp, lease_until: Timestamp) -> Decision {
    if let Err(r) = check_holder(s, h, "this delivery's lease is no longer valid") {
        return Decision::Refuse(r);
    }
    if s.status.is_active() {
        return Decision::Unchanged;
    }
    if s.status != Scheduled {
        return Decision::Refuse(Refusal::Stale(format!(
            "the execution is {} and this delivery's lease is no longer valid",
            s.status
        )));
    }
    Change::new(s, Running, at, worker_actor(s))
        .map(|c| {
            let mut c = c.fenced(h).reason(format!("attempt {} started", s.attempt + 1));
            c.attempt = s.attempt + 1;
            c.lease = LeaseChange::Until(lease_until);
            c
        })
        .into()
}

/// The one rule for an attempt that failed or lost its worker: another attempt when the retry
/// policy has one left (after its backoff), the end otherwise.
fn retry_left(s: &Stored) -> bool {
    s.attempt < s.max_attempts
}

fn requeue(mut c: Change, s: &Stored, at: Timestamp) -> Change {
    c.requeue_at = Some(at.plus(Duration::from_secs(s.backoff_seconds)));
    c.lease = LeaseChange::Dropped;
    c
}

/// The worker reports how its attempt ended. A failed or timed-out attempt with attempts left goes
/// back to the queue (after the backoff, preferring another worker); the last one ends the
/// execution, and with a retry policy dead-letters it (`retries_exhausted`). A repeated report of
/// an ended attempt changes nothing; a report under any other lease is refused.
pub fn report(s: &Stored, h: &Holder<'_>, r: &Report, at: Timestamp) -> Decision {
    if let Err(e) = check_holder(s, h, "has a newer lease") {
        return Decision::Refuse(e);
    }
    if s.status.is_terminal() {
        return Decision::Unchanged;
    }
    if !s.status.is_active() {
        return Decision::Refuse(Refusal::Stale(format!(
            "the execution is {}: no attempt under this lease has started",
            s.status
        )));
    }
    let problem = if r.is_valid_outcome() {
        r.check().err()
    } else {
        Some(format!("status must be succeeded, failed, timeout or canceled, not {}", r.status))
    };
    if let Some(why) = problem {
        return refused_report(s, h, r, &why, at);
    }
    let reported = r.status;
    if let Err(e) = s.status.check(reported) {
        return Decision::Refuse(Refusal::Invalid(e));
    }
    let failed = matches!(reported, Failed | Timeout);
    let retry = failed && s.status == Running && retry_left(s);
    let outcome = r
        .error
        .as_ref()
        .and_then(|e| e.get("error"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| r.exit_code.map(|c| format!("exit code {c}")));
    let to = if retry { Scheduled } else { reported };
    Change::new(s, to, at, worker_actor(s))
        .map(|c| {
            let mut c = c.fenced(h);
            c.attempt_outcome = Some(reported);
            c.error = ErrorChange::Set(r.error.clone());
            c.output = Some(r.clone().normalized());
            if retry {
                let backoff = s.backoff_seconds;
                c.reason = Some(format!(
                    "attempt {} {reported}{}; retrying (attempt {} of {}){}",
                    s.attempt,
                    outcome.as_deref().map(|o| format!(": {o}")).unwrap_or_default(),
                    s.attempt + 1,
                    s.max_attempts,
                    if backoff > 0 { format!(" in {backoff}s") } else { String::new() },
                ));
                requeue(c, s, at)
            } else {
                c.reason = outcome;
                c.lease = LeaseChange::Ended;
                if failed && s.max_attempts > 1 {
                    c.dead_letter = Some(DeadLetterCause::RetriesExhausted);
                }
                c
            }
        })
        .into()
}

/// A report the server cannot take, from the worker that holds the lease: resending it cannot fix
/// it, so the attempt ends `failed` at once with the reason (not with a lease expiry later, which
/// would blame a worker that is alive).
fn refused_report(s: &Stored, h: &Holder<'_>, r: &Report, why: &str, at: Timestamp) -> Decision {
    let message = format!("the server refused the worker's report: {why}");
    Change::new(s, Failed, at, worker_actor(s))
        .map(|c| {
            let mut c = c.fenced(h).reason(message.clone());
            c.attempt_outcome = Some(Failed);
            c.error = ErrorChange::Set(Some(json!({
                "error": message,
                "failed_by": "server",
                "reported_status": r.status.as_str(),
                "exit_code": r.exit_code,
            })));
            c.lease = LeaseChange::Ended;
            c.refused_report = Some(why.to_owned());
            c
        })
        .into()
}

/// A person (or, later, a workflow) cancels: a waiting execution ends at once; a running one is
/// asked to stop (`canceling`, delivered to its worker with the next heartbeat). Canceling a
/// canceling execution changes nothing; canceling an ended one is refused.
pub fn cancel(s: &Stored, actor: &str, at: Timestamp) -> Decision {
    match s.status {
        Canceling => Decision::Unchanged,
        Running => {
            Change::new(s, Canceling, at, actor.to_owned()).map(|c| c.reason("cancel requested")).into()
        }
        from => Change::new(s, Canceled, at, actor.to_owned())
            .map(|c| {
                let mut c = c.reason("cancel requested");
                c.error = ErrorChange::Set(Some(json!({
                    "error": "canceled before it started",
                    "canceled_by": actor,
                    "original_status": from.as_str(),
                })));
                c.lease = LeaseChange::Dropped;
                c
            })
            .into(),
    }
}

/// How an attempt lost its worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseLoss<'a> {
    /// The lease ran out: its worker stopped renewing it (`staleness` is the window a living worker
    /// renews within, used to say which of the two happened).
    Expired { staleness: Duration },
    /// The worker gave it back: it is shutting down and could not finish.
    Released(Holder<'a>),
}

/// The current attempt lost its worker: `canceled` if a cancel was pending, another attempt if
/// the retry policy allows (avoiding that worker), else `abandoned` and dead-lettered.
pub fn lease_lost(s: &Stored, loss: &LeaseLoss<'_>, at: Timestamp) -> Decision {
    if let LeaseLoss::Released(h) = loss {
        if let Err(e) = check_holder(s, h, "this lease is not current; nothing to release") {
            return Decision::Refuse(e);
        }
    }
    if !s.status.is_active() {
        return Decision::Unchanged;
    }
    let worker = s.worker_name.clone().unwrap_or_default();
    let (failed_by, cause) = match loss {
        LeaseLoss::Expired { staleness } => {
            match s.lease_expires_at {
                Some(end) if end < at => {}
                _ => return Decision::Unchanged, // renewed since it was found expired
            }
            ("worker_heartbeat_monitor", expiry_cause(s, &worker, *staleness, at))
        }
        LeaseLoss::Released(_) => {
            ("worker_shutdown", format!("worker {worker} shut down before the action finished"))
        }
    };
    let error = json!({
        "error": cause,
        "failed_by": failed_by,
        "worker": worker,
        "attempt": s.attempt,
        "max_attempts": s.max_attempts,
        "original_status": s.status.as_str(),
    });
    let to = if s.status == Canceling {
        Canceled
    } else if retry_left(s) {
        Scheduled
    } else {
        Abandoned
    };
    Change::new(s, to, at, failed_by.to_owned())
        .map(|mut c| {
            match loss {
                LeaseLoss::Released(h) => c = c.fenced(h),
                LeaseLoss::Expired { .. } => {
                    c.guard.lease_token = s.lease_token.clone();
                    c.guard.lease_expires_at = s.lease_expires_at;
                }
            }
            c.attempt_outcome = Some(Abandoned);
            c.error = ErrorChange::Set(Some(error));
            match to {
                Scheduled => {
                    c.reason =
                        Some(format!("{cause}; retrying (attempt {} of {})", s.attempt + 1, s.max_attempts));
                    requeue(c, s, at)
                }
                _ => {
                    c.reason = Some(cause);
                    c.lease = LeaseChange::Ended;
                    if to == Abandoned {
                        c.dead_letter = Some(DeadLetterCause::Abandoned);
                    }
                    c
                }
            }
        })
        .into()
}

/// Says truthfully why a lease expired: a worker whose heartbeats stopped, or one that still
/// heartbeats but no longer renewed this lease.
fn expiry_cause(s: &Stored, worker: &str, staleness: Duration, at: Timestamp) -> String {
    match s.worker_heartbeat {
        Some(hb) if at.millis().saturating_sub(hb.millis()) < staleness.as_millis() as i64 => format!(
            "worker {worker} is still heartbeating (last {}s ago) but stopped renewing this lease; \
             its lease expired",
            at.seconds_since(hb)
        ),
        Some(hb) => format!(
            "worker {worker} stopped heartbeating (last heartbeat {}s ago); its lease expired",
            at.seconds_since(hb)
        ),
        None => format!("worker {worker} stopped heartbeating; its lease expired"),
    }
}

/// Seed 003's execution timeout monitor: an execution still `scheduled` `timeout` after it was
/// queued fails, with the seed's error object, and is dead-lettered (`queue_ttl`).
pub fn schedule_timeout(s: &Stored, default: Duration, at: Timestamp) -> Decision {
    let Some(queued) = s.scheduled_at else { return Decision::Unchanged };
    let timeout = s.scheduled_timeout.unwrap_or(default);
    if s.status != Scheduled || queued.plus(timeout) >= at {
        return Decision::Unchanged;
    }
    let timeout_seconds = timeout.as_secs();
    let age_seconds = at.seconds_since(queued);
    let message = format!(
        "Execution timeout: worker did not pick up task within {timeout_seconds} seconds (scheduled for {age_seconds} seconds)"
    );
    Change::new(s, Failed, at, "execution_timeout_monitor".into())
        .map(|c| {
            let mut c = c.reason(message.clone());
            c.error = ErrorChange::Set(Some(json!({
                "error": message,
                "failed_by": "execution_timeout_monitor",
                "timeout_seconds": timeout_seconds,
                "age_seconds": age_seconds,
                "original_status": "scheduled",
            })));
            c.lease = LeaseChange::Dropped;
            c.dead_letter = Some(DeadLetterCause::QueueTtl);
            c
        })
        .into()
}

/// Who runs workflows and inquiries, for history.
pub const ENGINE_ACTOR: &str = "workflow_engine";

/// The server starts running an execution it runs itself (a workflow): `scheduled → running`,
/// attempt 1, no lease (no worker holds it; the engine's state is in the database). Repeating
/// it changes nothing.
pub fn engine_start(s: &Stored, at: Timestamp) -> Decision {
    match s.status {
        Scheduled => Change::new(s, Running, at, ENGINE_ACTOR.into())
            .map(|c| {
                let mut c = c.reason("workflow started");
                c.attempt = s.attempt + 1;
                c
            })
            .into(),
        _ => Decision::Unchanged,
    }
}

/// A workflow the engine finished ends with its outcome: its output as the result, or its error.
/// A workflow asked to cancel ends `canceled` whatever its tasks did. Repeating it changes
/// nothing.
pub fn engine_finish(
    s: &Stored,
    outcome: ExecutionStatus,
    output: Option<Value>,
    error: Option<Value>,
    at: Timestamp,
) -> Decision {
    if s.status.is_terminal() || !s.status.is_active() {
        return Decision::Unchanged;
    }
    let to = if s.status == Canceling { Canceled } else { outcome };
    let reason = match to {
        Succeeded => "workflow succeeded".to_owned(),
        Canceled => "workflow canceled".to_owned(),
        _ => error
            .as_ref()
            .and_then(|e| e.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("workflow failed")
            .to_owned(),
    };
    Change::new(s, to, at, ENGINE_ACTOR.into())
        .map(|c| {
            let mut c = c.reason(reason);
            c.error = ErrorChange::Set(error.clone());
            c.output = Some(Report { result: output, error, ..Report::new(to) });
            c.lease = LeaseChange::Dropped;
            c
        })
        .into()
}

/// An inquiry is opened: `scheduled → pending`, waiting for a response without a worker.
pub fn inquiry_open(s: &Stored, at: Timestamp) -> Decision {
    match s.status {
        Scheduled => Change::new(s, Pending, at, ENGINE_ACTOR.into())
            .map(|c| {
                let mut c = c.reason("waiting for a response");
                c.attempt = s.attempt + 1;
                c
            })
            .into(),
        _ => Decision::Unchanged,
    }
}

/// A person answers a pending inquiry (the response was checked against its schema): it
/// succeeds with the response as its result. Answering one that is no longer pending is refused.
pub fn inquiry_answer(s: &Stored, response: &Value, actor: &str, at: Timestamp) -> Decision {
    if s.status != Pending {
        return Decision::Refuse(Refusal::Stale(format!(
            "the inquiry is {}, not pending: it can no longer be answered",
            s.status
        )));
    }
    Change::new(s, Succeeded, at, actor.to_owned())
        .map(|c| {
            let mut c = c.reason("answered");
            c.output = Some(Report { result: Some(response.clone()), ..Report::new(Succeeded) });
            c
        })
        .into()
}

/// A pending inquiry nobody answered within its `timeout_seconds` ends `timeout`.
pub fn inquiry_timeout(s: &Stored, timeout_seconds: u64, at: Timestamp) -> Decision {
    if s.status != Pending {
        return Decision::Unchanged;
    }
    let message = format!("no response within {timeout_seconds} seconds");
    Change::new(s, Timeout, at, "inquiry_timeout_monitor".into())
        .map(|c| {
            let mut c = c.reason(message.clone());
            c.error = ErrorChange::Set(Some(json!({
                "error": message,
                "failed_by": "inquiry_timeout_monitor",
                "timeout_seconds": timeout_seconds,
            })));
            c
        })
        .into()
}
