//! Key-value state for functions: the [`KvStore`] trait every backend
//! implements, the limits it enforces, and its errors.
//!
//! Stores are named per owner ([`StoreId`]): two owners' `default` stores
//! never meet. Backends: [`embedded`] (redb on the data dir, the default)
//! and [`nats`] (JetStream KV, cluster mode). Both pass the same reference
//! model (`model`, in their tests).

pub mod embedded;
mod journal;
#[cfg(test)]
pub(crate) mod model;
pub mod nats;
mod replica;

/// The key-value journal's codec, writer and replay, reachable by the fuzz
/// target `kv_journal` (cargo feature `fuzzing`); not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use std::io;
    use std::path::Path;

    use super::StoreId;
    use super::journal::{self, Journal};

    /// A journal record: owner, store, key, and the value (`None`: deleted).
    pub type Record = (String, String, String, Option<Vec<u8>>);

    fn flat(record: journal::Record) -> Record {
        (
            record.store.owner,
            record.store.name,
            record.key,
            record.value,
        )
    }

    /// The records `bytes` hold, as replay reads one journal file.
    pub fn decode(bytes: &[u8]) -> Vec<Record> {
        journal::decode(bytes).into_iter().map(flat).collect()
    }

    /// `records` as one journal file holds them.
    pub fn encode(records: &[Record]) -> io::Result<Vec<u8>> {
        let records: Vec<journal::Record> = records
            .iter()
            .map(|(owner, name, key, value)| journal::Record {
                store: StoreId::new(owner, name),
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        journal::encode_file(&records)
    }

    /// Writes `files` with the running journal (appends, then a rotation
    /// after each file): `kv.journal.0`, `.1`, … in `dir`.
    pub fn write(dir: &Path, files: &[Vec<Record>]) -> io::Result<()> {
        let mut journal = Journal::start(dir, false)?;
        for (i, records) in files.iter().enumerate() {
            if i > 0 {
                journal.rotate()?;
            }
            for (owner, name, key, value) in records {
                let store = StoreId::new(owner, name);
                journal.append([(&store, key.as_str(), value.as_deref())])?;
            }
        }
        Ok(())
    }

    /// What start-up replays from the journal files in `dir`.
    pub fn recover(dir: &Path) -> io::Result<Vec<Record>> {
        Ok(journal::recover(dir)?.into_iter().map(flat).collect())
    }
}

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use updraft_core::{Classify, ErrorKind, Failure};

pub use embedded::EmbeddedKv;
pub use nats::NatsKv;

/// Longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 512;
/// Largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Most keys in one batch operation.
pub const BATCH_KEYS_MAX: usize = 1000;
/// Most keys in one page of a listing (and its default size).
pub const LIST_PAGE_MAX: usize = 1000;

/// Which key-value backend serves the stores: the `[kv]` section of the
/// server config, chosen by `type`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum KvConfig {
    /// `kv.redb` in the data dir.
    Embedded {
        #[serde(default)]
        durability: Durability,
    },
    /// JetStream KV buckets on a NATS server or cluster ([`NatsKv`]):
    /// stores every node of a cluster shares.
    Nats(crate::nats::ClusterConfig),
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig::Embedded {
            durability: Durability::default(),
        }
    }
}

impl KvConfig {
    /// Opens the backend: the embedded one off the async threads (it reads
    /// its journal), NATS by connecting (a server that is away or unfit
    /// fails start-up, naming it).
    pub async fn open(&self, data_dir: &Path) -> Result<Arc<dyn KvStore>, KvError> {
        match self {
            KvConfig::Embedded { durability } => {
                let (dir, durability) = (data_dir.to_path_buf(), *durability);
                let opened =
                    tokio::task::spawn_blocking(move || EmbeddedKv::open(&dir, durability))
                        .await
                        .map_err(|e| {
                            KvError::Storage(Failure::context("opening kv.redb failed", e))
                        })??;
                Ok(Arc::new(opened))
            }
            KvConfig::Nats(cluster) => {
                let cluster = crate::nats::Cluster::connect(cluster).await.map_err(|e| {
                    KvError::Unavailable(Failure::context(
                        "connecting to the NATS of the [kv] section failed",
                        e,
                    ))
                })?;
                Ok(Arc::new(NatsKv::new(cluster)))
            }
        }
    }
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After it is synced to disk: it survives a power cut (the default).
    #[default]
    Disk,
    /// After the kernel has it (a journal `write`): it survives a killed
    /// Updraft but not a power cut; the disk sync follows within 100 ms.
    Process,
}

/// One store of one owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreId {
    pub owner: String,
    pub name: String,
}

impl StoreId {
    pub fn new(owner: impl Into<String>, name: impl Into<String>) -> StoreId {
        StoreId {
            owner: owner.into(),
            name: name.into(),
        }
    }
}

/// One page of keys, in ascending byte order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct KeyPage {
    pub keys: Vec<String>,
    /// Pass it back to get the next page; `None` on the last page.
    pub cursor: Option<String>,
}

