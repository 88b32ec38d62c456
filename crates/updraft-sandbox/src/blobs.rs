//! `updraft:platform/blobs` for guests, backed by the state layer's
//! [`Blobs`]. A function opens only the containers its manifest lists
//! ([`BlobGrant`]); container names are scoped to its owner.
//!
//! Limit violations and storage failures are `error` values the guest can
//! handle, never traps.

use std::sync::Arc;

use bytes::Bytes;
use updraft_state::blob::{BlobError, BlobInfo, BlobWriter, Blobs, ContainerId};
use wasmtime::component::{HasSelf, Linker, Resource};

use crate::capability::Backends;
use crate::host::{Host, refused};
use crate::spans::traced;
use updraft_core::Manifest;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/blobs",
        world: "updraft:platform/imports",
        imports: { default: async | trappable },
        with: {
            "updraft:platform/blobs.container": super::Container,
            "updraft:platform/blobs.blob-writer": super::Writer,
        },
    });
}

use bindings::updraft::platform::blobs;

/// What a function may reach: the containers its manifest lists.
#[derive(Clone)]
pub struct BlobGrant {
    pub blobs: Arc<Blobs>,
    pub owner: String,
    pub containers: Vec<String>,
}

/// The containers of `blob_containers`, if the manifest lists any.
pub(crate) fn grant(tenant: &str, manifest: &Manifest, backends: &Backends) -> Option<BlobGrant> {
    let containers = &manifest.blob_containers;
    (!containers.is_empty()).then(|| BlobGrant {
        blobs: backends.blobs.clone(),
        owner: tenant.to_string(),
        containers: containers.clone(),
    })
}

/// An open container.
pub struct Container {
    id: ContainerId,
}

/// A blob being written.
pub struct Writer {
    writer: BlobWriter,
}

type Outcome<T> = wasmtime::Result<Result<T, blobs::Error>>;

fn guest_error(e: BlobError) -> blobs::Error {
    match e {
        BlobError::NotFound { .. } => blobs::Error::NotFound,
        BlobError::TooLarge { max } => blobs::Error::TooLarge(max),
        BlobError::BadKey { .. } | BlobError::BadRange { .. } | BlobError::BadCursor { .. } => {
            blobs::Error::Invalid(e.to_string())
        }
        other => blobs::Error::Other(other.to_string()),
    }
}

fn guest_info(info: BlobInfo) -> blobs::BlobInfo {
    blobs::BlobInfo {
        key: info.key,
        size: info.size,
        modified_ms: info.modified_ms,
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    blobs::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)
}

/// A span of host work, if the invocation is traced.
type HostSpan = Box<dyn crate::HostSpan>;

impl Host {
    /// The container behind `container`, and the blobs to ask.
    /// Every container operation comes through here, so this is where it
    /// is counted.
    /// In a recorded trace the operation is a span (returned with them).
    fn blob_target(
        &mut self,
        container: &Resource<Container>,
        operation: &'static str,
    ) -> wasmtime::Result<(ContainerId, Arc<Blobs>, Option<HostSpan>)> {
        self.usage.blob_ops += 1;
        let id = self.table.get(container)?.id.clone();
        let span = self.span(
            operation,
            &[
                ("db.system.name", "updraft.blobs"),
                ("db.operation.name", operation.trim_start_matches("blob ")),
                ("db.namespace", &id.name),
            ],
        );
        match &self.grants.blobs {
            Some(grant) => Ok((id, grant.blobs.clone(), span)),
            None => Err(wasmtime::format_err!(
                "a blob container exists without a grant"
            )),
        }
    }
}

impl blobs::Host for Host {}

impl blobs::HostContainer for Host {
    async fn open(&mut self, name: String) -> Outcome<Resource<Container>> {
        let Some(grant) = self
            .grants
            .blobs
            .as_ref()
            .filter(|g| g.containers.contains(&name))
        else {
            let listed = self.grants.blobs.as_ref().map(|g| g.containers.as_slice());
            let note = refused(
                &format!("blob container {name:?}"),
                "blob_containers",
                listed,
            );
            self.note(note);
            return Ok(Err(blobs::Error::AccessDenied));
        };
        let id = ContainerId::new(grant.owner.clone(), name);
        Ok(Ok(self.table.push(Container { id })?))
    }

