//! The function registry: functions, their immutable versions and aliases,
//! and the uploaded Wasm, content-addressed. One trait, two backends:
//!
//! - [`EmbeddedRegistry`]: one redb database and files in the data dir
//!   (one node);
//! - [`NatsRegistry`]: a JetStream KV bucket and object store (cluster
//!   mode), whose changes every node watches.
//!
//! Functions are keyed by `tenant/name` ([`updraft_core::function_key`]);
//! routes are unique per tenant. A deploy is whole or not at all on both.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use updraft_core::{Digest, FunctionKind, LOCAL_TENANT, Limits, Manifest, Route, VersionRecord};

use crate::error::StateError;

mod embedded;
mod nats;

pub use embedded::EmbeddedRegistry;
pub use nats::NatsRegistry;

/// The alias that every deploy moves.
pub const LATEST: &str = "latest";

/// A function: its name, aliases and version counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// The owner; records from before tenants existed belong to `local`.
    #[serde(default = "local_tenant")]
    pub tenant: String,
    pub name: String,
    /// Alias → version number. `latest` is what routes and invokes use.
    pub aliases: BTreeMap<String, u64>,
    /// The number the next new version gets.
    pub next_version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

fn local_tenant() -> String {
    LOCAL_TENANT.to_string()
}

impl FunctionRecord {
    /// The registry key, `tenant/name`.
    pub fn key(&self) -> String {
        updraft_core::function_key(&self.tenant, &self.name)
    }

    pub fn latest(&self) -> Option<u64> {
        self.aliases.get(LATEST).copied()
    }
}

/// What a deploy adds.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub manifest: Manifest,
    pub wasm_digest: Digest,
    pub wasm_bytes: u64,
    pub kind: FunctionKind,
    pub limits: Limits,
}

impl NewVersion {
    /// The version record of this deploy, numbered `version`.
    pub(crate) fn into_record(self, version: u64, now_ms: u64) -> VersionRecord {
        VersionRecord {
            version,
            digest: VersionRecord::digest_of(&self.wasm_digest, &self.manifest),
            wasm_digest: self.wasm_digest,
            wasm_bytes: self.wasm_bytes,
            kind: self.kind,
            manifest: self.manifest,
            limits: self.limits,
            created_at_ms: now_ms,
        }
    }
}

/// A change another node made: what changed is read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryChange {
    /// Something of this tenant's functions.
    Tenant(String),
    /// Anything: changes may have been missed (the watch was re-made).
    All,
}

/// The registry, shared by the nodes of a cluster or kept by one.
#[async_trait]
pub trait Registry: Send + Sync {
    /// Stores uploaded Wasm under its digest (no-op if already there).
    async fn store_wasm(&self, digest: &Digest, bytes: Bytes) -> Result<(), StateError>;

    /// Reads stored Wasm.
    async fn load_wasm(&self, digest: &Digest) -> Result<Bytes, StateError>;

    /// Refuses a route another function of the tenant already serves (a
    /// cheap pre-check; [`Registry::deploy`] checks again as it commits).
    async fn check_route(&self, key: &str, route: Option<&Route>) -> Result<(), StateError>;

    /// Adds a version of `tenant`'s function (or reuses an identical earlier
    /// one) and moves `latest` to it.
    async fn deploy(
        &self,
        tenant: &str,
        new: NewVersion,
    ) -> Result<(FunctionRecord, VersionRecord), StateError>;

    /// Every function of `tenant` (all tenants: `None`) with the version
    /// its `latest` alias points at.
    async fn list(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<(FunctionRecord, VersionRecord)>, StateError>;

    /// A function (by key) and all its versions, oldest first.
    async fn get(&self, key: &str) -> Result<(FunctionRecord, Vec<VersionRecord>), StateError>;

    /// Points `latest` at `version`, or at the version before the current one.
    async fn rollback(
        &self,
        key: &str,
        version: Option<u64>,
    ) -> Result<(FunctionRecord, VersionRecord), StateError>;

    /// Removes a function and its versions. Returns the Wasm digests no
    /// remaining version uses (their stored Wasm is deleted here; the
    /// caller drops their compiled artifacts).
    async fn delete(&self, key: &str) -> Result<Vec<Digest>, StateError>;

    /// Changes made by anyone, from now on; `None` if only this process
    /// changes the registry.
    async fn changes(&self) -> Result<Option<BoxStream<'static, RegistryChange>>, StateError>;
}

/// Milliseconds since the Unix epoch, by the system clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes a file so readers see all of it or none of it, and it survives a
/// crash. Two writers of one path at once (a deploy and a background
/// compile of the same code) each write their own temporary file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The behaviour both backends share, run against each.
#[cfg(test)]
pub(crate) mod model {
    use super::*;

