//! The embedded key-value backend: one redb database, `kv.redb`, in the data
//! dir. Reads run on the caller's thread against a shared read snapshot,
//! renewed after each commit (opening a read transaction per get serializes
//! readers on redb's transaction tracker).
//!
//! A write is appended to the [`journal`](super::journal) and then put in
//! an in-memory [`Overlay`] in front of redb, where reads find it; every
//! [`SYNC_INTERVAL`] a sync thread commits the overlay to redb in one
//! durable transaction and deletes the journal file it covered. When the
//! caller is answered depends on the durability level:
//! - [`Durability::Disk`]: one writer thread takes everything queued so
//!   far (group commit), appends it to the journal with one `write` and
//!   one `fdatasync`, and only then shows it and answers each caller, so
//!   an acknowledged write survives a power cut and no read sees a write
//!   before it is durable. Appending to one file allocated ahead is the
//!   cheapest durable write: a redb commit writes several scattered pages
//!   per sync, about three times the latency here (BENCHMARKS.md).
//! - [`Durability::Process`]: the calling task appends the write with one
//!   `write` and answers: it survives a killed process, with no thread hop
//!   and no transaction on the way (a redb commit, even unsynced, costs
//!   more than the rest of a set).
//!
//! Reads ask the overlay first and redb second, so they see every
//! acknowledged write at either level.
//!
//! A failed commit or journal write (a full disk) refuses writes until the
//! disk takes them again; then the file is reopened ([`RedbFile`]), the
//! overlay committed and the journal started afresh. Reads go on meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use async_trait::async_trait;
use itertools::{EitherOrBoth, Itertools};
use redb::{
    Database, Durability as RedbDurability, ReadOnlyTable, ReadableDatabase, ReadableTable, Table,
    TableDefinition,
};
use tokio::sync::{mpsc, oneshot};

use super::journal::{self, Journal, Record, SYNC_INTERVAL};
use super::{
    CasOutcome, Durability, KeyPage, KvError, KvStore, LIST_PAGE_MAX, StoreId, check_batch,
    check_key, check_value, counter_value,
};
use crate::redb_file::RedbFile;

/// (owner, store, key) → value.
const KV: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("kv");
/// Writes waiting for the writer thread; callers beyond this wait for room.
const WRITE_QUEUE_MAX: usize = 4096;
/// Most writes committed in one transaction.
const GROUP_COMMIT_OPS_MAX: usize = 1024;

