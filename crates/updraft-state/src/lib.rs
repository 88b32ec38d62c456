//! Durable state of the platform on the local data directory.
//!
//! The control plane's registry (functions, their immutable versions,
//! aliases, the uploaded Wasm), the tenants' API keys ([`tenants`]) and the function logs, each in its own redb
//! database plus content-addressed files; and the data plane's key-value
//! stores ([`kv`]: a trait and its backends) and blob containers ([`blob`],
//! on `object_store`), and durable message queues ([`queue`]).
//!
//! The state layer knows nothing about Wasm or HTTP: it stores bytes and records.

pub mod blob;
mod error;
pub mod gate;
pub mod kv;
pub mod logs;
pub mod nats;
pub mod queue;
pub mod redb_file;
pub mod registry;
pub mod secrets;
pub mod tenants;
pub mod usage;

/// Makes `dir` readable and writable by this user only: the data dir holds
/// every tenant's state and keys.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::StateError;
pub use logs::{LogBackend, LogStore, NatsLogs};
pub use registry::{EmbeddedRegistry, FunctionRecord, NatsRegistry, Registry, RegistryChange};
pub use tenants::{Caller, KeyInfo, Tenants};
