//! The README's two commands: `cargo xtask up` (install what is missing,
//! build the guests, start Updraft and deploy the examples) and `cargo xtask
//! test` (install, build the guests, then fmt, clippy and every test). CI's
//! `.ci/run` calls `cargo xtask test`, so both paths are the same.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::guests;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("==> {shown}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Installs what `purpose` (`up` or `test`) needs, skipping what is present:
/// `up` only the guest toolchains, `test` also wasmtime-cli (a 16-minute
/// build) and moto for the tests that compare with or talk to them.
fn setup(purpose: &str) -> Result<()> {
    run(Command::new("bash")
        .arg(root().join("scripts/setup.sh"))
        .arg(purpose))
}

fn build_guests(examples_only: bool) -> Result<()> {
    guests::run(&guests::Options {
        examples_only,
        ..guests::Options::default()
    })
}

/// `cargo xtask test`.
pub fn test(extra: &[String]) -> Result<()> {
    setup("test")?;
    build_guests(false)?;
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new("cargo")
        .args(["test", "--workspace"])
        .args(extra))
}

/// Address `cargo xtask up` serves on.
const LISTEN: &str = "127.0.0.1:8080";

/// `cargo xtask up`.
pub fn up(extra: &[String]) -> Result<()> {
    setup("up")?;
    build_guests(true)?;
    run(Command::new("cargo").args(["build", "-p", "updraft"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let bin = target.join("debug/updraft");
    let mut server = Command::new(&bin)
        .args(["up", "--listen", LISTEN, "--data-dir", ".updraft"])
        .args(extra)
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut first = String::new();
    if let Some(stdout) = server.stdout.take() {
        let mut lines = BufReader::new(stdout);
        lines.read_line(&mut first)?;
        print!("{first}");
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = lines.read_to_string(&mut rest);
        });
    }
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .map(str::to_string)
        .with_context(|| format!("updraft did not start: {first}"))?;
    wait_healthy(LISTEN)?;
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))?
        .filter_map(|e| e.ok().map(|e| e.path().join("updraft.toml")))
        .filter(|p| p.is_file())
        .collect();
    examples.sort();
    for manifest in &examples {
        // The CLI finds the admin key in the data dir wherever it runs.
        run(Command::new(&bin)
            .env("UPDRAFT_DATA_DIR", root().join(".updraft"))
            .arg("--server")
            .arg(&url)
            .arg("deploy")
            .arg(manifest))?;
    }
    println!(
        "\nUpdraft is up with the examples deployed. Try:\n\
         \n  curl {url}/hello\
         \n  curl '{url}/hello?name=Ada'\
         \n  curl --data-binary 'one two three' {url}/wordcount\
         \n  curl {url}/hello-js\
         \n  curl {url}/hello-py\
         \n  curl {url}/counter\
         \n  curl -T README.md {url}/files/readme && curl {url}/files/\
         \n  {} --server {url} ls\
         \n\nThe CLI run from this directory uses the admin key in ./.updraft/admin.key.\
         \nCtrl-C stops it; the data stays in ./.updraft.",
        bin.display()
    );
    let status = server.wait()?;
    if !status.success() {
        bail!("updraft exited with {status}");
    }
    Ok(())
}

fn wait_healthy(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let _ = stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("updraft did not become healthy on {addr} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