/// Key-value stores in `kv.redb`.
pub struct EmbeddedKv {
    shared: Arc<Shared>,
    /// `disk` durability: the writer thread's queue; closing it (on drop)
    /// stops the thread.
    writes: Option<mpsc::Sender<Write>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// The journal, locked by one writer at a time (which orders writes).
    journal: Arc<Mutex<Journal>>,
    /// Dropping the sender stops the sync thread.
    syncer: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// What readers, writers and the sync thread share.
struct Shared {
    /// `kv.redb`; after a failed commit it refuses writes until reopened.
    file: RedbFile,
    /// The data dir, where the journal lives.
    dir: PathBuf,
    /// Acknowledged writes not yet committed to redb.
    overlay: RwLock<Overlay>,
    /// Commits so far; a snapshot older than this is renewed before a read.
    generation: AtomicU64,
    snapshot: RwLock<Option<Snapshot>>,
}

type KvReadTable = ReadOnlyTable<(&'static str, &'static str, &'static str), &'static [u8]>;

/// A read view of the table as of commit `generation`.
struct Snapshot {
    generation: u64,
    table: Arc<KvReadTable>,
}

/// A value the overlay holds; `None` is a deletion redb does not know yet.
type Cell = Option<Vec<u8>>;
/// Acknowledged writes per store, each key at its final state.
type Layer = HashMap<StoreId, BTreeMap<String, Cell>>;

/// Acknowledged writes in front of redb.
#[derive(Default)]
struct Overlay {
    /// Written since the last sync began.
    active: Layer,
    /// Being committed by the sync thread: readers see it until redb does.
    frozen: Option<Arc<Layer>>,
}

impl Overlay {
    fn layers(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.active).chain(self.frozen.as_deref())
    }

    /// The overlay's word on `key`: `None` if it has none (ask redb),
    /// `Some(None)` if the key was deleted.
    fn get(&self, store: &StoreId, key: &str) -> Option<Option<&[u8]>> {
        self.layers()
            .find_map(|layer| layer.get(store)?.get(key))
            .map(Option::as_deref)
    }

    /// The keys of `store` from `start` on, in order, each with whether it
    /// exists (newer layers win).
    fn keys_from<'a>(
        &'a self,
        store: &StoreId,
        start: &'a str,
    ) -> impl Iterator<Item = (&'a str, bool)> + 'a {
        let range = |layer: Option<&'a Layer>| {
            layer
                .and_then(|l| l.get(store))
                .into_iter()
                .flat_map(move |keys| {
                    keys.range::<str, _>((Bound::Included(start), Bound::Unbounded))
                })
        };
        range(Some(&self.active))
            .merge_join_by(range(self.frozen.as_deref()), |a, b| a.0.cmp(b.0))
            .map(|both| both.reduce(|newer, _| newer))
            .map(|(key, cell)| (key.as_str(), cell.is_some()))
    }
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

fn storage(e: impl std::error::Error + Send + Sync + 'static) -> KvError {
    KvError::Storage(crate::redb_file::failure(e))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl EmbeddedKv {
    pub fn open(data_dir: &Path, durability: Durability) -> Result<EmbeddedKv, KvError> {
        std::fs::create_dir_all(data_dir).map_err(storage)?;
        let file = RedbFile::create(data_dir.join("kv.redb")).map_err(storage)?;
        let db = file.db().map_err(KvError::Storage)?;
        // Creating the table is idempotent: no need to wait for a sync.
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(RedbDurability::None).map_err(storage)?;
        txn.open_table(KV).map_err(storage)?;
        txn.commit().map_err(storage)?;
        // Writes acknowledged before a crash but not yet synced are in the
        // journal: apply them (durably) before anything else happens.
        let unsynced = journal::recover(data_dir).map_err(storage)?;
        if !unsynced.is_empty() {
            replay(&db, &unsynced)?;
        }
        journal::remove_all(data_dir).map_err(storage)?;
        drop(db);
        let journal = Journal::start(data_dir, durability == Durability::Disk).map_err(storage)?;
        let journal = Arc::new(Mutex::new(journal));
        let shared = Arc::new(Shared {
            file,
            dir: data_dir.to_path_buf(),
            overlay: RwLock::default(),
            generation: AtomicU64::new(0),
            snapshot: RwLock::new(None),
        });
        let mut kv = EmbeddedKv {
            shared: shared.clone(),
            writes: None,
            writer: None,
            journal: journal.clone(),
            syncer: None,
        };
        if durability == Durability::Disk {
            let (writes, queue) = mpsc::channel(WRITE_QUEUE_MAX);
            let (shared, journal) = (shared.clone(), journal.clone());
            let writer = std::thread::Builder::new()
                .name("updraft-kv-writer".into())
                .spawn(move || write_loop(&shared, &journal, queue))
                .map_err(storage)?;
            kv.writes = Some(writes);
            kv.writer = Some(writer);
        }
        let (stop, stopped) = std::sync::mpsc::channel();
        let syncer = std::thread::Builder::new()
            .name("updraft-kv-sync".into())
            .spawn(move || {
                // Wakes every interval until the store is dropped.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(SYNC_INTERVAL)
                {
                    shared.sync(&journal);
                }
            })
            .map_err(storage)?;
        kv.syncer = Some((stop, syncer));
        Ok(kv)
    }

    async fn write(&self, store: &StoreId, op: Op) -> Result<Done, KvError> {
        let Some(writes) = &self.writes else {
            // `process`: on the caller's thread, one `write` and no sync.
            let done = self.shared.write_group(&self.journal, &[(store, &op)])?;
            return done
                .into_iter()
                .next()
                .ok_or_else(|| KvError::storage("a write had no result"))?;
        };
        let (reply, done) = oneshot::channel();
        let write = Write {
            store: store.clone(),
            op,
            reply,
        };
        let stopped = || KvError::storage("the key-value writer has stopped");
        writes.send(write).await.map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }

    /// Runs `f` on a consistent view: the overlay and a redb snapshot at
    /// least as new as the overlay's contents need.
    fn read<T>(&self, f: impl FnOnce(&View<'_>) -> Result<T, KvError>) -> Result<T, KvError> {
        self.shared.read(f)
    }
}

/// The overlay in front of a redb snapshot.
struct View<'a> {
    overlay: &'a Overlay,
    table: &'a KvReadTable,
}

impl View<'_> {
    fn get(&self, store: &StoreId, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self.overlay.get(store, key) {
            Some(cell) => Ok(cell.map(<[u8]>::to_vec)),
            None => get_value(self.table, store, key),
        }
    }
}

impl Shared {
    fn read<T>(&self, f: impl FnOnce(&View<'_>) -> Result<T, KvError>) -> Result<T, KvError> {
        // The overlay is locked first: the sync thread renews `generation`
        // before it lets go of a frozen layer, so a snapshot taken now holds
        // whatever that layer held.
        let overlay = read(&self.overlay);
        let table = self.current_snapshot()?;
        f(&View {
            overlay: &overlay,
            table: &table,
        })
    }

    /// The snapshot of the latest commit: shared while no write commits.
    /// A commit bumps `generation` before its writes are acknowledged (or,
    /// at `process`, before their overlay layer is dropped), so a read that
    /// starts after that sees them.
    fn current_snapshot(&self) -> Result<Arc<KvReadTable>, KvError> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(snapshot) = read(&self.snapshot)
            .as_ref()
            .filter(|s| s.generation == generation)
        {
            return Ok(snapshot.table.clone());
        }
        let db = self.file.db().map_err(KvError::Storage)?;
        let txn = db.begin_read().map_err(storage)?;
        let table = Arc::new(txn.open_table(KV).map_err(storage)?);
        *write(&self.snapshot) = Some(Snapshot {
            generation,
            table: table.clone(),
        });
        Ok(table)
    }

