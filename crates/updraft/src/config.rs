//! The server config file of `updraft up --config FILE`: which backends hold
//! state, chosen by `type` per section. Every key is optional; unknown keys
//! and unknown types are errors that name them. Flags and `UPDRAFT_…`
//! variables set the rest.
//!
//! ```toml
//! [cluster]           # cluster mode (docs/cluster.md); or `--cluster URL`
//! urls = ["nats://127.0.0.1:4222"]
//!
//! [kv]
//! type = "embedded"   # kv.redb in the data dir (the only backend so far)
//!
//! [blobs]
//! type = "local"      # files on this machine; or "s3" with url = "s3://bucket"
//! dir = "/srv/blobs"  # default: DATA_DIR/blobs
//!
//! [compile]
//! tiered = true       # big components: Winch at deploy, Cranelift in the background
//!
//! [http]
//! base_domain = "functions.example"   # tenant acme at acme.functions.example
//!
//! [telemetry]
//! metrics_token = "…"  # a scraper's bearer token for /metrics (admin keys work too)
//! ```

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use updraft_metering::PriceSheet;
use updraft_state::blob::BlobConfig;
use updraft_state::kv::KvConfig;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Cluster mode: the NATS holding the shared state (`--cluster` sets
    /// or overrides its `urls`).
    #[serde(default)]
    pub cluster: Option<updraft_state::nats::ClusterConfig>,
    #[serde(default)]
    pub kv: KvConfig,
    #[serde(default)]
    pub blobs: BlobConfig,
    /// The price sheet of bills (default: AWS list prices, see docs/usage.md).
    #[serde(default)]
    pub prices: PriceSheet,
    #[serde(default)]
    pub metering: MeteringConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub cpu: CpuConfig,
    #[serde(default)]
    pub memory: MemoryConfig,
    #[serde(default)]
    pub compile: CompileConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// `[compile]`: how deployed Wasm becomes machine code
/// (docs/server-config.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompileConfig {
    /// Compile big components with Winch first, so they answer soon after
    /// their deploy, and with Cranelift in the background, whose code
    /// then serves [default: true].
    pub tiered: bool,
    /// WASI 0.2 components of at least this many bytes are tiered
    /// [default: 1 MiB].
    pub tier_up_min_bytes: u64,
}

impl Default for CompileConfig {
    fn default() -> Self {
        CompileConfig {
            tiered: true,
            tier_up_min_bytes: updraft_sandbox::TIER_UP_MIN_BYTES_DEFAULT,
        }
    }
}

/// Shortest metrics token: 128 bits of hex, so it cannot be guessed.
const METRICS_TOKEN_LEN_MIN: usize = 32;

/// `[telemetry]`: metrics (docs/server-config.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Count invocations for `/metrics` [default: true]; off only to
    /// measure what counting costs.
    pub metrics: bool,
    /// A bearer token that may read `/metrics` besides admin keys.
    pub metrics_token: Option<String>,
    /// Make spans of invocations, calls and publishes [default: true].
    pub traces: bool,
    /// An OTLP/HTTP collector's base URL: spans go to `{url}/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// New traces recorded each second before the ratio applies
    /// [default: 100].
    pub trace_reservoir_per_second: u32,
    /// The share of new traces recorded past the reservoir, 0 to 1
    /// [default: 0.05]; a trace begun by a client follows the client's
    /// sampled flag.
    pub trace_sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            metrics: true,
            metrics_token: None,
            traces: true,
            otlp_endpoint: None,
            trace_reservoir_per_second: updraft_scheduler::traces::RESERVOIR_PER_SECOND_DEFAULT,
            trace_sample_ratio: updraft_scheduler::traces::SAMPLE_RATIO_DEFAULT,
        }
    }
}

/// Least memory budget: a few instances and the process itself.
const MEMORY_BUDGET_MB_MIN: u64 = 64;

/// `[memory]`: what instances may hold (docs/server-config.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// MiB of linear memory all instances may hold at once [default: 80%
    /// of the machine's memory].
    pub budget_mb: Option<u64>,
}

/// Most background threads: far past any core count Updraft runs on, low
/// enough that a typo (10000) is refused instead of starting that many.
const BACKGROUND_THREADS_MAX: usize = 1024;

/// `[cpu]`: how guests share the cores (docs/server-config.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuConfig {
    /// Move invocations past their foreground share to the low-priority
    /// background lane. Off only to measure what the lane buys.
    pub background_lane: bool,
    /// Threads of the background lane [default: one per core but one, at
    /// least one].
    pub background_threads: Option<usize>,
    /// Refuse invocations past each function's adaptive concurrency limit
    /// with 429 when the CPU cannot keep up. Off only to measure what
    /// shedding buys.
    pub shed_load: bool,
    /// Make fresh instances of recently invoked functions ahead of their
    /// next invocation, with CPU nothing else wants. Off only to measure
    /// what spares buy.
    pub spare_instances: bool,
}

impl Default for CpuConfig {
    fn default() -> Self {
        CpuConfig {
            background_lane: true,
            background_threads: None,
            shed_load: true,
            spare_instances: true,
        }
    }
}

/// `[http]`: what the listener allows (docs/server-config.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Time a client has to send a request's headers, and to start its
    /// next request on a kept-alive connection.
    pub header_read_timeout_ms: u64,
    /// Open connections, in all.
    pub connections_max: usize,
    /// Open connections from one client address.
    pub connections_per_client_max: usize,
    /// Serve `<tenant>.<base_domain>` as that tenant's origin, by its plain
    /// path [default: none, only `/~tenant/...` paths].
    pub base_domain: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout_ms: updraft_gateway::HEADER_READ_TIMEOUT_DEFAULT.as_millis() as u64,
            connections_max: updraft_gateway::CONNECTIONS_MAX_DEFAULT,
            connections_per_client_max: updraft_gateway::CONNECTIONS_PER_CLIENT_MAX_DEFAULT,
            base_domain: None,
        }
    }
}

