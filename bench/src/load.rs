//! Warm throughput and latency: every server under the same wrk load, points
//! alternated so that drift on a shared machine (another build, thermal
//! limits) hits every server alike rather than whichever ran last.

use std::path::Path;

use anyhow::Result;

use crate::report::LoadResult;
use crate::stats::median;
use crate::wrk::{self, Errors, Point};

/// A server under load: its name in the report and the URL wrk hits.
pub struct LoadTarget {
    pub name: &'static str,
    pub url: String,
}

/// How the load is applied.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub concurrencies: Vec<u32>,
    pub duration_s: u64,
    pub warmup_s: u64,
    pub rounds: u32,
}

/// Warms every server up, then runs `rounds` rounds; each round walks the
/// concurrencies and, for each, every server in turn. The order of servers
/// rotates by one per round so none is always first after a pause.
pub fn measure(
    wrk_bin: &Path,
    script: &Path,
    targets: &[LoadTarget],
    plan: &LoadPlan,
) -> Result<Vec<LoadResult>> {
    let warm_c = plan.concurrencies.iter().copied().max().unwrap_or(1);
    for target in targets {
        eprintln!(
            "    warm-up {} ({} s, c={warm_c})",
            target.name, plan.warmup_s
        );
        wrk::run(wrk_bin, script, &target.url, warm_c, plan.warmup_s)?;
    }
    // points[target][concurrency] = one Point per round
    let mut points: Vec<Vec<Vec<Point>>> =
        vec![vec![Vec::new(); plan.concurrencies.len()]; targets.len()];
    for round in 0..plan.rounds as usize {
        for (ci, &c) in plan.concurrencies.iter().enumerate() {
            for k in 0..targets.len() {
                let ti = (k + round) % targets.len();
                let target = &targets[ti];
                let point = wrk::run(wrk_bin, script, &target.url, c, plan.duration_s)?;
                eprintln!(
                    "    round {}/{} c={c:<3} {:<22} {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs  errors {}",
                    round + 1,
                    plan.rounds,
                    target.name,
                    point.rps,
                    point.p50_us,
                    point.p99_us,
                    point.errors.total()
                );
                points[ti][ci].push(point);
            }
        }
    }
    let mut results = Vec::new();
    for (ci, &c) in plan.concurrencies.iter().enumerate() {
        for (ti, target) in targets.iter().enumerate() {
            results.push(aggregate(target.name, c, &points[ti][ci]));
        }
    }
    Ok(results)
}

/// Medians over rounds, metric by metric; counts are summed.
fn aggregate(server: &str, concurrency: u32, rounds: &[Point]) -> LoadResult {
    let of = |f: fn(&Point) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let mut errors = Errors::default();
    for point in rounds {
        errors.add(&point.errors);
    }
    LoadResult {
        server: server.to_string(),
        concurrency,
        rps: of(|p| p.rps),
        p50_us: of(|p| p.p50_us),
        p99_us: of(|p| p.p99_us),
        p999_us: of(|p| p.p999_us),
        requests: rounds.iter().map(|p| p.requests).sum(),
        errors,
        rounds: rounds.to_vec(),
    }
}
