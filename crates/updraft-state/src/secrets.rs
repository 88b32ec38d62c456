//! Tenants' secrets: named values a function reads through `wasi:config`
//! (`{{ secret.NAME }}` in its `[variables]`), set and removed by their
//! tenant, never shown again.
//!
//! Each value is sealed with ChaCha20-Poly1305 under the server's secrets
//! key, a fresh random nonce per write and the tenant and name as
//! associated data (a sealed value moved to another name or tenant does not
//! open), and kept in the tenant's reserved key-value store
//! [`SECRETS_STORE`], so the embedded and the cluster backends both hold
//! them, and a change is read by the next invocation on any node.
//!
//! The key is `UPDRAFT_SECRETS_KEY` (64 hex digits) when set, which every
//! node of a cluster must share (a cluster node without it refuses secrets,
//! saying so); otherwise `DATA_DIR/secrets.key`, made on first start with
//! mode 0600.

use std::path::Path;
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use updraft_core::manifest::SECRETS_STORE;

use crate::kv::{KvError, KvStore, StoreId};

/// The environment variable that carries the key (hex).
pub const KEY_ENV: &str = "UPDRAFT_SECRETS_KEY";
const KEY_FILE: &str = "secrets.key";
const NONCE_BYTES: usize = 12;
/// Largest value: a certificate chain fits, a file does not.
pub const SECRET_BYTES_MAX: usize = 64 << 10;
/// Secrets one tenant may hold.
pub const SECRETS_MAX: usize = 1000;

/// Why a secret could not be set, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    Invalid(String),
    #[error("no secret named {0:?}: set it with `updraft secrets set {0}`")]
    NotFound(String),
    #[error(
        "secret {0:?} cannot be opened with this server's secrets key: every node must share {KEY_ENV} (or the same secrets.key); set it again to seal it with this one"
    )]
    WrongKey(String),
    #[error(transparent)]
    Store(#[from] KvError),
    #[error("the secrets key: {0}")]
    Key(String),
    /// 503: this node holds no key (a cluster node without the shared one).
    #[error("{0}")]
    Unconfigured(String),
}

impl updraft_core::Classify for SecretError {
    fn kind(&self) -> updraft_core::ErrorKind {
        match self {
            SecretError::Invalid(_) => updraft_core::ErrorKind::Invalid,
            SecretError::NotFound(_) => updraft_core::ErrorKind::NotFound,
            SecretError::Store(e) => e.kind(),
            SecretError::WrongKey(_) | SecretError::Key(_) => updraft_core::ErrorKind::Internal,
            SecretError::Unconfigured(_) => updraft_core::ErrorKind::Unavailable,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            SecretError::Invalid(_) => "invalid_secret",
            SecretError::NotFound(_) => "secret_not_found",
            SecretError::Store(e) => e.code(),
            SecretError::WrongKey(_) | SecretError::Key(_) => "secrets_key",
            SecretError::Unconfigured(_) => "secrets_unavailable",
        }
    }
}

/// A listed secret: its name only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SecretInfo {
    pub name: String,
}

/// Sealed secrets over a key-value backend.
pub struct Secrets {
    kv: Arc<dyn KvStore>,
    /// `None` on a cluster node without a shared key.
    cipher: Option<ChaCha20Poly1305>,
}

/// Checks a secret's name: what a `{{ secret.NAME }}` reference can hold.
pub fn validate_name(name: &str) -> Result<(), SecretError> {
    updraft_core::manifest::validate_secret_name(name)
        .map_err(|reason| SecretError::Invalid(format!("secret name {name:?}: {reason}")))
}

impl Secrets {
    /// Secrets in `kv`, sealed with the key from [`KEY_ENV`] or, on one
    /// machine (`shared` false), from `data_dir`.
    pub fn open(
        kv: Arc<dyn KvStore>,
        data_dir: &Path,
        shared: bool,
    ) -> Result<Secrets, SecretError> {
        if shared && std::env::var_os(KEY_ENV).is_none() {
            return Ok(Secrets { kv, cipher: None });
        }
        let key = load_key(data_dir)?;
        let cipher = ChaCha20Poly1305::new_from_slice(&key)
            .map_err(|e| SecretError::Key(format!("unusable key: {e}")))?;
        Ok(Secrets {
            kv,
            cipher: Some(cipher),
        })
    }

    fn cipher(&self) -> Result<&ChaCha20Poly1305, SecretError> {
        self.cipher.as_ref().ok_or_else(|| {
            SecretError::Unconfigured(format!(
                "a cluster node keeps secrets only with a key every node shares: set {KEY_ENV} (64 hex digits, e.g. from `openssl rand -hex 32`) on every node"
            ))
        })
    }

    fn store(tenant: &str) -> StoreId {
        StoreId::new(tenant, SECRETS_STORE)
    }

    fn aad(tenant: &str, name: &str) -> String {
        format!("{tenant}/{name}")
    }

