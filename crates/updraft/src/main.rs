//! The `updraft` binary: `updraft up` runs the platform in this process ([`up`]);
//! every other subcommand is a client of a running server's management API.
//!
//! This file parses the command line ([`cli`]), runs one command by combining the
//! HTTP client ([`client`]) with the renderers ([`output`]), and turns failures into
//! `error: …` on stderr with exit status 1.

mod bundle;
mod cli;
mod client;
mod config;
mod events;
mod money;
mod output;
mod up;

use std::io::{self, IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;

use cli::{
    BlobCommand, Cli, ClientCommand, Command, DeployArgs, InvokeArgs, KeysCommand, KvCommand,
    LogsArgs, SecretsCommand,
};
use client::{Client, INVOCATION_ID_HEADER, LineSplitter, check_status};

/// mimalloc, not glibc's malloc: see the dependency's note in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Up(_)), cli.color);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr so stdout stays clean for `invoke` bodies and `--json`. The
/// server is chatty at `info`; client commands only speak up when something is wrong.
/// `RUST_LOG` overrides both. Colour only where a person reads the log: a
/// file or a pipe gets plain text.
fn init_tracing(server: bool, color: clap::ColorChoice) {
    use tracing_subscriber::EnvFilter;
    let default = if server { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = match color {
        clap::ColorChoice::Always => true,
        clap::ColorChoice::Never => false,
        clap::ColorChoice::Auto => {
            io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    };
    // `try_init`: a second subscriber (e.g. from `up`) must not abort the program.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// `updraft logs -f | head` closes stdout early; that is the reader's choice, not an
/// error worth a message.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Client(command) => {
            let key = match cli.api_key {
                Some(key) => Some(key),
                None => local_admin_key()?,
            };
            let client = Client::new(&cli.server, key.as_deref())?;
            let result = run_client(&client, command, cli.json).await;
            match result {
                Err(e) if key.is_none() && format!("{e:#}").contains("(missing_key)") => {
                    Err(anyhow::anyhow!(
                        "no API key: pass --key or UPDRAFT_KEY, or run where `updraft up` keeps its data \
                     (UPDRAFT_DATA_DIR, else ./.updraft) so the CLI finds admin.key there"
                    ))
                }
                other => other,
            }
        }
    }
}

/// The admin key `updraft up` wrote to its data dir on this machine, if
/// there is one: how the quickstart's CLI works without a `--key`.
fn local_admin_key() -> Result<Option<String>> {
    let data_dir = std::env::var_os("UPDRAFT_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ".updraft".into());
    let path = data_dir.join(up::ADMIN_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "cannot read the admin key {}: pass --key or UPDRAFT_KEY instead",
            path.display()
        ))),
    }
}

async fn run_client(client: &Client, command: ClientCommand, json: bool) -> Result<()> {
    match command {
        ClientCommand::Deploy(args) => deploy(client, &args, json).await,
        ClientCommand::Ls => ls(client, json).await,
        ClientCommand::Info { name } => info(client, &name, json).await,
        ClientCommand::Invoke(args) => invoke(client, &args).await,
        ClientCommand::Logs(args) => logs(client, &args, json).await,
        ClientCommand::Rm { name } => rm(client, &name, json).await,
        ClientCommand::Rollback { name, version } => rollback(client, &name, version, json).await,
        ClientCommand::Kv(command) => kv(client, command, json).await,
        ClientCommand::Blob(command) => blob(client, command, json).await,
        ClientCommand::Keys(command) => keys(client, command, json).await,
        ClientCommand::Usage {
            from,
            to,
            by,
            tenant,
        } => money::usage(client, from, to, &by, tenant, json).await,
        ClientCommand::Bill { month, tenant } => money::bill(client, month, tenant, json).await,
        ClientCommand::Budget(command) => money::budget(client, command, json).await,
        ClientCommand::Quota(command) => money::quota(client, command, json).await,
        ClientCommand::Secrets(command) => secrets(client, command, json).await,
        ClientCommand::Cost(command) => money::cost(client, command, json).await,
        ClientCommand::Invocation { id } => events::invocation(client, &id, json).await,
        ClientCommand::Trace { id } => events::trace(client, &id, json).await,
        ClientCommand::Dlq(command) => events::dlq(client, command, json).await,
        ClientCommand::Queues { command } => events::queues(client, command, json).await,
        ClientCommand::Topics(command) => events::topics(client, command, json).await,
        ClientCommand::Publish(args) => events::publish(client, &args, json).await,
    }
}

