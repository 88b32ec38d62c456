//! The router in process: `router()` driven as a tower `Service` against a
//! platform on a temp dir, no socket and no spawned binary. Each test sends
//! one request and checks the status and the error code the API documents
//! (docs/api.md), so the mapping of every error kind is pinned here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use bytes::Bytes;
use common::*;
use http::{Method, Request, header};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn health_needs_no_key() {
    let api = Api::new().await;
    let (status, body) = api.send_as(None, get("/healthz")).await;
    assert_eq!(status, 200);
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["functions"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_needs_a_valid_key() {
    let api = Api::new().await;
    let (status, body) = api.send_as(None, get("/v1/functions")).await;
    assert_eq!(status, 401);
    assert!(String::from_utf8_lossy(&body).contains("missing_key"));
    let (status, body) = api
        .send_as(Some("ud_nope_nope"), get("/v1/functions"))
        .await;
    assert_eq!(status, 401);
    assert!(String::from_utf8_lossy(&body).contains("invalid_key"));
    let request = Request::get("/v1/functions")
        .header(header::AUTHORIZATION, "Basic abc")
        .body(Body::empty())
        .unwrap();
    let (status, _) = api.send_as(None, request).await;
    assert_eq!(status, 401, "only bearer keys");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_platform_lists_nothing() {
    let api = Api::new().await;
    let (status, json) = api.get("/v1/functions").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["functions"], Value::Array(vec![]));
    let (status, json) = api.get("/v1/kv").await;
    assert_eq!(
        (status.as_u16(), &json["stores"]),
        (200, &Value::Array(vec![]))
    );
    let (status, json) = api.get("/v1/blobs").await;
    assert_eq!(
        (status.as_u16(), &json["containers"]),
        (200, &Value::Array(vec![]))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_things_are_404_with_their_own_codes() {
    let api = Api::new().await;
    let cases = [
        (Method::GET, "/v1/functions/nope", "function_not_found"),
        (Method::GET, "/v1/functions/nope/logs", "function_not_found"),
        (
            Method::POST,
            "/v1/functions/nope/invoke",
            "function_not_found",
        ),
        (
            Method::POST,
            "/v1/functions/nope/rollback",
            "function_not_found",
        ),
        (Method::DELETE, "/v1/functions/nope", "function_not_found"),
        (Method::GET, "/v1/nothing-here", "not_found"),
        (Method::GET, "/v1/kv/nostore", "store_not_found"),
        (Method::GET, "/v1/kv/nostore/k", "store_not_found"),
        (Method::GET, "/v1/blobs/nobox", "container_not_found"),
        (Method::GET, "/v1/blobs/nobox/a.txt", "container_not_found"),
        (
            Method::GET,
            "/v1/invocations/0190b6e2-7c1a-7d3e-8f00-1234deadbeef",
            "invocation_not_found",
        ),
        (Method::POST, "/v1/publish/nochannel", "channel_not_found"),
        (Method::GET, "/no-route", "route_not_found"),
        (Method::GET, "/~acme/no-route", "route_not_found"),
        // An API key is not a key-value key: a code of its own.
        (Method::DELETE, "/v1/keys/nokey", "api_key_not_found"),
    ];
    for (method, uri, code) in cases {
        api.expect(method, uri, "", 404, code).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_of_other_tenants_are_the_admins_only() {
    let api = Api::new().await;
    let (status, json) = api
        .call(
            Method::POST,
            "/v1/keys",
            r#"{"tenant": "acme", "label": "ci"}"#,
        )
        .await;
    assert_eq!(status, 201, "{json}");
    let acme = json["key"].as_str().unwrap().to_string();
    assert_eq!(json["tenant"], "acme");
    let (status, body) = api.send_as(Some(&acme), get("/v1/keys?tenant=local")).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    let request = Request::post("/v1/keys")
        .body(Body::from(r#"{"admin": true}"#))
        .unwrap();
    let (status, _) = api.send_as(Some(&acme), request).await;
    assert_eq!(status, 403, "a tenant makes no admin keys");
    let (status, body) = api.send_as(Some(&acme), get("/v1/keys")).await;
    assert_eq!(status, 200);
    let keys: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1, "only acme's own");
    api.expect(Method::POST, "/v1/keys", "{not json", 400, "bad_request")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_deploys_are_400_and_store_nothing() {
    let api = Api::new().await;
    api.expect(
        Method::PUT,
        "/v1/functions/f",
        "not wasm at all",
        400,
        "not_wasm",
    )
    .await;
    api.expect(Method::PUT, "/v1/functions/f", "", 400, "missing_wasm")
        .await;
    api.expect(
        Method::PUT,
        "/v1/functions/f",
        &b"\0asm\x01\0\0\0\x05"[..],
        400,
        "invalid_wasm",
    )
    .await;
    api.expect(
        Method::PUT,
        "/v1/functions/f?kind=lambda",
        "x",
        400,
        "invalid_manifest",
    )
    .await;
    let (_, json) = api.get("/v1/functions").await;
    assert_eq!(json["functions"], Value::Array(vec![]));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_queries_and_bodies_are_400() {
    let api = Api::new().await;
    api.expect(
        Method::GET,
        "/v1/bill?month=2026-13",
        "",
        400,
        "bad_request",
    )
    .await;
    api.expect(
        Method::GET,
        "/v1/usage?from=yesterday",
        "",
        400,
        "bad_request",
    )
    .await;
    api.expect(
        Method::GET,
        "/v1/usage?group_by=tenant",
        "",
        400,
        "bad_request",
    )
    .await;
    api.expect(Method::GET, "/v1/usage?colour=blue", "", 400, "bad_request")
        .await;
    api.expect(Method::PUT, "/v1/queues/Not_A_Name", "", 400, "bad_request")
        .await;
    api.expect(Method::PUT, "/v1/budget", "lots", 400, "bad_request")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_and_topics_clash_by_name() {
    let api = Api::new().await;
    let (status, json) = api.call(Method::PUT, "/v1/queues/orders", "").await;
    assert!(status.is_success(), "{json}");
    api.expect(
        Method::PUT,
        "/v1/topics/orders",
        "",
        409,
        "channel_conflict",
    )
    .await;
    let (status, json) = api.call(Method::POST, "/v1/publish/orders", "one").await;
    assert!(status.is_success(), "{json}");
    let (_, json) = api.get("/v1/queues").await;
    assert!(json.to_string().contains("orders"), "{json}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_breaks_off_is_not_too_large() {
    let api = Api::new().await;
    let (status, _) = api.call(Method::PUT, "/v1/queues/q", "").await;
    assert!(status.is_success());
    // Half a body, then the client is gone.
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"half a mess")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )),
    ];
    let body = Body::from_stream(futures::stream::iter(chunks));
    api.expect(Method::POST, "/v1/publish/q", body, 400, "body_read_failed")
        .await;
    // Too large is still too large.
    let big = vec![b'x'; 2 << 20];
    api.expect(Method::POST, "/v1/publish/q", big, 413, "payload_too_large")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metering_answers_for_an_empty_tenant() {
    let api = Api::new().await;
    let (status, json) = api.get("/v1/bill?month=2026-11").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["total_cents"], 0);
    let (status, json) = api.get("/v1/usage").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["rows"], Value::Array(vec![]));
    let (status, json) = api.get("/v1/prices").await;
    assert_eq!(status, 200, "{json}");
}