    /// Bytes (keys and values) each owner stores. The table is scanned
    /// off the overlay lock, on a snapshot taken with a copy of the overlay
    /// under it, so writers wait only for that copy.
    fn stored_bytes(&self) -> Result<HashMap<String, u64>, KvError> {
        let (active, frozen, table) = {
            let overlay = read(&self.overlay);
            let table = self.current_snapshot()?;
            (overlay.active.clone(), overlay.frozen.clone(), table)
        };
        let mut sizes: HashMap<String, u64> = HashMap::new();
        let (mut owner, mut bytes) = (String::new(), 0u64);
        for entry in table.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (o, _, key) = k.value();
            if o != owner {
                if bytes > 0 {
                    *sizes.entry(std::mem::take(&mut owner)).or_default() += bytes;
                }
                (owner, bytes) = (o.to_string(), 0);
            }
            bytes += (key.len() + v.value().len()) as u64;
        }
        if bytes > 0 {
            *sizes.entry(owner).or_default() += bytes;
        }
        // Each key the overlay holds replaces what redb has for it; the
        // newer layer's word counts.
        let mut seen = std::collections::HashSet::new();
        for layer in std::iter::once(&active).chain(frozen.as_deref()) {
            for (store, keys) in layer {
                for (key, cell) in keys {
                    if !seen.insert((store, key)) {
                        continue;
                    }
                    let size = |v: &[u8]| (key.len() + v.len()) as u64;
                    let old = get_value(&*table, store, key)?.map_or(0, |v| size(&v));
                    let new = cell.as_deref().map_or(0, size);
                    let total = sizes.entry(store.owner.clone()).or_default();
                    *total = (*total + new).saturating_sub(old);
                }
            }
        }
        sizes.retain(|_, bytes| *bytes > 0);
        Ok(sizes)
    }