/// Why a key-value operation failed. Client errors map to HTTP 400 (404 for
/// a missing store, 409 for a non-integer counter), storage failures to 500.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    #[error("the key is empty: use a non-empty key")]
    KeyEmpty,
    #[error(
        "the key is {len} bytes, at most {KEY_BYTES_MAX} are allowed: use a shorter key (hash long ones)"
    )]
    KeyTooLong { len: usize },
    #[error(
        "the value is {len} bytes, at most {VALUE_BYTES_MAX} are allowed: store large data as a blob"
    )]
    ValueTooLarge { len: usize },
    #[error("the batch has {len} keys, at most {BATCH_KEYS_MAX} are allowed: split it")]
    BatchTooLarge { len: usize },
    #[error("the value of key {key:?} is not a decimal integer, so it cannot be incremented")]
    NotAnInteger { key: String },
    #[error("incrementing key {key:?} would overflow a 64-bit integer")]
    Overflow { key: String },
    #[error(
        "invalid cursor {cursor:?}: pass back the cursor of the previous page unchanged, with the same prefix"
    )]
    BadCursor { cursor: String },
    #[error(
        "invalid store name {0:?}: use 1-63 lowercase letters, digits or '-', starting with a letter"
    )]
    BadStoreName(String),
    /// The owner's disk quota is used up (507): the message says so.
    #[error("{0}")]
    DiskQuota(String),
    /// The disk or the database failed: the detail is in the source.
    #[error("key-value storage failed")]
    Storage(#[from] Failure),
    /// The cluster's NATS is away or failing: retry (it reconnects by
    /// itself).
    #[error(
        "key-value storage is unavailable (the cluster's NATS cannot be reached): retry shortly"
    )]
    Unavailable(#[source] Failure),
}

impl KvError {
    /// A failure of storage with nothing under it.
    pub fn storage(what: impl Into<std::borrow::Cow<'static, str>>) -> KvError {
        KvError::Storage(Failure::msg(what))
    }
}

impl Classify for KvError {
    fn kind(&self) -> ErrorKind {
        match self {
            KvError::KeyEmpty
            | KvError::KeyTooLong { .. }
            | KvError::BatchTooLarge { .. }
            | KvError::BadCursor { .. }
            | KvError::BadStoreName(_) => ErrorKind::Invalid,
            KvError::ValueTooLarge { .. } => ErrorKind::TooLarge,
            KvError::NotAnInteger { .. } | KvError::Overflow { .. } => ErrorKind::Conflict,
            KvError::DiskQuota(_) => ErrorKind::StorageQuota,
            KvError::Storage(_) => ErrorKind::Internal,
            KvError::Unavailable(_) => ErrorKind::Unavailable,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            KvError::KeyEmpty | KvError::KeyTooLong { .. } => "invalid_key",
            KvError::ValueTooLarge { .. } => "value_too_large",
            KvError::BatchTooLarge { .. } => "batch_too_large",
            KvError::BadCursor { .. } => "invalid_cursor",
            KvError::BadStoreName(_) => "invalid_store_name",
            KvError::NotAnInteger { .. } => "not_an_integer",
            KvError::Overflow { .. } => "overflow",
            KvError::DiskQuota(_) => "tenant_disk_quota",
            KvError::Storage(_) => "storage",
            KvError::Unavailable(_) => "unavailable",
        }
    }
}

/// The operations of a key-value backend. Every write is durable when it
/// returns; reads see every write acknowledged through this backend (this
/// node). A cluster's backend may answer `get` from the node's copy, which
/// sees other nodes' writes a moment later; [`KvStore::get_latest`] sees
/// every write acknowledged anywhere.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    async fn get(&self, store: &StoreId, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// [`KvStore::get`] that sees every write acknowledged on any node
    /// before it was called: the operator API's reads.
    async fn get_latest(&self, store: &StoreId, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.get(store, key).await
    }
    async fn set(&self, store: &StoreId, key: &str, value: Vec<u8>) -> Result<(), KvError>;
    /// Deleting a missing key is not an error.
    async fn delete(&self, store: &StoreId, key: &str) -> Result<(), KvError>;
    async fn exists(&self, store: &StoreId, key: &str) -> Result<bool, KvError> {
        Ok(self.get(store, key).await?.is_some())
    }
    /// Keys starting with `prefix`, after `cursor`, at most `limit` (≤ [`LIST_PAGE_MAX`]).
    async fn list(
        &self,
        store: &StoreId,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, KvError>;
    /// Adds `delta` to the decimal integer stored at `key` (0 if missing)
    /// and returns the new value.
    async fn increment(&self, store: &StoreId, key: &str, delta: i64) -> Result<i64, KvError>;
    /// Writes `new` if the current value is `expected` (`None`: the key is
    /// missing). Returns whether it swapped, and the value it found.
    async fn compare_and_swap(
        &self,
        store: &StoreId,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<CasOutcome, KvError>;
    async fn get_many(
        &self,
        store: &StoreId,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, KvError>;
    /// All or nothing.
    async fn set_many(
        &self,
        store: &StoreId,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvError>;
    async fn delete_many(&self, store: &StoreId, keys: Vec<String>) -> Result<(), KvError>;
    /// Bytes stored (keys and values) by each owner that stores any: what
    /// storage is billed on.
    async fn stored_bytes(&self) -> Result<HashMap<String, u64>, KvError>;
}

/// The result of [`KvStore::compare_and_swap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    Swapped,
    /// Not swapped: the value found instead of the expected one.
    Mismatch(Option<Vec<u8>>),
}

/// Checks a key against the limits.
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        Err(KvError::KeyEmpty)
    } else if key.len() > KEY_BYTES_MAX {
        Err(KvError::KeyTooLong { len: key.len() })
    } else {
        Ok(())
    }
}

pub fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > VALUE_BYTES_MAX {
        Err(KvError::ValueTooLarge { len: value.len() })
    } else {
        Ok(())
    }
}

pub fn check_batch(len: usize) -> Result<(), KvError> {
    if len > BATCH_KEYS_MAX {
        Err(KvError::BatchTooLarge { len })
    } else {
        Ok(())
    }
}

/// Parses a counter value; a missing key counts as 0.
pub(crate) fn counter_value(key: &str, value: Option<&[u8]>) -> Result<i64, KvError> {
    let Some(value) = value else {
        return Ok(0);
    };
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .ok_or_else(|| KvError::NotAnInteger {
            key: key.to_string(),
        })
}
