//! The result of one run: the JSON document ([`Report`]), its Markdown
//! rendering, the targets of issue 3 judged against it, and the splice into
//! `BENCHMARKS.md` between the results markers.
//!
//! The measuring modules ([`crate::load`], [`crate::cold`], [`crate::memory`],
//! [`crate::kv`], [`crate::events`], [`crate::calls`], [`crate::outbound`],
//! [`crate::cluster`])
//! fill the sections; this module only derives and presents.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::calls::CallsReport;
use crate::cluster::{self, ClusterReport};
use crate::events::EventsReport;
use crate::kv::{self, KvReport};
use crate::outbound::OutboundReport;
use crate::servers::Rss;
use crate::stats::Summary;
use crate::wrk::{Errors, Point};

/// Bumped when a field changes meaning, so readers of old files can tell.
pub const SCHEMA: u32 = 8;

pub const MARKER_START: &str = "<!-- results:start -->";
pub const MARKER_END: &str = "<!-- results:end -->";

/// Server names, as they appear in the JSON and the tables.
pub const NATIVE: &str = "native";
pub const WASMTIME: &str = "wasmtime-serve";
pub const WASMTIME_REUSE: &str = "wasmtime-serve-reuse";
pub const UPDRAFT: &str = "updraft";
/// The same server and hello, deployed with `instance_reuse_max`.
pub const UPDRAFT_REUSE: &str = "updraft-reuse";
/// A second Updraft with `[metering] enabled = false`: what metering costs.
pub const UPDRAFT_UNMETERED: &str = "updraft-unmetered";
/// A third with `[telemetry] metrics = false` and `traces = false`: what
/// metrics and tracing cost.
pub const UPDRAFT_NO_TELEMETRY: &str = "updraft-no-telemetry";
/// A fourth that records every trace (`trace_sample_ratio = 1`), where the
/// default samples: what a recorded trace costs.
pub const UPDRAFT_TRACES_ALL: &str = "updraft-traces-all";

/// How much of everything a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The documented numbers: long points, three rounds, many repetitions.
    Full,
    /// A look in under two minutes.
    Quick,
    /// Seconds; only for the harness's own test.
    Tiny,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    pub mode: Mode,
    /// How to repeat this run.
    pub command: String,
    pub machine: Machine,
    pub setup: Setup,
    pub throughput: Vec<LoadResult>,
    /// Updraft with and without metering, in alternating rounds.
    pub metering: Vec<LoadResult>,
    pub ratios: Vec<Ratio>,
    pub cold: Cold,
    pub memory: Memory,
    pub kv: KvReport,
    /// Async invocations end to end against synchronous ones.
    pub events: EventsReport,
    /// Function-to-function calls against the same call over HTTP.
    pub calls: CallsReport,
    /// A guest's outgoing HTTP call against a native client's (issue 18);
    /// zeros in runs from before the phase, which still load for `compare`.
    #[serde(default)]
    pub outbound: OutboundReport,
    /// Cluster mode against embedded (issue 17); empty in runs from before
    /// the phase, which still load for `compare`.
    #[serde(default)]
    pub cluster: ClusterReport,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// RFC 3339, UTC, when the run started.
    pub date: String,
    /// Short hash, `-dirty` if tracked files were modified; `None` outside git.
    pub git_commit: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    pub load_generator: String,
    pub duration_s: u64,
    pub warmup_s: u64,
    pub rounds: u32,
    pub concurrencies: Vec<u32>,
    pub cold_repetitions: usize,
    pub idle_functions: usize,
    pub in_flight: usize,
    pub slow_ms: u64,
    pub updraft_bin: String,
    /// `debug` or `release`: the directory the updraft binary was found in.
    pub updraft_profile: String,
    pub wasmtime_version: String,
    pub wrk_version: String,
    pub hello_wasm_bytes: u64,
}

/// One server at one concurrency: medians over the rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    pub server: String,
    pub concurrency: u32,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Summed over the rounds.
    pub requests: u64,
    pub errors: Errors,
    pub rounds: Vec<Point>,
}

/// Updraft divided by one peer at one concurrency: above 1 means Updraft serves
/// more requests (`rps`) or waits longer (`p50`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub concurrency: u32,
    /// `updraft` or `updraft-reuse`.
    pub server: String,
    pub peer: String,
    pub rps: f64,
    pub p50: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cold {
    pub repetitions: usize,
    /// `PUT /v1/functions/NAME` until 201, for a copy of hello made unique
    /// (a custom section) so every deploy really compiles.
    pub deploy: Summary,
    /// How many of those deploys the server says it compiled.
    pub deploys_compiled: usize,
    /// The first `GET` of the route once the deploy returned (connect included).
    pub after_deploy: Summary,
    /// The unload request itself; `None` when the server has no unload endpoint.
    pub unload: Option<Summary>,
    /// The first `GET` after `POST /v1/functions/NAME/unload`.
    pub after_unload: Option<Summary>,
    /// Why `after_unload` is missing.
    pub unload_note: Option<String>,
    /// From spawning `updraft up` on a data dir with hello deployed to the
    /// first 200 of `GET /hello`.
    pub restart_spawn_to_200: Summary,
    /// From the "listening" line to that first 200.
    pub restart_listening_to_200: Summary,
    pub restart_functions: usize,
    /// The most any restart compiled (0: every artifact came from disk).
    pub restart_compiled_at_start: u64,
    /// (a) instantiation, Updraft's against bare Wasmtime's; empty in runs
    /// from before it was measured here, which still load for `compare`.
    #[serde(default)]
    pub instantiate: crate::instantiate::InstantiateReport,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Memory {
    /// Copies of hello deployed (identical bytes, one name and route each).
    pub idle_functions: usize,
    pub rss_base: Rss,
    pub rss_deployed: Rss,
    pub kb_per_idle_function: f64,
    pub rss_unloaded: Option<Rss>,
    /// Retained per function once every copy was unloaded; `None` without the
    /// unload endpoint.
    pub kb_per_unloaded_function: Option<f64>,
    pub in_flight: usize,
    pub slow_ms: u64,
    pub rss_before_in_flight: Rss,
    /// The largest sample while the slow requests were in flight.
    pub rss_in_flight_peak: Rss,
    pub kb_per_in_flight_instance: f64,
    /// Slow requests answered 200 (should be all of them).
    pub in_flight_ok: usize,
    /// Wall time of the whole burst: about `slow_ms` if they ran at once.
    pub in_flight_elapsed_ms: u64,
}

/// A target of issue 3 and how this run did; `met` is `None` when the run
/// could not measure it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

impl Machine {
    /// The first line of a phase's Markdown: the command, this machine
    /// and the commit.
    pub fn run_line(&self, command: &str) -> String {
        format!(
            "Run: `{command}` on {} cores ({}), {}, commit {}.\n\n",
            self.cores,
            self.cpu_model,
            self.date,
            self.git_commit.as_deref().unwrap_or("unknown"),
        )
    }

    pub fn detect(repo: &Path) -> Machine {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines().find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    (key.trim() == "model name").then(|| value.trim().to_string())
                })
            })
            .unwrap_or_else(|| "unknown".to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Machine {
            cores,
            cpu_model,
            kernel,
            date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            git_commit: git_commit(repo),
        }
    }
}

