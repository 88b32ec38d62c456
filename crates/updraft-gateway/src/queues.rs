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
use serde::{Deserialize, Serialize};
use updraft_scheduler::Channel;
use updraft_scheduler::{
    BATCH_BYTES_MAX, Caller, ChannelKind, DeadLetter, Event, FunctionQueues, InvocationStatus,
    Outgoing, PAYLOAD_BYTES_MAX, Platform, PlatformError, Published, QueueError, QueueOverview,
    TopicOverview,
};
use utoipa::{IntoParams, ToSchema};

use crate::api::Deleted;
use crate::error::{ApiError, ErrorBody, Query, read_body};
use crate::json::SortedJson;
use crate::openapi::Binary;

type Shared = State<Arc<Platform>>;

/// Dead letters listed by default, and at most.
const DLQ_PAGE_DEFAULT: usize = 100;
const DLQ_PAGE_MAX: usize = 10_000;

/// An async invocation: its status, attempts, and its error or result.
#[utoipa::path(
    get,
    path = "/invocations/{id}",
    operation_id = "getInvocation",
    tag = "invocations",
    params(("id" = String, Path, description = "The id an async invoke answered")),
    responses(
        (status = 200, description = "The invocation", body = InvocationStatus),
        (status = 404, description = "`invocation_not_found` (results are kept 24 hours)",
            body = ErrorBody),
    ),
)]
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DlqQuery {
    /// At most this many (default 100, at most 10,000).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/functions/{name}/dlq`.
#[derive(Serialize, ToSchema)]
pub(crate) struct DeadLetters {
    /// Oldest first.
    dead_letters: Vec<DeadLetter>,
    function: String,
}

/// The function's dead letters: async calls that failed every attempt.
#[utoipa::path(
    get,
    path = "/functions/{name}/dlq",
    operation_id = "listDeadLetters",
    tag = "invocations",
    params(("name" = String, Path, description = "The function's name"), DlqQuery),
    responses(
        (status = 200, description = "Its dead letters, oldest first", body = DeadLetters),
        (status = 404, description = "`function_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn dead_letters(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<DlqQuery>,
) -> Result<SortedJson<DeadLetters>, ApiError> {
    let limit = query
        .limit
        .unwrap_or(DLQ_PAGE_DEFAULT)
        .clamp(1, DLQ_PAGE_MAX);
    let dead = platform
        .events()
        .dead_letters(&caller.tenant, &name, limit)
        .await?;
    Ok(SortedJson(DeadLetters {
        dead_letters: dead,
        function: name,
    }))
}

/// `POST /v1/functions/{name}/dlq/redrive`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Redriven {
    function: String,
    /// How many dead letters went back to the queue.
    redriven: usize,
}

/// Queue the function's dead letters again, their attempts reset.
#[utoipa::path(
    post,
    path = "/functions/{name}/dlq/redrive",
    operation_id = "redriveDeadLetters",
    tag = "invocations",
    params(("name" = String, Path, description = "The function's name")),
    responses(
        (status = 200, description = "How many went back", body = Redriven),
        (status = 404, description = "`function_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn redrive(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<SortedJson<Redriven>, ApiError> {
    let moved = platform.events().redrive(&caller.tenant, &name).await?;
    Ok(SortedJson(Redriven {
        function: name,
        redriven: moved,
    }))
}

/// `GET /v1/queues`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Queues {
    /// Each function's async queue.
    functions: Vec<FunctionQueues>,
    /// Named queues.
    queues: Vec<QueueOverview>,
    topics: Vec<TopicOverview>,
}

/// Named queues (depth, in flight, oldest age, consumers), topics
/// (subscribers), and each function's async queue.
#[utoipa::path(
    get,
    path = "/queues",
    operation_id = "listQueues",
    tag = "events",
    responses((status = 200, description = "Queues and topics", body = Queues)),
)]
pub(crate) async fn queues(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<SortedJson<Queues>, ApiError> {
    let functions = platform.events().function_queues(&caller.tenant).await?;
    let (queues, topics) = platform.events().channel_overview(&caller.tenant).await?;
    Ok(SortedJson(Queues {
        functions,
        queues,
        topics,
    }))
}

/// Body of `PUT /v1/queues/{name}` (all optional; a topic takes none).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelBody {
    /// How long a consumer has to finish a message before another may get
    /// it (default 30,000; at most 12 hours).
    #[serde(default)]
    visibility_timeout_ms: Option<u64>,
    /// Messages a consumer leases at once (default 10, at most 1000).
    #[serde(default)]
    batch_size: Option<u32>,
}