impl HttpConfig {
    /// The gateway's settings; fails only on a base domain that is not one
    /// ([`ServerConfig::load`] has checked it already).
    pub fn gateway(
        &self,
    ) -> Result<updraft_gateway::GatewayConfig, updraft_gateway::BaseDomainError> {
        let base_domain = match &self.base_domain {
            Some(name) => Some(updraft_gateway::BaseDomain::parse(name)?),
            None => None,
        };
        Ok(updraft_gateway::GatewayConfig {
            limits: updraft_gateway::ServeLimits {
                header_read_timeout: std::time::Duration::from_millis(self.header_read_timeout_ms),
                connections_max: self.connections_max,
                connections_per_client_max: self.connections_per_client_max,
            },
            base_domain,
            metrics_token: None,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeteringConfig {
    /// Off keeps no usage records, bills or budgets: only for measuring
    /// what metering costs.
    pub enabled: bool,
    /// Days raw usage records are kept (the hourly sums stay).
    pub records_retention_days: u32,
    /// Seconds between samples of what each tenant stores (bytes × time is
    /// what storage is billed on).
    pub storage_sample_secs: u64,
}

impl Default for MeteringConfig {
    fn default() -> Self {
        MeteringConfig {
            enabled: true,
            records_retention_days: (updraft_metering::RECORDS_RETENTION_DEFAULT.as_secs() / 86_400)
                as u32,
            storage_sample_secs: updraft_scheduler::STORAGE_SAMPLE_DEFAULT.as_secs(),
        }
    }
}

impl ServerConfig {
    pub fn load(path: &Path) -> anyhow::Result<ServerConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the server config {}", path.display()))?;
        let config: ServerConfig = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "the server config {} is not valid: {}",
                path.display(),
                e.message()
            )
        })?;
        config.prices.validate().map_err(|e| {
            anyhow::anyhow!("the server config {} is not valid: {e}", path.display())
        })?;
        if config.metering.records_retention_days == 0 {
            anyhow::bail!(
                "the server config {} is not valid: [metering] records_retention_days = 0: \
                 keep records at least 1 day (the hourly sums are kept anyway)",
                path.display()
            );
        }
        let http = &config.http;
        if !(100..=3_600_000).contains(&http.header_read_timeout_ms) {
            anyhow::bail!(
                "the server config {} is not valid: [http] header_read_timeout_ms = {}: \
                 give clients 100 to 3600000 ms to send their headers (the default is {})",
                path.display(),
                http.header_read_timeout_ms,
                HttpConfig::default().header_read_timeout_ms
            );
        }
        if http.connections_max == 0 || http.connections_per_client_max == 0 {
            anyhow::bail!(
                "the server config {} is not valid: [http] connections_max and \
                 connections_per_client_max must be at least 1",
                path.display()
            );
        }
        if let Err(e) = http.gateway() {
            anyhow::bail!(
                "the server config {} is not valid: [http] base_domain = {:?}: {e}",
                path.display(),
                http.base_domain.as_deref().unwrap_or_default()
            );
        }
        if let Some(threads) = config.cpu.background_threads
            && !(1..=BACKGROUND_THREADS_MAX).contains(&threads)
        {
            anyhow::bail!(
                "the server config {} is not valid: [cpu] background_threads = {threads}: \
                 give the background lane 1 to {BACKGROUND_THREADS_MAX} threads, or set \
                 background_lane = false for none",
                path.display()
            );
        }
        if let Some(mb) = config.memory.budget_mb
            && mb < MEMORY_BUDGET_MB_MIN
        {
            anyhow::bail!(
                "the server config {} is not valid: [memory] budget_mb = {mb}: give at least \
                 {MEMORY_BUDGET_MB_MIN} (MiB), or leave it out for 80% of the machine's memory",
                path.display()
            );
        }
        if let Some(token) = &config.telemetry.metrics_token
            && (token.len() < METRICS_TOKEN_LEN_MIN || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            anyhow::bail!(
                "the server config {} is not valid: [telemetry] metrics_token must be at least \
                 {METRICS_TOKEN_LEN_MIN} visible ASCII characters (make one with \
                 `openssl rand -hex 16`)",
                path.display()
            );
        }
        if let Some(url) = &config.telemetry.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            anyhow::bail!(
                "the server config {} is not valid: [telemetry] otlp_endpoint = {url:?}: give \
                 the collector's OTLP/HTTP base URL, like \"http://127.0.0.1:4318\"",
                path.display()
            );
        }
        let ratio = config.telemetry.trace_sample_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            anyhow::bail!(
                "the server config {} is not valid: [telemetry] trace_sample_ratio = {ratio}: \
                 give the share of new traces to record past the reservoir, from 0 (none) to 1 \
                 (all; the default is 0.05)",
                path.display()
            );
        }
        if !(1..=86_400).contains(&config.metering.storage_sample_secs) {
            anyhow::bail!(
                "the server config {} is not valid: [metering] storage_sample_secs = {}: \
                 sample stored bytes every 1 to 86400 seconds (the default is 3600)",
                path.display(),
                config.metering.storage_sample_secs
            );
        }
        Ok(config)
    }
}
