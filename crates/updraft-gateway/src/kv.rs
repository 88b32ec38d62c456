//! Operator access to key-value stores: `/v1/kv`, `/v1/kv/{store}` (list
//! keys) and `/v1/kv/{store}/{key}` (get, put, delete). Only stores that a
//! deployed function lists can be reached, so a typo answers 404.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use updraft_scheduler::{
    Caller, KeyPage, KvError, LIST_PAGE_MAX, Platform, PlatformError, VALUE_BYTES_MAX,
};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody, Query, read_body};
use crate::json::SortedJson;
use crate::openapi::Binary;

type Shared = State<Arc<Platform>>;

/// Default page size of a key or blob listing.
const LIST_PAGE_DEFAULT: usize = 100;

/// `GET /v1/kv`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Stores {
    stores: Vec<String>,
}

/// The key-value stores in use (listed by deployed functions).
#[utoipa::path(
    get,
    path = "/kv",
    operation_id = "listKvStores",
    tag = "kv",
    responses((status = 200, description = "The stores", body = Stores)),
)]
pub(crate) async fn stores(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
) -> SortedJson<Stores> {
    SortedJson(Stores {
        stores: platform.functions().kv_store_names(&caller.tenant),
    })
}

/// `?prefix=&cursor=&limit=` of a key or blob listing.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only keys that start with this.
    #[serde(default)]
    pub(crate) prefix: String,
    /// The `cursor` of the previous page.
    pub(crate) cursor: Option<String>,
    /// Page size (default 100, at most 1000).
    limit: Option<usize>,
}

impl ListQuery {
    /// The page size asked for, within 1..=`max`.
    pub(crate) fn limit(&self, max: usize) -> usize {
        self.limit.unwrap_or(LIST_PAGE_DEFAULT).clamp(1, max)
    }
}

/// `GET /v1/kv/{store}?prefix=&cursor=&limit=`: one page of keys.
#[utoipa::path(
    get,
    path = "/kv/{store}",
    operation_id = "listKvKeys",
    tag = "kv",
    params(("store" = String, Path, description = "The store"), ListQuery),
    responses(
        (status = 200, description = "One page of keys in byte order", body = KeyPage),
        (status = 400, description = "`invalid_cursor`, `bad_request`", body = ErrorBody),
        (status = 404, description = "`store_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn list(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(store): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let store = platform.kv_store(&caller.tenant, &store)?;
    let limit = query.limit(LIST_PAGE_MAX);
    let page = store
        .list(&query.prefix, query.cursor.as_deref(), limit)
        .await?;
    Ok(Json(page).into_response())
}

/// `GET /v1/kv/{store}/{key}`: the value, as stored.
#[utoipa::path(
    get,
    path = "/kv/{store}/{key}",
    operation_id = "getKvValue",
    tag = "kv",
    params(
        ("store" = String, Path, description = "The store"),
        ("key" = String, Path, description = "The key (it may contain `/`)"),
    ),
    responses(
        (status = 200, description = "The value", body = Binary, content_type = "application/octet-stream"),
        (status = 400, description = "`invalid_key`", body = ErrorBody),
        (status = 404, description = "`store_not_found`, `key_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn get(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path((store, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let value = platform.kv_store(&caller.tenant, &store)?.get(&key).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
}

/// `PUT /v1/kv/{store}/{key}`: the body becomes the value (durable when answered).
#[utoipa::path(
    put,
    path = "/kv/{store}/{key}",
    operation_id = "putKvValue",
    tag = "kv",
    params(
        ("store" = String, Path, description = "The store"),
        ("key" = String, Path, description = "The key (it may contain `/`)"),
    ),
    request_body(content = Binary, content_type = "application/octet-stream",
        description = "The value (at most 1 MiB)"),
    responses(
        (status = 204, description = "Stored"),
        (status = 400, description = "`invalid_key`, `body_read_failed`", body = ErrorBody),
        (status = 404, description = "`store_not_found`", body = ErrorBody),
        (status = 413, description = "`value_too_large`", body = ErrorBody),
        (status = 507, description = "`tenant_disk_quota`, `storage_full`", body = ErrorBody),
    ),
)]
pub(crate) async fn put(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path((store, key)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let store = platform.kv_store(&caller.tenant, &store)?;
    // Read one byte past the limit, so the error can tell how much is too much.
    let value = read_body(request.into_body(), VALUE_BYTES_MAX + 1, || {
        PlatformError::from(KvError::ValueTooLarge {
            len: VALUE_BYTES_MAX + 1,
        })
    })
    .await?;
    store.set(&key, value.to_vec()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /v1/kv/{store}/{key}`: deleting a missing key is not an error.
#[utoipa::path(
    delete,
    path = "/kv/{store}/{key}",
    operation_id = "deleteKvValue",
    tag = "kv",
    params(
        ("store" = String, Path, description = "The store"),
        ("key" = String, Path, description = "The key (it may contain `/`)"),
    ),
    responses(
        (status = 204, description = "Deleted (or there was none)"),
        (status = 400, description = "`invalid_key`", body = ErrorBody),
        (status = 404, description = "`store_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn delete(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path((store, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    platform
        .kv_store(&caller.tenant, &store)?
        .delete(&key)
        .await?;
    Ok((StatusCode::NO_CONTENT, Body::empty()).into_response())
}
