//! Elasticity (issue 21): how closely the instances Updraft runs follow
//! what a load needs, under a step and a ramp, on one embedded server and
//! on a cluster of [`cluster::NODES`] nodes over NATS, reported with the
//! SPEC Research Group's elasticity metrics (Herbst et al., "Quantifying
//! Cloud Performance and Dependability: Taxonomy, Metric Design, and
//! Emerging Challenges", ACM TOMPECS 3(4), 2018) and drawn as an SVG.
//!
//! The function computes, then waits: `http-chaos` `/cpu?n=N&ms=M`, a
//! typical API call. Its service time `S`, how long a request holds an
//! instance, is measured on the idle server first (a request's latency
//! less that of one that does nothing). The load is open loop (request `i` is sent when due, whatever
//! the answers), a connection each, spread round robin over the nodes.
//!
//! - *Demand* at `t`: the requests sent in `(t − S, t]`, the instances an
//!   ideal platform would run (Little's law, request by request).
//! - *Supply* at `t`: the instances running, `in_flight` of every node's
//!   `GET /healthz`, sampled every [`SAMPLE_EVERY`].
//!
//! Over the run's `T` (load and tail), with `Δt` between samples:
//! - accuracy θU = 100/T · Σ max(d − s, 0)/max(d, 1) · Δt, θO likewise
//!   with s − d (percent of demand missing or in excess, averaged);
//! - timeshare τU = 100/T · Σ [d > s] · Δt, τO with [s > d];
//! - instability υ = 100/T · Σ min(|sgn Δs − sgn Δd|, 1) · Δt: the time
//!   supply and demand move apart (one moves, the other does not or goes
//!   the other way);
//! - scale-up time (step): from the step until supply first reaches 90%
//!   of the plateau demand, beside the demand's own time to get there;
//! - scale-to-zero time: from the last request due until supply is 0 for
//!   good, beside `S`, the least it can be.
//!
//! Updraft starts an instance per request and ends it with the request,
//! so supply should track demand within a request's own latency; what
//! the metrics show beyond that is queueing, sampling and the platform's
//! own overhead.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::cluster;
use crate::http::{self, Endpoint, Request};
use crate::inflight::invoke;
use crate::report::{Machine, Mode};
use crate::run::repo_root;
use crate::servers;
use crate::updraft;

pub const MARKER_START: &str = "<!-- elasticity:start -->";
pub const MARKER_END: &str = "<!-- elasticity:end -->";
/// Where `--update-md` puts the plot, from the Markdown file's directory.
pub const PLOT_IN_REPO: &str = "docs/bench/elasticity.svg";

/// Rounds of `/cpu` per request: a fraction of a millisecond of CPU.
const CPU_ROUNDS: u64 = 200_000;
/// Then it waits this long (a database, an API).
const WAIT_MS: u64 = 100;
/// How often supply is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Share of the plateau demand that counts as scaled up.
const SCALED_UP: f64 = 0.9;
/// Longest any request may take before it counts as failed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Loopback source addresses the load comes from (per-client caps).
const SOURCES: u8 = 16;

