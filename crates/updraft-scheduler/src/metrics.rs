//! The platform's metrics, for `GET /metrics` and the console.
//!
//! What each function version did (invocations, errors by code, how long
//! its runs took, cold and warm starts, its key-value and blob operations)
//! is counted on the invocation path with atomics only: each version's
//! counters are found once, when it is first invoked, and kept with it.
//! What is a level rather than a count (instances, pool slots, queue
//! depths and ages, dead letters, budgets, the usage records not yet
//! written, the process) is read when the metrics are scraped
//! ([`Gauges`], gathered by the platform).
//!
//! Labels are bounded by what exists: tenant, function and version (and an
//! error's code, a queue's name), never a path, a key or an invocation.
//! `prometheus-client` writes the text, in the Prometheus format or in
//! OpenMetrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use updraft_sandbox::Report;

/// Upper bounds of the duration histogram's buckets, in seconds: from
/// 100 µs (a warm hello) to 30 s (the longest default timeout); longer runs
/// fall in `+Inf`.
pub const DURATION_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The text format a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`: what Prometheus reads by default.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics only when named.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Every function version's counters.
pub struct Metrics {
    /// Off only to measure what counting costs (`[telemetry] metrics`).
    enabled: bool,
    series: Mutex<BTreeMap<SeriesKey, Arc<FunctionStats>>>,
    /// When the process started (`process_start_time_seconds`).
    started: std::time::SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesKey {
    tenant: Arc<str>,
    function: Arc<str>,
    version: u64,
}

/// One function version's counters.
#[derive(Debug, Default)]
pub struct FunctionStats {
    invocations: AtomicU64,
    cold_starts: AtomicU64,
    warm_starts: AtomicU64,
    /// By error code: few codes, and errors are the rare path.
    errors: Mutex<BTreeMap<&'static str, u64>>,
    duration: Histogram,
    kv_operations: AtomicU64,
    kv_bytes: AtomicU64,
    blob_operations: AtomicU64,
    blob_bytes: AtomicU64,
}

/// A histogram of durations over [`DURATION_BUCKETS`], one atomic per
/// bucket (the last is `+Inf`).
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = DURATION_BUCKETS.partition_point(|&bound| bound < seconds);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn counts(&self) -> [u64; DURATION_BUCKETS.len() + 1] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }
}

impl FunctionStats {
    /// An invocation arrived while the function's code was in memory
    /// (`warm`), or when it had to be loaded first.
    fn arrived(&self, warm: bool) {
        let counter = if warm {
            &self.warm_starts
        } else {
            &self.cold_starts
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// An invocation failed, before its run or in it.
    pub(crate) fn failed(&self, code: &'static str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// A run ended: its time, its failure if it failed, its state use.
    pub(crate) fn finished(&self, report: &Report) {
        self.duration.observe(report.duration);
        if let Err(e) = &report.outcome {
            self.failed(updraft_core::Classify::code(e));
        }
        let state = &report.state;
        for (counter, n) in [
            (&self.kv_operations, state.kv_ops),
            (&self.kv_bytes, state.kv_bytes),
            (&self.blob_operations, state.blob_ops),
            (&self.blob_bytes, state.blob_bytes),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What one function did on this node since it started, over all its
/// versions (`GET /v1/functions/{name}/metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FunctionMetrics {
    pub function: String,
    pub requests: u64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub cold_starts: u64,
    pub warm_starts: u64,
    /// Run durations' percentiles, estimated from the histogram's buckets
    /// as Prometheus's `histogram_quantile` does; `null` before any run.
    pub duration_ms: Percentiles,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

impl Metrics {
    pub(crate) fn new(enabled: bool) -> Metrics {
        Metrics {
            enabled,
            series: Mutex::default(),
            started: std::time::SystemTime::now(),
        }
    }

    /// Whether invocations are counted.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The counters of a function version (made on its first invocation).
    pub(crate) fn stats(
        &self,
        tenant: &Arc<str>,
        function: &Arc<str>,
        version: u64,
    ) -> Arc<FunctionStats> {
        let key = SeriesKey {
            tenant: tenant.clone(),
            function: function.clone(),
            version,
        };
        self.lock().entry(key).or_default().clone()
    }

    /// Drops a deleted function's series: labels stay bounded by what exists.
    pub(crate) fn forget(&self, tenant: &str, function: &str) {
        self.lock()
            .retain(|key, _| !(&*key.tenant == tenant && &*key.function == function));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SeriesKey, Arc<FunctionStats>>> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One function's counters summed over its versions (zeros before its
    /// first invocation on this node).
    pub fn summary(&self, tenant: &str, function: &str) -> FunctionMetrics {
        let series = self.lock();
        let mine: Vec<&Arc<FunctionStats>> = series
            .iter()
            .filter(|(key, _)| &*key.tenant == tenant && &*key.function == function)
            .map(|(_, stats)| stats)
            .collect();
        let sum = |counter: fn(&FunctionStats) -> &AtomicU64| {
            mine.iter()
                .map(|s| counter(s).load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let mut errors_by_code = BTreeMap::new();
        let mut buckets = [0u64; DURATION_BUCKETS.len() + 1];
        for stats in &mine {
            for (code, n) in stats.errors() {
                *errors_by_code.entry(code.to_string()).or_default() += n;
            }
            for (total, n) in buckets.iter_mut().zip(stats.duration.counts()) {
                *total += n;
            }
        }
        let quantile = |q| quantile(q, &buckets).map(|s| s * 1000.0);
        FunctionMetrics {
            function: function.to_string(),
            requests: sum(|s| &s.invocations),
            errors: errors_by_code.values().sum(),
            errors_by_code,
            cold_starts: sum(|s| &s.cold_starts),
            warm_starts: sum(|s| &s.warm_starts),
            duration_ms: Percentiles {
                p50: quantile(0.5),
                p90: quantile(0.9),
                p99: quantile(0.99),
            },
        }
    }

    /// The metrics as text, with `gauges` read at this scrape.
    pub fn encode(&self, gauges: Gauges, format: Format) -> Result<String, std::fmt::Error> {
        let series: Vec<(SeriesKey, Arc<FunctionStats>)> = self
            .lock()
            .iter()
            .map(|(key, stats)| (key.clone(), stats.clone()))
            .collect();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition {
            series,
            gauges,
            process: Process::read(self.started),
        }));
        let mut text = String::new();
        match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry)?,
        }
        Ok(text)
    }
}

