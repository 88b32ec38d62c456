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

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use updraft_core::{STORAGE_FUNCTION, Trigger, UsageRecord, function_key};
use updraft_metering::{BudgetEvent, BudgetKind, Metering, billed_ms, usd};
use updraft_sandbox::{Report, ResponseBody};
use updraft_state::blob::Blobs;
use updraft_state::kv::KvStore;

use crate::PlatformError;
use crate::functions::Loaded;
use crate::logs::Logs;

/// The usage service.
pub struct Usage {
    /// `None` when the server runs with metering off.
    metering: Option<Arc<Metering>>,
    /// Where budget crossings are logged.
    logs: Arc<Logs>,
    /// Budget crossings, for whoever tells the tenant (the events service).
    alerts: mpsc::UnboundedSender<BudgetEvent>,
    shut_down: AtomicBool,
}

impl Usage {
    /// The service, and the receiving end of its budget alerts.
    pub(crate) fn new(
        metering: Option<Arc<Metering>>,
        logs: Arc<Logs>,
    ) -> (Arc<Usage>, mpsc::UnboundedReceiver<BudgetEvent>) {
        let (alerts, receiver) = mpsc::unbounded_channel();
        let usage = Usage {
            metering,
            logs,
            alerts,
            shut_down: AtomicBool::new(false),
        };
        (Arc::new(usage), receiver)
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
        for event in metering.record(record) {
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

    /// Writes out buffered usage records.
    pub(crate) fn shutdown(&self) {
        self.shut_down.store(true, Ordering::Relaxed);
        if let Some(metering) = &self.metering {
            tokio::task::block_in_place(|| metering.flush());
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
            self.meter(&key, UsageRecord::storage(tenant, at_ms, secs, kv, blob));
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
