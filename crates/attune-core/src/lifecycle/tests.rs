//! The lifecycle as a table: every status against every event, with the outcome written out.
//! A status name means "applied, and the execution becomes that"; `-` means unchanged; `stale`
//! and `invalid` are the refusals.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::{ExecutionStatus::*, Report};

const T: Timestamp = Timestamp(1_800_000_000_000);
const WORKER: Uuid = Uuid::from_u128(7);
const STALENESS: Duration = Duration::from_secs(30);

fn at(secs: i64) -> Timestamp {
    Timestamp(T.0 + secs * 1000)
}

/// An execution in `status`, leased with token `t` by `WORKER`, on attempt 1 of `max`.
fn stored(status: ExecutionStatus, max_attempts: u32) -> Stored {
    Stored {
        id: Uuid::from_u128(1),
        status,
        attempt: if status == Scheduled || status == Requested { 0 } else { 1 },
        max_attempts,
        backoff_seconds: 5,
        lease_token: Some("t".into()),
        lease_expires_at: Some(at(-1)),
        worker_id: Some(WORKER),
        worker_name: Some("w1".into()),
        worker_heartbeat: Some(at(-60)),
        scheduled_at: Some(at(-600)),
        scheduled_timeout: None,
    }
}

fn rep(status: ExecutionStatus) -> Report {
    Report {
        exit_code: Some(if status == Succeeded { 0 } else { 1 }),
        stdout: "out".into(),
        error: (status != Succeeded).then(|| json!({"error": "boom"})),
        ..Report::new(status)
    }
}

const HOLDER: Holder<'static> = Holder { token: "t", worker: WORKER };
const FOREIGN: Holder<'static> = Holder { token: "other", worker: WORKER };

/// The events, in the order of the table's columns.
const EVENTS: [&str; 14] = [
    "start",
    "report succeeded",
    "report failed, attempts left",
    "report failed, last attempt",
    "report timeout, attempts left",
    "report canceled",
    "report under a foreign lease",
    "cancel",
    "lease expired, attempts left",
    "lease expired, last attempt",
    "lease renewed since it was read",
    "release, attempts left",
    "schedule timeout, queued long ago",
    "schedule timeout, queued just now",
];

fn decide_event(status: ExecutionStatus, event: usize) -> Decision {
    let left = || stored(status, 3);
    let last = || stored(status, 1);
    let expired = LeaseLoss::Expired { staleness: STALENESS };
    match event {
        0 => start(&left(), &HOLDER, at(0), at(30)),
        1 => report_decision(&left(), Succeeded),
        2 => report_decision(&left(), Failed),
        3 => report_decision(&last(), Failed),
        4 => report_decision(&left(), Timeout),
        5 => report_decision(&left(), Canceled),
        6 => report(&left(), &FOREIGN, &rep(Succeeded), at(0)),
        7 => cancel(&left(), "api", at(0)),
        8 => lease_lost(&left(), &expired, at(0)),
        9 => lease_lost(&last(), &expired, at(0)),
        10 => {
            let mut s = left();
            s.lease_expires_at = Some(at(20));
            lease_lost(&s, &expired, at(0))
        }
        11 => lease_lost(&left(), &LeaseLoss::Released(HOLDER), at(0)),
        12 => schedule_timeout(&left(), Duration::from_secs(300), at(0)),
        13 => {
            let mut s = left();
            s.scheduled_at = Some(at(-10));
            schedule_timeout(&s, Duration::from_secs(300), at(0))
        }
        _ => unreachable!(),
    }
}

fn report_decision(s: &Stored, status: ExecutionStatus) -> Decision {
    report(s, &HOLDER, &rep(status), at(0))
}

const TERMINAL: [&str; 14] =
    ["stale", "-", "-", "-", "-", "-", "stale", "invalid", "-", "-", "-", "-", "-", "-"];

