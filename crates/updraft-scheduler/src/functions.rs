//! [`Functions`], the control plane: the registry (functions, versions,
//! aliases, routes), the sandbox's compiled code, and the in-memory table of
//! serving versions and routes, kept consistent with each other. Deploy,
//! rollback, delete, prepare, scale to zero, and tier-up: a big component
//! compiled by Winch at its deploy serves until Cranelift's code, compiled
//! in the background, replaces it.
//!
//! It knows nothing of triggers: the facade ([`crate::Platform`]) tells the
//! events service what a change serves. In cluster mode the registry is
//! shared and this is where a node learns of another's deploy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, SemaphorePermit};
use updraft_core::{
    Digest, EventTrigger, FunctionKind, LogEntry, Manifest, ManifestError, Route, VersionRecord,
    function_key,
};
use updraft_metering::Aggregate;
use updraft_sandbox::{
    Backends, FilesSpec, Grants, InitSpec, PrepareSpec, Prepared, Sandbox, Tier, Tiering,
};
use updraft_state::registry::NewVersion;
use updraft_state::{FunctionRecord, Registry, RegistryChange};

use crate::error::PlatformError;
use crate::logs::Logs;
use crate::now_ms;
use crate::usage::Usage;

/// Deploy compiles running at once on a node: one compile already uses
/// every core, so more only slow each other down.
const COMPILES_AT_ONCE: usize = 1;
/// Deploy compiles of one tenant at once: its burst waits on itself.
const TENANT_COMPILES_AT_ONCE: usize = 1;
/// Background Cranelift compiles (tier-ups) at once on a node: each already
/// uses every core, and serving requests comes first.
const TIER_UPS_AT_ONCE: usize = 1;

/// The version of a function that serves traffic (its `latest` alias).
pub struct Loaded {
    pub tenant: Arc<str>,
    pub name: Arc<str>,
    /// `tenant/name`: the function's key in the registry, logs and meter.
    pub key: Arc<str>,
    pub version: VersionRecord,
    /// Its version number as text, for spans' `faas.version`.
    pub version_label: Arc<str>,
    pub route: Option<Route>,
    /// The manifest's triggers, parsed once (dispatchers and timers ask on
    /// every round).
    pub triggers: Vec<EventTrigger>,
    /// Compiled code and `InstancePre`; `None` while scaled to zero.
    prepared: RwLock<Option<Arc<Prepared>>>,
    /// Serializes reloading so a burst after idle maps the code once.
    loading: tokio::sync::Mutex<()>,
    /// Whether Cranelift's code is being compiled for it in the background.
    tiering_up: std::sync::atomic::AtomicBool,
    /// Its `max_concurrency` slots, when it has one (per node).
    pub(crate) concurrency: Option<Arc<tokio::sync::Semaphore>>,
    last_used_ms: AtomicU64,
    /// Its counters in the metrics, found on its first invocation.
    pub(crate) stats: std::sync::OnceLock<Arc<crate::metrics::FunctionStats>>,
}

