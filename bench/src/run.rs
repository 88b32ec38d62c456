//! `updraft-bench run`: finds the programs, starts the servers, runs the
//! phases in order — warm load ([`crate::load`]), cold paths
//! ([`crate::cold`], [`crate::instantiate`]), memory ([`crate::memory`]), key-value ([`crate::kv`]),
//! async events ([`crate::events`]), calls ([`crate::calls`]), outgoing HTTP
//! ([`crate::outbound`]), cluster mode ([`crate::cluster`]) — and assembles
//! the [`Report`]. Each phase that needs a pristine server gets its own data
//! dir.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};

use crate::calls::{CallsPlan, CallsReport};
use crate::cluster::{ClusterPlan, ClusterReport};
use crate::events::{EventsPlan, EventsReport};
use crate::instantiate::InstantiatePlan;
use crate::kv::KvPlan;
use crate::load::{LoadPlan, LoadTarget};
use crate::memory::MemoryPlan;
use crate::native::HELLO_BODY;
use crate::outbound::{OutboundPlan, OutboundReport};
use crate::report::{
    self, Machine, Mode, NATIVE, Report, Setup, UPDRAFT, UPDRAFT_NO_TELEMETRY, UPDRAFT_REUSE,
    UPDRAFT_TRACES_ALL, UPDRAFT_UNMETERED, WASMTIME, WASMTIME_REUSE,
};
use crate::servers::{self, Server};
use crate::{
    calls, cluster, cold, events, http, instantiate, kv, load, memory, outbound, updraft, wrk,
};

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// Seconds per load point, instead of the mode's.
    pub duration_s: Option<u64>,
    pub updraft: Option<PathBuf>,
    pub wasmtime: Option<PathBuf>,
    pub wrk: Option<PathBuf>,
    pub guests: Option<PathBuf>,
    /// The command line to print as "how to repeat this".
    pub command: String,
}

/// How much each mode measures. Quick stays under ~2 minutes on 2 cores.
#[derive(Debug, Clone)]
pub struct Plan {
    pub load: LoadPlan,
    /// Metered against unmetered Updraft, alternating, at one concurrency.
    pub metering: LoadPlan,
    pub cold_reps: usize,
    pub instantiate: InstantiatePlan,
    pub memory: MemoryPlan,
    pub kv: KvPlan,
    pub events: EventsPlan,
    pub calls: CallsPlan,
    pub outbound: OutboundPlan,
    pub cluster: ClusterPlan,
}

impl Plan {
    pub fn for_mode(mode: Mode, duration_s: Option<u64>) -> Plan {
        let (duration, warmup, rounds, reps, k, m, slow_ms) = match mode {
            Mode::Full => (10, 2, 3, 50, 1000, 100, 2000),
            Mode::Quick => (2, 1, 1, 5, 50, 20, 2000),
            Mode::Tiny => (1, 1, 1, 2, 5, 3, 1000),
        };
        // Durable writes take ~0.5 ms each here: fewer of them.
        let (get_ops, write_ops) = match mode {
            Mode::Full => (200_000, 5_000),
            Mode::Quick => (50_000, 500),
            Mode::Tiny => (200, 20),
        };
        let events = EventsPlan {
            duration_s: match mode {
                Mode::Full => 5,
                Mode::Quick => 2,
                Mode::Tiny => 1,
            },
            rounds: match mode {
                Mode::Full => 3,
                _ => 1,
            },
        };
        Plan {
            load: LoadPlan {
                concurrencies: vec![1, 64],
                duration_s: duration_s.unwrap_or(duration).max(1),
                warmup_s: warmup,
                rounds,
            },
            metering: LoadPlan {
                concurrencies: vec![64],
                duration_s: match mode {
                    Mode::Full => 3,
                    _ => 1,
                },
                warmup_s: 1,
                rounds: match mode {
                    Mode::Full => 12,
                    Mode::Quick => 2,
                    Mode::Tiny => 1,
                },
            },
            cold_reps: reps,
            instantiate: InstantiatePlan {
                iterations: match mode {
                    Mode::Full => 20_000,
                    Mode::Quick => 5_000,
                    Mode::Tiny => 20,
                },
                rounds: match mode {
                    Mode::Full => 3,
                    _ => 1,
                },
            },
            memory: MemoryPlan {
                idle_functions: k,
                in_flight: m,
                slow_ms,
            },
            kv: KvPlan { get_ops, write_ops },
            calls: CallsPlan {
                calls: match mode {
                    Mode::Full => 100_000,
                    Mode::Quick => 10_000,
                    Mode::Tiny => 100,
                },
                http_duration_s: duration_s.unwrap_or(duration).max(1),
            },
            outbound: OutboundPlan {
                calls: match mode {
                    Mode::Full => 20_000,
                    Mode::Quick => 2_000,
                    Mode::Tiny => 50,
                },
                rounds: match mode {
                    Mode::Full => 3,
                    _ => 1,
                },
            },
            cluster: ClusterPlan {
                // The warm-load points' parameters at c = 64, so the node's
                // number reads beside the throughput table's.
                warm: LoadPlan {
                    concurrencies: vec![64],
                    duration_s: duration_s.unwrap_or(duration).max(1),
                    warmup_s: warmup,
                    rounds,
                },
                events: events.clone(),
                deploy_reps: match mode {
                    Mode::Full => 20,
                    Mode::Quick => 5,
                    Mode::Tiny => 2,
                },
                // A tenth, as for the stores in NATS in the key-value phase:
                // each operation is a round trip to NATS.
                kv: KvPlan {
                    get_ops: (get_ops / 10).max(1),
                    write_ops: (write_ops / 10).max(1),
                },
            },
            events,
        }
    }
}

