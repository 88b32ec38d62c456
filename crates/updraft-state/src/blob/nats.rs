//! Blobs in the NATS object store (cluster mode): every node reads and
//! writes the same blobs.
//!
//! - **One object-store bucket per container of an owner**,
//!   `updraft-blobs_{owner}_{container}`, made on the first write; a
//!   container never written has none, and reads of it find nothing. A
//!   listing reads only its own container's objects.
//! - **A blob is one object** named by its key. The object store writes it
//!   in chunks and publishes its metadata last, so a reader sees the old
//!   blob or the whole new one, never part of one.
//! - **A streamed upload** is staged in a file in the node's scratch dir
//!   (removed however the upload ends) and stored when it is finished: an
//!   upload that is cut off leaves nothing in NATS.
//! - **A range read** reads the object from its start (the object store
//!   has no seek) and keeps the range.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::object_store::{self, ObjectStore};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use updraft_core::Failure;

use super::{BlobError, BlobInfo, BlobPage, ContainerId, page};
use crate::nats::{Cluster, boxed};

const BUCKET_PREFIX: &str = "updraft-blobs_";
/// Bytes read from an object at a time when streaming it.
const READ_CHUNK: usize = 128 * 1024;

fn unavailable(what: &'static str) -> impl Fn(async_nats::Error) -> BlobError {
    move |e| BlobError::Unavailable(Failure::boxed(what, e))
}

fn bucket_name(container: &ContainerId) -> Result<String, BlobError> {
    let bad = || {
        BlobError::Config(format!(
            "container {:?} of {:?}: use a name of lowercase letters, digits and '-'",
            container.name, container.owner
        ))
    };
    updraft_core::manifest::validate_name(&container.name).map_err(|_| bad())?;
    updraft_core::validate_tenant(&container.owner).map_err(|_| bad())?;
    Ok(format!(
        "{BUCKET_PREFIX}{}_{}",
        container.owner, container.name
    ))
}

fn modified_ms(info: &object_store::ObjectInfo) -> i64 {
    info.modified
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0)
}

/// Blob containers in the NATS object store.
pub struct NatsBlobs {
    cluster: Cluster,
    /// Where streamed uploads are staged.
    scratch: PathBuf,
    /// Buckets opened so far.
    buckets: Mutex<HashMap<String, ObjectStore>>,
}

impl NatsBlobs {
    /// Blobs of the cluster; uploads are staged under `scratch` (created if
    /// missing).
    pub fn new(cluster: Cluster, scratch: &Path) -> Result<NatsBlobs, BlobError> {
        std::fs::create_dir_all(scratch).map_err(|e| BlobError::Storage(Failure::new(e)))?;
        Ok(NatsBlobs {
            cluster,
            scratch: scratch.to_path_buf(),
            buckets: Mutex::default(),
        })
    }

