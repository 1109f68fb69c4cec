//! Executions: submit (through `Submissions`), list, get with history, cancel, wait, live output.

use attune_core::{
    auth::Identity,
    submission::{Origin, Overrides},
    ActionRef, Execution, ExecutionStatus, Timestamp,
};
use attune_store::ExecutionFilter;
use attune_wire::{CreateExecution, ExecutionList};
use axum::{
    extract::{rejection::QueryRejection, Path, Query},
    http::{header, StatusCode},
    response::IntoResponse,
    Extension, Json,
};
use serde::Deserialize;
use serde_json::Value;

use super::State;
use crate::{
    error::{parse_id, Body},
    submission::{ActionSource, Request},
    ApiError,
};

#[utoipa::path(post, path = "/api/v1/executions", tag = "executions", request_body = attune_wire::CreateExecution, responses((status = 201, description = "Accepted", body = attune_core::Execution)))]
pub async fn create(
    state: State,
    Extension(who): Extension<Identity>,
    Body(req): Body<CreateExecution>,
) -> Result<impl IntoResponse, ApiError> {
    let action_ref = ActionRef::parse(&req.action_ref)
        .map_err(|e| ApiError::unprocessable("invalid_action_ref", e.to_string()))?;
    let worker_selector =
        req.worker_selector.as_ref().map(attune_core::action::labels_from).transpose().map_err(|e| {
            ApiError::unprocessable("invalid_worker_selector", format!("worker_selector: {e}"))
        })?;
    let e = state
        .submissions
        .submit(Request {
            action: ActionSource::Ref(action_ref),
            parameters: req.parameters.unwrap_or_else(|| Value::Object(Default::default())),
            overrides: Overrides {
                timeout_seconds: req.timeout_seconds,
                max_attempts: req.max_attempts,
                backoff_seconds: req.backoff_seconds,
                scheduled_timeout_seconds: req.scheduled_timeout_seconds,
                worker_selector,
                priority: req.priority,
            },
            origin: Origin::actor(who.actor()),
        })
        .await?;
    tracing::debug!(execution_id = %e.id, action = %e.action_ref, "execution accepted");
    let location = format!("/api/v1/executions/{}", e.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(e.masked())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    action_ref: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
    parent: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/executions", tag = "executions", params(("status" = Option<attune_core::ExecutionStatus>, Query), ("action_ref" = Option<String>, Query, description = "only this action (PACK.NAME)", pattern = "^[a-z][a-z0-9_-]{0,63}\\.[a-z][a-z0-9_-]{0,63}$"), ("before" = Option<uuid::Uuid>, Query, description = "cursor: the `next` of the previous page"), ("parent" = Option<uuid::Uuid>, Query, description = "only the tasks of this workflow (or the requeues of this execution)"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000)), responses((status = 200, body = attune_wire::ExecutionList)))]
pub async fn list(
    state: State,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ExecutionList>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let status = q
        .status
        .map(|s| s.parse::<ExecutionStatus>())
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", e))?;
    let action_ref = q
        .action_ref
        .map(|a| ActionRef::parse(&a))
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let before = q.before.map(|b| parse_id("before: execution", &b)).transpose()?;
    let parent = q.parent.map(|b| parse_id("parent: execution", &b)).transpose()?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 1000"));
    }
    let page = state
        .store
        .list_executions(&ExecutionFilter { status, action_ref, before, after: None, limit, parent })
        .await?;
    Ok(Json(ExecutionList {
        items: page.items.into_iter().map(Execution::masked).collect(),
        next: page.next,
    }))
}

#[utoipa::path(get, path = "/api/v1/executions/{id}", tag = "executions", params(("id" = uuid::Uuid, Path)), responses((status = 200, description = "With history and attempts", body = attune_core::Execution)))]
pub async fn get(state: State, Path(id): Path<String>) -> Result<Json<Execution>, ApiError> {
    let id = parse_id("execution", &id)?;
    match state.store.get_execution_with_history(id).await? {
        Some(mut e) => {
            if e.status == attune_core::ExecutionStatus::Scheduled && e.worker_id.is_none() {
                e.waiting = why_waiting(&state, &e).await?;
            }
            Ok(Json(e.masked()))
        }
        None => Err(ApiError::not_found("not_found", format!("execution {id} not found"))),
    }
}

/// Why no worker takes a scheduled execution, when that is knowable: no active worker runs its
/// runtime, or none has the labels its selector asks for.
async fn why_waiting(state: &State, e: &Execution) -> Result<Option<String>, ApiError> {
    let Some(runtime) = e.action.as_ref().map(|a| a.runtime) else { return Ok(None) };
    if runtime.server_side() {
        return Ok(None); // the server runs it
    }
    let active: Vec<attune_core::Worker> = state
        .store
        .list_workers(false)
        .await?
        .into_iter()
        .filter(|w| w.status == attune_core::WorkerStatus::Active && w.runtimes.contains(&runtime))
        .collect();
    if active.is_empty() {
        return Ok(Some(format!("no active worker runs the {runtime} runtime")));
    }
    if e.worker_selector.is_empty() {
        return Ok(None);
    }
    let fits = active.iter().any(|w| {
        attune_core::action::labels_from(&w.labels)
            .map(|l| attune_core::action::labels_match(&e.worker_selector, &l))
            .unwrap_or(false)
    });
    let wanted: Vec<String> = e.worker_selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok((!fits).then(|| {
        format!(
            "no active {runtime} worker has the labels {} (active: {}); it waits for one, until its \
             schedule-to-start timeout",
            wanted.join(", "),
            active.iter().map(|w| format!("{} {}", w.name, w.labels)).collect::<Vec<_>>().join("; ")
        )
    }))
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/cancel", tag = "executions", params(("id" = uuid::Uuid, Path)), responses((status = 200, body = attune_core::Execution), (status = 409, description = "Stale lease or invalid transition")))]
pub async fn cancel(
    state: State,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    let id = parse_id("execution", &id)?;
    let e = state.store.cancel_execution(id, &who.actor(), Timestamp::now()).await?;
    state.changed(&[(id, e.status)]).await;
    tracing::info!(execution_id = %id, status = %e.status, "cancel requested");
    Ok(Json(e.masked()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// `running` (started, or already past it) or `terminal` (default).
    until: Option<String>,
    /// Longest wait in milliseconds (default 30000; cut to `server.max_wait`, 60 s by default).
    timeout_ms: Option<u64>,
}

/// Long poll for a change: returns the execution as soon as it has started (`until=running`) or
/// ended (`until=terminal`), or as it is when the wait runs out.
#[utoipa::path(get, path = "/api/v1/executions/{id}/wait", tag = "executions", params(("id" = uuid::Uuid, Path), ("until" = Option<String>, Query, description = "running or terminal (default)", pattern = "^(running|terminal)$"), ("timeout_ms" = Option<u64>, Query, description = "longest wait, at most a day; cut to `server.max_wait` (60 s by default)", minimum = 0, maximum = 86400000)), responses((status = 200, body = attune_core::Execution)))]
pub async fn wait(
    state: State,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Json<Execution>, ApiError> {
    let id = parse_id("execution", &id)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let until_running = match q.until.as_deref() {
        None | Some("terminal") => false,
        Some("running") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("until must be running or terminal, not {other:?}"),
            ))
        }
    };
    let timeout_ms = q.timeout_ms.unwrap_or(30_000);
    if timeout_ms > 86_400_000 {
        return Err(ApiError::bad_request("invalid_query", "timeout_ms must be at most 86400000 (a day)"));
    }
    let timeout = std::time::Duration::from_millis(timeout_ms).min(state.opts.max_wait);
    let deadline = tokio::time::Instant::now() + timeout;
    let done = |s: ExecutionStatus| {
        s.is_terminal()
            || (until_running && s != ExecutionStatus::Scheduled && s != ExecutionStatus::Requested)
    };
    // Subscribe before looking, so a change between the look and the wait is not missed.
    let mut rx = state.changes.subscribe();
    loop {
        let e = state
            .store
            .get_execution_with_history(id)
            .await?
            .ok_or_else(|| ApiError::not_found("not_found", format!("execution {id} not found")))?;
        if done(e.status) || tokio::time::Instant::now() >= deadline {
            return Ok(Json(e.masked()));
        }
        // Until an event about this execution (or a lag, or the periodic re-check for changes made
        // by another replica).
        let recheck = (tokio::time::Instant::now() + state.opts.recheck).min(deadline);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(eid) if eid != id => continue,
                    _ => break,
                },
                _ = tokio::time::sleep_until(recheck) => break,
                _ = state.shutdown.cancelled() => break,
            }
        }
        if state.shutdown.is_cancelled() {
            return Err(ApiError::shutting_down());
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    after: Option<i64>,
}

/// Output chunks streamed by the worker while the action runs, after a cursor.
#[utoipa::path(get, path = "/api/v1/executions/{id}/logs", tag = "executions", params(("id" = uuid::Uuid, Path), ("after" = Option<i64>, Query)), responses((status = 200, body = attune_wire::Logs)))]
pub async fn logs(
    state: State,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<attune_wire::Logs>, ApiError> {
    let id = parse_id("execution", &id)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    // Status first: chunks stored before a terminal status are all there once it is seen.
    let e = state
        .store
        .get_execution(id)
        .await?
        .ok_or_else(|| ApiError::not_found("not_found", format!("execution {id} not found")))?;
    let after = q.after.unwrap_or(0);
    let chunks = state.store.logs_after(id, after, 1000).await?;
    let next = chunks.last().map(|c| c.seq).unwrap_or(after);
    Ok(Json(attune_wire::Logs { chunks, next, status: e.status }))
}
