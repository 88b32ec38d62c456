//! The fuzz targets under `fuzz/` (a cargo-fuzz project, its own
//! workspace; see `docs/fuzzing.md`): `cargo xtask test` runs each one for
//! [`CI_SECONDS`] on a fresh copy of its committed seeds, and `cargo xtask
//! fuzz [TARGET] [--seconds N]` runs longer on a corpus kept between runs.
//!
//! Built by `cargo fuzz` on the stable toolchain: without a sanitizer
//! (AddressSanitizer needs nightly's `-Zsanitizer`; the code fuzzed has no
//! `unsafe`), with libFuzzer's coverage instrumentation, optimized, with
//! debug assertions and overflow checks. A crash fails the command, naming
//! the target and the input that crashed it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Every fuzz target, in the order they run.
pub const TARGETS: &[&str] = &[
    "manifest",
    "router",
    "cloudevents",
    "deploy_wasm",
    "deploy_multipart",
    "kv_journal",
    "queue_codec",
];

/// Seconds each target runs in `cargo xtask test` (CI).
pub const CI_SECONDS: u64 = 20;
/// Seconds each target runs in `cargo xtask fuzz` by default.
pub const LONG_SECONDS_DEFAULT: u64 = 300;
/// Longest a single input may take before libFuzzer calls it a hang.
const INPUT_TIMEOUT_SECS: u64 = 10;

/// Where the corpus a run grows lives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Corpus {
    /// A fresh copy of the seeds, so every CI run does the same work.
    Fresh,
    /// `fuzz/target/corpus/<target>`, kept between runs, with the seeds
    /// added.
    Kept,
}

fn fuzz_dir() -> PathBuf {
    crate::flow::root().join("fuzz")
}

/// `fuzz/target`, whatever `CARGO_TARGET_DIR` says: the instrumented build
/// never mixes with the main workspace's.
fn target_dir() -> PathBuf {
    fuzz_dir().join("target")
}

/// Builds every target (one cargo invocation; the dependencies are shared).
fn build() -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args(["fuzz", "build", "--release", "--debug-assertions"])
        .args(["--sanitizer", "none"])
        .arg("--fuzz-dir")
        .arg(fuzz_dir())
        .arg("--target-dir")
        .arg(target_dir())
        .env_remove("CARGO_TARGET_DIR");
    crate::flow::run(&mut cmd).context(
        "building the fuzz targets failed (cargo-fuzz missing? scripts/setup.sh test installs it)",
    )
}

/// `fuzz/target/<host triple>/release/<target>`, where cargo fuzz puts it.
fn binary(target: &str) -> PathBuf {
    std::fs::read_dir(target_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("release").join(target))
        .find(|path| path.is_file())
        .unwrap_or_else(|| target_dir().join("release").join(target))
}

/// What libFuzzer reported at the end of a run.
#[derive(Default)]
struct Stats {
    runs: u64,
    cov: u64,
    ft: u64,
    corpus: u64,
}

/// Reads the last status line (`#N DONE cov: C ft: F corp: K/…`).
fn stats(log: &str) -> Stats {
    let mut stats = Stats::default();
    for line in log.lines().filter(|l| l.starts_with('#')) {
        let mut words = line.split_whitespace();
        let Some(runs) = words
            .next()
            .and_then(|w| w.trim_start_matches('#').parse().ok())
        else {
            continue;
        };
        stats.runs = runs;
        let rest: Vec<&str> = words.collect();
        for pair in rest.windows(2) {
            let number = |s: &str| s.split('/').next().and_then(|n| n.parse().ok());
            match pair[0] {
                "cov:" => stats.cov = number(pair[1]).unwrap_or(stats.cov),
                "ft:" => stats.ft = number(pair[1]).unwrap_or(stats.ft),
                "corp:" => stats.corpus = number(pair[1]).unwrap_or(stats.corpus),
                _ => {}
            }
        }
    }
    stats
}

