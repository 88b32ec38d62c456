//! The embedded key-value backend: one redb database, `kv.redb`, in the data
//! dir. Reads run on the caller's thread against a shared read snapshot,
//! renewed after each commit (opening a read transaction per get serializes
//! readers on redb's transaction tracker). Writes go to one
//! path chosen by the durability level:
//! - [`Durability::Disk`]: one writer thread commits everything queued so
//!   far in one transaction (group commit); one fsync serves every write in
//!   the batch, and each caller is answered after it, so an acknowledged
//!   write survives a power cut.
//! - [`Durability::Process`]: the calling task commits its own write without
//!   a sync and appends it to the [`journal`](super::journal) with one
//!   `write` before answering, so it survives a killed process, with no
//!   thread hop on the way. A sync thread makes the database durable, and
//!   empties the journal, every [`SYNC_INTERVAL`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use async_trait::async_trait;
use redb::{
    Database, Durability as RedbDurability, ReadOnlyTable, ReadableDatabase, ReadableTable, Table,
    TableDefinition,
};
use tokio::sync::{mpsc, oneshot};

use super::journal::{Journal, Record, SYNC_INTERVAL};
use super::{
    CasOutcome, Durability, KeyPage, KvError, KvStore, LIST_PAGE_MAX, StoreId, check_batch,
    check_key, check_value, counter_value,
};

/// (owner, store, key) → value.
const KV: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("kv");
/// Writes waiting for the writer thread; callers beyond this wait for room.
const WRITE_QUEUE_MAX: usize = 4096;
/// Most writes committed in one transaction.
const GROUP_COMMIT_OPS_MAX: usize = 1024;

/// Key-value stores in `kv.redb`.
pub struct EmbeddedKv {
    db: Arc<Database>,
    /// `disk` durability: the writer thread's queue; closing it (on drop)
    /// stops the thread.
    writes: Option<mpsc::Sender<Write>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// `process` durability: the writer each task uses in turn.
    inline: Option<Arc<Mutex<InlineWriter>>>,
    /// `process` durability: dropping the sender stops the sync thread.
    syncer: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    /// Set when a commit failed: later writes are refused, not guessed at.
    poisoned: Arc<AtomicBool>,
    /// Commits so far; a snapshot older than this is renewed before a read.
    generation: Arc<AtomicU64>,
    snapshot: RwLock<Option<Snapshot>>,
}

