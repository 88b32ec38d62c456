//! Outgoing HTTP (`allowed_outbound_hosts`): against an upstream server this
//! test starts on 127.0.0.1, a listed host answers, anything else is refused
//! with a log line naming the host and the key, names that resolve to
//! loopback are refused unless the address is listed, a slow upstream is cut
//! at the function's timeout, connections are pooled across invocations and
//! the requests and bytes sent are on the bill.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use common::*;

/// An HTTP/1.1 server on 127.0.0.1: `/hello` answers "hi from upstream",
/// `/len` the length of the body it got, `/slow` answers after a minute.
struct Upstream {
    port: u16,
    /// Connections accepted.
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream() -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicU64::new(0));
    let accepted = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    let text = match path.as_str() {
                        "/hello" => "hi from upstream".to_string(),
                        "/len" => body.map(|b| b.len()).unwrap_or(0).to_string(),
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            "late".to_string()
                        }
                        _ => "unknown".to_string(),
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        port,
        connections,
        task,
    }
}

/// The text `/fetch` of the chaos guest answers for `to`.
async fn fetch(server: &Server, path: &str, to: &str, send: Option<usize>) -> (u16, String) {
    let mut url = server.url(&format!("{path}?to={}", encode(to)));
    if let Some(n) = send {
        url.push_str(&format!("&send={n}"));
    }
    let response = client().get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Percent-encodes all but unreserved characters (a URL in a query).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn hosts(entries: &[String]) -> String {
    let quoted: Vec<String> = entries.iter().map(|e| format!("{e:?}")).collect();
    format!("allowed_outbound_hosts = [{}]", quoted.join(", "))
}

#[tokio::test(flavor = "multi_thread")]
async fn listed_hosts_answer_pooled_and_billed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let up = upstream().await;
    let listed = format!("http://127.0.0.1:{}", up.port);
    server.deploy_guest(
        "chaos",
        "http-chaos",
        &format!(
            "route = \"/chaos/...\"\n{}",
            hosts(std::slice::from_ref(&listed))
        ),
    );
    for _ in 0..5 {
        let (status, text) = fetch(&server, "/chaos/fetch", &format!("{listed}/hello"), None).await;
        assert_eq!(
            (status, text.as_str()),
            (200, "fetched 200: hi from upstream")
        );
    }
    // Five invocations, one after another, reused a pooled connection
    // (an invocation may begin before the pool has one back, so not all).
    let connections = up.connections.load(Ordering::SeqCst);
    assert!(connections < 5, "{connections} connections for 5 requests");

    let (status, text) = fetch(
        &server,
        "/chaos/fetch",
        &format!("{listed}/len"),
        Some(100_000),
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "fetched 200: 100000"));

    // On the usage and the bill: 6 requests, the body's 100000 bytes.
    wait_until(
        "the outbound requests never reached the usage",
        WAIT_MAX,
        Duration::from_millis(50),
        || async {
            let usage = server.get_json("/v1/usage").await;
            match (
                usage["total"]["outbound_requests"].as_u64(),
                usage["total"]["outbound_bytes"].as_u64(),
            ) {
                (Some(6), Some(100_000)) => Ok(()),
                _ => Err(usage.to_string()),
            }
        },
    )
    .await;
    let bill = server.get_json("/v1/bill").await;
    let line = |item: &str| {
        bill["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["item"] == item)
            .unwrap_or_else(|| panic!("no {item} line: {bill}"))
            .clone()
    };
    assert_eq!(line("outbound requests")["quantity"], "6", "{bill}");
    assert_eq!(line("outbound data")["quantity"], "100000 bytes", "{bill}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unlisted_hosts_and_names_of_private_addresses_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let up = upstream().await;
    let other = upstream().await;
    server.deploy_guest(
        "listed",
        "http-chaos",
        &format!(
            "route = \"/listed/...\"\n{}",
            hosts(&[format!("http://localhost:{}", up.port)])
        ),
    );
    // Another port of the same address is another host.
    let target = format!("http://127.0.0.1:{}", other.port);
    let (status, text) = fetch(&server, "/listed/fetch", &format!("{target}/hello"), None).await;
    assert_eq!(
        (status, text.as_str()),
        (200, "refused: ErrorCode::HttpRequestDenied")
    );
    // A listed name that resolves to loopback: the address is not listed
    // for that name's sake, so no request leaves.
    let (_, text) = fetch(
        &server,
        "/listed/fetch",
        &format!("http://localhost:{}/hello", up.port),
        None,
    )
    .await;
    assert_eq!(text, "refused: ErrorCode::DestinationIpProhibited");
    assert_eq!(other.connections.load(Ordering::SeqCst), 0);
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);

    let refused = format!("outgoing request to {target} refused");
    let lines = [
        refused.as_str(),
        "allowed_outbound_hosts",
        "localhost resolves only to addresses that are not public",
    ];
    server.wait_for_logs("listed", &lines).await;

    // A wildcard reaches public hosts only: never loopback.
    server.deploy_guest(
        "anywhere",
        "http-chaos",
        &format!(
            "route = \"/anywhere/...\"\n{}",
            hosts(&["*://*:*".to_string()])
        ),
    );
    let (_, text) = fetch(
        &server,
        "/anywhere/fetch",
        &format!("http://127.0.0.1:{}/hello", up.port),
        None,
    )
    .await;
    assert_eq!(text, "refused: ErrorCode::HttpRequestDenied");
    server.wait_for_logs("anywhere", &["not public"]).await;

    // Listing the address as well lets the name reach it.
    server.deploy_guest(
        "both",
        "http-chaos",
        &format!(
            "route = \"/both/...\"\n{}",
            hosts(&[
                format!("http://localhost:{}", up.port),
                format!("http://127.0.0.1:{}", up.port),
            ])
        ),
    );
    let (_, text) = fetch(
        &server,
        "/both/fetch",
        &format!("http://localhost:{}/hello", up.port),
        None,
    )
    .await;
    assert_eq!(text, "fetched 200: hi from upstream");

    // Without the key, nothing is reachable, and the log says what to add.
    server.deploy_guest("closed", "http-chaos", "route = \"/closed/...\"");
    let (_, text) = fetch(
        &server,
        "/closed/fetch",
        &format!("http://127.0.0.1:{}/hello", up.port),
        None,
    )
    .await;
    assert_eq!(text, "refused: ErrorCode::HttpRequestDenied");
    server
        .wait_for_logs("closed", &["allowed_outbound_hosts is empty"])
        .await;
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upstream_is_cut_at_the_functions_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let up = upstream().await;
    let listed = format!("http://127.0.0.1:{}", up.port);
    server.deploy_guest(
        "chaos",
        "http-chaos",
        &format!(
            "route = \"/chaos/...\"\ntimeout_ms = 1500\n{}",
            hosts(std::slice::from_ref(&listed))
        ),
    );
    let started = Instant::now();
    let url = server.url(&format!(
        "/chaos/fetch?to={}",
        encode(&format!("{listed}/slow"))
    ));
    let response = client().get(url).send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    let body = response.text().await.unwrap();
    assert_eq!(error_code(&body), "timeout", "{body}");
    // Cut by the function's timeout, not by the upstream's answer a
    // minute later.
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_entries_are_refused_at_deploy_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for (entry, says) in [
        ("api.example.com", "name a scheme"),
        ("https://example.com/v1/", "no path"),
        ("ftp://example.com", "use http, https, tcp, udp or *"),
        ("*://example.com", "name the port"),
        ("tcp://10.0.0.1", "name the port"),
    ] {
        let manifest = server.write_manifest("bad", "http-chaos", &hosts(&[entry.to_string()]));
        let out = server.cli(&["deploy", manifest.to_str().unwrap()]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(entry) && stderr.contains(says),
            "{entry}: {stderr}"
        );
    }
}