fn git_commit(repo: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|status| !status.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

impl Report {
    pub fn load(&self, server: &str, concurrency: u32) -> Option<&LoadResult> {
        self.throughput
            .iter()
            .find(|r| r.server == server && r.concurrency == concurrency)
    }

    pub fn ratio(&self, server: &str, peer: &str, concurrency: u32) -> Option<&Ratio> {
        self.ratios
            .iter()
            .find(|r| r.server == server && r.peer == peer && r.concurrency == concurrency)
    }
}

/// Updraft (each mode) against every peer it is compared with, at every concurrency.
pub fn ratios(throughput: &[LoadResult], concurrencies: &[u32]) -> Vec<Ratio> {
    let find = |server: &str, c: u32| {
        throughput
            .iter()
            .find(|r| r.server == server && r.concurrency == c)
    };
    let pairs: [(&str, &[&str]); 2] = [
        (UPDRAFT, &[WASMTIME, WASMTIME_REUSE, NATIVE]),
        (UPDRAFT_REUSE, &[WASMTIME_REUSE, NATIVE]),
    ];
    let mut out = Vec::new();
    for &c in concurrencies {
        for (server, peers) in pairs {
            let Some(ours) = find(server, c) else {
                continue;
            };
            for &peer in peers {
                if let Some(theirs) = find(peer, c) {
                    out.push(Ratio {
                        concurrency: c,
                        server: server.to_string(),
                        peer: peer.to_string(),
                        rps: divide(ours.rps, theirs.rps),
                        p50: divide(ours.p50_us, theirs.p50_us),
                    });
                }
            }
        }
    }
    out
}

fn divide(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The concurrency the throughput targets are stated at.
const HIGH_CONCURRENCY: u32 = 64;

/// Issue 3's targets, each judged on this report.
pub fn targets(report: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    let mut push = |target: &str, measured: String, met: Option<bool>| {
        out.push(Target {
            target: target.to_string(),
            measured,
            met,
        });
    };
    let instantiate = &report.cold.instantiate;
    let target = "instantiate p50 ≤ 5 µs (hello, pooling, CoW; issue 19)";
    match (
        &instantiate.updraft,
        &instantiate.wasmtime,
        instantiate.ratio(),
    ) {
        (Some(ours), Some(theirs), Some(ratio)) => push(
            target,
            format!(
                "{} (p99 {}); bare Wasmtime, as `wasmtime serve` per request, {} ({ratio:.2}×)",
                us(ours.p50_us),
                us(ours.p99_us),
                us(theirs.p50_us)
            ),
            Some(ours.p50_us <= 5.0),
        ),
        _ => push(target, "not measured".to_string(), None),
    }

    let cold = &report.cold;
    push(
        "first response after deploy p50 ≤ 1 ms",
        format!(
            "{} (p99 {})",
            us(cold.after_deploy.p50_us),
            us(cold.after_deploy.p99_us)
        ),
        Some(cold.after_deploy.p50_us <= 1_000.0),
    );
    match &cold.after_unload {
        Some(s) => push(
            "first response after idle unload p50 ≤ 5 ms",
            format!("{} (p99 {})", us(s.p50_us), us(s.p99_us)),
            Some(s.p50_us <= 5_000.0),
        ),
        None => push(
            "first response after idle unload p50 ≤ 5 ms",
            format!(
                "not available: {}",
                cold.unload_note.as_deref().unwrap_or("no unload endpoint")
            ),
            None,
        ),
    }
    let spawn = &cold.restart_spawn_to_200;
    push(
        "first response after restart p50 ≤ 5 ms",
        format!(
            "{} from spawn, {} from the listening line",
            us(spawn.p50_us),
            us(cold.restart_listening_to_200.p50_us)
        ),
        Some(spawn.p50_us <= 5_000.0),
    );

    let c = HIGH_CONCURRENCY;
    let ratio_target = |server: &str, peer: &str, min: f64| {
        report
            .ratio(server, peer, c)
            .map(|r| (format!("{:.2}× (c={c})", r.rps), Some(r.rps >= min)))
            .unwrap_or_else(|| ("not measured".to_string(), None))
    };
    let (measured, met) = ratio_target(UPDRAFT, WASMTIME, 3.0);
    push("fresh-instance req/s ≥ 3× wasmtime serve", measured, met);
    let (measured, met) = ratio_target(UPDRAFT, NATIVE, 0.35);
    push("fresh-instance req/s ≥ 0.35× native", measured, met);
    let (measured, met) = ratio_target(UPDRAFT_REUSE, WASMTIME_REUSE, 1.2);
    push(
        "instance-reuse req/s ≥ 1.2× wasmtime serve --max-instance-reuse-count",
        measured,
        met,
    );
    let (measured, met) = ratio_target(UPDRAFT_REUSE, NATIVE, 0.6);
    push("instance-reuse req/s ≥ 0.6× native", measured, met);
    match report.load(UPDRAFT, c) {
        Some(r) if r.p50_us > 0.0 => push(
            "p99 ≤ 3× p50 at c=64 (Updraft)",
            format!(
                "{:.2}× ({} / {})",
                r.p99_us / r.p50_us,
                us(r.p99_us),
                us(r.p50_us)
            ),
            Some(r.p99_us <= 3.0 * r.p50_us),
        ),
        _ => push(
            "p99 ≤ 3× p50 at c=64 (Updraft)",
            "not measured".to_string(),
            None,
        ),
    }

    // Issue 6: metering costs at most 3% of warm throughput.
    let target = "metering costs ≤ 3% of warm req/s (metered vs unmetered Updraft)";
    match metering_ratio(report) {
        Some(ratio) => push(
            target,
            format!("{:.1}% (ratio {ratio:.3}, c={c})", (1.0 - ratio) * 100.0),
            Some(ratio >= 0.97),
        ),
        None => push(target, "not measured".to_string(), None),
    }

    // Issue 20: metrics and tracing together cost at most 3%.
    let target = "metrics and traces cost ≤ 3% of warm req/s (on vs off, Updraft)";
    match ratio_against(report, UPDRAFT_NO_TELEMETRY) {
        Some(ratio) => push(
            target,
            format!("{:.1}% (ratio {ratio:.3}, c={c})", (1.0 - ratio) * 100.0),
            Some(ratio >= 0.97),
        ),
        None => push(target, "not measured".to_string(), None),
    }

    kv_targets(&report.kv, &mut push);

    let memory = &report.memory;
    let target = "idle deployed function ≤ 100 KB resident when unloaded";
    match memory.kb_per_unloaded_function {
        Some(kb) => push(
            target,
            format!(
                "{kb:.1} KB unloaded ({:.1} KB loaded)",
                memory.kb_per_idle_function
            ),
            Some(kb <= 100.0),
        ),
        // Without unload only the loaded figure exists; at or below the target
        // it bounds the unloaded one, above it says nothing.
        None => {
            let kb = memory.kb_per_idle_function;
            push(
                target,
                format!("{kb:.1} KB loaded (unload not available)"),
                (kb <= 100.0).then_some(true),
            )
        }
    }

    let events = &report.events;
    let best = [
        events.batch_events_per_s,
        events.events_per_s,
        events.direct_events_per_s,
        events.direct_big_events_per_s,
    ]
    .into_iter()
    .fold(0.0, f64::max);
    push(
        "async events ≥ 50,000 events/s end to end, durable (2 cores)",
        format!(
            "{} events/s to a direct consumer (handler export, instance reuse) in batches of \
             {}, {} in batches of {}; {} events/s to hello (wasi:http, fresh instances) in \
             batches of {}; {} events/s one async call per request \
             ({:.2}× the {} req/s of the same calls made synchronously)",
            thousands(events.direct_big_events_per_s),
            events.big_batch,
            thousands(events.direct_events_per_s),
            events.batch,
            thousands(events.batch_events_per_s),
            events.batch,
            thousands(events.events_per_s),
            divide(events.events_per_s, events.sync_rps),
            thousands(events.sync_rps)
        ),
        Some(best >= 50_000.0),
    );
    let calls = &report.calls;
    push(
        "function-to-function call p50 ≤ 20 µs",
        format!(
            "{} (p99 {}) direct to a callee reusing its instance; {} (p99 {}) direct to a fresh \
             instance; {} to a `wasi:http` callee; through the HTTP gateway {} ({:.0}× the \
             reused direct call)",
            ns(calls.call_reuse_p50_ns),
            ns(calls.call_reuse_p99_ns),
            ns(calls.call_p50_ns),
            ns(calls.call_p99_ns),
            ns(calls.call_http_callee_p50_ns),
            ns(calls.http_p50_ns),
            calls.http_p50_ns as f64 / calls.call_reuse_p50_ns.max(1) as f64
        ),
        // Judged on the reused callee: a fresh instance per call is the
        // stricter isolation, and its row says where it stands.
        Some(calls.call_reuse_p50_ns > 0 && calls.call_reuse_p50_ns <= 20_000),
    );

    // Issue 18: a guest's outgoing call costs little more than a native one.
    let target = "outbound call p50 ≤ 1.5× a native hyper client (issue 18)";
    let outbound = &report.outbound;
    if outbound.measured() {
        push(
            target,
            format!(
                "{:.2}× ({} vs {}; p99 {} vs {})",
                outbound.ratio_p50,
                ns(outbound.updraft_p50_ns),
                ns(outbound.native_p50_ns),
                ns(outbound.updraft_p99_ns),
                ns(outbound.native_p99_ns)
            ),
            Some(outbound.native_p50_ns > 0 && outbound.ratio_p50 <= 1.5),
        );
    } else {
        push(target, "not measured".to_string(), None);
    }

    // Issue 17: a plain request touches no NATS, so a node serves as fast
    // as an embedded server.
    let target = "cluster mode: warm req/s per node within 10% of embedded";
    let cluster = &report.cluster;
    match (&cluster.warm, &cluster.skipped) {
        (Some(warm), _) => push(
            target,
            format!(
                "{:.3}× ({} vs {} req/s, c={})",
                warm.ratio,
                thousands(warm.cluster.rps),
                thousands(warm.embedded.rps),
                warm.cluster.concurrency
            ),
            Some(warm.ratio >= 0.9),
        ),
        (None, Some(why)) => push(target, format!("not measured: {why}"), None),
        (None, None) => push(target, "not measured".to_string(), None),
    }
    // Issue 17: a node added under load pulls from the same queues at once.
    let target = "cluster mode: a node started under load takes a share within 1 s";
    match &cluster.elastic {
        Some(e) => push(
            target,
            format!(
                "first job {:.1} ms after it was up ({:.0} ms from spawn); {} of {} jobs",
                e.first_run_ms, e.start_ms, e.ran, e.queued
            ),
            Some(e.first_run_ms <= 1_000.0 && e.ran > 0),
        ),
        None => push(target, "not measured".to_string(), None),
    }
    // Issue 17: a guest's get on a node no slower than Redis on loopback.
    let target = "cluster mode: kv get p50 from a guest no slower than Redis on loopback";
    match (
        cluster.kv_point(cluster::CLUSTER, "get"),
        report.kv.point(kv::REDIS, "get"),
    ) {
        (Some(ours), Some(redis)) => {
            let ratio = redis.p50_ns as f64 / ours.p50_ns.max(1) as f64;
            push(
                target,
                format!(
                    "{ratio:.1}× lower ({} vs {})",
                    ns(ours.p50_ns),
                    ns(redis.p50_ns)
                ),
                Some(ratio >= 1.0),
            );
        }
        _ => push(target, "not measured".to_string(), None),
    }
    out
}

/// Metered over unmetered req/s, medians of the alternating rounds.
/// Metered over unmetered: the median of the rounds' ratios. Each round
/// loads the two servers one right after the other, so a pair shares the
/// shared machine's state of that moment, and drift between rounds (the
/// larger noise here) cancels.
pub fn metering_ratio(report: &Report) -> Option<f64> {
    ratio_against(report, UPDRAFT_UNMETERED)
}

/// The default server over `baseline` (one thing off), as
/// [`metering_ratio`] measures it.
pub fn ratio_against(report: &Report, baseline: &str) -> Option<f64> {
    ratio_between(report, UPDRAFT, baseline)
}

/// [`ratio_against`] for `server` in place of the default one.
pub fn ratio_between(report: &Report, server: &str, baseline: &str) -> Option<f64> {
    let (metered, unmetered) = (
        metering_result(report, server)?,
        metering_result(report, baseline)?,
    );
    let ratios: Vec<f64> = metered
        .rounds
        .iter()
        .zip(&unmetered.rounds)
        .map(|(m, u)| divide(m.rps, u.rps))
        .collect();
    (!ratios.is_empty()).then(|| crate::stats::median(&ratios))
}

/// The median req/s of the metered server over the unmetered one's.
pub fn metering_ratio_of_medians(report: &Report) -> Option<f64> {
    Some(divide(
        metering_result(report, UPDRAFT)?.rps,
        metering_result(report, UPDRAFT_UNMETERED)?.rps,
    ))
}

fn metering_result<'r>(report: &'r Report, server: &str) -> Option<&'r LoadResult> {
    report.metering.iter().find(|r| r.server == server)
}

