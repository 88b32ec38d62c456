//! Events over HTTP: async invocations after they are accepted
//! (`GET /v1/invocations/{id}`), a function's dead letters
//! (`/v1/functions/{name}/dlq`, `.../redrive`), named queues and topics
//! (`/v1/queues/{name}`, `/v1/topics/{name}`), publishing
//! (`POST /v1/publish/{name}`) and the state of it all (`GET /v1/queues`).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::{Extension, Json};
use bytes::Bytes;
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use updraft_scheduler::{
    BATCH_BYTES_MAX, Caller, ChannelKind, Event, InvocationStatus, Outgoing, PAYLOAD_BYTES_MAX,
    Platform, PlatformError, Published, QueueError,
};

use crate::error::{ApiError, Query, read_body};

type Shared = State<Arc<Platform>>;

/// Dead letters listed by default, and at most.
const DLQ_PAGE_DEFAULT: usize = 100;
const DLQ_PAGE_MAX: usize = 10_000;

pub(crate) async fn invocation(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<InvocationStatus>, ApiError> {
    match platform.events().invocation(&caller.tenant, &id).await? {
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
    let dead = platform
        .events()
        .dead_letters(&caller.tenant, &name, limit)
        .await?;
    Ok(Json(json!({ "function": name, "dead_letters": dead })))
}

pub(crate) async fn redrive(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let moved = platform.events().redrive(&caller.tenant, &name).await?;
    Ok(Json(json!({ "function": name, "redriven": moved })))
}

pub(crate) async fn queues(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let functions = platform.events().function_queues(&caller.tenant).await?;
    let (queues, topics) = platform.events().channel_overview(&caller.tenant).await?;
    Ok(Json(
        json!({ "functions": functions, "queues": queues, "topics": topics }),
    ))
}

/// Body of `PUT /v1/queues/{name}` (all optional; a topic takes none).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelBody {
    #[serde(default)]
    visibility_timeout_ms: Option<u64>,
    #[serde(default)]
    batch_size: Option<u32>,
}

async fn put_channel(
    platform: &Platform,
    caller: &Caller,
    name: &str,
    kind: ChannelKind,
    body: &[u8],
) -> Result<Json<Value>, ApiError> {
    let settings: ChannelBody = if body.iter().all(u8::is_ascii_whitespace) {
        ChannelBody::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(
                "bad_request",
                format!("the body must be JSON like {{\"visibility_timeout_ms\": 30000, \"batch_size\": 10}}: {e}"),
            )
        })?
    };
    if kind == ChannelKind::Topic
        && (settings.visibility_timeout_ms.is_some() || settings.batch_size.is_some())
    {
        return Err(ApiError::bad_request(
            "bad_request",
            "a topic has no visibility_timeout_ms or batch_size: those are a queue's",
        ));
    }
    let channel = platform
        .events()
        .create_channel(
            &caller.tenant,
            name,
            kind,
            settings.visibility_timeout_ms,
            settings.batch_size,
        )
        .await?;
    Ok(Json(serde_json::to_value(channel).unwrap_or_default()))
}

pub(crate) async fn put_queue(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    put_channel(&platform, &caller, &name, ChannelKind::Queue, &body).await
}

pub(crate) async fn put_topic(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    put_channel(&platform, &caller, &name, ChannelKind::Topic, &body).await
}

pub(crate) async fn delete_queue(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    platform
        .events()
        .delete_channel(&caller.tenant, &name, ChannelKind::Queue)
        .await?;
    Ok(Json(json!({ "deleted": name })))
}

pub(crate) async fn delete_topic(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    platform
        .events()
        .delete_channel(&caller.tenant, &name, ChannelKind::Topic)
        .await?;
    Ok(Json(json!({ "deleted": name })))
}

/// `POST /v1/publish/{name}`: the body is the event's data, or with
/// `Content-Type: application/cloudevents-batch+json` an array of
/// structured CloudEvents published in one commit, or with
/// `Content-Type: application/cloudevents+json` a whole CloudEvent.
pub(crate) async fn publish(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let batch = content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("application/cloudevents-batch+json"));
    let limit = if batch {
        BATCH_BYTES_MAX
    } else {
        PAYLOAD_BYTES_MAX
    };
    let body = read_body(request.into_body(), limit, || match batch {
        true => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the batch is over {BATCH_BYTES_MAX} bytes: split it"),
        ),
        false => PlatformError::Queue(QueueError::PayloadTooLarge {
            len: PAYLOAD_BYTES_MAX + 1,
        })
        .into(),
    })
    .await?;
    let events = match content_type.as_deref() {
        _ if batch => Outgoing::batch(&body).map_err(PlatformError::from)?,
        Some(t) if t.starts_with("application/cloudevents+json") => {
            vec![Outgoing::structured(&body).map_err(PlatformError::from)?]
        }
        _ => {
            vec![Event::from_data(format!("/{}/{name}", caller.tenant), content_type, body).into()]
        }
    };
    let published = platform
        .events()
        .publish_many(&caller.tenant, &name, events)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(published)))
}
