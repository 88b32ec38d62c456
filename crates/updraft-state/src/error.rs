//! Errors of the state layer.

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
    KeyNotFound(String),
    /// 400.
    #[error("{0}")]
    Invalid(String),
    /// 500: the database or the disk failed. The registry refuses further
    /// writes rather than pretending (the process must be restarted).
    #[error("storage failure: {0}")]
    Storage(String),
}

impl From<redb::Error> for StateError {
    fn from(e: redb::Error) -> Self {
        StateError::Storage(e.to_string())
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StateError {
            fn from(e: $t) -> Self {
                StateError::Storage(e.to_string())
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
