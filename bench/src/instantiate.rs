//! Cold path (a) of issue 3, instantiation, side by side with its peer in
//! the same run (issue 19). Both sides run in this process on the same
//! hello component, alternating in rounds, each iteration timed:
//!
//! - `updraft`: [`Sandbox::instantiate_only`], the per-invocation work
//!   Updraft does before a guest runs — a `Store` with its WASI, wasi:http
//!   and platform contexts, memory limiter and epoch deadline, and one
//!   instance from the pooling allocator (copy-on-write memory images);
//! - `wasmtime`: bare Wasmtime doing what `wasmtime serve` does per request,
//!   on an engine with Wasmtime's default pooling settings and memory
//!   images: a `Store` with a default WASI and wasi:http context, and
//!   `ProxyPre::instantiate_async`.
//!
//! The ratio is Updraft's time over bare Wasmtime's (below 1: Updraft's
//! tuned pool and per-version WASI template make it the faster one).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};
use updraft_core::{Digest, Limits};
use updraft_sandbox::{Grants, PrepareSpec, Prepared, Sandbox, SandboxConfig, Tiering};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// Instances the bare engine's pool holds: one is in use at a time.
const POOL_INSTANCES: u32 = 16;
/// Iterations before each side's timed ones: caches, pool slots and memory
/// images warmed, as on a server that has served a while.
const WARMUP: usize = 200;

/// How many instantiations each side times.
#[derive(Debug, Clone)]
pub struct InstantiatePlan {
    /// Per side and round.
    pub iterations: usize,
    pub rounds: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstantiateReport {
    /// Timed per side, all rounds together.
    pub iterations: usize,
    pub updraft: Option<crate::stats::Summary>,
    pub wasmtime: Option<crate::stats::Summary>,
}

impl InstantiateReport {
    /// Updraft's p50 over bare Wasmtime's.
    pub fn ratio(&self) -> Option<f64> {
        match (&self.updraft, &self.wasmtime) {
            (Some(ours), Some(theirs)) if theirs.p50_us > 0.0 => Some(ours.p50_us / theirs.p50_us),
            _ => None,
        }
    }
}

/// Times both sides on `hello` (a wasi:http component); `scratch` holds
/// the sandbox's artifact cache.
pub fn measure(plan: &InstantiatePlan, hello: &[u8], scratch: &Path) -> Result<InstantiateReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the instantiation phase")?;
    runtime.block_on(async {
        let updraft = UpdraftSide::new(hello, scratch)?;
        let bare = BareSide::new(hello)?;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..plan.rounds {
            ours.extend(time(plan.iterations, || updraft.instantiate()).await?);
            theirs.extend(time(plan.iterations, || bare.instantiate()).await?);
        }
        Ok(InstantiateReport {
            iterations: ours.len(),
            updraft: crate::stats::Summary::of(&ours),
            wasmtime: crate::stats::Summary::of(&theirs),
        })
    })
}

/// Runs `once` [`WARMUP`] times, then times each of `n` runs.
async fn time<F, Fut>(n: usize, mut once: F) -> Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    for _ in 0..WARMUP.min(n) {
        once().await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        once().await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// Updraft's sandbox with its default (pooled) configuration.
struct UpdraftSide {
    sandbox: Arc<Sandbox>,
    prepared: Prepared,
}

impl UpdraftSide {
    fn new(hello: &[u8], scratch: &Path) -> Result<UpdraftSide> {
        let sandbox = Sandbox::new(SandboxConfig::new(scratch.join("instantiate-cache")))
            .context("creating Updraft's sandbox")?;
        let wasm = bytes::Bytes::copy_from_slice(hello);
        let source = || Ok(wasm.clone());
        let prepared = sandbox
            .prepare(PrepareSpec {
                name: "hello",
                wasm: &source,
                wasm_digest: Digest::of(hello),
                kind: None,
                limits: Limits::default(),
                env: Vec::new(),
                args: Vec::new(),
                argv0: None,
                files: None,
                files_writable: false,
                tmp_mb: 0,
                grants: Grants::default(),
                tiering: Tiering::Off,
            })
            .context("preparing hello in Updraft's sandbox")?;
        Ok(UpdraftSide { sandbox, prepared })
    }

    async fn instantiate(&self) -> Result<()> {
        self.sandbox
            .instantiate_only(&self.prepared)
            .await
            .context("Updraft's instantiation")
    }
}

/// Bare Wasmtime, as `wasmtime serve` instantiates per request.
struct BareSide {
    pre: ProxyPre<BareHost>,
}

struct BareHost {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: NoOutbound,
}

/// hello sends no request; one sent anyway is refused.
struct NoOutbound;

type Outgoing = Box<
    dyn std::future::Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for NoOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _io: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Outgoing {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl WasiView for BareHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for BareHost {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl BareSide {
    fn new(hello: &[u8]) -> Result<BareSide> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 4)
            .total_memories(POOL_INSTANCES * 4)
            .total_tables(POOL_INSTANCES * 4)
            .total_stacks(POOL_INSTANCES);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| anyhow!("bare Wasmtime's engine: {e:#}"))?;
        let component = Component::new(&engine, hello)
            .map_err(|e| anyhow!("compiling hello for bare Wasmtime: {e:#}"))?;
        let mut linker = Linker::<BareHost>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
            .map_err(|e| anyhow!("linking WASI for bare Wasmtime: {e:#}"))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(ProxyPre::new)
            .map_err(|e| anyhow!("pre-instantiating hello in bare Wasmtime: {e:#}"))?;
        Ok(BareSide { pre })
    }

    async fn instantiate(&self) -> Result<()> {
        let host = BareHost {
            table: ResourceTable::new(),
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            hooks: NoOutbound,
        };
        let mut store = Store::new(self.pre.engine(), host);
        store.set_epoch_deadline(u64::MAX / 2);
        self.pre
            .instantiate_async(&mut store)
            .await
            .map(drop)
            .map_err(|e| anyhow!("bare Wasmtime's instantiation: {e:#}"))
    }
}