type KvReadTable = ReadOnlyTable<(&'static str, &'static str, &'static str), &'static [u8]>;

/// A read view of the table as of commit `generation`.
struct Snapshot {
    generation: u64,
    table: Arc<KvReadTable>,
}

enum Op {
    Set(String, Vec<u8>),
    Delete(String),
    Increment(String, i64),
    Cas {
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
    SetMany(Vec<(String, Vec<u8>)>),
    DeleteMany(Vec<String>),
}

enum Done {
    Unit,
    Int(i64),
    Cas(CasOutcome),
}

struct Write {
    store: StoreId,
    op: Op,
    reply: oneshot::Sender<Result<Done, KvError>>,
}

fn storage(e: impl std::fmt::Display) -> KvError {
    KvError::Storage(e.to_string())
}

impl EmbeddedKv {
    pub fn open(data_dir: &Path, durability: Durability) -> Result<EmbeddedKv, KvError> {
        std::fs::create_dir_all(data_dir).map_err(storage)?;
        let db = Database::create(data_dir.join("kv.redb")).map_err(storage)?;
        // Creating the table is idempotent: no need to wait for a sync.
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(RedbDurability::None).map_err(storage)?;
        txn.open_table(KV).map_err(storage)?;
        txn.commit().map_err(storage)?;
        // Writes acknowledged before a crash but not yet synced are in the
        // journal: apply them (durably) before anything else happens.
        let (mut journal, unsynced) =
            Journal::open(&data_dir.join("kv.journal")).map_err(storage)?;
        if !unsynced.is_empty() {
            replay(&db, &unsynced)?;
        }
        journal.clear().map_err(storage)?;
        let db = Arc::new(db);
        let mut kv = EmbeddedKv {
            db: db.clone(),
            writes: None,
            writer: None,
            inline: None,
            syncer: None,
            poisoned: Arc::new(AtomicBool::new(false)),
            generation: Arc::new(AtomicU64::new(0)),
            snapshot: RwLock::new(None),
        };
        match durability {
            Durability::Disk => {
                let (writes, queue) = mpsc::channel(WRITE_QUEUE_MAX);
                let (poisoned, generation) = (kv.poisoned.clone(), kv.generation.clone());
                let writer = std::thread::Builder::new()
                    .name("updraft-kv-writer".into())
                    .spawn(move || write_loop(&db, queue, &poisoned, &generation))
                    .map_err(storage)?;
                kv.writes = Some(writes);
                kv.writer = Some(writer);
            }
            Durability::Process => {
                let inline = Arc::new(Mutex::new(InlineWriter {
                    db,
                    journal,
                    unsynced_since: None,
                }));
                let (stop, stopped) = std::sync::mpsc::channel();
                let (syncing, poisoned) = (inline.clone(), kv.poisoned.clone());
                let syncer = std::thread::Builder::new()
                    .name("updraft-kv-sync".into())
                    .spawn(move || {
                        // Wakes every interval until the store is dropped.
                        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                            stopped.recv_timeout(SYNC_INTERVAL)
                        {
                            sync_inline(&syncing, &poisoned);
                        }
                    })
                    .map_err(storage)?;
                kv.inline = Some(inline);
                kv.syncer = Some((stop, syncer));
            }
        }
        Ok(kv)
    }

    async fn write(&self, store: &StoreId, op: Op) -> Result<Done, KvError> {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(KvError::Storage(
                "an earlier write failed to commit; restart Updraft to recover the store".into(),
            ));
        }
        if let Some(inline) = &self.inline {
            let mut writer = inline.lock().unwrap_or_else(PoisonError::into_inner);
            return match writer.write(store, &op) {
                Ok(result) => {
                    self.generation.fetch_add(1, Ordering::Release);
                    result
                }
                Err(e) => {
                    tracing::error!("key-value write failed, refusing further writes: {e}");
                    self.poisoned.store(true, Ordering::Relaxed);
                    Err(e)
                }
            };
        }
        let (reply, done) = oneshot::channel();
        let write = Write {
            store: store.clone(),
            op,
            reply,
        };
        let stopped = || KvError::Storage("the key-value writer has stopped".into());
        let writes = self.writes.as_ref().ok_or_else(stopped)?;
        writes.send(write).await.map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }

    fn read<T>(&self, f: impl FnOnce(&KvReadTable) -> Result<T, KvError>) -> Result<T, KvError> {
        let table = self.current_snapshot()?;
        f(&table)
    }

    /// The snapshot of the latest commit: shared while no write commits.
    /// The writer bumps `generation` after a commit and before answering, so
    /// a read that starts after an acknowledged write sees it.
    fn current_snapshot(&self) -> Result<Arc<KvReadTable>, KvError> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(snapshot) = self
            .snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|s| s.generation == generation)
        {
            return Ok(snapshot.table.clone());
        }
        let txn = self.db.begin_read().map_err(storage)?;
        let table = Arc::new(txn.open_table(KV).map_err(storage)?);
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Snapshot {
            generation,
            table: table.clone(),
        });
        Ok(table)
    }
}

impl Drop for EmbeddedKv {
    /// Lets the writer finish what is queued and release the database, so
    /// the file can be opened again at once.
    fn drop(&mut self) {
        self.writes = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        if let Some((stop, syncer)) = self.syncer.take() {
            drop(stop);
            let _ = syncer.join();
        }
        if let Some(inline) = &self.inline {
            sync_inline(inline, &self.poisoned);
        }
    }
}

fn get_value(
    table: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    store: &StoreId,
    key: &str,
) -> Result<Option<Vec<u8>>, KvError> {
    Ok(table
        .get((store.owner.as_str(), store.name.as_str(), key))
        .map_err(storage)?
        .map(|v| v.value().to_vec()))
}

