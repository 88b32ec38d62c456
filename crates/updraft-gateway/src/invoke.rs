//! Invocations over HTTP: a function's public route (by path, or by host
//! with [`crate::host`]), and `POST /v1/functions/{name}/invoke`.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, Uri, header};
use http_body_util::BodyExt;
use updraft_core::{LOCAL_TENANT, RouteAuth, Trigger};
use updraft_scheduler::{
    AsyncRequest, BodyError, Caller, Input, Invocation, InvokeError, Loaded, Platform,
    PlatformError,
};

use crate::auth::{caller, carries_api_key};
use crate::error::{ApiError, ErrorBody, invocation_error, read_body};
use crate::host::{BaseDomain, HostKind, host_only_cookies, request_host};
use crate::json::SortedJson;
use crate::openapi::Binary;

/// Response header carrying the invocation id (also in the logs).
pub const INVOCATION_ID_HEADER: &str = "updraft-invocation-id";

/// Any path that is not the API: the function whose route matches serves it.
/// On a tenant's host (`<tenant>.<base_domain>`) the path is the tenant's
/// as it came; elsewhere routes of the `local` tenant are at the root and
/// another tenant's are under `/~tenant/`, which the function does not see
/// in its request.
pub(crate) async fn invoke_route(
    State(platform): State<Arc<Platform>>,
    base_domain: Arc<Option<BaseDomain>>,
    mut request: Request,
) -> Response {
    let full = request.uri().path().to_string();
    let host = (*base_domain).as_ref().and_then(|base| {
        let host = request_host(request.uri(), request.headers())?;
        match base.classify(host) {
            HostKind::Tenant(label) => Some((label.to_ascii_lowercase(), base)),
            HostKind::Base | HostKind::Other => None,
        }
    });
    let (tenant, path) = match &host {
        Some((tenant, _)) => (tenant.as_str(), full.as_str()),
        None => tenant_of(&full),
    };
    let Some(loaded) = platform.functions().route(tenant, path) else {
        return route_not_found(
            &platform,
            host.as_ref().map(|(t, b)| (t.as_str(), *b)),
            &full,
            path,
        );
    };
    if loaded.version.manifest.auth == RouteAuth::Key {
        match caller(&platform, request.headers()) {
            Ok(caller) if caller.tenant == loaded.tenant => {
                // The key was for the platform; the function never sees it.
                request.headers_mut().remove(header::AUTHORIZATION);
            }
            Ok(_) => {
                let message = format!("{full} needs an API key of the function's own tenant");
                return ApiError::from(PlatformError::Forbidden(message)).into_response();
            }
            Err(e) => return e.into_response(),
        }
    }
    // A public route never passes on an Updraft key, in either routing
    // mode: a browser or client that sends one to every path would hand it
    // to another tenant's code. Other credentials (a function's own tokens)
    // pass as they came.
    if carries_api_key(request.headers()) {
        request.headers_mut().remove(header::AUTHORIZATION);
    }
    if path.len() != full.len() {
        let rest = match request.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        match rest.parse::<Uri>() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => {
                return ApiError::bad_request("bad_request", format!("invalid path {full}"))
                    .into_response();
            }
        }
    }
    let mut response = invoke(platform, loaded, request, Trigger::Http).await;
    if host.is_some() {
        host_only_cookies(response.headers_mut());
    }
    response
}

/// 404 for a path no route matches; on a tenant's host, saying whether the
/// tenant serves anything at all (a mistyped host is the likelier slip).
fn route_not_found(
    platform: &Platform,
    host: Option<(&str, &BaseDomain)>,
    full: &str,
    path: &str,
) -> Response {
    let message = match host {
        Some((tenant, base)) if !platform.functions().has_routes(tenant) => format!(
            "no tenant {tenant:?} serves functions at {tenant}.{base}: check the host name \
             (the part before .{base} names a tenant), or deploy a function with a route \
             using a key of that tenant"
        ),
        Some((tenant, base)) => format!(
            "no function of tenant {tenant:?} serves {path} at {tenant}.{base}: deploy one \
             with `route = \"{path}\"` in its updraft.toml, or see `updraft ls`"
        ),
        None => format!(
            "no function serves {full}: deploy one with `route = \"{path}\"` in its \
             updraft.toml, or see `updraft ls`"
        ),
    };
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", message).into_response()
}

