//! kv-draft: a `wasi:http/proxy` component that counts in
//! `wasi:keyvalue@0.2.0-draft`, the version `wasmtime serve -S keyvalue`
//! implements, opening the store `""` as wasmtime requires (Updraft opens
//! its `default` store for it). The same binary runs on both.
//!
//! - `GET /incr?key=K` adds 1 to `K` (atomics.increment) and answers the count;
//! - `GET /get?key=K` answers the value of `K`, or 404 `none`.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

mod kv {
    // The draft's WIT, kept with the platform's sandbox.
    wit_bindgen::generate!({
        path: "../../../crates/updraft-sandbox/wit/keyvalue-draft",
        world: "wasi:keyvalue/imports",
    });
}

use kv::wasi::keyvalue::{atomics, store};

wasip2::http::proxy::export!(Counter);

struct Counter;

impl wasip2::exports::http::incoming_handler::Guest for Counter {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (path, query) = path.split_once('?').unwrap_or((&path, ""));
        let key = query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find_map(|(k, v)| (k == "key").then_some(v))
            .unwrap_or("hits")
            .to_string();
        let action = path.rsplit('/').next().unwrap_or("");
        let (status, body) = match store::open("") {
            Err(e) => (500, format!("open: {e:?}")),
            Ok(bucket) => match action {
                "get" => match bucket.get(&key) {
                    Ok(Some(value)) => (200, String::from_utf8_lossy(&value).into_owned()),
                    Ok(None) => (404, "none".to_string()),
                    Err(e) => (500, format!("get: {e:?}")),
                },
                _ => match atomics::increment(&bucket, &key, 1) {
                    Ok(n) => (200, n.to_string()),
                    Err(e) => (500, format!("increment: {e:?}")),
                },
            },
        };
        respond(response_out, status, body.as_bytes());
    }
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
