//! publisher: publishes its request body to the queue or topic named by
//! `?to=NAME`, or by `[env] TO` (a call from another function comes as
//! `POST /`) (`updraft:platform/messaging`), with the request's
//! `content-type`, and answers the message ids, one per line. A refused or
//! failed publish answers 500 with the error.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

mod platform {
    // Updraft's updraft:platform/messaging WIT, kept with the platform's sandbox.
    wit_bindgen::generate!({
        path: "../../../crates/updraft-sandbox/wit/messaging",
        world: "updraft:platform/messaging-imports",
    });
}

use platform::updraft::platform::messaging;

wasip2::http::proxy::export!(Publisher);

struct Publisher;

impl wasip2::exports::http::incoming_handler::Guest for Publisher {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        let to = match param(query, "to") {
            Some(to) => to.to_string(),
            None => wasip2::cli::environment::get_environment()
                .into_iter()
                .find_map(|(k, v)| (k == "TO").then_some(v))
                .unwrap_or_default(),
        };
        let content_type = request
            .headers()
            .get("content-type")
            .first()
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let body = read_body(request);
        match messaging::publish(&to, &body, content_type.as_deref()) {
            Ok(ids) => respond(response_out, 200, ids.join("\n").as_bytes()),
            Err(e) => respond(response_out, 500, format!("{e:?}").as_bytes()),
        }
    }
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