    pub(crate) fn version(name: &str, wasm: &[u8], route: Option<&str>) -> NewVersion {
        let manifest = Manifest {
            name: name.into(),
            route: route.map(String::from),
            ..Manifest::default()
        };
        NewVersion {
            limits: manifest.limits().unwrap(),
            manifest,
            wasm_digest: Digest::of(wasm),
            wasm_bytes: wasm.len() as u64,
            kind: FunctionKind::Http,
        }
    }

    async fn deploy(reg: &dyn Registry, tenant: &str, new: NewVersion) -> VersionRecord {
        reg.deploy(tenant, new).await.unwrap().1
    }

    /// Deploys, versions, rollback, routes, delete: what every backend does.
    pub(crate) async fn run(reg: &dyn Registry) {
        for wasm in [&b"one"[..], b"two", b"three"] {
            reg.store_wasm(&Digest::of(wasm), Bytes::from_static(wasm))
                .await
                .unwrap();
        }
        assert_eq!(
            reg.load_wasm(&Digest::of(b"two")).await.unwrap(),
            &b"two"[..]
        );
        assert!(matches!(
            reg.load_wasm(&Digest::of(b"never")).await,
            Err(StateError::Storage(_))
        ));
        let v1 = deploy(reg, "t", version("a", b"one", Some("/a"))).await;
        let v2 = deploy(reg, "t", version("a", b"two", Some("/a"))).await;
        assert_eq!((v1.version, v2.version), (1, 2));
        // Identical content reuses the version.
        let (rec, again) = reg
            .deploy("t", version("a", b"two", Some("/a")))
            .await
            .unwrap();
        assert_eq!((again.version, again.digest), (2, v2.digest));
        assert_eq!(rec.next_version, 3);
        let (rec, back) = reg.rollback("t/a", None).await.unwrap();
        assert_eq!((rec.latest(), back.version), (Some(1), 1));
        assert_eq!(back.digest, v1.digest);
        assert!(matches!(
            reg.rollback("t/a", Some(9)).await,
            Err(StateError::VersionNotFound { version: 9, .. })
        ));
        // Version 1 has none before it.
        let err = reg.rollback("t/a", None).await.unwrap_err();
        assert!(matches!(err, StateError::Invalid(_)));
        let (rec, versions) = reg.get("t/a").await.unwrap();
        assert_eq!((rec.latest(), rec.key()), (Some(1), "t/a".to_string()));
        let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
        assert_eq!(numbers, [1, 2]);
        assert_eq!(versions[1].digest, v2.digest);

        // Routes are unique per tenant, and a refusal changes nothing.
        let err = reg
            .deploy("t", version("b", b"two", Some("/a")))
            .await
            .unwrap_err();
        assert!(matches!(err, StateError::RouteConflict { ref owner, .. } if owner == "a"));
        assert!(matches!(
            reg.check_route("t/b", Route::parse("/a").ok().as_ref())
                .await,
            Err(StateError::RouteConflict { .. })
        ));
        reg.check_route("t/a", Route::parse("/a").ok().as_ref())
            .await
            .unwrap();
        assert!(matches!(
            reg.get("t/b").await,
            Err(StateError::FunctionNotFound(_))
        ));
        // A prefix route on the same path is a different route.
        deploy(reg, "t", version("b", b"two", Some("/a/..."))).await;
        // Another tenant may serve /a too.
        deploy(reg, "u", version("a", b"three", Some("/a"))).await;
        assert_eq!(reg.list(None).await.unwrap().len(), 3);
        let mine = reg.list(Some("t")).await.unwrap();
        let names: Vec<&str> = mine.iter().map(|(r, _)| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let (_, latest) = &mine[0];
        assert_eq!(latest.version, 1);

        // Deleting frees what no other version uses: `one` only.
        let orphans = reg.delete("t/a").await.unwrap();
        assert_eq!(orphans, vec![Digest::of(b"one")]);
        assert!(reg.load_wasm(&Digest::of(b"one")).await.is_err());
        assert!(reg.load_wasm(&Digest::of(b"two")).await.is_ok());
        assert!(matches!(
            reg.get("t/a").await,
            Err(StateError::FunctionNotFound(_))
        ));
        assert!(matches!(
            reg.delete("t/a").await,
            Err(StateError::FunctionNotFound(_))
        ));
        // A deploy after a delete starts again at version 1.
        let again = deploy(reg, "t", version("a", b"two", None)).await;
        assert_eq!(again.version, 1);
        assert_eq!(reg.list(None).await.unwrap().len(), 3);
    }
}
