//! The usage record: what one invocation used, as metering stores it and a
//! bill is computed from it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What started an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Not an invocation: a sample of what the tenant stores, taken at the
    /// end of each sample interval (see [`UsageRecord::stored_secs`]).
    Storage,
}

impl Trigger {
    /// Its name as records and spans write it (its serde name).
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Http => "http",
            Trigger::Api => "api",
            Trigger::Async => "async",
            Trigger::Call => "call",
            Trigger::Storage => "storage",
        }
    }
}

/// The `function` of a storage sample: no function is named so.
pub const STORAGE_FUNCTION: &str = "(storage)";

/// One finished invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageRecord {
    // Shared with the loaded function: a record costs no copy of them.
    #[schema(value_type = String)]
    pub tenant: Arc<str>,
    #[schema(value_type = String)]
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
    /// Outgoing HTTP requests the guest sent (`allowed_outbound_hosts`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub outbound_requests: u64,
    /// Request body bytes those requests sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub outbound_bytes: u64,
    /// `None` for success, else the error's code (`timeout`, `trap`, …).
    pub error: Option<String>,
    /// Storage samples only: key-value bytes stored (keys and values) at
    /// `start_ms`, the end of the interval the sample stands for.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub kv_stored_bytes: u64,
    /// Storage samples only: blob bytes stored at `start_ms`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub blob_stored_bytes: u64,
    /// Storage samples only: the seconds the sample stands for (the
    /// interval before `start_ms`); 0 in invocation records.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stored_secs: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl UsageRecord {
    /// A storage sample of `tenant`: `kv` and `blob` bytes stored at
    /// `at_ms`, standing for the `secs` before it.
    pub fn storage(tenant: Arc<str>, at_ms: u64, secs: u64, kv: u64, blob: u64) -> UsageRecord {
        UsageRecord {
            tenant,
            function: Arc::from(STORAGE_FUNCTION),
            version: 0,
            invocation_id: format!("storage-{at_ms}"),
            trigger: Trigger::Storage,
            start_ms: at_ms,
            wall_us: 0,
            billed_ms: 0,
            memory_mb: 0,
            memory_peak_bytes: 0,
            cpu_us: 0,
            bytes_in: 0,
            bytes_out: 0,
            kv_ops: 0,
            kv_bytes: 0,
            blob_ops: 0,
            blob_bytes: 0,
            outbound_requests: 0,
            outbound_bytes: 0,
            error: None,
            kv_stored_bytes: kv,
            blob_stored_bytes: blob,
            stored_secs: secs,
        }
    }
}

/// Billed duration: wall time rounded up to the next millisecond (at least 1).
pub fn billed_ms(wall_us: u64) -> u64 {
    wall_us.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_triggers_name_is_its_serde_name() {
        for trigger in [
            Trigger::Http,
            Trigger::Api,
            Trigger::Async,
            Trigger::Call,
            Trigger::Storage,
        ] {
            let json = serde_json::to_string(&trigger).unwrap();
            assert_eq!(json, format!("\"{}\"", trigger.name()));
        }
    }
}
