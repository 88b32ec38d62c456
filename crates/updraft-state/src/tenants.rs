//! Tenants' API keys: in `tenants.redb`, or in cluster mode in the KV
//! bucket `updraft-keys` that every node shares.
//!
//! A key reads `upd_{id}_{secret}`. The id (12 hex digits) names the key in
//! listings and revocations; the secret is 32 random bytes, and only its
//! SHA-256 is stored, so neither the database nor a backup of it holds a
//! usable key. A random 256-bit secret needs no slow password hash: there is
//! nothing to guess. Verifying a request looks the id up in an in-memory
//! copy of the table, so it costs no disk read; a revocation removes the key
//! from the disk and the copy at once, so it stops working immediately.
//!
//! In cluster mode each node's copy follows the bucket by a watch: a key
//! made or revoked on one node works or stops on the others as soon as the
//! change reaches them (milliseconds on one network), and at once on the
//! node that made the change.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock, Weak};

use async_nats::jetstream::kv::{Operation, Store};
use bytes::Bytes;
use futures::StreamExt as _;

use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use updraft_core::validate_tenant;

use crate::error::StateError;
use crate::nats::{Cluster, boxed};
use crate::redb_file::RedbFile;
use crate::registry::now_ms;

/// The KV bucket of keys in cluster mode.
const BUCKET: &str = "updraft-keys";

const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");

const KEY_PREFIX: &str = "upd_";
/// Bytes of randomness in a key's id and in its secret.
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;
/// Longest label of a key.
pub const KEY_LABEL_BYTES_MAX: usize = 200;

/// What a listing shows of a key: never the secret, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: String,
    /// Admin keys also manage other tenants' keys.
    pub admin: bool,
    pub label: String,
    pub created_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    info: KeyInfo,
    /// Hex SHA-256 of the secret.
    secret_sha256: String,
}

/// Who made a request: the tenant of a valid key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: Arc<str>,
    pub admin: bool,
    pub key_id: Arc<str>,
}

type KeyMap = RwLock<HashMap<String, StoredKey>>;

/// The durable key table and its in-memory copy.
pub struct Tenants {
    backend: Backend,
    keys: Arc<KeyMap>,
}

enum Backend {
    Embedded(RedbFile),
    /// Boxed: a bucket handle is large (its stream's whole info).
    Nats(Box<Store>),
}

fn unavailable(what: &'static str) -> impl Fn(async_nats::Error) -> StateError {
    move |e| StateError::Unavailable(updraft_core::Failure::boxed(what, e))
}

/// Every key in the bucket now.
async fn load(cluster: &Cluster, bucket: &Store) -> Result<HashMap<String, StoredKey>, StateError> {
    let messages = cluster
        .last_per_subject(&bucket.stream, format!("{}>", bucket.prefix), false)
        .await
        .map_err(unavailable("reading the API keys failed"))?;
    let mut keys = HashMap::new();
    for message in messages {
        if !crate::nats::is_live(&message) {
            continue;
        }
        if let Some(id) = message
            .subject
            .as_str()
            .strip_prefix(bucket.prefix.as_str())
        {
            keys.insert(id.to_string(), serde_json::from_slice(&message.payload)?);
        }
    }
    Ok(keys)
}

/// Keeps `keys` in step with the bucket until the [`Tenants`] is gone;
/// after a lost watch, reads every key again.
async fn follow(
    cluster: Cluster,
    bucket: Store,
    keys: Weak<KeyMap>,
    mut watch: async_nats::jetstream::kv::Watch,
) {
    loop {
        while let Some(entry) = watch.next().await {
            let Some(keys) = keys.upgrade() else { return };
            let Ok(entry) = entry else { break };
            let mut keys = keys.write().unwrap_or_else(|e| e.into_inner());
            match entry.operation {
                Operation::Put => match serde_json::from_slice(&entry.value) {
                    Ok(stored) => {
                        keys.insert(entry.key, stored);
                    }
                    Err(e) => tracing::warn!("API key {} is unreadable: {e}", entry.key),
                },
                Operation::Delete | Operation::Purge => {
                    keys.remove(&entry.key);
                }
            }
        }
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            if keys.strong_count() == 0 {
                return;
            }
            let Ok(again) = bucket.watch_all().await else {
                continue;
            };
            match load(&cluster, &bucket).await {
                Ok(all) => {
                    let Some(keys) = keys.upgrade() else { return };
                    *keys.write().unwrap_or_else(|e| e.into_inner()) = all;
                    watch = again;
                    break;
                }
                Err(e) => tracing::debug!("reading the API keys again: {e}"),
            }
        }
    }
}

fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_hex(bytes: usize) -> Result<String, StateError> {
    let mut buf = vec![0; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| StateError::storage(format!("no randomness for a key: {e}")))?;
    Ok(hex::encode(buf))
}

