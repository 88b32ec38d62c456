//! Scale (issue 21): N invocations of a function that sleeps, all sent at
//! once to a server that has nothing running, each on its own connection,
//! with the resident memory of `updraft up` sampled until the last answer.
//!
//! The sleep is `http-chaos`'s `/slow?ms=S`: the instance waits on a
//! monotonic-clock pollable, so it holds its slot, its store and its
//! connection for S ms while using no CPU. An invocation that answers
//! after `t` ms was admitted (instantiated and sleeping) by `t - S`: the
//! latest of those is the time from zero to all N admitted, an upper bound
//! (it also counts the answer's way back).
//!
//! One client address may hold [`CONNECTIONS_PER_SOURCE`] connections (the
//! server's per-client cap is 2,048 by default), so the connections come
//! from as many loopback addresses (127.0.0.1, .2, …) as N needs, as many
//! clients would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::{Machine, Mode};
use crate::run::repo_root;
use crate::servers::{self, Rss};
use crate::updraft;

pub const MARKER_START: &str = "<!-- inflight:start -->";
pub const MARKER_END: &str = "<!-- inflight:end -->";

/// Connections one client address opens, under the server's default cap
/// per client (2,048).
const CONNECTIONS_PER_SOURCE: usize = 2_000;
/// How long each invocation sleeps: the one second.
const SLEEP: Duration = Duration::from_secs(1);
/// How often the server's RSS is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Time for freed memory to go back before the baseline and the after
/// readings.
const SETTLE: Duration = Duration::from_millis(500);
/// Longest an invocation may take before the run calls it failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Options {
    pub mode: Mode,
    /// Invocations at once [default: 10,000; quick 2,000; tiny 200].
    pub count: Option<usize>,
    pub updraft: Option<PathBuf>,
    pub guests: Option<PathBuf>,
    pub command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InFlightReport {
    pub command: String,
    pub machine: Machine,
    /// Invocations sent at once.
    pub count: usize,
    /// `updraft up --instances-max`: the pool's slots.
    pub instances_max: usize,
    pub sleep_ms: u64,
    /// Invocations that answered 200.
    pub ok: usize,
    /// The others, with the first few reasons.
    pub failed: usize,
    pub failures: Vec<String>,
    /// From the first send to the last connection open.
    pub all_sent_ms: f64,
    /// From the first send until every invocation was sleeping (upper bound).
    pub all_admitted_ms: f64,
    /// From the first send to the last answer.
    pub last_answer_ms: f64,
    pub rss_before: Rss,
    pub rss_peak: Rss,
    /// After the last answer and a short settle: what the burst left.
    pub rss_after: Rss,
    /// (peak - before) / count.
    pub kb_per_instance: f64,
}

