//! Errors of the state layer.

use updraft_core::{Classify, ErrorKind, Failure};

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// 404.
    #[error(
        "function {0:?} does not exist: deploy it first (`updraft deploy`), or check `updraft ls`"
    )]
    FunctionNotFound(String),
    /// 404.
    #[error(
        "function {name:?} has no version {version}: see `updraft info {name}` for its versions"
    )]
    VersionNotFound { name: String, version: u64 },
    /// 409.
    #[error(
        "route {route} is already taken by function {owner:?}: choose another route, or remove that function first"
    )]
    RouteConflict { route: String, owner: String },
    /// 404.
    #[error("API key {0:?} does not exist: see `updraft keys ls` for the ids of your keys")]
    ApiKeyNotFound(String),
    /// 400.
    #[error("{0}")]
    Invalid(String),
    /// 503: the cluster's NATS does not answer (cluster mode); the client
    /// reconnects by itself.
    #[error("the cluster's registry is unavailable: NATS does not answer; retry shortly")]
    Unavailable(#[source] Failure),
    /// 500: the database or the disk failed. The registry refuses further
    /// writes rather than pretending (the process must be restarted).
    #[error("the registry's storage failed")]
    Storage(#[from] Failure),
}

impl Classify for StateError {
    fn kind(&self) -> ErrorKind {
        match self {
            StateError::FunctionNotFound(_)
            | StateError::VersionNotFound { .. }
            | StateError::ApiKeyNotFound(_) => ErrorKind::NotFound,
            StateError::RouteConflict { .. } => ErrorKind::Conflict,
            StateError::Invalid(_) => ErrorKind::Invalid,
            StateError::Unavailable(_) => ErrorKind::Unavailable,
            StateError::Storage(_) => ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            StateError::FunctionNotFound(_) => "function_not_found",
            StateError::VersionNotFound { .. } => "version_not_found",
            StateError::ApiKeyNotFound(_) => "api_key_not_found",
            StateError::RouteConflict { .. } => "route_conflict",
            StateError::Invalid(_) => "bad_request",
            StateError::Unavailable(_) => "unavailable",
            StateError::Storage(_) => "storage",
        }
    }
}

impl StateError {
    /// A failure of storage with nothing under it.
    pub fn storage(what: impl Into<std::borrow::Cow<'static, str>>) -> StateError {
        StateError::Storage(Failure::msg(what))
    }
}

impl From<redb::Error> for StateError {
    fn from(e: redb::Error) -> Self {
        StateError::Storage(crate::redb_file::failure(e))
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StateError {
            fn from(e: $t) -> Self {
                StateError::Storage(crate::redb_file::failure(e))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    std::io::Error,
    serde_json::Error
);
