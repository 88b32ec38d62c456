//! Metering: what every invocation used, durable ([`store`]), priced
//! ([`prices`]), summed into usage reports and monthly bills, and held to
//! each tenant's budget.
//!
//! The scheduler hands over one [`UsageRecord`] per finished invocation and
//! asks [`Metering::check`] before starting one; nothing here knows about
//! Wasm or HTTP.
//!
//! In cluster mode ([`Metering::open_replica`]) a record is not stored
//! where it is made: it waits in an outbox for the scheduler to publish to
//! the cluster's usage stream, and every node's store (and budget count)
//! takes the records as it reads them back from that stream
//! ([`Metering::ingest`]), so each node sums every node's usage once.

mod codec;
pub mod prices;
pub mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use chrono::{Datelike, TimeZone, Utc};
use serde::Serialize;
pub use updraft_core::usage::billed_ms;
use updraft_core::{SharedClock, UsageRecord, system_clock};

pub use prices::{Bill, BillLine, Estimate, Load, PriceSheet, estimate};
pub use store::{Aggregate, Budget, HOUR_MS, UsageStore};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeteringError {
    /// 402: the tenant's budget for this month is spent.
    #[error(
        "the monthly budget of tenant {tenant:?} ({budget}) is spent ({spent} so far this month): \
         raise it with `updraft budget set`, or wait for next month"
    )]
    BudgetExceeded {
        tenant: String,
        budget: String,
        spent: String,
    },
    #[error("{0}")]
    Invalid(String),
    /// The usage log or its database failed: the detail is in the source.
    #[error("usage storage failed")]
    Storage(#[from] updraft_core::Failure),
}

impl updraft_core::Classify for MeteringError {
    fn kind(&self) -> updraft_core::ErrorKind {
        match self {
            MeteringError::BudgetExceeded { .. } => updraft_core::ErrorKind::BudgetSpent,
            MeteringError::Invalid(_) => updraft_core::ErrorKind::Invalid,
            MeteringError::Storage(_) => updraft_core::ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            MeteringError::BudgetExceeded { .. } => "budget_exceeded",
            MeteringError::Invalid(_) => "bad_request",
            MeteringError::Storage(_) => "storage",
        }
    }
}

/// An amount in cents as people read it: `$12.05`.
pub fn usd(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// `[start, end)` of the calendar month (UTC) `YYYY-MM`, in epoch ms.
pub fn month_range(month: &str) -> Result<(u64, u64), MeteringError> {
    let bad = || MeteringError::Invalid(format!("invalid month {month:?}: write it as YYYY-MM"));
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let start = Utc
        .with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .ok_or_else(bad)?;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let end = Utc
        .with_ymd_and_hms(ny, nm, 1, 0, 0, 0)
        .single()
        .ok_or_else(bad)?;
    let ms = |t: chrono::DateTime<Utc>| u64::try_from(t.timestamp_millis()).map_err(|_| bad());
    Ok((ms(start)?, ms(end)?))
}

/// `YYYY-MM` of an epoch-ms instant.
pub fn month_of(ms: u64) -> String {
    let t = Utc
        .timestamp_millis_opt(ms as i64)
        .single()
        .unwrap_or_default();
    format!("{:04}-{:02}", t.year(), t.month())
}

/// How long raw usage records are kept by default: long enough to
/// recompute last month's bill until the end of this one.
pub const RECORDS_RETENTION_DEFAULT: Duration = Duration::from_secs(62 * 86_400);

/// A budget crossing, reported once per tenant, kind and month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetEvent {
    pub kind: BudgetKind,
    pub tenant: String,
    /// The function whose usage crossed it.
    pub function: String,
    pub month: String,
    pub budget_cents: u64,
    pub spent_cents: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetKind {
    /// 80% of the budget is spent.
    Warning,
    /// All of it: new invocations are refused.
    Exceeded,
}

impl BudgetKind {
    /// `warning` or `exceeded`, as event types and ids spell it.
    pub fn name(self) -> &'static str {
        match self {
            BudgetKind::Warning => "warning",
            BudgetKind::Exceeded => "exceeded",
        }
    }
}

struct BudgetState {
    budget: Budget,
    month: String,
    sums: Aggregate,
    warned: bool,
    exceeded: bool,
}

