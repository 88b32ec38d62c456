//! `wasi:keyvalue@0.2.0-draft` (store, atomics, batch), the version
//! wasmtime-wasi-keyvalue and `wasmtime serve -S keyvalue` implement, over
//! the same stores, grant and metering as `@0.2.0-draft2` ([`crate::keyvalue`]).
//!
//! Where the drafts differ:
//! - `list-keys` pages with a `u64` cursor: the bucket keeps the backend's
//!   cursors and hands out their numbers (1, 2, …), valid for that bucket;
//! - `increment` takes and returns a `u64` where draft2 uses `s64`. A delta
//!   above 2⁶³−1, or a stored value below 0 (draft2 may write one), is an
//!   `other` error saying so; the value is unchanged.

use std::sync::Arc;

use updraft_state::kv::{KvStore, LIST_PAGE_MAX, StoreId};
use wasmtime::component::{HasSelf, Linker, Resource};

use crate::host::Host;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue-draft",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::DraftBucket,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// Most cursors one bucket keeps: a guest paging through a huge store
/// with one bucket must not grow the host without bound.
const CURSORS_MAX: usize = 10_000;

/// An open bucket of the draft: the store, and the cursors handed out.
pub struct DraftBucket {
    store: StoreId,
    cursors: Vec<String>,
}

type Outcome<T> = wasmtime::Result<Result<T, store::Error>>;

fn guest_error(e: updraft_state::kv::KvError) -> store::Error {
    store::Error::Other(e.to_string())
}

pub(crate) fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    store::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)?;
    atomics::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)?;
    batch::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)?;
    Ok(())
}

impl Host {
    /// The store behind a draft bucket and the backend; counts the operation.
    fn draft_target(
        &mut self,
        bucket: &Resource<DraftBucket>,
    ) -> wasmtime::Result<(StoreId, Arc<dyn KvStore>)> {
        self.usage.kv_ops += 1;
        Ok((self.table.get(bucket)?.store.clone(), self.backend()?))
    }
}

impl store::Host for Host {
    async fn open(&mut self, identifier: String) -> Outcome<Resource<DraftBucket>> {
        match self.granted_store(identifier) {
            Some(store) => Ok(Ok(self.table.push(DraftBucket {
                store,
                cursors: Vec::new(),
            })?)),
            None => Ok(Err(store::Error::AccessDenied)),
        }
    }
}

impl store::HostBucket for Host {
    async fn get(
        &mut self,
        bucket: Resource<DraftBucket>,
        key: String,
    ) -> Outcome<Option<Vec<u8>>> {
        let (id, backend) = self.draft_target(&bucket)?;
        let value = backend.get(&id, &key).await.map_err(guest_error);
        if let Ok(Some(value)) = &value {
            self.usage.kv_bytes += value.len() as u64;
        }
        Ok(value)
    }

    async fn set(
        &mut self,
        bucket: Resource<DraftBucket>,
        key: String,
        value: Vec<u8>,
    ) -> Outcome<()> {
        let (id, backend) = self.draft_target(&bucket)?;
        self.usage.kv_bytes += value.len() as u64;
        Ok(backend.set(&id, &key, value).await.map_err(guest_error))
    }

    async fn delete(&mut self, bucket: Resource<DraftBucket>, key: String) -> Outcome<()> {
        let (id, backend) = self.draft_target(&bucket)?;
        Ok(backend.delete(&id, &key).await.map_err(guest_error))
    }

