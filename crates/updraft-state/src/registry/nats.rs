//! The registry of a cluster, in NATS JetStream: every node reads and
//! changes the same one, and learns of the others' changes by watching it.
//!
//! - **One document per tenant** (`tenants.{tenant}` in the KV bucket
//!   `updraft-registry`) holds that tenant's functions: records, aliases
//!   and which versions exist. Every change rewrites it with a revision
//!   check and starts over on a conflict, so two nodes deploying at once
//!   each get their own version, one after the other, and a route is
//!   never given to two functions: the check and the write see the same
//!   revision.
//! - **Version records** (manifest, limits, kind) are immutable, written
//!   before the document that refers to them, under
//!   `versions.{id}.{digest}`: content-addressed, so a deploy that lost
//!   the race and wrote one for nothing wrote what the winner would have.
//!   `id` is the function's incarnation: a function deleted and deployed
//!   again starts afresh, and a delete purges exactly its own records.
//! - **Wasm** is in the object store `updraft-wasm`, named by its SHA-256.
//!
//! A deleted function's Wasm is removed when no document refers to it. A
//! node that stores the same Wasm for a new deploy at that moment could
//! find it gone; the deploy then fails to compile on other nodes until the
//! same Wasm is deployed again (a narrow window, and nothing is lost that
//! the user does not still have).

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream::kv::{Operation, Store};
use async_nats::jetstream::object_store::{self, ObjectStore};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use updraft_core::{Digest, Failure, Route, VersionRecord, function_key, split_function_key};

use super::{FunctionRecord, LATEST, NewVersion, Registry, RegistryChange, now_ms};
use crate::error::StateError;
use crate::nats::{Cluster, boxed, write_if};

/// The KV bucket of documents and version records.
const BUCKET: &str = "updraft-registry";

/// The object store of uploaded Wasm.
const WASM_BUCKET: &str = "updraft-wasm";
/// Largest registry document of one tenant: one KV value. A version costs
/// about 200 bytes of it, so a tenant holds some 5,000 versions in all.
pub const TENANT_DOC_BYTES_MAX: usize = crate::kv::VALUE_BYTES_MAX;

/// How long the watch waits before it is made again after NATS went away.
const REWATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// A tenant's functions.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TenantDoc {
    functions: BTreeMap<String, Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// This incarnation of the function: names its version records.
    id: String,
    record: FunctionRecord,
    versions: BTreeMap<u64, VersionRef>,
}

/// What the document knows of a version: enough to reuse it, check its
/// route, and find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VersionRef {
    digest: Digest,
    wasm: Digest,
    route: Option<String>,
    /// Its files bundle, kept in the same object store as the Wasm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files: Option<Digest>,
}

impl Entry {
    fn latest(&self) -> Option<(u64, &VersionRef)> {
        let n = self.record.latest()?;
        Some((n, self.versions.get(&n)?))
    }
}

fn unavailable(what: &'static str) -> impl Fn(async_nats::Error) -> StateError {
    move |e| StateError::Unavailable(Failure::boxed(what, e))
}

fn doc_key(tenant: &str) -> String {
    format!("tenants.{tenant}")
}

fn version_key(id: &str, digest: &Digest) -> String {
    format!("versions.{id}.{}", digest.hex())
}

/// Fails with [`StateError::RouteConflict`] if a function of `doc` other
/// than `name` serves exactly `route` with its `latest` version.
fn route_owner(doc: &TenantDoc, name: &str, route: &Route) -> Result<(), StateError> {
    for (owner, entry) in &doc.functions {
        if owner == name {
            continue;
        }
        let Some((_, latest)) = entry.latest() else {
            continue;
        };
        if let Some(theirs) = &latest.route
            && Route::parse_stored(theirs).is_ok_and(|theirs| &theirs == route)
        {
            return Err(StateError::RouteConflict {
                route: route.to_string(),
                owner: owner.clone(),
            });
        }
    }
    Ok(())
}

fn parsed_route(route: Option<&str>) -> Result<Option<Route>, StateError> {
    route
        .map(Route::parse_stored)
        .transpose()
        .map_err(|e| StateError::Invalid(e.to_string()))
}

