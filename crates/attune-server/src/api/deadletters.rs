//! Dead letters: work that was never processed successfully, listed with its cause; requeueing
//! submits it again as a new execution.

use attune_core::{auth::Identity, DeadLetter, Execution};
use axum::{
    extract::{rejection::QueryRejection, Path, Query},
    http::StatusCode,
    Extension, Json,
};
use serde::Deserialize;

use super::State;
use crate::{error::parse_id, ApiError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    all: bool,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "dead letters", params(("all" = Option<bool>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000)), responses((status = 200, body = Vec<attune_core::DeadLetter>)))]
pub async fn list(
    state: State,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 1000"));
    }
    Ok(Json(state.store.list_dead_letters(q.all, limit).await?))
}

#[utoipa::path(post, path = "/api/v1/dead-letters/{id}/requeue", tag = "dead letters", params(("id" = uuid::Uuid, Path)), responses((status = 201, body = attune_core::Execution), (status = 409, description = "Already requeued")))]
pub async fn requeue(
    state: State,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Execution>), ApiError> {
    let id = parse_id("dead letter", &id)?;
    let e = state.submissions.requeue(id, &who.actor()).await?;
    tracing::info!(dead_letter = %id, execution_id = %e.id, "dead letter requeued");
    Ok((StatusCode::CREATED, Json(e.masked())))
}