/// `(tenant, path)` of a request path: `/~acme/x` is tenant acme's `/x`.
fn tenant_of(path: &str) -> (&str, &str) {
    let Some(rest) = path.strip_prefix("/~") else {
        return (LOCAL_TENANT, path);
    };
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

/// Header (or query parameter `mode`) that makes an API invocation async.
pub const MODE_HEADER: &str = "updraft-mode";
/// Header naming an async invocation so a retried request is accepted once.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// `202` of an async invocation: where to ask how it went.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    /// `true`: an earlier request with the same `Idempotency-Key` was
    /// accepted, and this is its id; nothing new will run.
    duplicate: bool,
    /// The invocation's id.
    id: String,
    /// `/v1/invocations/{id}`.
    status_url: String,
}

/// Invoke a function, now or (`mode=async`) soon.
///
/// `POST /v1/functions/{name}/invoke`: the body goes to the function as is;
/// an http function sees a request for `/` (with the query string kept).
/// With `mode=async` (query or `Updraft-Mode` header) the request is only
/// accepted: `202` with the invocation's id, and it runs soon after.
#[utoipa::path(
    post,
    path = "/functions/{name}/invoke",
    operation_id = "invokeFunction",
    tag = "invocations",
    params(
        ("name" = String, Path, description = "The function's name"),
        ("mode" = Option<String>, Query,
            description = "`async`: accept the call durably and run it soon, with retries \
                (`sync`, the default: answer with the function's response). Other query \
                parameters reach the function"),
        ("updraft-mode" = Option<String>, Header, description = "The same as `mode`"),
        ("idempotency-key" = Option<String>, Header,
            description = "Async calls: a retried request with the same key is accepted once"),
    ),
    request_body(content = Binary, content_type = "*/*",
        description = "Any body: the function gets it as it is"),
    responses(
        (status = 200, description = "The function's own response (any status, headers and \
            body; `updraft-invocation-id` names the invocation)", content_type = "*/*"),
        (status = 202, description = "Async: accepted durably; it runs soon", body = Accepted,
            headers(("location" = String, description = "The status URL"))),
        (status = 400, description = "`bad_request`: an invalid mode", body = ErrorBody),
        (status = 404, description = "`function_not_found`", body = ErrorBody),
        (status = 413, description = "`request_too_large`, `payload_too_large`", body = ErrorBody),
        (status = 429, description = "`concurrency_limit`, `tenant_concurrency_limit`, \
            `tenant_rate_limit`, `tenant_memory_limit`, `overloaded` (with `Retry-After`)",
            body = ErrorBody),
        (status = 402, description = "`budget_exceeded`", body = ErrorBody),
        (status = 500, description = "`trap`, `memory_limit`, `tmp_limit`, `exit_code` (with \
            `exit_code` and `stdout`), `function_error`, `response_too_large`, `internal`",
            body = ErrorBody),
        (status = 503, description = "`busy`, `memory_busy`, `instantiate_failed` (with \
            `Retry-After`)", body = ErrorBody),
        (status = 504, description = "`timeout`", body = ErrorBody),
    ),
)]
pub(crate) async fn invoke_api(
    State(platform): State<Arc<Platform>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    mut request: Request,
) -> Response {
    request.headers_mut().remove(header::AUTHORIZATION);
    let Some(loaded) = platform.functions().get(&caller.tenant, &name) else {
        return ApiError::from(PlatformError::function_not_found(name)).into_response();
    };
    let (asynchronous, query) = split_mode(request.uri().query(), request.headers());
    let path_and_query = match query {
        Some(q) => format!("/?{q}"),
        None => "/".to_string(),
    };
    if let Ok(uri) = path_and_query.parse::<Uri>() {
        *request.uri_mut() = uri;
    }
    match asynchronous {
        Ok(false) => invoke(platform, loaded, request, Trigger::Api).await,
        Ok(true) => invoke_async(platform, loaded, request)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    }
}

