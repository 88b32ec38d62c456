//! `/v1/secrets`: a tenant's secrets, set and removed by name, listed by
//! name only. No route ever answers a value.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Serialize;
use updraft_scheduler::{Caller, Platform, SecretInfo};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody, Query};
use crate::json::SortedJson;
use crate::usage::{TenantQuery, tenant};

type Shared = State<Arc<Platform>>;

/// `GET /v1/secrets`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Secrets {
    secrets: Vec<SecretInfo>,
}

/// `GET /v1/secrets`: `{"secrets":[{"name"}]}`, names only.
#[utoipa::path(
    get,
    path = "/secrets",
    operation_id = "listSecrets",
    tag = "secrets",
    params(TenantQuery),
    responses(
        (status = 200, description = "The tenant's secrets, by name", body = Secrets),
        (status = 403, description = "`forbidden`: another tenant without an admin key", body = ErrorBody),
        (status = 503, description = "`secrets_unavailable`", body = ErrorBody),
    ),
)]
pub(crate) async fn list(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
) -> Result<SortedJson<Secrets>, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    Ok(SortedJson(Secrets {
        secrets: platform.secret_list(tenant).await?,
    }))
}

/// `PUT /v1/secrets/{name}`: the body (UTF-8) becomes the value.
#[utoipa::path(
    put,
    path = "/secrets/{name}",
    operation_id = "putSecret",
    tag = "secrets",
    params(("name" = String, Path, description = "The secret's name"), TenantQuery),
    request_body(content = String, content_type = "text/plain",
        description = "The value: UTF-8, at most 64 KiB"),
    responses(
        (status = 204, description = "Set; the next invocation reads it"),
        (status = 400, description = "`invalid_secret`", body = ErrorBody),
        (status = 403, description = "`forbidden`: another tenant without an admin key", body = ErrorBody),
        (status = 503, description = "`secrets_unavailable`", body = ErrorBody),
    ),
)]
pub(crate) async fn put(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<TenantQuery>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    let value = std::str::from_utf8(&body).map_err(|_| {
        ApiError::bad_request("invalid_secret", "a secret's value must be UTF-8 text")
    })?;
    platform.secret_set(tenant, &name, value).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/secrets/{name}`.
#[utoipa::path(
    delete,
    path = "/secrets/{name}",
    operation_id = "deleteSecret",
    tag = "secrets",
    params(("name" = String, Path, description = "The secret's name"), TenantQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "`forbidden`: another tenant without an admin key", body = ErrorBody),
        (status = 404, description = "`secret_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn delete(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<TenantQuery>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    platform.secret_delete(tenant, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
