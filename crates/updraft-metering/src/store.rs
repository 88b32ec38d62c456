//! Durable usage: every [`UsageRecord`] and its tenant × hour × function
//! aggregate in `usage.redb`, and the tenants' budgets.
//!
//! Records reach the disk through one writer thread that commits whatever
//! has queued up in one fsynced transaction (group commit), so the request
//! path only hands a record to a channel. A crash loses at most the batch
//! being written, about one fsync's worth of invocations; `flush` waits for
//! everything handed over so far.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use updraft_core::UsageRecord;

use crate::MeteringError;

/// (tenant, start ms, invocation id) → JSON record.
const RECORDS: TableDefinition<(&str, u64, &str), &[u8]> = TableDefinition::new("records");
/// (tenant, hour start ms, function) → JSON aggregate.
const HOURLY: TableDefinition<(&str, u64, &str), &[u8]> = TableDefinition::new("hourly");
/// tenant → JSON budget.
const BUDGETS: TableDefinition<&str, &[u8]> = TableDefinition::new("budgets");

/// Records committed in one transaction at most.
const BATCH_MAX: usize = 4096;
pub const HOUR_MS: u64 = 3_600_000;

/// Sums of usage over some records. Every field is an integer, so a bill
/// computed from sums is the same however the records were grouped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Aggregate {
    pub fn add(&mut self, r: &UsageRecord) {
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
    }
}

/// A tenant's monthly spending cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub monthly_cents: u64,
}

enum Msg {
    Record(Box<UsageRecord>),
    Flush(mpsc::Sender<()>),
}

pub struct UsageStore {
    db: Arc<Database>,
    sender: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn storage(e: impl std::fmt::Display) -> MeteringError {
    MeteringError::Storage(e.to_string())
}

impl UsageStore {
    pub fn open(data_dir: &Path) -> Result<UsageStore, MeteringError> {
        let db = Database::create(data_dir.join("usage.redb")).map_err(storage)?;
        let mut txn = db.begin_write().map_err(storage)?;
        // Creating the tables is idempotent; it need not wait for a sync.
        txn.set_durability(Durability::None).map_err(storage)?;
        txn.open_table(RECORDS).map_err(storage)?;
        txn.open_table(HOURLY).map_err(storage)?;
        txn.open_table(BUDGETS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let db = Arc::new(db);
        let (sender, receiver) = mpsc::channel();
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("updraft-usage".into())
            .spawn(move || write_loop(&writer_db, &receiver))
            .map_err(storage)?;
        Ok(UsageStore {
            db,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Queues a record for the writer; returns at once.
    pub fn push(&self, record: UsageRecord) {
        if let Ok(sender) = self.sender.lock()
            && let Some(sender) = sender.as_ref()
        {
            let _ = sender.send(Msg::Record(Box::new(record)));
        }
    }

    /// Waits until every record pushed so far is on disk.
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

    /// Aggregates of `tenant` for the hours starting in `from_ms..to_ms`:
    /// `(hour start, function, sums)` in hour order.
    pub fn hourly(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<(u64, String, Aggregate)>, MeteringError> {
        let txn = self.db.begin_read().map_err(storage)?;
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
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(RECORDS).map_err(storage)?;
        for entry in table
            .range((tenant, from_ms, "")..(tenant, to_ms, ""))
            .map_err(storage)?
        {
            let (_, value) = entry.map_err(storage)?;
            each(serde_json::from_slice(value.value()).map_err(storage)?);
        }
        Ok(())
    }

    pub fn budgets(&self) -> Result<Vec<(String, Budget)>, MeteringError> {
        let txn = self.db.begin_read().map_err(storage)?;
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
        let txn = self.db.begin_write().map_err(storage)?;
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

fn write_loop(db: &Database, receiver: &mpsc::Receiver<Msg>) {
    while let Ok(first) = receiver.recv() {
        let mut records = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Record(record) => records.push(record),
                Msg::Flush(done) => flushes.push(done),
            }
            next = if records.len() < BATCH_MAX {
                receiver.try_recv().ok()
            } else {
                None
            };
        }
        if !records.is_empty()
            && let Err(e) = write_batch(db, &records)
        {
            tracing::error!("{} usage records could not be written: {e}", records.len());
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

fn write_batch(db: &Database, records: &[Box<UsageRecord>]) -> Result<(), MeteringError> {
    let mut sums: HashMap<(&str, u64, &str), Aggregate> = HashMap::new();
    for r in records {
        sums.entry((
            r.tenant.as_str(),
            r.start_ms - r.start_ms % HOUR_MS,
            r.function.as_str(),
        ))
        .or_default()
        .add(r);
    }
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut table = txn.open_table(RECORDS).map_err(storage)?;
        for r in records {
            let json = serde_json::to_vec(r).map_err(storage)?;
            table
                .insert(
                    (r.tenant.as_str(), r.start_ms, r.invocation_id.as_str()),
                    json.as_slice(),
                )
                .map_err(storage)?;
        }
        let mut hourly = txn.open_table(HOURLY).map_err(storage)?;
        for (key, add) in sums {
            let mut total: Aggregate = match hourly.get(key).map_err(storage)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(storage)?,
                None => Aggregate::default(),
            };
            total.merge(&add);
            let json = serde_json::to_vec(&total).map_err(storage)?;
            hourly.insert(key, json.as_slice()).map_err(storage)?;
        }
    }
    txn.commit().map_err(storage)
}
