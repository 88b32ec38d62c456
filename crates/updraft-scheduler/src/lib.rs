//! The scheduler: the control plane (deploy, rollback, delete: registry +
//! sandbox kept in step), the data plane (which version runs, how many
//! instances at once, logs and usage of each run) and the event bus, as
//! services behind the [`Platform`] facade (the table of services and how
//! they depend on each other is in `platform.rs`):
//!
//! - [`Functions`]: registry, versions, aliases, routes, prepare;
//! - [`Invoker`]: admission, the budget check, the run, its logs and usage;
//! - [`Events`]: channels, publish, async invocation, dispatchers, cron,
//!   key-value watchers;
//! - [`Usage`]: metering glue and budget alerts; [`Logs`]: function logs.
//!
//! Every invocation, whatever brought it (a route, the invoke API, a call
//! from another function, an async attempt, an event), is one
//! [`Invocation`] through [`Invoker::run`], which picks how the function
//! takes its input in one place.
//!
//! It sits between the gateway (HTTP) and the sandbox (Wasmtime) and the
//! state layer (registry, logs); the gateway never talks to those directly:
//! it reaches stores, containers and API keys through the `operator`
//! module, and names only the state types re-exported here. Every error has
//! a kind ([`updraft_core::Classify`]), which is all the gateway maps.

mod calls;
mod error;
mod events;
mod functions;
mod invoker;
mod logs;
pub mod metrics;
mod operator;
mod platform;
mod quotas;
pub mod traces;
mod usage;

pub use error::PlatformError;
pub use events::{
    ASYNC_CONCURRENCY, AsyncRequest, BATCH_BYTES_MAX, BATCH_EVENTS_MAX, BUDGET_TOPIC, DeadLetter,
    Event, Events, FunctionQueues, InvocationResult, InvocationStatus, Outgoing, Published,
    QueueOverview, RESULT_BYTES_MAX, SHUTDOWN_RUNS_MAX, TopicOverview,
};
pub use functions::{Deployed, FunctionDetails, Functions, Loaded};
pub use invoker::{
    BodyError, EXIT_CODE_HEADER, Input, Invocation, Invoker, Outcome, RequestBody, StoredEvent,
    boxed,
};
pub use logs::Logs;
pub use operator::{BlobHandle, KvHandle};
pub use platform::{
    IDLE_UNLOAD_DEFAULT, Platform, PlatformConfig, STORAGE_SAMPLE_DEFAULT, UPLOADS_SCRATCH_DIR,
};
pub use quotas::{QUOTA_MAX, TenantQuota};
pub use updraft_sandbox::{InvokeError, LoadedFrom, Prepared, ResponseBody, Tier};
pub use usage::Usage;
// The state types and limits the API speaks in, so that the gateway needs
// no dependency on the state layer.
pub use updraft_state::blob::{BLOB_PAGE_MAX, BlobInfo, BlobPage};
pub use updraft_state::kv::{KeyPage, KvError, LIST_PAGE_MAX, VALUE_BYTES_MAX};
pub use updraft_state::queue::{Channel, ChannelKind, PAYLOAD_BYTES_MAX, QueueError};
pub use updraft_state::secrets::SecretInfo;
pub use updraft_state::{Caller, KeyInfo};

/// Milliseconds since the Unix epoch, by the system clock (timers,
/// queue times; usage records use the platform's [`updraft_core::Clock`]).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