async fn secrets(client: &Client, command: SecretsCommand, json: bool) -> Result<()> {
    match command {
        SecretsCommand::Set { name, tenant } => {
            let mut value = String::new();
            io::stdin()
                .read_to_string(&mut value)
                .context("reading the secret's value from stdin")?;
            // `echo value | updraft secrets set NAME` must not store the newline.
            let value = value
                .strip_suffix('\n')
                .map(|v| v.strip_suffix('\r').unwrap_or(v))
                .unwrap_or(&value)
                .to_string();
            client.secret_set(&name, value, tenant.as_deref()).await?;
            eprintln!("secret {name} set");
        }
        SecretsCommand::Ls { tenant } => {
            let reply = client.secrets(tenant.as_deref()).await?;
            let mut out = io::stdout().lock();
            if json {
                output::write_json(&mut out, &reply.raw)?;
            } else {
                for secret in &reply.body.secrets {
                    writeln!(out, "{}", secret.name)?;
                }
            }
        }
        SecretsCommand::Rm { name, tenant } => {
            client.secret_delete(&name, tenant.as_deref()).await?;
            eprintln!("secret {name} removed");
        }
    }
    Ok(())
}

async fn blob(client: &Client, command: BlobCommand, json: bool) -> Result<()> {
    match command {
        BlobCommand::Containers => {
            let reply = client.blob_containers().await?;
            let mut out = io::stdout().lock();
            if json {
                output::write_json(&mut out, &reply.raw)?;
            } else {
                for container in &reply.body.containers {
                    writeln!(out, "{container}")?;
                }
            }
        }
        BlobCommand::Ls { container, prefix } => {
            let mut blobs = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = client
                    .blob_list(&container, &prefix, cursor.as_deref())
                    .await?
                    .body;
                blobs.extend(page.blobs);
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            let mut out = io::stdout().lock();
            if json {
                output::write_json(&mut out, &serde_json::json!({ "blobs": blobs }))?;
            } else {
                for blob in &blobs {
                    writeln!(out, "{}\t{}", output::format_bytes(blob.size), blob.key)?;
                }
            }
        }
        BlobCommand::Get {
            container,
            key,
            output,
        } => {
            let mut response = client.blob_get(&container, &key).await?;
            let mut sink: Box<dyn Write> = match &output {
                Some(path) => Box::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                ),
                None => Box::new(io::stdout().lock()),
            };
            while let Some(chunk) = response.chunk().await? {
                sink.write_all(&chunk)?;
            }
            sink.flush()?;
        }
        BlobCommand::Put {
            container,
            key,
            file,
        } => {
            let body = if file.as_os_str() == "-" {
                let mut bytes = Vec::new();
                io::stdin().lock().read_to_end(&mut bytes)?;
                reqwest::Body::from(bytes)
            } else {
                let file = tokio::fs::File::open(&file)
                    .await
                    .with_context(|| format!("cannot read {}", file.display()))?;
                reqwest::Body::from(file)
            };
            client.blob_put(&container, &key, body).await?;
        }
        BlobCommand::Rm { container, key } => client.blob_delete(&container, &key).await?,
    }
    Ok(())
}

async fn keys(client: &Client, command: KeysCommand, json: bool) -> Result<()> {
    let mut out = io::stdout().lock();
    match command {
        KeysCommand::Create {
            tenant,
            admin,
            label,
        } => {
            let reply = client.create_key(tenant.as_deref(), admin, &label).await?;
            if json {
                output::write_json(&mut out, &reply.raw)?;
            } else {
                let key = &reply.body;
                writeln!(out, "{}", key.key.as_deref().unwrap_or_default())?;
                eprintln!(
                    "created key {} for tenant {}{}: it is shown only now, so store it \
                     (use it with --key or UPDRAFT_KEY)",
                    key.id,
                    key.tenant,
                    if key.admin { " (admin)" } else { "" }
                );
            }
        }
        KeysCommand::Ls { tenant } => {
            let reply = client.keys(tenant.as_deref()).await?;
            if json {
                output::write_json(&mut out, &reply.raw)?;
            } else {
                output::write_keys(&mut out, &reply.body.keys)?;
            }
        }
        KeysCommand::Revoke { id } => {
            let reply = client.revoke_key(&id).await?;
            if json {
                output::write_json(&mut out, &reply.raw)?;
            } else {
                writeln!(out, "revoked key {}", reply.body.revoked.id)?;
            }
        }
    }
    Ok(())
}

async fn kv(client: &Client, command: KvCommand, json: bool) -> Result<()> {
    let mut out = io::stdout().lock();
    match command {
        KvCommand::Stores => {
            let reply = client.kv_stores().await?;
            if json {
                output::write_json(&mut out, &reply.raw)?;
            } else {
                for store in &reply.body.stores {
                    writeln!(out, "{store}")?;
                }
            }
        }
        KvCommand::Get { store, key } => out.write_all(&client.kv_get(&store, &key).await?)?,
        KvCommand::Set { store, key, value } => client.kv_set(&store, &key, value.read()?).await?,
        KvCommand::Ls { store, prefix } => {
            let mut keys = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = client
                    .kv_list(&store, &prefix, cursor.as_deref())
                    .await?
                    .body;
                keys.extend(page.keys);
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            if json {
                output::write_json(&mut out, &serde_json::json!({ "keys": keys }))?;
            } else {
                for key in keys {
                    writeln!(out, "{key}")?;
                }
            }
        }
        KvCommand::Rm { store, key } => client.kv_delete(&store, &key).await?,
    }
    Ok(())
}

