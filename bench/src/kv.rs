//! Key-value latency and throughput (issue 4): `get`, `set` and `increment`
//! issued from inside a guest (`tests/guests/kv-bench`, which times each
//! operation with the monotonic clock), side by side with the same access
//! pattern from a native client to `redis-server` on loopback.
//!
//! Redis runs twice: as it ships (`redis`: no fsync, no snapshots) and with
//! every write synced (`redis-fsync`: `appendfsync always`), since Updraft's
//! writes are durable (fsync, group commit) when acknowledged.
//!
//! The guest runs once more with its stores in NATS JetStream
//! (`updraft-guest-nats`: `[kv] type = "nats"`, a local `nats-server`),
//! what every node of a cluster shares, when `nats-server` is installed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::http::{self, Request};
use crate::servers::{self, Server};
use crate::updraft;

/// How long one timed batch may take (sets are durable: ~0.5 ms each here).
const BATCH_TIMEOUT: Duration = Duration::from_secs(600);
/// Value size of every operation, in bytes.
pub const VALUE_BYTES: usize = 16;
/// Concurrent clients for the throughput point (one per core here).
pub const PARALLEL_CLIENTS: usize = 2;
/// Concurrent writers for the durable-write throughput point
/// (`set-parallel`): enough that syncs are shared (group commit) on both
/// sides, as a busy server's writes are.
pub const PARALLEL_WRITERS: usize = 16;

/// How many operations each measurement times.
#[derive(Debug, Clone)]
pub struct KvPlan {
    pub get_ops: usize,
    pub write_ops: usize,
}

