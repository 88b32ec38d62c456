//! [`Usage`]: the glue between invocations and metering. It takes one usage
//! record per invocation, refuses invocations of a tenant whose budget is
//! spent, logs budget crossings and hands them out as alerts (the events
//! service publishes them), and samples what each tenant stores.
//!
//! An http function's record is complete only when both the guest has
//! finished (its report) and its response body has been sent (the bytes
//! out), in either order: [`PendingUsage`] waits for both and hands the
//! record to metering once.
//!
//! Storage is metered by `sample_storage`: at the end of every sample
//! interval, one record per tenant with what it stores, standing for the
//! whole interval.
//!
//! In cluster mode metering is a replica of the cluster's usage stream
//! ([`NatsUsage`]): this service publishes the node's records every
//! [`PUBLISH_EVERY`], reads every node's back into metering, applies the
//! budgets any node sets, and claims each budget crossing so that one node
//! tells the tenant. A storage sample is published under an id of its
//! tenant and slot, so the nodes that all sample a slot store it once.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{Notify, mpsc};
use updraft_core::{STORAGE_FUNCTION, Trigger, UsageRecord, function_key};
use updraft_metering::{Budget, BudgetEvent, BudgetKind, Metering, billed_ms, usd};
use updraft_sandbox::{Report, ResponseBody};
use updraft_state::blob::Blobs;
use updraft_state::kv::KvStore;
use updraft_state::usage::{Batch, BudgetChange, NatsUsage};

use crate::PlatformError;
use crate::functions::Loaded;
use crate::logs::Logs;

/// How often a cluster node publishes its usage records: the lag of the
/// cluster's usage and budgets behind this node's invocations.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// Most records in one published batch: about 80 bytes each, well under
/// NATS's 1 MiB message.
const BATCH_RECORDS_MAX: usize = 4096;
/// Most bytes of usage batches a node keeps while NATS cannot take them
/// (about 3 million invocations): past it the oldest are dropped, with an
/// error, rather than the node running out of memory in a long outage.
const UNSENT_BYTES_MAX: usize = 256 * 1024 * 1024;
/// How long a usage read waits for the cluster's records to have been read
/// back before answering with what this node has.
const CATCH_UP_MAX: Duration = Duration::from_secs(5);
/// How long a lost usage stream waits before it is followed again.
const FOLLOW_AGAIN_AFTER: Duration = Duration::from_millis(500);

