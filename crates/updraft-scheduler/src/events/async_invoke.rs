//! Async invocation: a request accepted now (durably, in the function's
//! queue) and run soon, with retries and a dead-letter queue.
//!
//! Each function with async work has one dispatcher task. It leases
//! messages from the function's queue (`fn:NAME` of its tenant) as slots
//! free up, runs each like a synchronous invocation, and then acks it with
//! its result, retries it after an exponential backoff with jitter, or,
//! after the manifest's `retry.max_attempts`, moves it to the dead-letter
//! queue (`dlq:NAME`). Delivery is at least once: a crash mid-run runs the
//! request again after a restart.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use updraft_core::trace::{TRACEPARENT, TraceParent};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use updraft_core::Trigger;
use updraft_state::queue::{
    Accepted, Message, MessageInfo, MessageState, NewMessage, QueueId, QueueStats, Uuid,
};

use super::{Event, Events, channel_queue};
use crate::error::PlatformError;
use crate::functions::Loaded;
use crate::invoker::{Input, Invocation, StoredEvent};
use crate::now_ms;

/// How stale a consumer's copy of its queue's settings may get.
const SETTINGS_REREAD: Duration = Duration::from_secs(1);

/// Async invocations of one function that run at once.
pub const ASYNC_CONCURRENCY: usize = 16;
/// Most bytes of a response kept as the invocation's result.
pub const RESULT_BYTES_MAX: usize = 64 * 1024;
/// How much longer than its function's timeout an async lease lasts: a
/// leased message starts at once (a dispatcher leases only for free
/// slots), so this covers waiting for an instance and settling. It is
/// also how soon after a node dies its leased work runs elsewhere.
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// How long a dispatcher waits for work before checking its function still
/// exists.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The queue of a function's async invocations.
pub(crate) fn function_queue(tenant: &str, name: &str) -> QueueId {
    QueueId::new(tenant, format!("fn:{name}"))
}

/// The dead-letter queue of a function.
pub(crate) fn dead_letter_queue(tenant: &str, name: &str) -> QueueId {
    QueueId::new(tenant, format!("dlq:{name}"))
}

/// The first byte of a queued payload: what follows.
pub(crate) const REQUEST_TAG: u8 = 1;
/// An [`Event`] and a structured CloudEvent, as [`crate::Outgoing::Json`]
/// holds it, laid out by [`updraft_core::cloudevent`].
pub(crate) use super::cloudevent::{EVENT_TAG, JSON_EVENT_TAG};

/// Where a dispatcher leases its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The function's own async queue: requests, topic events, cron ticks,
    /// redriven dead letters.
    Function,
    /// A named queue the function consumes, competing with its other
    /// consumers.
    Queue(String),
}

/// A queued payload.
enum Work {
    Request(AsyncRequest),
    Event(Event),
    /// A structured CloudEvent, checked when it was published.
    Json(Bytes),
}

impl Work {
    /// Where the message's trace is: the request's `traceparent` header,
    /// or the event's `traceparent` attribute (the CloudEvents
    /// distributed-tracing extension).
    fn traceparent(&self) -> Option<TraceParent> {
        match self {
            Work::Request(request) => request.traceparent(),
            Work::Event(event) => match event.attributes.get(TRACEPARENT) {
                Some(serde_json::Value::String(v)) => TraceParent::parse(v),
                _ => None,
            },
            Work::Json(json) => {
                #[derive(serde::Deserialize)]
                struct Traced {
                    traceparent: Option<String>,
                }
                serde_json::from_slice::<Traced>(json)
                    .ok()?
                    .traceparent
                    .as_deref()
                    .and_then(TraceParent::parse)
            }
        }
    }

    fn decode(bytes: Vec<u8>) -> Option<Work> {
        match bytes.split_first()? {
            (&REQUEST_TAG, rest) => AsyncRequest::decode(rest).map(Work::Request),
            (&EVENT_TAG, rest) => Event::decode(rest).map(Work::Event),
            (&JSON_EVENT_TAG, _) => Some(Work::Json(Bytes::from(bytes).slice(1..))),
            _ => None,
        }
    }
}

/// An HTTP request kept for later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncRequest {
    pub method: String,
    /// Path and query, as the function will see them.
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

