//! The worker protocol: register → heartbeat → poll → start → complete → drain/deregister.
//! Every report about an execution carries its lease token; the store rejects stale ones (409).

use std::time::Duration;

use attune_client::wire::{
    BatchItemResult, BatchReply, Complete, CompleteBatch, Heartbeat, HeartbeatReply, LeaseReply, Poll,
    PollReply, RegisterWorker, Registered, Start, StartBatch,
};
use attune_core::{Execution, Timestamp, Worker};
use attune_store::NewWorker;
use axum::{extract::Path, Json};
use uuid::Uuid;

use super::State;
use crate::{
    error::{parse_id, Body},
    ApiError, Shared,
};

/// Longest worker name accepted.
const MAX_NAME: usize = 200;

/// How often a waiting poll looks at the queue even without a wake-up: catches work made
/// available by another replica, or a retry whose backoff just ended.
const POLL_RECHECK: Duration = Duration::from_millis(1000);

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[utoipa::path(post, path = "/api/v1/worker/register", tag = "worker protocol", request_body = attune_client::wire::RegisterWorker, responses((status = 200, body = attune_client::wire::Registered), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 422, description = "Invalid content", body = attune_client::wire::ErrorBody)))]
pub async fn register(state: State, Body(req): Body<RegisterWorker>) -> Result<Json<Registered>, ApiError> {
    let bad = |m: &str| ApiError::unprocessable("invalid_registration", m.to_owned());
    if req.name.trim().is_empty() || req.name.len() > MAX_NAME {
        return Err(bad("name must be 1 to 200 characters"));
    }
    if req.runtimes.is_empty() {
        return Err(bad("runtimes must list at least one runtime"));
    }
    if req.concurrency == 0 || req.concurrency > 4096 {
        return Err(bad("concurrency must be between 1 and 4096"));
    }
    if !(req.labels.is_null() || req.labels.is_object()) {
        return Err(bad("labels must be an object"));
    }
    let w = NewWorker {
        name: req.name,
        host: req.host,
        runtimes: req.runtimes,
        labels: if req.labels.is_null() { serde_json::json!({}) } else { req.labels },
        concurrency: req.concurrency,
        version: req.version,
    };
    let worker = state.store.register_worker(&w, Timestamp::now()).await?;
    crate::metrics::Metrics::add(&state.metrics.workers_registered, 1);
    state.worker_names.lock().expect("names lock").insert(worker.id, worker.name.clone());
    tracing::info!(worker = %worker.name, id = %worker.id, runtimes = ?worker.runtimes, "worker registered");
    let o = &state.opts;
    Ok(Json(Registered {
        worker,
        heartbeat_interval_ms: ms(o.heartbeat_interval),
        lease_ms: ms(o.staleness),
        delivery_timeout_ms: ms(o.delivery_timeout),
        max_poll_ms: ms(o.max_poll),
    }))
}

/// `worker:<name>` for history entries.
async fn actor(shared: &Shared, id: Uuid) -> Result<String, ApiError> {
    if let Some(n) = shared.worker_names.lock().expect("names lock").get(&id) {
        return Ok(format!("worker:{n}"));
    }
    let w = worker(shared, id).await?;
    shared.worker_names.lock().expect("names lock").insert(id, w.name.clone());
    Ok(format!("worker:{}", w.name))
}

async fn worker(shared: &Shared, id: Uuid) -> Result<Worker, ApiError> {
    shared.store.get_worker(id).await?.ok_or_else(|| {
        ApiError::not_found("unknown_worker", format!("worker {id} is not registered; register again"))
    })
}

#[utoipa::path(post, path = "/api/v1/worker/{id}/heartbeat", tag = "worker protocol", params(("id" = String, Path, description = "UUID")), request_body = attune_client::wire::Heartbeat, responses((status = 200, body = attune_client::wire::HeartbeatReply), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 404, description = "Not found", body = attune_client::wire::ErrorBody)))]
pub async fn heartbeat(
    state: State,
    Path(id): Path<String>,
    Body(hb): Body<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    let id = parse_id("worker", &id)?;
    let now = Timestamp::now();
    let (status, leases) = state.store.heartbeat(id, &hb.leases, now, now.plus(state.opts.staleness)).await?;
    Ok(Json(HeartbeatReply {
        status,
        leases: leases.into_iter().map(|(execution_id, state)| LeaseReply { execution_id, state }).collect(),
    }))
}

