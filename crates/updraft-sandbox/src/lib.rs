//! Everything Wasmtime: the one engine of the process, compiling and caching
//! functions, the per-invocation store with its limits and WASI contexts, and
//! running one invocation of an `http` or a `command` function.
//!
//! Lifecycle: [`Sandbox::new`] once per process (engine, linker, epoch ticker);
//! [`Sandbox::prepare`] once per deployed version (compile or load the cached
//! artifact, detect the kind, build the `InstancePre`); then
//! [`Sandbox::invoke_http`] / [`Sandbox::invoke_command`] per invocation, which
//! only creates a `Store` and instantiates from the pool.
//!
//! The sandbox knows nothing about routes or registries, and of tenants only
//! their names, as shares of the background lane ([`lanes`]): the scheduler
//! hands it a prepared function and a request, and gets a response plus a report.

mod artifact;
mod blobs;
mod budget;
mod calls;
mod capability;
mod capture;
mod config;
mod engine;
mod error;
mod files;
mod host;
mod invoke;
mod keyvalue;
mod keyvalue_draft;
mod lanes;
mod messaging;
mod outbound;
mod preinit;
mod shed;
mod spans;
mod warm;

pub use artifact::{LoadedFrom, PrepareSpec, Prepared, WasmSource};
pub use blobs::BlobGrant;
pub use budget::{MEMORY_WAIT_MAX, MemoryBudget};
pub use calls::{CALL_DEPTH_MAX, CallError, CallGrant, CallRequest, FunctionCaller};
pub use capability::{Backends, Grants};
pub use config::SecretSource;
pub use engine::{
    INSTANCES_MAX_MAX, Sandbox, SandboxConfig, TIER_UP_MIN_BYTES_DEFAULT, Tier, Tiering,
};
pub use error::{InvokeError, PrepareError};
pub use files::FilesSpec;
pub use host::StateUsage;
pub use invoke::{
    CallOutput, CommandOutput, InvocationCtx, OnDone, Output, Report, ResponseBody,
    SPARES_PER_VERSION,
};
pub use keyvalue::KvGrant;
pub use lanes::{FOREGROUND_CPU_MAX, background_threads_default};
pub use messaging::{PublishError, PublishGrant, Publisher};
pub use preinit::{INIT_EXPORT, InitSpec};
pub use shed::{InFlight, Shed};
pub use spans::{HOST_SPANS_MAX, HostSpan, HostSpanKind, HostTracer, Tracing};