/// Issue 4's targets for key-value operations from a guest.
fn kv_targets(kv: &KvReport, push: &mut impl FnMut(&str, String, Option<bool>)) {
    // Sets are judged at the `process` level: it keeps what acceptance asks
    // (acknowledged writes survive a killed server); `disk` is in the table.
    let judged = [
        ("get", kv::UPDRAFT_GUEST, ""),
        ("set", kv::UPDRAFT_GUEST_PROCESS, " (durability = process)"),
    ];
    for (op, ours, level) in judged {
        let target = format!("kv {op} p50 ≤ 5 µs from a guest{level}");
        match kv.point(ours, op) {
            Some(p) => push(
                &target,
                format!("{} (p99 {})", ns(p.p50_ns), ns(p.p99_ns)),
                Some(p.p50_ns <= 5_000),
            ),
            None => push(&target, "not measured".into(), None),
        }
    }
    for (op, ours, level) in judged {
        let target = format!("kv {op}{level}: ≥ 10× lower p50 latency than Redis on loopback");
        match (kv.point(ours, op), kv.point(kv::REDIS, op)) {
            (Some(ours), Some(redis)) => {
                let ratio = redis.p50_ns as f64 / ours.p50_ns.max(1) as f64;
                push(
                    &target,
                    format!("{ratio:.1}× ({} vs {})", ns(ours.p50_ns), ns(redis.p50_ns)),
                    Some(ratio >= 10.0),
                );
            }
            _ => push(&target, "not measured".into(), None),
        }
    }
    // Issue 19: durable writes (`disk`) against Redis syncing every write.
    let target = "durable kv set p50 ≤ redis-fsync p50 (issue 19)";
    match (
        kv.point(kv::UPDRAFT_GUEST, "set"),
        kv.point(kv::REDIS_FSYNC, "set"),
    ) {
        (Some(ours), Some(redis)) => push(
            target,
            format!(
                "{} vs {} ({:.2}×)",
                ns(ours.p50_ns),
                ns(redis.p50_ns),
                redis.p50_ns as f64 / ours.p50_ns.max(1) as f64
            ),
            Some(ours.p50_ns <= redis.p50_ns),
        ),
        _ => push(target, "not measured".into(), None),
    }
    let target = "durable kv sets from concurrent writers ≥ 2× redis-fsync ops/s (issue 19)";
    match (
        kv.point(kv::UPDRAFT_GUEST, "set-parallel"),
        kv.point(kv::REDIS_FSYNC, "set-parallel"),
    ) {
        (Some(ours), Some(redis)) => {
            let ratio = divide(ours.ops_per_s, redis.ops_per_s);
            push(
                target,
                format!(
                    "{ratio:.2}× ({} vs {} ops/s, {} writers)",
                    thousands(ours.ops_per_s),
                    thousands(redis.ops_per_s),
                    kv.parallel_writers
                ),
                Some(ratio >= 2.0),
            );
        }
        _ => push(target, "not measured".into(), None),
    }
    match kv.point(kv::UPDRAFT_GUEST, "get-parallel") {
        Some(p) => push(
            "kv gets ≥ 500k ops/s on 2 cores",
            format!(
                "{} ops/s ({} clients)",
                thousands(p.ops_per_s),
                kv.parallel_clients
            ),
            Some(p.ops_per_s >= 500_000.0),
        ),
        None => push(
            "kv gets ≥ 500k ops/s on 2 cores",
            "not measured".into(),
            None,
        ),
    }
}

