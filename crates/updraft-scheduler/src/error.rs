//! Errors of the platform operations, gathering those of the layers below.

use updraft_core::ManifestError;
use updraft_sandbox::{InvokeError, PrepareError};
use updraft_state::StateError;

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
    /// 400.
    #[error("{0}")]
    BadRequest(String),
}
