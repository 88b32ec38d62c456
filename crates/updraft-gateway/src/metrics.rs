//! What the platform counts, over HTTP: `GET /metrics` for Prometheus
//! (with an admin key, or the metrics token of the server config, so a
//! scraper needs no key that could change anything), and
//! `GET /v1/functions/{name}/metrics`, one function's summary for its
//! tenant (the console's latency percentiles), and
//! `GET /v1/traces/{id}`, a recent trace's spans.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use serde::Serialize;
use updraft_scheduler::Platform;
use updraft_scheduler::metrics::{Format, FunctionMetrics};
use updraft_scheduler::traces::SpanRecord;
use utoipa::ToSchema;

use crate::error::ApiError;
use updraft_scheduler::Caller;

type Shared = State<Arc<Platform>>;

/// The token of `[telemetry] metrics_token`, for the scrape's handler.
#[derive(Clone)]
pub(crate) struct MetricsToken(pub(crate) Option<Arc<str>>);

/// Every function's counters and the platform's levels, for Prometheus
/// (docs/observability.md). With an admin key or the server's metrics token.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "observability",
    responses(
        (status = 200, description = "The Prometheus text format (OpenMetrics when `Accept` asks for it)",
            content_type = "text/plain"),
        (status = 401, description = "`missing_key`, `invalid_key`", body = crate::error::ErrorBody),
        (status = 403, description = "`admin_only`: a tenant's key", body = crate::error::ErrorBody),
    ),
)]
pub(crate) async fn scrape(
    State(platform): Shared,
    Extension(MetricsToken(token)): Extension<MetricsToken>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let by_token = token.is_some_and(|token| presented(&headers).is_some_and(|p| same(p, &token)));
    if !by_token {
        let caller = crate::auth::caller(&platform, &headers)?;
        if !caller.admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_only",
                "/metrics shows every tenant's functions: scrape it with an admin key, or with \
                 the token set as [telemetry] metrics_token in the server config",
            ));
        }
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let text = platform.metrics_text(format).await?;
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response())
}

/// What the function did on this node since it started: requests, errors,
/// cold and warm starts, latency percentiles.
#[utoipa::path(
    get,
    path = "/functions/{name}/metrics",
    operation_id = "getFunctionMetrics",
    tag = "observability",
    params(("name" = String, Path, description = "The function")),
    responses(
        (status = 200, description = "The function's counters", body = FunctionMetrics),
        (status = 404, description = "`function_not_found`", body = crate::error::ErrorBody),
    ),
)]
pub(crate) async fn function(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<FunctionMetrics>, ApiError> {
    platform.functions().require(&caller.tenant, &name)?;
    Ok(Json(
        platform.invoker().metrics().summary(&caller.tenant, &name),
    ))
}

/// A recent trace: its spans.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Trace {
    trace_id: String,
    spans: Vec<SpanRecord>,
}

/// A recent trace, by its id or an invocation's: the caller's tenant's
/// spans only (an admin's: all).
#[utoipa::path(
    get,
    path = "/traces/{id}",
    operation_id = "getTrace",
    tag = "observability",
    params(("id" = String, Path, description = "An invocation id (the updraft-invocation-id header) or a trace id (32 hex digits)")),
    responses(
        (status = 200, description = "The trace's spans, oldest first", body = Trace),
        (status = 404, description = "`trace_not_found`: none of it is kept on this node", body = crate::error::ErrorBody),
    ),
)]
pub(crate) async fn trace(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Trace>, ApiError> {
    let spans: Vec<_> = platform
        .invoker()
        .traces()
        .trace(&id)
        .unwrap_or_default()
        .into_iter()
        .filter(|span| {
            caller.admin
                || span
                    .attributes
                    .get(updraft_scheduler::traces::TENANT)
                    .map(String::as_str)
                    == Some(&*caller.tenant)
        })
        .collect();
    let Some(first) = spans.first() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "trace_not_found",
            format!(
                "no recent trace {id:?} on this node: give an invocation id (the \
                 updraft-invocation-id header) or a trace id (32 hex digits); the newest {} \
                 spans of recorded traces are kept, each on the node that ran it, and past \
                 [telemetry] trace_reservoir_per_second new traces a second (100 by \
                 default) only a sample is recorded",
                updraft_scheduler::traces::SPANS_KEPT_MAX
            ),
        ));
    };
    Ok(Json(Trace {
        trace_id: first.trace_id.clone(),
        spans,
    }))
}

/// The bearer token of the request, if any.
fn presented(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Compares in time that depends only on the lengths, so the token cannot
/// be guessed byte by byte from response times.
fn same(presented: &str, token: &str) -> bool {
    let (a, b) = (presented.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_whole() {
        assert!(same("abcdef0123456789", "abcdef0123456789"));
        assert!(!same("abcdef0123456788", "abcdef0123456789"));
        assert!(!same("abcdef012345678", "abcdef0123456789"));
        assert!(!same("", "abcdef0123456789"));
    }
}
