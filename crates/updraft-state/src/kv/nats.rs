//! Key-value stores in NATS JetStream KV (cluster mode): one bucket per
//! store of an owner, `updraft-kv_{owner}_{store}`, created on its first
//! write, file-backed, history 1.
//!
//! - **Keys** are any UTF-8 up to [`KEY_BYTES_MAX`](super::KEY_BYTES_MAX) bytes, which NATS keys
//!   are not. Each byte becomes a hex token and a last `_` token ends the
//!   key (`ab` is `61.62._`), so the keys under a byte prefix are exactly
//!   the subjects under `61.>`: listing reads only them.
//! - **Atomics** are revision compare-and-swap (`update` with the revision
//!   read), retried on a conflict: every node's increments of one key add
//!   up. A node's own increments of one key take turns, so only other
//!   nodes' can make one retry.
//! - **Batches** are checked whole before the first write, then written
//!   key by key. NATS 2.9 has no atomic multi-subject publish, so a crash
//!   or an outage midway can leave part of a `set_many` written (the
//!   embedded backend is all or nothing).
//! - **Stored bytes** are keys plus values, summed from headers-only reads
//!   (`Nats-Msg-Size`), so billing matches the embedded backend's.
//!
//! - **Reads** are answered from the node's copy of the bucket when it has
//!   one ([`super::replica`]); writes go to NATS and then to the copy.
//!
//! Losing NATS makes every write and every read without a copy
//! [`KvError::Unavailable`] (503) until the client has reconnected by
//! itself.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv::{Operation, Store};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use updraft_core::Failure;

use super::replica::Replicas;
use super::{
    CasOutcome, KeyPage, KvError, KvStore, LIST_PAGE_MAX, StoreId, check_batch, check_key,
    check_value, counter_value,
};
use crate::nats::{Cluster, boxed};

/// What every bucket's name starts with.
const BUCKET_PREFIX: &str = "updraft-kv_";

/// Locks that take turns for increments on this node, by a hash of store
/// and key. Without them, N concurrent increments of one key each retry
/// their compare-and-swap until they win: O(N²) round trips, and a request
/// that loses too often runs past its timeout. With them, only other nodes'
/// increments can make one retry.
const INCREMENT_STRIPES: usize = 256;

/// Key-value stores in JetStream.
pub struct NatsKv {
    cluster: Cluster,
    /// Buckets opened so far, by store.
    buckets: RwLock<HashMap<StoreId, Store>>,
    increments: Vec<tokio::sync::Mutex<()>>,
    /// This node's copies of the buckets it reads.
    replicas: Arc<Replicas>,
}

/// Errors of NATS: the server is away or failing (503, retry).
fn unavailable(what: &'static str) -> impl Fn(async_nats::Error) -> KvError {
    move |e| KvError::Unavailable(Failure::boxed(what, e))
}

/// A NATS key for `key` (see the module docs).
fn encode_key(key: &str) -> String {
    let mut encoded = String::with_capacity(key.len() * 3 + 1);
    for byte in key.bytes() {
        let _ = write!(encoded, "{byte:02x}.");
    }
    encoded.push('_');
    encoded
}

/// The subjects of every key starting with `prefix`, under `subject_prefix`
/// (`$KV.bucket.`).
fn prefix_filter(subject_prefix: &str, prefix: &str) -> String {
    let mut filter = String::from(subject_prefix);
    for byte in prefix.bytes() {
        let _ = write!(filter, "{byte:02x}.");
    }
    filter.push('>');
    filter
}

/// The key of an encoded one; `None` for anything Updraft did not write.
fn decode_key(encoded: &str) -> Option<String> {
    let body = encoded.strip_suffix('_')?;
    let mut bytes = Vec::with_capacity(body.len() / 3);
    for token in body.split_terminator('.') {
        bytes.push(u8::from_str_radix(token, 16).ok()?);
    }
    String::from_utf8(bytes).ok()
}

