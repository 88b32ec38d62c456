//! http-chaos: a `wasi:http/proxy` test guest that misbehaves on request, so
//! the platform's limits and error paths can be exercised end to end.
//!
//! | path            | behaviour                                                  |
//! | --------------- | ---------------------------------------------------------- |
//! | `/loop`         | spins forever (only the host's timeout stops it)           |
//! | `/trap`         | panics with "chaos: trap requested" (panic=abort → trap)   |
//! | `/bomb`         | allocates and touches 1 MiB chunks forever                 |
//! | `/echo`         | streams the request body back, chunk by chunk (200)        |
//! | `/env?key=K`    | 200 with the value of env var K, 404 if unset              |
//! | `/stdout`       | writes a line to stdout and one to stderr, 200 "ok"        |
//! | `/slow?ms=N`    | sleeps N ms on a monotonic-clock pollable, 200 "slept"     |
//! | `/alloc?mb=N&ms=M` | allocates and touches N MiB, holds it M ms, 200 "allocated" |
//! | `/cpu?n=N&ms=M` | N rounds of integer work (a fixed CPU cost), then sleeps M ms (default 0); 200 with the result |
//! | `/fetch`        | makes an outgoing request; 200 "fetched" or "refused: E"   |
//! | `/fetch?to=URL&send=N` | GET URL (POST of N bytes with `send`); 200 "fetched S: BODY" |
//! | `/fetch-bench?to=URL&n=N` | N sequential GETs of URL, each timed; 200 with the N latencies in ns, one a line (500 "E" on the first failure) |
//! | `/count`        | 200 with how many requests this instance has served (1…)   |
//! | `/headers`      | 200: the path it saw, then each header as `name: value`    |
//! | `/cookie?set=C` | 200 with `Set-Cookie: C` (percent-decoded), and the `cookie` header it saw (or "no cookie") |
//! | anything else   | 200 "chaos ok"                                             |
//!
//! `/env` reads `wasi:cli/environment` directly (the proxy adapter has no
//! environment), so this component imports that interface on top of the
//! proxy world: under `wasmtime serve` pass `-S cli`.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

wasip2::http::proxy::export!(Chaos);

struct Chaos;

/// Requests this instance has served: 1 on every request unless the platform
/// reuses instances.
static SERVED: AtomicU64 = AtomicU64::new(0);

/// Bytes asked for per read when echoing; the host may return fewer.
const ECHO_CHUNK_BYTES: u64 = 64 * 1024;
/// Size of each allocation made by `/bomb`.
const BOMB_CHUNK_BYTES: usize = 1024 * 1024;
/// Most GETs one `/fetch-bench` request makes: its answer (a line per GET)
/// stays under a megabyte, and its run well inside a function's timeout.
const FETCH_BENCH_MAX: usize = 100_000;
/// Most rounds one `/cpu` request runs: a few seconds of CPU, so a typo
/// cannot outlast every timeout.
const CPU_ROUNDS_MAX: u64 = 10_000_000_000;

