//! The catalog: packs and actions (and loading a pack), workers, counts.

use attune_core::{Action, ActionRef, PackSummary, Timestamp, Worker};
use attune_wire::{PackLoaded, PackUpload};
use axum::{
    extract::{Path, Query},
    http::StatusCode,
    Json,
};
use serde::Deserialize;

use super::State;
use crate::{error::Body, ApiError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersQuery {
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/api/v1/workers", tag = "workers", params(("all" = Option<bool>, Query, description = "include deregistered workers")), responses((status = 200, body = Vec<attune_core::Worker>)))]
pub async fn workers(
    state: State,
    q: Result<Query<WorkersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Worker>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    Ok(Json(state.store.list_workers(q.all).await?))
}

/// Counts for dashboards and benchmarks: executions by status, workers by status.
#[utoipa::path(get, path = "/api/v1/stats", tag = "meta", responses((status = 200, description = "Executions and workers by status", body = Object)))]
pub async fn stats(state: State) -> Result<Json<serde_json::Value>, ApiError> {
    let mut executions = serde_json::Map::new();
    for (st, n) in state.store.count_by_status().await? {
        executions.insert(st.as_str().to_owned(), n.into());
    }
    let workers = state.store.list_workers(false).await?;
    let active = workers.iter().filter(|w| w.status == attune_core::WorkerStatus::Active).count();
    Ok(Json(serde_json::json!({
        "executions": executions,
        "workers": {"active": active, "inactive": workers.len() - active},
    })))
}

#[utoipa::path(get, path = "/api/v1/packs", tag = "packs", responses((status = 200, body = Vec<attune_core::PackSummary>)))]
pub async fn packs(state: State) -> Result<Json<Vec<PackSummary>>, ApiError> {
    Ok(Json(state.store.list_packs().await?))
}

/// Upsert of a whole pack read by `attune pack load`. Checked again here, by the same rules as the
/// loader (`attune_pack::check_pack`); nothing is stored unless all of it is right.
#[utoipa::path(post, path = "/api/v1/packs", tag = "packs", request_body = attune_wire::PackUpload, responses((status = 200, body = attune_wire::PackLoaded)))]
pub async fn load_pack(
    state: State,
    Body(up): Body<PackUpload>,
) -> Result<(StatusCode, Json<PackLoaded>), ApiError> {
    let problems = attune_pack::check_pack(&up.pack, &up.actions);
    if !problems.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_pack",
            format!("pack {} was not loaded", up.pack.pack_ref),
        )
        .with_details(problems));
    }
    state.store.upsert_pack(&up.pack, &up.actions, Timestamp::now()).await?;
    state.submissions.forget_pack(&up.pack.pack_ref);
    tracing::info!(pack = %up.pack.pack_ref, actions = up.actions.len(), "pack loaded");
    Ok((
        StatusCode::OK,
        Json(PackLoaded {
            pack_ref: up.pack.pack_ref.to_string(),
            actions: up.actions.iter().map(|a| a.action_ref.to_string()).collect(),
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/actions", tag = "packs", responses((status = 200, body = Vec<attune_core::Action>)))]
pub async fn actions(state: State) -> Result<Json<Vec<Action>>, ApiError> {
    Ok(Json(state.store.list_actions(None).await?))
}

#[utoipa::path(get, path = "/api/v1/actions/{action_ref}", tag = "packs", params(("action_ref" = String, Path, description = "PACK.NAME", pattern = "^[a-z][a-z0-9_-]{0,63}\\.[a-z][a-z0-9_-]{0,63}$")), responses((status = 200, body = attune_core::Action)))]
pub async fn action(state: State, Path(r): Path<String>) -> Result<Json<Action>, ApiError> {
    let r = ActionRef::parse(&r).map_err(|e| ApiError::bad_request("invalid_action_ref", e.to_string()))?;
    match state.store.get_action(&r).await? {
        Some(a) => Ok(Json(a)),
        None => Err(ApiError::not_found("unknown_action", format!("no action {r}; see GET /api/v1/actions"))),
    }
}
