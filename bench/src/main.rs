//! The `updraft-bench` command: `run` benchmarks Updraft against its peers
//! (see `BENCHMARKS.md`); `compare` puts two runs side by side; `native` is
//! the native baseline server that `run` starts as a child process.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use updraft_bench::report::{self, Mode};
use updraft_bench::run::{self, Options};

#[derive(Parser)]
#[command(
    name = "updraft-bench",
    about = "Updraft's end-to-end benchmark harness"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmark native hyper, `wasmtime serve` and Updraft; print the tables.
    Run(RunArgs),
    /// Two runs side by side (the JSON `run --out` wrote): every metric
    /// with its ratio after ÷ before, worse-than-noise lines marked.
    Compare {
        /// The run before the change.
        before: PathBuf,
        /// The run after it.
        after: PathBuf,
    },
    /// Fair CPU: a light tenant's latency while another tenant's
    /// invocations spin or exhaust their memory, with and without the
    /// background lane (BENCHMARKS.md, "Fair CPU").
    Fairness(FairnessArgs),
    /// Scale: N invocations of a function that sleeps 1 s, sent at once to
    /// an idle server; the time until all run and the memory each takes
    /// (BENCHMARKS.md, "10,000 in flight").
    Inflight(InFlightArgs),
    /// Overload: a function with a CPU cost at 1× to 4× the rate the
    /// server sustains, open loop, with load shedding on and off: goodput,
    /// RSS and recovery (BENCHMARKS.md, "Overload").
    Overload(PhaseArgs),
    /// Elasticity: step and ramp loads of a function that computes then
    /// waits, on one server and on a cluster; demand against instances
    /// running, the SPEC RG metrics and an SVG plot (BENCHMARKS.md,
    /// "Elasticity").
    Elasticity(PhaseArgs),
    /// Python and JavaScript: hello-python and hello-js on Updraft (with
    /// and without spare instances) against `wasmtime serve` on the same
    /// components: deploy → first response, warm load (BENCHMARKS.md,
    /// "Python and JavaScript").
    Languages(LanguagesArgs),
    /// Serve the native hello (started by `run`; prints its URL first).
    Native {
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Short points, one round, few repetitions: under ~2 minutes.
    #[arg(long)]
    quick: bool,
    /// Seconds in all, for the harness's own test; implies --quick's shape
    /// with tiny counts. Numbers from it mean nothing.
    #[arg(long)]
    tiny: bool,
    /// Seconds per load point (full 10, quick 2).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Where to write the JSON result [default: target/bench/result.json].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Rewrite the results section of BENCHMARKS.md.
    #[arg(long)]
    update_md: bool,
    /// The Markdown file --update-md rewrites [default: BENCHMARKS.md at the repo root].
    #[arg(long, value_name = "FILE")]
    md: Option<PathBuf>,
    /// The updraft binary [default: next to this one, same profile].
    #[arg(long, value_name = "PATH")]
    updraft: Option<PathBuf>,
    /// The wasmtime CLI [default: on PATH, else ~/.cargo/bin].
    #[arg(long, value_name = "PATH")]
    wasmtime: Option<PathBuf>,
    /// The wrk load generator [default: on PATH].
    #[arg(long, value_name = "PATH")]
    wrk: Option<PathBuf>,
    /// Dir with hello-rust.wasm and http-chaos.wasm [default: target/guests].
    #[arg(long, value_name = "DIR")]
    guests: Option<PathBuf>,
}

/// What every run of its own (`fairness`, `inflight`, `overload`,
/// `elasticity`) takes.
#[derive(Args)]
struct PhaseArgs {
    /// A shorter run: a first look.
    #[arg(long)]
    quick: bool,
    /// Seconds in all, for the harness's own test. Numbers from it mean nothing.
    #[arg(long)]
    tiny: bool,
    /// Where to write the JSON result [default: target/bench/NAME.json].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Rewrite this run's section of BENCHMARKS.md.
    #[arg(long)]
    update_md: bool,
    /// The Markdown file --update-md rewrites [default: BENCHMARKS.md at the repo root].
    #[arg(long, value_name = "FILE")]
    md: Option<PathBuf>,
    /// The updraft binary [default: next to this one, same profile].
    #[arg(long, value_name = "PATH")]
    updraft: Option<PathBuf>,
    /// Dir with the test guests [default: target/guests].
    #[arg(long, value_name = "DIR")]
    guests: Option<PathBuf>,
}