/// A tenant's budget and how much of it is spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BudgetStatus {
    pub tenant: String,
    pub month: String,
    pub budget_cents: Option<u64>,
    pub spent_cents: u64,
    pub warned: bool,
    pub exceeded: bool,
}

/// Usage of one tenant, grouped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    /// The function, or the hour (RFC 3339) when grouped by hour.
    pub key: String,
    pub sums: Aggregate,
    pub cost_cents: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Function,
    Hour,
}

/// Everything metering keeps: the durable records, the price sheet and the
/// budgets being watched.
pub struct Metering {
    store: UsageStore,
    /// Where "now" comes from: which month a budget counts, which hour's
    /// log segment a record is written to.
    clock: SharedClock,
    prices: PriceSheet,
    budgets: RwLock<HashMap<String, BudgetState>>,
    /// Whether any tenant has a budget: without one, the hot path takes no
    /// lock (two cores contending on one lock line cost more than the check).
    any_budget: AtomicBool,
    /// A replica's records made here and not yet published (`None`: not a
    /// replica).
    outbox: Option<Mutex<Vec<UsageRecord>>>,
    /// A replica's last stream sequence handed to the store.
    ingested: AtomicU64,
}

/// Records as one batch of the usage log's frames (what the cluster's usage
/// stream carries).
pub fn encode_batch(records: &[UsageRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 96);
    for record in records {
        codec::encode(record, &mut out);
    }
    out
}

/// The records of a batch; frames that do not decode are skipped.
pub fn decode_batch(bytes: &[u8]) -> Vec<UsageRecord> {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some((record, len)) = codec::decode(&bytes[at..]) {
        at += len;
        records.extend(record);
    }
    records
}

impl Metering {
    pub fn open(data_dir: &Path, prices: PriceSheet) -> Result<Metering, MeteringError> {
        Self::open_with(data_dir, prices, RECORDS_RETENTION_DEFAULT, system_clock())
    }

    /// Keeps raw records for `retention` (their sums forever), reading the
    /// date from `clock`.
    pub fn open_with(
        data_dir: &Path,
        prices: PriceSheet,
        retention: Duration,
        clock: SharedClock,
    ) -> Result<Metering, MeteringError> {
        Self::open_as(data_dir, prices, retention, clock, false)
    }

    /// A replica of the cluster's usage (see the module docs): budgets come
    /// through [`Metering::apply_budget`], records through
    /// [`Metering::ingest`].
    pub fn open_replica(
        data_dir: &Path,
        prices: PriceSheet,
        retention: Duration,
        clock: SharedClock,
    ) -> Result<Metering, MeteringError> {
        Self::open_as(data_dir, prices, retention, clock, true)
    }

    fn open_as(
        data_dir: &Path,
        prices: PriceSheet,
        retention: Duration,
        clock: SharedClock,
        replica: bool,
    ) -> Result<Metering, MeteringError> {
        prices.validate()?;
        let store = match replica {
            true => UsageStore::open_replica(data_dir, retention, clock.clone())?,
            false => UsageStore::open(data_dir, retention, clock.clone())?,
        };
        let metering = Metering {
            ingested: AtomicU64::new(store.ingested_at_open()),
            store,
            clock,
            prices,
            budgets: RwLock::new(HashMap::new()),
            any_budget: AtomicBool::new(false),
            outbox: replica.then(|| Mutex::new(Vec::new())),
        };
        if !replica {
            for (tenant, budget) in metering.store.budgets()? {
                metering.watch(&tenant, Some(budget))?;
            }
        }
        Ok(metering)
    }

    /// Whether this is a replica of the cluster's usage.
    pub fn is_replica(&self) -> bool {
        self.outbox.is_some()
    }

    /// A replica's records made since the last call, to publish.
    pub fn take_outbox(&self) -> Vec<UsageRecord> {
        match &self.outbox {
            Some(outbox) => std::mem::take(&mut *outbox.lock().unwrap_or_else(|e| e.into_inner())),
            None => Vec::new(),
        }
    }

