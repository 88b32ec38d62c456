//! Operator access to blob containers: `/v1/blobs`, `/v1/blobs/{container}`
//! (list) and `/v1/blobs/{container}/{key}` (get, put, delete). Bodies are
//! streamed both ways, so a blob never sits whole in the server's memory
//! here. Only containers that a deployed function lists can be reached.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use http::{StatusCode, header};
use serde::Serialize;
use updraft_scheduler::{BLOB_PAGE_MAX, BlobPage, Caller, Platform, PlatformError};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody, Query};
use crate::json::SortedJson;
use crate::kv::ListQuery;
use crate::openapi::Binary;

type Shared = State<Arc<Platform>>;

/// `GET /v1/blobs`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Containers {
    containers: Vec<String>,
}

/// The blob containers in use (listed by deployed functions).
#[utoipa::path(
    get,
    path = "/blobs",
    operation_id = "listBlobContainers",
    tag = "blobs",
    responses((status = 200, description = "The containers", body = Containers)),
)]
pub(crate) async fn containers(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
) -> SortedJson<Containers> {
    SortedJson(Containers {
        containers: platform.functions().blob_container_names(&caller.tenant),
    })
}

/// `GET /v1/blobs/{container}?prefix=&cursor=&limit=`: one page of blobs.
#[utoipa::path(
    get,
    path = "/blobs/{container}",
    operation_id = "listBlobs",
    tag = "blobs",
    params(("container" = String, Path, description = "The container"), ListQuery),
    responses(
        (status = 200, description = "One page of blobs in key order", body = BlobPage),
        (status = 400, description = "`invalid_cursor`, `bad_request`", body = ErrorBody),
        (status = 404, description = "`container_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn list(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(container): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let container = platform.blob_container(&caller.tenant, &container)?;
    let limit = query.limit(BLOB_PAGE_MAX);
    let page = container
        .list(&query.prefix, query.cursor.as_deref(), limit)
        .await?;
    Ok(Json(page).into_response())
}

/// `GET /v1/blobs/{container}/{key}`: the blob, streamed.
#[utoipa::path(
    get,
    path = "/blobs/{container}/{key}",
    operation_id = "getBlob",
    tag = "blobs",
    params(
        ("container" = String, Path, description = "The container"),
        ("key" = String, Path, description = "The blob's key (it may contain `/`)"),
    ),
    responses(
        (status = 200, description = "The blob", body = Binary, content_type = "application/octet-stream"),
        (status = 404, description = "`container_not_found`, `blob_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn get(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path((container, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (size, stream) = platform
        .blob_container(&caller.tenant, &container)?
        .stream(&key)
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Store a blob.
///
/// `PUT /v1/blobs/{container}/{key}`: the body, streamed into the blob; it
/// appears only once complete, and not at all if it is too large.
#[utoipa::path(
    put,
    path = "/blobs/{container}/{key}",
    operation_id = "putBlob",
    tag = "blobs",
    params(
        ("container" = String, Path, description = "The container"),
        ("key" = String, Path, description = "The blob's key (it may contain `/`)"),
    ),
    request_body(content = Binary, content_type = "application/octet-stream",
        description = "The blob's bytes"),
    responses(
        (status = 201, description = "Stored", body = BlobWritten),
        (status = 400, description = "`bad_request`: a bad key; `body_read_failed`", body = ErrorBody),
        (status = 404, description = "`container_not_found`", body = ErrorBody),
        (status = 413, description = "`blob_too_large`", body = ErrorBody),
        (status = 507, description = "`tenant_disk_quota`, `storage_full`", body = ErrorBody),
    ),
)]
pub(crate) async fn put(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path((container, key)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let mut writer = platform
        .blob_container(&caller.tenant, &container)?
        .writer(&key)
        .await?;
    let mut body = request.into_body().into_data_stream();
    while let Some(chunk) = body.next().await {
        let written = match chunk {
            Ok(chunk) => writer.write(chunk).await.map_err(PlatformError::from),
            // Cut off: nothing is stored, and it is not a size problem.
            Err(e) => Err(PlatformError::BodyRead(e.into_inner())),
        };
        if let Err(e) = written {
            writer.abort().await;
            return Err(e.into());
        }
    }
    let size = writer.finish().await.map_err(PlatformError::from)?;
    Ok((StatusCode::CREATED, SortedJson(BlobWritten { key, size })).into_response())
}

/// `PUT /v1/blobs/{container}/{key}`: what was stored.
#[derive(Serialize, ToSchema)]
pub(crate) struct BlobWritten {
    key: String,
    /// Bytes stored.
    size: u64,
}

/// `DELETE /v1/blobs/{container}/{key}`: deleting a missing blob is not an error.
#[utoipa::path(
    delete,
    path = "/blobs/{container}/{key}",
    operation_id = "deleteBlob",
    tag = "blobs",
    params(
        ("container" = String, Path, description = "The container"),
        ("key" = String, Path, description = "The blob's key (it may contain `/`)"),
    ),
    responses(
        (status = 204, description = "Deleted (or there was none)"),
        (status = 404, description = "`container_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn delete(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path((container, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    platform
        .blob_container(&caller.tenant, &container)?
        .delete(&key)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
