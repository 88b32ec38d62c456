//! chain: one link of a chain of functions calling each other in process
//! (`updraft:platform/invoke`). Configured by `[env]` (read through
//! `wasi:cli/environment`, which the proxy adapter does not give std):
//!
//! - `NAME`: what this link adds to the result (default `link`).
//! - `NEXT`: the function to call with the request body; without it, the
//!   link is the last and answers `NAME`. With it, the link answers
//!   `NAME,<what NEXT answered>`, or NEXT's status and body if it was not
//!   200, or 500 `NAME: call to NEXT failed: <error>` if the call failed.
//! - `SPIN=1`: loop forever instead (to see a caller's deadline stop it).
//! - `ECHO=1`: a direct call (or event) answers its payload as it came.
//!
//! It takes calls both ways: through its http handler (`POST /`), and
//! directly through `updraft:platform/handler`, which the platform prefers.
//!
//! `?bench=N` calls `NEXT` N times with an empty payload, timing each call
//! with the monotonic clock, and answers
//! `{"calls":N,"p50_ns":…,"p99_ns":…,"max_ns":…}`.

use std::io::Write as _;

use wasip2::clocks::monotonic_clock;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

mod platform {
    // Updraft's updraft:platform/invoke WIT, kept with the platform's sandbox.
    wit_bindgen::generate!({
        path: "../../../crates/updraft-sandbox/wit/invoke",
        world: "updraft:platform/callable",
    });
}

use platform::exports::updraft::platform::handler;
use platform::updraft::platform::invoke;

wasip2::http::proxy::export!(Chain);
platform::export!(Chain with_types_in platform);

struct Chain;

/// Most calls one bench request may time.
const CALLS_MAX: usize = 1_000_000;

impl wasip2::exports::http::incoming_handler::Guest for Chain {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        let bench_calls = param(query, "bench").and_then(|n| n.parse::<usize>().ok());
        let body = read_body(request);
        if let (Some(n), Some(next)) = (bench_calls, var("NEXT")) {
            return match bench(&next, n.min(CALLS_MAX)) {
                Ok(json) => respond(response_out, 200, json.as_bytes()),
                Err(e) => respond(response_out, 500, e.as_bytes()),
            };
        }
        let (status, out) = link(&body);
        respond(response_out, status, &out);
    }
}

impl handler::Guest for Chain {
    fn handle(payload: Vec<u8>) -> invoke::Response {
        if var("ECHO").as_deref() == Some("1") {
            return invoke::Response {
                status: 200,
                body: payload,
            };
        }
        let (status, body) = link(&payload);
        invoke::Response { status, body }
    }
}

fn var(name: &str) -> Option<String> {
    wasip2::cli::environment::get_environment()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// This link's answer to `body`: its own name, after the rest of the chain's.
fn link(body: &[u8]) -> (u16, Vec<u8>) {
    let name = var("NAME").unwrap_or_else(|| "link".into());
    if var("SPIN").as_deref() == Some("1") {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
    let Some(next) = var("NEXT") else {
        return (200, name.into_bytes());
    };
    match invoke::call(&next, body) {
        Ok(r) if r.status == 200 => {
            let mut out = format!("{name},").into_bytes();
            out.extend_from_slice(&r.body);
            (200, out)
        }
        Ok(r) => (r.status, r.body),
        Err(e) => (500, format!("{name}: call to {next} failed: {e:?}").into_bytes()),
    }
}

fn bench(next: &str, n: usize) -> Result<String, String> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = monotonic_clock::now();
        let result = invoke::call(next, &[]);
        let t1 = monotonic_clock::now();
        match result {
            Ok(r) if r.status == 200 => times.push(t1 - t0),
            other => return Err(format!("call to {next} failed: {other:?}")),
        }
    }
    times.sort_unstable();
    let at = |q: f64| times.get(((times.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0);
    Ok(format!(
        "{{\"calls\":{n},\"p50_ns\":{},\"p99_ns\":{},\"max_ns\":{}}}\n",
        at(0.5),
        at(0.99),
        at(1.0)
    ))
}

fn read_body(request: IncomingRequest) -> Vec<u8> {
    let mut body = Vec::new();
    let Ok(incoming) = request.consume() else {
        return body;
    };
    if let Ok(stream) = incoming.stream() {
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            body.extend_from_slice(&chunk);
        }
    }
    let _ = IncomingBody::finish(incoming);
    body
}

fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(k, v)| (k == name && !v.is_empty()).then_some(v))
}

fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.append("content-type", b"text/plain");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(mut stream) = outgoing.write() {
        let _ = stream.write_all(body);
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(outgoing, None);
}
