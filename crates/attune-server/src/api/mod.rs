//! The routes of API v1 and of the worker protocol.

mod catalog;
mod deadletters;
mod events;
mod executions;
mod worker;

use std::sync::Arc;

use axum::{
    routing::{get, post},
    Router,
};

use crate::{ApiError, Shared};

pub(crate) type State = axum::extract::State<Arc<Shared>>;

/// The OpenAPI document, generated from the handlers' `#[utoipa::path]` attributes and the types'
/// `ToSchema` derives. A test checks that every documented operation is routed.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Attune API",
        version = "1",
        description = "Run actions on a fleet of workers. Errors are {\"error\": {\"code\", \"message\", \"details\"?}} with a 4xx for the client's mistakes."
    ),
    paths(
        catalog::health,
        catalog::metrics,
        catalog::stats,
        catalog::workers,
        catalog::packs,
        catalog::load_pack,
        catalog::actions,
        catalog::action,
        executions::create,
        executions::list,
        executions::get,
        executions::cancel,
        executions::wait,
        executions::logs,
        events::events,
        deadletters::list,
        deadletters::requeue,
        worker::register,
        worker::heartbeat,
        worker::poll,
        worker::start,
        worker::complete,
        worker::append_logs,
        worker::start_batch,
        worker::complete_batch,
        worker::release,
        worker::drain,
        worker::deregister,
    ),
    components(schemas(attune_client::wire::ErrorBody, attune_client::wire::ErrorDetail))
)]
pub struct ApiDoc;

async fn openapi() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(<ApiDoc as utoipa::OpenApi>::openapi())
}

async fn docs() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("docs.html"))
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(catalog::health))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/docs", get(docs))
        .route("/metrics", get(catalog::metrics))
        .route("/api/v1/executions", post(executions::create).get(executions::list))
        .route("/api/v1/executions/{id}", get(executions::get))
        .route("/api/v1/executions/{id}/cancel", post(executions::cancel))
        .route("/api/v1/executions/{id}/wait", get(executions::wait))
        .route("/api/v1/executions/{id}/logs", get(executions::logs))
        .route("/api/v1/worker/{id}/executions/{execution}/logs", post(worker::append_logs))
        .route("/api/v1/stats", get(catalog::stats))
        .route("/api/v1/events", get(events::events))
        .route("/api/v1/dead-letters", get(deadletters::list))
        .route("/api/v1/dead-letters/{id}/requeue", post(deadletters::requeue))
        .route("/api/v1/workers", get(catalog::workers))
        .route("/api/v1/packs", get(catalog::packs).post(catalog::load_pack))
        .route("/api/v1/actions", get(catalog::actions))
        .route("/api/v1/actions/{action_ref}", get(catalog::action))
        .route("/api/v1/worker/register", post(worker::register))
        .route("/api/v1/worker/{id}/heartbeat", post(worker::heartbeat))
        .route("/api/v1/worker/{id}/poll", post(worker::poll))
        .route("/api/v1/worker/{id}/executions/{execution}/start", post(worker::start))
        .route("/api/v1/worker/{id}/executions/{execution}/complete", post(worker::complete))
        .route("/api/v1/worker/{id}/executions/{execution}/release", post(worker::release))
        .route("/api/v1/worker/{id}/start-batch", post(worker::start_batch))
        .route("/api/v1/worker/{id}/complete-batch", post(worker::complete_batch))
        .route("/api/v1/worker/{id}/drain", post(worker::drain))
        .route("/api/v1/worker/{id}/deregister", post(worker::deregister))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found("no_route", format!("no route {}; the API lives under /api/v1", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
