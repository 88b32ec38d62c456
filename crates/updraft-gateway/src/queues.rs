//! Async invocations after they are accepted: `GET /v1/invocations/{id}`,
//! a function's dead letters (`/v1/functions/{name}/dlq`, `.../redrive`),
//! and the queues' state (`GET /v1/queues`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use updraft_scheduler::{InvocationStatus, Platform};
use updraft_state::Caller;

use crate::error::ApiError;

type Shared = State<Arc<Platform>>;

/// Dead letters listed by default, and at most.
const DLQ_PAGE_DEFAULT: usize = 100;
const DLQ_PAGE_MAX: usize = 10_000;

pub(crate) async fn invocation(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<InvocationStatus>, ApiError> {
    match platform.invocation(&caller.tenant, &id)? {
        Some(status) => Ok(Json(status)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invocation_not_found",
            format!(
                "no async invocation {id:?}: use the id an async invoke answered (results are kept 24 hours)"
            ),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DlqQuery {
    #[serde(default)]
    limit: Option<usize>,
}

pub(crate) async fn dead_letters(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<DlqQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query
        .limit
        .unwrap_or(DLQ_PAGE_DEFAULT)
        .clamp(1, DLQ_PAGE_MAX);
    let dead = platform.dead_letters(&caller.tenant, &name, limit)?;
    Ok(Json(json!({ "function": name, "dead_letters": dead })))
}

pub(crate) async fn redrive(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let moved = platform.redrive(&caller.tenant, &name).await?;
    Ok(Json(json!({ "function": name, "redriven": moved })))
}

pub(crate) async fn queues(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let functions = platform.function_queues(&caller.tenant)?;
    Ok(Json(json!({ "functions": functions })))
}
