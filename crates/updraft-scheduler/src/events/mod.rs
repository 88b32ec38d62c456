//! [`Events`], the event bus: named queues and topics, publishing to them,
//! the triggers that turn them (and schedules, and key-value writes) into
//! invocations, async invocation with its retries and dead letters, and
//! CloudEvents, the form in which every event reaches a function. It owns
//! the queue store; everything it runs goes through the invoker.
//!
//! - A **queue** (`q:NAME` of its tenant) has competing consumers: every
//!   function whose manifest has `[[trigger]] queue = "NAME"` runs a
//!   dispatcher leasing from it, so each message goes to one of them.
//! - A **topic** has no queue of its own: publishing copies the event into
//!   the async queue of every subscribed function, in one commit.
//! - A **cron** trigger puts a tick event in its function's async queue on
//!   schedule, with an idempotency key per tick, so a tick is queued once.
//!
//! Delivery, retries and dead letters are the async machinery's
//! (`async_invoke`).

mod async_invoke;
mod cloudevent;
mod kv_triggers;

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::mpsc;
use updraft_core::{EventTrigger, function_key};
use updraft_metering::BudgetEvent;
use updraft_sandbox::{PublishError, Publisher};
use updraft_state::queue::{
    BATCH_SIZE_DEFAULT, Channel, ChannelKind, NewMessage, PAYLOAD_BYTES_MAX, QueueError, QueueId,
    QueueStats, QueueStore, VISIBILITY_TIMEOUT_MS_DEFAULT,
};

pub use async_invoke::{
    ASYNC_CONCURRENCY, AsyncRequest, DeadLetter, FunctionQueues, InvocationResult,
    InvocationStatus, RESULT_BYTES_MAX,
};
use async_invoke::{Source, function_queue};
pub(crate) use cloudevent::binary_request;
pub use cloudevent::{BATCH_BYTES_MAX, BATCH_EVENTS_MAX, Event, Outgoing};
pub(crate) use kv_triggers::{WatchedKv, Watchers};

use crate::error::PlatformError;
use crate::functions::{Functions, Loaded};
use crate::invoker::Invoker;
use crate::logs::Logs;
use crate::now_ms;
use crate::usage::Usage;

/// `type` of a cron tick.
pub const CRON_TYPE: &str = "dev.updraft.cron";

/// The topic a tenant creates to hear of its budget: 80% spent, all spent.
pub const BUDGET_TOPIC: &str = "budget-alerts";

/// The events service.
pub struct Events {
    queues: Arc<dyn QueueStore>,
    invoker: Arc<Invoker>,
    functions: Arc<Functions>,
    usage: Arc<Usage>,
    logs: Arc<Logs>,
    /// Dispatchers and timers that run, by function key and source.
    dispatchers: Mutex<HashSet<Arc<str>>>,
    /// Functions watching key-value writes (shared with the watched
    /// backend), rebuilt on every change of what serves.
    kv_watchers: Arc<RwLock<Watchers>>,
    shut_down: AtomicBool,
    /// Leases being taken and async runs under way: shutdown waits for
    /// them, so a stopped node finishes what it leased.
    active: Arc<Active>,
    /// Itself, for the tasks it starts (dispatchers, timers).
    me: Weak<Events>,
}

/// A count of work under way, and a wake-up when it reaches zero.
#[derive(Default)]
pub(crate) struct Active {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One piece of work under way; dropping it ends it.
pub(crate) struct ActiveGuard(Arc<Active>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Active {
    pub(crate) fn enter(self: &Arc<Self>) -> ActiveGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.clone())
    }

    /// Waits until nothing is under way, at most `max`; whether it is so.
    async fn wait_idle(&self, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let idle = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return false;
            }
        }
    }
}

/// Longest a stopping node waits for its async runs to finish; what is
/// still running then is handed back by its lease's expiry.
pub const SHUTDOWN_RUNS_MAX: Duration = Duration::from_secs(30);

/// The events service as the sandbox's [`Publisher`]: weak, so a
/// function's grant does not keep the platform alive.
pub(crate) struct EventsPublisher(pub(crate) Weak<Events>);

