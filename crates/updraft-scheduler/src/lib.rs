//! The scheduler: the control plane (deploy, rollback, delete: registry +
//! sandbox kept in step) and the data plane's admission (which version runs,
//! how many instances at once, logs and usage of each run).
//!
//! Every invocation, whatever brought it (a route, the invoke API, a call
//! from another function, an async attempt, an event), is one
//! [`Invocation`] through [`Platform::run`] (the `invoker` module), which
//! picks how the function takes its input in one place.
//!
//! It sits between the gateway (HTTP) and the sandbox (Wasmtime) and the
//! state layer (registry, logs); the gateway never talks to those directly:
//! it reaches stores, containers and API keys through the `operator`
//! module, and names only the state types re-exported here. Every error has
//! a kind ([`updraft_core::Classify`]), which is all the gateway maps.
//! Async invocation with retries and dead letters (`async_invoke`) and
//! events (`events`) are here too.

mod async_invoke;
mod calls;
mod error;
mod events;
mod invoker;
mod kv_triggers;
mod logs;
mod operator;
mod platform;
mod usage;

pub use async_invoke::{
    ASYNC_CONCURRENCY, AsyncRequest, DeadLetter, FunctionQueues, InvocationResult,
    InvocationStatus, RESULT_BYTES_MAX,
};
pub use error::PlatformError;
pub use events::{
    BATCH_BYTES_MAX, BATCH_EVENTS_MAX, Event, Outgoing, Published, QueueOverview, TopicOverview,
};
pub use invoker::{BodyError, Input, Invocation, Outcome, RequestBody, StoredEvent, boxed};
pub use operator::{BlobHandle, KvHandle};
pub use platform::{
    BUDGET_TOPIC, Deployed, FunctionDetails, IDLE_UNLOAD_DEFAULT, Loaded, Platform, PlatformConfig,
    STORAGE_SAMPLE_DEFAULT,
};
pub use updraft_sandbox::{InvokeError, LoadedFrom, ResponseBody};
// The state types and limits the API speaks in, so that the gateway needs
// no dependency on the state layer.
pub use updraft_state::blob::BLOB_PAGE_MAX;
pub use updraft_state::kv::{KvError, LIST_PAGE_MAX, VALUE_BYTES_MAX};
pub use updraft_state::queue::{ChannelKind, PAYLOAD_BYTES_MAX, QueueError};
pub use updraft_state::{Caller, KeyInfo};
