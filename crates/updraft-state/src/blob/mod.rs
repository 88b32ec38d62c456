//! Blob state for functions: named containers of byte objects, on an
//! [`object_store`] backend — the local filesystem under the data dir by
//! default (writes land in a temporary file and are renamed into place, so a
//! crash mid-write leaves no partial blob), or an S3-compatible bucket (a put
//! is atomic there, and a streamed blob is a multipart upload that appears
//! only when completed).
//!
//! Containers are named per owner, like key-value stores: a blob lives at
//! `{owner}/{container}/{key}` in the backend. In cluster mode the default
//! backend is the NATS object store ([`nats`]), shared by every node.

mod nats;
pub use nats::NatsBlobs;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ObjectStore, RetryConfig, WriteMultipart};

/// Default largest blob, in bytes.
pub const BLOB_BYTES_MAX_DEFAULT: u64 = 100 * 1024 * 1024;
/// Longest blob key, in bytes.
pub const BLOB_KEY_BYTES_MAX: usize = 1024;
/// Most blobs in one page of a listing.
pub const BLOB_PAGE_MAX: usize = 1000;
/// Parts uploaded at once by a streaming writer.
const WRITE_PARTS_IN_FLIGHT_MAX: usize = 4;

/// Where blobs are kept: the `[blobs]` section of the server config,
/// chosen by `type`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum BlobConfig {
    /// Files under `dir` (default: `blobs` in the data dir).
    Local { dir: Option<PathBuf> },
    /// An S3-compatible bucket.
    S3(S3Config),
}

/// `[blobs] type = "s3"`. Credentials and region not given here come from
/// the standard `AWS_*` environment variables, so secrets need not sit in
/// the config file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `s3://bucket` or `s3://bucket/prefix`: blobs are kept under the
    /// prefix, so one bucket can serve several servers.
    pub url: String,
    /// For stores other than AWS (MinIO, Ceph, R2, …): `http://host:port`.
    /// Plain `http://` is allowed only when set here explicitly.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl Default for BlobConfig {
    fn default() -> Self {
        BlobConfig::Local { dir: None }
    }
}

impl BlobConfig {
    pub fn open(&self, data_dir: &Path, blob_bytes_max: u64) -> Result<Blobs, BlobError> {
        match self {
            BlobConfig::Local { dir } => {
                let dir = dir.clone().unwrap_or_else(|| data_dir.join("blobs"));
                Blobs::local(&dir, blob_bytes_max)
            }
            BlobConfig::S3(s3) => Blobs::s3(s3, blob_bytes_max),
        }
    }
}

/// One container of one owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId {
    pub owner: String,
    pub name: String,
}

