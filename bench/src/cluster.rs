//! Cluster mode against embedded (issue 17): what running `updraft up
//! --cluster` costs next to one embedded `updraft up`, each number measured
//! in this one phase on both and given as the ratio cluster ÷ embedded.
//!
//! The cluster is [`NODES`] nodes over one local `nats-server` with
//! JetStream (`max_payload: 8MB`, as [`crate::kv`] starts it); the first
//! node makes the admin key and the others get a copy in their data dirs.
//! The baseline is a fresh embedded server started beside it.
//!
//! - **Warm req/s per node.** wrk (`-t1`, c=64, the warm-load points'
//!   duration, warm-up and rounds) on `GET /hello` of node 2, which learned
//!   of hello through NATS, and of the embedded server, alternating as
//!   [`crate::load`] does. The ratio is the median of the rounds' ratios,
//!   as for metering. A plain request touches no NATS, so it should be
//!   within 10%.
//! - **Async events end to end.** [`crate::events`]' async point: wrk posts
//!   `POST /v1/functions/hello/invoke?mode=async` for the point's duration,
//!   and the clock stops when hello's queue in `GET /v1/queues` shows depth
//!   0 and nothing in flight. On the cluster the 64 connections are split
//!   over three wrk processes run at once, one per node, as a load balancer
//!   would spread them; each 202 means JetStream stored the call, and any
//!   node may run it. The drain is read on node 1: the counts are the
//!   stream consumer's, the same on every node. Cluster and embedded
//!   alternate, the first of each round swapping.
//! - **Deploy → invocable on every node.** `tests/guests/chain`, which
//!   answers its `[env] NAME`, deployed through node 1 with a new `NAME`
//!   each time (a new version); the clock runs from the PUT until the
//!   route of every node answers 200 with the new `NAME`, each polled
//!   every [`POLL`]. Then every node's `GET /v1/functions/{name}` must show
//!   the version and digest node 1 answered. Two kinds of change: `config`
//!   (the same Wasm: the registry's propagation alone) and `code` (a
//!   custom section makes new Wasm: each node also fetches it from the
//!   object store and compiles it). The baseline is the same deploy to the
//!   embedded server, until its own route answers the new `NAME`.
//! - **Key-value from a guest.** `tests/guests/kv-bench` on node 1 (its
//!   stores in JetStream) and on the embedded server (`kv.redb`, durable
//!   writes): get and set p50, timed inside the guest, a tenth of the
//!   key-value phase's counts (each is a NATS round trip). The key-value
//!   phase's `updraft-guest-nats` is the same backend under an embedded
//!   server.
//!
//! - **A node started under load.** [`ELASTIC_BACKLOG`] async kv-bench
//!   jobs (each [`ELASTIC_INCREMENTS`] increments, so a few ms of NATS round
//!   trips) are queued through node 1; then a fourth node starts on the same
//!   NATS while more jobs keep coming. Timed: its spawn until it prints its
//!   address, then until its `GET /healthz` counts its first invocation
//!   (polled every millisecond). The target is a share within 1 s of being
//!   up.
//!
//! Everything shares one machine: the three nodes, NATS and wrk share the
//! cores that the embedded baseline has to itself with wrk, so on 2 cores
//! the cluster's ratios bound what separate machines would see from below.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::events::{self, EventsPlan};
use crate::http::{self, CONTROL_TIMEOUT, Endpoint, Request};
use crate::kv::{self, KvPlan, KvPoint};
use crate::load::{self, LoadPlan, LoadTarget};
use crate::native::HELLO_BODY;
use crate::report::LoadResult;
use crate::servers::{self, Server};
use crate::stats::{Summary, median};
use crate::{updraft, wrk};

