//! Executions: submit (validated against the action's JSON Schema), list, get with history, cancel.

use std::sync::Arc;

use attune_client::wire::{CreateExecution, ExecutionList};
use attune_core::{Action, ActionRef, Execution, ExecutionStatus, Timestamp};
use attune_pack::ParamValidator;
use attune_store::{ExecutionFilter, NewExecution};
use axum::{
    extract::{rejection::QueryRejection, Path, Query},
    http::{header, StatusCode},
    response::IntoResponse,
    Json,
};
use serde::Deserialize;
use serde_json::Value;

use super::State;
use crate::{
    error::{parse_id, Body},
    ApiError, Shared,
};

/// Most attempts an execution may ask for.
const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest backoff between attempts an execution may ask for (a day).
const MAX_BACKOFF_SECONDS: u64 = 86_400;

/// What people see: secrets masked.
pub(crate) fn present(mut e: Execution) -> Execution {
    if let Some(a) = &e.action {
        e.parameters = a.mask_parameters(&e.parameters);
    }
    e
}

fn validator(shared: &Shared, action: &Action) -> Result<Arc<ParamValidator>, ApiError> {
    {
        let cache = shared.validators.lock().expect("validator cache lock");
        if let Some((schema, v)) = cache.get(&action.action_ref) {
            if *schema == action.parameters {
                return Ok(v.clone());
            }
        }
    }
    let v = Arc::new(ParamValidator::compile(&action.parameters).map_err(|e| {
        ApiError::unprocessable(
            "invalid_action",
            format!("action {}: its parameter schema {e}", action.action_ref),
        )
    })?);
    shared
        .validators
        .lock()
        .expect("validator cache lock")
        .insert(action.action_ref.clone(), (action.parameters.clone(), v.clone()));
    Ok(v)
}

