//! Shared types of Updraft: the function manifest (`updraft.toml`), function kinds,
//! limits and their defaults, deployed versions and log entries.
//!
//! This crate does no I/O; every other crate speaks in these types, so the
//! gateway, the scheduler, the sandbox and the state layer agree on one meaning.

pub mod clock;
pub mod cloudevent;
pub mod error;
pub mod files;
pub mod log;
pub mod manifest;
pub mod outbound;
pub mod tenant;
pub mod trace;
pub mod usage;
pub mod version;
pub mod wasm;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock, system_clock};
pub use error::{BoxError, Classify, ErrorKind, Failure};
pub use log::{LogEntry, LogStream};
pub use manifest::{
    FunctionKind, KvTriggerSpec, Limits, Manifest, ManifestError, RetryPolicy, RetrySpec, Route,
    RouteAuth, Trigger as EventTrigger, TriggerSpec,
};
pub use tenant::{LOCAL_TENANT, function_key, split_function_key, validate_tenant};
pub use usage::{STORAGE_FUNCTION, Trigger, UsageRecord};
pub use version::{Digest, VersionRecord};
