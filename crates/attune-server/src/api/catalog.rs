//! The catalog: packs and actions (and loading a pack), workers, counts.

use attune_core::{auth::Identity, Action, ActionRef, PackDetail, PackRef, PackSummary, Timestamp, Worker};
use attune_wire::{LoadPack, PackLoaded, UploadPack};
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
/// (an admin's request naming a directory the server has). All of it or nothing; removing actions
/// or taking a pack over from another directory needs `replace`. Stored as content like an upload.
#[utoipa::path(post, path = "/api/v1/packs", tag = "packs", request_body = attune_wire::LoadPack, responses((status = 200, body = attune_wire::PackLoaded), (status = 409, description = "The load would remove actions or take the pack over, and `replace` was not given")))]
pub async fn load_pack(
    state: State,
    Extension(who): Extension<Identity>,
    Body(req): Body<LoadPack>,
) -> Result<(StatusCode, Json<PackLoaded>), ApiError> {
    let roots = state.opts.pack_dirs.clone();
    let limits = state.opts.pack_limits;
    let name = req.dir.clone();
    let staged = blocking(move || {
        let dir = crate::packs::resolve_requested(&roots, &name)
            .map_err(|e| ApiError::unprocessable("pack_dir_refused", e))?;
        crate::packs::stage_dir(&dir, &limits).map_err(refused)
    })
    .await?;
    store_staged(&state, &who, staged, req.replace).await
}

/// Loads a pack sent as its content: the body is the pack directory as a gzip-compressed tar
/// (`attune pack load DIR` makes it). Every entry is checked before anything is stored (no
/// absolute path, no `..`, no link leaving the pack, only files, directories and links, within
/// `packs.max_archive_bytes`); the pack is then read and checked as from a directory and stored
/// by the sha256 of its canonical archive, earlier versions kept. The same content from the same
/// source again changes nothing (`unchanged`).
#[utoipa::path(post, path = "/api/v1/pack-archives", tag = "packs", params(attune_wire::UploadPack), request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The pack directory as a gzip-compressed tar (any content type is taken)"), responses((status = 200, body = attune_wire::PackLoaded), (status = 409, description = "The load would remove actions or take the pack over, and `replace` was not given"), (status = 413, description = "Larger than packs.max_archive_bytes"), (status = 422, description = "An entry or a pack file refused; the message names it")))]
pub async fn upload_pack(
    state: State,
    Extension(who): Extension<Identity>,
    q: Result<Query<UploadPack>, axum::extract::rejection::QueryRejection>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<PackLoaded>), ApiError> {
    use axum::response::IntoResponse;
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limits = state.opts.pack_limits;
    let bytes = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "archive_too_large",
                format!(
                    "the pack archive is larger than packs.max_archive_bytes ({} bytes)",
                    limits.max_archive_bytes
                ),
            ))
        }
        Err(e) => return Err(ApiError::bad_request("invalid_body", e.into_response().status().to_string())),
    };
    if let Some(s) = &q.source {
        if s.len() > 4096 || s.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "invalid_query",
                "source must be at most 4096 bytes without control characters",
            ));
        }
    }
    let source = q.source.clone();
    let staged =
        blocking(move || crate::packs::stage(&bytes, &limits, source, "<archive>").map_err(refused)).await?;
    store_staged(&state, &who, staged, q.replace).await
}

/// Runs pack staging (file work) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("pack loading stopped: {e}"))
    })?
}

fn refused(e: crate::packs::StageError) -> ApiError {
    use crate::packs::StageError;
    match e {
        StageError::Archive(m) => ApiError::unprocessable("invalid_archive", m),
        StageError::Pack(lines) => {
            ApiError::unprocessable("invalid_pack", "the pack was not loaded").with_details(lines)
        }
        StageError::Internal(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
    }
}

/// Checks what only the server can check of a staged pack, stores it, and says what changed.
async fn store_staged(
    state: &State,
    who: &Identity,
    staged: crate::packs::Staged,
    replace: bool,
) -> Result<(StatusCode, Json<PackLoaded>), ApiError> {
    let crate::packs::Staged { pack: p, archive } = staged;
    crate::packs::check_rules(&state.store, &p).await.map_err(|e| {
        ApiError::unprocessable("invalid_pack", "the pack was not loaded")
            .with_details(e.lines().map(str::to_owned).collect())
    })?;
    let change = state
        .store
        .load_pack(&p.meta, crate::packs::content(&p, &archive), replace, Timestamp::now())
        .await?;
    state.submissions.forget_pack(&p.meta.pack_ref);
    crate::packs::say_replaced(p.meta.pack_ref.as_str(), &change);
    let digest = p.meta.digest.clone().unwrap_or_default();
    tracing::info!(pack = %p.meta.pack_ref, actions = p.actions.len(), %digest, unchanged = change.unchanged,
        source = p.meta.dir.as_deref().unwrap_or("archive"), by = %who.actor(), "pack loaded");
    Ok((
        StatusCode::OK,
        Json(PackLoaded {
            pack_ref: p.meta.pack_ref.to_string(),
            dir: p.meta.dir.clone().unwrap_or_default(),
            actions: p.actions.iter().map(|a| a.action_ref.to_string()).collect(),
            rules: p.rules.iter().map(|r| r.rule_ref.to_string()).collect(),
            triggers: p.triggers.iter().map(|t| t.type_ref.to_string()).collect(),
            sensors: p.sensors.iter().map(|t| t.sensor_ref.to_string()).collect(),
            removed: change.removed,
            previous_dir: change.previous_dir,
            notes: p.meta.notes.clone(),
            digest,
            size: archive.len() as u64,
            unchanged: change.unchanged,
        }),
    ))
}

/// A pack with its stored versions, newest first.
#[utoipa::path(get, path = "/api/v1/packs/{pack_ref}", tag = "packs", params(("pack_ref" = String, Path, pattern = "^[a-z][a-z0-9_-]{0,63}$")), responses((status = 200, body = attune_core::PackDetail)))]
pub async fn pack(state: State, Path(r): Path<String>) -> Result<Json<PackDetail>, ApiError> {
    let r = PackRef::parse(&r).map_err(|e| ApiError::bad_request("invalid_pack_ref", e.to_string()))?;
    let Some(summary) = state.store.list_packs().await?.into_iter().find(|p| p.meta.pack_ref == r) else {
        return Err(ApiError::not_found("unknown_pack", format!("no pack {r}; see GET /api/v1/packs")));
    };
    let versions = state.store.list_pack_versions(&r).await?;
    Ok(Json(PackDetail { summary, versions }))
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