/// A bucket name of `store`: owner and store names follow the rules of
/// function names (lowercase letters, digits and `-`), so `_` separates
/// them unambiguously.
fn bucket_name(store: &StoreId) -> Result<String, KvError> {
    updraft_core::manifest::validate_name(&store.name)
        .map_err(|_| KvError::BadStoreName(store.name.clone()))?;
    updraft_core::validate_tenant(&store.owner)
        .map_err(|_| KvError::BadStoreName(format!("{}/{}", store.owner, store.name)))?;
    Ok(format!("{BUCKET_PREFIX}{}_{}", store.owner, store.name))
}

impl NatsKv {
    pub fn new(cluster: Cluster) -> NatsKv {
        NatsKv {
            cluster,
            buckets: RwLock::default(),
            increments: (0..INCREMENT_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            replicas: Arc::default(),
        }
    }

    /// The value of `key`: from this node's copy of the bucket when it has
    /// one, else from NATS.
    async fn read(
        &self,
        store: &StoreId,
        bucket: &Store,
        key: &str,
    ) -> Result<Option<Bytes>, KvError> {
        let encoded = encode_key(key);
        if let Some(replica) = self.replicas.of(store, bucket)
            && let Some(value) = replica.get(&encoded)
        {
            return Ok(value);
        }
        Ok(Self::entry(bucket, key).await?.0)
    }

    /// Whether this node answers reads of `store` from its copy.
    #[cfg(test)]
    fn copied(&self, store: &StoreId) -> bool {
        self.replicas
            .live(store)
            .is_some_and(|replica| replica.get("").is_some())
    }

    /// Tells this node's copy of `store` of a write it made.
    fn wrote(&self, store: &StoreId, key: &str, revision: u64, value: Option<Bytes>) {
        if let Some(replica) = self.replicas.live(store) {
            replica.apply(&encode_key(key), revision, value);
        }
    }

    /// Writes `value` under `key`; its revision.
    async fn put(
        &self,
        store: &StoreId,
        bucket: &Store,
        key: &str,
        value: Bytes,
    ) -> Result<(), KvError> {
        let revision = bucket
            .put(encode_key(key), value.clone())
            .await
            .map_err(|e| unavailable("writing a key failed")(boxed(e)))?;
        self.wrote(store, key, revision, Some(value));
        Ok(())
    }

    /// Deletes `key` (a delete marker, as the KV conventions write it,
    /// published here for its revision).
    async fn remove(&self, store: &StoreId, bucket: &Store, key: &str) -> Result<(), KvError> {
        let failed = unavailable("deleting a key failed");
        let subject = format!(
            "{}{}",
            bucket.put_prefix.as_ref().unwrap_or(&bucket.prefix),
            encode_key(key)
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        let ack = self
            .cluster
            .jetstream
            .publish_with_headers(subject, headers, Bytes::new())
            .await
            .map_err(|e| failed(boxed(e)))?
            .await
            .map_err(|e| failed(boxed(e)))?;
        self.wrote(store, key, ack.sequence, None);
        Ok(())
    }

    /// The bucket of `store`; `None` if it was never written and `create`
    /// is false (reads of a store never written find nothing).
    async fn bucket(&self, store: &StoreId, create: bool) -> Result<Option<Store>, KvError> {
        if let Some(bucket) = self
            .buckets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(store)
        {
            return Ok(Some(bucket.clone()));
        }
        let name = bucket_name(store)?;
        let Some(bucket) = self
            .cluster
            .key_value(&name, create)
            .await
            .map_err(unavailable("opening a key-value bucket failed"))?
        else {
            return Ok(None);
        };
        self.buckets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(store.clone(), bucket.clone());
        Ok(Some(bucket))
    }

    async fn writable(&self, store: &StoreId) -> Result<Store, KvError> {
        self.bucket(store, true)
            .await?
            .ok_or_else(|| KvError::storage("the bucket was not created"))
    }

    /// The live value of `key` and its revision (a deleted key has one too).
    async fn entry(bucket: &Store, key: &str) -> Result<(Option<Bytes>, Option<u64>), KvError> {
        let entry = bucket
            .entry(encode_key(key))
            .await
            .map_err(|e| unavailable("reading a key failed")(boxed(e)))?;
        Ok(match entry {
            Some(entry) if entry.operation == Operation::Put => {
                (Some(entry.value), Some(entry.revision))
            }
            Some(entry) => (None, Some(entry.revision)),
            None => (None, None),
        })
    }

    /// Writes `value` if `key` is still at `revision` (`None`: never
    /// written): the new revision, or `None` on a conflict.
    async fn write_if(
        bucket: &Store,
        key: &str,
        revision: Option<u64>,
        value: Bytes,
    ) -> Result<Option<u64>, KvError> {
        crate::nats::write_if_revision(bucket, &encode_key(key), revision, value)
            .await
            .map_err(unavailable("writing a key failed"))
    }

    /// Every live key under `prefix` in `bucket`, with its value's size,
    /// read headers only.
    async fn scan(&self, bucket: &Store, prefix: &str) -> Result<Vec<(String, u64)>, KvError> {
        let messages = self
            .cluster
            .last_per_subject(&bucket.stream, prefix_filter(&bucket.prefix, prefix), true)
            .await
            .map_err(unavailable("listing keys failed"))?;
        let mut keys = Vec::new();
        for message in messages {
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_string())
            };
            let key = message
                .subject
                .as_str()
                .strip_prefix(bucket.prefix.as_str())
                .and_then(decode_key);
            if let (true, Some(key)) = (crate::nats::is_live(&message), key) {
                let size = header("Nats-Msg-Size")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                keys.push((key, size));
            }
        }
        Ok(keys)
    }
}