/// Runs a write on `file`: refused after a failed one until the disk takes
/// writes again, and a storage failure refuses the next ones (redb takes
/// none until the file is reopened).
fn wrote(
    file: &RedbFile,
    write: impl FnOnce(&redb::Database) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let result = file
        .writable()
        .map_err(StateError::from)
        .and_then(|w| write(&w.db));
    if let Err(e @ StateError::Storage(_)) = &result {
        file.failed(e);
    }
    result
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tenants {
    pub fn open(data_dir: &Path) -> Result<Tenants, StateError> {
        std::fs::create_dir_all(data_dir)?;
        let file = RedbFile::create(data_dir.join("tenants.redb"))?;
        let db = file.db()?;
        let mut txn = db.begin_write()?;
        // Creating the table is idempotent; it need not wait for a sync.
        txn.set_durability(Durability::None)?;
        txn.open_table(KEYS)?;
        txn.commit()?;
        let mut keys = HashMap::new();
        {
            let txn = db.begin_read()?;
            for entry in txn.open_table(KEYS)?.iter()? {
                let (id, value) = entry?;
                keys.insert(
                    id.value().to_string(),
                    serde_json::from_slice(value.value())?,
                );
            }
        }
        Ok(Tenants {
            backend: Backend::Embedded(file),
            keys: Arc::new(RwLock::new(keys)),
        })
    }

    /// The keys of a cluster, shared by its nodes.
    pub async fn open_nats(cluster: &Cluster) -> Result<Tenants, StateError> {
        let bucket = cluster
            .key_value(BUCKET, true)
            .await
            .map_err(unavailable("opening the API keys failed"))?
            .ok_or_else(|| StateError::storage("the bucket of API keys was not created"))?;
        // Watch before reading, so no change falls between the two.
        let watch = bucket
            .watch_all()
            .await
            .map_err(|e| unavailable("watching the API keys failed")(boxed(e)))?;
        let keys = Arc::new(RwLock::new(load(cluster, &bucket).await?));
        tokio::spawn(follow(
            cluster.clone(),
            bucket.clone(),
            Arc::downgrade(&keys),
            watch,
        ));
        Ok(Tenants {
            backend: Backend::Nats(Box::new(bucket)),
            keys,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, StoredKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether no key exists yet (a new data dir).
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Makes a key for `tenant` (which exists from then on). Returns the key
    /// itself: it is shown this once and never stored.
    pub async fn create_key(
        &self,
        tenant: &str,
        admin: bool,
        label: &str,
    ) -> Result<(KeyInfo, String), StateError> {
        validate_tenant(tenant).map_err(|e| StateError::Invalid(e.to_string()))?;
        if label.len() > KEY_LABEL_BYTES_MAX || label.chars().any(char::is_control) {
            return Err(StateError::Invalid(format!(
                "invalid key label: use at most {KEY_LABEL_BYTES_MAX} bytes of printable text"
            )));
        }
        let id = random_hex(ID_BYTES)?;
        let secret = random_hex(SECRET_BYTES)?;
        let stored = StoredKey {
            info: KeyInfo {
                id: id.clone(),
                tenant: tenant.to_string(),
                admin,
                label: label.to_string(),
                created_at_ms: now_ms(),
            },
            secret_sha256: sha256_hex(&secret),
        };
        let value = serde_json::to_vec(&stored)?;
        match &self.backend {
            Backend::Embedded(file) => tokio::task::block_in_place(|| {
                wrote(file, |db| {
                    let txn = db.begin_write()?;
                    txn.open_table(KEYS)?
                        .insert(id.as_str(), value.as_slice())?;
                    Ok(txn.commit()?)
                })
            })?,
            Backend::Nats(bucket) => {
                bucket
                    .put(id.as_str(), Bytes::from(value))
                    .await
                    .map_err(|e| unavailable("storing the API key failed")(boxed(e)))?;
            }
        }
        let info = stored.info.clone();
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), stored);
        Ok((info, format!("{KEY_PREFIX}{id}_{secret}")))
    }

    /// The caller a presented key stands for, if it is a valid, unrevoked key.
    pub fn verify(&self, key: &str) -> Option<Caller> {
        let rest = key.strip_prefix(KEY_PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let keys = self.read();
        let stored = keys.get(id)?;
        same(
            sha256_hex(secret).as_bytes(),
            stored.secret_sha256.as_bytes(),
        )
        .then(|| Caller {
            tenant: Arc::from(stored.info.tenant.as_str()),
            admin: stored.info.admin,
            key_id: Arc::from(id),
        })
    }

    /// Keys of `tenant`, or of every tenant, oldest first.
    pub fn list(&self, tenant: Option<&str>) -> Vec<KeyInfo> {
        let mut keys: Vec<KeyInfo> = self
            .read()
            .values()
            .filter(|k| tenant.is_none_or(|t| k.info.tenant == t))
            .map(|k| k.info.clone())
            .collect();
        keys.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        keys
    }

    /// Revokes key `id` if it belongs to `tenant` (any tenant's for `None`).
    /// The last admin key cannot be revoked: nobody could manage keys then.
    pub async fn revoke(&self, id: &str, tenant: Option<&str>) -> Result<KeyInfo, StateError> {
        let info = {
            let keys = self.read();
            let info = match keys.get(id) {
                Some(k) if tenant.is_none_or(|t| k.info.tenant == t) => k.info.clone(),
                _ => return Err(StateError::ApiKeyNotFound(id.to_string())),
            };
            if info.admin && keys.values().filter(|k| k.info.admin).count() == 1 {
                return Err(StateError::Invalid(format!(
                    "key {id} is the last admin key: create another with `updraft keys create --admin` first"
                )));
            }
            info
        };
        match &self.backend {
            Backend::Embedded(file) => tokio::task::block_in_place(|| {
                wrote(file, |db| {
                    let txn = db.begin_write()?;
                    txn.open_table(KEYS)?.remove(id)?;
                    Ok(txn.commit()?)
                })
            })?,
            Backend::Nats(bucket) => bucket
                .purge(id)
                .await
                .map_err(|e| unavailable("revoking the API key failed")(boxed(e)))?,
        }
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_verify_until_revoked_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (admin, admin_key, acme_key, acme_id);
        {
            let tenants = Tenants::open(dir.path()).unwrap();
            assert!(tenants.is_empty());
            (admin, admin_key) = tenants
                .create_key("local", true, "first start")
                .await
                .unwrap();
            let (acme, key) = tenants.create_key("acme", false, "ci").await.unwrap();
            (acme_key, acme_id) = (key, acme.id);
            assert!(admin_key.starts_with("upd_") && admin_key.len() == 4 + 12 + 1 + 64);
            assert!(matches!(
                tenants.create_key("Bad/Name", false, "").await,
                Err(StateError::Invalid(_))
            ));
        }
        let tenants = Tenants::open(dir.path()).unwrap();
        let caller = tenants.verify(&acme_key).unwrap();
        assert_eq!((&*caller.tenant, caller.admin), ("acme", false));
        assert!(tenants.verify(&admin_key).unwrap().admin);
        // A wrong secret, a wrong id, garbage: no caller.
        let mut wrong = acme_key.clone();
        wrong.pop();
        wrong.push('x');
        for bad in [wrong.as_str(), "upd_000000000000_00", "", "Bearer x"] {
            assert_eq!(tenants.verify(bad), None, "{bad}");
        }
        // Nothing stored contains a secret.
        let raw = std::fs::read(dir.path().join("tenants.redb")).unwrap();
        let secret = acme_key.rsplit('_').next().unwrap();
        assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));

        assert_eq!(tenants.list(Some("acme")).len(), 1);
        assert_eq!(tenants.list(None).len(), 2);
        // Another tenant cannot revoke it; its own tenant can.
        assert!(matches!(
            tenants.revoke(&acme_id, Some("other")).await,
            Err(StateError::ApiKeyNotFound(_))
        ));
        tenants.revoke(&acme_id, Some("acme")).await.unwrap();
        assert_eq!(tenants.verify(&acme_key), None);
        assert!(matches!(
            tenants.revoke(&admin.id, None).await,
            Err(StateError::Invalid(_))
        ));
        drop(tenants);
        let tenants = Tenants::open(dir.path()).unwrap();
        assert_eq!(tenants.verify(&acme_key), None);
        assert_eq!(tenants.list(None).len(), 1);
    }

    /// Two nodes share keys: one made on either verifies on both, one
    /// revoked on either stops working on both, and a node started later
    /// reads every key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_nodes_share_keys() {
        let server = crate::testing::NatsServer::start();
        let a = Tenants::open_nats(&server.cluster().await).await.unwrap();
        let b = Tenants::open_nats(&server.cluster().await).await.unwrap();
        assert!(a.is_empty() && b.is_empty());
        let (_, admin_key) = a.create_key("local", true, "first").await.unwrap();
        let (acme, acme_key) = b.create_key("acme", false, "ci").await.unwrap();
        let eventually = |tenants: &Tenants, key: &str, valid: bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while tenants.verify(key).is_some() != valid {
                assert!(std::time::Instant::now() < deadline, "{key} never {valid}");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        eventually(&b, &admin_key, true);
        eventually(&a, &acme_key, true);
        assert_eq!(a.verify(&acme_key).unwrap().tenant.as_ref(), "acme");
        a.revoke(&acme.id, Some("acme")).await.unwrap();
        assert_eq!(a.verify(&acme_key), None, "at once where revoked");
        eventually(&b, &acme_key, false);
        let c = Tenants::open_nats(&server.cluster().await).await.unwrap();
        assert!(c.verify(&admin_key).unwrap().admin);
        assert_eq!(c.list(None).len(), 1);
    }
}