/// The programs and inputs a run needs, found before anything starts.
struct Tools {
    me: PathBuf,
    updraft: PathBuf,
    profile: String,
    wasmtime: PathBuf,
    wrk: PathBuf,
    hello: PathBuf,
    chaos: PathBuf,
    kv_bench: PathBuf,
    chain: PathBuf,
    redis: PathBuf,
    /// `None`: not installed, so the key-value points in NATS and the
    /// cluster phase are skipped.
    nats: Option<PathBuf>,
}

/// The wasmtime CLI: `given`, else on PATH, else in ~/.cargo/bin.
pub fn locate_wasmtime(given: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.clone());
    }
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin").join("wasmtime"));
    servers::find_program("wasmtime", &[])
        .or_else(|| cargo_bin.filter(|p| p.is_file()))
        .ok_or_else(|| {
            anyhow!("wasmtime (48) not found on PATH or in ~/.cargo/bin: install it with scripts/setup.sh, or pass --wasmtime PATH")
        })
}

/// The wrk load generator: `given`, else on PATH.
pub fn locate_wrk(given: Option<&PathBuf>) -> Result<PathBuf> {
    match given {
        Some(path) => Ok(path.clone()),
        None => servers::find_program("wrk", &[]).ok_or_else(|| {
            anyhow!("wrk not found on PATH: install wrk: scripts/setup.sh (or apt-get install wrk)")
        }),
    }
}

/// The target dir's profile dir (`target/release`) of this executable; a test
/// binary in `target/debug/deps` maps to `target/debug`.
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent dir", exe.display()))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Where results go by default: `target/bench/result.json`.
pub fn default_out() -> Result<PathBuf> {
    let profile = profile_dir()?;
    let target = profile.parent().unwrap_or(&profile);
    Ok(target.join("bench").join("result.json"))
}

/// The repository root, for `git` and `BENCHMARKS.md`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

impl Tools {
    fn locate(options: &Options) -> Result<Tools> {
        let profile_dir = profile_dir()?;
        let target_dir = profile_dir.parent().unwrap_or(&profile_dir).to_path_buf();
        let me = std::env::current_exe().context("cannot locate this executable")?;
        let own_profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let updraft = options
            .updraft
            .clone()
            .unwrap_or_else(|| profile_dir.join("updraft"));
        updraft::check_binary(&updraft, own_profile == "release")?;
        let profile = updraft
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("unknown")
            .to_string();
        let wasmtime = locate_wasmtime(options.wasmtime.as_ref())?;
        let wrk = locate_wrk(options.wrk.as_ref())?;
        let redis = servers::find_program("redis-server", &[]).ok_or_else(|| {
            anyhow!("redis-server not found on PATH: install it: scripts/setup.sh (or apt-get install redis-server)")
        })?;
        let guests = options
            .guests
            .clone()
            .unwrap_or_else(|| target_dir.join("guests"));
        Ok(Tools {
            me,
            updraft,
            profile,
            wasmtime,
            wrk,
            hello: guests.join("hello-rust.wasm"),
            chaos: guests.join("http-chaos.wasm"),
            kv_bench: guests.join("kv-bench.wasm"),
            chain: guests.join("chain.wasm"),
            redis,
            nats: servers::find_program("nats-server", &[]),
        })
    }
}