impl wasip2::exports::http::incoming_handler::Guest for Chaos {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path, query),
            None => (path_with_query.as_str(), ""),
        };
        // Dispatch on the last segment, so the guest works under any route
        // prefix (Updraft passes the full path, as `wasmtime serve` does).
        let action = path.rsplit('/').next().unwrap_or("");
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        match action {
            "loop" => spin_forever(),
            "trap" => panic!("chaos: trap requested"),
            "bomb" => allocate_forever(),
            "echo" => echo(request, response_out),
            "headers" => {
                let mut seen = format!("path: {path}\n");
                for (name, value) in request.headers().entries() {
                    seen.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(&value)));
                }
                respond(response_out, 200, seen.as_bytes())
            }
            "cookie" => {
                let seen = request
                    .headers()
                    .get("cookie")
                    .first()
                    .map(|c| format!("cookie: {}", String::from_utf8_lossy(c)))
                    .unwrap_or_else(|| "no cookie".to_string());
                let headers = Fields::new();
                if let Some(set) = query_param(query, "set") {
                    let _ = headers.append("set-cookie", percent_decode(set).as_bytes());
                }
                respond_with(response_out, headers, 200, seen.as_bytes())
            }
            "env" => match query_param(query, "key") {
                None => respond(response_out, 400, b"missing ?key=NAME\n"),
                Some(key) => {
                    let value = wasip2::cli::environment::get_environment()
                        .into_iter()
                        .find_map(|(name, value)| (name == key).then_some(value));
                    match value {
                        Some(value) => respond(response_out, 200, value.as_bytes()),
                        None => respond(response_out, 404, b"env var not set\n"),
                    }
                }
            },
            "stdout" => {
                println!("chaos wrote to stdout");
                eprintln!("chaos wrote to stderr");
                respond(response_out, 200, b"ok");
            }
            "slow" => match query_param(query, "ms").and_then(|ms| ms.parse::<u64>().ok()) {
                None => respond(response_out, 400, b"missing or invalid ?ms=N\n"),
                Some(ms) => {
                    let nanos = ms.saturating_mul(1_000_000);
                    wasip2::clocks::monotonic_clock::subscribe_duration(nanos).block();
                    respond(response_out, 200, b"slept");
                }
            },
            "alloc" => {
                let mb = query_param(query, "mb").and_then(|mb| mb.parse::<usize>().ok());
                let ms = query_param(query, "ms").and_then(|ms| ms.parse::<u64>().ok());
                match mb {
                    None => respond(response_out, 400, b"missing or invalid ?mb=N\n"),
                    Some(mb) => {
                        let mut held: Vec<Vec<u8>> = Vec::with_capacity(mb);
                        for _ in 0..mb {
                            // Written, not only reserved: resident.
                            held.push(vec![1u8; BOMB_CHUNK_BYTES]);
                        }
                        let nanos = ms.unwrap_or(0).saturating_mul(1_000_000);
                        wasip2::clocks::monotonic_clock::subscribe_duration(nanos).block();
                        let total: usize = held.iter().map(Vec::len).sum();
                        respond(response_out, 200, format!("allocated {}", total >> 20).as_bytes())
                    }
                }
            }
            "cpu" => match query_param(query, "n").and_then(|n| n.parse::<u64>().ok()) {
                Some(n) if n <= CPU_ROUNDS_MAX => {
                    let result = cpu_work(n);
                    let ms = query_param(query, "ms").and_then(|ms| ms.parse::<u64>().ok());
                    if let Some(ms) = ms {
                        let nanos = ms.saturating_mul(1_000_000);
                        wasip2::clocks::monotonic_clock::subscribe_duration(nanos).block();
                    }
                    respond(response_out, 200, result.to_string().as_bytes())
                }
                _ => respond(
                    response_out,
                    400,
                    format!("missing or invalid ?n=N (N at most {CPU_ROUNDS_MAX})\n").as_bytes(),
                ),
            },
            "fetch" => {
                let send = query_param(query, "send").and_then(|n| n.parse::<usize>().ok());
                let outcome = match query_param(query, "to") {
                    Some(to) => fetch_url(&percent_decode(to), send.unwrap_or(0)),
                    None => fetch(),
                };
                respond(response_out, 200, outcome.as_bytes())
            }
            "fetch-bench" => {
                let n = query_param(query, "n").and_then(|n| n.parse::<usize>().ok());
                match (query_param(query, "to"), n) {
                    (Some(to), Some(n)) if n <= FETCH_BENCH_MAX => {
                        match fetch_bench(&percent_decode(to), n) {
                            Ok(latencies) => respond(response_out, 200, latencies.as_bytes()),
                            Err(e) => respond(response_out, 500, e.as_bytes()),
                        }
                    }
                    _ => respond(
                        response_out,
                        400,
                        format!("missing ?to=URL or ?n=N (N at most {FETCH_BENCH_MAX})\n")
                            .as_bytes(),
                    ),
                }
            }
            "count" => {
                eprintln!("request {served} of this instance");
                respond(response_out, 200, served.to_string().as_bytes())
            }
            _ => respond(response_out, 200, b"chaos ok"),
        }
    }
}

/// `n` rounds of a xorshift-multiply mix: the same CPU on every call, and
/// a result the optimizer cannot skip.
fn cpu_work(n: u64) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    x
}

/// A loop the optimizer must keep: `black_box` hides the counter's value.
/// Tries an outgoing HTTP request (to the discard port on loopback) and says
/// whether the host let it through.
fn fetch() -> String {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{OutgoingRequest, Scheme};
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some("127.0.0.1:9"));
    let _ = request.set_path_with_query(Some("/"));
    match outgoing_handler::handle(request, None) {
        Err(code) => format!("refused: {code:?}"),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(_))) => "fetched".to_string(),
                Some(Ok(Err(code))) => format!("refused: {code:?}"),
                other => format!("refused: {other:?}"),
            }
        }
    }
}

/// Fetches `url` (`http://` or `https://`), POSTing `send` bytes when not 0,
/// and says what came back: "fetched STATUS: BODY" or "refused: E".
fn fetch_url(url: &str, send: usize) -> String {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::Method;
    let request = outgoing_get(url);
    if send > 0 {
        let _ = request.set_method(&Method::Post);
        let Ok(body) = request.body() else {
            return "refused: no request body".to_string();
        };
        // Sent first: the body streams to the host as it is written.
        let future = outgoing_handler::handle(request, None);
        if let Ok(mut stream) = body.write() {
            let chunk = vec![b'x'; send.min(4096)];
            let mut left = send;
            while left > 0 {
                let n = left.min(chunk.len());
                if stream.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n;
            }
            let _ = stream.flush();
        }
        let _ = OutgoingBody::finish(body, None);
        return read_response(future);
    }
    read_response(outgoing_handler::handle(request, None))
}

