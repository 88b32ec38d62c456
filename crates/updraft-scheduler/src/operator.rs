//! What the operator's API reaches below the scheduler, and only through
//! here: API keys ([`Platform::authenticate`] and friends), and the
//! key-value stores and blob containers that a tenant's deployed functions
//! list ([`KvHandle`], [`BlobHandle`]). The gateway names no state type but
//! the ones re-exported from this crate's root.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use updraft_state::blob::{BlobError, BlobPage, BlobWriter, Blobs, ContainerId};
use updraft_state::kv::{KeyPage, KvStore, StoreId};
use updraft_state::{Caller, KeyInfo};

use crate::error::PlatformError;
use crate::platform::Platform;

/// A key-value store of one tenant, as its operator reaches it.
pub struct KvHandle {
    kv: Arc<dyn KvStore>,
    id: StoreId,
    name: String,
}

impl KvHandle {
    pub async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, PlatformError> {
        Ok(self.kv.list(&self.id, prefix, cursor, limit).await?)
    }

    /// The value, or [`PlatformError::KeyNotFound`].
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, PlatformError> {
        self.kv
            .get_latest(&self.id, key)
            .await?
            .ok_or_else(|| PlatformError::KeyNotFound {
                store: self.name.clone(),
                key: key.to_string(),
            })
    }

    pub async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), PlatformError> {
        Ok(self.kv.set(&self.id, key, value).await?)
    }

    /// Deleting a missing key is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), PlatformError> {
        Ok(self.kv.delete(&self.id, key).await?)
    }
}

/// A blob container of one tenant, as its operator reaches it.
pub struct BlobHandle {
    blobs: Arc<Blobs>,
    id: ContainerId,
}

impl BlobHandle {
    pub async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<BlobPage, PlatformError> {
        Ok(self.blobs.list(&self.id, prefix, cursor, limit).await?)
    }

    /// The blob's size and its bytes, streamed.
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, BlobError>>), PlatformError> {
        Ok(self.blobs.stream(&self.id, key).await?)
    }

    /// A writer: the blob appears only once finished.
    pub async fn writer(&self, key: &str) -> Result<BlobWriter, PlatformError> {
        Ok(self.blobs.writer(&self.id, key).await?)
    }

    /// Deleting a missing blob is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), PlatformError> {
        Ok(self.blobs.delete(&self.id, key).await?)
    }
}

impl Platform {
    /// The store `name` of `tenant`, if one of its deployed functions lists
    /// it (else 404: a typo is not a new store).
    pub fn kv_store(&self, tenant: &str, name: &str) -> Result<KvHandle, PlatformError> {
        let functions = &self.functions();
        functions.in_use(name, "key-value store", functions.kv_store_names(tenant))?;
        Ok(KvHandle {
            kv: functions.backends().kv.clone(),
            id: StoreId::new(tenant, name),
            name: name.to_string(),
        })
    }

    /// The container `name` of `tenant`, if one of its deployed functions
    /// lists it.
    pub fn blob_container(&self, tenant: &str, name: &str) -> Result<BlobHandle, PlatformError> {
        let functions = &self.functions();
        functions.in_use(
            name,
            "blob container",
            functions.blob_container_names(tenant),
        )?;
        Ok(BlobHandle {
            blobs: functions.backends().blobs.clone(),
            id: ContainerId::new(tenant, name),
        })
    }

    /// Who presents `key`, if it is a valid API key.
    pub fn authenticate(&self, key: &str) -> Option<Caller> {
        self.tenants.verify(key)
    }

    /// The keys of `tenant`, or of every tenant.
    pub fn api_keys(&self, tenant: Option<&str>) -> Vec<KeyInfo> {
        self.tenants.list(tenant)
    }

    /// A new key for `tenant`: its record, and the key itself (shown once).
    pub async fn create_api_key(
        &self,
        tenant: &str,
        admin: bool,
        label: &str,
    ) -> Result<(KeyInfo, String), PlatformError> {
        Ok(self.tenants.create_key(tenant, admin, label).await?)
    }

    /// Revokes key `id`; `scope` limits it to one tenant's keys.
    pub async fn revoke_api_key(
        &self,
        id: &str,
        scope: Option<&str>,
    ) -> Result<KeyInfo, PlatformError> {
        Ok(self.tenants.revoke(id, scope).await?)
    }
}
