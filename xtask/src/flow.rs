//! The README's two commands: `cargo xtask up` (install what is missing,
//! build the guests, start Updraft and deploy the examples) and `cargo xtask
//! test` (install, build the guests, then fmt, clippy, every test and a
//! short run of every fuzz target). CI's
//! `.ci/run` calls `cargo xtask test`, so both paths are the same.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::guests;

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
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
    // The fuzz targets are a workspace of their own.
    run(Command::new("cargo").args(["fmt", "--check", "--manifest-path", "fuzz/Cargo.toml"]))?;
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
        .args(extra))?;
    if extra.is_empty() {
        // The same end-to-end suites again, every server a cluster node on
        // its own nats-server: one behaviour, two backends.
        let mut cluster = Command::new("cargo");
        cluster.args(["test", "-p", "updraft"]);
        for suite in CLUSTER_SUITES {
            cluster.args(["--test", suite]);
        }
        run(cluster.env("UPDRAFT_TEST_CLUSTER", "1"))?;
        // Every fuzz target for a short, fixed time on its seeds.
        crate::fuzz::run(
            crate::fuzz::TARGETS,
            crate::fuzz::CI_SECONDS,
            crate::fuzz::Corpus::Fresh,
        )?;
    }
    Ok(())
}

/// The end-to-end suites `cargo xtask test` runs a second time in cluster
/// mode (`UPDRAFT_TEST_CLUSTER=1`).
const CLUSTER_SUITES: &[&str] = &[
    "lifecycle",
    "kv",
    "blobs",
    "events",
    "calls",
    "tenants",
    "metering",
    "examples",
    "bad_input",
    "hostile",
    "reuse",
    "files",
    "outbound",
    "concurrency",
    "metrics",
    "traces",
];

/// Address `cargo xtask up` serves on.
const LISTEN: &str = "127.0.0.1:8080";

/// `cargo xtask up`.
pub fn up(extra: &[String]) -> Result<()> {
    setup("up")?;
    let bin = build_updraft()?;
    let data_dir = root().join(".updraft");
    let mut args: Vec<String> = vec!["--listen".into(), LISTEN.into()];
    args.extend(extra.iter().cloned());
    let (mut server, url) = start_node(&bin, &data_dir, &args)?;
    wait_healthy(LISTEN)?;
    deploy_examples(&bin, &data_dir, &url)?;
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
         \n  {url}/ui in a browser: the web console (its key: cat .updraft/admin.key)\
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

/// Where `cargo xtask cluster` keeps NATS's data and the nodes' dirs.
const CLUSTER_DIR: &str = ".updraft-cluster";
/// NATS of `cargo xtask cluster`: off the default port, so a NATS the
/// machine already runs is left alone.
const CLUSTER_NATS: &str = "127.0.0.1:14222";
/// The first node's port; the others follow.
const CLUSTER_FIRST_PORT: u16 = 8081;

/// `cargo xtask cluster [N]`: NATS and N nodes on this machine.
pub fn cluster(args: &[String]) -> Result<()> {
    let nodes: u16 = match args {
        [] => 3,
        [n] => n
            .parse()
            .ok()
            .filter(|n| (1..=9).contains(n))
            .with_context(|| format!("`cluster` takes a node count from 1 to 9, not {n}"))?,
        _ => bail!(
            "`cluster` takes at most one argument, the node count\n\n{}",
            crate::USAGE
        ),
    };
    setup("cluster")?;
    let bin = build_updraft()?;
    let dir = root().join(CLUSTER_DIR);
    std::fs::create_dir_all(&dir)?;
    // Updraft stores values of up to 1 MiB: NATS's default max_payload
    // (1 MB) is too small for them.
    let config = dir.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "listen: {CLUSTER_NATS}\nmax_payload: 8MB\nlog_file: {:?}\njetstream {{ store_dir: {:?} }}\n",
            dir.join("nats.log"),
            dir.join("nats")
        ),
    )?;
    let mut children = vec![
        Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start nats-server (scripts/setup.sh cluster installs it)")?,
    ];
    wait_listening(CLUSTER_NATS)?;
    let cluster_url = format!("nats://{CLUSTER_NATS}");
    let mut urls = Vec::new();
    let first_dir = dir.join("node1");
    for i in 1..=nodes {
        let data_dir = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&data_dir)?;
        // The first node makes the cluster's admin key; the CLI on this
        // machine finds it in any node's data dir.
        if i > 1 && first_dir.join("admin.key").is_file() {
            std::fs::copy(first_dir.join("admin.key"), data_dir.join("admin.key"))?;
        }
        let listen = format!("127.0.0.1:{}", CLUSTER_FIRST_PORT + i - 1);
        let args = [
            "--listen".to_string(),
            listen.clone(),
            "--cluster".to_string(),
            cluster_url.clone(),
        ];
        let (node, url) = start_node(&bin, &data_dir, &args)?;
        children.push(node);
        wait_healthy(&listen)?;
        urls.push(url);
    }
    deploy_examples(&bin, &first_dir, &urls[0])?;
    let others: Vec<String> = urls
        .iter()
        .skip(1)
        .map(|u| format!("\n  curl {u}/hello"))
        .collect();
    println!(
        "\n{nodes} nodes over NATS at {cluster_url}, the examples deployed through the first:\n\
         \n  {}\n\
         \nEvery node serves every function. Try:\n\
         \n  curl {}/hello{}\
         \n  curl {}/counter\
         \n  {} --server {} ls\
         \n\nThe CLI run from this directory finds the admin key with\
         \n  UPDRAFT_DATA_DIR={CLUSTER_DIR}/node1.\
         \nCtrl-C stops NATS and every node; the data stays in ./{CLUSTER_DIR}.",
        urls.join("\n  "),
        urls[0],
        others.concat(),
        urls[urls.len() - 1],
        bin.display(),
        urls[0],
    );
    let mut failed = None;
    for mut child in children {
        let status = child.wait()?;
        if !status.success() && failed.is_none() {
            failed = Some(status);
        }
    }
    match failed {
        // Ctrl-C reaches every process of the group: that is how it ends.
        Some(status) if status.code().is_some() => bail!("a process exited with {status}"),
        _ => Ok(()),
    }
}

/// Builds the guests of the examples and the `updraft` binary; returns it.
fn build_updraft() -> Result<PathBuf> {
    build_guests(true)?;
    run(Command::new("cargo").args(["build", "-p", "updraft"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    Ok(target.join("debug/updraft"))
}

/// Starts `updraft up` on `data_dir` with `args`; returns it and the URL
/// it printed.
fn start_node(
    bin: &Path,
    data_dir: &Path,
    args: &[String],
) -> Result<(std::process::Child, String)> {
    let mut server = Command::new(bin)
        .arg("up")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
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
    Ok((server, url))
}

/// Deploys every example through the server at `url`, as the operator
/// whose admin key is in `data_dir`.
fn deploy_examples(bin: &Path, data_dir: &Path, url: &str) -> Result<()> {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))?
        .filter_map(|e| e.ok().map(|e| e.path().join("updraft.toml")))
        .filter(|p| p.is_file())
        .collect();
    examples.sort();
    for manifest in &examples {
        // The CLI finds the admin key in the data dir wherever it runs.
        run(Command::new(bin)
            .env("UPDRAFT_DATA_DIR", data_dir)
            .arg("--server")
            .arg(url)
            .arg("deploy")
            .arg(manifest))?;
    }
    Ok(())
}

fn wait_listening(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
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