const TABLE: [(ExecutionStatus, [&str; 14]); 10] = [
    (
        Pending,
        [
            "stale", "stale", "stale", "stale", "stale", "stale", "stale", "canceled", "-", "-", "-", "-",
            "-", "-",
        ],
    ),
    (
        Requested,
        [
            "stale", "stale", "stale", "stale", "stale", "stale", "stale", "canceled", "-", "-", "-", "-",
            "-", "-",
        ],
    ),
    (
        Scheduled,
        [
            "running", "stale", "stale", "stale", "stale", "stale", "stale", "canceled", "-", "-", "-", "-",
            "failed", "-",
        ],
    ),
    (
        Running,
        [
            "-",
            "succeeded",
            "scheduled",
            "failed",
            "scheduled",
            "canceled",
            "stale",
            "canceling",
            "scheduled",
            "abandoned",
            "-",
            "scheduled",
            "-",
            "-",
        ],
    ),
    (
        Canceling,
        [
            "-",
            "succeeded",
            "failed",
            "failed",
            "timeout",
            "canceled",
            "stale",
            "-",
            "canceled",
            "canceled",
            "-",
            "canceled",
            "-",
            "-",
        ],
    ),
    (Succeeded, TERMINAL),
    (Failed, TERMINAL),
    (Timeout, TERMINAL),
    (Canceled, TERMINAL),
    (Abandoned, TERMINAL),
];

fn outcome(d: &Decision) -> String {
    match d {
        Decision::Apply(c) => c.to.as_str().to_owned(),
        Decision::Unchanged => "-".into(),
        Decision::Refuse(Refusal::Stale(_)) => "stale".into(),
        Decision::Refuse(Refusal::Foreign(_)) => "foreign".into(),
        Decision::Refuse(Refusal::Invalid(_)) => "invalid".into(),
    }
}

#[test]
fn every_status_against_every_event() {
    assert_eq!(TABLE.len(), ExecutionStatus::ALL.len(), "every status has a row");
    let mut wrong = Vec::new();
    for (status, row) in TABLE {
        for (i, expected) in row.iter().enumerate() {
            let d = decide_event(status, i);
            let got = outcome(&d);
            if got != *expected {
                wrong.push(format!("{status} + {}: expected {expected}, got {got} ({d:?})", EVENTS[i]));
            }
            if let Decision::Apply(c) = &d {
                assert!(c.guard.status.can_become(c.to), "{status} + {}: {c:?}", EVENTS[i]);
                assert_eq!(c.guard.status, status);
            }
        }
    }
    assert!(wrong.is_empty(), "{} cells differ:\n{}", wrong.len(), wrong.join("\n"));
}

fn applied(d: Decision) -> Change {
    match d {
        Decision::Apply(c) => *c,
        other => panic!("expected a change, got {other:?}"),
    }
}

#[test]
fn start_opens_the_next_attempt_under_the_lease() {
    let c = applied(start(&stored(Scheduled, 3), &HOLDER, at(0), at(30)));
    assert_eq!((c.attempt, c.lease, c.actor.as_str()), (1, LeaseChange::Until(at(30)), "worker:w1"));
    assert_eq!((c.guard.lease_token.as_deref(), c.guard.worker), (Some("t"), Some(WORKER)));
    assert!(c.starts_attempt());
    assert_eq!(c.reason.as_deref(), Some("attempt 1 started"));
}

#[test]
fn another_workers_call_is_stale() {
    let mut s = stored(Running, 3);
    s.worker_id = Some(Uuid::from_u128(99));
    for d in [
        start(&s, &HOLDER, at(0), at(30)),
        report(&s, &HOLDER, &rep(Succeeded), at(0)),
        lease_lost(&s, &LeaseLoss::Released(HOLDER), at(0)),
    ] {
        assert!(matches!(&d, Decision::Refuse(Refusal::Foreign(m)) if m.contains("another worker")), "{d:?}");
    }
}

