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
//!
//! Batched: the same hello consumes the named queue `bench`
//! (`[[trigger]] queue`), and wrk publishes [`BATCH`] structured
//! CloudEvents per request (`application/cloudevents-batch+json`, one
//! durable commit each) over [`BATCH_CONNECTIONS`] connections; the clock
//! again stops when the queue is drained.
//!
//! Direct: the same batches to the queue `direct`, consumed by
//! `tests/guests/chain`, which exports `updraft:platform/handler` (so each
//! event goes straight to `handle` as a structured CloudEvent) and reuses
//! its instances; then again with [`BIG_BATCH`] events per request (the
//! most a batch may hold) over [`BIG_BATCH_CONNECTIONS`] connections.

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
/// Events per batched publish.
pub const BATCH: usize = 100;
/// Connections publishing batches: a few producers, each sending big requests.
pub const BATCH_CONNECTIONS: u32 = 4;
/// The queue the batched producers publish to.
const BATCH_QUEUE: &str = "bench";
/// The queue of the direct consumer.
const DIRECT_QUEUE: &str = "direct";
/// Events per request in the big batches: the most a batch may hold.
pub const BIG_BATCH: usize = 1000;
/// Connections publishing big batches.
pub const BIG_BATCH_CONNECTIONS: u32 = 2;
/// How long the queue may take to drain after the load stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the drain is checked: a look at `GET /v1/queues` takes the
/// queue index's lock, so polling faster slows what it measures (by ~2% at
/// 5 ms), for at most this much more time counted.
const DRAIN_POLL: Duration = Duration::from_millis(20);

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
    /// Batched: events published (durably) during the load.
    pub batch_published: u64,
    /// Batched: events accepted per second while the load ran.
    pub batch_publish_per_s: f64,
    /// Batched: published events over the time until the queue drained.
    pub batch_events_per_s: f64,
    /// The same, to the direct consumer.
    #[serde(default)]
    pub direct_events_per_s: f64,
    /// Big batches to the direct consumer.
    #[serde(default)]
    pub direct_big_events_per_s: f64,
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
    pub batch: usize,
    pub batch_connections: u32,
    pub batch_events_per_s: f64,
    #[serde(default)]
    pub direct_events_per_s: f64,
    #[serde(default)]
    pub big_batch: usize,
    #[serde(default)]
    pub big_batch_connections: u32,
    #[serde(default)]
    pub direct_big_events_per_s: f64,
}

/// wrk posts with the admin key; the `done` hook is the usual one.
pub(crate) fn script(key: &str) -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Authorization\"] = \"Bearer {key}\"\n{}",
        wrk::SCRIPT
    )
}

/// The batched producers' script: every request publishes the same `n`
/// events (their ids repeat; the queue gives each a new message).
fn batch_script(key: &str, n: usize) -> String {
    let events: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({"specversion": "1.0", "id": format!("bench-{i}"),
                "source": "/bench", "type": "bench.event", "data": {"n": i}})
        })
        .collect();
    let body = serde_json::to_string(&events).unwrap_or_default();
    format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Authorization\"] = \"Bearer {key}\"\n\
         wrk.headers[\"Content-Type\"] = \"application/cloudevents-batch+json\"\n\
         wrk.body = [==[{body}]==]\n{}",
        wrk::SCRIPT
    )
}

