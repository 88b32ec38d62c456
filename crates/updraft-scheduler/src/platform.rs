//! [`Platform`]: the facade over the scheduler's services, and where they
//! are built and wired together.
//!
//! | service | owns | state it lives on |
//! | --- | --- | --- |
//! | [`Functions`] | registry, versions, aliases, routes, deploy, rollback, delete, prepare | the registry, the compile cache |
//! | [`Invoker`] | admission, the budget check, the run, its logs and usage | instance slots (in process) |
//! | [`Events`] | channels, publish, async invocation, dispatchers, cron, key-value watchers | the queue store |
//! | [`Usage`] | metering glue, budget alerts, storage samples | the usage log |
//! | [`Logs`] | function logs: write, tail, follow | the log store |
//!
//! Data flows one way: events run work through the invoker, the invoker
//! runs what functions prepared, and usage and logs take what they are
//! handed. The few ways back up (a guest's call, publish or key-value
//! write; a budget alert) are weak handles and a channel made here. Each
//! service is a seam cluster mode puts over NATS: the registry and the
//! queue store become shared, the rest stays per node.
//!
//! A change of what serves touches two services (the table, then the
//! triggers), so deploy, rollback and delete are the facade's.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use updraft_core::{Manifest, SharedClock};
use updraft_metering::{Metering, PriceSheet};
use updraft_sandbox::{Backends, Sandbox, SandboxConfig, SecretSource};
use updraft_state::blob::{BLOB_BYTES_MAX_DEFAULT, BlobConfig, Blobs};
use updraft_state::kv::{KvConfig, KvStore, NatsKv};
use updraft_state::nats::{Cluster, ClusterConfig};
use updraft_state::queue::{EmbeddedQueues, NatsQueues, QueueStore};
use updraft_state::secrets::{SecretInfo, Secrets};
use updraft_state::usage::NatsUsage;
use updraft_state::{
    EmbeddedRegistry, LogBackend, LogStore, NatsLogs, NatsRegistry, Registry, Tenants,
};

use crate::calls::InvokerCaller;
use crate::error::PlatformError;
use crate::events::{Events, EventsPublisher, WatchedKv};
use crate::functions::{Deployed, Functions, Loaded};
use crate::invoker::Invoker;
use crate::logs::Logs;
use crate::quotas::DiskGate;
use crate::usage::Usage;

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
    /// Cluster mode: the NATS whose JetStream holds the shared state (the
    /// registry, and key-value stores unless `kv` names another). `None`:
    /// everything is embedded in the data dir.
    pub cluster: Option<ClusterConfig>,
    /// The key-value backend.
    pub kv: KvConfig,
    /// The blob backend.
    pub blobs: BlobConfig,
    /// Prices of the bills.
    pub prices: PriceSheet,
    /// Whether invocations are metered (usage records, bills, budgets).
    /// Off only to measure what metering costs.
    pub metering: bool,
    /// Threads of the background lane, where long invocations move
    /// ([`updraft_sandbox::FOREGROUND_CPU_MAX`]); 0 keeps one lane, only to
    /// measure what the lane buys.
    pub background_threads: usize,
    /// Refuse invocations past each function's adaptive concurrency limit
    /// (the sandbox's load shedding); off only to measure what it buys.
    pub shed_load: bool,
    /// Make fresh instances ahead of invocations with idle CPU (the
    /// sandbox's spares); off only to measure what they buy.
    pub spare_instances: bool,
    /// MiB of linear memory all instances may hold at once; `None`: no budget.
    pub memory_budget_mb: Option<u64>,
    /// WASI 0.2 components at least this big are compiled by Winch first
    /// and by Cranelift in the background; `None`: Cranelift only.
    pub tier_up_min_bytes: Option<u64>,
    /// How long raw usage records are kept.
    pub records_retention: Duration,
    /// How often what each tenant stores is sampled for its bill.
    pub storage_sample: Duration,
    /// The wall clock usage records are stamped with and metering reads its
    /// dates from (the system clock; tests set their own).
    pub clock: SharedClock,
    /// This node's name: in invocation statuses (which node ran it) and in
    /// `/healthz`. A new one each start unless set.
    pub node: String,
    /// Whether invocations are counted for `/metrics`; off only to measure
    /// what counting costs.
    pub metrics: bool,
    /// Spans: made at all, and sent to an OTLP collector.
    pub traces: crate::traces::TraceConfig,
}

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
            cluster: None,
            kv: KvConfig::default(),
            blobs: BlobConfig::default(),
            prices: PriceSheet::default(),
            metering: true,
            background_threads: updraft_sandbox::background_threads_default(),
            shed_load: true,
            spare_instances: true,
            memory_budget_mb: None,
            tier_up_min_bytes: Some(updraft_sandbox::TIER_UP_MIN_BYTES_DEFAULT),
            records_retention: updraft_metering::RECORDS_RETENTION_DEFAULT,
            storage_sample: STORAGE_SAMPLE_DEFAULT,
            clock: updraft_core::system_clock(),
            node: format!("node-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
            metrics: true,
            traces: crate::traces::TraceConfig::default(),
        }
    }
}