/// Nodes in the cluster: what `cargo xtask cluster` starts, and the
/// fewest that leave a deploy more than one other node to reach.
pub const NODES: usize = 3;
/// The node the warm point loads (0-based): not the one hello was deployed
/// through, so its code came through NATS.
const WARM_NODE: usize = 1;
/// How often each node's route is polled for a new version: finer than the
/// propagation it times (milliseconds), and one loopback request per node,
/// little next to what the nodes do meanwhile.
const POLL: Duration = Duration::from_millis(1);
/// How long a new version may take to be served everywhere: a debug build
/// compiling new code on a busy 2-core machine takes seconds.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
/// The warm point's concurrency: the throughput targets' (issue 3).
const WARM_CONCURRENCY: u32 = 64;

/// The systems, as they appear in the JSON and the tables.
pub const CLUSTER: &str = "updraft-cluster";
pub const EMBEDDED: &str = "updraft-embedded";

/// What the key-value points measure from the guest.
const KV_OPS: [&str; 2] = ["get", "set"];

/// How much the phase measures.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// The warm point: c = 64 only.
    pub warm: LoadPlan,
    pub events: EventsPlan,
    /// Timed deploys of each kind of change, on each side.
    pub deploy_reps: usize,
    pub kv: KvPlan,
}

/// Every field defaults, so runs from before the phase still load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterReport {
    pub nodes: usize,
    /// Why nothing was measured (no `nats-server`); the rest is then empty.
    pub skipped: Option<String>,
    pub nats_version: String,
    pub warm: Option<WarmReport>,
    pub events: Option<AsyncReport>,
    /// One per kind of change: `config`, then `code`.
    pub deploy: Vec<DeployReport>,
    /// kv-bench on node 1 ([`CLUSTER`]) and on the embedded server ([`EMBEDDED`]).
    pub kv: Vec<KvPoint>,
    /// A node started under a backlog of async work.
    pub elastic: Option<ElasticReport>,
}

impl ClusterReport {
    pub fn kv_point(&self, system: &str, op: &str) -> Option<&KvPoint> {
        self.kv.iter().find(|p| p.system == system && p.op == op)
    }

    pub fn deploy(&self, change: &str) -> Option<&DeployReport> {
        self.deploy.iter().find(|d| d.change == change)
    }

    /// Whether the phase ran (runs from before it have nothing).
    pub fn measured(&self) -> bool {
        self.warm.is_some() || self.events.is_some() || !self.deploy.is_empty()
    }
}

/// Warm req/s of one node against the embedded server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmReport {
    /// Which node was loaded, from 1.
    pub node: usize,
    pub cluster: LoadResult,
    pub embedded: LoadResult,
    /// Cluster ÷ embedded req/s: the median of the rounds' ratios.
    pub ratio: f64,
}

/// One async point: accepted calls until every one ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AsyncPoint {
    /// wrk processes (one per node on the cluster).
    pub wrk_processes: usize,
    /// 202s over every wrk process.
    pub accepted: u64,
    /// 202s per second while the load ran, summed over the processes.
    pub accept_rps: f64,
    /// The slowest process's p50 and p99.
    pub accept_p50_us: f64,
    pub accept_p99_us: f64,
    /// From the first request to the queue drained.
    pub end_to_end_ms: f64,
    /// `accepted` over `end_to_end_ms`.
    pub events_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AsyncRound {
    pub cluster: AsyncPoint,
    pub embedded: AsyncPoint,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AsyncReport {
    /// In all, split over the processes.
    pub connections: u32,
    pub duration_s: u64,
    pub rounds: Vec<AsyncRound>,
    /// Medians over the rounds.
    pub cluster_events_per_s: f64,
    pub embedded_events_per_s: f64,
    /// Cluster ÷ embedded: the median of the rounds' ratios.
    pub ratio: f64,
}

/// Deploy → invocable, for one kind of change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployReport {
    /// `config` (same Wasm, new `[env]`) or `code` (new Wasm too).
    pub change: String,
    pub repetitions: usize,
    /// `PUT` through node 1 → 201.
    pub cluster_put: Summary,
    /// `PUT` through node 1 → every node's route answers the new version.
    pub cluster_invocable: Summary,
    /// `PUT` → 201 on the embedded server.
    pub embedded_put: Summary,
    /// `PUT` → its route answers the new version.
    pub embedded_invocable: Summary,
    /// `cluster_invocable` p50 ÷ `embedded_invocable` p50.
    pub ratio: f64,
}