impl crate::invoker::Invoker {
    /// Counts an invocation of `loaded` and hands back its counters.
    pub(crate) fn count<'a>(&self, loaded: &'a crate::Loaded) -> Option<&'a Arc<FunctionStats>> {
        let metrics = self.metrics();
        if !metrics.enabled {
            return None;
        }
        let stats = loaded
            .stats
            .get_or_init(|| metrics.stats(&loaded.tenant, &loaded.name, loaded.version.version));
        stats.invocations.fetch_add(1, Ordering::Relaxed);
        stats.arrived(loaded.prepared().is_some());
        Some(stats)
    }

    /// The counters of `loaded` if it is counted (see [`Self::count`]).
    pub(crate) fn stats<'a>(&self, loaded: &'a crate::Loaded) -> Option<&'a Arc<FunctionStats>> {
        loaded.stats.get()
    }
}

/// The value below which a fraction `q` of the observations fall,
/// interpolated linearly inside its bucket (as `histogram_quantile`); in
/// the `+Inf` bucket, the last finite bound.
fn quantile(q: f64, buckets: &[u64; DURATION_BUCKETS.len() + 1]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = DURATION_BUCKETS.get(i) else {
                return DURATION_BUCKETS.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { DURATION_BUCKETS[i - 1] };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below += n;
    }
    DURATION_BUCKETS.last().copied()
}

/// The levels read at a scrape.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Instances running now on this node.
    pub in_flight: u64,
    /// Instance slots of the node (the pooling allocator's instances).
    pub slots: u64,
    /// Function versions with code in memory.
    pub loaded: u64,
    pub queues: Vec<QueueGauge>,
    pub async_queues: Vec<AsyncGauge>,
    pub budgets: Vec<updraft_metering::BudgetStatus>,
    /// Usage records not yet in the usage log (`None`: metering is off).
    pub usage_pending: Option<u64>,
    /// Tenants whose queues could not be read for this scrape: their queue
    /// gauges are missing, the rest is whole.
    pub queue_read_failures: u64,
    /// Spare instances made since start, and invocations that took one.
    pub spares_made: u64,
    pub spares_used: u64,
}