/// Long poll: returns as soon as there is work for this worker, or empty after the wait.
#[utoipa::path(post, path = "/api/v1/worker/{id}/poll", tag = "worker protocol", params(("id" = String, Path, description = "UUID")), request_body = attune_client::wire::Poll, responses((status = 200, body = attune_client::wire::PollReply), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 404, description = "Not found", body = attune_client::wire::ErrorBody), (status = 422, description = "Invalid content", body = attune_client::wire::ErrorBody)))]
pub async fn poll(
    state: State,
    Path(id): Path<String>,
    Body(p): Body<Poll>,
) -> Result<Json<PollReply>, ApiError> {
    let id = parse_id("worker", &id)?;
    if p.max_tasks == 0 || p.max_tasks > 4096 {
        return Err(ApiError::unprocessable("invalid_poll", "max_tasks must be between 1 and 4096"));
    }
    let w = worker(&state, id).await?;
    let wait = Duration::from_millis(p.wait_ms).min(state.opts.max_poll);
    let deadline = tokio::time::Instant::now() + wait;
    let mut parked = false;
    loop {
        // Register interest before looking, so a submit between the look and the wait is not missed.
        let notified = state.work_available.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let tasks = claim_for_live_poller(&state, id, &w, p.max_tasks).await?;
        if !tasks.is_empty() {
            for t in &tasks {
                tracing::debug!(execution_id = %t.execution_id, worker = %w.name, "task delivered");
            }
            return Ok(Json(PollReply { tasks }));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Json(PollReply { tasks: Vec::new() }));
        }
        if !parked {
            parked = true;
            tracing::debug!(worker = %w.name, "poll waiting for work");
        }
        let recheck = (tokio::time::Instant::now() + POLL_RECHECK).min(deadline);
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(recheck) => {}
            _ = state.shutdown.cancelled() => return Ok(Json(PollReply { tasks: Vec::new() })),
        }
    }
}

/// Claims in a task of its own and hands the result over a channel. If the poller's connection
/// closes meanwhile, axum drops this handler, the hand-over fails, and the tasks go straight back
/// to the queue instead of waiting for `delivery_timeout` (seed 004: a reply to a dead caller must
/// not swallow the work).
async fn claim_for_live_poller(
    state: &std::sync::Arc<Shared>,
    id: Uuid,
    w: &Worker,
    max: u32,
) -> Result<Vec<attune_core::Task>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let shared = state.clone();
    let (name, runtimes) = (w.name.clone(), w.runtimes.clone());
    // Owned by the hand-over: it ends when the claim is delivered or undone.
    tokio::spawn(async move {
        let now = Timestamp::now();
        let claimed =
            shared.store.claim(id, &name, &runtimes, max, now, now.plus(shared.opts.delivery_timeout)).await;
        if let Err(Ok(tasks)) = tx.send(claimed) {
            if let Some(token) = tasks.first().map(|t| t.lease_token.clone()) {
                let ids: Vec<Uuid> = tasks.iter().map(|t| t.execution_id).collect();
                match shared.store.unclaim(&ids, &token, Timestamp::now()).await {
                    Ok(n) => {
                        tracing::info!(worker = %name, count = n, "poller went away; tasks back in the queue")
                    }
                    Err(e) => {
                        tracing::warn!(worker = %name, error = %e, "could not put tasks back; delivery timeout will")
                    }
                }
                shared.work_available.notify_waiters();
            }
        }
    });
    match rx.await {
        Ok(r) => Ok(r?),
        Err(_) => {
            Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "internal", "claim interrupted"))
        }
    }
}

#[utoipa::path(post, path = "/api/v1/worker/{id}/executions/{execution}/start", tag = "worker protocol", params(("id" = String, Path, description = "UUID"), ("execution" = String, Path, description = "execution UUID")), request_body = attune_client::wire::Start, responses((status = 200, body = attune_core::Execution), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 404, description = "Not found", body = attune_client::wire::ErrorBody), (status = 409, description = "Stale lease or invalid transition", body = attune_client::wire::ErrorBody)))]
pub async fn start(
    state: State,
    Path((id, execution)): Path<(String, String)>,
    Body(s): Body<Start>,
) -> Result<Json<Execution>, ApiError> {
    let id = parse_id("worker", &id)?;
    let execution = parse_id("execution", &execution)?;
    let actor = actor(&state, id).await?;
    let now = Timestamp::now();
    let e = state.store.start(execution, &s.lease_token, &actor, now, now.plus(state.opts.staleness)).await?;
    state.changed(&[(execution, e.status)]).await;
    tracing::debug!(execution_id = %execution, %actor, attempt = e.attempt, "execution started");
    Ok(Json(e))
}