    /// Sets (or replaces) `tenant`'s secret `name`.
    pub async fn set(&self, tenant: &str, name: &str, value: &str) -> Result<(), SecretError> {
        validate_name(name)?;
        let cipher = self.cipher()?;
        if value.len() > SECRET_BYTES_MAX {
            return Err(SecretError::Invalid(format!(
                "the value is {} bytes, at most {SECRET_BYTES_MAX}",
                value.len()
            )));
        }
        let store = Self::store(tenant);
        if !self.kv.exists(&store, name).await? && self.list(tenant).await?.len() >= SECRETS_MAX {
            return Err(SecretError::Invalid(format!(
                "a tenant holds at most {SECRETS_MAX} secrets: remove one first"
            )));
        }
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce)
            .map_err(|e| SecretError::Key(format!("no randomness for a nonce: {e}")))?;
        let aad = Self::aad(tenant, name);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Key("sealing failed".into()))?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        self.kv.set(&store, name, stored).await?;
        Ok(())
    }

    /// The value of `tenant`'s secret `name`, if it is set.
    pub async fn get(&self, tenant: &str, name: &str) -> Result<Option<String>, SecretError> {
        let cipher = self.cipher()?;
        let Some(stored) = self.kv.get(&Self::store(tenant), name).await? else {
            return Ok(None);
        };
        if stored.len() < NONCE_BYTES {
            return Err(SecretError::WrongKey(name.to_string()));
        }
        let (nonce, sealed) = stored.split_at(NONCE_BYTES);
        let aad = Self::aad(tenant, name);
        let open = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SecretError::WrongKey(name.to_string()))?;
        String::from_utf8(open)
            .map(Some)
            .map_err(|_| SecretError::WrongKey(name.to_string()))
    }

    /// `tenant`'s secrets, by name.
    pub async fn list(&self, tenant: &str) -> Result<Vec<SecretInfo>, SecretError> {
        let store = Self::store(tenant);
        let mut names = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .kv
                .list(&store, "", cursor.as_deref(), crate::kv::LIST_PAGE_MAX)
                .await?;
            names.extend(page.keys.into_iter().map(|name| SecretInfo { name }));
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(names),
            }
        }
    }

    /// Removes `tenant`'s secret `name`.
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<(), SecretError> {
        validate_name(name)?;
        let store = Self::store(tenant);
        if !self.kv.exists(&store, name).await? {
            return Err(SecretError::NotFound(name.to_string()));
        }
        self.kv.delete(&store, name).await?;
        Ok(())
    }
}

/// The key: [`KEY_ENV`], else `data_dir/secrets.key` (made if missing).
fn load_key(data_dir: &Path) -> Result<Vec<u8>, SecretError> {
    let parse = |text: &str, from: &str| {
        hex::decode(text.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| SecretError::Key(format!("{from} must hold 64 hex digits (32 bytes)")))
    };
    if let Ok(text) = std::env::var(KEY_ENV) {
        return parse(&text, KEY_ENV);
    }
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key)
                .map_err(|e| SecretError::Key(format!("no randomness for a key: {e}")))?;
            write_private(&path, &hex::encode(key))
                .map_err(|e| SecretError::Key(format!("writing {}: {e}", path.display())))?;
            Ok(key.to_vec())
        }
        Err(e) => Err(SecretError::Key(format!("reading {}: {e}", path.display()))),
    }
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::kv::EmbeddedKv;

    #[tokio::test]
    async fn secrets_are_sealed_per_tenant_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let kv: Arc<dyn KvStore> =
            Arc::new(EmbeddedKv::open(dir.path(), crate::kv::Durability::Disk).unwrap());
        let secrets = Secrets::open(kv.clone(), dir.path(), false).unwrap();
        secrets.set("acme", "token", "s3cr3t-value").await.unwrap();
        assert_eq!(
            secrets.get("acme", "token").await.unwrap().as_deref(),
            Some("s3cr3t-value")
        );
        assert_eq!(secrets.get("other", "token").await.unwrap(), None);
        // At rest it is sealed: the value is nowhere in what is stored.
        let stored = kv
            .get(&StoreId::new("acme", SECRETS_STORE), "token")
            .await
            .unwrap()
            .unwrap();
        assert!(!String::from_utf8_lossy(&stored).contains("s3cr3t"));
        // Moved to another name, it does not open.
        kv.set(&StoreId::new("acme", SECRETS_STORE), "moved", stored)
            .await
            .unwrap();
        assert!(matches!(
            secrets.get("acme", "moved").await,
            Err(SecretError::WrongKey(_))
        ));
        assert_eq!(
            secrets.list("acme").await.unwrap(),
            vec![
                SecretInfo {
                    name: "moved".into()
                },
                SecretInfo {
                    name: "token".into()
                }
            ]
        );
        secrets.delete("acme", "token").await.unwrap();
        assert!(matches!(
            secrets.delete("acme", "token").await,
            Err(SecretError::NotFound(_))
        ));
        // The key file is private, and reused.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        secrets.set("acme", "again", "v").await.unwrap();
        let reopened = Secrets::open(kv.clone(), dir.path(), false).unwrap();
        assert_eq!(
            reopened.get("acme", "again").await.unwrap().as_deref(),
            Some("v")
        );
        // A cluster node without the shared key says what to set.
        let node = Secrets::open(kv, dir.path(), true).unwrap();
        let refused = node.get("acme", "again").await.unwrap_err().to_string();
        assert!(refused.contains(KEY_ENV), "{refused}");
    }
}