/// A named queue's levels.
#[derive(Debug)]
pub struct QueueGauge {
    pub tenant: String,
    pub queue: String,
    pub depth: u64,
    pub in_flight: u64,
    pub oldest_age_ms: Option<u64>,
}

/// A function's async queue and dead letters.
#[derive(Debug)]
pub struct AsyncGauge {
    pub tenant: String,
    pub function: String,
    pub depth: u64,
    pub oldest_age_ms: Option<u64>,
    pub dead_letters: u64,
}

/// This process's resources, from `/proc/self` (absent elsewhere).
#[derive(Debug)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    threads: u64,
    open_fds: u64,
    max_fds: Option<u64>,
    start_time_seconds: f64,
}

impl Process {
    fn read(started: std::time::SystemTime) -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which may itself hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as u64;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Some(Process {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks.max(1.0),
            threads: field(20)?,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
            open_fds,
            max_fds,
            start_time_seconds: started
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        })
    }
}

/// One scrape's data, written by `prometheus-client`.
#[derive(Debug)]
struct Exposition {
    series: Vec<(SeriesKey, Arc<FunctionStats>)>,
    gauges: Gauges,
    process: Option<Process>,
}

type Labels<'a> = Vec<(&'static str, std::borrow::Cow<'a, str>)>;

impl SeriesKey {
    fn labels(&self) -> Labels<'_> {
        vec![
            ("tenant", self.tenant.as_ref().into()),
            ("function", self.function.as_ref().into()),
            ("version", self.version.to_string().into()),
        ]
    }
}

impl Exposition {
    /// One counter of every function version.
    fn function_counter(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: fn(&FunctionStats) -> &AtomicU64,
    ) -> std::fmt::Result {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (key, stats) in &self.series {
            let v = ConstCounter::new(value(stats).load(Ordering::Relaxed));
            v.encode(metric.encode_family(&key.labels())?)?;
        }
        Ok(())
    }
}