impl ContainerId {
    pub fn new(owner: impl Into<String>, name: impl Into<String>) -> ContainerId {
        ContainerId {
            owner: owner.into(),
            name: name.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BlobInfo {
    pub key: String,
    pub size: u64,
    /// Last modification, milliseconds since the Unix epoch.
    pub modified_ms: i64,
}

/// One page of blobs in key order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BlobPage {
    pub blobs: Vec<BlobInfo>,
    /// Pass it back for the next page; `None` on the last page.
    pub cursor: Option<String>,
}

/// Why a blob operation failed. Client errors map to HTTP 400 (404 for a
/// missing blob, 413 for one too large), storage failures to 500.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("invalid blob key {key:?}: {reason}")]
    BadKey { key: String, reason: String },
    #[error("blob {key:?} does not exist")]
    NotFound { key: String },
    #[error("the blob is larger than {max} bytes, the server's limit: store less, or split it")]
    TooLarge { max: u64 },
    #[error("range {start}..{end} is outside blob {key:?} of {size} bytes")]
    BadRange {
        key: String,
        start: u64,
        end: u64,
        size: u64,
    },
    #[error(
        "invalid cursor {cursor:?}: pass back the cursor of the previous page unchanged, with the same prefix"
    )]
    BadCursor { cursor: String },
    /// The owner's disk quota is used up (507): the message says so.
    #[error("{0}")]
    DiskQuota(String),
    /// The disk or the object store failed: the detail is in the source.
    #[error("blob storage failed")]
    Storage(#[from] updraft_core::Failure),
    /// 503: the cluster's NATS does not answer (cluster mode); the client
    /// reconnects by itself.
    #[error("the cluster's blob store is unavailable: NATS does not answer; retry shortly")]
    Unavailable(#[source] updraft_core::Failure),
    #[error("{0}")]
    Config(String),
}

impl updraft_core::Classify for BlobError {
    fn kind(&self) -> updraft_core::ErrorKind {
        use updraft_core::ErrorKind as K;
        match self {
            BlobError::BadKey { .. } | BlobError::BadCursor { .. } | BlobError::Config(_) => {
                K::Invalid
            }
            BlobError::NotFound { .. } => K::NotFound,
            BlobError::TooLarge { .. } => K::TooLarge,
            BlobError::BadRange { .. } => K::OutOfRange,
            BlobError::DiskQuota(_) => K::StorageQuota,
            BlobError::Storage(_) => K::Internal,
            BlobError::Unavailable(_) => K::Unavailable,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            BlobError::BadKey { .. } => "invalid_key",
            BlobError::NotFound { .. } => "blob_not_found",
            BlobError::TooLarge { .. } => "blob_too_large",
            BlobError::BadRange { .. } => "invalid_range",
            BlobError::BadCursor { .. } => "invalid_cursor",
            BlobError::Config(_) => "invalid_config",
            BlobError::DiskQuota(_) => "tenant_disk_quota",
            BlobError::Storage(_) => "storage",
            BlobError::Unavailable(_) => "unavailable",
        }
    }
}

fn storage(e: impl std::error::Error + Send + Sync + 'static) -> BlobError {
    BlobError::Storage(updraft_core::Failure::new(e))
}

/// Removes the staging files of uploads under `dir` that never finished
/// (`object_store` writes a blob to `{path}#{n}` and renames it into place,
/// and a killed process leaves the staging file behind). Such names are
/// never blobs: `object_store` refuses them as keys. Returns how many files
/// and bytes went.
fn remove_staged_uploads(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
                continue;
            }
            let name = entry.file_name();
            let staged = name
                .to_str()
                .and_then(|n| n.rsplit_once('#'))
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if kind.is_file() && staged {
                bytes += entry.metadata()?.len();
                std::fs::remove_file(entry.path())?;
                files += 1;
            }
        }
    }
    Ok((files, bytes))
}

/// Where the blobs are.
enum Backend {
    /// Files or S3, through `object_store`.
    Store(Arc<dyn ObjectStore>),
    /// The cluster's NATS object store.
    Nats(Arc<NatsBlobs>),
}

/// Blob containers on one backend.
pub struct Blobs {
    backend: Backend,
    blob_bytes_max: u64,
    /// Asked before a write adds data (a tenant's disk quota), once set.
    gate: std::sync::OnceLock<std::sync::Arc<dyn crate::gate::WriteGate>>,
}

impl Blobs {
    /// Blobs as files under `dir` (created if missing, readable by this
    /// user only). Uploads a killed server left half-written are removed.
    pub fn local(dir: &Path, blob_bytes_max: u64) -> Result<Blobs, BlobError> {
        std::fs::create_dir_all(dir).map_err(storage)?;
        crate::private_dir(dir).map_err(storage)?;
        let (files, bytes) = remove_staged_uploads(dir).map_err(storage)?;
        if files > 0 {
            tracing::info!(
                "removed {files} unfinished blob upload(s), {bytes} bytes, left by an earlier run in {}",
                dir.display()
            );
        }
        let backend = LocalFileSystem::new_with_prefix(dir)
            .map_err(storage)?
            .with_automatic_cleanup(true);
        Ok(Blobs {
            gate: std::sync::OnceLock::new(),
            backend: Backend::Store(Arc::new(backend)),
            blob_bytes_max,
        })
    }

    /// Blobs in the cluster's NATS object store; streamed uploads are
    /// staged under `scratch`.
    pub fn nats(
        cluster: crate::nats::Cluster,
        scratch: &Path,
        blob_bytes_max: u64,
    ) -> Result<Blobs, BlobError> {
        Ok(Blobs {
            gate: std::sync::OnceLock::new(),
            backend: Backend::Nats(Arc::new(NatsBlobs::new(cluster, scratch)?)),
            blob_bytes_max,
        })
    }

