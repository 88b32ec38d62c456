//! Function logs: a bounded, durable tail per function, in `logs.redb`
//! ([`LogStore`]) or, in cluster mode, in a JetStream stream every node
//! writes to and follows ([`NatsLogs`]); [`LogBackend`] is either.
//!
//! Logs live in their own database so that a burst of log writes never waits
//! behind (or poisons) registry transactions. Callers batch entries: one
//! transaction per batch, not per line.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::{self, StorageType};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use updraft_core::LogEntry;

use crate::error::StateError;
use crate::nats::{Cluster, boxed};
use crate::redb_file::RedbFile;

const LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("logs");

/// Entries kept per function; older ones are dropped.
pub const LOG_ENTRIES_PER_FUNCTION_MAX: u64 = 2000;

/// Durable per-function log tails.
pub struct LogStore {
    /// `logs.redb`: a failed write refuses the next ones until the disk
    /// takes them again.
    file: RedbFile,
    /// Next sequence number per function (loaded lazily from the table).
    next_seq: Mutex<HashMap<String, u64>>,
}

impl LogStore {
    pub fn open(data_dir: &Path) -> Result<LogStore, StateError> {
        std::fs::create_dir_all(data_dir)?;
        let file = RedbFile::create(data_dir.join("logs.redb"))?;
        let db = file.db()?;
        // Creating the tables is idempotent, so it need not wait for a sync:
        // a crash before the next durable commit just creates them again.
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        txn.open_table(LOGS)?;
        txn.commit()?;
        migrate_to_tenant_keys(&db)?;
        drop(db);
        Ok(LogStore {
            file,
            next_seq: Mutex::new(HashMap::new()),
        })
    }

    /// Appends a batch of `(function, entry)` in one transaction and trims
    /// each touched function to [`LOG_ENTRIES_PER_FUNCTION_MAX`].
    pub fn append(&self, batch: &[(String, LogEntry)]) -> Result<(), StateError> {
        self.wrote(self.try_append(batch))
    }

    /// The outcome of a write, after which a storage failure refuses
    /// writes until the file is reopened (redb takes none before).
    fn wrote(&self, result: Result<(), StateError>) -> Result<(), StateError> {
        if let Err(e @ StateError::Storage(_)) = &result {
            self.file.failed(e);
        }
        result
    }

