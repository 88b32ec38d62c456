//! Async events end to end (issue 5): how many async invocations per second
//! Updraft accepts durably *and* runs to completion, side by side with the
//! same function invoked synchronously through the same API.
//!
//! wrk posts `POST /v1/functions/hello/invoke?mode=async` for the point's
//! duration; each 202 means the call is fsynced in the queue. The clock
//! stops when the function's queue is empty with nothing in flight, so the
//! rate counts every accepted call run and acknowledged. The baseline is
//! the same wrk load without `mode=async`: one synchronous invocation per
//! request, nothing stored.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::http::{self, Endpoint};
use crate::stats::median;
use crate::updraft;
use crate::wrk;

/// Connections wrk keeps open.
pub const CONNECTIONS: u32 = 64;
/// How long the queue may take to drain after the load stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// How much the phase measures.
#[derive(Debug, Clone)]
pub struct EventsPlan {
    pub duration_s: u64,
    pub rounds: u32,
}

/// One round of each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsRound {
    /// Synchronous invocations per second through the API (the baseline).
    pub sync_rps: f64,
    /// Async calls accepted (202) during the load.
    pub accepted: u64,
    /// 202s per second while the load ran.
    pub accept_rps: f64,
    pub accept_p50_us: f64,
    pub accept_p99_us: f64,
    /// From the first request to the queue drained.
    pub end_to_end_ms: f64,
    /// `accepted` over `end_to_end_ms`.
    pub events_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsReport {
    pub connections: u32,
    pub duration_s: u64,
    pub rounds: Vec<EventsRound>,
    /// Medians over the rounds.
    pub sync_rps: f64,
    pub events_per_s: f64,
    pub accept_p50_us: f64,
}

/// wrk posts with the admin key; the `done` hook is the usual one.
fn script(key: &str) -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Authorization\"] = \"Bearer {key}\"\n{}",
        wrk::SCRIPT
    )
}

pub fn measure(
    updraft_bin: &Path,
    wrk_bin: &Path,
    scratch: &Path,
    hello: &[u8],
    plan: &EventsPlan,
) -> Result<EventsReport> {
    let server = updraft::start(
        updraft_bin,
        &scratch.join("events-data"),
        "127.0.0.1:0",
        scratch,
    )?
    .server;
    let endpoint = server.endpoint;
    updraft::deploy(endpoint, "hello", "/hello", hello)?;
    let key = endpoint
        .bearer
        .context("the server's admin key was not read")?;
    let script_path = scratch.join("events.lua");
    std::fs::write(&script_path, script(key)).context("writing the events wrk script")?;
    let sync_url = endpoint.url("/v1/functions/hello/invoke");
    let async_url = endpoint.url("/v1/functions/hello/invoke?mode=async");
    // Warm both paths (compiled code, the queue's first commits).
    wrk::run(wrk_bin, &script_path, &sync_url, CONNECTIONS, 1)?;
    wrk::run(wrk_bin, &script_path, &async_url, CONNECTIONS, 1)?;
    drain(endpoint)?;
    let mut rounds = Vec::new();
    for round in 0..plan.rounds {
        eprintln!("    round {}: sync, then async", round + 1);
        let sync = wrk::run(
            wrk_bin,
            &script_path,
            &sync_url,
            CONNECTIONS,
            plan.duration_s,
        )?;
        let started = Instant::now();
        let accepted = wrk::run(
            wrk_bin,
            &script_path,
            &async_url,
            CONNECTIONS,
            plan.duration_s,
        )?;
        drain(endpoint)?;
        let elapsed = started.elapsed();
        for point in [&sync, &accepted] {
            if point.errors.total() > 0 {
                bail!("events load had errors: {:?}", point.errors);
            }
        }
        rounds.push(EventsRound {
            sync_rps: sync.rps,
            accepted: accepted.requests,
            accept_rps: accepted.rps,
            accept_p50_us: accepted.p50_us,
            accept_p99_us: accepted.p99_us,
            end_to_end_ms: elapsed.as_secs_f64() * 1e3,
            events_per_s: accepted.requests as f64 / elapsed.as_secs_f64(),
        });
    }
    server.stop()?;
    let of = |f: fn(&EventsRound) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    Ok(EventsReport {
        connections: CONNECTIONS,
        duration_s: plan.duration_s,
        sync_rps: of(|r| r.sync_rps),
        events_per_s: of(|r| r.events_per_s),
        accept_p50_us: of(|r| r.accept_p50_us),
        rounds,
    })
}

/// Waits until hello's async queue is empty and nothing runs.
fn drain(endpoint: Endpoint) -> Result<()> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let response = http::send(
            endpoint,
            &http::Request::get("/v1/queues"),
            http::CONTROL_TIMEOUT,
        )?;
        let queues: serde_json::Value =
            serde_json::from_slice(&response.body).context("GET /v1/queues")?;
        let hello = queues["functions"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["function"] == "hello"))
            .cloned()
            .unwrap_or_default();
        if hello["depth"] == 0 && hello["in_flight"] == 0 {
            if hello["dead_letters"] != 0 {
                bail!("async calls of hello failed: {hello}");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("hello's async queue did not drain: {hello}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
