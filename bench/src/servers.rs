//! Starting and stopping the servers under test as child processes: the native
//! hyper hello (this crate's own `native` subcommand), `wasmtime serve` in its
//! two modes, and `updraft up`.
//!
//! Every server is a [`Server`] that stops its process when dropped, so an
//! error anywhere in a run leaves nothing behind. Output goes to files in the
//! run's scratch dir (named in errors), except the first stdout line of the
//! servers that print their address, which is read to learn the port.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::http::{self, Endpoint, Request};

/// How long a server may take to start answering: `wasmtime serve` compiles
/// the component first, which takes seconds on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between readiness probes of a server that prints no address line.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// A running child process, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    pub name: String,
    pub endpoint: Endpoint,
    child: Option<Child>,
    /// Where its stderr goes, to point at when it misbehaves.
    pub log: PathBuf,
}

/// A server that printed `… http://ADDR …` as its first stdout line.
pub struct Announced {
    pub server: Server,
    /// When the harness read the address line: the server is listening.
    pub listening_at: Instant,
    /// The whole line (Updraft's says how many functions it compiled at start).
    pub line: String,
}

impl Server {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits for the exit, so the next start finds the data
    /// dir and the port released; kills the process if it does not exit in time.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        // std has no SIGTERM and the workspace forbids `unsafe` (libc::kill), so
        // ask the system's `kill`; a missing `kill` degrades to SIGKILL below.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill()?;
        child.wait()?;
        bail!(
            "{} did not exit within {:?} of SIGTERM and was killed (log: {})",
            self.name,
            STOP_TIMEOUT,
            self.log.display()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port that was free a moment ago, for servers that cannot be told to pick
/// one themselves and report it (`wasmtime serve`). Another process could take
/// it in between; the start then fails with the server's own message.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Starts `command`, whose first stdout line names its URL, and keeps draining
/// its stdout so it never blocks on a full pipe.
pub fn start_announced(name: &str, mut command: Command, log: PathBuf) -> Result<Announced> {
    let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot start {name} ({command:?})"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{name}: no stdout pipe"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send((Instant::now(), line));
        }
        for _ in lines {}
    });
    // Own the child before waiting, so a timeout below still stops it.
    let mut server = Server {
        name: name.to_string(),
        endpoint: Endpoint::parse("http://127.0.0.1:0")?,
        child: Some(child),
        log,
    };
    let (listening_at, line) = match rx.recv_timeout(START_TIMEOUT) {
        Ok(first) => first,
        // The reader ended without a line: stdout closed, the process is gone.
        Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
            "{name} exited before printing its address (port taken? bad data dir?); see {}",
            server.log.display()
        ),
        Err(mpsc::RecvTimeoutError::Timeout) => bail!(
            "{name} printed no address line within {START_TIMEOUT:?}; see {}",
            server.log.display()
        ),
    };
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .ok_or_else(|| anyhow!("{name}'s first line names no http:// URL: {line:?}"))?;
    server.endpoint = Endpoint::parse(url)?;
    Ok(Announced {
        server,
        listening_at,
        line,
    })
}

/// Starts `command` listening on `endpoint` and waits until `GET probe_path`
/// answers 200.
pub fn start_probed(
    name: &str,
    command: Command,
    endpoint: Endpoint,
    probe_path: &str,
    log: PathBuf,
) -> Result<Server> {
    start_checked(name, command, endpoint, log, || {
        let response = http::send(endpoint, &Request::get(probe_path), START_TIMEOUT)?;
        if response.status == 200 {
            Ok(())
        } else {
            bail!("GET {probe_path} answered {}", response.status)
        }
    })
}

/// Starts `command` and waits until `ready` succeeds (a server that is not
/// HTTP passes an endpoint it does not use).
pub fn start_checked(
    name: &str,
    mut command: Command,
    endpoint: Endpoint,
    log: PathBuf,
    ready: impl Fn() -> Result<()>,
) -> Result<Server> {
    let output = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .spawn()
        .with_context(|| format!("cannot start {name} ({command:?})"))?;
    let mut server = Server {
        name: name.to_string(),
        endpoint,
        child: Some(child),
        log,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if ready().is_ok() {
            return Ok(server);
        }
        if let Some(child) = server.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "{name} exited ({status}) before it was ready; see {}",
                server.log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{name} was not ready within {START_TIMEOUT:?}; see {}",
                server.log.display()
            );
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// Resident memory of a process, from `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Rss {
    pub rss_kb: u64,
    /// Heap, stacks, instance memories: what grows with work in flight.
    pub anon_kb: u64,
    /// Mapped files, e.g. compiled artifacts mapped from the cache.
    pub file_kb: u64,
}

pub fn rss(pid: u32) -> Result<Rss> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_rss(&status).with_context(|| format!("no VmRSS in {}", path.display()))
}

fn parse_rss(status: &str) -> Option<Rss> {
    let field = |key: &str| {
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some(Rss {
        rss_kb: field("VmRSS")?,
        anon_kb: field("RssAnon").unwrap_or(0),
        file_kb: field("RssFile").unwrap_or(0),
    })
}

/// The first of `candidates` that exists, else the first `name` on `PATH`.
pub fn find_program(name: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Some(found.clone());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `program --version`'s first line, for the record.
pub fn version_of(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .map(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_fields() {
        let status =
            "Name:\tupdraft\nVmRSS:\t   20480 kB\nRssAnon:\t 8192 kB\nRssFile:\t12288 kB\n";
        let rss = parse_rss(status).unwrap();
        assert_eq!((rss.rss_kb, rss.anon_kb, rss.file_kb), (20480, 8192, 12288));
        assert!(parse_rss("Name:\tx\n").is_none());
    }

    #[test]
    fn own_rss_is_positive() {
        assert!(rss(std::process::id()).unwrap().rss_kb > 0);
    }
}
