//! `wasi:keyvalue` (0.2.0-draft2: store, atomics, batch) for guests, backed
//! by the state layer's [`KvStore`]. A function opens only the stores its
//! manifest lists ([`KvGrant`]); store names are scoped to its owner.
//!
//! Every limit violation or storage failure is an `error` value the guest
//! can handle (`other` carries a message saying what to fix), never a trap.

use std::sync::Arc;

use updraft_state::kv::{CasOutcome, KvError, KvStore, LIST_PAGE_MAX, StoreId};
use wasmtime::component::{HasSelf, Linker, Resource};

use crate::capability::Backends;
use crate::host::{Host, refused};
use crate::spans::traced;
use updraft_core::Manifest;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
            "wasi:keyvalue/atomics.cas": super::Cas,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// What a function may reach: the backend, its owner, and the stores its
/// manifest lists. Built once per version at prepare.
#[derive(Clone)]
pub struct KvGrant {
    pub backend: Arc<dyn KvStore>,
    pub owner: String,
    pub stores: Vec<String>,
}

/// The stores of `key_value_stores`, if the manifest lists any.
pub(crate) fn grant(tenant: &str, manifest: &Manifest, backends: &Backends) -> Option<KvGrant> {
    let stores = &manifest.key_value_stores;
    (!stores.is_empty()).then(|| KvGrant {
        backend: backends.kv.clone(),
        owner: tenant.to_string(),
        stores: stores.clone(),
    })
}

/// An open bucket (a store of the function's owner).
pub struct Bucket {
    store: StoreId,
}

/// A compare-and-swap handle: the value of a key when it was made.
pub struct Cas {
    store: StoreId,
    key: String,
    current: Option<Vec<u8>>,
}

/// The store `open("")` opens.
pub(crate) const DEFAULT_STORE: &str = "default";

type Outcome<T> = wasmtime::Result<Result<T, store::Error>>;

fn guest_error(e: KvError) -> store::Error {
    store::Error::Other(e.to_string())
}

pub(crate) fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    store::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)?;
    atomics::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)?;
    batch::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)?;
    Ok(())
}

impl Host {
    /// The backend; a bucket exists only if `open` found a grant. In a
    /// recorded trace each operation is a span.
    pub(crate) fn backend(&self) -> wasmtime::Result<Arc<dyn KvStore>> {
        match &self.grants.kv {
            Some(grant) => Ok(match &self.tracing {
                Some(tracing) if tracing.has_room() => Arc::new(TracedKv {
                    inner: grant.backend.clone(),
                    tracing: tracing.clone(),
                }),
                _ => grant.backend.clone(),
            }),
            None => Err(wasmtime::format_err!(
                "a key-value bucket exists without a grant"
            )),
        }
    }

    /// The store behind `bucket`, and the backend to ask. Every operation
    /// comes through here, so this is where it is counted.
    fn target(
        &mut self,
        bucket: &Resource<Bucket>,
    ) -> wasmtime::Result<(StoreId, Arc<dyn KvStore>)> {
        self.usage.kv_ops += 1;
        Ok((self.table.get(bucket)?.store.clone(), self.backend()?))
    }

    fn kv_bytes(&mut self, bytes: usize) {
        self.usage.kv_bytes += bytes as u64;
    }

    /// The store `open(identifier)` names, if the manifest lists it (both
    /// drafts): `""` is the default store, what wasmtime's wasi-keyvalue
    /// opens. A refusal is noted for the logs.
    pub(crate) fn granted_store(&mut self, identifier: String) -> Option<StoreId> {
        let identifier = match identifier.as_str() {
            "" => DEFAULT_STORE.to_string(),
            _ => identifier,
        };
        let owner = self
            .grants
            .kv
            .as_ref()
            .filter(|grant| grant.stores.contains(&identifier))
            .map(|grant| grant.owner.clone());
        if owner.is_none() {
            let listed = self.grants.kv.as_ref().map(|g| g.stores.as_slice());
            let note = refused(
                &format!("key-value store {identifier:?}"),
                "key_value_stores",
                listed,
            );
            self.note(note);
        }
        owner.map(|owner| StoreId::new(owner, identifier))
    }
}

/// A backend whose every operation is a span of the invocation's trace
/// (OpenTelemetry's database conventions; no key is recorded).
struct TracedKv {
    inner: Arc<dyn KvStore>,
    tracing: crate::Tracing,
}

impl TracedKv {
    fn span(&self, name: &'static str, store: &StoreId) -> Option<Box<dyn crate::HostSpan>> {
        let operation = name.trim_start_matches("kv ");
        self.tracing.span(
            name,
            crate::HostSpanKind::Internal,
            &[
                ("db.system.name", "updraft.kv"),
                ("db.operation.name", operation),
                ("db.namespace", &store.name),
            ],
        )
    }
}

#[async_trait::async_trait]
impl KvStore for TracedKv {
    async fn get(&self, store: &StoreId, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        traced(self.span("kv get", store), self.inner.get(store, key)).await
    }

    async fn get_latest(&self, store: &StoreId, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        traced(
            self.span("kv get", store),
            self.inner.get_latest(store, key),
        )
        .await
    }

    async fn set(&self, store: &StoreId, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        traced(
            self.span("kv set", store),
            self.inner.set(store, key, value),
        )
        .await
    }

    async fn delete(&self, store: &StoreId, key: &str) -> Result<(), KvError> {
        traced(self.span("kv delete", store), self.inner.delete(store, key)).await
    }

