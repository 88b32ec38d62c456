//! Overload (issue 21): a function with a fixed CPU cost driven open loop
//! at 1×, 2×, 3× and 4× the rate the server sustains, on two servers in one
//! run: load shedding off (`[cpu] shed_load = false`) and on (the default).
//!
//! The sustainable rate is measured first, on the server without
//! shedding, closed loop: [`CLOSED_LOOP`] clients, each sending its next
//! request when the last one answers. Both servers get the same rates. Each
//! step then sends requests at a fixed rate whatever the answers (request
//! `i` is due at `start + i / rate`, timed from then, so a server that
//! stalls is charged for every request it held back), each on a new
//! connection. Goodput is the requests answered 200 per second of the
//! step; peak goodput is the best of the closed loop and the steps.
//!
//! When a step's sends end, a probe of the same function at
//! [`PROBE_RATE`] measures recovery: the time from the load's end to the
//! first probe due after which every probe answers 200 within twice the
//! idle p99 (the same probe measured before any load). The server's RSS is
//! sampled throughout.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::http::Endpoint;
use crate::inflight::{invoke, raise_open_files};
use crate::report::{Machine, Mode};
use crate::run::repo_root;
use crate::servers;
use crate::stats::Summary;
use crate::updraft;

pub const MARKER_START: &str = "<!-- overload:start -->";
pub const MARKER_END: &str = "<!-- overload:end -->";

/// Rounds of `http-chaos`'s `/cpu` per request: a few milliseconds of
/// CPU, past the foreground's 1 ms, as a real API call that computes.
const CPU_ROUNDS: u64 = 3_000_000;
/// The function's `timeout_ms`: what a web request may take.
const TIMEOUT_MS: u64 = 2_000;
/// Clients of the closed loop that finds the sustainable rate.
const CLOSED_LOOP: usize = 8;
/// Multiples of the sustainable rate, one step each.
const MULTIPLES: [u32; 4] = [1, 2, 3, 4];
/// Probe requests a second, during the idle baseline and after each step.
const PROBE_RATE: u32 = 20;
/// A probe this many times the idle p99 (or slower) is not recovered.
const RECOVERED_WITHIN: f64 = 2.0;
/// Longest any request may take before it counts as failed: past the
/// function's timeout and any queueing the server allows.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Loopback source addresses the load comes from, so no one client
/// address reaches the server's per-client connection cap (2,048).
const SOURCES: u8 = 16;
/// How often the server's RSS is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