    /// The `object_store` backend (`None`: NATS).
    fn store(&self) -> Option<&Arc<dyn ObjectStore>> {
        match &self.backend {
            Backend::Store(store) => Some(store),
            Backend::Nats(_) => None,
        }
    }

    /// Blobs in an S3-compatible bucket. Nothing is sent yet: call
    /// [`Blobs::check`] to find a wrong bucket or credentials at start-up.
    pub fn s3(config: &S3Config, blob_bytes_max: u64) -> Result<Blobs, BlobError> {
        let bad =
            |reason: String| BlobError::Config(format!("[blobs] url {:?}: {reason}", config.url));
        let rest = config
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("write it as s3://bucket or s3://bucket/prefix".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is missing: s3://bucket".into()));
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // A store that is down should fail a request in seconds, not
            // after object_store's default three minutes of retries.
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(10),
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(id) = &config.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder.build().map_err(|e| bad(e.to_string()))?;
        let prefix = prefix.trim_matches('/');
        let backend: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(store)
        } else {
            let prefix = ObjectPath::parse(prefix).map_err(|e| bad(e.to_string()))?;
            Arc::new(PrefixStore::new(store, prefix))
        };
        Ok(Blobs {
            gate: std::sync::OnceLock::new(),
            backend: Backend::Store(backend),
            blob_bytes_max,
        })
    }

    /// Lists one page of the backend, so a missing bucket, wrong credentials
    /// or an unreachable endpoint show at start-up rather than on the first
    /// upload.
    pub async fn check(&self) -> Result<(), BlobError> {
        let Some(store) = self.store() else {
            // Connecting to the cluster checked NATS.
            return Ok(());
        };
        store
            .list_with_delimiter(None)
            .await
            .map(drop)
            .map_err(|e| {
                BlobError::Config(format!(
                    "the blob store cannot be listed: {e}. Check [blobs] in the server config \
                     (bucket, endpoint, region) and the credentials"
                ))
            })
    }

    /// Sets what writes that add data ask first (once; later calls are
    /// ignored).
    pub fn set_gate(&self, gate: std::sync::Arc<dyn crate::gate::WriteGate>) {
        let _ = self.gate.set(gate);
    }

    async fn admit(&self, container: &ContainerId) -> Result<(), BlobError> {
        match self.gate.get() {
            Some(gate) => gate
                .admit(&container.owner)
                .await
                .map_err(BlobError::DiskQuota),
            None => Ok(()),
        }
    }

    pub async fn put(
        &self,
        container: &ContainerId,
        key: &str,
        data: Bytes,
    ) -> Result<(), BlobError> {
        let path = location(container, key)?;
        self.admit(container).await?;
        if data.len() as u64 > self.blob_bytes_max {
            return Err(BlobError::TooLarge {
                max: self.blob_bytes_max,
            });
        }
        match &self.backend {
            Backend::Store(store) => store.put(&path, data.into()).await.map_err(storage)?,
            Backend::Nats(nats) => return nats.put(container, key, data).await,
        };
        Ok(())
    }

    /// A streaming writer: the blob appears, whole, when it is finished.
    pub async fn writer(
        &self,
        container: &ContainerId,
        key: &str,
    ) -> Result<BlobWriter, BlobError> {
        let path = location(container, key)?;
        self.admit(container).await?;
        let upload = match &self.backend {
            Backend::Store(store) => Upload::Store(WriteMultipart::new(
                store.put_multipart(&path).await.map_err(storage)?,
            )),
            Backend::Nats(nats) => Upload::Nats(nats.writer(container, key).await?),
        };
        Ok(BlobWriter {
            upload,
            written: 0,
            max: self.blob_bytes_max,
        })
    }

