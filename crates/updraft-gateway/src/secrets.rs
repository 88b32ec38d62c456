//! `/v1/secrets`: a tenant's secrets, set and removed by name, listed by
//! name only. No route ever answers a value.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{Value, json};
use updraft_scheduler::{Caller, Platform};

use crate::error::{ApiError, Query};
use crate::usage::{TenantQuery, tenant};

type Shared = State<Arc<Platform>>;

/// `GET /v1/secrets`: `{"secrets":[{"name"}]}`.
pub(crate) async fn list(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    Ok(Json(
        json!({ "secrets": platform.secret_list(tenant).await? }),
    ))
}

/// `PUT /v1/secrets/{name}`: the body (UTF-8) becomes the value.
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