pub struct Options {
    pub mode: Mode,
    pub updraft: Option<PathBuf>,
    pub guests: Option<PathBuf>,
    pub command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverloadReport {
    pub command: String,
    pub machine: Machine,
    pub cpu_rounds: u64,
    pub timeout_ms: u64,
    /// Length of each step's load.
    pub step_s: f64,
    /// Length of each step's recovery probe.
    pub probe_s: f64,
    pub servers: Vec<ServerRun>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerRun {
    /// "shedding off" or "shedding on".
    pub shedding: String,
    /// Whether it measured the sustainable rate (the first server).
    pub measured_sustainable: bool,
    /// The probe's latency on the idle server.
    pub idle: Option<Summary>,
    /// Requests a second answered by the closed loop: the 1× rate.
    pub sustainable_per_s: f64,
    /// The best goodput of the closed loop and the steps.
    pub peak_goodput_per_s: f64,
    pub rss_idle_kb: u64,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub multiple: u32,
    pub offered_per_s: f64,
    pub sent: usize,
    pub ok: usize,
    /// Answered 429 (shed) or 503 (no slot).
    pub shed: usize,
    /// Any other answer, or none within the client's timeout.
    pub failed: usize,
    pub goodput_per_s: f64,
    /// Latency of the 200s, from when each was due.
    pub ok_latency: Option<Summary>,
    /// The server's largest RSS from the step's start to its last answer.
    pub rss_peak_kb: u64,
    /// From the load's end to the first probe from which every probe was
    /// recovered; `None` when the probe window ended first.
    pub recovered_ms: Option<f64>,
}

impl ServerRun {
    fn goodput_of_peak(&self, step: &Step) -> f64 {
        if self.peak_goodput_per_s > 0.0 {
            step.goodput_per_s / self.peak_goodput_per_s
        } else {
            0.0
        }
    }
}

pub fn run(options: &Options) -> Result<OverloadReport> {
    let (bin, guests) = updraft::locate(options.updraft.as_ref(), options.guests.as_ref())?;
    let chaos = updraft::read_guest(&guests.join("http-chaos.wasm"))?;
    let (step, probe, closed) = match options.mode {
        Mode::Full => (
            Duration::from_secs(10),
            Duration::from_secs(3),
            Duration::from_secs(5),
        ),
        Mode::Quick => (
            Duration::from_secs(3),
            Duration::from_secs(2),
            Duration::from_secs(2),
        ),
        Mode::Tiny => (
            Duration::from_millis(500),
            Duration::from_millis(500),
            Duration::from_millis(500),
        ),
    };
    raise_open_files(CLOSED_LOOP)?;
    let machine = Machine::detect(&repo_root());
    let scratch = tempfile::Builder::new()
        .prefix("updraft-overload-")
        .tempdir()
        .context("cannot create a scratch dir")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the client's runtime")?;
    let mut servers = Vec::new();
    let mut sustainable = None;
    for (n, (shedding, cpu)) in [("shedding off", "shed_load = false\n"), ("shedding on", "")]
        .into_iter()
        .enumerate()
    {
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
        let pid = server.pid().ok_or_else(|| anyhow!("updraft has no pid"))?;
        updraft::deploy_manifest(
            server.endpoint,
            "cpu",
            &format!("name = \"cpu\"\nroute = \"/cpu/...\"\ntimeout_ms = {TIMEOUT_MS}\n"),
            &chaos,
        )?;
        let sampler = Sampler::start(pid);
        let load = Load {
            server: server.endpoint,
            path: format!("/cpu/cpu?n={CPU_ROUNDS}"),
            pid,
        };
        let run = runtime.block_on(load.run(shedding, step, probe, closed, sustainable, &sampler));
        sampler.stop();
        server.stop()?;
        let run = run?;
        sustainable = Some(run.sustainable_per_s);
        servers.push(run);
    }
    Ok(OverloadReport {
        command: options.command.clone(),
        machine,
        cpu_rounds: CPU_ROUNDS,
        timeout_ms: TIMEOUT_MS,
        step_s: step.as_secs_f64(),
        probe_s: probe.as_secs_f64(),
        servers,
    })
}

/// The server's RSS, sampled on a thread of its own.
struct Sampler {
    samples: Arc<std::sync::Mutex<Vec<(Instant, u64)>>>,
    done: Arc<AtomicBool>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        {
            let (samples, done) = (samples.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if let Ok(rss) = servers::rss(pid) {
                        let mut samples = samples.lock().unwrap_or_else(|e| e.into_inner());
                        samples.push((Instant::now(), rss.rss_kb));
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            });
        }
        Sampler { samples, done }
    }

    /// The largest sample taken from `from` to `to`.
    fn peak(&self, from: Instant, to: Instant) -> u64 {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .iter()
            .filter(|(at, _)| (from..=to).contains(at))
            .map(|(_, kb)| *kb)
            .max()
            .unwrap_or(0)
    }

    fn stop(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// One answered (or failed) request: when it was due and how it went.
#[derive(Clone, Copy)]
struct Outcome {
    due: Instant,
    latency: Duration,
    /// `None`: no HTTP answer within the client's timeout.
    status: Option<u16>,
}

struct Load {
    server: Endpoint,
    path: String,
    /// The server's process.
    pid: u32,
}

impl Load {
    async fn run(
        &self,
        shedding: &str,
        step: Duration,
        probe: Duration,
        closed: Duration,
        sustainable: Option<f64>,
        sampler: &Sampler,
    ) -> Result<ServerRun> {
        // Warm: the first request maps the code.
        self.send(Ipv4Addr::LOCALHOST).await?;
        let idle_probe = self.paced(PROBE_RATE.into(), probe, Instant::now()).await;
        let idle = Summary::of(&ok_latencies(&idle_probe));
        let threshold = idle
            .map(|s| Duration::from_secs_f64(s.p99_us * RECOVERED_WITHIN / 1e6))
            .ok_or_else(|| anyhow!("no probe answered 200 on the idle server"))?;
        let rss_idle_kb = servers::rss(self.pid)?.rss_kb;
        let measured_sustainable = sustainable.is_none();
        let sustainable = match sustainable {
            Some(rate) => rate,
            None => self.closed_loop(closed).await,
        };
        eprintln!(
            "    {shedding}: idle probe p99 {:.0} µs, sustainable {sustainable:.0} requests/s",
            idle.map_or(0.0, |s| s.p99_us)
        );
        let mut steps = Vec::new();
        for multiple in MULTIPLES {
            let rate = sustainable * f64::from(multiple);
            let start = Instant::now() + Duration::from_millis(10);
            let end = start + step;
            let (load, probes) = tokio::join!(
                self.paced(rate, step, start),
                self.paced(PROBE_RATE.into(), probe, end)
            );
            let last = load.iter().map(|o| o.due + o.latency).max().unwrap_or(end);
            let ok = ok_latencies(&load);
            let shed = load
                .iter()
                .filter(|o| matches!(o.status, Some(429 | 503)))
                .count();
            let recovered_ms = recovered(&probes, end, threshold).map(|d| d.as_secs_f64() * 1e3);
            let step = Step {
                multiple,
                offered_per_s: rate,
                sent: load.len(),
                ok: ok.len(),
                shed,
                failed: load.len() - ok.len() - shed,
                goodput_per_s: ok.len() as f64 / step.as_secs_f64(),
                ok_latency: Summary::of(&ok),
                rss_peak_kb: sampler.peak(start, last.max(end + probe)),
                recovered_ms,
            };
            eprintln!(
                "    {shedding}: {multiple}× ({rate:.0}/s) goodput {:.0}/s, 200 p99 {:.0} ms, shed {}, failed {}, RSS {:.0} MiB, recovered {}",
                step.goodput_per_s,
                step.ok_latency.map_or(0.0, |s| s.p99_us / 1e3),
                step.shed,
                step.failed,
                step.rss_peak_kb as f64 / 1024.0,
                recovered_ms.map_or("no".to_string(), |ms| format!("{ms:.0} ms")),
            );
            steps.push(step);
        }
        let peak = steps
            .iter()
            .map(|s| s.goodput_per_s)
            .fold(sustainable, f64::max);
        Ok(ServerRun {
            shedding: shedding.to_string(),
            measured_sustainable,
            idle,
            sustainable_per_s: sustainable,
            peak_goodput_per_s: peak,
            rss_idle_kb,
            steps,
        })
    }

    /// One request on a new connection from `source`: its status.
    async fn send(&self, source: Ipv4Addr) -> Result<u16> {
        let request = self.request();
        invoke(self.server.addr, source, &request).await
    }

    fn request(&self) -> Arc<[u8]> {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.path, self.server.addr
        );
        Arc::from(request.into_bytes())
    }

    /// Requests answered 200 a second by [`CLOSED_LOOP`] clients over `length`.
    async fn closed_loop(&self, length: Duration) -> f64 {
        let start = Instant::now();
        let clients: Vec<_> = (0..CLOSED_LOOP)
            .map(|_| {
                let (server, request) = (self.server.addr, self.request());
                tokio::spawn(async move {
                    let mut ok = 0u64;
                    while start.elapsed() < length {
                        if let Ok(Ok(200)) = tokio::time::timeout(
                            CLIENT_TIMEOUT,
                            invoke(server, Ipv4Addr::LOCALHOST, &request),
                        )
                        .await
                        {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let mut ok = 0;
        for client in clients {
            ok += client.await.unwrap_or(0);
        }
        ok as f64 / start.elapsed().as_secs_f64()
    }

    /// `rate` requests a second for `length` from `start`, open loop.
    async fn paced(&self, rate: f64, length: Duration, start: Instant) -> Vec<Outcome> {
        let count = (length.as_secs_f64() * rate) as usize;
        let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let request = self.request();
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let due = start + interval * i as u32;
            tokio::time::sleep_until(due.into()).await;
            let (server, request) = (self.server.addr, request.clone());
            let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(SOURCES)) as u8);
            tasks.push(tokio::spawn(async move {
                let status = tokio::time::timeout(CLIENT_TIMEOUT, invoke(server, source, &request))
                    .await
                    .ok()
                    .and_then(Result::ok);
                Outcome {
                    due,
                    latency: due.elapsed(),
                    status,
                }
            }));
        }
        let mut outcomes = Vec::with_capacity(count);
        for task in tasks {
            if let Ok(outcome) = task.await {
                outcomes.push(outcome);
            }
        }
        outcomes
    }
}

fn ok_latencies(outcomes: &[Outcome]) -> Vec<Duration> {
    outcomes
        .iter()
        .filter(|o| o.status == Some(200))
        .map(|o| o.latency)
        .collect()
}

/// From `end` to the due time of the first probe after which every probe
/// answered 200 within `threshold`; `None` if the last one did not.
fn recovered(probes: &[Outcome], end: Instant, threshold: Duration) -> Option<Duration> {
    let good = |o: &Outcome| o.status == Some(200) && o.latency <= threshold;
    let mut from = None;
    for probe in probes {
        match (good(probe), from) {
            (true, None) => from = Some(probe.due),
            (false, _) => from = None,
            (true, Some(_)) => {}
        }
    }
    from.map(|due| due.saturating_duration_since(end))
}

/// The tables of BENCHMARKS.md's "Overload" section.
pub fn markdown(report: &OverloadReport) -> String {
    let mut md = report.machine.run_line(&report.command);
    md.push_str(&format!(
        "`http-chaos` `/cpu?n={}` (`timeout_ms = {}`), open loop, a connection per request, {} s per step; probes at {PROBE_RATE}/s for {} s after each step. The sustainable rate (1×) is a closed loop of {CLOSED_LOOP} clients on the server without shedding; both servers get the same rates. Goodput: 200s a second; peak: the best of the closed loop and the server's steps. Recovered: from the load's end until every probe answers 200 within {RECOVERED_WITHIN}× the idle p99.\n\n",
        report.cpu_rounds, report.timeout_ms, report.step_s, report.probe_s
    ));
    md.push_str("| shedding | load | offered | goodput | ÷ peak | 200 p50 | 200 p99 | shed (429/503) | failed | RSS peak | p99 recovered after |\n");
    md.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for server in &report.servers {
        let closed_loop = match server.measured_sustainable {
            true => format!("{:.0}/s", server.sustainable_per_s),
            false => "—".to_string(),
        };
        md.push_str(&format!(
            "| {} | idle; closed loop | — | {closed_loop} | — | {} | {} | — | — | {:.0} MiB | — |\n",
            server.shedding,
            ms(server.idle.map(|s| s.p50_us)),
            ms(server.idle.map(|s| s.p99_us)),
            server.rss_idle_kb as f64 / 1024.0,
        ));
        for step in &server.steps {
            md.push_str(&format!(
                "| {} | {}× | {:.0}/s | {:.0}/s | {:.2} | {} | {} | {} | {} | {:.0} MiB | {} |\n",
                server.shedding,
                step.multiple,
                step.offered_per_s,
                step.goodput_per_s,
                server.goodput_of_peak(step),
                ms(step.ok_latency.map(|s| s.p50_us)),
                ms(step.ok_latency.map(|s| s.p99_us)),
                step.shed,
                step.failed,
                step.rss_peak_kb as f64 / 1024.0,
                step.recovered_ms
                    .map_or(format!("> {:.0} s", report.probe_s), |v| format!(
                        "{v:.0} ms"
                    )),
            ));
        }
    }
    md
}

fn ms(us: Option<f64>) -> String {
    us.map_or("—".to_string(), |us| format!("{:.1} ms", us / 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(start: Instant, due_ms: u64, latency_ms: u64, status: u16) -> Outcome {
        Outcome {
            due: start + Duration::from_millis(due_ms),
            latency: Duration::from_millis(latency_ms),
            status: Some(status),
        }
    }

    #[test]
    fn recovery_starts_at_the_first_probe_of_an_unbroken_good_run() {
        let end = Instant::now();
        let threshold = Duration::from_millis(10);
        let probes = [
            outcome(end, 0, 500, 200),
            outcome(end, 50, 5, 200),
            outcome(end, 100, 5, 429),
            outcome(end, 150, 5, 200),
            outcome(end, 200, 9, 200),
        ];
        assert_eq!(
            recovered(&probes, end, threshold),
            Some(Duration::from_millis(150))
        );
        let never = [outcome(end, 0, 5, 200), outcome(end, 50, 50, 200)];
        assert_eq!(recovered(&never, end, threshold), None);
    }
}
