//! Python and JavaScript (issue 19): `examples/hello-python` and
//! `examples/hello-js`, `wasi:http` components of 12–18 MiB built by
//! componentize-py and componentize-js, on Updraft against `wasmtime serve
//! -Scli` running the same file, side by side in one run:
//! - **deploy → first response**: Updraft's `PUT` → 201 (compiling
//!   included), then its first `GET`; `wasmtime serve`'s launch → first
//!   answer, which compiles at start too (its cache off);
//! - **warm load** at c = 1 and 16, the servers alternating: Updraft,
//!   Updraft without spare instances (`[cpu] spare_instances = false`), and
//!   `wasmtime serve`. Every request of all three gets a fresh instance.
//!
//! - **pre-initialisation**: `tests/guests/preinit` (its state, the primes
//!   below 2,000,000, built by `wizer-initialize`) deployed plain and with
//!   `preinitialize = true` on the same server: deploy → 201, the first
//!   response, and warm load at c = 1 and 16. Both answer the same body.
//!   And the same for Python, whose pre-initialisation is componentize-py's
//!   build-time snapshot: `tests/guests/py-imports` (json, email, decimal,
//!   … imported at module level, so loaded in the snapshot) against
//!   `tests/guests/py-imports-lazy` (the same module imported by the
//!   handler, so loaded by every fresh instance).
//!
//! `--tiny` (the harness's own test, on a debug build, where compiling
//! 17 MiB takes minutes) runs hello-rust in place of both: the mechanics,
//! not the numbers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::http::{self, Request};
use crate::load::{self, LoadPlan, LoadTarget};
use crate::report::{LoadResult, Machine, Mode, thousands, us};
use crate::run::repo_root;
use crate::servers::{self, Server};
use crate::{updraft, wrk};

pub const MARKER_START: &str = "<!-- languages:start -->";
pub const MARKER_END: &str = "<!-- languages:end -->";

/// The three servers of each language's load points.
pub const UPDRAFT: &str = "updraft";
pub const UPDRAFT_NO_SPARES: &str = "updraft-no-spares";
pub const WASMTIME: &str = "wasmtime-serve";
/// The pre-initialisation points' two deployments of one function.
pub const PREINIT_PLAIN: &str = "updraft-plain";
pub const PREINIT_SNAPSHOT: &str = "updraft-preinitialized";
/// The pre-initialisation guest, and what it answers (`$GREETING` unset).
const PREINIT_GUEST: &str = "preinit.wasm";
const PREINIT_BODY: &str = "hello primes=148933 sum=142913828922 last=1999993 request=1\n";
/// The Python pair's deployments: its libraries loaded per instance, and
/// loaded in componentize-py's snapshot.
pub const PYTHON_PLAIN: &str = "updraft-python-imports-per-instance";
pub const PYTHON_SNAPSHOT: &str = "updraft-python-imports-in-snapshot";
/// The Python pair's guests, and what both answer to `GET /`.
const PYTHON_PLAIN_GUEST: &str = "py-imports-lazy.wasm";
const PYTHON_SNAPSHOT_GUEST: &str = "py-imports.wasm";
const PYTHON_IMPORTS_BODY: &str = r#"{"close": ["total"], "mean": 2.75, "query": {}, "served": 1, "subject": "totals", "total": "11.00"}
"#;

