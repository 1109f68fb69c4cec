//! The operations door: health (touches the database), Prometheus metrics.

use attune_core::Timestamp;
use attune_wire::Health;
use axum::Json;

use super::State;
use crate::ApiError;

#[utoipa::path(get, path = "/health", tag = "meta", responses((status = 200, body = attune_wire::Health)))]
pub async fn health(state: State) -> Result<Json<Health>, ApiError> {
    // Touch the database so that a health check fails when it is gone.
    state.store.list_packs().await?;
    let database = match state.store.kind() {
        attune_store::BackendKind::Sqlite => "sqlite",
        attune_store::BackendKind::Postgres => "postgres",
    };
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        database: database.into(),
    }))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(state: State) -> Result<impl axum::response::IntoResponse, ApiError> {
    let snap = state.store.metrics_snapshot().await?;
    let workers = state.store.list_workers(false).await?;
    let body = crate::metrics::render(&state.metrics, &snap, &workers, Timestamp::now());
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
}
