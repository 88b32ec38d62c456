//! The registry of one node: functions, versions and aliases in one redb
//! database (`registry.redb`), the uploaded Wasm as content-addressed files
//! (`wasm/<sha256>.wasm`).
//!
//! Every change is one redb write transaction committed with immediate
//! durability: a deploy is either fully there after a crash or not at all.
//! Wasm files are written (and fsynced) before the transaction that refers to
//! them, so a committed version never points at a missing file.
//!
//! A failed write (a full disk) refuses later writes until the disk takes
//! them again, then the file is reopened ([`RedbFile`]): no restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use updraft_core::{Digest, LOCAL_TENANT, Route, VersionRecord, function_key, split_function_key};

use super::{
    FunctionRecord, LATEST, NewVersion, Registry, RegistryChange, now_ms, write_atomically,
};
use crate::error::StateError;
use crate::redb_file::RedbFile;

const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
const VERSIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("versions");

/// The registry of one node, in its data dir.
pub struct EmbeddedRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    /// `registry.redb`: after a failed write, writes are refused (fjall's
    /// rule: never pretend) until the disk takes them again.
    file: RedbFile,
    wasm_dir: PathBuf,
}

impl EmbeddedRegistry {
    /// Opens (or creates) the registry under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<EmbeddedRegistry, StateError> {
        let wasm_dir = data_dir.join("wasm");
        std::fs::create_dir_all(&wasm_dir)?;
        let file = RedbFile::create(data_dir.join("registry.redb"))?;
        let db = file.db()?;
        // Creating the tables is idempotent, so it need not wait for a sync:
        // a crash before the next durable commit just creates them again.
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        txn.open_table(FUNCTIONS)?;
        txn.open_table(VERSIONS)?;
        txn.commit()?;
        migrate_to_tenant_keys(&db)?;
        drop(db);
        Ok(EmbeddedRegistry {
            inner: Arc::new(Inner { file, wasm_dir }),
        })
    }

    /// Runs `f` on the database off the async threads: redb blocks, and a
    /// deploy waits for its fsync.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StateError::Storage(updraft_core::Failure::new(e)))?
    }
}

#[async_trait]
impl Registry for EmbeddedRegistry {
    async fn store_wasm(&self, digest: &Digest, bytes: Bytes) -> Result<(), StateError> {
        let digest = *digest;
        self.blocking(move |inner| inner.store_wasm(&digest, &bytes))
            .await
    }

    async fn load_wasm(&self, digest: &Digest) -> Result<Bytes, StateError> {
        let digest = *digest;
        self.blocking(move |inner| inner.load_wasm(&digest).map(Bytes::from))
            .await
    }

    async fn check_route(&self, key: &str, route: Option<&Route>) -> Result<(), StateError> {
        let Some(route) = route.cloned() else {
            return Ok(());
        };
        let key = key.to_string();
        self.blocking(move |inner| inner.check_route(&key, &route))
            .await
    }

    async fn deploy(
        &self,
        tenant: &str,
        new: NewVersion,
    ) -> Result<(FunctionRecord, VersionRecord), StateError> {
        let tenant = tenant.to_string();
        self.blocking(move |inner| inner.wrote(inner.deploy(&tenant, new)))
            .await
    }

    async fn list(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<(FunctionRecord, VersionRecord)>, StateError> {
        let tenant = tenant.map(String::from);
        self.blocking(move |inner| inner.list(tenant.as_deref()))
            .await
    }

    async fn get(&self, key: &str) -> Result<(FunctionRecord, Vec<VersionRecord>), StateError> {
        let key = key.to_string();
        self.blocking(move |inner| inner.get(&key)).await
    }

    async fn rollback(
        &self,
        key: &str,
        version: Option<u64>,
    ) -> Result<(FunctionRecord, VersionRecord), StateError> {
        let key = key.to_string();
        self.blocking(move |inner| inner.wrote(inner.rollback(&key, version)))
            .await
    }

    async fn delete(&self, key: &str) -> Result<Vec<Digest>, StateError> {
        let key = key.to_string();
        self.blocking(move |inner| inner.wrote(inner.delete(&key)))
            .await
    }

    async fn changes(&self) -> Result<Option<BoxStream<'static, RegistryChange>>, StateError> {
        Ok(None)
    }
}

impl Inner {
    /// The database to write to: refused after a failed write until the
    /// disk takes writes again.
    fn writable(&self) -> Result<Arc<Database>, StateError> {
        Ok(self.file.writable()?.db)
    }

