//! Instance reuse, for http functions that opt in with `instance_reuse_max`:
//! instances kept between requests of the same version (like Lambda's warm
//! environments), each serving at most `instance_reuse_max` requests.
//!
//! Idle warm instances hold pool slots, so their number is capped process-wide
//! by a [`WarmBudget`]; the pool has that many slots on top of the
//! `instances_max` that may run at once.

use std::sync::atomic::{AtomicU32, Ordering};
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

/// The idle warm instances of one version; dropped (with them) when the
/// version is unloaded or replaced.
pub(crate) struct WarmPool {
    idle: Mutex<Vec<WarmInstance>>,
    budget: Arc<WarmBudget>,
}

impl WarmPool {
    pub(crate) fn new(budget: Arc<WarmBudget>) -> WarmPool {
        WarmPool {
            idle: Mutex::new(Vec::new()),
            budget,
        }
    }

    /// The most recently used idle instance (its pages are the hottest).
    pub(crate) fn take(&self) -> Option<WarmInstance> {
        let warm = self.lock().pop();
        if warm.is_some() {
            self.budget.idle.fetch_sub(1, Ordering::Relaxed);
        }
        warm
    }

    /// Keeps `warm` for a later request, or drops it when the budget is spent.
    pub(crate) fn put(&self, warm: WarmInstance) {
        let budget = &self.budget;
        if budget.idle.fetch_add(1, Ordering::Relaxed) >= budget.max {
            budget.idle.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.lock().push(warm);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<WarmInstance>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
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