impl Publisher for EventsPublisher {
    fn publish(
        &self,
        owner: String,
        channel: String,
        data: Bytes,
        content_type: Option<String>,
        trace: Option<updraft_core::trace::TraceParent>,
    ) -> BoxFuture<'static, Result<Vec<String>, PublishError>> {
        let events = self.0.upgrade();
        Box::pin(async move {
            let Some(events) = events else {
                return Err(PublishError::Other("the platform is shutting down".into()));
            };
            let mut event = Event::from_data(format!("/{owner}/{channel}"), content_type, data);
            // The message carries the publish's place in the trace
            // (CloudEvents' distributed-tracing extension): its deliveries
            // and their retries join it.
            let mut span = events.invoker().traces().start(
                format!("publish {channel}"),
                opentelemetry::trace::SpanKind::Producer,
                trace,
                vec![
                    opentelemetry::KeyValue::new("messaging.system", "updraft"),
                    opentelemetry::KeyValue::new("messaging.operation.type", "send"),
                    opentelemetry::KeyValue::new("messaging.destination.name", channel.clone()),
                    opentelemetry::KeyValue::new(crate::traces::TENANT, owner.clone()),
                ],
            );
            if let Some(at) = span.position() {
                event
                    .attributes
                    .insert(updraft_core::trace::TRACEPARENT.into(), at.header().into());
            }
            let published = events.publish(&owner, &channel, event).await;
            if let Err(e) = &published {
                span.fail(e.to_string());
            }
            span.end();
            match published {
                Ok(published) => Ok(published.ids),
                Err(PlatformError::UnknownChannel(_)) => Err(PublishError::NotFound),
                Err(PlatformError::Queue(QueueError::PayloadTooLarge { .. })) => {
                    Err(PublishError::TooLarge(PAYLOAD_BYTES_MAX as u64))
                }
                Err(e) => Err(PublishError::Other(e.for_guest())),
            }
        })
    }
}

/// The queue behind a named queue.
pub(crate) fn channel_queue(tenant: &str, name: &str) -> QueueId {
    QueueId::new(tenant, format!("q:{name}"))
}

/// What a publish did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Published {
    pub kind: ChannelKind,
    /// The message ids: one for a queue, one per subscriber for a topic
    /// (each is an async invocation id).
    pub ids: Vec<String>,
    /// Topics: the subscribed functions, in the order of `ids`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subscribers: Vec<String>,
}

/// A named queue as `GET /v1/queues` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueOverview {
    #[serde(flatten)]
    pub channel: Channel,
    pub depth: u64,
    pub in_flight: u64,
    pub oldest_age_ms: Option<u64>,
    /// Functions with a trigger on it.
    pub consumers: Vec<String>,
}

/// A topic as `GET /v1/queues` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TopicOverview {
    #[serde(flatten)]
    pub channel: Channel,
    pub subscribers: Vec<String>,
}

impl Events {
    pub(crate) fn new(
        me: Weak<Events>,
        queues: Arc<dyn QueueStore>,
        invoker: Arc<Invoker>,
        usage: Arc<Usage>,
        logs: Arc<Logs>,
        kv_watchers: Arc<RwLock<Watchers>>,
    ) -> Events {
        Events {
            queues,
            functions: invoker.functions().clone(),
            invoker,
            usage,
            logs,
            dispatchers: Mutex::default(),
            kv_watchers,
            shut_down: AtomicBool::new(false),
            active: Arc::default(),
            me,
        }
    }

    /// The invoker it runs work through.
    pub fn invoker(&self) -> &Arc<Invoker> {
        &self.invoker
    }

    /// The functions it delivers to.
    pub fn functions(&self) -> &Arc<Functions> {
        &self.functions
    }

    fn me(&self) -> Weak<Events> {
        self.me.clone()
    }

    /// Starts what the serving versions `loaded` trigger on (at start-up
    /// and after every deploy or rollback).
    pub(crate) fn serve(&self, loaded: &[Arc<Loaded>]) {
        self.refresh_kv_watchers();
        for loaded in loaded {
            self.start_triggers(loaded);
        }
    }

    /// Rebuilds who watches which key-value writes, after what serves
    /// changed. The lock is held across the read, so the last rebuild
    /// always sees the last change.
    pub(crate) fn refresh_kv_watchers(&self) {
        let mut watchers = self.kv_watchers.write().unwrap_or_else(|e| e.into_inner());
        *watchers = kv_triggers::watchers_of(&self.functions);
    }