    /// The container's bucket; if it has none, `None`, or with `create` a
    /// new one.
    async fn bucket(
        &self,
        container: &ContainerId,
        create: bool,
    ) -> Result<Option<ObjectStore>, BlobError> {
        let name = bucket_name(container)?;
        if let Some(bucket) = self
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
        {
            return Ok(Some(bucket.clone()));
        }
        let js = &self.cluster.jetstream;
        let failed = unavailable("opening a blob container failed");
        let bucket = match js.get_object_store(&name).await {
            Ok(bucket) => bucket,
            Err(e)
                if e.kind() == async_nats::jetstream::context::ObjectStoreErrorKind::GetStore =>
            {
                if !create {
                    return Ok(None);
                }
                let config = object_store::Config {
                    bucket: name.clone(),
                    storage: async_nats::jetstream::stream::StorageType::File,
                    num_replicas: self.cluster.replicas,
                    ..Default::default()
                };
                match js.create_object_store(config).await {
                    Ok(bucket) => bucket,
                    // Another node may have made it first.
                    Err(created) => js
                        .get_object_store(&name)
                        .await
                        .map_err(|_| failed(boxed(created)))?,
                }
            }
            Err(e) => return Err(failed(boxed(e))),
        };
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, bucket.clone());
        Ok(Some(bucket))
    }

    pub(super) async fn put(
        &self,
        container: &ContainerId,
        key: &str,
        data: Bytes,
    ) -> Result<(), BlobError> {
        let bucket = self.bucket(container, true).await?.ok_or_else(missing)?;
        bucket
            .put(key, &mut data.as_ref())
            .await
            .map_err(|e| unavailable("storing a blob failed")(boxed(e)))?;
        Ok(())
    }

    /// A staged upload of `key`.
    pub(super) async fn writer(
        self: &Arc<Self>,
        container: &ContainerId,
        key: &str,
    ) -> Result<NatsUpload, BlobError> {
        bucket_name(container)?;
        let staged = tempfile::Builder::new()
            .prefix("blob-upload-")
            .tempfile_in(&self.scratch)
            .map_err(|e| BlobError::Storage(Failure::new(e)))?;
        let file = staged
            .reopen()
            .map_err(|e| BlobError::Storage(Failure::new(e)))?;
        Ok(NatsUpload {
            blobs: self.clone(),
            container: container.clone(),
            key: key.to_string(),
            file: tokio::fs::File::from_std(file),
            _staged: staged,
        })
    }

    async fn object(
        &self,
        container: &ContainerId,
        key: &str,
    ) -> Result<object_store::Object, BlobError> {
        let Some(bucket) = self.bucket(container, false).await? else {
            return Err(super::not_found(key));
        };
        match bucket.get(key).await {
            Ok(object) => Ok(object),
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                Err(super::not_found(key))
            }
            Err(e) => Err(unavailable("reading a blob failed")(boxed(e))),
        }
    }

    pub(super) async fn get(&self, container: &ContainerId, key: &str) -> Result<Bytes, BlobError> {
        let mut object = self.object(container, key).await?;
        let mut bytes = Vec::with_capacity(object.info().size);
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| unavailable("reading a blob failed")(boxed(e)))?;
        Ok(Bytes::from(bytes))
    }

    pub(super) async fn stream(
        &self,
        container: &ContainerId,
        key: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, BlobError>>), BlobError> {
        let object = self.object(container, key).await?;
        let size = object.info().size as u64;
        let chunks = futures::stream::unfold(Some(object), |object| async move {
            let mut object = object?;
            let mut chunk = vec![0; READ_CHUNK];
            match object.read(&mut chunk).await {
                Ok(0) => None,
                Ok(n) => {
                    chunk.truncate(n);
                    Some((Ok(Bytes::from(chunk)), Some(object)))
                }
                Err(e) => Some((Err(unavailable("reading a blob failed")(boxed(e))), None)),
            }
        });
        Ok((size, chunks.boxed()))
    }

    /// Bytes `range` of the blob, which the caller checked is inside it.
    pub(super) async fn read(
        &self,
        container: &ContainerId,
        key: &str,
        range: Range<u64>,
    ) -> Result<Bytes, BlobError> {
        let object = self.object(container, key).await?;
        let failed = unavailable("reading a blob failed");
        let mut object = object.take(range.end);
        let mut skipped = tokio::io::sink();
        let mut head = (&mut object).take(range.start);
        tokio::io::copy(&mut head, &mut skipped)
            .await
            .map_err(|e| failed(boxed(e)))?;
        let mut bytes = Vec::with_capacity((range.end - range.start) as usize);
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| failed(boxed(e)))?;
        Ok(Bytes::from(bytes))
    }

    pub(super) async fn info(
        &self,
        container: &ContainerId,
        key: &str,
    ) -> Result<BlobInfo, BlobError> {
        let Some(bucket) = self.bucket(container, false).await? else {
            return Err(super::not_found(key));
        };
        match bucket.info(key).await {
            Ok(info) if !info.deleted => Ok(BlobInfo {
                key: key.to_string(),
                size: info.size as u64,
                modified_ms: modified_ms(&info),
            }),
            Ok(_) => Err(super::not_found(key)),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => {
                Err(super::not_found(key))
            }
            Err(e) => Err(unavailable("reading a blob failed")(boxed(e))),
        }
    }

    pub(super) async fn delete(&self, container: &ContainerId, key: &str) -> Result<(), BlobError> {
        let Some(bucket) = self.bucket(container, false).await? else {
            return Ok(());
        };
        match bucket.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(unavailable("deleting a blob failed")(boxed(e))),
        }
    }

    /// Every live blob of a container, in no order.
    async fn all(&self, container: &ContainerId) -> Result<Vec<BlobInfo>, BlobError> {
        let Some(bucket) = self.bucket(container, false).await? else {
            return Ok(Vec::new());
        };
        let failed = unavailable("listing blobs failed");
        let mut listing = bucket.list().await.map_err(|e| failed(boxed(e)))?;
        let mut blobs = Vec::new();
        while let Some(info) = listing.next().await {
            let info = info.map_err(|e| failed(boxed(e)))?;
            if !info.deleted {
                blobs.push(BlobInfo {
                    modified_ms: modified_ms(&info),
                    size: info.size as u64,
                    key: info.name,
                });
            }
        }
        Ok(blobs)
    }

    pub(super) async fn list(
        &self,
        container: &ContainerId,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<BlobPage, BlobError> {
        let blobs = self
            .all(container)
            .await?
            .into_iter()
            .filter(|b| b.key.starts_with(prefix) && cursor.is_none_or(|c| b.key.as_str() > c))
            .collect();
        Ok(page(blobs, limit))
    }

    /// Bytes of blobs each owner stores.
    pub(super) async fn stored_bytes(&self) -> Result<HashMap<String, u64>, BlobError> {
        let failed = unavailable("listing blob containers failed");
        let mut names = self.cluster.jetstream.stream_names();
        let mut containers = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| failed(boxed(e)))?;
            let Some(rest) = name
                .strip_prefix("OBJ_")
                .and_then(|n| n.strip_prefix(BUCKET_PREFIX))
            else {
                continue;
            };
            // Owners have no '_'; a container name neither.
            if let Some((owner, container)) = rest.split_once('_') {
                containers.push(ContainerId::new(owner, container));
            }
        }
        let mut sizes: HashMap<String, u64> = HashMap::new();
        for container in containers {
            let bytes: u64 = self.all(&container).await?.iter().map(|b| b.size).sum();
            if bytes > 0 {
                *sizes.entry(container.owner).or_default() += bytes;
            }
        }
        Ok(sizes)
    }
}

fn missing() -> BlobError {
    BlobError::Storage(Failure::msg("the blob container's bucket was not created"))
}

/// A streamed upload being staged.
pub struct NatsUpload {
    blobs: Arc<NatsBlobs>,
    container: ContainerId,
    key: String,
    file: tokio::fs::File,
    /// Removed when the upload is dropped, finished or not.
    _staged: tempfile::NamedTempFile,
}

impl NatsUpload {
    pub(super) async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| BlobError::Storage(Failure::new(e)))
    }

    /// Stores the staged blob.
    pub(super) async fn finish(mut self) -> Result<(), BlobError> {
        let staging = |e: std::io::Error| BlobError::Storage(Failure::new(e));
        self.file.flush().await.map_err(staging)?;
        self.file
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(staging)?;
        let bucket = self
            .blobs
            .bucket(&self.container, true)
            .await?
            .ok_or_else(missing)?;
        bucket
            .put(self.key.as_str(), &mut self.file)
            .await
            .map_err(|e| unavailable("storing a blob failed")(boxed(e)))?;
        Ok(())
    }
}