#[async_trait]
impl KvStore for NatsKv {
    async fn get(&self, store: &StoreId, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key)?;
        let Some(bucket) = self.bucket(store, false).await? else {
            return Ok(None);
        };
        Ok(self.read(store, &bucket, key).await?.map(|v| v.to_vec()))
    }

    async fn get_latest(&self, store: &StoreId, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key)?;
        let Some(bucket) = self.bucket(store, false).await? else {
            return Ok(None);
        };
        Ok(Self::entry(&bucket, key).await?.0.map(|v| v.to_vec()))
    }

    async fn set(&self, store: &StoreId, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        check_key(key)?;
        check_value(&value)?;
        let bucket = self.writable(store).await?;
        self.put(store, &bucket, key, Bytes::from(value)).await
    }

    async fn delete(&self, store: &StoreId, key: &str) -> Result<(), KvError> {
        check_key(key)?;
        let Some(bucket) = self.bucket(store, false).await? else {
            return Ok(());
        };
        self.remove(store, &bucket, key).await
    }

    async fn list(
        &self,
        store: &StoreId,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, KvError> {
        if let Some(cursor) = cursor
            && !cursor.starts_with(prefix)
        {
            return Err(KvError::BadCursor {
                cursor: cursor.to_string(),
            });
        }
        let limit = limit.clamp(1, LIST_PAGE_MAX);
        let Some(bucket) = self.bucket(store, false).await? else {
            return Ok(KeyPage {
                keys: Vec::new(),
                cursor: None,
            });
        };
        let mut keys: Vec<String> = self
            .scan(&bucket, prefix)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| cursor.is_none_or(|c| key.as_str() > c))
            .collect();
        keys.sort_unstable();
        let more = keys.len() > limit;
        keys.truncate(limit);
        let cursor = more.then(|| keys.last().cloned()).flatten();
        Ok(KeyPage { keys, cursor })
    }

    async fn increment(&self, store: &StoreId, key: &str, delta: i64) -> Result<i64, KvError> {
        check_key(key)?;
        let bucket = self.writable(store).await?;
        let stripe = {
            use std::hash::{Hash as _, Hasher as _};
            // Fixed keys: one key must always map to the same stripe.
            let mut hasher = std::hash::DefaultHasher::new();
            (store, key).hash(&mut hasher);
            hasher.finish() as usize % INCREMENT_STRIPES
        };
        let _turn = self.increments[stripe].lock().await;
        loop {
            let (value, revision) = Self::entry(&bucket, key).await?;
            let current = counter_value(key, value.as_deref())?;
            let new = current
                .checked_add(delta)
                .ok_or_else(|| KvError::Overflow {
                    key: key.to_string(),
                })?;
            let written = Bytes::from(new.to_string());
            if let Some(revision) = Self::write_if(&bucket, key, revision, written.clone()).await? {
                self.wrote(store, key, revision, Some(written));
                return Ok(new);
            }
            // Another writer got there first: read again.
        }
    }

    async fn compare_and_swap(
        &self,
        store: &StoreId,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<CasOutcome, KvError> {
        check_key(key)?;
        check_value(&new)?;
        let bucket = self.writable(store).await?;
        let new = Bytes::from(new);
        loop {
            let (value, revision) = Self::entry(&bucket, key).await?;
            if value.as_deref() != expected.as_deref() {
                return Ok(CasOutcome::Mismatch(value.map(|v| v.to_vec())));
            }
            if let Some(revision) = Self::write_if(&bucket, key, revision, new.clone()).await? {
                self.wrote(store, key, revision, Some(new));
                return Ok(CasOutcome::Swapped);
            }
        }
    }

    async fn get_many(
        &self,
        store: &StoreId,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        check_batch(keys.len())?;
        keys.iter().try_for_each(|k| check_key(k))?;
        let Some(bucket) = self.bucket(store, false).await? else {
            return Ok(vec![None; keys.len()]);
        };
        let reads = keys.iter().map(|key| self.read(store, &bucket, key));
        let values = futures::future::try_join_all(reads).await?;
        Ok(values
            .into_iter()
            .map(|value| value.map(|v| v.to_vec()))
            .collect())
    }

    async fn set_many(
        &self,
        store: &StoreId,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvError> {
        check_batch(entries.len())?;
        for (key, value) in &entries {
            check_key(key)?;
            check_value(value)?;
        }
        if entries.is_empty() {
            return Ok(());
        }
        let bucket = self.writable(store).await?;
        // In order: the last write of a key repeated in the batch wins.
        for (key, value) in entries {
            self.put(store, &bucket, &key, Bytes::from(value)).await?;
        }
        Ok(())
    }

    async fn delete_many(&self, store: &StoreId, keys: Vec<String>) -> Result<(), KvError> {
        check_batch(keys.len())?;
        keys.iter().try_for_each(|k| check_key(k))?;
        let Some(bucket) = self.bucket(store, false).await? else {
            return Ok(());
        };
        for key in keys {
            self.remove(store, &bucket, &key).await?;
        }
        Ok(())
    }

    async fn stored_bytes(&self) -> Result<HashMap<String, u64>, KvError> {
        let failed = unavailable("measuring stored bytes failed");
        let js = &self.cluster.jetstream;
        let mut names = js.stream_names();
        let mut buckets = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| failed(boxed(e)))?;
            // `KV_updraft-kv_{owner}_{store}`.
            let Some(bucket) = name.strip_prefix("KV_") else {
                continue;
            };
            if let Some((owner, _)) = bucket
                .strip_prefix(BUCKET_PREFIX)
                .and_then(|rest| rest.split_once('_'))
            {
                buckets.push((owner.to_string(), bucket.to_string()));
            }
        }
        let mut bytes: HashMap<String, u64> = HashMap::new();
        for (owner, bucket) in buckets {
            let store = js
                .get_key_value(bucket.as_str())
                .await
                .map_err(|e| failed(boxed(e)))?;
            let stored: u64 = self
                .scan(&store, "")
                .await?
                .iter()
                .map(|(key, size)| key.len() as u64 + size)
                .sum();
            if stored > 0 {
                *bytes.entry(owner).or_default() += stored;
            }
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::Arc;

    use super::*;
    use crate::kv::{KEY_BYTES_MAX, VALUE_BYTES_MAX, model};
    use crate::nats::{ClusterConfig, ClusterError};
    use crate::testing::NatsServer;

    #[tokio::test(flavor = "multi_thread")]
    async fn matches_the_reference_model() {
        let server = NatsServer::start();
        let kv = NatsKv::new(server.cluster().await);
        let model = model::run(&kv, 1500, |_| {}).await;
        // A second node sees every acknowledged write.
        let other = NatsKv::new(server.cluster().await);
        let store = StoreId::new(model::STORE.0, model::STORE.1);
        for (k, v) in &model {
            assert_eq!(other.get(&store, k).await.unwrap().as_ref(), Some(v));
        }
        let page = other.list(&store, "", None, LIST_PAGE_MAX).await.unwrap();
        assert_eq!(page.keys, model::list_model(&model, ""));
    }

    /// A listing is what was there when it began, and ends, while another
    /// writer keeps changing the store (it once waited for the writes to
    /// stop).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listing_ends_under_steady_writes() {
        let server = NatsServer::start();
        let kv = Arc::new(NatsKv::new(server.cluster().await));
        let store = StoreId::new("owner", "busy");
        for i in 0..50 {
            kv.set(&store, &format!("k{i:02}"), b"0".to_vec())
                .await
                .unwrap();
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (kv, store, stop) = (kv.clone(), store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    kv.increment(&store, &format!("k{:02}", n % 50), 1)
                        .await
                        .unwrap();
                    n += 1;
                }
            })
        };
        for _ in 0..5 {
            let page = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                kv.list(&store, "k", None, LIST_PAGE_MAX),
            )
            .await
            .expect("the listing never ended")
            .unwrap();
            assert_eq!(page.keys.len(), 50);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn increments_from_two_nodes_all_count() {
        let server = NatsServer::start();
        let nodes = [
            Arc::new(NatsKv::new(server.cluster().await)),
            Arc::new(NatsKv::new(server.cluster().await)),
        ];
        let store = StoreId::new("owner", "counters");
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let (kv, store) = (nodes[i % 2].clone(), store.clone());
                tokio::spawn(async move { kv.increment(&store, "hits", 1).await.unwrap() })
            })
            .collect();
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.await.unwrap());
        }
        seen.sort_unstable();
        // Every increment got its own value: none was lost or doubled.
        assert_eq!(seen, (1..=200).collect::<Vec<i64>>());
        let stored = nodes[0].get(&store, "hits").await.unwrap();
        assert_eq!(stored.as_deref(), Some(&b"200"[..]));
    }

    /// Polls `kv` until `key` reads `want` (another node's write reaches
    /// this node's copy through its watch).
    async fn read_until(kv: &NatsKv, store: &StoreId, key: &str, want: Option<&[u8]>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let got = kv.get(store, key).await.unwrap();
            if got.as_deref() == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{key} reads {got:?}, never {want:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// A node reads from its copy of a bucket once the copy has caught up:
    /// its own writes at once, other nodes' as their watch brings them,
    /// and with NATS gone it still answers reads (and refuses writes).
    #[tokio::test(flavor = "multi_thread")]
    async fn reads_come_from_the_nodes_copy() {
        let mut server = NatsServer::start();
        let (a, b) = (
            NatsKv::new(server.cluster().await),
            NatsKv::new(server.cluster().await),
        );
        let store = StoreId::new("owner", "copied");
        b.set(&store, "old", b"1".to_vec()).await.unwrap();
        b.set(&store, "gone", b"x".to_vec()).await.unwrap();
        // The first read starts a's copy; it reads NATS until the copy is
        // ready, and then the same from memory.
        read_until(&a, &store, "old", Some(b"1")).await;
        b.delete(&store, "gone").await.unwrap();
        b.set(&store, "old", b"2".to_vec()).await.unwrap();
        read_until(&a, &store, "old", Some(b"2")).await;
        read_until(&a, &store, "gone", None).await;
        // Own writes, deletes and atomics read back at once.
        for round in 0..20 {
            let value = format!("v{round}").into_bytes();
            a.set(&store, "mine", value.clone()).await.unwrap();
            assert_eq!(a.get(&store, "mine").await.unwrap(), Some(value));
            a.delete(&store, "mine").await.unwrap();
            assert_eq!(a.get(&store, "mine").await.unwrap(), None);
            let n = a.increment(&store, "n", 1).await.unwrap();
            assert_eq!(
                a.get(&store, "n").await.unwrap(),
                Some(n.to_string().into_bytes())
            );
        }
        a.set_many(
            &store,
            vec![("m1".into(), b"1".to_vec()), ("m2".into(), b"2".to_vec())],
        )
        .await
        .unwrap();
        assert_eq!(
            a.get_many(&store, vec!["m1".into(), "m2".into(), "m3".into()])
                .await
                .unwrap(),
            vec![Some(b"1".to_vec()), Some(b"2".to_vec()), None]
        );
        // With NATS gone, the copy still answers; writes are refused.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !a.copied(&store) {
            assert!(
                std::time::Instant::now() < deadline,
                "the copy never caught up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        read_until(&a, &store, "old", Some(b"2")).await;
        server.kill();
        assert_eq!(a.get(&store, "old").await.unwrap(), Some(b"2".to_vec()));
        assert!(matches!(
            a.set(&store, "old", b"3".to_vec()).await,
            Err(KvError::Unavailable(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_largest_value_and_key_fit() {
        let server = NatsServer::start();
        let kv = NatsKv::new(server.cluster().await);
        let store = StoreId::new("owner", "big");
        let key = "k".repeat(KEY_BYTES_MAX);
        let value = vec![7u8; VALUE_BYTES_MAX];
        kv.set(&store, &key, value.clone()).await.unwrap();
        assert_eq!(kv.get(&store, &key).await.unwrap(), Some(value));
        let err = kv
            .set(&store, "k", vec![0; VALUE_BYTES_MAX + 1])
            .await
            .unwrap_err();
        assert!(matches!(err, KvError::ValueTooLarge { .. }), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unreachable_server_is_named() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("nats://127.0.0.1:{port}");
        let err = crate::nats::Cluster::connect(&ClusterConfig::new([url.clone()]))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClusterError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&url), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn no_url_says_where_to_put_one() {
        let err = crate::nats::Cluster::connect(&ClusterConfig::new(Vec::<String>::new()))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClusterError::NoUrl), "{err}");
        assert!(err.to_string().contains("urls = ["), "{err}");
        for replicas in [0, 6] {
            let mut config = ClusterConfig::new(["nats://127.0.0.1:4222"]);
            config.replicas = replicas;
            let err = crate::nats::Cluster::connect(&config).await.err().unwrap();
            assert!(matches!(err, ClusterError::Replicas(_)), "{err}");
            assert!(err.to_string().contains("use 1, or 3"), "{err}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_server_without_jetstream_is_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, "max_payload: 8MB\n").unwrap();
        let server = NatsServer::start_with(&["-c", config.to_str().unwrap()], false);
        let err = crate::nats::Cluster::connect(&ClusterConfig::new([server.url.clone()]))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClusterError::NoJetStream { .. }), "{err}");
        assert!(err.to_string().contains("-js"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_server_with_small_messages_is_refused_saying_what_to_set() {
        let server = NatsServer::start_with(&[], true);
        let err = crate::nats::Cluster::connect(&ClusterConfig::new([server.url.clone()]))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClusterError::PayloadTooSmall { .. }), "{err}");
        assert!(err.to_string().contains("max_payload: 8MB"), "{err}");
    }

    #[test]
    fn keys_round_trip_and_prefixes_are_subject_prefixes() {
        for key in [
            "a",
            "ab",
            "a/b c",
            "ключ",
            "x.y",
            "_",
            &"k".repeat(KEY_BYTES_MAX),
        ] {
            let encoded = encode_key(key);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'_'),
                "{encoded}"
            );
            assert_eq!(decode_key(&encoded).as_deref(), Some(key));
        }
        assert_eq!(encode_key("ab"), "61.62._");
        assert_eq!(prefix_filter("$KV.b.", "a"), "$KV.b.61.>");
        assert_eq!(prefix_filter("$KV.b.", ""), "$KV.b.>");
        assert_eq!(decode_key("zz._"), None);
        assert_eq!(decode_key("61.62"), None);
    }

    #[test]
    fn buckets_are_named_by_owner_and_store() {
        let bucket = bucket_name(&StoreId::new("acme", "default")).ok();
        assert_eq!(bucket.as_deref(), Some("updraft-kv_acme_default"));
        assert!(bucket_name(&StoreId::new("acme", "Bad_Name")).is_err());
        assert!(bucket_name(&StoreId::new("a_b", "default")).is_err());
    }
}