/// The two kinds of change a deploy measures.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// The same Wasm with a new `[env]`.
    Config,
    /// New Wasm (a custom section) and a new `[env]`.
    Code,
}

impl Change {
    fn name(self) -> &'static str {
        match self {
            Change::Config => "config",
            Change::Code => "code",
        }
    }

    /// The function deployed again and again: one per kind of change.
    fn function(self) -> String {
        format!("propagate-{}", self.name())
    }
}

/// The programs and guests the phase needs.
pub struct Inputs<'a> {
    pub updraft_bin: &'a Path,
    /// `None`: not installed, and the phase is skipped.
    pub nats_bin: Option<&'a Path>,
    pub wrk_bin: &'a Path,
    /// The warm-load wrk script (`GET`, the report hook).
    pub script: &'a Path,
    pub hello: &'a [u8],
    pub chain: &'a [u8],
    pub kv_bench: &'a [u8],
}

pub fn measure(inputs: &Inputs<'_>, scratch: &Path, plan: &ClusterPlan) -> Result<ClusterReport> {
    let Some(nats_bin) = inputs.nats_bin else {
        return Ok(ClusterReport {
            nodes: NODES,
            skipped: Some(
                "nats-server not found on PATH: install it (scripts/setup.sh cluster) \
                 to measure cluster mode"
                    .to_string(),
            ),
            ..ClusterReport::default()
        });
    };
    // Declared first, so on an error it is dropped (killed) after the nodes.
    let (nats, url) = kv::start_nats(nats_bin, &scratch.join("cluster-nats"))?;
    let nodes = start_nodes(inputs.updraft_bin, scratch, &url)?;
    let embedded = updraft::start(
        inputs.updraft_bin,
        &scratch.join("cluster-embedded"),
        "127.0.0.1:0",
        scratch,
    )?
    .server;
    let node_endpoints: Vec<Endpoint> = nodes.iter().map(|n| n.endpoint).collect();
    let first = node_endpoints[0];

    // hello, deployed through node 1 and served by all.
    let since = Instant::now();
    updraft::deploy(first, "hello", "/hello", inputs.hello)?;
    wait_serving(&node_endpoints, "/hello", HELLO_BODY, since)
        .context("hello deployed through node 1")?;
    updraft::deploy(embedded.endpoint, "hello", "/hello", inputs.hello)?;

    eprintln!(
        "    warm: node {} of {NODES} and embedded, {} round(s) of {} s, c={WARM_CONCURRENCY}",
        WARM_NODE + 1,
        plan.warm.rounds,
        plan.warm.duration_s
    );
    let warm = warm(
        inputs,
        node_endpoints[WARM_NODE],
        embedded.endpoint,
        &plan.warm,
    )?;

    eprintln!(
        "    async events: {} round(s) of {} s, {NODES} wrk processes on the cluster",
        plan.events.rounds, plan.events.duration_s
    );
    let events = async_events(inputs, scratch, &node_endpoints, embedded.endpoint, plan)?;

    eprintln!(
        "    deploy → invocable on every node: {} repetitions per kind of change",
        plan.deploy_reps
    );
    let mut deploy = Vec::new();
    for change in [Change::Config, Change::Code] {
        deploy.push(deploy_to_invocable(
            inputs.chain,
            &node_endpoints,
            embedded.endpoint,
            change,
            plan.deploy_reps,
        )?);
    }

    eprintln!(
        "    key-value from a guest: {} gets, {} sets on node 1 and embedded",
        plan.kv.get_ops, plan.kv.write_ops
    );
    let mut kv_points = Vec::new();
    for (system, endpoint) in [(CLUSTER, first), (EMBEDDED, embedded.endpoint)] {
        updraft::deploy_with(
            endpoint,
            "kvb",
            "route=/kvb&key_value_stores=bench",
            inputs.kv_bench,
        )?;
        for op in KV_OPS {
            let n = if op == "get" {
                plan.kv.get_ops
            } else {
                plan.kv.write_ops
            };
            kv_points.push(kv::guest_point(endpoint, system, op, n)?);
        }
    }

    eprintln!(
        "    elastic: {ELASTIC_BACKLOG} async jobs queued through node 1, then node {} started",
        NODES + 1
    );
    let (elastic, extra) = elastic(inputs.updraft_bin, scratch, &url, &node_endpoints)?;
    eprintln!(
        "    node {} was up {:.0} ms after its spawn and ran its first job {:.1} ms later ({} of {} in all)",
        NODES + 1,
        elastic.start_ms,
        elastic.first_run_ms,
        elastic.ran,
        elastic.queued
    );

    embedded.stop()?;
    // The nodes before NATS: a node stopping finishes its leases with it.
    for node in nodes.into_iter().chain([extra]) {
        node.stop()?;
    }
    nats.stop()?;
    Ok(ClusterReport {
        nodes: NODES,
        skipped: None,
        nats_version: servers::version_of(nats_bin),
        warm: Some(warm),
        events: Some(events),
        deploy,
        kv: kv_points,
        elastic: Some(elastic),
    })
}

