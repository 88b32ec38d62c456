//! [`Platform`]: the registry, the sandbox and the in-memory table of loaded
//! functions and routes, kept consistent with each other.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use updraft_core::Trigger;
use updraft_core::{
    Digest, EventTrigger, FunctionKind, LogEntry, LogStream, Manifest, Route, SharedClock,
    VersionRecord, function_key,
};
use updraft_metering::{Aggregate, BudgetEvent, BudgetKind, Metering, PriceSheet, usd};
use updraft_sandbox::{
    Backends, CallRequest, Grants, InvocationCtx, OnDone, Output, PrepareSpec, Prepared, Report,
    ResponseBody, Sandbox, SandboxConfig,
};
use updraft_state::blob::{BLOB_BYTES_MAX_DEFAULT, BlobConfig, Blobs};
use updraft_state::kv::{KvConfig, KvStore};
use updraft_state::queue::{EmbeddedQueues, QueueStore};
use updraft_state::registry::NewVersion;
use updraft_state::{FunctionRecord, LogStore, Registry, Tenants};

use crate::error::PlatformError;
use crate::logs::LogPipe;
use crate::usage::PendingUsage;

/// Where and how big the platform is.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    pub data_dir: PathBuf,
    /// Instances that may run at once (pool slots); more requests wait.
    pub instances_max: u32,
    /// A function unused this long has its compiled code dropped from memory
    /// (scale to zero); the next request maps it back from the disk cache.
    /// `None` keeps everything loaded.
    pub idle_unload: Option<Duration>,
    /// Largest blob a function or the API may store.
    pub blob_bytes_max: u64,
    /// The key-value backend.
    pub kv: KvConfig,
    /// The blob backend.
    pub blobs: BlobConfig,
    /// Prices of the bills.
    pub prices: PriceSheet,
    /// Whether invocations are metered (usage records, bills, budgets).
    /// Off only to measure what metering costs.
    pub metering: bool,
    /// How long raw usage records are kept.
    pub records_retention: Duration,
    /// How often what each tenant stores is sampled for its bill.
    pub storage_sample: Duration,
    /// The wall clock usage records are stamped with and metering reads its
    /// dates from (the system clock; tests set their own).
    pub clock: SharedClock,
}

/// The topic a tenant creates to hear of its budget: 80% spent, all spent.
pub const BUDGET_TOPIC: &str = "budget-alerts";

/// Default interval of storage samples: S3 and DynamoDB also bill stored
/// bytes by the hour.
pub const STORAGE_SAMPLE_DEFAULT: Duration = Duration::from_secs(3600);

/// Default idle time before a function's compiled code is dropped.
pub const IDLE_UNLOAD_DEFAULT: Duration = Duration::from_secs(300);

impl PlatformConfig {
    pub fn new(data_dir: PathBuf) -> PlatformConfig {
        PlatformConfig {
            data_dir,
            instances_max: updraft_sandbox::SandboxConfig::new(PathBuf::new()).instances_max,
            idle_unload: Some(IDLE_UNLOAD_DEFAULT),
            blob_bytes_max: BLOB_BYTES_MAX_DEFAULT,
            kv: KvConfig::default(),
            blobs: BlobConfig::default(),
            prices: PriceSheet::default(),
            metering: true,
            records_retention: updraft_metering::RECORDS_RETENTION_DEFAULT,
            storage_sample: STORAGE_SAMPLE_DEFAULT,
            clock: updraft_core::system_clock(),
        }
    }
}

/// The version of a function that serves traffic (its `latest` alias).
pub struct Loaded {
    pub tenant: Arc<str>,
    pub name: Arc<str>,
    /// `tenant/name`: the function's key in the registry, logs and meter.
    pub key: Arc<str>,
    pub version: VersionRecord,
    pub route: Option<Route>,
    /// The manifest's triggers, parsed once (dispatchers and timers ask on
    /// every round).
    pub triggers: Vec<EventTrigger>,
    /// Compiled code and `InstancePre`; `None` while scaled to zero.
    prepared: RwLock<Option<Arc<Prepared>>>,
    /// Serializes reloading so a burst after idle maps the code once.
    loading: tokio::sync::Mutex<()>,
    last_used_ms: AtomicU64,
}