    async fn exists(&self, store: &StoreId, key: &str) -> Result<bool, KvError> {
        traced(self.span("kv exists", store), self.inner.exists(store, key)).await
    }

    async fn list(
        &self,
        store: &StoreId,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<updraft_state::kv::KeyPage, KvError> {
        let list = self.inner.list(store, prefix, cursor, limit);
        traced(self.span("kv list", store), list).await
    }

    async fn increment(&self, store: &StoreId, key: &str, delta: i64) -> Result<i64, KvError> {
        let increment = self.inner.increment(store, key, delta);
        traced(self.span("kv increment", store), increment).await
    }

    async fn compare_and_swap(
        &self,
        store: &StoreId,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<CasOutcome, KvError> {
        let swap = self.inner.compare_and_swap(store, key, expected, new);
        traced(self.span("kv compare-and-swap", store), swap).await
    }

    async fn get_many(
        &self,
        store: &StoreId,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        traced(
            self.span("kv get-many", store),
            self.inner.get_many(store, keys),
        )
        .await
    }

    async fn set_many(
        &self,
        store: &StoreId,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvError> {
        let set = self.inner.set_many(store, entries);
        traced(self.span("kv set-many", store), set).await
    }

    async fn delete_many(&self, store: &StoreId, keys: Vec<String>) -> Result<(), KvError> {
        let delete = self.inner.delete_many(store, keys);
        traced(self.span("kv delete-many", store), delete).await
    }

    async fn stored_bytes(&self) -> Result<std::collections::HashMap<String, u64>, KvError> {
        self.inner.stored_bytes().await
    }
}

impl store::Host for Host {
    async fn open(&mut self, identifier: String) -> Outcome<Resource<Bucket>> {
        match self.granted_store(identifier) {
            Some(store) => Ok(Ok(self.table.push(Bucket { store })?)),
            None => Ok(Err(store::Error::AccessDenied)),
        }
    }
}

impl store::HostBucket for Host {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<Option<Vec<u8>>> {
        let (id, backend) = self.target(&bucket)?;
        let value = backend.get(&id, &key).await.map_err(guest_error);
        if let Ok(Some(value)) = &value {
            self.kv_bytes(value.len());
        }
        Ok(value)
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Outcome<()> {
        let (id, backend) = self.target(&bucket)?;
        self.kv_bytes(value.len());
        Ok(backend.set(&id, &key, value).await.map_err(guest_error))
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<()> {
        let (id, backend) = self.target(&bucket)?;
        Ok(backend.delete(&id, &key).await.map_err(guest_error))
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<bool> {
        let (id, backend) = self.target(&bucket)?;
        Ok(backend.exists(&id, &key).await.map_err(guest_error))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> Outcome<store::KeyResponse> {
        let (id, backend) = self.target(&bucket)?;
        Ok(backend
            .list(&id, "", cursor.as_deref(), LIST_PAGE_MAX)
            .await
            .map(|page| store::KeyResponse {
                keys: page.keys,
                cursor: page.cursor,
            })
            .map_err(guest_error))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for Host {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> Outcome<i64> {
        let (id, backend) = self.target(&bucket)?;
        Ok(backend
            .increment(&id, &key, delta)
            .await
            .map_err(guest_error))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let cas = self.table.delete(cas)?;
        let backend = self.backend()?;
        self.usage.kv_ops += 1;
        self.kv_bytes(value.len());
        let outcome = backend
            .compare_and_swap(&cas.store, &cas.key, cas.current, value)
            .await;
        Ok(match outcome {
            Ok(CasOutcome::Swapped) => Ok(()),
            Ok(CasOutcome::Mismatch(current)) => {
                let fresh = self.table.push(Cas {
                    store: cas.store,
                    key: cas.key,
                    current,
                })?;
                Err(atomics::CasError::CasFailed(fresh))
            }
            Err(e) => Err(atomics::CasError::StoreError(guest_error(e))),
        })
    }
}

impl atomics::HostCas for Host {
    async fn new(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<Resource<Cas>> {
        let (id, backend) = self.target(&bucket)?;
        let current = match backend.get(&id, &key).await {
            Ok(current) => {
                self.kv_bytes(current.as_ref().map_or(0, Vec::len));
                current
            }
            Err(e) => return Ok(Err(guest_error(e))),
        };
        Ok(Ok(self.table.push(Cas {
            store: id,
            key,
            current,
        })?))
    }

    async fn current(&mut self, cas: Resource<Cas>) -> Outcome<Option<Vec<u8>>> {
        Ok(Ok(self.table.get(&cas)?.current.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for Host {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Outcome<Vec<(String, Option<Vec<u8>>)>> {
        let (id, backend) = self.target(&bucket)?;
        let values = backend.get_many(&id, keys.clone()).await;
        if let Ok(values) = &values {
            self.kv_bytes(values.iter().flatten().map(Vec::len).sum());
        }
        Ok(values
            .map(|values| keys.into_iter().zip(values).collect())
            .map_err(guest_error))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Outcome<()> {
        let (id, backend) = self.target(&bucket)?;
        self.kv_bytes(key_values.iter().map(|(_, v)| v.len()).sum());
        Ok(backend.set_many(&id, key_values).await.map_err(guest_error))
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Outcome<()> {
        let (id, backend) = self.target(&bucket)?;
        Ok(backend.delete_many(&id, keys).await.map_err(guest_error))
    }
}