impl AsyncRequest {
    /// Its `traceparent` header, if it has a valid one.
    pub(crate) fn traceparent(&self) -> Option<TraceParent> {
        self.headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(TRACEPARENT))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
            .and_then(TraceParent::parse)
    }

    /// Replaces its `traceparent` (and drops a `tracestate` that went with
    /// the old one only if there was none to keep).
    pub(crate) fn set_traceparent(&mut self, at: &TraceParent) {
        self.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case(TRACEPARENT));
        self.headers
            .push((TRACEPARENT.to_string(), at.header().into_bytes()));
    }

    /// `[u16 len][method][u32 len][path][u16 count]([u16 len][name][u32
    /// len][value])*[body]`, little-endian.
    fn encode(&self) -> Result<Vec<u8>, PlatformError> {
        let too_big = || PlatformError::BadRequest("a request header is too large".into());
        let mut buf = Vec::with_capacity(self.body.len() + 256);
        buf.push(REQUEST_TAG);
        let short = |buf: &mut Vec<u8>, bytes: &[u8]| -> Result<(), PlatformError> {
            let len = u16::try_from(bytes.len()).map_err(|_| too_big())?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(bytes);
            Ok(())
        };
        short(&mut buf, self.method.as_bytes())?;
        let path_len = u32::try_from(self.path.len()).map_err(|_| too_big())?;
        buf.extend_from_slice(&path_len.to_le_bytes());
        buf.extend_from_slice(self.path.as_bytes());
        let count = u16::try_from(self.headers.len()).map_err(|_| too_big())?;
        buf.extend_from_slice(&count.to_le_bytes());
        for (name, value) in &self.headers {
            short(&mut buf, name.as_bytes())?;
            let len = u32::try_from(value.len()).map_err(|_| too_big())?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(value);
        }
        buf.extend_from_slice(&self.body);
        Ok(buf)
    }

    fn decode(bytes: &[u8]) -> Option<AsyncRequest> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if bytes.len() < n {
                return None;
            }
            let (head, rest) = bytes.split_at(n);
            *bytes = rest;
            Some(head)
        }
        fn u16_of(bytes: &mut &[u8]) -> Option<usize> {
            Some(u16::from_le_bytes(take(bytes, 2)?.try_into().ok()?).into())
        }
        fn u32_of(bytes: &mut &[u8]) -> Option<usize> {
            usize::try_from(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?)).ok()
        }
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
        let mut rest = bytes;
        let n = u16_of(&mut rest)?;
        let method = text(take(&mut rest, n)?)?;
        let n = u32_of(&mut rest)?;
        let path = text(take(&mut rest, n)?)?;
        let mut headers = Vec::new();
        for _ in 0..u16_of(&mut rest)? {
            let n = u16_of(&mut rest)?;
            let name = text(take(&mut rest, n)?)?;
            let n = u32_of(&mut rest)?;
            headers.push((name, take(&mut rest, n)?.to_vec()));
        }
        Some(AsyncRequest {
            method,
            path,
            headers,
            body: Bytes::copy_from_slice(rest),
        })
    }
}

/// What `GET /v1/invocations/{id}` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationStatus {
    pub id: String,
    pub function: String,
    /// `queued`, `running`, `succeeded`, `failed` (waiting for a retry) or
    /// `dead` (in the dead-letter queue).
    pub status: String,
    /// Attempts that ended (in failure, unless the status is `succeeded`).
    pub attempts: u32,
    pub enqueued_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// When a `failed` invocation runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<u64>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<InvocationResult>,
    /// The node that ran it (a succeeded invocation's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The response of a succeeded async invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationResult {
    /// The HTTP status (200 for a command).
    pub status: u16,
    /// The first [`RESULT_BYTES_MAX`] bytes of the body, as UTF-8 (invalid
    /// sequences replaced).
    pub body: String,
    pub body_truncated: bool,
}

/// A message of a dead-letter queue, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: String,
    pub attempts: u32,
    pub enqueued_ms: u64,
    pub error: Option<String>,
    pub payload_bytes: usize,
}

impl From<MessageInfo> for DeadLetter {
    fn from(m: MessageInfo) -> Self {
        DeadLetter {
            id: m.id.to_string(),
            attempts: m.attempts,
            enqueued_ms: m.enqueued_ms,
            error: m.last_error,
            payload_bytes: m.payload_bytes,
        }
    }
}

/// The async queues of one function, for `GET /v1/queues`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionQueues {
    pub function: String,
    pub depth: u64,
    pub in_flight: u64,
    /// Age of the oldest message waiting or in flight, in ms.
    pub oldest_age_ms: Option<u64>,
    pub dead_letters: u64,
}

fn queue_error(e: updraft_state::queue::QueueError) -> PlatformError {
    PlatformError::Queue(e)
}

