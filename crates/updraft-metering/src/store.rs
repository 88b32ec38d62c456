//! Durable usage: every [`UsageRecord`] in an append-only log of compact
//! frames ([`crate::codec`]; `usage/<hour>.usage`, one file per hour of
//! writing), and the
//! tenant × hour × function sums in `usage.redb` with the tenants' budgets.
//!
//! A record lands in the segment of the hour it is *written*, which can be
//! any time after it started: a long attempt, a storage sample, a writer
//! held up by a slow disk, a month's end while it was behind. So each
//! segment's span of start times is kept beside it (`spans`, in memory and
//! in `usage.redb`), and reading the records of a time range reads every
//! segment whose span meets the range, however late its records came.
//!
//! The request path only hands a record to a channel. A writer thread
//! wakes every 10 ms, appends what has queued with one `write(2)` (from
//! then on a `kill -9` loses nothing), syncs the log once a second (a
//! power cut loses at most that), and adds the records to in-memory sums. Once a second the changed sums are committed to `usage.redb`
//! together with the log position they include; at start-up the log after
//! that position is replayed, so every record is summed exactly once.
//!
//! In cluster mode the store is a replica ([`UsageStore::open_replica`]):
//! its records come from the cluster's usage stream, each batch with its
//! stream sequence, and the sums are committed with the last sequence they
//! include. At start-up the log after the committed position is cut off
//! rather than replayed: the stream still has those records, and reading
//! it again from the committed sequence sums each exactly once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use updraft_core::{SharedClock, Trigger, UsageRecord};
use updraft_state::redb_file::RedbFile;

use crate::{MeteringError, codec};

/// Extension of the log's segments.
const SEGMENT_EXT: &str = "usage";

/// (tenant, hour start ms, function) → JSON aggregate.
const HOURLY: TableDefinition<(&str, u64, &str), &[u8]> = TableDefinition::new("hourly");
/// tenant → JSON budget.
const BUDGETS: TableDefinition<&str, &[u8]> = TableDefinition::new("budgets");
/// "position" → JSON [`Position`]: how much of the log the sums include.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// segment → (earliest, latest) `start_ms` of the records in it.
const SPANS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("spans");

pub const HOUR_MS: u64 = 3_600_000;
/// How often the writer drains the channel.
const WAKE_EVERY: Duration = Duration::from_millis(10);
const SYNC_EVERY: Duration = Duration::from_secs(1);
const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// Sums of usage over some records. Every field is an integer, so a bill
/// computed from sums is the same however the records were grouped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Aggregate {
    pub invocations: u64,
    pub failures: u64,
    pub wall_us: u64,
    pub billed_ms: u64,
    /// Σ memory_mb × billed_ms: what GB-seconds are made of.
    pub mb_ms: u64,
    pub cpu_us: u64,
    pub memory_peak_bytes: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub kv_ops: u64,
    pub kv_bytes: u64,
    pub blob_ops: u64,
    pub blob_bytes: u64,
    pub outbound_requests: u64,
    pub outbound_bytes: u64,
    /// Σ key-value bytes stored × hours, from the storage samples.
    pub kv_byte_hours: u64,
    /// Σ blob bytes stored × hours, from the storage samples.
    pub blob_byte_hours: u64,
}

/// Byte-hours of `bytes` kept `secs` seconds (rounded down, per sample).
fn byte_hours(bytes: u64, secs: u64) -> u64 {
    (u128::from(bytes) * u128::from(secs) / 3600)
        .try_into()
        .unwrap_or(u64::MAX)
}

impl Aggregate {
    pub fn add(&mut self, r: &UsageRecord) {
        if r.trigger == Trigger::Storage {
            self.kv_byte_hours += byte_hours(r.kv_stored_bytes, r.stored_secs);
            self.blob_byte_hours += byte_hours(r.blob_stored_bytes, r.stored_secs);
            return;
        }
        self.invocations += 1;
        self.failures += u64::from(r.error.is_some());
        self.wall_us += r.wall_us;
        self.billed_ms += r.billed_ms;
        self.mb_ms += u64::from(r.memory_mb) * r.billed_ms;
        self.cpu_us += r.cpu_us;
        self.memory_peak_bytes = self.memory_peak_bytes.max(r.memory_peak_bytes);
        self.bytes_in += r.bytes_in;
        self.bytes_out += r.bytes_out;
        self.kv_ops += r.kv_ops;
        self.kv_bytes += r.kv_bytes;
        self.blob_ops += r.blob_ops;
        self.blob_bytes += r.blob_bytes;
        self.outbound_requests += r.outbound_requests;
        self.outbound_bytes += r.outbound_bytes;
    }

