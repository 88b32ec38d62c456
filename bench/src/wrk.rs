//! Driving wrk: one keep-alive load point (server × concurrency × duration)
//! per call, with a Lua `done` hook that prints the exact numbers as one JSON
//! line, so nothing is parsed out of wrk's rounded human-readable table.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

/// Marks the hook's line among wrk's own output.
const MARKER: &str = "UPDRAFT_BENCH_WRK ";

/// The Lua hook, written to a scratch file for `wrk -s`. wrk records latency
/// in microseconds in an HdrHistogram; `percentile` reads it exactly.
pub const SCRIPT: &str = r#"-- Written by updraft-bench: report one load point as a JSON line.
done = function(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'UPDRAFT_BENCH_WRK {"requests":%d,"duration_us":%d,"bytes":%d,"rps":%.3f,' ..
    '"p50_us":%.1f,"p99_us":%.1f,"p999_us":%.1f,"mean_us":%.1f,"max_us":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes, summary.requests / seconds,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"#;

/// wrk's error counters; `status` counts answers that were not 2xx/3xx.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub status: u64,
    pub timeout: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }

    pub fn add(&mut self, other: &Errors) {
        self.connect += other.connect;
        self.read += other.read;
        self.write += other.write;
        self.status += other.status;
        self.timeout += other.timeout;
    }
}

/// One load point as the hook reports it; latencies in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub requests: u64,
    pub duration_us: u64,
    pub bytes: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
    pub errors: Errors,
}

/// One load point: `wrk -t1 -cC -dDs` against `url`, keep-alive (wrk's default).
/// One wrk thread, as in the issue's peer numbers: on 2 cores the other core
/// belongs to the server.
pub fn run(
    wrk: &Path,
    script: &Path,
    url: &str,
    connections: u32,
    duration_s: u64,
) -> Result<Point> {
    let output = Command::new(wrk)
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{duration_s}s"),
        ])
        .args(["--timeout", "5s", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .with_context(|| format!("cannot run {}", wrk.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk against {url} failed ({}): {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse(&stdout).with_context(|| format!("wrk against {url}; its output:\n{stdout}"))
}

fn parse(stdout: &str) -> Result<Point> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(MARKER))
        .ok_or_else(|| anyhow!("no {MARKER:?} line: did the Lua hook run?"))?;
    serde_json::from_str(line).with_context(|| format!("bad hook line {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_hook_line_among_wrk_output() {
        let out = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 1 connections\n\
            UPDRAFT_BENCH_WRK {\"requests\":10,\"duration_us\":1000000,\"bytes\":990,\"rps\":10.000,\
            \"p50_us\":20.0,\"p99_us\":40.0,\"p999_us\":41.0,\"mean_us\":22.5,\"max_us\":41.0,\
            \"errors\":{\"connect\":0,\"read\":0,\"write\":0,\"status\":1,\"timeout\":0}}\n";
        let point = parse(out).unwrap();
        assert_eq!(point.requests, 10);
        assert_eq!(point.p99_us, 40.0);
        assert_eq!(point.errors.total(), 1);
        assert!(parse("Running 1s test\n").is_err());
    }

    #[test]
    fn script_prints_the_marker() {
        assert!(SCRIPT.contains(MARKER.trim_end()));
    }
}
