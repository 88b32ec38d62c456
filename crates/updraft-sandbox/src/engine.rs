//! The process-wide engines: pooling allocator with copy-on-write memory
//! images, epoch interruption driven by a ticker thread, and the linkers
//! every function is linked against.
//!
//! Big components are compiled twice (tiered): first by Winch, a single-pass
//! compiler several times faster than Cranelift, so they answer soon after
//! their deploy, then by Cranelift in the background, whose code then serves
//! ([`Tier`]). The Winch engine is made on first use: a restart that only
//! maps cached artifacts never builds it.
//!
//! WASI 0.3 components get an engine of their own: wasmtime's concurrency
//! support, which they need, sends every call of every component through its
//! concurrent machinery, and costs the WASI 0.2 fresh path a third of its
//! throughput (BENCHMARKS.md). So the main engine has it off.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{
    Config, Enabled, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig,
    Strategy,
};

use crate::error::PrepareError;
use crate::host::Host;
use crate::warm::WarmBudget;

/// Default number of instances that may run at once.
pub const INSTANCES_MAX_DEFAULT: u32 = 1000;
/// Most instances that may run at once: each pool slot reserves about 9 GiB
/// of address space (two 4 GiB memories with guards, tables, a stack), and
/// 12,000 of them take about 100 of x86-64's 128 TiB.
pub const INSTANCES_MAX_MAX: u32 = 12_000;
/// Default number of warm instances (reuse mode) that may sit idle.
pub const WARM_INSTANCES_MAX_DEFAULT: u32 = 128;
/// Core instances one component may contain; componentize-py links a dozen modules.
const CORE_INSTANCES_PER_COMPONENT_MAX: u32 = 64;
/// Pool slots of core instances, memories and tables per component slot, on average.
const CORE_INSTANCES_PER_SLOT: u32 = 8;
const MEMORIES_PER_SLOT: u32 = 2;
const TABLES_PER_SLOT: u32 = 4;
/// Largest table a guest may have; language runtimes (StarlingMonkey) use big ones.
pub(crate) const TABLE_ELEMENTS_MAX: usize = 100_000;
/// Size of the VM context of a core or component instance; big runtimes need more than the 1 MiB default.
const INSTANCE_SIZE_MAX: usize = 8 << 20;
/// Bytes of each linear memory, table and fiber stack kept resident between
/// instances (reset by memset, not madvise); enough for small guests' hot pages.
const MEMORY_KEEP_RESIDENT_BYTES: usize = 1 << 20;
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 << 10;
const STACK_KEEP_RESIDENT_BYTES: usize = 128 << 10;
/// Slots whose memory is returned to the kernel in one batch.
const DECOMMIT_BATCH_SIZE: usize = 1;
/// Components at least this big are compiled by Winch first ([`Tier`]):
/// Cranelift takes about half a second per MiB of Wasm on 2 cores, so
/// below this it answers within a few hundred milliseconds anyway, and a
/// second compile would only cost CPU.
pub const TIER_UP_MIN_BYTES_DEFAULT: u64 = 1 << 20;
/// What compiled artifacts hold; part of their file names.
const ARTIFACT_FORMAT: u32 = 2;
/// How often the epoch advances: the granularity of timeouts and of yields to the runtime.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Process-wide sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled artifacts are kept, keyed by Wasm digest and engine hash.
    pub cache_dir: PathBuf,
    /// Invocations' writable space (`/tmp`, writable files); emptied at start.
    pub scratch_dir: PathBuf,
    /// Instances that may run at once; the pool reserves address space for each.
    pub instances_max: u32,
    /// Idle warm instances kept for functions in reuse mode; the pool has
    /// this many slots on top of `instances_max`.
    pub warm_instances_max: u32,
    /// Pooling (the default) or on-demand allocation; on-demand exists to
    /// measure what the pool buys.
    pub pooling: bool,
    /// Threads of the background lane, where invocations past
    /// [`crate::FOREGROUND_CPU_MAX`] move; 0 keeps all in one lane, only to
    /// measure what the lane buys.
    pub background_threads: usize,
    /// Refuse invocations past each function's adaptive concurrency limit
    /// ([`crate::shed`]); off only to measure what shedding buys.
    pub shed_load: bool,
    /// Make fresh instances of recently invoked functions ahead of their
    /// next invocation ([`Sandbox::replenish`]); off only to measure what
    /// spares buy.
    pub spare_instances: bool,
    /// Bytes of linear memory all instances may hold at once
    /// ([`crate::MemoryBudget`]); `None`: no budget.
    pub memory_budget_bytes: Option<usize>,
    /// WASI 0.2 components at least this big are compiled by Winch first,
    /// then by Cranelift in the background ([`Tier`]); `None`: always
    /// Cranelift only.
    pub tier_up_min_bytes: Option<u64>,
}