    async fn put(
        &mut self,
        container: Resource<Container>,
        key: String,
        data: Vec<u8>,
    ) -> Outcome<()> {
        let (id, blobs, span) = self.blob_target(&container, "blob put")?;
        self.usage.blob_bytes += data.len() as u64;
        Ok(traced(span, blobs.put(&id, &key, Bytes::from(data)))
            .await
            .map_err(guest_error))
    }

    async fn get(&mut self, container: Resource<Container>, key: String) -> Outcome<Vec<u8>> {
        let (id, blobs, span) = self.blob_target(&container, "blob get")?;
        let data = traced(span, blobs.get(&id, &key)).await;
        if let Ok(data) = &data {
            self.usage.blob_bytes += data.len() as u64;
        }
        Ok(data.map(|b| b.to_vec()).map_err(guest_error))
    }

    async fn read(
        &mut self,
        container: Resource<Container>,
        key: String,
        offset: u64,
        len: u64,
    ) -> Outcome<Vec<u8>> {
        let (id, blobs, span) = self.blob_target(&container, "blob read")?;
        let read = async {
            let size = blobs.info(&id, &key).await?.size;
            let start = offset.min(size);
            let end = offset.saturating_add(len).min(size);
            blobs.read(&id, &key, start..end).await
        };
        let data = traced(span, read).await;
        if let Ok(data) = &data {
            self.usage.blob_bytes += data.len() as u64;
        }
        Ok(data.map(|b| b.to_vec()).map_err(guest_error))
    }

    async fn info(
        &mut self,
        container: Resource<Container>,
        key: String,
    ) -> Outcome<blobs::BlobInfo> {
        let (id, blobs, span) = self.blob_target(&container, "blob info")?;
        Ok(traced(span, blobs.info(&id, &key))
            .await
            .map(guest_info)
            .map_err(guest_error))
    }

    async fn delete(&mut self, container: Resource<Container>, key: String) -> Outcome<()> {
        let (id, blobs, span) = self.blob_target(&container, "blob delete")?;
        Ok(traced(span, blobs.delete(&id, &key))
            .await
            .map_err(guest_error))
    }

    async fn list_blobs(
        &mut self,
        container: Resource<Container>,
        prefix: String,
        cursor: Option<String>,
    ) -> Outcome<blobs::BlobPage> {
        let (id, blobs, span) = self.blob_target(&container, "blob list")?;
        let list = blobs.list(
            &id,
            &prefix,
            cursor.as_deref(),
            updraft_state::blob::BLOB_PAGE_MAX,
        );
        let page = traced(span, list).await;
        Ok(page
            .map(|page| blobs::BlobPage {
                blobs: page.blobs.into_iter().map(guest_info).collect(),
                cursor: page.cursor,
            })
            .map_err(guest_error))
    }

    async fn create(
        &mut self,
        container: Resource<Container>,
        key: String,
    ) -> Outcome<Resource<Writer>> {
        let (id, blobs, span) = self.blob_target(&container, "blob create")?;
        match traced(span, blobs.writer(&id, &key)).await {
            Ok(writer) => Ok(Ok(self.table.push(Writer { writer })?)),
            Err(e) => Ok(Err(guest_error(e))),
        }
    }

    async fn drop(&mut self, container: Resource<Container>) -> wasmtime::Result<()> {
        self.table.delete(container)?;
        Ok(())
    }
}

impl blobs::HostBlobWriter for Host {
    async fn write(&mut self, writer: Resource<Writer>, chunk: Vec<u8>) -> Outcome<()> {
        self.usage.blob_bytes += chunk.len() as u64;
        let writer = self.table.get_mut(&writer)?;
        Ok(writer
            .writer
            .write(Bytes::from(chunk))
            .await
            .map_err(guest_error))
    }

    async fn finish(&mut self, writer: Resource<Writer>) -> Outcome<u64> {
        let writer = self.table.delete(writer)?;
        Ok(writer.writer.finish().await.map_err(guest_error))
    }

    async fn drop(&mut self, writer: Resource<Writer>) -> wasmtime::Result<()> {
        let writer = self.table.delete(writer)?;
        writer.writer.abort().await;
        Ok(())
    }
}
