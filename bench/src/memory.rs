//! Resident memory of `updraft up`: per idle deployed function (K copies of
//! hello) and per in-flight instance (M slow requests to http-chaos held open
//! inside the guest). Read from `/proc/PID/status`, so it is what the kernel
//! charges the process, allocator slack and mapped artifacts included.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::http::{self, Endpoint, Request};
use crate::report::Memory;
use crate::servers::{self, Rss};
use crate::updraft::{self, Unload};

/// Time for the server to settle (freed memory returned, background log
/// writes done) before a reading that serves as a baseline.
const SETTLE: Duration = Duration::from_millis(300);
/// How often RSS is sampled while the slow requests are in flight.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct MemoryPlan {
    pub idle_functions: usize,
    pub in_flight: usize,
    pub slow_ms: u64,
}

/// Runs on its own server and data dir, so earlier phases leave nothing in it.
pub fn measure(
    bin: &Path,
    data_dir: &Path,
    scratch: &Path,
    hello: &[u8],
    chaos: &[u8],
    plan: &MemoryPlan,
) -> Result<Memory> {
    let started = updraft::start(bin, data_dir, "127.0.0.1:0", scratch)?;
    let server = started.server;
    let endpoint = server.endpoint;
    let pid = server.pid().ok_or_else(|| anyhow!("updraft has no pid"))?;
    // One function deployed and served first, so the baseline already holds
    // the engine, the pool and the route table.
    updraft::deploy(endpoint, "hello", "/hello", hello)?;
    updraft::get_hello(endpoint, "/hello")?;
    std::thread::sleep(SETTLE);
    let rss_base = servers::rss(pid)?;

    let k = plan.idle_functions.max(1);
    eprintln!("    deploying {k} idle copies of hello");
    for i in 0..k {
        updraft::deploy(endpoint, &format!("idle-{i}"), &format!("/idle-{i}"), hello)?;
    }
    std::thread::sleep(SETTLE);
    let rss_deployed = servers::rss(pid)?;
    let kb_per_idle_function = per(rss_deployed.rss_kb, rss_base.rss_kb, k);

    let mut rss_unloaded = None;
    for i in 0..k {
        match updraft::unload(endpoint, &format!("idle-{i}"))? {
            Unload::Done(_) => {}
            Unload::Unsupported(_) => break,
        }
        if i + 1 == k {
            std::thread::sleep(SETTLE);
            rss_unloaded = Some(servers::rss(pid)?);
        }
    }
    let kb_per_unloaded_function = rss_unloaded.map(|rss| per(rss.rss_kb, rss_base.rss_kb, k));

    let m = plan.in_flight.max(1);
    updraft::deploy_chaos(endpoint, chaos)?;
    std::thread::sleep(SETTLE);
    let rss_before = servers::rss(pid)?;
    eprintln!("    {m} requests in flight for {} ms", plan.slow_ms);
    let (peak, ok, elapsed) = in_flight(endpoint, pid, m, plan.slow_ms)?;
    server.stop()?;
    Ok(Memory {
        idle_functions: k,
        rss_base,
        rss_deployed,
        kb_per_idle_function,
        rss_unloaded,
        kb_per_unloaded_function,
        in_flight: m,
        slow_ms: plan.slow_ms,
        rss_before_in_flight: rss_before,
        rss_in_flight_peak: peak,
        kb_per_in_flight_instance: per(peak.rss_kb, rss_before.rss_kb, m),
        in_flight_ok: ok,
        in_flight_elapsed_ms: elapsed.as_millis() as u64,
    })
}

/// KB per item, to 0.1 KB; negative when memory went down (it can, after a
/// trim).
fn per(after_kb: u64, before_kb: u64, items: usize) -> f64 {
    let kb = (after_kb as f64 - before_kb as f64) / items as f64;
    (kb * 10.0).round() / 10.0
}

/// Sends `m` slow requests at once, each on its own connection, and samples
/// RSS until they are all answered; returns the peak sample, how many
/// answered 200 and the burst's wall time.
fn in_flight(
    endpoint: Endpoint,
    pid: u32,
    m: usize,
    slow_ms: u64,
) -> Result<(Rss, usize, Duration)> {
    let path = format!("/chaos/slow?ms={slow_ms}");
    let timeout = Duration::from_millis(slow_ms) * 5 + http::CONTROL_TIMEOUT;
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..m)
            .map(|_| {
                let path = &path;
                scope.spawn(move || http::send(endpoint, &Request::get(path), timeout))
            })
            .collect();
        let mut peak = servers::rss(pid)?;
        while !handles.iter().all(|h| h.is_finished()) {
            let sample = servers::rss(pid)?;
            if sample.rss_kb > peak.rss_kb {
                peak = sample;
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
        let elapsed = started.elapsed();
        let mut ok = 0;
        for handle in handles {
            let response = handle
                .join()
                .map_err(|_| anyhow!("a slow-request thread panicked"))?
                .context("a slow request failed")?;
            ok += usize::from(response.status == 200);
        }
        Ok((peak, ok, elapsed))
    })
}