pub struct Options {
    pub mode: Mode,
    pub updraft: Option<PathBuf>,
    pub wasmtime: Option<PathBuf>,
    pub guests: Option<PathBuf>,
    pub command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LanguagesReport {
    pub command: String,
    pub machine: Machine,
    pub concurrencies: Vec<u32>,
    pub duration_s: u64,
    pub rounds: u32,
    pub languages: Vec<Language>,
    /// The pre-initialisation points (absent in reports from before them).
    #[serde(default)]
    pub preinit: Option<Preinit>,
    /// The same for Python (absent in tiny runs, and from before them).
    #[serde(default)]
    pub python_preinit: Option<Preinit>,
}

/// One function deployed plain and pre-initialised, on one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Preinit {
    /// Plain, then pre-initialised: the same file when Updraft
    /// pre-initialises it at deploy.
    pub guests: [String; 2],
    pub wasm_bytes: [u64; 2],
    /// The load points' server names, in the same order.
    pub servers: [String; 2],
    /// `PUT` → 201: plain, then pre-initialised (the initialisation and the
    /// snapshot included).
    pub deploy_ms: [f64; 2],
    /// The first `GET` after the 201: plain, then pre-initialised.
    pub first_response_ms: [f64; 2],
    /// Servers [`PREINIT_PLAIN`] and [`PREINIT_SNAPSHOT`].
    pub load: Vec<LoadResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Language {
    /// `python`, `javascript` (or `rust` in a tiny run).
    pub name: String,
    pub guest: String,
    pub wasm_bytes: u64,
    /// Updraft: `PUT` → 201, compiling included.
    pub deploy_ms: f64,
    /// Updraft: the first `GET` after the 201.
    pub first_response_ms: f64,
    /// `wasmtime serve`: launch → first 200 (probed every 20 ms).
    pub wasmtime_first_response_ms: f64,
    /// Tiered compilation (absent in reports from before it).
    #[serde(default)]
    pub tiers: Option<Tiers>,
    pub load: Vec<LoadResult>,
}

/// Both tiers of one component on the `updraft-…` server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tiers {
    /// The code the deploy answered with: `baseline` (Winch) or
    /// `optimized` (Cranelift).
    pub deployed: String,
    /// p50 of [`TIER_PROBES`] sequential GETs right after the first
    /// response, served by Winch's code while Cranelift compiles on the
    /// other core; `None` when Winch's code did not serve them all.
    pub baseline_p50_ms: Option<f64>,
    /// `PUT` → Cranelift's code serves.
    pub optimized_ms: f64,
    /// The same GETs once Cranelift's code serves.
    pub optimized_p50_ms: f64,
}

/// Sequential GETs timed on each tier.
pub const TIER_PROBES: usize = 20;
/// Longest wait for Cranelift's code: an 18 MiB component compiles in
/// about 10 s on a busy 2-core machine.
const TIER_UP_WAIT: Duration = Duration::from_secs(300);

/// One language's component, and what it answers.
struct Guest {
    name: &'static str,
    file: &'static str,
    body: &'static str,
    updraft: &'static str,
    no_spares: &'static str,
    wasmtime: &'static str,
}

const PYTHON: Guest = Guest {
    name: "python",
    file: "hello-python.wasm",
    body: "Hello from Updraft (Python)!\n",
    updraft: "updraft-python",
    no_spares: "updraft-no-spares-python",
    wasmtime: "wasmtime-serve-python",
};

const JAVASCRIPT: Guest = Guest {
    name: "javascript",
    file: "hello-js.wasm",
    body: "Hello from Updraft (JavaScript)!\n",
    updraft: "updraft-javascript",
    no_spares: "updraft-no-spares-javascript",
    wasmtime: "wasmtime-serve-javascript",
};

const RUST: Guest = Guest {
    name: "rust",
    file: "hello-rust.wasm",
    body: crate::native::HELLO_BODY,
    updraft: "updraft-rust",
    no_spares: "updraft-no-spares-rust",
    wasmtime: "wasmtime-serve-rust",
};

