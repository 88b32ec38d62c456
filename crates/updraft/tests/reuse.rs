//! Instance reuse (`instance_reuse_max`): fresh instances by default, bounded
//! reuse when a function opts in, failed instances never reused, logs kept
//! per request, and commands refused; spare instances made ahead are fresh
//! and serve one request each; a pre-initialised function starts every
//! fresh instance from its snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `GET path` → (status, body, invocation id).
async fn get(server: &Server, path: &str) -> (u16, String, String) {
    let response = client().get(server.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    let id = response.headers()["updraft-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    (status, response.text().await.unwrap(), id)
}

async fn counts(server: &Server, path: &str, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let (status, body, _) = get(server, path).await;
        assert_eq!(status, 200, "{body}");
        seen.push(body);
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn fresh_by_default_reused_when_asked_and_never_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("fresh", "http-chaos", "route = \"/fresh/...\"");
    server.deploy_guest(
        "warm",
        "http-chaos",
        "route = \"/warm/...\"\ninstance_reuse_max = 3",
    );

    // Default: nothing survives a request.
    assert_eq!(counts(&server, "/fresh/count", 4).await, ["1"; 4]);
    // Opted in: one instance serves three requests, then a new one starts.
    assert_eq!(
        counts(&server, "/warm/count", 7).await,
        ["1", "2", "3", "1", "2", "3", "1"]
    );
    let info: Value = serde_json::from_str(&server.cli_ok(&["--json", "info", "warm"])).unwrap();
    assert_eq!(info["limits"]["instance_reuse_max"], 3);
    assert!(
        server
            .cli_ok(&["info", "warm"])
            .contains("reused for up to 3 requests")
    );

    // A trap discards the instance: the next request starts fresh. (Not
    // that the one after reuses it: an instance is checked back in just
    // after its response is sent, and on a loaded machine the client's
    // next request can come first, as it once did in CI's full run.)
    let (status, _, _) = get(&server, "/warm/trap").await;
    assert_eq!(status, 500);
    assert_eq!(counts(&server, "/warm/count", 1).await, ["1"]);

    // Unloading drops the warm instances with the code.
    let unloaded: Value = server.post_json("/v1/functions/warm/unload").await;
    assert_eq!(unloaded["was_loaded"], true);
    assert_eq!(counts(&server, "/warm/count", 1).await, ["1"]);

    // Each request's logs hold its own output only.
    let (_, body, id) = get(&server, "/warm/count").await;
    assert_eq!(body, "2");
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let logs = server.cli_ok(&["--json", "logs", "warm"]);
        let mine: Vec<String> = logs
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["invocation_id"] == id.as_str())
            .map(|l| l["message"].as_str().unwrap().to_string())
            .collect();
        if !mine.is_empty() {
            assert_eq!(mine, ["request 2 of this instance"]);
            break;
        }
        assert!(Instant::now() < deadline, "no logs for {id}: {logs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Concurrent requests each get an instance of their own.
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let url = server.url("/warm/count");
            tokio::spawn(async move { client().get(url).send().await.unwrap().status() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
}

/// A counter of `/metrics`, 0 when absent.
async fn counter(server: &Server, name: &str) -> u64 {
    let text = server.get_text("/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// Spare instances, made ahead between requests, are as fresh as the ones
/// made for a request: every request counts 1, however many spares serve
/// them, and each spare serves one request. Off, none are made.
#[tokio::test(flavor = "multi_thread")]
async fn spare_instances_are_fresh_and_serve_one_request_each() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("on"));
    server.deploy_guest("fresh", "http-chaos", "route = \"/fresh/...\"");
    // Spares are made with idle CPU: one at a time until enough served.
    let deadline = Instant::now() + WAIT_MAX;
    let mut requests = 0;
    loop {
        let (status, body, _) = get(&server, "/fresh/count").await;
        requests += 1;
        assert_eq!((status, body.as_str()), (200, "1"), "request {requests}");
        let used = counter(&server, "updraft_spare_instances_used_total").await;
        if used >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{requests} requests, {used} served by a spare instance"
        );
    }
    let made = counter(&server, "updraft_spare_instances_made_total").await;
    let used = counter(&server, "updraft_spare_instances_used_total").await;
    assert!(used <= made && used <= requests, "{used} used, {made} made");

    let config = dir.path().join("no-spares.toml");
    std::fs::write(&config, "[cpu]\nspare_instances = false\n").unwrap();
    let off = Server::start_with(
        &dir.path().join("off"),
        &["--config", config.to_str().unwrap()],
    );
    off.deploy_guest("fresh", "http-chaos", "route = \"/fresh/...\"");
    assert_eq!(counts(&off, "/fresh/count", 20).await, ["1"; 20]);
    assert_eq!(counter(&off, "updraft_spare_instances_made_total").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn reuse_is_refused_for_commands_and_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let before = server.cli_ok(&["--json", "ls"]);
    let manifest = |name: &str, guest_name: &str, extra: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\nsource = \"{}\"\n{extra}\n",
                guest(guest_name).display()
            ),
        )
        .unwrap();
        path
    };
    for (name, guest_name, extra, expected) in [
        (
            "cmd",
            "echo",
            "instance_reuse_max = 2",
            "http functions only",
        ),
        (
            "cmd-stated",
            "echo",
            "kind = \"command\"\ninstance_reuse_max = 2",
            "instance_reuse_max",
        ),
        (
            "zero",
            "http-chaos",
            "instance_reuse_max = 0",
            "must be between 1 and 1000000",
        ),
    ] {
        let path = manifest(name, guest_name, extra);
        let out = server.cli(&["deploy", path.to_str().unwrap()]);
        assert!(!out.status.success(), "{name} was deployed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    assert_eq!(server.cli_ok(&["--json", "ls"]), before);
}

/// `GET path` → (status, `x-initialised`, body).
async fn get_initialised(server: &Server, path: &str) -> (u16, String, String) {
    let response = client().get(server.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    let built = response
        .headers()
        .get("x-initialised")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, built, response.text().await.unwrap())
}

/// Python's pre-initialisation is componentize-py's build-time snapshot:
/// `py-imports` has its libraries (json, email, decimal, …) loaded in it,
/// `py-imports-lazy` is the same function loading them on each fresh
/// instance's request. Both answer the same, and an instance of the
/// snapshot starts with nothing an earlier request left: its count of
/// requests served is 1 every time.
#[tokio::test(flavor = "multi_thread")]
async fn python_libraries_loaded_in_the_snapshot_answer_as_loaded_per_instance() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("eager", "py-imports", "route = \"/eager\"");
    server.deploy_guest("lazy", "py-imports-lazy", "route = \"/lazy\"");
    let want = r#"{"close": ["total"], "mean": 2.75, "query": {"a": ["1"]}, "served": 1, "subject": "totals", "total": "11.00"}"#;
    for _ in 0..3 {
        for path in ["/eager?a=1", "/lazy?a=1"] {
            let response = client().get(server.url(path)).send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            assert_eq!((status, body.trim_end()), (200, want), "{path}");
        }
    }
}

/// Deploy-time pre-initialisation (`preinitialize = true`): the function
/// answers exactly what it answers without it, but from state built once
/// at deploy (with the version's `[env]`), not per request; nothing leaks
/// between fresh instances, reuse counts from 1, and a restart keeps the
/// snapshot. A component without `wizer-initialize`, and one whose
/// initialisation traps or never ends, is refused at deploy saying why,
/// and nothing is deployed.
#[tokio::test(flavor = "multi_thread")]
async fn pre_initialisation_answers_the_same_from_a_snapshot_and_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let env = "[env]\nGREETING = \"bonjour\"";
    server.deploy_guest("plain", "preinit", &format!("route = \"/plain\"\n{env}"));
    server.deploy_guest(
        "snap",
        "preinit",
        &format!("route = \"/snap\"\npreinitialize = true\n{env}"),
    );
    server.deploy_guest(
        "snap-reused",
        "preinit",
        &format!("route = \"/reused\"\npreinitialize = true\ninstance_reuse_max = 3\n{env}"),
    );
    let answer = |request: u32| {
        format!("bonjour primes=148933 sum=142913828922 last=1999993 request={request}\n")
    };
    for _ in 0..4 {
        let plain = get_initialised(&server, "/plain").await;
        let snap = get_initialised(&server, "/snap").await;
        assert_eq!(plain, (200, "request".to_string(), answer(1)));
        assert_eq!(snap, (200, "deploy".to_string(), answer(1)));
    }
    for request in [1, 2, 3, 1] {
        let reused = get_initialised(&server, "/reused").await;
        assert_eq!(reused, (200, "deploy".to_string(), answer(request)));
    }

    // The snapshot is the version's Wasm: a restart does not run the
    // initialisation again, and still starts from it.
    let before = server.cli_ok(&["--json", "ls"]);
    drop(server);
    let server = Server::start(dir.path());
    assert_eq!(server.cli_ok(&["--json", "ls"]), before);
    let snap = get_initialised(&server, "/snap").await;
    assert_eq!(snap, (200, "deploy".to_string(), answer(1)));

    for (name, guest_name, extra, expected) in [
        (
            "no-init",
            "hello-rust",
            "preinitialize = true",
            "does not export `wizer-initialize: func()`",
        ),
        (
            "trapping",
            "preinit",
            "preinitialize = true\n[env]\nTRAP_INIT = \"1\"",
            "preinit: failing on purpose",
        ),
        (
            "endless",
            "preinit",
            "preinitialize = true\ntimeout_ms = 500\n[env]\nSPIN_INIT = \"1\"",
            "did not finish within timeout_ms (500 ms)",
        ),
        (
            "command",
            "echo",
            "preinitialize = true",
            "WASI 0.2 components",
        ),
    ] {
        let manifest = server.write_manifest(name, guest_name, extra);
        let out = server.cli(&["deploy", manifest.to_str().unwrap()]);
        assert!(!out.status.success(), "{name} was deployed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("pre-initialisation failed"),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    assert_eq!(server.cli_ok(&["--json", "ls"]), before);
}
