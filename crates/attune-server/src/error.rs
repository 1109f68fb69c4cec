//! `ApiError`: the one place where failures become HTTP responses. Client faults get a 4xx with a
//! precise message; anything else is logged once here and answered with a generic 500.

use attune_store::StoreError;
use attune_wire::{ErrorBody, ErrorDetail};

use crate::{submission::SubmitError, Shared};
use std::sync::{atomic::Ordering::Relaxed, Arc};

use axum::{
    body::Bytes,
    extract::{rejection::JsonRejection, FromRequest, Request},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::de::DeserializeOwned;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    code: &'static str,
    pub(crate) message: String,
    pub(crate) details: Vec<String>,
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
    /// The message with its details, on one line.
    pub fn describe(&self) -> String {
        if self.details.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.message, self.details.join("; "))
        }
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
            StoreError::RefusedReport { .. } => ApiError::unprocessable("invalid_report", e.to_string()),
            StoreError::Forbidden(m) => crate::auth::forbidden(m.clone()),
            StoreError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message.clone())
            }
            StoreError::AlreadyDone(_) => ApiError::new(StatusCode::CONFLICT, "already_done", e.to_string()),
            StoreError::Transition { .. } => {
                ApiError::new(StatusCode::CONFLICT, "invalid_transition", e.to_string())
            }
            StoreError::Database(sqlx_err) if is_unstorable_text(sqlx_err) => ApiError::unprocessable(
                "invalid_text",
                "a value holds a character the database cannot store (NUL); nothing was changed",
            ),
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

/// PostgreSQL refusing text it cannot store (NUL in a `TEXT` value): the client's value, not our
/// fault. Every door refuses such values before they reach the store; this is the net below.
fn is_unstorable_text(e: &attune_store::SqlxError) -> bool {
    match e {
        attune_store::SqlxError::Database(d) => matches!(d.code().as_deref(), Some("22021" | "22P05")),
        _ => false,
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
        let mut resp = (self.status, Json(body)).into_response();
        if matches!(self.status, StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT) {
            // The body was not read to its end: the connection cannot carry another request, and
            // the client must not try (it would see its next request on it fail).
            resp.headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A JSON request body. It must arrive within `server.body_timeout` (408) and fit its door's
/// limit (413, `DefaultBodyLimit` on the door); malformed JSON, a wrong content type, missing or
/// unknown fields and integers beyond 64 bits become `ApiError`s naming what is wrong.
pub struct Body<T>(pub T);

/// A JSON body as `Body` reads it, kept as its exact bytes too (a webhook's signature is over
/// them): any JSON value.
pub struct RawJson(pub Bytes, pub serde_json::Value);

impl FromRequest<Arc<Shared>> for RawJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<Shared>) -> Result<Self, Self::Rejection> {
        let bytes = json_bytes(req, state).await?;
        let value = Json::<serde_json::Value>::from_bytes(&bytes)
            .map_err(|rej| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", rej.body_text()))?
            .0;
        Ok(RawJson(bytes, value))
    }
}

impl<T> FromRequest<Arc<Shared>> for Body<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<Shared>) -> Result<Self, Self::Rejection> {
        let bytes = json_bytes(req, state).await?;
        // Every body this API takes is an object; serde would also fill a struct from a list.
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{')
            && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok()
        {
            return Err(ApiError::unprocessable("invalid_body", "expected a JSON object"));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rej) => {
                let (status, code) = match &rej {
                    JsonRejection::JsonDataError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
                    JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
                    _ => (StatusCode::BAD_REQUEST, "invalid_body"),
                };
                Err(ApiError::new(status, code, rej.body_text()))
            }
        }
    }
}

/// A JSON body's bytes: the content type, the door's size limit, the body timeout and (for
/// people's requests) integers beyond 64 bits checked.
async fn json_bytes(req: Request, state: &Arc<Shared>) -> Result<Bytes, ApiError> {
    {
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a body with `Content-Type: application/json`",
            ));
        }
        // A body announced larger than the door takes is refused before a byte of it is read.
        let h = &state.opts.http;
        let req_is_worker = req.uri().path().starts_with("/api/v1/worker/");
        let max = if req_is_worker { h.max_worker_request_bytes } else { h.max_body_bytes };
        let announced = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(n) = announced.filter(|n| *n > max as u64) {
            state.metrics.http.too_large.fetch_add(1, Relaxed);
            // A modest overshoot is read and dropped first, so that the client, still writing,
            // gets the answer instead of a broken pipe; a huge one is refused at once.
            if n <= (8 * max as u64).min(DRAIN_AT_MOST) {
                let mut body = req.into_body().into_data_stream();
                let _ = tokio::time::timeout(h.body_timeout, async {
                    use futures_util::StreamExt;
                    while let Some(Ok(_)) = body.next().await {}
                })
                .await;
            }
            return Err(too_large(max));
        }
        let limit = h.body_timeout;
        let bytes = match tokio::time::timeout(limit, Bytes::from_request(req, state)).await {
            Ok(Ok(b)) => b,
            Ok(Err(rej)) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                state.metrics.http.too_large.fetch_add(1, Relaxed);
                return Err(too_large(max));
            }
            Ok(Err(rej)) => return Err(ApiError::bad_request("invalid_body", rej.body_text())),
            Err(_) => {
                state.metrics.http.body_timeouts.fetch_add(1, Relaxed);
                tracing::info!(timeout = ?limit, "a request body did not arrive in time (server.body_timeout)");
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the request body did not arrive within {limit:?} (server.body_timeout)"),
                ));
            }
        };
        // Integers beyond 64 bits in what people send (parameters, pack schemas); workers send
        // what they parsed with serde already.
        let public = !req_is_worker;
        if let Some(path) = public.then(|| crate::json_guard::huge_integer(&bytes)).flatten() {
            return Err(ApiError::unprocessable(
                "number_out_of_range",
                format!("{path}: the integer is outside the 64-bit range and would not be kept exactly; send it as a string"),
            ));
        }
        Ok(bytes)
    }
}

/// Most bytes of an oversized body read (and dropped) before answering 413.
const DRAIN_AT_MOST: u64 = 64 * 1024 * 1024;

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than the {max} bytes this server takes here"),
    )
}

/// `application/json` or `application/<something>+json`.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a path segment as a UUID with a 400 naming it.
pub fn parse_id(what: &str, s: &str) -> Result<uuid::Uuid, ApiError> {
    s.parse().map_err(|_| ApiError::bad_request("invalid_id", format!("{what} id {s:?} is not a UUID")))
}
