//! Platform errors → HTTP statuses and `{"error":{"code","message"}}` bodies.
//! This is the only place that decides a status.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use updraft_metering::MeteringError;
use updraft_sandbox::{InvokeError, PrepareError};
use updraft_scheduler::PlatformError;
use updraft_state::StateError;
use updraft_state::blob::BlobError;
use updraft_state::kv::KvError;
use updraft_state::queue::QueueError;

/// An error as the API client sees it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code, "message": self.message }
        });
        (self.status, Json(body)).into_response()
    }
}

impl From<PlatformError> for ApiError {
    fn from(e: PlatformError) -> ApiError {
        use StatusCode as S;
        let message = e.to_string();
        let (status, code) = match &e {
            PlatformError::Manifest(_) => (S::BAD_REQUEST, "invalid_manifest"),
            PlatformError::BadRequest(_) => (S::BAD_REQUEST, "bad_request"),
            PlatformError::Busy(_) => (S::SERVICE_UNAVAILABLE, "busy"),
            PlatformError::Prepare(p) => match p {
                PrepareError::NotWasm => (S::BAD_REQUEST, "not_wasm"),
                PrepareError::Invalid(_) => (S::BAD_REQUEST, "invalid_wasm"),
                PrepareError::UnknownWorld
                | PrepareError::NoStart
                | PrepareError::KindMismatch { .. } => (S::BAD_REQUEST, "wrong_world"),
                PrepareError::Link(_) => (S::BAD_REQUEST, "link_error"),
                PrepareError::ReuseForCommand => (S::BAD_REQUEST, "invalid_manifest"),
                _ => (S::INTERNAL_SERVER_ERROR, "internal"),
            },
            PlatformError::State(s) => match s {
                StateError::FunctionNotFound(_) => (S::NOT_FOUND, "function_not_found"),
                StateError::VersionNotFound { .. } => (S::NOT_FOUND, "version_not_found"),
                StateError::RouteConflict { .. } => (S::CONFLICT, "route_conflict"),
                StateError::KeyNotFound(_) => (S::NOT_FOUND, "key_not_found"),
                StateError::Invalid(_) => (S::BAD_REQUEST, "bad_request"),
                _ => (S::INTERNAL_SERVER_ERROR, "storage"),
            },
            PlatformError::NotInUse { what, .. } if what.starts_with("blob") => {
                (S::NOT_FOUND, "container_not_found")
            }
            PlatformError::NotInUse { .. } => (S::NOT_FOUND, "store_not_found"),
            PlatformError::Blob(b) => match b {
                BlobError::BadKey { .. } => (S::BAD_REQUEST, "invalid_key"),
                BlobError::NotFound { .. } => (S::NOT_FOUND, "blob_not_found"),
                BlobError::TooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "blob_too_large"),
                BlobError::BadRange { .. } => (S::RANGE_NOT_SATISFIABLE, "invalid_range"),
                BlobError::BadCursor { .. } => (S::BAD_REQUEST, "invalid_cursor"),
                _ => (S::INTERNAL_SERVER_ERROR, "storage"),
            },
            PlatformError::KeyNotFound { .. } => (S::NOT_FOUND, "key_not_found"),
            PlatformError::Kv(k) => match k {
                KvError::KeyEmpty | KvError::KeyTooLong { .. } => (S::BAD_REQUEST, "invalid_key"),
                KvError::ValueTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "value_too_large"),
                KvError::BatchTooLarge { .. } => (S::BAD_REQUEST, "batch_too_large"),
                KvError::BadCursor { .. } => (S::BAD_REQUEST, "invalid_cursor"),
                KvError::NotAnInteger { .. } => (S::CONFLICT, "not_an_integer"),
                KvError::Overflow { .. } => (S::CONFLICT, "overflow"),
                _ => (S::INTERNAL_SERVER_ERROR, "storage"),
            },
            PlatformError::Invoke(i) => (
                match i {
                    InvokeError::Timeout { .. } => S::GATEWAY_TIMEOUT,
                    InvokeError::RequestTooLarge { .. } => S::PAYLOAD_TOO_LARGE,
                    InvokeError::Instantiate(_) => S::SERVICE_UNAVAILABLE,
                    _ => S::INTERNAL_SERVER_ERROR,
                },
                i.code(),
            ),
            PlatformError::InvalidEvent(_) => (S::BAD_REQUEST, "invalid_cloudevent"),
            PlatformError::UnknownChannel(_) => (S::NOT_FOUND, "channel_not_found"),
            PlatformError::Trigger(_) => (S::BAD_REQUEST, "invalid_trigger"),
            PlatformError::ChannelInUse { .. } => (S::CONFLICT, "channel_in_use"),
            PlatformError::Queue(q) => match q {
                QueueError::PayloadTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
                QueueError::ChannelNotFound { .. } => (S::NOT_FOUND, "channel_not_found"),
                QueueError::ChannelConflict { .. } => (S::CONFLICT, "channel_conflict"),
                QueueError::BadChannel(_) => (S::BAD_REQUEST, "bad_request"),
                QueueError::IdempotencyKeyTooLong { .. } => (S::BAD_REQUEST, "bad_request"),
                QueueError::NotInFlight { .. } => (S::CONFLICT, "not_in_flight"),
                _ => (S::INTERNAL_SERVER_ERROR, "storage"),
            },
            PlatformError::Metering(m) => match m {
                MeteringError::BudgetExceeded { .. } => (S::PAYMENT_REQUIRED, "budget_exceeded"),
                MeteringError::Invalid(_) => (S::BAD_REQUEST, "bad_request"),
                _ => (S::INTERNAL_SERVER_ERROR, "storage"),
            },
            _ => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, message)
    }
}

/// Adds "see the logs" to invocation failures, which is where the detail is.
pub(crate) fn invocation_error(e: PlatformError, name: &str, invocation_id: &str) -> ApiError {
    let mut error = ApiError::from(e);
    if error.status.is_server_error() {
        error.message = format!(
            "{} (invocation {invocation_id}; details: `updraft logs {name}`)",
            error.message
        );
    }
    error
}

/// `axum::extract::Query` whose rejection is an [`ApiError`]: a bad query
/// string gets the same JSON error shape as everything else.
pub(crate) struct Query<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(query)| Query(query))
            .map_err(|e| {
                ApiError::bad_request(
                    "bad_request",
                    format!(
                        "{}: fix the query string (docs/api.md lists each endpoint's parameters)",
                        e.body_text()
                    ),
                )
            })
    }
}