pub struct Options {
    pub mode: Mode,
    pub updraft: Option<PathBuf>,
    pub guests: Option<PathBuf>,
    pub command: String,
    /// Where the SVG goes.
    pub plot: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ElasticityReport {
    pub command: String,
    pub machine: Machine,
    pub cpu_rounds: u64,
    pub wait_ms: u64,
    /// Requests a second at the step's plateau and the ramp's top.
    pub peak_rate_per_s: f64,
    pub runs: Vec<ProfileRun>,
    /// Why the cluster runs are missing, when they are.
    pub cluster_skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileRun {
    /// "embedded" or "cluster of 3".
    pub system: String,
    /// "step" or "ramp".
    pub profile: String,
    /// The function's service time on the idle server.
    pub service_ms: f64,
    pub sent: usize,
    pub ok: usize,
    pub metrics: Metrics,
    /// (seconds from the start, demand, supply), one a sample.
    pub series: Vec<(f64, f64, f64)>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub theta_u: f64,
    pub theta_o: f64,
    pub tau_u: f64,
    pub tau_o: f64,
    pub instability: f64,
    /// Step only: supply to 90% of the plateau demand, from the step.
    pub scale_up_ms: Option<f64>,
    /// The demand's own time to 90% of its plateau.
    pub demand_up_ms: Option<f64>,
    /// From the last request due to supply 0 for good.
    pub scale_to_zero_ms: Option<f64>,
}

/// A load over time: requests a second at `t` seconds from the start.
#[derive(Clone, Copy)]
enum Profile {
    /// `lead` s of nothing, `rate` for `hold` s, then nothing.
    Step { lead: f64, hold: f64, rate: f64 },
    /// From 0 to `rate` over `up` s, back to 0 over as long.
    Ramp { up: f64, rate: f64 },
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Step { .. } => "step",
            Profile::Ramp { .. } => "ramp",
        }
    }

    fn rate_at(self, t: f64) -> f64 {
        match self {
            Profile::Step { lead, hold, rate } => {
                if (lead..lead + hold).contains(&t) {
                    rate
                } else {
                    0.0
                }
            }
            Profile::Ramp { up, rate } => {
                if t < up {
                    rate * t / up
                } else if t < 2.0 * up {
                    rate * (2.0 * up - t) / up
                } else {
                    0.0
                }
            }
        }
    }

    /// When the load ends.
    fn length(self) -> f64 {
        match self {
            Profile::Step { lead, hold, .. } => lead + hold,
            Profile::Ramp { up, .. } => 2.0 * up,
        }
    }

    /// Each request's due time, in seconds from the start: the rate
    /// integrated a millisecond at a time.
    fn schedule(self) -> Vec<f64> {
        let mut due = Vec::new();
        let mut owed = 0.0;
        let steps = (self.length() * 1000.0).ceil() as u64;
        for ms in 0..steps {
            let t = ms as f64 / 1000.0;
            owed += self.rate_at(t) / 1000.0;
            // Less a hair: a sum of thousandths falls short of 1.0.
            while owed >= 1.0 - 1e-6 {
                due.push(t);
                owed -= 1.0;
            }
        }
        due
    }
}

pub fn run(options: &Options) -> Result<ElasticityReport> {
    let (bin, guests) = updraft::locate(options.updraft.as_ref(), options.guests.as_ref())?;
    let chaos = updraft::read_guest(&guests.join("http-chaos.wasm"))?;
    // (plateau rate, step hold and ramp half, tail after the load)
    let (rate, hold, tail) = match options.mode {
        Mode::Full => (1000.0, 10.0, 3.0),
        Mode::Quick => (400.0, 4.0, 2.0),
        Mode::Tiny => (50.0, 0.5, 0.5),
    };
    let profiles = [
        Profile::Step {
            lead: 1.0,
            hold,
            rate,
        },
        Profile::Ramp { up: hold, rate },
    ];
    crate::inflight::raise_open_files(4 * rate as usize)?;
    let machine = Machine::detect(&repo_root());
    let scratch = tempfile::Builder::new()
        .prefix("updraft-elasticity-")
        .tempdir()
        .context("cannot create a scratch dir")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the client's runtime")?;
    let mut runs = Vec::new();

    let embedded = updraft::start(
        &bin,
        &scratch.path().join("embedded"),
        "127.0.0.1:0",
        scratch.path(),
    )?
    .server;
    updraft::deploy_chaos(embedded.endpoint, &chaos)?;
    for profile in profiles {
        runs.push(measure(
            &runtime,
            "embedded",
            &[embedded.endpoint],
            profile,
            tail,
        )?);
    }
    embedded.stop()?;

    let cluster_skipped = match servers::find_program("nats-server", &[]) {
        None => {
            Some("nats-server not found on PATH: install it (scripts/setup.sh cluster)".to_string())
        }
        Some(nats_bin) => {
            let (nats, url) = crate::kv::start_nats(&nats_bin, &scratch.path().join("nats"))?;
            let nodes = cluster::start_nodes(&bin, scratch.path(), &url)?;
            let endpoints: Vec<Endpoint> = nodes.iter().map(|n| n.endpoint).collect();
            updraft::deploy_chaos(endpoints[0], &chaos)?;
            wait_deployed(&endpoints)?;
            let system = format!("cluster of {}", cluster::NODES);
            for profile in profiles {
                runs.push(measure(&runtime, &system, &endpoints, profile, tail)?);
            }
            for node in nodes {
                node.stop()?;
            }
            nats.stop()?;
            None
        }
    };
    plot(&runs, &options.plot)?;
    Ok(ElasticityReport {
        command: options.command.clone(),
        machine,
        cpu_rounds: CPU_ROUNDS,
        wait_ms: WAIT_MS,
        peak_rate_per_s: rate,
        runs,
        cluster_skipped,
    })
}

