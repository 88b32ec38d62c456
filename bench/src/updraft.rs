//! Talking to `updraft up` the way a user does: start it on a data dir, deploy
//! raw Wasm with `PUT /v1/functions/NAME?route=…`, unload, and call a route.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::http::{self, CONTROL_TIMEOUT, Endpoint, Request};
use crate::native::HELLO_BODY;
use crate::servers::{self, Announced};

/// Starts `updraft up` on `data_dir`, listening on `listen` (port 0: any).
pub fn start(bin: &Path, data_dir: &Path, listen: &str, scratch: &Path) -> Result<Announced> {
    start_with(bin, data_dir, listen, scratch, &[])
}

/// [`start`] with more arguments for `updraft up` (e.g. `--config FILE`).
pub fn start_with(
    bin: &Path,
    data_dir: &Path,
    listen: &str,
    scratch: &Path,
    extra: &[&str],
) -> Result<Announced> {
    let mut command = Command::new(bin);
    command
        .args(["up", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .args(extra)
        // The server's own default log level, whatever the caller's shell says.
        .env_remove("RUST_LOG")
        .env("XDG_CACHE_HOME", scratch.join("xdg-cache"));
    let log = scratch.join(format!(
        "updraft-{}.log",
        data_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("data")
    ));
    let mut announced = servers::start_announced("updraft", command, log)?;
    // The admin key `updraft up` made on this data dir's first start.
    let key_file = data_dir.join("admin.key");
    let key = std::fs::read_to_string(&key_file)
        .with_context(|| format!("reading the admin key {}", key_file.display()))?;
    announced.server.endpoint.bearer = Some(Box::leak(key.trim().to_string().into_boxed_str()));
    Ok(announced)
}

/// A finished deploy.
pub struct Deployed {
    pub elapsed: Duration,
    /// Whether the server compiled the Wasm (not found in its artifact cache).
    pub compiled: bool,
    /// Which code the deploy answered with: `baseline` (Winch) or
    /// `optimized`; servers before tiered compilation say nothing.
    pub tier: Option<String>,
}

/// `PUT /v1/functions/{name}?route={route}` with the raw Wasm; expects 201.
pub fn deploy(endpoint: Endpoint, name: &str, route: &str, wasm: &[u8]) -> Result<Deployed> {
    deploy_with(endpoint, name, &format!("route={route}"), wasm)
}

/// Deploys with `query` (`route=…&instance_reuse_max=…`) as the manifest.
pub fn deploy_with(endpoint: Endpoint, name: &str, query: &str, wasm: &[u8]) -> Result<Deployed> {
    let path = format!("/v1/functions/{name}?{query}");
    let request = Request {
        method: "PUT",
        path: &path,
        content_type: Some("application/wasm"),
        body: wasm,
    };
    let (response, elapsed) = http::send_timed(endpoint, &request, CONTROL_TIMEOUT)?;
    if response.status != 201 {
        bail!(
            "deploying {name} answered {}: {}",
            response.status,
            response.text()
        );
    }
    let details = serde_json::from_slice::<serde_json::Value>(&response.body).ok();
    let compiled = details
        .as_ref()
        .and_then(|v| v.get("compiled").and_then(serde_json::Value::as_bool))
        .unwrap_or(false);
    Ok(Deployed {
        elapsed,
        compiled,
        tier: details.as_ref().and_then(tier_of),
    })
}

/// `artifact.tier` of a function's details.
fn tier_of(details: &serde_json::Value) -> Option<String> {
    details["artifact"]["tier"].as_str().map(str::to_string)
}

/// Which code serves `name` now (`artifact.tier`); `None` from servers
/// before tiered compilation, or while it is scaled to zero.
pub fn tier(endpoint: Endpoint, name: &str) -> Result<Option<String>> {
    let path = format!("/v1/functions/{name}");
    let response = http::send(endpoint, &Request::get(&path), CONTROL_TIMEOUT)?;
    if response.status != 200 {
        bail!(
            "GET {path} answered {}: {}",
            response.status,
            response.text()
        );
    }
    let details: serde_json::Value = serde_json::from_slice(&response.body)
        .with_context(|| format!("GET {path} answered {:?}", response.text()))?;
    Ok(tier_of(&details))
}

/// Waits until Cranelift's code serves `name` (probed every 10 ms), at
/// most `within`.
pub fn wait_optimized(endpoint: Endpoint, name: &str, within: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + within;
    loop {
        match tier(endpoint, name)?.as_deref() {
            Some("baseline") => {}
            _ => return Ok(()),
        }
        if std::time::Instant::now() > deadline {
            bail!("{name}: Cranelift's code did not replace Winch's within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Deploys with a whole manifest (TOML), as `updraft deploy` does: a
/// multipart upload of the manifest and the Wasm.
pub fn deploy_manifest(endpoint: Endpoint, name: &str, manifest: &str, wasm: &[u8]) -> Result<()> {
    deploy_manifest_timed(endpoint, name, manifest, wasm).map(drop)
}

/// [`deploy_manifest`], timed from the connect to the 201's last byte, with
/// the server's answer: the function's details (`version`, `digest`, …).
pub fn deploy_manifest_timed(
    endpoint: Endpoint,
    name: &str,
    manifest: &str,
    wasm: &[u8],
) -> Result<(serde_json::Value, Duration)> {
    const BOUNDARY: &str = "updraft-bench-boundary-7f3a";
    let mut body = Vec::with_capacity(wasm.len() + manifest.len() + 512);
    for (part, content_type, bytes) in [
        ("manifest", "application/toml", manifest.as_bytes()),
        ("wasm", "application/wasm", wasm),
    ] {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{part}\"; filename=\"{part}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let path = format!("/v1/functions/{name}");
    let request = Request {
        method: "PUT",
        path: &path,
        content_type: Some(&content_type),
        body: &body,
    };
    let (response, elapsed) = http::send_timed(endpoint, &request, CONTROL_TIMEOUT)?;
    if response.status != 201 {
        bail!(
            "deploying {name} answered {}: {}",
            response.status,
            response.text()
        );
    }
    let details = serde_json::from_slice(&response.body)
        .with_context(|| format!("deploying {name} answered {:?}", response.text()))?;
    Ok((details, elapsed))
}

/// What `POST /v1/functions/{name}/unload` did.
pub enum Unload {
    Done(Duration),
    /// The server has no such endpoint (an older build); says what it answered.
    Unsupported(String),
}

pub fn unload(endpoint: Endpoint, name: &str) -> Result<Unload> {
    let path = format!("/v1/functions/{name}/unload");
    let request = Request {
        method: "POST",
        path: &path,
        content_type: None,
        body: &[],
    };
    let (response, elapsed) = http::send_timed(endpoint, &request, CONTROL_TIMEOUT)?;
    match response.status {
        200 => Ok(Unload::Done(elapsed)),
        // A missing endpoint is 404 (or 405 if another method matched); a 404
        // about the function itself would be a harness bug, so it is an error.
        404 | 405 if !response.text().contains("function_not_found") => {
            Ok(Unload::Unsupported(format!(
                "POST /v1/functions/{{name}}/unload answered {} (this updraft build has no unload endpoint)",
                response.status
            )))
        }
        status => bail!("unloading {name} answered {status}: {}", response.text()),
    }
}

/// One timed `GET path` that must answer 200 with the hello body.
pub fn get_hello(endpoint: Endpoint, path: &str) -> Result<Duration> {
    let (response, elapsed) = http::send_timed(endpoint, &Request::get(path), CONTROL_TIMEOUT)?;
    ensure!(
        response.status == 200 && response.text() == HELLO_BODY,
        "GET {path} answered {} {:?}, not 200 {HELLO_BODY:?}",
        response.status,
        response.text()
    );
    Ok(elapsed)
}

/// Deploys `http-chaos` at `/chaos/...` and serves it once, so what follows
/// finds its code mapped and an instance's pages warm.
pub fn deploy_chaos(endpoint: Endpoint, chaos: &[u8]) -> Result<()> {
    deploy(endpoint, "chaos", "/chaos/...", chaos)?;
    let warm = http::send(endpoint, &Request::get("/chaos/slow?ms=1"), CONTROL_TIMEOUT)?;
    ensure!(
        warm.status == 200,
        "GET /chaos/slow?ms=1 answered {}: {}",
        warm.status,
        warm.text()
    );
    Ok(())
}

/// `N` in Updraft's "…, N compiled at start)" listening line.
pub fn compiled_at_start(line: &str) -> Option<u64> {
    let before = line.split(" compiled at start").next()?;
    before.rsplit([' ', ',']).next()?.parse().ok()
}

/// `wasm` with a custom section appended: a different digest, so the server
/// cannot reuse a cached artifact and must compile, as for new code. Custom
/// sections may follow any section of a core module or a component.
pub fn with_custom_section(wasm: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    let mut content = leb128(name.len());
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0); // custom section id
    out.extend(leb128(content.len()));
    out.extend(content);
    out
}

fn leb128(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Checks that `bin` exists, with the fix in the message.
/// The updraft binary and the guests' dir a phase of its own uses: those
/// given, else the ones next to this binary (same profile), the binary
/// checked.
pub fn locate(updraft: Option<&PathBuf>, guests: Option<&PathBuf>) -> Result<(PathBuf, PathBuf)> {
    let profile = crate::run::profile_dir()?;
    let bin = updraft.cloned().unwrap_or_else(|| profile.join("updraft"));
    check_binary(&bin, profile.ends_with("release"))?;
    let guests = guests
        .cloned()
        .unwrap_or_else(|| profile.parent().unwrap_or(&profile).join("guests"));
    Ok((bin, guests))
}

pub fn check_binary(bin: &Path, release: bool) -> Result<()> {
    if bin.is_file() {
        return Ok(());
    }
    let build = if release {
        "cargo build -p updraft --release"
    } else {
        "cargo build -p updraft"
    };
    bail!(
        "no updraft binary at {}: build it with `{build}` (or pass --updraft PATH)",
        bin.display()
    )
}

/// Reads a guest built by `cargo xtask guests`.
pub fn read_guest(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "cannot read {}: build the guests with `cargo xtask guests` (or pass --guests DIR)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_compiled_at_start() {
        let line = "Updraft listening on http://127.0.0.1:1 (data dir /d, 3 functions, 0 compiled at start)";
        assert_eq!(compiled_at_start(line), Some(0));
        assert_eq!(compiled_at_start("listening"), None);
    }

    #[test]
    fn custom_section_is_well_formed() {
        assert_eq!(leb128(0), [0]);
        assert_eq!(leb128(127), [0x7f]);
        assert_eq!(leb128(128), [0x80, 0x01]);
        let out = with_custom_section(b"\0asm", "n", b"xy");
        assert_eq!(out, b"\0asm\0\x04\x01nxy");
    }
}
