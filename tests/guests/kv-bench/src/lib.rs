//! kv-bench: times `wasi:keyvalue` operations from inside a guest, so the
//! benchmark measures what a function sees (host call, backend, copies),
//! not HTTP.
//!
//! `GET /?op=get|set|increment&n=N&size=BYTES&key=K` opens the store
//! `bench`, (for `get`, first writes `size` bytes under the key), runs `n`
//! operations timed one by one with the monotonic clock, and answers JSON:
//! `{"op":…,"n":…,"total_ns":…,"p50_ns":…,"p99_ns":…,"max_ns":…}`.

use std::io::Write as _;

use wasip2::clocks::monotonic_clock;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

mod kv {
    // Updraft's wasi:keyvalue WIT, kept with the platform's sandbox.
    wit_bindgen::generate!({
        path: "../../../crates/updraft-sandbox/wit/keyvalue",
        world: "wasi:keyvalue/imports",
    });
}

use kv::wasi::keyvalue::{atomics, store};

wasip2::http::proxy::export!(Bench);

struct Bench;

/// Most operations one request may time (bounds the guest's memory).
const OPS_MAX: usize = 1_000_000;

impl wasip2::exports::http::incoming_handler::Guest for Bench {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        let op = param(query, "op").unwrap_or("get").to_string();
        let n = param(query, "n")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1000)
            .min(OPS_MAX);
        let size = param(query, "size")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(16);
        // Counters live apart: a byte value under the same key is no integer.
        let default_key = if op == "increment" { "bench-counter" } else { "bench-key" };
        let key = param(query, "key").unwrap_or(default_key).to_string();
        match run(&op, n, size, &key) {
            Ok(body) => respond(response_out, 200, body.as_bytes()),
            Err(message) => respond(response_out, 500, message.as_bytes()),
        }
    }
}

fn run(op: &str, n: usize, size: usize, key: &str) -> Result<String, String> {
    let bucket = store::open("bench").map_err(|e| format!("open: {e:?}"))?;
    let value = vec![b'v'; size];
    if op == "get" {
        bucket.set(key, &value).map_err(|e| format!("set: {e:?}"))?;
    }
    let mut times = Vec::with_capacity(n);
    let started = monotonic_clock::now();
    for _ in 0..n {
        let t0 = monotonic_clock::now();
        let ok = match op {
            "get" => bucket.get(key).map(|v| v.is_some()),
            "set" => bucket.set(key, &value).map(|()| true),
            "increment" => atomics::increment(&bucket, key, 1).map(|_| true),
            other => return Err(format!("unknown op {other:?}: use get, set or increment")),
        };
        let t1 = monotonic_clock::now();
        if !matches!(ok, Ok(true)) {
            return Err(format!("{op} failed: {ok:?}"));
        }
        times.push(t1 - t0);
    }
    let total = monotonic_clock::now() - started;
    times.sort_unstable();
    let at = |q: f64| times.get(((times.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0);
    Ok(format!(
        "{{\"op\":\"{op}\",\"n\":{n},\"size\":{size},\"total_ns\":{total},\"p50_ns\":{},\"p99_ns\":{},\"max_ns\":{}}}\n",
        at(0.5),
        at(0.99),
        at(1.0)
    ))
}

fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(k, v)| (k == name && !v.is_empty()).then_some(v))
}

fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.append("content-type", b"application/json");
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