/// Cluster mode: the usage stream and this node's batches not yet stored.
struct Shared {
    log: Arc<NatsUsage>,
    /// Batches made and not yet stored, oldest first, with their ids: one
    /// publisher at a time, and a failed batch goes again under its id.
    unsent: tokio::sync::Mutex<(u64, std::collections::VecDeque<(String, Bytes)>)>,
    /// Woken when metering has taken more of the stream.
    ingested: Notify,
    /// The revision of each tenant's budget applied last: a change seen
    /// late (the watch's) never undoes a newer one (this node's own).
    budgets: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// The usage service.
pub struct Usage {
    /// `None` when the server runs with metering off.
    metering: Option<Arc<Metering>>,
    /// Cluster mode (with metering on).
    shared: Option<Shared>,
    /// This node's name; it also names the usage batches this node
    /// publishes (`{node}.{n}`).
    node: Arc<str>,
    /// Where budget crossings are logged.
    logs: Arc<Logs>,
    /// Budget crossings, for whoever tells the tenant (the events service).
    alerts: mpsc::UnboundedSender<BudgetEvent>,
    shut_down: AtomicBool,
    /// This service, for the tasks it starts.
    me: Weak<Usage>,
}

impl Usage {
    /// The service, and the receiving end of its budget alerts.
    pub(crate) fn new(
        metering: Option<Arc<Metering>>,
        log: Option<Arc<NatsUsage>>,
        logs: Arc<Logs>,
        node: Arc<str>,
    ) -> (Arc<Usage>, mpsc::UnboundedReceiver<BudgetEvent>) {
        let (alerts, receiver) = mpsc::unbounded_channel();
        let shared = log.filter(|_| metering.is_some()).map(|log| Shared {
            log,
            unsent: tokio::sync::Mutex::new((0, Default::default())),
            ingested: Notify::new(),
            budgets: Default::default(),
        });
        let usage = Arc::new_cyclic(|me| Usage {
            metering,
            shared,
            node,
            logs,
            alerts,
            shut_down: AtomicBool::new(false),
            me: me.clone(),
        });
        (usage, receiver)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Metering (`None` when the server runs with metering off).
    pub fn metering(&self) -> Option<&Arc<Metering>> {
        self.metering.as_ref()
    }

    pub(crate) fn is_metered(&self) -> bool {
        self.metering.is_some()
    }

    /// Refuses an invocation once its tenant's budget is spent.
    pub(crate) fn check_budget(&self, tenant: &str) -> Result<(), PlatformError> {
        match &self.metering {
            Some(metering) => Ok(metering.check(tenant)?),
            None => Ok(()),
        }
    }

    /// Hands a usage record to metering; a budget crossing it causes goes
    /// to the logs of the function that crossed it, and out as an alert.
    pub(crate) fn meter(&self, key: &Arc<str>, record: UsageRecord) {
        let Some(metering) = &self.metering else {
            return;
        };
        let events = metering.record(record);
        if events.is_empty() {
            return;
        }
        match (&self.shared, tokio::runtime::Handle::try_current()) {
            // Other nodes may see the same crossing: one tells it.
            (Some(shared), Ok(runtime)) => {
                let usage = self.me.clone();
                let log = shared.log.clone();
                runtime.spawn(async move {
                    for event in events {
                        if claimed(&log, &event).await
                            && let Some(usage) = usage.upgrade()
                        {
                            let key: Arc<str> =
                                Arc::from(function_key(&event.tenant, &event.function));
                            usage.alert(&key, event);
                        }
                    }
                });
            }
            _ => {
                for event in events {
                    self.alert(key, event);
                }
            }
        }
    }

    /// Logs a budget crossing to the function that crossed it and hands it
    /// out as an alert.
    fn alert(&self, key: &Arc<str>, event: BudgetEvent) {
        let (budget, spent) = (usd(event.budget_cents), usd(event.spent_cents));
        let message = match event.kind {
            BudgetKind::Warning => format!(
                "budget warning: {spent} of the {budget} budget for {} is spent (80%)",
                event.month
            ),
            BudgetKind::Exceeded => format!(
                "budget spent: the {budget} budget for {} is used up; new invocations are refused with 402",
                event.month
            ),
        };
        self.logs.platform(key, &message);
        // No receiver only while the platform shuts down.
        let _ = self.alerts.send(event);
    }

    /// A record waiting for an http invocation's two halves, when metered.
    pub(crate) fn pending(self: &Arc<Self>, key: Arc<str>) -> Option<Arc<PendingUsage>> {
        self.is_metered()
            .then(|| PendingUsage::new(self.clone(), key))
    }

    /// Samples what every tenant stores, every `every`, until shutdown.
    pub(crate) fn start_storage_samples(
        self: &Arc<Self>,
        kv: Arc<dyn KvStore>,
        blobs: Arc<Blobs>,
        every: Duration,
    ) {
        if self.is_metered() {
            let usage = Arc::downgrade(self);
            tokio::spawn(sample_storage(usage, kv, blobs, every));
        }
    }

    /// Writes out buffered usage records (in cluster mode, publishes them).
    pub(crate) async fn shutdown(&self) {
        self.shut_down.store(true, Ordering::Relaxed);
        if let Err(e) = self.publish_unsent().await {
            tracing::warn!(
                "usage records not published at shutdown: {}",
                updraft_core::error::chain(&e)
            );
        }
        if let Some(metering) = &self.metering {
            tokio::task::block_in_place(|| metering.flush());
        }
    }

    /// Cluster mode: publishes this node's usage and reads every node's,
    /// and every budget, until the service is gone. Returns once the node
    /// has read the usage stored so far (at most [`CATCH_UP_MAX`]) and the
    /// budgets: a restarted node refuses a spent tenant from its first
    /// request.
    pub(crate) async fn start_cluster(self: &Arc<Self>) -> Result<(), PlatformError> {
        let (Some(shared), Some(metering)) = (&self.shared, &self.metering) else {
            return Ok(());
        };
        tokio::spawn(read_usage(Arc::downgrade(self)));
        self.catch_up().await?;
        for change in shared.log.budget_list().await? {
            self.apply_budget_logged(shared, metering, change);
        }
        tokio::spawn(read_budgets(Arc::downgrade(self)));
        tokio::spawn(publish_usage(Arc::downgrade(self)));
        Ok(())
    }

    /// Applies a budget set or removed on any node, unless a newer change
    /// of that tenant's was applied already.
    fn apply_budget(
        &self,
        shared: &Shared,
        metering: &Metering,
        change: BudgetChange,
    ) -> Result<(), PlatformError> {
        // Held while the budget is applied: a caller that finds its change
        // applied returns only once it is in effect.
        let mut applied = shared.budgets.lock().unwrap_or_else(|e| e.into_inner());
        let last = applied.entry(change.tenant.clone()).or_default();
        if *last >= change.revision {
            return Ok(());
        }
        let cents = change
            .value
            .and_then(|v| serde_json::from_slice::<Budget>(&v).ok())
            .map(|b| b.monthly_cents);
        tokio::task::block_in_place(|| metering.apply_budget(&change.tenant, cents))?;
        // Only once in effect: a failed change is applied again when seen
        // again.
        *last = change.revision;
        Ok(())
    }

    /// [`Usage::apply_budget`] for a change another node made: a failure
    /// is logged (the next change, or a restart, applies it again).
    fn apply_budget_logged(&self, shared: &Shared, metering: &Metering, change: BudgetChange) {
        let tenant = change.tenant.clone();
        if let Err(e) = self.apply_budget(shared, metering, change) {
            tracing::warn!(
                "the budget of {tenant} not applied: {}",
                updraft_core::error::chain(&e)
            );
        }
    }

    /// Cluster mode: publishes the records made on this node so far, in
    /// batches, each under its own id (a batch that fails goes again under
    /// the same id, and is stored once).
    async fn publish_unsent(&self) -> Result<(), PlatformError> {
        let (Some(shared), Some(metering)) = (&self.shared, &self.metering) else {
            return Ok(());
        };
        let mut unsent = shared.unsent.lock().await;
        let (next, batches) = &mut *unsent;
        for chunk in metering.take_outbox().chunks(BATCH_RECORDS_MAX) {
            *next += 1;
            let id = format!("{}.{next}", self.node);
            batches.push_back((id, Bytes::from(updraft_metering::encode_batch(chunk))));
        }
        let mut held: usize = batches.iter().map(|(_, b)| b.len()).sum();
        while held > UNSENT_BYTES_MAX
            && let Some((id, dropped)) = batches.pop_front()
        {
            held -= dropped.len();
            tracing::error!(
                "usage batch {id} ({} records) dropped unbilled: NATS has not taken this node's \
                 usage for too long ({UNSENT_BYTES_MAX} bytes waiting)",
                updraft_metering::decode_batch(&dropped).len()
            );
        }
        while let Some((id, batch)) = batches.front() {
            shared.log.publish(batch.clone(), id).await?;
            batches.pop_front();
        }
        Ok(())
    }

    /// Cluster mode: waits until this node's records so far, and every
    /// node's records stored before now, are in this node's metering, at
    /// most [`CATCH_UP_MAX`]: a usage read then sees the whole cluster's.
    pub async fn catch_up(&self) -> Result<(), PlatformError> {
        let (Some(shared), Some(metering)) = (&self.shared, &self.metering) else {
            return Ok(());
        };
        self.publish_unsent().await?;
        let last = shared.log.last_sequence().await?;
        let caught_up = async {
            loop {
                let woken = shared.ingested.notified();
                if metering.ingested() >= last {
                    return;
                }
                woken.await;
            }
        };
        if tokio::time::timeout(CATCH_UP_MAX, caught_up).await.is_err() {
            tracing::warn!(
                "usage is behind the cluster's (read up to {} of {last}); answering with it",
                metering.ingested()
            );
        }
        Ok(())
    }

    /// Sets (`None`: removes) a tenant's monthly budget, for every node in
    /// cluster mode.
    pub async fn set_budget(&self, tenant: &str, cents: Option<u64>) -> Result<(), PlatformError> {
        let Some(metering) = &self.metering else {
            return Ok(());
        };
        let Some(shared) = &self.shared else {
            return Ok(tokio::task::block_in_place(|| {
                metering.set_budget(tenant, cents)
            })?);
        };
        let value = cents
            .map(|monthly_cents| serde_json::to_vec(&Budget { monthly_cents }))
            .transpose()
            .map_err(|e| PlatformError::Task(Box::new(e)))?
            .map(Bytes::from);
        let revision = shared.log.set_budget(tenant, value.clone()).await?;
        // At once here; the other nodes as their watch tells them.
        self.catch_up().await?;
        self.apply_budget(
            shared,
            metering,
            BudgetChange {
                tenant: tenant.to_string(),
                value,
                revision,
            },
        )
    }

    /// Cluster mode: takes one batch read back from the usage stream
    /// (counting it against budgets unless this node made it, and counted
    /// it then), and tells of the budget crossings no other node told.
    async fn ingest(&self, batch: Batch) {
        let (Some(shared), Some(metering)) = (&self.shared, &self.metering) else {
            return;
        };
        let records = updraft_metering::decode_batch(&batch.records);
        let own = batch
            .id
            .strip_prefix(&*self.node)
            .is_some_and(|rest| rest.starts_with('.'));
        let events = metering.ingest(records, batch.sequence, !own);
        shared.ingested.notify_waiters();
        for event in events {
            if claimed(&shared.log, &event).await {
                let key: Arc<str> = Arc::from(function_key(&event.tenant, &event.function));
                self.alert(&key, event);
            }
        }
    }

    /// One storage record per tenant that stores anything, at `at_ms`.
    async fn sample_storage(
        &self,
        kv: &dyn KvStore,
        blobs: &Blobs,
        at_ms: u64,
        secs: u64,
    ) -> Result<(), PlatformError> {
        let kv = kv.stored_bytes().await?;
        let blobs = blobs.stored_bytes().await?;
        let tenants: BTreeSet<&String> = kv.keys().chain(blobs.keys()).collect();
        for tenant in tenants {
            let (kv, blob) = (
                kv.get(tenant).copied().unwrap_or(0),
                blobs.get(tenant).copied().unwrap_or(0),
            );
            let tenant: Arc<str> = Arc::from(tenant.as_str());
            let key: Arc<str> = Arc::from(function_key(&tenant, STORAGE_FUNCTION));
            let record = UsageRecord::storage(tenant, at_ms, secs, kv, blob);
            match &self.shared {
                // Every node samples the same slot: stored once, by its id.
                Some(shared) => {
                    let id = format!("storage.{}.{at_ms}", record.tenant);
                    let batch = updraft_metering::encode_batch(std::slice::from_ref(&record));
                    shared.log.publish(Bytes::from(batch), &id).await?;
                }
                None => self.meter(&key, record),
            }
        }
        Ok(())
    }
}

pub(crate) fn record(
    loaded: &Loaded,
    trigger: Trigger,
    start_ms: u64,
    report: Report,
    bytes_out: u64,
) -> UsageRecord {
    let wall_us = report.duration.as_micros() as u64;
    UsageRecord {
        tenant: loaded.tenant.clone(),
        function: loaded.name.clone(),
        version: loaded.version.version,
        invocation_id: report.invocation_id,
        trigger,
        start_ms,
        wall_us,
        billed_ms: billed_ms(wall_us),
        memory_mb: loaded.version.limits.memory_mb,
        memory_peak_bytes: report.memory_peak_bytes,
        cpu_us: report.cpu_time.as_micros() as u64,
        bytes_in: report.bytes_in,
        bytes_out,
        kv_ops: report.state.kv_ops,
        kv_bytes: report.state.kv_bytes,
        blob_ops: report.state.blob_ops,
        blob_bytes: report.state.blob_bytes,
        outbound_requests: report.state.outbound_requests,
        outbound_bytes: report.state.outbound_bytes,
        error: report.outcome.as_ref().err().map(|e| e.code().to_string()),
        kv_stored_bytes: 0,
        blob_stored_bytes: 0,
        stored_secs: 0,
    }
}

/// A record waiting for its second half.
pub(crate) struct PendingUsage {
    usage: Arc<Usage>,
    /// The function's key, for the logs of budget crossings.
    key: Arc<str>,
    record: Mutex<Option<UsageRecord>>,
    bytes_out: AtomicU64,
    /// The guest's report and the response body: 2, then 1, then sent.
    parts_left: AtomicU8,
}

impl PendingUsage {
    fn new(usage: Arc<Usage>, key: Arc<str>) -> Arc<PendingUsage> {
        Arc::new(PendingUsage {
            usage,
            key,
            record: Mutex::new(None),
            bytes_out: AtomicU64::new(0),
            parts_left: AtomicU8::new(2),
        })
    }

