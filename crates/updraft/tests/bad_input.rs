//! Acceptance 3: bad input gets the documented status and a message that says
//! what to fix, and the registry is unchanged afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

async fn put(server: &Server, name: &str, manifest: &str, wasm: Vec<u8>) -> (u16, String) {
    let form = Form::new()
        .part("manifest", Part::text(manifest.to_string()))
        .part("wasm", Part::bytes(wasm));
    let response = server
        .api()
        .put(server.url(&format!("/v1/functions/{name}")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn registry(server: &Server) -> Value {
    let mut v: Value = server.get_json("/v1/functions").await;
    for f in v["functions"].as_array_mut().unwrap() {
        f.as_object_mut().unwrap().remove("updated_at");
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("echo", "echo", "route = \"/echo\"");
    let hello = std::fs::read(guest("hello-rust")).unwrap();
    let before = registry(&server).await;
    let info_before = server.cli_ok(&["--json", "info", "echo"]);

    // Not Wasm at all.
    let (status, body) = put(&server, "junk", "", b"#!/bin/sh\necho hi\n".to_vec()).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "not_wasm"),
        "{body}"
    );
    assert!(error_message(&body).contains(".wasm"), "{body}");

    // Valid Wasm of the wrong world: an empty core module (no _start) and an
    // empty component (exports nothing).
    let empty_module = b"\0asm\x01\0\0\0".to_vec();
    let (status, body) = put(&server, "lib", "", empty_module).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "wrong_world"),
        "{body}"
    );
    assert!(error_message(&body).contains("_start"), "{body}");
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    let (status, body) = put(&server, "nothing", "", empty_component).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "wrong_world"),
        "{body}"
    );
    assert!(
        error_message(&body).contains("wasi:http/incoming-handler"),
        "{body}"
    );

    // Truncated Wasm.
    let (status, body) = put(&server, "cut", "", hello[..hello.len() / 2].to_vec()).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "invalid_wasm"),
        "{body}"
    );

    // A manifest with an unknown key names the key.
    let (status, body) = put(&server, "typo", "rout = \"/x\"", hello.clone()).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "invalid_manifest"),
        "{body}"
    );
    assert!(error_message(&body).contains("rout"), "{body}");

    // A manifest that states the wrong kind.
    let (status, body) = put(&server, "kindly", "kind = \"command\"", hello.clone()).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "wrong_world"),
        "{body}"
    );

    // Bad limits and routes.
    let (status, body) = put(&server, "big", "memory_mb = 999999", hello.clone()).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "invalid_manifest"),
        "{body}"
    );
    let (status, body) = put(&server, "api", "route = \"/v1/steal\"", hello.clone()).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "invalid_manifest"),
        "{body}"
    );

    // A route another function owns.
    let (status, body) = put(&server, "thief", "route = \"/echo\"", hello.clone()).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (409, "route_conflict"),
        "{body}"
    );
    assert!(error_message(&body).contains("\"echo\""), "{body}");

    // The CLI says it too, and exits non-zero.
    let out = server.cli(&[
        "deploy",
        "--name",
        "cli-thief",
        "--route",
        "/echo",
        guest("hello-rust").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already taken"));

    // Unknown function: invoke, info, logs, delete, rollback.
    let client = server.api();
    for (method, path) in [
        ("POST", "/v1/functions/ghost/invoke"),
        ("GET", "/v1/functions/ghost"),
        ("GET", "/v1/functions/ghost/logs"),
        ("DELETE", "/v1/functions/ghost"),
        ("POST", "/v1/functions/ghost/rollback"),
    ] {
        let response = client
            .request(method.parse().unwrap(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
        let body = response.text().await.unwrap();
        assert_eq!(error_code(&body), "function_not_found", "{body}");
    }
    let response = client.get(server.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        error_code(&response.text().await.unwrap()),
        "route_not_found"
    );

    // Oversized body: 413, for commands and http functions alike.
    server.deploy_guest(
        "small",
        "echo",
        "route = \"/small\"\nrequest_body_bytes_max = 1024",
    );
    server.deploy_guest(
        "smallhttp",
        "http-chaos",
        "route = \"/smallhttp/...\"\nrequest_body_bytes_max = 1024",
    );
    for path in ["/small", "/smallhttp/echo"] {
        let response = client
            .post(server.url(path))
            .body(vec![b'x'; 4096])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "{path}");
        let body = response.text().await.unwrap();
        assert_eq!(error_code(&body), "request_too_large", "{body}");
        assert!(
            error_message(&body).contains("request_body_bytes_max"),
            "{body}"
        );
        // At the limit is fine.
        let response = client
            .post(server.url(path))
            .body(vec![b'y'; 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.bytes().await.unwrap().len(), 1024);
    }
    server.cli_ok(&["rm", "small"]);
    server.cli_ok(&["rm", "smallhttp"]);

    // Nothing above changed the registry.
    assert_eq!(registry(&server).await, before);
    assert_eq!(server.cli_ok(&["--json", "info", "echo"]), info_before);
}
