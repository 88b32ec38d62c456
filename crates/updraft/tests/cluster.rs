//! Cluster mode, as far as it is built: nodes started with `--cluster`
//! share one registry and key-value stores in NATS JetStream (also
//! `[kv] type = "nats"` alone), with a real `nats-server` started by each
//! test. Start-up refuses a NATS it cannot use, naming it; an outage while
//! running answers 503 and loses nothing acknowledged.
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
    assert_eq!(
        increments(&nodes, 100).await,
        (1..=100).collect::<Vec<i64>>()
    );
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

/// Starts `n` nodes on the NATS at `url`. The first makes the cluster's
/// admin key; the others find keys there and make none, so the key is
/// copied to their data dirs as an operator would.
fn start_nodes(dir: &std::path::Path, url: &str, n: usize) -> Vec<Server> {
    start_nodes_with(dir, url, n, &[])
}

/// [`start_nodes`] with more arguments for `updraft up`.
fn start_nodes_with(dir: &std::path::Path, url: &str, n: usize, extra: &[&str]) -> Vec<Server> {
    let args = [&["--cluster", url][..], extra].concat();
    let first = Server::start_with(&dir.join("n1"), &args);
    let mut nodes = vec![first];
    for i in 2..=n {
        let data_dir = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::copy(
            nodes[0].data_dir.join("admin.key"),
            data_dir.join("admin.key"),
        )
        .unwrap();
        nodes.push(Server::start_with(&data_dir, &args));
    }
    nodes
}

/// What `node` serves as `name`: its version and digest (`None`: 404).
async fn serving(node: &Server, name: &str) -> Option<(u64, String)> {
    let r = node
        .api()
        .get(node.url(&format!("/v1/functions/{name}")))
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return None;
    }
    let json: serde_json::Value = r.json().await.unwrap();
    Some((
        json["version"].as_u64().unwrap(),
        json["digest"].as_str().unwrap().to_string(),
    ))
}

/// Waits until every node serves `name` as `expected` and answers its route.
async fn wait_everywhere(nodes: &[Server], name: &str, expected: &Option<(u64, String)>) {
    for (i, node) in nodes.iter().enumerate() {
        let what = format!("node {i} never served {name} as {expected:?}");
        wait_until(&what, WAIT_MAX, Duration::from_millis(20), || async {
            match serving(node, name).await {
                seen if &seen == expected => Ok(()),
                seen => Err(format!("it serves {seen:?}")),
            }
        })
        .await;
    }
}

/// Three nodes on one NATS are one platform: a deploy through one is
/// served by all with the same version digest, a redeploy and a rollback
/// through others too, increments through all three add up, and a delete
/// is gone everywhere. No node keeps the registry on its disk.
#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_one_registry() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let nodes = start_nodes(dir.path(), &nats.url, 3);
    let toml = "route = \"/counter\"\nkey_value_stores = [\"default\"]";
    nodes[0].deploy_guest("counter", "counter-rust", toml);
    let first = serving(&nodes[0], "counter").await;
    assert_eq!(first.as_ref().map(|(v, _)| *v), Some(1));
    wait_everywhere(&nodes, "counter", &first).await;

    // A new version through node 2 (another env is another version).
    let toml2 = format!("{toml}\n[env]\nEDITION = \"2\"");
    nodes[1].deploy_guest("counter", "counter-rust", &toml2);
    let second = serving(&nodes[1], "counter").await;
    assert_eq!(second.as_ref().map(|(v, _)| *v), Some(2));
    assert_ne!(second, first);
    wait_everywhere(&nodes, "counter", &second).await;

    // A rollback through node 3.
    nodes[2].cli_ok(&["rollback", "counter"]);
    wait_everywhere(&nodes, "counter", &first).await;

    // 3 × 300 concurrent increments of one key, through every node.
    assert_eq!(
        increments(&nodes, 900).await,
        (1..=900).collect::<Vec<i64>>()
    );

    nodes[0].cli_ok(&["rm", "counter"]);
    wait_everywhere(&nodes, "counter", &None).await;
    for node in &nodes {
        let r = client().get(node.url("/counter")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        for shared in ["registry.redb", "kv.redb", "tenants.redb"] {
            assert!(!node.data_dir.join(shared).exists(), "{shared} on a node");
        }
    }
    // A key made through one node works on the others.
    let made = nodes[2]
        .api()
        .post(nodes[2].url("/v1/keys"))
        .json(&serde_json::json!({ "tenant": "acme", "label": "ci" }))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let key = made.json::<serde_json::Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(
        "the key never worked on node 1",
        WAIT_MAX,
        Duration::from_millis(20),
        || async {
            let r = client_with_key(&key)
                .get(nodes[0].url("/v1/functions"))
                .send()
                .await
                .unwrap();
            match r.status().as_u16() {
                200 => Ok(()),
                status => Err(format!("{status}")),
            }
        },
    )
    .await;
}

