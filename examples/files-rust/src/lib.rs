//! files-rust: an Updraft HTTP function that stores uploaded files as blobs
//! and serves them back, streaming both ways in 64 KiB chunks, so a file
//! never has to fit in the function's memory.
//!
//! - `PUT /files/NAME` stores the request body (201 and the size).
//! - `GET /files/NAME` serves it (404 if there is none).
//! - `GET /files/` lists the files, one `SIZE NAME` line each.
//! - `DELETE /files/NAME` removes it (204).
//! - `?container=C` uses container `C` instead of `uploads`: only the
//!   containers listed in `blob_containers` open; others answer 403.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};

mod platform {
    // Updraft's blobs WIT, kept with the platform's sandbox.
    wit_bindgen::generate!({
        path: "../../crates/updraft-sandbox/wit/blobs",
        world: "updraft:platform/imports",
    });
}

use platform::updraft::platform::blobs::{BlobWriter, Container, Error};

wasip2::http::proxy::export!(Files);

struct Files;

/// Bytes moved per read or write.
const CHUNK_BYTES: u64 = 64 * 1024;

impl wasip2::exports::http::incoming_handler::Guest for Files {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        let name = path.trim_start_matches('/').split_once('/').map(|(_, rest)| rest).unwrap_or("");
        let container_name = param(query, "container").unwrap_or("uploads");
        let container = match Container::open(container_name) {
            Ok(container) => container,
            Err(e) => return fail(response_out, e),
        };
        match (request.method(), name) {
            (Method::Get, "") => list(&container, response_out),
            (Method::Get, name) => serve(&container, name, response_out),
            (Method::Put, name) if !name.is_empty() => match store(&container, name, request) {
                Ok(size) => respond(response_out, 201, format!("stored {name}: {size} bytes\n").as_bytes()),
                Err(e) => fail(response_out, e),
            },
            (Method::Delete, name) if !name.is_empty() => match container.delete(name) {
                Ok(()) => respond(response_out, 204, b""),
                Err(e) => fail(response_out, e),
            },
            _ => respond(response_out, 405, b"use GET, PUT or DELETE on /files/NAME, or GET /files/\n"),
        }
    }
}

/// Streams the request body into a new blob, chunk by chunk.
fn store(container: &Container, name: &str, request: IncomingRequest) -> Result<u64, Error> {
    let other = |what: &str| Error::Other(format!("reading the upload failed: {what}"));
    let body = request.consume().map_err(|()| other("no body"))?;
    let input = body.stream().map_err(|()| other("no stream"))?;
    let writer: BlobWriter = container.create(name)?;
    loop {
        match input.blocking_read(CHUNK_BYTES) {
            Ok(chunk) => writer.write(&chunk)?,
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(other(&format!("{e:?}"))),
        }
    }
    drop(input);
    let _ = IncomingBody::finish(body);
    BlobWriter::finish(writer)
}

/// Streams a blob out with ranged reads.
fn serve(container: &Container, name: &str, response_out: ResponseOutparam) {
    let info = match container.info(name) {
        Ok(info) => info,
        Err(e) => return fail(response_out, e),
    };
    let headers = Fields::new();
    let _ = headers.append("content-type", b"application/octet-stream");
    let _ = headers.append("content-length", info.size.to_string().as_bytes());
    let response = OutgoingResponse::new(headers);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(mut stream) = outgoing.write() {
        let mut offset = 0;
        while offset < info.size {
            let Ok(chunk) = container.read(name, offset, CHUNK_BYTES) else {
                break;
            };
            if chunk.is_empty() || stream.write_all(&chunk).is_err() {
                break;
            }
            offset += chunk.len() as u64;
        }
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

fn list(container: &Container, response_out: ResponseOutparam) {
    let mut text = String::new();
    let mut cursor = None;
    loop {
        match container.list_blobs("", cursor.as_deref()) {
            Ok(page) => {
                for blob in page.blobs {
                    text.push_str(&format!("{} {}\n", blob.size, blob.key));
                }
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            Err(e) => return fail(response_out, e),
        }
    }
    respond(response_out, 200, text.as_bytes());
}

fn fail(response_out: ResponseOutparam, error: Error) {
    let (status, message) = match error {
        Error::AccessDenied => (403, "this container is not available to the function".to_string()),
        Error::NotFound => (404, "no such file".to_string()),
        Error::TooLarge(max) => (413, format!("the file is larger than {max} bytes")),
        Error::Invalid(message) => (400, message),
        Error::Other(message) => (500, message),
    };
    respond(response_out, status, format!("{message}\n").as_bytes());
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
