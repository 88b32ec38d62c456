//! The command line of the `updraft` binary: clap definitions, and the turning of what
//! the user typed into what the client sends.
//!
//! `main.rs` dispatches each [`Command`]; [`crate::client`] talks to the server;
//! [`crate::output`] renders replies. Everything here is pure or touches only local
//! files (manifests, `.wasm` files, `-d @file` bodies), so it is unit-tested without a
//! server.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// File name looked for when `deploy` is given a directory (or nothing).
pub const MANIFEST_FILE_NAME: &str = "updraft.toml";

/// Upper bound on an invocation body read from a file or stdin. Far above any
/// function's `request_body_bytes_max`, so the server's limit is the one users meet;
/// it exists so that `-d @/dev/zero` fails instead of eating all memory.
pub const INVOKE_BODY_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Default number of past log lines `updraft logs` asks for.
pub const LOGS_TAIL_DEFAULT: u32 = 100;

/// Updraft: run WebAssembly functions without managing servers.
#[derive(Parser, Debug)]
#[command(name = "updraft", version, about)]
pub struct Cli {
    /// Base URL of the Updraft server that client commands talk to.
    #[arg(
        long,
        global = true,
        env = "UPDRAFT_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub server: String,

    /// API key for the server. Default: the admin key that `updraft up`
    /// wrote to its data dir (UPDRAFT_DATA_DIR, else ./.updraft).
    #[arg(
        long = "key",
        global = true,
        env = "UPDRAFT_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,

    /// Print the server's JSON replies (pretty-printed) instead of human output.
    #[arg(long, global = true)]
    pub json: bool,

