//! Tokens (administrators only): create one (its secret is in the answer, once), list them (never
//! their secrets), revoke one by name.

use attune_core::{
    auth::{Identity, TokenInfo},
    duration::parse_duration,
    Timestamp,
};
use attune_wire::{CreateToken, CreatedToken};
use axum::{
    extract::{rejection::QueryRejection, Path, Query},
    http::StatusCode,
    Extension, Json,
};
use serde::Deserialize;

use super::State;
use crate::{
    auth::{create_token, TokenRequest},
    error::Body,
    ApiError,
};

/// The longest validity a token may be given (ten years).
const MAX_VALIDITY_DAYS: u64 = 3650;

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_token",
            "name must be 1 to 64 letters, digits, '.', '_', '-' or '@'",
        ))
    }
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = attune_wire::CreateToken, responses((status = 201, description = "Created; the secret is shown this once", body = attune_wire::CreatedToken), (status = 409, description = "A token with this name is in use")))]
pub async fn create(
    state: State,
    Extension(who): Extension<Identity>,
    Body(req): Body<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    check_name(&req.name)?;
    if !req.role.grantable() {
        return Err(ApiError::unprocessable(
            "invalid_token",
            "role agent is a worker's own credential, issued when it registers; use role worker to enroll workers",
        ));
    }
    let now = Timestamp::now();
    let expires_at = match &req.expires_in {
        None => None,
        Some(d) => {
            let d = parse_duration(d)
                .map_err(|e| ApiError::unprocessable("invalid_token", format!("expires_in: {e}")))?;
            if d.is_zero() || d.as_secs() > MAX_VALIDITY_DAYS * 86_400 {
                return Err(ApiError::unprocessable(
                    "invalid_token",
                    format!("expires_in must be between 1s and {MAX_VALIDITY_DAYS} days"),
                ));
            }
            Some(now.plus(d))
        }
    };
    let request = TokenRequest {
        name: req.name,
        role: req.role,
        worker: None,
        created_by: Some(who.actor()),
        expires_at,
    };
    let (token, secret) = create_token(&state.store, request, now).await?;
    tracing::info!(token = %token.name, role = %token.role, by = %who.actor(), "token created");
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", params(("all" = Option<bool>, Query, description = "include revoked tokens")), responses((status = 200, body = Vec<attune_core::auth::TokenInfo>)))]
pub async fn list(
    state: State,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    Ok(Json(state.store.list_tokens(q.all, false).await?))
}

#[utoipa::path(post, path = "/api/v1/tokens/{name}/revoke", tag = "tokens", params(("name" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$")), responses((status = 200, body = attune_core::auth::TokenInfo)))]
pub async fn revoke(
    state: State,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let token = state.store.revoke_token(&name, Timestamp::now()).await?;
    state.tokens.clear();
    tracing::info!(token = %token.name, by = %who.actor(), "token revoked");
    Ok(Json(token))
}