/// Microseconds as a person reads them: µs below a millisecond, else ms.
pub fn us(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.1} µs")
    } else if value < 1_000.0 {
        format!("{value:.0} µs")
    } else if value < 1_000_000.0 {
        format!("{:.2} ms", value / 1_000.0)
    } else {
        format!("{:.2} s", value / 1_000_000.0)
    }
}

/// Whole numbers with thousands separators: `123,456`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn met(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    }
}

/// The results as Markdown: what `run` prints and `--update-md` writes.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let s = &report.setup;
    let m = &report.machine;
    // `write!` into a String cannot fail; the results are ignored for brevity.
    let _ = writeln!(
        md,
        "Measured {} ({} mode) with:\n",
        m.date,
        mode_name(report.mode)
    );
    let _ = writeln!(md, "```sh\n{}\n```\n", report.command);
    let _ = writeln!(
        md,
        "Machine: {} cores, {}, Linux {}; commit {}; updraft build: **{}** (`{}`); {}; {}.\n",
        m.cores,
        m.cpu_model,
        m.kernel,
        m.git_commit.as_deref().unwrap_or("unknown"),
        s.updraft_profile,
        s.updraft_bin,
        s.wasmtime_version,
        s.wrk_version,
    );
    // Said where the numbers are, so a table pasted elsewhere keeps its caveats.
    if s.updraft_profile != "release" {
        let _ = writeln!(
            md,
            "> **The updraft binary was a {} build**, not release: these numbers say little \
             about the platform. Rerun after `cargo build -p updraft --release`.\n",
            s.updraft_profile
        );
    }
    if report.mode != Mode::Full {
        let _ = writeln!(
            md,
            "> {} mode: short points, one round, few repetitions (p99 of a cold path is its \
             slowest sample). Indicative only; the full mode is the one to quote.\n",
            mode_name(report.mode)
        );
    }

    let _ = writeln!(
        md,
        "### Warm throughput and latency\n\n{}, {} s per point after a {} s warm-up per server, \
         servers alternated, median of {} round(s). Latencies in µs.\n",
        s.load_generator, s.duration_s, s.warmup_s, s.rounds
    );
    md.push_str("| server | c | req/s | p50 | p99 | p99.9 | errors |\n");
    md.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for &c in &s.concurrencies {
        for r in report.throughput.iter().filter(|r| r.concurrency == c) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {} |",
                r.server,
                c,
                thousands(r.rps),
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.errors.total()
            );
        }
    }

    md.push_str(
        "\nRatios, Updraft ÷ peer (req/s: higher is better for Updraft; p50: lower is better):\n\n",
    );
    md.push_str("| c | peer | req/s ratio | p50 ratio |\n| ---: | --- | ---: | ---: |\n");
    for r in &report.ratios {
        let _ = writeln!(
            md,
            "| {} | {} / {} | {:.2}× | {:.2}× |",
            r.concurrency, r.server, r.peer, r.rps, r.p50
        );
    }

    let cold = &report.cold;
    let _ = writeln!(
        md,
        "\n### Cold paths\n\n{} repetitions each; times end to end as a client sees them \
         (loopback connect included).\n",
        cold.repetitions
    );
    md.push_str("| path | p50 | p99 |\n| --- | ---: | ---: |\n");
    let mut row = |name: String, summary: Option<&Summary>, note: &str| {
        let _ = match summary {
            Some(s) => writeln!(md, "| {name} | {} | {} |", us(s.p50_us), us(s.p99_us)),
            None => writeln!(md, "| {name} | {note} | {note} |"),
        };
    };
    let instantiate = &cold.instantiate;
    row(
        format!(
            "(a) instantiate in process, Updraft: store, contexts, pooled instance ({} timed)",
            instantiate.iterations
        ),
        instantiate.updraft.as_ref(),
        "n/a",
    );
    row(
        "(a) instantiate in process, bare Wasmtime as `wasmtime serve`, default pool".to_string(),
        instantiate.wasmtime.as_ref(),
        "n/a",
    );
    row(
        format!(
            "(b) deploy, PUT → 201 ({} of {} compiled)",
            cold.deploys_compiled, cold.repetitions
        ),
        Some(&cold.deploy),
        "",
    );
    row(
        "(b) first response after deploy".to_string(),
        Some(&cold.after_deploy),
        "",
    );
    row(
        "(c) unload, POST → 200".to_string(),
        cold.unload.as_ref(),
        "n/a",
    );
    row(
        "(c) first response after unload".to_string(),
        cold.after_unload.as_ref(),
        "n/a",
    );
    row(
        format!(
            "(d) restart: spawn → first 200 ({} function(s), {} compiled at start)",
            cold.restart_functions, cold.restart_compiled_at_start
        ),
        Some(&cold.restart_spawn_to_200),
        "",
    );
    row(
        "(d) restart: listening → first 200".to_string(),
        Some(&cold.restart_listening_to_200),
        "",
    );
    if let Some(note) = &cold.unload_note {
        let _ = writeln!(md, "\n(c) not available: {note}");
    }

    let mem = &report.memory;
    md.push_str("\n### Memory (resident, VmRSS of `updraft up`)\n\n");
    md.push_str("| measurement | value |\n| --- | ---: |\n");
    let _ = writeln!(
        md,
        "| {} idle copies of hello deployed: {} → {} KB | **{:.1} KB per function** |",
        mem.idle_functions, mem.rss_base.rss_kb, mem.rss_deployed.rss_kb, mem.kb_per_idle_function
    );
    match (&mem.rss_unloaded, mem.kb_per_unloaded_function) {
        (Some(rss), Some(kb)) => {
            let _ = writeln!(
                md,
                "| the same, all unloaded: {} → {} KB | **{kb:.1} KB per function** |",
                mem.rss_base.rss_kb, rss.rss_kb
            );
        }
        _ => md.push_str("| the same, all unloaded | n/a (no unload endpoint) |\n"),
    }
    let _ = writeln!(
        md,
        "| {} requests in flight (`/chaos/slow?ms={}`, {} answered 200 in {} ms): {} → {} KB \
         | **{:.1} KB per instance** |",
        mem.in_flight,
        mem.slow_ms,
        mem.in_flight_ok,
        mem.in_flight_elapsed_ms,
        mem.rss_before_in_flight.rss_kb,
        mem.rss_in_flight_peak.rss_kb,
        mem.kb_per_in_flight_instance
    );

    kv_markdown(&mut md, &report.kv);
    events_markdown(&mut md, &report.events);
    calls_markdown(&mut md, &report.calls);
    outbound_markdown(&mut md, &report.outbound);
    metering_markdown(&mut md, report);
    cluster_markdown(&mut md, &report.cluster);

    md.push_str(
        "\n### Targets (issues 3, 4, 5, 6, 17 and 18)\n\n| target | measured | met? |\n| --- | --- | --- |\n",
    );
    for t in &report.targets {
        let _ = writeln!(md, "| {} | {} | {} |", t.target, t.measured, met(t.met));
    }
    md
}