    /// Colour in log lines: auto (only when stderr is a terminal and
    /// NO_COLOR is unset), always or never.
    #[arg(long, global = true, value_enum, default_value_t = clap::ColorChoice::Auto, value_name = "WHEN")]
    pub color: clap::ColorChoice,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands: the server itself, or a client of one.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the whole platform in this process (embedded mode).
    Up(crate::up::UpArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

/// Commands that talk to a running server; each maps to one management API call.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Deploy a function from an updraft.toml manifest, a directory, or a .wasm file.
    Deploy(DeployArgs),
    /// List deployed functions.
    #[command(visible_alias = "list")]
    Ls,
    /// Show a function's configuration and versions.
    Info {
        /// Function name.
        name: String,
    },
    /// Call a function and write its response body to stdout.
    Invoke(InvokeArgs),
    /// Print a function's logs.
    Logs(LogsArgs),
    /// Remove a function and all its versions.
    #[command(visible_alias = "remove")]
    Rm {
        /// Function name.
        name: String,
    },
    /// Point a function's `latest` alias at an earlier version.
    Rollback {
        /// Function name.
        name: String,
        /// Version to roll back to; the server picks the previous one when omitted.
        version: Option<u64>,
    },
    /// Read and write key-value stores (those the deployed functions list).
    #[command(subcommand)]
    Kv(KvCommand),
    /// Read and write blob containers (those the deployed functions list).
    #[command(subcommand)]
    Blob(BlobCommand),
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Usage of your tenant: invocations, time, memory, bytes, operations, cost.
    Usage {
        /// Start: YYYY-MM-DD or an RFC 3339 time (default: this month's start).
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive (default: the end of this hour).
        #[arg(long)]
        to: Option<String>,
        /// Group by function or by hour.
        #[arg(long, default_value = "function", value_parser = ["function", "hour"])]
        by: String,
        /// Another tenant's (admin key only).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// The bill of a month, line by line.
    Bill {
        /// YYYY-MM (default: this month).
        #[arg(long)]
        month: Option<String>,
        /// Another tenant's (admin key only).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Your tenant's monthly budget: past it, invocations are refused (402).
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// A tenant's quota: invocations running at once and started a second,
    /// on each node; past it, 429. Only admin keys set it.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Your tenant's secrets, which `[variables]` reference as
    /// `{{ secret.NAME }}`. Values are never shown again.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// What a load would cost, and when a reserved server is cheaper.
    #[command(subcommand)]
    Cost(CostCommand),
    /// Show an async invocation: its status, attempts, result or error.
    Invocation {
        /// The id `updraft invoke --async` printed.
        id: String,
    },
    /// Show a recent trace as a tree of spans with their durations: the
    /// invocation, its calls, publishes and deliveries.
    Trace {
        /// An invocation id (the `updraft-invocation-id` header) or a
        /// trace id (32 hex digits).
        id: String,
    },
    /// Dead letters: async invocations that failed every attempt.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Named queues and your functions' async queues: depth, in flight,
    /// oldest, consumers, dead letters (no subcommand: list them).
    Queues {
        #[command(subcommand)]
        command: Option<QueuesCommand>,
    },
    /// Topics: every subscribed function gets every message.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Publish a message to a queue or topic.
    Publish(PublishArgs),
}

/// `updraft queues …`.
#[derive(Subcommand, Debug)]
pub enum QueuesCommand {
    /// Queues, topics and async queues with their state (the default).
    #[command(visible_alias = "list")]
    Ls,
    /// Create a queue (or change its settings); functions consume it with
    /// `[[trigger]] queue = "NAME"`.
    Create {
        name: String,
        /// How long a consumer has to finish a message before another gets it.
        #[arg(long, value_name = "MS")]
        visibility_timeout_ms: Option<u64>,
        /// Messages a consumer leases at once.
        #[arg(long, value_name = "N")]
        batch_size: Option<u32>,
    },
    /// Remove a queue and its messages (no function may consume it).
    #[command(visible_alias = "remove")]
    Rm { name: String },
}

/// `updraft topics …`.
#[derive(Subcommand, Debug)]
pub enum TopicsCommand {
    /// Create a topic; functions subscribe with `[[trigger]] topic = "NAME"`.
    Create { name: String },
    /// Remove a topic (no function may subscribe to it).
    #[command(visible_alias = "remove")]
    Rm { name: String },
}

/// Options of `updraft publish`.
#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The queue or topic.
    pub name: String,
    /// The message: literal text, @FILE to read a file, or @- to read stdin.
    #[arg(
        short = 'd',
        long = "data",
        value_name = "DATA",
        allow_hyphen_values = true
    )]
    pub data: Option<BodySource>,
    /// The data is a whole CloudEvent in JSON (structured mode).
    #[arg(long)]
    pub cloudevent: bool,
    /// Content type of the data (its `datacontenttype`).
    #[arg(long, value_name = "TYPE", conflicts_with = "cloudevent")]
    pub content_type: Option<String>,
}

/// `updraft dlq …`.
#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// Functions with dead letters, and how many.
    #[command(visible_alias = "list")]
    Ls,
    /// The dead letters of a function, oldest first, with their last error.
    Show {
        /// Function name.
        name: String,
    },
    /// Run a function's dead letters again, with their attempts reset.
    Redrive {
        /// Function name.
        name: String,
    },
}

