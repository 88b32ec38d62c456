//! Acceptance 4: hostile guests are stopped by their limits, each with a clear
//! error, while other functions keep answering.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_times_out_while_others_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("spin", "loop", "route = \"/spin\"\ntimeout_ms = 1500");
    server.deploy_guest(
        "chaos",
        "http-chaos",
        "route = \"/chaos/...\"\ntimeout_ms = 1500",
    );
    server.deploy_guest("echo", "echo", "route = \"/echo\"");
    let client = client();

    let timed = |request: reqwest::RequestBuilder| async move {
        let started = Instant::now();
        let response = request.send().await.unwrap();
        (started.elapsed(), response)
    };
    let spin = tokio::spawn(timed(client.post(server.url("/spin"))));
    let chaos = tokio::spawn(timed(client.get(server.url("/chaos/loop"))));
    // While both loop, another function answers promptly and correctly.
    for i in 0..20 {
        let body = format!("ping {i}");
        let response = client
            .post(server.url("/echo"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), body);
    }
    for task in [spin, chaos] {
        let (elapsed, response) = task.await.unwrap();
        assert_eq!(response.status(), 504);
        let body = response.text().await.unwrap();
        assert_eq!(error_code(&body), "timeout");
        assert!(error_message(&body).contains("timeout_ms"), "{body}");
        // The bound: the 504 arrives within the timeout plus one second.
        assert!(
            elapsed < Duration::from_millis(1500 + 1000),
            "504 took {elapsed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_responses_and_outbound_http_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("bigout", "bigout", "route = \"/bigout\"");
    server.deploy_guest(
        "chaos",
        "http-chaos",
        "route = \"/chaos/...\"\nresponse_body_bytes_max = 1000",
    );
    let client = client();

    // 64 MiB of stdout against the 10 MiB default.
    let response = client.post(server.url("/bigout")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let body = response.text().await.unwrap();
    assert_eq!(error_code(&body), "response_too_large", "{body}");
    assert!(
        error_message(&body).contains("response_body_bytes_max"),
        "{body}"
    );

    // An http function streaming more than its limit is cut off: the client
    // never receives a complete oversized body.
    let result = match client
        .post(server.url("/chaos/echo"))
        .body(vec![b'z'; 100_000])
        .send()
        .await
    {
        Ok(response) => response.bytes().await,
        Err(e) => Err(e),
    };
    assert!(
        result.is_err(),
        "a cut body must fail to read, got {:?}",
        result.map(|b| b.len())
    );

    // Outgoing HTTP is not a capability a function has: the guest gets an
    // error it can handle.
    let response = client.get(server.url("/chaos/fetch")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        "refused: ErrorCode::HttpRequestDenied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bomb_fails_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("bomb", "membomb", "route = \"/bomb\"\nmemory_mb = 32");
    server.deploy_guest(
        "chaos",
        "http-chaos",
        "route = \"/chaos/...\"\nmemory_mb = 32",
    );
    let client = client();
    for path in ["/bomb", "/chaos/bomb"] {
        let response = client.post(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 500, "{path}");
        let body = response.text().await.unwrap();
        assert_eq!(error_code(&body), "memory_limit", "{path}: {body}");
        assert!(error_message(&body).contains("32 MiB"), "{body}");
    }
    // The function still works after its instance was torn down.
    let response = client.get(server.url("/chaos/hello")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn trap_answers_500_and_is_in_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("trap", "trap", "route = \"/trap\"");
    server.deploy_guest("chaos", "http-chaos", "route = \"/chaos/...\"");
    server.deploy_guest("exit3", "exit3", "");
    let client = client();

    let response = client.post(server.url("/trap")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let body = response.text().await.unwrap();
    assert_eq!(error_code(&body), "trap", "{body}");
    assert!(error_message(&body).contains("updraft logs trap"), "{body}");

    let response = client.get(server.url("/chaos/trap")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(error_code(&response.text().await.unwrap()), "trap");

    // The guest's stderr and the trap's message.
    server
        .wait_for_logs("trap", &["about to trap", "unreachable"])
        .await;
    server
        .wait_for_logs("chaos", &["chaos: trap requested"])
        .await;

    let out = server.cli(&["invoke", "exit3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exited with code"));
    server.wait_for_logs("exit3", &["failing on purpose"]).await;
}
