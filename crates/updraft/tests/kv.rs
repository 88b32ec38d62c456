//! Key-value state end to end: a guest's atomic increments under 1,000
//! concurrent requests, durability across SIGKILL, store capabilities, and
//! the operator API and CLI with bad input. Each runs with the stores
//! embedded and in NATS JetStream (`[kv] type = "nats"`, a real
//! `nats-server`): one documented behaviour, two backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use serde_json::Value;
use updraft_state::testing::NatsServer;

/// Where a test's stores live.
enum Stores {
    /// `kv.redb`, at this durability.
    Embedded(&'static str),
    Nats(NatsServer),
}

impl Stores {
    fn both() -> [Stores; 2] {
        [Stores::Embedded("disk"), Stores::Nats(NatsServer::start())]
    }

    /// A server on `dir/data` with these stores, and its config's path.
    fn start(&self, dir: &std::path::Path) -> (Server, String) {
        let text = match self {
            Stores::Embedded(durability) => {
                format!("[kv]\ntype = \"embedded\"\ndurability = \"{durability}\"\n")
            }
            Stores::Nats(nats) => format!("[kv]\ntype = \"nats\"\nurls = [{:?}]\n", nats.url),
        };
        let config = dir.join("server.toml");
        std::fs::write(&config, text).unwrap();
        let config = config.to_str().unwrap().to_string();
        let server = Server::start_with(&dir.join("data"), &["--config", &config]);
        (server, config)
    }
}

/// Deploys the counter example as `name`, routed at `/name`, with `stores`.
fn deploy_counter(server: &Server, name: &str, stores: &[&str]) {
    let stores: Vec<String> = stores.iter().map(|s| format!("{s:?}")).collect();
    server.deploy_guest(
        name,
        "counter-rust",
        &format!(
            "route = \"/{name}\"\nkey_value_stores = [{}]",
            stores.join(", ")
        ),
    );
}

async fn get_text(url: String) -> (u16, String) {
    let response = client().get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_increments_leave_a_thousand() {
    for stores in Stores::both() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = stores.start(dir.path());
        thousand_increments(&server).await;
    }
}

async fn thousand_increments(server: &Server) {
    deploy_counter(server, "counter", &["default"]);
    let tasks: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(get_text(server.url("/counter"))))
        .collect();
    let mut seen = BTreeSet::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        seen.insert(body.trim().parse::<i64>().unwrap());
    }
    // Every increment saw a distinct count: none was lost or doubled.
    assert_eq!(seen, (1..=1000).collect::<BTreeSet<i64>>());
    assert_eq!(server.cli_ok(&["kv", "get", "default", "hits"]), "1000");
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_sigkill() {
    writes_survive_sigkill(Stores::Embedded("disk")).await;
}

/// The `process` level answers before the disk sync; the journal must
/// carry every acknowledged write across the kill.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_sigkill_with_process_durability() {
    writes_survive_sigkill(Stores::Embedded("process")).await;
}

/// In NATS, a killed node loses nothing JetStream acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_sigkill_in_nats() {
    writes_survive_sigkill(Stores::Nats(NatsServer::start())).await;
}