    /// The guest finished: its record, without the bytes out.
    pub(crate) fn report(&self, record: UsageRecord) {
        *self.record.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
        self.part_done();
    }

    /// The response's half: done when it is dropped, which is when the body
    /// has been sent, when there was no response, or when the caller went
    /// away before it had one.
    pub(crate) fn body_part(self: &Arc<Self>) -> BodyPart {
        BodyPart(self.clone())
    }

    fn part_done(&self) {
        if self.parts_left.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(mut record) = self.record.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            record.bytes_out = self.bytes_out.load(Ordering::Relaxed);
            self.usage.meter(&self.key, record);
        }
    }
}

pub(crate) struct BodyPart(Arc<PendingUsage>);

impl BodyPart {
    /// The response body, counted as it goes out.
    pub(crate) fn wrap(self, body: ResponseBody) -> ResponseBody {
        use http_body_util::BodyExt;
        CountedBody {
            inner: body,
            part: self,
        }
        .boxed_unsync()
    }
}

impl Drop for BodyPart {
    fn drop(&mut self) {
        self.0.part_done();
    }
}

struct CountedBody {
    inner: ResponseBody,
    part: BodyPart,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(data) = frame.data_ref()
        {
            self.part
                .0
                .bytes_out
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Samples what every tenant stores at each multiple of `every` on the wall
/// clock, so a restart neither skips nor repeats a sample slot. A slot the
/// server was down for is not charged. Stops with the platform.
async fn sample_storage(
    usage: Weak<Usage>,
    kv: Arc<dyn KvStore>,
    blobs: Arc<Blobs>,
    every: Duration,
) {
    let every_ms = (every.as_millis() as u64).max(1);
    loop {
        let now = crate::now_ms();
        let slot_end = now - now % every_ms + every_ms;
        tokio::time::sleep(Duration::from_millis(slot_end - now)).await;
        let Some(usage) = usage.upgrade() else {
            return;
        };
        if usage.shut_down.load(Ordering::Relaxed) {
            return;
        }
        let sampled = usage
            .sample_storage(&*kv, &blobs, slot_end, every_ms / 1000)
            .await;
        if let Err(e) = sampled {
            // The next slot tries again; this one goes uncharged.
            tracing::warn!(
                "storage not sampled for metering: {}",
                updraft_core::error::chain(&e)
            );
        }
    }
}

/// Cluster mode: whether this node is the one to tell of `event`.
async fn claimed(log: &NatsUsage, event: &BudgetEvent) -> bool {
    let claim = format!("{}.{}.{}", event.tenant, event.month, event.kind.name());
    log.claim(&claim).await.unwrap_or_else(|e| {
        // Told rather than lost: at worst twice.
        tracing::warn!(
            "budget {claim} could not be claimed, told anyway: {}",
            updraft_core::error::chain(&e)
        );
        true
    })
}

/// Cluster mode: publishes the node's usage every [`PUBLISH_EVERY`] until
/// the service is gone (what is left is published at shutdown).
async fn publish_usage(usage: Weak<Usage>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(PUBLISH_EVERY).await;
        let Some(usage) = usage.upgrade() else {
            return;
        };
        if usage.shut_down.load(Ordering::Relaxed) {
            return;
        }
        // Kept and tried again: nothing is dropped while NATS is away.
        match usage.publish_unsent().await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(
                    "usage records not published yet (kept, trying again): {}",
                    updraft_core::error::chain(&e)
                );
            }
            Err(_) => {}
        }
    }
}

