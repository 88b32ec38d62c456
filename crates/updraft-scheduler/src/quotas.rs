//! Tenant quotas, set by an admin: how many invocations of a tenant's
//! functions run at once, how many start per second, and how much memory
//! their instances hold (the sandbox counts it), on each node.
//! Kept in the reserved key-value store [`QUOTAS_STORE`] of the tenant (so
//! every node of a cluster reads the same), and re-read at most every
//! [`QUOTA_REFRESH`]: a change applies everywhere within that time.
//!
//! Past either, a request gets 429 (`tenant_concurrency_limit`,
//! `tenant_rate_limit`); async work waits its turn (see the async consumer).
//!
//! A disk quota (`disk_mb`: key-value and blob bytes together, on the whole
//! platform) is checked by [`DiskGate`] before every write that adds data:
//! past it, 507 `tenant_disk_quota`; deletes always go through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use updraft_core::manifest::QUOTAS_STORE;
use updraft_sandbox::MemoryBudget;
use updraft_state::blob::Blobs;
use updraft_state::gate::WriteGate;
use updraft_state::kv::{KvStore, StoreId};

use crate::error::PlatformError;

/// How long a node trusts the quota it read.
pub const QUOTA_REFRESH: Duration = Duration::from_secs(1);
/// The one key of the quotas store.
const KEY: &str = "quota";
/// Highest quota of either kind: a larger one is likelier a typo.
pub const QUOTA_MAX: u32 = 1_000_000;

/// A tenant's quota; `None` is no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// MiB of linear memory its instances may hold at once, on each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// MiB its key-value stores and blobs may hold together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u32>,
}

impl TenantQuota {
    /// Refuses a value out of range, naming it.
    pub fn validate(&self) -> Result<(), PlatformError> {
        for (name, value) in [
            ("max_concurrency", self.max_concurrency),
            ("requests_per_second", self.requests_per_second),
            ("memory_mb", self.memory_mb),
            ("disk_mb", self.disk_mb),
        ] {
            if value.is_some_and(|v| v == 0 || v > QUOTA_MAX) {
                return Err(PlatformError::BadRequest(format!(
                    "{name} must be 1 to {QUOTA_MAX} (leave it out for no limit)"
                )));
            }
        }
        Ok(())
    }
}

/// One tenant's quota as this node enforces it.
struct Enforced {
    quota: TenantQuota,
    read_at: Instant,
    slots: Option<Arc<Semaphore>>,
    memory: Option<Arc<MemoryBudget>>,
    /// Tokens (one a request) and when they were last topped up.
    bucket: (f64, Instant),
}

impl Enforced {
    fn new(quota: TenantQuota, now: Instant) -> Enforced {
        Enforced {
            quota,
            read_at: now,
            slots: quota
                .max_concurrency
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            memory: quota
                .memory_mb
                .map(|mb| MemoryBudget::new((mb as usize) << 20)),
            bucket: (f64::from(quota.requests_per_second.unwrap_or(0)), now),
        }
    }

    /// Takes a token of the rate limit (a burst of one second's worth).
    fn take_token(&mut self, now: Instant) -> bool {
        let Some(rate) = self.quota.requests_per_second else {
            return true;
        };
        let rate = f64::from(rate);
        let (tokens, at) = self.bucket;
        let tokens = (tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(rate);
        if tokens >= 1.0 {
            self.bucket = (tokens - 1.0, now);
            true
        } else {
            self.bucket = (tokens, now);
            false
        }
    }
}

/// What [`Quotas::take`] found.
enum Taken {
    /// The quota must be read (again) first.
    Stale,
    /// The tenant's concurrency slots and how many there are, and its
    /// memory quota, when it has them.
    Limits {
        slots: Option<(Arc<Semaphore>, u32)>,
        memory: Option<Arc<MemoryBudget>>,
    },
}

/// What [`Quotas::admit`] gave an invocation.
pub(crate) struct Admitted {
    /// One of the tenant's concurrency slots, when it has a limit.
    pub(crate) slot: Option<OwnedSemaphorePermit>,
    /// The tenant's memory quota, when it has one.
    pub(crate) memory: Option<Arc<MemoryBudget>>,
}

/// The quotas of every tenant this node has run.
pub struct Quotas {
    kv: Arc<dyn KvStore>,
    enforced: Mutex<HashMap<Arc<str>, Enforced>>,
}

impl Quotas {
    pub(crate) fn new(kv: Arc<dyn KvStore>) -> Quotas {
        Quotas {
            kv,
            enforced: Mutex::default(),
        }
    }