/// Starts [`NODES`] nodes on the NATS at `url`, data dirs
/// `cluster-node{i}`: the first makes the admin key, the others get a
/// copy (and make none), so every endpoint carries the same key.
pub(crate) fn start_nodes(bin: &Path, scratch: &Path, url: &str) -> Result<Vec<Server>> {
    let first_dir = scratch.join("cluster-node1");
    let mut nodes = Vec::with_capacity(NODES);
    for i in 1..=NODES {
        let dir = scratch.join(format!("cluster-node{i}"));
        if i > 1 {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = first_dir.join("admin.key");
            std::fs::copy(&key, dir.join("admin.key")).with_context(|| {
                format!(
                    "copying the admin key {} to {}",
                    key.display(),
                    dir.display()
                )
            })?;
        }
        let node = updraft::start_with(bin, &dir, "127.0.0.1:0", scratch, &["--cluster", url])
            .with_context(|| format!("starting cluster node {i}"))?
            .server;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Polls `GET route` on every endpoint until each answers 200 with `body`;
/// returns the time from `since` until the last one did.
fn wait_serving(
    endpoints: &[Endpoint],
    route: &str,
    body: &str,
    since: Instant,
) -> Result<Duration> {
    let deadline = since + PROPAGATION_TIMEOUT;
    let mut waiting: Vec<(usize, Endpoint)> = endpoints.iter().copied().enumerate().collect();
    let mut last = Duration::ZERO;
    loop {
        let mut still = Vec::with_capacity(waiting.len());
        let mut seen = String::new();
        for (i, endpoint) in waiting {
            let response = http::send(endpoint, &Request::get(route), CONTROL_TIMEOUT)
                .with_context(|| format!("GET {route} on node {}", i + 1))?;
            if response.status == 200 && response.text() == body {
                last = since.elapsed();
            } else {
                seen = format!(
                    "node {} answers {} {:?}",
                    i + 1,
                    response.status,
                    response.text()
                );
                still.push((i, endpoint));
            }
        }
        if still.is_empty() {
            return Ok(last);
        }
        if Instant::now() > deadline {
            bail!(
                "GET {route} did not answer 200 {body:?} everywhere within {PROPAGATION_TIMEOUT:?}: {seen}"
            );
        }
        waiting = still;
        std::thread::sleep(POLL);
    }
}

/// The warm point, node and embedded alternating.
fn warm(
    inputs: &Inputs<'_>,
    node: Endpoint,
    embedded: Endpoint,
    plan: &LoadPlan,
) -> Result<WarmReport> {
    let targets = [
        LoadTarget {
            name: CLUSTER,
            url: node.url("/hello"),
        },
        LoadTarget {
            name: EMBEDDED,
            url: embedded.url("/hello"),
        },
    ];
    let mut results = load::measure(inputs.wrk_bin, inputs.script, &targets, plan)?;
    for result in &results {
        if result.errors.total() > 0 {
            bail!(
                "the warm point on {} had errors: {:?}",
                result.server,
                result.errors
            );
        }
    }
    let take = |results: &mut Vec<LoadResult>, name: &str| {
        let at = results
            .iter()
            .position(|r| r.server == name)
            .ok_or_else(|| anyhow!("the warm point has no {name} result"))?;
        anyhow::Ok(results.swap_remove(at))
    };
    let cluster = take(&mut results, CLUSTER)?;
    let embedded = take(&mut results, EMBEDDED)?;
    let ratio = round_ratio(
        cluster.rounds.iter().map(|p| p.rps),
        embedded.rounds.iter().map(|p| p.rps),
    );
    Ok(WarmReport {
        node: WARM_NODE + 1,
        cluster,
        embedded,
        ratio,
    })
}

/// The median of the rounds' ratios `a ÷ b`: each pair ran one right after
/// the other, so drift between rounds cancels; 0 with no rounds.
fn round_ratio(a: impl Iterator<Item = f64>, b: impl Iterator<Item = f64>) -> f64 {
    let ratios: Vec<f64> = a
        .zip(b)
        .map(|(a, b)| if b > 0.0 { a / b } else { 0.0 })
        .collect();
    median(&ratios)
}

/// Async events end to end on the cluster (one wrk per node) and on the
/// embedded server, alternating.
fn async_events(
    inputs: &Inputs<'_>,
    scratch: &Path,
    nodes: &[Endpoint],
    embedded: Endpoint,
    plan: &ClusterPlan,
) -> Result<AsyncReport> {
    // Each side's own key: the nodes share theirs, the embedded server made another.
    let script_for = |endpoint: Endpoint, file: &str| -> Result<std::path::PathBuf> {
        let key = endpoint
            .bearer
            .context("the server's admin key was not read")?;
        let path = scratch.join(file);
        std::fs::write(&path, events::script(key))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let cluster_script = script_for(nodes[0], "cluster-events.lua")?;
    let embedded_script = script_for(embedded, "cluster-events-embedded.lua")?;
    let cluster = |duration_s| async_point(inputs.wrk_bin, &cluster_script, nodes, duration_s);
    let embedded =
        |duration_s| async_point(inputs.wrk_bin, &embedded_script, &[embedded], duration_s);
    // Warm both paths (compiled code, the queue's first writes), untimed.
    cluster(1)?;
    embedded(1)?;
    let duration_s = plan.events.duration_s;
    let mut rounds = Vec::new();
    for round in 0..plan.events.rounds {
        let (cluster, embedded) = if round % 2 == 0 {
            let c = cluster(duration_s)?;
            (c, embedded(duration_s)?)
        } else {
            let e = embedded(duration_s)?;
            (cluster(duration_s)?, e)
        };
        eprintln!(
            "    round {}: cluster {:.0} events/s, embedded {:.0} events/s",
            round + 1,
            cluster.events_per_s,
            embedded.events_per_s
        );
        rounds.push(AsyncRound { cluster, embedded });
    }
    let of = |f: fn(&AsyncRound) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    Ok(AsyncReport {
        connections: events::CONNECTIONS,
        duration_s,
        cluster_events_per_s: of(|r| r.cluster.events_per_s),
        embedded_events_per_s: of(|r| r.embedded.events_per_s),
        ratio: round_ratio(
            rounds.iter().map(|r| r.cluster.events_per_s),
            rounds.iter().map(|r| r.embedded.events_per_s),
        ),
        rounds,
    })
}

/// wrk posts async invocations of hello to every endpoint at once, the
/// [`events::CONNECTIONS`] split among them, for `duration_s`; the clock
/// stops when hello's queue, read on the first endpoint, is drained.
fn async_point(
    wrk_bin: &Path,
    script: &Path,
    endpoints: &[Endpoint],
    duration_s: u64,
) -> Result<AsyncPoint> {
    let shares = split(events::CONNECTIONS, endpoints.len());
    let started = Instant::now();
    let points = std::thread::scope(|scope| {
        let handles: Vec<_> = endpoints
            .iter()
            .zip(shares)
            .map(|(endpoint, connections)| {
                let url = endpoint.url("/v1/functions/hello/invoke?mode=async");
                scope.spawn(move || wrk::run(wrk_bin, script, &url, connections, duration_s))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a wrk thread panicked"))?)
            .collect::<Result<Vec<wrk::Point>>>()
    })?;
    let drained_on = endpoints
        .first()
        .copied()
        .context("an async point needs an endpoint")?;
    events::drain(drained_on)?;
    let elapsed = started.elapsed();
    for point in &points {
        if point.errors.total() > 0 {
            bail!("async load had errors: {:?}", point.errors);
        }
    }
    let accepted: u64 = points.iter().map(|p| p.requests).sum();
    let worst = |f: fn(&wrk::Point) -> f64| points.iter().map(f).fold(0.0, f64::max);
    Ok(AsyncPoint {
        wrk_processes: points.len(),
        accepted,
        accept_rps: points.iter().map(|p| p.rps).sum(),
        accept_p50_us: worst(|p| p.p50_us),
        accept_p99_us: worst(|p| p.p99_us),
        end_to_end_ms: elapsed.as_secs_f64() * 1e3,
        events_per_s: accepted as f64 / elapsed.as_secs_f64(),
    })
}

/// `total` as `parts` near-equal shares, the larger first; each at least 1.
fn split(total: u32, parts: usize) -> Vec<u32> {
    let parts = parts.max(1) as u32;
    (0..parts)
        .map(|i| (total / parts + u32::from(i < total % parts)).max(1))
        .collect()
}

/// Deploy → invocable for one kind of change: `reps` timed deploys through
/// node 1 and to the embedded server, alternating, after one untimed
/// deploy that creates the function on both.
fn deploy_to_invocable(
    chain: &[u8],
    nodes: &[Endpoint],
    embedded: Endpoint,
    change: Change,
    reps: usize,
) -> Result<DeployReport> {
    let first = *nodes.first().context("a cluster needs a node")?;
    let mut samples = [const { Vec::new() }; 4];
    for i in 0..=reps {
        let (cluster_put, cluster_invocable) = deploy_version(chain, first, nodes, change, i)?;
        let (embedded_put, embedded_invocable) =
            deploy_version(chain, embedded, &[embedded], change, i)?;
        if i > 0 {
            for (all, sample) in samples.iter_mut().zip([
                cluster_put,
                cluster_invocable,
                embedded_put,
                embedded_invocable,
            ]) {
                all.push(sample);
            }
        }
    }
    let summary = |samples: &[Duration]| {
        Summary::of(samples).ok_or_else(|| {
            anyhow!(
                "no deploys of {} were timed: repetitions must be ≥ 1",
                change.name()
            )
        })
    };
    let [
        cluster_put,
        cluster_invocable,
        embedded_put,
        embedded_invocable,
    ] = &samples;
    let cluster_invocable = summary(cluster_invocable)?;
    let embedded_invocable = summary(embedded_invocable)?;
    Ok(DeployReport {
        change: change.name().to_string(),
        repetitions: reps,
        cluster_put: summary(cluster_put)?,
        embedded_put: summary(embedded_put)?,
        ratio: if embedded_invocable.p50_us > 0.0 {
            cluster_invocable.p50_us / embedded_invocable.p50_us
        } else {
            0.0
        },
        cluster_invocable,
        embedded_invocable,
    })
}

/// Deploys version `i` of `change`'s function through `via` and waits
/// until every one of `servers` answers it; returns the PUT's time and the
/// time until the last server answered. Then every server must name the
/// version and digest `via` answered.
fn deploy_version(
    chain: &[u8],
    via: Endpoint,
    servers: &[Endpoint],
    change: Change,
    i: usize,
) -> Result<(Duration, Duration)> {
    let name = change.function();
    let route = format!("/{name}");
    let body = format!("v{i}");
    let manifest = format!("name = \"{name}\"\nroute = \"{route}\"\n[env]\nNAME = \"{body}\"\n");
    let wasm = match change {
        Change::Config => chain.to_vec(),
        Change::Code => {
            updraft::with_custom_section(chain, "updraft-bench-version", body.as_bytes())
        }
    };
    let since = Instant::now();
    let (details, put) = updraft::deploy_manifest_timed(via, &name, &manifest, &wasm)?;
    let invocable = wait_serving(servers, &route, &body, since)
        .with_context(|| format!("version {body} of {name}"))?;
    let identity = |details: &serde_json::Value| {
        (
            details["version"].as_u64(),
            details["digest"].as_str().map(str::to_string),
        )
    };
    let deployed = identity(&details);
    if deployed.0.is_none() || deployed.1.is_none() {
        bail!("deploying {name} answered no version and digest: {details}");
    }
    for (n, server) in servers.iter().enumerate() {
        let path = format!("/v1/functions/{name}");
        let response = http::send(*server, &Request::get(&path), CONTROL_TIMEOUT)?;
        let seen: serde_json::Value =
            serde_json::from_slice(&response.body).with_context(|| {
                format!(
                    "GET {path} on node {} answered {:?}",
                    n + 1,
                    response.text()
                )
            })?;
        if identity(&seen) != deployed {
            bail!(
                "node {} serves {name} as {:?} but the deploy made {deployed:?}",
                n + 1,
                identity(&seen)
            );
        }
    }
    Ok((put, invocable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_split_near_evenly() {
        assert_eq!(split(64, 3), [22, 21, 21]);
        assert_eq!(split(64, 1), [64]);
        assert_eq!(split(2, 3), [1, 1, 1]);
        assert_eq!(split(64, 0), [64]);
    }

    #[test]
    fn ratio_is_the_median_of_the_rounds() {
        let r = round_ratio(
            [90.0, 50.0, 100.0].into_iter(),
            [100.0, 100.0, 100.0].into_iter(),
        );
        assert_eq!(r, 0.9);
        assert_eq!(round_ratio(std::iter::empty(), std::iter::empty()), 0.0);
        assert_eq!(round_ratio([1.0].into_iter(), [0.0].into_iter()), 0.0);
    }

    #[test]
    fn without_nats_the_phase_is_skipped_with_a_note() {
        let scratch = tempfile::tempdir().unwrap();
        let missing = Path::new("/nonexistent/updraft");
        let inputs = Inputs {
            updraft_bin: missing,
            nats_bin: None,
            wrk_bin: missing,
            script: missing,
            hello: &[],
            chain: &[],
            kv_bench: &[],
        };
        let plan = ClusterPlan {
            warm: LoadPlan {
                concurrencies: vec![64],
                duration_s: 1,
                warmup_s: 1,
                rounds: 1,
            },
            events: EventsPlan {
                duration_s: 1,
                rounds: 1,
            },
            deploy_reps: 1,
            kv: KvPlan {
                get_ops: 1,
                write_ops: 1,
            },
        };
        let report = measure(&inputs, scratch.path(), &plan).unwrap();
        assert!(
            report
                .skipped
                .as_ref()
                .is_some_and(|why| why.contains("nats-server"))
        );
        assert!(!report.measured() && report.kv.is_empty());
        // Nothing was started, so nothing was written.
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    }

    #[test]
    fn old_reports_have_an_empty_phase() {
        let report: ClusterReport = serde_json::from_str("{}").unwrap();
        assert!(!report.measured() && report.skipped.is_none());
    }
}

/// Jobs queued before the extra node starts.
const ELASTIC_BACKLOG: usize = 500;
/// Increments per job, each a round trip to NATS: a job runs a few ms.
const ELASTIC_INCREMENTS: u32 = 20;
/// Longest the extra node may take to run its first job.
const ELASTIC_TIMEOUT: Duration = Duration::from_secs(60);

/// A node started while the cluster has a backlog of async work: how soon
/// it takes a share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ElasticReport {
    /// Async jobs queued through node 1 before the extra node started
    /// (more kept coming until it had run one).
    pub backlog: usize,
    /// Jobs not yet finished (waiting or running) when it started.
    pub unfinished_at_start: u64,
    /// From spawning its process until it printed its address.
    pub start_ms: f64,
    /// From its address until `GET /healthz` showed its first invocation.
    pub first_run_ms: f64,
    /// Jobs queued in all.
    pub queued: usize,
    /// How many of them it ran.
    pub ran: u64,
}

/// One async kv-bench job through `endpoint`.
fn queue_job(endpoint: Endpoint, i: usize) -> Result<()> {
    let path = format!(
        "/v1/functions/kvb/invoke?mode=async&op=increment&n={ELASTIC_INCREMENTS}&key=elastic-{}",
        i % 64
    );
    let request = Request {
        method: "POST",
        path: &path,
        content_type: None,
        body: &[],
    };
    let response = http::send(endpoint, &request, CONTROL_TIMEOUT)?;
    if response.status != 202 {
        bail!(
            "queueing an async job answered {}: {}",
            response.status,
            response.text()
        );
    }
    Ok(())
}

/// Queues [`ELASTIC_BACKLOG`] async kv-bench jobs through node 1, starts
/// one more node, and times its first run while jobs keep coming (so work
/// is waiting however fast the others drain it); then waits for the queue
/// to drain. Returns the extra node, to be stopped with the others.
fn elastic(
    bin: &Path,
    scratch: &Path,
    url: &str,
    nodes: &[Endpoint],
) -> Result<(ElasticReport, Server)> {
    let first = nodes[0];
    for i in 0..ELASTIC_BACKLOG {
        queue_job(first, i)?;
    }
    let unfinished_at_start = events::unfinished(first, "kvb")?;
    let dir = scratch.join(format!("cluster-node{}", NODES + 1));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::copy(
        scratch.join("cluster-node1").join("admin.key"),
        dir.join("admin.key"),
    )
    .context("copying the admin key to the extra node")?;
    let spawned = Instant::now();
    let node = updraft::start_with(bin, &dir, "127.0.0.1:0", scratch, &["--cluster", url])
        .context("starting the extra node")?
        .server;
    let start = spawned.elapsed();
    let up = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (first_run, queued) = std::thread::scope(|scope| {
        let feeder = scope.spawn(|| {
            let mut i = ELASTIC_BACKLOG;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                queue_job(first, i)?;
                i += 1;
            }
            Ok::<_, anyhow::Error>(i)
        });
        let first_run = loop {
            match invocations(node.endpoint) {
                Ok(0) if up.elapsed() <= ELASTIC_TIMEOUT => {}
                Ok(0) => {
                    break Err(anyhow!(
                        "the extra node ran nothing within {ELASTIC_TIMEOUT:?}"
                    ));
                }
                Ok(_) => break Ok(up.elapsed()),
                Err(e) => break Err(e),
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let queued = feeder
            .join()
            .map_err(|_| anyhow!("the job feeder panicked"))?;
        Ok::<_, anyhow::Error>((first_run?, queued?))
    })?;
    events::drain_function(first, "kvb")?;
    Ok((
        ElasticReport {
            backlog: ELASTIC_BACKLOG,
            unfinished_at_start,
            start_ms: start.as_secs_f64() * 1e3,
            first_run_ms: first_run.as_secs_f64() * 1e3,
            queued,
            ran: invocations(node.endpoint)?,
        },
        node,
    ))
}

/// Invocations a node has started, from its `GET /healthz`.
fn invocations(endpoint: Endpoint) -> Result<u64> {
    let response = http::send(endpoint, &Request::get("/healthz"), CONTROL_TIMEOUT)?;
    let health: serde_json::Value =
        serde_json::from_slice(&response.body).context("GET /healthz")?;
    health["invocations"]
        .as_u64()
        .context("GET /healthz has no invocations count (an updraft build from before it)")
}