/// Who issued the operations.
pub const UPDRAFT_GUEST: &str = "updraft-guest";
/// The same guest with `durability = "process"` (acknowledged once in the
/// kernel's hands; synced within 100 ms).
pub const UPDRAFT_GUEST_PROCESS: &str = "updraft-guest-process";
/// The same guest with its stores in NATS JetStream (cluster mode's).
pub const UPDRAFT_GUEST_NATS: &str = "updraft-guest-nats";
pub const REDIS: &str = "redis";
/// Redis with `appendonly yes`, `appendfsync always`: durable writes, like Updraft's.
pub const REDIS_FSYNC: &str = "redis-fsync";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvPoint {
    /// `updraft-guest` or `redis`.
    pub system: String,
    /// `get`, `set`, `increment`, `get-parallel` or `set-parallel`.
    pub op: String,
    pub ops: usize,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub ops_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvReport {
    pub value_bytes: usize,
    pub parallel_clients: usize,
    /// Writers of `set-parallel` (0 in reports from before it).
    #[serde(default)]
    pub parallel_writers: usize,
    pub redis_version: String,
    pub points: Vec<KvPoint>,
}

impl KvReport {
    pub fn point(&self, system: &str, op: &str) -> Option<&KvPoint> {
        self.points
            .iter()
            .find(|p| p.system == system && p.op == op)
    }
}

/// One client's timed batch (what the guest answers as JSON).
#[derive(Deserialize)]
struct Batch {
    n: usize,
    total_ns: u64,
    p50_ns: u64,
    p99_ns: u64,
}

impl Batch {
    fn point(&self, system: &str, op: &str) -> KvPoint {
        KvPoint {
            system: system.into(),
            op: op.into(),
            ops: self.n,
            p50_ns: self.p50_ns,
            p99_ns: self.p99_ns,
            ops_per_s: per_second(self.n, self.total_ns),
        }
    }
}

pub fn measure(
    updraft_bin: &Path,
    redis_bin: &Path,
    nats_bin: Option<&Path>,
    scratch: &Path,
    kv_bench: &[u8],
    plan: &KvPlan,
) -> Result<KvReport> {
    let mut points = Vec::new();

    let ops = [
        ("get", plan.get_ops),
        ("set", plan.write_ops),
        ("increment", plan.write_ops),
    ];
    let server = start_kv_bench(updraft_bin, scratch, kv_bench, "disk")?;
    for (op, n) in ops {
        guest_batch(&server, op, warmup(n))?;
        points.push(guest_batch(&server, op, n)?.point(UPDRAFT_GUEST, op));
    }
    let batches = parallel(PARALLEL_CLIENTS, |_| {
        guest_batch(&server, "get", plan.get_ops)
    })?;
    points.push(combine(UPDRAFT_GUEST, "get-parallel", &batches));
    // Durable writes from many functions at once, each to its own key.
    let set_parallel = |n| {
        parallel(PARALLEL_WRITERS, |i| {
            guest_batch_keyed(&server, "set", n, &writer_key(i))
        })
    };
    set_parallel(warmup(plan.write_ops))?;
    let batches = set_parallel(plan.write_ops)?;
    points.push(combine(UPDRAFT_GUEST, "set-parallel", &batches));
    server.stop()?;

    // The writes again, acknowledged before the disk sync.
    let server = start_kv_bench(updraft_bin, scratch, kv_bench, "process")?;
    for (op, n) in &ops[1..] {
        guest_batch(&server, op, warmup(*n))?;
        points.push(guest_batch(&server, op, *n)?.point(UPDRAFT_GUEST_PROCESS, op));
    }
    server.stop()?;

    // Every operation again with the stores in JetStream.
    if let Some(nats_bin) = nats_bin {
        let (nats, url) = start_nats(nats_bin, &scratch.join("nats"))?;
        let config = format!("[kv]\ntype = \"nats\"\nurls = [\"{url}\"]\n");
        let server = start_kv_bench_with(updraft_bin, scratch, kv_bench, "nats", &config)?;
        // A tenth of the operations: each is a round trip to the server, and
        // one batch must end within the guest's timeout.
        let fewer = |n: usize| (n / 10).max(1);
        for (op, n) in ops {
            guest_batch(&server, op, warmup(fewer(n)))?;
            points.push(guest_batch(&server, op, fewer(n))?.point(UPDRAFT_GUEST_NATS, op));
        }
        let batches = parallel(PARALLEL_CLIENTS, |_| {
            guest_batch(&server, "get", fewer(plan.get_ops))
        })?;
        points.push(combine(UPDRAFT_GUEST_NATS, "get-parallel", &batches));
        server.stop()?;
        nats.stop()?;
    }

    let (redis, addr) = start_redis(redis_bin, scratch, false)?;
    // "Redis server v=7.0.15 sha=… malloc=…": the version is enough.
    let redis_version = servers::version_of(redis_bin)
        .split(" sha=")
        .next()
        .unwrap_or_default()
        .to_string();
    for (op, n) in ops {
        redis_batch(addr, op, warmup(n))?;
        points.push(redis_batch(addr, op, n)?.point(REDIS, op));
    }
    let batches = parallel(PARALLEL_CLIENTS, |_| redis_batch(addr, "get", plan.get_ops))?;
    points.push(combine(REDIS, "get-parallel", &batches));
    redis.stop()?;

    // The same writes when Redis, too, syncs each one to disk.
    let (redis, addr) = start_redis(redis_bin, scratch, true)?;
    for (op, n) in &ops[1..] {
        redis_batch(addr, op, warmup(*n))?;
        points.push(redis_batch(addr, op, *n)?.point(REDIS_FSYNC, op));
    }
    let set_parallel = |n| {
        parallel(PARALLEL_WRITERS, |i| {
            redis_batch_keyed(addr, "set", n, &writer_key(i))
        })
    };
    set_parallel(warmup(plan.write_ops))?;
    let batches = set_parallel(plan.write_ops)?;
    points.push(combine(REDIS_FSYNC, "set-parallel", &batches));
    redis.stop()?;

    Ok(KvReport {
        value_bytes: VALUE_BYTES,
        parallel_clients: PARALLEL_CLIENTS,
        parallel_writers: PARALLEL_WRITERS,
        redis_version,
        points,
    })
}

/// A fresh `updraft up` with the given key-value durability and kv-bench
/// deployed at `/kvb` with the store `bench`.
fn start_kv_bench(
    updraft_bin: &Path,
    scratch: &Path,
    kv_bench: &[u8],
    durability: &str,
) -> Result<Server> {
    let config = format!("[kv]\ntype = \"embedded\"\ndurability = \"{durability}\"\n");
    start_kv_bench_with(updraft_bin, scratch, kv_bench, durability, &config)
}

/// The same with the server config `config`, its files named by `name`.
fn start_kv_bench_with(
    updraft_bin: &Path,
    scratch: &Path,
    kv_bench: &[u8],
    name: &str,
    config: &str,
) -> Result<Server> {
    let config_path = scratch.join(format!("kv-{name}.toml"));
    std::fs::write(&config_path, config).context("writing the server config")?;
    let config = config_path.display().to_string();
    let data = scratch.join(format!("kv-{name}-data"));
    let server = updraft::start_with(
        updraft_bin,
        &data,
        "127.0.0.1:0",
        scratch,
        &["--config", &config],
    )?
    .server;
    updraft::deploy_with(
        server.endpoint,
        "kvb",
        "route=/kvb&key_value_stores=bench",
        kv_bench,
    )?;
    Ok(server)
}

/// An untimed batch first, so both systems start warm (caches, CPU clocks).
fn warmup(n: usize) -> usize {
    (n / 10).max(1)
}

fn per_second(n: usize, total_ns: u64) -> f64 {
    if total_ns == 0 {
        0.0
    } else {
        n as f64 * 1e9 / total_ns as f64
    }
}

/// The key of concurrent writer `i`.
fn writer_key(i: usize) -> String {
    format!("bench-writer-{i}")
}

/// The throughput point `op`: all clients' operations over the slowest
/// client's time; the latencies are the worst client's.
fn combine(system: &str, op: &str, batches: &[Batch]) -> KvPoint {
    let ops = batches.iter().map(|b| b.n).sum();
    let slowest = batches.iter().map(|b| b.total_ns).max().unwrap_or(0);
    KvPoint {
        system: system.into(),
        op: op.into(),
        ops,
        p50_ns: batches.iter().map(|b| b.p50_ns).max().unwrap_or(0),
        p99_ns: batches.iter().map(|b| b.p99_ns).max().unwrap_or(0),
        ops_per_s: per_second(ops, slowest),
    }
}

/// `f(i)` for `clients` clients at once, each on a thread of its own.
fn parallel<T: Send>(clients: usize, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = (0..clients).map(|i| scope.spawn(move || f(i))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a benchmark client panicked"))?
            })
            .collect()
    })
}