    /// Publishes budget crossings as they come, until the usage service is
    /// gone.
    pub(crate) fn start_budget_alerts(
        self: &Arc<Self>,
        mut alerts: mpsc::UnboundedReceiver<BudgetEvent>,
    ) {
        let events = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(alert) = alerts.recv().await {
                let Some(events) = events.upgrade() else {
                    return;
                };
                events.publish_budget_event(alert).await;
            }
        });
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Relaxed)
    }

    /// Stops dispatchers and timers at their next round.
    pub(crate) fn shutdown(&self) {
        self.shut_down.store(true, Ordering::Relaxed);
    }

    /// Waits for the async runs under way to finish (at most
    /// [`SHUTDOWN_RUNS_MAX`]); call after [`Events::shutdown`].
    pub(crate) async fn finish_runs(&self) {
        if !self.active.wait_idle(SHUTDOWN_RUNS_MAX).await {
            tracing::warn!(
                "async runs still under way after {} s: their leases expire and they run again",
                SHUTDOWN_RUNS_MAX.as_secs()
            );
        }
    }

    pub(crate) fn active(&self) -> &Arc<Active> {
        &self.active
    }

    fn dispatchers(&self) -> std::sync::MutexGuard<'_, HashSet<Arc<str>>> {
        self.dispatchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A named queue's visibility timeout and batch size, if it exists.
    pub(crate) async fn channel_settings(&self, tenant: &str, name: &str) -> Option<(u64, u32)> {
        let channels = self.queues.channels(tenant).await.ok()?;
        let channel = channels.into_iter().find(|c| c.name == name)?;
        Some((channel.visibility_timeout_ms, channel.batch_size))
    }

    /// Publishes a budget event to the tenant's [`BUDGET_TOPIC`], if it has
    /// one: functions subscribed to it get a CloudEvent of type
    /// `dev.updraft.budget.warning` or `dev.updraft.budget.exceeded`, with
    /// id `budget-{warning|exceeded}-{month}`.
    async fn publish_budget_event(&self, budget: BudgetEvent) {
        let kind = budget.kind.name();
        let data = serde_json::json!({
            "tenant": budget.tenant,
            "month": budget.month,
            "budget_cents": budget.budget_cents,
            "spent_cents": budget.spent_cents,
        });
        let mut event = Event::platform(
            format!("/{}/budget", budget.tenant),
            &format!("dev.updraft.budget.{kind}"),
            None,
            Some(data),
        );
        event.attributes.insert(
            "id".into(),
            format!("budget-{kind}-{}", budget.month).into(),
        );
        let tenant = budget.tenant;
        match self.publish(&tenant, BUDGET_TOPIC, event).await {
            Ok(_) | Err(PlatformError::UnknownChannel(_)) => {}
            Err(e) => tracing::warn!(
                "budget {kind} of {tenant} not published: {}",
                updraft_core::error::chain(&e)
            ),
        }
    }

    /// Creates or updates a named queue or topic.
    pub async fn create_channel(
        &self,
        tenant: &str,
        name: &str,
        kind: ChannelKind,
        visibility_timeout_ms: Option<u64>,
        batch_size: Option<u32>,
    ) -> Result<Channel, PlatformError> {
        let channel = Channel {
            name: name.to_string(),
            kind,
            visibility_timeout_ms: visibility_timeout_ms.unwrap_or(VISIBILITY_TIMEOUT_MS_DEFAULT),
            batch_size: batch_size.unwrap_or(BATCH_SIZE_DEFAULT),
            created_ms: now_ms(),
        };
        Ok(self.queues.create_channel(tenant, channel).await?)
    }

    /// Removes a named queue (with its messages) or topic no function
    /// triggers on.
    pub async fn delete_channel(
        &self,
        tenant: &str,
        name: &str,
        kind: ChannelKind,
    ) -> Result<(), PlatformError> {
        let channel = self.channel(tenant, name).await?;
        if channel.kind != kind {
            return Err(QueueError::ChannelNotFound {
                kind,
                name: name.to_string(),
            }
            .into());
        }
        let users = self.triggered_by(tenant, kind, name);
        if !users.is_empty() {
            return Err(PlatformError::ChannelInUse {
                kind,
                name: name.to_string(),
                functions: users.join(", "),
            });
        }
        self.queues.delete_channel(tenant, name).await?;
        if kind == ChannelKind::Queue {
            self.queues.purge(&channel_queue(tenant, name)).await?;
        }
        Ok(())
    }

    async fn channel(&self, tenant: &str, name: &str) -> Result<Channel, PlatformError> {
        self.queues
            .channels(tenant)
            .await?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| PlatformError::UnknownChannel(name.to_string()))
    }

    /// Functions of `tenant` whose serving version triggers on the queue or
    /// topic `name`, by name.
    fn triggered_by(&self, tenant: &str, kind: ChannelKind, name: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .functions
            .loaded_of(tenant)
            .into_iter()
            .filter(|loaded| {
                loaded.version.manifest.triggers.iter().any(|t| match kind {
                    ChannelKind::Queue => t.queue.as_deref() == Some(name),
                    ChannelKind::Topic => t.topic.as_deref() == Some(name),
                })
            })
            .map(|loaded| loaded.name.to_string())
            .collect();
        names.sort();
        names
    }

    /// Publishes to a named queue (one message) or topic (one per
    /// subscriber, in one commit).
    pub async fn publish(
        &self,
        tenant: &str,
        name: &str,
        event: Event,
    ) -> Result<Published, PlatformError> {
        self.publish_many(tenant, name, vec![event.into()]).await
    }

    /// Publishes `events` in order, all or nothing, in one commit.
    pub async fn publish_many(
        &self,
        tenant: &str,
        name: &str,
        events: Vec<Outgoing>,
    ) -> Result<Published, PlatformError> {
        let channel = self.channel(tenant, name).await?;
        let payloads: Vec<Vec<u8>> = events.iter().map(Outgoing::encode).collect();
        let message = |payload| NewMessage {
            payload,
            idempotency_key: None,
        };
        match channel.kind {
            ChannelKind::Queue => {
                // One queue: the payloads go as they are, not copied.
                let messages = payloads.into_iter().map(message).collect();
                let sent = self
                    .queues
                    .send(&channel_queue(tenant, name), messages)
                    .await?;
                Ok(Published {
                    kind: ChannelKind::Queue,
                    ids: sent.iter().map(|a| a.id.to_string()).collect(),
                    subscribers: Vec::new(),
                })
            }
            ChannelKind::Topic => {
                let subscribers = self.triggered_by(tenant, ChannelKind::Topic, name);
                let batches = subscribers
                    .iter()
                    .map(|function| {
                        let messages = payloads.iter().cloned().map(message).collect();
                        (function_queue(tenant, function), messages)
                    })
                    .collect();
                let sent = self.queues.send_to_many(batches).await?;
                for function in &subscribers {
                    self.ensure_dispatcher(tenant, function, Source::Function);
                }
                Ok(Published {
                    kind: ChannelKind::Topic,
                    ids: sent.iter().flatten().map(|a| a.id.to_string()).collect(),
                    subscribers,
                })
            }
        }
    }

    /// The named queues and topics of `tenant` with their state.
    pub async fn channel_overview(
        &self,
        tenant: &str,
    ) -> Result<(Vec<QueueOverview>, Vec<TopicOverview>), PlatformError> {
        let now = now_ms();
        let (mut queues, mut topics) = (Vec::new(), Vec::new());
        for channel in self.queues.channels(tenant).await? {
            match channel.kind {
                ChannelKind::Queue => {
                    let QueueStats {
                        depth,
                        in_flight,
                        oldest_enqueued_ms,
                    } = self
                        .queues
                        .stats(&channel_queue(tenant, &channel.name))
                        .await?;
                    queues.push(QueueOverview {
                        consumers: self.triggered_by(tenant, ChannelKind::Queue, &channel.name),
                        channel,
                        depth,
                        in_flight,
                        oldest_age_ms: oldest_enqueued_ms.map(|t| now.saturating_sub(t)),
                    });
                }
                ChannelKind::Topic => topics.push(TopicOverview {
                    subscribers: self.triggered_by(tenant, ChannelKind::Topic, &channel.name),
                    channel,
                }),
            }
        }
        Ok((queues, topics))
    }

    /// Refuses a version whose queue or topic triggers name channels the
    /// tenant does not have.
    pub(crate) async fn check_triggers(
        &self,
        tenant: &str,
        triggers: &[EventTrigger],
    ) -> Result<(), PlatformError> {
        let channels = self.queues.channels(tenant).await?;
        for trigger in triggers {
            let (kind, name) = match trigger {
                EventTrigger::Queue(name) => (ChannelKind::Queue, name),
                EventTrigger::Topic(name) => (ChannelKind::Topic, name),
                EventTrigger::Cron(_) | EventTrigger::Kv(..) => continue,
            };
            match channels.iter().find(|c| &c.name == name) {
                Some(c) if c.kind == kind => {}
                Some(c) => {
                    return Err(PlatformError::Trigger(format!(
                        "{name:?} is a {}, not a {kind}: use `{}s = \"{name}\"`",
                        c.kind, c.kind
                    )));
                }
                None => {
                    return Err(PlatformError::Trigger(format!(
                        "{kind} {name:?} does not exist: create it first with `updraft {kind}s create {name}`"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Starts what a function's triggers need: a consumer per queue, a
    /// timer per schedule, and its async dispatcher if work is waiting.
    /// Key-value watchers are the caller's to refresh, once per table change.
    fn start_triggers(&self, loaded: &Loaded) {
        let (tenant, name) = (&*loaded.tenant, &*loaded.name);
        for trigger in &loaded.triggers {
            match trigger {
                EventTrigger::Queue(queue) => {
                    self.ensure_dispatcher(tenant, name, Source::Queue(queue.clone()));
                }
                EventTrigger::Topic(_) | EventTrigger::Kv(..) => {}
                EventTrigger::Cron(schedule) => self.ensure_cron(tenant, name, schedule.clone()),
            }
        }
        // Any node may send to a shared store: every node consumes.
        if self.queues.shared() {
            self.ensure_dispatcher(tenant, name, Source::Function);
            return;
        }
        // Work may be waiting from before a restart: a dispatcher takes it.
        let (events, queue) = (self.me(), function_queue(tenant, name));
        let (tenant, name) = (tenant.to_string(), name.to_string());
        tokio::spawn(async move {
            let Some(events) = events.upgrade() else {
                return;
            };
            match events.queues.stats(&queue).await {
                Ok(stats) if stats == QueueStats::default() => {}
                _ => events.ensure_dispatcher(&tenant, &name, Source::Function),
            }
        });
    }

    fn ensure_cron(&self, tenant: &str, name: &str, schedule: String) {
        let key: Arc<str> = format!("{}@cron:{schedule}", function_key(tenant, name)).into();
        if !self.dispatchers().insert(key.clone()) {
            return;
        }
        let events = self.me();
        let (tenant, name) = (tenant.to_string(), name.to_string());
        tokio::spawn(async move {
            cron_loop(&events, &tenant, &name, &schedule).await;
            if let Some(events) = events.upgrade() {
                events.dispatchers().remove(&key);
            }
        });
    }

    /// Whether the function's serving version has `trigger`.
    pub(crate) fn has_trigger(loaded: &Loaded, trigger: &EventTrigger) -> bool {
        loaded.triggers.contains(trigger)
    }
}

/// Queues a tick at each time of `schedule` until the function no longer
/// has it. Ticks missed while the server was down are not made up.
async fn cron_loop(events: &Weak<Events>, tenant: &str, name: &str, schedule: &str) {
    let Ok(parsed) = cron::Schedule::from_str(schedule) else {
        return;
    };
    let trigger = EventTrigger::Cron(schedule.to_string());
    loop {
        let Some(next) = parsed.upcoming(chrono::Utc).next() else {
            return;
        };
        let next_ms = u64::try_from(next.timestamp_millis()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(next_ms.saturating_sub(now_ms()))).await;
        let Some(p) = events.upgrade() else { return };
        if p.is_shut_down() {
            return;
        }
        let Some(loaded) = p.functions.get(tenant, name) else {
            return;
        };
        if !Events::has_trigger(&loaded, &trigger) {
            return;
        }
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(next_ms);
        let mut event = Event::platform(
            format!("/functions/{name}/cron"),
            CRON_TYPE,
            Some(schedule.to_string()),
            None,
        );
        event.attributes.insert(
            "time".into(),
            humantime::format_rfc3339_millis(time).to_string().into(),
        );
        let message = NewMessage {
            payload: event.encode(),
            // One tick is queued once, even by two timers or a restart.
            idempotency_key: Some(format!("cron:{schedule}:{next_ms}")),
        };
        match p
            .queues
            .send(&function_queue(tenant, name), vec![message])
            .await
        {
            Ok(_) => p.ensure_dispatcher(tenant, name, Source::Function),
            Err(e) => tracing::error!(
                "cron tick of {tenant}/{name} was not queued: {}",
                updraft_core::error::chain(&e)
            ),
        }
        // Never fire twice for the same instant.
        let wait = next_ms.saturating_sub(now_ms()) + 1;
        drop(p);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overview_types_serialize_flat() {
        let channel = Channel {
            name: "orders".into(),
            kind: ChannelKind::Queue,
            visibility_timeout_ms: 1,
            batch_size: 2,
            created_ms: 3,
        };
        let overview = QueueOverview {
            channel,
            depth: 4,
            in_flight: 0,
            oldest_age_ms: None,
            consumers: vec!["a".into()],
        };
        let json = serde_json::to_value(&overview).unwrap_or_default();
        assert_eq!(json["name"], "orders");
        assert_eq!(json["depth"], 4);
    }
}
