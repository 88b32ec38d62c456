//! counter-rust: an Updraft HTTP function that counts its calls in a
//! key-value store with an atomic increment, so concurrent requests never
//! lose a count.
//!
//! - `GET /counter` adds 1 to the key `hits` and answers the new count.
//! - `GET /counter?key=K` counts under `K` instead.
//! - `GET /counter?key=K&store=S` opens store `S`: only the stores listed
//!   in `key_value_stores` open; any other answers 403 with the error.
//! - `GET /counter?key=K&fail_below=N` still counts, but answers 500 while
//!   the count is below `N`: a function that fails its first `N - 1`
//!   attempts, to watch async retries and dead letters at work.
//! - An event (a CloudEvent in HTTP binary mode, from a queue, topic or
//!   cron trigger) counts under `{COUNTER_PREFIX}{ce-id}` (the prefix from
//!   the manifest's `[env]`, `event/` by default), so each delivery of each
//!   event shows in the store.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

mod kv {
    // Updraft's wasi:keyvalue WIT, kept with the platform's sandbox.
    wit_bindgen::generate!({
        path: "../../crates/updraft-sandbox/wit/keyvalue",
        world: "wasi:keyvalue/imports",
    });
}

use kv::wasi::keyvalue::{atomics, store};

wasip2::http::proxy::export!(Counter);

struct Counter;

impl wasip2::exports::http::incoming_handler::Guest for Counter {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let query = request.path_with_query().unwrap_or_default();
        let query = query.split_once('?').map(|(_, q)| q).unwrap_or("");
        let event_id = request
            .headers()
            .get("ce-id")
            .first()
            .map(|id| String::from_utf8_lossy(id).into_owned());
        let event_key = event_id.map(|id| {
            // wasi:cli/environment directly: std's env is empty in a proxy.
            let prefix = wasip2::cli::environment::get_environment()
                .into_iter()
                .find_map(|(k, v)| (k == "COUNTER_PREFIX").then_some(v))
                .unwrap_or_else(|| "event/".into());
            format!("{prefix}{id}")
        });
        let key = event_key
            .as_deref()
            .unwrap_or_else(|| param(query, "key").unwrap_or("hits"));
        let store_name = param(query, "store").unwrap_or("default");
        let fail_below = param(query, "fail_below").and_then(|n| n.parse::<i64>().ok());
        let (status, body) = match count(store_name, key) {
            Ok(n) if fail_below.is_some_and(|below| n < below) => {
                (500, format!("count {n} is below {}: failing on purpose\n", fail_below.unwrap_or(0)))
            }
            Ok(n) => (200, format!("{n}\n")),
            Err((status, message)) => (status, format!("{message}\n")),
        };
        respond(response_out, status, body.as_bytes());
    }
}

fn count(store_name: &str, key: &str) -> Result<i64, (u16, String)> {
    let bucket = store::open(store_name).map_err(|e| match e {
        store::Error::AccessDenied | store::Error::NoSuchStore => {
            (403, format!("store {store_name:?} is not available to this function"))
        }
        store::Error::Other(message) => (500, message),
    })?;
    atomics::increment(&bucket, key, 1).map_err(|e| match e {
        store::Error::Other(message) => (400, message),
        other => (500, format!("{other:?}")),
    })
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
        // A failed write means the client went away; nothing to report.
        let _ = stream.write_all(body);
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(outgoing, None);
}