/// `updraft quota …`.
#[derive(Subcommand, Debug)]
pub enum QuotaCommand {
    /// The quota (none: no limits).
    Show {
        /// Another tenant's (admin key only).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Set a tenant's quota (admin key only); a limit left out is none.
    #[command(group(clap::ArgGroup::new("limit").required(true).multiple(true).args(["concurrency", "rps", "memory_mb", "disk_mb"])))]
    Set {
        /// The tenant (default: the key's own).
        #[arg(long)]
        tenant: Option<String>,
        /// Invocations of the tenant's functions running at once.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Invocations started a second.
        #[arg(long)]
        rps: Option<u32>,
        /// MiB of memory its instances may hold at once.
        #[arg(long = "memory-mb", value_name = "MIB")]
        memory_mb: Option<u32>,
        /// MiB its key-value stores and blobs may hold together.
        #[arg(long = "disk-mb", value_name = "MIB")]
        disk_mb: Option<u32>,
    },
    /// Remove a tenant's quota: no limits (admin key only).
    Rm {
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// `updraft secrets …`.
#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Set (or replace) a secret; the value is read from stdin (a trailing
    /// newline is dropped). The next invocation reads it.
    Set {
        name: String,
        /// Another tenant's (admin key only).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// The names of your secrets.
    Ls {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Remove a secret.
    Rm {
        name: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// `updraft budget …`.
#[derive(Subcommand, Debug)]
pub enum BudgetCommand {
    /// The budget and what this month has spent.
    Show,
    /// Set the monthly budget, in US dollars.
    Set { usd: f64 },
    /// Remove the budget (no cap).
    Clear,
}

/// `updraft cost …`.
#[derive(Subcommand, Debug)]
pub enum CostCommand {
    /// Monthly cost of a steady load at the server's prices, and the request
    /// rate above which a reserved server is cheaper.
    Estimate(EstimateArgs),
}

#[derive(clap::Args, Debug)]
pub struct EstimateArgs {
    /// Requests per second.
    #[arg(long, required_unless_present = "from_usage")]
    pub rps: Option<f64>,
    /// Duration of one invocation, in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration_ms: f64,
    /// Configured memory, in MB.
    #[arg(long, default_value_t = 128)]
    pub memory_mb: u32,
    /// Key-value operations per invocation.
    #[arg(long, default_value_t = 0.0)]
    pub kv_ops: f64,
    /// Response bytes per invocation.
    #[arg(long, default_value_t = 0.0)]
    pub bytes_out: f64,
    /// GiB kept in key-value stores.
    #[arg(long, default_value_t = 0.0)]
    pub kv_stored_gb: f64,
    /// GiB kept as blobs.
    #[arg(long, default_value_t = 0.0)]
    pub blob_stored_gb: f64,
    /// Price of a reserved server, US dollars per hour, for the break-even.
    #[arg(long, default_value_t = 0.0416)]
    pub server_usd_per_hour: f64,
    /// Take rate, duration, memory, operations and stored data from your
    /// usage of the last N days instead.
    #[arg(long, value_name = "DAYS", conflicts_with = "rps")]
    pub from_usage: Option<u32>,
}

/// `updraft keys …`: API keys of tenants.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a key and print it (it is shown this once).
    Create {
        /// The tenant it belongs to (default: your key's tenant; another
        /// tenant needs an admin key, and makes that tenant exist).
        #[arg(long)]
        tenant: Option<String>,
        /// An admin key, which also manages other tenants' keys.
        #[arg(long)]
        admin: bool,
        /// A note to tell keys apart in `keys ls`.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List keys (ids and labels, never the keys themselves): your
    /// tenant's, or with an admin key every tenant's.
    #[command(visible_alias = "list")]
    Ls {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id: it stops working at once.
    Revoke {
        /// The key's id, as `keys ls` shows it.
        id: String,
    },
}

/// `updraft blob …`: operator access to blob containers.
#[derive(Subcommand, Debug)]
pub enum BlobCommand {
    /// List the containers in use.
    Containers,
    /// List blobs with their sizes (every page).
    #[command(visible_alias = "list")]
    Ls {
        /// Container name.
        container: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Download a blob to stdout, or to a file with -o.
    Get {
        /// Container name.
        container: String,
        key: String,
        /// Write to this file instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Upload a file (or stdin with `-`) as a blob.
    Put {
        /// Container name.
        container: String,
        key: String,
        /// The file to upload; `-` reads stdin.
        file: PathBuf,
    },
    /// Delete a blob (deleting a missing blob is not an error).
    #[command(visible_alias = "remove")]
    Rm {
        /// Container name.
        container: String,
        key: String,
    },
}

/// `updraft kv …`: operator access to key-value stores.
#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// List the stores in use.
    Stores,
    /// Write a key's value to stdout.
    Get {
        /// Store name.
        store: String,
        key: String,
    },
    /// Set a key.
    Set {
        /// Store name.
        store: String,
        key: String,
        /// The value: literal text, @FILE to read a file, or @- to read stdin.
        #[arg(allow_hyphen_values = true)]
        value: BodySource,
    },
    /// List keys, one per line (every page).
    #[command(visible_alias = "list")]
    Ls {
        /// Store name.
        store: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Delete a key (deleting a missing key is not an error).
    #[command(visible_alias = "remove")]
    Rm {
        /// Store name.
        store: String,
        key: String,
    },
}

/// The two function models of the platform (see DESIGN.md, "The function model").
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `wasi:http/proxy` component behind an HTTP route.
    Http,
    /// A WASI command: the event on stdin, the result on stdout.
    Command,
}

impl Kind {
    /// The manifest's spelling of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Command => "command",
        }
    }
}

/// Options of `updraft deploy`.
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// An updraft.toml manifest, a directory containing one, or a .wasm file.
    #[arg(default_value = MANIFEST_FILE_NAME)]
    pub path: PathBuf,
    /// Function name (overrides the manifest's `name`; default for a .wasm: its file name).
    #[arg(long)]
    pub name: Option<String>,
    /// HTTP route, e.g. /hello (overrides the manifest's `route`).
    #[arg(long)]
    pub route: Option<String>,
    /// Function kind (overrides the manifest's `kind`).
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
}

/// Options of `updraft invoke`.
#[derive(Args, Debug)]
pub struct InvokeArgs {
    /// Function name.
    pub name: String,
    /// Request body: literal text, @FILE to read a file, or @- to read stdin.
    #[arg(
        short = 'd',
        long = "data",
        value_name = "DATA",
        allow_hyphen_values = true
    )]
    pub data: Option<BodySource>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "K:V")]
    pub headers: Vec<Header>,
    /// Also print the invocation id (for `updraft logs`) and the status to stderr.
    #[arg(short, long)]
    pub verbose: bool,
    /// Only queue the call: print its id at once (see `updraft invocation ID`);
    /// it runs soon, with retries, durably.
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// With --async: the same key within a day gives the first call's id
    /// instead of a second call.
    #[arg(long, value_name = "KEY", requires = "asynchronous")]
    pub idempotency_key: Option<String>,
}

/// Options of `updraft logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Function name.
    pub name: String,
    /// Keep streaming new lines until Ctrl-C.
    #[arg(short, long)]
    pub follow: bool,
    /// Number of past lines to print first.
    #[arg(short = 'n', long = "tail", default_value_t = LOGS_TAIL_DEFAULT, value_name = "N")]
    pub tail: u32,
}

