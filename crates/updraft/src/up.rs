//! `updraft up`: the whole platform in this process on the embedded default —
//! registry, logs and compiled code under the data dir, the gateway on `--listen`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use updraft_scheduler::{Platform, PlatformConfig};

use crate::config::ServerConfig;

/// Options of `updraft up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Directory that holds the registry, compiled code and logs.
    #[arg(long, env = "UPDRAFT_DATA_DIR", default_value = ".updraft")]
    pub data_dir: PathBuf,
    /// Address the gateway listens on (port 0 picks a free port).
    #[arg(long, env = "UPDRAFT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Instances that may run at once; further requests wait for a slot.
    /// Each reserves about 9 GiB of address space (no memory until used).
    #[arg(
        long,
        env = "UPDRAFT_INSTANCES_MAX",
        default_value_t = PlatformConfig::new(PathBuf::new()).instances_max,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(updraft_sandbox::INSTANCES_MAX_MAX)),
    )]
    pub instances_max: u32,
    /// Seconds a function may sit unused before its compiled code is dropped
    /// from memory (scale to zero; it is mapped back from disk on the next
    /// request). 0 keeps everything loaded.
    #[arg(long, env = "UPDRAFT_IDLE_UNLOAD_SECS", default_value_t = updraft_scheduler::IDLE_UNLOAD_DEFAULT.as_secs())]
    pub idle_unload_secs: u64,
    /// Largest blob, in bytes, that a function or the API may store.
    #[arg(long, env = "UPDRAFT_BLOB_BYTES_MAX", default_value_t = PlatformConfig::new(PathBuf::new()).blob_bytes_max)]
    pub blob_bytes_max: u64,
    /// Cluster mode: the NATS servers (with JetStream) that hold the shared
    /// state, comma-separated (`nats://127.0.0.1:4222,nats://…`). Every
    /// node started with the same ones serves the same functions; the data
    /// dir then holds only this node's compile cache and scratch. Overrides
    /// the urls of the config file's [cluster] section.
    #[arg(
        long,
        env = "UPDRAFT_CLUSTER",
        value_name = "URLS",
        value_delimiter = ','
    )]
    pub cluster: Vec<String>,
    /// Server config file: the backends of key-value and blob state (see
    /// docs/server-config.md). Without it, everything is embedded in the data dir.
    #[arg(long, env = "UPDRAFT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name, in `/healthz` and in the status of the invocations
    /// it runs: letters, digits, '-' and '_', at most 64. Default: a new
    /// `node-…` each start.
    #[arg(long, env = "UPDRAFT_NODE_NAME", value_name = "NAME", value_parser = node_name)]
    pub node_name: Option<String>,
}

/// Longest node name.
const NODE_NAME_MAX: usize = 64;

/// A node name: it also prefixes the ids of the node's usage batches, so
/// no character of those ids' other parts ('.') may appear in it.
fn node_name(name: &str) -> Result<String, String> {
    let fits = (1..=NODE_NAME_MAX).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    match fits {
        true => Ok(name.to_string()),
        false => Err(format!(
            "{name:?}: use 1 to {NODE_NAME_MAX} letters, digits, '-' or '_'"
        )),
    }
}

/// Makes what the server creates its user's only (files 0600, dirs 0700):
/// stores, logs, compiled code and scratch hold tenants' data.
#[allow(unsafe_code)]
fn private_files() {
    #[cfg(unix)]
    // SAFETY: umask sets the process's file-creation mask and nothing else;
    // it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks for
/// them on its arenas, and the kernel then zeroes 2 MiB at each first touch:
/// under event load that zeroing took about 10% of the server's CPU, for
/// memory mostly not needed. With 4 KiB pages only what is touched is zeroed.
#[allow(unsafe_code)]
fn disable_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes
        // no memory the program sees; it only tells the kernel how to back
        // future page faults.
        let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if done != 0 {
            tracing::debug!(
                "could not turn transparent huge pages off: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Descriptors the server holds besides its connections: databases, logs,
/// compiled code, the listener, and what guests open under `/tmp`.
const FILES_BESIDE_CONNECTIONS: u64 = 1024;

/// Linux's most open files per process when `fs.nr_open` cannot be read: a
/// hard limit of "unlimited" cannot become the soft one, this can.
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// Lifts the soft open-file limit to the hard one: every connection is a
/// descriptor, and the usual soft limit (1,024) is far below the default
/// `[http] connections_max`. Says so when the hard limit is still below it.
/// Share of the machine's memory that instances may hold by default: the
/// rest is the process's own, the page cache's and other programs'.
const MEMORY_BUDGET_SHARE: u64 = 80;

/// [`MEMORY_BUDGET_SHARE`] of `MemTotal`; `None` (no budget) where
/// /proc/meminfo cannot be read.
fn default_memory_budget_mb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024 * MEMORY_BUDGET_SHARE / 100)
}

fn raise_open_files(connections_max: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let ceiling = limit.maximum.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(NR_OPEN_DEFAULT)
    });
    if limit.current != Some(ceiling) {
        limit.current = Some(ceiling);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("could not raise the open-file limit: {e}");
        }
    }
    // Only a limit below the cap itself is worth a warning at every start:
    // the default cap (20,000) is a ceiling, not a load anyone expects.
    if let Some(have) = getrlimit(Resource::Nofile).current
        && have < connections_max as u64
    {
        let usable = have.saturating_sub(FILES_BESIDE_CONNECTIONS);
        tracing::warn!(
            "this process may open {have} files, fewer than [http] connections_max = \
             {connections_max}: connections past about {usable} wait to be accepted; \
             raise the hard limit (`ulimit -Hn`, or LimitNOFILE= in a systemd unit) or \
             lower connections_max"
        );
    }
}