pub fn run(options: &Options) -> Result<LanguagesReport> {
    let (bin, guests) = updraft::locate(options.updraft.as_ref(), options.guests.as_ref())?;
    let wasmtime = crate::run::locate_wasmtime(options.wasmtime.as_ref())?;
    let wrk_bin = crate::run::locate_wrk(None)?;
    let (plan, languages): (LoadPlan, &[Guest]) = match options.mode {
        Mode::Full => (plan(5, 1, 3), &[PYTHON, JAVASCRIPT]),
        Mode::Quick => (plan(3, 1, 1), &[PYTHON, JAVASCRIPT]),
        Mode::Tiny => (plan(1, 1, 1), &[RUST]),
    };
    let scratch = tempfile::Builder::new()
        .prefix("updraft-languages-")
        .tempdir()
        .context("cannot create a scratch dir")?;
    let scratch = scratch.path();
    let script = scratch.join("report.lua");
    std::fs::write(&script, wrk::SCRIPT).context("writing the wrk script")?;
    let no_spares = scratch.join("no-spares.toml");
    std::fs::write(&no_spares, "[cpu]\nspare_instances = false\n")
        .context("writing the config without spares")?;
    // A tiny run's hello-rust is below the size that is tiered: tier it
    // anyway, so the tiers are measured in every mode.
    let tiered = scratch.join("tiered.toml");
    let compile = match options.mode {
        Mode::Tiny => "[compile]\ntier_up_min_bytes = 0\n",
        Mode::Full | Mode::Quick => "",
    };
    std::fs::write(&tiered, compile).context("writing the server config")?;
    let on = updraft::start_with(
        &bin,
        &scratch.join("on"),
        "127.0.0.1:0",
        scratch,
        &["--config", &tiered.to_string_lossy()],
    )?
    .server;
    let off = updraft::start_with(
        &bin,
        &scratch.join("off"),
        "127.0.0.1:0",
        scratch,
        &["--config", &no_spares.to_string_lossy()],
    )?
    .server;
    let mut measured = Vec::new();
    for guest in languages {
        let path = guests.join(guest.file);
        let wasm = updraft::read_guest(&path)?;
        eprintln!(
            "==> {}: {} ({} bytes) on Updraft and wasmtime serve",
            guest.name,
            guest.file,
            wasm.len()
        );
        let route = format!("/{}", guest.name);
        let deploying = Instant::now();
        let deployed = updraft::deploy(on.endpoint, guest.name, &route, &wasm)?;
        let deploy_ms = ms(deploying);
        let started = Instant::now();
        check(&on, &route, guest.body)?;
        let first_response_ms = ms(started);
        let tiers = measure_tiers(&on, guest, &route, deploying, deployed.tier)?;
        updraft::deploy(off.endpoint, guest.name, &route, &wasm)?;
        // Loads are measured on Cranelift's code only.
        updraft::wait_optimized(off.endpoint, guest.name, TIER_UP_WAIT)?;
        let started = Instant::now();
        let peer = start_wasmtime(&wasmtime, scratch, guest, &path)?;
        let wasmtime_first_response_ms = ms(started);
        check(&off, &route, guest.body)?;
        check(&peer, "/", guest.body)?;
        let targets = [
            LoadTarget {
                name: guest.updraft,
                url: on.endpoint.url(&route),
            },
            LoadTarget {
                name: guest.no_spares,
                url: off.endpoint.url(&route),
            },
            LoadTarget {
                name: guest.wasmtime,
                url: peer.endpoint.url("/"),
            },
        ];
        let load = load::measure(&wrk_bin, &script, &targets, &plan)?;
        peer.stop()?;
        measured.push(Language {
            name: guest.name.to_string(),
            guest: guest.file.to_string(),
            wasm_bytes: wasm.len() as u64,
            deploy_ms,
            first_response_ms,
            wasmtime_first_response_ms,
            tiers: Some(tiers),
            load,
        });
    }
    let pair = |plain: &str, snapshot: &str, query, body| Pair {
        servers: [PREINIT_PLAIN, PREINIT_SNAPSHOT],
        guests: [plain.to_string(), snapshot.to_string()].map(|g| guests.join(g)),
        query,
        body,
    };
    eprintln!("==> pre-initialisation: {PREINIT_GUEST} plain and with preinitialize = true");
    let preinit = measure_preinit(
        &on,
        &pair(
            PREINIT_GUEST,
            PREINIT_GUEST,
            "&preinitialize=true",
            PREINIT_BODY,
        ),
        &wrk_bin,
        &script,
        &plan,
    )?;
    let python_preinit = match options.mode {
        Mode::Tiny => None,
        Mode::Full | Mode::Quick => {
            eprintln!(
                "==> Python's imports: {PYTHON_PLAIN_GUEST} (per instance) and {PYTHON_SNAPSHOT_GUEST} (in the snapshot)"
            );
            let python = Pair {
                servers: [PYTHON_PLAIN, PYTHON_SNAPSHOT],
                ..pair(
                    PYTHON_PLAIN_GUEST,
                    PYTHON_SNAPSHOT_GUEST,
                    "",
                    PYTHON_IMPORTS_BODY,
                )
            };
            // At c = 1 only: loading the libraries costs the plain one
            // about a fifth of a second of CPU per request, so at c = 16
            // two cores are overloaded and the server sheds most of them.
            let one = LoadPlan {
                concurrencies: vec![1],
                ..plan.clone()
            };
            Some(measure_preinit(&on, &python, &wrk_bin, &script, &one)?)
        }
    };
    on.stop()?;
    off.stop()?;
    Ok(LanguagesReport {
        command: options.command.clone(),
        machine: Machine::detect(&repo_root()),
        concurrencies: plan.concurrencies.clone(),
        duration_s: plan.duration_s,
        rounds: plan.rounds,
        languages: measured,
        preinit: Some(preinit),
        python_preinit,
    })
}