async fn writes_survive_sigkill(stores: Stores) {
    let dir = tempfile::tempdir().unwrap();
    let (server, config) = stores.start(dir.path());
    let data = dir.path().join("data");
    deploy_counter(&server, "counter", &["default"]);
    // Writers keep going until the server dies under them.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let base = server.url("/counter");
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{w}-{i}");
                    match client().get(format!("{base}?key={key}")).send().await {
                        // Acknowledged only once the whole answer came: the
                        // kill may cut a response after its status line.
                        Ok(r) if r.status() == 200 => match r.text().await {
                            Ok(text) => {
                                assert_eq!(text, "1\n");
                                acked.push(key);
                            }
                            Err(_) => break,
                        },
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    server.kill();
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    assert!(
        acked.len() > 10,
        "too few writes before the kill: {}",
        acked.len()
    );

    let server = Server::start_with(&data, &["--config", &config]);
    let listed = server.cli_ok(&["kv", "ls", "default"]);
    let listed: BTreeSet<&str> = listed.lines().collect();
    for key in &acked {
        assert!(listed.contains(key.as_str()), "acknowledged key {key} lost");
        assert_eq!(server.cli_ok(&["kv", "get", "default", key]), "1");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_open_only_the_stores_they_list() {
    for stores in Stores::both() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = stores.start(dir.path());
        only_listed_stores(&server).await;
    }
}

async fn only_listed_stores(server: &Server) {
    deploy_counter(server, "public", &["default"]);
    deploy_counter(server, "private", &["secret"]);
    deploy_counter(server, "none", &[]);

    let (status, body) = get_text(server.url("/private?store=secret&key=k")).await;
    assert_eq!((status, body.as_str()), (200, "1\n"));
    for path in ["/public?store=secret&key=k", "/none?store=default"] {
        let (status, body) = get_text(server.url(path)).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    // The refusal says why, in the function's logs.
    server
        .wait_for_logs("public", &["\"secret\" refused", "key_value_stores"])
        .await;
    let info = server.cli_ok(&["info", "private"]);
    assert!(info.contains("state:     kv secret"), "{info}");
    // The refused calls wrote nothing.
    assert_eq!(server.cli_ok(&["kv", "get", "secret", "k"]), "1");
    assert_eq!(server.cli_ok(&["kv", "stores"]), "default\nsecret\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_api_checks_every_input_and_loses_nothing() {
    for stores in Stores::both() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = stores.start(dir.path());
        operator_api(&server).await;
    }
}

async fn operator_api(server: &Server) {
    deploy_counter(server, "counter", &["default"]);
    server.cli_ok(&["kv", "set", "default", "a/1", "one"]);
    server.cli_ok(&["kv", "set", "default", "a/2", "two"]);
    server.cli_ok(&["kv", "set", "default", "b", "bee"]);
    let before = server.cli_ok(&["--json", "kv", "ls", "default"]);

    let http = server.api();
    let put = |path: &str, body: Vec<u8>| http.put(server.url(path)).body(body).send();
    let r = put("/v1/kv/default/big", vec![0; 1024 * 1024 + 1])
        .await
        .unwrap();
    expect_error(r, 413, "value_too_large").await;
    let long_key = format!("/v1/kv/default/{}", "k".repeat(513));
    let r = put(&long_key, b"x".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(error_message(&r.text().await.unwrap()).contains("at most 512"));
    let r = put("/v1/kv/nope/k", b"x".to_vec()).await.unwrap();
    assert_eq!(r.status(), 404);
    let body = r.text().await.unwrap();
    assert_eq!(error_code(&body), "store_not_found");
    assert!(error_message(&body).contains("in use: default"), "{body}");
    let r = http
        .get(server.url("/v1/kv/default?prefix=a&cursor=zzz"))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "invalid_cursor").await;
    let r = http
        .get(server.url("/v1/kv/default/missing"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "key_not_found").await;
    // A counter that is not a number is the guest's problem to report.
    let (status, body) = get_text(server.url("/counter?key=b")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a decimal integer"), "{body}");

    // Exactly 1 MiB is fine; listing pages through prefixes.
    let r = put("/v1/kv/default/max", vec![7; 1024 * 1024])
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    server.cli_ok(&["kv", "rm", "default", "max"]);
    let page: Value = server.get_json("/v1/kv/default?prefix=a%2F&limit=1").await;
    assert_eq!(page["keys"], serde_json::json!(["a/1"]));
    assert_eq!(page["cursor"], "a/1");
    assert_eq!(
        server.cli_ok(&["kv", "ls", "default", "--prefix", "a/"]),
        "a/1\na/2\n"
    );

    assert_eq!(server.cli_ok(&["--json", "kv", "ls", "default"]), before);
    assert_eq!(server.cli_ok(&["kv", "get", "default", "a/2"]), "two");
}