/// Waits until every node serves the function deployed through the first.
fn wait_deployed(endpoints: &[Endpoint]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, endpoint) in endpoints.iter().enumerate() {
        loop {
            let response = http::send(
                *endpoint,
                &Request::get("/chaos/cpu?n=1"),
                http::CONTROL_TIMEOUT,
            )?;
            if response.status == 200 {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} does not serve the function: {}",
                    i + 1,
                    response.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

fn path() -> String {
    format!("/chaos/cpu?n={CPU_ROUNDS}&ms={WAIT_MS}")
}

/// One profile against `endpoints`: the load, the samples, the metrics.
fn measure(
    runtime: &tokio::runtime::Runtime,
    system: &str,
    endpoints: &[Endpoint],
    profile: Profile,
    tail: f64,
) -> Result<ProfileRun> {
    let service = service_time(endpoints[0])?;
    let due = profile.schedule();
    let sampler = Supply::start(endpoints.to_vec());
    let start = Instant::now() + Duration::from_millis(200);
    let (sent, statuses) = runtime.block_on(send_all(endpoints, &due, start));
    // The tail: supply goes back to zero.
    let end = start + Duration::from_secs_f64(profile.length() + tail);
    if let Some(wait) = end.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let samples = sampler.stop(start)?;
    let ok = statuses.iter().filter(|s| **s == Some(200)).count();
    // Demand counts requests from when they were sent: a client's timer
    // lateness is not the platform's.
    let series = series(
        &sent,
        &samples,
        service.as_secs_f64(),
        profile.length() + tail,
    );
    let metrics = metrics(&series, profile, service.as_secs_f64());
    eprintln!(
        "    {system}, {}: {} sent, {ok} answered 200; S {:.1} ms; θU {:.1}% θO {:.1}% τU {:.1}% τO {:.1}% υ {:.1}%; scale-up {} ms, to zero {} ms",
        profile.name(),
        due.len(),
        service.as_secs_f64() * 1e3,
        metrics.theta_u,
        metrics.theta_o,
        metrics.tau_u,
        metrics.tau_o,
        metrics.instability,
        metrics
            .scale_up_ms
            .map_or("—".to_string(), |v| format!("{v:.0}")),
        metrics
            .scale_to_zero_ms
            .map_or("—".to_string(), |v| format!("{v:.0}")),
    );
    Ok(ProfileRun {
        system: system.to_string(),
        profile: profile.name().to_string(),
        service_ms: service.as_secs_f64() * 1e3,
        sent: due.len(),
        ok,
        metrics,
        series,
    })
}

/// How long a request holds an instance on the idle server: the median
/// of a few, one at a time, less the median of a request that does
/// nothing (the connection and the HTTP on either side of the instance).
fn service_time(endpoint: Endpoint) -> Result<Duration> {
    let median = |path: &str| -> Result<Duration> {
        let mut times = Vec::new();
        for _ in 0..9 {
            let (response, took) =
                http::send_timed(endpoint, &Request::get(path), http::CONTROL_TIMEOUT)?;
            if response.status != 200 {
                bail!("{path} answered {}: {}", response.status, response.text());
            }
            times.push(took);
        }
        times.sort();
        Ok(times[times.len() / 2])
    };
    Ok(median(&path())?.saturating_sub(median("/chaos/cpu?n=1")?))
}

/// Sends every request when due, round robin over `endpoints`; when each
/// was sent (seconds from `start`, in order) and their statuses (`None`: no
/// answer).
async fn send_all(
    endpoints: &[Endpoint],
    due: &[f64],
    start: Instant,
) -> (Vec<f64>, Vec<Option<u16>>) {
    let request: Arc<[u8]> = Arc::from(
        format!(
            "GET {} HTTP/1.1\r\nHost: updraft\r\nConnection: close\r\n\r\n",
            path()
        )
        .into_bytes(),
    );
    let mut tasks = Vec::with_capacity(due.len());
    let mut sent = Vec::with_capacity(due.len());
    for (i, at) in due.iter().enumerate() {
        tokio::time::sleep_until((start + Duration::from_secs_f64(*at)).into()).await;
        sent.push(start.elapsed().as_secs_f64());
        let server = endpoints[i % endpoints.len()].addr;
        let request = request.clone();
        let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(SOURCES)) as u8);
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout(CLIENT_TIMEOUT, invoke(server, source, &request))
                .await
                .ok()
                .and_then(Result::ok)
        }));
    }
    let mut statuses = Vec::with_capacity(tasks.len());
    for task in tasks {
        statuses.push(task.await.ok().flatten());
    }
    (sent, statuses)
}