    pub fn merge(&mut self, o: &Aggregate) {
        self.invocations += o.invocations;
        self.failures += o.failures;
        self.wall_us += o.wall_us;
        self.billed_ms += o.billed_ms;
        self.mb_ms += o.mb_ms;
        self.cpu_us += o.cpu_us;
        self.memory_peak_bytes = self.memory_peak_bytes.max(o.memory_peak_bytes);
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.kv_ops += o.kv_ops;
        self.kv_bytes += o.kv_bytes;
        self.blob_ops += o.blob_ops;
        self.blob_bytes += o.blob_bytes;
        self.outbound_requests += o.outbound_requests;
        self.outbound_bytes += o.outbound_bytes;
        self.kv_byte_hours += o.kv_byte_hours;
        self.blob_byte_hours += o.blob_byte_hours;
    }
}

/// A tenant's monthly spending cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub monthly_cents: u64,
}

// Records are the common message and move by value: no allocation each.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(UsageRecord),
    /// Records read from the cluster's stream, up to this sequence.
    Ingested(Vec<UsageRecord>, u64),
    Flush(mpsc::Sender<()>),
}

type SumKey = (Arc<str>, u64, Arc<str>);

/// The earliest and latest `start_ms` in a segment, inclusive.
type Span = (u64, u64);

/// Every segment's span, shared by the writer (which widens a span before
/// it writes the records) and readers.
type Spans = Arc<Mutex<BTreeMap<String, Span>>>;

fn widen(span: Option<Span>, start_ms: u64) -> Span {
    span.map_or((start_ms, start_ms), |(lo, hi)| {
        (lo.min(start_ms), hi.max(start_ms))
    })
}

fn lock(spans: &Spans) -> std::sync::MutexGuard<'_, BTreeMap<String, Span>> {
    spans.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the sums stop in the log: a segment and a byte offset in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    segment: String,
    offset: u64,
}

/// Most usage records kept in memory while the disk refuses them (about
/// 200 bytes each): minutes of a busy node's records, bounded.
const UNWRITTEN_MAX: usize = 100_000;

pub struct UsageStore {
    /// The stream sequence the store held at opening (a replica's).
    ingested: u64,
    /// `usage.redb`: after a failed commit it refuses writes until the disk
    /// takes them again, then is reopened (the sums wait in memory).
    file: Arc<RedbFile>,
    dir: PathBuf,
    spans: Spans,
    sender: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Records handed over and not yet in the log (the metrics' usage lag).
    pending: Arc<AtomicU64>,
}

fn storage(e: impl std::error::Error + Send + Sync + 'static) -> MeteringError {
    MeteringError::Storage(updraft_state::redb_file::failure(e))
}

/// The log segment of an instant: `2026-11-27T05.usage`.
fn segment_of(ms: u64) -> String {
    // RFC 3339 ends at year 9999; later instants name its last segment.
    let ms = ms.min(253_402_300_799_000);
    let hour = ms - ms % HOUR_MS;
    let t = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(hour))
        .to_string();
    format!("{}.{SEGMENT_EXT}", &t[..13])
}

fn hour_key(r: &UsageRecord) -> SumKey {
    (
        r.tenant.clone(),
        r.start_ms - r.start_ms % HOUR_MS,
        r.function.clone(),
    )
}

impl UsageStore {
    /// Opens the store; log segments older than `retention` are deleted as
    /// new ones start (the sums stay). `clock` names the segments.
    pub fn open(
        data_dir: &Path,
        retention: Duration,
        clock: SharedClock,
    ) -> Result<UsageStore, MeteringError> {
        Self::open_as(data_dir, retention, clock, false)
    }

    /// Opens a replica of the cluster's usage stream: records come only
    /// through [`UsageStore::push_ingested`].
    pub fn open_replica(
        data_dir: &Path,
        retention: Duration,
        clock: SharedClock,
    ) -> Result<UsageStore, MeteringError> {
        Self::open_as(data_dir, retention, clock, true)
    }

