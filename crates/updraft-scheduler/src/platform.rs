//! [`Platform`]: the registry, the sandbox and the in-memory table of loaded
//! functions and routes, kept consistent with each other.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use updraft_core::{Digest, FunctionKind, LogEntry, LogStream, Manifest, Route, VersionRecord};
use updraft_metering::{Meter, Sample, Usage};
use updraft_sandbox::{
    InvocationCtx, PrepareSpec, Prepared, Report, ReportHandle, ResponseBody, Sandbox,
    SandboxConfig,
};
use updraft_state::registry::NewVersion;
use updraft_state::{FunctionRecord, LogStore, Registry};

use crate::error::PlatformError;
use crate::logs::LogPipe;

/// Where and how big the platform is.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    pub data_dir: PathBuf,
    /// Instances that may run at once (pool slots); more requests wait.
    pub instances_max: u32,
}

impl PlatformConfig {
    pub fn new(data_dir: PathBuf) -> PlatformConfig {
        PlatformConfig {
            data_dir,
            instances_max: updraft_sandbox::SandboxConfig::new(PathBuf::new()).instances_max,
        }
    }
}

/// The version of a function that serves traffic (its `latest` alias).
pub struct Loaded {
    pub name: Arc<str>,
    pub version: VersionRecord,
    pub route: Option<Route>,
    pub prepared: Arc<Prepared>,
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
    pub usage: Usage,
}

pub struct Platform {
    sandbox: Arc<Sandbox>,
    registry: Registry,
    log_store: Arc<LogStore>,
    logs: LogPipe,
    meter: Meter,
    /// Loaded functions by name, and routes ordered most specific first.
    table: RwLock<Table>,
    /// One permit per instance slot, so bursts queue instead of failing.
    admission: Arc<Semaphore>,
    /// Serializes control-plane changes so registry and table move together.
    control: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Table {
    by_name: HashMap<Arc<str>, Arc<Loaded>>,
    routes: Vec<(Route, Arc<Loaded>)>,
}

impl Table {
    fn insert(&mut self, loaded: Arc<Loaded>) {
        self.remove(&loaded.name);
        if let Some(route) = &loaded.route {
            self.routes.push((route.clone(), loaded.clone()));
            self.routes
                .sort_by_key(|(route, _)| std::cmp::Reverse(route.specificity()));
        }
        self.by_name.insert(loaded.name.clone(), loaded);
    }

