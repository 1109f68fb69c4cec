//! `/api/v1/keys`: the key store. A secret key's value goes in once and never comes out through
//! the API; it is opened only to hand a task to its worker (`crate::keys`).

use attune_core::{
    auth::Identity,
    keys::{check_name, check_value, KeyInfo},
    PackRef, Timestamp,
};
use attune_store::KeyValue;
use attune_wire::{Resealed, SetKey};
use axum::{
    extract::{rejection::QueryRejection, Path, Query},
    Extension, Json,
};
use serde::Deserialize;

use super::State;
use crate::{error::Body, ApiError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeQuery {
    pack: Option<String>,
}

fn invalid(message: String) -> ApiError {
    ApiError::unprocessable("invalid_key", message)
}

fn scope(pack: Option<String>) -> Result<Option<String>, ApiError> {
    pack.map(|p| PackRef::parse(&p).map(|p| p.to_string()).map_err(|e| invalid(format!("pack: {e}"))))
        .transpose()
}

fn query(q: Result<Query<ScopeQuery>, QueryRejection>) -> Result<Option<String>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    q.pack
        .map(|p| {
            PackRef::parse(&p)
                .map(|p| p.to_string())
                .map_err(|e| ApiError::bad_request("invalid_query", format!("pack: {e}")))
        })
        .transpose()
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = attune_wire::SetKey, responses((status = 200, description = "Set (created or replaced); a secret's value is not shown", body = attune_core::keys::KeyInfo)))]
pub async fn set(
    state: State,
    Extension(who): Extension<Identity>,
    Body(req): Body<SetKey>,
) -> Result<Json<KeyInfo>, ApiError> {
    check_name(&req.name).map_err(invalid)?;
    check_value(&req.value).map_err(invalid)?;
    let pack = scope(req.pack)?;
    let _writing = state.key_writes.lock().await;
    let value = if req.secret {
        let ring = state.keyring.read().unwrap_or_else(|e| e.into_inner()).clone();
        ring.seal(pack.as_deref(), &req.name, &req.value)
            .map_err(|e| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "no_master_key", e))?
    } else {
        KeyValue::Plain(req.value)
    };
    let info =
        state.store.put_key(pack.as_deref(), &req.name, &value, &who.actor(), Timestamp::now()).await?;
    tracing::info!(key = %info.name, pack = ?info.pack, secret = info.secret, by = %who.actor(), "key set");
    Ok(Json(info))
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", params(("pack" = Option<String>, Query, description = "only this pack's keys and the global ones", pattern = "^[a-z][a-z0-9_-]{0,63}$")), responses((status = 200, description = "Keys; secret values never", body = Vec<attune_core::keys::KeyInfo>)))]
pub async fn list(
    state: State,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> Result<Json<Vec<KeyInfo>>, ApiError> {
    let pack = query(q)?;
    Ok(Json(state.store.list_keys(pack.as_deref()).await?))
}

#[utoipa::path(get, path = "/api/v1/keys/{name}", tag = "keys", params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$"), ("pack" = Option<String>, Query, description = "the pack the key belongs to; a global key when absent", pattern = "^[a-z][a-z0-9_-]{0,63}$")), responses((status = 200, description = "The key; a secret's value never", body = attune_core::keys::KeyInfo)))]
pub async fn get(
    state: State,
    Path(name): Path<String>,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> Result<Json<KeyInfo>, ApiError> {
    check_name(&name).map_err(|e| ApiError::bad_request("invalid_key_name", e))?;
    let pack = query(q)?;
    match state.store.get_key(pack.as_deref(), &name).await? {
        Some(k) => Ok(Json(k.info)),
        None => Err(ApiError::not_found("unknown_key", format!("no key {name}; see GET /api/v1/keys"))),
    }
}

#[utoipa::path(delete, path = "/api/v1/keys/{name}", tag = "keys", params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$"), ("pack" = Option<String>, Query, description = "the pack the key belongs to; a global key when absent", pattern = "^[a-z][a-z0-9_-]{0,63}$")), responses((status = 200, description = "Deleted", body = attune_core::keys::KeyInfo)))]
pub async fn delete(
    state: State,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> Result<Json<KeyInfo>, ApiError> {
    check_name(&name).map_err(|e| ApiError::bad_request("invalid_key_name", e))?;
    let pack = query(q)?;
    let info = state.store.delete_key(pack.as_deref(), &name).await?;
    tracing::info!(key = %info.name, pack = ?info.pack, by = %who.actor(), "key deleted");
    Ok(Json(info))
}

/// A new master key: every secret is sealed again under it, then the old one is dropped from the
/// master key file. Other replicas need the new file before they can open secrets again.
#[utoipa::path(post, path = "/api/v1/keys/rotate-master", tag = "keys", responses((status = 200, body = attune_wire::Resealed)))]
pub async fn rotate_master(
    state: State,
    Extension(who): Extension<Identity>,
) -> Result<Json<Resealed>, ApiError> {
    let unavailable =
        |e: String| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "rotation_failed", e);
    let _writing = state.key_writes.lock().await;
    let old = state.keyring.read().unwrap_or_else(|e| e.into_inner()).clone();
    let ring = old.rotate().map_err(|e| unavailable(format!("cannot write the master key file: {e:#}")))?;
    *state.keyring.write().unwrap_or_else(|e| e.into_inner()) = ring.clone();
    let sealed = state.store.sealed_keys().await?;
    let mut changes = Vec::with_capacity(sealed.len());
    for k in sealed {
        let plain = ring.open(&k).map_err(unavailable)?;
        let new = ring.seal(k.info.pack.as_deref(), &k.info.name, &plain).map_err(unavailable)?;
        changes.push((k, new));
    }
    let resealed = state.store.reseal_keys(&changes).await?;
    let done = ring
        .finish_rotation()
        .map_err(|e| unavailable(format!("cannot write the master key file: {e:#}")))?;
    let key_id = done.current_id().unwrap_or_default().to_owned();
    *state.keyring.write().unwrap_or_else(|e| e.into_inner()) = done;
    tracing::info!(resealed, key_id = %key_id, by = %who.actor(), "master key rotated");
    Ok(Json(Resealed { resealed, key_id }))
}