/// Times [`TIER_PROBES`] sequential GETs on the code the deploy made, waits
/// for Cranelift's code, and times them again. `deploying`: when the `PUT`
/// was sent.
fn measure_tiers(
    server: &Server,
    guest: &Guest,
    route: &str,
    deploying: Instant,
    deployed: Option<String>,
) -> Result<Tiers> {
    let deployed = deployed.unwrap_or_else(|| "optimized".to_string());
    let probes = || -> Result<f64> {
        let mut times = Vec::with_capacity(TIER_PROBES);
        for _ in 0..TIER_PROBES {
            let started = Instant::now();
            check(server, route, guest.body)?;
            times.push(ms(started));
        }
        Ok(crate::stats::median(&times))
    };
    let first = probes()?;
    let still_baseline = updraft::tier(server.endpoint, guest.name)?.as_deref() == Some("baseline");
    let baseline_p50_ms = (deployed == "baseline" && still_baseline).then_some(first);
    updraft::wait_optimized(server.endpoint, guest.name, TIER_UP_WAIT)?;
    let optimized_ms = ms(deploying);
    Ok(Tiers {
        deployed,
        baseline_p50_ms,
        optimized_ms,
        optimized_p50_ms: probes()?,
    })
}

/// A function deployed plain and pre-initialised.
struct Pair {
    /// The load points' server names (and the functions' names).
    servers: [&'static str; 2],
    guests: [PathBuf; 2],
    /// Added to the pre-initialised deploy's query.
    query: &'static str,
    /// What both answer.
    body: &'static str,
}

/// Both deployments of `pair` on `server`, each on its optimized code,
/// then their load points.
fn measure_preinit(
    server: &Server,
    pair: &Pair,
    wrk_bin: &Path,
    script: &Path,
    plan: &LoadPlan,
) -> Result<Preinit> {
    let mut deploy_ms = [0.0; 2];
    let mut first_response_ms = [0.0; 2];
    let mut wasm_bytes = [0; 2];
    let mut targets = Vec::new();
    for i in 0..2 {
        let name = pair.servers[i];
        let query = if i == 1 { pair.query } else { "" };
        let wasm = updraft::read_guest(&pair.guests[i])?;
        wasm_bytes[i] = wasm.len() as u64;
        let route = format!("/{name}");
        let started = Instant::now();
        updraft::deploy_with(
            server.endpoint,
            name,
            &format!("route={route}{query}"),
            &wasm,
        )?;
        deploy_ms[i] = ms(started);
        let started = Instant::now();
        check(server, &route, pair.body)?;
        first_response_ms[i] = ms(started);
        // A big component's load is measured on Cranelift's code.
        updraft::wait_optimized(server.endpoint, name, TIER_UP_WAIT)?;
        targets.push(LoadTarget {
            name,
            url: server.endpoint.url(&route),
        });
    }
    let load = load::measure(wrk_bin, script, &targets, plan)?;
    Ok(Preinit {
        guests: pair.guests.clone().map(|g| {
            g.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        }),
        wasm_bytes,
        servers: pair.servers.map(str::to_string),
        deploy_ms,
        first_response_ms,
        load,
    })
}

fn plan(duration_s: u64, warmup_s: u64, rounds: u32) -> LoadPlan {
    LoadPlan {
        concurrencies: vec![1, 16],
        duration_s,
        warmup_s,
        rounds,
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// `GET path` must answer 200 with `body`: the servers compared serve the same.
fn check(server: &Server, path: &str, body: &str) -> Result<()> {
    let response = http::send(server.endpoint, &Request::get(path), http::CONTROL_TIMEOUT)?;
    if response.status != 200 || response.text() != body {
        bail!(
            "{} answered {} {:?} to GET {path}, not 200 {body:?}",
            server.name,
            response.status,
            response.text()
        );
    }
    Ok(())
}

/// `wasmtime serve -Scli` on `wasm` (componentize-js and -py import
/// wasi:cli), its compile cache in a fresh dir: it compiles at start.
fn start_wasmtime(wasmtime: &Path, scratch: &Path, guest: &Guest, wasm: &Path) -> Result<Server> {
    let port = servers::free_port()?;
    let endpoint = http::Endpoint::parse(&format!("http://127.0.0.1:{port}"))?;
    let mut command = Command::new(wasmtime);
    command
        .arg("serve")
        .args(["--addr", &endpoint.addr.to_string(), "-Scli"])
        .arg(wasm)
        .env(
            "XDG_CACHE_HOME",
            scratch.join(format!("xdg-{}", guest.name)),
        );
    servers::start_probed(
        guest.wasmtime,
        command,
        endpoint,
        "/",
        scratch.join(format!("{}.log", guest.wasmtime)),
    )
}

/// The section of BENCHMARKS.md.
pub fn markdown(report: &LanguagesReport) -> String {
    let mut md = report.machine.run_line(&report.command);
    md.push_str(
        "| language | component | Updraft deploy → 201 | Updraft first response after it | \
         `wasmtime serve` launch → first response |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    for l in &report.languages {
        md.push_str(&format!(
            "| {} | {:.1} MiB | {:.0} ms | {:.1} ms | {:.0} ms |\n",
            l.name,
            l.wasm_bytes as f64 / (1024.0 * 1024.0),
            l.deploy_ms,
            l.first_response_ms,
            l.wasmtime_first_response_ms
        ));
    }
    tiers_markdown(&mut md, &report.languages);
    md.push_str(&format!(
        "\nFresh instance per request on all three servers; wrk -t1, {} s per point, \
         servers alternated, median of {} round(s). Latencies in µs.\n\n\
         | language | server | c | req/s | p50 | p99 | errors |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
        report.duration_s, report.rounds
    ));
    for l in &report.languages {
        for r in &l.load {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                l.name,
                r.server,
                r.concurrency,
                thousands(r.rps),
                us(r.p50_us),
                us(r.p99_us),
                r.errors.total()
            ));
        }
    }
    md.push_str(
        "\n| language | c | Updraft ÷ wasmtime serve, req/s | p50 | \
         Updraft ÷ Updraft without spares, req/s | p50 |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for l in &report.languages {
        for &c in &report.concurrencies {
            let find = |suffix: &str| {
                l.load
                    .iter()
                    .find(|r| r.concurrency == c && r.server == format!("{suffix}-{}", l.name))
            };
            let (Some(u), Some(off), Some(w)) =
                (find(UPDRAFT), find(UPDRAFT_NO_SPARES), find(WASMTIME))
            else {
                continue;
            };
            md.push_str(&format!(
                "| {} | {c} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |\n",
                l.name,
                u.rps / w.rps,
                u.p50_us / w.p50_us,
                u.rps / off.rps,
                u.p50_us / off.p50_us
            ));
        }
    }
    if let Some(p) = &report.preinit {
        let about = format!(
            "Pre-initialisation: `{}` ({:.0} KiB; its state, the primes below 2,000,000, built \
             by `wizer-initialize`) deployed plain (the first request of every fresh instance \
             builds the state) and with `preinitialize = true` (built once at deploy, every \
             instance starts from the snapshot), on one server; fresh instance per request.",
            p.guests[0],
            p.wasm_bytes[0] as f64 / 1024.0
        );
        preinit_markdown(&mut md, p, &about, &report.concurrencies);
    }
    if let Some(p) = &report.python_preinit {
        let about = format!(
            "Python's pre-initialisation is componentize-py's build-time snapshot. `{}` ({:.1} \
             MiB) imports json, email, decimal, statistics, difflib and urllib.parse at module \
             level, so the snapshot holds them loaded; `{}` ({:.1} MiB) is the same function \
             with the import in its handler, so every fresh instance loads them on its \
             request. Both answer the same JSON; one server, fresh instance per request, \
             Cranelift's code; c = 1 only (at c = 16 the plain one's CPU per request \
             overloads two cores, and the server sheds most of its requests with 429).",
            p.guests[1],
            p.wasm_bytes[1] as f64 / (1024.0 * 1024.0),
            p.guests[0],
            p.wasm_bytes[0] as f64 / (1024.0 * 1024.0),
        );
        preinit_markdown(&mut md, p, &about, &report.concurrencies);
    }
    md
}

/// The tiers table: Winch's code at the deploy, Cranelift's later.
fn tiers_markdown(md: &mut String, languages: &[Language]) {
    if languages.iter().all(|l| l.tiers.is_none()) {
        return;
    }
    md.push_str(&format!(
        "\nTiered compilation on the Updraft server above: the code the deploy answered with \
         (`baseline`: Winch), the median of {TIER_PROBES} sequential requests on it right after \
         the first response (while Cranelift compiles in the background), the time from the \
         `PUT` until Cranelift's code serves, and the same requests on it.\n\n\
         | language | deployed | p50 on Winch's code | deploy → Cranelift's code serves | \
         p50 on Cranelift's code |\n| --- | --- | ---: | ---: | ---: |\n"
    ));
    for l in languages {
        let Some(t) = &l.tiers else { continue };
        let baseline = t
            .baseline_p50_ms
            .map_or_else(|| "—".to_string(), |ms| format!("{ms:.2} ms"));
        md.push_str(&format!(
            "| {} | {} | {baseline} | {:.0} ms | {:.2} ms |\n",
            l.name, t.deployed, t.optimized_ms, t.optimized_p50_ms
        ));
    }
}

/// One [`Preinit`] pair's table, after `about`.
fn preinit_markdown(md: &mut String, p: &Preinit, about: &str, concurrencies: &[u32]) {
    md.push_str(&format!(
        "\n{about}\n\n| deployment | deploy → 201 | first response |"
    ));
    for c in concurrencies {
        md.push_str(&format!(" req/s c={c} | p50 c={c} |"));
    }
    md.push_str("\n| --- | ---: | ---: |");
    for _ in concurrencies {
        md.push_str(" ---: | ---: |");
    }
    md.push('\n');
    let point = |server: &str, c: u32| {
        p.load
            .iter()
            .find(|r| r.server == server && r.concurrency == c)
    };
    for (i, server) in p.servers.iter().enumerate() {
        md.push_str(&format!(
            "| {server} | {:.0} ms | {:.2} ms |",
            p.deploy_ms[i], p.first_response_ms[i]
        ));
        for &c in concurrencies {
            match point(server, c) {
                Some(r) => md.push_str(&format!(" {} | {} |", thousands(r.rps), us(r.p50_us))),
                None => md.push_str(" — | — |"),
            }
        }
        md.push('\n');
    }
    md.push_str("| pre-initialised ÷ plain | | |");
    for &c in concurrencies {
        match (point(&p.servers[1], c), point(&p.servers[0], c)) {
            (Some(s), Some(plain)) => md.push_str(&format!(
                " {:.2}× | {:.2}× |",
                s.rps / plain.rps,
                s.p50_us / plain.p50_us
            )),
            _ => md.push_str(" — | — |"),
        }
    }
    md.push('\n');
}