/// `n` concurrent increments of one key through `/counter` on every node
/// in turn: the counts they answered, sorted.
async fn increments(nodes: &[Server], n: usize) -> Vec<i64> {
    let increments: Vec<_> = (0..n)
        .map(|i| {
            let url = nodes[i % nodes.len()].url("/counter?key=shared");
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
    seen
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

/// Invokes `function` through `node` asynchronously with `query`; insists
/// on 202 and returns the invocation's id.
async fn accept_async(node: &Server, function: &str, query: &str) -> String {
    let url = node.url(&format!(
        "/v1/functions/{function}/invoke?mode=async&{query}"
    ));
    let r = node.api().post(url).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

/// Keys of the `default` store under `prefix`, through `node`.
fn keys_under(node: &Server, prefix: &str) -> Vec<String> {
    node.cli_ok(&["kv", "ls", "default", "--prefix", prefix])
        .lines()
        .map(str::to_string)
        .collect()
}

/// 1,000 async invocations accepted across three nodes, then two nodes
/// killed with SIGKILL: every accepted invocation still runs (at least
/// once), on the survivor, whose queue then drains. Their KV writes, all
/// acknowledged, are there.
#[tokio::test(flavor = "multi_thread")]
async fn accepted_async_work_survives_losing_two_of_three_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let mut nodes = start_nodes(dir.path(), &nats.url, 3);
    // A short timeout: a dead node's leases expire soon after it.
    let toml = "timeout_ms = 2000\nkey_value_stores = [\"default\"]";
    nodes[0].deploy_guest("counter", "counter-rust", toml);
    wait_everywhere(&nodes, "counter", &serving(&nodes[0], "counter").await).await;
    const TOTAL: usize = 1000;
    let sends: Vec<_> = (0..TOTAL)
        .map(|i| {
            let (api, url) = (nodes[i % 3].api(), nodes[i % 3].url(""));
            tokio::spawn(async move {
                let r = api
                    .post(format!(
                        "{url}/v1/functions/counter/invoke?mode=async&key=job-{i}"
                    ))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
            })
        })
        .collect();
    for send in sends {
        send.await.unwrap();
    }
    let survivor = nodes.pop().unwrap();
    for node in nodes {
        node.kill();
    }
    let done = wait_until(
        "not every accepted invocation ran",
        WAIT_MAX,
        Duration::from_millis(200),
        || async {
            let keys = keys_under(&survivor, "job-");
            match keys.len() {
                TOTAL => Ok(keys),
                n => Err(format!("{n} of {TOTAL} ran")),
            }
        },
    )
    .await;
    assert_eq!(done.len(), TOTAL);
    wait_until(
        "the queue never drained",
        WAIT_MAX,
        Duration::from_millis(100),
        || async {
            let queues = survivor.get_json("/v1/queues").await;
            let counter = &queues["functions"][0];
            match (counter["depth"].as_u64(), counter["in_flight"].as_u64()) {
                (Some(0), Some(0)) => Ok(()),
                _ => Err(queues.to_string()),
            }
        },
    )
    .await;
}

/// A cron schedule on three nodes fires once per tick across the cluster,
/// not once per node: ticks are de-duplicated by their id.
#[tokio::test(flavor = "multi_thread")]
async fn cron_fires_once_per_tick_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let nodes = start_nodes(dir.path(), &nats.url, 3);
    let started = Instant::now();
    nodes[0].deploy_guest(
        "ticker",
        "counter-rust",
        "key_value_stores = [\"default\"]\n[env]\nCOUNTER_PREFIX = \"tick/\"\n\
         [[trigger]]\ncron = \"* * * * * *\"",
    );
    let ticks = wait_until(
        "too few ticks",
        WAIT_MAX,
        Duration::from_millis(100),
        || async {
            let ticks = keys_under(&nodes[1], "tick/");
            match ticks.len() {
                n if n >= 5 => Ok(ticks),
                n => Err(format!("{n} ticks")),
            }
        },
    )
    .await;
    // Once per second across the cluster: three nodes firing each tick
    // would give three times as many.
    let seconds = started.elapsed().as_secs() as usize;
    assert!(
        ticks.len() <= seconds + 2,
        "{} ticks in {seconds} s",
        ticks.len()
    );
    // Each tick ran once: the counter of each tick id is 1.
    for tick in &ticks {
        let runs = nodes[2].cli_ok(&["kv", "get", "default", tick]);
        assert_eq!(runs, "1", "{tick}");
    }
}

/// A node stopped with SIGTERM takes no new work and finishes what it
/// leased before it exits: each run (1,000 increments of its own key,
/// long enough to be under way at the signal) counts exactly 1,000, none
/// cut off and run again after its lease expired; the other node runs the
/// rest.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_stopped_with_sigterm_finishes_what_it_leased() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let mut nodes = start_nodes(dir.path(), &nats.url, 2);
    nodes[0].deploy_guest("work", "kv-bench", "key_value_stores = [\"bench\"]");
    wait_everywhere(&nodes, "work", &serving(&nodes[0], "work").await).await;
    const JOBS: usize = 32;
    const INCREMENTS: u64 = 1000;
    for i in 0..JOBS {
        let query = format!("op=increment&n={INCREMENTS}&key=job-{i}");
        accept_async(&nodes[0], "work", &query).await;
    }
    let stopping = nodes.remove(0);
    let status = tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let other = &nodes[0];
    // A busy machine may answer a listing late: that is "not yet".
    let read = |args: &[&str]| {
        let out = other.cli(args);
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
            false => Err(String::from_utf8_lossy(&out.stderr).to_string()),
        }
    };
    let counts = wait_until(
        "not every job ran",
        WAIT_MAX,
        Duration::from_millis(200),
        || async {
            let listed = read(&["kv", "ls", "bench", "--prefix", "job-"])?;
            let mut counts = Vec::new();
            for key in listed.lines() {
                let count: u64 = read(&["kv", "get", "bench", key])?.parse().unwrap_or(0);
                counts.push((key.to_string(), count));
            }
            match counts.iter().filter(|(_, c)| *c >= INCREMENTS).count() {
                JOBS => Ok(counts),
                n => Err(format!("{n} of {JOBS} done: {counts:?}")),
            }
        },
    )
    .await;
    for (key, count) in counts {
        assert_eq!(count, INCREMENTS, "{key}: a run was cut off and ran again");
    }
}