#[utoipa::path(post, path = "/api/v1/worker/{id}/executions/{execution}/complete", tag = "worker protocol", params(("id" = String, Path, description = "UUID"), ("execution" = String, Path, description = "execution UUID")), request_body = attune_client::wire::Complete, responses((status = 200, body = attune_core::Execution), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 404, description = "Not found", body = attune_client::wire::ErrorBody), (status = 409, description = "Stale lease or invalid transition", body = attune_client::wire::ErrorBody), (status = 422, description = "Invalid content", body = attune_client::wire::ErrorBody)))]
pub async fn complete(
    state: State,
    Path((id, execution)): Path<(String, String)>,
    Body(c): Body<Complete>,
) -> Result<Json<Execution>, ApiError> {
    let id = parse_id("worker", &id)?;
    let execution = parse_id("execution", &execution)?;
    if !c.report.is_valid_outcome() {
        return Err(ApiError::unprocessable(
            "invalid_report",
            format!("status must be succeeded, failed, timeout or canceled, not {}", c.report.status),
        ));
    }
    let actor = actor(&state, id).await?;
    let e = state.store.complete(execution, &c.lease_token, &c.report, &actor, Timestamp::now()).await?;
    state.changed(&[(execution, e.status)]).await;
    tracing::debug!(execution_id = %execution, %actor, status = %e.status, "execution finished");
    Ok(Json(super::executions::present(e)))
}

/// Output of a running attempt; refused (409) when the lease is not current.
#[utoipa::path(post, path = "/api/v1/worker/{id}/executions/{execution}/logs", tag = "worker protocol", params(("id" = String, Path, description = "UUID"), ("execution" = String, Path, description = "execution UUID")), request_body = attune_client::wire::AppendLogs, responses((status = 200, body = Object), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 409, description = "Stale lease or invalid transition", body = attune_client::wire::ErrorBody), (status = 422, description = "Invalid content", body = attune_client::wire::ErrorBody)))]
pub async fn append_logs(
    state: State,
    Path((id, execution)): Path<(String, String)>,
    Body(b): Body<attune_client::wire::AppendLogs>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let _ = parse_id("worker", &id)?;
    let execution = parse_id("execution", &execution)?;
    if b.chunks.iter().any(|c| c.stream != "stdout" && c.stream != "stderr") {
        return Err(ApiError::unprocessable("invalid_logs", "stream must be stdout or stderr"));
    }
    state.store.append_logs(execution, &b.lease_token, &b.chunks, Timestamp::now()).await?;
    Ok(Json(serde_json::json!({"stored": b.chunks.len()})))
}

/// Maximum items in one batch request.
const MAX_BATCH: usize = 4096;

/// `start` for every task of a poll reply at once.
#[utoipa::path(post, path = "/api/v1/worker/{id}/start-batch", tag = "worker protocol", params(("id" = String, Path, description = "UUID")), request_body = attune_client::wire::StartBatch, responses((status = 200, body = attune_client::wire::BatchReply), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 404, description = "Not found", body = attune_client::wire::ErrorBody), (status = 422, description = "Invalid content", body = attune_client::wire::ErrorBody)))]
pub async fn start_batch(
    state: State,
    Path(id): Path<String>,
    Body(b): Body<StartBatch>,
) -> Result<Json<BatchReply>, ApiError> {
    let id = parse_id("worker", &id)?;
    if b.leases.len() > MAX_BATCH {
        return Err(ApiError::unprocessable("invalid_batch", format!("at most {MAX_BATCH} items per batch")));
    }
    let actor = actor(&state, id).await?;
    let now = Timestamp::now();
    let (results, waited) =
        state.store.start_many(&b.leases, &actor, now, now.plus(state.opts.staleness)).await?;
    for w in waited {
        state.metrics.submit_to_start.observe(w);
    }
    let changes: Vec<_> = results.iter().filter_map(|(id, r)| r.as_ref().ok().map(|s| (*id, *s))).collect();
    let results = results
        .into_iter()
        .map(|(execution_id, r)| match r {
            Ok(status) => BatchItemResult { execution_id, status: Some(status), error: None },
            Err(e) => BatchItemResult { execution_id, status: None, error: Some(ApiError::from(e).detail()) },
        })
        .collect();
    state.changed(&changes).await;
    Ok(Json(BatchReply { results }))
}