fn guest_batch(server: &Server, op: &str, n: usize) -> Result<Batch> {
    guest_batch_at(server.endpoint, op, n)
}

/// [`guest_batch`] on `key`.
fn guest_batch_keyed(server: &Server, op: &str, n: usize, key: &str) -> Result<Batch> {
    guest_request(
        server.endpoint,
        op,
        &format!("/kvb?op={op}&n={n}&size={VALUE_BYTES}&key={key}"),
    )
}

/// One untimed batch of `op` ([`warmup`]), then `n` timed ones, from the
/// kv-bench guest deployed at `/kvb` (store `bench`) on `endpoint`: the
/// point of `system`.
pub(crate) fn guest_point(
    endpoint: http::Endpoint,
    system: &str,
    op: &str,
    n: usize,
) -> Result<KvPoint> {
    guest_batch_at(endpoint, op, warmup(n))?;
    Ok(guest_batch_at(endpoint, op, n)?.point(system, op))
}

fn guest_batch_at(endpoint: http::Endpoint, op: &str, n: usize) -> Result<Batch> {
    guest_request(
        endpoint,
        op,
        &format!("/kvb?op={op}&n={n}&size={VALUE_BYTES}"),
    )
}

fn guest_request(endpoint: http::Endpoint, op: &str, path: &str) -> Result<Batch> {
    let response = http::send(endpoint, &Request::get(path), BATCH_TIMEOUT)?;
    if response.status != 200 {
        bail!(
            "kv-bench {op} answered {}: {}",
            response.status,
            response.text()
        );
    }
    serde_json::from_slice(&response.body)
        .with_context(|| format!("kv-bench {op} answered {:?}", response.text()))
}

