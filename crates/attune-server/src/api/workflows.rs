//! Workflows and inquiries: a workflow's children (for `attune execution tree`), pause and
//! resume, and the inquiries waiting for a person, with the response door.

use attune_core::{auth::Identity, lifecycle, Execution, ExecutionStatus, Runtime, Timestamp};
use attune_wire::{ExecutionList, InquiryResponse};
use axum::{extract::Path, Extension, Json};
use serde_json::Value;

use super::State;
use crate::{
    error::{parse_id, Body},
    ApiError,
};

async fn execution(state: &crate::Shared, id: uuid::Uuid) -> Result<Execution, ApiError> {
    state
        .store
        .get_execution(id)
        .await?
        .ok_or_else(|| ApiError::not_found("not_found", format!("execution {id} not found")))
}

#[utoipa::path(get, path = "/api/v1/executions/{id}/children", tag = "workflows", params(("id" = uuid::Uuid, Path)), responses((status = 200, description = "The workflow's task executions (or a requeued execution's requeues), oldest first", body = attune_wire::ExecutionList)))]
pub async fn children(state: State, Path(id): Path<String>) -> Result<Json<ExecutionList>, ApiError> {
    let id = parse_id("execution", &id)?;
    execution(&state, id).await?;
    let items = state.store.children(id).await?.into_iter().map(Execution::masked).collect();
    Ok(Json(ExecutionList { items, next: None }))
}

async fn control(
    state: State,
    id: &str,
    input: attune_workflow::Input,
    word: &str,
) -> Result<Json<Execution>, ApiError> {
    let id = parse_id("execution", id)?;
    let e = execution(&state, id).await?;
    if e.action.as_ref().map(|a| a.runtime) != Some(Runtime::Workflow) {
        return Err(ApiError::unprocessable("not_a_workflow", format!("execution {id} is not a workflow")));
    }
    if e.status != ExecutionStatus::Running {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "invalid_transition",
            format!("workflow {id} is {}; only a running workflow can be {word}d", e.status),
        ));
    }
    // A step that lost a race is taken again over the state that won.
    for _ in 0..5 {
        match crate::workflows::advance(&state.0, id, Some(input.clone())).await {
            Ok(true) => break,
            Ok(false) => {
                let paused = state.store.get_workflow(id).await?.is_some_and(|w| w.paused);
                if paused == matches!(input, attune_workflow::Input::Pause) {
                    break; // already so
                }
            }
            Err(crate::workflows::EngineError::Store(e)) => return Err(e.into()),
            Err(e) => {
                return Err(ApiError::new(axum::http::StatusCode::CONFLICT, "workflow_state", e.to_string()))
            }
        }
    }
    tracing::info!(workflow = %id, "{word}d");
    Ok(Json(execution(&state, id).await?.masked()))
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/pause", tag = "workflows", params(("id" = uuid::Uuid, Path)), responses((status = 200, description = "Paused: what runs finishes, nothing new starts until resume", body = attune_core::Execution), (status = 409, description = "Not running"), (status = 422, description = "Not a workflow")))]
pub async fn pause(state: State, Path(id): Path<String>) -> Result<Json<Execution>, ApiError> {
    control(state, &id, attune_workflow::Input::Pause, "pause").await
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/resume", tag = "workflows", params(("id" = uuid::Uuid, Path)), responses((status = 200, description = "Resumed: what was held starts", body = attune_core::Execution), (status = 409, description = "Not running"), (status = 422, description = "Not a workflow")))]
pub async fn resume(state: State, Path(id): Path<String>) -> Result<Json<Execution>, ApiError> {
    control(state, &id, attune_workflow::Input::Resume, "resume").await
}

#[utoipa::path(get, path = "/api/v1/inquiries", tag = "workflows", responses((status = 200, description = "Inquiries waiting for a response, newest first", body = attune_wire::ExecutionList)))]
pub async fn list(state: State) -> Result<Json<ExecutionList>, ApiError> {
    let items = state.store.list_inquiries(500).await?.into_iter().map(Execution::masked).collect();
    Ok(Json(ExecutionList { items, next: None }))
}

#[utoipa::path(post, path = "/api/v1/inquiries/{id}/respond", tag = "workflows", params(("id" = uuid::Uuid, Path)), request_body = attune_wire::InquiryResponse, responses((status = 200, description = "Answered: the inquiry succeeded with the response as its result", body = attune_core::Execution), (status = 409, description = "No longer pending")))]
pub async fn respond(
    state: State,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
    Body(req): Body<InquiryResponse>,
) -> Result<Json<Execution>, ApiError> {
    let id = parse_id("inquiry", &id)?;
    Ok(Json(answer(&state, &who, id, req.response.unwrap_or(Value::Null)).await?))
}

/// Answers inquiry `id` with `response`, checked against the inquiry's schema, as `who` (the API's
/// route and the console's form). Returns the inquiry, masked.
pub(crate) async fn answer(
    state: &crate::Shared,
    who: &Identity,
    id: uuid::Uuid,
    response: Value,
) -> Result<Execution, ApiError> {
    let e = execution(state, id).await?;
    if e.action.as_ref().map(|a| a.runtime) != Some(Runtime::Inquiry) {
        return Err(ApiError::not_found(
            "not_found",
            format!("inquiry {id} not found (execution {id} is not an inquiry)"),
        ));
    }
    if !response.is_object() {
        return Err(ApiError::unprocessable("invalid_response", "response must be a JSON object"));
    }
    let schema = attune_core::action::inquiry_schema(&e.parameters).cloned().unwrap_or(Value::Null);
    if schema.is_object() {
        let v = attune_pack::ParamValidator::compile(&schema).map_err(|m| {
            ApiError::unprocessable(
                "invalid_inquiry",
                format!("the inquiry's schema {m}; it cannot be answered"),
            )
        })?;
        if let Err(details) = v.validate_as(&response, "response", "response field") {
            return Err(ApiError::unprocessable(
                "invalid_response",
                format!("the response does not match the inquiry's schema: {}", details.join("; ")),
            )
            .with_details(details));
        }
    }
    let now = Timestamp::now();
    let actor = who.actor();
    // An inquiry listed while still `scheduled` (the engine opens it on its next pass) can be
    // answered already: open it first, so its history reads opened, then answered.
    for (_, r) in state.store.drive(&[id], |s| lifecycle::inquiry_open(s, now)).await? {
        if let Ok(attune_store::Driven::Applied(a)) = r {
            state.changed(&[(id, a.status)]).await;
        }
    }
    let driven = state.store.drive(&[id], |s| lifecycle::inquiry_answer(s, &response, &actor, now)).await?;
    for (_, r) in driven {
        let d = r?;
        state.changed(&[(id, d.status())]).await;
    }
    tracing::info!(inquiry = %id, by = %actor, "inquiry answered");
    Ok(execution(state, id).await?.masked())
}