    fn store(tenant: &str) -> StoreId {
        StoreId::new(tenant, QUOTAS_STORE)
    }

    /// `tenant`'s quota as stored (none: no limits).
    pub async fn get(&self, tenant: &str) -> Result<TenantQuota, PlatformError> {
        stored_quota(&*self.kv, tenant).await
    }

    /// Sets `tenant`'s quota (all limits off: removes it).
    pub async fn set(&self, tenant: &str, quota: TenantQuota) -> Result<(), PlatformError> {
        quota.validate()?;
        let store = Self::store(tenant);
        if quota == TenantQuota::default() {
            self.kv.delete(&store, KEY).await?;
        } else {
            let value = serde_json::to_vec(&quota).map_err(|e| PlatformError::Task(Box::new(e)))?;
            self.kv.set(&store, KEY, value).await?;
        }
        // This node applies it at once; the others within QUOTA_REFRESH.
        self.lock().remove(tenant);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Enforced>> {
        self.enforced.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Under one lock: applies a quota just `read`, then takes a token of
    /// the tenant's rate; `Stale` when its quota must be read first.
    fn take(
        &self,
        tenant: &Arc<str>,
        now: Instant,
        read: Option<TenantQuota>,
    ) -> Result<Taken, PlatformError> {
        let mut enforced = self.lock();
        if let Some(quota) = read {
            match enforced.get_mut(tenant) {
                // Unchanged: keep the slots and the bucket as they are.
                Some(e) if e.quota == quota => e.read_at = now,
                _ => {
                    enforced.insert(tenant.clone(), Enforced::new(quota, now));
                }
            }
        }
        let Some(e) = enforced
            .get_mut(tenant)
            .filter(|e| now.saturating_duration_since(e.read_at) < QUOTA_REFRESH)
        else {
            return Ok(Taken::Stale);
        };
        if !e.take_token(now) {
            return Err(PlatformError::TenantRateLimit {
                tenant: tenant.to_string(),
                rps: e.quota.requests_per_second.unwrap_or(0),
            });
        }
        Ok(Taken::Limits {
            slots: e
                .slots
                .as_ref()
                .map(|slots| (slots.clone(), e.quota.max_concurrency.unwrap_or(0))),
            memory: e.memory.clone(),
        })
    }

    /// Admits one invocation of `tenant`: a token of its rate, then one of
    /// its concurrency slots, waiting for that until `deadline`.
    pub(crate) async fn admit(
        &self,
        tenant: &Arc<str>,
        deadline: tokio::time::Instant,
    ) -> Result<Admitted, PlatformError> {
        let now = Instant::now();
        let mut read = None;
        let (slots, memory) = loop {
            match self.take(tenant, now, read.take())? {
                Taken::Stale => read = Some(self.get(tenant).await?),
                Taken::Limits { slots, memory } => break (slots, memory),
            }
        };
        let slot = match slots {
            None => None,
            Some((slots, max)) => Some(
                crate::invoker::acquire(&slots, deadline)
                    .await
                    .ok_or_else(|| PlatformError::TenantConcurrencyLimit {
                        tenant: tenant.to_string(),
                        max,
                    })?,
            ),
        };
        Ok(Admitted { slot, memory })
    }
}

/// `tenant`'s quota as stored in `kv` (none: no limits).
async fn stored_quota(kv: &dyn KvStore, tenant: &str) -> Result<TenantQuota, PlatformError> {
    // The latest, not this node's copy: a change applies at the next read.
    let Some(stored) = kv
        .get_latest(&StoreId::new(tenant, QUOTAS_STORE), KEY)
        .await?
    else {
        return Ok(TenantQuota::default());
    };
    serde_json::from_slice(&stored).map_err(|e| {
        PlatformError::Task(format!("the stored quota of {tenant} is unreadable: {e}").into())
    })
}

/// How long one measurement of what every tenant stores serves: measuring
/// scans every key-value store and lists every blob. A tenant may pass its
/// disk quota by what it writes within that time.
pub const DISK_MEASURE_EVERY: Duration = Duration::from_secs(5);

/// Tenants' disk quotas, asked by the key-value and blob layers before a
/// write that adds data.
pub(crate) struct DiskGate {
    /// The key-value backend itself (not the watched one): measured, and
    /// where quotas are kept.
    kv: Arc<dyn KvStore>,
    blobs: Arc<Blobs>,
    state: Mutex<DiskState>,
    /// Held while measuring: the writes that find the measurement stale
    /// wait for one scan instead of each starting its own.
    measuring: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct DiskState {
    /// Each tenant's `disk_mb` and when it was read.
    quotas: HashMap<String, (Instant, Option<u32>)>,
    /// Bytes each tenant stores, and when they were measured.
    measured: Option<(Instant, Arc<HashMap<String, u64>>)>,
}

impl DiskGate {
    pub(crate) fn new(kv: Arc<dyn KvStore>, blobs: Arc<Blobs>) -> DiskGate {
        DiskGate {
            kv,
            blobs,
            state: Mutex::default(),
            measuring: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn quota_mb(&self, tenant: &str, now: Instant) -> Result<Option<u32>, PlatformError> {
        if let Some(&(at, quota)) = self.lock().quotas.get(tenant)
            && now.saturating_duration_since(at) < QUOTA_REFRESH
        {
            return Ok(quota);
        }
        let quota = stored_quota(&*self.kv, tenant).await?.disk_mb;
        self.lock().quotas.insert(tenant.to_string(), (now, quota));
        Ok(quota)
    }

    async fn stored(&self, now: Instant) -> Result<Arc<HashMap<String, u64>>, PlatformError> {
        let fresh = |state: &DiskState| {
            state
                .measured
                .as_ref()
                .filter(|(at, _)| now.saturating_duration_since(*at) < DISK_MEASURE_EVERY)
                .map(|(_, sizes)| sizes.clone())
        };
        if let Some(sizes) = fresh(&self.lock()) {
            return Ok(sizes);
        }
        let _measuring = self.measuring.lock().await;
        // Measured by another write while this one waited?
        if let Some(sizes) = fresh(&self.lock()) {
            return Ok(sizes);
        }
        let mut sizes = self.kv.stored_bytes().await?;
        for (tenant, bytes) in self.blobs.stored_bytes().await? {
            *sizes.entry(tenant).or_default() += bytes;
        }
        let sizes = Arc::new(sizes);
        self.lock().measured = Some((now, sizes.clone()));
        Ok(sizes)
    }
}

#[async_trait]
impl WriteGate for DiskGate {
    async fn admit(&self, tenant: &str) -> Result<(), String> {
        let now = Instant::now();
        let checked = async {
            let Some(mb) = self.quota_mb(tenant, now).await? else {
                return Ok(None);
            };
            let used = self.stored(now).await?.get(tenant).copied().unwrap_or(0);
            Ok::<_, PlatformError>((used >= u64::from(mb) << 20).then_some((mb, used)))
        };
        match checked.await {
            Ok(None) => Ok(()),
            Ok(Some((mb, used))) => Err(format!(
                "tenant {tenant} stores {} MiB in key-value stores and blobs, its disk quota \
                 is {mb} MiB: delete data, or ask an admin to raise it (updraft quota set \
                 --disk-mb)",
                used >> 20
            )),
            // The quota cannot be checked: the write decides for itself.
            Err(e) => {
                tracing::warn!(
                    "the disk quota of {tenant} was not checked: {}",
                    updraft_core::error::chain(&e)
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_refills_a_second_at_a_time() {
        let t0 = Instant::now();
        let quota = TenantQuota {
            requests_per_second: Some(2),
            ..TenantQuota::default()
        };
        let mut e = Enforced::new(quota, t0);
        assert!(e.take_token(t0) && e.take_token(t0));
        assert!(!e.take_token(t0), "a burst of one second's worth");
        assert!(e.take_token(t0 + Duration::from_millis(500)));
        assert!(!e.take_token(t0 + Duration::from_millis(500)));
        assert!(e.take_token(t0 + Duration::from_secs(10)));
        assert!(e.take_token(t0 + Duration::from_secs(10)));
        assert!(
            !e.take_token(t0 + Duration::from_secs(10)),
            "no more than the burst"
        );
    }

    #[test]
    fn out_of_range_quotas_are_refused() {
        for bad in [Some(0), Some(QUOTA_MAX + 1)] {
            let q = TenantQuota {
                max_concurrency: bad,
                ..TenantQuota::default()
            };
            assert!(q.validate().is_err());
            let q = TenantQuota {
                disk_mb: bad,
                ..TenantQuota::default()
            };
            let refused = q.validate().unwrap_err().to_string();
            assert!(refused.contains("disk_mb must be 1 to"), "{refused}");
        }
        assert!(TenantQuota::default().validate().is_ok());
    }
}
