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
use serde_json::json;
use updraft_scheduler::{BLOB_PAGE_MAX, Caller, Platform, PlatformError};

use crate::error::{ApiError, Query};
use crate::kv::ListQuery;

type Shared = State<Arc<Platform>>;

/// `GET /v1/blobs`: the containers in use.
pub(crate) async fn containers(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
) -> Response {
    Json(json!({ "containers": platform.functions().blob_container_names(&caller.tenant) }))
        .into_response()
}

/// `GET /v1/blobs/{container}?prefix=&cursor=&limit=`: one page of blobs.
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

/// `PUT /v1/blobs/{container}/{key}`: the body, streamed into the blob; it
/// appears only once complete, and not at all if it is too large.
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
    Ok((
        StatusCode::CREATED,
        Json(json!({ "key": key, "size": size })),
    )
        .into_response())
}

/// `DELETE /v1/blobs/{container}/{key}`: deleting a missing blob is not an error.
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