    /// A replica takes records read from the cluster's stream, up to
    /// stream sequence `sequence`: stored, and with `count` (records this
    /// node did not make, which [`Metering::record`] counted) counted
    /// against budgets. Returns the budget crossings they caused.
    pub fn ingest(
        &self,
        records: Vec<UsageRecord>,
        sequence: u64,
        count: bool,
    ) -> Vec<BudgetEvent> {
        let mut events = Vec::new();
        if count && self.any_budget.load(Ordering::Relaxed) {
            for record in &records {
                events.extend(self.count(record));
            }
        }
        self.store.push_ingested(records, sequence);
        self.ingested.store(sequence, Ordering::Release);
        events
    }

    /// The last stream sequence a replica has taken.
    pub fn ingested(&self) -> u64 {
        self.ingested.load(Ordering::Acquire)
    }

    /// A replica applies a budget set (or removed) on any node.
    pub fn apply_budget(&self, tenant: &str, cents: Option<u64>) -> Result<(), MeteringError> {
        self.watch(tenant, cents.map(|monthly_cents| Budget { monthly_cents }))
    }

    pub fn prices(&self) -> &PriceSheet {
        &self.prices
    }

    /// Now, by the clock metering reads: what "this month" means.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Refuses a new invocation of a tenant whose budget is spent.
    pub fn check(&self, tenant: &str) -> Result<(), MeteringError> {
        if !self.any_budget.load(Ordering::Relaxed) {
            return Ok(());
        }
        let budgets = self.budgets.read().unwrap_or_else(|e| e.into_inner());
        match budgets.get(tenant) {
            Some(state) if state.exceeded && state.month == month_of(self.now_ms()) => {
                Err(MeteringError::BudgetExceeded {
                    tenant: tenant.to_string(),
                    budget: usd(state.budget.monthly_cents),
                    spent: usd(prices::pico_to_cents(prices::cost_pico(
                        &self.prices,
                        &state.sums,
                    ))),
                })
            }
            _ => Ok(()),
        }
    }

