//! Durable state of the platform on the local data directory.
//!
//! Today this is the control plane's registry (functions, their immutable
//! versions, aliases, the uploaded Wasm) and the function logs, stored in one
//! redb database plus content-addressed files. The key-value, blob and queue
//! stores of later issues get their traits and backends here too.
//!
//! The state layer knows nothing about Wasm or HTTP: it stores bytes and records.

mod error;
pub mod logs;
pub mod registry;

pub use error::StateError;
pub use logs::LogStore;
pub use registry::{FunctionRecord, Registry};