#[test]
fn a_failed_attempt_with_attempts_left_is_requeued_after_its_backoff() {
    let c = applied(report_decision(&stored(Running, 3), Failed));
    assert_eq!(c.to, Scheduled);
    assert_eq!(c.requeue_at, Some(at(5)));
    assert_eq!(c.lease, LeaseChange::Dropped);
    assert_eq!(c.attempt_outcome, Some(Failed));
    assert_eq!(c.dead_letter, None);
    assert_eq!(c.reason.as_deref(), Some("attempt 1 failed: boom; retrying (attempt 2 of 3) in 5s"));
    assert_eq!(c.output.as_ref().map(|o| o.stdout.as_str()), Some("out"));
}

#[test]
fn the_last_failed_attempt_is_dead_lettered_only_with_a_retry_policy() {
    let mut s = stored(Running, 3);
    s.attempt = 3;
    let c = applied(report_decision(&s, Failed));
    assert_eq!(
        (c.to, c.dead_letter, c.lease),
        (Failed, Some(DeadLetterCause::RetriesExhausted), LeaseChange::Ended)
    );
    let c = applied(report_decision(&stored(Running, 1), Failed));
    assert_eq!((c.to, c.dead_letter), (Failed, None), "no retry policy, no dead letter");
    let c = applied(report_decision(&stored(Running, 3), Succeeded));
    assert_eq!((c.error.clone(), c.dead_letter), (ErrorChange::Set(None), None));
}

#[test]
fn a_lost_lease_says_truthfully_what_happened() {
    let expired = LeaseLoss::Expired { staleness: STALENESS };
    let c = applied(lease_lost(&stored(Running, 1), &expired, at(0)));
    assert_eq!(
        (c.to, c.dead_letter, c.actor.as_str()),
        (Abandoned, Some(DeadLetterCause::Abandoned), "worker_heartbeat_monitor")
    );
    let reason = c.reason.unwrap();
    assert!(reason.contains("stopped heartbeating (last heartbeat 60s ago)"), "{reason}");
    // A worker that still heartbeats did not "stop": it stopped renewing this lease.
    let mut alive = stored(Running, 1);
    alive.worker_heartbeat = Some(at(-2));
    let c = applied(lease_lost(&alive, &expired, at(0)));
    let reason = c.reason.unwrap();
    assert!(reason.contains("still heartbeating") && !reason.contains("stopped heartbeating"), "{reason}");
    assert_eq!(c.guard.lease_expires_at, Some(at(-1)), "guarded by the expiry it read");
    // Released by a worker that shuts down.
    let c = applied(lease_lost(&stored(Running, 3), &LeaseLoss::Released(HOLDER), at(0)));
    assert_eq!((c.to, c.actor.as_str(), c.requeue_at), (Scheduled, "worker_shutdown", Some(at(5))));
    assert_eq!(
        c.error,
        ErrorChange::Set(Some(json!({
        "error": "worker w1 shut down before the action finished",
        "failed_by": "worker_shutdown", "worker": "w1", "attempt": 1, "max_attempts": 3,
        "original_status": "running"})))
    );
}

#[test]
fn the_schedule_timeout_carries_the_seed_error() {
    let c = applied(schedule_timeout(&stored(Scheduled, 1), Duration::from_secs(300), at(0)));
    assert_eq!(
        c.error,
        ErrorChange::Set(Some(json!({
        "error": "Execution timeout: worker did not pick up task within 300 seconds (scheduled for 600 seconds)",
        "failed_by": "execution_timeout_monitor", "timeout_seconds": 300, "age_seconds": 600,
        "original_status": "scheduled"})))
    );
    assert_eq!((c.dead_letter, c.lease), (Some(DeadLetterCause::QueueTtl), LeaseChange::Dropped));
}