/// The registry in JetStream.
pub struct NatsRegistry {
    cluster: Cluster,
    bucket: Store,
    wasm: ObjectStore,
}

impl NatsRegistry {
    /// Opens the cluster's registry, creating its bucket and object store
    /// the first time.
    pub async fn open(cluster: &Cluster) -> Result<NatsRegistry, StateError> {
        let failed = unavailable("opening the registry failed");
        let bucket = cluster
            .key_value(BUCKET, true)
            .await
            .map_err(&failed)?
            .ok_or_else(|| StateError::storage("the registry's bucket was not created"))?;
        let js = &cluster.jetstream;
        let wasm = match js.get_object_store(WASM_BUCKET).await {
            Ok(wasm) => wasm,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: WASM_BUCKET.to_string(),
                    storage: async_nats::jetstream::stream::StorageType::File,
                    num_replicas: cluster.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| failed(boxed(e)))?,
        };
        Ok(NatsRegistry {
            cluster: cluster.clone(),
            bucket,
            wasm,
        })
    }

    /// A tenant's document and its revision (`None`: never written).
    async fn doc(&self, tenant: &str) -> Result<(TenantDoc, Option<u64>), StateError> {
        let entry = self
            .bucket
            .entry(doc_key(tenant))
            .await
            .map_err(|e| unavailable("reading the registry failed")(boxed(e)))?;
        Ok(match entry {
            Some(entry) if entry.operation == Operation::Put => {
                (serde_json::from_slice(&entry.value)?, Some(entry.revision))
            }
            Some(entry) => (TenantDoc::default(), Some(entry.revision)),
            None => (TenantDoc::default(), None),
        })
    }

    /// Writes `doc` if it is still at `revision`; `Ok(false)` if another
    /// node changed it first.
    async fn write_doc(
        &self,
        tenant: &str,
        doc: &TenantDoc,
        revision: Option<u64>,
    ) -> Result<bool, StateError> {
        let value = Bytes::from(serde_json::to_vec(doc)?);
        if value.len() > TENANT_DOC_BYTES_MAX {
            let versions: usize = doc.functions.values().map(|e| e.versions.len()).sum();
            return Err(StateError::Invalid(format!(
                "tenant {tenant:?} would have {} functions with {versions} versions in all, \
                 {} KiB of registry, over the {} KiB a cluster keeps per tenant: \
                 remove functions you no longer use (`updraft rm NAME`)",
                doc.functions.len(),
                value.len() / 1024,
                TENANT_DOC_BYTES_MAX / 1024
            )));
        }
        write_if(&self.bucket, &doc_key(tenant), revision, value)
            .await
            .map_err(unavailable("writing the registry failed"))
    }

    async fn version(&self, entry: &Entry, number: u64) -> Result<VersionRecord, StateError> {
        let reference = entry
            .versions
            .get(&number)
            .ok_or_else(|| StateError::VersionNotFound {
                name: entry.record.name.clone(),
                version: number,
            })?;
        let stored = self
            .bucket
            .get(version_key(&entry.id, &reference.digest))
            .await
            .map_err(|e| unavailable("reading a version failed")(boxed(e)))?
            .ok_or_else(|| {
                StateError::storage(format!(
                    "version {number} of {} is missing from the registry",
                    entry.record.key()
                ))
            })?;
        let mut version: VersionRecord = serde_json::from_slice(&stored)?;
        // The document numbers versions; the record is content only.
        version.version = number;
        Ok(version)
    }

    /// Every tenant's document.
    async fn docs(&self) -> Result<Vec<(String, TenantDoc)>, StateError> {
        let filter = format!("{}tenants.*", self.bucket.prefix);
        let messages = self
            .cluster
            .last_per_subject(&self.bucket.stream, filter, false)
            .await
            .map_err(unavailable("listing the registry failed"))?;
        let mut docs = Vec::new();
        for message in messages {
            if !crate::nats::is_live(&message) {
                continue;
            }
            let Some(tenant) = message
                .subject
                .as_str()
                .strip_prefix(self.bucket.prefix.as_str())
                .and_then(|key| key.strip_prefix("tenants."))
            else {
                continue;
            };
            docs.push((
                tenant.to_string(),
                serde_json::from_slice(&message.payload)?,
            ));
        }
        Ok(docs)
    }

    /// Changes the document of `key`'s tenant by `change` until no other
    /// node changed it in between. `change` sees the function's entry.
    async fn change<T>(
        &self,
        key: &str,
        mut change: impl FnMut(&mut TenantDoc, &str) -> Result<T, StateError>,
    ) -> Result<(TenantDoc, T), StateError> {
        let (tenant, name) = split_function_key(key);
        loop {
            let (mut doc, revision) = self.doc(tenant).await?;
            let out = change(&mut doc, name)?;
            if self.write_doc(tenant, &doc, revision).await? {
                return Ok((doc, out));
            }
        }
    }
}