/// Runs every phase; the scratch dir (data dirs, logs) is removed afterwards
/// unless the run failed, when its path is in the error.
pub fn run(options: &Options) -> Result<Report> {
    let tools = Tools::locate(options)?;
    let hello = updraft::read_guest(&tools.hello)?;
    let chaos = updraft::read_guest(&tools.chaos)?;
    let plan = Plan::for_mode(options.mode, options.duration_s);
    let machine = Machine::detect(&repo_root());
    let scratch = tempfile::Builder::new()
        .prefix("updraft-bench-")
        .tempdir()
        .context("cannot create a scratch dir")?;
    match phases(&tools, &plan, scratch.path(), &hello, &chaos) {
        Ok((throughput, metering, cold, memory, kv, events, calls, outbound, cluster)) => {
            let mut report = Report {
                schema: report::SCHEMA,
                mode: options.mode,
                command: options.command.clone(),
                machine,
                setup: Setup {
                    load_generator: "wrk -t1 (one thread), keep-alive".to_string(),
                    duration_s: plan.load.duration_s,
                    warmup_s: plan.load.warmup_s,
                    rounds: plan.load.rounds,
                    concurrencies: plan.load.concurrencies.clone(),
                    cold_repetitions: plan.cold_reps,
                    idle_functions: memory.idle_functions,
                    in_flight: memory.in_flight,
                    slow_ms: memory.slow_ms,
                    updraft_bin: tools.updraft.display().to_string(),
                    updraft_profile: tools.profile.clone(),
                    wasmtime_version: servers::version_of(&tools.wasmtime),
                    wrk_version: wrk_version(&tools.wrk),
                    hello_wasm_bytes: hello.len() as u64,
                },
                ratios: report::ratios(&throughput, &plan.load.concurrencies),
                throughput,
                metering,
                cold,
                memory,
                kv,
                events,
                calls,
                outbound,
                cluster,
                targets: Vec::new(),
            };
            report.targets = report::targets(&report);
            Ok(report)
        }
        Err(e) => {
            let kept = scratch.keep();
            Err(e.context(format!(
                "server logs and data dirs kept in {}",
                kept.display()
            )))
        }
    }
}

/// `wrk --version` prints its banner and exits 1; keep the name and version.
fn wrk_version(wrk: &Path) -> String {
    let banner = servers::version_of(wrk);
    banner
        .split(" Copyright")
        .next()
        .unwrap_or(&banner)
        .trim()
        .to_string()
}

/// Requests per instance in both reuse modes, Updraft's and the peer's.
const REUSE_COUNT: u32 = 1_000_000;

type Phases = (
    Vec<report::LoadResult>,
    Vec<report::LoadResult>,
    report::Cold,
    report::Memory,
    kv::KvReport,
    EventsReport,
    CallsReport,
    OutboundReport,
    ClusterReport,
);