/// A `nats-server` with JetStream on loopback, as cluster mode needs it
/// (messages up to 8 MB), its store, config and log in `dir` (a fresh dir
/// per phase: JetStream keeps its streams there); returns it and its
/// `nats://` URL.
pub(crate) fn start_nats(nats_bin: &Path, dir: &Path) -> Result<(Server, String)> {
    let port = servers::free_port()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("nats.conf");
    std::fs::write(&config, "max_payload: 8MB\n").context("writing nats.conf")?;
    let mut command = Command::new(nats_bin);
    command
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("store"))
        .arg("-c")
        .arg(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let endpoint = http::Endpoint::parse(&format!("http://{addr}"))?;
    let server = servers::start_checked(
        "nats-server",
        command,
        endpoint,
        dir.join("nats.log"),
        || TcpStream::connect(addr).map(drop).map_err(Into::into),
    )?;
    Ok((server, format!("nats://{addr}")))
}

/// Redis as it ships (no fsync), or with every write synced (`fsync`).
fn start_redis(redis_bin: &Path, scratch: &Path, fsync: bool) -> Result<(Server, SocketAddr)> {
    let port = servers::free_port()?;
    let dir = scratch.join(if fsync { "redis-fsync" } else { "redis" });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut command = Command::new(redis_bin);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--daemonize", "no"])
        .current_dir(&dir);
    if fsync {
        command.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        command.args(["--appendonly", "no"]);
    }
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let log = dir.join("redis.log");
    let endpoint = http::Endpoint::parse(&format!("http://{addr}"))?;
    let server = servers::start_checked(REDIS, command, endpoint, log, || {
        Resp::connect(addr).and_then(|mut c| c.command(&[b"PING"]).map(drop))
    })?;
    Ok((server, addr))
}

/// `n` operations on one connection, each timed.
fn redis_batch(addr: SocketAddr, op: &str, n: usize) -> Result<Batch> {
    redis_batch_keyed(addr, op, n, "bench-key")
}

/// [`redis_batch`] on `key` (`get` and `set`).
fn redis_batch_keyed(addr: SocketAddr, op: &str, n: usize, key: &str) -> Result<Batch> {
    let mut client = Resp::connect(addr)?;
    let value = vec![b'v'; VALUE_BYTES];
    let key = key.as_bytes();
    if op == "get" {
        client.command(&[b"SET", key, &value])?;
    }
    let mut times = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        match op {
            "get" => client.command(&[b"GET", key])?,
            "set" => client.command(&[b"SET", key, &value])?,
            _ => client.command(&[b"INCR", b"bench-counter"])?,
        };
        times.push(t0.elapsed().as_nanos() as u64);
    }
    let total = started.elapsed().as_nanos() as u64;
    times.sort_unstable();
    let at = |q: f64| {
        times
            .get(((times.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    Ok(Batch {
        n,
        total_ns: total,
        p50_ns: at(0.5),
        p99_ns: at(0.99),
    })
}

/// The smallest Redis client that times well: one blocking connection,
/// requests in RESP, replies read to their end (simple, error, integer or
/// bulk; no arrays are needed here).
struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    buf: Vec<u8>,
}

impl Resp {
    fn connect(addr: SocketAddr) -> Result<Resp> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(BATCH_TIMEOUT))?;
        Ok(Resp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            buf: Vec::new(),
        })
    }

    fn command(&mut self, args: &[&[u8]]) -> Result<()> {
        self.buf.clear();
        write!(self.buf, "*{}\r\n", args.len())?;
        for arg in args {
            write!(self.buf, "${}\r\n", arg.len())?;
            self.buf.extend_from_slice(arg);
            self.buf.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&self.buf)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        match line.as_bytes().first() {
            Some(b'+' | b':') => Ok(()),
            Some(b'$') => {
                let len: i64 = line[1..].trim().parse().context("bad bulk length")?;
                if len >= 0 {
                    let mut body = vec![0; len as usize + 2];
                    self.reader.read_exact(&mut body)?;
                }
                Ok(())
            }
            _ => bail!("redis answered {line:?}"),
        }
    }
}