fn metering_markdown(md: &mut String, report: &Report) {
    if report.metering.is_empty() {
        return;
    }
    md.push_str(
        "\n### Metering and telemetry overhead\n\nThe same hello on Updraft servers alike \
         but for one setting: `updraft` as configured by default, `updraft-unmetered` with \
         `[metering] enabled = false`, `updraft-no-telemetry` with `[telemetry] metrics = \
         false` and `traces = false`, `updraft-traces-all` recording every trace \
         (`trace_sample_ratio = 1`, where the default records 100 new traces a second and \
         5% of the rest); loaded in alternating short rounds at c=64.\n\n\
         | server | req/s (median) | rounds |\n| --- | --- | --- |\n",
    );
    for r in &report.metering {
        let rounds: Vec<String> = r.rounds.iter().map(|p| thousands(p.rps)).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            r.server,
            thousands(r.rps),
            rounds.join(", ")
        );
    }
    if let (Some(ratio), Some(of_medians)) =
        (metering_ratio(report), metering_ratio_of_medians(report))
    {
        let _ = writeln!(
            md,
            "\nMetered / unmetered, the median of the rounds' ratios: {ratio:.3} ({:.1}% cost). \
             The ratio of the two medians: {of_medians:.3}.",
            (1.0 - ratio) * 100.0
        );
    }
    if let Some(ratio) = ratio_against(report, UPDRAFT_NO_TELEMETRY) {
        let _ = writeln!(
            md,
            "\nWith metrics and traces / without, the median of the rounds' ratios: \
             {ratio:.3} ({:.1}% cost).",
            (1.0 - ratio) * 100.0
        );
    }
    if let Some(ratio) = ratio_between(report, UPDRAFT_TRACES_ALL, UPDRAFT_NO_TELEMETRY) {
        let _ = writeln!(
            md,
            "\nRecording every trace / without telemetry: {ratio:.3} ({:.1}% cost).",
            (1.0 - ratio) * 100.0
        );
    }
}