#[utoipa::path(post, path = "/api/v1/executions", tag = "executions", request_body = attune_client::wire::CreateExecution, responses((status = 201, description = "Accepted", body = attune_core::Execution), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 422, description = "Invalid content", body = attune_client::wire::ErrorBody), (status = 503, description = "Database unavailable or shutting down", body = attune_client::wire::ErrorBody)))]
pub async fn create(state: State, Body(req): Body<CreateExecution>) -> Result<impl IntoResponse, ApiError> {
    let action_ref = ActionRef::parse(&req.action_ref)
        .map_err(|e| ApiError::unprocessable("invalid_action_ref", e.to_string()))?;
    let action = state.action(&action_ref).await?.ok_or_else(|| {
        ApiError::unprocessable(
            "unknown_action",
            format!("unknown action {action_ref}; `attune action list` shows the loaded actions"),
        )
    })?;
    let parameters = req.parameters.unwrap_or_else(|| Value::Object(Default::default()));
    if !parameters.is_object() {
        return Err(ApiError::unprocessable("invalid_parameters", "parameters must be a JSON object"));
    }
    if let Err(details) = validator(&state, &action)?.validate(&parameters) {
        return Err(ApiError::unprocessable(
            "invalid_parameters",
            format!("parameters do not match the schema of {action_ref} ({} problem(s))", details.len()),
        )
        .with_details(details));
    }
    if req.timeout_seconds == Some(0) {
        return Err(ApiError::unprocessable("invalid_timeout", "timeout_seconds must be at least 1"));
    }
    let max_attempts = req.max_attempts.unwrap_or(action.retry.max_attempts);
    if max_attempts == 0 || max_attempts > MAX_ATTEMPTS_LIMIT {
        return Err(ApiError::unprocessable(
            "invalid_max_attempts",
            format!("max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
        ));
    }
    let timeout_seconds = req.timeout_seconds.or(action.timeout_seconds);
    let mut action = action;
    if let Some(b) = req.backoff_seconds {
        if b > MAX_BACKOFF_SECONDS {
            return Err(ApiError::unprocessable(
                "invalid_backoff",
                format!("backoff_seconds must be at most {MAX_BACKOFF_SECONDS}"),
            ));
        }
        // The execution keeps its own snapshot of the action, retry policy included.
        action.retry.backoff_seconds = b;
    }
    action.retry.max_attempts = max_attempts;
    let new = NewExecution {
        action,
        parameters,
        timeout_seconds,
        max_attempts,
        actor: "api".into(),
        parent: None,
        trace_id: None,
    };
    let e = crate::submit::submit(&state, new).await?;
    tracing::debug!(execution_id = %e.id, action = %e.action_ref, "execution accepted");
    let location = format!("/api/v1/executions/{}", e.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(present(e))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    action_ref: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/executions", tag = "executions", params(("status" = Option<String>, Query), ("action_ref" = Option<String>, Query), ("before" = Option<String>, Query, description = "cursor: an execution id"), ("limit" = Option<u32>, Query)), responses((status = 200, body = attune_client::wire::ExecutionList), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody)))]
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
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 1000"));
    }
    let page = state.store.list_executions(&ExecutionFilter { status, action_ref, before, limit }).await?;
    Ok(Json(ExecutionList { items: page.items.into_iter().map(present).collect(), next: page.next }))
}

#[utoipa::path(get, path = "/api/v1/executions/{id}", tag = "executions", params(("id" = String, Path, description = "UUID")), responses((status = 200, description = "With history and attempts", body = attune_core::Execution), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 404, description = "Not found", body = attune_client::wire::ErrorBody)))]
pub async fn get(state: State, Path(id): Path<String>) -> Result<Json<Execution>, ApiError> {
    let id = parse_id("execution", &id)?;
    match state.store.get_execution_with_history(id).await? {
        Some(e) => Ok(Json(present(e))),
        None => Err(ApiError::not_found("not_found", format!("execution {id} not found"))),
    }
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/cancel", tag = "executions", params(("id" = String, Path, description = "UUID")), responses((status = 200, body = attune_core::Execution), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 404, description = "Not found", body = attune_client::wire::ErrorBody), (status = 409, description = "Stale lease or invalid transition", body = attune_client::wire::ErrorBody)))]
pub async fn cancel(state: State, Path(id): Path<String>) -> Result<Json<Execution>, ApiError> {
    let id = parse_id("execution", &id)?;
    let e = state.store.cancel_execution(id, "api", Timestamp::now()).await?;
    state.changed(&[(id, e.status)]).await;
    tracing::info!(execution_id = %id, status = %e.status, "cancel requested");
    Ok(Json(present(e)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// `running` (started, or already past it) or `terminal` (default).
    until: Option<String>,
    /// Longest wait in milliseconds (default 30000, at most 60000).
    timeout_ms: Option<u64>,
}

/// Long poll for a change: returns the execution as soon as it has started (`until=running`) or
/// ended (`until=terminal`), or as it is when the wait runs out.
#[utoipa::path(get, path = "/api/v1/executions/{id}/wait", tag = "executions", params(("id" = String, Path, description = "UUID"), ("until" = Option<String>, Query, description = "running or terminal"), ("timeout_ms" = Option<u64>, Query)), responses((status = 200, body = attune_core::Execution), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 404, description = "Not found", body = attune_client::wire::ErrorBody)))]
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
    let timeout = std::time::Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(60_000));
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
            return Ok(Json(present(e)));
        }
        // Until an event about this execution (or a lag, or the periodic re-check for changes made
        // by another replica).
        let recheck = (tokio::time::Instant::now() + std::time::Duration::from_secs(1)).min(deadline);
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
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ));
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    after: Option<i64>,
}

/// Output chunks streamed by the worker while the action runs, after a cursor.
#[utoipa::path(get, path = "/api/v1/executions/{id}/logs", tag = "executions", params(("id" = String, Path, description = "UUID"), ("after" = Option<i64>, Query)), responses((status = 200, body = attune_client::wire::Logs), (status = 400, description = "Malformed request", body = attune_client::wire::ErrorBody), (status = 404, description = "Not found", body = attune_client::wire::ErrorBody)))]
pub async fn logs(
    state: State,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<attune_client::wire::Logs>, ApiError> {
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
    Ok(Json(attune_client::wire::Logs { chunks, next, status: e.status }))
}
