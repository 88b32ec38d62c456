//! Log entries captured from invocations.

use serde::{Deserialize, Serialize};

/// Longest message kept in one log entry; longer lines are cut.
pub const LOG_MESSAGE_BYTES_MAX: usize = 8 * 1024;

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Written by Updraft about the invocation (traps, timeouts, limits).
    Platform,
}

/// One line of a function's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Unix milliseconds.
    pub ts_ms: u64,
    pub invocation_id: String,
    pub stream: LogStream,
    pub message: String,
}

impl LogEntry {
    pub fn new(ts_ms: u64, invocation_id: &str, stream: LogStream, message: &str) -> LogEntry {
        let mut message = message.to_string();
        if message.len() > LOG_MESSAGE_BYTES_MAX {
            let mut cut = LOG_MESSAGE_BYTES_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("…[truncated]");
        }
        LogEntry {
            ts_ms,
            invocation_id: invocation_id.to_string(),
            stream,
            message,
        }
    }
}