    /// Writes `ops` in order, each seeing the ones before it: journals
    /// what they change with one append (synced if the journal is durable),
    /// then shows it in the overlay. Returns each write's result; the outer
    /// `Err` is a storage failure (none of them is done), after which
    /// writes are refused until [`Shared::recover`].
    fn write_group(
        &self,
        journal: &Mutex<Journal>,
        ops: &[(&StoreId, &Op)],
    ) -> Result<Vec<Result<Done, KvError>>, KvError> {
        let mut journal = lock(journal);
        if self.file.is_failed() {
            self.recover(&mut journal)?;
        }
        let (results, changes) = self.read(|view| {
            let mut staged = Staged {
                view,
                changes: Layer::new(),
            };
            let results = ops
                .iter()
                .map(|(store, op)| apply(&mut staged, store, op))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((results, staged.changes))
        })?;
        if changes.is_empty() {
            return Ok(results);
        }
        let records = changes.iter().flat_map(|(store, keys)| {
            keys.iter()
                .map(move |(key, cell)| (store, key.as_str(), cell.as_deref()))
        });
        if let Err(e) = journal
            .append(records)
            .and_then(|()| match journal.is_durable() {
                true => journal.sync(),
                false => Ok(()),
            })
        {
            let e = storage(e);
            self.file.failed(&e);
            return Err(e);
        }
        let mut overlay = write(&self.overlay);
        for (store, keys) in changes {
            match overlay.active.get_mut(&store) {
                Some(known) => known.extend(keys),
                None => {
                    overlay.active.insert(store, keys);
                }
            }
        }
        Ok(results)
    }

    /// Commits the overlay to redb durably and deletes the journal file
    /// that covered it. A failure leaves both in place (a restart replays
    /// the journal) and refuses further writes until [`Shared::recover`].
    fn sync(&self, journal: &Mutex<Journal>) {
        if self.file.is_failed() {
            // Recovery is tried here too, so that it needs no write.
            let _ = self.recover(&mut lock(journal));
            return;
        }
        if let Err(e) = self.try_sync(journal) {
            self.file.failed(&e);
        }
    }

    /// After a failure: once the disk takes writes, reopens
    /// the file, commits every acknowledged write the overlay holds, and
    /// starts the journal afresh. Writers wait on `journal` meanwhile.
    fn recover(&self, journal: &mut Journal) -> Result<(), KvError> {
        let writable = self
            .file
            .writable_after(|| self.release_snapshot())
            .map_err(KvError::Storage)?;
        if !writable.reopened {
            return Ok(());
        }
        let layers: Vec<Layer> = {
            let overlay = read(&self.overlay);
            overlay.layers().cloned().collect()
        };
        let mended = (|| {
            let txn = writable.db.begin_write().map_err(storage)?;
            {
                let mut table = txn.open_table(KV).map_err(storage)?;
                // Oldest first, so that the newer word on a key lands last.
                for layer in layers.iter().rev() {
                    for (store, keys) in layer {
                        for (key, cell) in keys {
                            put(&mut table, store, key, cell.as_deref())?;
                        }
                    }
                }
            }
            txn.commit().map_err(storage)?;
            self.generation.fetch_add(1, Ordering::Release);
            *write(&self.overlay) = Overlay::default();
            journal::remove_all(&self.dir).map_err(storage)?;
            *journal = Journal::start(&self.dir, journal.is_durable()).map_err(storage)?;
            Ok(())
        })();
        if let Err(e) = &mended {
            self.file.failed(e);
        }
        mended
    }