    fn open_as(
        data_dir: &Path,
        retention: Duration,
        clock: SharedClock,
        replica: bool,
    ) -> Result<UsageStore, MeteringError> {
        let dir = data_dir.join("usage");
        std::fs::create_dir_all(&dir).map_err(storage)?;
        let file = Arc::new(RedbFile::create(data_dir.join("usage.redb")).map_err(storage)?);
        let db = file.db()?;
        let mut txn = db.begin_write().map_err(storage)?;
        // Creating the tables is idempotent; it need not wait for a sync.
        txn.set_durability(Durability::None).map_err(storage)?;
        txn.open_table(HOURLY).map_err(storage)?;
        txn.open_table(BUDGETS).map_err(storage)?;
        txn.open_table(META).map_err(storage)?;
        txn.open_table(SPANS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        drop(db);
        let pending = Arc::new(AtomicU64::new(0));
        let mut writer = Writer::open(file.clone(), dir.clone(), retention, clock)?;
        writer.pending = pending.clone();
        match replica {
            true => writer.cut_unsummed()?,
            false => writer.replay()?,
        }
        let ingested = writer.ingested;
        let spans = writer.spans.clone();
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("updraft-usage".into())
            .spawn(move || writer.run(&receiver))
            .map_err(storage)?;
        Ok(UsageStore {
            ingested,
            file,
            dir,
            spans,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(thread)),
            pending,
        })
    }

    /// Queues a record for the writer; returns at once.
    pub fn push(&self, record: UsageRecord) {
        if let Ok(sender) = self.sender.lock()
            && let Some(sender) = sender.as_ref()
        {
            self.pending.fetch_add(1, Ordering::Relaxed);
            if sender.send(Msg::Record(record)).is_err() {
                self.pending.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Records handed over that are not in the log yet: waiting for the
    /// writer's next round, or for a full disk to take them.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Queues records read from the cluster's stream, up to `sequence`.
    pub fn push_ingested(&self, records: Vec<UsageRecord>, sequence: u64) {
        if let Ok(sender) = self.sender.lock()
            && let Some(sender) = sender.as_ref()
        {
            let count = records.len() as u64;
            self.pending.fetch_add(count, Ordering::Relaxed);
            if sender.send(Msg::Ingested(records, sequence)).is_err() {
                self.pending.fetch_sub(count, Ordering::Relaxed);
            }
        }
    }

    /// The last stream sequence committed when the store was opened (a
    /// replica reads the stream on from the next).
    pub fn ingested_at_open(&self) -> u64 {
        self.ingested
    }

    /// Waits until every record pushed so far is in the log, synced, and in
    /// the sums of `usage.redb`.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        let sent = match self.sender.lock() {
            Ok(sender) => sender
                .as_ref()
                .is_some_and(|s| s.send(Msg::Flush(done)).is_ok()),
            Err(_) => false,
        };
        if sent {
            let _ = wait.recv();
        }
    }

    /// Sums of `tenant` for the hours starting in `from_ms..to_ms`:
    /// `(hour start, function, sums)` in hour order.
    pub fn hourly(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<(u64, String, Aggregate)>, MeteringError> {
        let txn = self.file.db()?.begin_read().map_err(storage)?;
        let table = txn.open_table(HOURLY).map_err(storage)?;
        let mut out = Vec::new();
        let from = from_ms - from_ms % HOUR_MS;
        for entry in table
            .range((tenant, from, "")..(tenant, to_ms, ""))
            .map_err(storage)?
        {
            let (key, value) = entry.map_err(storage)?;
            let (_, hour, function) = key.value();
            let sums = serde_json::from_slice(value.value()).map_err(storage)?;
            out.push((hour, function.to_string(), sums));
        }
        Ok(out)
    }

    /// Calls `each` with every record of `tenant` that started in
    /// `from_ms..to_ms`, in start order.
    pub fn records(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        mut each: impl FnMut(UsageRecord),
    ) -> Result<(), MeteringError> {
        let spans = lock(&self.spans).clone();
        let mut found = Vec::new();
        for segment in segments(&self.dir)? {
            // A segment without a span is one this store did not write
            // (copied in by hand): read it rather than miss a record.
            if let Some(&(lo, hi)) = spans.get(&segment)
                && (hi < from_ms || lo >= to_ms)
            {
                continue;
            }
            let bytes = std::fs::read(self.dir.join(&segment)).map_err(storage)?;
            let mut at = 0;
            while let Some((record, len)) = codec::decode(&bytes[at..]) {
                at += len;
                if let Some(record) = record
                    && &*record.tenant == tenant
                    && (from_ms..to_ms).contains(&record.start_ms)
                {
                    found.push(record);
                }
            }
        }
        found.sort_by(|a, b| (a.start_ms, &a.invocation_id).cmp(&(b.start_ms, &b.invocation_id)));
        found.into_iter().for_each(&mut each);
        Ok(())
    }

    pub fn budgets(&self) -> Result<Vec<(String, Budget)>, MeteringError> {
        let txn = self.file.db()?.begin_read().map_err(storage)?;
        let table = txn.open_table(BUDGETS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (tenant, value) = entry.map_err(storage)?;
            let budget = serde_json::from_slice(value.value()).map_err(storage)?;
            out.push((tenant.value().to_string(), budget));
        }
        Ok(out)
    }

    /// Sets (or with `None` removes) a tenant's budget.
    pub fn set_budget(&self, tenant: &str, budget: Option<Budget>) -> Result<(), MeteringError> {
        let result = self.try_set_budget(tenant, budget);
        if let Err(e @ MeteringError::Storage(_)) = &result {
            self.file.failed(e);
        }
        result
    }

    fn try_set_budget(&self, tenant: &str, budget: Option<Budget>) -> Result<(), MeteringError> {
        let txn = self.file.writable()?.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(BUDGETS).map_err(storage)?;
            match budget {
                Some(budget) => {
                    let json = serde_json::to_vec(&budget).map_err(storage)?;
                    table.insert(tenant, json.as_slice()).map_err(storage)?;
                }
                None => {
                    table.remove(tenant).map_err(storage)?;
                }
            }
        }
        txn.commit().map_err(storage)
    }
}

impl Drop for UsageStore {
    /// Writes out what is queued, then stops the writer.
    fn drop(&mut self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
        if let Ok(mut writer) = self.writer.lock()
            && let Some(writer) = writer.take()
        {
            let _ = writer.join();
        }
    }
}

/// The log's segments, oldest first.
fn segments(dir: &Path) -> Result<Vec<String>, MeteringError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(storage)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(&format!(".{SEGMENT_EXT}")))
        .collect();
    names.sort();
    Ok(names)
}