    async fn exists(&mut self, bucket: Resource<DraftBucket>, key: String) -> Outcome<bool> {
        let (id, backend) = self.draft_target(&bucket)?;
        Ok(backend.exists(&id, &key).await.map_err(guest_error))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<DraftBucket>,
        cursor: Option<u64>,
    ) -> Outcome<store::KeyResponse> {
        let (id, backend) = self.draft_target(&bucket)?;
        let after = match cursor {
            None => None,
            Some(n) => {
                let handle = self.table.get(&bucket)?;
                match usize::try_from(n)
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|i| handle.cursors.get(i))
                {
                    Some(after) => Some(after.clone()),
                    None => {
                        return Ok(Err(store::Error::Other(format!(
                            "cursor {n} was not handed out by this bucket: pass back a cursor list-keys returned"
                        ))));
                    }
                }
            }
        };
        let page = match backend.list(&id, "", after.as_deref(), LIST_PAGE_MAX).await {
            Ok(page) => page,
            Err(e) => return Ok(Err(guest_error(e))),
        };
        let cursor = match page.cursor {
            None => None,
            Some(next) => {
                let handle = self.table.get_mut(&bucket)?;
                if handle.cursors.len() >= CURSORS_MAX {
                    return Ok(Err(store::Error::Other(format!(
                        "more than {CURSORS_MAX} pages listed with one bucket: open the store again to list more"
                    ))));
                }
                handle.cursors.push(next);
                Some(handle.cursors.len() as u64)
            }
        };
        Ok(Ok(store::KeyResponse {
            keys: page.keys,
            cursor,
        }))
    }

    async fn drop(&mut self, bucket: Resource<DraftBucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for Host {
    async fn increment(
        &mut self,
        bucket: Resource<DraftBucket>,
        key: String,
        delta: u64,
    ) -> Outcome<u64> {
        let (id, backend) = self.draft_target(&bucket)?;
        let Ok(delta) = i64::try_from(delta) else {
            return Ok(Err(store::Error::Other(format!(
                "delta {delta} is above 2^63-1, the largest a stored counter takes; the value is unchanged"
            ))));
        };
        // A negative value (draft2's increment may store one) is refused
        // before it changes: this draft's result cannot carry it.
        match backend.get(&id, &key).await {
            Ok(Some(current)) => {
                let text = String::from_utf8_lossy(&current);
                if text.trim().starts_with('-') {
                    return Ok(Err(store::Error::Other(format!(
                        "{key:?} holds {text}, below 0: wasi:keyvalue@0.2.0-draft counts in u64; use @0.2.0-draft2 (s64) for it. The value is unchanged"
                    ))));
                }
            }
            Ok(None) => {}
            Err(e) => return Ok(Err(guest_error(e))),
        }
        Ok(match backend.increment(&id, &key, delta).await {
            Ok(n) => u64::try_from(n).map_err(|_| {
                store::Error::Other(format!(
                    "{key:?} is {n}, below 0: wasi:keyvalue@0.2.0-draft counts in u64"
                ))
            }),
            Err(e) => Err(guest_error(e)),
        })
    }
}

impl batch::Host for Host {
    async fn get_many(
        &mut self,
        bucket: Resource<DraftBucket>,
        keys: Vec<String>,
    ) -> Outcome<Vec<Option<(String, Vec<u8>)>>> {
        let (id, backend) = self.draft_target(&bucket)?;
        let values = match backend.get_many(&id, keys.clone()).await {
            Ok(values) => values,
            Err(e) => return Ok(Err(guest_error(e))),
        };
        self.usage.kv_bytes += values.iter().flatten().map(Vec::len).sum::<usize>() as u64;
        Ok(Ok(keys
            .into_iter()
            .zip(values)
            .map(|(k, v)| v.map(|v| (k, v)))
            .collect()))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<DraftBucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Outcome<()> {
        let (id, backend) = self.draft_target(&bucket)?;
        self.usage.kv_bytes += key_values.iter().map(|(_, v)| v.len()).sum::<usize>() as u64;
        Ok(backend.set_many(&id, key_values).await.map_err(guest_error))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<DraftBucket>,
        keys: Vec<String>,
    ) -> Outcome<()> {
        let (id, backend) = self.draft_target(&bucket)?;
        Ok(backend.delete_many(&id, keys).await.map_err(guest_error))
    }
}