impl Events {
    /// Accepts a request for `loaded` to run soon. It is durable when this
    /// returns; the same `idempotency_key` within a day returns the first id.
    pub async fn invoke_async(
        &self,
        loaded: &Arc<Loaded>,
        mut request: AsyncRequest,
        idempotency_key: Option<String>,
    ) -> Result<Accepted, PlatformError> {
        self.usage.check_budget(&loaded.tenant)?;
        // The request keeps where its trace is, so that every attempt (a
        // retry an hour later too) joins it: under the client's, or a new one.
        let mut span = self.invoker().traces().start(
            format!("enqueue {}", loaded.name),
            opentelemetry::trace::SpanKind::Producer,
            request.traceparent(),
            vec![
                opentelemetry::KeyValue::new("messaging.system", "updraft"),
                opentelemetry::KeyValue::new("messaging.operation.type", "send"),
                opentelemetry::KeyValue::new(
                    "messaging.destination.name",
                    format!("async:{}", loaded.name),
                ),
                opentelemetry::KeyValue::new(crate::traces::TENANT, loaded.tenant.to_string()),
            ],
        );
        if let Some(at) = span.position() {
            request.set_traceparent(&at);
        }
        let message = NewMessage {
            payload: request.encode()?,
            idempotency_key,
        };
        let queue = function_queue(&loaded.tenant, &loaded.name);
        let accepted = self
            .queues
            .send(&queue, vec![message])
            .await
            .map_err(queue_error)?;
        self.ensure_dispatcher(&loaded.tenant, &loaded.name, Source::Function);
        let accepted = accepted.into_iter().next().ok_or_else(|| {
            PlatformError::Queue(updraft_state::queue::QueueError::storage(
                "the queue accepted nothing",
            ))
        })?;
        span.set(opentelemetry::KeyValue::new(
            "messaging.message.id",
            accepted.id.to_string(),
        ));
        span.end();
        Ok(accepted)
    }

