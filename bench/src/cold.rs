//! Cold paths (b)–(d) of issue 3, each repeated and summarized as p50/p99:
//! the first response after a deploy, after the function's compiled code was
//! unloaded, and after a server restart. Path (a), instantiation alone, is
//! timed in process by [`crate::instantiate`].

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::http::{self, CONTROL_TIMEOUT, Endpoint, Request};
use crate::report::Cold;
use crate::servers::Server;
use crate::stats::Summary;
use crate::updraft::{self, Unload};

/// (b) and (c) on a running server; (d) is [`restart`], which owns its server.
pub struct DeployAndUnload {
    pub deploy: Summary,
    pub deploys_compiled: usize,
    pub after_deploy: Summary,
    pub unload: Option<Summary>,
    pub after_unload: Option<Summary>,
    pub unload_note: Option<String>,
}

fn summary(samples: &[Duration], what: &str) -> Result<Summary> {
    Summary::of(samples).ok_or_else(|| anyhow!("no samples of {what}: repetitions must be ≥ 1"))
}

/// (b): deploys `reps` unique copies of hello (`hello-cold-N` at `/cold-N`) and
/// times each deploy and the first GET after it. (c): unloads a warm function
/// and times the first GET after each unload.
pub fn deploy_and_unload(endpoint: Endpoint, hello: &[u8], reps: usize) -> Result<DeployAndUnload> {
    let mut deploys = Vec::with_capacity(reps);
    let mut firsts = Vec::with_capacity(reps);
    let mut compiled = 0;
    for i in 0..reps {
        let wasm =
            updraft::with_custom_section(hello, "updraft-bench-copy", i.to_string().as_bytes());
        let route = format!("/cold-{i}");
        let deployed = updraft::deploy(endpoint, &format!("hello-cold-{i}"), &route, &wasm)?;
        firsts.push(updraft::get_hello(endpoint, &route)?);
        deploys.push(deployed.elapsed);
        compiled += usize::from(deployed.compiled);
    }

    let name = "hello-unload";
    let route = "/unload";
    updraft::deploy(endpoint, name, route, hello)?;
    let mut unloads = Vec::with_capacity(reps);
    let mut after_unload = Vec::with_capacity(reps);
    let mut note = None;
    for _ in 0..reps {
        // Warm first, so each unload drops code that was really in use.
        updraft::get_hello(endpoint, route)?;
        match updraft::unload(endpoint, name)? {
            Unload::Done(elapsed) => unloads.push(elapsed),
            Unload::Unsupported(why) => {
                note = Some(why);
                break;
            }
        }
        after_unload.push(updraft::get_hello(endpoint, route)?);
    }
    Ok(DeployAndUnload {
        deploy: summary(&deploys, "deploys")?,
        deploys_compiled: compiled,
        after_deploy: summary(&firsts, "first responses after deploy")?,
        unload: Summary::of(&unloads),
        after_unload: Summary::of(&after_unload),
        unload_note: note,
    })
}

/// What (d) measured.
pub struct Restart {
    pub spawn_to_200: Summary,
    pub listening_to_200: Summary,
    pub functions: usize,
    pub compiled_at_start: u64,
}

/// (d): a server on a fresh data dir with hello deployed at `/hello`, stopped
/// with SIGTERM and started again `reps` times on the same data dir and port.
/// Each start is timed to the first 200 of `GET /hello`, both from the spawn
/// and from the moment its "listening" line was read.
pub fn restart(
    bin: &Path,
    data_dir: &Path,
    scratch: &Path,
    hello: &[u8],
    reps: usize,
) -> Result<Restart> {
    let first = updraft::start(bin, data_dir, "127.0.0.1:0", scratch)?;
    let endpoint = first.server.endpoint;
    updraft::deploy(endpoint, "hello", "/hello", hello)?;
    updraft::get_hello(endpoint, "/hello")?;
    // The same port, so the restarted server is the one clients already know.
    let listen = endpoint.addr.to_string();
    let mut server: Server = first.server;
    let mut from_spawn = Vec::with_capacity(reps);
    let mut from_listening = Vec::with_capacity(reps);
    let mut compiled_at_start = 0;
    for _ in 0..reps {
        server.stop().context("stopping updraft for a restart")?;
        let spawned = Instant::now();
        let started = updraft::start(bin, data_dir, &listen, scratch)?;
        // Not `get_hello`'s own timer: the clock started at the spawn.
        let response = http::send(
            started.server.endpoint,
            &Request::get("/hello"),
            CONTROL_TIMEOUT,
        )?;
        let answered = Instant::now();
        anyhow::ensure!(
            response.status == 200,
            "GET /hello after a restart answered {}: {}",
            response.status,
            response.text()
        );
        from_spawn.push(answered - spawned);
        from_listening.push(answered.saturating_duration_since(started.listening_at));
        compiled_at_start =
            compiled_at_start.max(updraft::compiled_at_start(&started.line).unwrap_or(0));
        server = started.server;
    }
    server.stop()?;
    Ok(Restart {
        spawn_to_200: summary(&from_spawn, "restarts")?,
        listening_to_200: summary(&from_listening, "restarts")?,
        functions: 1,
        compiled_at_start,
    })
}

pub fn assemble(b_c: DeployAndUnload, d: Restart, reps: usize) -> Cold {
    Cold {
        repetitions: reps,
        deploy: b_c.deploy,
        deploys_compiled: b_c.deploys_compiled,
        after_deploy: b_c.after_deploy,
        unload: b_c.unload,
        after_unload: b_c.after_unload,
        unload_note: b_c.unload_note,
        restart_spawn_to_200: d.spawn_to_200,
        restart_listening_to_200: d.listening_to_200,
        restart_functions: d.functions,
        restart_compiled_at_start: d.compiled_at_start,
        instantiate: Default::default(),
    }
}
