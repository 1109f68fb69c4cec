//! The catalog: packs and actions (and loading a pack), workers, counts.

use attune_core::{auth::Identity, Action, ActionRef, PackSummary, Timestamp, Worker};
use attune_wire::{LoadPack, PackLoaded};
use axum::{
    extract::{Path, Query},
    http::StatusCode,
    Extension, Json,
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

/// Counts for dashboards and benchmarks: executions by status, workers by status, events still
/// waiting for their rules.
#[utoipa::path(get, path = "/api/v1/stats", tag = "meta", responses((status = 200, description = "Executions and workers by status", body = Object)))]
pub async fn stats(state: State) -> Result<Json<serde_json::Value>, ApiError> {
    let mut executions = serde_json::Map::new();
    for (st, n) in state.store.count_by_status().await? {
        executions.insert(st.as_str().to_owned(), n.into());
    }
    let workers = state.store.list_workers(false).await?;
    let active = workers.iter().filter(|w| w.status == attune_core::WorkerStatus::Active).count();
    let waiting = state.store.count_unprocessed_events().await?;
    Ok(Json(serde_json::json!({
        "executions": executions,
        "workers": {"active": active, "inactive": workers.len() - active},
        "events": {"unprocessed": waiting},
    })))
}

#[utoipa::path(get, path = "/api/v1/packs", tag = "packs", responses((status = 200, body = Vec<attune_core::PackSummary>)))]
pub async fn packs(state: State) -> Result<Json<Vec<PackSummary>>, ApiError> {
    Ok(Json(state.store.list_packs().await?))
}

/// (Re)loads a pack directory under the server's `packs.dirs`, read and checked by the server
/// (`attune pack load`). All of it or nothing; removing actions or taking a pack over from another
/// directory needs `replace`.
#[utoipa::path(post, path = "/api/v1/packs", tag = "packs", request_body = attune_wire::LoadPack, responses((status = 200, body = attune_wire::PackLoaded), (status = 409, description = "The load would remove actions or take the pack over, and `replace` was not given")))]
pub async fn load_pack(
    state: State,
    Extension(who): Extension<Identity>,
    Body(req): Body<LoadPack>,
) -> Result<(StatusCode, Json<PackLoaded>), ApiError> {
    let roots = state.opts.pack_dirs.clone();
    let name = req.dir.clone();
    let read = tokio::task::spawn_blocking(move || {
        let dir = crate::packs::resolve_requested(&roots, &name)
            .map_err(|e| ApiError::unprocessable("pack_dir_refused", e))?;
        attune_pack::load_pack_dir(&dir).map(|p| (dir, p)).map_err(|e| {
            ApiError::unprocessable("invalid_pack", "the pack was not loaded")
                .with_details(e.0.iter().map(|e| e.to_string()).collect())
        })
    })
    .await
    .map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("pack loading stopped: {e}"))
    })?;
    let (dir, p) = read?;
    crate::packs::check_rules(&state.store, &p).await.map_err(|e| {
        ApiError::unprocessable("invalid_pack", "the pack was not loaded")
            .with_details(e.lines().map(str::to_owned).collect())
    })?;
    let change =
        state.store.load_pack(&p.meta, crate::packs::content(&p), req.replace, Timestamp::now()).await?;
    state.submissions.forget_pack(&p.meta.pack_ref);
    crate::packs::say_replaced(p.meta.pack_ref.as_str(), &change);
    tracing::info!(pack = %p.meta.pack_ref, actions = p.actions.len(), dir = %dir.display(), by = %who.actor(), "pack loaded");
    Ok((
        StatusCode::OK,
        Json(PackLoaded {
            pack_ref: p.meta.pack_ref.to_string(),
            dir: dir.display().to_string(),
            actions: p.actions.iter().map(|a| a.action_ref.to_string()).collect(),
            rules: p.rules.iter().map(|r| r.rule_ref.to_string()).collect(),
            triggers: p.triggers.iter().map(|t| t.type_ref.to_string()).collect(),
            sensors: p.sensors.iter().map(|t| t.sensor_ref.to_string()).collect(),
            removed: change.removed,
            previous_dir: change.previous_dir,
            notes: p.meta.notes.clone(),
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