#[async_trait]
impl KvStore for EmbeddedKv {
    async fn get(&self, store: &StoreId, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key)?;
        self.read(|table| get_value(table, store, key))
    }

    async fn set(&self, store: &StoreId, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        check_key(key)?;
        check_value(&value)?;
        self.write(store, Op::Set(key.to_string(), value))
            .await
            .map(drop)
    }

    async fn delete(&self, store: &StoreId, key: &str) -> Result<(), KvError> {
        check_key(key)?;
        self.write(store, Op::Delete(key.to_string()))
            .await
            .map(drop)
    }

    async fn list(
        &self,
        store: &StoreId,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, KvError> {
        if let Some(cursor) = cursor
            && (!cursor.starts_with(prefix) || check_key(cursor).is_err())
        {
            return Err(KvError::BadCursor {
                cursor: cursor.to_string(),
            });
        }
        let limit = limit.clamp(1, LIST_PAGE_MAX);
        let start = cursor.unwrap_or(prefix);
        let (owner, name) = (store.owner.as_str(), store.name.as_str());
        self.read(|table| {
            let mut keys = Vec::new();
            let mut more = false;
            for entry in table.range((owner, name, start)..).map_err(storage)? {
                let (k, _) = entry.map_err(storage)?;
                let (o, n, key) = k.value();
                if o != owner || n != name || !key.starts_with(prefix) {
                    break;
                }
                if Some(key) == cursor {
                    continue;
                }
                if keys.len() == limit {
                    more = true;
                    break;
                }
                keys.push(key.to_string());
            }
            let cursor = if more { keys.last().cloned() } else { None };
            Ok(KeyPage { keys, cursor })
        })
    }

    async fn increment(&self, store: &StoreId, key: &str, delta: i64) -> Result<i64, KvError> {
        check_key(key)?;
        match self
            .write(store, Op::Increment(key.to_string(), delta))
            .await?
        {
            Done::Int(n) => Ok(n),
            _ => Err(KvError::Storage("unexpected writer reply".into())),
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
        let op = Op::Cas {
            key: key.to_string(),
            expected,
            new,
        };
        match self.write(store, op).await? {
            Done::Cas(outcome) => Ok(outcome),
            _ => Err(KvError::Storage("unexpected writer reply".into())),
        }
    }

    async fn get_many(
        &self,
        store: &StoreId,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        check_batch(keys.len())?;
        keys.iter().try_for_each(|k| check_key(k))?;
        self.read(|table| keys.iter().map(|k| get_value(table, store, k)).collect())
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
        self.write(store, Op::SetMany(entries)).await.map(drop)
    }

    async fn delete_many(&self, store: &StoreId, keys: Vec<String>) -> Result<(), KvError> {
        check_batch(keys.len())?;
        keys.iter().try_for_each(|k| check_key(k))?;
        self.write(store, Op::DeleteMany(keys)).await.map(drop)
    }
}

/// The `disk` writer thread: drains the queue into one durable
/// transaction per round until the store is dropped.
fn write_loop(
    db: &Database,
    mut queue: mpsc::Receiver<Write>,
    poisoned: &AtomicBool,
    generation: &AtomicU64,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_OPS_MAX {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let ops: Vec<(&StoreId, &Op)> = batch.iter().map(|w| (&w.store, &w.op)).collect();
        match commit(db, &ops, RedbDurability::Immediate) {
            Ok((results, _)) => {
                generation.fetch_add(1, Ordering::Release);
                for (write, result) in batch.into_iter().zip(results) {
                    let _ = write.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!("key-value commit failed, refusing further writes: {e}");
                poisoned.store(true, Ordering::Relaxed);
                for write in batch {
                    let _ = write.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The `process` writer, used by one task at a time.
struct InlineWriter {
    db: Arc<Database>,
    journal: Journal,
    /// The first commit not yet synced to disk.
    unsynced_since: Option<Instant>,
}

impl InlineWriter {
    /// Commits one write without a sync and journals the keys it changed.
    /// The outer `Err` is a storage failure.
    fn write(&mut self, store: &StoreId, op: &Op) -> Result<Result<Done, KvError>, KvError> {
        let (mut results, records) = commit(&self.db, &[(store, op)], RedbDurability::None)?;
        self.journal.append(&records).map_err(storage)?;
        self.unsynced_since.get_or_insert_with(Instant::now);
        results
            .pop()
            .ok_or_else(|| KvError::Storage("a commit without a result".into()))
    }

    /// Makes every commit so far durable, then empties the journal.
    fn sync(&mut self) -> Result<(), KvError> {
        if self.unsynced_since.is_none() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(storage)?;
        txn.commit().map_err(storage)?;
        self.journal.clear().map_err(storage)?;
        self.unsynced_since = None;
        Ok(())
    }
}

fn sync_inline(inline: &Mutex<InlineWriter>, poisoned: &AtomicBool) {
    let synced = inline.lock().unwrap_or_else(PoisonError::into_inner).sync();
    // The journal still holds the writes: a restart replays them.
    if let Err(e) = synced {
        tracing::error!("key-value sync failed, refusing further writes: {e}");
        poisoned.store(true, Ordering::Relaxed);
    }
}

/// Applies journal records left by a crash, durably.
fn replay(db: &Database, records: &[Record]) -> Result<(), KvError> {
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut table = txn.open_table(KV).map_err(storage)?;
        for r in records {
            let key = (
                r.store.owner.as_str(),
                r.store.name.as_str(),
                r.key.as_str(),
            );
            match &r.value {
                Some(value) => table.insert(key, value.as_slice()).map_err(storage)?,
                None => table.remove(key).map_err(storage)?,
            };
        }
    }
    txn.commit().map_err(storage)
}

/// Each write's result, and the final state of every key the batch touched.
type Committed = (Vec<Result<Done, KvError>>, Vec<Record>);

/// Applies `batch` in order in one transaction; each write sees the ones
/// before it. Returns each write's result and the final state of every key
/// the batch touched (for the journal). An `Err` means nothing was committed.
fn commit(
    db: &Database,
    batch: &[(&StoreId, &Op)],
    durability: RedbDurability,
) -> Result<Committed, KvError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(durability).map_err(storage)?;
    let mut results = Vec::with_capacity(batch.len());
    let mut records = Vec::new();
    {
        let mut table = txn.open_table(KV).map_err(storage)?;
        let mut touched: Vec<(&StoreId, &str)> = Vec::new();
        for (store, op) in batch {
            results.push(apply(&mut table, store, op)?);
            touched.extend(op.keys().map(|key| (*store, key)));
        }
        if matches!(durability, RedbDurability::None) {
            touched.sort_unstable();
            touched.dedup();
            for (store, key) in touched {
                records.push(Record {
                    store: store.clone(),
                    key: key.to_string(),
                    value: get_value(&table, store, key)?,
                });
            }
        }
    }
    txn.commit().map_err(storage)?;
    Ok((results, records))
}

impl Op {
    /// The keys this write may change.
    fn keys(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Op::Set(key, _) | Op::Delete(key) | Op::Increment(key, _) => {
                Box::new(std::iter::once(key.as_str()))
            }
            Op::Cas { key, .. } => Box::new(std::iter::once(key.as_str())),
            Op::SetMany(entries) => Box::new(entries.iter().map(|(k, _)| k.as_str())),
            Op::DeleteMany(keys) => Box::new(keys.iter().map(String::as_str)),
        }
    }
}

type KvTable<'t> = Table<'t, (&'static str, &'static str, &'static str), &'static [u8]>;

/// One write. The outer `Err` is a storage failure (abort the batch), the
/// inner one the caller's own error (the rest of the batch goes on).
fn apply(
    table: &mut KvTable<'_>,
    store: &StoreId,
    op: &Op,
) -> Result<Result<Done, KvError>, KvError> {
    let (owner, name) = (store.owner.as_str(), store.name.as_str());
    Ok(Ok(match op {
        Op::Set(key, value) => {
            table
                .insert((owner, name, key.as_str()), value.as_slice())
                .map_err(storage)?;
            Done::Unit
        }
        Op::Delete(key) => {
            table.remove((owner, name, key.as_str())).map_err(storage)?;
            Done::Unit
        }
        Op::Increment(key, delta) => {
            let current = get_value(table, store, key)?;
            let now = match counter_value(key, current.as_deref()) {
                Ok(now) => now,
                Err(e) => return Ok(Err(e)),
            };
            let Some(next) = now.checked_add(*delta) else {
                return Ok(Err(KvError::Overflow { key: key.clone() }));
            };
            table
                .insert((owner, name, key.as_str()), next.to_string().as_bytes())
                .map_err(storage)?;
            Done::Int(next)
        }
        Op::Cas { key, expected, new } => {
            let current = get_value(table, store, key)?;
            if current == *expected {
                table
                    .insert((owner, name, key.as_str()), new.as_slice())
                    .map_err(storage)?;
                Done::Cas(CasOutcome::Swapped)
            } else {
                Done::Cas(CasOutcome::Mismatch(current))
            }
        }
        Op::SetMany(entries) => {
            for (key, value) in entries {
                table
                    .insert((owner, name, key.as_str()), value.as_slice())
                    .map_err(storage)?;
            }
            Done::Unit
        }
        Op::DeleteMany(keys) => {
            for key in keys {
                table.remove((owner, name, key.as_str())).map_err(storage)?;
            }
            Done::Unit
        }
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::BTreeMap;

    use super::*;
    use crate::kv::{BATCH_KEYS_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};

    /// xorshift64*: a deterministic sequence, so a failure can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn key(rng: &mut Rng) -> String {
        // Few distinct keys under a few prefixes, so operations collide.
        format!(
            "{}/{}",
            ["a", "b", "ab"][rng.below(3) as usize],
            rng.below(40)
        )
    }

    fn value(rng: &mut Rng) -> Vec<u8> {
        if rng.below(4) == 0 {
            rng.below(100).to_string().into_bytes()
        } else {
            let len = rng.below(24) as usize;
            (0..len).map(|_| rng.below(256) as u8).collect()
        }
    }

    fn list_model(model: &BTreeMap<String, Vec<u8>>, prefix: &str) -> Vec<String> {
        model
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn matches_a_btreemap_over_thousands_of_mixed_operations() {
        for durability in [Durability::Disk, Durability::Process] {
            model_run(durability).await;
        }
    }

    async fn model_run(durability: Durability) {
        let dir = tempfile::tempdir().unwrap();
        let kv = EmbeddedKv::open(dir.path(), durability).unwrap();
        let store = StoreId::new("owner", "default");
        // A neighbouring store and owner whose keys must never show up.
        let other_store = StoreId::new("owner", "defaults");
        let other_owner = StoreId::new("other", "default");
        kv.set(&other_store, "a/1", b"x".to_vec()).await.unwrap();
        kv.set(&other_owner, "a/1", b"y".to_vec()).await.unwrap();

        let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for step in 0..4000 {
            let k = key(&mut rng);
            match rng.below(10) {
                0 => assert_eq!(
                    kv.get(&store, &k).await.unwrap(),
                    model.get(&k).cloned(),
                    "step {step} get {k}"
                ),
                1 => {
                    let v = value(&mut rng);
                    kv.set(&store, &k, v.clone()).await.unwrap();
                    model.insert(k, v);
                }
                2 => {
                    kv.delete(&store, &k).await.unwrap();
                    model.remove(&k);
                }
                3 => assert_eq!(kv.exists(&store, &k).await.unwrap(), model.contains_key(&k)),
                4 => {
                    let delta = rng.below(21) as i64 - 10;
                    let expected = match model.get(&k) {
                        None => Ok(delta),
                        Some(v) => std::str::from_utf8(v)
                            .ok()
                            .and_then(|t| t.trim().parse::<i64>().ok())
                            .map(|n| n + delta)
                            .ok_or(KvError::NotAnInteger { key: k.clone() }),
                    };
                    let got = kv.increment(&store, &k, delta).await;
                    assert_eq!(got, expected, "step {step} increment {k}");
                    if let Ok(n) = got {
                        model.insert(k, n.to_string().into_bytes());
                    }
                }
                5 => {
                    // Half the time expect the right value, else a guess.
                    let expected = if rng.below(2) == 0 {
                        model.get(&k).cloned()
                    } else {
                        Some(value(&mut rng))
                    };
                    let new = value(&mut rng);
                    let got = kv
                        .compare_and_swap(&store, &k, expected.clone(), new.clone())
                        .await
                        .unwrap();
                    if model.get(&k).cloned() == expected {
                        assert_eq!(got, CasOutcome::Swapped, "step {step}");
                        model.insert(k, new);
                    } else {
                        assert_eq!(
                            got,
                            CasOutcome::Mismatch(model.get(&k).cloned()),
                            "step {step}"
                        );
                    }
                }
                6 => {
                    let entries: Vec<(String, Vec<u8>)> = (0..rng.below(8))
                        .map(|_| (key(&mut rng), value(&mut rng)))
                        .collect();
                    kv.set_many(&store, entries.clone()).await.unwrap();
                    model.extend(entries);
                }
                7 => {
                    let keys: Vec<String> = (0..rng.below(8)).map(|_| key(&mut rng)).collect();
                    let got = kv.get_many(&store, keys.clone()).await.unwrap();
                    let want: Vec<_> = keys.iter().map(|k| model.get(k).cloned()).collect();
                    assert_eq!(got, want, "step {step} get_many");
                }
                8 => {
                    let keys: Vec<String> = (0..rng.below(8)).map(|_| key(&mut rng)).collect();
                    kv.delete_many(&store, keys.clone()).await.unwrap();
                    for k in keys {
                        model.remove(&k);
                    }
                }
                _ => {
                    // Page through a prefix with a random page size.
                    let prefix = ["", "a", "a/", "ab", "b/1", "zz"][rng.below(6) as usize];
                    let limit = 1 + rng.below(7) as usize;
                    let mut all = Vec::new();
                    let mut cursor: Option<String> = None;
                    loop {
                        let page = kv
                            .list(&store, prefix, cursor.as_deref(), limit)
                            .await
                            .unwrap();
                        assert!(page.keys.len() <= limit);
                        all.extend(page.keys);
                        match page.cursor {
                            Some(c) => cursor = Some(c),
                            None => break,
                        }
                    }
                    assert_eq!(
                        all,
                        list_model(&model, prefix),
                        "step {step} list {prefix:?}"
                    );
                }
            }
        }
        // The neighbours were never touched.
        assert_eq!(
            kv.get(&other_store, "a/1").await.unwrap(),
            Some(b"x".to_vec())
        );
        assert_eq!(
            kv.get(&other_owner, "a/1").await.unwrap(),
            Some(b"y".to_vec())
        );

        // Everything acknowledged is there after reopening.
        drop(kv);
        let kv = EmbeddedKv::open(dir.path(), durability).unwrap();
        let page = kv.list(&store, "", None, LIST_PAGE_MAX).await.unwrap();
        assert_eq!(page.keys, list_model(&model, ""));
        for (k, v) in &model {
            assert_eq!(kv.get(&store, k).await.unwrap().as_ref(), Some(v));
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_increments_are_all_counted() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Arc::new(EmbeddedKv::open(dir.path(), Durability::Disk).unwrap());
        let store = StoreId::new("owner", "counters");
        let tasks: Vec<_> = (0..500)
            .map(|_| {
                let (kv, store) = (kv.clone(), store.clone());
                tokio::spawn(async move { kv.increment(&store, "hits", 1).await.unwrap() })
            })
            .collect();
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.await.unwrap());
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (1..=500).collect::<Vec<i64>>(),
            "each increment returns a distinct new value"
        );
        assert_eq!(kv.get(&store, "hits").await.unwrap(), Some(b"500".to_vec()));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_input_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let kv = EmbeddedKv::open(dir.path(), Durability::Process).unwrap();
        let store = StoreId::new("owner", "default");
        kv.set(&store, "keep", b"1".to_vec()).await.unwrap();
        kv.set(&store, "text", b"hello".to_vec()).await.unwrap();

        let long_key = "k".repeat(KEY_BYTES_MAX + 1);
        let exact_key = "k".repeat(KEY_BYTES_MAX);
        assert_eq!(
            kv.set(&store, &long_key, vec![]).await,
            Err(KvError::KeyTooLong {
                len: KEY_BYTES_MAX + 1
            })
        );
        assert_eq!(kv.get(&store, "").await, Err(KvError::KeyEmpty));
        let big = vec![0u8; VALUE_BYTES_MAX + 1];
        assert_eq!(
            kv.set(&store, "big", big.clone()).await,
            Err(KvError::ValueTooLarge {
                len: VALUE_BYTES_MAX + 1
            })
        );
        let batch: Vec<_> = (0..=BATCH_KEYS_MAX)
            .map(|i| (format!("b{i}"), vec![1]))
            .collect();
        assert_eq!(
            kv.set_many(&store, batch).await,
            Err(KvError::BatchTooLarge {
                len: BATCH_KEYS_MAX + 1
            })
        );
        // One bad entry fails the whole batch.
        let batch = vec![("ok".to_string(), vec![1]), ("big".to_string(), big)];
        assert!(kv.set_many(&store, batch).await.is_err());
        assert_eq!(
            kv.increment(&store, "text", 1).await,
            Err(KvError::NotAnInteger { key: "text".into() })
        );
        kv.set(&store, "max", i64::MAX.to_string().into_bytes())
            .await
            .unwrap();
        assert_eq!(
            kv.increment(&store, "max", 1).await,
            Err(KvError::Overflow { key: "max".into() })
        );
        assert!(matches!(
            kv.list(&store, "a", Some("b"), 10).await,
            Err(KvError::BadCursor { .. })
        ));

        // Exactly at the limits is fine.
        kv.set(&store, &exact_key, vec![7; VALUE_BYTES_MAX])
            .await
            .unwrap();
        kv.delete(&store, &exact_key).await.unwrap();

        let page = kv.list(&store, "", None, 100).await.unwrap();
        assert_eq!(page.keys, ["keep", "max", "text"]);
        assert_eq!(
            kv.get(&store, "text").await.unwrap(),
            Some(b"hello".to_vec())
        );
        assert_eq!(
            kv.get(&store, "max").await.unwrap(),
            Some(i64::MAX.to_string().into_bytes())
        );
    }
}
