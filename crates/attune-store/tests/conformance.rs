//! The store's conformance suite: every test runs once on SQLite and once on PostgreSQL, each on a
//! database of its own. Time is passed explicitly, so leases, staleness and timeouts are stepped
//! without sleeping.

use std::time::Duration;

use attune_core::{
    lifecycle::Holder, Action, ActionRef, ExecutionStatus, Lease, LeaseState, LogChunk, PackMeta, PackRef,
    Report, RetryPolicy, Runtime, Timestamp, WorkerStatus,
};
use attune_store::{
    EventCursor, ExecutionFilter, NewExecution, NewWorker, Notice, Store, StoreError, StoreOptions, Timer,
};
use attune_testkit::TestDb;
use serde_json::json;
use uuid::Uuid;

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = attune_testkit::TestDb::sqlite();
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = attune_testkit::TestDb::postgres().await;
                    super::$name(&db).await;
                }
            )*
        }
    };
}

conformance!(
    migrations_are_idempotent,
    events_are_enforced_once_and_ticks_fire_once,
    packs_load_by_ref_and_replace_only_when_asked,
    submit_records_history,
    list_filters_and_pages,
    claim_start_complete,
    claim_respects_runtimes_and_order,
    draining_or_stale_workers_get_nothing,
    stale_tokens_are_fenced,
    unstarted_deliveries_return_without_an_attempt,
    cancel_waiting_and_running,
    heartbeat_extends_and_revokes,
    expired_lease_retries_then_abandons,
    stale_workers_become_inactive_and_recover,
    schedule_to_start_timeout_uses_the_seed_error,
    concurrent_claims_never_share_a_task,
    concurrent_endings_are_counted_without_deadlock,
    state_survives_reopen,
    failed_attempts_retry_with_backoff_then_dead_letter,
    release_gives_the_task_back,
    dead_letters_list_and_requeue_once,
    batches_behave_like_single_calls,
    events_are_read_after_a_cursor,
    live_output_is_fenced_and_read_after_a_cursor,
    metrics_snapshot_counts_what_is_stored,
    unclaim_gives_back_only_that_delivery,
    notifications_reach_listeners,
    any_output_is_stored_exactly,
    many_events_about_one_execution_are_decided_in_order,
    sensors_run_on_one_worker_at_a_time,
    selectors_route_and_own_timeouts_expire,
    concurrency_limits_hold_per_key,
    a_full_key_does_not_hold_up_the_keys_behind_it,
    concurrent_claimers_never_exceed_a_limit,
    rate_limits_refill_at_their_rate,
    priorities_go_first_without_starving_the_rest,
    workflow_steps_are_taken_once,
);

const T0: Timestamp = Timestamp(1_800_000_000_000);
const STALENESS: Duration = Duration::from_secs(30);

/// `worker`'s claim to the lease `token`.
fn h(token: &str, worker: Uuid) -> Holder<'_> {
    Holder { token, worker }
}

fn at(secs: u64) -> Timestamp {
    T0.plus(Duration::from_secs(secs))
}

fn acts(a: &[Action]) -> attune_store::PackContent<'_> {
    attune_store::PackContent { actions: a, ..Default::default() }
}

async fn open(db: &TestDb) -> Store {
    Store::open(&StoreOptions::new(db.url.clone())).await.expect("open store")
}

fn action(name: &str, runtime: Runtime, max_attempts: u32) -> Action {
    Action {
        action_ref: ActionRef::parse(&format!("t.{name}")).unwrap(),
        pack: PackRef::parse("t").unwrap(),
        description: String::new(),
        runtime,
        entry_point: "noop".into(),
        parameters: json!({"type": "object", "properties": {"secret": {"type": "string", "secret": true}}}),
        parameter_delivery: Default::default(),
        parameter_format: Default::default(),
        output_format: Default::default(),
        timeout_seconds: None,
        retry: RetryPolicy { max_attempts, backoff_seconds: 0 },
        pack_dir: None,
        pack_digest: None,
        scheduled_timeout_seconds: None,
        worker_selector: Default::default(),
        concurrency: None,
        rate_limit: None,
        priority: 0,
        workflow: None,
        enabled: true,
        output_schema: None,
        dialect: Default::default(),
    }
}

async fn submit(s: &Store, a: &Action, now: Timestamp) -> Uuid {
    let new = NewExecution {
        parameters: json!({"x": 1}),
        max_attempts: a.retry.max_attempts,
        actor: "test".into(),
        ..plain(a)
    };
    s.create_execution(new, now).await.unwrap().id
}

async fn worker(s: &Store, name: &str, runtimes: &[Runtime], now: Timestamp) -> Uuid {
    let w = NewWorker {
        name: name.into(),
        host: "h".into(),
        runtimes: runtimes.to_vec(),
        labels: json!({}),
        concurrency: 4,
        version: "t".into(),
    };
    s.register_worker(&w, now).await.unwrap().id
}

fn ok_report() -> Report {
    Report {
        status: ExecutionStatus::Succeeded,
        exit_code: Some(0),
        stdout: "out".into(),
        stderr: String::new(),
        stdout_encoding: Default::default(),
        stderr_encoding: Default::default(),
        stdout_truncated: false,
        stderr_truncated: false,
        result: Some(json!({"k": "v"})),
        error: None,
    }
}

async fn status(s: &Store, id: Uuid) -> ExecutionStatus {
    s.get_execution(id).await.unwrap().unwrap().status
}

