//! Acceptance 1 and 2: every example deploys through the CLI and answers over
//! HTTP; after a kill and restart they all answer again, loaded from the
//! compile cache (no compile happens).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;

/// (example folder, route, request body, expected response body)
const EXAMPLES: &[(&str, &str, &str, &str)] = &[
    ("hello-rust", "/hello", "", "Hello from Updraft (Rust)!\n"),
    (
        "wordcount-c",
        "/wordcount",
        "one two three\nfour\n",
        "2 4 19\n",
    ),
    (
        "hello-js",
        "/hello-js",
        "",
        "Hello from Updraft (JavaScript)!\n",
    ),
    (
        "hello-python",
        "/hello-py",
        "",
        "Hello from Updraft (Python)!\n",
    ),
];

/// The counter example keeps its count in the key-value store, so its answer
/// is checked apart: it must go on counting across the restart.
const COUNTER: &str = "counter-rust";
/// The files example keeps uploads as blobs: one stored before the restart
/// must be served after it.
const FILES: &str = "files-rust";

async fn count(server: &Server) -> String {
    let response = client().get(server.url("/counter")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

async fn check_all(server: &Server) {
    let client = client();
    for (example, route, body, expected) in EXAMPLES {
        let response = client
            .post(server.url(route))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            response.headers().contains_key("updraft-invocation-id"),
            "{example}: no invocation id"
        );
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "{example}: {text}");
        assert_eq!(&text, expected, "{example}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn examples_deploy_serve_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let all = EXAMPLES
        .iter()
        .map(|(example, ..)| *example)
        .chain([COUNTER, FILES]);
    for example in all {
        let out = server.cli_ok(&["deploy", &format!("examples/{example}/updraft.toml")]);
        assert!(out.contains("deployed"), "{out}");
    }
    let deployed = EXAMPLES.len() as u64 + 2;
    check_all(&server).await;
    assert_eq!(count(&server).await, "1\n");
    let stored = client()
        .put(server.url("/files/note.txt"))
        .body("kept across restarts")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201, "{}", stored.text().await.unwrap());

    // The CLI's view: every example, http and command kinds.
    let listed: Value = serde_json::from_str(&server.cli_ok(&["--json", "ls"])).unwrap();
    let functions = listed["functions"].as_array().unwrap();
    assert_eq!(functions.len() as u64, deployed);
    let invoked = server.cli_ok(&["invoke", "wordcount", "-d", "a b c"]);
    assert_eq!(invoked, "0 3 5\n");

    let health: Value = server.get_json("/healthz").await;
    assert_eq!(health["compiles"], deployed);

    server.kill();
    let server = Server::start(dir.path());
    check_all(&server).await;
    assert_eq!(count(&server).await, "2\n", "the count must survive a kill");
    let served = client()
        .get(server.url("/files/note.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.text().await.unwrap(), "kept across restarts");
    let health: Value = server.get_json("/healthz").await;
    assert_eq!(health["functions"], deployed);
    assert_eq!(
        health["compiles"], 0,
        "a restart must not recompile: {health}"
    );
    let info: Value =
        serde_json::from_str(&server.cli_ok(&["--json", "info", "hello-js"])).unwrap();
    assert_eq!(info["artifact"]["loaded_from"], "cache", "{info}");
}