/// Whether the call is async, and the query string without `mode`.
fn split_mode(
    query: Option<&str>,
    headers: &http::HeaderMap,
) -> (Result<bool, ApiError>, Option<String>) {
    let mut mode = headers
        .get(MODE_HEADER)
        .map(|v| v.to_str().unwrap_or("").to_ascii_lowercase());
    let mut kept = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("mode=") {
            Some(value) => mode = Some(value.to_ascii_lowercase()),
            None => kept.push(pair),
        }
    }
    let query = (!kept.is_empty()).then(|| kept.join("&"));
    let asynchronous = match mode.as_deref() {
        None | Some("sync") => Ok(false),
        Some("async") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "bad_request",
            format!("invalid mode {other:?}: use mode=async, or mode=sync (the default)"),
        )),
    };
    (asynchronous, query)
}

/// Accepts the request for later: `202 {"id", "status_url"}` once it is
/// durable.
async fn invoke_async(
    platform: Arc<Platform>,
    loaded: Arc<Loaded>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let limit = loaded.version.limits.request_body_bytes_max;
    let body = read_body(body, limit as usize, || {
        PlatformError::Invoke(InvokeError::RequestTooLarge { limit })
    })
    .await?;
    let key = match parts.headers.get(IDEMPOTENCY_KEY_HEADER) {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| {
                    ApiError::bad_request("bad_request", "the Idempotency-Key header must be text")
                })?
                .to_string(),
        ),
        None => None,
    };
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != MODE_HEADER && *name != IDEMPOTENCY_KEY_HEADER)
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    let request = AsyncRequest {
        method: parts.method.to_string(),
        path: parts.uri.to_string(),
        headers,
        body,
    };
    let accepted = platform
        .events()
        .invoke_async(&loaded, request, key)
        .await?;
    let id = accepted.id.to_string();
    let status_url = format!("/v1/invocations/{id}");
    let mut response = (
        StatusCode::ACCEPTED,
        SortedJson(Accepted {
            duplicate: accepted.duplicate,
            id: id.clone(),
            status_url: status_url.clone(),
        }),
    )
        .into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::LOCATION.as_str(), &status_url),
        (INVOCATION_ID_HEADER, &id),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    Ok(response)
}

/// Runs the function on the request, whatever its kind: the scheduler
/// decides how it takes it.
async fn invoke(
    platform: Arc<Platform>,
    loaded: Arc<Loaded>,
    request: Request,
    trigger: Trigger,
) -> Response {
    let request = request.map(|body| body.map_err(|e| BodyError(e.into())).boxed_unsync());
    // The client's trace, if it sent one (W3C Trace Context).
    let trace = request
        .headers()
        .get(updraft_core::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(updraft_core::trace::TraceParent::parse);
    let mut invocation = Invocation::new(&loaded, Input::Request(request), trigger);
    invocation.trace = trace;
    let (id, outcome) = platform.invoker().run(invocation).await;
    let mut response = match outcome {
        Ok(outcome) => outcome.into_response().map(Body::new),
        Err(e) => invocation_error(e, &loaded.name, &id).into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(INVOCATION_ID_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_comes_from_the_query_or_a_header() {
        let none = http::HeaderMap::new();
        let (mode, query) = split_mode(Some("a=1&mode=async&b=2"), &none);
        assert!(matches!(mode, Ok(true)));
        assert_eq!(query.as_deref(), Some("a=1&b=2"));
        let (mode, query) = split_mode(Some("mode=sync"), &none);
        assert!(matches!(mode, Ok(false)));
        assert_eq!(query, None);
        let mut headers = http::HeaderMap::new();
        headers.insert(MODE_HEADER, HeaderValue::from_static("ASYNC"));
        assert!(matches!(split_mode(None, &headers).0, Ok(true)));
        assert!(split_mode(Some("mode=later"), &none).0.is_err());
    }

    #[test]
    fn tenant_prefix_is_split_off() {
        assert_eq!(tenant_of("/hello"), ("local", "/hello"));
        assert_eq!(tenant_of("/~acme/hello/x"), ("acme", "/hello/x"));
        assert_eq!(tenant_of("/~acme"), ("acme", "/"));
        assert_eq!(tenant_of("/"), ("local", "/"));
    }
}