/// What the nodes of a cluster share.
struct Shared {
    registry: Arc<dyn Registry>,
    kv: Arc<dyn KvStore>,
    tenants: Tenants,
    queues: Arc<dyn QueueStore>,
    logs: LogBackend,
    /// Cluster mode: every node's usage records and the budgets.
    usage: Option<Arc<NatsUsage>>,
    /// Cluster mode, unless the config names a blob store: the cluster's.
    blobs: Option<Blobs>,
}

/// The registry, key-value stores, API keys, queues and logs: in the data
/// dir, or in cluster mode shared through NATS (one connection for all),
/// with the usage stream and, unless the config names a store, the blobs.
async fn open_shared(
    cluster: Option<&ClusterConfig>,
    kv: &KvConfig,
    blobs: (&BlobConfig, u64),
    data_dir: &std::path::Path,
    records_retention: Duration,
) -> Result<Shared, PlatformError> {
    let Some(cluster) = cluster else {
        let dir = data_dir.to_path_buf();
        let local = tokio::task::spawn_blocking(move || {
            Ok::<_, PlatformError>((
                EmbeddedRegistry::open(&dir)?,
                Tenants::open(&dir)?,
                EmbeddedQueues::open(&dir)?,
                LogStore::open(&dir)?,
            ))
        });
        let (local, kv) = tokio::join!(local, kv.open(data_dir));
        let (registry, tenants, queues, logs) = local.map_err(join_error)??;
        return Ok(Shared {
            registry: Arc::new(registry),
            kv: kv?,
            tenants,
            queues: Arc::new(queues),
            logs: LogBackend::Embedded(Arc::new(logs)),
            usage: None,
            blobs: None,
        });
    };
    let cluster = Cluster::connect(cluster).await?;
    let (registry, tenants, queues, logs, usage) = tokio::join!(
        NatsRegistry::open(&cluster),
        Tenants::open_nats(&cluster),
        NatsQueues::open(&cluster),
        NatsLogs::open(&cluster),
        NatsUsage::open(&cluster, records_retention)
    );
    let blobs = match blobs {
        // Containers every node shares, as key-value stores are.
        (BlobConfig::Local { dir: None }, max) => Some(Blobs::nats(
            cluster.clone(),
            &data_dir.join("scratch").join("blobs"),
            max,
        )?),
        _ => None,
    };
    let kv: Arc<dyn KvStore> = match kv {
        // Stores every node shares: a node's own disk would split them.
        KvConfig::Embedded { .. } => Arc::new(NatsKv::new(cluster)),
        other => other.open(data_dir).await?,
    };
    Ok(Shared {
        registry: Arc::new(registry?),
        kv,
        tenants: tenants?,
        queues: Arc::new(queues?),
        logs: LogBackend::Nats(Arc::new(logs?)),
        usage: Some(Arc::new(usage?)),
        blobs,
    })
}

/// Applies the registry's changes made by other nodes (and echoes of this
/// node's own, which change nothing) until the platform is gone.
async fn follow_registry(
    platform: std::sync::Weak<Platform>,
    mut changes: futures::stream::BoxStream<'static, updraft_state::RegistryChange>,
) {
    use futures::StreamExt as _;
    while let Some(mut change) = changes.next().await {
        loop {
            let Some(platform) = platform.upgrade() else {
                return;
            };
            match platform.functions.sync(&change).await {
                Ok((changed, removed)) => {
                    if !changed.is_empty() {
                        platform.events.serve(&changed);
                    }
                    if removed {
                        platform.events.refresh_kv_watchers();
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        "the registry changed, but reading the change failed ({}); reading it all again shortly",
                        updraft_core::error::chain(&e)
                    );
                    change = updraft_state::RegistryChange::All;
                }
            }
            drop(platform);
            tokio::time::sleep(REGISTRY_RETRY).await;
        }
    }
}

/// How long a node waits before reading the registry again after reading a
/// change failed (NATS away).
const REGISTRY_RETRY: Duration = Duration::from_millis(500);

