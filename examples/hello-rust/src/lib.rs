//! hello-rust: an Updraft HTTP function, a plain `wasi:http/proxy` component.
//!
//! It imports nothing Updraft-specific, so the same binary runs unchanged
//! under `wasmtime serve`. Every request gets `200 text/plain`:
//! `Hello from Updraft (Rust)!` or, with `?name=X`, `Hello, X!`.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let name = request
            .path_with_query()
            .as_deref()
            .and_then(query_param_name);
        let body = match name {
            Some(name) => format!("Hello, {name}!\n"),
            None => "Hello from Updraft (Rust)!\n".to_string(),
        };

        let headers = Fields::new();
        // Appending a valid, lower-case header can only fail if the fields
        // were immutable, and these are ours.
        let _ = headers.append("content-type", b"text/plain");
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(200);
        let Ok(outgoing) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));

        if let Ok(mut stream) = outgoing.write() {
            // A failed write means the client went away; nothing to report.
            let _ = stream.write_all(body.as_bytes());
            let _ = stream.flush();
        }
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

/// The decoded value of the first non-empty `name` query parameter.
fn query_param_name(path_with_query: &str) -> Option<String> {
    let (_, query) = path_with_query.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == "name")
        .map(|(_, value)| percent_decode(value))
        .find(|value| !value.is_empty())
}

/// Decodes `%XX` escapes and `+` (form encoding for a space); an invalid
/// escape is kept as it is and invalid UTF-8 is replaced.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes.get(i + 1..i + 3).and_then(hex_byte) {
                Some(decoded) => {
                    out.push(decoded);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_byte(digits: &[u8]) -> Option<u8> {
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    u8::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_from_query() {
        assert_eq!(query_param_name("/hello"), None);
        assert_eq!(query_param_name("/hello?name=Ada"), Some("Ada".into()));
        assert_eq!(
            query_param_name("/hello?x=1&name=Ada%20L+B"),
            Some("Ada L B".into())
        );
        assert_eq!(query_param_name("/hello?name="), None);
        assert_eq!(
            query_param_name("/hello?name=%zz%+4%4"),
            Some("%zz% 4%4".into())
        );
    }
}