    /// The outcome of a write, after which a storage failure refuses
    /// writes (redb takes none until the file is reopened).
    fn wrote<T>(&self, result: Result<T, StateError>) -> Result<T, StateError> {
        if let Err(e @ StateError::Storage(_)) = &result {
            self.file.failed(e);
        }
        result
    }

    fn db(&self) -> Result<Arc<Database>, StateError> {
        Ok(self.file.db()?)
    }

    fn wasm_path(&self, digest: &Digest) -> PathBuf {
        self.wasm_dir.join(format!("{}.wasm", digest.hex()))
    }

    fn store_wasm(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StateError> {
        let path = self.wasm_path(digest);
        if path.is_file() {
            return Ok(());
        }
        write_atomically(&path, bytes)?;
        Ok(())
    }

    fn load_wasm(&self, digest: &Digest) -> Result<Vec<u8>, StateError> {
        std::fs::read(self.wasm_path(digest)).map_err(|e| {
            StateError::Storage(updraft_core::Failure::context(
                format!("wasm {digest} missing from the data dir"),
                e,
            ))
        })
    }

    fn check_route(&self, key: &str, route: &Route) -> Result<(), StateError> {
        let txn = self.db()?.begin_read()?;
        let functions = txn.open_table(FUNCTIONS)?;
        let versions = txn.open_table(VERSIONS)?;
        route_owner(&functions, &versions, key, route)
    }

    fn deploy(
        &self,
        tenant: &str,
        new: NewVersion,
    ) -> Result<(FunctionRecord, VersionRecord), StateError> {
        let db = self.writable()?;
        let name = function_key(tenant, &new.manifest.name);
        let route = new
            .manifest
            .parsed_route()
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        let digest = VersionRecord::digest_of(&new.wasm_digest, &new.manifest);
        let now = now_ms();
        let txn = db.begin_write()?;
        let result = {
            let mut functions = txn.open_table(FUNCTIONS)?;
            let mut versions = txn.open_table(VERSIONS)?;
            if let Some(route) = &route {
                route_owner(&functions, &versions, &name, route)?;
            }
            let mut record = match functions.get(name.as_str())? {
                Some(bytes) => serde_json::from_slice::<FunctionRecord>(bytes.value())?,
                None => FunctionRecord {
                    tenant: tenant.to_string(),
                    name: new.manifest.name.clone(),
                    aliases: BTreeMap::new(),
                    next_version: 1,
                    created_at_ms: now,
                    updated_at_ms: now,
                },
            };
            let mut existing = None;
            for entry in versions.range((name.as_str(), 0)..=(name.as_str(), u64::MAX))? {
                let (_, value) = entry?;
                let version: VersionRecord = serde_json::from_slice(value.value())?;
                if version.digest == digest {
                    existing = Some(version);
                }
            }
            let version = match existing {
                Some(version) => version,
                None => {
                    let version = new.into_record(record.next_version, now);
                    record.next_version += 1;
                    versions.insert(
                        (name.as_str(), version.version),
                        serde_json::to_vec(&version)?.as_slice(),
                    )?;
                    version
                }
            };
            record.aliases.insert(LATEST.to_string(), version.version);
            record.updated_at_ms = now;
            functions.insert(name.as_str(), serde_json::to_vec(&record)?.as_slice())?;
            (record, version)
        };
        match txn.commit() {
            Ok(()) => Ok(result),
            Err(e) => Err(e.into()),
        }
    }

    fn list(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<(FunctionRecord, VersionRecord)>, StateError> {
        let txn = self.db()?.begin_read()?;
        let functions = txn.open_table(FUNCTIONS)?;
        let versions = txn.open_table(VERSIONS)?;
        let mut out = Vec::new();
        for entry in functions.iter()? {
            let (_, value) = entry?;
            let record: FunctionRecord = serde_json::from_slice(value.value())?;
            let Some(latest) = record.latest() else {
                continue;
            };
            if tenant.is_some_and(|t| t != record.tenant) {
                continue;
            }
            if let Some(v) = versions.get((record.key().as_str(), latest))? {
                let version: VersionRecord = serde_json::from_slice(v.value())?;
                out.push((record, version));
            }
        }
        Ok(out)
    }

    fn get(&self, name: &str) -> Result<(FunctionRecord, Vec<VersionRecord>), StateError> {
        let txn = self.db()?.begin_read()?;
        let functions = txn.open_table(FUNCTIONS)?;
        let versions = txn.open_table(VERSIONS)?;
        let record: FunctionRecord = match functions.get(name)? {
            Some(bytes) => serde_json::from_slice(bytes.value())?,
            None => {
                return Err(StateError::FunctionNotFound(
                    split_function_key(name).1.to_string(),
                ));
            }
        };
        let mut all = Vec::new();
        for entry in versions.range((name, 0)..=(name, u64::MAX))? {
            let (_, value) = entry?;
            all.push(serde_json::from_slice(value.value())?);
        }
        Ok((record, all))
    }

    fn rollback(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<(FunctionRecord, VersionRecord), StateError> {
        let txn = self.writable()?.begin_write()?;
        let result = {
            let mut functions = txn.open_table(FUNCTIONS)?;
            let versions = txn.open_table(VERSIONS)?;
            let mut record: FunctionRecord = match functions.get(name)? {
                Some(bytes) => serde_json::from_slice(bytes.value())?,
                None => {
                    return Err(StateError::FunctionNotFound(
                        split_function_key(name).1.to_string(),
                    ));
                }
            };
            let current = record.latest().unwrap_or(0);
            let target = match version {
                Some(v) => v,
                None => {
                    let mut previous = None;
                    for entry in versions.range((name, 0)..(name, current))? {
                        let (key, _) = entry?;
                        previous = Some(key.value().1);
                    }
                    previous.ok_or_else(|| {
                        StateError::Invalid(format!(
                            "function {:?} has no version before {current} to roll back to",
                            split_function_key(name).1
                        ))
                    })?
                }
            };
            let version: VersionRecord = match versions.get((name, target))? {
                Some(bytes) => serde_json::from_slice(bytes.value())?,
                None => {
                    return Err(StateError::VersionNotFound {
                        name: split_function_key(name).1.to_string(),
                        version: target,
                    });
                }
            };
            if let Some(route) = version
                .manifest
                .stored_route()
                .map_err(|e| StateError::Invalid(e.to_string()))?
            {
                route_owner(&functions, &versions, name, &route)?;
            }
            record.aliases.insert(LATEST.to_string(), target);
            record.updated_at_ms = now_ms();
            functions.insert(name, serde_json::to_vec(&record)?.as_slice())?;
            (record, version)
        };
        match txn.commit() {
            Ok(()) => Ok(result),
            Err(e) => Err(e.into()),
        }
    }

    fn delete(&self, name: &str) -> Result<Vec<Digest>, StateError> {
        let txn = self.writable()?.begin_write()?;
        let orphans = {
            let mut functions = txn.open_table(FUNCTIONS)?;
            let mut versions = txn.open_table(VERSIONS)?;
            if functions.remove(name)?.is_none() {
                return Err(StateError::FunctionNotFound(
                    split_function_key(name).1.to_string(),
                ));
            }
            let mut removed = BTreeSet::new();
            let mut keys = Vec::new();
            for entry in versions.range((name, 0)..=(name, u64::MAX))? {
                let (key, value) = entry?;
                let version: VersionRecord = serde_json::from_slice(value.value())?;
                removed.insert(version.wasm_digest);
                removed.extend(version.manifest.files_digest);
                keys.push(key.value().1);
            }
            for key in keys {
                versions.remove((name, key))?;
            }
            for entry in versions.iter()? {
                let (_, value) = entry?;
                let version: VersionRecord = serde_json::from_slice(value.value())?;
                removed.remove(&version.wasm_digest);
                if let Some(files) = &version.manifest.files_digest {
                    removed.remove(files);
                }
            }
            removed.into_iter().collect::<Vec<_>>()
        };
        if let Err(e) = txn.commit() {
            return Err(e.into());
        }
        for digest in &orphans {
            let _ = std::fs::remove_file(self.wasm_path(digest));
        }
        Ok(orphans)
    }
}

/// Fails with [`StateError::RouteConflict`] if a function of the same tenant
/// other than `name` (a key) serves exactly `route` with its `latest` version.
fn route_owner(
    functions: &impl ReadableTable<&'static str, &'static [u8]>,
    versions: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    name: &str,
    route: &Route,
) -> Result<(), StateError> {
    let (tenant, _) = split_function_key(name);
    let mine = format!("{tenant}/");
    for entry in functions.range(mine.as_str()..)? {
        let (key, value) = entry?;
        let owner = key.value();
        if !owner.starts_with(&mine) {
            break;
        }
        if owner == name {
            continue;
        }
        let record: FunctionRecord = serde_json::from_slice(value.value())?;
        let Some(latest) = record.latest() else {
            continue;
        };
        let Some(bytes) = versions.get((owner, latest))? else {
            continue;
        };
        let version: VersionRecord = serde_json::from_slice(bytes.value())?;
        if let Ok(Some(theirs)) = version.manifest.stored_route()
            && &theirs == route
        {
            return Err(StateError::RouteConflict {
                route: route.to_string(),
                owner: split_function_key(owner).1.to_string(),
            });
        }
    }
    Ok(())
}

/// Moves functions stored before tenants existed (keys without `/`) to
/// the `local` tenant, in one transaction, so an upgraded data dir keeps
/// every function and version.
fn migrate_to_tenant_keys(db: &Database) -> Result<(), StateError> {
    let old: Vec<String> = {
        let txn = db.begin_read()?;
        let functions = txn.open_table(FUNCTIONS)?;
        let mut old = Vec::new();
        for entry in functions.iter()? {
            let key = entry?.0.value().to_string();
            if !key.contains('/') {
                old.push(key);
            }
        }
        old
    };
    if old.is_empty() {
        return Ok(());
    }
    let txn = db.begin_write()?;
    {
        let mut functions = txn.open_table(FUNCTIONS)?;
        let mut versions = txn.open_table(VERSIONS)?;
        for name in &old {
            let key = function_key(LOCAL_TENANT, name);
            let record = functions
                .remove(name.as_str())?
                .map(|record| record.value().to_vec());
            if let Some(record) = record {
                functions.insert(key.as_str(), record.as_slice())?;
            }
            let mut moved = Vec::new();
            for entry in versions.range((name.as_str(), 0)..=(name.as_str(), u64::MAX))? {
                let (k, v) = entry?;
                moved.push((k.value().1, v.value().to_vec()));
            }
            for (number, bytes) in moved {
                versions.remove((name.as_str(), number))?;
                versions.insert((key.as_str(), number), bytes.as_slice())?;
            }
        }
    }
    txn.commit()?;
    tracing::info!(
        "registry: {} functions from before tenants now belong to tenant {LOCAL_TENANT:?}",
        old.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::registry::model::{self, version};

    #[tokio::test]
    async fn behaves_like_the_model() {
        let dir = tempfile::tempdir().unwrap();
        model::run(&EmbeddedRegistry::open(dir.path()).unwrap()).await;
    }

    #[tokio::test]
    async fn deploys_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let reg = EmbeddedRegistry::open(dir.path()).unwrap();
            reg.deploy("t", version("a", b"one", Some("/a")))
                .await
                .unwrap();
            reg.deploy("t", version("a", b"two", Some("/a")))
                .await
                .unwrap();
            reg.rollback("t/a", None).await.unwrap();
        }
        let reg = EmbeddedRegistry::open(dir.path()).unwrap();
        let (rec, versions) = reg.get("t/a").await.unwrap();
        assert_eq!((rec.latest(), versions.len()), (Some(1), 2));
    }

    #[tokio::test]
    async fn functions_from_before_tenants_move_to_local() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A data dir written by a version without tenants.
            let db = Database::create(dir.path().join("registry.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let old = FunctionRecord {
                    tenant: String::new(),
                    name: "old".into(),
                    aliases: BTreeMap::from([(LATEST.to_string(), 1)]),
                    next_version: 2,
                    created_at_ms: 1,
                    updated_at_ms: 1,
                };
                let mut json: serde_json::Value = serde_json::to_value(&old).unwrap();
                json.as_object_mut().unwrap().remove("tenant");
                let v = version("old", b"w", Some("/old"));
                let record = VersionRecord {
                    version: 1,
                    digest: v.wasm_digest,
                    wasm_digest: v.wasm_digest,
                    wasm_bytes: 1,
                    kind: v.kind,
                    manifest: v.manifest,
                    limits: v.limits,
                    created_at_ms: 1,
                };
                txn.open_table(FUNCTIONS)
                    .unwrap()
                    .insert("old", serde_json::to_vec(&json).unwrap().as_slice())
                    .unwrap();
                txn.open_table(VERSIONS)
                    .unwrap()
                    .insert(("old", 1), serde_json::to_vec(&record).unwrap().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let reg = EmbeddedRegistry::open(dir.path()).unwrap();
        let (record, versions) = reg.get("local/old").await.unwrap();
        assert_eq!((record.tenant.as_str(), versions.len()), (LOCAL_TENANT, 1));
        assert_eq!(reg.list(None).await.unwrap().len(), 1);
    }
}