impl SandboxConfig {
    pub fn new(cache_dir: PathBuf) -> SandboxConfig {
        SandboxConfig {
            scratch_dir: cache_dir.join("scratch"),
            cache_dir,
            instances_max: INSTANCES_MAX_DEFAULT,
            warm_instances_max: WARM_INSTANCES_MAX_DEFAULT,
            pooling: true,
            background_threads: crate::lanes::background_threads_default(),
            shed_load: true,
            spare_instances: true,
            memory_budget_bytes: None,
            tier_up_min_bytes: Some(TIER_UP_MIN_BYTES_DEFAULT),
        }
    }
}

/// Which compiler made a prepared function's machine code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Winch: one pass, several times faster to compile than Cranelift,
    /// slower code. Serves a big component until its optimized code is
    /// ready.
    Baseline,
    /// Cranelift: optimizing.
    Optimized,
}

/// What code a prepare may make or load ([`crate::PrepareSpec::tiering`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiering {
    /// Cranelift's, compiled now if it is not in the cache.
    Off,
    /// Winch's may serve: a big WASI 0.2 component is compiled by Winch
    /// (or Winch's artifact loaded) when Cranelift's is not in the cache.
    /// The caller then prepares the version again with [`Tiering::Up`].
    Baseline,
    /// Cranelift's, compiled in the background: at low priority, so
    /// invocations keep their cores while it compiles.
    Up,
}

/// The Winch engine and what it links: WASI 0.2 components only.
pub(crate) struct Baseline {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<Host>,
    /// Hex of its compatibility hash; part of its artifacts' file names.
    pub(crate) hash: String,
}