fn events_markdown(md: &mut String, events: &EventsReport) {
    let _ = writeln!(
        md,
        "\n### Async events end to end\n\nhello, `POST /v1/functions/hello/invoke` under wrk \
         (c={}, {} s per point): synchronously, then with `mode=async`, each 202 durable \
         (fsynced) before it is sent. Events/s counts from the first request until the \
         queue is drained, every accepted call run and acknowledged.\n\n\
         Batched: the same hello consumes queue `bench`; wrk (c={}) publishes {} structured \
         CloudEvents per request in one durable commit; events/s again counts until the \
         queue is drained. Direct: the same batches to queue `direct`, consumed by \
         `tests/guests/chain`, which exports `updraft:platform/handler` (each event goes to \
         `handle` as a structured CloudEvent) and reuses its instances; then {} events per \
         request over c={}.\n\n\
         | round | sync req/s | async accepted | accept req/s | accept p50 | accept p99 | end to end | events/s | batched published | batched events/s | direct events/s | direct, batches of {} |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        events.connections,
        events.duration_s,
        events.batch_connections,
        events.batch,
        events.big_batch,
        events.big_batch_connections,
        events.big_batch
    );
    for (i, r) in events.rounds.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} µs | {:.0} µs | {:.0} ms | {} | {} ({}/s) | {} | {} | {} |",
            i + 1,
            thousands(r.sync_rps),
            r.accepted,
            thousands(r.accept_rps),
            r.accept_p50_us,
            r.accept_p99_us,
            r.end_to_end_ms,
            thousands(r.events_per_s),
            r.batch_published,
            thousands(r.batch_publish_per_s),
            thousands(r.batch_events_per_s),
            thousands(r.direct_events_per_s),
            thousands(r.direct_big_events_per_s)
        );
    }
    let _ = writeln!(
        md,
        "\nMedians: {} events/s async end to end, {} req/s sync ({:.2}×); {} events/s \
         published in batches; {} events/s to the direct consumer, {} in batches of {}.",
        thousands(events.events_per_s),
        thousands(events.sync_rps),
        divide(events.events_per_s, events.sync_rps),
        thousands(events.batch_events_per_s),
        thousands(events.direct_events_per_s),
        thousands(events.direct_big_events_per_s),
        events.big_batch
    );
}

fn cluster_markdown(md: &mut String, cluster: &ClusterReport) {
    if let Some(why) = &cluster.skipped {
        let _ = writeln!(md, "\n### Cluster mode\n\nNot measured: {why}.");
        return;
    }
    if !cluster.measured() {
        return;
    }
    let _ = writeln!(
        md,
        "\n### Cluster mode against embedded\n\n{} nodes (`updraft up --cluster`) over one \
         `{}` with JetStream on loopback, against one embedded `updraft up`, measured side by \
         side in the same phase. The nodes, NATS and wrk share this machine's cores, where the \
         embedded server has them to itself with wrk.\n\n\
         - **warm**: wrk on `GET /hello` of one node (node 2, which got hello through NATS) \
         and of the embedded server, alternating; the ratio is the median of the rounds' \
         ratios.\n\
         - **async**: `POST /v1/functions/hello/invoke?mode=async` under wrk, the clock \
         stopped when hello's queue is drained; on the cluster the connections are split over \
         one wrk per node.\n\
         - **deploy → invocable**: `tests/guests/chain` deployed through node 1 with a new \
         `[env] NAME`, timed until the route of every node answers 200 with it (polled every \
         millisecond); `config` keeps the Wasm, `code` changes it (each node fetches and \
         compiles it). Embedded: until its own route answers.\n\
         - **kv**: `tests/guests/kv-bench` on node 1 (stores in JetStream) and on the embedded \
         server, timed inside the guest.\n\n\
         | measurement | cluster | embedded | cluster ÷ embedded |\n\
         | --- | ---: | ---: | ---: |",
        cluster.nodes, cluster.nats_version,
    );
    let ratio = |a: f64, b: f64| format!("{:.2}×", divide(a, b));
    if let Some(warm) = &cluster.warm {
        let (c, e) = (&warm.cluster, &warm.embedded);
        let _ = writeln!(
            md,
            "| warm req/s, node {} (c={}, {} round(s)) | {} | {} | {:.3}× |\n\
             | warm p50 | {} | {} | {} |\n\
             | warm p99 | {} | {} | {} |",
            warm.node,
            c.concurrency,
            c.rounds.len(),
            thousands(c.rps),
            thousands(e.rps),
            warm.ratio,
            us(c.p50_us),
            us(e.p50_us),
            ratio(c.p50_us, e.p50_us),
            us(c.p99_us),
            us(e.p99_us),
            ratio(c.p99_us, e.p99_us),
        );
    }
    if let Some(events) = &cluster.events {
        let processes = events
            .rounds
            .first()
            .map_or(cluster.nodes, |r| r.cluster.wrk_processes);
        let _ = writeln!(
            md,
            "| async events/s end to end (c={} over {processes} wrk, {} s, {} round(s)) | {} | {} | {:.3}× |",
            events.connections,
            events.duration_s,
            events.rounds.len(),
            thousands(events.cluster_events_per_s),
            thousands(events.embedded_events_per_s),
            events.ratio
        );
    }
    for d in &cluster.deploy {
        let _ = writeln!(
            md,
            "| deploy → invocable on every node, `{}`, p50 ({} reps) | {} | {} | {:.2}× |\n\
             | deploy → invocable, `{}`, max | {} | {} | {} |\n\
             | deploy PUT → 201, `{}`, p50 (through node 1) | {} | {} | {} |",
            d.change,
            d.repetitions,
            ms(d.cluster_invocable.p50_us),
            ms(d.embedded_invocable.p50_us),
            d.ratio,
            d.change,
            ms(d.cluster_invocable.max_us),
            ms(d.embedded_invocable.max_us),
            ratio(d.cluster_invocable.max_us, d.embedded_invocable.max_us),
            d.change,
            ms(d.cluster_put.p50_us),
            ms(d.embedded_put.p50_us),
            ratio(d.cluster_put.p50_us, d.embedded_put.p50_us),
        );
    }
    for op in ["get", "set"] {
        let (Some(c), Some(e)) = (
            cluster.kv_point(cluster::CLUSTER, op),
            cluster.kv_point(cluster::EMBEDDED, op),
        ) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| kv {op} p50 from a guest ({} ops) | {} | {} | {} |",
            c.ops,
            ns(c.p50_ns),
            ns(e.p50_ns),
            ratio(c.p50_ns as f64, e.p50_ns as f64),
        );
    }
    if let Some(e) = &cluster.elastic {
        let _ = writeln!(
            md,
            "\nA node started under load: {} async kv-bench jobs queued through node 1 ({} still \
             unfinished when it started), more coming until it had run one ({} in all). Node {} \
             was up {:.0} ms after its spawn and started its first job {:.1} ms after that \
             (target: within 1 s); it ran {} of them.",
            e.backlog,
            e.unfinished_at_start,
            e.queued,
            cluster.nodes + 1,
            e.start_ms,
            e.first_run_ms,
            e.ran,
        );
    }
}

