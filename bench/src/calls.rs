//! Function-to-function calls (issue 5): the latency of a call from one
//! function to another in process (`updraft:platform/invoke`), timed inside
//! the caller with the monotonic clock, side by side with the same callee
//! called through the HTTP gateway by a native client (wrk, one
//! keep-alive connection, one request at a time).
//!
//! Both sides run `tests/guests/chain`: `leaf` answers at once; `caller`
//! calls `leaf` N times with an empty payload (`?bench=N`). `leaf` exports
//! `updraft:platform/handler`, so calls reach it directly. The same calls
//! are timed again to `warm-leaf`, the same leaf with `instance_reuse_max`,
//! so a call finds an instantiated callee, and to `examples/hello-rust`,
//! which has only a `wasi:http` handler.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::http;
use crate::updraft;
use crate::wrk;

#[derive(Debug, Clone)]
pub struct CallsPlan {
    pub calls: usize,
    pub http_duration_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallsReport {
    pub calls: usize,
    /// In process, timed by the caller.
    pub call_p50_ns: u64,
    pub call_p99_ns: u64,
    /// In process, to a callee that reuses its instances.
    pub call_reuse_p50_ns: u64,
    pub call_reuse_p99_ns: u64,
    /// In process, to a callee with only a `wasi:http` handler.
    #[serde(default)]
    pub call_http_callee_p50_ns: u64,
    #[serde(default)]
    pub call_http_callee_p99_ns: u64,
    /// Through the gateway, timed by wrk (c=1).
    pub http_p50_ns: u64,
    pub http_p99_ns: u64,
    pub http_requests: u64,
}

pub fn measure(
    updraft_bin: &Path,
    wrk_bin: &Path,
    script: &Path,
    scratch: &Path,
    chain: &[u8],
    http_callee: &[u8],
    plan: &CallsPlan,
) -> Result<CallsReport> {
    let server = updraft::start(
        updraft_bin,
        &scratch.join("calls-data"),
        "127.0.0.1:0",
        scratch,
    )?
    .server;
    let endpoint = server.endpoint;
    updraft::deploy_manifest(
        endpoint,
        "leaf",
        "name = \"leaf\"\nroute = \"/leaf\"\n[env]\nNAME = \"leaf\"\n",
        chain,
    )?;
    updraft::deploy_manifest(
        endpoint,
        "warm-leaf",
        "name = \"warm-leaf\"\ninstance_reuse_max = 1000000\n[env]\nNAME = \"leaf\"\n",
        chain,
    )?;
    updraft::deploy_manifest(endpoint, "http-leaf", "name = \"http-leaf\"\n", http_callee)?;
    for (caller, callee) in [
        ("caller", "leaf"),
        ("warm-caller", "warm-leaf"),
        ("http-caller", "http-leaf"),
    ] {
        updraft::deploy_manifest(
            endpoint,
            caller,
            &format!(
                "name = \"{caller}\"\nroute = \"/{caller}\"\ncalls = [\"{callee}\"]\n\
                 timeout_ms = 600000\n[env]\nNAME = \"caller\"\nNEXT = \"{callee}\"\n"
            ),
            chain,
        )?;
    }
    // Warm-up, then the timed run.
    let get = |caller: &str, n: usize| -> Result<serde_json::Value> {
        let path = format!("/{caller}?bench={n}");
        let response = http::send(endpoint, &http::Request::get(&path), http::CONTROL_TIMEOUT)?;
        if response.status != 200 {
            bail!(
                "GET {path} answered {}: {}",
                response.status,
                response.text()
            );
        }
        serde_json::from_slice(&response.body).context("the caller's timing JSON")
    };
    get("caller", plan.calls.min(1000))?;
    let timed = get("caller", plan.calls)?;
    get("warm-caller", plan.calls.min(1000))?;
    let warm = get("warm-caller", plan.calls)?;
    get("http-caller", plan.calls.min(1000))?;
    let http_callee = get("http-caller", plan.calls)?;
    let field = |name: &str| timed[name].as_u64().unwrap_or(0);
    wrk::run(wrk_bin, script, &endpoint.url("/leaf"), 1, 1)?;
    let http_point = wrk::run(
        wrk_bin,
        script,
        &endpoint.url("/leaf"),
        1,
        plan.http_duration_s,
    )?;
    server.stop()?;
    Ok(CallsReport {
        calls: plan.calls,
        call_p50_ns: field("p50_ns"),
        call_p99_ns: field("p99_ns"),
        call_reuse_p50_ns: warm["p50_ns"].as_u64().unwrap_or(0),
        call_reuse_p99_ns: warm["p99_ns"].as_u64().unwrap_or(0),
        call_http_callee_p50_ns: http_callee["p50_ns"].as_u64().unwrap_or(0),
        call_http_callee_p99_ns: http_callee["p99_ns"].as_u64().unwrap_or(0),
        http_p50_ns: (http_point.p50_us * 1e3) as u64,
        http_p99_ns: (http_point.p99_us * 1e3) as u64,
        http_requests: http_point.requests,
    })
}