    fn try_append(&self, batch: &[(String, LogEntry)]) -> Result<(), StateError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut next_seq = self
            .next_seq
            .lock()
            .map_err(|_| StateError::storage("log sequence lock poisoned"))?;
        let txn = self.file.writable()?.db.begin_write()?;
        {
            let mut table = txn.open_table(LOGS)?;
            let mut touched: HashMap<&str, (u64, u64)> = HashMap::new();
            for (name, entry) in batch {
                let seq = match next_seq.get(name) {
                    Some(seq) => *seq,
                    None => last_seq(&table, name)?.map_or(0, |s| s + 1),
                };
                table.insert((name.as_str(), seq), serde_json::to_vec(entry)?.as_slice())?;
                next_seq.insert(name.clone(), seq + 1);
                touched.entry(name.as_str()).or_insert((seq, seq)).1 = seq;
            }
            for (name, (first_new, last)) in touched {
                let keep_from = (last + 1).saturating_sub(LOG_ENTRIES_PER_FUNCTION_MAX);
                // Entries before `first_new` - MAX were trimmed by earlier batches.
                let from = first_new.saturating_sub(LOG_ENTRIES_PER_FUNCTION_MAX);
                for seq in from..keep_from {
                    table.remove((name, seq))?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The last `n` entries of a function, oldest first.
    pub fn tail(&self, name: &str, n: usize) -> Result<Vec<LogEntry>, StateError> {
        let txn = self.file.db()?.begin_read()?;
        let table = txn.open_table(LOGS)?;
        let mut out = Vec::new();
        for entry in table.range((name, 0)..=(name, u64::MAX))?.rev().take(n) {
            let (_, value) = entry?;
            out.push(serde_json::from_slice(value.value())?);
        }
        out.reverse();
        Ok(out)
    }

    /// Drops every entry of a function.
    pub fn delete_function(&self, name: &str) -> Result<(), StateError> {
        self.wrote(self.try_delete_function(name))
    }

    fn try_delete_function(&self, name: &str) -> Result<(), StateError> {
        let mut next_seq = self
            .next_seq
            .lock()
            .map_err(|_| StateError::storage("log sequence lock poisoned"))?;
        let txn = self.file.writable()?.db.begin_write()?;
        {
            let mut table = txn.open_table(LOGS)?;
            table.retain_in((name, 0)..=(name, u64::MAX), |_, _| false)?;
        }
        txn.commit()?;
        next_seq.remove(name);
        Ok(())
    }
}

/// The stream of every function's logs in cluster mode.
const LOG_STREAM: &str = "UPDRAFT_LOGS";
/// What every function's log subject starts with.
const LOG_SUBJECT_PREFIX: &str = "updraft.logs";
/// Most bytes of logs the cluster keeps in all; the oldest go first.
pub const LOG_STREAM_BYTES_MAX: i64 = 1 << 30;
/// How long the cluster keeps a log line.
pub const LOG_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

fn log_subject(key: &str) -> String {
    let (tenant, name) = updraft_core::split_function_key(key);
    format!("{LOG_SUBJECT_PREFIX}.{tenant}.{name}")
}

fn unavailable(what: &'static str) -> impl Fn(async_nats::Error) -> StateError {
    move |e| StateError::Unavailable(updraft_core::Failure::boxed(what, e))
}

/// Logs in JetStream: one subject per function (`updraft.logs.{tenant}.{name}`)
/// of one stream, bounded per function ([`LOG_ENTRIES_PER_FUNCTION_MAX`]),
/// in bytes ([`LOG_STREAM_BYTES_MAX`]) and in age ([`LOG_MAX_AGE`]). Every
/// node publishes its functions' lines there, and follows all of them.
pub struct NatsLogs {
    cluster: Cluster,
    stream: stream::Stream,
}

impl NatsLogs {
    pub async fn open(cluster: &Cluster) -> Result<NatsLogs, StateError> {
        let config = stream::Config {
            name: LOG_STREAM.to_string(),
            subjects: vec![format!("{LOG_SUBJECT_PREFIX}.>")],
            storage: StorageType::File,
            max_messages_per_subject: LOG_ENTRIES_PER_FUNCTION_MAX as i64,
            max_bytes: LOG_STREAM_BYTES_MAX,
            max_age: LOG_MAX_AGE,
            num_replicas: cluster.replicas,
            ..Default::default()
        };
        let stream = cluster
            .jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| unavailable("opening the log stream failed")(boxed(e)))?;
        Ok(NatsLogs {
            cluster: cluster.clone(),
            stream,
        })
    }

    async fn append(&self, batch: Vec<(String, LogEntry)>) -> Result<(), StateError> {
        let failed = unavailable("writing logs failed");
        let mut acks = Vec::with_capacity(batch.len());
        for (key, entry) in batch {
            let payload = Bytes::from(serde_json::to_vec(&entry)?);
            acks.push(
                self.cluster
                    .jetstream
                    .publish(log_subject(&key), payload)
                    .await
                    .map_err(|e| failed(boxed(e)))?,
            );
        }
        for ack in acks {
            ack.await.map_err(|e| failed(boxed(e)))?;
        }
        Ok(())
    }

    async fn tail(&self, key: &str, n: usize) -> Result<Vec<LogEntry>, StateError> {
        let messages = self
            .cluster
            .ordered(&self.stream, log_subject(key), DeliverPolicy::All)
            .await
            .map_err(unavailable("reading logs failed"))?;
        let skip = messages.len().saturating_sub(n);
        messages
            .into_iter()
            .skip(skip)
            .map(|m| Ok(serde_json::from_slice(&m.payload)?))
            .collect()
    }

    async fn delete_function(&self, key: &str) -> Result<(), StateError> {
        self.stream
            .purge()
            .filter(log_subject(key))
            .await
            .map_err(|e| unavailable("deleting logs failed")(boxed(e)))?;
        Ok(())
    }

    /// Every line any node writes from now on, by function key.
    async fn subscribe(&self) -> Result<BoxStream<'static, (String, LogEntry)>, StateError> {
        let subscriber = self
            .cluster
            .jetstream
            .client()
            .subscribe(format!("{LOG_SUBJECT_PREFIX}.>"))
            .await
            .map_err(|e| unavailable("following logs failed")(boxed(e)))?;
        let prefix = format!("{LOG_SUBJECT_PREFIX}.");
        Ok(subscriber
            .filter_map(move |message| {
                let key = message
                    .subject
                    .as_str()
                    .strip_prefix(prefix.as_str())
                    .and_then(|rest| rest.split_once('.'))
                    .map(|(tenant, name)| updraft_core::function_key(tenant, name));
                let entry = serde_json::from_slice::<LogEntry>(&message.payload).ok();
                futures::future::ready(key.zip(entry))
            })
            .boxed())
    }
}

/// Where logs are kept: this node's `logs.redb`, or the cluster's stream.
#[derive(Clone)]
pub enum LogBackend {
    Embedded(Arc<LogStore>),
    Nats(Arc<NatsLogs>),
}

impl LogBackend {
    /// Appends a batch of `(function key, entry)`.
    pub async fn append(&self, batch: Vec<(String, LogEntry)>) -> Result<(), StateError> {
        match self {
            LogBackend::Embedded(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.append(&batch))
                    .await
                    .map_err(|e| StateError::Storage(updraft_core::Failure::new(e)))?
            }
            LogBackend::Nats(logs) => logs.append(batch).await,
        }
    }