/// A gauge with one series per label set.
fn gauge_family<'a, V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels<'a>, V)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        metric.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// A gauge without labels.
fn gauge<V: prometheus_client::encoding::EncodeGaugeValue + Copy + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> std::fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        self.function_counter(
            e,
            "updraft_function_invocations",
            "Invocations of a function version, by every trigger, counted when they arrive.",
            |s| &s.invocations,
        )?;
        {
            let mut metric = e.encode_descriptor(
                "updraft_function_errors",
                "Invocations that failed, by error code: refused before running (overloaded, budget_exceeded, ...) or failed in their run (trap, timeout, memory_limit, ...).",
                None,
                MetricType::Counter,
            )?;
            for (key, stats) in &self.series {
                for (code, n) in stats.errors() {
                    let mut labels = key.labels();
                    labels.push(("code", code.into()));
                    ConstCounter::new(n).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut metric = e.encode_descriptor(
                "updraft_function_starts",
                "Invocations by whether the function's compiled code was in memory when they arrived (warm) or had to be loaded first (cold: after a restart, an idle unload, or a deploy on another node).",
                None,
                MetricType::Counter,
            )?;
            for (key, stats) in &self.series {
                for (start, counter) in [("cold", &stats.cold_starts), ("warm", &stats.warm_starts)]
                {
                    let mut labels = key.labels();
                    labels.push(("start", start.into()));
                    ConstCounter::new(counter.load(Ordering::Relaxed))
                        .encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut metric = e.encode_descriptor(
                "updraft_function_duration_seconds",
                "How long a function's runs took, from admission to the guest's end.",
                None,
                MetricType::Histogram,
            )?;
            for (key, stats) in &self.series {
                let counts = stats.duration.counts();
                let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(counts)
                    .collect();
                let sum = stats.duration.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
                metric
                    .encode_family(&key.labels())?
                    .encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)?;
            }
        }
        self.function_counter(
            e,
            "updraft_function_kv_operations",
            "Key-value operations a function's runs made.",
            |s| &s.kv_operations,
        )?;
        self.function_counter(
            e,
            "updraft_function_kv_bytes",
            "Key-value bytes a function's runs read and wrote.",
            |s| &s.kv_bytes,
        )?;
        self.function_counter(
            e,
            "updraft_function_blob_operations",
            "Blob operations a function's runs made.",
            |s| &s.blob_operations,
        )?;
        self.function_counter(
            e,
            "updraft_function_blob_bytes",
            "Blob bytes a function's runs read and wrote.",
            |s| &s.blob_bytes,
        )?;
        let g = &self.gauges;
        gauge(
            e,
            "updraft_instances_in_flight",
            "Instances running now on this node.",
            g.in_flight as i64,
        )?;
        gauge_family(
            e,
            "updraft_pool_slots",
            "The node's instance slots, used and free.",
            [
                (vec![("state", "used".into())], g.in_flight as i64),
                (
                    vec![("state", "free".into())],
                    g.slots.saturating_sub(g.in_flight) as i64,
                ),
            ],
        )?;
        for (name, help, value) in [
            (
                "updraft_spare_instances_made",
                "Fresh instances made ahead of their invocation, with CPU no request wanted.",
                g.spares_made,
            ),
            (
                "updraft_spare_instances_used",
                "Invocations that started in a fresh instance made ahead instead of instantiating.",
                g.spares_used,
            ),
        ] {
            let metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        gauge(
            e,
            "updraft_functions_loaded",
            "Function versions with their compiled code in memory.",
            g.loaded as i64,
        )?;
        gauge_family(
            e,
            "updraft_queue_depth",
            "Messages waiting in a named queue.",
            g.queues.iter().map(|q| (queue_labels(q), q.depth as i64)),
        )?;
        gauge_family(
            e,
            "updraft_queue_in_flight",
            "Messages of a named queue leased to a consumer now.",
            g.queues
                .iter()
                .map(|q| (queue_labels(q), q.in_flight as i64)),
        )?;
        gauge_family(
            e,
            "updraft_queue_oldest_age_seconds",
            "Age of a named queue's oldest message (waiting or in flight); 0 when it is empty.",
            g.queues
                .iter()
                .map(|q| (queue_labels(q), seconds(q.oldest_age_ms))),
        )?;
        gauge_family(
            e,
            "updraft_async_queue_depth",
            "Async invocations of a function waiting to run.",
            g.async_queues
                .iter()
                .map(|q| (async_labels(q), q.depth as i64)),
        )?;
        gauge_family(
            e,
            "updraft_async_queue_oldest_age_seconds",
            "Age of a function's oldest async invocation not yet done; 0 when there is none.",
            g.async_queues
                .iter()
                .map(|q| (async_labels(q), seconds(q.oldest_age_ms))),
        )?;
        gauge_family(
            e,
            "updraft_dlq_size",
            "Dead letters of a function: async invocations that ran out of attempts.",
            g.async_queues
                .iter()
                .map(|q| (async_labels(q), q.dead_letters as i64)),
        )?;
        gauge_family(
            e,
            "updraft_budget_dollars",
            "A tenant's monthly budget.",
            g.budgets
                .iter()
                .filter_map(|b| Some((tenant_labels(b), b.budget_cents? as f64 / 100.0))),
        )?;
        gauge_family(
            e,
            "updraft_budget_spent_dollars",
            "What a tenant with a budget has spent this month.",
            g.budgets
                .iter()
                .map(|b| (tenant_labels(b), b.spent_cents as f64 / 100.0)),
        )?;
        gauge_family(
            e,
            "updraft_budget_used_ratio",
            "The part of a tenant's monthly budget spent (1 or more: invocations are refused).",
            g.budgets.iter().filter_map(|b| {
                let budget = b.budget_cents.filter(|&c| c > 0)?;
                Some((tenant_labels(b), b.spent_cents as f64 / budget as f64))
            }),
        )?;
        gauge(
            e,
            "updraft_queue_read_failures",
            "Tenants whose queues could not be read at this scrape (their queue gauges are missing; the server log says why).",
            g.queue_read_failures as i64,
        )?;
        if let Some(pending) = g.usage_pending {
            gauge(
                e,
                "updraft_usage_records_pending",
                "Usage records made and not yet in the usage log (the bill's lag behind the invocations).",
                pending as i64,
            )?;
        }
        if let Some(p) = &self.process {
            let metric = e.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time the process used.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(p.cpu_seconds).encode(metric)?;
            gauge(
                e,
                "process_resident_memory_bytes",
                "Resident memory size.",
                p.resident_bytes as i64,
            )?;
            gauge(
                e,
                "process_virtual_memory_bytes",
                "Virtual memory size.",
                p.virtual_bytes as i64,
            )?;
            gauge(
                e,
                "process_threads",
                "Threads of the process.",
                p.threads as i64,
            )?;
            gauge(
                e,
                "process_open_fds",
                "Open file descriptors.",
                p.open_fds as i64,
            )?;
            if let Some(max) = p.max_fds {
                gauge(
                    e,
                    "process_max_fds",
                    "Most file descriptors the process may open.",
                    max as i64,
                )?;
            }
            gauge(
                e,
                "process_start_time_seconds",
                "When the process started, in seconds since the Unix epoch.",
                p.start_time_seconds,
            )?;
        }
        Ok(())
    }
}

fn queue_labels(q: &QueueGauge) -> Labels<'_> {
    vec![
        ("tenant", q.tenant.as_str().into()),
        ("queue", q.queue.as_str().into()),
    ]
}

fn async_labels(q: &AsyncGauge) -> Labels<'_> {
    vec![
        ("tenant", q.tenant.as_str().into()),
        ("function", q.function.as_str().into()),
    ]
}

