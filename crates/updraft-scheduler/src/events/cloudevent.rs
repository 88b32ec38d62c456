//! CloudEvents as the scheduler delivers them: the event type, its checks
//! and its stored form live in [`updraft_core::cloudevent`] (no I/O, fuzzed
//! there); here is what turns one into an invocation.

pub use updraft_core::cloudevent::{
    BATCH_BYTES_MAX, BATCH_EVENTS_MAX, EVENT_TAG, Event, InvalidEvent, JSON_EVENT_TAG, Outgoing,
};

use super::async_invoke::AsyncRequest;
use crate::error::PlatformError;

impl From<InvalidEvent> for PlatformError {
    /// 400, as [`PlatformError::InvalidEvent`] is.
    fn from(InvalidEvent(message): InvalidEvent) -> PlatformError {
        PlatformError::InvalidEvent(message)
    }
}

/// HTTP binary mode: attributes as `ce-*` headers, the data as the body
/// of a `POST /`.
pub(crate) fn binary_request(event: &Event, id: &str, enqueued_ms: u64) -> AsyncRequest {
    AsyncRequest {
        method: "POST".into(),
        path: "/".into(),
        headers: event.binary_headers(id, enqueued_ms),
        body: event.data.clone(),
    }
}
