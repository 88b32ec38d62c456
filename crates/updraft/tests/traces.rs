//! One trace through everything: a client's `traceparent` → an http
//! function → its call to another function → that one's publish → the
//! queue's delivery → the delivery's retry, each span under the right
//! parent. Seen twice: by an in-process OTLP/HTTP receiver the server
//! exports to, and by `updraft trace`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http_body_util::BodyExt as _;
use prost::Message as _;

/// A span as the receiver got it: (name, kind, parent span id, attributes).
#[derive(Debug, Clone)]
struct Received {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP receiver on 127.0.0.1 (`POST /v1/traces`, protobuf);
/// stops with the test's runtime.
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            assert_eq!(request.uri().path(), "/v1/traces");
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let export = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body).unwrap();
                            let mut kept = kept.lock().unwrap();
                            for resource in export.resource_spans {
                                for scope in resource.scope_spans {
                                    for span in scope.spans {
                                        kept.push(Received {
                                            trace_id: hex(&span.trace_id),
                                            span_id: hex(&span.span_id),
                                            parent: hex(&span.parent_span_id),
                                            name: span.name,
                                            attributes: span
                                                .attributes
                                                .into_iter()
                                                .map(|kv| {
                                                    (
                                                        kv.key,
                                                        format!(
                                                            "{:?}",
                                                            kv.value.and_then(|v| v.value)
                                                        ),
                                                    )
                                                })
                                                .collect(),
                                        });
                                    }
                                }
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The id of the invocation that answered.
fn invocation_id(response: &reqwest::Response) -> String {
    response.headers()["updraft-invocation-id"]
        .to_str()
        .unwrap()
        .to_string()
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_spans_a_request_a_call_a_publish_a_delivery_and_its_retry() {
    let (otlp, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!("[telemetry]\notlp_endpoint = \"{otlp}\"\n"),
    )
    .unwrap();
    let server = Server::start_with(dir.path(), &["--config", config.to_str().unwrap()]);
    server.cli_ok(&["queues", "create", "orders"]);
    // The consumer always traps: two attempts, then a dead letter.
    server.deploy_guest(
        "sink",
        "trap",
        "[[trigger]]\nqueue = \"orders\"\n[retry]\nmax_attempts = 2\nbackoff_ms = 10\nbackoff_max_ms = 20",
    );
    server.deploy_guest(
        "pub",
        "publisher",
        "publishes = [\"orders\"]\n[env]\nTO = \"orders\"",
    );
    server.deploy_guest(
        "front",
        "chain",
        "route = \"/front\"\ncalls = [\"pub\"]\n[env]\nNAME = \"front\"\nNEXT = \"pub\"",
    );

    let response = client()
        .post(server.url("/front"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .body("order 1")
        .send()
        .await
        .unwrap();
    let id = invocation_id(&response);
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    server.wait_for_dead_letter("sink").await;

    // Every span reaches the collector (batched: wait for the last).
    let spans = wait_until(
        "the collector has the delivery's two attempts",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let spans = received.lock().unwrap().clone();
            let attempts = spans.iter().filter(|s| s.name == "sink").count();
            match attempts {
                2 => Ok(spans),
                n => Err(format!("{n} attempts: {spans:?}")),
            }
        },
    )
    .await;
    let one = |name: &str| -> Received {
        let found: Vec<&Received> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "{name}: {spans:#?}");
        found[0].clone()
    };
    let child_of = |parent: &Received, name: &str| -> Received {
        let found: Vec<&Received> = spans
            .iter()
            .filter(|s| s.name == name && s.parent == parent.span_id)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {name} under {}: {spans:#?}",
            parent.name
        );
        found[0].clone()
    };
    assert!(
        spans.iter().all(|s| s.trace_id == CLIENT_TRACE),
        "one trace: {spans:#?}"
    );
    let front = one("front");
    assert_eq!(front.parent, CLIENT_SPAN, "under the client's span");
    assert!(front.attributes["faas.invocation_id"].contains(&id));
    assert!(front.attributes["faas.trigger"].contains("http"));
    child_of(&front, "admission");
    let front_run = child_of(&front, "run");
    let call = child_of(&front_run, "call pub");
    assert!(call.attributes["faas.invoked_name"].contains("pub"));
    let callee = child_of(&call, "pub");
    let callee_run = child_of(&callee, "run");
    let publish = child_of(&callee_run, "publish orders");
    assert!(publish.attributes["messaging.destination.name"].contains("orders"));
    // Both attempts of the delivery hang under the publish: the retry
    // joined the trace from the stored message.
    let attempts: Vec<&Received> = spans
        .iter()
        .filter(|s| s.name == "sink" && s.parent == publish.span_id)
        .collect();
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    assert_eq!(
        attempts[0].attributes["faas.invocation_id"], attempts[1].attributes["faas.invocation_id"],
        "one message, two attempts"
    );
    assert!(attempts[0].attributes["faas.trigger"].contains("pubsub"));

    // The same tree from the server's own store, by the invocation id.
    let tree = server.cli_ok(&["trace", &id]);
    assert!(tree.starts_with(&format!("trace {CLIENT_TRACE}")), "{tree}");
    let lines: Vec<&str> = tree.lines().collect();
    let depth = |name: &str| -> usize {
        let line = lines
            .iter()
            .find(|l| l.trim_start().starts_with(&format!("{name} [")))
            .unwrap_or_else(|| panic!("{name} in {tree}"));
        line.len() - line.trim_start().len()
    };
    assert_eq!(depth("front"), 0, "{tree}");
    assert_eq!(depth("run"), 2, "{tree}");
    assert_eq!(depth("call pub"), 4, "{tree}");
    assert_eq!(depth("publish orders"), 10, "{tree}");
    assert_eq!(depth("sink"), 12, "{tree}");
    let json: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["--json", "trace", CLIENT_TRACE])).unwrap();
    assert_eq!(json["trace_id"], CLIENT_TRACE);
    assert!(json["spans"].as_array().unwrap().len() >= 10, "{json}");

    // Another tenant sees none of it.
    let other = server.cli_ok(&["keys", "create", "--tenant", "acme"]);
    let hidden = client_with_key(other.trim())
        .get(server.url(&format!("/v1/traces/{CLIENT_TRACE}")))
        .send()
        .await
        .unwrap();
    expect_error(hidden, 404, "trace_not_found").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_traceparent_starts_a_trace_and_a_bad_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("hello", "hello-rust", "route = \"/hello\"");
    for header in [None, Some("00-zzz-bad-01")] {
        let mut request = client().get(server.url("/hello"));
        if let Some(h) = header {
            request = request.header("traceparent", h);
        }
        let response = request.send().await.unwrap();
        let id = invocation_id(&response);
        let spans = kept_trace(&server, &id, "hello", 1).await;
        let root = spans.iter().find(|s| s["name"] == "hello").unwrap();
        assert!(root["parent_span_id"].is_null(), "a new trace: {spans:#?}");
        assert_eq!(root["trace_id"].as_str().unwrap().len(), 32);
    }
    let missing = server
        .api()
        .get(server.url("/v1/traces/0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .unwrap();
    expect_error(missing, 404, "trace_not_found").await;
}

/// The spans of a recorded trace, from the server's store, once `count`
/// spans named `name` are among them (an invocation's own span ends last).
async fn kept_trace(server: &Server, id: &str, name: &str, count: usize) -> Vec<serde_json::Value> {
    wait_until(
        "the trace is kept",
        WAIT_MAX,
        Duration::from_millis(20),
        || async {
            let response = server
                .api()
                .get(server.url(&format!("/v1/traces/{id}")))
                .send()
                .await
                .unwrap();
            if response.status() != 200 {
                return Err(format!("{}", response.status()));
            }
            let trace: serde_json::Value = response.json().await.unwrap();
            let spans = trace["spans"].as_array().unwrap().clone();
            match spans.iter().filter(|s| s["name"] == name).count() {
                n if n >= count => Ok(spans),
                n => Err(format!("{n} {name}: {spans:#?}")),
            }
        },
    )
    .await
}

/// The one span named `name` whose parent is `parent`.
fn child<'s>(
    spans: &'s [serde_json::Value],
    parent: &serde_json::Value,
    name: &str,
) -> &'s serde_json::Value {
    let found: Vec<&serde_json::Value> = spans
        .iter()
        .filter(|s| s["name"] == name && s["parent_span_id"] == parent["span_id"])
        .collect();
    assert_eq!(found.len(), 1, "one {name} under {parent}: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn host_work_is_traced_and_outgoing_requests_carry_the_trace_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest(
        "counter",
        "counter-rust",
        "route = \"/counter\"\nkey_value_stores = [\"default\"]",
    );
    server.deploy_guest(
        "chaos",
        "http-chaos",
        &format!(
            "route = \"/chaos/...\"\nallowed_outbound_hosts = [{:?}]",
            server.url("")
        ),
    );

    // Instantiation and each key-value operation are spans under the run.
    let response = client().get(server.url("/counter")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let id = invocation_id(&response);
    let spans = kept_trace(&server, &id, "counter", 1).await;
    let root = spans.iter().find(|s| s["name"] == "counter").unwrap();
    let run = child(&spans, root, "run");
    child(&spans, run, "instantiate");
    let increment = child(&spans, run, "kv increment");
    assert_eq!(increment["attributes"]["db.system.name"], "updraft.kv");
    assert_eq!(increment["attributes"]["db.namespace"], "default");
    assert_eq!(increment["status"], "ok");

    // An outgoing request is a client span, and carries it on: the
    // service it reaches (here the same server) continues the trace.
    let to = server.url("/chaos/headers");
    let response = client()
        .get(server.url(&format!(
            "/chaos/fetch?to={}",
            to.replace(':', "%3A").replace('/', "%2F")
        )))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    let id = invocation_id(&response);
    let text = response.text().await.unwrap();
    assert!(text.starts_with("fetched 200:"), "{text}");
    // Both invocations, the fetcher's and the one its request reached.
    let spans = kept_trace(&server, CLIENT_TRACE, "chaos", 2).await;
    let fetcher = spans
        .iter()
        .find(|s| s["attributes"]["faas.invocation_id"] == id.as_str())
        .unwrap();
    assert_eq!(fetcher["parent_span_id"], CLIENT_SPAN);
    let run = child(&spans, fetcher, "run");
    let get = child(&spans, run, "GET");
    assert_eq!(get["kind"], "client");
    assert_eq!(get["attributes"]["http.response.status_code"], "200");
    assert_eq!(get["attributes"]["server.address"], "127.0.0.1");
    // The server that answered continued the trace under the request's
    // span; its guest saw its own run's place, a child of that.
    let answered = child(&spans, get, "chaos");
    let answered_run = child(&spans, answered, "run");
    let seen = format!(
        "traceparent: 00-{CLIENT_TRACE}-{}-01",
        answered_run["span_id"].as_str().unwrap()
    );
    assert!(text.contains(&seen), "{seen} in {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_invocation_traces_its_first_host_calls_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest(
        "bench",
        "kv-bench",
        "route = \"/bench\"\nkey_value_stores = [\"bench\"]",
    );
    // A thousand reads (and the write before them) in one recorded trace.
    let response = client()
        .get(server.url("/bench?op=get&n=1000&size=10&key=k"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = invocation_id(&response);
    let spans = kept_trace(&server, &id, "bench", 1).await;
    let host = spans
        .iter()
        .filter(|s| {
            let name = s["name"].as_str().unwrap();
            name == "instantiate" || name.starts_with("kv ")
        })
        .count();
    assert_eq!(host, updraft_sandbox::HOST_SPANS_MAX as usize, "{spans:#?}");
}