/// Supply, read from every node on a thread of its own.
struct Supply {
    samples: Arc<std::sync::Mutex<Vec<(Instant, u64)>>>,
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Supply {
    fn start(endpoints: Vec<Endpoint>) -> Supply {
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, done) = (samples.clone(), done.clone());
            std::thread::spawn(move || {
                let mut next = Instant::now();
                while !done.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let mut supply = 0;
                    for endpoint in &endpoints {
                        supply += in_flight(*endpoint)?;
                    }
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((at, supply));
                    next += SAMPLE_EVERY;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                Ok(())
            })
        };
        Supply {
            samples,
            done,
            thread,
        }
    }

    /// Stops sampling; the samples from `start` on, as (seconds, supply).
    fn stop(self, start: Instant) -> Result<Vec<(f64, f64)>> {
        self.done.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow!("the supply sampler panicked"))??;
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        Ok(samples
            .iter()
            .filter(|(at, _)| *at >= start)
            .map(|(at, supply)| (at.duration_since(start).as_secs_f64(), *supply as f64))
            .collect())
    }
}

/// Instances a node runs now, from its `GET /healthz`.
fn in_flight(endpoint: Endpoint) -> Result<u64> {
    let response = http::send(endpoint, &Request::get("/healthz"), http::CONTROL_TIMEOUT)?;
    let health: serde_json::Value =
        serde_json::from_slice(&response.body).context("GET /healthz")?;
    health["in_flight"]
        .as_u64()
        .context("GET /healthz has no in_flight count (an updraft build from before it)")
}

/// (t, demand, supply) at each sample up to `until` seconds.
fn series(due: &[f64], samples: &[(f64, f64)], service: f64, until: f64) -> Vec<(f64, f64, f64)> {
    samples
        .iter()
        .filter(|(t, _)| *t <= until)
        .map(|&(t, supply)| {
            // Requests due in (t − S, t]: `due` is sorted.
            let from = due.partition_point(|d| *d <= t - service);
            let to = due.partition_point(|d| *d <= t);
            (t, (to - from) as f64, supply)
        })
        .collect()
}

