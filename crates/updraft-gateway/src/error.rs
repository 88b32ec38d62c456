//! Platform errors → HTTP statuses and `{"error":{"code","message"}}` bodies.
//! This is the only place that decides a status.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use updraft_core::{Classify, ErrorKind};
use updraft_scheduler::PlatformError;

/// Seconds a client told to come back later (429, 503) waits: slots free
/// as invocations end, most within a second.
const RETRY_AFTER_SECS: u32 = 1;

/// An error as the API client sees it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Set on internal errors: the id the server logged the detail under.
    pub error_id: Option<String>,
    /// A command that exited non-zero: its code and its stdout.
    pub exit: Option<(i32, bytes::Bytes)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            error_id: None,
            exit: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

/// The body of every error: `{"error": {"code", "message"}}`, plus `id`
/// on the platform's own failures and `exit_code` and `stdout` when a
/// command exited non-zero.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong. Fields are in key order: the body's bytes are what
/// they were when it was a `serde_json` map.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, for programs: `function_not_found`, `bad_request`,
    /// `missing_key`, `timeout`, … (docs/api.md lists every code with its
    /// status). The status follows the kind: not found 404, invalid 400,
    /// conflict 409, too large 413, forbidden 403, budget spent 402, out of
    /// range 416, a limit reached 429, busy or unavailable 503, timeout
    /// 504, storage quota or a full disk 507, internal 500.
    pub code: String,
    /// A command that exited non-zero: its exit code (also in the
    /// `updraft-exit-code` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// A failure of the platform itself: the id its log has the detail under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What went wrong and what to do, for people.
    pub message: String,
    /// A command that exited non-zero: what it wrote to stdout (UTF-8,
    /// invalid sequences replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let exit_code = self.exit.as_ref().map(|(code, _)| *code);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                exit_code,
                id: self.error_id,
                message: self.message,
                stdout: self
                    .exit
                    .map(|(_, stdout)| String::from_utf8_lossy(&stdout).into_owned()),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(RETRY_AFTER_SECS),
            );
        }
        if let Some(code) = exit_code {
            response.headers_mut().insert(
                updraft_scheduler::EXIT_CODE_HEADER,
                http::HeaderValue::from(code),
            );
        }
        response
    }
}

/// The one place where a kind of error becomes an HTTP status.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    use StatusCode as S;
    match kind {
        ErrorKind::NotFound => S::NOT_FOUND,
        ErrorKind::Invalid => S::BAD_REQUEST,
        ErrorKind::Conflict => S::CONFLICT,
        ErrorKind::TooLarge => S::PAYLOAD_TOO_LARGE,
        ErrorKind::Forbidden => S::FORBIDDEN,
        ErrorKind::BudgetSpent => S::PAYMENT_REQUIRED,
        ErrorKind::StorageQuota => S::INSUFFICIENT_STORAGE,
        ErrorKind::OutOfRange => S::RANGE_NOT_SATISFIABLE,
        ErrorKind::Busy | ErrorKind::Unavailable => S::SERVICE_UNAVAILABLE,
        ErrorKind::TooManyRequests => S::TOO_MANY_REQUESTS,
        ErrorKind::Timeout => S::GATEWAY_TIMEOUT,
        _ => S::INTERNAL_SERVER_ERROR,
    }
}

impl From<PlatformError> for ApiError {
    /// Status by kind, code by error. A failure of the platform itself
    /// answers a generic message and an error id, and the whole story
    /// (sources, paths, database messages) goes to the server's log under
    /// that id: internals are not the client's to read. A function's own
    /// failure keeps its message, which is written for its author.
    fn from(e: PlatformError) -> ApiError {
        let kind = e.kind();
        let mut error = ApiError::new(status_of(kind), e.code(), e.to_string());
        error.exit = e.exit().map(|(code, stdout)| (code, stdout.clone()));
        if kind == ErrorKind::Unavailable && !e.is_guest_fault() {
            // The message stands (retry later); what ran out goes to the log.
            let id = uuid::Uuid::now_v7().to_string();
            tracing::warn!(error_id = %id, "unavailable: {}", updraft_core::error::chain(&e));
            error.error_id = Some(id);
        }
        if kind == ErrorKind::Internal && !e.is_guest_fault() {
            let id = uuid::Uuid::now_v7().to_string();
            tracing::error!(error_id = %id, "internal error: {}", updraft_core::error::chain(&e));
            error.message = if updraft_core::error::is_disk_full(&e) {
                // Nothing to hide and something to do: 507, as WebDAV names it.
                error.status = StatusCode::INSUFFICIENT_STORAGE;
                error.code = "storage_full";
                format!(
                    "error {id}: the server's disk is full, so nothing was stored. Retry \
                     later; its operator frees space (the log has this id)"
                )
            } else {
                format!(
                    "internal error {id}: the server failed, not your request. Retry; if it \
                     persists, give this id to the server's operator (its log has the detail)"
                )
            };
            error.error_id = Some(id);
        }
        error
    }
}