async fn put_channel(
    platform: &Platform,
    caller: &Caller,
    name: &str,
    kind: ChannelKind,
    body: &[u8],
) -> Result<SortedJson<Channel>, ApiError> {
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
    Ok(SortedJson(channel))
}

/// Create or update a named queue.
#[utoipa::path(
    put,
    path = "/queues/{name}",
    operation_id = "putQueue",
    tag = "events",
    params(("name" = String, Path, description = "The queue's name")),
    request_body(content = Option<ChannelBody>, description = "Settings, or empty for the defaults"),
    responses(
        (status = 200, description = "The queue", body = Channel),
        (status = 400, description = "`bad_request`: a bad body or name", body = ErrorBody),
        (status = 409, description = "`channel_conflict`: a topic has the name", body = ErrorBody),
    ),
)]
pub(crate) async fn put_queue(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<SortedJson<Channel>, ApiError> {
    put_channel(&platform, &caller, &name, ChannelKind::Queue, &body).await
}

/// Create a topic (it takes no settings).
#[utoipa::path(
    put,
    path = "/topics/{name}",
    operation_id = "putTopic",
    tag = "events",
    params(("name" = String, Path, description = "The topic's name")),
    request_body(content = Option<Object>, description = "Empty (or `{}`)"),
    responses(
        (status = 200, description = "The topic", body = Channel),
        (status = 400, description = "`bad_request`: a bad body or name", body = ErrorBody),
        (status = 409, description = "`channel_conflict`: a queue has the name", body = ErrorBody),
    ),
)]
pub(crate) async fn put_topic(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<SortedJson<Channel>, ApiError> {
    put_channel(&platform, &caller, &name, ChannelKind::Topic, &body).await
}

/// Remove a queue and its messages.
#[utoipa::path(
    delete,
    path = "/queues/{name}",
    operation_id = "deleteQueue",
    tag = "events",
    params(("name" = String, Path, description = "The queue's name")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 404, description = "`channel_not_found`", body = ErrorBody),
        (status = 409, description = "`channel_in_use`: a function consumes it", body = ErrorBody),
    ),
)]
pub(crate) async fn delete_queue(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<SortedJson<Deleted>, ApiError> {
    platform
        .events()
        .delete_channel(&caller.tenant, &name, ChannelKind::Queue)
        .await?;
    Ok(SortedJson(Deleted { deleted: name }))
}

/// Remove a topic.
#[utoipa::path(
    delete,
    path = "/topics/{name}",
    operation_id = "deleteTopic",
    tag = "events",
    params(("name" = String, Path, description = "The topic's name")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 404, description = "`channel_not_found`", body = ErrorBody),
        (status = 409, description = "`channel_in_use`: a function subscribes to it", body = ErrorBody),
    ),
)]
pub(crate) async fn delete_topic(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<SortedJson<Deleted>, ApiError> {
    platform
        .events()
        .delete_channel(&caller.tenant, &name, ChannelKind::Topic)
        .await?;
    Ok(SortedJson(Deleted { deleted: name }))
}

/// Publish to a queue or a topic.
///
/// `POST /v1/publish/{name}`: the body is the event's data, or with
/// `Content-Type: application/cloudevents-batch+json` an array of
/// structured CloudEvents published in one commit, or with
/// `Content-Type: application/cloudevents+json` a whole CloudEvent.
#[utoipa::path(
    post,
    path = "/publish/{name}",
    operation_id = "publish",
    tag = "events",
    params(("name" = String, Path, description = "The queue's or topic's name")),
    request_body(content(
        (Binary = "application/octet-stream"),
        (Object = "application/cloudevents+json"),
        (Vec<Object> = "application/cloudevents-batch+json"),
    ), description = "The event's data (any content type, at most 1 MiB), a structured \
        CloudEvent, or an array of up to 1000 published in one commit"),
    responses(
        (status = 202, description = "Published", body = Published),
        (status = 400, description = "`invalid_cloudevent`, `bad_request`", body = ErrorBody),
        (status = 404, description = "`channel_not_found`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
    ),
)]
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