    /// The last `n` entries of a function, oldest first.
    pub async fn tail(&self, key: &str, n: usize) -> Result<Vec<LogEntry>, StateError> {
        match self {
            LogBackend::Embedded(store) => {
                let (store, key) = (store.clone(), key.to_string());
                tokio::task::spawn_blocking(move || store.tail(&key, n))
                    .await
                    .map_err(|e| StateError::Storage(updraft_core::Failure::new(e)))?
            }
            LogBackend::Nats(logs) => logs.tail(key, n).await,
        }
    }

    /// Drops every entry of a function.
    pub async fn delete_function(&self, key: &str) -> Result<(), StateError> {
        match self {
            LogBackend::Embedded(store) => {
                let (store, key) = (store.clone(), key.to_string());
                tokio::task::spawn_blocking(move || store.delete_function(&key))
                    .await
                    .map_err(|e| StateError::Storage(updraft_core::Failure::new(e)))?
            }
            LogBackend::Nats(logs) => logs.delete_function(key).await,
        }
    }

    /// Lines written by other processes too, as they come (`None`: only
    /// this process writes, and it tells its followers itself).
    pub async fn subscribe(
        &self,
    ) -> Result<Option<BoxStream<'static, (String, LogEntry)>>, StateError> {
        match self {
            LogBackend::Embedded(_) => Ok(None),
            LogBackend::Nats(logs) => logs.subscribe().await.map(Some),
        }
    }
}