/// Where an invocation body comes from (curl's `-d` syntax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodySource {
    /// The argument itself.
    Literal(String),
    /// `@path`: the file's bytes.
    File(PathBuf),
    /// `@-`: everything on stdin.
    Stdin,
}

impl std::str::FromStr for BodySource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix('@') {
            None => Ok(BodySource::Literal(s.to_owned())),
            Some("-") => Ok(BodySource::Stdin),
            Some("") => Err("`@` needs a file name: use @FILE, or @- for stdin".to_owned()),
            Some(path) => Ok(BodySource::File(PathBuf::from(path))),
        }
    }
}

impl BodySource {
    /// Reads the body, refusing more than [`INVOKE_BODY_BYTES_MAX`].
    pub fn read(&self) -> Result<Vec<u8>> {
        match self {
            BodySource::Literal(text) => Ok(text.as_bytes().to_vec()),
            BodySource::File(path) => {
                let file = File::open(path)
                    .with_context(|| format!("cannot read -d @{}", path.display()))?;
                read_bounded(file, INVOKE_BODY_BYTES_MAX)
                    .with_context(|| format!("reading -d @{}", path.display()))
            }
            BodySource::Stdin => read_bounded(std::io::stdin().lock(), INVOKE_BODY_BYTES_MAX)
                .context("reading the request body from stdin (-d @-)"),
        }
    }
}

/// Reads all of `reader` unless it holds more than `max` bytes.
fn read_bounded(reader: impl Read, max: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    // One byte past the limit tells "exactly max" apart from "too much".
    reader.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        bail!("the body is larger than {max} bytes: send large data through blob storage instead");
    }
    Ok(bytes)
}

/// One `--header` value, validated as HTTP when parsed so typos fail before sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