fn read_response(
    future: Result<wasip2::http::types::FutureIncomingResponse, wasip2::http::types::ErrorCode>,
) -> String {
    match receive(future) {
        Ok((status, body)) => format!("fetched {status}: {}", String::from_utf8_lossy(&body)),
        Err(e) => e,
    }
}

/// A GET of `url` (`http://` or `https://`; no scheme means `http`).
fn outgoing_get(url: &str) -> wasip2::http::types::OutgoingRequest {
    use wasip2::http::types::{OutgoingRequest, Scheme};
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((_, rest)) => (Scheme::Http, rest),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    request
}

/// Waits for the response and reads its whole body: the status and the
/// bytes, or "refused: E".
fn receive(
    future: Result<wasip2::http::types::FutureIncomingResponse, wasip2::http::types::ErrorCode>,
) -> Result<(u16, Vec<u8>), String> {
    let future = future.map_err(|code| format!("refused: {code:?}"))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(format!("refused: {code:?}")),
        other => return Err(format!("refused: {other:?}")),
    };
    let status = response.status();
    let mut body = Vec::new();
    if let Ok(incoming) = response.consume()
        && let Ok(stream) = incoming.stream()
    {
        loop {
            match stream.blocking_read(ECHO_CHUNK_BYTES) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(format!(
                        "refused: reading the body: {}",
                        e.to_debug_string()
                    ));
                }
            }
        }
    }
    Ok((status, body))
}

/// `n` GETs of `url`, one after the other, each timed on the monotonic
/// clock from building the request to the last byte of its body: the
/// latencies in ns, one a line, or what went wrong on the first failure.
fn fetch_bench(url: &str, n: usize) -> Result<String, String> {
    use std::fmt::Write as _;
    use wasip2::clocks::monotonic_clock;
    use wasip2::http::outgoing_handler;
    let mut out = String::with_capacity(n * 8);
    for i in 0..n {
        let start = monotonic_clock::now();
        let (status, body) = receive(outgoing_handler::handle(outgoing_get(url), None))?;
        let elapsed = monotonic_clock::now().saturating_sub(start);
        if status != 200 || body.is_empty() {
            return Err(format!(
                "GET {i} of {url} answered {status} with {} bytes",
                body.len()
            ));
        }
        let _ = writeln!(out, "{elapsed}");
    }
    Ok(out)
}

/// Undoes `%XX` escapes (a URL passed in a query parameter).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn spin_forever() -> ! {
    let mut counter = 0u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

/// Keeps every chunk alive and writes to each one so its pages are really
/// committed; ends when the host refuses to grow memory (an abort, a trap).
fn allocate_forever() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; BOMB_CHUNK_BYTES];
        let fill = u8::try_from(chunks.len() % 251).unwrap_or(0) | 1;
        chunk.fill(fill);
        chunks.push(std::hint::black_box(chunk));
    }
}

/// Streams the request body back: headers first, then each chunk as it
/// arrives, so a large body never sits whole in guest memory.
fn echo(request: IncomingRequest, response_out: ResponseOutparam) {
    let Ok(incoming) = request.consume() else {
        respond(response_out, 400, b"request body already consumed\n");
        return;
    };
    let Ok(input) = incoming.stream() else {
        respond(response_out, 400, b"request body stream unavailable\n");
        return;
    };

    let headers = Fields::new();
    let _ = headers.append("content-type", b"application/octet-stream");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(200);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));

    let Ok(mut output) = outgoing.write() else {
        return;
    };
    loop {
        match input.blocking_read(ECHO_CHUNK_BYTES) {
            Ok(chunk) => {
                if output.write_all(&chunk).is_err() {
                    // The client went away: stop, leaving the body unfinished.
                    return;
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(_)) => return,
        }
    }
    let _ = output.flush();
    drop(output);
    drop(input);
    let _ = IncomingBody::finish(incoming);
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Sends a whole `text/plain` response.
fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    respond_with(response_out, Fields::new(), status, body)
}

/// Sends a whole `text/plain` response with `headers` besides.
fn respond_with(response_out: ResponseOutparam, headers: Fields, status: u16, body: &[u8]) {
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

/// The raw value of the first `key=value` pair named `key`.
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(name, value)| (name == key).then_some(value))
}