impl PhaseArgs {
    fn mode(&self) -> Mode {
        if self.tiny {
            Mode::Tiny
        } else if self.quick {
            Mode::Quick
        } else {
            Mode::Full
        }
    }

    /// Prints `results`, writes `report` as JSON and, with --update-md,
    /// `results` between `markers` of the Markdown file.
    fn finish(
        self,
        name: &str,
        report: &impl serde::Serialize,
        results: &str,
        markers: (&str, &str),
    ) -> Result<()> {
        println!("{results}");
        let out = match self.out {
            Some(out) => out,
            None => run::default_out()?.with_file_name(format!("{name}.json")),
        };
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(report)?;
        std::fs::write(&out, json + "\n").with_context(|| format!("writing {}", out.display()))?;
        eprintln!("==> wrote {}", out.display());
        if self.update_md {
            let md = self
                .md
                .unwrap_or_else(|| run::repo_root().join("BENCHMARKS.md"));
            report::update_section(&md, markers.0, markers.1, results)?;
            eprintln!("==> updated {}", md.display());
        }
        Ok(())
    }
}

#[derive(Args)]
struct FairnessArgs {
    #[command(flatten)]
    phase: PhaseArgs,
    /// `[cpu] background_threads` of the two-lane server [default: the server's].
    #[arg(long, value_name = "N")]
    background_threads: Option<usize>,
}

#[derive(Args)]
struct LanguagesArgs {
    #[command(flatten)]
    phase: PhaseArgs,
    /// The wasmtime CLI [default: on PATH, else ~/.cargo/bin].
    #[arg(long, value_name = "PATH")]
    wasmtime: Option<PathBuf>,
}

