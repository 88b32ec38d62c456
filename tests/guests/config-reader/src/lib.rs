//! config-reader: a `wasi:http/proxy` component that reads
//! `wasi:config/store@0.2.0-rc.1` (the draft wasmtime-wasi-config
//! implements; on Updraft, the manifest's `[variables]`).
//!
//! - `GET /get?key=K` answers the value of `K`, or 404 `none`;
//! - `GET /all` answers every `name=value`, one per line, sorted.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

mod config {
    wit_bindgen::generate!({
        path: "../../../crates/updraft-sandbox/wit/config",
        world: "wasi:config/imports",
    });
}

use config::wasi::config::store;

wasip2::http::proxy::export!(Reader);

struct Reader;

impl wasip2::exports::http::incoming_handler::Guest for Reader {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (path, query) = path.split_once('?').unwrap_or((&path, ""));
        let key = query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find_map(|(k, v)| (k == "key").then_some(v))
            .unwrap_or("")
            .to_string();
        let (status, body) = match path.rsplit('/').next().unwrap_or("") {
            "all" => match store::get_all() {
                Ok(mut all) => {
                    all.sort();
                    let lines: Vec<String> =
                        all.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
                    (200, lines.join("\n"))
                }
                Err(e) => (500, format!("get-all: {e:?}")),
            },
            _ => match store::get(&key) {
                Ok(Some(value)) => (200, value),
                Ok(None) => (404, "none".to_string()),
                Err(e) => (500, format!("get: {e:?}")),
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