impl std::str::FromStr for Header {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((name, value)) = s.split_once(':') else {
            return Err(format!("`{s}` is not `Name: value`"));
        };
        let (name, value) = (name.trim(), value.trim());
        reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a valid header name"))?;
        reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header `{name}` has characters HTTP forbids"))?;
        Ok(Header {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// Manifest fields that `deploy`'s flags replace.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub name: Option<String>,
    pub route: Option<String>,
    pub kind: Option<Kind>,
}

impl Overrides {
    fn is_empty(&self) -> bool {
        self.name.is_none() && self.route.is_none() && self.kind.is_none()
    }
}

/// Everything `deploy` sends: the manifest text and where the Wasm bytes are.
#[derive(Debug)]
pub struct DeployPlan {
    /// Function name, used in the URL.
    pub name: String,
    /// Manifest TOML as sent (the user's text, with the flags' overrides applied).
    pub manifest: String,
    /// The Wasm file to upload.
    pub wasm_path: PathBuf,
    /// Its size, for the spinner and the multipart part's length.
    pub wasm_bytes: u64,
    /// The manifest's `files`, packed.
    pub files: Option<Vec<u8>>,
}

impl DeployArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            name: self.name.clone(),
            route: self.route.clone(),
            kind: self.kind,
        }
    }

    /// Resolves the path argument into a plan: reads the manifest (if any), applies
    /// the overrides and checks that the Wasm file exists.
    pub fn plan(&self) -> Result<DeployPlan> {
        let overrides = self.overrides();
        let path = &self.path;
        if path.extension().is_some_and(|ext| ext == "wasm") {
            return plan_from_wasm(path, &overrides);
        }
        let manifest_path = if path.is_dir() {
            path.join(MANIFEST_FILE_NAME)
        } else {
            path.clone()
        };
        if !manifest_path.is_file() {
            bail!(
                "no manifest at {}: pass an updraft.toml, a directory containing one, or a .wasm file",
                manifest_path.display()
            );
        }
        plan_from_manifest(&manifest_path, &overrides)
    }
}

fn plan_from_wasm(wasm_path: &Path, overrides: &Overrides) -> Result<DeployPlan> {
    let name = match &overrides.name {
        Some(name) => name.clone(),
        None => name_from_wasm_path(wasm_path)?,
    };
    let wasm_bytes =
        wasm_size(wasm_path).with_context(|| format!("cannot read {}", wasm_path.display()))?;
    let manifest = manifest_for_wasm(&name, overrides)?;
    Ok(DeployPlan {
        name,
        manifest,
        wasm_path: wasm_path.to_path_buf(),
        wasm_bytes,
        files: None,
    })
}

fn plan_from_manifest(manifest_path: &Path, overrides: &Overrides) -> Result<DeployPlan> {
    let text = std::fs::read_to_string(manifest_path)
        .with_context(|| format!("cannot read manifest {}", manifest_path.display()))?;
    let (manifest, table) = apply_overrides(&text, overrides)
        .with_context(|| format!("in manifest {}", manifest_path.display()))?;
    let name = match table.get("name") {
        Some(toml::Value::String(name)) => name.clone(),
        Some(_) => bail!("`name` in {} must be a string", manifest_path.display()),
        None => bail!(
            "manifest {} has no `name`: add `name = \"...\"` or pass --name",
            manifest_path.display()
        ),
    };
    let source = match table.get("source") {
        Some(toml::Value::String(source)) => source.clone(),
        Some(_) => bail!("`source` in {} must be a string", manifest_path.display()),
        None => bail!(
            "manifest {} has no `source`: set it to the path of the function's .wasm file",
            manifest_path.display()
        ),
    };
    let wasm_path = resolve_source(manifest_path, &source);
    if !wasm_path.exists() {
        bail!(
            "source {source} not found (from manifest {}): build the function first",
            manifest_path.display()
        );
    }
    let wasm_bytes =
        wasm_size(&wasm_path).with_context(|| format!("cannot read {}", wasm_path.display()))?;
    let files = match table.get("files") {
        None => None,
        Some(files) => {
            let mounts: Vec<updraft_core::files::FileMount> = files
                .clone()
                .try_into()
                .map_err(|e| anyhow::anyhow!("`files` in {}: {e}", manifest_path.display()))?;
            let base = manifest_path.parent().unwrap_or(Path::new(""));
            Some(crate::bundle::pack(base, &mounts)?)
        }
    };
    Ok(DeployPlan {
        name,
        manifest,
        wasm_path,
        wasm_bytes,
        files,
    })
}

