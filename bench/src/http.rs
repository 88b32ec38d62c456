//! A minimal blocking HTTP/1.1 client for the harness's control requests
//! (deploy, unload) and its timed single requests (the cold paths).
//!
//! Deliberately not a full client: one request per connection with
//! `Connection: close`, the response read to EOF. That keeps a timed request
//! free of pools, runtimes and background tasks, so what the clock sees is the
//! server (plus one loopback connect), and it needs no dependency. The load
//! itself is wrk's job ([`crate::wrk`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Longest a control request may take: a deploy compiles the Wasm, which on a
/// debug build of a busy 2-core machine can take a while.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest response the harness accepts; its servers answer a few KB at most,
/// so more means something is wrong.
const RESPONSE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Where a server listens, from a URL like `http://127.0.0.1:8080/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// API key sent as `Authorization: Bearer` (Updraft's management API).
    /// `'static` keeps `Endpoint` `Copy`: a run starts a handful of servers,
    /// so leaking each one's key is a few bytes.
    pub bearer: Option<&'static str>,
}

impl Endpoint {
    /// Parses `http://HOST:PORT` with an optional trailing path (ignored).
    pub fn parse(url: &str) -> Result<Endpoint> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("{url:?} is not an http:// URL"))?;
        let host_port = rest.split('/').next().unwrap_or(rest);
        let addr = host_port
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host_port:?}"))?
            .next()
            .ok_or_else(|| anyhow!("{host_port:?} resolves to no address"))?;
        Ok(Endpoint { addr, bearer: None })
    }

    /// `http://ADDR` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// What came back.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request to send.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    pub fn get(path: &'a str) -> Request<'a> {
        Request {
            method: "GET",
            path,
            content_type: None,
            body: &[],
        }
    }
}

/// Sends one request on a new connection and reads the whole response.
pub fn send(endpoint: Endpoint, request: &Request<'_>, timeout: Duration) -> Result<Response> {
    let mut stream = TcpStream::connect_timeout(&endpoint.addr, timeout)
        .with_context(|| format!("cannot connect to {}", endpoint.addr))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // The head and a small body go out in one segment; without this, Nagle
    // could hold the body back and add its delay to the measurement.
    stream.set_nodelay(true)?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        request.method,
        request.path,
        endpoint.addr,
        request.body.len()
    );
    if let Some(content_type) = request.content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if let Some(key) = endpoint.bearer {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(request.body);
    stream
        .write_all(&message)
        .with_context(|| format!("sending {} {}", request.method, request.path))?;
    let mut raw = Vec::new();
    stream
        .take(RESPONSE_BYTES_MAX)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to {} {}", request.method, request.path))?;
    parse_response(&raw).with_context(|| format!("answer to {} {}", request.method, request.path))
}

/// [`send`], timed from before the connect to the last byte of the response.
pub fn send_timed(
    endpoint: Endpoint,
    request: &Request<'_>,
    timeout: Duration,
) -> Result<(Response, Duration)> {
    let started = Instant::now();
    let response = send(endpoint, request, timeout)?;
    Ok((response, started.elapsed()))
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("the connection closed before a complete response head"))?;
    let head = std::str::from_utf8(&raw[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &raw[head_end + 4..];
    let body = if chunked {
        decode_chunked(body)?
    } else {
        body.to_vec()
    };
    Ok(Response { status, body })
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk size line"))?;
        let size_text = std::str::from_utf8(&data[..line_end]).context("chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let plain = parse_response(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((plain.status, plain.body.as_slice()), (201, &b"ok"[..]));

        let chunked = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nHello\r\n1;x=y\r\n!\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (chunked.status, chunked.text()),
            (200, "Hello!".to_string())
        );
    }

    #[test]
    fn rejects_truncated_responses() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nHe")
                .is_err()
        );
    }

    #[test]
    fn endpoints_parse_urls() {
        let e = Endpoint::parse("http://127.0.0.1:8080/hello").unwrap();
        assert_eq!(e.addr.port(), 8080);
        assert_eq!(e.url("/x"), "http://127.0.0.1:8080/x");
        assert!(Endpoint::parse("https://127.0.0.1:1").is_err());
    }
}