    /// Where async invocation `id` of `tenant` is.
    pub async fn invocation(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<InvocationStatus>, PlatformError> {
        let Ok(uuid) = Uuid::parse_str(id) else {
            return Ok(None);
        };
        let Some(state) = self
            .queues
            .locate(tenant, uuid)
            .await
            .map_err(queue_error)?
        else {
            return Ok(None);
        };
        let from_queue = |queue: &QueueId| -> (String, bool) {
            match queue.name.split_once(':') {
                Some(("dlq", name)) => (name.to_string(), true),
                Some((_, name)) => (name.to_string(), false),
                None => (queue.name.clone(), false),
            }
        };
        Ok(Some(match state {
            MessageState::Done { outcome } => serde_json::from_slice(&outcome).map_err(|e| {
                PlatformError::Queue(updraft_state::queue::QueueError::Storage(
                    updraft_core::Failure::context(
                        format!("the result of invocation {id} is unreadable"),
                        e,
                    ),
                ))
            })?,
            MessageState::Waiting {
                queue,
                attempts,
                visible_ms,
                enqueued_ms,
                last_error,
            } => {
                let (function, dead) = from_queue(&queue);
                // Waiting in a named queue: no consumer has it yet.
                let function = if queue.name.starts_with("q:") {
                    String::new()
                } else {
                    function
                };
                let status = match (dead, attempts) {
                    (true, _) => "dead",
                    (false, 0) => "queued",
                    (false, _) => "failed",
                };
                InvocationStatus {
                    id: id.to_string(),
                    function,
                    status: status.into(),
                    attempts,
                    enqueued_ms,
                    started_ms: None,
                    finished_ms: None,
                    next_attempt_ms: (status == "failed").then_some(visible_ms),
                    error: last_error,
                    result: None,
                    node: None,
                }
            }
            MessageState::InFlight {
                queue,
                attempts,
                since_ms,
                enqueued_ms,
                last_error,
            } => InvocationStatus {
                id: id.to_string(),
                function: from_queue(&queue).0,
                status: "running".into(),
                attempts,
                enqueued_ms,
                started_ms: Some(since_ms),
                finished_ms: None,
                next_attempt_ms: None,
                error: last_error,
                result: None,
                node: None,
            },
        }))
    }

    /// The dead letters of a function, oldest first.
    pub async fn dead_letters(
        &self,
        tenant: &str,
        name: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, PlatformError> {
        self.functions.require(tenant, name)?;
        Ok(self
            .queues
            .list(&dead_letter_queue(tenant, name), limit)
            .await
            .map_err(queue_error)?
            .into_iter()
            .map(DeadLetter::from)
            .collect())
    }

    /// Sends every dead letter of a function back to its queue, with its
    /// attempts reset; returns how many.
    pub async fn redrive(&self, tenant: &str, name: &str) -> Result<usize, PlatformError> {
        self.functions.require(tenant, name)?;
        let moved = self
            .queues
            .redrive(
                &dead_letter_queue(tenant, name),
                &function_queue(tenant, name),
            )
            .await
            .map_err(queue_error)?;
        self.ensure_dispatcher(tenant, name, Source::Function);
        Ok(moved)
    }

    /// The async queues of every function of `tenant`.
    pub async fn function_queues(
        &self,
        tenant: &str,
    ) -> Result<Vec<FunctionQueues>, PlatformError> {
        let now = now_ms();
        let mut out = Vec::new();
        for (record, _) in self.functions.list(tenant).await? {
            let name = record.name;
            let QueueStats {
                depth,
                in_flight,
                oldest_enqueued_ms,
            } = self
                .queues
                .stats(&function_queue(tenant, &name))
                .await
                .map_err(queue_error)?;
            let dead = self
                .queues
                .stats(&dead_letter_queue(tenant, &name))
                .await
                .map_err(queue_error)?;
            out.push(FunctionQueues {
                depth,
                in_flight,
                oldest_age_ms: oldest_enqueued_ms.map(|t| now.saturating_sub(t)),
                dead_letters: dead.depth,
                function: name,
            });
        }
        Ok(out)
    }

    /// Starts the dispatcher of a function on `source` unless it runs.
    pub(crate) fn ensure_dispatcher(&self, tenant: &str, name: &str, source: Source) {
        let mut key = updraft_core::function_key(tenant, name);
        if let Source::Queue(queue) = &source {
            key = format!("{key}@q:{queue}");
        }
        let key: Arc<str> = key.into();
        if !self.dispatchers().insert(key.clone()) {
            return;
        }
        let events = self.me();
        let (tenant, name) = (tenant.to_string(), name.to_string());
        tokio::spawn(async move {
            dispatch(&events, &tenant, &name, &source).await;
            if let Some(events) = events.upgrade() {
                events.dispatchers().remove(&key);
            }
        });
    }
}

/// Leases and runs a function's work from `source` until the function is
/// deleted (or, for a named queue, stops consuming it) or the platform
/// shuts down.
async fn dispatch(events: &Weak<Events>, tenant: &str, name: &str, source: &Source) {
    let queue = match source {
        Source::Function => function_queue(tenant, name),
        Source::Queue(channel) => channel_queue(tenant, channel),
    };
    let slots = Arc::new(Semaphore::new(ASYNC_CONCURRENCY));
    // A named queue's settings, re-read now and then rather than every round
    // (a round can be a few messages): (read at, visibility ms, batch size).
    let mut settings: Option<(Instant, u64, u32)> = None;
    loop {
        let Some(p) = events.upgrade() else { return };
        let Some(loaded) = p.functions.get(tenant, name) else {
            return;
        };
        if p.is_shut_down() {
            return;
        }
        // A lease outlives the longest run, so a slow success is not
        // delivered twice; a named queue's visibility timeout is the user's.
        let mut lease = Duration::from_millis(loaded.version.limits.timeout_ms) + LEASE_MARGIN;
        let mut batch = ASYNC_CONCURRENCY;
        if let Source::Queue(channel) = source {
            let trigger = updraft_core::EventTrigger::Queue(channel.clone());
            if settings.is_none_or(|(at, ..)| at.elapsed() >= SETTINGS_REREAD) {
                settings = p
                    .channel_settings(tenant, channel)
                    .await
                    .map(|(visibility, batch)| (Instant::now(), visibility, batch));
            }
            let (Some((_, visibility_ms, batch_size)), true) =
                (settings, Events::has_trigger(&loaded, &trigger))
            else {
                return;
            };
            lease = Duration::from_millis(visibility_ms);
            batch = batch_size as usize;
        }
        let queues = p.queues.clone();
        drop(p);
        let Ok(first) = slots.clone().acquire_owned().await else {
            return;
        };
        // Counted from before the lease: a shutdown waits for what this
        // round leases to run, or sees it stopped before leasing.
        let Some(active) = events.upgrade().map(|p| p.active().clone()) else {
            return;
        };
        let leasing = active.enter();
        if events.upgrade().is_none_or(|p| p.is_shut_down()) {
            return;
        }
        let max = (1 + slots.available_permits()).min(batch.max(1));
        let messages = match queues.receive(&queue, max, lease, IDLE_POLL).await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::error!(
                    "queue {queue} of {tenant}/{name} failed: {}",
                    updraft_core::error::chain(&e)
                );
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
        };
        let mut first = Some(first);
        for message in messages {
            let permit = match first.take() {
                Some(permit) => permit,
                None => match slots.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let Some(p) = events.upgrade() else { return };
            let (loaded, queue) = (loaded.clone(), queue.clone());
            let running = active.enter();
            tokio::spawn(async move {
                run(&p, &loaded, &queue, message).await;
                drop((permit, running));
            });
        }
        drop(leasing);
    }
}

/// Runs one async invocation and settles its message.
async fn run(events: &Events, loaded: &Arc<Loaded>, queue: &QueueId, mut message: Message) {
    let id = message.id;
    let started_ms = now_ms();
    let outcome = match Work::decode(std::mem::take(&mut message.payload)) {
        Some(work) => attempt(&events.invoker, loaded, work, &message).await,
        None => Err(AttemptError::permanent("the stored request is unreadable")),
    };
    let queues = &events.queues;
    let settled = match outcome {
        Ok(result) => {
            let status = InvocationStatus {
                id: id.to_string(),
                function: loaded.name.to_string(),
                status: "succeeded".into(),
                attempts: message.attempts + 1,
                enqueued_ms: message.enqueued_ms,
                started_ms: Some(started_ms),
                finished_ms: Some(now_ms()),
                next_attempt_ms: None,
                error: None,
                result: Some(result),
                node: Some(events.usage.node().to_string()),
            };
            let outcome = serde_json::to_vec(&status).unwrap_or_default();
            queues.ack(queue, id, outcome).await
        }
        // No slot for it (the server's, or the function's max_concurrency):
        // it did not run, so it waits its turn without losing an attempt.
        Err(AttemptError {
            no_capacity: true, ..
        }) => {
            let delay = NO_CAPACITY_DELAY_MS / 2 + fastrand::u64(0..=NO_CAPACITY_DELAY_MS / 2);
            queues
                .release(queue, id, Duration::from_millis(delay))
                .await
        }
        Err(AttemptError {
            reason, permanent, ..
        }) => {
            let attempts = message.attempts + 1;
            let policy = loaded.version.limits.retry;
            let error = match permanent {
                true => format!("{reason} (not retried: another attempt cannot succeed)"),
                false => reason,
            };
            events.logs.platform(
                &loaded.key,
                &format!(
                    "async invocation {id} failed (attempt {attempts} of {}): {error}",
                    policy.max_attempts
                ),
            );
            if permanent || attempts >= policy.max_attempts {
                let dlq = dead_letter_queue(&loaded.tenant, &loaded.name);
                queues.move_to(queue, id, &dlq, error).await
            } else {
                let delay = policy.backoff(attempts);
                // Full jitter over the upper half: retries of a burst spread out.
                let delay = delay / 2 + fastrand::u64(0..=delay / 2);
                queues
                    .retry(queue, id, Duration::from_millis(delay), error)
                    .await
            }
        }
    };
    if let Err(e) = settled {
        tracing::warn!(
            "async invocation {id} of {}: {}",
            loaded.key,
            updraft_core::error::chain(&e)
        );
    }
}

/// Why an attempt failed, and whether another attempt could succeed. A
/// crash, a timeout or a 5xx answer may pass; a spent budget, a function
/// that refuses the input or an unreadable stored request will not, so
/// those dead-letter at once, with their reason.
#[derive(Debug)]
struct AttemptError {
    reason: String,
    permanent: bool,
    /// It did not run: no instance slot was free in time.
    no_capacity: bool,
}

/// How long a message that found no free slot waits before it is taken
/// again (with jitter over the upper half).
const NO_CAPACITY_DELAY_MS: u64 = 200;

impl AttemptError {
    fn permanent(reason: impl Into<String>) -> AttemptError {
        AttemptError {
            reason: reason.into(),
            permanent: true,
            no_capacity: false,
        }
    }

    fn transient(reason: impl Into<String>) -> AttemptError {
        AttemptError {
            reason: reason.into(),
            permanent: false,
            no_capacity: false,
        }
    }
}

impl From<PlatformError> for AttemptError {
    /// The reason kept with the message is the error's own (short) text; a
    /// failure of the platform also goes to the server's log whole.
    fn from(e: PlatformError) -> AttemptError {
        use updraft_core::Classify;
        if e.kind() == updraft_core::ErrorKind::Internal && !e.is_guest_fault() {
            tracing::warn!("async attempt failed: {}", updraft_core::error::chain(&e));
        }
        AttemptError {
            permanent: !e.kind().is_transient(),
            no_capacity: matches!(
                e,
                PlatformError::Busy(_)
                    | PlatformError::ConcurrencyLimit { .. }
                    | PlatformError::TenantConcurrencyLimit { .. }
                    | PlatformError::TenantRateLimit { .. }
                    | PlatformError::Overloaded { .. }
                    | PlatformError::Invoke(
                        updraft_sandbox::InvokeError::ServerMemoryFull { .. }
                            | updraft_sandbox::InvokeError::TenantMemoryFull { .. }
                    )
            ),
            reason: e.to_string(),
        }
    }
}

/// One attempt, through [`Invoker::run`](crate::Invoker::run): the function's response, or
/// why it failed. A 5xx answer is a failure (retried); anything else is the
/// function's result.
async fn attempt(
    invoker: &crate::Invoker,
    loaded: &Arc<Loaded>,
    work: Work,
    message: &Message,
) -> Result<InvocationResult, AttemptError> {
    let enqueued_ms = message.enqueued_ms;
    let trace = match invoker.traces().enabled() {
        true => work.traceparent(),
        false => None,
    };
    let input = match work {
        Work::Request(request) => Input::Request(request.into_http()?),
        Work::Event(event) => Input::Event {
            event: StoredEvent::Parsed(event),
            enqueued_ms,
        },
        Work::Json(json) => Input::Event {
            event: StoredEvent::Json(json),
            enqueued_ms,
        },
    };
    let invocation = Invocation {
        function: loaded,
        input,
        trigger: Trigger::Async,
        id: message.id.to_string(),
        call: None,
        trace,
    };
    let (_, outcome) = invoker.run(invocation).await;
    let (status, body) = outcome?.collect().await?;
    settle_response(status, &body)
}

/// A 5xx answer is a failure (retried); anything else is the result.
fn settle_response(status: u16, body: &[u8]) -> Result<InvocationResult, AttemptError> {
    let truncated = body.len() > RESULT_BYTES_MAX;
    let text = String::from_utf8_lossy(&body[..body.len().min(RESULT_BYTES_MAX)]).into_owned();
    if status >= 500 {
        return Err(AttemptError::transient(format!(
            "the function answered HTTP {status}: {text}"
        )));
    }
    Ok(InvocationResult {
        status,
        body: text,
        body_truncated: truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_that_cannot_succeed_are_permanent() {
        use updraft_sandbox::InvokeError;
        let permanent = |e: PlatformError| AttemptError::from(e).permanent;
        let budget = updraft_metering::MeteringError::BudgetExceeded {
            tenant: "t".into(),
            budget: "$1".into(),
            spent: "$1".into(),
        };
        assert!(permanent(PlatformError::Metering(budget)));
        assert!(permanent(PlatformError::function_not_found("f")));
        assert!(permanent(PlatformError::InvalidEvent("bad".into())));
        assert!(permanent(PlatformError::Invoke(
            InvokeError::RequestTooLarge { limit: 1 }
        )));
        // A crash, a timeout, a full pool or a storage failure may pass.
        assert!(!permanent(PlatformError::Invoke(InvokeError::Trap {
            message: "x".into()
        })));
        assert!(!permanent(PlatformError::Invoke(InvokeError::Timeout {
            timeout_ms: 1
        })));
        assert!(!permanent(PlatformError::Busy(1)));
        assert!(!permanent(PlatformError::Queue(
            updraft_state::queue::QueueError::storage("disk")
        )));
        // A 5xx answer is retried; 4xx is the function's answer.
        assert!(!settle_response(503, b"later").unwrap_err().permanent);
        assert_eq!(settle_response(404, b"no").unwrap().status, 404);
    }

    #[test]
    fn requests_round_trip() {
        let request = AsyncRequest {
            method: "POST".into(),
            path: "/orders?x=1".into(),
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("x-empty".into(), vec![]),
            ],
            body: Bytes::from_static(b"{\"n\":1}"),
        };
        let bytes = request.encode().unwrap_or_default();
        assert!(matches!(Work::decode(bytes.clone()), Some(Work::Request(r)) if r == request));
        assert_eq!(AsyncRequest::decode(&bytes[1..6]), None);
        assert!(Work::decode(vec![9, 1, 2]).is_none());
    }
}
