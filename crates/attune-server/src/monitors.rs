//! The monitors, one loop each, owned by the server and stopped with it:
//! - heartbeat: workers silent for longer than the staleness window become `inactive`;
//! - leases: running executions whose worker stopped heartbeating get a new attempt or are
//!   `abandoned`; tasks handed out but never started go back to the queue;
//! - schedule-to-start (seed 003): executions `scheduled` longer than `scheduled_timeout` fail;
//! - housekeeping: per-minute counts of ended executions older than a day are pruned.
//!
//! Each store call is a conditional update, so replicas running the same monitor do not clash.
//! For one staleness window after start-up, workers and leases are not judged: workers of a server
//! that was down need a heartbeat to show they are still there.

use std::{future::Future, sync::Arc, time::Duration};

use attune_core::Timestamp;
use tokio::task::JoinSet;

use crate::Shared;

pub(crate) async fn run(shared: Arc<Shared>) {
    let o = shared.opts.clone();
    let mut set = JoinSet::new();
    // After a (re)start, or after the database was unreachable, workers get one staleness window
    // to heartbeat in before anything is judged stale (`Shared::hold_judgement`): a server that was
    // away must not blame its workers for the silence.
    set.spawn(every(shared.clone(), o.heartbeat_check_interval, |s| async move {
        if !s.may_judge() {
            return Ok(());
        }
        check_workers(s).await
    }));
    set.spawn(every(
        shared.clone(),
        o.heartbeat_check_interval.min(Duration::from_secs(1)),
        |s| async move {
            let judge = s.may_judge();
            check_leases(s, judge).await
        },
    ));
    if o.enable_timeout_monitor {
        tracing::info!(
            scheduled_timeout = ?o.scheduled_timeout,
            check_interval = ?o.timeout_check_interval,
            "starting execution timeout monitor"
        );
        set.spawn(every(shared.clone(), o.timeout_check_interval, check_unstarted));
    }
    set.spawn(every(shared.clone(), PRUNE_EVERY, |s| async move {
        s.store.prune_ended_counts(Timestamp::now().minus(KEEP_ENDED_COUNTS)).await.map(drop)
    }));
    while set.join_next().await.is_some() {}
}

/// The per-minute counts of ended executions (the console's overview shows 15 minutes) are kept
/// a day, and pruned this often.
const KEEP_ENDED_COUNTS: Duration = Duration::from_secs(24 * 3600);
const PRUNE_EVERY: Duration = Duration::from_secs(600);

async fn every<F, Fut>(shared: Arc<Shared>, period: Duration, f: F)
where
    F: Fn(Arc<Shared>) -> Fut,
    Fut: Future<Output = Result<(), attune_store::StoreError>>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = f(shared.clone()).await {
            tracing::warn!(error = %e, "monitor check failed; will retry");
            shared.hold_judgement();
        }
    }
}

async fn check_workers(shared: Arc<Shared>) -> Result<(), attune_store::StoreError> {
    let staleness = shared.opts.staleness;
    let cutoff = Timestamp::now().minus(staleness);
    let reason = format!("no heartbeat for {}s", staleness.as_secs_f64());
    let stale = shared.store.mark_stale_workers(cutoff, &reason).await?;
    crate::metrics::Metrics::add(&shared.metrics.workers_went_inactive, stale.len() as u64);
    for name in stale {
        tracing::warn!(worker = %name, staleness = ?staleness, "worker heartbeat is stale; marked inactive");
    }
    Ok(())
}

async fn check_leases(shared: Arc<Shared>, after_grace: bool) -> Result<(), attune_store::StoreError> {
    let now = Timestamp::now();
    let returned = shared.store.expire_deliveries(now).await?;
    if returned > 0 {
        tracing::info!(count = returned, "tasks not started in time went back to the queue");
    }
    let expired =
        if after_grace { shared.store.expire_leases(now, shared.opts.staleness).await? } else { Vec::new() };
    for e in &expired {
        let worker = e.worker.as_deref().unwrap_or_default();
        tracing::warn!(execution_id = %e.id, worker, status = %e.status, "lease expired");
        crate::metrics::Metrics::add(&shared.metrics.lease_expiries, 1);
        if e.status == attune_core::ExecutionStatus::Scheduled {
            crate::metrics::Metrics::add(&shared.metrics.retries, 1);
        }
    }
    let changes: Vec<_> = expired.iter().map(|e| (e.id, e.status)).collect();
    shared.changed(&changes).await;
    if returned > 0 {
        shared.work_available.notify_waiters();
        let _ = shared.store.notify_work().await;
    }
    Ok(())
}

async fn check_unstarted(shared: Arc<Shared>) -> Result<(), attune_store::StoreError> {
    let failed = shared.store.fail_unstarted(shared.opts.scheduled_timeout, Timestamp::now()).await?;
    crate::metrics::Metrics::add(&shared.metrics.schedule_to_start_timeouts, failed.len() as u64);
    for f in &failed {
        tracing::warn!(execution_id = %f.id, action = %f.action_ref, "no worker started the execution in time; failed");
    }
    let changes: Vec<_> = failed.iter().map(|f| (f.id, f.status)).collect();
    shared.changed(&changes).await;
    Ok(())
}
