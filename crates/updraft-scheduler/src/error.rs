//! Errors of the platform operations, gathering those of the layers below.

use updraft_core::ManifestError;
use updraft_sandbox::{InvokeError, PrepareError};
use updraft_state::StateError;
use updraft_state::blob::BlobError;
use updraft_state::kv::KvError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    /// 503: all instance slots stayed busy for the whole timeout.
    #[error("all {0} instance slots are busy: retry later, or raise the server's instance limit")]
    Busy(u32),
    /// 400 (404 for a missing key, 409 for a non-integer counter, 500 for storage).
    #[error(transparent)]
    Kv(#[from] KvError),
    /// 400 (404 for a missing blob, 413 for one too large, 500 for storage).
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// 404: no deployed function lists the store or container.
    #[error("no function uses the {what} {name:?} ({known}): list it in a function's updraft.toml")]
    NotInUse {
        what: &'static str,
        name: String,
        known: String,
    },
    /// 404.
    #[error("key {key:?} is not in store {store:?}")]
    KeyNotFound { store: String, key: String },
    /// 402 for a spent budget; 400 for bad input; 500 for storage.
    #[error(transparent)]
    Metering(#[from] updraft_metering::MeteringError),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 400: a published CloudEvent is malformed.
    #[error("invalid CloudEvent: {0}")]
    InvalidEvent(String),
    /// 404.
    #[error(
        "no queue or topic named {0:?}: create one with `updraft queues create {0}` or `updraft topics create {0}`"
    )]
    UnknownChannel(String),
    /// 400: a trigger names a queue or topic that does not exist.
    #[error("invalid [[trigger]]: {0}")]
    Trigger(String),
    /// 409.
    #[error(
        "{kind} {name:?} is the trigger of {functions}: remove those triggers (redeploy) first"
    )]
    ChannelInUse {
        kind: updraft_state::queue::ChannelKind,
        name: String,
        functions: String,
    },
    /// 400 for bad input (413 for a payload too large); 500 for storage.
    #[error(transparent)]
    Queue(#[from] updraft_state::queue::QueueError),
}