    /// Takes one finished invocation: stored durably (in the background),
    /// and counted against its tenant's budget at once. Returns the budget
    /// crossings it caused (each happens once per tenant and month).
    pub fn record(&self, record: UsageRecord) -> Vec<BudgetEvent> {
        let watched = self.any_budget.load(Ordering::Relaxed)
            && self
                .budgets
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&*record.tenant);
        let events = if watched {
            self.count(&record)
        } else {
            Vec::new()
        };
        match &self.outbox {
            // Counted here at once, so this node stops a spent tenant
            // without waiting for the stream; stored when it comes back.
            Some(outbox) => outbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(record),
            None => self.store.push(record),
        }
        events
    }

    fn count(&self, record: &UsageRecord) -> Vec<BudgetEvent> {
        let mut budgets = self.budgets.write().unwrap_or_else(|e| e.into_inner());
        let Some(state) = budgets.get_mut(&*record.tenant) else {
            return Vec::new();
        };
        let month = month_of(record.start_ms);
        // A record of a month already over (a long attempt that finished
        // after midnight) is billed to its month, and that month's budget
        // no longer gates anything: it must not reset this month's count.
        // ("YYYY-MM" strings order as the months do.)
        if month < state.month {
            return Vec::new();
        }
        if month > state.month {
            state.month = month;
            state.sums = Aggregate::default();
            state.warned = false;
            state.exceeded = false;
        }
        state.sums.add(record);
        let spent = prices::cost_pico(&self.prices, &state.sums);
        let budget = prices::cents_to_pico(state.budget.monthly_cents);
        let event = |kind: BudgetKind| BudgetEvent {
            kind,
            tenant: record.tenant.to_string(),
            function: record.function.to_string(),
            month: state.month.clone(),
            budget_cents: state.budget.monthly_cents,
            spent_cents: prices::pico_to_cents(spent),
        };
        let mut new = Vec::new();
        if !state.warned && spent * 5 >= budget * 4 {
            state.warned = true;
            new.push(event(BudgetKind::Warning));
        }
        if !state.exceeded && spent >= budget {
            state.exceeded = true;
            new.push(event(BudgetKind::Exceeded));
        }
        for e in &new {
            tracing::info!("budget: {e:?}");
        }
        new
    }

    /// Sets or removes a tenant's monthly budget; what this month has
    /// already used counts against it at once.
    pub fn set_budget(&self, tenant: &str, cents: Option<u64>) -> Result<(), MeteringError> {
        let budget = cents.map(|monthly_cents| Budget { monthly_cents });
        self.store.set_budget(tenant, budget)?;
        self.watch(tenant, budget)
    }

    fn watch(&self, tenant: &str, budget: Option<Budget>) -> Result<(), MeteringError> {
        let Some(budget) = budget else {
            let mut budgets = self.budgets.write().unwrap_or_else(|e| e.into_inner());
            budgets.remove(tenant);
            self.any_budget
                .store(!budgets.is_empty(), Ordering::Relaxed);
            return Ok(());
        };
        self.store.flush();
        let month = month_of(self.now_ms());
        let (from, to) = month_range(&month)?;
        let mut sums = Aggregate::default();
        for (_, _, hour) in self.store.hourly(tenant, from, to)? {
            sums.merge(&hour);
        }
        let spent = prices::cost_pico(&self.prices, &sums);
        let limit = prices::cents_to_pico(budget.monthly_cents);
        let mut budgets = self.budgets.write().unwrap_or_else(|e| e.into_inner());
        budgets.insert(
            tenant.to_string(),
            BudgetState {
                budget,
                month,
                sums,
                warned: spent * 5 >= limit * 4,
                exceeded: spent >= limit,
            },
        );
        self.any_budget.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The status of every tenant with a budget (the metrics' gauges).
    pub fn budget_statuses(&self) -> Vec<BudgetStatus> {
        let tenants: Vec<String> = self
            .budgets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        tenants.iter().map(|t| self.budget_status(t)).collect()
    }

    /// Usage records made and not yet in the usage log: a replica's not
    /// yet published, and those waiting for the writer (or the disk).
    pub fn pending_records(&self) -> u64 {
        let outbox = self.outbox.as_ref().map_or(0, |outbox| {
            outbox.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
        });
        outbox + self.store.pending()
    }

    pub fn budget_status(&self, tenant: &str) -> BudgetStatus {
        let budgets = self.budgets.read().unwrap_or_else(|e| e.into_inner());
        let month = month_of(self.now_ms());
        match budgets.get(tenant).filter(|s| s.month == month) {
            Some(state) => BudgetStatus {
                tenant: tenant.to_string(),
                month,
                budget_cents: Some(state.budget.monthly_cents),
                spent_cents: prices::pico_to_cents(prices::cost_pico(&self.prices, &state.sums)),
                warned: state.warned,
                exceeded: state.exceeded,
            },
            None => BudgetStatus {
                tenant: tenant.to_string(),
                month,
                budget_cents: budgets.get(tenant).map(|s| s.budget.monthly_cents),
                spent_cents: 0,
                warned: false,
                exceeded: false,
            },
        }
    }

    /// Waits until every record handed over so far is on disk.
    pub fn flush(&self) {
        self.store.flush();
    }

    /// Usage of `tenant` in `from_ms..to_ms` (whole hours), grouped.
    pub fn usage(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        group_by: GroupBy,
    ) -> Result<(Vec<UsageRow>, Aggregate), MeteringError> {
        self.store.flush();
        let mut groups: std::collections::BTreeMap<String, Aggregate> = Default::default();
        let mut total = Aggregate::default();
        for (hour, function, sums) in self.store.hourly(tenant, from_ms, to_ms)? {
            let key = match group_by {
                GroupBy::Function => function,
                GroupBy::Hour => {
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(hour))
                        .to_string()
                }
            };
            groups.entry(key).or_default().merge(&sums);
            total.merge(&sums);
        }
        let rows = groups
            .into_iter()
            .map(|(key, sums)| UsageRow {
                key,
                cost_cents: prices::bill(&self.prices, &sums).total_cents,
                sums,
            })
            .collect();
        Ok((rows, total))
    }

    /// All the usage of one function, ever.
    pub fn function_usage(&self, tenant: &str, function: &str) -> Result<Aggregate, MeteringError> {
        self.store.flush();
        let mut sums = Aggregate::default();
        for (_, f, hour) in self.store.hourly(tenant, 0, u64::MAX)? {
            if f == function {
                sums.merge(&hour);
            }
        }
        Ok(sums)
    }

    /// The bill of `tenant` for `month` (`YYYY-MM`), from the hourly sums.
    pub fn bill(&self, tenant: &str, month: &str) -> Result<(Bill, Aggregate), MeteringError> {
        let (from, to) = month_range(month)?;
        let (_, total) = self.usage(tenant, from, to, GroupBy::Function)?;
        Ok((prices::bill(&self.prices, &total), total))
    }

    /// The same bill recomputed from every raw record of the month.
    pub fn bill_from_records(
        &self,
        tenant: &str,
        month: &str,
    ) -> Result<(Bill, Aggregate), MeteringError> {
        let (from, to) = month_range(month)?;
        self.store.flush();
        let mut total = Aggregate::default();
        self.store
            .records(tenant, from, to, |record| total.add(&record))?;
        Ok((prices::bill(&self.prices, &total), total))
    }

    /// Every record of `tenant` in `from_ms..to_ms`.
    pub fn records(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        each: impl FnMut(UsageRecord),
    ) -> Result<(), MeteringError> {
        self.store.flush();
        self.store.records(tenant, from_ms, to_ms, each)
    }

    /// At most `limit` records of `tenant` in `from_ms..to_ms`, in start
    /// order, after `cursor` (from the previous page). The cursor of the
    /// next page is `None` on the last one.
    pub fn records_page(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<UsageRecord>, Option<String>), MeteringError> {
        let after = cursor.map(parse_cursor).transpose()?;
        // Records start in order: nothing before the cursor's start is read.
        let from_ms = after.as_ref().map_or(from_ms, |(ms, _)| from_ms.max(*ms));
        let mut page = Vec::new();
        let mut more = false;
        self.records(tenant, from_ms, to_ms, |record| {
            let past = after.as_ref().is_none_or(|(ms, id)| {
                (record.start_ms, record.invocation_id.as_str()) > (*ms, id.as_str())
            });
            if !past {
                return;
            }
            if page.len() < limit {
                page.push(record);
            } else {
                more = true;
            }
        })?;
        let next = page
            .last()
            .filter(|_| more)
            .map(|r| format!("{}.{}", r.start_ms, r.invocation_id));
        Ok((page, next))
    }
}