fn copy_seeds(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("no seeds in {}", from.display()))?
    {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Runs one built target for `seconds`; fails naming the crashing input.
fn run_one(target: &str, seconds: u64, corpus: Corpus) -> Result<Stats> {
    let dir = target_dir();
    let seeds = fuzz_dir().join("corpus").join(target);
    let work = match corpus {
        Corpus::Fresh => dir.join("corpus-ci").join(target),
        Corpus::Kept => dir.join("corpus").join(target),
    };
    if corpus == Corpus::Fresh && work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    copy_seeds(&seeds, &work)?;
    let artifacts = dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)?;
    let before: Vec<PathBuf> = crashes(&artifacts)?;
    eprintln!(
        "==> fuzz {target} for {seconds} s (log: {})",
        log_path.display()
    );
    let status = Command::new(binary(target))
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg(&work)
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .with_context(|| format!("cannot run the fuzz target {target}"))?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let found: Vec<PathBuf> = crashes(&artifacts)?
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        let input = found
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none written (see the log)".into());
        bail!(
            "fuzz target {target} failed ({status}): crashing input {input}; log {}; \
             reproduce with {} {input}",
            log_path.display(),
            binary(target).display()
        );
    }
    Ok(stats(&text))
}

/// The inputs libFuzzer saved in `artifacts` (crash-, timeout-, oom-…).
fn crashes(artifacts: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(artifacts)? {
        found.push(entry?.path());
    }
    Ok(found)
}

/// Builds the targets, then runs `targets` one after the other for
/// `seconds` each, printing each one's executions, coverage and corpus.
pub fn run(targets: &[&str], seconds: u64, corpus: Corpus) -> Result<()> {
    let started = Instant::now();
    build()?;
    let built = started.elapsed();
    let mut lines = Vec::new();
    for target in targets {
        let s = run_one(target, seconds, corpus)?;
        lines.push(format!(
            "{target:<17} {:>11} runs  cov {:>5}  ft {:>6}  corpus {:>5}",
            s.runs, s.cov, s.ft, s.corpus
        ));
    }
    eprintln!(
        "fuzzing done: build {} s, {} targets x {seconds} s, {} s in all; no crash\n{}",
        built.as_secs(),
        targets.len(),
        started.elapsed().as_secs(),
        lines.join("\n")
    );
    Ok(())
}

/// `cargo xtask fuzz [TARGET] [--seconds N]`.
pub fn command(args: &[String]) -> Result<()> {
    let mut seconds = LONG_SECONDS_DEFAULT;
    let mut only = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" | "-s" => {
                seconds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .context("--seconds takes a whole number of seconds above 0")?;
            }
            flag if flag.starts_with('-') => {
                bail!("unknown flag `{flag}` for `fuzz`\n\n{}", crate::USAGE)
            }
            name => {
                let Some(target) = TARGETS.iter().find(|t| **t == name) else {
                    bail!(
                        "no fuzz target `{name}`: the targets are {}",
                        TARGETS.join(", ")
                    );
                };
                only = Some(*target);
            }
        }
    }
    let targets: Vec<&str> = match only {
        Some(target) => vec![target],
        None => TARGETS.to_vec(),
    };
    run(&targets, seconds, Corpus::Kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_status_line_gives_the_stats() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 12 corp: 3/40b exec/s: 0\n\
                   #1048576\tpulse  cov: 120 ft: 300 corp: 50/2Kb lim: 4096\n\
                   #1200000\tDONE   cov: 130 ft: 321 corp: 55/3Kb lim: 4096 exec/s: 60000\n\
                   Done 1200000 runs in 21 second(s)\n";
        let s = stats(log);
        assert_eq!((s.runs, s.cov, s.ft, s.corpus), (1_200_000, 130, 321, 55));
    }

    #[test]
    fn every_target_has_seeds_and_a_source() {
        for target in TARGETS {
            let seeds = fuzz_dir().join("corpus").join(target);
            let count = std::fs::read_dir(&seeds).map(|d| d.count()).unwrap_or(0);
            assert!(count > 0, "{} has no seeds", seeds.display());
            let source = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
            assert!(source.is_file(), "{} is missing", source.display());
        }
    }
}