/// The writer thread's state: the open segment and the sums not yet
/// committed.
struct Writer {
    db: Arc<RedbFile>,
    dir: PathBuf,
    retention: Duration,
    clock: SharedClock,
    spans: Spans,
    /// Segments whose span changed (or that were deleted) since the last
    /// commit.
    spans_dirty: HashSet<String>,
    file: Option<(String, File)>,
    position: Position,
    /// The last stream sequence appended (a replica's), committed with the
    /// sums.
    ingested: u64,
    ingested_dirty: bool,
    sums: HashMap<SumKey, Aggregate>,
    dirty: HashSet<SumKey>,
    synced: bool,
    line: Vec<u8>,
    /// Records not written yet (the disk refused them), oldest first.
    unwritten: Vec<UsageRecord>,
    /// Shared with the store: records not in the log yet.
    pending: Arc<AtomicU64>,
}

impl Writer {
    fn open(
        file: Arc<RedbFile>,
        dir: PathBuf,
        retention: Duration,
        clock: SharedClock,
    ) -> Result<Writer, MeteringError> {
        let (position, ingested, spans) = {
            let txn = file.db()?.begin_read().map_err(storage)?;
            let meta = txn.open_table(META).map_err(storage)?;
            let position = match meta.get("position").map_err(storage)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(storage)?,
                None => Position::default(),
            };
            let ingested = match meta.get("ingested").map_err(storage)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(storage)?,
                None => 0,
            };
            let mut spans = BTreeMap::new();
            for entry in txn
                .open_table(SPANS)
                .map_err(storage)?
                .iter()
                .map_err(storage)?
            {
                let (segment, span) = entry.map_err(storage)?;
                spans.insert(segment.value().to_string(), span.value());
            }
            (position, ingested, spans)
        };
        Ok(Writer {
            db: file,
            dir,
            retention,
            clock,
            spans: Arc::new(Mutex::new(spans)),
            spans_dirty: HashSet::new(),
            file: None,
            position,
            ingested,
            ingested_dirty: false,
            sums: HashMap::new(),
            dirty: HashSet::new(),
            synced: true,
            line: Vec::new(),
            unwritten: Vec::new(),
            pending: Arc::default(),
        })
    }

    /// Sums the records written after the committed position (a crash
    /// between writing and committing), drops a torn last line, and
    /// commits. Segments from before spans were kept get theirs here, once.
    fn replay(&mut self) -> Result<(), MeteringError> {
        let all = segments(&self.dir)?;
        for segment in &all {
            if !lock(&self.spans).contains_key(segment) {
                self.measure(segment)?;
            }
        }
        for segment in all {
            if segment < self.position.segment {
                continue;
            }
            let path = self.dir.join(&segment);
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(storage)?;
            let start = if segment == self.position.segment {
                self.position.offset
            } else {
                0
            };
            let mut bytes = Vec::new();
            file.seek(SeekFrom::Start(start)).map_err(storage)?;
            file.read_to_end(&mut bytes).map_err(storage)?;
            let mut at = 0;
            while let Some((record, len)) = codec::decode(&bytes[at..]) {
                if let Some(record) = record {
                    self.add(&record);
                    self.widen(&segment, record.start_ms);
                }
                at += len;
            }
            let offset = start + at as u64;
            // A frame cut by a crash is dropped, so the next append starts clean.
            file.set_len(offset).map_err(storage)?;
            self.position = Position { segment, offset };
        }
        self.persist()
    }

    /// A replica's start: drops what was written after the committed
    /// position (its records come again from the stream).
    fn cut_unsummed(&mut self) -> Result<(), MeteringError> {
        for segment in segments(&self.dir)? {
            if segment < self.position.segment {
                continue;
            }
            let path = self.dir.join(&segment);
            if segment == self.position.segment {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(storage)?;
                file.set_len(self.position.offset).map_err(storage)?;
            } else {
                std::fs::remove_file(&path).map_err(storage)?;
                lock(&self.spans).remove(&segment);
                self.spans_dirty.insert(segment);
            }
        }
        self.persist()
    }

    /// Reads a whole segment to learn its span.
    fn measure(&mut self, segment: &str) -> Result<(), MeteringError> {
        let bytes = std::fs::read(self.dir.join(segment)).map_err(storage)?;
        let mut at = 0;
        while let Some((record, len)) = codec::decode(&bytes[at..]) {
            at += len;
            if let Some(record) = record {
                self.widen(segment, record.start_ms);
            }
        }
        Ok(())
    }

    fn widen(&mut self, segment: &str, start_ms: u64) {
        let mut spans = lock(&self.spans);
        let old = spans.get(segment).copied();
        let new = widen(old, start_ms);
        if old != Some(new) {
            spans.insert(segment.to_string(), new);
            self.spans_dirty.insert(segment.to_string());
        }
    }

    fn add(&mut self, record: &UsageRecord) {
        let key = hour_key(record);
        self.sums.entry(key.clone()).or_default().add(record);
        self.dirty.insert(key);
    }

    fn run(mut self, receiver: &mpsc::Receiver<Msg>) {
        let mut last_sync = Instant::now();
        let mut last_persist = Instant::now();
        loop {
            // Sleeping instead of blocking on the channel means senders
            // never have to wake this thread: a send stays a memory write.
            std::thread::sleep(WAKE_EVERY);
            // Records a full disk refused are written first.
            let mut records = std::mem::take(&mut self.unwritten);
            let mut ingested = None;
            let mut flushes = Vec::new();
            let mut closed = false;
            loop {
                match receiver.try_recv() {
                    Ok(Msg::Record(r)) => records.push(r),
                    Ok(Msg::Ingested(rs, sequence)) => {
                        records.extend(rs);
                        ingested = Some(sequence);
                    }
                    Ok(Msg::Flush(done)) => flushes.push(done),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            match self.append(&records) {
                // The sequence moves only with its records: a replica that
                // failed to write reads them again after a restart.
                Ok(()) => {
                    self.pending
                        .fetch_sub(records.len() as u64, Ordering::Relaxed);
                    if let Some(sequence) = ingested {
                        self.ingested = sequence;
                        self.ingested_dirty = true;
                    }
                }
                Err(e) => {
                    if self.unwritten.is_empty() {
                        tracing::error!(
                            "{} usage records could not be written (kept to try again): {}",
                            records.len(),
                            updraft_core::error::chain(&e)
                        );
                    }
                    if records.len() > UNWRITTEN_MAX {
                        tracing::error!(
                            "{} usage records dropped: more than {UNWRITTEN_MAX} wait for the disk",
                            records.len() - UNWRITTEN_MAX
                        );
                        let dropped = records.len() - UNWRITTEN_MAX;
                        records.drain(..dropped);
                        self.pending.fetch_sub(dropped as u64, Ordering::Relaxed);
                    }
                    self.unwritten = records;
                }
            }
            let now = Instant::now();
            let finish = closed || !flushes.is_empty();
            if !self.synced && (finish || now - last_sync >= SYNC_EVERY) {
                if let Some((_, file)) = &self.file
                    && let Err(e) = file.sync_data()
                {
                    tracing::error!(
                        "syncing the usage log failed: {}",
                        updraft_core::error::chain(&e)
                    );
                }
                self.synced = true;
                last_sync = now;
            }
            let changed =
                !self.dirty.is_empty() || !self.spans_dirty.is_empty() || self.ingested_dirty;
            if changed && (finish || now - last_persist >= PERSIST_EVERY) {
                if let Err(e) = self.persist() {
                    // The first failure is logged by the file; the sums wait.
                    tracing::debug!(
                        "usage sums not committed yet: {}",
                        updraft_core::error::chain(&e)
                    );
                }
                last_persist = now;
            }
            for done in flushes {
                let _ = done.send(());
            }
            if closed {
                return;
            }
        }
    }

    /// Appends records to the segment of this hour, with one write.
    fn append(&mut self, records: &[UsageRecord]) -> Result<(), MeteringError> {
        if records.is_empty() {
            return Ok(());
        }
        let segment = segment_of(self.clock.now_ms());
        // The span grows before the records are written, so a reader never
        // sees a record outside its segment's span.
        let starts = records.iter().map(|r| r.start_ms);
        if let (Some(lo), Some(hi)) = (starts.clone().min(), starts.max()) {
            self.widen(&segment, lo);
            self.widen(&segment, hi);
        }
        if self.file.as_ref().is_none_or(|(name, _)| *name != segment) {
            if let Some((_, old)) = self.file.take() {
                old.sync_data().map_err(storage)?;
            }
            self.prune();
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(&segment))
                .map_err(storage)?;
            let offset = file.metadata().map_err(storage)?.len();
            self.position = Position {
                segment: segment.clone(),
                offset,
            };
            self.file = Some((segment, file));
        }
        self.line.clear();
        for r in records {
            codec::encode(r, &mut self.line);
        }
        if let Some((_, file)) = &mut self.file
            && let Err(e) = file.write_all(&self.line)
        {
            // A torn write would be followed by the next records: cut it.
            let _ = file.set_len(self.position.offset);
            return Err(storage(e));
        }
        self.position.offset += self.line.len() as u64;
        self.synced = false;
        for r in records {
            self.add(r);
        }
        Ok(())
    }

    /// Deletes the segments older than the retention.
    fn prune(&mut self) {
        let keep_from = self
            .clock
            .now_ms()
            .saturating_sub(self.retention.as_millis() as u64);
        let oldest_kept = segment_of(keep_from);
        let Ok(all) = segments(&self.dir) else {
            return;
        };
        for segment in all {
            if segment < oldest_kept && segment < self.position.segment {
                match std::fs::remove_file(self.dir.join(&segment)) {
                    Ok(()) => {
                        tracing::info!("usage log {segment} is past its retention: deleted");
                        lock(&self.spans).remove(&segment);
                        self.spans_dirty.insert(segment);
                    }
                    Err(e) => tracing::warn!(
                        "usage log {segment} could not be deleted: {}",
                        updraft_core::error::chain(&e)
                    ),
                }
            }
        }
    }

    /// Commits the changed sums with the log position they include; syncs
    /// the log first, so the position never runs ahead of the disk. After
    /// a failure the sums and spans stay to be committed later, and the
    /// file refuses writes until the disk takes them again.
    fn persist(&mut self) -> Result<(), MeteringError> {
        let result = self.try_persist();
        if let Err(e @ MeteringError::Storage(_)) = &result {
            self.db.failed(e);
        }
        result
    }

    fn try_persist(&mut self) -> Result<(), MeteringError> {
        if let Some((_, file)) = &self.file {
            file.sync_data().map_err(storage)?;
            self.synced = true;
        }
        let txn = self.db.writable()?.db.begin_write().map_err(storage)?;
        {
            let mut hourly = txn.open_table(HOURLY).map_err(storage)?;
            for key in &self.dirty {
                let Some(add) = self.sums.get(key) else {
                    continue;
                };
                let k = (&*key.0, key.1, &*key.2);
                let mut total: Aggregate = match hourly.get(k).map_err(storage)? {
                    Some(v) => serde_json::from_slice(v.value()).map_err(storage)?,
                    None => Aggregate::default(),
                };
                total.merge(add);
                let json = serde_json::to_vec(&total).map_err(storage)?;
                hourly.insert(k, json.as_slice()).map_err(storage)?;
            }
            let mut table = txn.open_table(SPANS).map_err(storage)?;
            let spans = lock(&self.spans);
            for segment in &self.spans_dirty {
                match spans.get(segment) {
                    Some(span) => table.insert(segment.as_str(), span).map_err(storage)?,
                    None => table.remove(segment.as_str()).map_err(storage)?,
                };
            }
            drop(spans);
            drop(table);
            let position = serde_json::to_vec(&self.position).map_err(storage)?;
            let ingested = serde_json::to_vec(&self.ingested).map_err(storage)?;
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert("position", position.as_slice())
                .map_err(storage)?;
            meta.insert("ingested", ingested.as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        for key in self.dirty.drain() {
            self.sums.remove(&key);
        }
        self.spans_dirty.clear();
        self.ingested_dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use updraft_core::{Clock, ManualClock};

    const DAY_MS: u64 = 24 * HOUR_MS;
    /// 2026-11-15T12:00:00Z.
    const MID_NOVEMBER: u64 = 1_794_744_000_000;

    fn count(store: &UsageStore, from: u64, to: u64) -> usize {
        let mut n = 0;
        store.records("a", from, to, |_| n += 1).unwrap();
        n
    }

    #[test]
    fn segments_from_before_spans_were_kept_are_measured_once_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(MID_NOVEMBER);
        let open = || UsageStore::open(dir.path(), Duration::from_secs(62 * 86_400), clock.clone());
        {
            let store = open().unwrap();
            // Written ten days after it started.
            store.push(UsageRecord::storage(
                "a".into(),
                MID_NOVEMBER - 10 * DAY_MS,
                3600,
                1,
                1,
            ));
            store.flush();
        }
        // As a data dir from before spans: the table is gone.
        {
            let db = redb::Database::create(dir.path().join("usage.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            assert!(txn.delete_table(SPANS).unwrap());
            txn.commit().unwrap();
        }
        let store = open().unwrap();
        let day = MID_NOVEMBER - 10 * DAY_MS;
        assert_eq!(count(&store, day, day + 1), 1);
        assert_eq!(count(&store, day + 1, MID_NOVEMBER + DAY_MS), 0);
        assert_eq!(
            lock(&store.spans).get(&segment_of(MID_NOVEMBER)),
            Some(&(day, day))
        );
    }

    #[test]
    fn pruned_segments_lose_their_spans() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(MID_NOVEMBER);
        let store =
            UsageStore::open(dir.path(), Duration::from_secs(86_400), clock.clone()).unwrap();
        store.push(UsageRecord::storage("a".into(), MID_NOVEMBER, 1, 1, 1));
        store.flush();
        // Segments go as the next ones start, never the open one.
        for _ in 0..2 {
            clock.advance(3 * DAY_MS);
            store.push(UsageRecord::storage("a".into(), clock.now_ms(), 1, 1, 1));
            store.flush();
        }
        let spans = lock(&store.spans).clone();
        assert_eq!(spans.len(), 2, "{spans:?}");
        assert!(!spans.contains_key(&segment_of(MID_NOVEMBER)));
        assert_eq!(count(&store, 0, u64::MAX), 2);
        drop(store);
        let store = UsageStore::open(dir.path(), Duration::from_secs(86_400), clock).unwrap();
        assert_eq!(lock(&store.spans).len(), 2, "the deletion was committed");
    }
}
