//! The HTTP face of Updraft: the management API under `/v1` (every call
//! with a tenant's API key, see [`auth`]), `/healthz`, `/metrics` for
//! Prometheus ([`metrics`]), the web console at `/ui` ([`ui`], which calls
//! that same API), and every function's
//! route: `/~tenant/...` for tenants other than `local`, or, with a base
//! domain, `<tenant>.<base_domain>/...` ([`host`]).
//!
//! The gateway only translates HTTP to platform calls and platform errors to
//! HTTP (in [`error`], in one place); what runs and where is the scheduler's job.

mod api;
mod auth;
mod blobs;
mod error;
mod host;
mod invoke;
mod kv;
mod metrics;
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
use axum::routing::{delete, get, post, put};
use tokio::net::TcpListener;
use updraft_scheduler::Platform;

pub use error::ApiError;
pub use host::{BASE_DOMAIN_LEN_MAX, BaseDomain, BaseDomainError};
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
    let api = Router::new()
        .route("/functions", get(api::list))
        .route(
            "/functions/{name}",
            get(api::info)
                .delete(api::delete)
                .put(api::deploy)
                .layer(DefaultBodyLimit::max(DEPLOY_BYTES_MAX)),
        )
        .route(
            "/functions/{name}/invoke",
            post(invoke::invoke_api).layer(DefaultBodyLimit::disable()),
        )
        .route("/functions/{name}/logs", get(api::logs))
        .route("/functions/{name}/metrics", get(metrics::function))
        .route("/traces/{id}", get(metrics::trace))
        .route("/functions/{name}/rollback", post(api::rollback))
        .route("/functions/{name}/unload", post(api::unload))
        .route("/functions/{name}/dlq", get(queues::dead_letters))
        .route("/functions/{name}/dlq/redrive", post(queues::redrive))
        .route("/invocations/{id}", get(queues::invocation))
        .route("/queues", get(queues::queues))
        .route(
            "/queues/{name}",
            put(queues::put_queue).delete(queues::delete_queue),
        )
        .route(
            "/topics/{name}",
            put(queues::put_topic).delete(queues::delete_topic),
        )
        .route("/publish/{name}", post(queues::publish))
        .route("/blobs", get(blobs::containers))
        .route("/blobs/{container}", get(blobs::list))
        .route(
            "/blobs/{container}/{*key}",
            get(blobs::get).put(blobs::put).delete(blobs::delete),
        )
        .route("/kv", get(kv::stores))
        .route("/kv/{store}", get(kv::list))
        .route(
            "/kv/{store}/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/usage", get(usage::usage))
        .route("/usage/records", get(usage::records))
        .route("/bill", get(usage::bill))
        .route("/prices", get(usage::prices))
        .route(
            "/budget",
            get(usage::budget)
                .put(usage::set_budget)
                .delete(usage::clear_budget),
        )
        .route(
            "/quota",
            get(usage::quota)
                .put(usage::set_quota)
                .delete(usage::clear_quota),
        )
        .route("/secrets", get(secrets::list))
        .route("/secrets/{name}", put(secrets::put).delete(secrets::delete))
        .route("/keys", get(auth::list).post(auth::create))
        .route("/keys/{id}", delete(auth::revoke))
        .fallback(api::not_found)
        .layer(middleware::from_fn_with_state(
            platform.clone(),
            auth::require_key,
        ));
    Router::new()
        .route("/healthz", get(api::health))
        .route(
            "/metrics",
            get(
                move |state: State<Arc<Platform>>, headers: http::HeaderMap| {
                    metrics::scrape(state.0, metrics_token.clone(), headers)
                },
            ),
        )
        .merge(ui::routes::<Arc<Platform>>())
        .nest("/v1", api)
        .fallback(
            move |state: State<Arc<Platform>>, request: axum::extract::Request| {
                invoke::invoke_route(state, hosts.clone(), request)
            },
        )
        .layer(DefaultBodyLimit::disable())
        .with_state(platform)
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
