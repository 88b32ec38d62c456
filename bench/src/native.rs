//! The native baseline: a plain hyper 1 HTTP/1.1 server on a multi-thread
//! tokio runtime answering the same hello as the Wasm guest. It is the upper
//! bound the Wasm servers are compared with, and runs as its own process
//! (`updraft-bench native`) so it is started, loaded and measured exactly like
//! the others.

use std::convert::Infallible;
use std::io::Write;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// The body of `target/guests/hello-rust.wasm`, byte for byte.
pub const HELLO_BODY: &str = "Hello from Updraft (Rust)!\n";

/// Serves until killed. Prints `native hello listening on http://ADDR` first,
/// the line the harness reads to learn the port.
pub fn serve(listen: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let mut stdout = std::io::stdout();
        writeln!(
            stdout,
            "native hello listening on http://{}",
            listener.local_addr()?
        )?;
        stdout.flush()?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of file descriptors or a connection reset before accept:
                // the listener itself is fine, so keep serving.
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(hello))
                    .await;
            });
        }
    })
}

async fn hello(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(HELLO_BODY.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}