pub fn measure(
    updraft_bin: &Path,
    wrk_bin: &Path,
    scratch: &Path,
    hello: &[u8],
    chain: &[u8],
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
    let batch_path = scratch.join("events-batch.lua");
    std::fs::write(&batch_path, batch_script(key, BATCH))
        .context("writing the batch wrk script")?;
    let big_batch_path = scratch.join("events-big-batch.lua");
    std::fs::write(&big_batch_path, batch_script(key, BIG_BATCH))
        .context("writing the big batch wrk script")?;
    for queue in [BATCH_QUEUE, DIRECT_QUEUE] {
        let created = http::send(
            endpoint,
            &http::Request {
                method: "PUT",
                path: &format!("/v1/queues/{queue}"),
                content_type: Some("application/json"),
                body: br#"{"batch_size": 16}"#,
            },
            http::CONTROL_TIMEOUT,
        )?;
        if created.status != 200 && created.status != 201 {
            bail!("creating queue {queue}: {}", created.text());
        }
    }
    updraft::deploy_manifest(
        endpoint,
        "consumer",
        &format!("name = \"consumer\"\n[[trigger]]\nqueue = \"{BATCH_QUEUE}\"\n"),
        hello,
    )?;
    updraft::deploy_manifest(
        endpoint,
        "direct-consumer",
        &format!(
            "name = \"direct-consumer\"\ninstance_reuse_max = 1000000\n\
             [[trigger]]\nqueue = \"{DIRECT_QUEUE}\"\n[env]\nNAME = \"direct\"\n"
        ),
        chain,
    )?;
    let publish_url = endpoint.url(&format!("/v1/publish/{BATCH_QUEUE}"));
    let direct_url = endpoint.url(&format!("/v1/publish/{DIRECT_QUEUE}"));
    let sync_url = endpoint.url("/v1/functions/hello/invoke");
    let async_url = endpoint.url("/v1/functions/hello/invoke?mode=async");
    // Warm both paths (compiled code, the queue's first commits).
    wrk::run(wrk_bin, &script_path, &sync_url, CONNECTIONS, 1)?;
    wrk::run(wrk_bin, &script_path, &async_url, CONNECTIONS, 1)?;
    drain(endpoint)?;
    wrk::run(wrk_bin, &batch_path, &publish_url, BATCH_CONNECTIONS, 1)?;
    drain_queue(endpoint, BATCH_QUEUE)?;
    wrk::run(wrk_bin, &batch_path, &direct_url, BATCH_CONNECTIONS, 1)?;
    drain_queue(endpoint, DIRECT_QUEUE)?;
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
        eprintln!("    round {}: batched publish", round + 1);
        let batched = |script: &Path, url: &str, queue: &str, connections: u32, n: usize| {
            let started = Instant::now();
            let point = wrk::run(wrk_bin, script, url, connections, plan.duration_s)?;
            drain_queue(endpoint, queue)?;
            let published = point.requests * n as u64;
            let per_s = published as f64 / started.elapsed().as_secs_f64();
            anyhow::Ok((point, published, per_s))
        };
        let (batches, batch_published, batch_events_per_s) = batched(
            &batch_path,
            &publish_url,
            BATCH_QUEUE,
            BATCH_CONNECTIONS,
            BATCH,
        )?;
        eprintln!(
            "    round {}: batched publish to the direct consumer",
            round + 1
        );
        let (direct, _, direct_events_per_s) = batched(
            &batch_path,
            &direct_url,
            DIRECT_QUEUE,
            BATCH_CONNECTIONS,
            BATCH,
        )?;
        let (direct_big, _, direct_big_events_per_s) = batched(
            &big_batch_path,
            &direct_url,
            DIRECT_QUEUE,
            BIG_BATCH_CONNECTIONS,
            BIG_BATCH,
        )?;
        for point in [&sync, &accepted, &batches, &direct, &direct_big] {
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
            batch_published,
            batch_publish_per_s: batches.rps * BATCH as f64,
            batch_events_per_s,
            direct_events_per_s,
            direct_big_events_per_s,
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
        batch: BATCH,
        batch_connections: BATCH_CONNECTIONS,
        batch_events_per_s: of(|r| r.batch_events_per_s),
        direct_events_per_s: of(|r| r.direct_events_per_s),
        big_batch: BIG_BATCH,
        big_batch_connections: BIG_BATCH_CONNECTIONS,
        direct_big_events_per_s: of(|r| r.direct_big_events_per_s),
        rounds,
    })
}

/// Waits until hello's async queue is empty and nothing runs.
pub(crate) fn drain(endpoint: Endpoint) -> Result<()> {
    drain_function(endpoint, "hello")
}

/// Waits until the async queue of function `name` is empty and nothing
/// of it runs.
pub(crate) fn drain_function(endpoint: Endpoint, name: &str) -> Result<()> {
    drain_entry(endpoint, "functions", "function", name)
}

/// Async calls of function `name` waiting or running.
pub(crate) fn unfinished(endpoint: Endpoint, name: &str) -> Result<u64> {
    let entry = queue_entry(endpoint, "functions", "function", name)?;
    Ok(entry["depth"].as_u64().unwrap_or(0) + entry["in_flight"].as_u64().unwrap_or(0))
}

/// The entry of `list` in `GET /v1/queues` whose `key` is `name` (null if
/// none).
fn queue_entry(endpoint: Endpoint, list: &str, key: &str, name: &str) -> Result<serde_json::Value> {
    let response = http::send(
        endpoint,
        &http::Request::get("/v1/queues"),
        http::CONTROL_TIMEOUT,
    )?;
    let queues: serde_json::Value =
        serde_json::from_slice(&response.body).context("GET /v1/queues")?;
    Ok(queues[list]
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e[key] == name))
        .cloned()
        .unwrap_or_default())
}

/// Waits until a named queue is empty and nothing of it runs.
fn drain_queue(endpoint: Endpoint, queue: &str) -> Result<()> {
    drain_entry(endpoint, "queues", "name", queue)
}

/// Polls `GET /v1/queues` until the entry of `list` whose `key` is `name`
/// has nothing waiting or in flight; dead letters are an error.
fn drain_entry(endpoint: Endpoint, list: &str, key: &str, name: &str) -> Result<()> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let entry = queue_entry(endpoint, list, key, name)?;
        if entry["depth"] == 0 && entry["in_flight"] == 0 {
            if entry["dead_letters"].as_u64().is_some_and(|n| n > 0) {
                bail!("async calls of {name} failed: {entry}");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} did not drain: {entry}");
        }
        std::thread::sleep(DRAIN_POLL);
    }
}
