//! Calls from one function to another (`updraft:platform/invoke`) end to
//! end: a chain of ten composes its result, a cycle is refused with the
//! chain named, a callee not listed in `calls` is refused, and the first
//! caller's deadline stops the whole chain. The `chain` guest takes calls
//! directly (`updraft:platform/handler`); callees without that export are
//! called through their http handler or as commands.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Deploys the `chain` guest as `name`, calling `next` (if any).
fn link(server: &Server, name: &str, next: Option<&str>, extra: &str) {
    let (calls, next_env) = match next {
        Some(next) => (
            format!("calls = [\"{next}\"]\n"),
            format!("NEXT = \"{next}\"\n"),
        ),
        None => (String::new(), String::new()),
    };
    server.deploy_guest(
        name,
        "chain",
        &format!("route = \"/{name}\"\n{calls}{extra}\n[env]\nNAME = \"{name}\"\n{next_env}"),
    );
}

async fn post(server: &Server, path: &str) -> (u16, String) {
    let response = client().post(server.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_of_ten_composes_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for i in 1..=10 {
        let next = format!("f{}", i + 1);
        link(
            &server,
            &format!("f{i}"),
            (i < 10).then_some(next.as_str()),
            "",
        );
    }
    let (status, body) = post(&server, "/f1").await;
    assert_eq!(status, 200, "{body}");
    let want: Vec<String> = (1..=10).map(|i| format!("f{i}")).collect();
    assert_eq!(body, want.join(","));
    // A call is an invocation: each callee has a usage record of its own.
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let records = server
            .api()
            .get(server.url("/v1/usage/records"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let calls: Vec<Value> = records
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["trigger"] == "call")
            .collect();
        if calls.len() == 9 {
            assert!(calls.iter().all(|r| r["error"].is_null()), "{calls:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{} call records", calls.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The deepest chain allowed runs, every callee nested in its caller's host
/// call (each on its own fiber), and one link more is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_deepest_chain_runs_and_one_more_link_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let depth = 16; // CALL_DEPTH_MAX
    for i in 1..=depth + 1 {
        let next = format!("d{}", i + 1);
        link(
            &server,
            &format!("d{i}"),
            (i <= depth).then_some(next.as_str()),
            "",
        );
    }
    // d2 … d17: sixteen functions.
    let (status, body) = post(&server, "/d2").await;
    assert_eq!(status, 200, "{body}");
    let want: Vec<String> = (2..=depth + 1).map(|i| format!("d{i}")).collect();
    assert_eq!(body, want.join(","));
    // d1 … d17: seventeen; d16's call is refused, and d16's answer comes back up.
    let (status, body) = post(&server, "/d1").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body, "d16: call to d17 failed: CallError::TooDeep(16)");
}

/// A direct callee's body limits hold: a payload over its
/// `request_body_bytes_max` never reaches it, and an answer over its
/// `response_body_bytes_max` fails the call; both name the limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_direct_callee_keeps_its_body_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest(
        "echoer",
        "chain",
        "request_body_bytes_max = 1000\nresponse_body_bytes_max = 100\n\
         [env]\nNAME = \"echoer\"\nECHO = \"1\"\n",
    );
    link(&server, "to-echo", Some("echoer"), "");
    let send = |body: String| {
        let server = &server;
        async move {
            let response = client()
                .post(server.url("/to-echo"))
                .body(body)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // Within both limits: echoed back.
    let (status, body) = send("x".repeat(50)).await;
    assert_eq!((status, body), (200, format!("to-echo,{}", "x".repeat(50))));
    let (status, body) = send("x".repeat(1001)).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("call to echoer failed") && body.contains("request_body_bytes_max"),
        "{body}"
    );
    let (status, body) = send("x".repeat(500)).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("call to echoer failed") && body.contains("response_body_bytes_max"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn callees_without_a_handler_export_get_http_or_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("hello", "hello-rust", "");
    server.deploy_guest("echo", "echo", "kind = \"command\"\n");
    link(&server, "to-http", Some("hello"), "");
    link(&server, "to-command", Some("echo"), "");
    let (status, body) = post(&server, "/to-http").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("to-http,Hello from Updraft"), "{body}");
    let response = client()
        .post(server.url("/to-command"))
        .body("ping")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "to-command,ping");
    // A direct callee that reuses its instance answers the same every time.
    link(&server, "warm", None, "instance_reuse_max = 100");
    link(&server, "to-warm", Some("warm"), "");
    for _ in 0..5 {
        let (status, body) = post(&server, "/to-warm").await;
        assert_eq!((status, body.as_str()), (200, "to-warm,warm"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cycles_unlisted_callees_and_deadlines_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());

    // a -> b -> a: b's call is refused, naming the chain.
    link(&server, "a", Some("b"), "");
    link(&server, "b", Some("a"), "");
    let (status, body) = post(&server, "/a").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("b: call to a failed") && body.contains("Cycle(\"a -> b -> a\")"),
        "{body}"
    );

    // A function calls only what its manifest lists, and what exists.
    server.deploy_guest(
        "rogue",
        "chain",
        "route = \"/rogue\"\n[env]\nNAME = \"rogue\"\nNEXT = \"a\"\n",
    );
    let (status, body) = post(&server, "/rogue").await;
    assert_eq!(status, 500);
    assert!(body.contains("NotAllowed(\"a\")"), "{body}");
    server
        .wait_for_logs("rogue", &["it is not in this function's calls"])
        .await;
    link(&server, "lonely", Some("ghost"), "");
    let (_, body) = post(&server, "/lonely").await;
    assert!(body.contains("NotAllowed(\"ghost\")"), "{body}");

    // The first caller's deadline bounds the chain: the callee's own
    // timeout is a minute, but it stops with its caller's 3 s. (Shorter,
    // a debug build on a loaded machine may pass the deadline before the
    // call begins, and then the callee never runs and logs nothing.)
    server.deploy_guest(
        "spin",
        "chain",
        "timeout_ms = 60000\n[env]\nNAME = \"spin\"\nSPIN = \"1\"\n",
    );
    link(&server, "impatient", Some("spin"), "timeout_ms = 3000");
    let started = Instant::now();
    let (status, body) = post(&server, "/impatient").await;
    let elapsed = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        elapsed < Duration::from_secs(30),
        "the chain ran {elapsed:?}"
    );
    server
        .wait_for_logs(
            "spin",
            &[
                "the calling function's deadline passed",
                "first function in the chain",
            ],
        )
        .await;
}

/// Thousands of calls in one invocation span many epoch ticks, so callee and
/// caller both yield to the runtime mid-call: every call must still land.
#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_calls_in_one_invocation_all_return() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    link(&server, "leaf", None, "");
    link(&server, "caller", Some("leaf"), "timeout_ms = 120000");
    let response = client()
        .get(server.url("/caller?bench=3000"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let timing: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(timing["calls"], 3000);
    assert!(timing["p50_ns"].as_u64().unwrap() > 0);
}
