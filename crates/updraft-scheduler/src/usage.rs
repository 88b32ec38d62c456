//! One usage record per invocation. An http function's record is complete
//! only when both the guest has finished (its report) and its response body
//! has been sent (the bytes out), in either order: [`PendingUsage`] waits
//! for both and hands the record to metering once.
//!
//! Storage is metered by [`sample_storage`]: at the end of every sample
//! interval, one record per tenant with what it stores, standing for the
//! whole interval.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use updraft_core::{STORAGE_FUNCTION, Trigger, UsageRecord, function_key};
use updraft_metering::billed_ms;
use updraft_sandbox::{Report, ResponseBody};

use crate::PlatformError;
use crate::platform::{Loaded, Platform};

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
    platform: Arc<Platform>,
    /// The function's key, for the logs of budget crossings.
    key: Arc<str>,
    record: Mutex<Option<UsageRecord>>,
    bytes_out: AtomicU64,
    /// The guest's report and the response body: 2, then 1, then sent.
    parts_left: AtomicU8,
}

impl PendingUsage {
    pub(crate) fn new(platform: Arc<Platform>, key: Arc<str>) -> Arc<PendingUsage> {
        Arc::new(PendingUsage {
            platform,
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
            self.platform.meter(&self.key, record);
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
pub(crate) async fn sample_storage(platform: Weak<Platform>, every: Duration) {
    let every_ms = (every.as_millis() as u64).max(1);
    loop {
        let now = crate::platform::now_ms();
        let slot_end = now - now % every_ms + every_ms;
        tokio::time::sleep(Duration::from_millis(slot_end - now)).await;
        let Some(platform) = platform.upgrade() else {
            return;
        };
        if platform.is_shut_down() {
            return;
        }
        if let Err(e) = platform.sample_storage(slot_end, every_ms / 1000).await {
            // The next slot tries again; this one goes uncharged.
            tracing::warn!(
                "storage not sampled for metering: {}",
                updraft_core::error::chain(&e)
            );
        }
    }
}

impl Platform {
    /// One storage record per tenant that stores anything, at `at_ms`.
    async fn sample_storage(&self, at_ms: u64, secs: u64) -> Result<(), PlatformError> {
        if self.metering().is_none() {
            return Ok(());
        }
        let kv = self.kv().stored_bytes().await?;
        let blobs = self.blobs().stored_bytes().await?;
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
