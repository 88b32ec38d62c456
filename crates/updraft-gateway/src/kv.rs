//! Operator access to key-value stores: `/v1/kv`, `/v1/kv/{store}` (list
//! keys) and `/v1/kv/{store}/{key}` (get, put, delete). Only stores that a
//! deployed function lists can be reached, so a typo answers 404.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::json;
use updraft_scheduler::{Caller, KvError, LIST_PAGE_MAX, Platform, PlatformError, VALUE_BYTES_MAX};

use crate::error::{ApiError, Query, read_body};

type Shared = State<Arc<Platform>>;

/// Default page size of a key or blob listing.
const LIST_PAGE_DEFAULT: usize = 100;

/// `GET /v1/kv`: the stores in use.
pub(crate) async fn stores(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
) -> Response {
    Json(json!({ "stores": platform.functions().kv_store_names(&caller.tenant) })).into_response()
}

/// `?prefix=&cursor=&limit=` of a key or blob listing.
#[derive(Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    pub(crate) prefix: String,
    pub(crate) cursor: Option<String>,
    limit: Option<usize>,
}

impl ListQuery {
    /// The page size asked for, within 1..=`max`.
    pub(crate) fn limit(&self, max: usize) -> usize {
        self.limit.unwrap_or(LIST_PAGE_DEFAULT).clamp(1, max)
    }
}

/// `GET /v1/kv/{store}?prefix=&cursor=&limit=`: one page of keys.
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
pub(crate) async fn get(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path((store, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let value = platform.kv_store(&caller.tenant, &store)?.get(&key).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
}

/// `PUT /v1/kv/{store}/{key}`: the body becomes the value.
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