/// Runs the platform until SIGINT or SIGTERM, then drains in-flight requests.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    disable_huge_pages();
    private_files();
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data dir {}: pick another with --data-dir",
            args.data_dir.display()
        )
    })?;
    // Every tenant's state and the admin key: this user's only.
    updraft_state::private_dir(&args.data_dir).with_context(|| {
        format!(
            "cannot make the data dir {} private (mode 700): is it yours?",
            args.data_dir.display()
        )
    })?;
    let file = match &args.config {
        Some(path) => ServerConfig::load(path)?,
        None => ServerConfig::default(),
    };
    let mut config = PlatformConfig::new(args.data_dir.clone());
    config.cluster = match (file.cluster, args.cluster.is_empty()) {
        (Some(cluster), true) => Some(cluster),
        (Some(mut cluster), false) => {
            cluster.urls = args.cluster.clone();
            Some(cluster)
        }
        (None, false) => Some(updraft_state::nats::ClusterConfig::new(
            args.cluster.iter().cloned(),
        )),
        (None, true) => None,
    };
    config.kv = file.kv;
    config.blobs = file.blobs;
    config.prices = file.prices;
    config.metering = file.metering.enabled;
    config.metrics = file.telemetry.metrics;
    config.traces = updraft_scheduler::traces::TraceConfig {
        enabled: file.telemetry.traces,
        otlp_endpoint: file.telemetry.otlp_endpoint.clone(),
        reservoir_per_second: file.telemetry.trace_reservoir_per_second,
        sample_ratio: file.telemetry.trace_sample_ratio,
    };
    config.background_threads = match (file.cpu.background_lane, file.cpu.background_threads) {
        (false, _) => 0,
        (true, Some(threads)) => threads,
        (true, None) => updraft_sandbox::background_threads_default(),
    };
    config.shed_load = file.cpu.shed_load;
    config.spare_instances = file.cpu.spare_instances;
    config.tier_up_min_bytes = file
        .compile
        .tiered
        .then_some(file.compile.tier_up_min_bytes);
    config.memory_budget_mb = file.memory.budget_mb.or_else(default_memory_budget_mb);
    config.records_retention =
        Duration::from_secs(u64::from(file.metering.records_retention_days) * 86_400);
    config.storage_sample = Duration::from_secs(file.metering.storage_sample_secs);
    let http = file.http;
    raise_open_files(http.connections_max);
    config.instances_max = args.instances_max;
    config.idle_unload =
        (args.idle_unload_secs > 0).then(|| Duration::from_secs(args.idle_unload_secs));
    config.blob_bytes_max = args.blob_bytes_max;
    if let Some(name) = &args.node_name {
        config.node = name.clone();
    }
    let platform = Platform::open(config).await.with_context(|| {
        format!(
            "cannot start on the data dir {} and the configured stores",
            args.data_dir.display()
        )
    })?;
    let new_admin_key = ensure_admin_key(&platform, &args.data_dir).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: is another server running there? choose another with --listen",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let shutdown = shutdown_signal()?;
    // Tests and scripts read this line to learn the port.
    println!(
        "Updraft listening on http://{addr} (data dir {}, {} functions, {} compiled at start)",
        args.data_dir.display(),
        platform.functions().function_count(),
        platform.functions().compiles()
    );
    println!(
        "Web console: http://{addr}{} (sign in with an API key)",
        updraft_gateway::CONSOLE_PATH
    );
    if let Some(path) = new_admin_key {
        println!(
            "Created the admin API key in {} (the CLI on this machine reads it from there; keep it secret)",
            path.display()
        );
    }
    std::io::stdout().flush()?;
    let mut gateway = http
        .gateway()
        .context("the server config's [http] base_domain is not valid")?;
    gateway.metrics_token = file.telemetry.metrics_token.map(Arc::from);
    updraft_gateway::serve(listener, platform, gateway, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// File in the data dir holding the admin key made at first start.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// On a data dir without keys, makes the admin key of the `local` tenant and
/// writes it, readable by this user only, to `DATA_DIR/admin.key`: that file
/// is the credential of the machine's operator. The server itself keeps
/// only the key's hash. Returns the file if a key was made.
async fn ensure_admin_key(platform: &Platform, data_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !platform.api_keys(None).is_empty() {
        return Ok(None);
    }
    let path = data_dir.join(ADMIN_KEY_FILE);
    let (_, key) = platform
        .create_api_key(updraft_core::LOCAL_TENANT, true, "created at first start")
        .await
        .context("cannot create the admin API key")?;
    write_private(&path, &format!("{key}\n"))
        .with_context(|| format!("cannot write the admin API key to {}", path.display()))?;
    Ok(Some(path))
}

/// Writes a file only its owner can read, whole or not at all.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Resolves at SIGINT or SIGTERM. The handlers are registered when this is
/// called, before the address is printed: a signal sent the moment the
/// server says it listens stops it cleanly, instead of killing it.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down: finishing in-flight requests");
    })
}