pub fn run(options: &Options) -> Result<InFlightReport> {
    let (bin, guests) = updraft::locate(options.updraft.as_ref(), options.guests.as_ref())?;
    let chaos = updraft::read_guest(&guests.join("http-chaos.wasm"))?;
    let count = options.count.unwrap_or(match options.mode {
        Mode::Full => 10_000,
        Mode::Quick => 2_000,
        Mode::Tiny => 200,
    });
    // Sources are 127.0.0.1 to 127.0.0.254.
    let count_max = CONNECTIONS_PER_SOURCE * 254;
    ensure!(
        (1..=count_max).contains(&count),
        "--count {count}: give 1 to {count_max} (the server takes at most 12,000 with --instances-max)"
    );
    raise_open_files(count)?;
    let machine = Machine::detect(&repo_root());
    let scratch = tempfile::Builder::new()
        .prefix("updraft-inflight-")
        .tempdir()
        .context("cannot create a scratch dir")?;
    let instances_max = count.to_string();
    let server = updraft::start_with(
        &bin,
        &scratch.path().join("data"),
        "127.0.0.1:0",
        scratch.path(),
        &["--instances-max", &instances_max],
    )?
    .server;
    let endpoint = server.endpoint;
    let pid = server.pid().ok_or_else(|| anyhow!("updraft has no pid"))?;
    updraft::deploy_chaos(endpoint, &chaos)?;
    std::thread::sleep(SETTLE);
    let rss_before = servers::rss(pid)?;
    eprintln!(
        "    {count} invocations sleeping {} ms, sent at once",
        SLEEP.as_millis()
    );
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || -> Result<Rss> {
            let mut peak = servers::rss(pid)?;
            while !done.load(Ordering::Relaxed) {
                let sample = servers::rss(pid)?;
                if sample.rss_kb > peak.rss_kb {
                    peak = sample;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            Ok(peak)
        })
    };
    let burst = burst(endpoint.addr, count);
    done.store(true, Ordering::Relaxed);
    let rss_peak = sampler
        .join()
        .map_err(|_| anyhow!("the RSS sampler panicked"))??;
    let burst = burst?;
    std::thread::sleep(SETTLE);
    let rss_after = servers::rss(pid)?;
    server.stop()?;
    let kb = (rss_peak.rss_kb as f64 - rss_before.rss_kb as f64) / count as f64;
    Ok(InFlightReport {
        command: options.command.clone(),
        machine,
        count,
        instances_max: count,
        sleep_ms: SLEEP.as_millis() as u64,
        ok: burst.ok,
        failed: count - burst.ok,
        failures: burst.failures,
        all_sent_ms: ms(burst.all_sent),
        all_admitted_ms: ms(burst.last_answer.saturating_sub(SLEEP)),
        last_answer_ms: ms(burst.last_answer),
        rss_before,
        rss_peak,
        rss_after,
        kb_per_instance: (kb * 10.0).round() / 10.0,
    })
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// What the burst gave.
struct Burst {
    ok: usize,
    /// The first few failures' reasons.
    failures: Vec<String>,
    all_sent: Duration,
    last_answer: Duration,
}

/// Failure reasons kept in the report.
const FAILURES_KEPT: usize = 5;

/// Sends `count` sleeping invocations at once and waits for every answer.
fn burst(server: SocketAddr, count: usize) -> Result<Burst> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the client's runtime")?;
    runtime.block_on(async move {
        let request = format!(
            "GET /chaos/slow?ms={} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n",
            SLEEP.as_millis()
        );
        let request: Arc<[u8]> = Arc::from(request.into_bytes());
        let start = Instant::now();
        let tasks: Vec<_> = (0..count)
            .map(|i| {
                let request = request.clone();
                // 127.0.0.1, .2, …: CONNECTIONS_PER_SOURCE each.
                let source = Ipv4Addr::new(127, 0, 0, 1 + (i / CONNECTIONS_PER_SOURCE) as u8);
                tokio::spawn(async move {
                    let sent = start.elapsed();
                    let status =
                        tokio::time::timeout(ANSWER_TIMEOUT, invoke(server, source, &request))
                            .await
                            .map_err(|_| anyhow!("no answer in {ANSWER_TIMEOUT:?}"))
                            .and_then(|r| r);
                    (sent, start.elapsed(), status)
                })
            })
            .collect();
        let mut burst = Burst {
            ok: 0,
            failures: Vec::new(),
            all_sent: Duration::ZERO,
            last_answer: Duration::ZERO,
        };
        for task in tasks {
            let (sent, answered, status) = task.await.context("an invocation's task panicked")?;
            burst.all_sent = burst.all_sent.max(sent);
            burst.last_answer = burst.last_answer.max(answered);
            match status {
                Ok(200) => burst.ok += 1,
                Ok(status) if burst.failures.len() < FAILURES_KEPT => {
                    burst.failures.push(format!("answered {status}"));
                }
                Err(e) if burst.failures.len() < FAILURES_KEPT => {
                    burst.failures.push(format!("{e:#}"));
                }
                _ => {}
            }
        }
        Ok(burst)
    })
}

/// One invocation on a new connection from `source`: its status.
pub(crate) async fn invoke(server: SocketAddr, source: Ipv4Addr, request: &[u8]) -> Result<u16> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .with_context(|| format!("binding to {source}"))?;
    let mut stream = socket
        .connect(server)
        .await
        .with_context(|| format!("connecting from {source}"))?;
    stream.write_all(request).await.context("sending")?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .context("reading the answer")?;
    let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    head.split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP answer: {head:?}"))
}

/// Lifts this process's open-file limit to its hard limit: the burst holds
/// `count` sockets at once.
pub(crate) fn raise_open_files(count: usize) -> Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).context("raising the open-file limit")?;
    let have = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if have < count as u64 + 100 {
        bail!(
            "{count} connections need as many open files, and this process may open {have}: \
             raise the hard limit (`ulimit -Hn`, or LimitNOFILE= for a service)"
        );
    }
    Ok(())
}

/// The table of BENCHMARKS.md's "10,000 in flight" section.
pub fn markdown(report: &InFlightReport) -> String {
    let mb = |kb: u64| format!("{:.1} MiB", kb as f64 / 1024.0);
    let mut md = report.machine.run_line(&report.command);
    md.push_str(&format!(
        "{} invocations of `http-chaos` `/slow?ms={}` sent at once, each on its own connection, to `updraft up --instances-max {}` with nothing running.\n\n",
        report.count, report.sleep_ms, report.instances_max
    ));
    md.push_str("| measure | value |\n| --- | ---: |\n");
    let rows = [
        ("answered 200", format!("{} of {}", report.ok, report.count)),
        (
            "all sent (last connection opened)",
            format!("{:.0} ms", report.all_sent_ms),
        ),
        (
            "all admitted (last answer − sleep, an upper bound)",
            format!("{:.0} ms", report.all_admitted_ms),
        ),
        ("last answer", format!("{:.0} ms", report.last_answer_ms)),
        ("server RSS before", mb(report.rss_before.rss_kb)),
        ("server RSS at the peak", mb(report.rss_peak.rss_kb)),
        (
            "memory per in-flight instance (peak − before) ÷ count",
            format!("{:.1} KB", report.kb_per_instance),
        ),
        ("server RSS after the burst", mb(report.rss_after.rss_kb)),
    ];
    for (what, value) in rows {
        md.push_str(&format!("| {what} | {value} |\n"));
    }
    if !report.failures.is_empty() {
        md.push_str(&format!(
            "\nFailures (first {}): {}\n",
            report.failures.len(),
            report.failures.join("; ")
        ));
    }
    md
}
