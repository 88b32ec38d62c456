//! The HTTP face of Updraft: the management API under `/v1` (every call
//! with a tenant's API key, see [`auth`]), `/healthz`, `/metrics` for
//! Prometheus ([`metrics`]), the web console at `/ui` ([`ui`], which calls
//! that same API), and every function's
//! route: `/~tenant/...` for tenants other than `local`, or, with a base
//! domain, `<tenant>.<base_domain>/...` ([`host`]).
//!
//! The gateway only translates HTTP to platform calls and platform errors to
//! HTTP (in [`error`], in one place); what runs and where is the scheduler's job.
//!
//! The router and the API's OpenAPI description ([`openapi()`], served at
//! `GET /v1/openapi.json`) are built from one list of routes, [`routes`]:
//! each entry is a handler with its `#[utoipa::path]`, so nothing is served
//! that is not described.

mod api;
mod auth;
mod blobs;
mod error;
mod host;
mod invoke;
mod json;
mod kv;
mod metrics;
mod openapi;
mod queues;
mod secrets;
mod server;
mod ui;
mod upload;
mod usage;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::middleware;
use tokio::net::TcpListener;
use updraft_scheduler::Platform;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use host::{BASE_DOMAIN_LEN_MAX, BaseDomain, BaseDomainError};
pub use openapi::OPENAPI_PATH;
pub use server::{
    CONNECTIONS_MAX_DEFAULT, CONNECTIONS_PER_CLIENT_MAX_DEFAULT, HEADER_READ_TIMEOUT_DEFAULT,
    ServeLimits,
};
pub use ui::CONSOLE_PATH;

/// Largest upload accepted by deploy (the Wasm plus the manifest). Python and
/// JavaScript components are 13–20 MB; leave room for bigger runtimes. The
/// Wasm is spooled to disk as it arrives, so this bounds disk, not memory.
pub const DEPLOY_BYTES_MAX: usize = 256 * 1024 * 1024;

/// How the gateway serves: the listener's limits and how function routes
/// are found (`[http]` in the server config).
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    pub limits: ServeLimits,
    /// Requests for `<tenant>.<base_domain>` go to that tenant's routes by
    /// their plain path; without it, and on other hosts, `/~tenant/...`.
    pub base_domain: Option<BaseDomain>,
    /// A bearer token that may read `/metrics` (besides admin keys), for
    /// a scraper that should hold no key that can change anything.
    pub metrics_token: Option<Arc<str>>,
}

/// The whole router with path routing only (`/~tenant/...`).
pub fn router(platform: Arc<Platform>) -> Router {
    router_with(platform, None, None)
}

/// The whole router: API, health, and the function routes as the fallback,
/// found by host under `base_domain` when one is given.
pub fn router_with(
    platform: Arc<Platform>,
    base_domain: Option<BaseDomain>,
    metrics_token: Option<Arc<str>>,
) -> Router {
    let hosts = Arc::new(base_domain);
    let key_check = platform.clone();
    let (router, _) = routes(move |v1| {
        v1.fallback(api::not_found)
            .layer(middleware::from_fn_with_state(key_check, auth::require_key))
    })
    .split_for_parts();
    router
        .fallback(
            move |state: State<Arc<Platform>>, request: axum::extract::Request| {
                invoke::invoke_route(state, hosts.clone(), request)
            },
        )
        .layer(DefaultBodyLimit::disable())
        .layer(axum::Extension(metrics::MetricsToken(metrics_token)))
        .with_state(platform)
}

/// The OpenAPI 3.1 description of every route [`router`] serves but the
/// functions' own (`GET /v1/openapi.json` serves it).
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::finish(routes(|v1| v1).into_openapi())
}

type Routes = OpenApiRouter<Arc<Platform>>;

/// Every route but the functions', each handler with its description: the
/// one list both the router and the document are built from. `v1` adds
/// what the `/v1` endpoints share but the document does not show (the key
/// check, the 404 of an unknown endpoint). A route belongs here, through
/// `routes!` (which needs the handler's `#[utoipa::path]`), and nowhere
/// else: a test reads this file to keep it so.
fn routes(v1: impl FnOnce(Routes) -> Routes) -> Routes {
    let endpoints = Routes::new()
        .routes(routes!(api::list))
        .routes(with_body_limit(
            routes!(api::info, api::delete, api::deploy),
            DefaultBodyLimit::max(DEPLOY_BYTES_MAX),
        ))
        .routes(with_body_limit(
            routes!(invoke::invoke_api),
            DefaultBodyLimit::disable(),
        ))
        .routes(routes!(api::logs))
        .routes(routes!(metrics::function))
        .routes(routes!(metrics::trace))
        .routes(routes!(api::rollback))
        .routes(routes!(api::unload))
        .routes(routes!(queues::dead_letters))
        .routes(routes!(queues::redrive))
        .routes(routes!(queues::invocation))
        .routes(routes!(queues::queues))
        .routes(routes!(queues::put_queue, queues::delete_queue))
        .routes(routes!(queues::put_topic, queues::delete_topic))
        .routes(routes!(queues::publish))
        .routes(routes!(blobs::containers))
        .routes(routes!(blobs::list));
    let endpoints = with_tail(
        endpoints,
        routes!(blobs::get, blobs::put, blobs::delete),
        "key",
    )
    .routes(routes!(kv::stores))
    .routes(routes!(kv::list));
    let endpoints = with_tail(endpoints, routes!(kv::get, kv::put, kv::delete), "key")
        .routes(routes!(usage::usage))
        .routes(routes!(usage::records))
        .routes(routes!(usage::bill))
        .routes(routes!(usage::prices))
        .routes(routes!(
            usage::budget,
            usage::set_budget,
            usage::clear_budget
        ))
        .routes(routes!(usage::quota, usage::set_quota, usage::clear_quota))
        .routes(routes!(secrets::list))
        .routes(routes!(secrets::put, secrets::delete))
        .routes(routes!(auth::list, auth::create))
        .routes(routes!(auth::revoke));
    // The document is served outside `/v1`'s key check (see its handler);
    // a static path wins over the nested router's fallback.
    let top = Routes::with_openapi(openapi::base())
        .routes(routes!(api::health))
        .routes(routes!(metrics::scrape))
        .routes(routes!(ui::page))
        .routes(routes!(ui::page_slash))
        .routes(routes!(openapi::document));
    with_tail(top, routes!(ui::file), "file").nest("/v1", v1(endpoints))
}