/// A records cursor: `START_MS.INVOCATION_ID` of the last record seen.
fn parse_cursor(cursor: &str) -> Result<(u64, String), MeteringError> {
    cursor
        .split_once('.')
        .and_then(|(ms, id)| Some((ms.parse().ok()?, id.to_string())))
        .filter(|(_, id)| !id.is_empty())
        .ok_or_else(|| {
            MeteringError::Invalid(format!(
                "cursor={cursor:?} is not a records cursor: pass back the Updraft-Next-Cursor \
                 header of the previous page unchanged"
            ))
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::sync::Arc;
    use updraft_core::{Clock, ManualClock, Trigger};

    /// 2026-11-15T12:00:00Z: tests take their dates from a manual clock,
    /// never from the day they run.
    const MID_NOVEMBER: u64 = 1_794_744_000_000;

    fn open_at(dir: &Path, prices: PriceSheet, clock: &Arc<ManualClock>) -> Metering {
        Metering::open_with(dir, prices, RECORDS_RETENTION_DEFAULT, clock.clone()).unwrap()
    }

    fn record(tenant: &str, function: &str, start_ms: u64, wall_us: u64) -> UsageRecord {
        UsageRecord {
            tenant: tenant.into(),
            function: function.into(),
            version: 1,
            invocation_id: format!("{function}-{start_ms}-{wall_us}"),
            trigger: Trigger::Http,
            start_ms,
            wall_us,
            billed_ms: billed_ms(wall_us),
            memory_mb: 128,
            memory_peak_bytes: 1 << 20,
            cpu_us: wall_us / 2,
            bytes_in: 10,
            bytes_out: 1000,
            kv_ops: 2,
            kv_bytes: 16,
            blob_ops: 0,
            blob_bytes: 0,
            outbound_requests: 0,
            outbound_bytes: 0,
            error: None,
            kv_stored_bytes: 0,
            blob_stored_bytes: 0,
            stored_secs: 0,
        }
    }

    /// A replica keeps its own records in the outbox and sums what it
    /// reads back from the stream once, across restarts: it reads on from
    /// the sequence committed with its sums, and what it wrote past that
    /// commit (a crash) is cut off, not summed twice.
    #[test]
    fn a_replica_sums_each_ingested_batch_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(MID_NOVEMBER);
        let open = || {
            Metering::open_replica(
                dir.path(),
                PriceSheet::default(),
                RECORDS_RETENTION_DEFAULT,
                clock.clone(),
            )
            .unwrap()
        };
        let invocations = |m: &Metering| m.function_usage("a", "f").unwrap().invocations;
        {
            let metering = open();
            assert!(metering.is_replica());
            assert_eq!(metering.ingested(), 0);
            metering.record(record("a", "f", MID_NOVEMBER, 1));
            assert_eq!(invocations(&metering), 0, "not stored until read back");
            let own = decode_batch(&encode_batch(&metering.take_outbox()));
            assert_eq!(own.len(), 1);
            assert!(metering.take_outbox().is_empty());
            metering.ingest(own, 1, false);
            let theirs = vec![
                record("a", "f", MID_NOVEMBER, 2),
                record("a", "g", MID_NOVEMBER, 3),
            ];
            metering.ingest(theirs, 2, true);
            assert_eq!(invocations(&metering), 2);
        }
        // A crash after a write and before its commit: a frame past the
        // committed end of the log.
        let segment = std::fs::read_dir(dir.path().join("usage"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let committed = std::fs::metadata(&segment).unwrap().len();
        let mut torn = Vec::new();
        codec::encode(&record("a", "f", MID_NOVEMBER, 9), &mut torn);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap();
        std::io::Write::write_all(&mut file, &torn).unwrap();
        drop(file);

        let metering = open();
        assert_eq!(metering.ingested(), 2);
        assert_eq!(
            invocations(&metering),
            2,
            "the uncommitted frame is cut off"
        );
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), committed);
        metering.ingest(vec![record("a", "f", MID_NOVEMBER, 4)], 3, true);
        assert_eq!(invocations(&metering), 3);
        let (bill, sums) = metering.bill("a", "2026-11").unwrap();
        assert_eq!(
            metering.bill_from_records("a", "2026-11").unwrap(),
            (bill, sums)
        );
        assert_eq!(sums.invocations, 4);
    }

    #[test]
    fn months_and_billed_time() {
        assert_eq!(
            month_range("2026-12").unwrap(),
            (1_796_083_200_000, 1_798_761_600_000)
        );
        assert_eq!(month_of(1_796_083_200_000), "2026-12");
        assert!(month_range("2026-13").is_err());
        assert!(month_range("december").is_err());
        assert_eq!(billed_ms(1), 1);
        assert_eq!(billed_ms(1000), 1);
        assert_eq!(billed_ms(1001), 2);
    }

    #[test]
    fn records_are_durable_and_bills_match_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let month = "2026-11";
        let (start, _) = month_range(month).unwrap();
        // Written on the third of the month, after every record started.
        let clock = ManualClock::new(start + 50 * HOUR_MS);
        {
            let metering = open_at(dir.path(), PriceSheet::default(), &clock);
            for i in 0..5000u64 {
                let function = ["f", "g"][(i % 2) as usize];
                let mut r = record("a", function, start + i * 1000, 1000 + i * 997);
                r.memory_mb = 4096;
                metering.record(r);
            }
            metering.record(record("b", "f", start, 5));
            // Hourly storage samples: 3 GiB of key-value data, 700 GiB of
            // blobs growing by 1 GiB an hour, for the first 48 hours.
            for hour in 1..=48u64 {
                metering.record(UsageRecord::storage(
                    "a".into(),
                    start + hour * HOUR_MS,
                    3600,
                    3 << 30,
                    (699 + hour) << 30,
                ));
            }
        }
        let metering = open_at(dir.path(), PriceSheet::default(), &clock);
        let (bill, sums) = metering.bill("a", month).unwrap();
        let (again, raw) = metering.bill_from_records("a", month).unwrap();
        assert_eq!(sums.invocations, 5000);
        assert_eq!(
            (sums.kv_byte_hours, sums.blob_byte_hours),
            (48 * (3 << 30), (48 * 699 + 48 * 49 / 2) << 30)
        );
        assert_eq!((bill.clone(), sums), (again, raw));
        let line = |item: &str| {
            bill.lines
                .iter()
                .find(|l| l.item == item)
                .unwrap()
                .amount_cents
        };
        // 144 GiB-hours at $0.25 per 730; 34,728 GiB-hours at $0.023 per 730.
        assert_eq!(line("key-value storage"), 5);
        assert_eq!(line("blob storage"), 109);
        let (rows, _) = metering
            .usage("a", start, start + 10 * HOUR_MS, GroupBy::Function)
            .unwrap();
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["(storage)", "f", "g"]);
        assert_eq!(rows[0].sums.invocations, 0, "a sample is not an invocation");
        let (hours, _) = metering
            .usage("a", start, start + 2 * HOUR_MS, GroupBy::Hour)
            .unwrap();
        assert_eq!(hours.len(), 2, "5000 s span two hours");
        assert_eq!(metering.bill("b", month).unwrap().1.invocations, 1);
    }

    #[test]
    fn records_written_but_not_summed_before_a_crash_are_summed_once() {
        let dir = tempfile::tempdir().unwrap();
        let now = MID_NOVEMBER;
        let clock = ManualClock::new(now);
        {
            let metering = open_at(dir.path(), PriceSheet::default(), &clock);
            metering.record(record("a", "f", now, 1000));
            metering.flush();
        }
        // As a crash leaves it: two records written after the last commit
        // of the sums, and a third cut in the middle.
        let segment = std::fs::read_dir(dir.path().join("usage"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut text = Vec::new();
        for wall_us in [2000, 3000] {
            codec::encode(&record("a", "f", now, wall_us), &mut text);
        }
        let mut torn = Vec::new();
        codec::encode(&record("a", "f", now, 4000), &mut torn);
        text.extend_from_slice(&torn[..torn.len() / 2]);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap();
        std::io::Write::write_all(&mut file, &text).unwrap();
        drop(file);
        for reopened in 0..2 {
            let metering = open_at(dir.path(), PriceSheet::default(), &clock);
            let sums = metering.function_usage("a", "f").unwrap();
            assert_eq!((sums.invocations, sums.billed_ms), (3, 6));
            let mut n = 0;
            metering.records("a", 0, u64::MAX / 2, |_| n += 1).unwrap();
            assert_eq!(n, 3 + reopened, "the torn line is gone");
            // New records append cleanly after the cut.
            metering.record(record("a", "g", now, 1000));
        }
        let metering = open_at(dir.path(), PriceSheet::default(), &clock);
        assert_eq!(metering.function_usage("a", "g").unwrap().invocations, 2);
    }

    #[test]
    fn records_page_in_start_order_without_gaps_or_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let now = MID_NOVEMBER;
        let metering = open_at(dir.path(), PriceSheet::default(), &ManualClock::new(now));
        // Records sharing a start millisecond must still page apart.
        for i in 0..25u64 {
            metering.record(record("a", "f", now + i / 3, 1000 + i));
        }
        metering.record(record("b", "f", now, 1));
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let (page, next) = metering
                .records_page("a", 0, u64::MAX / 2, cursor.as_deref(), 4)
                .unwrap();
            assert!(page.len() <= 4);
            seen.extend(page.into_iter().map(|r| r.wall_us));
            pages += 1;
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(pages, 7);
        let mut all: Vec<u64> = (1000..1025).collect();
        seen.sort_unstable();
        all.sort_unstable();
        assert_eq!(seen, all);
        for bad in ["", "12", "x.y", "12."] {
            let err = metering.records_page("a", 0, 1, Some(bad), 4).unwrap_err();
            assert!(
                err.to_string().contains("Updraft-Next-Cursor"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn budgets_warn_at_80_percent_and_stop_at_100() {
        let dir = tempfile::tempdir().unwrap();
        let prices = cent_per_invocation();
        let now = MID_NOVEMBER;
        let clock = ManualClock::new(now);
        let metering = open_at(dir.path(), prices, &clock);
        metering.set_budget("a", Some(10)).unwrap();
        for i in 0..7 {
            assert!(metering.record(record("a", "f", now, i + 1)).is_empty());
        }
        assert!(matches!(
            metering.record(record("a", "f", now, 100)).as_slice(),
            [BudgetEvent {
                kind: BudgetKind::Warning,
                spent_cents: 8,
                ..
            }]
        ));
        metering.check("a").unwrap();
        assert!(metering.record(record("a", "f", now, 101)).is_empty());
        assert!(matches!(
            metering.record(record("a", "f", now, 102)).as_slice(),
            [BudgetEvent {
                kind: BudgetKind::Exceeded,
                spent_cents: 10,
                ..
            }]
        ));
        let err = metering.check("a").unwrap_err().to_string();
        assert!(err.contains("$0.10") && err.contains("budget"), "{err}");
        metering.check("b").unwrap();
        // Survives a restart; raising the budget lets invocations through.
        drop(metering);
        let metering = open_at(dir.path(), prices, &clock);
        assert!(metering.check("a").is_err());
        metering.set_budget("a", Some(1000)).unwrap();
        metering.check("a").unwrap();
        assert_eq!(metering.budget_status("a").spent_cents, 10);
    }

    /// One cent per invocation, nothing else: bills count invocations.
    fn cent_per_invocation() -> PriceSheet {
        PriceSheet {
            requests_per_million: 10_000.0,
            gb_second: 0.0,
            kv_ops_per_million: 0.0,
            blob_ops_per_million: 0.0,
            gb_out: 0.0,
            outbound_requests_per_million: 0.0,
            kv_gb_month: 0.0,
            blob_gb_month: 0.0,
        }
    }

    #[test]
    fn a_record_written_after_its_month_ended_is_in_that_months_bill() {
        let dir = tempfile::tempdir().unwrap();
        let (december, _) = month_range("2026-12").unwrap();
        let clock = ManualClock::new(december - 30 * 60_000);
        let metering = open_at(dir.path(), cent_per_invocation(), &clock);
        metering.set_budget("a", Some(1000)).unwrap();
        metering.record(record("a", "f", clock.now_ms(), 1));
        metering.flush();
        // Midnight passes while an attempt that started in November runs;
        // its record is written in December, after December's first.
        clock.set(december + 30 * 60_000);
        metering.record(record("a", "f", december + 60_000, 2));
        metering.record(record("a", "f", december - 15 * 60_000, 3));
        metering.flush();
        // And one far later still: the writer was stuck for three weeks.
        clock.set(december + 21 * 24 * HOUR_MS);
        metering.record(record("a", "f", december - 10 * 60_000, 4));
        metering.record(record("a", "f", clock.now_ms(), 5));
        metering.flush();
        let segments = std::fs::read_dir(dir.path().join("usage")).unwrap().count();
        assert_eq!(segments, 3, "written in three different hours");
        let bills_hold = |metering: &Metering, when: &str| {
            for (month, n) in [("2026-11", 3), ("2026-12", 2)] {
                let (bill, sums) = metering.bill("a", month).unwrap();
                let (again, raw) = metering.bill_from_records("a", month).unwrap();
                assert_eq!(sums.invocations, n, "{month}, {when}");
                assert_eq!((bill, sums), (again, raw), "{month}, {when}");
            }
        };
        bills_hold(&metering, "running");
        // The late November record did not reset December's budget count.
        assert_eq!(metering.budget_status("a").month, "2026-12");
        assert_eq!(metering.budget_status("a").spent_cents, 2);
        drop(metering);
        bills_hold(
            &open_at(dir.path(), cent_per_invocation(), &clock),
            "reopened",
        );
    }

    #[test]
    fn a_late_record_of_last_month_does_not_lift_this_months_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (december, _) = month_range("2026-12").unwrap();
        let clock = ManualClock::new(december + HOUR_MS);
        let metering = open_at(dir.path(), cent_per_invocation(), &clock);
        metering.set_budget("a", Some(2)).unwrap();
        metering.record(record("a", "f", december + 1, 1));
        let events = metering.record(record("a", "f", december + 2, 2));
        assert!(matches!(
            events.last(),
            Some(BudgetEvent {
                kind: BudgetKind::Exceeded,
                ..
            })
        ));
        assert!(metering.check("a").is_err());
        assert!(
            metering
                .record(record("a", "f", december - 1, 3))
                .is_empty()
        );
        assert!(metering.check("a").is_err(), "December is still spent");
        assert_eq!(metering.budget_status("a").spent_cents, 2);
    }
}