/// `complete` for several executions at once; each item is applied (and may fail) on its own.
#[utoipa::path(post, path = "/api/v1/worker/{id}/complete-batch", tag = "worker protocol", params(("id" = String, Path, description = "UUID")), request_body = attune_client::wire::CompleteBatch, responses((status = 200, body = attune_client::wire::BatchReply), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 404, description = "Not found", body = attune_client::wire::ErrorBody), (status = 422, description = "Invalid content", body = attune_client::wire::ErrorBody)))]
pub async fn complete_batch(
    state: State,
    Path(id): Path<String>,
    Body(b): Body<CompleteBatch>,
) -> Result<Json<BatchReply>, ApiError> {
    let id = parse_id("worker", &id)?;
    if b.reports.len() > MAX_BATCH {
        return Err(ApiError::unprocessable("invalid_batch", format!("at most {MAX_BATCH} items per batch")));
    }
    let actor = actor(&state, id).await?;
    let mut results = Vec::with_capacity(b.reports.len());
    let mut valid = Vec::with_capacity(b.reports.len());
    for item in b.reports {
        if item.report.is_valid_outcome() {
            valid.push((item.execution_id, item.lease_token, item.report));
        } else {
            let e = ApiError::unprocessable(
                "invalid_report",
                format!("status must be succeeded, failed, timeout or canceled, not {}", item.report.status),
            );
            results.push(BatchItemResult {
                execution_id: item.execution_id,
                status: None,
                error: Some(e.detail()),
            });
        }
    }
    let mut changes = Vec::new();
    for (execution_id, r) in state.store.complete_many(&valid, &actor, Timestamp::now()).await? {
        results.push(match r {
            Ok(e) => {
                state.metrics.finished(&e, Timestamp::now());
                changes.push((execution_id, e.status));
                BatchItemResult { execution_id, status: Some(e.status), error: None }
            }
            Err(e) => BatchItemResult { execution_id, status: None, error: Some(ApiError::from(e).detail()) },
        });
    }
    state.changed(&changes).await;
    Ok(Json(BatchReply { results }))
}

/// The worker gives a task back (it is shutting down and cannot finish it): another attempt if the
/// retry policy allows, `abandoned` otherwise. A stale token changes nothing (409).
#[utoipa::path(post, path = "/api/v1/worker/{id}/executions/{execution}/release", tag = "worker protocol", params(("id" = String, Path, description = "UUID"), ("execution" = String, Path, description = "execution UUID")), request_body = attune_client::wire::Start, responses((status = 200, body = Object), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 409, description = "Stale lease or invalid transition", body = attune_client::wire::ErrorBody)))]
pub async fn release(
    state: State,
    Path((id, execution)): Path<(String, String)>,
    Body(s): Body<Start>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let _ = parse_id("worker", &id)?;
    let execution = parse_id("execution", &execution)?;
    match state.store.release(execution, &s.lease_token, Timestamp::now()).await? {
        Some(l) => {
            tracing::info!(execution_id = %execution, worker = %l.worker, outcome = ?l.outcome, "task released");
            state.changed(&[(execution, l.status())]).await;
            Ok(Json(serde_json::json!({"released": true, "outcome": format!("{:?}", l.outcome)})))
        }
        None => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "stale_lease",
            format!("execution {execution}: this lease is not current; nothing to release"),
        )),
    }
}

#[utoipa::path(post, path = "/api/v1/worker/{id}/drain", tag = "worker protocol", params(("id" = String, Path, description = "UUID")), responses((status = 200, body = attune_core::Worker), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 404, description = "Not found", body = attune_client::wire::ErrorBody)))]
pub async fn drain(state: State, Path(id): Path<String>) -> Result<Json<Worker>, ApiError> {
    let id = parse_id("worker", &id)?;
    let w = state.store.drain_worker(id, Timestamp::now()).await?;
    tracing::info!(worker = %w.name, "worker draining");
    Ok(Json(w))
}

#[utoipa::path(post, path = "/api/v1/worker/{id}/deregister", tag = "worker protocol", params(("id" = String, Path, description = "UUID")), responses((status = 200, body = attune_core::Worker), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 404, description = "Not found", body = attune_client::wire::ErrorBody)))]
pub async fn deregister(state: State, Path(id): Path<String>) -> Result<Json<Worker>, ApiError> {
    let id = parse_id("worker", &id)?;
    let w = state.store.deregister_worker(id, Timestamp::now()).await?;
    crate::metrics::Metrics::add(&state.metrics.workers_deregistered, 1);
    tracing::info!(worker = %w.name, "worker deregistered");
    Ok(Json(w))
}