/// The engines, linkers and compile cache of one process. Cheap to share (`Arc`).
pub struct Sandbox {
    /// WASI 0.2 components and core modules.
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<Host>,
    /// WASI 0.3 components: concurrency support on.
    pub(crate) p3_engine: Engine,
    pub(crate) p3_linker: Linker<Host>,
    pub(crate) p3_engine_hash: String,
    /// Core wasip1 modules run on wasmtime's own preview1 implementation,
    /// which gives their exact exit codes and errors.
    pub(crate) core_linker: wasmtime::Linker<Host>,
    pub(crate) cache_dir: PathBuf,
    pub(crate) scratch_dir: PathBuf,
    /// Hex of the engine's compatibility hash; part of every artifact's file name.
    pub(crate) engine_hash: String,
    pub(crate) instances_max: u32,
    pub(crate) warm_budget: Arc<WarmBudget>,
    /// Where invocations past their foreground CPU share run.
    pub(crate) background: Option<Arc<crate::lanes::Background>>,
    shed_load: bool,
    /// What all instances' memories may add up to.
    pub(crate) memory_budget: Option<Arc<crate::MemoryBudget>>,
    /// Functions compiled by this process (not loaded from the cache).
    compiles: AtomicU64,
    /// Spare instances: who makes them, and how many were made and used.
    pub(crate) spares: crate::warm::Spares,
    /// See [`SandboxConfig::tier_up_min_bytes`].
    pub(crate) tier_up_min_bytes: Option<u64>,
    /// The Winch engine, made on first use; `Err`: it cannot run here (the
    /// reason was logged once), and everything is compiled by Cranelift.
    baseline: OnceLock<Result<Baseline, String>>,
    /// Whose epochs the ticker thread advances.
    ticked: Arc<Mutex<Vec<EngineWeak>>>,
    /// Where tier-ups compile: one thread per core at nice 19, made on
    /// first use; `None` if it cannot be made (they compile on the
    /// caller's pool then).
    tier_up_pool: OnceLock<Option<rayon::ThreadPool>>,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Arc<Sandbox>, PrepareError> {
        let engine = build_engine(&config, false)?;
        let p3_engine = build_engine(&config, true)?;
        let mut linker = Linker::new(&engine);
        let mut p3_linker = Linker::new(&p3_engine);
        let mut core_linker = wasmtime::Linker::new(&engine);
        add_p2(&mut linker)
            .and_then(|()| wasmtime_wasi::p1::add_to_linker_async(&mut core_linker, Host::p1))
            // A WASI 0.3 component may import 0.2 interfaces too.
            .and_then(|()| add_p2(&mut p3_linker))
            .and_then(|()| wasmtime_wasi::p3::add_to_linker(&mut p3_linker))
            .and_then(|()| wasmtime_wasi_http::p3::add_to_linker(&mut p3_linker))
            .map_err(|e| {
                PrepareError::Internal(updraft_core::Failure::boxed(
                    "linking the host interfaces",
                    e.into_boxed_dyn_error(),
                ))
            })?;
        std::fs::create_dir_all(&config.cache_dir).map_err(|e| {
            PrepareError::Internal(updraft_core::Failure::context(
                format!(
                    "cannot create the compile cache at {}",
                    config.cache_dir.display()
                ),
                e,
            ))
        })?;
        crate::files::reset_scratch(&config.scratch_dir).map_err(|e| {
            PrepareError::Internal(updraft_core::Failure::context(
                format!(
                    "cannot prepare the scratch dir {}",
                    config.scratch_dir.display()
                ),
                e,
            ))
        })?;
        // Bundles a crash left half-unpacked.
        if let Ok(entries) = std::fs::read_dir(config.cache_dir.join("files")) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".unpacking-")
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let engine_hash = artifact_hash(&engine);
        let p3_engine_hash = artifact_hash(&p3_engine);
        let ticked = Arc::new(Mutex::new(vec![engine.weak(), p3_engine.weak()]));
        start_epoch_ticker(&ticked);
        Ok(Arc::new(Sandbox {
            engine,
            linker,
            p3_engine,
            p3_linker,
            p3_engine_hash,
            core_linker,
            cache_dir: config.cache_dir,
            scratch_dir: config.scratch_dir,
            engine_hash,
            instances_max: config.instances_max,
            warm_budget: WarmBudget::new(config.warm_instances_max),
            background: (config.background_threads > 0)
                .then(|| Arc::new(crate::lanes::Background::new(config.background_threads))),
            shed_load: config.shed_load,
            memory_budget: config.memory_budget_bytes.map(crate::MemoryBudget::new),
            compiles: AtomicU64::new(0),
            spares: crate::warm::Spares::new(config.spare_instances),
            tier_up_min_bytes: config.tier_up_min_bytes,
            baseline: OnceLock::new(),
            ticked,
            tier_up_pool: OnceLock::new(),
        }))
    }

    /// Runs `compile` on the low-priority pool of tier-ups: wasmtime's
    /// parallel compilation runs on the rayon pool it is called from.
    pub(crate) fn in_background<T: Send>(&self, compile: impl FnOnce() -> T + Send) -> T {
        let pool = self.tier_up_pool.get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("updraft-tier-up-{i}"))
                .start_handler(|_| crate::lanes::lower_priority())
                .build()
                .map_err(|e| tracing::warn!("tier-ups compile at normal priority: {e}"))
                .ok()
        });
        match pool {
            Some(pool) => pool.install(compile),
            None => compile(),
        }
    }

    /// The Winch engine, made now if this is its first use; `None` if it
    /// cannot run on this machine.
    pub(crate) fn baseline(&self) -> Option<&Baseline> {
        let made = self.baseline.get_or_init(|| {
            let made = build_baseline();
            match &made {
                Ok(baseline) => self
                    .ticked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(baseline.engine.weak()),
                Err(e) => tracing::warn!("compiling with Cranelift only: {e}"),
            }
            made
        });
        made.as_ref().ok()
    }

    /// How many functions this process compiled (cache misses).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    pub(crate) fn count_compile(&self) {
        self.compiles.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether spare instances of `prepared` are made at all: spares are
    /// on, and it is a fresh-mode WASI 0.2 http function.
    pub fn makes_spares(&self, prepared: &crate::Prepared) -> bool {
        self.spares.enabled() && prepared.spares.is_some()
    }

    /// Spare instances made since start, and invocations that took one
    /// instead of instantiating ([`Sandbox::replenish`]).
    pub fn spares_made_used(&self) -> (u64, u64) {
        self.spares.made_used()
    }

    /// Invocations run in the background lane since start: moved there past
    /// their foreground share, or started there as a known hog's.
    pub fn background_runs(&self) -> u64 {
        self.background.as_ref().map_or(0, |b| b.moved())
    }

    /// Instances that may run at once; the scheduler admits no more than this.
    pub fn instances_max(&self) -> u32 {
        self.instances_max
    }

    /// The server's memory budget, when it has one.
    pub fn memory_budget(&self) -> Option<&Arc<crate::MemoryBudget>> {
        self.memory_budget.as_ref()
    }

    /// Counts an invocation of `prepared` in, or refuses it past its
    /// function's adaptive concurrency limit ([`crate::shed`]): the server
    /// is past saturation for it. `None` with shedding off.
    pub fn admit(
        &self,
        prepared: &crate::Prepared,
    ) -> Result<Option<crate::shed::InFlight>, crate::shed::Shed> {
        if !self.shed_load {
            return Ok(None);
        }
        prepared.load.admit().map(Some)
    }
}