fn phases(
    tools: &Tools,
    plan: &Plan,
    scratch: &Path,
    hello: &[u8],
    chaos: &[u8],
) -> Result<Phases> {
    let script = scratch.join("report.lua");
    std::fs::write(&script, wrk::SCRIPT).context("writing the wrk script")?;

    eprintln!("==> starting the servers");
    let native = start_native(tools, scratch)?;
    let wasmtime = start_wasmtime(tools, scratch, WASMTIME, &[])?;
    let wasmtime_reuse = start_wasmtime(
        tools,
        scratch,
        WASMTIME_REUSE,
        &["--max-instance-reuse-count", &REUSE_COUNT.to_string()],
    )?;
    let updraft = updraft::start(
        &tools.updraft,
        &scratch.join("load-data"),
        "127.0.0.1:0",
        scratch,
    )?
    .server;
    updraft::deploy(updraft.endpoint, "hello", "/hello", hello)?;
    updraft::deploy_with(
        updraft.endpoint,
        "hello-reuse",
        &format!("route=/hello-reuse&instance_reuse_max={REUSE_COUNT}"),
        hello,
    )?;
    // Two fresh servers, alike but for metering, each with hello alone: the
    // main server has served a minute of load and keeps reuse instances,
    // which would weigh on one side only.
    let unmetered_config = scratch.join("unmetered.toml");
    std::fs::write(&unmetered_config, "[metering]\nenabled = false\n")
        .context("writing the unmetered config")?;
    let fresh_hello = |data: &str, extra: &[&str]| -> Result<servers::Server> {
        let server = updraft::start_with(
            &tools.updraft,
            &scratch.join(data),
            "127.0.0.1:0",
            scratch,
            extra,
        )?
        .server;
        updraft::deploy(server.endpoint, "hello", "/hello", hello)?;
        Ok(server)
    };
    let unmetered = fresh_hello(
        "load-data-unmetered",
        &["--config", &unmetered_config.to_string_lossy()],
    )?;
    let metered = fresh_hello("load-data-metered", &[])?;
    let untraced_config = scratch.join("untraced.toml");
    std::fs::write(
        &untraced_config,
        "[telemetry]\nmetrics = false\ntraces = false\n",
    )
    .context("writing the config without telemetry")?;
    let untraced = fresh_hello(
        "load-data-untraced",
        &["--config", &untraced_config.to_string_lossy()],
    )?;
    let traced_config = scratch.join("traces-all.toml");
    std::fs::write(&traced_config, "[telemetry]\ntrace_sample_ratio = 1.0\n")
        .context("writing the config that records every trace")?;
    let traced = fresh_hello(
        "load-data-traces-all",
        &["--config", &traced_config.to_string_lossy()],
    )?;
    let targets = [
        (NATIVE, &native, "/"),
        (WASMTIME, &wasmtime, "/"),
        (WASMTIME_REUSE, &wasmtime_reuse, "/"),
        (UPDRAFT, &updraft, "/hello"),
        (UPDRAFT_REUSE, &updraft, "/hello-reuse"),
    ];
    // The comparison only means something if all four answer the same bytes.
    for (name, server, path) in &targets {
        let response = http::send(
            server.endpoint,
            &http::Request::get(path),
            http::CONTROL_TIMEOUT,
        )?;
        if response.status != 200 || response.text() != HELLO_BODY {
            bail!(
                "{name} answered {} {:?} to GET {path}, not 200 {HELLO_BODY:?}",
                response.status,
                response.text()
            );
        }
    }
    let load_targets: Vec<LoadTarget> = targets
        .iter()
        .map(|(name, server, path)| LoadTarget {
            name,
            url: server.endpoint.url(path),
        })
        .collect();

    eprintln!(
        "==> warm load: {} s per point, c = {:?}, {} round(s)",
        plan.load.duration_s, plan.load.concurrencies, plan.load.rounds
    );
    let throughput = load::measure(&tools.wrk, &script, &load_targets, &plan.load)?;

    // Metering's cost is a few percent, below the noise between two load
    // points on these machines: short points, alternating, many rounds.
    eprintln!(
        "==> metering and telemetry overhead: {} rounds of {} s, default, unmetered, \
         without telemetry and recording every trace, alternating",
        plan.metering.rounds, plan.metering.duration_s
    );
    let metering = load::measure(
        &tools.wrk,
        &script,
        &[
            LoadTarget {
                name: UPDRAFT,
                url: metered.endpoint.url("/hello"),
            },
            LoadTarget {
                name: UPDRAFT_UNMETERED,
                url: unmetered.endpoint.url("/hello"),
            },
            LoadTarget {
                name: UPDRAFT_NO_TELEMETRY,
                url: untraced.endpoint.url("/hello"),
            },
            LoadTarget {
                name: UPDRAFT_TRACES_ALL,
                url: traced.endpoint.url("/hello"),
            },
        ],
        &plan.metering,
    )?;
    for server in [
        native,
        wasmtime,
        wasmtime_reuse,
        unmetered,
        metered,
        untraced,
        traced,
    ] {
        server.stop()?;
    }

    eprintln!("==> cold paths: {} repetitions", plan.cold_reps);
    let b_c = cold::deploy_and_unload(updraft.endpoint, hello, plan.cold_reps)?;
    updraft.stop()?;
    let d = cold::restart(
        &tools.updraft,
        &scratch.join("restart-data"),
        scratch,
        hello,
        plan.cold_reps,
    )?;
    let mut cold = cold::assemble(b_c, d, plan.cold_reps);
    eprintln!(
        "==> instantiation in process: {} round(s) of {} per side",
        plan.instantiate.rounds, plan.instantiate.iterations
    );
    cold.instantiate = instantiate::measure(&plan.instantiate, hello, scratch)?;

    eprintln!("==> memory");
    let memory = memory::measure(
        &tools.updraft,
        &scratch.join("memory-data"),
        scratch,
        hello,
        chaos,
        &plan.memory,
    )?;

    eprintln!(
        "==> key-value: {} gets, {} writes, from a guest and against redis",
        plan.kv.get_ops, plan.kv.write_ops
    );
    let kv_bench = updraft::read_guest(&tools.kv_bench)?;
    if tools.nats.is_none() {
        eprintln!("    nats-server not found on PATH: no points with the stores in NATS");
    }
    let kv = kv::measure(
        &tools.updraft,
        &tools.redis,
        tools.nats.as_deref(),
        scratch,
        &kv_bench,
        &plan.kv,
    )?;

    eprintln!(
        "==> async events: {} round(s) of {} s, sync and async",
        plan.events.rounds, plan.events.duration_s
    );
    let chain = updraft::read_guest(&tools.chain)?;
    let events = events::measure(
        &tools.updraft,
        &tools.wrk,
        scratch,
        hello,
        &chain,
        &plan.events,
    )?;

    eprintln!(
        "==> function-to-function calls: {} in process, {} s through the gateway",
        plan.calls.calls, plan.calls.http_duration_s
    );
    let calls = calls::measure(
        &tools.updraft,
        &tools.wrk,
        &script,
        scratch,
        &chain,
        hello,
        &plan.calls,
    )?;

    eprintln!(
        "==> outgoing HTTP: {} GETs per side, {} round(s), from a guest and from a native client",
        plan.outbound.calls, plan.outbound.rounds
    );
    let outbound = outbound::measure(&tools.me, &tools.updraft, scratch, chaos, &plan.outbound)?;

    eprintln!(
        "==> cluster mode: {} nodes over one nats-server against embedded",
        cluster::NODES
    );
    if tools.nats.is_none() {
        eprintln!("    nats-server not found on PATH: the cluster phase is skipped");
    }
    let cluster = cluster::measure(
        &cluster::Inputs {
            updraft_bin: &tools.updraft,
            nats_bin: tools.nats.as_deref(),
            wrk_bin: &tools.wrk,
            script: &script,
            hello,
            chain: &chain,
            kv_bench: &kv_bench,
        },
        scratch,
        &plan.cluster,
    )?;
    Ok((
        throughput, metering, cold, memory, kv, events, calls, outbound, cluster,
    ))
}

fn start_native(tools: &Tools, scratch: &Path) -> Result<Server> {
    let mut command = Command::new(&tools.me);
    command.args(["native", "--listen", "127.0.0.1:0"]);
    Ok(servers::start_announced(NATIVE, command, scratch.join("native.log"))?.server)
}

fn start_wasmtime(tools: &Tools, scratch: &Path, name: &str, extra: &[&str]) -> Result<Server> {
    let port = servers::free_port()?;
    let endpoint = http::Endpoint::parse(&format!("http://127.0.0.1:{port}"))?;
    let mut command = Command::new(&tools.wasmtime);
    command
        .arg("serve")
        .args(["--addr", &endpoint.addr.to_string()])
        .args(extra)
        .arg(&tools.hello)
        // Keeps wasmtime's cache (if enabled) out of the user's home.
        .env("XDG_CACHE_HOME", scratch.join("xdg-cache"));
    servers::start_probed(
        name,
        command,
        endpoint,
        "/",
        scratch.join(format!("{name}.log")),
    )
}
