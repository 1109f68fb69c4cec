//! `ApiError`: the one place where failures become HTTP responses. Client faults get a 4xx with a
//! precise message; anything else is logged once here and answered with a generic 500.

use attune_store::StoreError;
use attune_wire::{ErrorBody, ErrorDetail};

use crate::submission::SubmitError;
use axum::{
    extract::{rejection::JsonRejection, FromRequest, Request},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::de::DeserializeOwned;

#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: Vec::new() }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn shutting_down() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down")
    }
    pub fn with_details(mut self, details: Vec<String>) -> Self {
        self.details = details;
        self
    }
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The error as it appears in a batch reply.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code.to_owned(),
            message: self.message.clone(),
            details: self.details.clone(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::from(&e)
    }
}

impl From<&StoreError> for ApiError {
    fn from(e: &StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => {
                let code = if *what == "worker" { "unknown_worker" } else { "not_found" };
                ApiError::not_found(code, format!("{what} {id} not found"))
            }
            StoreError::StaleLease { .. } => {
                ApiError::new(StatusCode::CONFLICT, "stale_lease", e.to_string())
            }
            StoreError::AlreadyDone(_) => ApiError::new(StatusCode::CONFLICT, "already_done", e.to_string()),
            StoreError::Transition { .. } => {
                ApiError::new(StatusCode::CONFLICT, "invalid_transition", e.to_string())
            }
            StoreError::BadReport { .. } => ApiError::unprocessable("invalid_report", e.to_string()),
            e => {
                tracing::error!(error = %e, "store failure");
                let status = match e {
                    StoreError::Database(sqlx_err) if is_unavailable(sqlx_err) => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                ApiError::new(status, "internal", "internal error; see the server log")
            }
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::UnknownAction(_) => ApiError::unprocessable("unknown_action", e.to_string()),
            SubmitError::BrokenAction { .. } => ApiError::unprocessable("invalid_action", e.to_string()),
            SubmitError::Parameters { ref details, .. } => {
                let details = details.clone();
                ApiError::unprocessable("invalid_parameters", e.to_string()).with_details(details)
            }
            SubmitError::Invalid(i) => ApiError::unprocessable(i.code, i.message),
            SubmitError::Store(s) => ApiError::from(&*s),
            SubmitError::ShuttingDown => ApiError::shutting_down(),
        }
    }
}

fn is_unavailable(e: &attune_store::SqlxError) -> bool {
    matches!(
        e,
        attune_store::SqlxError::PoolTimedOut
            | attune_store::SqlxError::Io(_)
            | attune_store::SqlxError::PoolClosed
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.to_owned(), message: self.message, details: self.details },
        };
        (self.status, Json(body)).into_response()
    }
}

/// A JSON request body whose rejections (malformed JSON, wrong content type, missing or unknown
/// fields) become `ApiError`s with serde's precise message.
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rej) => {
                let code = match &rej {
                    JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
                    JsonRejection::JsonSyntaxError(_) => "malformed_json",
                    _ => "invalid_body",
                };
                let status = match &rej {
                    JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    JsonRejection::JsonDataError(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    _ => StatusCode::BAD_REQUEST,
                };
                Err(ApiError::new(status, code, rej.body_text()))
            }
        }
    }
}

/// Parses a path segment as a UUID with a 400 naming it.
pub fn parse_id(what: &str, s: &str) -> Result<uuid::Uuid, ApiError> {
    s.parse().map_err(|_| ApiError::bad_request("invalid_id", format!("{what} id {s:?} is not a UUID")))
}