impl Loaded {
    fn new(
        tenant: &str,
        version: VersionRecord,
        prepared: Option<Arc<Prepared>>,
    ) -> Result<Loaded, PlatformError> {
        let route = version.manifest.parsed_route()?;
        let triggers = version.manifest.parsed_triggers()?;
        Ok(Loaded {
            tenant: Arc::from(tenant),
            name: Arc::from(version.manifest.name.as_str()),
            key: Arc::from(function_key(tenant, &version.manifest.name)),
            version,
            route,
            triggers,
            prepared: RwLock::new(prepared),
            loading: tokio::sync::Mutex::new(()),
            last_used_ms: AtomicU64::new(now_ms()),
        })
    }

    /// The prepared code, if it is in memory now.
    pub fn prepared(&self) -> Option<Arc<Prepared>> {
        self.prepared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_prepared(&self, prepared: Option<Arc<Prepared>>) {
        *self.prepared.write().unwrap_or_else(|e| e.into_inner()) = prepared;
    }
}

/// What a deploy did.
pub struct Deployed {
    pub loaded: Arc<Loaded>,
    pub compiled: bool,
}

/// Everything `info` shows about one function.
pub struct FunctionDetails {
    pub record: FunctionRecord,
    pub versions: Vec<VersionRecord>,
    pub loaded: Option<Arc<Loaded>>,
    /// Everything this function has used, from the usage records.
    pub usage: Aggregate,
}

pub struct Platform {
    sandbox: Arc<Sandbox>,
    /// The key-value and blob backends, the caller of functions and the
    /// publisher: what every function's capabilities are served by.
    backends: Backends,
    registry: Arc<Registry>,
    tenants: Tenants,
    log_store: Arc<LogStore>,
    logs: LogPipe,
    metering: Option<Arc<Metering>>,
    /// Loaded functions by key, and routes ordered most specific first.
    table: RwLock<Table>,
    /// One permit per instance slot, so bursts queue instead of failing.
    admission: Arc<Semaphore>,
    /// Serializes control-plane changes so registry and table move together.
    control: tokio::sync::Mutex<()>,
    /// Async invocations waiting, running, retried and dead.
    queues: Arc<dyn QueueStore>,
    /// Functions whose async dispatcher runs.
    dispatchers: Mutex<HashSet<Arc<str>>>,
    shut_down: AtomicBool,
    /// The wall clock of usage records' start times (and, in metering, of
    /// bills and budgets): one clock, so a record and its month agree.
    clock: SharedClock,
    /// This platform, for work started from `&self` (budget alerts).
    me: std::sync::Weak<Platform>,
    /// Functions watching key-value writes, rebuilt on every control change.
    kv_watchers: Arc<RwLock<crate::kv_triggers::Watchers>>,
}

#[derive(Default)]
struct Table {
    by_key: HashMap<Arc<str>, Arc<Loaded>>,
    routes: Vec<(Route, Arc<Loaded>)>,
}

impl Table {
    fn insert(&mut self, loaded: Arc<Loaded>) {
        self.remove(&loaded.key);
        if let Some(route) = &loaded.route {
            self.routes.push((route.clone(), loaded.clone()));
            self.routes
                .sort_by_key(|(route, _)| std::cmp::Reverse(route.specificity()));
        }
        self.by_key.insert(loaded.key.clone(), loaded);
    }