    fn remove(&mut self, name: &str) {
        self.by_name.remove(name);
        self.routes.retain(|(_, l)| &*l.name != name);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn join_error(e: tokio::task::JoinError) -> PlatformError {
    PlatformError::Prepare(updraft_sandbox::PrepareError::Internal(e.to_string()))
}

impl Platform {
    /// Opens the data dir and loads every deployed function (from the compile
    /// cache when possible).
    pub async fn open(config: PlatformConfig) -> Result<Arc<Platform>, PlatformError> {
        let data_dir = config.data_dir.clone();
        let (registry, log_store) = tokio::task::spawn_blocking(move || {
            Ok::<_, PlatformError>((Registry::open(&data_dir)?, LogStore::open(&data_dir)?))
        })
        .await
        .map_err(join_error)??;
        let mut sandbox_config = SandboxConfig::new(config.data_dir.join("compiled"));
        sandbox_config.instances_max = config.instances_max;
        let sandbox = Sandbox::new(sandbox_config)?;
        let log_store = Arc::new(log_store);
        let platform = Arc::new(Platform {
            admission: Arc::new(Semaphore::new(sandbox.instances_max() as usize)),
            sandbox,
            registry,
            logs: LogPipe::start(log_store.clone()),
            log_store,
            meter: Meter::default(),
            table: RwLock::new(Table::default()),
            control: tokio::sync::Mutex::new(()),
        });
        for (_, version) in platform.registry.list()? {
            let name = version.manifest.name.clone();
            match platform.load_version(version).await {
                Ok((loaded, _)) => platform.table_mut().insert(loaded),
                Err(e) => tracing::error!("function {name} could not be loaded: {e}"),
            }
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
    /// `kind` is what the binary must be (`None`: detect it).
    async fn prepare(
        &self,
        version: &VersionRecord,
        kind: Option<FunctionKind>,
        wasm: Option<Bytes>,
    ) -> Result<Arc<Prepared>, PlatformError> {
        let sandbox = self.sandbox.clone();
        let wasm = match wasm {
            Some(wasm) => wasm,
            None => Bytes::from(self.registry.load_wasm(&version.wasm_digest)?),
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
        let prepared = tokio::task::spawn_blocking(move || {
            sandbox.prepare(PrepareSpec {
                name: &name,
                wasm: &wasm,
                wasm_digest: digest,
                kind,
                limits,
                env,
            })
        })
        .await
        .map_err(join_error)??;
        Ok(Arc::new(prepared))
    }

    async fn load_version(
        &self,
        version: VersionRecord,
    ) -> Result<(Arc<Loaded>, bool), PlatformError> {
        let prepared = self.prepare(&version, Some(version.kind), None).await?;
        let compiled = prepared.loaded_from == updraft_sandbox::LoadedFrom::Compile;
        Ok((Arc::new(loaded_from(version, prepared)?), compiled))
    }

    /// Deploys a new version: validate, compile, store, then point `latest` at it.
    /// Nothing is stored unless every step succeeds.
    pub async fn deploy(&self, manifest: Manifest, wasm: Bytes) -> Result<Deployed, PlatformError> {
        let limits = manifest.validate()?;
        let route = manifest.parsed_route()?;
        let mut manifest = manifest;
        // `source` is where the CLI found the file; it is not part of the version.
        manifest.source = None;
        Sandbox::check_bytes(&wasm)?;
        let _guard = self.control.lock().await;
        self.registry.check_route(&manifest.name, route.as_ref())?;
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
            .prepare(&probe, manifest.kind, Some(wasm.clone()))
            .await?;
        let stored = wasm.clone();
        let digest = wasm_digest;
        let (_, version) = tokio::task::block_in_place(|| {
            self.registry.store_wasm(&digest, &stored)?;
            self.registry.deploy(NewVersion {
                manifest,
                wasm_digest,
                wasm_bytes: wasm.len() as u64,
                kind: prepared.kind,
                limits,
            })
        })?;
        let compiled = prepared.loaded_from == updraft_sandbox::LoadedFrom::Compile;
        let loaded = Arc::new(loaded_from(version, prepared)?);
        self.table_mut().insert(loaded.clone());
        self.platform_log(
            &loaded.name,
            &format!(
                "deployed version {} ({}, {})",
                loaded.version.version, loaded.version.kind, loaded.version.digest
            ),
        );
        Ok(Deployed { loaded, compiled })
    }

    /// Every function with its serving version.
    pub fn list(&self) -> Result<Vec<(FunctionRecord, VersionRecord)>, PlatformError> {
        Ok(self.registry.list()?)
    }

    pub fn details(&self, name: &str) -> Result<FunctionDetails, PlatformError> {
        let (record, versions) = self.registry.get(name)?;
        Ok(FunctionDetails {
            record,
            versions,
            loaded: self.get(name),
            usage: self.meter.usage(name),
        })
    }

    /// Moves `latest` back (to `version`, or to the one before).
    pub async fn rollback(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Arc<Loaded>, PlatformError> {
        let _guard = self.control.lock().await;
        let (record, _) = self.registry.get(name)?;
        let (_, target) = tokio::task::block_in_place(|| self.registry.rollback(name, version))?;
        match self.load_version(target).await {
            Ok((loaded, _)) => {
                self.table_mut().insert(loaded.clone());
                self.platform_log(
                    &loaded.name,
                    &format!("rolled back: latest -> version {}", loaded.version.version),
                );
                Ok(loaded)
            }
            Err(e) => {
                // Put the alias back so the registry and what serves agree.
                if let Some(previous) = record.latest() {
                    let _ = self.registry.rollback(name, Some(previous));
                }
                Err(e)
            }
        }
    }

    /// Removes a function, its versions, logs and unused artifacts.
    pub async fn delete(&self, name: &str) -> Result<(), PlatformError> {
        let _guard = self.control.lock().await;
        let orphans = tokio::task::block_in_place(|| self.registry.delete(name))?;
        self.table_mut().remove(name);
        for digest in orphans {
            self.sandbox.evict(&digest);
        }
        self.meter.forget(name);
        tokio::task::block_in_place(|| self.log_store.delete_function(name))?;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Arc<Loaded>> {
        self.table().by_name.get(name).cloned()
    }

    /// The function serving `path`: the most specific matching route.
    pub fn route(&self, path: &str) -> Option<Arc<Loaded>> {
        self.table()
            .routes
            .iter()
            .find(|(route, _)| route.matches(path))
            .map(|(_, loaded)| loaded.clone())
    }

    /// Functions compiled by this process (the rest came from the cache).
    pub fn compiles(&self) -> u64 {
        self.sandbox.compiles()
    }

    pub fn function_count(&self) -> usize {
        self.table().by_name.len()
    }

    async fn admit(&self, timeout_ms: u64) -> Result<OwnedSemaphorePermit, PlatformError> {
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

    /// Invokes an http function. The response comes back as soon as the guest
    /// sets it; logs and usage are recorded when the guest finishes.
    pub async fn invoke_http<B>(
        self: &Arc<Self>,
        loaded: &Arc<Loaded>,
        request: http::Request<B>,
    ) -> (String, Result<http::Response<ResponseBody>, PlatformError>)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let invocation_id = uuid::Uuid::now_v7().to_string();
        let permit = match self.admit(loaded.version.limits.timeout_ms).await {
            Ok(permit) => permit,
            Err(e) => return (invocation_id, Err(e)),
        };
        let ctx = InvocationCtx {
            invocation_id: invocation_id.clone(),
        };
        let invocation = self
            .sandbox
            .invoke_http(&loaded.prepared, request, ctx)
            .await;
        let this = self.clone();
        let name = loaded.name.clone();
        match invocation.report {
            ReportHandle::Ready(report) => {
                drop(permit);
                self.record(&name, &report);
            }
            pending => {
                tokio::spawn(async move {
                    if let Some(report) = pending.wait().await {
                        this.record(&name, &report);
                    }
                    drop(permit);
                });
            }
        }
        (
            invocation_id,
            invocation.response.map_err(PlatformError::from),
        )
    }

    /// Invokes a command function with `stdin`; returns its stdout.
    pub async fn invoke_command(
        &self,
        loaded: &Arc<Loaded>,
        stdin: Bytes,
    ) -> (String, Result<Bytes, PlatformError>) {
        let invocation_id = uuid::Uuid::now_v7().to_string();
        let _permit = match self.admit(loaded.version.limits.timeout_ms).await {
            Ok(permit) => permit,
            Err(e) => return (invocation_id, Err(e)),
        };
        let ctx = InvocationCtx {
            invocation_id: invocation_id.clone(),
        };
        let output = self
            .sandbox
            .invoke_command(&loaded.prepared, stdin, ctx)
            .await;
        self.record(&loaded.name, &output.report);
        (invocation_id, output.stdout.map_err(PlatformError::from))
    }

    fn record(&self, name: &Arc<str>, report: &Report) {
        let ts = now_ms();
        for (stream, line) in &report.logs {
            self.logs.push(
                name,
                LogEntry::new(ts, &report.invocation_id, *stream, line),
            );
        }
        self.meter.record(
            name,
            Sample {
                duration: report.duration,
                ok: report.outcome.is_ok(),
                memory_peak_bytes: report.memory_peak_bytes,
            },
        );
    }

    fn platform_log(&self, name: &Arc<str>, message: &str) {
        self.logs.push(
            name,
            LogEntry::new(now_ms(), "-", LogStream::Platform, message),
        );
    }

    /// The last `n` log entries of a function.
    pub async fn logs_tail(&self, name: &str, n: usize) -> Result<Vec<LogEntry>, PlatformError> {
        self.registry.get(name)?;
        self.logs.flush().await;
        Ok(tokio::task::block_in_place(|| {
            self.log_store.tail(name, n)
        })?)
    }

    /// Every log line from now on, of every function.
    pub fn follow_logs(&self) -> broadcast::Receiver<(Arc<str>, LogEntry)> {
        self.logs.subscribe()
    }

    /// Writes out buffered logs; call before the process exits.
    pub async fn shutdown(&self) {
        self.logs.flush().await;
    }
}

fn loaded_from(version: VersionRecord, prepared: Arc<Prepared>) -> Result<Loaded, PlatformError> {
    let route = version.manifest.parsed_route()?;
    Ok(Loaded {
        name: Arc::from(version.manifest.name.as_str()),
        version,
        route,
        prepared,
    })
}