/// Claims one task for `w` and returns its token.
async fn claim_one(s: &Store, w: Uuid, now: Timestamp) -> (Uuid, String) {
    let name = s.get_worker(w).await.unwrap().unwrap().name;
    let t = s
        .claim(w, &name, &[Runtime::Builtin, Runtime::Shell], 1, now, now.plus(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(t.len(), 1, "expected one task");
    (t[0].execution_id, t[0].lease_token.clone())
}

async fn migrations_are_idempotent(db: &TestDb) {
    let s = open(db).await;
    s.close().await;
    let s = open(db).await;
    assert!(s.list_packs().await.unwrap().is_empty());
}

async fn packs_load_by_ref_and_replace_only_when_asked(db: &TestDb) {
    let s = open(db).await;
    let meta = PackMeta {
        pack_ref: PackRef::parse("t").unwrap(),
        label: "T".into(),
        description: "d".into(),
        version: "1".into(),
        dir: Some("/x".into()),
        config: None,
        conf_schema: None,
        notes: Vec::new(),
        digest: None,
    };
    let a = action("a", Runtime::Builtin, 1);
    let b = action("b", Runtime::Shell, 1);
    assert_eq!(
        s.load_pack(&meta, acts(&[a.clone(), b.clone()]), false, at(0)).await.unwrap(),
        Default::default()
    );
    assert_eq!(s.list_actions(None).await.unwrap().len(), 2);
    // Re-load with one action changed and one removed: refused without replace, nothing changes.
    let mut a2 = a.clone();
    a2.description = "changed".into();
    let meta2 = PackMeta { version: "2".into(), ..meta.clone() };
    let r = s.load_pack(&meta2, acts(&[a2.clone()]), false, at(1)).await;
    assert!(
        matches!(&r, Err(StoreError::Conflict { code: "pack_conflict", message }) if message.contains("t.b")),
        "{r:?}"
    );
    assert_eq!(s.list_actions(Some(&meta.pack_ref)).await.unwrap(), vec![a.clone(), b.clone()]);
    // From another directory: a take-over, refused too.
    let moved = PackMeta { dir: Some("/y".into()), ..meta.clone() };
    let r = s.load_pack(&moved, acts(&[a.clone(), b.clone()]), false, at(1)).await;
    assert!(
        matches!(&r, Err(StoreError::Conflict { message, .. }) if message.contains("over from /x")),
        "{r:?}"
    );
    // With replace: done, and said.
    let change = s.load_pack(&meta2, acts(&[a2.clone()]), true, at(1)).await.unwrap();
    assert_eq!((change.previous_dir, change.removed), (None, vec!["t.b".to_string()]));
    let actions = s.list_actions(Some(&meta.pack_ref)).await.unwrap();
    assert_eq!(actions, vec![a2.clone()]);
    assert_eq!(s.get_action(&b.action_ref).await.unwrap(), None);
    let packs = s.list_packs().await.unwrap();
    assert_eq!(packs.len(), 1);
    assert_eq!(packs[0].meta.version, "2");
    assert_eq!(packs[0].actions, 1);
}

async fn submit_records_history(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 2);
    let id = submit(&s, &a, at(0)).await;
    let e = s.get_execution_with_history(id).await.unwrap().unwrap();
    assert_eq!(e.status, ExecutionStatus::Scheduled);
    assert_eq!(e.attempt, 0);
    assert_eq!(e.max_attempts, 2);
    assert_eq!(e.parameters, json!({"x": 1}));
    assert_eq!(e.action.as_ref().unwrap(), &a, "the action is snapshotted");
    let steps: Vec<_> = e.history.iter().map(|h| (h.from, h.to)).collect();
    assert_eq!(
        steps,
        vec![
            (None, ExecutionStatus::Requested),
            (Some(ExecutionStatus::Requested), ExecutionStatus::Scheduled)
        ]
    );
    assert_eq!(s.get_execution(Uuid::now_v7()).await.unwrap(), None);
}

async fn list_filters_and_pages(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    let b = action("b", Runtime::Builtin, 1);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(submit(&s, if i % 2 == 0 { &a } else { &b }, at(i)).await);
    }
    let all = s.list_executions(&ExecutionFilter { limit: 2, ..Default::default() }).await.unwrap();
    assert_eq!(all.items.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[4], ids[3]], "newest first");
    let next = s
        .list_executions(&ExecutionFilter { limit: 2, before: all.next, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(next.items.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[2], ids[1]]);
    let since = s
        .list_executions(&ExecutionFilter { limit: 10, after: Some(ids[2]), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(since.items.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[4], ids[3]], "created after");
    let only_a = s
        .list_executions(&ExecutionFilter {
            limit: 10,
            action_ref: Some(a.action_ref.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(only_a.items.len(), 3);
    assert_eq!(only_a.next, None);
    s.cancel_execution(ids[0], "test", at(9)).await.unwrap();
    let canceled = s
        .list_executions(&ExecutionFilter {
            limit: 10,
            status: Some(ExecutionStatus::Canceled),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(canceled.items.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[0]]);
}

async fn claim_start_complete(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    let w = worker(&s, "w1", &[Runtime::Builtin], at(0)).await;
    let id = submit(&s, &a, at(0)).await;
    let tasks = s.claim(w, "w1", &[Runtime::Builtin], 5, at(1), at(11)).await.unwrap();
    assert_eq!(tasks.len(), 1);
    let t = &tasks[0];
    assert_eq!((t.execution_id, t.attempt, t.max_attempts), (id, 1, 1));
    assert_eq!(t.action, a);
    assert_eq!(status(&s, id).await, ExecutionStatus::Scheduled, "delivered, not yet started");
    let e = s.start(id, h(&t.lease_token, w), at(1), at(31)).await.unwrap();
    assert_eq!((e.status, e.attempt, e.worker.as_deref()), (ExecutionStatus::Running, 1, Some("w1")));
    // Starting again with the same token is harmless.
    assert_eq!(
        s.start(id, h(&t.lease_token, w), at(2), at(32)).await.unwrap().status,
        ExecutionStatus::Running
    );
    assert_eq!(s.get_worker(w).await.unwrap().unwrap().in_flight, 1);
    let e = s.complete(id, h(&t.lease_token, w), &ok_report(), at(3)).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Succeeded);
    assert_eq!(e.result, Some(json!({"k": "v"})));
    assert_eq!(e.stdout, "out");
    assert_eq!(e.finished_at, Some(at(3)));
    let hist = s.execution_history(id).await.unwrap();
    assert_eq!(hist.last().unwrap().to, ExecutionStatus::Succeeded);
    assert_eq!(hist.last().unwrap().actor, "worker:w1");
    assert_eq!(hist.len(), 4);
    // A repeated completion of the same attempt is idempotent and changes nothing.
    let mut other = ok_report();
    other.stdout = "different".into();
    let again = s.complete(id, h(&t.lease_token, w), &other, at(4)).await.unwrap();
    assert_eq!((again.status, again.stdout.as_str()), (ExecutionStatus::Succeeded, "out"));
    assert_eq!(s.execution_history(id).await.unwrap().len(), 4);
    assert_eq!(s.get_worker(w).await.unwrap().unwrap().in_flight, 0);
    let attempts = s.execution_attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!((attempts[0].status, attempts[0].worker.as_deref()), (ExecutionStatus::Succeeded, Some("w1")));
    assert_eq!((attempts[0].started_at, attempts[0].finished_at), (at(1), Some(at(3))));
}

async fn claim_respects_runtimes_and_order(db: &TestDb) {
    let s = open(db).await;
    let shell = action("sh", Runtime::Shell, 1);
    let py = action("py", Runtime::Python, 1);
    let w = worker(&s, "w", &[Runtime::Shell], at(0)).await;
    let first = submit(&s, &shell, at(0)).await;
    let _p = submit(&s, &py, at(1)).await;
    let second = submit(&s, &shell, at(2)).await;
    let tasks = s.claim(w, "w", &[Runtime::Shell], 10, at(3), at(13)).await.unwrap();
    assert_eq!(
        tasks.iter().map(|t| t.execution_id).collect::<Vec<_>>(),
        vec![first, second],
        "FIFO, shell only"
    );
    assert!(s.claim(w, "w", &[Runtime::Shell], 10, at(3), at(13)).await.unwrap().is_empty(), "nothing twice");
}

async fn draining_or_stale_workers_get_nothing(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    submit(&s, &a, at(0)).await;
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    s.drain_worker(w, at(1)).await.unwrap();
    assert!(s.claim(w, "w", &[Runtime::Builtin], 1, at(1), at(11)).await.unwrap().is_empty());
    // A draining worker stays inactive even while it heartbeats for its leases.
    let (st, _) = s.heartbeat(w, &[], at(2), at(32)).await.unwrap();
    assert_eq!(st, WorkerStatus::Inactive);
    let w2 = worker(&s, "w2", &[Runtime::Builtin], at(0)).await;
    s.mark_stale_workers(at(5), "stale").await.unwrap();
    assert!(s.claim(w2, "w2", &[Runtime::Builtin], 1, at(5), at(15)).await.unwrap().is_empty());
}

async fn stale_tokens_are_fenced(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    let id = submit(&s, &a, at(0)).await;
    let (_, token) = claim_one(&s, w, at(0)).await;
    assert!(matches!(s.start(id, h("bogus", w), at(1), at(31)).await, Err(StoreError::StaleLease { .. })));
    s.start(id, h(&token, w), at(1), at(31)).await.unwrap();
    let before = s.get_execution(id).await.unwrap().unwrap();
    let r = s.complete(id, h("bogus", w), &ok_report(), at(2)).await;
    assert!(matches!(r, Err(StoreError::StaleLease { .. })), "{r:?}");
    assert_eq!(s.get_execution(id).await.unwrap().unwrap(), before, "a stale report changes nothing");
    assert!(matches!(
        s.complete(Uuid::now_v7(), h(&token, w), &ok_report(), at(2)).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn unstarted_deliveries_return_without_an_attempt(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    let w1 = worker(&s, "w1", &[Runtime::Builtin], at(0)).await;
    let w2 = worker(&s, "w2", &[Runtime::Builtin], at(0)).await;
    let id = submit(&s, &a, at(0)).await;
    let t1 = s.claim(w1, "w1", &[Runtime::Builtin], 1, at(0), at(10)).await.unwrap();
    assert_eq!(t1.len(), 1);
    assert_eq!(s.expire_deliveries(at(5)).await.unwrap(), 0, "not yet");
    assert_eq!(s.expire_deliveries(at(11)).await.unwrap(), 1);
    let e = s.get_execution(id).await.unwrap().unwrap();
    assert_eq!((e.status, e.attempt, e.worker), (ExecutionStatus::Scheduled, 0, None));
    let t2 = s.claim(w2, "w2", &[Runtime::Builtin], 1, at(11), at(21)).await.unwrap();
    assert_eq!(t2[0].attempt, 1, "a delivery that never started is not an attempt");
    // The first poller's late start is refused.
    assert!(matches!(
        s.start(id, h(&t1[0].lease_token, w1), at(12), at(42)).await,
        Err(StoreError::StaleLease { .. })
    ));
    s.start(id, h(&t2[0].lease_token, w2), at(12), at(42)).await.unwrap();
}

async fn cancel_waiting_and_running(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    let waiting = submit(&s, &a, at(0)).await;
    let e = s.cancel_execution(waiting, "api", at(1)).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Canceled);
    assert_eq!(e.error.unwrap()["canceled_by"], "api");
    assert!(s.claim(w, "w", &[Runtime::Builtin], 1, at(1), at(11)).await.unwrap().is_empty());
    let running = submit(&s, &a, at(2)).await;
    let (_, token) = claim_one(&s, w, at(2)).await;
    s.start(running, h(&token, w), at(2), at(32)).await.unwrap();
    assert_eq!(s.cancel_execution(running, "api", at(3)).await.unwrap().status, ExecutionStatus::Canceling);
    assert_eq!(s.cancel_execution(running, "api", at(3)).await.unwrap().status, ExecutionStatus::Canceling);
    let lease = Lease { execution_id: running, lease_token: token.clone() };
    let (_, states) = s.heartbeat(w, &[lease], at(4), at(34)).await.unwrap();
    assert_eq!(states, vec![(running, LeaseState::Cancel)]);
    let mut r = ok_report();
    r.status = ExecutionStatus::Canceled;
    assert_eq!(s.complete(running, h(&token, w), &r, at(5)).await.unwrap().status, ExecutionStatus::Canceled);
    let err = s.cancel_execution(running, "api", at(6)).await.unwrap_err();
    assert!(matches!(err, StoreError::Transition { .. }), "{err:?}");
    assert!(matches!(
        s.cancel_execution(Uuid::now_v7(), "api", at(6)).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn heartbeat_extends_and_revokes(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    let id = submit(&s, &a, at(0)).await;
    let (_, token) = claim_one(&s, w, at(0)).await;
    s.start(id, h(&token, w), at(0), at(30)).await.unwrap();
    let good = Lease { execution_id: id, lease_token: token.clone() };
    let bad = Lease { execution_id: id, lease_token: "old".into() };
    let (st, states) = s.heartbeat(w, &[good, bad], at(20), at(50)).await.unwrap();
    assert_eq!(st, WorkerStatus::Active);
    assert_eq!(states, vec![(id, LeaseState::Held), (id, LeaseState::Revoked)]);
    assert!(s.expire_leases(at(40), STALENESS).await.unwrap().is_empty(), "extended to 50 by the heartbeat");
    assert_eq!(s.get_worker(w).await.unwrap().unwrap().last_heartbeat, at(20));
    if db.is_postgres() {
        // A heartbeat does not wait for a row that a transition holds: it answers from what it
        // read and leaves that lease's expiry to the next beat.
        use sqlx::Connection;
        let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let mut holding = other.begin().await.unwrap();
        sqlx::query("UPDATE executions SET updated_at = updated_at WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *holding)
            .await
            .unwrap();
        let lease = || Lease { execution_id: id, lease_token: token.clone() };
        let leases = [lease()];
        let beat = s.heartbeat(w, &leases, at(21), at(80));
        let (_, states) = tokio::time::timeout(Duration::from_secs(10), beat)
            .await
            .expect("the heartbeat waited for the row")
            .unwrap();
        assert_eq!(states, vec![(id, LeaseState::Held)]);
        holding.rollback().await.unwrap();
        let (_, states) = s.heartbeat(w, &[lease()], at(22), at(80)).await.unwrap();
        assert_eq!(states, vec![(id, LeaseState::Held)]);
    }
    assert!(matches!(
        s.heartbeat(Uuid::now_v7(), &[], at(20), at(50)).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn expired_lease_retries_then_abandons(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 2);
    let w1 = worker(&s, "w1", &[Runtime::Builtin], at(0)).await;
    let w2 = worker(&s, "w2", &[Runtime::Builtin], at(0)).await;
    let id = submit(&s, &a, at(0)).await;
    let (_, t1) = claim_one(&s, w1, at(0)).await;
    s.start(id, h(&t1, w1), at(0), at(30)).await.unwrap();
    let expired = s.expire_leases(at(31), STALENESS).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!((expired[0].status, expired[0].attempt + 1), (ExecutionStatus::Scheduled, 2), "retried");
    assert_eq!(expired[0].worker.as_deref(), Some("w1"));
    assert_eq!(status(&s, id).await, ExecutionStatus::Scheduled);
    // The failed worker is avoided for the retry; another takes it.
    assert!(s.claim(w1, "w1", &[Runtime::Builtin], 1, at(31), at(41)).await.unwrap().is_empty());
    let (_, t2) = claim_one(&s, w2, at(31)).await;
    let e = s.start(id, h(&t2, w2), at(31), at(61)).await.unwrap();
    assert_eq!(e.attempt, 2);
    // The first attempt's late report is fenced off.
    assert!(matches!(
        s.complete(id, h(&t1, w1), &ok_report(), at(32)).await,
        Err(StoreError::StaleLease { .. })
    ));
    let expired = s.expire_leases(at(62), STALENESS).await.unwrap();
    assert_eq!(expired[0].status, ExecutionStatus::Abandoned);
    let e = s.get_execution(id).await.unwrap().unwrap();
    assert_eq!(e.status, ExecutionStatus::Abandoned);
    let err = e.error.unwrap();
    assert_eq!(err["failed_by"], "worker_heartbeat_monitor");
    assert_eq!(err["worker"], "w2");
    assert!(s.expire_leases(at(100), STALENESS).await.unwrap().is_empty(), "each expiry happens once");
}

async fn stale_workers_become_inactive_and_recover(db: &TestDb) {
    let s = open(db).await;
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    let fresh = worker(&s, "fresh", &[Runtime::Builtin], at(25)).await;
    let changed =
        s.mark_stale_workers(at(30).minus(Duration::from_secs(20)), "no heartbeat for 20s").await.unwrap();
    assert_eq!(changed, vec!["w".to_string()]);
    let ws = s.get_worker(w).await.unwrap().unwrap();
    assert_eq!(
        (ws.status, ws.status_reason.as_deref()),
        (WorkerStatus::Inactive, Some("no heartbeat for 20s"))
    );
    assert_eq!(s.get_worker(fresh).await.unwrap().unwrap().status, WorkerStatus::Active);
    assert!(s.mark_stale_workers(at(10), "x").await.unwrap().is_empty(), "once");
    let (st, _) = s.heartbeat(w, &[], at(31), at(61)).await.unwrap();
    assert_eq!(st, WorkerStatus::Active, "a worker that heartbeats again is active again");
    s.deregister_worker(fresh, at(32)).await.unwrap();
    assert_eq!(s.list_workers(false).await.unwrap().len(), 1);
    assert_eq!(s.list_workers(true).await.unwrap().len(), 2);
}

async fn schedule_to_start_timeout_uses_the_seed_error(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Python, 1);
    let id = submit(&s, &a, at(0)).await;
    assert!(s.fail_unstarted(Duration::from_secs(300), at(299)).await.unwrap().is_empty());
    let failed = s.fail_unstarted(Duration::from_secs(300), at(320)).await.unwrap();
    assert_eq!(failed.len(), 1);
    let e = s.get_execution(id).await.unwrap().unwrap();
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert_eq!(
        e.error.unwrap(),
        json!({
            "error": "Execution timeout: worker did not pick up task within 300 seconds (scheduled for 320 seconds)",
            "failed_by": "execution_timeout_monitor",
            "timeout_seconds": 300,
            "age_seconds": 320,
            "original_status": "scheduled"
        })
    );
    let h = s.execution_history(id).await.unwrap();
    assert_eq!(h.last().unwrap().actor, "execution_timeout_monitor");
}

async fn concurrent_claims_never_share_a_task(db: &TestDb) {
    let s = std::sync::Arc::new(open(db).await);
    let a = action("a", Runtime::Builtin, 1);
    let n = 60;
    for i in 0..n {
        submit(&s, &a, at(i)).await;
    }
    let mut set = tokio::task::JoinSet::new();
    for k in 0..6 {
        let s = s.clone();
        set.spawn(async move {
            let w = worker(&s, &format!("w{k}"), &[Runtime::Builtin], at(0)).await;
            let mut got = Vec::new();
            loop {
                let t = s.claim(w, "w", &[Runtime::Builtin], 3, at(100), at(110)).await.unwrap();
                if t.is_empty() {
                    return got;
                }
                got.extend(t.into_iter().map(|t| t.execution_id));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap());
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!((total, all.len()), (n as usize, n as usize), "every task delivered exactly once");
}

/// Batches of reports ending executions with different outcomes, applied concurrently, each in one
/// transaction: every one is applied (no deadlock over the per-minute counters) and counted once.
async fn concurrent_endings_are_counted_without_deadlock(db: &TestDb) {
    let s = std::sync::Arc::new(open(db).await);
    let a = action("a", Runtime::Builtin, 1);
    let n = 240;
    for _ in 0..n {
        submit(&s, &a, at(0)).await;
    }
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    let tasks = s.claim(w, "w", &[Runtime::Builtin], n, at(1), at(100)).await.unwrap();
    assert_eq!(tasks.len(), n as usize);
    let leases: Vec<(Uuid, String)> = tasks.iter().map(|t| (t.execution_id, t.lease_token.clone())).collect();
    let (started, _) = s.start_many(&leases, w, at(1), at(100)).await.unwrap();
    assert!(started.iter().all(|(_, r)| r.is_ok()));
    let mut set = tokio::task::JoinSet::new();
    for (k, chunk) in leases.chunks(30).enumerate() {
        let s = s.clone();
        let items: Vec<(Uuid, String, Report)> = chunk
            .iter()
            .enumerate()
            .map(|(i, (id, token))| {
                let report = if (i + k) % 2 == 0 { ok_report() } else { failed_report(1) };
                (*id, token.clone(), report)
            })
            .collect();
        set.spawn(async move { s.complete_many(&items, w, at(2)).await });
    }
    while let Some(r) = set.join_next().await {
        let done = r.unwrap().unwrap_or_else(|e| panic!("a batch failed: {e}"));
        assert!(done.iter().all(|(_, r)| r.as_ref().is_ok_and(|d| d.status().is_terminal())), "{done:?}");
    }
    let minute = at(2).0 / 60_000 * 60_000;
    assert_eq!(
        s.finished_per_minute(Timestamp(minute), 1).await.unwrap(),
        vec![(minute, ExecutionStatus::Failed, 120), (minute, ExecutionStatus::Succeeded, 120)]
    );
}

async fn state_survives_reopen(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    let waiting = submit(&s, &a, at(0)).await;
    let running = submit(&s, &a, at(1)).await;
    let tasks = s.claim(w, "w", &[Runtime::Builtin], 2, at(2), at(12)).await.unwrap();
    let t = tasks.iter().find(|t| t.execution_id == running).unwrap().lease_token.clone();
    s.start(running, h(&t, w), at(2), at(32)).await.unwrap();
    s.close().await;
    let s = open(db).await;
    assert_eq!(status(&s, waiting).await, ExecutionStatus::Scheduled);
    assert_eq!(status(&s, running).await, ExecutionStatus::Running);
    // The running attempt's worker can still finish it after the restart.
    assert_eq!(
        s.complete(running, h(&t, w), &ok_report(), at(3)).await.unwrap().status,
        ExecutionStatus::Succeeded
    );
}

fn failed_report(code: i32) -> Report {
    Report {
        status: ExecutionStatus::Failed,
        exit_code: Some(code),
        stdout: String::new(),
        stderr: "boom".into(),
        stdout_encoding: Default::default(),
        stderr_encoding: Default::default(),
        stdout_truncated: false,
        stderr_truncated: false,
        result: None,
        error: Some(json!({"error": format!("exit code {code}")})),
    }
}

async fn failed_attempts_retry_with_backoff_then_dead_letter(db: &TestDb) {
    let s = open(db).await;
    let mut a = action("a", Runtime::Builtin, 2);
    a.retry.backoff_seconds = 5;
    let w1 = worker(&s, "w1", &[Runtime::Builtin], at(0)).await;
    let w2 = worker(&s, "w2", &[Runtime::Builtin], at(0)).await;
    let id = submit(&s, &a, at(0)).await;
    let (_, t1) = claim_one(&s, w1, at(0)).await;
    s.start(id, h(&t1, w1), at(0), at(30)).await.unwrap();
    let e = s.complete(id, h(&t1, w1), &failed_report(1), at(1)).await.unwrap();
    assert_eq!(
        (e.status, e.attempt, e.exit_code),
        (ExecutionStatus::Scheduled, 1, Some(1)),
        "back in the queue"
    );
    assert!(
        s.claim(w2, "w2", &[Runtime::Builtin], 1, at(3), at(13)).await.unwrap().is_empty(),
        "backoff honoured"
    );
    assert!(
        s.claim(w1, "w1", &[Runtime::Builtin], 1, at(7), at(17)).await.unwrap().is_empty(),
        "failed worker avoided"
    );
    let (_, t2) = claim_one(&s, w2, at(7)).await;
    assert_eq!(s.start(id, h(&t2, w2), at(7), at(37)).await.unwrap().attempt, 2);
    let e = s.complete(id, h(&t2, w2), &failed_report(2), at(8)).await.unwrap();
    assert_eq!((e.status, e.exit_code), (ExecutionStatus::Failed, Some(2)));
    let attempts = s.execution_attempts(id).await.unwrap();
    let summary: Vec<_> =
        attempts.iter().map(|a| (a.attempt, a.worker.clone().unwrap(), a.status, a.exit_code)).collect();
    assert_eq!(
        summary,
        vec![
            (1, "w1".to_string(), ExecutionStatus::Failed, Some(1)),
            (2, "w2".to_string(), ExecutionStatus::Failed, Some(2))
        ]
    );
    let dls = s.list_dead_letters(false, 10).await.unwrap();
    assert_eq!(dls.len(), 1);
    assert_eq!((dls[0].execution_id, dls[0].cause.as_str()), (id, "retries_exhausted"));
    // An action without a retry policy that fails is just failed, not a dead letter.
    let plain = action("p", Runtime::Builtin, 1);
    let pid = submit(&s, &plain, at(9)).await;
    let (_, t) = claim_one(&s, w1, at(9)).await;
    s.start(pid, h(&t, w1), at(9), at(39)).await.unwrap();
    assert_eq!(
        s.complete(pid, h(&t, w1), &failed_report(1), at(10)).await.unwrap().status,
        ExecutionStatus::Failed
    );
    assert_eq!(s.list_dead_letters(false, 10).await.unwrap().len(), 1);
}

async fn release_gives_the_task_back(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 2);
    let w1 = worker(&s, "w1", &[Runtime::Builtin], at(0)).await;
    let id = submit(&s, &a, at(0)).await;
    let (_, t1) = claim_one(&s, w1, at(0)).await;
    s.start(id, h(&t1, w1), at(0), at(30)).await.unwrap();
    let before = s.get_execution(id).await.unwrap().unwrap();
    let stale = s.release(id, h("stale", w1), at(1)).await;
    assert!(matches!(stale, Err(StoreError::StaleLease { .. })), "a stale token releases nothing: {stale:?}");
    assert_eq!(s.get_execution(id).await.unwrap().unwrap(), before);
    let r = s.release(id, h(&t1, w1), at(1)).await.unwrap().unwrap();
    assert_eq!((r.status, r.attempt + 1), (ExecutionStatus::Scheduled, 2), "retried");
    let e = s.get_execution(id).await.unwrap().unwrap();
    assert_eq!(
        (e.status, e.error.unwrap()["failed_by"].as_str()),
        (ExecutionStatus::Scheduled, Some("worker_shutdown"))
    );
    assert_eq!(s.execution_attempts(id).await.unwrap()[0].status, ExecutionStatus::Abandoned);
    let again = s.release(id, h(&t1, w1), at(2)).await;
    assert!(matches!(again, Err(StoreError::StaleLease { .. })), "only once: {again:?}");
}

async fn dead_letters_list_and_requeue_once(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Python, 1);
    let id = submit(&s, &a, at(0)).await;
    s.fail_unstarted(Duration::from_secs(10), at(11)).await.unwrap();
    let b = action("b", Runtime::Builtin, 1);
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    let bid = submit(&s, &b, at(1)).await;
    let (_, t) = claim_one(&s, w, at(1)).await;
    s.start(bid, h(&t, w), at(1), at(31)).await.unwrap();
    s.expire_leases(at(40), STALENESS).await.unwrap();
    let dls = s.list_dead_letters(false, 10).await.unwrap();
    let causes: Vec<_> = dls.iter().map(|d| (d.execution_id, d.cause.as_str())).collect();
    assert_eq!(causes, vec![(bid, "abandoned"), (id, "queue_ttl")], "newest first, with causes");
    assert_eq!(dls[1].error.as_ref().unwrap()["failed_by"], "execution_timeout_monitor");
    // Requeueing is a new execution whose insert marks the dead letter, in one transaction; a
    // second requeue of the same dead letter is refused and creates nothing.
    let old = s.get_execution(id).await.unwrap().unwrap();
    let requeue = |dl: Uuid| NewExecution {
        action: old.action.clone().unwrap(),
        parameters: old.parameters.clone(),
        timeout_seconds: old.timeout_seconds,
        max_attempts: old.max_attempts,
        actor: "dlq_requeue".into(),
        parent: Some(old.id),
        trace_id: None,
        enforces: None,
        requeue_of: Some(dl),
        concurrency: None,
        rate: None,
        child_key: None,
    };
    assert_eq!(s.dead_letter_of(id).await.unwrap().map(|d| d.id), Some(dls[1].id));
    let new = s.create_execution(requeue(dls[1].id), at(50)).await.unwrap();
    assert!(s.dead_letter_of(id).await.unwrap().is_none(), "a requeued dead letter is done");
    assert_eq!((new.status, new.parent, new.attempt), (ExecutionStatus::Scheduled, Some(id), 0));
    assert_eq!(new.parameters, json!({"x": 1}));
    let count =
        s.list_executions(&ExecutionFilter { limit: 100, ..Default::default() }).await.unwrap().items.len();
    let twice = s.create_executions(vec![requeue(dls[1].id), requeue(Uuid::now_v7())], at(51)).await.unwrap();
    assert!(matches!(twice[0], Err(StoreError::AlreadyDone(_))), "{:?}", twice[0]);
    assert!(matches!(twice[1], Err(StoreError::NotFound { .. })), "{:?}", twice[1]);
    assert_eq!(
        s.list_executions(&ExecutionFilter { limit: 100, ..Default::default() }).await.unwrap().items.len(),
        count,
        "refused requeues create nothing"
    );
    assert_eq!(s.list_dead_letters(false, 10).await.unwrap().len(), 1, "requeued ones are hidden");
    let all = s.list_dead_letters(true, 10).await.unwrap();
    assert_eq!(all.iter().find(|d| d.execution_id == id).unwrap().requeued_as, Some(new.id));
    assert_eq!(status(&s, id).await, ExecutionStatus::Failed, "the original stays terminal");
}

async fn batches_behave_like_single_calls(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 2);
    let news: Vec<NewExecution> = (0..5)
        .map(|i| NewExecution {
            action: a.clone(),
            parameters: json!({"i": i}),
            timeout_seconds: Some(9),
            max_attempts: 2,
            actor: "api".into(),
            parent: None,
            trace_id: None,
            enforces: None,
            requeue_of: None,
            concurrency: None,
            rate: None,
            child_key: None,
        })
        .collect();
    let created: Vec<_> =
        s.create_executions(news, at(0)).await.unwrap().into_iter().map(Result::unwrap).collect();
    assert_eq!(created.len(), 5);
    for (i, e) in created.iter().enumerate() {
        let stored = s.get_execution_with_history(e.id).await.unwrap().unwrap();
        assert_eq!((stored.parameters.clone(), stored.timeout_seconds), (json!({"i": i}), Some(9)));
        assert_eq!(stored.history.len(), 2);
    }
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    let tasks = s.claim(w, "w", &[Runtime::Builtin], 5, at(1), at(11)).await.unwrap();
    let leases: Vec<Lease> = tasks
        .iter()
        .map(|t| Lease { execution_id: t.execution_id, lease_token: t.lease_token.clone() })
        .collect();
    let mut with_stale: Vec<(Uuid, String)> =
        leases.iter().map(|l| (l.execution_id, l.lease_token.clone())).collect();
    with_stale.push((created[0].id, "stale".into()));
    let (started, waited) = s.start_many(&with_stale, w, at(1), at(31)).await.unwrap();
    assert_eq!(waited, vec![Duration::from_secs(1); 5], "each waited since it was scheduled at 0");
    assert_eq!(started.len(), 6);
    assert!(started[..5].iter().all(|(_, r)| matches!(r, Ok(ExecutionStatus::Running))), "{started:?}");
    assert!(matches!(started[5].1, Err(StoreError::StaleLease { .. })));
    let tok = leases[0].lease_token.clone();
    let items = vec![
        (leases[0].execution_id, tok.clone(), ok_report()),
        (leases[1].execution_id, tok.clone(), failed_report(1)),
        (leases[2].execution_id, "stale".to_string(), ok_report()),
        (leases[0].execution_id, tok.clone(), ok_report()),
    ];
    let done = s.complete_many(&items, w, at(2)).await.unwrap();
    assert_eq!(done[0].1.as_ref().unwrap().status(), ExecutionStatus::Succeeded);
    assert_eq!(done[1].1.as_ref().unwrap().status(), ExecutionStatus::Scheduled, "retried: 1 of 2 attempts");
    assert!(matches!(done[2].1, Err(StoreError::StaleLease { .. })));
    assert_eq!(done[3].1.as_ref().unwrap().status(), ExecutionStatus::Succeeded, "a repeat is idempotent");
    assert_eq!(
        status(&s, leases[2].execution_id).await,
        ExecutionStatus::Running,
        "the stale report changed nothing"
    );
    let h = s.execution_history(leases[0].execution_id).await.unwrap();
    assert_eq!(h.iter().filter(|x| x.to == ExecutionStatus::Succeeded).count(), 1);
}

async fn events_are_read_after_a_cursor(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    let start = s.event_cursor_now().await.unwrap();
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    let id = submit(&s, &a, at(1)).await;
    let (_, token) = claim_one(&s, w, at(2)).await;
    s.start(id, h(&token, w), at(3), at(33)).await.unwrap();
    let far = at(1_000);
    let (events, end) = s.events_after(start, 100, Duration::ZERO, far).await.unwrap();
    let names: Vec<(&str, &str)> = events.iter().map(|e| (e.kind, e.name.as_str())).collect();
    assert_eq!(
        names,
        vec![
            ("worker", "WorkerRegistered"),
            ("execution", "ExecutionRequested"),
            ("execution", "ExecutionScheduled"),
            ("execution", "ExecutionRunning"),
        ],
        "both logs, interleaved by time"
    );
    assert_eq!(events[3].execution_id.as_deref(), Some(id.to_string().as_str()));
    assert_eq!((events[3].actor.as_deref(), events[3].attempt), (Some("worker:w"), Some(1)));
    assert_eq!(events.last().unwrap().cursor, end, "the last event's cursor is where the read ended");
    // Resuming after an event gives exactly what followed it.
    let (rest, _) = s.events_after(events[1].cursor, 100, Duration::ZERO, far).await.unwrap();
    assert_eq!(
        rest.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        vec!["ExecutionScheduled", "ExecutionRunning"]
    );
    s.complete(id, h(&token, w), &ok_report(), at(4)).await.unwrap();
    let (done, _) = s.events_after(end, 100, Duration::ZERO, far).await.unwrap();
    assert_eq!(done.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), vec!["ExecutionCompleted"]);
    assert_eq!(done[0].status.as_deref(), Some("succeeded"));
    // On PostgreSQL, rows younger than the settle time are held back (ids are assigned before
    // commit); SQLite has one writer and holds nothing back.
    let (young, _) = s.events_after(end, 100, Duration::from_secs(1), at(4)).await.unwrap();
    assert_eq!(young.len(), if db.is_postgres() { 0 } else { 1 });
    assert!(EventCursor::parse(&end.to_string()) == Some(end) && EventCursor::parse("x-1").is_none());
}

async fn live_output_is_fenced_and_read_after_a_cursor(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    let other = worker(&s, "other", &[Runtime::Builtin], at(0)).await;
    let id = submit(&s, &a, at(0)).await;
    let (_, token) = claim_one(&s, w, at(0)).await;
    let chunk = |stream: &str, text: &str| LogChunk {
        seq: 0,
        stream: stream.into(),
        at: at(0),
        text: text.into(),
        encoding: Default::default(),
    };
    let refused = s.append_logs(id, h(&token, w), &[chunk("stdout", "early\n")], at(1)).await;
    assert!(matches!(refused, Err(StoreError::StaleLease { .. })), "not started yet: {refused:?}");
    s.start(id, h(&token, w), at(1), at(31)).await.unwrap();
    s.append_logs(id, h(&token, w), &[chunk("stdout", "one\n"), chunk("stderr", "two\n")], at(2))
        .await
        .unwrap();
    s.append_logs(id, h(&token, w), &[chunk("stdout", "three\n")], at(3)).await.unwrap();
    let r = s.append_logs(id, h("stale", w), &[chunk("stdout", "forged\n")], at(3)).await;
    assert!(matches!(r, Err(StoreError::StaleLease { .. })), "a stale token: {r:?}");
    // Another worker holding the right token is not a stale holder but an impostor.
    let r = s.append_logs(id, h(&token, other), &[chunk("stdout", "forged\n")], at(3)).await;
    assert!(matches!(r, Err(StoreError::Forbidden(_))), "another worker: {r:?}");
    let all = s.logs_after(id, 0, 100).await.unwrap();
    let texts: Vec<(&str, &str)> = all.iter().map(|c| (c.stream.as_str(), c.text.as_str())).collect();
    assert_eq!(texts, vec![("stdout", "one\n"), ("stderr", "two\n"), ("stdout", "three\n")]);
    assert!(all.windows(2).all(|p| p[0].seq < p[1].seq), "cursors increase");
    let rest = s.logs_after(id, all[0].seq, 100).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(s.logs_after(id, all[0].seq, 1).await.unwrap().len(), 1, "limit");
    assert!(s.logs_after(Uuid::now_v7(), 0, 10).await.unwrap().is_empty());
}

async fn metrics_snapshot_counts_what_is_stored(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    let py = action("py", Runtime::Python, 1);
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    let id = submit(&s, &a, at(0)).await;
    submit(&s, &py, at(5)).await;
    submit(&s, &py, at(7)).await;
    let (_, token) = claim_one(&s, w, at(8)).await;
    s.start(id, h(&token, w), at(8), at(38)).await.unwrap();
    let snap = s.metrics_snapshot().await.unwrap();
    let mut execs = snap.executions.clone();
    execs.sort();
    assert_eq!(execs, vec![("t.a".into(), "running".into(), 1), ("t.py".into(), "scheduled".into(), 2)]);
    assert_eq!(
        snap.queues,
        vec![("python".to_string(), 2, Some(at(5)))],
        "depth and oldest of waiting tasks"
    );
    assert!(snap.dead_letters.is_empty());
    assert_eq!(s.queue_depths().await.unwrap(), snap.queues);
    s.fail_unstarted(Duration::from_secs(1), at(20)).await.unwrap();
    let snap = s.metrics_snapshot().await.unwrap();
    assert_eq!(snap.dead_letters, vec![("queue_ttl".to_string(), 2)]);
    assert!(snap.queues.is_empty());
    assert!(s.queue_depths().await.unwrap().is_empty());
    // The two failed at(20); the running one is not counted until it ends.
    let minute = at(20).0 / 60_000 * 60_000;
    let ended = s.finished_per_minute(Timestamp(minute - 60_000), 2).await.unwrap();
    assert_eq!(ended, vec![(minute, ExecutionStatus::Failed, 2)]);
    assert!(
        s.finished_per_minute(Timestamp(minute + 60_000), 3).await.unwrap().is_empty(),
        "only that window"
    );
    assert_eq!(s.count_unfinished().await.unwrap(), vec![(ExecutionStatus::Running, 1)]);
    // Counts of one minute add up across the statements that ended them.
    s.complete(id, h(&token, w), &ok_report(), at(30)).await.unwrap();
    let failed = s.fail_unstarted(Duration::from_secs(1), at(31)).await.unwrap();
    assert!(failed.is_empty(), "nothing else was waiting");
    let ended = s.finished_per_minute(Timestamp(minute), 1).await.unwrap();
    assert_eq!(ended, vec![(minute, ExecutionStatus::Failed, 2), (minute, ExecutionStatus::Succeeded, 1)]);
    // Counts older than the cut are pruned, newer ones kept.
    assert_eq!(s.prune_ended_counts(Timestamp(minute)).await.unwrap(), 0);
    assert!(s.prune_ended_counts(Timestamp(minute + 60_000)).await.unwrap() >= 1);
    assert!(s.finished_per_minute(Timestamp(minute), 1).await.unwrap().is_empty());
}

async fn unclaim_gives_back_only_that_delivery(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    let w1 = worker(&s, "w1", &[Runtime::Builtin], at(0)).await;
    let w2 = worker(&s, "w2", &[Runtime::Builtin], at(0)).await;
    let ids = [submit(&s, &a, at(0)).await, submit(&s, &a, at(0)).await];
    let tasks = s.claim(w1, "w1", &[Runtime::Builtin], 5, at(1), at(11)).await.unwrap();
    assert_eq!(tasks.len(), 2);
    let token = tasks[0].lease_token.clone();
    assert_eq!(s.unclaim(&ids, "another", at(2)).await.unwrap(), 0, "another delivery's token");
    assert!(s.claim(w2, "w2", &[Runtime::Builtin], 5, at(2), at(12)).await.unwrap().is_empty());
    assert_eq!(s.unclaim(&ids, &token, at(2)).await.unwrap(), 2);
    let again = s.claim(w2, "w2", &[Runtime::Builtin], 5, at(3), at(13)).await.unwrap();
    assert_eq!(again.len(), 2, "back in the queue at once");
    assert!(again.iter().all(|t| t.attempt == 1), "a delivery never started is not an attempt");
    // Once started, an execution cannot be unclaimed.
    s.start(ids[0], h(&again[0].lease_token, w2), at(4), at(34)).await.unwrap();
    assert_eq!(s.unclaim(&ids[..1], &again[0].lease_token, at(5)).await.unwrap(), 0);
    assert_eq!(status(&s, ids[0]).await, ExecutionStatus::Running);
}

async fn notifications_reach_listeners(db: &TestDb) {
    let s = open(db).await;
    let listener = s.listener().await.unwrap();
    if !db.is_postgres() {
        // One server process on SQLite: nothing to tell, nothing to hear.
        assert!(listener.is_none());
        s.notify_work().await.unwrap();
        s.notify_changed(&[Uuid::now_v7()]).await.unwrap();
        return;
    }
    let mut l = listener.expect("a listener on PostgreSQL");
    s.notify_work().await.unwrap();
    assert_eq!(recv(&mut l).await, Notice::Work);
    // More ids than one notification carries arrive in several, in order.
    let ids: Vec<Uuid> = (0..400).map(|_| Uuid::now_v7()).collect();
    s.notify_changed(&ids).await.unwrap();
    let mut heard = Vec::new();
    while heard.len() < ids.len() {
        match recv(&mut l).await {
            Notice::Changed(v) => heard.extend(v),
            Notice::Work => panic!("unexpected work notice"),
        }
    }
    assert_eq!(heard, ids);
}

async fn recv(l: &mut attune_store::Listener) -> Notice {
    tokio::time::timeout(Duration::from_secs(10), l.recv()).await.expect("a notice within 10 s").unwrap()
}

async fn any_output_is_stored_exactly(db: &TestDb) {
    use attune_core::output::{decode, encode, OutputEncoding};
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    let mut cases = vec![
        (b"a\0b\xff\xfe".to_vec(), "binary"),
        (vec![0u8; 3], "only NUL"),
        ("héllo\ttab\n".as_bytes().to_vec(), "text"),
    ];
    cases.push(((0..=255u8).cycle().take(100_000).collect(), "every byte value"));
    for (bytes, what) in cases {
        let id = submit(&s, &a, at(0)).await;
        let (_, token) = claim_one(&s, w, at(0)).await;
        s.start(id, h(&token, w), at(0), at(30)).await.unwrap();
        let (text, enc) = encode(&bytes);
        let mut r = ok_report();
        (r.stdout, r.stdout_encoding) = (text.clone(), enc);
        (r.stderr, r.stderr_encoding) = (text, enc);
        s.complete(id, h(&token, w), &r, at(1)).await.unwrap();
        let e = s.get_execution(id).await.unwrap().unwrap();
        assert_eq!(decode(&e.stdout, e.stdout_encoding).unwrap(), bytes, "{what}");
        assert_eq!(decode(&e.stderr, e.stderr_encoding).unwrap(), bytes, "{what}");
    }
    // A report that sends NUL as "text" is stored as base64 of the same bytes, not refused.
    let id = submit(&s, &a, at(0)).await;
    let (_, token) = claim_one(&s, w, at(0)).await;
    s.start(id, h(&token, w), at(0), at(30)).await.unwrap();
    let mut r = ok_report();
    r.stdout = "x\0y".into();
    s.complete(id, h(&token, w), &r, at(1)).await.unwrap();
    let e = s.get_execution(id).await.unwrap().unwrap();
    assert_eq!((e.stdout.as_str(), e.stdout_encoding), ("eAB5", OutputEncoding::Base64));
    // Live output chunks too.
    let id = submit(&s, &a, at(2)).await;
    let (_, token) = claim_one(&s, w, at(2)).await;
    s.start(id, h(&token, w), at(2), at(32)).await.unwrap();
    let (text, encoding) = encode(b"\x00\x01\xff");
    let chunk = LogChunk { seq: 0, stream: "stdout".into(), at: at(2), text, encoding };
    s.append_logs(id, h(&token, w), &[chunk], at(3)).await.unwrap();
    let got = s.logs_after(id, 0, 10).await.unwrap();
    assert_eq!(decode(&got[0].text, got[0].encoding).unwrap(), b"\x00\x01\xff");
}

async fn many_events_about_one_execution_are_decided_in_order(db: &TestDb) {
    let s = open(db).await;
    let a = action("a", Runtime::Builtin, 1);
    let w = worker(&s, "w", &[Runtime::Builtin], at(0)).await;
    let id = submit(&s, &a, at(0)).await;
    let (_, token) = claim_one(&s, w, at(0)).await;
    // A stale start, the real one, and many repeats: each decided on what the previous left.
    let mut leases = vec![(id, "stale".to_string()), (id, token.clone())];
    leases.extend((0..300).map(|_| (id, token.clone())));
    let (started, _) = s.start_many(&leases, w, at(1), at(31)).await.unwrap();
    assert!(matches!(started[0].1, Err(StoreError::StaleLease { .. })));
    assert!(started[1..].iter().all(|(_, r)| matches!(r, Ok(ExecutionStatus::Running))));
    let mut items: Vec<_> = (0..300).map(|_| (id, token.clone(), ok_report())).collect();
    items.push((Uuid::now_v7(), token.clone(), ok_report()));
    let done = s.complete_many(&items, w, at(2)).await.unwrap();
    let applied = done.iter().filter(|(_, r)| matches!(r, Ok(attune_store::Driven::Applied(_)))).count();
    assert_eq!(applied, 1, "the first report applies, the repeats change nothing");
    assert!(done[..300].iter().all(|(_, r)| r.as_ref().unwrap().status() == ExecutionStatus::Succeeded));
    assert!(matches!(done[300].1, Err(StoreError::NotFound { .. })));
    assert_eq!(s.execution_history(id).await.unwrap().len(), 4);
}

/// Issue 12's exactly once, by data: one enforcement per (event, rule) whichever way it is
/// recorded and however often, and one firing per timer tick.
async fn events_are_enforced_once_and_ticks_fire_once(db: &TestDb) {
    use attune_core::rules::{Enforcement, Enforcing, Outcome, TriggerEvent};
    let s = open(db).await;
    let a = action("echo", Runtime::Shell, 1);
    let event = TriggerEvent {
        id: Uuid::now_v7(),
        trigger: ActionRef::parse("core.webhook").unwrap(),
        trigger_parameters: json!({"name": "alerts"}),
        payload: json!({"status": "failed"}),
        source: "webhook:alerts".into(),
        late: false,
        created_at: at(0),
        processed_at: None,
    };
    s.insert_events(std::slice::from_ref(&event)).await.unwrap();
    assert_eq!(s.unprocessed_events(10).await.unwrap().len(), 1);
    let rule = ActionRef::parse("ops.restart").unwrap();
    let new = |enforcement: Uuid| NewExecution {
        action: a.clone(),
        parameters: json!({}),
        timeout_seconds: None,
        max_attempts: 1,
        actor: "rule:ops.restart".into(),
        parent: None,
        trace_id: None,
        enforces: Some(Enforcing { id: enforcement, event_id: event.id, rule_ref: rule.clone() }),
        requeue_of: None,
        concurrency: None,
        rate: None,
        child_key: None,
    };
    let first = s.create_execution(new(Uuid::now_v7()), at(1)).await.unwrap();
    let again = s.create_execution(new(Uuid::now_v7()), at(2)).await;
    assert!(matches!(again, Err(StoreError::AlreadyDone(_))), "{again:?}");
    let other = Enforcement {
        id: Uuid::now_v7(),
        event_id: event.id,
        rule_ref: rule.clone(),
        outcome: Outcome::NotMatched,
        execution_id: None,
        reason: Some("late duplicate".into()),
        created_at: at(3),
    };
    assert_eq!(
        s.record_enforcements(std::slice::from_ref(&other)).await.unwrap(),
        0,
        "the pair is enforced already"
    );
    let second_rule = Enforcement { rule_ref: ActionRef::parse("ops.other").unwrap(), ..other.clone() };
    assert_eq!(s.record_enforcements(&[second_rule, other.clone()]).await.unwrap(), 1, "only the new pair");
    let all = s.enforcements_of(event.id).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!((all[1].outcome, all[1].execution_id), (Outcome::Matched, Some(first.id)));
    assert_eq!(s.get_execution(first.id).await.unwrap().unwrap().enforcement, Some(all[1].id.to_string()));
    let count = s.list_executions(&ExecutionFilter { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(count.items.len(), 1, "one execution");
    s.mark_events_processed(&[event.id], at(4)).await.unwrap();
    assert!(s.unprocessed_events(10).await.unwrap().is_empty());

    let timer = attune_store::Timer {
        key: "core.interval:{\"seconds\":2}".into(),
        trigger: ActionRef::parse("core.interval").unwrap(),
        parameters: json!({"seconds": 2}),
        next_fire_at: at(10),
    };
    s.sync_timers(std::slice::from_ref(&timer)).await.unwrap();
    s.sync_timers(&[Timer { next_fire_at: at(99), ..timer.clone() }]).await.unwrap();
    assert_eq!(s.due_timers(at(10)).await.unwrap(), vec![timer.clone()], "a sync keeps the next tick");
    let tick = |n: u64| TriggerEvent {
        id: Uuid::now_v7(),
        trigger: timer.trigger.clone(),
        created_at: at(n),
        ..event.clone()
    };
    assert!(s.fire_timer(&timer.key, at(10), Some(at(12)), &tick(10)).await.unwrap());
    assert!(!s.fire_timer(&timer.key, at(10), Some(at(12)), &tick(10)).await.unwrap(), "taken once");
    assert_eq!(s.next_timer_at().await.unwrap(), Some(at(12)));
    assert_eq!(s.unprocessed_events(10).await.unwrap().len(), 1, "one event for the tick");
    s.sync_timers(&[]).await.unwrap();
    assert_eq!(s.next_timer_at().await.unwrap(), None, "no rule, no timer");
}

/// Issue 12: a sensor is held by one worker at a time under a lease its heartbeats renew; it moves
/// when the lease lapses, waits out a doubling backoff after each exit, and a worker that lost it
/// can store nothing more; disabling or changing it takes the lease back.
async fn sensors_run_on_one_worker_at_a_time(db: &TestDb) {
    use attune_core::{
        rules::TriggerEvent,
        sensors::{Sensor, SensorStatus},
    };
    let s = open(db).await;
    let sensor = |parameters: serde_json::Value| Sensor {
        sensor_ref: ActionRef::parse("t.watch").unwrap(),
        pack: PackRef::parse("t").unwrap(),
        description: String::new(),
        runtime: Runtime::Python,
        entry_point: "watch.py".into(),
        trigger_types: vec![ActionRef::parse("t.seen").unwrap()],
        parameters,
        enabled: true,
        pack_dir: None,
        pack_digest: None,
    };
    let meta = PackMeta {
        pack_ref: PackRef::parse("t").unwrap(),
        label: "t".into(),
        description: String::new(),
        version: "1".into(),
        dir: None,
        config: None,
        conf_schema: None,
        notes: Vec::new(),
        digest: None,
    };
    let v1 = [sensor(json!({"n": 1}))];
    let load = |sensors| attune_store::PackContent { sensors, ..Default::default() };
    s.load_pack(&meta, load(&v1), false, at(0)).await.unwrap();
    let shell_only = worker(&s, "shell", &[Runtime::Shell], at(0)).await;
    let w1 = worker(&s, "w1", &[Runtime::Shell, Runtime::Python], at(0)).await;
    let w2 = worker(&s, "w2", &[Runtime::Python], at(0)).await;
    let until = |t: u64| at(t).plus(STALENESS);

    assert!(
        s.sensor_heartbeat(shell_only, &[], true, at(1), until(1)).await.unwrap().start.is_none(),
        "no python"
    );
    assert!(s.sensor_heartbeat(w1, &[], false, at(1), until(1)).await.unwrap().start.is_none(), "draining");
    let got = s.sensor_heartbeat(w1, &[], true, at(1), until(1)).await.unwrap().start.expect("w1 takes it");
    assert!(!got.restart);
    let t1 = got.task.lease_token.clone();
    assert!(s.sensor_heartbeat(w2, &[], true, at(2), until(2)).await.unwrap().start.is_none(), "held by w1");
    let held = vec![("t.watch".to_owned(), t1.clone())];
    let beat = s.sensor_heartbeat(w1, &held, true, at(20), until(20)).await.unwrap();
    assert_eq!(beat.held, vec![("t.watch".to_owned(), true)]);
    assert!(beat.start.is_none());
    let st = s.get_sensor("t.watch", at(21)).await.unwrap().unwrap();
    assert_eq!((st.status, st.worker_name.as_deref()), (SensorStatus::Running, Some("w1")));

    // Events under the lease are stored and counted; malformed lines counted.
    let ev = |t: u64| TriggerEvent {
        id: Uuid::now_v7(),
        trigger: ActionRef::parse("t.seen").unwrap(),
        trigger_parameters: json!({}),
        payload: json!({"x": 1}),
        source: "sensor:t.watch".into(),
        late: false,
        created_at: at(t),
        processed_at: None,
    };
    s.sensor_events("t.watch", w1, &t1, &[ev(21), ev(21)], 3).await.unwrap();
    let st = s.get_sensor("t.watch", at(21)).await.unwrap().unwrap();
    assert_eq!((st.events, st.malformed), (2, 3));

    // w1 stops heartbeating: after its lease lapses, w2 takes the sensor over.
    assert!(
        s.sensor_heartbeat(w2, &[], true, at(40), until(40)).await.unwrap().start.is_none(),
        "not lapsed yet"
    );
    assert_eq!(s.get_sensor("t.watch", at(51)).await.unwrap().unwrap().status, SensorStatus::Lost);
    let got =
        s.sensor_heartbeat(w2, &[], true, at(51), until(51)).await.unwrap().start.expect("w2 takes over");
    assert!(got.restart);
    assert_eq!(got.taken_from.as_deref(), Some("w1"));
    let t2 = got.task.lease_token.clone();
    let st = s.get_sensor("t.watch", at(52)).await.unwrap().unwrap();
    assert_eq!((st.restarts, st.worker_name.as_deref()), (1, Some("w2")));
    assert!(st.last_error.unwrap().contains("w1 stopped renewing"));
    // w1 comes back: its lease is gone, its events are refused and nothing is stored.
    let beat = s.sensor_heartbeat(w1, &held, true, at(53), until(53)).await.unwrap();
    assert_eq!(beat.held, vec![("t.watch".to_owned(), false)]);
    assert!(beat.start.is_none());
    let late = s.sensor_events("t.watch", w1, &t1, &[ev(53)], 0).await;
    assert!(matches!(late, Err(StoreError::Conflict { code: "stale_lease", .. })), "{late:?}");
    assert!(s.sensor_exited("t.watch", w1, &t1, "gone", at(53)).await.is_err());
    assert_eq!(s.count_unprocessed_events().await.unwrap(), 2);

    // Exits in a row: 1 s, 2 s, 4 s of backoff; nobody may take it meanwhile.
    let mut token = t2;
    let mut now = 60;
    let mut holder = w2;
    for (n, wait) in [(1, 1), (2, 2), (3, 4)] {
        let retry = s.sensor_exited("t.watch", holder, &token, "exited with code 3", at(now)).await.unwrap();
        holder = w1;
        assert_eq!(retry, at(now + wait), "exit {n}");
        let st = s.get_sensor("t.watch", at(now)).await.unwrap().unwrap();
        assert_eq!((st.status, st.retry_at), (SensorStatus::Backoff, Some(at(now + wait))));
        assert!(s.sensor_heartbeat(w1, &[], true, at(now), until(now)).await.unwrap().start.is_none());
        now += wait;
        let got = s.sensor_heartbeat(w1, &[], true, at(now), until(now)).await.unwrap().start.unwrap();
        token = got.task.lease_token;
        // Stays on w1 from now on.
        let beat = s
            .sensor_heartbeat(w1, &[("t.watch".into(), token.clone())], true, at(now), until(now))
            .await
            .unwrap();
        assert_eq!(beat.held, vec![("t.watch".to_owned(), true)]);
    }
    // A run of a minute or more starts the backoff over.
    let retry = s.sensor_exited("t.watch", w1, &token, "exited", at(now + 61)).await.unwrap();
    assert_eq!(retry, at(now + 62));
    now += 62;
    token =
        s.sensor_heartbeat(w1, &[], true, at(now), until(now)).await.unwrap().start.unwrap().task.lease_token;
    assert_eq!(s.get_sensor("t.watch", at(now)).await.unwrap().unwrap().restarts, 5);

    // Disabled: the lease is taken back, and nobody gets it.
    let st = s.set_sensor_enabled("t.watch", false, at(now)).await.unwrap();
    assert_eq!(st.status, SensorStatus::Disabled);
    let beat = s
        .sensor_heartbeat(w1, &[("t.watch".into(), token.clone())], true, at(now), until(now))
        .await
        .unwrap();
    assert_eq!(beat.held, vec![("t.watch".to_owned(), false)]);
    assert!(beat.start.is_none());
    s.set_sensor_enabled("t.watch", true, at(now)).await.unwrap();
    let token =
        s.sensor_heartbeat(w2, &[], true, at(now), until(now)).await.unwrap().start.unwrap().task.lease_token;

    // Reloading the same definition keeps the lease; a changed one takes it back; a drain gives
    // back what the worker held.
    s.load_pack(&meta, load(&v1), false, at(now)).await.unwrap();
    let held = vec![("t.watch".to_owned(), token.clone())];
    assert!(
        s.sensor_heartbeat(w2, &held, false, at(now), until(now)).await.unwrap().held[0].1,
        "same definition"
    );
    let v2 = [sensor(json!({"n": 2}))];
    s.load_pack(&meta, load(&v2), false, at(now)).await.unwrap();
    assert!(!s.sensor_heartbeat(w2, &held, false, at(now), until(now)).await.unwrap().held[0].1, "changed");
    let got = s.sensor_heartbeat(w2, &[], true, at(now), until(now)).await.unwrap().start.unwrap();
    assert_eq!(got.task.sensor.parameters, json!({"n": 2}));
    assert_eq!(s.release_sensors(w2).await.unwrap(), vec![ActionRef::parse("t.watch").unwrap()]);
    assert_eq!(s.get_sensor("t.watch", at(now)).await.unwrap().unwrap().status, SensorStatus::Pending);
    // Gone from the pack: gone.
    s.load_pack(&meta, load(&[]), false, at(now)).await.unwrap();
    assert!(s.list_sensors(at(now)).await.unwrap().is_empty());
}

/// Issue 16: an execution with a worker selector is claimed only by a worker whose labels include
/// every selected label with the same value; an execution's own schedule-to-start timeout is used
/// instead of the server's.
async fn selectors_route_and_own_timeouts_expire(db: &TestDb) {
    let s = open(db).await;
    let labelled = |name: &str, labels: serde_json::Value| {
        let w = NewWorker {
            name: name.into(),
            host: "h".into(),
            runtimes: vec![Runtime::Shell],
            labels,
            concurrency: 4,
            version: "t".into(),
        };
        let s = &s;
        async move { s.register_worker(&w, at(0)).await.unwrap().id }
    };
    let bare = labelled("bare", json!({})).await;
    let us = labelled("us", json!({"region": "us", "gpu": "true"})).await;
    let eu = labelled("eu", json!({"region": "eu"})).await;
    let eu_gpu = labelled("eu-gpu", json!({"region": "eu", "gpu": "true"})).await;
    let mut a = action("echo", Runtime::Shell, 1);
    a.worker_selector =
        [("region".to_owned(), "eu".to_owned()), ("gpu".to_owned(), "true".to_owned())].into();
    let routed = submit(&s, &a, at(1)).await;
    let until = at(1).plus(STALENESS);
    for w in [bare, us, eu] {
        assert!(
            s.claim(w, "x", &[Runtime::Shell], 10, at(2), until).await.unwrap().is_empty(),
            "not for {w}"
        );
    }
    let got = s.claim(eu_gpu, "eu-gpu", &[Runtime::Shell], 10, at(2), until).await.unwrap();
    assert_eq!(got.iter().map(|t| t.execution_id).collect::<Vec<_>>(), vec![routed]);
    assert_eq!(got[0].action.worker_selector.len(), 2);
    let plain = submit(&s, &action("echo", Runtime::Shell, 1), at(3)).await;
    let got = s.claim(bare, "bare", &[Runtime::Shell], 10, at(3), until).await.unwrap();
    assert_eq!(got[0].execution_id, plain, "no selector: any worker");

    // Its own schedule-to-start timeout (2 s) against the server's (300 s).
    let mut quick = action("echo", Runtime::Shell, 1);
    quick.scheduled_timeout_seconds = Some(2);
    quick.worker_selector = [("region".to_owned(), "mars".to_owned())].into();
    let stuck = submit(&s, &quick, at(10)).await;
    let slow = {
        let mut b = action("echo", Runtime::Shell, 1);
        b.worker_selector = quick.worker_selector.clone();
        submit(&s, &b, at(10)).await
    };
    let e = s.get_execution(stuck).await.unwrap().unwrap();
    assert_eq!(e.worker_selector.get("region").map(String::as_str), Some("mars"));
    assert!(s.fail_unstarted(Duration::from_secs(300), at(12)).await.unwrap().is_empty(), "not yet");
    let failed = s.fail_unstarted(Duration::from_secs(300), at(13)).await.unwrap();
    assert_eq!(failed.len(), 1);
    let e = s.get_execution(stuck).await.unwrap().unwrap();
    assert_eq!(e.status, ExecutionStatus::Failed);
    let err = e.error.unwrap();
    assert_eq!(
        (err["failed_by"].as_str(), err["timeout_seconds"].as_u64()),
        (Some("execution_timeout_monitor"), Some(2))
    );
    assert!(err["error"].as_str().unwrap().contains("did not pick up task within 2 seconds"), "{err}");
    assert_eq!(status(&s, slow).await, ExecutionStatus::Scheduled, "the server's 300 s for the other");
}

/// Issue 16: at most `limit` executions with the same concurrency key hold a slot (delivered,
/// running or canceling); the others wait, in order, and take a slot when one is freed — by an
/// end, or by a delivery that was never started — never earlier.
async fn concurrency_limits_hold_per_key(db: &TestDb) {
    let s = open(db).await;
    let w = worker(&s, "w", &[Runtime::Shell], at(0)).await;
    let a = action("deploy", Runtime::Shell, 1);
    let submit_keyed = |key: &str, t: u64| {
        let new = NewExecution { concurrency: Some((format!("t.deploy/{key}"), 1)), ..plain(&a) };
        let s = &s;
        async move { s.create_executions(vec![new], at(t)).await.unwrap().remove(0).unwrap().id }
    };
    let a1 = submit_keyed("prod", 1).await;
    let a2 = submit_keyed("prod", 2).await;
    let b1 = submit_keyed("staging", 3).await;
    let a3 = submit_keyed("prod", 4).await;
    let until = |t: u64| at(t).plus(STALENESS);
    let ids = |tasks: Vec<attune_core::Task>| {
        tasks.into_iter().map(|t| (t.execution_id, t.lease_token)).collect::<Vec<_>>()
    };
    let got = ids(s.claim(w, "w", &[Runtime::Shell], 10, at(5), until(5)).await.unwrap());
    assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![a1, b1], "one per key, oldest first");
    assert!(
        s.claim(w, "w", &[Runtime::Shell], 10, at(6), until(6)).await.unwrap().is_empty(),
        "delivered holds"
    );
    // A delivery never started frees its slot when it expires.
    let n = s.expire_deliveries(until(5).plus(Duration::from_secs(1))).await.unwrap();
    assert_eq!(n, 2);
    let t = until(5).plus(Duration::from_secs(2)).millis() / 1000 - T0.millis() / 1000;
    let got = ids(s.claim(w, "w", &[Runtime::Shell], 10, at(t as u64), until(t as u64)).await.unwrap());
    assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![a1, b1], "the same two again");
    let (_, tok1) = got.iter().find(|(i, _)| *i == a1).unwrap().clone();
    let now = at(t as u64 + 1);
    s.start(a1, h(&tok1, w), now, until(t as u64 + 1)).await.unwrap();
    assert!(
        s.claim(w, "w", &[Runtime::Shell], 10, now, until(t as u64 + 1)).await.unwrap().is_empty(),
        "running holds"
    );
    s.complete(a1, h(&tok1, w), &ok_report(), now).await.unwrap();
    let got = ids(s.claim(w, "w", &[Runtime::Shell], 10, now, until(t as u64 + 1)).await.unwrap());
    assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![a2], "the next of prod, not a3");
    assert_eq!(s.open_with_concurrency_key("t.deploy/prod").await.unwrap(), vec![a2, a3]);
    // A limit of 2: a claim of one takes the oldest, the next claim only the second.
    let wide = |t: u64| {
        let new = NewExecution { concurrency: Some(("t.deploy/wide".into(), 2)), ..plain(&a) };
        let s = &s;
        async move { s.create_executions(vec![new], at(t)).await.unwrap().remove(0).unwrap().id }
    };
    let later = t as u64 + 2;
    let (w1, w2, _w3) = (wide(later).await, wide(later + 1).await, wide(later + 2).await);
    let got = ids(s.claim(w, "w", &[Runtime::Shell], 1, at(later + 3), until(later + 3)).await.unwrap());
    assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![w1], "max 1: the oldest");
    let got = ids(s.claim(w, "w", &[Runtime::Shell], 10, at(later + 3), until(later + 3)).await.unwrap());
    assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![w2], "one slot left of two");
}

/// Issue 16: a claim passes over the waiting executions of a key at its limit, however many are
/// ahead (the claim reads them page by page), and takes the first of a free key behind them. On
/// PostgreSQL it also passes over a row another claimer is taking instead of coming back empty.
async fn a_full_key_does_not_hold_up_the_keys_behind_it(db: &TestDb) {
    let s = open(db).await;
    let w = worker(&s, "w", &[Runtime::Shell], at(0)).await;
    let a = action("deploy", Runtime::Shell, 1);
    let keyed = |key: &str| NewExecution { concurrency: Some((format!("t.deploy/{key}"), 1)), ..plain(&a) };
    let busy = s.create_executions((0..60).map(|_| keyed("busy")).collect(), at(1)).await.unwrap();
    let busy: Vec<Uuid> = busy.into_iter().map(|r| r.unwrap().id).collect();
    let free: Vec<Uuid> = s
        .create_executions(vec![keyed("a"), keyed("b"), keyed("c")], at(2))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().id)
        .collect();
    let claim = |max: u32, t: u64| {
        let s = &s;
        async move {
            let got = s.claim(w, "w", &[Runtime::Shell], max, at(t), at(t).plus(STALENESS)).await.unwrap();
            got.into_iter().map(|t| t.execution_id).collect::<Vec<_>>()
        }
    };
    assert_eq!(claim(1, 3).await, vec![busy[0]], "the oldest first");
    assert_eq!(claim(1, 3).await, vec![free[0]], "past 59 of a full key");
    if db.is_postgres() {
        // Another claimer is taking `free[1]` (it holds the row): this one takes `free[2]`.
        use sqlx::Connection;
        let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let mut holding = other.begin().await.unwrap();
        sqlx::query("SELECT id FROM executions WHERE id = $1 FOR UPDATE")
            .bind(free[1].to_string())
            .execute(&mut *holding)
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), claim(1, 3)).await.expect("the claim waited");
        assert_eq!(got, vec![free[2]], "past the row another claimer holds");
        holding.rollback().await.unwrap();
        assert_eq!(claim(5, 3).await, vec![free[1]]);
    } else {
        assert_eq!(claim(5, 3).await, vec![free[1], free[2]]);
    }
    assert!(claim(5, 3).await.is_empty(), "every key at its limit");
}

/// Issue 16: claimers running at once (on PostgreSQL, on connections of their own, as replicas
/// do) together never hand out more than a key's limit, even when they see different
/// executions of the same key (here: workers of different runtimes).
async fn concurrent_claimers_never_exceed_a_limit(db: &TestDb) {
    let s = open(db).await;
    let (shell, python) = (action("deploy", Runtime::Shell, 1), action("deploy_py", Runtime::Python, 1));
    let keyed = |i: usize| NewExecution {
        concurrency: Some((format!("t.deploy/{}", i % 5), 1)),
        ..plain(if i.is_multiple_of(2) { &shell } else { &python })
    };
    let created = s.create_executions((0..100).map(keyed).collect(), at(1)).await.unwrap();
    let key_of: std::collections::HashMap<Uuid, usize> =
        created.into_iter().enumerate().map(|(i, r)| (r.unwrap().id, i % 5)).collect();
    let s = std::sync::Arc::new(s);
    let mut claimers = tokio::task::JoinSet::new();
    for c in 0..8 {
        let s = s.clone();
        let runtime = if c % 2 == 0 { Runtime::Shell } else { Runtime::Python };
        let w = worker(&s, &format!("w{c}"), &[runtime], at(0)).await;
        claimers.spawn(async move {
            let mut got = Vec::new();
            for _ in 0..5 {
                got.extend(s.claim(w, "w", &[runtime], 3, at(2), at(2).plus(STALENESS)).await.unwrap());
            }
            got
        });
    }
    let mut per_key = std::collections::HashMap::<usize, usize>::new();
    while let Some(got) = claimers.join_next().await {
        for t in got.unwrap() {
            *per_key.entry(key_of[&t.execution_id]).or_default() += 1;
        }
    }
    assert_eq!(per_key.len(), 5, "{per_key:?}");
    assert!(per_key.values().all(|n| *n == 1), "one per key, no more: {per_key:?}");
}

/// Issue 16: a rate-limited execution starts only with a token from its key's bucket, which holds
/// `burst` and refills at `per_second`; other keys have their own bucket.
async fn rate_limits_refill_at_their_rate(db: &TestDb) {
    let s = open(db).await;
    let w = worker(&s, "w", &[Runtime::Shell], at(0)).await;
    let a = action("call", Runtime::Shell, 1);
    let submit_rated = |key: &str, t: u64| {
        let new = NewExecution { rate: Some((format!("t.call/{key}"), 2.0, 2)), ..plain(&a) };
        let s = &s;
        async move { s.create_executions(vec![new], at(t)).await.unwrap().remove(0).unwrap().id }
    };
    let mut api = Vec::new();
    for _ in 0..6 {
        api.push(submit_rated("api", 1).await);
    }
    let other = submit_rated("other", 1).await;
    let ms = |m: i64| Timestamp(at(10).millis() + m);
    let claim = |t: Timestamp| {
        let s = &s;
        async move {
            s.claim(w, "w", &[Runtime::Shell], 100, t, t.plus(STALENESS))
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.execution_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(claim(ms(0)).await, vec![api[0], api[1], other], "a full bucket each: burst 2");
    assert!(claim(ms(100)).await.is_empty(), "0.2 tokens");
    assert_eq!(claim(ms(500)).await, vec![api[2]], "1 token after half a second");
    assert!(claim(ms(900)).await.is_empty(), "0.8 tokens");
    assert_eq!(claim(ms(5000)).await, vec![api[3], api[4]], "never more than the burst");
    assert_eq!(claim(ms(5500)).await, vec![api[5]]);
}

/// A new execution of `a` with no parameters and one attempt.
fn plain(a: &Action) -> NewExecution {
    NewExecution {
        action: a.clone(),
        parameters: json!({}),
        timeout_seconds: None,
        max_attempts: 1,
        actor: "t".into(),
        parent: None,
        trace_id: None,
        enforces: None,
        requeue_of: None,
        concurrency: None,
        rate: None,
        child_key: None,
    }
}

/// Issue 16: a higher priority is taken first, oldest first within a priority; each step is worth a
/// minute of waiting, so a low priority that waited long enough goes before a fresh high one.
async fn priorities_go_first_without_starving_the_rest(db: &TestDb) {
    let s = open(db).await;
    let w = worker(&s, "w", &[Runtime::Shell], at(0)).await;
    let with = |p: i32| {
        let mut a = action("job", Runtime::Shell, 1);
        a.priority = p;
        a
    };
    let old_low = submit(&s, &with(0), at(0)).await; // waited 11 minutes by the time the others come
    let low = submit(&s, &with(0), at(660)).await;
    let high = submit(&s, &with(10), at(661)).await;
    let higher = submit(&s, &with(50), at(662)).await;
    let low2 = submit(&s, &with(0), at(663)).await;
    let mut order = Vec::new();
    for _ in 0..5 {
        let got = s.claim(w, "w", &[Runtime::Shell], 1, at(700), at(700).plus(STALENESS)).await.unwrap();
        order.push(got[0].execution_id);
    }
    assert_eq!(order, vec![higher, old_low, high, low, low2]);
}

/// Issue 13: a workflow step is written only over the version it read, with the children it
/// starts, the ends it consumed and the workflow execution's own start or end, in one
/// transaction; a child's key is unique per workflow.
async fn workflow_steps_are_taken_once(db: &TestDb) {
    use attune_core::lifecycle::{self, Decision, Stored};
    let change = |d: Decision| match d {
        Decision::Apply(c) => Some(*c),
        other => panic!("expected a change: {other:?}"),
    };
    let s = open(db).await;
    let wf_action = action("flow", Runtime::Workflow, 1);
    let wf = submit(&s, &wf_action, T0).await;
    let task = action("task", Runtime::Shell, 1);
    let step =
        |version: Option<i64>, children: Vec<NewExecution>, applied: Vec<Uuid>| attune_store::WorkflowStep {
            execution_id: wf,
            version,
            phase: "running".into(),
            paused: false,
            state: json!({"n": version}),
            finish: None,
            applied,
            children,
            transition: None,
            now: T0,
        };
    let child = |key: &str| NewExecution { parent: Some(wf), child_key: Some(key.into()), ..plain(&task) };
    async fn stored(s: &Store, id: Uuid) -> Stored {
        s.read_stored(&[id]).await.unwrap().remove(&id).expect("stored")
    }
    let (e, row) = s.workflow_execution(wf).await.unwrap().expect("the workflow execution");
    assert_eq!((e.id, row), (wf, None), "no state before the first step");
    // The first step starts the workflow execution with it.
    let scheduled = stored(&s, wf).await;
    assert_eq!(scheduled.status, ExecutionStatus::Scheduled);
    let start = change(lifecycle::engine_start(&scheduled, T0));
    let first = s
        .workflow_step(attune_store::WorkflowStep {
            transition: start.clone(),
            ..step(None, vec![child("a/1")], vec![])
        })
        .await
        .unwrap()
        .expect("the first step");
    assert_eq!(first.children.len(), 1);
    assert_eq!(first.transition.map(|a| a.status), Some(ExecutionStatus::Running));
    assert_eq!(s.get_execution(wf).await.unwrap().unwrap().status, ExecutionStatus::Running);
    assert!(
        s.workflow_step(attune_store::WorkflowStep {
            transition: start,
            ..step(None, vec![child("a/1")], vec![])
        })
        .await
        .unwrap()
        .is_none(),
        "taken already"
    );
    let row = s.get_workflow(wf).await.unwrap().unwrap();
    assert_eq!((row.version, row.phase.as_str()), (1, "running"));
    let (e, with_row) = s.workflow_execution(wf).await.unwrap().unwrap();
    assert_eq!((e.status, with_row), (ExecutionStatus::Running, Some(row)), "read with its execution");
    let due = s.engine_due(T0, 10).await.unwrap();
    assert!(due.advance.is_empty(), "nothing ended yet: {due:?}");
    // The child ends: the workflow is due, with that end to apply.
    let w = worker(&s, "w", &[Runtime::Shell], T0).await;
    let (id, token) = claim_one(&s, w, T0).await;
    assert_eq!(id, first.children[0].id);
    let h = Holder { token: &token, worker: w };
    s.start(id, h.clone(), T0, T0.plus(std::time::Duration::from_secs(30))).await.unwrap();
    s.complete(id, h, &Report::new(ExecutionStatus::Succeeded), T0).await.unwrap();
    assert_eq!(s.engine_due(T0, 10).await.unwrap().advance, vec![wf]);
    let ended = s.ended_children(wf, 10).await.unwrap();
    assert_eq!((ended.len(), ended[0].key.as_str()), (1, "a/1"));
    // Two steps read version 1; one wins, the other writes nothing (not even its child).
    let won = s.workflow_step(step(Some(1), vec![child("b/1")], vec![id])).await.unwrap();
    assert!(won.is_some());
    let lost = s.workflow_step(step(Some(1), vec![child("c/1")], vec![id])).await.unwrap();
    assert!(lost.is_none());
    let keys: Vec<_> = s.children(wf).await.unwrap().into_iter().filter_map(|c| c.child_key).collect();
    assert_eq!(keys, ["a/1", "b/1"]);
    assert!(s.ended_children(wf, 10).await.unwrap().is_empty(), "the end was consumed with the step");
    assert!(s.engine_due(T0, 10).await.unwrap().advance.is_empty());
    // A key used already cannot be created again, whatever the version.
    let again = s.workflow_step(step(Some(2), vec![child("a/1")], vec![])).await;
    assert!(again.is_err(), "a duplicate child is refused: {again:?}");
    assert_eq!(s.get_workflow(wf).await.unwrap().unwrap().version, 2, "and the step with it");
    // The last step carries the workflow's end. Decided on a read the execution has moved on
    // from (a cancel came in between), it writes nothing; decided again, it ends it.
    let end = |st: &Stored| change(lifecycle::engine_finish(st, ExecutionStatus::Succeeded, None, None, T0));
    let stale = stored(&s, wf).await;
    s.cancel_execution(wf, "user:test", T0).await.unwrap();
    let last = |t: Option<attune_core::lifecycle::Change>| attune_store::WorkflowStep {
        phase: "done".into(),
        transition: t,
        ..step(Some(2), vec![], vec![])
    };
    assert!(s.workflow_step(last(end(&stale))).await.unwrap().is_none(), "a stale end writes nothing");
    let row = s.get_workflow(wf).await.unwrap().unwrap();
    assert_eq!((row.version, row.phase.as_str()), (2, "running"));
    let ended = s.workflow_step(last(end(&stored(&s, wf).await))).await.unwrap().expect("the last step");
    assert_eq!(
        ended.transition.map(|a| a.status),
        Some(ExecutionStatus::Canceled),
        "asked to cancel, it ends so"
    );
    let e = s.get_execution(wf).await.unwrap().unwrap();
    assert_eq!(e.status, ExecutionStatus::Canceled);
    assert_eq!(s.get_workflow(wf).await.unwrap().unwrap().phase, "done");
    let counted = s.finished_per_minute(T0, 1).await.unwrap();
    assert!(
        counted.iter().any(|(_, st, n)| *st == ExecutionStatus::Canceled && *n == 1),
        "the workflow's end is counted with it: {counted:?}"
    );
}