/// Moves the logs of functions from before tenants existed (keys without
/// `/`) under the `local` tenant's keys, as the registry does.
fn migrate_to_tenant_keys(db: &Database) -> Result<(), StateError> {
    let mut old = Vec::new();
    {
        let txn = db.begin_read()?;
        for entry in txn.open_table(LOGS)?.iter()? {
            let (key, value) = entry?;
            let (name, seq) = key.value();
            if !name.contains('/') {
                old.push((name.to_string(), seq, value.value().to_vec()));
            }
        }
    }
    if old.is_empty() {
        return Ok(());
    }
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(LOGS)?;
        for (name, seq, value) in &old {
            table.remove((name.as_str(), *seq))?;
            let key = updraft_core::function_key(updraft_core::LOCAL_TENANT, name);
            table.insert((key.as_str(), *seq), value.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

fn last_seq(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    name: &str,
) -> Result<Option<u64>, StateError> {
    Ok(table
        .range((name, 0)..=(name, u64::MAX))?
        .next_back()
        .transpose()?
        .map(|(key, _)| key.value().1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use updraft_core::LogStream;

    fn entry(i: u64) -> LogEntry {
        LogEntry::new(i, "inv", LogStream::Stderr, &format!("line {i}"))
    }

    #[test]
    fn bounded_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let logs = LogStore::open(dir.path()).unwrap();
            let batch: Vec<_> = (0..LOG_ENTRIES_PER_FUNCTION_MAX + 10)
                .map(|i| ("t/f".to_string(), entry(i)))
                .collect();
            logs.append(&batch).unwrap();
            logs.append(&[("t/g".to_string(), entry(7))]).unwrap();
        }
        let logs = LogStore::open(dir.path()).unwrap();
        logs.append(&[("t/f".to_string(), entry(99_999))]).unwrap();
        let all = logs.tail("t/f", usize::MAX).unwrap();
        assert_eq!(all.len() as u64, LOG_ENTRIES_PER_FUNCTION_MAX);
        assert_eq!(all.last().unwrap().message, "line 99999");
        assert_eq!(all.first().unwrap().message, "line 11");
        assert_eq!(logs.tail("t/g", 5).unwrap().len(), 1);
        logs.delete_function("t/f").unwrap();
        assert!(logs.tail("t/f", 5).unwrap().is_empty());
        assert_eq!(logs.tail("t/g", 5).unwrap().len(), 1);
    }

    #[test]
    fn logs_from_before_tenants_move_to_local() {
        let dir = tempfile::tempdir().unwrap();
        LogStore::open(dir.path())
            .unwrap()
            .append(&[("old".to_string(), entry(1))])
            .unwrap();
        let logs = LogStore::open(dir.path()).unwrap();
        assert_eq!(logs.tail("local/old", 5).unwrap().len(), 1);
        assert!(logs.tail("old", 5).unwrap().is_empty());
    }

    /// The cluster's logs keep the same bounded tail per function, and a
    /// follower sees every line written after it subscribed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_logs_are_bounded_and_followed() {
        let server = crate::testing::NatsServer::start();
        let cluster = server.cluster().await;
        let logs = LogBackend::Nats(Arc::new(NatsLogs::open(&cluster).await.unwrap()));
        let mut follow = logs.subscribe().await.unwrap().unwrap();
        let batch: Vec<_> = (0..LOG_ENTRIES_PER_FUNCTION_MAX + 10)
            .map(|i| ("t/f".to_string(), entry(i)))
            .collect();
        logs.append(batch).await.unwrap();
        logs.append(vec![("t/g".to_string(), entry(7))])
            .await
            .unwrap();
        let all = logs.tail("t/f", usize::MAX).await.unwrap();
        assert_eq!(all.len() as u64, LOG_ENTRIES_PER_FUNCTION_MAX);
        assert_eq!(all.first().unwrap().message, "line 10");
        assert_eq!(logs.tail("t/f", 3).await.unwrap().len(), 3);
        let (key, first) = follow.next().await.unwrap();
        assert_eq!((key.as_str(), first.message.as_str()), ("t/f", "line 0"));
        logs.delete_function("t/f").await.unwrap();
        assert!(logs.tail("t/f", 5).await.unwrap().is_empty());
        assert_eq!(logs.tail("t/g", 5).await.unwrap().len(), 1);
    }
}