/// `source` is relative to the manifest's directory, so `updraft deploy examples/x`
/// works from any working directory.
fn resolve_source(manifest_path: &Path, source: &str) -> PathBuf {
    let dir = manifest_path.parent().unwrap_or(Path::new(""));
    dir.join(source)
}

fn wasm_size(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        bail!("{} is not a file", path.display());
    }
    Ok(meta.len())
}

/// A bare `.wasm` is named after its file, up to the first dot, so that
/// `hello.component.wasm` deploys as `hello`.
fn name_from_wasm_path(path: &Path) -> Result<String> {
    let file_name = path.file_name().and_then(|n| n.to_str()).with_context(|| {
        format!(
            "cannot derive a function name from {}: pass --name",
            path.display()
        )
    })?;
    let stem = file_name.split('.').next().unwrap_or_default();
    if stem.is_empty() {
        bail!(
            "cannot derive a function name from {}: pass --name",
            path.display()
        );
    }
    Ok(stem.to_owned())
}

/// Applies the overrides to the manifest text. Returns the text to send and the parsed
/// table. Without overrides the user's text goes out byte for byte (comments included);
/// with overrides it is re-serialized, which drops comments the server never reads.
pub fn apply_overrides(text: &str, overrides: &Overrides) -> Result<(String, toml::Table)> {
    let mut table: toml::Table = text.parse().context("the manifest is not valid TOML")?;
    if overrides.is_empty() {
        return Ok((text.to_owned(), table));
    }
    set_overrides(&mut table, overrides);
    let edited = toml::to_string(&table).context("re-serializing the manifest")?;
    Ok((edited, table))
}

/// The manifest sent with a bare `.wasm`: only what the flags say.
pub fn manifest_for_wasm(name: &str, overrides: &Overrides) -> Result<String> {
    let mut table = toml::Table::new();
    table.insert("name".to_owned(), toml::Value::String(name.to_owned()));
    set_overrides(&mut table, overrides);
    toml::to_string(&table).context("serializing the manifest")
}

