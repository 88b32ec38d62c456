//! Tenants' API keys, in `tenants.redb`.
//!
//! A key reads `upd_{id}_{secret}`. The id (12 hex digits) names the key in
//! listings and revocations; the secret is 32 random bytes, and only its
//! SHA-256 is stored, so neither the database nor a backup of it holds a
//! usable key. A random 256-bit secret needs no slow password hash: there is
//! nothing to guess. Verifying a request looks the id up in an in-memory
//! copy of the table, so it costs no disk read; a revocation removes the key
//! from the disk and the copy at once, so it stops working immediately.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use updraft_core::validate_tenant;

use crate::error::StateError;
use crate::registry::now_ms;

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

/// The durable key table and its in-memory copy.
pub struct Tenants {
    db: Database,
    keys: RwLock<HashMap<String, StoredKey>>,
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

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tenants {
    pub fn open(data_dir: &Path) -> Result<Tenants, StateError> {
        std::fs::create_dir_all(data_dir)?;
        let db = Database::create(data_dir.join("tenants.redb"))?;
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
            db,
            keys: RwLock::new(keys),
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
    pub fn create_key(
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
        let txn = self.db.begin_write()?;
        txn.open_table(KEYS)?
            .insert(id.as_str(), serde_json::to_vec(&stored)?.as_slice())?;
        txn.commit()?;
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
    pub fn revoke(&self, id: &str, tenant: Option<&str>) -> Result<KeyInfo, StateError> {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let info = match keys.get(id) {
            Some(k) if tenant.is_none_or(|t| k.info.tenant == t) => k.info.clone(),
            _ => return Err(StateError::ApiKeyNotFound(id.to_string())),
        };
        if info.admin && keys.values().filter(|k| k.info.admin).count() == 1 {
            return Err(StateError::Invalid(format!(
                "key {id} is the last admin key: create another with `updraft keys create --admin` first"
            )));
        }
        let txn = self.db.begin_write()?;
        txn.open_table(KEYS)?.remove(id)?;
        txn.commit()?;
        keys.remove(id);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn keys_verify_until_revoked_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (admin, admin_key, acme_key, acme_id);
        {
            let tenants = Tenants::open(dir.path()).unwrap();
            assert!(tenants.is_empty());
            (admin, admin_key) = tenants.create_key("local", true, "first start").unwrap();
            let (acme, key) = tenants.create_key("acme", false, "ci").unwrap();
            (acme_key, acme_id) = (key, acme.id);
            assert!(admin_key.starts_with("upd_") && admin_key.len() == 4 + 12 + 1 + 64);
            assert!(matches!(
                tenants.create_key("Bad/Name", false, ""),
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
            tenants.revoke(&acme_id, Some("other")),
            Err(StateError::ApiKeyNotFound(_))
        ));
        tenants.revoke(&acme_id, Some("acme")).unwrap();
        assert_eq!(tenants.verify(&acme_key), None);
        assert!(matches!(
            tenants.revoke(&admin.id, None),
            Err(StateError::Invalid(_))
        ));
        drop(tenants);
        let tenants = Tenants::open(dir.path()).unwrap();
        assert_eq!(tenants.verify(&acme_key), None);
        assert_eq!(tenants.list(None).len(), 1);
    }
}