    pub async fn get(&self, container: &ContainerId, key: &str) -> Result<Bytes, BlobError> {
        let path = location(container, key)?;
        let store = match &self.backend {
            Backend::Store(store) => store,
            Backend::Nats(nats) => return nats.get(container, key).await,
        };
        match store.get(&path).await {
            Ok(result) => result.bytes().await.map_err(storage),
            Err(object_store::Error::NotFound { .. }) => Err(not_found(key)),
            Err(e) => Err(storage(e)),
        }
    }

    /// The blob as a stream of chunks, with its size (for large downloads).
    pub async fn stream(
        &self,
        container: &ContainerId,
        key: &str,
    ) -> Result<
        (
            u64,
            futures::stream::BoxStream<'static, Result<Bytes, BlobError>>,
        ),
        BlobError,
    > {
        let path = location(container, key)?;
        let store = match &self.backend {
            Backend::Store(store) => store,
            Backend::Nats(nats) => return nats.stream(container, key).await,
        };
        match store.get(&path).await {
            Ok(result) => {
                let size = result.meta.size;
                Ok((size, result.into_stream().map_err(storage).boxed()))
            }
            Err(object_store::Error::NotFound { .. }) => Err(not_found(key)),
            Err(e) => Err(storage(e)),
        }
    }

    /// Bytes `range` of the blob; a range past its end is an error.
    pub async fn read(
        &self,
        container: &ContainerId,
        key: &str,
        range: Range<u64>,
    ) -> Result<Bytes, BlobError> {
        let info = self.info(container, key).await?;
        if range.start > range.end || range.end > info.size {
            return Err(BlobError::BadRange {
                key: key.to_string(),
                start: range.start,
                end: range.end,
                size: info.size,
            });
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let path = location(container, key)?;
        match &self.backend {
            Backend::Store(store) => store.get_range(&path, range).await.map_err(storage),
            Backend::Nats(nats) => nats.read(container, key, range).await,
        }
    }

    pub async fn info(&self, container: &ContainerId, key: &str) -> Result<BlobInfo, BlobError> {
        let path = location(container, key)?;
        let store = match &self.backend {
            Backend::Store(store) => store,
            Backend::Nats(nats) => return nats.info(container, key).await,
        };
        match store.head(&path).await {
            Ok(meta) => Ok(BlobInfo {
                key: key.to_string(),
                size: meta.size,
                modified_ms: meta.last_modified.timestamp_millis(),
            }),
            Err(object_store::Error::NotFound { .. }) => Err(not_found(key)),
            Err(e) => Err(storage(e)),
        }
    }

    /// Deleting a missing blob is not an error.
    pub async fn delete(&self, container: &ContainerId, key: &str) -> Result<(), BlobError> {
        let path = location(container, key)?;
        let store = match &self.backend {
            Backend::Store(store) => store,
            Backend::Nats(nats) => return nats.delete(container, key).await,
        };
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage(e)),
        }
    }

    /// Bytes of blobs each owner stores (owners with none are left out):
    /// what storage is billed on. Lists every blob, so it is for a
    /// sampler, not a request path.
    pub async fn stored_bytes(&self) -> Result<HashMap<String, u64>, BlobError> {
        let store = match &self.backend {
            Backend::Store(store) => store,
            Backend::Nats(nats) => return nats.stored_bytes().await,
        };
        let mut sizes: HashMap<String, u64> = HashMap::new();
        let mut listing = store.list(None);
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(storage)?;
            if let Some(owner) = meta.location.parts().next() {
                *sizes.entry(owner.as_ref().to_string()).or_default() += meta.size;
            }
        }
        sizes.retain(|_, bytes| *bytes > 0);
        Ok(sizes)
    }

    /// Blobs whose key starts with `prefix`, after `cursor`, in key order.
    pub async fn list(
        &self,
        container: &ContainerId,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<BlobPage, BlobError> {
        if let Some(cursor) = cursor
            && !cursor.starts_with(prefix)
        {
            return Err(BlobError::BadCursor {
                cursor: cursor.to_string(),
            });
        }
        let store = match &self.backend {
            Backend::Store(store) => store,
            Backend::Nats(nats) => return nats.list(container, prefix, cursor, limit).await,
        };
        let root = ObjectPath::from_iter([container.owner.as_str(), container.name.as_str()]);
        // The backend lists by whole path segments: list the prefix's
        // folder, then filter by the string prefix.
        let folder = match prefix.rfind('/') {
            Some(i) => ObjectPath::parse(format!("{root}/{}", &prefix[..i])).map_err(|e| {
                BlobError::BadKey {
                    key: prefix.to_string(),
                    reason: e.to_string(),
                }
            })?,
            None => root.clone(),
        };
        let mut blobs = Vec::new();
        let mut listing = store.list(Some(&folder));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(storage)?;
            let Some(key) = meta.location.prefix_match(&root).map(|parts| {
                parts
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            }) else {
                continue;
            };
            if key.starts_with(prefix) && cursor.is_none_or(|c| key.as_str() > c) {
                blobs.push(BlobInfo {
                    key,
                    size: meta.size,
                    modified_ms: meta.last_modified.timestamp_millis(),
                });
            }
        }
        Ok(page(blobs, limit))
    }
}

