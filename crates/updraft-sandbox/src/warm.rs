//! Instance reuse, for http functions that opt in with `instance_reuse_max`:
//! instances kept between requests of the same version (like Lambda's warm
//! environments), each serving at most `instance_reuse_max` requests.
//!
//! Spare instances, for the others: instances of a hot function made ahead
//! of its next invocation ([`crate::Sandbox::replenish`]), each serving one
//! invocation and never another, so a fresh instance costs the request
//! nothing but taking it.
//!
//! Idle warm and spare instances hold pool slots, so their number is capped
//! process-wide by a [`WarmBudget`]; the pool has that many slots on top of
//! the `instances_max` that may run at once.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use wasmtime::Store;
use wasmtime::component::Instance;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyIndices};

use crate::calls::{Handler, HandlerIndices};
use crate::host::Host;
use crate::invoke::Pipes;

/// An instance and the exports looked up in it so far: an instance serves
/// http requests and direct calls alike, each export found once.
pub(crate) struct Exports {
    pub(crate) instance: Instance,
    proxy: Option<Proxy>,
    handler: Option<Handler>,
}

impl Exports {
    pub(crate) fn new(instance: Instance) -> Exports {
        Exports {
            instance,
            proxy: None,
            handler: None,
        }
    }

    pub(crate) fn proxy(
        &mut self,
        store: &mut Store<Host>,
        indices: &ProxyIndices,
    ) -> wasmtime::Result<&Proxy> {
        let proxy = match self.proxy.take() {
            Some(proxy) => proxy,
            None => indices.load(store, &self.instance)?,
        };
        Ok(self.proxy.insert(proxy))
    }

    pub(crate) fn handler(
        &mut self,
        store: &mut Store<Host>,
        indices: &HandlerIndices,
    ) -> wasmtime::Result<&Handler> {
        let handler = match self.handler.take() {
            Some(handler) => handler,
            None => indices.load(store, &self.instance)?,
        };
        Ok(self.handler.insert(handler))
    }
}

/// An instantiated function waiting for its next request.
pub(crate) struct WarmInstance {
    pub(crate) store: Store<Host>,
    pub(crate) exports: Exports,
    pub(crate) pipes: Pipes,
    /// Requests served so far.
    pub(crate) uses: u32,
}

/// How many warm instances may sit idle in the whole process.
pub(crate) struct WarmBudget {
    idle: AtomicU32,
    max: u32,
}

impl WarmBudget {
    pub(crate) fn new(max: u32) -> Arc<WarmBudget> {
        Arc::new(WarmBudget {
            idle: AtomicU32::new(0),
            max,
        })
    }
}

/// The idle warm (or spare) instances of one version; dropped (with them)
/// when the version is unloaded or replaced.
pub(crate) struct WarmPool {
    idle: Mutex<Vec<WarmInstance>>,
    budget: Arc<WarmBudget>,
    /// A task is making spares for it: one at a time.
    filling: AtomicBool,
}

impl WarmPool {
    pub(crate) fn new(budget: Arc<WarmBudget>) -> WarmPool {
        WarmPool {
            idle: Mutex::new(Vec::new()),
            budget,
            filling: AtomicBool::new(false),
        }
    }

    /// Whether another instance would be kept: fewer than `per_version`
    /// idle here, and room in the process's budget.
    pub(crate) fn wants(&self, per_version: usize) -> bool {
        self.lock().len() < per_version
            && self.budget.idle.load(Ordering::Relaxed) < self.budget.max
    }

    /// Claims the filling of this pool when it [`wants`](Self::wants) more
    /// and nobody fills it yet; the claim ends when the [`Filling`] drops.
    pub(crate) fn start_filling(self: &Arc<Self>, per_version: usize) -> Option<Filling> {
        if !self.wants(per_version) || self.filling.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Filling(self.clone()))
    }

    /// The most recently used idle instance (its pages are the hottest).
    pub(crate) fn take(&self) -> Option<WarmInstance> {
        let warm = self.lock().pop();
        if warm.is_some() {
            self.budget.idle.fetch_sub(1, Ordering::Relaxed);
        }
        warm
    }

    /// Keeps `warm` for a later request, or drops it when the budget is
    /// spent; whether it was kept.
    pub(crate) fn put(&self, warm: WarmInstance) -> bool {
        let budget = &self.budget;
        if budget.idle.fetch_add(1, Ordering::Relaxed) >= budget.max {
            budget.idle.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.lock().push(warm);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<WarmInstance>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The claim of one task to fill a [`WarmPool`] with spares; ends on drop,
/// also when the task is cancelled or never runs.
pub(crate) struct Filling(Arc<WarmPool>);

impl Filling {
    pub(crate) fn pool(&self) -> &WarmPool {
        &self.0
    }
}

impl Drop for Filling {
    fn drop(&mut self) {
        self.0.filling.store(false, Ordering::Release);
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.budget
            .idle
            .fetch_sub(idle.len() as u32, Ordering::Relaxed);
    }
}

/// The process's spare instances: their maker, started with the first
/// spare wanted, and counts for `/metrics`.
pub(crate) struct Spares {
    enabled: bool,
    maker: std::sync::OnceLock<Option<SpareMaker>>,
    made: AtomicU64,
    used: AtomicU64,
}

impl Spares {
    pub(crate) fn new(enabled: bool) -> Spares {
        Spares {
            enabled,
            maker: std::sync::OnceLock::new(),
            made: AtomicU64::new(0),
            used: AtomicU64::new(0),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The maker; `None` when spares are off or it could not start.
    pub(crate) fn maker(&self) -> Option<&SpareMaker> {
        if !self.enabled {
            return None;
        }
        self.maker.get_or_init(SpareMaker::start).as_ref()
    }

    pub(crate) fn count_made(&self) {
        self.made.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_used(&self) {
        self.used.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn made_used(&self) -> (u64, u64) {
        (
            self.made.load(Ordering::Relaxed),
            self.used.load(Ordering::Relaxed),
        )
    }
}

/// Work for the [`SpareMaker`]: making one version's spares.
pub(crate) type SpareJob = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Makes spare instances, one version at a time, on a thread of its own.
/// It keeps the normal priority on purpose: instantiating takes locks that
/// invocations need too (the pool's, the process's memory map), and a
/// holder at the kernel's idle priority stalled them for hundreds of
/// milliseconds on a busy machine. Spares are asked for only while a core
/// is idle instead ([`crate::Sandbox::replenish`]).
pub(crate) struct SpareMaker {
    jobs: tokio::sync::mpsc::UnboundedSender<SpareJob>,
}

impl SpareMaker {
    /// Starts the thread; it ends when this is dropped. `None` when it
    /// cannot start: no spares then, invocations instantiate inline.
    pub(crate) fn start() -> Option<SpareMaker> {
        let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<SpareJob>();
        // Its own runtime: the guest's instantiation may use tokio's timers.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .inspect_err(|e| tracing::warn!("no spare instances: cannot build their runtime: {e}"))
            .ok()?;
        std::thread::Builder::new()
            .name("updraft-spares".into())
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some(job) = queue.recv().await {
                        job.await;
                    }
                });
            })
            .inspect_err(|e| tracing::warn!("no spare instances: cannot start their thread: {e}"))
            .ok()?;
        Some(SpareMaker { jobs })
    }

    pub(crate) fn submit(&self, job: SpareJob) {
        // The thread only ends with this sender: a failed send drops the job,
        // and with it the claim to fill.
        let _ = self.jobs.send(job);
    }
}
