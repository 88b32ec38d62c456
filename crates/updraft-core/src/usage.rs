//! The usage record: what one invocation used, as metering stores it and a
//! bill is computed from it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What started an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The function's public route.
    Http,
    /// `POST /v1/functions/{name}/invoke`.
    Api,
    /// `POST /v1/functions/{name}/invoke?mode=async`: one record per attempt.
    Async,
    /// Another function's call (`updraft:platform/invoke`).
    Call,
}

/// One finished invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    // Shared with the loaded function: a record costs no copy of them.
    pub tenant: Arc<str>,
    pub function: Arc<str>,
    pub version: u64,
    pub invocation_id: String,
    pub trigger: Trigger,
    /// Start, milliseconds since the Unix epoch.
    pub start_ms: u64,
    /// Wall time from admission to the guest's end, microseconds.
    pub wall_us: u64,
    /// Wall time rounded up to the next whole millisecond (at least 1).
    pub billed_ms: u64,
    /// The configured memory (`memory_mb`): what a GB-second is charged on.
    pub memory_mb: u32,
    pub memory_peak_bytes: u64,
    /// CPU time spent running the guest and its host calls, microseconds.
    pub cpu_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub kv_ops: u64,
    pub kv_bytes: u64,
    pub blob_ops: u64,
    pub blob_bytes: u64,
    /// `None` for success, else the error's code (`timeout`, `trap`, …).
    pub error: Option<String>,
}

/// Billed duration: wall time rounded up to the next millisecond (at least 1).
pub fn billed_ms(wall_us: u64) -> u64 {
    wall_us.div_ceil(1000).max(1)
}