/// Hex of what an artifact compiled by `engine` depends on; part of its file name.
fn artifact_hash(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    // Bumped when what an artifact holds changes for the same Wasm (2:
    // core modules are compiled as modules, no longer adapted).
    ARTIFACT_FORMAT.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Links the whole of WASI 0.2 (cli, clocks, random, io, filesystem, sockets
/// denied by default) plus wasi:http and Updraft's own interfaces: HTTP
/// components built by componentize-js/py import wasi:cli, commands import
/// it all.
fn add_p2(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)
        .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker))
        .and_then(|()| crate::capability::add_to_linker(linker))
}

/// The Winch engine: the main engine's settings, with instances allocated
/// on demand, since its code serves only until Cranelift's is ready and a
/// second pool would reserve as much address space again.
fn build_baseline() -> Result<Baseline, String> {
    let mut cfg = engine_config(None, false);
    cfg.strategy(Strategy::Winch);
    let engine = Engine::new(&cfg).map_err(|e| format!("Winch cannot run here: {e:#}"))?;
    let mut linker = Linker::new(&engine);
    add_p2(&mut linker).map_err(|e| format!("linking the host interfaces for Winch: {e:#}"))?;
    Ok(Baseline {
        hash: artifact_hash(&engine),
        engine,
        linker,
    })
}

/// The main engine (`concurrent` off), or the WASI 0.3 one.
fn build_engine(config: &SandboxConfig, concurrent: bool) -> Result<Engine, PrepareError> {
    let n = config.instances_max.max(1) + config.warm_instances_max;
    // WASI 0.3 components are few today: allocated on demand, they
    // reserve no pool of address space beside the main engine's.
    let pooled = config.pooling && !concurrent;
    let cfg = engine_config(pooled.then_some(n), concurrent);
    Engine::new(&cfg).map_err(|e| {
        let source = updraft_core::Failure::boxed("creating the engine", e.into_boxed_dyn_error());
        if pooled {
            PrepareError::Pool { slots: n, source }
        } else {
            PrepareError::Internal(source)
        }
    })
}

/// Every engine's settings: a pool of `pool_slots` instances, or
/// allocation on demand (`None`).
fn engine_config(pool_slots: Option<u32>, concurrent: bool) -> Config {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .concurrency_support(concurrent)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .allocation_strategy(match pool_slots {
            Some(n) => InstanceAllocationStrategy::Pooling(pool_config(n)),
            None => InstanceAllocationStrategy::OnDemand,
        });
    if concurrent {
        // The async ABI WASI 0.3 is built on.
        cfg.wasm_component_model_async(true);
    }
    cfg
}

/// The pool of `n` instance slots.
fn pool_config(n: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n * CORE_INSTANCES_PER_SLOT)
        .total_memories(n * MEMORIES_PER_SLOT)
        .total_tables(n * TABLES_PER_SLOT)
        .total_stacks(n)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT_MAX)
        .max_memories_per_component(CORE_INSTANCES_PER_COMPONENT_MAX)
        .max_tables_per_component(CORE_INSTANCES_PER_COMPONENT_MAX)
        .max_memory_size((updraft_core::manifest::MEMORY_MB_MAX as usize) << 20)
        .table_elements(TABLE_ELEMENTS_MAX)
        .max_core_instance_size(INSTANCE_SIZE_MAX)
        .max_component_instance_size(INSTANCE_SIZE_MAX)
        // Resetting a slot with madvise costs page faults on the next use and
        // a TLB shootdown (an IPI to every core) per call — the top kernel
        // cost under load. Keep the first pages resident and memset them
        // instead, reset only dirty pages where the kernel can tell
        // (PAGEMAP_SCAN), and batch what is still decommitted.
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT_BYTES)
        .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES)
        .async_stack_keep_resident(STACK_KEEP_RESIDENT_BYTES)
        .pagemap_scan(Enabled::Auto)
        .decommit_batch_size(DECOMMIT_BATCH_SIZE);
    pool
}

/// Advances the `ticked` engines' epochs every [`EPOCH_TICK`] until they
/// are all dropped.
fn start_epoch_ticker(ticked: &Arc<Mutex<Vec<EngineWeak>>>) {
    let ticked = ticked.clone();
    std::thread::Builder::new()
        .name("updraft-epoch".into())
        .spawn(move || {
            loop {
                let engines: Vec<Engine> = ticked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter_map(|w| w.upgrade())
                    .collect();
                if engines.is_empty() {
                    break;
                }
                for engine in engines {
                    engine.increment_epoch();
                }
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| tracing::error!("cannot start the epoch ticker: {e}"));
}
