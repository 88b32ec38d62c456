//! Fair CPU (issue 21): one tenant's light function under a steady, paced
//! load while another tenant's invocations spin until their timeout or blow
//! up their memory, in one run on three servers: the default background
//! lane (a thread per core but one), the lane on every core
//! (`background_threads` = cores), and one lane for all
//! (`[cpu] background_lane = false`).
//!
//! The light load is open loop: request `i` is due at `start + i / rate`,
//! and its latency runs from when it was due, not from when it was sent,
//! so a server that stalls is charged for every request it held back
//! (no coordinated omission). Each request is a new connection, as in the
//! cold paths.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::http::{self, Endpoint, Request};
use crate::report::{Machine, Mode};
use crate::run::repo_root;
use crate::stats::Summary;
use crate::updraft;

pub const MARKER_START: &str = "<!-- fairness:start -->";
pub const MARKER_END: &str = "<!-- fairness:end -->";

/// Invocations of the hog tenant at once: the twenty.
const HOGS: usize = 20;
/// Memory limit of each bomb, the 128 MiB.
const BOMB_MEMORY_MB: u32 = 128;
/// Threads sending the light load: enough that answers 300 ms slow at
/// 100 requests/s hold no request back.
const SENDERS: usize = 32;
/// Slowest light requests kept per row, to see when the tail happened.
const SLOWEST_KEPT: usize = 10;
/// Time for the hogs that are still running when the window ends.
const HOG_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Options {
    pub mode: Mode,
    pub updraft: Option<PathBuf>,
    pub guests: Option<PathBuf>,
    /// `[cpu] background_threads` of the two-lane server; the server's
    /// default when `None`.
    pub background_threads: Option<usize>,
    pub command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FairnessReport {
    pub command: String,
    pub machine: Machine,
    /// Light requests a second.
    pub rate_per_s: u32,
    /// Length of each row's window.
    pub window_s: u64,
    pub hogs: usize,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// "two lanes" (the default) or "one lane".
    pub lanes: String,
    /// "idle", "20 spinning" or "20 memory bombs".
    pub load: String,
    /// The light function's latency, from when each request was due.
    pub light: Option<Summary>,
    /// Light requests that did not answer 200 (or failed to connect).
    pub light_errors: u64,
    /// Hog invocations finished in the window, by status.
    pub hog_statuses: BTreeMap<u16, u64>,
    /// The slowest light requests: when each was due (ms into the
    /// window) and its latency (µs), slowest first.
    pub slowest: Vec<(f64, f64)>,
}

impl Row {
    fn p99(&self) -> Option<f64> {
        self.light.map(|s| s.p99_us)
    }
}

#[derive(Clone, Copy)]
enum Hogs {
    None,
    Spin,
    Bomb,
}

impl Hogs {
    fn label(self) -> String {
        match self {
            Hogs::None => "idle".to_string(),
            Hogs::Spin => format!("{HOGS} spinning"),
            Hogs::Bomb => format!("{HOGS} memory bombs"),
        }
    }
}

pub fn run(options: &Options) -> Result<FairnessReport> {
    let (bin, guests) = updraft::locate(options.updraft.as_ref(), options.guests.as_ref())?;
    let hello = updraft::read_guest(&guests.join("hello-rust.wasm"))?;
    let spin = updraft::read_guest(&guests.join("loop.wasm"))?;
    let bomb = updraft::read_guest(&guests.join("membomb.wasm"))?;
    let (window, rate) = match options.mode {
        Mode::Full => (Duration::from_secs(15), 200),
        Mode::Quick => (Duration::from_secs(5), 100),
        Mode::Tiny => (Duration::from_secs(1), 50),
    };
    let machine = Machine::detect(&repo_root());
    let scratch = tempfile::Builder::new()
        .prefix("updraft-fairness-")
        .tempdir()
        .context("cannot create a scratch dir")?;
    let mut rows = Vec::new();
    // The default (a core kept for the foreground), then a background
    // thread on every core (where that differs), then one lane: `[cpu]` of
    // each.
    let cores = machine.cores;
    let mut servers = vec![(
        "two lanes".to_string(),
        match options.background_threads {
            Some(threads) => format!("background_threads = {threads}\n"),
            None => String::new(),
        },
    )];
    if cores > 1 {
        servers.push((
            format!("two lanes, {cores} background threads"),
            format!("background_threads = {cores}\n"),
        ));
    }
    servers.push((
        "one lane".to_string(),
        "background_lane = false\n".to_string(),
    ));
    for (n, (lanes, cpu)) in servers.into_iter().enumerate() {
        let dir = scratch.path().join(format!("server-{n}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("updraft.toml");
        std::fs::write(&config, format!("[cpu]\n{cpu}"))?;
        let config = config.to_string_lossy().into_owned();
        let server = updraft::start_with(
            &bin,
            &dir.join("data"),
            "127.0.0.1:0",
            &dir,
            &["--config", &config],
        )?
        .server;
        let admin = server.endpoint;
        let light = with_key(admin, "light")?;
        let hog = with_key(admin, "hogs")?;
        updraft::deploy(light, "hello", "/hello", &hello)?;
        let spin_timeout = window + Duration::from_millis(500);
        updraft::deploy_manifest(
            hog,
            "spin",
            &format!(
                "name = \"spin\"\ntimeout_ms = {}\n",
                spin_timeout.as_millis()
            ),
            &spin,
        )?;
        updraft::deploy_manifest(
            hog,
            "bomb",
            &format!("name = \"bomb\"\nmemory_mb = {BOMB_MEMORY_MB}\n"),
            &bomb,
        )?;
        // Warm: the first request maps the code.
        updraft::get_hello(light, "/~light/hello")?;
        for hogs in [Hogs::None, Hogs::Spin, Hogs::Bomb] {
            let row = measure(light, hog, hogs, window, rate)?;
            eprintln!(
                "    {lanes:<32} {:<17} p50 {:>8.0} µs  p99 {:>8.0} µs  errors {}  hogs {:?}",
                row.load,
                row.light.map_or(0.0, |s| s.p50_us),
                row.p99().unwrap_or(0.0),
                row.light_errors,
                row.hog_statuses
            );
            rows.push(Row {
                lanes: lanes.clone(),
                ..row
            });
        }
        server.stop()?;
    }
    Ok(FairnessReport {
        command: options.command.clone(),
        machine,
        rate_per_s: rate,
        window_s: window.as_secs(),
        hogs: HOGS,
        rows,
    })
}

/// A new key for `tenant` (which makes the tenant), from the admin endpoint.
fn with_key(admin: Endpoint, tenant: &str) -> Result<Endpoint> {
    let body = format!("{{\"tenant\":\"{tenant}\"}}");
    let response = http::send(
        admin,
        &Request {
            method: "POST",
            path: "/v1/keys",
            content_type: Some("application/json"),
            body: body.as_bytes(),
        },
        http::CONTROL_TIMEOUT,
    )?;
    if response.status != 201 {
        bail!("creating a key for {tenant}: {}", response.text());
    }
    let value: serde_json::Value = serde_json::from_slice(&response.body)?;
    let Some(key) = value.get("key").and_then(serde_json::Value::as_str) else {
        bail!("creating a key for {tenant} answered {}", response.text());
    };
    Ok(Endpoint {
        bearer: Some(Box::leak(key.to_string().into_boxed_str())),
        ..admin
    })
}

/// One row: the hogs started, the light load paced through the window,
/// then the hogs waited for.
fn measure(light: Endpoint, hog: Endpoint, hogs: Hogs, window: Duration, rate: u32) -> Result<Row> {
    let stop = Arc::new(AtomicBool::new(false));
    let path = match hogs {
        Hogs::None => None,
        Hogs::Spin => Some("/v1/functions/spin/invoke"),
        Hogs::Bomb => Some("/v1/functions/bomb/invoke"),
    };
    let workers: Vec<_> = path
        .into_iter()
        .flat_map(|path| std::iter::repeat_n(path, HOGS))
        .map(|path| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut statuses = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let request = Request {
                        method: "POST",
                        path,
                        content_type: None,
                        body: &[],
                    };
                    let status = http::send(hog, &request, HOG_TIMEOUT).map_or(0, |r| r.status);
                    *statuses.entry(status).or_insert(0u64) += 1;
                }
                statuses
            })
        })
        .collect();
    let (mut timed, light_errors) = paced(light, "/~light/hello", window, rate);
    let latencies: Vec<Duration> = timed.iter().map(|(_, latency)| *latency).collect();
    timed.sort_by_key(|t| std::cmp::Reverse(t.1));
    let slowest = timed
        .iter()
        .take(SLOWEST_KEPT)
        .map(|(due, latency)| {
            (
                (due.as_secs_f64() * 1e4).round() / 10.0,
                (latency.as_secs_f64() * 1e7).round() / 10.0,
            )
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    let mut hog_statuses = BTreeMap::new();
    for worker in workers {
        let statuses = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a hog thread panicked"))?;
        for (status, n) in statuses {
            *hog_statuses.entry(status).or_insert(0) += n;
        }
    }
    Ok(Row {
        lanes: String::new(),
        load: hogs.label(),
        light: Summary::of(&latencies),
        light_errors,
        hog_statuses,
        slowest,
    })
}

/// An answered request: when it was due, from the start, and its latency.
type Timed = (Duration, Duration);

/// `GET path` at `rate` a second for `window`, each timed from when it was
/// due. [`SENDERS`] threads take the requests in turn, so a slow answer
/// delays no later request unless all of them are waiting.
fn paced(endpoint: Endpoint, path: &'static str, window: Duration, rate: u32) -> (Vec<Timed>, u64) {
    let interval = Duration::from_secs(1) / rate.max(1);
    let count = (window.as_secs_f64() * f64::from(rate)) as u32;
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return (latencies, errors);
                    }
                    let due = start + interval * i;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    match http::send(endpoint, &Request::get(path), http::CONTROL_TIMEOUT) {
                        Ok(response) if response.status == 200 => {
                            latencies.push((due - start, due.elapsed()));
                        }
                        _ => errors += 1,
                    }
                }
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::with_capacity(count as usize), 0);
    for sender in senders {
        // A sender that panicked lost its requests: they count as errors.
        match sender.join() {
            Ok((mine, failed)) => {
                latencies.extend(mine);
                errors += failed;
            }
            Err(_) => errors += 1,
        }
    }
    (latencies, errors)
}