fn tenant_labels(b: &updraft_metering::BudgetStatus) -> Labels<'_> {
    vec![("tenant", b.tenant.as_str().into())]
}

fn seconds(ms: Option<u64>) -> f64 {
    ms.unwrap_or(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn stats_with(durations_ms: &[u64]) -> FunctionStats {
        let stats = FunctionStats::default();
        for &ms in durations_ms {
            stats.duration.observe(Duration::from_millis(ms));
        }
        stats
    }

    #[test]
    fn durations_fall_in_the_bucket_whose_bound_they_do_not_pass() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // exactly the first bound
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(31));
        let counts = h.counts();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[1], 1);
        assert_eq!(
            counts[DURATION_BUCKETS.len()],
            1,
            "past the last bound: +Inf"
        );
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_like_histogram_quantile() {
        let stats = stats_with(&[2, 2, 2, 2]); // all in (1 ms, 2.5 ms]
        let counts = stats.duration.counts();
        let p50 = quantile(0.5, &counts).unwrap();
        assert!((p50 - 0.00175).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(0.5, &[0; DURATION_BUCKETS.len() + 1]), None);
        let slow = stats_with(&[60_000]);
        assert_eq!(quantile(0.99, &slow.duration.counts()), Some(30.0));
    }

    #[test]
    fn the_text_has_every_family_with_bounded_labels() {
        let metrics = Metrics::new(true);
        let stats = metrics.stats(&Arc::from("acme"), &Arc::from("hello"), 2);
        stats.invocations.fetch_add(3, Ordering::Relaxed);
        stats.failed("trap");
        stats.arrived(false);
        stats.duration.observe(Duration::from_millis(3));
        let gauges = Gauges {
            in_flight: 1,
            slots: 10,
            queues: vec![QueueGauge {
                tenant: "acme".into(),
                queue: "orders".into(),
                depth: 4,
                in_flight: 0,
                oldest_age_ms: Some(1500),
            }],
            usage_pending: Some(0),
            ..Gauges::default()
        };
        let text = metrics.encode(gauges, Format::Prometheus).unwrap();
        for line in [
            r#"updraft_function_invocations_total{tenant="acme",function="hello",version="2"} 3"#,
            r#"updraft_function_errors_total{tenant="acme",function="hello",version="2",code="trap"} 1"#,
            r#"updraft_function_starts_total{tenant="acme",function="hello",version="2",start="cold"} 1"#,
            r#"updraft_function_duration_seconds_bucket{tenant="acme",function="hello",version="2",le="0.005"} 1"#,
            r#"updraft_function_duration_seconds_count{tenant="acme",function="hello",version="2"} 1"#,
            r#"updraft_pool_slots{state="free"} 9"#,
            r#"updraft_queue_depth{tenant="acme",queue="orders"} 4"#,
            r#"updraft_queue_oldest_age_seconds{tenant="acme",queue="orders"} 1.5"#,
            "updraft_usage_records_pending 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        let open = metrics
            .encode(Gauges::default(), Format::OpenMetrics)
            .unwrap();
        assert!(open.ends_with("# EOF\n"), "{open}");
        metrics.forget("acme", "hello");
        let text = metrics
            .encode(Gauges::default(), Format::Prometheus)
            .unwrap();
        assert!(!text.contains("hello"), "{text}");
    }
}