/// Reads a whole body of at most `limit` bytes. Past the limit is the
/// caller's `too_large` error; a body that breaks off before its end (the
/// client went away) is [`PlatformError::BodyRead`], never "too large".
pub(crate) async fn read_body<E>(
    body: axum::body::Body,
    limit: usize,
    too_large: impl FnOnce() -> E,
) -> Result<bytes::Bytes, ApiError>
where
    E: Into<ApiError>,
{
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner.is::<http_body_util::LengthLimitError>() {
            too_large().into()
        } else {
            PlatformError::BodyRead(inner).into()
        }
    })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use updraft_core::Failure;
    use updraft_scheduler::{InvokeError, KvError};

    #[test]
    fn a_500_of_the_platform_shows_no_internal_text() {
        let secret = "/srv/updraft/data/kv.redb: Input/output error (os error 5)";
        let failure = Failure::context("writing the page", std::io::Error::other(secret));
        let error = ApiError::from(PlatformError::Kv(KvError::Storage(failure)));
        assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.code, "storage");
        assert!(!error.message.contains("kv.redb"), "{}", error.message);
        assert!(
            !error.message.contains("writing the page"),
            "{}",
            error.message
        );
        let id = error.error_id.clone().unwrap();
        assert!(error.message.contains(&id), "the id is in the message");
        let response = error.into_response();
        assert_eq!(response.status(), 500);
    }

    #[test]
    fn a_full_disk_is_507_and_says_so() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let failure = Failure::context("appending to /srv/data/queues.redb", full);
        let error = ApiError::from(PlatformError::Kv(KvError::Storage(failure)));
        assert_eq!((error.status.as_u16(), error.code), (507, "storage_full"));
        assert!(error.message.contains("disk is full"), "{}", error.message);
        assert!(!error.message.contains("/srv"), "{}", error.message);
        assert!(error.error_id.is_some());
    }

    #[test]
    fn a_functions_own_failure_keeps_its_message() {
        let trap = PlatformError::Invoke(InvokeError::Trap {
            message: "index out of bounds".into(),
        });
        let error = ApiError::from(trap);
        assert_eq!((error.status.as_u16(), error.code), (500, "trap"));
        assert!(error.message.contains("index out of bounds"));
        assert!(error.error_id.is_none());
    }

    #[test]
    fn every_kind_has_its_status() {
        let cases = [
            (ErrorKind::NotFound, 404),
            (ErrorKind::Invalid, 400),
            (ErrorKind::Conflict, 409),
            (ErrorKind::TooLarge, 413),
            (ErrorKind::Forbidden, 403),
            (ErrorKind::BudgetSpent, 402),
            (ErrorKind::StorageQuota, 507),
            (ErrorKind::OutOfRange, 416),
            (ErrorKind::Busy, 503),
            (ErrorKind::TooManyRequests, 429),
            (ErrorKind::Unavailable, 503),
            (ErrorKind::Timeout, 504),
            (ErrorKind::Internal, 500),
        ];
        for (kind, status) in cases {
            assert_eq!(status_of(kind).as_u16(), status, "{kind:?}");
        }
    }

    #[test]
    fn client_errors_keep_their_message_and_code() {
        let error = ApiError::from(PlatformError::Kv(KvError::ValueTooLarge { len: 9 }));
        assert_eq!(
            (error.status.as_u16(), error.code),
            (413, "value_too_large")
        );
        assert!(error.message.contains("store large data as a blob"));
        let error = ApiError::from(PlatformError::function_not_found("f"));
        assert_eq!(
            (error.status.as_u16(), error.code),
            (404, "function_not_found")
        );
        let error = ApiError::from(PlatformError::BodyRead("reset".into()));
        assert_eq!(
            (error.status.as_u16(), error.code),
            (400, "body_read_failed")
        );
    }
}