fn not_found(name: &str) -> StateError {
    StateError::FunctionNotFound(name.to_string())
}

#[async_trait]
impl Registry for NatsRegistry {
    async fn store_wasm(&self, digest: &Digest, bytes: Bytes) -> Result<(), StateError> {
        let name = digest.hex();
        if self.wasm.info(&name).await.is_ok() {
            return Ok(());
        }
        self.wasm
            .put(name.as_str(), &mut bytes.as_ref())
            .await
            .map_err(|e| unavailable("storing the Wasm failed")(boxed(e)))?;
        Ok(())
    }

    async fn load_wasm(&self, digest: &Digest) -> Result<Bytes, StateError> {
        let mut object = match self.wasm.get(digest.hex()).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                return Err(StateError::Storage(Failure::context(
                    format!("wasm {digest} is missing from the cluster's object store"),
                    e,
                )));
            }
            Err(e) => return Err(unavailable("reading the Wasm failed")(boxed(e))),
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| unavailable("reading the Wasm failed")(boxed(e)))?;
        Ok(Bytes::from(bytes))
    }

    async fn check_route(&self, key: &str, route: Option<&Route>) -> Result<(), StateError> {
        let Some(route) = route else { return Ok(()) };
        let (tenant, name) = split_function_key(key);
        route_owner(&self.doc(tenant).await?.0, name, route)
    }

    async fn deploy(
        &self,
        tenant: &str,
        new: NewVersion,
    ) -> Result<(FunctionRecord, VersionRecord), StateError> {
        let route = new
            .manifest
            .parsed_route()
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        let key = function_key(tenant, &new.manifest.name);
        let now = now_ms();
        // Numbered once the document is written.
        let mut record = new.into_record(0, now);
        let digest = record.digest;
        // Version records written by this deploy's attempts.
        let mut written = BTreeSet::new();
        loop {
            let (mut doc, revision) = self.doc(tenant).await?;
            if let Some(route) = &route {
                route_owner(&doc, &record.manifest.name, route)?;
            }
            let entry = doc
                .functions
                .entry(record.manifest.name.clone())
                .or_insert_with(|| Entry {
                    id: uuid::Uuid::now_v7().simple().to_string(),
                    record: FunctionRecord {
                        tenant: tenant.to_string(),
                        name: record.manifest.name.clone(),
                        aliases: BTreeMap::new(),
                        next_version: 1,
                        created_at_ms: now,
                        updated_at_ms: now,
                    },
                    versions: BTreeMap::new(),
                });
            let existing = entry
                .versions
                .iter()
                .find(|(_, v)| v.digest == digest)
                .map(|(n, _)| *n);
            let number = match existing {
                Some(number) => number,
                None => {
                    let number = entry.record.next_version;
                    entry.record.next_version += 1;
                    entry.versions.insert(
                        number,
                        VersionRef {
                            digest,
                            wasm: record.wasm_digest,
                            route: record.manifest.route.clone(),
                            files: record.manifest.files_digest,
                        },
                    );
                    let version_key = version_key(&entry.id, &digest);
                    if written.insert(version_key.clone()) {
                        self.bucket
                            .put(version_key, Bytes::from(serde_json::to_vec(&record)?))
                            .await
                            .map_err(|e| unavailable("writing a version failed")(boxed(e)))?;
                    }
                    number
                }
            };
            entry.record.aliases.insert(LATEST.to_string(), number);
            entry.record.updated_at_ms = now;
            let function = entry.record.clone();
            if !self.write_doc(tenant, &doc, revision).await? {
                tracing::debug!("{key}: another node changed the registry first; deploying again");
                continue;
            }
            let version = match existing {
                Some(number) => self.version(&doc.functions[&function.name], number).await?,
                None => {
                    record.version = number;
                    record
                }
            };
            return Ok((function, version));
        }
    }

    async fn list(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<(FunctionRecord, VersionRecord)>, StateError> {
        let docs = match tenant {
            Some(tenant) => vec![(tenant.to_string(), self.doc(tenant).await?.0)],
            None => self.docs().await?,
        };
        let mut out = Vec::new();
        for (_, doc) in docs {
            for entry in doc.functions.values() {
                let Some((number, _)) = entry.latest() else {
                    continue;
                };
                out.push((entry.record.clone(), self.version(entry, number).await?));
            }
        }
        Ok(out)
    }

    async fn get(&self, key: &str) -> Result<(FunctionRecord, Vec<VersionRecord>), StateError> {
        let (tenant, name) = split_function_key(key);
        let (doc, _) = self.doc(tenant).await?;
        let entry = doc.functions.get(name).ok_or_else(|| not_found(name))?;
        let reads = entry.versions.keys().map(|n| self.version(entry, *n));
        let versions = futures::future::try_join_all(reads).await?;
        Ok((entry.record.clone(), versions))
    }

    async fn rollback(
        &self,
        key: &str,
        version: Option<u64>,
    ) -> Result<(FunctionRecord, VersionRecord), StateError> {
        let (doc, target) = self
            .change(key, |doc, name| {
                let entry = doc.functions.get(name).ok_or_else(|| not_found(name))?;
                let current = entry.record.latest().unwrap_or(0);
                let target = match version {
                    Some(v) => v,
                    None => *entry
                        .versions
                        .range(..current)
                        .next_back()
                        .ok_or_else(|| {
                            StateError::Invalid(format!(
                                "function {name:?} has no version before {current} to roll back to"
                            ))
                        })?
                        .0,
                };
                let reference =
                    entry
                        .versions
                        .get(&target)
                        .ok_or_else(|| StateError::VersionNotFound {
                            name: name.to_string(),
                            version: target,
                        })?;
                if let Some(route) = parsed_route(reference.route.as_deref())? {
                    route_owner(doc, name, &route)?;
                }
                let entry = doc.functions.get_mut(name).ok_or_else(|| not_found(name))?;
                entry.record.aliases.insert(LATEST.to_string(), target);
                entry.record.updated_at_ms = now_ms();
                Ok(target)
            })
            .await?;
        let (_, name) = split_function_key(key);
        let entry = doc.functions.get(name).ok_or_else(|| not_found(name))?;
        Ok((entry.record.clone(), self.version(entry, target).await?))
    }

    async fn delete(&self, key: &str) -> Result<Vec<Digest>, StateError> {
        let (_, removed) = self
            .change(key, |doc, name| {
                doc.functions.remove(name).ok_or_else(|| not_found(name))
            })
            .await?;
        // Its version records: no document refers to them any more.
        let stream = &self.bucket.stream;
        stream
            .purge()
            .filter(format!("{}versions.{}.>", self.bucket.prefix, removed.id))
            .await
            .map_err(|e| unavailable("removing versions failed")(boxed(e)))?;
        let mut orphans: BTreeSet<Digest> = removed
            .versions
            .values()
            .flat_map(|v| std::iter::once(v.wasm).chain(v.files))
            .collect();
        for (_, doc) in self.docs().await? {
            for entry in doc.functions.values() {
                for version in entry.versions.values() {
                    orphans.remove(&version.wasm);
                    if let Some(files) = &version.files {
                        orphans.remove(files);
                    }
                }
            }
        }
        for digest in &orphans {
            if let Err(e) = self.wasm.delete(digest.hex()).await {
                tracing::warn!(
                    "the unused Wasm {digest} stays in the object store: {}",
                    updraft_core::error::chain(&e)
                );
            }
        }
        Ok(orphans.into_iter().collect())
    }

    async fn changes(&self) -> Result<Option<BoxStream<'static, RegistryChange>>, StateError> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let bucket = self.bucket.clone();
        let mut watch = bucket
            .watch("tenants.*")
            .await
            .map_err(|e| unavailable("watching the registry failed")(boxed(e)))?;
        tokio::spawn(async move {
            loop {
                while let Some(entry) = watch.next().await {
                    let change = match entry {
                        Ok(entry) => match entry.key.strip_prefix("tenants.") {
                            Some(tenant) => RegistryChange::Tenant(tenant.to_string()),
                            None => continue,
                        },
                        Err(e) => {
                            tracing::debug!("registry watch: {e}; watching again");
                            break;
                        }
                    };
                    if tx.unbounded_send(change).is_err() {
                        return;
                    }
                }
                // Made again, it may have missed changes: read them all.
                loop {
                    tokio::time::sleep(REWATCH_DELAY).await;
                    if tx.is_closed() {
                        return;
                    }
                    match bucket.watch("tenants.*").await {
                        Ok(again) => {
                            watch = again;
                            break;
                        }
                        Err(e) => tracing::debug!("registry watch: {e}; retrying"),
                    }
                }
                if tx.unbounded_send(RegistryChange::All).is_err() {
                    return;
                }
            }
        });
        Ok(Some(rx.boxed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model;
    use crate::testing::NatsServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn behaves_like_the_model() {
        let server = NatsServer::start();
        let cluster = server.cluster().await;
        model::run(&NatsRegistry::open(&cluster).await.unwrap()).await;
    }

    /// A tenant whose registry would outgrow one NATS value is told what
    /// to do, and its registry is left as it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registry_past_its_limit_says_what_to_remove() {
        let server = NatsServer::start();
        let registry = NatsRegistry::open(&server.cluster().await).await.unwrap();
        registry
            .deploy("t", model::version("f", b"code", Some("/f")))
            .await
            .unwrap();
        let (mut doc, revision) = registry.doc("t").await.unwrap();
        let entry = doc.functions.get_mut("f").unwrap();
        let one = entry.versions.values().next().unwrap().clone();
        for n in 2..10_000 {
            entry.versions.insert(n, one.clone());
        }
        let err = registry
            .write_doc("t", &doc, revision)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("9999 versions") && err.contains("updraft rm"),
            "{err}"
        );
        let (kept, _) = registry.doc("t").await.unwrap();
        assert_eq!(kept.functions["f"].versions.len(), 1);
    }

    /// Nodes deploying the same function at once each get their own
    /// version, numbered without gaps, and every node hears of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_deploys_never_interleave() {
        let server = NatsServer::start();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let cluster = server.cluster().await;
            nodes.push(NatsRegistry::open(&cluster).await.unwrap());
        }
        let mut changes = nodes[2].changes().await.unwrap().unwrap();
        let deploys = nodes.iter().enumerate().flat_map(|(node, reg)| {
            (0..5).map(move |i| {
                let wasm = format!("node {node} deploy {i}");
                reg.deploy("t", model::version("f", wasm.as_bytes(), Some("/f")))
            })
        });
        let results = futures::future::try_join_all(deploys).await.unwrap();
        let mut numbers: Vec<u64> = results.iter().map(|(_, v)| v.version).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=15).collect::<Vec<_>>());
        let (record, versions) = nodes[1].get("t/f").await.unwrap();
        assert_eq!((record.next_version, versions.len()), (16, 15));
        for (_, version) in &results {
            assert_eq!(
                versions[version.version as usize - 1].digest,
                version.digest
            );
        }
        assert_eq!(
            changes.next().await,
            Some(RegistryChange::Tenant("t".into()))
        );
    }
}
