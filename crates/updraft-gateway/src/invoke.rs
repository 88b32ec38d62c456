//! Invocations over HTTP: a function's public route, and
//! `POST /v1/functions/{name}/invoke`.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, Uri, header};
use updraft_core::{FunctionKind, LOCAL_TENANT, RouteAuth, Trigger};
use updraft_scheduler::{InvokeError, Loaded, Platform, PlatformError};

use updraft_state::Caller;

use crate::auth::caller;
use crate::error::{ApiError, invocation_error};

/// Response header carrying the invocation id (also in the logs).
pub const INVOCATION_ID_HEADER: &str = "updraft-invocation-id";

/// Any path that is not the API: the function whose route matches serves it.
/// Routes of the `local` tenant are at the root; another tenant's are under
/// `/~tenant/`, which the function does not see in its request.
pub(crate) async fn invoke_route(
    State(platform): State<Arc<Platform>>,
    mut request: Request,
) -> Response {
    let full = request.uri().path().to_string();
    let (tenant, path) = tenant_of(&full);
    let Some(loaded) = platform.route(tenant, path) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            format!("no function serves {full}: deploy one with `route = \"{path}\"` in its updraft.toml, or see `updraft ls`"),
        )
        .into_response();
    };
    if loaded.version.manifest.auth == RouteAuth::Key {
        match caller(&platform, request.headers()) {
            Ok(caller) if caller.tenant == loaded.tenant => {
                // The key was for the platform; the function never sees it.
                request.headers_mut().remove(header::AUTHORIZATION);
            }
            Ok(_) => {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("{full} needs an API key of the function's own tenant"),
                )
                .into_response();
            }
            Err(e) => return e.into_response(),
        }
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
    invoke(platform, loaded, request, Trigger::Http).await
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

/// `POST /v1/functions/{name}/invoke`: the body goes to the function as is;
/// an http function sees a request for `/` (with the query string kept).
pub(crate) async fn invoke_api(
    State(platform): State<Arc<Platform>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    mut request: Request,
) -> Response {
    request.headers_mut().remove(header::AUTHORIZATION);
    let Some(loaded) = platform.get(&caller.tenant, &name) else {
        return ApiError::from(PlatformError::State(
            updraft_state::StateError::FunctionNotFound(name),
        ))
        .into_response();
    };
    let path_and_query = match request.uri().query() {
        Some(q) => format!("/?{q}"),
        None => "/".to_string(),
    };
    if let Ok(uri) = path_and_query.parse::<Uri>() {
        *request.uri_mut() = uri;
    }
    invoke(platform, loaded, request, Trigger::Api).await
}

async fn invoke(
    platform: Arc<Platform>,
    loaded: Arc<Loaded>,
    request: Request,
    trigger: Trigger,
) -> Response {
    let (id, response) = match loaded.version.kind {
        FunctionKind::Http => {
            let request = with_host(request);
            let (id, result) = platform.invoke_http(&loaded, request, trigger).await;
            (id, result.map(|r| r.map(Body::new)))
        }
        FunctionKind::Command => {
            let limit = loaded.version.limits.request_body_bytes_max;
            let body = match axum::body::to_bytes(request.into_body(), limit as usize).await {
                Ok(body) => body,
                Err(_) => {
                    return ApiError::from(PlatformError::Invoke(InvokeError::RequestTooLarge {
                        limit,
                    }))
                    .into_response();
                }
            };
            let (id, result) = platform.invoke_command(&loaded, body, trigger).await;
            (id, result.map(|stdout| Response::new(Body::from(stdout))))
        }
    };
    let mut response = match response {
        Ok(response) => response,
        Err(e) => invocation_error(e, &loaded.name, &id).into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(INVOCATION_ID_HEADER, value);
    }
    response
}

/// wasi:http needs an authority; HTTP/1.0 clients may not send `Host`.
fn with_host(mut request: Request) -> Request {
    if request.uri().authority().is_none() && !request.headers().contains_key(http::header::HOST) {
        request
            .headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("localhost"));
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_prefix_is_split_off() {
        assert_eq!(tenant_of("/hello"), ("local", "/hello"));
        assert_eq!(tenant_of("/~acme/hello/x"), ("acme", "/hello/x"));
        assert_eq!(tenant_of("/~acme"), ("acme", "/"));
        assert_eq!(tenant_of("/"), ("local", "/"));
    }
}