fn set_overrides(table: &mut toml::Table, overrides: &Overrides) {
    let mut set = |key: &str, value: &str| {
        table.insert(key.to_owned(), toml::Value::String(value.to_owned()));
    };
    if let Some(name) = &overrides.name {
        set("name", name);
    }
    if let Some(route) = &overrides.route {
        set("route", route);
    }
    if let Some(kind) = overrides.kind {
        set("kind", kind.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        // Catches duplicate flags, e.g. if `UpArgs` ever defines `--server` or `--json`.
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli =
            Cli::try_parse_from(["updraft", "ls", "--json", "--server", "http://h:1"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.server, "http://h:1");
        assert!(matches!(cli.command, Command::Client(ClientCommand::Ls)));
    }

    #[test]
    fn the_api_key_flag_is_not_a_blob_or_kv_key() {
        let cli =
            Cli::try_parse_from(["updraft", "blob", "get", "c", "k1", "--key", "upd_x"]).unwrap();
        assert_eq!(cli.api_key.as_deref(), Some("upd_x"));
        let Command::Client(ClientCommand::Blob(BlobCommand::Get { key, .. })) = cli.command else {
            panic!("not blob get")
        };
        assert_eq!(key, "k1");
        let cli = Cli::try_parse_from(["updraft", "kv", "get", "s", "k2"]).unwrap();
        assert_eq!(cli.api_key, None);
    }

    #[test]
    fn deploy_defaults_to_the_manifest_in_the_working_directory() {
        let cli = Cli::try_parse_from(["updraft", "deploy"]).unwrap();
        let Command::Client(ClientCommand::Deploy(args)) = cli.command else {
            panic!("not deploy")
        };
        assert_eq!(args.path, PathBuf::from("updraft.toml"));
    }

    #[test]
    fn invoke_parses_data_headers_and_verbose() {
        let cli = Cli::try_parse_from([
            "updraft", "invoke", "f", "-d", "@-", "-H", "X-A: 1", "--header", "b:2", "-v",
        ])
        .unwrap();
        let Command::Client(ClientCommand::Invoke(args)) = cli.command else {
            panic!("not invoke")
        };
        assert_eq!(args.data, Some(BodySource::Stdin));
        assert_eq!(args.headers.len(), 2);
        assert_eq!(args.headers[0].name, "X-A");
        assert_eq!(args.headers[0].value, "1");
        assert!(args.verbose);
    }

    #[test]
    fn invoke_accepts_data_that_starts_with_a_dash() {
        let cli = Cli::try_parse_from(["updraft", "invoke", "f", "-d", "-5"]).unwrap();
        let Command::Client(ClientCommand::Invoke(args)) = cli.command else {
            panic!("not invoke")
        };
        assert_eq!(args.data, Some(BodySource::Literal("-5".into())));
    }

    #[test]
    fn logs_defaults_and_flags() {
        let cli = Cli::try_parse_from(["updraft", "logs", "f"]).unwrap();
        let Command::Client(ClientCommand::Logs(args)) = cli.command else {
            panic!("not logs")
        };
        assert_eq!(args.tail, LOGS_TAIL_DEFAULT);
        assert!(!args.follow);
        let cli = Cli::try_parse_from(["updraft", "logs", "f", "-f", "-n", "5"]).unwrap();
        let Command::Client(ClientCommand::Logs(args)) = cli.command else {
            panic!("not logs")
        };
        assert_eq!(args.tail, 5);
        assert!(args.follow);
    }

    #[test]
    fn body_source_syntax() {
        assert_eq!("hi".parse(), Ok(BodySource::Literal("hi".into())));
        assert_eq!("".parse(), Ok(BodySource::Literal(String::new())));
        assert_eq!("@-".parse(), Ok(BodySource::Stdin));
        assert_eq!("@a/b.json".parse(), Ok(BodySource::File("a/b.json".into())));
        assert!("@".parse::<BodySource>().is_err());
    }

    #[test]
    fn body_from_file_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body.bin");
        std::fs::write(&path, b"\x00\x01binary").unwrap();
        assert_eq!(BodySource::File(path).read().unwrap(), b"\x00\x01binary");
        let err = BodySource::File(dir.path().join("nope"))
            .read()
            .unwrap_err();
        assert!(format!("{err:#}").contains("cannot read -d @"), "{err:#}");
    }

    #[test]
    fn read_bounded_refuses_more_than_max() {
        assert_eq!(read_bounded(&b"abcd"[..], 4).unwrap(), b"abcd");
        assert!(read_bounded(&b"abcde"[..], 4).is_err());
    }

    #[test]
    fn header_syntax() {
        let h: Header = "Content-Type: application/json".parse().unwrap();
        assert_eq!(h.name, "Content-Type");
        assert_eq!(h.value, "application/json");
        let h: Header = "x-url:http://a:1".parse().unwrap();
        assert_eq!(h.value, "http://a:1", "only the first colon separates");
        assert!("no-colon".parse::<Header>().is_err());
        assert!("bad name: v".parse::<Header>().is_err());
        assert!("x: a\nb".parse::<Header>().is_err());
    }

    #[test]
    fn manifest_without_overrides_is_sent_verbatim() {
        let text = "# my function\nname = \"hello\"\nsource = \"x.wasm\"\n";
        let (sent, table) = apply_overrides(text, &Overrides::default()).unwrap();
        assert_eq!(sent, text);
        assert_eq!(table["name"].as_str(), Some("hello"));
    }

    #[test]
    fn overrides_replace_and_add_keys_and_keep_the_rest() {
        let text =
            "name = \"hello\"\nsource = \"x.wasm\"\nroute = \"/old\"\n\n[limits]\nmemory_mb = 64\n";
        let overrides = Overrides {
            name: Some("other".into()),
            route: Some("/new".into()),
            kind: Some(Kind::Command),
        };
        let (sent, _) = apply_overrides(text, &overrides).unwrap();
        let reparsed: toml::Table = sent.parse().unwrap();
        assert_eq!(reparsed["name"].as_str(), Some("other"));
        assert_eq!(reparsed["route"].as_str(), Some("/new"));
        assert_eq!(reparsed["kind"].as_str(), Some("command"));
        assert_eq!(reparsed["source"].as_str(), Some("x.wasm"));
        assert_eq!(reparsed["limits"]["memory_mb"].as_integer(), Some(64));
    }

    #[test]
    fn invalid_manifest_toml_is_reported() {
        let err = apply_overrides("name = ", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("not valid TOML"));
    }

    #[test]
    fn bare_wasm_manifest() {
        let overrides = Overrides {
            route: Some("/r".into()),
            kind: Some(Kind::Http),
            ..Overrides::default()
        };
        let text = manifest_for_wasm("fn", &overrides).unwrap();
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["name"].as_str(), Some("fn"));
        assert_eq!(table["route"].as_str(), Some("/r"));
        assert_eq!(table["kind"].as_str(), Some("http"));
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn wasm_names() {
        let name = |p: &str| name_from_wasm_path(Path::new(p)).unwrap();
        assert_eq!(name("target/hello.wasm"), "hello");
        assert_eq!(name("hello.component.wasm"), "hello");
        assert!(name_from_wasm_path(Path::new(".wasm")).is_err());
    }

    fn deploy_args(path: &Path) -> DeployArgs {
        DeployArgs {
            path: path.to_path_buf(),
            name: None,
            route: None,
            kind: None,
        }
    }

    #[test]
    fn plan_from_a_directory_resolves_source_next_to_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("fn")).unwrap();
        std::fs::write(
            dir.path().join("fn/updraft.toml"),
            "name = \"hello\"\nsource = \"../out/hello.wasm\"\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("out/hello.wasm"), b"\0asm").unwrap();

        let plan = deploy_args(&dir.path().join("fn")).plan().unwrap();
        assert_eq!(plan.name, "hello");
        assert_eq!(plan.wasm_bytes, 4);
        assert_eq!(plan.wasm_path, dir.path().join("fn/../out/hello.wasm"));
    }

    #[test]
    fn plan_names_the_missing_source_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("updraft.toml");
        std::fs::write(
            &manifest,
            "name = \"x\"\nsource = \"../../target/guests/x.wasm\"\n",
        )
        .unwrap();
        let err = deploy_args(&manifest).plan().unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("source ../../target/guests/x.wasm not found"),
            "{msg}"
        );
        assert!(msg.contains("build the function first"), "{msg}");
    }

    #[test]
    fn plan_without_a_manifest_says_what_to_pass() {
        let dir = tempfile::tempdir().unwrap();
        let err = deploy_args(dir.path()).plan().unwrap_err();
        assert!(err.to_string().contains("no manifest at"), "{err}");
    }

    #[test]
    fn plan_from_manifest_requires_name_and_source() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("updraft.toml");
        std::fs::write(&manifest, "source = \"x.wasm\"\n").unwrap();
        let err = deploy_args(&manifest).plan().unwrap_err();
        assert!(err.to_string().contains("pass --name"), "{err}");
        std::fs::write(&manifest, "name = \"x\"\n").unwrap();
        let err = deploy_args(&manifest).plan().unwrap_err();
        assert!(err.to_string().contains("has no `source`"), "{err}");
    }

    #[test]
    fn plan_from_bare_wasm_with_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("hello_rust.wasm");
        std::fs::write(&wasm, b"\0asm\x01\0\0\0").unwrap();
        let mut args = deploy_args(&wasm);
        args.route = Some("/hi".into());
        let plan = args.plan().unwrap();
        assert_eq!(plan.name, "hello_rust");
        assert_eq!(plan.wasm_bytes, 8);
        assert!(
            plan.manifest.contains("route = \"/hi\""),
            "{}",
            plan.manifest
        );
    }
}
