//! Portability: components answer the same under `wasmtime serve`
//! (wasmtime-cli 48, installed by scripts/setup.sh) as under Updraft:
//! hello, both wasi:keyvalue drafts, wasi:config.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

/// Starts `wasmtime serve` with `options` (`-S …`) on `guest_name`, and
/// waits until it answers.
async fn serve(guest_name: &str, options: &[&str]) -> Peer {
    Peer::serve(&guest(guest_name), options).await
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_answers_identically_under_wasmtime_serve() {
    let peer = serve("hello-rust", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("hello", "hello-rust", "route = \"/hello\"");

    let client = client();
    let peer_url = &peer.url;
    for query in ["", "?name=Ada"] {
        let ours = client
            .get(server.url(&format!("/hello{query}")))
            .send()
            .await
            .unwrap();
        let theirs = client
            .get(format!("{peer_url}/hello{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(ours.status(), theirs.status());
        assert_eq!(
            ours.headers().get("content-type"),
            theirs.headers().get("content-type")
        );
        let (ours, theirs) = (ours.text().await.unwrap(), theirs.text().await.unwrap());
        assert_eq!(ours, theirs);
        assert!(ours.starts_with("Hello"), "{ours}");
    }
}

/// `tests/guests/kv-draft` imports `wasi:keyvalue@0.2.0-draft` (store and
/// atomics), the version `wasmtime serve -S keyvalue` implements: it runs
/// unchanged there and on Updraft. On Updraft it shares the store with
/// `counter-rust`, built against `@0.2.0-draft2` (Spin's): both count the
/// same key.
#[tokio::test(flavor = "multi_thread")]
async fn both_keyvalue_drafts_run_unchanged_and_share_a_store() {
    let peer = serve(
        "kv-draft",
        &["-S", "cli,keyvalue", "-S", "keyvalue-in-memory-data=n=41"],
    )
    .await;
    let client = client();
    let peer_url = &peer.url;
    // counter-rust ends its count with a newline; kv-draft does not.
    let text = |r: reqwest::Response| async move {
        (
            r.status().as_u16(),
            r.text().await.unwrap().trim_end().to_string(),
        )
    };
    // Under wasmtime serve: its in-memory store, which each request gets
    // afresh from the preset data.
    for _ in 0..2 {
        let r = client
            .get(format!("{peer_url}/incr?key=n"))
            .send()
            .await
            .unwrap();
        assert_eq!(text(r).await, (200, "42".to_string()));
    }

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest(
        "draft",
        "kv-draft",
        "route = \"/draft/...\"\nkey_value_stores = [\"default\"]",
    );
    server.deploy_guest(
        "draft2",
        "counter-rust",
        "route = \"/counter\"\nkey_value_stores = [\"default\"]",
    );
    let get = |path: &str| client.get(server.url(path)).send();
    assert_eq!(
        text(get("/draft/incr?key=shared").await.unwrap()).await,
        (200, "1".into())
    );
    assert_eq!(
        text(get("/counter?key=shared").await.unwrap()).await,
        (200, "2".into())
    );
    assert_eq!(
        text(get("/draft/incr?key=shared").await.unwrap()).await,
        (200, "3".into())
    );
    assert_eq!(
        text(get("/draft/get?key=shared").await.unwrap()).await,
        (200, "3".into())
    );
    assert_eq!(server.cli_ok(&["kv", "get", "default", "shared"]), "3");

    // A value draft2 took below 0 cannot be counted in the draft's u64:
    // refused with the reason, the value unchanged.
    server.cli_ok(&["kv", "set", "default", "neg", "-5"]);
    let (status, body) = text(get("/draft/incr?key=neg").await.unwrap()).await;
    assert_eq!(status, 500);
    assert!(body.contains("below 0"), "{body}");
    assert_eq!(server.cli_ok(&["kv", "get", "default", "neg"]), "-5");
}

/// `wasi:config/store`: the manifest's `[variables]` reach the guest as
/// `wasmtime serve -S config-var` passes them, with the same answers; bad
/// variables are refused at deploy.
#[tokio::test(flavor = "multi_thread")]
async fn variables_read_through_wasi_config_as_under_wasmtime_serve() {
    let peer = serve(
        "config-reader",
        &[
            "-S",
            "cli,config",
            "-S",
            "config-var=api_url=https://api.example.com",
            "-S",
            "config-var=mode=fast lane",
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest(
        "config",
        "config-reader",
        "route = \"/config/...\"\n[variables]\napi_url = \"https://api.example.com\"\nmode = \"fast lane\"",
    );
    let client = client();
    let peer_url = &peer.url;
    for path in [
        "/all",
        "/get?key=api_url",
        "/get?key=mode",
        "/get?key=missing",
    ] {
        let ours = client
            .get(server.url(&format!("/config{path}")))
            .send()
            .await
            .unwrap();
        let theirs = client
            .get(format!("{peer_url}{path}"))
            .send()
            .await
            .unwrap();
        let ours = (ours.status().as_u16(), ours.text().await.unwrap());
        let theirs = (theirs.status().as_u16(), theirs.text().await.unwrap());
        assert_eq!(ours, theirs, "{path}");
    }
    let all = client
        .get(server.url("/config/all"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(all, "api_url=https://api.example.com\nmode=fast lane");

    for (vars, says) in [
        ("Bad-Name = \"x\"", "lowercase letters"),
        ("home = \"{{ env.HOME }}\"", "secret.NAME"),
        ("token = \"{{ secret.token\"", "without its"),
    ] {
        let manifest =
            server.write_manifest("bad", "config-reader", &format!("[variables]\n{vars}"));
        let out = server.cli(&["deploy", manifest.to_str().unwrap()]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{vars}: {stderr}");
    }
}