/// The first `limit` of `blobs` in key order, with the cursor of the next.
fn page(mut blobs: Vec<BlobInfo>, limit: usize) -> BlobPage {
    blobs.sort_by(|a, b| a.key.cmp(&b.key));
    let limit = limit.clamp(1, BLOB_PAGE_MAX);
    let cursor = (blobs.len() > limit).then(|| blobs[limit - 1].key.clone());
    blobs.truncate(limit);
    BlobPage { blobs, cursor }
}

/// A blob being written in chunks; nothing is visible until [`finish`].
///
/// [`finish`]: BlobWriter::finish
pub struct BlobWriter {
    upload: Upload,
    written: u64,
    max: u64,
}

enum Upload {
    Store(WriteMultipart),
    Nats(nats::NatsUpload),
}

impl BlobWriter {
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        self.written += chunk.len() as u64;
        if self.written > self.max {
            return Err(BlobError::TooLarge { max: self.max });
        }
        match &mut self.upload {
            Upload::Store(upload) => {
                upload.put(chunk);
                upload
                    .wait_for_capacity(WRITE_PARTS_IN_FLIGHT_MAX)
                    .await
                    .map_err(storage)
            }
            Upload::Nats(upload) => upload.write(&chunk).await,
        }
    }

    /// Completes the blob; returns its size.
    pub async fn finish(self) -> Result<u64, BlobError> {
        if self.written > self.max {
            let max = self.max;
            self.abort().await;
            return Err(BlobError::TooLarge { max });
        }
        match self.upload {
            Upload::Store(upload) => upload.finish().await.map_err(storage).map(drop)?,
            Upload::Nats(upload) => upload.finish().await?,
        }
        Ok(self.written)
    }

    /// Drops the partial blob.
    pub async fn abort(self) {
        match self.upload {
            Upload::Store(upload) => {
                let _ = upload.abort().await;
            }
            // Its staging file goes with it.
            Upload::Nats(upload) => drop(upload),
        }
    }
}

fn not_found(key: &str) -> BlobError {
    BlobError::NotFound {
        key: key.to_string(),
    }
}