/// The scheduler: its services, built over one data dir.
pub struct Platform {
    functions: Arc<Functions>,
    invoker: Arc<Invoker>,
    events: Arc<Events>,
    usage: Arc<Usage>,
    logs: Arc<Logs>,
    /// The tenants' API keys (the operator API's; see `operator`).
    pub(crate) tenants: Tenants,
    /// The tenants' secrets, sealed.
    secrets: Arc<Secrets>,
    /// Where deploy uploads are spooled ([`UPLOADS_SCRATCH_DIR`]).
    uploads_dir: PathBuf,
}

/// Where, under the data dir, deploy bodies are spooled while they arrive
/// (by the gateway), so none is held whole in memory; emptied at start, so
/// an upload a killed server left behind takes no disk.
pub const UPLOADS_SCRATCH_DIR: &str = "scratch/uploads";

/// Guests' reads of their tenant's secrets. Errors name the secret and
/// what to do, never a value.
struct SecretReader(Arc<Secrets>);

impl SecretSource for SecretReader {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move { self.0.get(tenant, name).await.map_err(|e| e.to_string()) })
    }
}

/// Removes what `dir` holds (orphans of a killed server) and makes it anew.
fn reset_dir(dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::create_dir_all(dir)
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
        sandbox_config.scratch_dir = config.data_dir.join("scratch").join("invocations");
        sandbox_config.instances_max = config.instances_max;
        sandbox_config.background_threads = config.background_threads;
        sandbox_config.shed_load = config.shed_load;
        sandbox_config.spare_instances = config.spare_instances;
        sandbox_config.tier_up_min_bytes = config.tier_up_min_bytes;
        sandbox_config.memory_budget_bytes = config
            .memory_budget_mb
            .map(|mb| usize::try_from(mb << 20).unwrap_or(usize::MAX));
        let sandbox = tokio::task::spawn_blocking(move || Sandbox::new(sandbox_config));
        let data_dir = config.data_dir.clone();
        let (kv_config, blob_config) = (config.kv.clone(), config.blobs.clone());
        let blob_bytes_max = config.blob_bytes_max;
        let (metered, prices) = (config.metering, config.prices);
        let (retention, clock) = (config.records_retention, config.clock.clone());
        // A cluster node's usage is a replica of the cluster's.
        let replica = config.cluster.is_some();
        let stores = tokio::task::spawn_blocking(move || {
            let metering = match (metered, replica) {
                (true, false) => Some(Arc::new(Metering::open_with(
                    &data_dir, prices, retention, clock,
                )?)),
                (true, true) => Some(Arc::new(Metering::open_replica(
                    &data_dir, prices, retention, clock,
                )?)),
                (false, _) => None,
            };
            // A cluster node's default blobs are the cluster's (below).
            let blobs = match (replica, &blob_config) {
                (true, BlobConfig::Local { dir: None }) => None,
                _ => Some(blob_config.open(&data_dir, blob_bytes_max)?),
            };
            Ok::<_, PlatformError>((blobs, metering))
        });
        let shared = open_shared(
            config.cluster.as_ref(),
            &kv_config,
            (&config.blobs, blob_bytes_max),
            &config.data_dir,
            config.records_retention,
        );
        let (sandbox, stores, shared) = tokio::join!(sandbox, stores, shared);
        let (blobs, metering) = stores.map_err(join_error)??;
        let Shared {
            registry,
            kv,
            tenants,
            queues,
            logs,
            usage: usage_log,
            blobs: shared_blobs,
        } = shared?;
        let blobs = Arc::new(
            blobs
                .or(shared_blobs)
                .ok_or_else(|| PlatformError::Task("no blob store was opened".into()))?,
        );
        if !matches!(config.blobs, BlobConfig::Local { .. }) {
            blobs.check().await?;
        }
        let sandbox = sandbox.map_err(join_error)??;
        let logs = Arc::new(Logs::start(logs).await?);
        let (usage, budget_alerts) =
            Usage::new(metering, usage_log, logs.clone(), config.node.into());
        let secrets = Arc::new(
            Secrets::open(kv.clone(), &config.data_dir, config.cluster.is_some())
                .map_err(|e| PlatformError::Task(Box::new(e)))?,
        );
        let kv_watchers = Arc::new(RwLock::default());
        let disk_gate = Arc::new(DiskGate::new(kv.clone(), blobs.clone()));
        blobs.set_gate(disk_gate.clone());
        let (inner_kv, blobs_sampled) = (kv.clone(), blobs.clone());
        let quotas_kv = kv.clone();
        let traces = Arc::new(
            crate::traces::Traces::new(&config.traces, config.clock.clone())
                .map_err(|e| PlatformError::Task(Box::new(e)))?,
        );
        // The services, innermost first. A guest's capabilities point back
        // up (a call to the invoker, a publish or a watched write to the
        // events service), weakly, so grants never keep the platform alive.
        let events = Arc::new_cyclic(|events_weak| {
            let invoker = Arc::new_cyclic(|invoker_weak| {
                let backends = Backends {
                    kv: Arc::new(WatchedKv {
                        inner: kv,
                        gate: disk_gate,
                        watchers: kv_watchers.clone(),
                        events: events_weak.clone(),
                    }),
                    blobs,
                    caller: Arc::new(InvokerCaller(invoker_weak.clone())),
                    publisher: Arc::new(EventsPublisher(events_weak.clone())),
                    secrets: Arc::new(SecretReader(secrets.clone())),
                };
                let functions = Functions::new(
                    sandbox.clone(),
                    registry,
                    backends,
                    logs.clone(),
                    usage.clone(),
                );
                Invoker::new(
                    functions,
                    sandbox,
                    usage.clone(),
                    logs.clone(),
                    config.clock,
                    quotas_kv,
                    (
                        Arc::new(crate::metrics::Metrics::new(config.metrics)),
                        traces,
                    ),
                )
            });
            Events::new(
                events_weak.clone(),
                queues,
                invoker,
                usage.clone(),
                logs.clone(),
                kv_watchers,
            )
        });
        let uploads_dir = config.data_dir.join(UPLOADS_SCRATCH_DIR);
        reset_dir(&uploads_dir).map_err(|e| {
            PlatformError::State(updraft_state::StateError::Storage(
                updraft_core::Failure::context(
                    format!("cannot empty the uploads dir {}", uploads_dir.display()),
                    e,
                ),
            ))
        })?;
        let platform = Arc::new(Platform {
            functions: events.functions().clone(),
            invoker: events.invoker().clone(),
            events,
            usage,
            logs,
            tenants,
            secrets,
            uploads_dir,
        });
        // Watch before listing, so no change falls between the two.
        let changes = platform.functions.registry().changes().await?;
        // Consumers, schedules, and async work accepted before a restart.
        let serving = platform.functions.load_all().await?;
        platform.events.serve(&serving);
        if let Some(changes) = changes {
            tokio::spawn(follow_registry(Arc::downgrade(&platform), changes));
        }
        platform.events.start_budget_alerts(budget_alerts);
        platform.usage.start_cluster().await?;
        if let Some(idle) = config.idle_unload {
            platform.functions.start_idle_unload(idle);
        }
        platform
            .usage
            .start_storage_samples(inner_kv, blobs_sampled, config.storage_sample);
        Ok(platform)
    }

    /// Registry, versions, routes, compiled code.
    pub fn functions(&self) -> &Arc<Functions> {
        &self.functions
    }

    /// Runs invocations.
    pub fn invoker(&self) -> &Arc<Invoker> {
        &self.invoker
    }

    /// Queues, topics, async invocations and triggers.
    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// Metering and budgets.
    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
    }

    /// `tenant`'s quota (default: none).
    pub async fn quota(&self, tenant: &str) -> Result<crate::TenantQuota, PlatformError> {
        self.invoker.quotas().get(tenant).await
    }

    /// Sets `tenant`'s quota; every node applies it within a second.
    pub async fn set_quota(
        &self,
        tenant: &str,
        quota: crate::TenantQuota,
    ) -> Result<(), PlatformError> {
        self.invoker.quotas().set(tenant, quota).await
    }

    /// Sets `tenant`'s secret `name`: the next invocation reads it.
    pub async fn secret_set(
        &self,
        tenant: &str,
        name: &str,
        value: &str,
    ) -> Result<(), PlatformError> {
        Ok(self.secrets.set(tenant, name, value).await?)
    }

    /// `tenant`'s secrets, by name only.
    pub async fn secret_list(&self, tenant: &str) -> Result<Vec<SecretInfo>, PlatformError> {
        Ok(self.secrets.list(tenant).await?)
    }

    /// Removes `tenant`'s secret `name`.
    pub async fn secret_delete(&self, tenant: &str, name: &str) -> Result<(), PlatformError> {
        Ok(self.secrets.delete(tenant, name).await?)
    }

    /// Where the gateway spools deploy bodies: private to this process's
    /// user, emptied at start.
    pub fn uploads_dir(&self) -> &std::path::Path {
        &self.uploads_dir
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        self.usage.node()
    }

    /// Function logs.
    pub fn logs(&self) -> &Arc<Logs> {
        &self.logs
    }

    /// Deploys a new version of `tenant`'s function (see
    /// [`Functions::deploy`]) and starts what it triggers on.
    pub async fn deploy(
        &self,
        tenant: &str,
        manifest: Manifest,
        wasm: Bytes,
        files: Option<Bytes>,
    ) -> Result<Deployed, PlatformError> {
        // Triggers on what does not exist are refused (the events service
        // knows what does), after the manifest's own checks.
        manifest.validate()?;
        self.events
            .check_triggers(tenant, &manifest.parsed_triggers()?)
            .await?;
        let deployed = self.functions.deploy(tenant, manifest, wasm, files).await?;
        self.events.serve(std::slice::from_ref(&deployed.loaded));
        Ok(deployed)
    }

    /// Moves `latest` back (to `version`, or to the one before).
    pub async fn rollback(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u64>,
    ) -> Result<Arc<Loaded>, PlatformError> {
        let loaded = self.functions.rollback(tenant, name, version).await?;
        self.events.serve(std::slice::from_ref(&loaded));
        Ok(loaded)
    }

    /// Removes a function, its versions, logs and unused artifacts; its
    /// dispatchers and timers stop at their next round.
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<(), PlatformError> {
        let deleted = self.functions.delete(tenant, name).await;
        if deleted.is_ok() {
            self.invoker.metrics().forget(tenant, name);
        }
        // Also after a failure midway: what serves may have changed.
        self.events.refresh_kv_watchers();
        deleted
    }

    /// The metrics as text: the counters, and the levels read now.
    pub async fn metrics_text(
        &self,
        format: crate::metrics::Format,
    ) -> Result<String, PlatformError> {
        let gauges = self.gauges().await?;
        self.invoker.metrics().encode(gauges, format).map_err(|e| {
            PlatformError::Task(format!("the metrics could not be written: {e}").into())
        })
    }

    /// What the metrics read at a scrape: every tenant's queues (tenants
    /// with a key or a function), budgets, the node's instances.
    async fn gauges(&self) -> Result<crate::metrics::Gauges, PlatformError> {
        let mut tenants = self.functions.tenants();
        tenants.extend(self.tenants.list(None).into_iter().map(|key| key.tenant));
        let mut queues = Vec::new();
        let mut async_queues = Vec::new();
        let mut queue_read_failures = 0;
        for tenant in tenants {
            // One tenant's unreadable store costs its gauges, not the scrape.
            let read = async {
                let (named, _) = self.events.channel_overview(&tenant).await?;
                let functions = self.events.function_queues(&tenant).await?;
                Ok::<_, PlatformError>((named, functions))
            };
            let (named, functions) = match read.await {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(
                        "/metrics: the queues of tenant {tenant} could not be read: {e}"
                    );
                    queue_read_failures += 1;
                    continue;
                }
            };
            queues.extend(named.into_iter().map(|q| crate::metrics::QueueGauge {
                tenant: tenant.clone(),
                queue: q.channel.name,
                depth: q.depth,
                in_flight: q.in_flight,
                oldest_age_ms: q.oldest_age_ms,
            }));
            async_queues.extend(functions.into_iter().map(|f| crate::metrics::AsyncGauge {
                tenant: tenant.clone(),
                function: f.function,
                depth: f.depth,
                oldest_age_ms: f.oldest_age_ms,
                dead_letters: f.dead_letters,
            }));
        }
        let metering = self.usage.metering();
        let (spares_made, spares_used) = self.invoker.spares_made_used();
        Ok(crate::metrics::Gauges {
            in_flight: u64::from(self.invoker.in_flight()),
            slots: u64::from(self.invoker.slots()),
            loaded: self.functions.loaded_count() as u64,
            queues,
            async_queues,
            budgets: metering.map(|m| m.budget_statuses()).unwrap_or_default(),
            usage_pending: metering.map(|m| m.pending_records()),
            queue_read_failures,
            spares_made,
            spares_used,
        })
    }

    /// Stops taking async work, lets the runs under way finish (at most
    /// [`crate::SHUTDOWN_RUNS_MAX`]), and writes out buffered logs and
    /// usage; call before the process exits.
    pub async fn shutdown(&self) {
        self.events.shutdown();
        self.events.finish_runs().await;
        self.logs.flush().await;
        self.usage.shutdown().await;
        let traces = self.invoker.traces().clone();
        let _ = tokio::task::spawn_blocking(move || traces.flush()).await;
    }
}