fn metrics(series: &[(f64, f64, f64)], profile: Profile, service: f64) -> Metrics {
    let mut m = Metrics::default();
    let Some(&(first, _, _)) = series.first() else {
        return m;
    };
    let Some(&(last, _, _)) = series.last() else {
        return m;
    };
    let total = last - first;
    if total <= 0.0 {
        return m;
    }
    for pair in series.windows(2) {
        let [(t0, d0, s0), (t1, d1, s1)] = [pair[0], pair[1]];
        let dt = t1 - t0;
        m.theta_u += (d1 - s1).max(0.0) / d1.max(1.0) * dt;
        m.theta_o += (s1 - d1).max(0.0) / d1.max(1.0) * dt;
        m.tau_u += if d1 > s1 { dt } else { 0.0 };
        m.tau_o += if s1 > d1 { dt } else { 0.0 };
        let apart = ((s1 - s0).signum_or_zero() - (d1 - d0).signum_or_zero())
            .abs()
            .min(1.0);
        m.instability += apart * dt;
    }
    for value in [
        &mut m.theta_u,
        &mut m.theta_o,
        &mut m.tau_u,
        &mut m.tau_o,
        &mut m.instability,
    ] {
        *value = (*value * 100.0 / total * 10.0).round() / 10.0;
    }
    if let Profile::Step { lead, rate, .. } = profile {
        let target = SCALED_UP * rate * service;
        let reached = |pick: fn(&(f64, f64, f64)) -> f64| {
            series
                .iter()
                .find(|p| p.0 >= lead && pick(p) >= target)
                .map(|p| ((p.0 - lead) * 1e4).round() / 10.0)
        };
        m.scale_up_ms = reached(|p| p.2);
        m.demand_up_ms = reached(|p| p.1);
    }
    let end = profile.length();
    // The last sample with any supply after the load; zero from the next.
    let busy_until = series
        .iter()
        .filter(|p| p.0 >= end)
        .rev()
        .find(|p| p.2 > 0.0)
        .map(|p| p.0);
    let zero_at = match busy_until {
        None => series.iter().find(|p| p.0 >= end).map(|p| p.0),
        Some(busy) => series.iter().find(|p| p.0 > busy).map(|p| p.0),
    };
    m.scale_to_zero_ms = zero_at.map(|t| ((t - end) * 1e4).round() / 10.0);
    m
}

/// `signum` with 0 for 0 (`f64::signum` gives 1 for +0).
trait SignumOrZero {
    fn signum_or_zero(self) -> f64;
}

impl SignumOrZero for f64 {
    fn signum_or_zero(self) -> f64 {
        if self == 0.0 { 0.0 } else { self.signum() }
    }
}