/// Cluster mode: reads every node's usage records into metering, in
/// stream order from where metering stopped, until the service is gone.
async fn read_usage(usage: Weak<Usage>) {
    use futures::StreamExt as _;
    loop {
        let batches = {
            let Some(usage) = usage.upgrade() else {
                return;
            };
            let (Some(shared), Some(metering)) = (&usage.shared, &usage.metering) else {
                return;
            };
            shared.log.follow(metering.ingested()).await
        };
        match batches {
            Ok(mut batches) => {
                while let Some(batch) = batches.next().await {
                    let Some(usage) = usage.upgrade() else {
                        return;
                    };
                    match batch {
                        Ok(batch) => usage.ingest(batch).await,
                        Err(e) => {
                            tracing::warn!(
                                "reading the cluster's usage stopped ({}); reading on shortly",
                                updraft_core::error::chain(&e)
                            );
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(
                "the cluster's usage cannot be read ({}); trying again shortly",
                updraft_core::error::chain(&e)
            ),
        }
        tokio::time::sleep(FOLLOW_AGAIN_AFTER).await;
    }
}

/// Cluster mode: applies every budget, and each change any node makes,
/// until the service is gone.
async fn read_budgets(usage: Weak<Usage>) {
    use futures::StreamExt as _;
    loop {
        let changes = {
            let Some(usage) = usage.upgrade() else {
                return;
            };
            let Some(shared) = &usage.shared else {
                return;
            };
            shared.log.budgets().await
        };
        match changes {
            Ok(mut changes) => {
                while let Some(change) = changes.next().await {
                    let Some(usage) = usage.upgrade() else {
                        return;
                    };
                    let (Some(shared), Some(metering)) = (&usage.shared, &usage.metering) else {
                        return;
                    };
                    usage.apply_budget_logged(shared, metering, change);
                }
            }
            Err(e) => tracing::warn!(
                "the cluster's budgets cannot be read ({}); trying again shortly",
                updraft_core::error::chain(&e)
            ),
        }
        tokio::time::sleep(FOLLOW_AGAIN_AFTER).await;
    }
}