/// Microseconds as milliseconds, one decimal: the unit of propagation.
fn ms(micros: f64) -> String {
    format!("{:.1} ms", micros / 1_000.0)
}

fn calls_markdown(md: &mut String, calls: &CallsReport) {
    let _ = writeln!(
        md,
        "\n### Function-to-function calls\n\n`tests/guests/chain`: `caller` calls `leaf` {} times \
         through `updraft:platform/invoke`, timing each call inside the guest. `leaf` exports \
         `updraft:platform/handler`, so a call reaches it directly, in a fresh instance. The \
         same `leaf` through the HTTP gateway is timed by wrk (one keep-alive connection, {} \
         requests). The last row calls `examples/hello-rust`, which has no handler export: \
         those calls go through its `wasi:http` handler.\n\n\
         | path | p50 | p99 |\n| --- | ---: | ---: |\n\
         | in process, direct (`updraft:platform/handler`) | {} | {} |\n\
         | in process, direct, callee with `instance_reuse_max` | {} | {} |\n\
         | HTTP gateway (wrk, c=1) | {} | {} |\n\
         | in process, to a `wasi:http` callee (hello-rust) | {} | {} |",
        calls.calls,
        calls.http_requests,
        ns(calls.call_p50_ns),
        ns(calls.call_p99_ns),
        ns(calls.call_reuse_p50_ns),
        ns(calls.call_reuse_p99_ns),
        ns(calls.http_p50_ns),
        ns(calls.http_p99_ns),
        ns(calls.call_http_callee_p50_ns),
        ns(calls.call_http_callee_p99_ns)
    );
}

fn outbound_markdown(md: &mut String, outbound: &OutboundReport) {
    if !outbound.measured() {
        return;
    }
    let _ = writeln!(
        md,
        "\n### Outgoing HTTP\n\nOne `GET` to the native hello on loopback (HTTP/1.1, \
         keep-alive), {} times in a row per side and round, {} round(s), the sides \
         alternating; medians of the rounds. **updraft-guest**: `tests/guests/http-chaos` \
         (`allowed_outbound_hosts`) makes each call through `wasi:http/outgoing-handler` and \
         the version's connection pool, timed inside the guest from building the request to \
         the body's last byte. **native**: a hyper-util legacy `Client` (pooled) in the \
         harness's process, timed the same way.\n\n\
         | client | p50 | p99 |\n| --- | ---: | ---: |\n\
         | updraft-guest | {} | {} |\n\
         | native hyper client | {} | {} |\n\
         | updraft-guest ÷ native | {:.2}× | {:.2}× |",
        thousands(outbound.calls as f64),
        outbound.rounds,
        ns(outbound.updraft_p50_ns),
        ns(outbound.updraft_p99_ns),
        ns(outbound.native_p50_ns),
        ns(outbound.native_p99_ns),
        outbound.ratio_p50,
        divide(
            outbound.updraft_p99_ns as f64,
            outbound.native_p99_ns as f64
        )
    );
}

fn kv_markdown(md: &mut String, kv: &KvReport) {
    let _ = writeln!(
        md,
        "\n### Key-value operations\n\n{}-byte values. **updraft-guest**: `tests/guests/kv-bench` \
         times each `wasi:keyvalue` call inside the guest (writes are durable: fsync, group \
         commit). **redis**: {} on loopback as it ships (no fsync), one native client per \
         connection. `get-parallel`: {} clients at once, ops/s over the slowest one; \
         `set-parallel`: {} writers at once, each to its own key.\n",
        kv.value_bytes, kv.redis_version, kv.parallel_clients, kv.parallel_writers
    );
    kv_table(
        md,
        kv,
        kv::REDIS,
        &["get", "set", "increment", "get-parallel"],
    );
    md.push_str(
        "\nDurable writes on both sides (`redis-fsync`: `appendonly yes`, `appendfsync always`):\n\n",
    );
    kv_table(
        md,
        kv,
        kv::REDIS_FSYNC,
        &["set", "increment", "set-parallel"],
    );
    if kv.point(kv::UPDRAFT_GUEST_NATS, "get").is_some() {
        md.push_str(
            "\nThe stores in NATS JetStream (`[kv] type = \"nats\"`, cluster mode's; \
             `nats-server` on loopback), against the embedded stores and Redis as it ships:\n\n",
        );
        nats_table(md, kv);
    }
}