impl Loaded {
    fn new(
        tenant: &str,
        version: VersionRecord,
        prepared: Option<Arc<Prepared>>,
    ) -> Result<Loaded, PlatformError> {
        let route = version.manifest.stored_route()?;
        let triggers = version.manifest.parsed_triggers()?;
        let concurrency = version
            .limits
            .max_concurrency
            .map(|max| Arc::new(tokio::sync::Semaphore::new(max as usize)));
        Ok(Loaded {
            tenant: Arc::from(tenant),
            name: Arc::from(version.manifest.name.as_str()),
            key: Arc::from(function_key(tenant, &version.manifest.name)),
            version_label: Arc::from(version.version.to_string()),
            version,
            route,
            triggers,
            prepared: RwLock::new(prepared),
            loading: tokio::sync::Mutex::new(()),
            tiering_up: std::sync::atomic::AtomicBool::new(false),
            concurrency,
            last_used_ms: AtomicU64::new(now_ms()),
            stats: std::sync::OnceLock::new(),
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
    /// The code the deploy made or loaded (Winch's, for a big component,
    /// until the tier-up replaces it in `loaded`).
    pub prepared: Arc<Prepared>,
}

/// Everything `info` shows about one function.
pub struct FunctionDetails {
    pub record: FunctionRecord,
    pub versions: Vec<VersionRecord>,
    pub loaded: Option<Arc<Loaded>>,
    /// Everything this function has used, from the usage records.
    pub usage: Aggregate,
}

/// The functions service.
pub struct Functions {
    sandbox: Arc<Sandbox>,
    registry: Arc<dyn Registry>,
    /// What every function's capabilities are served by; each version's
    /// grants are drawn from them when it is prepared.
    backends: Backends,
    logs: Arc<Logs>,
    usage: Arc<Usage>,
    /// Loaded functions by key, and routes ordered most specific first.
    table: RwLock<Table>,
    /// Serializes control-plane changes so registry and table move together.
    control: tokio::sync::Mutex<()>,
    /// Compiles of deploys: one at a time on the node (each already uses
    /// every core), and one at a time per tenant, so a tenant's burst of
    /// deploys waits on itself and another tenant's deploy waits for at
    /// most the one compile under way.
    compiles: tokio::sync::Semaphore,
    tenant_compiles: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Background Cranelift compiles (see [`TIER_UPS_AT_ONCE`]).
    tier_ups: tokio::sync::Semaphore,
    /// Itself, for the tasks it spawns.
    me: Weak<Functions>,
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

fn join_error(e: tokio::task::JoinError) -> PlatformError {
    PlatformError::Task(Box::new(e))
}

impl Functions {
    pub(crate) fn new(
        sandbox: Arc<Sandbox>,
        registry: Arc<dyn Registry>,
        backends: Backends,
        logs: Arc<Logs>,
        usage: Arc<Usage>,
    ) -> Arc<Functions> {
        Arc::new_cyclic(|me| Functions {
            sandbox,
            registry,
            backends,
            logs,
            usage,
            table: RwLock::new(Table::default()),
            control: tokio::sync::Mutex::new(()),
            compiles: tokio::sync::Semaphore::new(COMPILES_AT_ONCE),
            tenant_compiles: Mutex::default(),
            tier_ups: tokio::sync::Semaphore::new(TIER_UPS_AT_ONCE),
            me: me.clone(),
        })
    }

    /// Serves every deployed function, scaled to zero: the first request
    /// maps the compiled code from the cache, so start-up time does not
    /// grow with the number of functions. Artifacts missing from the cache
    /// (a new engine) are compiled in the background right away. Returns
    /// what now serves.
    pub(crate) async fn load_all(self: &Arc<Self>) -> Result<Vec<Arc<Loaded>>, PlatformError> {
        let mut all = Vec::new();
        for (record, version) in self.registry.list(None).await? {
            let loaded = Arc::new(Loaded::new(&record.tenant, version, None)?);
            self.table_mut().insert(loaded.clone());
            all.push(loaded);
        }
        self.compile_missing(all.clone());
        Ok(all)
    }

    /// Compiles, in the background, what is not in the compile cache yet
    /// (a new engine; another node's deploy), ahead of its first request.
    fn compile_missing(self: &Arc<Self>, loaded: Vec<Arc<Loaded>>) {
        let missing: Vec<_> = loaded
            .into_iter()
            .filter(|l| !self.sandbox.is_cached(&l.version.wasm_digest))
            .collect();
        if missing.is_empty() {
            return;
        }
        let functions = self.clone();
        tokio::spawn(async move {
            for loaded in missing {
                if let Err(e) = functions.ensure_prepared(&loaded).await {
                    tracing::error!(
                        "function {} could not be compiled: {}",
                        loaded.key,
                        updraft_core::error::chain(&e)
                    );
                }
            }
        });
    }

    /// Brings the table in line with a change of the registry made
    /// elsewhere (another node's deploy, rollback or delete). Returns what
    /// now serves differently, and whether anything stopped serving.
    pub(crate) async fn sync(
        self: &Arc<Self>,
        change: &RegistryChange,
    ) -> Result<(Vec<Arc<Loaded>>, bool), PlatformError> {
        let tenant = match change {
            RegistryChange::Tenant(tenant) => Some(tenant.as_str()),
            RegistryChange::All => None,
        };
        let _guard = self.control.lock().await;
        let current = self.registry.list(tenant).await?;
        let mut changed = Vec::new();
        let mut serving = std::collections::HashSet::new();
        for (record, version) in current {
            let key = record.key();
            let same = self.table().by_key.get(key.as_str()).is_some_and(|l| {
                l.version.version == version.version && l.version.digest == version.digest
            });
            serving.insert(key);
            if same {
                continue;
            }
            let loaded = Arc::new(Loaded::new(&record.tenant, version, None)?);
            self.table_mut().insert(loaded.clone());
            changed.push(loaded);
        }
        let gone: Vec<Arc<str>> = self
            .table()
            .by_key
            .values()
            .filter(|l| tenant.is_none_or(|t| *l.tenant == *t) && !serving.contains(&*l.key))
            .map(|l| l.key.clone())
            .collect();
        for key in &gone {
            self.table_mut().remove(key);
            tracing::info!("{key}: deleted on another node");
        }
        for loaded in &changed {
            tracing::info!(
                "{}: version {} serves, deployed on another node",
                loaded.key,
                loaded.version.version
            );
        }
        self.compile_missing(changed.clone());
        Ok((changed, !gone.is_empty()))
    }

    /// Drops the compiled code of functions unused for `idle` (scale to
    /// zero), until the service is gone.
    pub(crate) fn start_idle_unload(self: &Arc<Self>, idle: Duration) {
        tokio::spawn(unload_idle(Arc::downgrade(self), idle));
    }

    /// The registry this node serves from.
    pub(crate) fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// The backends functions' capabilities are served by (the operator's
    /// API uses the same ones, so its writes are watched alike).
    pub(crate) fn backends(&self) -> &Backends {
        &self.backends
    }

    fn table_mut(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Compiles or loads one version off the async threads; a big
    /// component may get Winch's code first (see [`Self::tier_up`]).
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
        self.prepare_with(tenant, version, kind, wasm, None, Tiering::Baseline)
            .await
    }

    /// [`Self::prepare`], with the files bundle when it was just uploaded
    /// (otherwise it is read from the registry if this node has not
    /// unpacked it yet), and whether Winch's code may serve or Cranelift
    /// compiles in the background (`tiering`).
    async fn prepare_with(
        &self,
        tenant: &str,
        version: &VersionRecord,
        kind: Option<FunctionKind>,
        wasm: Option<Bytes>,
        files: Option<Bytes>,
        tiering: Tiering,
    ) -> Result<Arc<Prepared>, PlatformError> {
        let sandbox = self.sandbox.clone();
        let files = match version.manifest.files_digest {
            None => None,
            Some(digest) if sandbox.has_files(&digest) => Some(FilesSpec {
                digest,
                bundle: None,
            }),
            Some(digest) => Some(FilesSpec {
                digest,
                bundle: Some(match files {
                    Some(bundle) => bundle,
                    None => self.registry.load_wasm(&digest).await?,
                }),
            }),
        };
        // Read the Wasm only if it must be compiled.
        let cached = sandbox.is_cached(&version.wasm_digest)
            || (tiering == Tiering::Baseline && sandbox.has_baseline(&version.wasm_digest));
        let wasm = match wasm {
            Some(wasm) => Some(wasm),
            None if !cached => Some(self.registry.load_wasm(&version.wasm_digest).await?),
            None => None,
        };
        let name = version.manifest.name.clone();
        let digest = version.wasm_digest;
        let limits = version.limits;
        let env = version
            .manifest
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let args = version.manifest.args.clone();
        let argv0 = version.manifest.argv0.clone();
        let files_writable = version.manifest.files_writable == Some(true);
        let tmp_mb = version.manifest.tmp_mb.unwrap_or(0);
        let grants = Grants::for_function(tenant, &version.manifest, &self.backends);
        let prepared = tokio::task::spawn_blocking(move || {
            let source = || match &wasm {
                Some(bytes) => Ok(bytes.clone()),
                None => Err(format!(
                    "the compiled code of wasm {digest} left the cache while it was loaded; retry"
                )),
            };
            sandbox.prepare(PrepareSpec {
                name: &name,
                wasm: &source,
                wasm_digest: digest,
                kind,
                limits,
                env,
                args,
                argv0,
                files,
                files_writable,
                tmp_mb,
                grants,
                tiering,
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
        // Only what serves is tiered up: a replaced version's last
        // invocations finish on the code they have.
        let serving = self
            .table()
            .by_key
            .get(&loaded.key)
            .filter(|serving| std::ptr::eq(serving.as_ref(), loaded))
            .cloned();
        if let Some(serving) = serving {
            self.tier_up(&serving, None);
        }
        Ok(prepared)
    }

    /// If `loaded` serves Winch's code, compiles it with Cranelift in the
    /// background and swaps the result in: invocations under way finish on
    /// the old code, the next ones start on the new. `wasm` is the upload,
    /// if at hand (otherwise it is read from the registry). If the compile
    /// fails, Winch's code keeps serving, and the next load tries again.
    fn tier_up(&self, loaded: &Arc<Loaded>, wasm: Option<Bytes>) {
        let baseline = loaded
            .prepared()
            .is_some_and(|prepared| prepared.tier == Tier::Baseline);
        if !baseline || loaded.tiering_up.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(functions) = self.me.upgrade() else {
            return;
        };
        let loaded = loaded.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let compiled = match functions.tier_ups.acquire().await {
                Ok(_slot) => {
                    functions
                        .prepare_with(
                            &loaded.tenant,
                            &loaded.version,
                            Some(loaded.version.kind),
                            wasm,
                            None,
                            Tiering::Up,
                        )
                        .await
                }
                Err(_) => return,
            };
            loaded.tiering_up.store(false, Ordering::Release);
            match compiled {
                Ok(optimized) => {
                    // Scaled to zero meanwhile: the next load maps Cranelift's artifact.
                    if loaded.prepared().is_some() {
                        loaded.set_prepared(Some(optimized));
                    }
                    functions
                        .sandbox
                        .evict_baseline(&loaded.version.wasm_digest);
                    functions.logs.platform(
                        &loaded.key,
                        &format!(
                            "version {}: optimized code serves from now on (compiled by Cranelift in {} ms)",
                            loaded.version.version,
                            started.elapsed().as_millis()
                        ),
                    );
                    functions.evict_if_deleted(&loaded).await;
                }
                Err(e) => {
                    let reason = updraft_core::error::chain(&e);
                    tracing::error!(
                        "{}: compiling optimized code failed, Winch's keeps serving: {reason}",
                        loaded.key
                    );
                    // The function's author sees why it stays slower.
                    functions.logs.platform(
                        &loaded.key,
                        &format!(
                            "version {}: compiling optimized code failed, Winch's code keeps serving until the next load: {reason}",
                            loaded.version.version
                        ),
                    );
                }
            }
        });
    }

    /// Removes the artifacts of a version whose function was deleted while
    /// its optimized code was compiled, unless another function serves the
    /// same Wasm.
    async fn evict_if_deleted(&self, loaded: &Loaded) {
        let _guard = self.control.lock().await;
        let digest = loaded.version.wasm_digest;
        let deleted = self.get(&loaded.tenant, &loaded.name).is_none();
        let shared = self
            .table()
            .by_key
            .values()
            .any(|other| other.version.wasm_digest == digest);
        if deleted && !shared {
            self.sandbox.evict(&digest);
        }
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
        let loaded = Arc::new(Loaded::new(tenant, version, Some(prepared))?);
        self.tier_up(&loaded, None);
        Ok(loaded)
    }

    /// Deploys a new version of `tenant`'s function: validate, compile,
    /// store, then point `latest` at it. Nothing is stored unless every step
    /// succeeds. Its triggers are the facade's to check.
    pub(crate) async fn deploy(
        &self,
        tenant: &str,
        manifest: Manifest,
        wasm: Bytes,
        files: Option<Bytes>,
    ) -> Result<Deployed, PlatformError> {
        let limits = manifest.validate()?;
        let route = manifest.parsed_route()?;
        let mut manifest = manifest;
        // `source` is where the CLI found the file; it is not part of the version.
        manifest.source = None;
        Sandbox::check_bytes(&wasm)?;
        manifest.files_digest = match (&files, manifest.files.is_empty()) {
            (None, true) => None,
            (Some(bundle), false) => {
                updraft_core::files::check_bundle(bundle)
                    .map_err(|e| PlatformError::Manifest(ManifestError::Files(e.to_string())))?;
                Some(Digest::of(bundle))
            }
            (None, false) => {
                return Err(PlatformError::Manifest(ManifestError::Files(
                    "the manifest lists files but no bundle was uploaded: deploy with `updraft deploy`, which packs them, or send a `files` part (a tar archive)".into(),
                )));
            }
            (Some(_), true) => {
                return Err(PlatformError::Manifest(ManifestError::Files(
                    "a files bundle was uploaded but the manifest lists no files: add `files = [{ source = \"…\", destination = \"/\" }]`".into(),
                )));
            }
        };
        // Checked before the compile (fail fast) and again under the lock.
        let key = function_key(tenant, &manifest.name);
        self.registry.check_route(&key, route.as_ref()).await?;
        if let (Some(digest), Some(bundle)) = (manifest.files_digest, &files) {
            // Stored first: a version never names a bundle that is not there.
            self.registry.store_wasm(&digest, bundle.clone()).await?;
        }
        let (wasm, wasm_digest, prepared) = {
            let _slots = self.compile_slots(tenant).await?;
            // Pre-initialised first: the snapshot is the version's Wasm.
            let wasm = match manifest.preinitialize {
                Some(true) => self.preinitialize(&manifest, limits, wasm).await?,
                _ => wasm,
            };
            // Hashed in the compile slot: a big upload (mapped from its
            // spooled file, see the gateway) is read into the page cache
            // one deploy at a time, not all of a burst's at once.
            let wasm_digest = Digest::of(&wasm);
            // Prepare first with the kind the user stated (or none), then
            // record the detected kind in the version.
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
                .prepare_with(
                    tenant,
                    &probe,
                    manifest.kind,
                    Some(wasm.clone()),
                    files.clone(),
                    Tiering::Baseline,
                )
                .await?;
            (wasm, wasm_digest, prepared)
        };
        let _guard = self.control.lock().await;
        self.registry.check_route(&key, route.as_ref()).await?;
        self.registry.store_wasm(&wasm_digest, wasm.clone()).await?;
        let (_, version) = self
            .registry
            .deploy(
                tenant,
                NewVersion {
                    manifest,
                    wasm_digest,
                    wasm_bytes: wasm.len() as u64,
                    kind: prepared.kind,
                    limits,
                },
            )
            .await?;
        let compiled = prepared.loaded_from == updraft_sandbox::LoadedFrom::Compile;
        let loaded = Arc::new(Loaded::new(tenant, version, Some(prepared.clone()))?);
        self.table_mut().insert(loaded.clone());
        self.logs.platform(
            &loaded.key,
            &format!(
                "deployed version {} ({}, {})",
                loaded.version.version, loaded.version.kind, loaded.version.digest
            ),
        );
        self.tier_up(&loaded, Some(wasm));
        Ok(Deployed {
            loaded,
            compiled,
            prepared,
        })
    }

    /// Runs the component's initialisation and returns the snapshot of the
    /// state it left (`preinitialize = true`).
    async fn preinitialize(
        &self,
        manifest: &Manifest,
        limits: updraft_core::Limits,
        wasm: Bytes,
    ) -> Result<Bytes, PlatformError> {
        let sandbox = self.sandbox.clone();
        let spec = InitSpec {
            name: manifest.name.clone(),
            env: manifest
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            args: manifest.args.clone(),
            argv0: manifest.argv0.clone(),
            limits,
        };
        let snapshot = tokio::task::spawn_blocking(move || sandbox.preinitialize(&wasm, spec))
            .await
            .map_err(join_error)??;
        Ok(Bytes::from(snapshot))
    }

    /// The tenant's compile slot, then the node's (see `compiles`).
    async fn compile_slots(
        &self,
        tenant: &str,
    ) -> Result<(SemaphorePermit<'_>, OwnedSemaphorePermit), PlatformError> {
        let mine = self
            .tenant_compiles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(TENANT_COMPILES_AT_ONCE)))
            .clone();
        let closed = |_| PlatformError::Task("the compile queue was closed".into());
        let mine = mine.acquire_owned().await.map_err(closed)?;
        let node = self.compiles.acquire().await.map_err(closed)?;
        Ok((node, mine))
    }

    /// Stores listed by `tenant`'s deployed functions, sorted.
    pub fn kv_store_names(&self, tenant: &str) -> Vec<String> {
        self.names_in_use(tenant, |manifest| &manifest.key_value_stores)
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

    /// Every loaded function.
    pub(crate) fn loaded_all(&self) -> Vec<Arc<Loaded>> {
        self.table().by_key.values().cloned().collect()
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

    /// `Ok` if the tenant has this function.
    pub fn require(&self, tenant: &str, name: &str) -> Result<(), PlatformError> {
        match self.get(tenant, name) {
            Some(_) => Ok(()),
            None => Err(updraft_state::StateError::FunctionNotFound(name.to_string()).into()),
        }
    }

    pub async fn list(
        &self,
        tenant: &str,
    ) -> Result<Vec<(FunctionRecord, VersionRecord)>, PlatformError> {
        Ok(self.registry.list(Some(tenant)).await?)
    }

    pub async fn details(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<FunctionDetails, PlatformError> {
        let key = function_key(tenant, name);
        let (record, versions) = self.registry.get(&key).await?;
        self.usage.catch_up().await?;
        Ok(FunctionDetails {
            record,
            versions,
            loaded: self.get(tenant, name),
            usage: match self.usage.metering() {
                Some(metering) => metering.function_usage(tenant, name)?,
                None => Aggregate::default(),
            },
        })
    }

    /// Moves `latest` back (to `version`, or to the one before).
    pub(crate) async fn rollback(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u64>,
    ) -> Result<Arc<Loaded>, PlatformError> {
        let _guard = self.control.lock().await;
        let key = function_key(tenant, name);
        let (record, _) = self.registry.get(&key).await?;
        let (_, target) = self.registry.rollback(&key, version).await?;
        match self.load_version(tenant, target).await {
            Ok(loaded) => {
                self.table_mut().insert(loaded.clone());
                self.logs.platform(
                    &loaded.key,
                    &format!("rolled back: latest -> version {}", loaded.version.version),
                );
                Ok(loaded)
            }
            Err(e) => {
                // Put the alias back so the registry and what serves agree.
                if let Some(previous) = record.latest() {
                    let _ = self.registry.rollback(&key, Some(previous)).await;
                }
                Err(e)
            }
        }
    }

    /// Removes a function, its versions, logs and unused artifacts.
    pub(crate) async fn delete(&self, tenant: &str, name: &str) -> Result<(), PlatformError> {
        let _guard = self.control.lock().await;
        let key = function_key(tenant, name);
        let orphans = self.registry.delete(&key).await?;
        self.table_mut().remove(&key);
        for digest in orphans {
            self.sandbox.evict(&digest);
        }
        self.logs.delete_function(&key).await
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

    /// Whether any function of `tenant` has a route: a host naming a
    /// tenant without one is answered as unknown.
    pub fn has_routes(&self, tenant: &str) -> bool {
        self.table()
            .routes
            .iter()
            .any(|(_, loaded)| &*loaded.tenant == tenant)
    }

    /// Functions compiled by this process (the rest came from the cache).
    pub fn compiles(&self) -> u64 {
        self.sandbox.compiles()
    }

    pub fn function_count(&self) -> usize {
        self.table().by_key.len()
    }

    /// Functions whose compiled code is in memory now.
    pub fn loaded_count(&self) -> usize {
        self.table()
            .by_key
            .values()
            .filter(|loaded| loaded.prepared().is_some())
            .count()
    }

    /// The tenants that have functions.
    pub fn tenants(&self) -> std::collections::BTreeSet<String> {
        self.table()
            .by_key
            .values()
            .map(|loaded| loaded.tenant.to_string())
            .collect()
    }

    /// The last `n` log entries of a function.
    pub async fn logs_tail(
        &self,
        tenant: &str,
        name: &str,
        n: usize,
    ) -> Result<Vec<LogEntry>, PlatformError> {
        let key = function_key(tenant, name);
        self.registry.get(&key).await?;
        self.logs.tail(&key, n).await
    }
}

/// Every tenth of the idle time, drops the compiled code of functions not
/// used for `idle` (scale to zero). Stops when the platform is gone.
async fn unload_idle(functions: std::sync::Weak<Functions>, idle: Duration) {
    let period = (idle / 10).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(functions) = functions.upgrade() else {
            return;
        };
        let cutoff = now_ms().saturating_sub(idle.as_millis() as u64);
        let loaded = functions.loaded_all();
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