async fn deploy(client: &Client, args: &DeployArgs, json: bool) -> Result<()> {
    let plan = args.plan()?;
    let message = format!(
        "compiling {} ({})…",
        plan.name,
        output::format_bytes(plan.wasm_bytes)
    );
    let spinner = output::spinner(!json, message);
    let started = Instant::now();
    let reply = client.deploy(&plan).await;
    spinner.finish_and_clear();
    let reply = reply.with_context(|| format!("deploying {}", plan.name))?;
    let mut out = io::stdout().lock();
    if json {
        output::write_json(&mut out, &reply.raw)?;
    } else {
        output::write_deployed(&mut out, &reply.body, started.elapsed(), |route| {
            client.route_url(route)
        })?;
    }
    Ok(())
}

async fn ls(client: &Client, json: bool) -> Result<()> {
    let reply = client.list_functions().await?;
    let mut out = io::stdout().lock();
    if json {
        output::write_json(&mut out, &reply.raw)?;
    } else {
        output::write_function_list(&mut out, &reply.body)?;
    }
    Ok(())
}

async fn info(client: &Client, name: &str, json: bool) -> Result<()> {
    let reply = client.function(name).await?;
    let mut out = io::stdout().lock();
    if json {
        output::write_json(&mut out, &reply.raw)?;
    } else {
        output::write_function_detail(&mut out, &reply.body, |route| client.route_url(route))?;
    }
    Ok(())
}

/// The body goes to stdout untouched (it may be binary); `--json` does not apply,
/// since the function, not the server, chose the body's format.
async fn invoke(client: &Client, args: &InvokeArgs) -> Result<()> {
    let body = match &args.data {
        Some(source) => source.read()?,
        None => Vec::new(),
    };
    if args.asynchronous {
        return events::invoke_async(client, args, body).await;
    }
    let mut response = client.invoke(&args.name, body, &args.headers).await?;
    if args.verbose {
        report_invocation(&response);
    }
    response = check_status(response).await?;

    let mut out = io::stdout().lock();
    let mut last_byte = None;
    while let Some(chunk) = response.chunk().await.context("the response broke off")? {
        out.write_all(&chunk)?;
        out.flush()?;
        last_byte = chunk.last().copied().or(last_byte);
    }
    // Keep the shell prompt off the output's last line, but only for humans: a pipe
    // gets exactly the bytes the function wrote.
    if last_byte.is_some_and(|b| b != b'\n') && io::stdout().is_terminal() {
        writeln!(out)?;
    }
    Ok(())
}

fn report_invocation(response: &reqwest::Response) {
    let id = response
        .headers()
        .get(INVOCATION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)");
    eprintln!("status: {}", response.status());
    eprintln!("invocation id: {id}");
}

async fn logs(client: &Client, args: &LogsArgs, json: bool) -> Result<()> {
    let mut response = client.logs(&args.name, args.tail, args.follow).await?;
    let mut splitter = LineSplitter::default();
    let mut out = io::stdout().lock();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk.context("the log stream broke off")?,
            // Following ends only by Ctrl-C; that is success, not an error.
            _ = &mut ctrl_c => return Ok(()),
        };
        let Some(chunk) = chunk else { break };
        for line in splitter.push(&chunk)? {
            write_log_line(&mut out, &line, json)?;
        }
        out.flush()?;
    }
    if let Some(line) = splitter.finish()? {
        write_log_line(&mut out, &line, json)?;
    }
    Ok(())
}

fn write_log_line(out: &mut impl Write, line: &str, json: bool) -> io::Result<()> {
    if json {
        writeln!(out, "{line}")
    } else {
        writeln!(out, "{}", output::format_log_line(line))
    }
}

async fn rm(client: &Client, name: &str, json: bool) -> Result<()> {
    let reply = client.delete(name).await?;
    let mut out = io::stdout().lock();
    if json {
        output::write_json(&mut out, &reply.raw)?;
    } else {
        let deleted = if reply.body.deleted.is_empty() {
            name
        } else {
            &reply.body.deleted
        };
        writeln!(out, "removed {deleted}")?;
    }
    Ok(())
}

async fn rollback(client: &Client, name: &str, version: Option<u64>, json: bool) -> Result<()> {
    let reply = client.rollback(name, version).await?;
    let mut out = io::stdout().lock();
    if json {
        output::write_json(&mut out, &reply.raw)?;
    } else {
        writeln!(out, "{name}: latest -> version {}", reply.body.latest())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::ApiError;

    #[test]
    fn broken_pipe_is_found_under_context() {
        let err = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(&err));
        let err = anyhow::Error::new(io::Error::from(io::ErrorKind::NotFound));
        assert!(!is_broken_pipe(&err));
    }

    #[test]
    fn api_errors_print_message_and_code() {
        let err: anyhow::Error = ApiError::from_body(
            reqwest::StatusCode::CONFLICT,
            br#"{"error":{"code":"route_taken","message":"route /a is used by b"}}"#,
        )
        .into();
        assert_eq!(
            format!("error: {err:#}"),
            "error: route /a is used by b (route_taken)"
        );
    }
}