/// Demand and supply over time, one panel per system and profile.
fn plot(runs: &[ProfileRun], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let rows = runs.len().div_ceil(2).max(1);
    let root = SVGBackend::new(path, (1200, 360 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    for (run, area) in runs.iter().zip(root.split_evenly((rows, 2))) {
        let x_max = run.series.last().map_or(1.0, |p| p.0);
        let y_max = run.series.iter().map(|p| p.1.max(p.2)).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!("{}, {}", run.system, run.profile),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("instances")
            .draw()
            .map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
        chart
            .draw_series(LineSeries::new(
                run.series.iter().map(|p| (p.0, p.1)),
                BLUE.stroke_width(2),
            ))
            .map_err(|e| anyhow!("drawing {}: {e}", path.display()))?
            .label("demand")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                run.series.iter().map(|p| (p.0, p.2)),
                RED.stroke_width(2),
            ))
            .map_err(|e| anyhow!("drawing {}: {e}", path.display()))?
            .label("supply (instances running)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerMiddle)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    }
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// The table of BENCHMARKS.md's "Elasticity" section.
pub fn markdown(report: &ElasticityReport) -> String {
    let mut md = report.machine.run_line(&report.command);
    md.push_str(&format!(
        "`http-chaos` `/cpu?n={}&ms={}` (computes, then waits {} ms), open loop, a connection per request; step: 1 s idle, then {:.0} requests/s; ramp: 0 to {:.0} requests/s and back. Demand: requests sent within the last service time S (how long a request keeps an instance: its latency on the idle server less that of a request that does nothing); supply: instances running (`in_flight` of every node's `/healthz`), sampled every {} ms. θ and τ in percent; υ: instability.\n\n",
        report.cpu_rounds,
        report.wait_ms,
        report.wait_ms,
        report.peak_rate_per_s,
        report.peak_rate_per_s,
        SAMPLE_EVERY.as_millis(),
    ));
    md.push_str("| system | load | S | sent | 200 | θU | θO | τU | τO | υ | scale-up (demand's own) | scale to zero (S) |\n");
    md.push_str(
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for run in &report.runs {
        let m = &run.metrics;
        let scale_up = match (m.scale_up_ms, m.demand_up_ms) {
            (Some(s), Some(d)) => format!("{s:.0} ms ({d:.0} ms)"),
            (None, Some(d)) => format!("not reached ({d:.0} ms)"),
            _ => "—".to_string(),
        };
        md.push_str(&format!(
            "| {} | {} | {:.1} ms | {} | {} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {scale_up} | {} ({:.0} ms) |\n",
            run.system,
            run.profile,
            run.service_ms,
            run.sent,
            run.ok,
            m.theta_u,
            m.theta_o,
            m.tau_u,
            m.tau_o,
            m.instability,
            m.scale_to_zero_ms.map_or("not reached".to_string(), |v| format!("{v:.0} ms")),
            run.service_ms,
        ));
    }
    if let Some(why) = &report.cluster_skipped {
        md.push_str(&format!("\nCluster runs skipped: {why}.\n"));
    }
    md.push_str(&format!(
        "\n![Demand and supply over time]({PLOT_IN_REPO})\n"
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_the_profile() {
        let step = Profile::Step {
            lead: 1.0,
            hold: 2.0,
            rate: 100.0,
        };
        let due = step.schedule();
        assert_eq!(due.len(), 200);
        assert!(due.iter().all(|t| (1.0..3.0).contains(t)));
        let ramp = Profile::Ramp {
            up: 2.0,
            rate: 100.0,
        };
        // The area under the triangle: 2 s × 100/s.
        assert!((199..=201).contains(&ramp.schedule().len()));
    }

    #[test]
    fn metrics_of_a_lagging_supply() {
        // Demand 10 from 1 s to 2 s; supply follows 0.2 s late.
        let series: Vec<(f64, f64, f64)> = (0..=30)
            .map(|i| {
                let t = f64::from(i) / 10.0;
                let d = if (1.0..2.0).contains(&t) { 10.0 } else { 0.0 };
                let s = if (1.2..2.2).contains(&t) { 10.0 } else { 0.0 };
                (t, d, s)
            })
            .collect();
        let step = Profile::Step {
            lead: 1.0,
            hold: 1.0,
            rate: 100.0,
        };
        let m = metrics(&series, step, 0.1);
        // Two samples (0.2 s of 3 s) short by all the demand; two over by 10.
        assert!((m.tau_u - 6.7).abs() < 0.2, "{m:?}");
        assert!((m.tau_o - 6.7).abs() < 0.2, "{m:?}");
        assert!((m.theta_u - 6.7).abs() < 0.2, "{m:?}");
        assert!((m.theta_o - 66.7).abs() < 0.2, "{m:?}");
        assert_eq!(m.scale_up_ms, Some(200.0));
        assert_eq!(m.demand_up_ms, Some(0.0));
        assert_eq!(m.scale_to_zero_ms, Some(200.0));
    }
}