#[test]
fn cancel_before_start_says_who_and_from_where() {
    let c = applied(cancel(&stored(Scheduled, 1), "api", at(0)));
    assert_eq!(
        c.error,
        ErrorChange::Set(Some(json!({
        "error": "canceled before it started", "canceled_by": "api", "original_status": "scheduled"})))
    );
    let c = applied(cancel(&stored(Running, 1), "api", at(0)));
    assert_eq!((c.to, c.lease, c.error), (Canceling, LeaseChange::Keep, ErrorChange::Keep));
}

#[test]
fn a_report_refused_for_good_fails_the_attempt_at_once() {
    // Not an outcome, or output that is not what it claims: resending cannot fix it.
    let mut bad_base64 = rep(Succeeded);
    bad_base64.stdout_encoding = crate::output::OutputEncoding::Base64;
    bad_base64.stdout = "not base64!".into();
    for (r, why) in [(rep(Running), "status must be succeeded"), (bad_base64, "stdout is declared base64")] {
        let c = applied(report(&stored(Running, 3), &HOLDER, &r, at(0)));
        assert_eq!(
            (c.to, c.requeue_at, c.dead_letter),
            (Failed, None, None),
            "no retry of a report that cannot be taken"
        );
        let ErrorChange::Set(Some(e)) = &c.error else { panic!("{c:?}") };
        let msg = e["error"].as_str().unwrap();
        assert!(msg.starts_with("the server refused the worker's report: ") && msg.contains(why), "{msg}");
        assert_eq!(e["failed_by"], "server");
    }
    // From anyone but the holder, it is just stale.
    assert!(matches!(
        report(&stored(Running, 3), &FOREIGN, &rep(Running), at(0)),
        Decision::Refuse(Refusal::Stale(_))
    ));
}

#[test]
fn output_that_cannot_be_stored_as_text_is_stored_as_base64() {
    let mut r = rep(Succeeded);
    r.stdout = "a\0b".into();
    let c = applied(report(&stored(Running, 1), &HOLDER, &r, at(0)));
    let out = c.output.unwrap();
    assert_eq!((out.stdout.as_str(), out.stdout_encoding), ("YQBi", crate::output::OutputEncoding::Base64));
}

#[test]
fn server_run_executions_start_finish_and_answer_without_a_lease() {
    use serde_json::json;
    let c = applied(engine_start(&stored(Scheduled, 1), at(0)));
    assert_eq!((c.to, c.attempt, c.actor.as_str()), (Running, 1, ENGINE_ACTOR));
    assert_eq!(engine_start(&stored(Running, 1), at(0)), Decision::Unchanged, "repeated");
    let c = applied(engine_finish(&stored(Running, 1), Succeeded, Some(json!({"n": 1})), None, at(0)));
    assert_eq!(c.to, Succeeded);
    assert_eq!(c.output.as_ref().and_then(|o| o.result.clone()), Some(json!({"n": 1})));
    let c = applied(engine_finish(&stored(Canceling, 1), Failed, None, Some(json!({"error": "x"})), at(0)));
    assert_eq!(c.to, Canceled, "a workflow asked to cancel ends canceled");
    assert_eq!(engine_finish(&stored(Succeeded, 1), Failed, None, None, at(0)), Decision::Unchanged);
    let c = applied(inquiry_open(&stored(Scheduled, 1), at(0)));
    assert_eq!(c.to, Pending);
    let c = applied(inquiry_answer(&stored(Pending, 1), &json!({"ok": true}), "api", at(0)));
    assert_eq!((c.to, c.output.unwrap().result), (Succeeded, Some(json!({"ok": true}))));
    assert!(matches!(inquiry_answer(&stored(Succeeded, 1), &json!({}), "api", at(0)), Decision::Refuse(_)));
    let c = applied(inquiry_timeout(&stored(Pending, 1), 60, at(0)));
    assert_eq!(c.to, Timeout);
    assert_eq!(applied(cancel(&stored(Pending, 1), "api", at(0))).to, Canceled);
}