/// Where a blob lives: `{owner}/{container}/{key}`, with the key checked so
/// it maps to exactly one path.
fn location(container: &ContainerId, key: &str) -> Result<ObjectPath, BlobError> {
    let bad = |reason: &str| BlobError::BadKey {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    if key.is_empty() || key.len() > BLOB_KEY_BYTES_MAX {
        return Err(bad(&format!("use 1 to {BLOB_KEY_BYTES_MAX} bytes")));
    }
    if key.chars().any(char::is_control) {
        return Err(bad("use no control characters (tab, newline, NUL...)"));
    }
    // `#` ends the name of an unfinished upload's staging file (`name#1`).
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == ".." || s.contains(['#', '\\']))
    {
        return Err(bad(
            "use '/'-separated names, none of them empty, '.' or '..', nor containing '#' or '\\'",
        ));
    }
    // Kept as written (any Unicode): the backends store the path's text
    // as the object's name, and list it back the same.
    ObjectPath::parse(format!("{}/{}/{key}", container.owner, container.name))
        .map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[tokio::test]
    async fn local_backend() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&Blobs::local(dir.path(), 1024).unwrap()).await;
    }

    /// A kill -9 mid-upload leaves `{path}#{n}`: the next start removes it,
    /// and nothing else; the dir is this user's only.
    #[tokio::test]
    async fn unfinished_uploads_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let c = ContainerId::new("local", "videos");
        let blobs = Blobs::local(dir.path(), 1 << 20).unwrap();
        blobs
            .put(&c, "done.bin", Bytes::from_static(b"kept"))
            .await
            .unwrap();
        let container = dir.path().join("local").join("videos");
        std::fs::write(container.join("half.bin#1"), vec![0u8; 4096]).unwrap();
        std::fs::write(container.join("done.bin#12"), b"x").unwrap();
        let blobs = Blobs::local(dir.path(), 1 << 20).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&container)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec!["done.bin".to_string()]);
        assert_eq!(blobs.get(&c, "done.bin").await.unwrap(), "kept");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[tokio::test]
    async fn s3_backend() {
        let server = crate::testing::S3Server::start();
        server.create_bucket("updraft");
        // With a key prefix, as a shared bucket would be used.
        let blobs = Blobs::s3(&server.config("s3://updraft/cluster-1"), 1024).unwrap();
        blobs.check().await.unwrap();
        exercise(&blobs).await;
        // The prefix keeps servers that share a bucket apart.
        let bare = Blobs::s3(&server.config("s3://updraft"), 1024).unwrap();
        let c = ContainerId::new("local", "images");
        assert_eq!(bare.get(&c, "a/2.png").await, Err(not_found("a/2.png")));
        assert_eq!(blobs.get(&c, "a/2.png").await.unwrap(), "two");
    }

    /// The cluster's object store behaves as the others; a streamed
    /// upload cut off leaves nothing behind, in NATS or in its scratch dir.
    #[tokio::test]
    async fn nats_backend() {
        let server = crate::testing::NatsServer::start();
        let cluster =
            crate::nats::Cluster::connect(&crate::nats::ClusterConfig::new([server.url.clone()]))
                .await
                .unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let blobs = Blobs::nats(cluster, scratch.path(), 1024).unwrap();
        blobs.check().await.unwrap();
        exercise(&blobs).await;
        let c = ContainerId::new("local", "uploads");
        let mut cut = blobs.writer(&c, "cut.bin").await.unwrap();
        cut.write(Bytes::from_static(b"half")).await.unwrap();
        cut.abort().await;
        assert_eq!(blobs.get(&c, "cut.bin").await, Err(not_found("cut.bin")));
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
        let bad = ContainerId::new("local", "Not_A.Name");
        assert!(matches!(
            blobs.put(&bad, "k", Bytes::new()).await,
            Err(BlobError::Config(_))
        ));
    }

    #[tokio::test]
    async fn s3_config_errors_say_what_to_fix() {
        let server = crate::testing::S3Server::start();
        for (url, want) in [
            ("updraft", "s3://bucket"),
            ("s3://", "bucket name is missing"),
        ] {
            let err = Blobs::s3(&server.config(url), 1024).err().unwrap();
            assert!(err.to_string().contains(want), "{url}: {err}");
        }
        let missing = Blobs::s3(&server.config("s3://no-such-bucket"), 1024).unwrap();
        let err = missing.check().await.unwrap_err().to_string();
        assert!(
            err.contains("cannot be listed") && err.contains("Check [blobs]"),
            "{err}"
        );
    }

    /// The same behaviour from every backend.
    async fn exercise(blobs: &Blobs) {
        let c = ContainerId::new("local", "images");
        let other = ContainerId::new("other", "images");
        blobs
            .put(&c, "a/1.png", Bytes::from_static(b"one"))
            .await
            .unwrap();
        blobs
            .put(&c, "a/2.png", Bytes::from_static(b"two"))
            .await
            .unwrap();
        blobs
            .put(&c, "b.txt", Bytes::from_static(b"bee"))
            .await
            .unwrap();
        blobs
            .put(&other, "a/1.png", Bytes::from_static(b"theirs"))
            .await
            .unwrap();

        assert_eq!(blobs.get(&c, "a/1.png").await.unwrap(), "one");
        assert_eq!(blobs.get(&other, "a/1.png").await.unwrap(), "theirs");
        assert_eq!(blobs.read(&c, "b.txt", 1..3).await.unwrap(), "ee");
        assert!(matches!(
            blobs.read(&c, "b.txt", 2..9).await,
            Err(BlobError::BadRange { .. })
        ));
        assert_eq!(blobs.get(&c, "nope").await, Err(not_found("nope")));

        // Any Unicode, and the characters object stores would escape.
        for key in ["été/résumé.pdf", "日本/語 ?*[x]{y}%20.txt"] {
            blobs.put(&other, key, Bytes::from(key)).await.unwrap();
            assert_eq!(blobs.get(&other, key).await.unwrap(), key);
            let listed = blobs.list(&other, key, None, 10).await.unwrap();
            assert_eq!(listed.blobs.len(), 1, "{key}");
            assert_eq!(listed.blobs[0].key, key);
            blobs.delete(&other, key).await.unwrap();
            assert_eq!(blobs.get(&other, key).await, Err(not_found(key)));
        }
        for bad in ["a\nb", "a#1", "a\\b", "a//b", "./a"] {
            assert!(
                matches!(blobs.get(&other, bad).await, Err(BlobError::BadKey { .. })),
                "{bad:?}"
            );
        }
        let keys = |page: &BlobPage| page.blobs.iter().map(|b| b.key.clone()).collect::<Vec<_>>();
        let page = blobs.list(&c, "", None, 2).await.unwrap();
        assert_eq!(keys(&page), ["a/1.png", "a/2.png"]);
        let next = blobs.list(&c, "", page.cursor.as_deref(), 2).await.unwrap();
        assert_eq!(
            (keys(&next), next.cursor),
            (vec!["b.txt".to_string()], None)
        );
        assert_eq!(
            keys(&blobs.list(&c, "a/2", None, 10).await.unwrap()),
            ["a/2.png"]
        );
        assert_eq!(
            keys(&blobs.list(&c, "b", None, 10).await.unwrap()),
            ["b.txt"]
        );

        // Streaming write: invisible until finished; over the limit, nothing.
        let mut writer = blobs.writer(&c, "big").await.unwrap();
        writer.write(Bytes::from(vec![1; 600])).await.unwrap();
        assert!(blobs.get(&c, "big").await.is_err());
        writer.write(Bytes::from(vec![2; 400])).await.unwrap();
        assert_eq!(writer.finish().await.unwrap(), 1000);
        assert_eq!(blobs.info(&c, "big").await.unwrap().size, 1000);
        let mut writer = blobs.writer(&c, "too-big").await.unwrap();
        writer.write(Bytes::from(vec![1; 1000])).await.unwrap();
        assert_eq!(
            writer.write(Bytes::from(vec![1; 100])).await,
            Err(BlobError::TooLarge { max: 1024 })
        );
        writer.abort().await;
        assert!(blobs.get(&c, "too-big").await.is_err());
        assert!(matches!(
            blobs.put(&c, "x", Bytes::from(vec![0; 1025])).await,
            Err(BlobError::TooLarge { .. })
        ));

        for key in ["", "a//b", "../x", "a/./b", "a\\b", "new\nline", "a#1"] {
            assert!(
                matches!(
                    blobs.put(&c, key, Bytes::new()).await,
                    Err(BlobError::BadKey { .. })
                ),
                "{key:?}"
            );
        }
        blobs.delete(&c, "a/1.png").await.unwrap();
        blobs.delete(&c, "a/1.png").await.unwrap();
        assert_eq!(
            keys(&blobs.list(&c, "a/", None, 10).await.unwrap()),
            ["a/2.png"]
        );
        assert_eq!(blobs.get(&other, "a/1.png").await.unwrap(), "theirs");
        // a/2.png, b.txt and big; the aborted upload stores nothing.
        assert_eq!(
            blobs.stored_bytes().await.unwrap(),
            HashMap::from([
                ("local".to_string(), 3 + 3 + 1000),
                ("other".to_string(), 6)
            ])
        );
    }
}
