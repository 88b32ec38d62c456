//! Triggers on key-value writes (`[[trigger]] kv = { store, prefix }`).
//!
//! [`WatchedKv`] wraps the key-value backend everyone uses (guests through
//! their grants, the operator API): after a write succeeds, each function
//! watching the store under a prefix of a written key gets an event in its
//! async queue, a CloudEvent of type `dev.updraft.kv.set` or
//! `dev.updraft.kv.deleted` with the key as `subject`. The write is
//! answered once those events are durable; a crash between the write's
//! commit and the events' can lose them (milliseconds).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use async_trait::async_trait;
use updraft_core::EventTrigger;
use updraft_state::gate::WriteGate;
use updraft_state::kv::{CasOutcome, KeyPage, KvError, KvStore, StoreId};
use updraft_state::queue::NewMessage;

use super::async_invoke::{Source, function_queue};
use super::{Event, Events};
use crate::functions::Functions;

/// Watching functions per store: (key prefix, function name).
pub(crate) type Watchers = HashMap<StoreId, Vec<(String, String)>>;

/// The key-value backend with its writes watched.
pub(crate) struct WatchedKv {
    pub(crate) inner: Arc<dyn KvStore>,
    /// Asked before a write that adds data (a tenant's disk quota).
    pub(crate) gate: Arc<dyn WriteGate>,
    pub(crate) watchers: Arc<RwLock<Watchers>>,
    pub(crate) events: Weak<Events>,
}

#[derive(Clone, Copy)]
enum Change {
    Set,
    Deleted,
}

impl WatchedKv {
    /// Refuses a write that adds data past the owner's disk quota.
    async fn admit(&self, store: &StoreId) -> Result<(), KvError> {
        self.gate
            .admit(&store.owner)
            .await
            .map_err(KvError::DiskQuota)
    }

    /// Queues an event for every function watching one of `keys`.
    async fn notify<'a>(
        &self,
        store: &StoreId,
        keys: impl Iterator<Item = &'a str>,
        change: Change,
    ) {
        let targets: Vec<(String, String)> = {
            let watchers = self.watchers.read().unwrap_or_else(|e| e.into_inner());
            let Some(watching) = watchers.get(store) else {
                return;
            };
            keys.flat_map(|key| {
                watching
                    .iter()
                    .filter(move |(prefix, _)| key.starts_with(prefix.as_str()))
                    .map(move |(_, function)| (function.clone(), key.to_string()))
            })
            .collect()
        };
        if targets.is_empty() {
            return;
        }
        let Some(events) = self.events.upgrade() else {
            return;
        };
        let kind = match change {
            Change::Set => "set",
            Change::Deleted => "deleted",
        };
        let batches = targets
            .iter()
            .map(|(function, key)| {
                let event = Event::platform(
                    format!("/{}/kv/{}", store.owner, store.name),
                    &format!("dev.updraft.kv.{kind}"),
                    Some(key.clone()),
                    Some(serde_json::json!({ "store": store.name, "key": key, "change": kind })),
                );
                let message = NewMessage {
                    payload: event.encode(),
                    idempotency_key: None,
                };
                (function_queue(&store.owner, function), vec![message])
            })
            .collect();
        match events.queues.send_to_many(batches).await {
            Ok(_) => {
                for (function, _) in &targets {
                    events.ensure_dispatcher(&store.owner, function, Source::Function);
                }
            }
            Err(e) => tracing::error!(
                "key-value events of {} were not queued: {}",
                store.name,
                updraft_core::error::chain(&e)
            ),
        }
    }
}

/// The watchers of every loaded function's kv triggers.
pub(crate) fn watchers_of(functions: &Functions) -> Watchers {
    let mut watchers = Watchers::new();
    for loaded in functions.loaded_all() {
        for trigger in &loaded.triggers {
            if let EventTrigger::Kv(store, prefix) = trigger {
                watchers
                    .entry(StoreId::new(&*loaded.tenant, store.as_str()))
                    .or_default()
                    .push((prefix.clone(), loaded.name.to_string()));
            }
        }
    }
    watchers
}

#[async_trait]
impl KvStore for WatchedKv {
    async fn stored_bytes(&self) -> Result<std::collections::HashMap<String, u64>, KvError> {
        self.inner.stored_bytes().await
    }

    async fn get(&self, store: &StoreId, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(store, key).await
    }

    async fn get_latest(&self, store: &StoreId, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get_latest(store, key).await
    }

    async fn set(&self, store: &StoreId, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        self.admit(store).await?;
        self.inner.set(store, key, value).await?;
        self.notify(store, std::iter::once(key), Change::Set).await;
        Ok(())
    }

    async fn delete(&self, store: &StoreId, key: &str) -> Result<(), KvError> {
        self.inner.delete(store, key).await?;
        self.notify(store, std::iter::once(key), Change::Deleted)
            .await;
        Ok(())
    }

    async fn exists(&self, store: &StoreId, key: &str) -> Result<bool, KvError> {
        self.inner.exists(store, key).await
    }

    async fn list(
        &self,
        store: &StoreId,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, KvError> {
        self.inner.list(store, prefix, cursor, limit).await
    }

    async fn increment(&self, store: &StoreId, key: &str, delta: i64) -> Result<i64, KvError> {
        self.admit(store).await?;
        let n = self.inner.increment(store, key, delta).await?;
        self.notify(store, std::iter::once(key), Change::Set).await;
        Ok(n)
    }

    async fn compare_and_swap(
        &self,
        store: &StoreId,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<CasOutcome, KvError> {
        self.admit(store).await?;
        let outcome = self
            .inner
            .compare_and_swap(store, key, expected, new)
            .await?;
        if outcome == CasOutcome::Swapped {
            self.notify(store, std::iter::once(key), Change::Set).await;
        }
        Ok(outcome)
    }

    async fn get_many(
        &self,
        store: &StoreId,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        self.inner.get_many(store, keys).await
    }

    async fn set_many(
        &self,
        store: &StoreId,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvError> {
        let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
        self.admit(store).await?;
        self.inner.set_many(store, entries).await?;
        self.notify(store, keys.iter().map(String::as_str), Change::Set)
            .await;
        Ok(())
    }

    async fn delete_many(&self, store: &StoreId, keys: Vec<String>) -> Result<(), KvError> {
        self.inner.delete_many(store, keys.clone()).await?;
        self.notify(store, keys.iter().map(String::as_str), Change::Deleted)
            .await;
        Ok(())
    }
}
