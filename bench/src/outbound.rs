//! Outgoing HTTP (issue 18): the latency of one outgoing HTTP call made by a
//! guest through Updraft (`wasi:http/outgoing-handler`, the per-version
//! connection pool), side by side with a native hyper client making the
//! same call to the same upstream in the same run.
//!
//! The upstream is the native hello ([`crate::native`]), a child process
//! like the load phase's. Updraft side: `tests/guests/http-chaos` deployed
//! with `allowed_outbound_hosts` naming the upstream; `GET
//! /fetch-bench?to=URL&n=N` makes N sequential GETs and times each inside
//! the guest with the monotonic clock, from building the request to the
//! body's last byte. Native side: a hyper-util legacy `Client` in this
//! process (keep-alive, pooled, HTTP/1.1, `TCP_NODELAY` as Updraft's pool
//! sets it) on a multi-thread tokio runtime, each GET timed with `Instant`
//! around the request and the whole body. The two sides alternate in
//! rounds, so drift on the machine hits both alike; each number is the
//! median of the rounds.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::http::{self, Endpoint};
use crate::servers;
use crate::stats::median;
use crate::updraft;

/// GETs per `/fetch-bench` request: its answer (one line per GET) stays a
/// few KB, and a request takes well under the function's timeout.
const GETS_PER_REQUEST_MAX: usize = 1000;
/// The function's `timeout_ms`: a thousand GETs on a debug build of a busy
/// 2-core machine take a fraction of it.
const FUNCTION_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, Clone)]
pub struct OutboundPlan {
    /// GETs per side per round.
    pub calls: usize,
    pub rounds: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OutboundReport {
    /// GETs per side per round; 0 in runs from before the phase.
    pub calls: usize,
    #[serde(default)]
    pub rounds: usize,
    /// Timed by the guest, medians of the rounds' percentiles.
    pub updraft_p50_ns: u64,
    pub updraft_p99_ns: u64,
    /// Timed by the native client in the harness's process.
    pub native_p50_ns: u64,
    pub native_p99_ns: u64,
    /// `updraft_p50_ns / native_p50_ns`: the target is ≤ 1.5.
    pub ratio_p50: f64,
}

impl OutboundReport {
    /// Whether this run had the phase (old results load with zeros).
    pub fn measured(&self) -> bool {
        self.calls > 0
    }
}

/// One side's percentiles in one round.
#[derive(Debug, Clone, Copy)]
struct Round {
    p50_ns: u64,
    p99_ns: u64,
}

pub fn measure(
    me: &Path,
    updraft_bin: &Path,
    scratch: &Path,
    chaos: &[u8],
    plan: &OutboundPlan,
) -> Result<OutboundReport> {
    let mut command = Command::new(me);
    command.args(["native", "--listen", "127.0.0.1:0"]);
    let upstream = servers::start_announced(
        "outbound-upstream",
        command,
        scratch.join("outbound-upstream.log"),
    )?
    .server;
    let upstream_url = upstream.endpoint.url("/");

    let server = updraft::start(
        updraft_bin,
        &scratch.join("outbound-data"),
        "127.0.0.1:0",
        scratch,
    )?
    .server;
    updraft::deploy_manifest(
        server.endpoint,
        "fetcher",
        &format!(
            "name = \"fetcher\"\nroute = \"/fetch-bench\"\ntimeout_ms = {FUNCTION_TIMEOUT_MS}\n\
             allowed_outbound_hosts = [\"http://{}\"]\n",
            upstream.endpoint.addr
        ),
        chaos,
    )?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the native client's tokio runtime")?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let uri: hyper::Uri = upstream_url
        .parse()
        .with_context(|| format!("the upstream URL {upstream_url:?}"))?;
    let native = |n: usize| runtime.block_on(native_gets(&client, &uri, n));
    let guest = |n: usize| guest_gets(server.endpoint, &upstream_url, n);

    // Warm-up: both pools hold a connection, both code paths have run.
    let warmup = plan.calls.min(GETS_PER_REQUEST_MAX);
    guest(warmup)?;
    native(warmup)?;

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..plan.rounds {
        // Alternate which side goes first, so neither always follows the other.
        let (a, b) = if round % 2 == 0 {
            (guest(plan.calls)?, native(plan.calls)?)
        } else {
            let b = native(plan.calls)?;
            (guest(plan.calls)?, b)
        };
        let (a, b) = (percentiles(a), percentiles(b));
        eprintln!(
            "    round {}: updraft p50 {} ns, p99 {} ns; native p50 {} ns, p99 {} ns",
            round + 1,
            a.p50_ns,
            a.p99_ns,
            b.p50_ns,
            b.p99_ns
        );
        ours.push(a);
        theirs.push(b);
    }
    drop(client);
    drop(runtime);
    server.stop()?;
    upstream.stop()?;

    let med = |rounds: &[Round], pick: fn(&Round) -> u64| {
        median(&rounds.iter().map(|r| pick(r) as f64).collect::<Vec<_>>()) as u64
    };
    let updraft_p50_ns = med(&ours, |r| r.p50_ns);
    let native_p50_ns = med(&theirs, |r| r.p50_ns);
    Ok(OutboundReport {
        calls: plan.calls,
        rounds: plan.rounds,
        updraft_p50_ns,
        updraft_p99_ns: med(&ours, |r| r.p99_ns),
        native_p50_ns,
        native_p99_ns: med(&theirs, |r| r.p99_ns),
        ratio_p50: if native_p50_ns > 0 {
            updraft_p50_ns as f64 / native_p50_ns as f64
        } else {
            0.0
        },
    })
}

/// `n` GETs of `upstream_url` made by the guest, in requests of at most
/// [`GETS_PER_REQUEST_MAX`]: the latencies it timed, in ns.
fn guest_gets(endpoint: Endpoint, upstream_url: &str, n: usize) -> Result<Vec<u64>> {
    let to = upstream_url
        .replace('%', "%25")
        .replace(':', "%3A")
        .replace('/', "%2F");
    let mut latencies = Vec::with_capacity(n);
    while latencies.len() < n {
        let batch = (n - latencies.len()).min(GETS_PER_REQUEST_MAX);
        let path = format!("/fetch-bench?to={to}&n={batch}");
        let response = http::send(endpoint, &http::Request::get(&path), http::CONTROL_TIMEOUT)?;
        if response.status != 200 {
            bail!(
                "GET {path} answered {}: {}",
                response.status,
                response.text()
            );
        }
        let before = latencies.len();
        for line in response.text().lines() {
            latencies.push(
                line.parse::<u64>()
                    .with_context(|| format!("GET {path}: a latency line {line:?}"))?,
            );
        }
        if latencies.len() - before != batch {
            bail!(
                "GET {path} answered {} latencies, not {batch}",
                latencies.len() - before
            );
        }
    }
    Ok(latencies)
}

/// `n` GETs of `uri` through the pooled native client, each timed from the
/// request to the last byte of its body, in ns.
async fn native_gets(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: &hyper::Uri,
    n: usize,
) -> Result<Vec<u64>> {
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let response = client
            .get(uri.clone())
            .await
            .with_context(|| format!("native GET {i} of {uri}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("native GET {i} of {uri}: reading the body"))?
            .to_bytes();
        let elapsed = start.elapsed();
        if status != hyper::StatusCode::OK || body.is_empty() {
            bail!(
                "native GET {i} of {uri} answered {status} with {} bytes",
                body.len()
            );
        }
        latencies.push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }
    Ok(latencies)
}

/// Nearest-rank p50 and p99 of one round's latencies.
fn percentiles(mut latencies: Vec<u64>) -> Round {
    latencies.sort_unstable();
    let at = |percentile: usize| {
        let rank = (percentile * latencies.len()).div_ceil(100);
        latencies
            .get(rank.clamp(1, latencies.len().max(1)) - 1)
            .copied()
            .unwrap_or(0)
    };
    Round {
        p50_ns: at(50),
        p99_ns: at(99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let round = percentiles((1..=100).rev().collect());
        assert_eq!((round.p50_ns, round.p99_ns), (50, 99));
        let few = percentiles(vec![7, 3]);
        assert_eq!((few.p50_ns, few.p99_ns), (3, 7));
        let none = percentiles(Vec::new());
        assert_eq!((none.p50_ns, none.p99_ns), (0, 0));
    }
}
