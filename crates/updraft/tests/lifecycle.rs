//! Versions, aliases, rollback, delete, logs (with follow), graceful shutdown,
//! and 200 concurrent requests to one function.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

async fn greet(server: &Server) -> String {
    client()
        .post(server.url("/greet"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_rollback_delete_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest(
        "greet",
        "env",
        "route = \"/greet\"\n[env]\nGREETING = \"one\"",
    );
    assert_eq!(greet(&server).await, "one\n");
    server.deploy_guest(
        "greet",
        "env",
        "route = \"/greet\"\n[env]\nGREETING = \"two\"",
    );
    assert_eq!(greet(&server).await, "two\n");

    let info: Value = serde_json::from_str(&server.cli_ok(&["--json", "info", "greet"])).unwrap();
    assert_eq!(info["aliases"]["latest"], 2);
    assert_eq!(info["versions"].as_array().unwrap().len(), 2);
    assert_eq!(info["kind"], "command");
    assert_eq!(info["limits"]["memory_mb"], 128);
    assert_eq!(info["limits"]["timeout_ms"], 10000);

    // Rollback to the previous version, then forward to 2 by number.
    server.cli_ok(&["rollback", "greet"]);
    assert_eq!(greet(&server).await, "one\n");
    let out = server.cli(&["rollback", "greet", "7"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no version 7"));
    server.cli_ok(&["rollback", "greet", "2"]);
    assert_eq!(greet(&server).await, "two\n");

    // Redeploying identical content reuses its version.
    server.deploy_guest(
        "greet",
        "env",
        "route = \"/greet\"\n[env]\nGREETING = \"one\"",
    );
    let info: Value = serde_json::from_str(&server.cli_ok(&["--json", "info", "greet"])).unwrap();
    assert_eq!(info["aliases"]["latest"], 1);
    assert_eq!(info["versions"].as_array().unwrap().len(), 2);

    // Logs: follow sees a new invocation's stderr as it happens.
    server.deploy_guest("chatty", "http-chaos", "route = \"/chatty/...\"");
    let mut follower = std::process::Command::new(bin())
        .args(["--server", &server.url, "logs", "chatty", "-f"])
        .env("UPDRAFT_KEY", &server.admin_key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let response = client()
        .get(server.url("/chatty/stdout"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let invocation = response.headers()["updraft-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("chaos wrote to stderr"))
    {
        let line = rx
            .recv_timeout(WAIT_MAX)
            .unwrap_or_else(|_| panic!("follow did not show the line; saw {seen:?}"));
        seen.push(line);
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let logs = server.cli_ok(&["--json", "logs", "chatty"]);
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["stream"] == "stdout"
        && l["message"] == "chaos wrote to stdout"
        && l["invocation_id"] == invocation.as_str()));

    // Delete: gone from the list, the route, and the logs.
    assert!(server.cli_ok(&["rm", "greet"]).contains("greet"));
    let response = client().post(server.url("/greet")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let out = server.cli(&["info", "greet"]);
    assert!(!out.status.success());

    // Logs survive a graceful restart.
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    let server = Server::start(dir.path());
    let logs = server.cli_ok(&["logs", "chatty"]);
    assert!(logs.contains("chaos wrote to stderr"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_requests_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("hello", "hello-rust", "route = \"/hello\"");
    server.deploy_guest("slow", "http-chaos", "route = \"/slow/...\"");
    let client = client();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (client, url) = if i % 2 == 0 {
            (client.clone(), server.url(&format!("/hello?name=n{i}")))
        } else {
            // Sleeping guests hold their instance, so all 100 are alive at once.
            (client.clone(), server.url("/slow/slow?ms=300"))
        };
        tasks.push(tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "request {i}: {body}");
        if i % 2 == 0 {
            assert_eq!(body, format!("Hello, n{i}!\n"));
        } else {
            assert_eq!(body, "slept");
        }
    }
}

/// SIGTERM the moment the server prints its address is a clean stop: the
/// handlers are in place before the line is printed (a supervisor that
/// stops a server it just started must not kill it mid-write).
#[test]
fn a_sigterm_right_after_start_is_a_clean_stop() {
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let status = Server::start(dir.path()).stop();
        assert_eq!(status.code(), Some(0), "{status}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("slow", "http-chaos", "route = \"/slow/...\"");
    let request = tokio::spawn(client().get(server.url("/slow/slow?ms=1500")).send());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = server.stop();
    assert!(status.success());
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "slept");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_functions_scale_to_zero_and_come_back_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--idle-unload-secs", "1"]);
    server.deploy_guest("hello", "hello-rust", "route = \"/hello\"");
    let info = |server: &Server| -> Value {
        serde_json::from_str(&server.cli_ok(&["--json", "info", "hello"])).unwrap()
    };
    assert_eq!(info(&server)["artifact"]["loaded"], true);

    // Idle for longer than the limit: the compiled code is dropped.
    let deadline = std::time::Instant::now() + WAIT_MAX;
    while info(&server)["artifact"]["loaded"] != false {
        assert!(
            std::time::Instant::now() < deadline,
            "never unloaded: {}",
            info(&server)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let response = client().get(server.url("/hello")).send().await.unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        "Hello from Updraft (Rust)!\n"
    );
    let after = info(&server);
    assert_eq!(after["artifact"]["loaded_from"], "cache", "{after}");

    // Unload on demand, as the benchmark harness does.
    let unloaded: Value = server.post_json("/v1/functions/hello/unload").await;
    assert_eq!(unloaded["was_loaded"], true);
    assert_eq!(info(&server)["artifact"]["loaded"], false);
    let response = client()
        .get(server.url("/hello?name=again"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "Hello, again!\n");
    let health: Value = server.get_json("/healthz").await;
    assert_eq!(
        health["compiles"], 1,
        "reloads come from the cache: {health}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_whose_client_leaves_runs_to_its_end_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("slow", "http-chaos", "route = \"/slow/...\"");
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let gone = impatient.get(server.url("/slow/slow?ms=800")).send().await;
    assert!(gone.is_err(), "the client should have given up: {gone:?}");
    // The guest still sleeps its 800 ms and succeeds; its usage is counted.
    let deadline = std::time::Instant::now() + WAIT_MAX;
    loop {
        let info: Value = server.get_json("/v1/functions/slow").await;
        if info["usage"]["invocations"] == 1 {
            assert_eq!(info["usage"]["failures"], 0, "{info}");
            assert!(
                info["usage"]["billed_ms"].as_u64().unwrap() >= 800,
                "{info}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recorded: {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A big component (every component, with `tier_up_min_bytes = 0`) answers
/// from Winch's code right after its deploy, then from Cranelift's,
/// compiled in the background: both answer the same, Winch's artifact
/// leaves the cache, and a restart maps Cranelift's without compiling.
#[tokio::test(flavor = "multi_thread")]
async fn tiered_compilation_serves_winch_code_then_cranelift_code() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "[compile]\ntier_up_min_bytes = 0\n").unwrap();
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().unwrap()];
    let server = Server::start_with(&data, &args);
    let manifest = server.write_manifest("hello", "hello-rust", "route = \"/hello\"");
    let deployed: Value =
        serde_json::from_str(&server.cli_ok(&["--json", "deploy", manifest.to_str().unwrap()]))
            .unwrap();
    assert_eq!(deployed["artifact"]["tier"], "baseline", "{deployed}");
    assert_eq!(deployed["compiled"], true, "{deployed}");
    let hello = || async {
        let response = client().get(server.url("/hello")).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let expected = (200, "Hello from Updraft (Rust)!\n".to_string());
    assert_eq!(hello().await, expected);

    let info =
        || serde_json::from_str::<Value>(&server.cli_ok(&["--json", "info", "hello"])).unwrap();
    wait_until(
        "Cranelift's code never replaced Winch's",
        WAIT_MAX,
        Duration::from_millis(50),
        || async {
            let info = info();
            match info["artifact"]["tier"] == "optimized" {
                true => Ok(()),
                false => Err(info.to_string()),
            }
        },
    )
    .await;
    server
        .wait_for_logs("hello", &["version 1: optimized code serves from now on"])
        .await;
    assert_eq!(hello().await, expected);
    let text = server.cli_ok(&["info", "hello"]);
    assert!(!text.contains("by Winch"), "{text}");
    let health: Value = server.get_json("/healthz").await;
    assert_eq!(health["compiles"], 2, "Winch, then Cranelift: {health}");
    let artifacts = || {
        std::fs::read_dir(data.join("compiled"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "cwasm")
            })
            .count()
    };
    assert_eq!(artifacts(), 1, "Winch's artifact is evicted");

    // A restart maps Cranelift's code from the cache.
    assert!(server.stop().success());
    let server = Server::start_with(&data, &args);
    let response = client().get(server.url("/hello")).send().await.unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        "Hello from Updraft (Rust)!\n"
    );
    let info: Value = serde_json::from_str(&server.cli_ok(&["--json", "info", "hello"])).unwrap();
    assert_eq!(info["artifact"]["tier"], "optimized", "{info}");
    assert_eq!(info["artifact"]["loaded_from"], "cache", "{info}");
    let health: Value = server.get_json("/healthz").await;
    assert_eq!(health["compiles"], 0, "{health}");
    // A delete removes the artifact.
    server.cli_ok(&["rm", "hello"]);
    assert_eq!(artifacts(), 0, "the artifact outlived its function");

    // `tiered = false`: Cranelift at the deploy, whatever the size.
    drop(server);
    std::fs::write(
        &config,
        "[compile]\ntiered = false\ntier_up_min_bytes = 0\n",
    )
    .unwrap();
    let server = Server::start_with(&dir.path().join("untiered"), &args);
    let manifest = server.write_manifest("hello", "hello-rust", "route = \"/hello\"");
    let deployed: Value =
        serde_json::from_str(&server.cli_ok(&["--json", "deploy", manifest.to_str().unwrap()]))
            .unwrap();
    assert_eq!(deployed["artifact"]["tier"], "optimized", "{deployed}");
}