/// Logs are the cluster's: a line a function prints on node 3 reaches a
/// follower on node 1 as it is written, and node 2's tail has it.
#[tokio::test(flavor = "multi_thread")]
async fn logs_from_any_node_are_followed_and_read_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let nodes = start_nodes(dir.path(), &nats.url, 3);
    nodes[0].deploy_guest("chaos", "http-chaos", "route = \"/chaos/...\"");
    wait_everywhere(&nodes, "chaos", &serving(&nodes[0], "chaos").await).await;
    let mut follow = nodes[0]
        .api()
        .get(nodes[0].url("/v1/functions/chaos/logs?tail=0&follow=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    let r = client()
        .get(nodes[2].url("/chaos/stdout"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut seen = String::new();
    let deadline = Instant::now() + WAIT_MAX;
    while !seen.contains("chaos wrote to stdout") {
        let chunk = tokio::time::timeout_at(deadline.into(), follow.chunk())
            .await
            .expect("the follower on node 1 never saw node 3's line")
            .unwrap()
            .expect("the follow stream ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let tail = nodes[1]
        .api()
        .get(nodes[1].url("/v1/functions/chaos/logs?tail=50"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(tail.contains("chaos wrote to stderr"), "{tail}");
    // The deploy's own line, written on node 1, is there too.
    assert!(tail.contains("deployed version 1"), "{tail}");
}

/// Retries, dead letters and redrive across two nodes: a call accepted on
/// one node fails twice and succeeds (its status read on the other), one
/// that always fails is dead after its attempts with its last error, is
/// listed on either node, and redrive through the other runs it again.
#[tokio::test(flavor = "multi_thread")]
async fn retries_dead_letters_and_redrive_span_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let nodes = start_nodes(dir.path(), &nats.url, 2);
    nodes[0].deploy_guest(
        "counter",
        "counter-rust",
        "key_value_stores = [\"default\"]\n\
         [retry]\nmax_attempts = 3\nbackoff_ms = 50\nbackoff_max_ms = 200",
    );
    wait_everywhere(&nodes, "counter", &serving(&nodes[0], "counter").await).await;
    let flaky = accept_async(&nodes[0], "counter", "key=flaky&fail_below=3").await;
    let done = nodes[1].wait_for_invocation(&flaky, &["succeeded"]).await;
    assert_eq!(done["attempts"], 3, "{done}");
    assert_eq!(done["result"]["body"], "3\n");

    let doomed = accept_async(&nodes[1], "counter", "key=doomed&fail_below=1000").await;
    let dead = nodes[0].wait_for_invocation(&doomed, &["dead"]).await;
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert!(
        dead["error"].as_str().unwrap().contains("HTTP 500"),
        "{dead}"
    );
    for node in &nodes {
        let listed = node.cli_ok(&["dlq", "show", "counter"]);
        assert!(listed.contains(&doomed), "{listed}");
    }
    let redriven = nodes[1].cli_ok(&["dlq", "redrive", "counter"]);
    assert!(redriven.contains("1 dead letters of counter"), "{redriven}");
    // Longer than the other waits: once stuck at 4 for a minute in a full,
    // loaded run (see the closing note of session 10).
    wait_until(
        "the redriven call never ran again",
        WAIT_MAX * 3,
        Duration::from_millis(50),
        || async {
            match nodes[0]
                .cli_ok(&["kv", "get", "default", "doomed"])
                .as_str()
            {
                "6" => Ok(()),
                other => Err(format!("count {other}")),
            }
        },
    )
    .await;
    let dead = nodes[0].wait_for_invocation(&doomed, &["dead"]).await;
    assert_eq!(
        dead["attempts"], 3,
        "attempts start over on redrive: {dead}"
    );
}

/// A named queue consumed on every node gets each message once, and a
/// topic fans out to every subscriber once, whichever node publishes.
#[tokio::test(flavor = "multi_thread")]
async fn queues_and_topics_span_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let nodes = start_nodes(dir.path(), &nats.url, 3);
    nodes[0].cli_ok(&["queues", "create", "orders"]);
    nodes[1].cli_ok(&["topics", "create", "news"]);
    for (name, prefix, trigger) in [
        ("orders", "order/", "queue = \"orders\""),
        ("reader-a", "a/", "topic = \"news\""),
        ("reader-b", "b/", "topic = \"news\""),
    ] {
        nodes[2].deploy_guest(
            name,
            "counter-rust",
            &format!(
                "key_value_stores = [\"default\"]\n[env]\nCOUNTER_PREFIX = \"{prefix}\"\n\
                 [[trigger]]\n{trigger}"
            ),
        );
    }
    for name in ["orders", "reader-a", "reader-b"] {
        wait_everywhere(&nodes, name, &serving(&nodes[2], name).await).await;
    }
    for i in 0..30 {
        let node = &nodes[i % 3];
        node.cli_ok(&["publish", "orders", "-d", &format!("order {i}")]);
        node.cli_ok(&["publish", "news", "-d", &format!("news {i}")]);
    }
    for prefix in ["order/", "a/", "b/"] {
        let keys = wait_until(
            "not every message arrived",
            WAIT_MAX,
            Duration::from_millis(100),
            || async {
                let keys = keys_under(&nodes[0], prefix);
                match keys.len() {
                    30 => Ok(keys),
                    n => Err(format!("{n} of 30 under {prefix}")),
                }
            },
        )
        .await;
        for key in keys.iter().step_by(7) {
            assert_eq!(
                nodes[1].cli_ok(&["kv", "get", "default", key]),
                "1",
                "{key}"
            );
        }
    }
}

/// nats-server restarted (SIGTERM, then started again) on its file store while
/// async work waits in it (each call fails once, then waits a second for
/// its retry): every call accepted before the kill still succeeds, and the
/// node carries on by itself.
#[tokio::test(flavor = "multi_thread")]
async fn accepted_work_survives_a_nats_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start();
    let nodes = start_nodes(dir.path(), &nats.url, 1);
    let node = &nodes[0];
    node.deploy_guest(
        "counter",
        "counter-rust",
        "key_value_stores = [\"default\"]\n\
         [retry]\nmax_attempts = 10\nbackoff_ms = 1000\nbackoff_max_ms = 2000",
    );
    const TOTAL: usize = 200;
    for i in 0..TOTAL {
        accept_async(node, "counter", &format!("key=job-{i}&fail_below=2")).await;
    }
    // Gracefully: a SIGKILL of a lone NATS 2.9 can lose its last
    // acknowledged writes, which it buffers (docs/cluster.md).
    nats.restart_gracefully();
    // Drained, nothing dead; then each one's second attempt made its
    // count 2 (one read each, once: reading while it runs slows it).
    wait_until(
        "the queue never drained",
        WAIT_MAX * 2,
        Duration::from_millis(200),
        || async {
            let queues = node.get_json("/v1/queues").await;
            let counter = &queues["functions"][0];
            match (counter["depth"].as_u64(), counter["in_flight"].as_u64()) {
                (Some(0), Some(0)) => Ok(()),
                _ => Err(queues.to_string()),
            }
        },
    )
    .await;
    let queues = node.get_json("/v1/queues").await;
    assert_eq!(queues["functions"][0]["dead_letters"], 0, "{queues}");
    for i in 0..TOTAL {
        let count = node.cli_ok(&["kv", "get", "default", &format!("job-{i}")]);
        assert!(count.parse::<u64>().unwrap() >= 2, "job-{i}: {count}");
    }
}

/// A node started while work waits takes a share of it: it pulls from the
/// same queue as the busy node from its start. Each succeeded invocation
/// names the node that ran it.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_started_under_load_takes_a_share() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let mut nodes = start_nodes(dir.path(), &nats.url, 1);
    nodes[0].deploy_guest("work", "kv-bench", "key_value_stores = [\"bench\"]");
    const JOBS: usize = 64;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let query = format!("op=increment&n=300&key=job-{i}");
        ids.push(accept_async(&nodes[0], "work", &query).await);
    }
    let data_dir = dir.path().join("late");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::copy(
        nodes[0].data_dir.join("admin.key"),
        data_dir.join("admin.key"),
    )
    .unwrap();
    // A name the operator chose; one that would be ambiguous is refused.
    let bad = std::process::Command::new(bin())
        .args(["up", "--node-name", "late.1", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("letters, digits"),
        "{stderr}"
    );
    nodes.push(Server::start_with(
        &data_dir,
        &["--cluster", &nats.url, "--node-name", "late"],
    ));
    let late = &nodes[1];
    let late_name = late.get_json("/healthz").await["node"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(late_name, "late");
    let first_name = nodes[0].get_json("/healthz").await["node"].clone();
    assert_ne!(first_name, late_name.as_str(), "each node has its own name");
    let mut by_node = std::collections::HashMap::<String, usize>::new();
    for id in &ids {
        let done = late.wait_for_invocation(id, &["succeeded"]).await;
        *by_node
            .entry(done["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(by_node.values().sum::<usize>(), JOBS);
    assert!(
        by_node.get(&late_name).is_some_and(|&n| n > 0),
        "the new node ran none of the work: {by_node:?}"
    );
}

/// Two nodes deploying the same name at once: one version each, numbered
/// in order, and both nodes list the same two versions afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_deploys_of_one_name_on_two_nodes_each_get_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let nodes = start_nodes(dir.path(), &nats.url, 2);
    let manifests: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            node.write_manifest("twin", "hello-rust", &format!("[env]\nNODE = \"{i}\""))
        })
        .collect();
    let deploys: Vec<_> = nodes
        .iter()
        .zip(&manifests)
        .map(|(node, manifest)| {
            let (bin, url, data_dir) = (bin(), node.url.clone(), node.data_dir.clone());
            let manifest = manifest.clone();
            std::thread::spawn(move || {
                std::process::Command::new(bin)
                    .args(["--server", &url, "deploy"])
                    .arg(&manifest)
                    .env("UPDRAFT_DATA_DIR", &data_dir)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for deploy in deploys {
        let out = deploy.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for node in &nodes {
        let info = node.get_json("/v1/functions/twin").await;
        let versions: Vec<u64> = info["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect();
        assert_eq!(versions.len(), 2, "{info}");
        assert!(versions.contains(&1) && versions.contains(&2), "{info}");
    }
}

/// One cent per invocation, nothing else.
const CENT_PER_INVOCATION: &str = "requests_per_million = 10000\ngb_second = 0\n\
    kv_ops_per_million = 0\nblob_ops_per_million = 0\ngb_out = 0\n\
    kv_gb_month = 0\nblob_gb_month = 0\n";

/// A GET of `path` on `node`: its status.
async fn status_of(node: &Server, path: &str) -> u16 {
    client()
        .get(node.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Usage is the cluster's: invocations through every node are summed once
/// on each node, and the bill is the same everywhere and reproducible from
/// the records. A budget set through one node stops the tenant on all of
/// them, and its crossings are told once, not once per node.
#[tokio::test(flavor = "multi_thread")]
async fn usage_bills_and_budgets_span_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, format!("[prices]\n{CENT_PER_INVOCATION}")).unwrap();
    let nodes = start_nodes_with(
        dir.path(),
        &nats.url,
        3,
        &["--config", config.to_str().unwrap()],
    );
    nodes[0].cli_ok(&["topics", "create", "budget-alerts"]);
    nodes[0].deploy_guest(
        "alerts",
        "counter-rust",
        "key_value_stores = [\"default\"]\n[env]\nCOUNTER_PREFIX = \"alert/\"\n\
         [[trigger]]\ntopic = \"budget-alerts\"",
    );
    nodes[0].deploy_guest("hello", "hello-rust", "route = \"/hello\"");
    for name in ["alerts", "hello"] {
        wait_everywhere(&nodes, name, &serving(&nodes[0], name).await).await;
    }
    for node in &nodes {
        for _ in 0..5 {
            assert_eq!(status_of(node, "/hello").await, 200);
        }
    }
    let invocations = |usage: &serde_json::Value| usage["total"]["invocations"].as_u64();
    for (i, node) in nodes.iter().enumerate() {
        wait_until(
            &format!("node {i} never counted the 15 invocations"),
            WAIT_MAX,
            Duration::from_millis(50),
            || async {
                let usage = node.get_json("/v1/usage").await;
                match invocations(&usage) {
                    Some(15) => Ok(()),
                    _ => Err(usage.to_string()),
                }
            },
        )
        .await;
    }
    let mut bills = Vec::new();
    for node in &nodes {
        // Counted once: still 15 once every node has read everything.
        assert_eq!(invocations(&node.get_json("/v1/usage").await), Some(15));
        let bill = node.get_json("/v1/bill").await;
        let again = node.get_json("/v1/bill?source=records").await;
        assert_eq!(
            (&bill["lines"], &bill["usage"]),
            (&again["lines"], &again["usage"])
        );
        bills.push(bill);
    }
    assert!(
        bills.windows(2).all(|w| w[0]["lines"] == w[1]["lines"]),
        "{bills:?}"
    );
    assert_eq!(bills[0]["total_cents"], 15, "{}", bills[0]);

    // 15 of 20 cents spent. The 16th, through node 3, crosses the warning;
    // it is delivered before the rest is spent (after, its delivery would
    // be refused like the stop's).
    nodes[1].cli_ok(&["budget", "set", "0.20"]);
    wait_until(
        "node 3 never applied the budget",
        WAIT_MAX,
        Duration::from_millis(50),
        || async {
            let budget = nodes[2].get_json("/v1/budget").await;
            match budget["budget_cents"].as_u64() {
                Some(20) => Ok(()),
                _ => Err(budget.to_string()),
            }
        },
    )
    .await;
    assert_eq!(status_of(&nodes[2], "/hello").await, 200);
    let month = nodes[0].get_json("/v1/budget").await["month"]
        .as_str()
        .unwrap()
        .to_string();
    let warning = format!("alert/budget-warning-{month}");
    nodes[0].wait_for_key(&warning).await;
    // Spend the rest through node 3 alone.
    let mut refused = false;
    for _ in 0..20 {
        if status_of(&nodes[2], "/hello").await == 402 {
            refused = true;
            break;
        }
    }
    assert!(refused, "node 3 never stopped the tenant");
    for (i, node) in nodes.iter().enumerate() {
        wait_until(
            &format!("node {i} never stopped the spent tenant"),
            WAIT_MAX,
            Duration::from_millis(50),
            || async {
                match status_of(node, "/hello").await {
                    402 => Ok(()),
                    other => Err(format!("answered {other}")),
                }
            },
        )
        .await;
        let budget = node.get_json("/v1/budget").await;
        assert_eq!(budget["exceeded"], true, "node {i}: {budget}");
    }
    // Each crossing was told once, not once per node. The stop's delivery
    // is refused (the budget is spent) and dead-lettered, unless it reached
    // a node in the moment before that node had read the last records:
    // either way, once.
    let exceeded = format!("alert/budget-exceeded-{month}");
    let told = || async {
        let delivered = keys_under(&nodes[0], "alert/")
            .iter()
            .filter(|k| **k == exceeded)
            .count();
        let dead = nodes[1].get_json("/v1/functions/alerts/dlq").await["dead_letters"]
            .as_array()
            .map_or(0, Vec::len);
        delivered + dead
    };
    wait_until(
        "the stop was never told",
        WAIT_MAX,
        Duration::from_millis(50),
        || async {
            match told().await {
                0 => Err("neither delivered nor dead-lettered".to_string()),
                n => Ok(n),
            }
        },
    )
    .await;
    // Whatever else was on its way has landed by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(told().await, 1, "the stop was told more than once");
    assert_eq!(nodes[0].cli_ok(&["kv", "get", "default", &warning]), "1");
}

/// A KV trigger deployed through one node fires once for a write through
/// any node: the writing node fires it into the shared queues.
#[tokio::test(flavor = "multi_thread")]
async fn kv_triggers_fire_once_for_writes_through_any_node() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let nodes = start_nodes(dir.path(), &nats.url, 3);
    nodes[0].deploy_guest(
        "watcher",
        "counter-rust",
        "key_value_stores = [\"default\", \"jobs\"]\n[env]\nCOUNTER_PREFIX = \"seen/\"\n\
         [[trigger]]\nkv = { store = \"jobs\", prefix = \"todo/\" }",
    );
    wait_everywhere(&nodes, "watcher", &serving(&nodes[0], "watcher").await).await;
    for (i, node) in nodes.iter().enumerate() {
        node.cli_ok(&["kv", "set", "jobs", &format!("todo/{i}"), "x"]);
        node.cli_ok(&["kv", "set", "jobs", &format!("done/{i}"), "x"]);
    }
    wait_until(
        "not every write under todo/ was seen",
        WAIT_MAX,
        Duration::from_millis(50),
        || async {
            match keys_under(&nodes[1], "seen/") {
                keys if keys.len() == 3 => Ok(()),
                keys => Err(format!("{keys:?}")),
            }
        },
    )
    .await;
    // Each event once: every seen/ counter is 1.
    for key in keys_under(&nodes[2], "seen/") {
        assert_eq!(
            nodes[2].cli_ok(&["kv", "get", "default", &key]),
            "1",
            "{key}"
        );
    }
}

/// Secrets across nodes: sealed with the key every node shares
/// (`UPDRAFT_SECRETS_KEY`), set through one node and read by a function on
/// another; rotated through the second and read through the first, with no
/// redeploy. A node without the key refuses secrets, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_shared_by_the_nodes_that_share_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let key = "7f".repeat(32);
    let args = ["--cluster", nats.url.as_str()];
    let with_key = [("UPDRAFT_SECRETS_KEY", key.as_str())];
    let n1 = Server::start_with_env(&dir.path().join("n1"), &args, &with_key);
    let node = |name: &str, env: &[(&str, &str)]| {
        let data_dir = dir.path().join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::copy(n1.data_dir.join("admin.key"), data_dir.join("admin.key")).unwrap();
        Server::start_with_env(&data_dir, &args, env)
    };
    let n2 = node("n2", &with_key);
    let keyless = node("n3", &[]);

    let put = |node: &Server, value: &'static str| {
        node.api()
            .put(node.url("/v1/secrets/api_token"))
            .body(value)
            .send()
    };
    assert_eq!(put(&n1, "tok-first-8d3e").await.unwrap().status(), 204);
    n1.deploy_guest(
        "config",
        "config-reader",
        "route = \"/config/...\"\n[variables]\ntoken = \"{{ secret.api_token }}\"",
    );
    let token = |node: &Server| {
        let url = node.url("/config/get?key=token");
        async move {
            let response = client().get(url).send().await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = response.text().await.map_err(|e| e.to_string())?;
            match status {
                200 => Ok(body),
                _ => Err(format!("{status} {body}")),
            }
        }
    };
    let seen = wait_until(
        "node 2 serving config",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || token(&n2),
    )
    .await;
    assert_eq!(seen, "tok-first-8d3e");

    // Rotated through node 2, read through node 1: no redeploy.
    assert_eq!(put(&n2, "tok-second-51aa").await.unwrap().status(), 204);
    assert_eq!(token(&n1).await.unwrap(), "tok-second-51aa");

    // The node without the key cannot seal or open them.
    let refused = put(&keyless, "tok-third").await.unwrap();
    expect_error(refused, 503, "secrets_unavailable").await;
    assert_eq!(token(&n2).await.unwrap(), "tok-second-51aa");
}
