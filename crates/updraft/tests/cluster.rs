//! Cluster mode, as far as it is built: key-value stores in NATS
//! JetStream (`[kv] type = "nats"`), shared by every server on one NATS,
//! with a real `nats-server` started by each test. Start-up refuses a NATS
//! it cannot use, naming it; an outage while running answers 503 and loses
//! nothing acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use updraft_state::testing::NatsServer;

fn nats_config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!("[kv]\ntype = \"nats\"\nurls = [{url:?}]\n"),
    )
    .unwrap();
    config
}

/// Two servers with `[kv] type = "nats"` are two nodes of one store: a
/// counter incremented through both counts every increment once.
#[tokio::test(flavor = "multi_thread")]
async fn two_servers_share_key_value_stores_in_nats() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let config = nats_config(dir.path(), &nats.url);
    let config = config.to_str().unwrap();
    let nodes: Vec<Server> = ["a", "b"]
        .iter()
        .map(|node| Server::start_with(&dir.path().join(node), &["--config", config]))
        .collect();
    for node in &nodes {
        node.deploy_guest(
            "counter",
            "counter-rust",
            "route = \"/counter\"\nkey_value_stores = [\"default\"]",
        );
    }
    let increments: Vec<_> = (0..100)
        .map(|i| {
            let url = nodes[i % 2].url("/counter?key=shared");
            tokio::spawn(async move {
                let r = client().get(url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.text().await.unwrap().trim().parse::<i64>().unwrap()
            })
        })
        .collect();
    let mut seen = Vec::new();
    for increment in increments {
        seen.push(increment.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=100).collect::<Vec<i64>>());
    // Either node reads what both wrote, through the API too.
    for node in &nodes {
        let value = node
            .api()
            .get(node.url("/v1/kv/default/shared"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(value, "100");
    }
    // Nothing of the store is on either node's disk.
    for node in ["a", "b"] {
        let local = std::fs::metadata(dir.path().join(node).join("kv.redb"));
        assert!(local.is_err(), "node {node} has a kv.redb");
    }
}

#[test]
fn an_unreachable_nats_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let out = up_with(dir.path(), &nats_config(dir.path(), &url));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&url) && stderr.contains("nats-server"),
        "{stderr}"
    );
}

async fn put_kv(server: &Server, key: &str, value: &'static str) -> (u16, String) {
    let r = server
        .api()
        .put(server.url(&format!("/v1/kv/default/{key}")))
        .body(value)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn get_kv(server: &Server, key: &str) -> (u16, String) {
    let r = server
        .api()
        .get(server.url(&format!("/v1/kv/default/{key}")))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// NATS killed while the server runs: functions that do not touch state
/// keep serving, key-value writes answer 503 `unavailable` saying why, and
/// once NATS is back (same store) the server reconnects by itself and
/// every write acknowledged before the outage is there.
#[tokio::test(flavor = "multi_thread")]
async fn a_nats_outage_answers_503_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start();
    let config = nats_config(dir.path(), &nats.url);
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    server.deploy_guest(
        "counter",
        "counter-rust",
        "route = \"/counter\"\nkey_value_stores = [\"default\"]",
    );
    server.deploy_guest("hello", "hello-rust", "route = \"/hello\"");
    assert_eq!(put_kv(&server, "kept", "before").await.0, 204);

    nats.kill();
    let hello = client().get(server.url("/hello")).send().await.unwrap();
    assert_eq!(hello.status(), 200, "plain HTTP needs no NATS");
    let (status, body) = put_kv(&server, "lost", "during").await;
    assert_eq!(status, 503, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "unavailable", "{body}");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("NATS"),
        "{body}"
    );

    nats.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = put_kv(&server, "after", "again").await;
        if status == 204 {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnect: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get_kv(&server, "kept").await, (200, "before".to_string()));
    assert_eq!(get_kv(&server, "after").await, (200, "again".to_string()));
}
