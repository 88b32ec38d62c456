//! Per-invocation host state: the WASI and wasi:http contexts, the resource
//! table and the memory limiter, gathered in one store-data struct.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiterAsync;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::budget::{Held, MEMORY_WAIT_MAX, MemoryBudget};
use crate::capability::Grants;
use crate::engine::TABLE_ELEMENTS_MAX;
use crate::outbound::Outbound;

pub(crate) struct Host {
    /// When the current invocation must stop (read by the epoch callback).
    pub(crate) deadline: Instant,
    pub(crate) wasi: WasiCtx,
    /// The WASI context of a core wasip1 module; `None` for components.
    /// Boxed: every store of a component would otherwise carry its bytes.
    pub(crate) p1: Option<Box<WasiP1Ctx>>,
    pub(crate) http: WasiHttpCtx,
    /// Outgoing HTTP, as the version's grant allows.
    pub(crate) hooks: Outbound,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    /// What the manifest lets this function reach (the capabilities).
    pub(crate) grants: Grants,
    /// The chain of calls this invocation ends (itself last).
    pub(crate) chain: Arc<[Arc<str>]>,
    /// Where in its trace the invocation runs (its calls and publishes
    /// continue from here).
    pub(crate) trace: Option<updraft_core::trace::TraceParent>,
    /// Makes spans of host work, when `trace` is recorded.
    pub(crate) tracing: Option<crate::Tracing>,
    /// Host-side notes for this invocation's logs (e.g. a refused store).
    pub(crate) notes: Vec<String>,
    /// State operations of this invocation, for metering.
    pub(crate) usage: StateUsage,
    /// Its `[variables]`, secrets read when it started.
    pub(crate) config: Option<crate::config::Resolved>,
    /// Its writable space (`/tmp`, a private copy of its files), removed
    /// with the store.
    pub(crate) scratch: Option<crate::files::Scratch>,
}

/// Key-value and blob operations one invocation made, and the value bytes
/// they moved (read or written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateUsage {
    pub kv_ops: u64,
    pub kv_bytes: u64,
    pub blob_ops: u64,
    pub blob_bytes: u64,
    /// Outgoing HTTP requests sent, and their body bytes.
    pub outbound_requests: u64,
    pub outbound_bytes: u64,
}

/// Host notes kept per invocation; a guest that fails the same way in a
/// loop must not grow the host's memory.
const NOTES_MAX: usize = 16;

impl Host {
    /// The preview1 context, for the core linker. Set whenever a core
    /// module runs; an empty one otherwise (no core module reaches it).
    pub(crate) fn p1(&mut self) -> &mut WasiP1Ctx {
        self.p1
            .get_or_insert_with(|| Box::new(wasmtime_wasi::WasiCtxBuilder::new().build_p1()))
    }

    /// A span of host work, when the invocation's trace is recorded.
    pub(crate) fn span(
        &self,
        name: &'static str,
        attributes: &[(&'static str, &str)],
    ) -> Option<Box<dyn crate::HostSpan>> {
        self.tracing
            .as_ref()
            .and_then(|t| t.span(name, crate::HostSpanKind::Internal, attributes))
    }

    /// Adds a note for this invocation's logs (the first [`NOTES_MAX`]).
    pub(crate) fn note(&mut self, note: String) {
        if self.notes.len() < NOTES_MAX {
            self.notes.push(note);
        }
    }
}

/// The note of a capability refused because the manifest's `key` does not
/// list it: what was asked for, what is listed, and what to change.
pub(crate) fn refused(what: &str, key: &str, listed: Option<&[String]>) -> String {
    let listed = match listed {
        Some(names) if !names.is_empty() => names.join(", "),
        _ => "none".to_string(),
    };
    format!(
        "{what} refused: it is not in this function's {key} (listed: {listed}); add it to updraft.toml"
    )
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Caps the sum of all linear memories of one instance at `memory_mb`,
/// counts them against the server's memory budget and the tenant's quota
/// ([`crate::budget`]), and remembers which cap was hit so the failure can
/// name it.
pub(crate) struct MemoryLimiter {
    pub(crate) bytes_max: usize,
    pub(crate) bytes_now: usize,
    pub(crate) bytes_peak: usize,
    pub(crate) hit: bool,
    /// What it holds of the server's budget, then of its tenant's.
    budgets: [Option<Held>; 2],
    /// Which budget stayed full, when one did: the server's (0) or the
    /// tenant's (1), and its size in MiB.
    pub(crate) budget_full: Option<(usize, u64)>,
    /// No waiting for memory past this: the invocation's deadline.
    deadline: Instant,
}

/// Index of the server's budget in [`MemoryLimiter`]'s (the tenant's is 1).
pub(crate) const SERVER_BUDGET: usize = 0;

impl MemoryLimiter {
    pub(crate) fn new(
        bytes_max: usize,
        server: Option<Arc<MemoryBudget>>,
        tenant: Option<Arc<MemoryBudget>>,
        deadline: Instant,
    ) -> MemoryLimiter {
        MemoryLimiter {
            bytes_max,
            bytes_now: 0,
            bytes_peak: 0,
            hit: false,
            // SERVER_BUDGET first.
            budgets: [server.map(Held::new), tenant.map(Held::new)],
            budget_full: None,
            deadline,
        }
    }
}

impl MemoryLimiter {
    /// Starts a new invocation on an instance that keeps its memory.
    pub(crate) fn reset_for_invocation(&mut self, deadline: Instant) {
        self.bytes_peak = self.bytes_now;
        self.hit = false;
        self.budget_full = None;
        self.deadline = deadline;
    }
}

/// Returned (as a trap) when a guest grows past its memory limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {0} bytes exceeded")]
pub(crate) struct MemoryLimitExceeded(pub(crate) usize);

/// Returned (as a trap) when a memory budget stayed full.
#[derive(Debug, thiserror::Error)]
#[error("memory budget of {0} MiB in use by other invocations")]
pub(crate) struct MemoryBudgetFull(pub(crate) u64);

#[async_trait::async_trait]
impl ResourceLimiterAsync for MemoryLimiter {
    async fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.bytes_now - current.min(self.bytes_now) + desired;
        if after > self.bytes_max {
            self.hit = true;
            return Err(wasmtime::Error::new(MemoryLimitExceeded(self.bytes_max)));
        }
        let until = self.deadline.min(Instant::now() + MEMORY_WAIT_MAX);
        for (which, held) in self.budgets.iter_mut().enumerate() {
            if let Some(held) = held
                && !held.grow_to(after, until).await
            {
                let total_mb = held.budget().total_mb();
                self.budget_full = Some((which, total_mb));
                return Err(wasmtime::Error::new(MemoryBudgetFull(total_mb)));
            }
        }
        self.bytes_now = after;
        self.bytes_peak = self.bytes_peak.max(after);
        Ok(true)
    }

    async fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}