#[derive(Args)]
struct InFlightArgs {
    #[command(flatten)]
    phase: PhaseArgs,
    /// Invocations at once [default: 10000; --quick 2000; --tiny 200].
    #[arg(long, value_name = "N")]
    count: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run_command(args),
        Cmd::Compare { before, after } => compare_command(&before, &after),
        Cmd::Fairness(args) => fairness_command(args),
        Cmd::Inflight(args) => inflight_command(args),
        Cmd::Overload(args) => overload_command(args),
        Cmd::Elasticity(args) => elasticity_command(args),
        Cmd::Languages(args) => languages_command(args),
        Cmd::Native { listen } => updraft_bench::native::serve(&listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(args: RunArgs) -> Result<()> {
    let mode = if args.tiny {
        Mode::Tiny
    } else if args.quick {
        Mode::Quick
    } else {
        Mode::Full
    };
    let options = Options {
        mode,
        duration_s: args.duration,
        updraft: args.updraft,
        wasmtime: args.wasmtime,
        wrk: args.wrk,
        guests: args.guests,
        command: repeat_command()?,
    };
    let out = match args.out {
        Some(out) => out,
        None => run::default_out()?,
    };
    let report = run::run(&options)?;
    let results = report::markdown(&report);
    println!("{results}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&out, json + "\n").with_context(|| format!("writing {}", out.display()))?;
    eprintln!("==> wrote {}", out.display());
    if args.update_md {
        let md = args
            .md
            .unwrap_or_else(|| run::repo_root().join("BENCHMARKS.md"));
        report::update_markdown(&md, &results)?;
        eprintln!("==> updated {}", md.display());
    }
    Ok(())
}

fn fairness_command(args: FairnessArgs) -> Result<()> {
    use updraft_bench::fairness;
    let report = fairness::run(&fairness::Options {
        mode: args.phase.mode(),
        updraft: args.phase.updraft.clone(),
        guests: args.phase.guests.clone(),
        background_threads: args.background_threads,
        command: repeat_command()?,
    })?;
    let results = fairness::markdown(&report);
    let markers = (fairness::MARKER_START, fairness::MARKER_END);
    args.phase.finish("fairness", &report, &results, markers)
}

fn languages_command(args: LanguagesArgs) -> Result<()> {
    use updraft_bench::languages;
    let report = languages::run(&languages::Options {
        mode: args.phase.mode(),
        updraft: args.phase.updraft.clone(),
        wasmtime: args.wasmtime,
        guests: args.phase.guests.clone(),
        command: repeat_command()?,
    })?;
    let results = languages::markdown(&report);
    let markers = (languages::MARKER_START, languages::MARKER_END);
    args.phase.finish("languages", &report, &results, markers)
}

fn inflight_command(args: InFlightArgs) -> Result<()> {
    use updraft_bench::inflight;
    let report = inflight::run(&inflight::Options {
        mode: args.phase.mode(),
        count: args.count,
        updraft: args.phase.updraft.clone(),
        guests: args.phase.guests.clone(),
        command: repeat_command()?,
    })?;
    let results = inflight::markdown(&report);
    let markers = (inflight::MARKER_START, inflight::MARKER_END);
    args.phase.finish("inflight", &report, &results, markers)?;
    anyhow::ensure!(
        report.failed == 0,
        "{} of {} invocations failed: {}",
        report.failed,
        report.count,
        report.failures.join("; ")
    );
    Ok(())
}

fn overload_command(args: PhaseArgs) -> Result<()> {
    use updraft_bench::overload;
    let report = overload::run(&overload::Options {
        mode: args.mode(),
        updraft: args.updraft.clone(),
        guests: args.guests.clone(),
        command: repeat_command()?,
    })?;
    let results = overload::markdown(&report);
    let markers = (overload::MARKER_START, overload::MARKER_END);
    args.finish("overload", &report, &results, markers)
}

fn elasticity_command(args: PhaseArgs) -> Result<()> {
    use updraft_bench::elasticity;
    // Where the Markdown it goes into links it, else beside the JSON.
    let plot = if args.update_md {
        let md = args
            .md
            .clone()
            .unwrap_or_else(|| run::repo_root().join("BENCHMARKS.md"));
        md.parent()
            .unwrap_or(Path::new("."))
            .join(elasticity::PLOT_IN_REPO)
    } else {
        run::default_out()?.with_file_name("elasticity.svg")
    };
    let report = elasticity::run(&elasticity::Options {
        mode: args.mode(),
        updraft: args.updraft.clone(),
        guests: args.guests.clone(),
        command: repeat_command()?,
        plot: plot.clone(),
    })?;
    eprintln!("==> plotted {}", plot.display());
    let results = elasticity::markdown(&report);
    let markers = (elasticity::MARKER_START, elasticity::MARKER_END);
    args.finish("elasticity", &report, &results, markers)
}

fn compare_command(before: &std::path::Path, after: &std::path::Path) -> Result<()> {
    let read = |path: &std::path::Path| -> Result<report::Report> {
        let json = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&json).with_context(|| {
            format!(
                "{} is not the JSON of `updraft-bench run --out`",
                path.display()
            )
        })
    };
    print!(
        "{}",
        updraft_bench::compare::markdown(&read(before)?, &read(after)?)
    );
    Ok(())
}

/// This invocation as a `cargo run` line, with the profile this binary was
/// built in, so the Markdown says exactly how to get the same run again.
fn repeat_command() -> Result<String> {
    let profile = run::profile_dir()?;
    let release = if profile.file_name().is_some_and(|n| n == "release") {
        " --release"
    } else {
        ""
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    Ok(format!(
        "cargo run -p updraft-bench{release} -- {}",
        args.join(" ")
    ))
}