/// The guest with its stores in NATS, beside the embedded ones and Redis.
fn nats_table(md: &mut String, kv: &KvReport) {
    md.push_str(
        "| op | in NATS p50 | p99 | ops/s | embedded p50 | redis p50 | redis p50 ÷ in-NATS p50 |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for op in ["get", "set", "increment", "get-parallel"] {
        let Some(nats) = kv.point(kv::UPDRAFT_GUEST_NATS, op) else {
            continue;
        };
        let p50 = |system: &str| {
            kv.point(system, op)
                .map_or("—".to_string(), |p| ns(p.p50_ns))
        };
        let ratio = kv.point(kv::REDIS, op).map_or("—".to_string(), |r| {
            format!("{:.2}×", r.p50_ns as f64 / nats.p50_ns.max(1) as f64)
        });
        let _ = writeln!(
            md,
            "| {op} | {} | {} | {} | {} | {} | {ratio} |",
            ns(nats.p50_ns),
            ns(nats.p99_ns),
            thousands(nats.ops_per_s),
            p50(kv::UPDRAFT_GUEST),
            p50(kv::REDIS),
        );
    }
}

/// Updraft's guest against `peer`, one row per op both measured.
fn kv_table(md: &mut String, kv: &KvReport, peer: &str, ops: &[&str]) {
    let _ = writeln!(
        md,
        "| op | updraft-guest p50 | p99 | ops/s | {peer} p50 | p99 | ops/s | {peer} p50 ÷ updraft p50 |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for op in ops {
        let (Some(ours), Some(theirs)) = (kv.point(kv::UPDRAFT_GUEST, op), kv.point(peer, op))
        else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {op} | {} | {} | {} | {} | {} | {} | {:.1}× |",
            ns(ours.p50_ns),
            ns(ours.p99_ns),
            thousands(ours.ops_per_s),
            ns(theirs.p50_ns),
            ns(theirs.p99_ns),
            thousands(theirs.ops_per_s),
            theirs.p50_ns as f64 / ours.p50_ns.max(1) as f64
        );
    }
}

/// Nanoseconds as a person reads them; small ones keep two decimals of µs.
fn ns(value: u64) -> String {
    let micros = value as f64 / 1_000.0;
    if micros < 100.0 {
        format!("{micros:.2} µs")
    } else {
        us(micros)
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Full => "full",
        Mode::Quick => "quick",
        Mode::Tiny => "tiny",
    }
}

/// Replaces what lies between the results markers of `path` with `results`.
pub fn update_markdown(path: &Path, results: &str) -> Result<()> {
    update_section(path, MARKER_START, MARKER_END, results)
}

/// Rewrites what lies between the markers `start` and `end` of `path`.
pub fn update_section(path: &Path, start: &str, end: &str, results: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let updated = splice_between(&text, start, end, results)
        .with_context(|| format!("updating {}", path.display()))?;
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
fn splice(text: &str, results: &str) -> Result<String> {
    splice_between(text, MARKER_START, MARKER_END, results)
}

fn splice_between(
    text: &str,
    marker_start: &str,
    marker_end: &str,
    results: &str,
) -> Result<String> {
    let (Some(start), Some(end)) = (text.find(marker_start), text.find(marker_end)) else {
        bail!(
            "the markers {marker_start} and {marker_end} are missing: put them back around the results section"
        );
    };
    if end < start {
        bail!("{marker_end} comes before {marker_start}");
    }
    let head = &text[..start + marker_start.len()];
    let tail = &text[end..];
    Ok(format!("{head}\n{}\n{tail}", results.trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_between_the_markers_only() {
        let text = format!("# B\nintro\n{MARKER_START}\nold\n{MARKER_END}\nafter\n");
        let out = splice(&text, "new table\n").unwrap();
        assert_eq!(
            out,
            format!("# B\nintro\n{MARKER_START}\nnew table\n{MARKER_END}\nafter\n")
        );
        // Splicing again replaces, never accumulates.
        assert_eq!(splice(&out, "new table").unwrap(), out);
        assert!(splice("no markers", "x").is_err());
        assert!(splice(&format!("{MARKER_END}{MARKER_START}"), "x").is_err());
    }

    #[test]
    fn cluster_section_says_why_it_was_skipped_and_is_absent_from_old_runs() {
        let mut md = String::new();
        cluster_markdown(&mut md, &ClusterReport::default());
        assert!(md.is_empty(), "{md}");
        let skipped = ClusterReport {
            skipped: Some("nats-server not found on PATH".into()),
            ..ClusterReport::default()
        };
        cluster_markdown(&mut md, &skipped);
        assert!(
            md.contains("### Cluster mode") && md.contains("Not measured: nats-server"),
            "{md}"
        );
    }

    #[test]
    fn formats_numbers_for_people() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(us(42.4), "42 µs");
        assert_eq!(us(1_500.0), "1.50 ms");
        assert_eq!(us(2_500_000.0), "2.50 s");
    }

    #[test]
    fn ratios_divide_updraft_by_each_peer() {
        let result = |server: &str, rps: f64, p50_us: f64| LoadResult {
            server: server.to_string(),
            concurrency: 64,
            rps,
            p50_us,
            p99_us: p50_us,
            p999_us: p50_us,
            requests: 1,
            errors: Errors::default(),
            rounds: Vec::new(),
        };
        let throughput = vec![
            result(NATIVE, 100.0, 10.0),
            result(WASMTIME, 10.0, 100.0),
            result(UPDRAFT, 40.0, 20.0),
        ];
        let ratios = ratios(&throughput, &[1, 64]);
        assert_eq!(ratios.len(), 2, "no reuse peers, no c=1: {ratios:?}");
        assert!(ratios.iter().all(|r| r.server == UPDRAFT));
        let vs_wasmtime = ratios.iter().find(|r| r.peer == WASMTIME).unwrap();
        assert_eq!((vs_wasmtime.rps, vs_wasmtime.p50), (4.0, 0.2));
        let vs_native = ratios.iter().find(|r| r.peer == NATIVE).unwrap();
        assert_eq!((vs_native.rps, vs_native.p50), (0.4, 2.0));
    }
}
