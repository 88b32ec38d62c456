//! The OpenAPI 3.1 description of the management API, served at
//! `GET /v1/openapi.json`. Nothing in it is written by hand apart from
//! prose: each endpoint's `#[utoipa::path]` sits on its handler, each body
//! is the handler's own type (`ToSchema`), and the router of [`crate`] and
//! this document are built from one list of routes (utoipa-axum's
//! `routes!`), so a route cannot be served without being described. This
//! module adds what is common to every endpoint: the title, the bearer-key
//! scheme, the error body, and the answers any `/v1` call may get (401,
//! 500, 503).

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi as _};

use crate::error::ErrorBody;

/// Where the document is served, outside `/v1`'s key check.
pub const OPENAPI_PATH: &str = "/v1/openapi.json";

/// The name of the security scheme every `/v1` endpoint requires (also
/// spelled out in `ApiDoc`'s `security`, which takes a literal).
const SCHEME: &str = "api_key";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Updraft management API",
        description = "Deploy and manage functions, their events and state, and what they \
            cost. Every `/v1` endpoint needs `Authorization: Bearer KEY` with a tenant's API \
            key (`upd_{id}_{secret}`) and acts on that tenant only; a new server writes its \
            admin key to `DATA_DIR/admin.key`. Errors are `{\"error\": {\"code\", \
            \"message\"}}` with the status of their kind; docs/api.md lists every code.\n\n\
            Function routes are not part of this API: any path outside `/v1` and `/healthz` \
            goes to the function whose `route` matches it (on `<tenant>.<base_domain>` the \
            tenant's, elsewhere `/~tenant/...` for tenants other than `local`), answers \
            whatever the function answers, and carries `updraft-invocation-id`. A path no \
            function serves answers 404 `route_not_found`.",
        license(name = "Apache-2.0"),
    ),
    modifiers(&Common),
    security(("api_key" = [])),
    components(schemas(ErrorBody, Binary)),
    tags(
        (name = "functions", description = "Deploy, inspect, roll back and remove functions"),
        (name = "invocations", description = "Invoke functions, follow async calls, dead letters"),
        (name = "events", description = "Named queues and topics, and publishing to them"),
        (name = "kv", description = "The key-value stores functions use"),
        (name = "blobs", description = "The blob containers functions use"),
        (name = "usage", description = "Usage, bills, prices, budgets and quotas"),
        (name = "secrets", description = "Secrets, by name (no endpoint answers a value)"),
        (name = "keys", description = "API keys"),
        (name = "health", description = "Liveness and this description"),
    ),
)]
struct ApiDoc;

/// The security scheme and the shared error responses.
struct Common;

impl Modify for Common {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.security_schemes.insert(
            SCHEME.into(),
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("upd_{id}_{secret}")
                    .description(Some(
                        "A tenant's API key. `updraft keys create` makes one; a new server \
                         writes its admin key to DATA_DIR/admin.key.",
                    ))
                    .build(),
            ),
        );
        for (_, name, description) in COMMON_ERRORS {
            components
                .responses
                .insert(name.to_string(), RefOr::T(error_response(description)));
        }
    }
}

/// Answers any `/v1` endpoint may give: the status, the response's name
/// in `components.responses`, and what it means.
const COMMON_ERRORS: [(&str, &str, &str); 3] = [
    (
        "401",
        "Unauthorized",
        "`missing_key`, `invalid_key`: no API key, or one that is revoked or mistyped \
         (with `WWW-Authenticate: Bearer`)",
    ),
    (
        "500",
        "InternalError",
        "`internal`, `storage`: the server failed, not the request; the message is \
         generic and `error.id` names the detail in the server's log",
    ),
    (
        "503",
        "Unavailable",
        "`unavailable`: a backend (NATS in cluster mode) cannot be reached; retry after \
         `Retry-After`",
    ),
];

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
}

/// Raw bytes in a body (a deploy's Wasm, a blob, a key-value value): in
/// OpenAPI 3.1 a string of binary format, not an array of numbers.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // A name for the document only.
pub(crate) struct Binary(Vec<u8>);

/// The document's skeleton: everything but the paths, which the router's
/// routes bring.
pub(crate) fn base() -> OpenApi {
    ApiDoc::openapi()
}

/// Completes the document once every route is in: each `/v1` operation
/// but this document's own gets the common error answers it does not
/// describe itself.
pub(crate) fn finish(mut openapi: OpenApi) -> OpenApi {
    for (path, item) in openapi.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") || path == OPENAPI_PATH {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            add_common(operation);
        }
    }
    openapi
}

fn add_common(operation: &mut Operation) {
    for (status, name, _) in COMMON_ERRORS {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    }
}

/// The document as served, built on first use: it is the same for every
/// router of this build.
static DOCUMENT: OnceLock<Option<Bytes>> = OnceLock::new();

/// This description of the API (OpenAPI 3.1, JSON): needs no key.
///
/// Public because it describes what any client may call, holds nothing of
/// any tenant's, and a client (or a code generator) reads it before it has
/// a key, as it does `/healthz`.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "getOpenApi",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json",
            body = Object),
    ),
)]
pub(crate) async fn document() -> Response {
    let json = DOCUMENT.get_or_init(|| match serde_json::to_vec(&crate::openapi()) {
        Ok(json) => Some(Bytes::from(json)),
        Err(e) => {
            tracing::error!("serializing the OpenAPI document: {e}");
            None
        }
    });
    match json {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response(),
        None => crate::error::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error: the server failed to describe its API, not your request",
        )
        .into_response(),
    }
}