    /// Lets go of the cached read snapshot, which keeps the file open.
    fn release_snapshot(&self) {
        *write(&self.snapshot) = None;
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn try_sync(&self, journal: &Mutex<Journal>) -> Result<(), KvError> {
        match self.freeze(journal)? {
            Some((frozen, covered)) => self.commit_frozen(&frozen, &covered),
            None => Ok(()),
        }
    }

    /// Moves the active layer aside (readers still see it) and the journal
    /// to a new file; returns the layer and the file that covers it.
    fn freeze(&self, journal: &Mutex<Journal>) -> Result<Option<(Arc<Layer>, PathBuf)>, KvError> {
        // Holding the journal keeps writers out while the layer and the
        // journal file are switched together.
        let mut journal = lock(journal);
        let mut overlay = write(&self.overlay);
        if overlay.active.is_empty() || overlay.frozen.is_some() {
            return Ok(None);
        }
        let covered = journal.rotate().map_err(storage)?;
        let frozen = Arc::new(std::mem::take(&mut overlay.active));
        overlay.frozen = Some(frozen.clone());
        Ok(Some((frozen, covered)))
    }

    /// Commits a frozen layer durably, then lets it and its journal go.
    fn commit_frozen(&self, frozen: &Layer, covered: &Path) -> Result<(), KvError> {
        let db = self.file.writable().map_err(KvError::Storage)?.db;
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(KV).map_err(storage)?;
            for (store, keys) in frozen {
                for (key, cell) in keys {
                    put(&mut table, store, key, cell.as_deref())?;
                }
            }
        }
        txn.commit().map_err(storage)?;
        self.generation.fetch_add(1, Ordering::Release);
        write(&self.overlay).frozen = None;
        std::fs::remove_file(covered).map_err(storage)?;
        // Before a later commit: were this file back after a power cut,
        // replaying it would undo newer writes.
        journal::sync_dir(&self.dir).map_err(storage)
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
        self.shared.sync(&self.journal);
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

fn put(
    table: &mut KvTable<'_>,
    store: &StoreId,
    key: &str,
    value: Option<&[u8]>,
) -> Result<(), KvError> {
    let key = (store.owner.as_str(), store.name.as_str(), key);
    match value {
        Some(value) => table.insert(key, value).map_err(storage)?,
        None => table.remove(key).map_err(storage)?,
    };
    Ok(())
}

/// Where a write finds and leaves values.
trait Cells {
    fn load(&self, store: &StoreId, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    fn store(&mut self, store: &StoreId, key: &str, value: Option<&[u8]>) -> Result<(), KvError>;
}

/// A group of writes, gathering the final state of each key they change
/// before it is journaled and shown.
struct Staged<'a> {
    view: &'a View<'a>,
    changes: Layer,
}

impl Cells for Staged<'_> {
    fn load(&self, store: &StoreId, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self.changes.get(store).and_then(|keys| keys.get(key)) {
            Some(cell) => Ok(cell.clone()),
            None => self.view.get(store, key),
        }
    }
    fn store(&mut self, store: &StoreId, key: &str, value: Option<&[u8]>) -> Result<(), KvError> {
        let cell = value.map(<[u8]>::to_vec);
        match self.changes.get_mut(store) {
            Some(keys) => {
                keys.insert(key.to_string(), cell);
            }
            None => {
                let keys = BTreeMap::from([(key.to_string(), cell)]);
                self.changes.insert(store.clone(), keys);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl KvStore for EmbeddedKv {
    async fn get(&self, store: &StoreId, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key)?;
        self.read(|view| view.get(store, key))
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
        self.read(|view| {
            let in_store = |key: &str| key.starts_with(prefix);
            let mut failed = None;
            let stored = view
                .table
                .range((owner, name, start)..)
                .map_err(storage)?
                .map_while(|entry| match entry {
                    Ok((k, _)) => {
                        let (o, n, key) = k.value();
                        (o == owner && n == name).then(|| key.to_string())
                    }
                    Err(e) => {
                        failed = Some(storage(e));
                        None
                    }
                })
                .take_while(|key| in_store(key));
            let unsynced = view
                .overlay
                .keys_from(store, start)
                .take_while(|(key, _)| in_store(key));
            // The overlay's word on a key (set or deleted) beats redb's.
            let merged = unsynced
                .merge_join_by(stored, |(a, _), b| (*a).cmp(b.as_str()))
                .filter_map(|both| match both {
                    EitherOrBoth::Left((key, exists)) | EitherOrBoth::Both((key, exists), _) => {
                        exists.then(|| key.to_string())
                    }
                    EitherOrBoth::Right(key) => Some(key),
                });
            let mut keys = Vec::new();
            let mut more = false;
            for key in merged {
                if Some(key.as_str()) == cursor {
                    continue;
                }
                if keys.len() == limit {
                    more = true;
                    break;
                }
                keys.push(key);
            }
            if let Some(e) = failed {
                return Err(e);
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
            _ => Err(KvError::storage("unexpected writer reply")),
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
            _ => Err(KvError::storage("unexpected writer reply")),
        }
    }

    async fn get_many(
        &self,
        store: &StoreId,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        check_batch(keys.len())?;
        keys.iter().try_for_each(|k| check_key(k))?;
        self.read(|view| keys.iter().map(|k| view.get(store, k)).collect())
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

    async fn stored_bytes(&self) -> Result<HashMap<String, u64>, KvError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.stored_bytes())
            .await
            .map_err(storage)?
    }
}

/// The `disk` writer thread: drains the queue into one synced journal
/// append per round until the store is dropped.
fn write_loop(shared: &Shared, journal: &Mutex<Journal>, mut queue: mpsc::Receiver<Write>) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_OPS_MAX {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let ops: Vec<(&StoreId, &Op)> = batch.iter().map(|w| (&w.store, &w.op)).collect();
        match shared.write_group(journal, &ops) {
            Ok(results) => {
                for (write, result) in batch.into_iter().zip(results) {
                    let _ = write.reply.send(result);
                }
            }
            Err(e) => {
                for write in batch {
                    let _ = write.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Applies journal records left by a crash, durably.
fn replay(db: &Database, records: &[Record]) -> Result<(), KvError> {
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut table = txn.open_table(KV).map_err(storage)?;
        for r in records {
            put(&mut table, &r.store, &r.key, r.value.as_deref())?;
        }
    }
    txn.commit().map_err(storage)
}

type KvTable<'t> = Table<'t, (&'static str, &'static str, &'static str), &'static [u8]>;

/// One write. The outer `Err` is a storage failure (abort the batch), the
/// inner one the caller's own error (the rest of the batch goes on).
fn apply(
    cells: &mut impl Cells,
    store: &StoreId,
    op: &Op,
) -> Result<Result<Done, KvError>, KvError> {
    Ok(Ok(match op {
        Op::Set(key, value) => {
            cells.store(store, key, Some(value))?;
            Done::Unit
        }
        Op::Delete(key) => {
            cells.store(store, key, None)?;
            Done::Unit
        }
        Op::Increment(key, delta) => {
            let current = cells.load(store, key)?;
            let now = match counter_value(key, current.as_deref()) {
                Ok(now) => now,
                Err(e) => return Ok(Err(e)),
            };
            let Some(next) = now.checked_add(*delta) else {
                return Ok(Err(KvError::Overflow { key: key.clone() }));
            };
            cells.store(store, key, Some(next.to_string().as_bytes()))?;
            Done::Int(next)
        }
        Op::Cas { key, expected, new } => {
            let current = cells.load(store, key)?;
            if current == *expected {
                cells.store(store, key, Some(new))?;
                Done::Cas(CasOutcome::Swapped)
            } else {
                Done::Cas(CasOutcome::Mismatch(current))
            }
        }
        Op::SetMany(entries) => {
            for (key, value) in entries {
                cells.store(store, key, Some(value))?;
            }
            Done::Unit
        }
        Op::DeleteMany(keys) => {
            for key in keys {
                cells.store(store, key, None)?;
            }
            Done::Unit
        }
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::kv::model::{self, Rng, key, list_model, stored_model, value};
    use crate::kv::{BATCH_KEYS_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};

    #[tokio::test(flavor = "multi_thread")]
    async fn matches_a_btreemap_over_thousands_of_mixed_operations() {
        for durability in [Durability::Disk, Durability::Process] {
            model_run(durability).await;
        }
    }

    async fn model_run(durability: Durability) {
        let dir = tempfile::tempdir().unwrap();
        let kv = EmbeddedKv::open(dir.path(), durability).unwrap();
        let store = StoreId::new(model::STORE.0, model::STORE.1);
        // Sync at random points, pausing between freezing and committing,
        // so reads and writes meet every mix of the active layer, a frozen
        // one and redb (the sync thread also runs).
        let journal = kv.journal.clone();
        let mut frozen = None;
        let sync_sometimes = |rng: &mut Rng| {
            if rng.below(40) == 0 {
                match frozen.take() {
                    None => frozen = kv.shared.freeze(&journal).unwrap(),
                    Some((layer, covered)) => kv.shared.commit_frozen(&layer, &covered).unwrap(),
                }
            }
        };
        let mut model = model::run(&kv, 4000, sync_sometimes).await;
        let mut rng = Rng(0x5eed_0000_0000_0002);
        // Everything acknowledged is there after reopening; a layer left
        // frozen (as by a crash mid-sync) comes back from the journal. The
        // sync thread may have just taken the overlay: write until a layer
        // of our own is frozen.
        while frozen.is_none() {
            let (k, v) = (key(&mut rng), value(&mut rng));
            kv.set(&store, &k, v.clone()).await.unwrap();
            model.insert(k, v);
            frozen = kv.shared.freeze(&journal).unwrap();
        }
        drop(kv);
        let kv = EmbeddedKv::open(dir.path(), durability).unwrap();
        let page = kv.list(&store, "", None, LIST_PAGE_MAX).await.unwrap();
        assert_eq!(page.keys, list_model(&model, ""));
        for (k, v) in &model {
            assert_eq!(kv.get(&store, k).await.unwrap().as_ref(), Some(v));
        }
        assert_eq!(kv.stored_bytes().await.unwrap(), stored_model(&model));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_increments_are_all_counted() {
        for durability in [Durability::Disk, Durability::Process] {
            let dir = tempfile::tempdir().unwrap();
            let kv = Arc::new(EmbeddedKv::open(dir.path(), durability).unwrap());
            let store = StoreId::new("owner", "counters");
            // Sync back to back meanwhile, so increments and reads race
            // every step of a sync.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let syncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let syncer = {
                let journal = kv.journal.clone();
                let (shared, stop, syncs) = (kv.shared.clone(), stop.clone(), syncs.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        shared.sync(&journal);
                        syncs.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            let tasks: Vec<_> = (0..1000)
                .map(|_| {
                    let (kv, store) = (kv.clone(), store.clone());
                    tokio::spawn(async move {
                        let n = kv.increment(&store, "hits", 1).await.unwrap();
                        let seen = kv.get(&store, "hits").await.unwrap().unwrap();
                        let seen: i64 = std::str::from_utf8(&seen).unwrap().parse().unwrap();
                        assert!(seen >= n, "a read lost an acknowledged increment");
                        n
                    })
                })
                .collect();
            let mut seen = Vec::new();
            for task in tasks {
                seen.push(task.await.unwrap());
            }
            // The syncer may not have had a turn on a busy machine: let it
            // sync twice more (one sync after the increments at least) before
            // stopping it, rather than count on the scheduler's luck.
            let target = syncs.load(Ordering::Relaxed) + 2;
            while syncs.load(Ordering::Relaxed) < target && !syncer.is_finished() {
                std::thread::yield_now();
            }
            stop.store(true, Ordering::Relaxed);
            syncer.join().unwrap();
            seen.sort_unstable();
            assert_eq!(
                seen,
                (1..=1000).collect::<Vec<i64>>(),
                "{durability:?}: each increment returns a distinct new value"
            );
            assert_eq!(
                kv.get(&store, "hits").await.unwrap(),
                Some(b"1000".to_vec())
            );
            drop(kv);
            let kv = EmbeddedKv::open(dir.path(), durability).unwrap();
            assert_eq!(
                kv.get(&store, "hits").await.unwrap(),
                Some(b"1000".to_vec())
            );
        }
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