/// The tables of BENCHMARKS.md's "Fair CPU" section.
pub fn markdown(report: &FairnessReport) -> String {
    let mut md = report.machine.run_line(&report.command);
    md.push_str(&format!(
        "Tenant `light`'s hello at {} requests/s (open loop, a connection each) for {} s per row, beside {} invocations at once of tenant `hogs`.\n\n",
        report.rate_per_s, report.window_s, report.hogs
    ));
    md.push_str("| lanes | hogs | light p50 | light p99 | p99 ÷ idle p99 | light errors | hog invocations (status: count) |\n");
    md.push_str("| --- | --- | ---: | ---: | ---: | ---: | --- |\n");
    for row in &report.rows {
        let idle = report
            .rows
            .iter()
            .find(|r| r.lanes == row.lanes && r.load == "idle")
            .and_then(Row::p99);
        let ratio = match (row.p99(), idle) {
            (Some(p99), Some(idle)) if idle > 0.0 => format!("{:.2}×", p99 / idle),
            _ => "—".to_string(),
        };
        let statuses = if row.hog_statuses.is_empty() {
            "—".to_string()
        } else {
            row.hog_statuses
                .iter()
                .map(|(status, n)| format!("{status}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let us = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.0} µs"));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {ratio} | {} | {statuses} |\n",
            row.lanes,
            row.load,
            us(row.light.map(|s| s.p50_us)),
            us(row.p99()),
            row.light_errors,
        ));
    }
    md
}