/// A route with a body limit of its own around its handlers.
fn with_body_limit(
    (schemas, paths, method_router): UtoipaMethodRouter<Arc<Platform>>,
    limit: DefaultBodyLimit,
) -> UtoipaMethodRouter<Arc<Platform>> {
    (schemas, paths, method_router.layer(limit))
}

/// Adds a route whose last parameter, `{param}`, takes the rest of the
/// path, slashes and all (a key `a/b.txt`). OpenAPI has no such parameter,
/// so the document names it `{param}` and the router `{*param}`.
fn with_tail(
    router: Routes,
    (schemas, paths, method_router): UtoipaMethodRouter<Arc<Platform>>,
    param: &str,
) -> Routes {
    let (named, tail) = (format!("{{{param}}}"), format!("{{*{param}}}"));
    let mut router = paths.paths.keys().fold(router, |router, path| {
        router.route(&path.replace(&named, &tail), method_router.clone())
    });
    let openapi = router.get_openapi_mut();
    for (path, item) in paths.paths {
        match openapi.paths.paths.get_mut(&path) {
            Some(existing) => existing.merge_operations(item),
            None => {
                openapi.paths.paths.insert(path, item);
            }
        }
    }
    openapi
        .components
        .get_or_insert_with(Default::default)
        .schemas
        .extend(schemas);
    router
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish,
/// within `config.limits` ([`ServeLimits`]).
pub async fn serve(
    listener: TcpListener,
    platform: Arc<Platform>,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router_with(platform.clone(), config.base_domain, config.metrics_token);
    server::serve(listener, router, config.limits, shutdown).await;
    platform.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// A route added beside [`routes`] would be served without being
    /// described: no source file of the gateway may add one by hand. The
    /// one `.route(` is [`with_tail`]'s, which takes what `routes!` made.
    #[test]
    fn routes_are_added_only_with_their_description() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut adds = Vec::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            // Tests may build what they like.
            let code = text.split("#[cfg(test)]").next().unwrap();
            // Ways to add a route, or to make a handler into one, by hand.
            for call in [
                ".route(\"",
                ".route(&",
                ".route_service(",
                ".nest_service(",
                ".merge(",
                "Router::new()",
                "axum::routing",
            ] {
                for _ in code.matches(call) {
                    adds.push(format!("{} {call}", path.display()));
                }
            }
        }
        assert_eq!(
            adds.len(),
            1,
            "routes must go through `routes!` in lib.rs's `routes` (so they are \
             described): {adds:#?}"
        );
        assert!(adds[0].contains("lib.rs"), "{adds:?}");
    }

    /// Each operation is named, tagged and answers something; each
    /// `{param}` of its path is a declared path parameter.
    #[test]
    fn every_operation_is_complete() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let mut ids = std::collections::BTreeSet::new();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.contains_key("/v1/openapi.json"));
        assert!(paths.contains_key("/healthz"));
        assert!(paths.contains_key("/v1/blobs/{container}/{key}"));
        for (path, item) in paths {
            assert!(!path.contains('*'), "{path}: no wildcard in OpenAPI paths");
            let params: Vec<&str> = path
                .split('{')
                .skip(1)
                .filter_map(|p| p.split('}').next())
                .collect();
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_string()), "{id} twice");
                assert!(op["tags"].as_array().is_some_and(|t| !t.is_empty()));
                assert!(op["summary"].is_string(), "{method} {path}: no summary");
                assert!(!op["responses"].as_object().unwrap().is_empty());
                for param in &params {
                    let declared = op["parameters"].as_array().is_some_and(|ps| {
                        ps.iter().any(|p| {
                            p["name"] == *param && p["in"] == "path" && p["required"] == true
                        })
                    });
                    assert!(declared, "{method} {path}: {{{param}}} is not declared");
                }
            }
        }
    }

    #[test]
    fn the_error_body_is_the_documented_one() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let error = &doc["components"]["schemas"]["ErrorDetail"];
        assert_eq!(error["required"], serde_json::json!(["code", "message"]));
        let body = ErrorBody {
            error: ErrorDetail {
                code: "x".into(),
                exit_code: None,
                id: None,
                message: "m".into(),
                stdout: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"x","message":"m"}}"#
        );
    }
}