    fn remove(&mut self, key: &str) {
        self.by_key.remove(key);
        self.routes.retain(|(_, l)| &*l.key != key);
    }
}

/// How long an invocation may wait for an instance slot: a call from
/// another function no longer than its chain has left.
fn admit_ms(loaded: &Loaded, call: Option<&CallRequest>) -> u64 {
    let own = loaded.version.limits.timeout_ms;
    match call {
        Some(call) => {
            let left = call
                .deadline
                .saturating_duration_since(std::time::Instant::now());
            own.min(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
        }
        None => own,
    }
}

fn invocation_ctx(loaded: &Loaded, id: &str, call: Option<&CallRequest>) -> InvocationCtx {
    InvocationCtx {
        invocation_id: id.to_string(),
        chain: match call {
            Some(call) => call.chain.clone(),
            None => Arc::new([Arc::from(&*loaded.name)]),
        },
        deadline: call.map(|c| c.deadline),
        inline: call.is_some(),
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn join_error(e: tokio::task::JoinError) -> PlatformError {
    PlatformError::Task(Box::new(e))
}

impl Platform {
    /// Opens the data dir and loads every deployed function (from the compile
    /// cache when possible).
    pub async fn open(config: PlatformConfig) -> Result<Arc<Platform>, PlatformError> {
        // Building the engine (the instance pool) and opening the databases
        // take a few milliseconds each: do both at once, start-up is on the
        // cold path of the first request after a restart.
        let mut sandbox_config = SandboxConfig::new(config.data_dir.join("compiled"));
        sandbox_config.instances_max = config.instances_max;
        let sandbox = tokio::task::spawn_blocking(move || Sandbox::new(sandbox_config));
        let data_dir = config.data_dir.clone();
        let (kv_config, blob_config) = (config.kv.clone(), config.blobs.clone());
        let blob_bytes_max = config.blob_bytes_max;
        let (metered, prices) = (config.metering, config.prices);
        let (retention, clock) = (config.records_retention, config.clock.clone());
        let stores = tokio::task::spawn_blocking(move || {
            let metering = match metered {
                true => Some(Arc::new(Metering::open_with(
                    &data_dir, prices, retention, clock,
                )?)),
                false => None,
            };
            let kv = kv_config.open(&data_dir)?;
            let blobs = blob_config.open(&data_dir, blob_bytes_max)?;
            let queues: Arc<dyn QueueStore> = Arc::new(EmbeddedQueues::open(&data_dir)?);
            Ok::<_, PlatformError>((
                Arc::new(Registry::open(&data_dir)?),
                Tenants::open(&data_dir)?,
                LogStore::open(&data_dir)?,
                kv,
                Arc::new(blobs),
                metering,
                queues,
            ))
        });
        let (sandbox, stores) = tokio::join!(sandbox, stores);
        let (registry, tenants, log_store, kv, blobs, metering, queues) =
            stores.map_err(join_error)??;
        if !matches!(config.blobs, BlobConfig::Local { .. }) {
            blobs.check().await?;
        }
        let sandbox = sandbox.map_err(join_error)??;
        let log_store = Arc::new(log_store);
        let kv_watchers: Arc<RwLock<crate::kv_triggers::Watchers>> = Arc::new(RwLock::default());
        let platform = Arc::new_cyclic(|weak| Platform {
            me: weak.clone(),
            clock: config.clock.clone(),
            kv_watchers: kv_watchers.clone(),
            admission: Arc::new(Semaphore::new(sandbox.instances_max() as usize)),
            sandbox,
            backends: Backends {
                kv: Arc::new(crate::kv_triggers::WatchedKv {
                    inner: kv,
                    watchers: kv_watchers.clone(),
                    platform: weak.clone(),
                }),
                blobs,
                caller: Arc::new(crate::calls::PlatformCaller(weak.clone())),
                publisher: Arc::new(crate::events::PlatformPublisher(weak.clone())),
            },
            registry,
            tenants,
            logs: LogPipe::start(log_store.clone()),
            log_store,
            metering,
            table: RwLock::new(Table::default()),
            control: tokio::sync::Mutex::new(()),
            queues,
            dispatchers: Mutex::default(),
            shut_down: AtomicBool::new(false),
        });
        // Functions start scaled to zero: the first request maps the compiled
        // code from the cache, so start-up time does not grow with the number
        // of functions. Artifacts missing from the cache (a new engine) are
        // compiled in the background right away.
        let mut missing = Vec::new();
        for (record, version) in platform.registry.list()? {
            let loaded = Arc::new(Loaded::new(&record.tenant, version, None)?);
            if !platform.sandbox.is_cached(&loaded.version.wasm_digest) {
                missing.push(loaded.clone());
            }
            platform.table_mut().insert(loaded.clone());
            // Consumers, schedules, and async work accepted before a restart.
            platform.start_triggers(&loaded);
        }
        // Once, not per function: each rebuild reads every function.
        platform.refresh_kv_watchers();
        let warm = platform.clone();
        tokio::spawn(async move {
            for loaded in missing {
                if let Err(e) = warm.ensure_prepared(&loaded).await {
                    tracing::error!(
                        "function {} could not be compiled: {}",
                        loaded.key,
                        updraft_core::error::chain(&e)
                    );
                }
            }
        });
        if let Some(idle) = config.idle_unload {
            tokio::spawn(unload_idle(Arc::downgrade(&platform), idle));
        }
        if platform.metering.is_some() {
            let every = config.storage_sample;
            tokio::spawn(crate::usage::sample_storage(
                Arc::downgrade(&platform),
                every,
            ));
        }
        Ok(platform)
    }

    fn table_mut(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Compiles or loads one version off the async threads.
    /// `kind` is what the binary must be (`None`: detect it). `wasm` is the
    /// upload at deploy; otherwise the Wasm is read from the registry, and
    /// only if the compiled artifact is not in the cache.
    async fn prepare(
        &self,
        tenant: &str,
        version: &VersionRecord,
        kind: Option<FunctionKind>,
        wasm: Option<Bytes>,
    ) -> Result<Arc<Prepared>, PlatformError> {
        let sandbox = self.sandbox.clone();
        let registry = self.registry.clone();
        let name = version.manifest.name.clone();
        let digest = version.wasm_digest;
        let limits = version.limits;
        let env = version
            .manifest
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let grants = Grants::for_function(tenant, &version.manifest, &self.backends);
        let prepared = tokio::task::spawn_blocking(move || {
            let source = || match &wasm {
                Some(bytes) => Ok(bytes.to_vec()),
                None => registry.load_wasm(&digest).map_err(|e| e.to_string()),
            };
            sandbox.prepare(PrepareSpec {
                name: &name,
                wasm: &source,
                wasm_digest: digest,
                kind,
                limits,
                env,
                grants,
            })
        })
        .await
        .map_err(join_error)??;
        Ok(Arc::new(prepared))
    }

    /// The function's compiled code, mapping it back from the cache if it was
    /// dropped while idle.
    pub async fn ensure_prepared(&self, loaded: &Loaded) -> Result<Arc<Prepared>, PlatformError> {
        loaded.last_used_ms.store(now_ms(), Ordering::Relaxed);
        if let Some(prepared) = loaded.prepared() {
            return Ok(prepared);
        }
        let _loading = loaded.loading.lock().await;
        if let Some(prepared) = loaded.prepared() {
            return Ok(prepared);
        }
        let prepared = self
            .prepare(
                &loaded.tenant,
                &loaded.version,
                Some(loaded.version.kind),
                None,
            )
            .await?;
        loaded.set_prepared(Some(prepared.clone()));
        Ok(prepared)
    }

    /// Drops a function's compiled code from memory (it stays on disk).
    /// Returns whether it was loaded.
    pub fn unload(&self, tenant: &str, name: &str) -> Result<bool, PlatformError> {
        let loaded = self
            .get(tenant, name)
            .ok_or_else(|| updraft_state::StateError::FunctionNotFound(name.to_string()))?;
        let was_loaded = loaded.prepared().is_some();
        loaded.set_prepared(None);
        Ok(was_loaded)
    }

    async fn load_version(
        &self,
        tenant: &str,
        version: VersionRecord,
    ) -> Result<Arc<Loaded>, PlatformError> {
        let prepared = self
            .prepare(tenant, &version, Some(version.kind), None)
            .await?;
        Ok(Arc::new(Loaded::new(tenant, version, Some(prepared))?))
    }

    /// Deploys a new version of `tenant`'s function: validate, compile,
    /// store, then point `latest` at it. Nothing is stored unless every step
    /// succeeds.
    pub async fn deploy(
        self: &Arc<Self>,
        tenant: &str,
        manifest: Manifest,
        wasm: Bytes,
    ) -> Result<Deployed, PlatformError> {
        let limits = manifest.validate()?;
        let route = manifest.parsed_route()?;
        self.check_triggers(tenant, &manifest.parsed_triggers()?)?;
        let mut manifest = manifest;
        // `source` is where the CLI found the file; it is not part of the version.
        manifest.source = None;
        Sandbox::check_bytes(&wasm)?;
        let _guard = self.control.lock().await;
        self.registry
            .check_route(&function_key(tenant, &manifest.name), route.as_ref())?;
        let wasm_digest = Digest::of(&wasm);
        // Prepare first with the kind the user stated (or none), then record
        // the detected kind in the version.
        let probe = VersionRecord {
            version: 0,
            digest: wasm_digest,
            wasm_digest,
            wasm_bytes: wasm.len() as u64,
            kind: manifest.kind.unwrap_or(FunctionKind::Http),
            manifest: manifest.clone(),
            limits,
            created_at_ms: 0,
        };
        let prepared = self
            .prepare(tenant, &probe, manifest.kind, Some(wasm.clone()))
            .await?;
        let stored = wasm.clone();
        let digest = wasm_digest;
        let (_, version) = tokio::task::block_in_place(|| {
            self.registry.store_wasm(&digest, &stored)?;
            self.registry.deploy(
                tenant,
                NewVersion {
                    manifest,
                    wasm_digest,
                    wasm_bytes: wasm.len() as u64,
                    kind: prepared.kind,
                    limits,
                },
            )
        })?;
        let compiled = prepared.loaded_from == updraft_sandbox::LoadedFrom::Compile;
        let loaded = Arc::new(Loaded::new(tenant, version, Some(prepared))?);
        self.serve(&loaded);
        self.platform_log(
            &loaded.key,
            &format!(
                "deployed version {} ({}, {})",
                loaded.version.version, loaded.version.kind, loaded.version.digest
            ),
        );
        Ok(Deployed { loaded, compiled })
    }

    /// Every function with its serving version.
    /// The key-value backend (for the operator API; functions reach it
    /// through the sandbox, limited to their manifest's stores).
    pub(crate) fn kv(&self) -> &Arc<dyn KvStore> {
        &self.backends.kv
    }

    /// Stores listed by `tenant`'s deployed functions, sorted.
    pub fn kv_store_names(&self, tenant: &str) -> Vec<String> {
        self.names_in_use(tenant, |manifest| &manifest.key_value_stores)
    }

    /// The blob containers (for the operator API; functions reach them
    /// through the sandbox, limited to their manifest's containers).
    pub(crate) fn blobs(&self) -> &Arc<Blobs> {
        &self.backends.blobs
    }

    /// Containers listed by `tenant`'s deployed functions, sorted.
    pub fn blob_container_names(&self, tenant: &str) -> Vec<String> {
        self.names_in_use(tenant, |manifest| &manifest.blob_containers)
    }

    fn names_in_use(&self, tenant: &str, field: impl Fn(&Manifest) -> &Vec<String>) -> Vec<String> {
        let mut names: Vec<String> = self
            .table()
            .by_key
            .values()
            .filter(|loaded| &*loaded.tenant == tenant)
            .flat_map(|loaded| field(&loaded.version.manifest).iter().cloned())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Only what a deployed function uses is reachable, so a typo is a 404.
    pub(crate) fn in_use(
        &self,
        name: &str,
        what: &'static str,
        names: Vec<String>,
    ) -> Result<(), PlatformError> {
        if names.iter().any(|n| n == name) {
            return Ok(());
        }
        let known = if names.is_empty() {
            "none is in use".to_string()
        } else {
            format!("in use: {}", names.join(", "))
        };
        Err(PlatformError::NotInUse {
            what,
            name: name.to_string(),
            known,
        })
    }

    /// The tenants' API keys.
    pub(crate) fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// `tenant`'s functions.
    pub(crate) fn queues(&self) -> &Arc<dyn QueueStore> {
        &self.queues
    }

    pub(crate) fn dispatchers(&self) -> std::sync::MutexGuard<'_, HashSet<Arc<str>>> {
        self.dispatchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every loaded function.
    pub(crate) fn loaded_all(&self) -> Vec<Arc<Loaded>> {
        self.table().by_key.values().cloned().collect()
    }

    /// Makes `loaded` the serving version of its function: routes, key-value
    /// watchers, consumers and schedules.
    fn serve(self: &Arc<Self>, loaded: &Arc<Loaded>) {
        self.table_mut().insert(loaded.clone());
        self.refresh_kv_watchers();
        self.start_triggers(loaded);
    }

    /// Rebuilds who watches which key-value writes, after the table changed.
    pub(crate) fn refresh_kv_watchers(&self) {
        let watchers = crate::kv_triggers::watchers_of(self);
        *self.kv_watchers.write().unwrap_or_else(|e| e.into_inner()) = watchers;
    }

    /// The loaded functions of a tenant.
    pub(crate) fn loaded_of(&self, tenant: &str) -> Vec<Arc<Loaded>> {
        self.table()
            .by_key
            .values()
            .filter(|l| &*l.tenant == tenant)
            .cloned()
            .collect()
    }

    /// A named queue's visibility timeout and batch size, if it exists.
    pub(crate) fn channel_settings(&self, tenant: &str, name: &str) -> Option<(u64, u32)> {
        let channels = self.queues.channels(tenant).ok()?;
        let channel = channels.into_iter().find(|c| c.name == name)?;
        Some((channel.visibility_timeout_ms, channel.batch_size))
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Relaxed)
    }

    /// `Ok` if the tenant has this function.
    pub(crate) fn require(&self, tenant: &str, name: &str) -> Result<(), PlatformError> {
        match self.get(tenant, name) {
            Some(_) => Ok(()),
            None => Err(updraft_state::StateError::FunctionNotFound(name.to_string()).into()),
        }
    }

    pub fn list(
        &self,
        tenant: &str,
    ) -> Result<Vec<(FunctionRecord, VersionRecord)>, PlatformError> {
        let mut all = self.registry.list()?;
        all.retain(|(record, _)| record.tenant == tenant);
        Ok(all)
    }

    pub fn details(&self, tenant: &str, name: &str) -> Result<FunctionDetails, PlatformError> {
        let key = function_key(tenant, name);
        let (record, versions) = self.registry.get(&key)?;
        Ok(FunctionDetails {
            record,
            versions,
            loaded: self.get(tenant, name),
            usage: match &self.metering {
                Some(metering) => metering.function_usage(tenant, name)?,
                None => Aggregate::default(),
            },
        })
    }

    /// Moves `latest` back (to `version`, or to the one before).
    pub async fn rollback(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        version: Option<u64>,
    ) -> Result<Arc<Loaded>, PlatformError> {
        let _guard = self.control.lock().await;
        let key = function_key(tenant, name);
        let (record, _) = self.registry.get(&key)?;
        let (_, target) = tokio::task::block_in_place(|| self.registry.rollback(&key, version))?;
        match self.load_version(tenant, target).await {
            Ok(loaded) => {
                self.serve(&loaded);
                self.platform_log(
                    &loaded.key,
                    &format!("rolled back: latest -> version {}", loaded.version.version),
                );
                Ok(loaded)
            }
            Err(e) => {
                // Put the alias back so the registry and what serves agree.
                if let Some(previous) = record.latest() {
                    let _ = self.registry.rollback(&key, Some(previous));
                }
                Err(e)
            }
        }
    }

    /// Removes a function, its versions, logs and unused artifacts.
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<(), PlatformError> {
        let _guard = self.control.lock().await;
        let key = function_key(tenant, name);
        let orphans = tokio::task::block_in_place(|| self.registry.delete(&key))?;
        self.table_mut().remove(&key);
        self.refresh_kv_watchers();
        for digest in orphans {
            self.sandbox.evict(&digest);
        }
        tokio::task::block_in_place(|| self.log_store.delete_function(&key))?;
        Ok(())
    }

    pub fn get(&self, tenant: &str, name: &str) -> Option<Arc<Loaded>> {
        self.table()
            .by_key
            .get(function_key(tenant, name).as_str())
            .cloned()
    }

    /// The function of `tenant` serving `path`: the most specific matching route.
    pub fn route(&self, tenant: &str, path: &str) -> Option<Arc<Loaded>> {
        self.table()
            .routes
            .iter()
            .find(|(route, loaded)| &*loaded.tenant == tenant && route.matches(path))
            .map(|(_, loaded)| loaded.clone())
    }

    /// Functions compiled by this process (the rest came from the cache).
    pub fn compiles(&self) -> u64 {
        self.sandbox.compiles()
    }

    pub fn function_count(&self) -> usize {
        self.table().by_key.len()
    }

    async fn admit(&self, timeout_ms: u64) -> Result<OwnedSemaphorePermit, PlatformError> {
        // Fast path without a timer: a free slot is the common case.
        if let Ok(permit) = self.admission.clone().try_acquire_owned() {
            return Ok(permit);
        }
        match tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            self.admission.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(PlatformError::Busy(self.sandbox.instances_max())),
        }
    }

    /// Runs an http function on `request` (see [`Platform::run`]). The
    /// response comes back as soon as the guest sets it; logs and usage are
    /// recorded when the guest finishes.
    pub(crate) async fn invoke_http_as(
        self: &Arc<Self>,
        loaded: &Arc<Loaded>,
        request: http::Request<crate::invoker::RequestBody>,
        trigger: Trigger,
        invocation_id: String,
        call: Option<&CallRequest>,
    ) -> (String, Result<http::Response<ResponseBody>, PlatformError>) {
        if let Err(e) = self.check_budget(loaded) {
            return (invocation_id, Err(e));
        }
        let start_ms = self.clock.now_ms();
        let prepared = match self.ensure_prepared(loaded).await {
            Ok(prepared) => prepared,
            Err(e) => return (invocation_id, Err(e)),
        };
        let permit = match self.admit(admit_ms(loaded, call)).await {
            Ok(permit) => permit,
            Err(e) => return (invocation_id, Err(e)),
        };
        let ctx = invocation_ctx(loaded, &invocation_id, call);
        let this = self.clone();
        let function = loaded.clone();
        let pending = self
            .metering
            .is_some()
            .then(|| PendingUsage::new(self.clone(), loaded.key.clone()));
        // Made before the await, so a caller that goes away still releases it.
        let body_part = pending.as_ref().map(PendingUsage::body_part);
        let usage = pending;
        let on_done: OnDone = Box::new(move |report| {
            this.log_report(&function.key, &report);
            if let Some(usage) = usage {
                usage.report(crate::usage::record(
                    &function, trigger, start_ms, report, 0,
                ));
            }
            drop(permit);
        });
        let response = self
            .sandbox
            .invoke_http(&prepared, request, ctx, on_done)
            .await;
        let response = match (response, body_part) {
            (Ok(response), Some(part)) => Ok(response.map(|body| part.wrap(body))),
            (response, _) => response,
        };
        (invocation_id, response.map_err(PlatformError::from))
    }

    /// Runs a command function with `stdin` (see [`Platform::run`]);
    /// returns its stdout.
    pub(crate) async fn invoke_command_as(
        &self,
        loaded: &Arc<Loaded>,
        stdin: Bytes,
        trigger: Trigger,
        invocation_id: String,
        call: Option<&CallRequest>,
    ) -> (String, Result<Bytes, PlatformError>) {
        let run = |prepared: Arc<Prepared>, ctx| async move {
            self.sandbox.invoke_command(&prepared, stdin, ctx).await
        };
        let bytes_out = |out: &Bytes| out.len() as u64;
        self.invoke_buffered(loaded, trigger, invocation_id, call, bytes_out, run)
            .await
    }

    /// Hands `payload` to the function's handler export
    /// ([`Sandbox::invoke_handler`](updraft_sandbox::Sandbox::invoke_handler)):
    /// a call from another function, or an event.
    pub(crate) async fn invoke_handler_as(
        &self,
        loaded: &Arc<Loaded>,
        payload: Bytes,
        trigger: Trigger,
        invocation_id: String,
        call: Option<&CallRequest>,
    ) -> (String, Result<(u16, Bytes), PlatformError>) {
        let run = |prepared: Arc<Prepared>, ctx| async move {
            self.sandbox.invoke_handler(&prepared, payload, ctx).await
        };
        let bytes_out = |(_, body): &(u16, Bytes)| body.len() as u64;
        self.invoke_buffered(loaded, trigger, invocation_id, call, bytes_out, run)
            .await
    }

    /// What invocations run to their end before they answer (commands,
    /// direct calls) share: the budget, preparing, an instance slot, then
    /// `run`, whose report goes to the logs and to metering.
    async fn invoke_buffered<T, Fut>(
        &self,
        loaded: &Arc<Loaded>,
        trigger: Trigger,
        invocation_id: String,
        call: Option<&CallRequest>,
        bytes_out: impl Fn(&T) -> u64,
        run: impl FnOnce(Arc<Prepared>, InvocationCtx) -> Fut,
    ) -> (String, Result<T, PlatformError>)
    where
        Fut: Future<Output = Output<T>>,
    {
        if let Err(e) = self.check_budget(loaded) {
            return (invocation_id, Err(e));
        }
        let start_ms = self.clock.now_ms();
        let prepared = match self.ensure_prepared(loaded).await {
            Ok(prepared) => prepared,
            Err(e) => return (invocation_id, Err(e)),
        };
        let _permit = match self.admit(admit_ms(loaded, call)).await {
            Ok(permit) => permit,
            Err(e) => return (invocation_id, Err(e)),
        };
        let ctx = invocation_ctx(loaded, &invocation_id, call);
        let Output { result, report } = run(prepared, ctx).await;
        self.log_report(&loaded.key, &report);
        if self.metering.is_some() {
            let out = result.as_ref().map_or(0, &bytes_out);
            let record = crate::usage::record(loaded, trigger, start_ms, report, out);
            self.meter(&loaded.key, record);
        }
        (invocation_id, result.map_err(PlatformError::from))
    }

    /// Refuses an invocation once its tenant's budget is spent.
    pub(crate) fn check_budget(&self, loaded: &Loaded) -> Result<(), PlatformError> {
        match &self.metering {
            Some(metering) => Ok(metering.check(&loaded.tenant)?),
            None => Ok(()),
        }
    }

    /// Hands a usage record to metering; a budget crossing it causes goes
    /// to the logs of the function that crossed it.
    pub(crate) fn meter(&self, key: &Arc<str>, record: updraft_core::UsageRecord) {
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
            self.platform_log(key, &message);
            self.publish_budget_event(event);
        }
    }

    /// Publishes a budget event to the tenant's [`BUDGET_TOPIC`], if it has
    /// one: functions subscribed to it get a CloudEvent of type
    /// `dev.updraft.budget.warning` or `dev.updraft.budget.exceeded`, with
    /// id `budget-{warning|exceeded}-{month}`.
    fn publish_budget_event(&self, budget: BudgetEvent) {
        let (Some(platform), Ok(runtime)) =
            (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let kind = budget.kind.name();
        let data = serde_json::json!({
            "tenant": budget.tenant,
            "month": budget.month,
            "budget_cents": budget.budget_cents,
            "spent_cents": budget.spent_cents,
        });
        let mut event = crate::events::Event::platform(
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
        runtime.spawn(async move {
            match platform.publish(&tenant, BUDGET_TOPIC, event).await {
                Ok(_) | Err(PlatformError::UnknownChannel(_)) => {}
                Err(e) => tracing::warn!(
                    "budget {kind} of {tenant} not published: {}",
                    updraft_core::error::chain(&e)
                ),
            }
        });
    }

    /// Metering (`None` when the server runs with metering off).
    pub fn metering(&self) -> Option<&Arc<Metering>> {
        self.metering.as_ref()
    }

    fn log_report(&self, key: &Arc<str>, report: &Report) {
        let ts = now_ms();
        for (stream, line) in &report.logs {
            self.logs
                .push(key, LogEntry::new(ts, &report.invocation_id, *stream, line));
        }
    }

    pub(crate) fn platform_log(&self, key: &Arc<str>, message: &str) {
        self.logs.push(
            key,
            LogEntry::new(now_ms(), "-", LogStream::Platform, message),
        );
    }

    /// The last `n` log entries of a function.
    pub async fn logs_tail(
        &self,
        tenant: &str,
        name: &str,
        n: usize,
    ) -> Result<Vec<LogEntry>, PlatformError> {
        let key = function_key(tenant, name);
        self.registry.get(&key)?;
        self.logs.flush().await;
        Ok(tokio::task::block_in_place(|| {
            self.log_store.tail(&key, n)
        })?)
    }

    /// Every log line from now on, of every function, by function key
    /// (`tenant/name`): filter by tenant before showing them to anyone.
    pub fn follow_logs(&self) -> broadcast::Receiver<(Arc<str>, LogEntry)> {
        self.logs.subscribe()
    }

    /// Writes out buffered logs and usage; call before the process exits.
    pub async fn shutdown(&self) {
        self.shut_down.store(true, Ordering::Relaxed);
        self.logs.flush().await;
        if let Some(metering) = &self.metering {
            tokio::task::block_in_place(|| metering.flush());
        }
    }
}

/// Every tenth of the idle time, drops the compiled code of functions not
/// used for `idle` (scale to zero). Stops when the platform is gone.
async fn unload_idle(platform: std::sync::Weak<Platform>, idle: Duration) {
    let period = (idle / 10).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(platform) = platform.upgrade() else {
            return;
        };
        let cutoff = now_ms().saturating_sub(idle.as_millis() as u64);
        let loaded: Vec<Arc<Loaded>> = platform.table().by_key.values().cloned().collect();
        for function in loaded {
            if function.last_used_ms.load(Ordering::Relaxed) < cutoff
                && function.prepared().is_some()
            {
                function.set_prepared(None);
                tracing::debug!("{}: idle, compiled code unloaded", function.key);
            }
        }
    }
}
