//! Async invocation end to end: 10,000 accepted calls across a SIGKILL,
//! each run (at least once, duplicates counted), retries with backoff, dead
//! letters and redrive, idempotency keys, and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The counter example, which fails on purpose with `fail_below`.
fn deploy_counter(server: &Server, extra: &str) {
    server.deploy_guest(
        "counter",
        "counter-rust",
        &format!("route = \"/counter\"\nkey_value_stores = [\"default\"]\n{extra}"),
    );
}

/// `POST /v1/functions/counter/invoke?mode=async&QUERY`: (status, body).
async fn invoke_async(
    api: &reqwest::Client,
    server: &Server,
    query: &str,
    key: Option<&str>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut request =
        api.post(server.url(&format!("/v1/functions/counter/invoke?mode=async&{query}")));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// Waits until the counter's async queue is empty and nothing runs.
async fn drain(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let queues = server.get_json("/v1/queues").await;
        let counter = &queues["functions"][0];
        assert_eq!(counter["function"], "counter", "{queues}");
        if counter["depth"] == 0 && counter["in_flight"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the queue does not drain: {queues}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends async calls `job-{from..to}`, 32 at a time; returns the keys of
/// the accepted ones (202), stopping at the first failure (the server died).
async fn send_jobs(server: &Server, from: usize, to: usize) -> Vec<String> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(from));
    let senders: Vec<_> = (0..32)
        .map(|_| {
            let (api, url, next) = (server.api(), server.url(""), next.clone());
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        return accepted;
                    }
                    let key = format!("job-{i}");
                    let sent = api
                        .post(format!(
                            "{url}/v1/functions/counter/invoke?mode=async&key={key}"
                        ))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 202 => accepted.push(key),
                        Ok(r) => panic!("async invoke answered {}", r.status()),
                        Err(_) => return accepted,
                    }
                }
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for sender in senders {
        accepted.extend(sender.await.unwrap());
    }
    accepted
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_async_calls_across_a_sigkill_each_run() {
    let dir = tempfile::tempdir().unwrap();
    // Acknowledged KV writes survive a kill at `process` too: the counts
    // the function leaves are the proof of each run.
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        "[kv]\ntype = \"embedded\"\ndurability = \"process\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &["--config", &config]);
    deploy_counter(&server, "");
    const TOTAL: usize = 10_000;

    // Up to half, with a SIGKILL 1.5 s in, while calls still arrive and run.
    let pid = server.child.id().to_string();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
    });
    let first_half = send_jobs(&server, 0, TOTAL / 2).await;
    killer.await.unwrap();
    server.kill();
    assert!(
        first_half.len() > 100,
        "too few accepted: {}",
        first_half.len()
    );

    // The rest after the restart; everything accepted runs.
    let server = Server::start_with(&data, &["--config", &config]);
    let before_kill = first_half.len();
    let rest = TOTAL - before_kill;
    let second = send_jobs(&server, TOTAL, TOTAL + rest).await;
    assert_eq!(second.len(), rest);
    let accepted: BTreeSet<String> = first_half.into_iter().chain(second).collect();
    assert_eq!(accepted.len(), TOTAL);
    drain(&server).await;

    // Every accepted call ran: its key counts at least 1. More is a
    // duplicate run (allowed: at least once), counted and reported.
    let listed = server.cli_ok(&["kv", "ls", "default"]);
    let listed: BTreeSet<&str> = listed.lines().collect();
    let mut duplicates = 0;
    for key in &accepted {
        assert!(
            listed.contains(key.as_str()),
            "accepted call {key} never ran"
        );
    }
    let stores = server.api();
    for key in &accepted {
        let value = stores
            .get(server.url(&format!("/v1/kv/default/{key}")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let runs: u64 = value.trim().parse().unwrap();
        duplicates += runs - 1;
    }
    eprintln!(
        "{TOTAL} accepted ({before_kill} before the kill), all ran; {duplicates} duplicate runs (at least once)"
    );
    let queues = server.get_json("/v1/queues").await;
    assert_eq!(queues["functions"][0]["dead_letters"], 0, "{queues}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_retried_then_dead_lettered_and_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    deploy_counter(
        &server,
        "[retry]\nmax_attempts = 3\nbackoff_ms = 50\nbackoff_max_ms = 200",
    );
    let api = server.api();

    // Fails twice (HTTP 500), succeeds the third time.
    let (status, accepted) = invoke_async(&api, &server, "key=flaky&fail_below=3", None)
        .await
        .unwrap();
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    assert_eq!(accepted["status_url"], format!("/v1/invocations/{id}"));
    let done = server.wait_for_invocation(&id, &["succeeded"]).await;
    assert_eq!(done["attempts"], 3, "{done}");
    assert_eq!(done["function"], "counter");
    assert_eq!(done["result"]["status"], 200);
    assert_eq!(done["result"]["body"], "3\n");
    assert!(done["finished_ms"].as_u64() >= done["started_ms"].as_u64());

    // Always fails: dead after 3 attempts, with the last error.
    let (_, accepted) = invoke_async(&api, &server, "key=doomed&fail_below=1000", None)
        .await
        .unwrap();
    let doomed = accepted["id"].as_str().unwrap().to_string();
    let dead = server.wait_for_invocation(&doomed, &["dead"]).await;
    assert_eq!(dead["attempts"], 3, "{dead}");
    let error = dead["error"].as_str().unwrap();
    assert!(
        error.contains("HTTP 500") && error.contains("failing on purpose"),
        "{error}"
    );
    assert_eq!(server.cli_ok(&["kv", "get", "default", "doomed"]), "3");
    let listed = server.cli_ok(&["dlq", "show", "counter"]);
    assert!(
        listed.contains(&doomed) && listed.contains("HTTP 500"),
        "{listed}"
    );
    let ls = server.cli_ok(&["dlq", "ls"]);
    assert!(ls.contains("counter") && ls.contains('1'), "{ls}");
    let logs = server.cli_ok(&["logs", "counter"]);
    assert!(
        logs.contains(&format!(
            "async invocation {doomed} failed (attempt 3 of 3)"
        )),
        "{logs}"
    );

    // Redrive runs it again: three more attempts, dead again.
    let redriven = server.cli_ok(&["dlq", "redrive", "counter"]);
    assert!(redriven.contains("1 dead letters of counter"), "{redriven}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.cli_ok(&["kv", "get", "default", "doomed"]) != "6" {
        assert!(
            Instant::now() < deadline,
            "the redriven call did not run again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = server.wait_for_invocation(&doomed, &["dead"]).await;
    assert_eq!(
        dead["attempts"], 3,
        "attempts start over on redrive: {dead}"
    );

    // Each attempt is metered as an async invocation.
    let records = api
        .get(server.url("/v1/usage/records"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let asynchronous = records
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["trigger"] == "async")
        .count();
    assert_eq!(asynchronous, 3 + 6, "one record per attempt");

    // The status shows through the CLI too.
    let shown = server.cli_ok(&["invocation", &id]);
    assert!(
        shown.contains("succeeded") && shown.contains("HTTP 200"),
        "{shown}"
    );
    let queues = server.cli_ok(&["queues"]);
    assert!(queues.contains("counter"), "{queues}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    deploy_counter(&server, "request_body_bytes_max = 1000");
    let api = server.api();

    // The same key twice: one call, one id.
    let (s1, first) = invoke_async(&api, &server, "key=once", Some("order-17"))
        .await
        .unwrap();
    let (s2, again) = invoke_async(&api, &server, "key=once", Some("order-17"))
        .await
        .unwrap();
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(
        (&first["duplicate"], &again["duplicate"]),
        (&Value::Bool(false), &Value::Bool(true))
    );
    server
        .wait_for_invocation(first["id"].as_str().unwrap(), &["succeeded"])
        .await;
    // The CLI's --async prints the id alone.
    let id = server.cli_ok(&[
        "invoke",
        "counter",
        "--async",
        "--idempotency-key",
        "order-17",
    ]);
    assert_eq!(id.trim(), first["id"].as_str().unwrap());
    assert_eq!(server.cli_ok(&["kv", "get", "default", "once"]), "1");

    // Bad input: clear errors, nothing queued.
    let bad_mode = api
        .post(server.url("/v1/functions/counter/invoke?mode=later"))
        .send()
        .await
        .unwrap();
    let message = expect_error(bad_mode, 400, "bad_request").await;
    assert!(message.contains("mode=async"), "{message}");
    let missing = api
        .post(server.url("/v1/functions/nope/invoke?mode=async"))
        .send()
        .await
        .unwrap();
    expect_error(missing, 404, "function_not_found").await;
    let big = api
        .post(server.url("/v1/functions/counter/invoke?mode=async"))
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    expect_error(big, 413, "request_too_large").await;
    let long_key = api
        .post(server.url("/v1/functions/counter/invoke?mode=async"))
        .header("idempotency-key", "k".repeat(300))
        .send()
        .await
        .unwrap();
    let message = expect_error(long_key, 400, "bad_request").await;
    assert!(message.contains("idempotency key"), "{message}");
    for id in ["garbage", "0190b6a0-0000-7000-8000-000000000000"] {
        let unknown = api
            .get(server.url(&format!("/v1/invocations/{id}")))
            .send()
            .await
            .unwrap();
        expect_error(unknown, 404, "invocation_not_found").await;
    }
    let queues = server.get_json("/v1/queues").await;
    assert_eq!(queues["functions"][0]["depth"], 0, "{queues}");

    // Another tenant sees neither the invocation nor the dead letters.
    let bravo = server.cli_ok(&["keys", "create", "--tenant", "bravo"]);
    let bravo = bravo.trim();
    let theirs = client_with_key(bravo)
        .get(server.url(&format!(
            "/v1/invocations/{}",
            first["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    expect_error(theirs, 404, "invocation_not_found").await;
    let theirs = client_with_key(bravo)
        .get(server.url("/v1/functions/counter/dlq"))
        .send()
        .await
        .unwrap();
    expect_error(theirs, 404, "function_not_found").await;
    // Nor the queues: bravo's view is empty, and it cannot publish to ours.
    server.cli_ok(&["queues", "create", "orders"]);
    let theirs = client_with_key(bravo)
        .post(server.url("/v1/publish/orders"))
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(theirs, 404, "channel_not_found").await;
    let view = server.get_json_as(bravo, "/v1/queues").await;
    assert_eq!(view["queues"], serde_json::json!([]), "{view}");
    assert_eq!(view["functions"], serde_json::json!([]), "{view}");
    let theirs = client_with_key(bravo)
        .delete(server.url("/v1/queues/orders"))
        .send()
        .await
        .unwrap();
    expect_error(theirs, 404, "channel_not_found").await;
    assert_eq!(
        server.get_json("/v1/queues").await["queues"][0]["name"],
        "orders"
    );
}

/// Deploys the counter example as `name` with `COUNTER_PREFIX` and triggers.
fn deploy_consumer(server: &Server, name: &str, prefix: &str, triggers: &str) {
    server.deploy_guest(
        name,
        "counter-rust",
        &format!(
            "key_value_stores = [\"default\"]\n[env]\nCOUNTER_PREFIX = \"{prefix}\"\n{triggers}"
        ),
    );
}

/// Keys of the `default` store under `prefix`.
fn keys_under(server: &Server, prefix: &str) -> Vec<String> {
    server
        .cli_ok(&["kv", "ls", "default", "--prefix", prefix])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Polls until `done` holds for the keys under `prefix`.
async fn wait_keys(server: &Server, prefix: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let what = format!("keys under {prefix}");
    wait_until(&what, WAIT_MAX, Duration::from_millis(50), || async {
        let keys = keys_under(server, prefix);
        match done(&keys) {
            true => Ok(keys),
            false => Err(format!("{keys:?}")),
        }
    })
    .await
}

/// A consumer exporting `updraft:platform/handler` gets each event as a
/// structured CloudEvent, straight to `handle` (chain with ECHO=1 answers
/// it back, so the invocation's result shows what it got).
#[tokio::test(flavor = "multi_thread")]
async fn a_direct_consumer_gets_structured_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.cli_ok(&["queues", "create", "work"]);
    server.deploy_guest(
        "direct",
        "chain",
        "[[trigger]]\nqueue = \"work\"\n[env]\nNAME = \"direct\"\nECHO = \"1\"\n",
    );
    let id = server.cli_ok(&[
        "publish",
        "work",
        "-d",
        "{\"n\":2}",
        "--content-type",
        "application/json",
    ]);
    let done = server.wait_for_invocation(id.trim(), &["succeeded"]).await;
    assert_eq!(done["function"], "direct");
    let event: Value = serde_json::from_str(done["result"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["id"], id.trim());
    assert_eq!(event["type"], "dev.updraft.message");
    assert_eq!(event["source"], "/local/work");
    assert_eq!(event["data"]["n"], 2, "{event}");
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_fan_in_topics_fan_out_and_cron_fires() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.cli_ok(&["queues", "create", "orders", "--batch-size", "4"]);
    server.cli_ok(&["topics", "create", "news"]);

    // Two consumers compete for one queue: each message runs once, on one.
    let on_orders = "[[trigger]]\nqueue = \"orders\"";
    deploy_consumer(&server, "packer-a", "orders/", on_orders);
    deploy_consumer(&server, "packer-b", "orders/", on_orders);
    let mut ids = BTreeSet::new();
    for i in 0..200 {
        let out = server.cli_ok(&["publish", "orders", "-d", &format!("order {i}")]);
        ids.insert(format!("orders/{}", out.trim()));
    }
    let keys = wait_keys(&server, "orders/", |k| k.len() >= 200).await;
    assert_eq!(keys.into_iter().collect::<BTreeSet<_>>(), ids);
    server.drain_queue("orders").await;
    for key in ids.iter().take(20) {
        assert_eq!(
            server.cli_ok(&["kv", "get", "default", key]),
            "1",
            "{key} ran twice"
        );
    }
    // Usage sums are committed once a second: wait for them.
    let deadline = Instant::now() + WAIT_MAX;
    let (a, b) = loop {
        let usage = server.get_json("/v1/usage").await;
        let runs = |name: &str| {
            usage["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["key"] == name)
                .map_or(0, |r| r["invocations"].as_u64().unwrap())
        };
        let (a, b) = (runs("packer-a"), runs("packer-b"));
        if a + b >= 200 || Instant::now() > deadline {
            break (a, b);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(a + b, 200, "every message once: a {a}, b {b}");
    eprintln!("competing consumers: packer-a ran {a}, packer-b {b}");

    // Every subscriber of a topic gets every message.
    deploy_consumer(
        &server,
        "reader-a",
        "news-a/",
        "[[trigger]]\ntopic = \"news\"",
    );
    deploy_consumer(
        &server,
        "reader-b",
        "news-b/",
        "[[trigger]]\ntopic = \"news\"",
    );
    server.deploy_guest("archive", "echo", "[[trigger]]\ntopic = \"news\"");
    let published = server.cli_ok(&[
        "--json",
        "publish",
        "news",
        "-d",
        "{\"n\":1}",
        "--content-type",
        "application/json",
    ]);
    let published: Value = serde_json::from_str(&published).unwrap();
    assert_eq!(published["kind"], "topic");
    assert_eq!(
        published["subscribers"],
        serde_json::json!(["archive", "reader-a", "reader-b"])
    );
    let ids: Vec<&str> = published["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    for _ in 0..4 {
        server.cli_ok(&["publish", "news", "-d", "more"]);
    }
    wait_keys(&server, "news-a/", |k| k.len() == 5).await;
    let read_b = wait_keys(&server, "news-b/", |k| k.len() == 5).await;
    assert!(read_b.contains(&format!("news-b/{}", ids[2])), "{read_b:?}");
    // A command gets the event in structured mode on stdin; echo returns it.
    let archived = server.wait_for_invocation(ids[0], &["succeeded"]).await;
    assert_eq!(archived["function"], "archive");
    let event: Value = serde_json::from_str(archived["result"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["id"], ids[0]);
    assert_eq!(event["type"], "dev.updraft.message");
    assert_eq!(event["source"], "/local/news");
    assert_eq!(event["data"]["n"], 1, "{event}");

    // A structured CloudEvent keeps its own id and attributes.
    let cloudevent =
        r#"{"specversion":"1.0","id":"evt-1","source":"/shop","type":"order.created","data":"hi"}"#;
    server.cli_ok(&["publish", "orders", "--cloudevent", "-d", cloudevent]);
    wait_keys(&server, "orders/evt-1", |k| k.len() == 1).await;

    // A batch (CloudEvents batched mode) publishes every event in one
    // commit; each keeps its id and reaches one consumer once.
    let batch: Vec<Value> = (0..300)
        .map(|i| {
            serde_json::json!({"specversion": "1.0", "id": format!("batch-{i:03}"),
                "source": "/shop", "type": "order.created", "data": {"n": i}})
        })
        .collect();
    let response = server
        .api()
        .post(server.url("/v1/publish/orders"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(serde_json::to_vec(&batch).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let published: Value = response.json().await.unwrap();
    assert_eq!(published["ids"].as_array().unwrap().len(), 300);
    let keys = wait_keys(&server, "orders/batch-", |k| k.len() == 300).await;
    assert_eq!(keys[299], "orders/batch-299");
    server.drain_queue("orders").await;
    for key in keys.iter().step_by(37) {
        assert_eq!(server.cli_ok(&["kv", "get", "default", key]), "1", "{key}");
    }

    // A seconds-level schedule fires every second.
    deploy_consumer(
        &server,
        "ticker",
        "tick/",
        "[[trigger]]\ncron = \"* * * * * *\"",
    );
    let started = Instant::now();
    let ticks = wait_keys(&server, "tick/", |k| k.len() >= 3).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "3 ticks in {elapsed:?}: faster than the schedule"
    );
    eprintln!("cron: {} ticks in {elapsed:?}", ticks.len());
    let tick = ticks[0].trim_start_matches("tick/");
    let status = server.get_json(&format!("/v1/invocations/{tick}")).await;
    assert_eq!(status["function"], "ticker", "{status}");

    // Redeploying without the trigger stops it.
    deploy_consumer(&server, "ticker", "tick/", "");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = keys_under(&server, "tick/").len();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        keys_under(&server, "tick/").len(),
        before,
        "the schedule was removed"
    );

    let queues = server.cli_ok(&["queues"]);
    assert!(
        queues.contains("orders") && queues.contains("packer-a,packer-b"),
        "{queues}"
    );
    assert!(
        queues.contains("news") && queues.contains("archive,reader-a,reader-b"),
        "{queues}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_refuse_bad_input_at_deploy_and_publish() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let api = server.api();

    // A trigger naming a missing queue or topic fails the deploy.
    let manifest =
        server.write_manifest("worker", "counter-rust", "[[trigger]]\nqueue = \"orders\"");
    let out = server.cli(&["deploy", manifest.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("queue \"orders\" does not exist")
            && stderr.contains("updraft queues create orders"),
        "{stderr}"
    );
    server.cli_ok(&["topics", "create", "orders-topic"]);
    let manifest = server.write_manifest(
        "worker",
        "counter-rust",
        "[[trigger]]\nqueue = \"orders-topic\"",
    );
    let out = server.cli(&["deploy", manifest.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a topic, not a queue"));
    let manifest = server.write_manifest(
        "worker",
        "counter-rust",
        "[[trigger]]\ncron = \"61 * * * * *\"",
    );
    let out = server.cli(&["deploy", manifest.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a schedule"));
    assert!(
        server
            .cli_ok(&["ls"])
            .lines()
            .all(|l| !l.contains("worker"))
    );

    // Publishing to nothing, or a malformed CloudEvent.
    let unknown = api
        .post(server.url("/v1/publish/nope"))
        .body("x")
        .send()
        .await
        .unwrap();
    let message = expect_error(unknown, 404, "channel_not_found").await;
    assert!(message.contains("updraft queues create nope"), "{message}");
    server.cli_ok(&["queues", "create", "orders"]);
    let big = api
        .post(server.url("/v1/publish/orders"))
        .body(vec![0u8; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    expect_error(big, 413, "payload_too_large").await;
    // A malformed CloudEvent; a batch with one bad event publishes none of
    // them, and says which.
    let (one, batch) = (
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
    );
    let good = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
    let too_many = format!("[{}]", vec![good; 1001].join(","));
    for (content_type, bad, says) in [
        (
            one,
            r#"{"specversion":"1.0","id":"1","type":"t"}"#.to_string(),
            "\"source\"",
        ),
        (one, "not json".to_string(), "not JSON"),
        (
            batch,
            format!("[{good},{good},{{\"id\":\"3\"}}]"),
            "event 2 of the batch",
        ),
        (batch, "[]".to_string(), "send 1 to 1000"),
        (batch, too_many, "has 1001 events"),
        (batch, good.to_string(), "JSON array"),
    ] {
        let response = api
            .post(server.url("/v1/publish/orders"))
            .header("content-type", content_type)
            .body(bad)
            .send()
            .await
            .unwrap();
        let message = expect_error(response, 400, "invalid_cloudevent").await;
        assert!(message.contains(says), "{message}");
    }
    let queues = server.get_json("/v1/queues").await;
    assert_eq!(
        queues["queues"][0]["depth"], 0,
        "nothing was queued: {queues}"
    );

    // Names and settings are checked; a name is a queue or a topic.
    let bad_name = api
        .put(server.url("/v1/queues/Orders"))
        .send()
        .await
        .unwrap();
    expect_error(bad_name, 400, "bad_request").await;
    let bad_batch = api
        .put(server.url("/v1/queues/orders"))
        .json(&serde_json::json!({"batch_size": 0}))
        .send()
        .await
        .unwrap();
    let message = expect_error(bad_batch, 400, "bad_request").await;
    assert!(message.contains("batch_size"), "{message}");
    let taken = api
        .put(server.url("/v1/topics/orders"))
        .send()
        .await
        .unwrap();
    expect_error(taken, 409, "channel_conflict").await;

    // A queue in use cannot be removed; once unused it can.
    deploy_consumer(&server, "worker", "w/", "[[trigger]]\nqueue = \"orders\"");
    let in_use = api
        .delete(server.url("/v1/queues/orders"))
        .send()
        .await
        .unwrap();
    let message = expect_error(in_use, 409, "channel_in_use").await;
    assert!(message.contains("worker"), "{message}");
    server.cli_ok(&["rm", "worker"]);
    server.cli_ok(&["queues", "rm", "orders"]);
    let gone = api
        .post(server.url("/v1/publish/orders"))
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(gone, 404, "channel_not_found").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_writes_under_a_watched_prefix_trigger_their_function() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    // The watcher counts each event it gets under `seen/<event id>`.
    server.deploy_guest(
        "watcher",
        "counter-rust",
        "key_value_stores = [\"default\", \"jobs\"]\n[env]\nCOUNTER_PREFIX = \"seen/\"\n\
         [[trigger]]\nkv = { store = \"jobs\", prefix = \"todo/\" }",
    );
    // Writes from the operator API: two sets and a delete under the prefix,
    // one set outside it.
    server.cli_ok(&["kv", "set", "jobs", "todo/1", "a"]);
    server.cli_ok(&["kv", "set", "jobs", "todo/2", "b"]);
    server.cli_ok(&["kv", "set", "jobs", "done/3", "c"]);
    server.cli_ok(&["kv", "rm", "jobs", "todo/1"]);
    wait_keys(&server, "seen/", |k| k.len() == 3).await;
    // Writes from a guest count too (an atomic increment here).
    server.deploy_guest(
        "writer",
        "counter-rust",
        "route = \"/writer\"\nkey_value_stores = [\"jobs\"]",
    );
    let response = client()
        .get(server.url("/writer?store=jobs&key=todo/9"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    wait_keys(&server, "seen/", |k| k.len() == 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        keys_under(&server, "seen/").len(),
        4,
        "one event per watched write"
    );
    // Another store, or another tenant's store of the same name, is not watched.
    server.deploy_guest(
        "other",
        "counter-rust",
        "route = \"/other\"\nkey_value_stores = [\"default\"]",
    );
    client()
        .get(server.url("/other?key=todo/5"))
        .send()
        .await
        .unwrap();
    let bravo = server.cli_ok(&["keys", "create", "--tenant", "bravo"]);
    let manifest = server.write_manifest(
        "writer",
        "counter-rust",
        "route = \"/writer\"\nkey_value_stores = [\"jobs\"]",
    );
    assert!(
        server
            .cli_as(bravo.trim(), &["deploy", manifest.to_str().unwrap()])
            .status
            .success()
    );
    client()
        .get(server.url("/~bravo/writer?store=jobs&key=todo/6"))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(keys_under(&server, "seen/").len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn guests_publish_to_the_queues_and_topics_they_list() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.cli_ok(&["queues", "create", "orders"]);
    server.cli_ok(&["topics", "create", "news"]);
    deploy_consumer(
        &server,
        "packer",
        "packed/",
        "[[trigger]]\nqueue = \"orders\"",
    );
    deploy_consumer(&server, "reader", "read/", "[[trigger]]\ntopic = \"news\"");
    server.deploy_guest(
        "shop",
        "publisher",
        "route = \"/shop\"\npublishes = [\"orders\", \"news\", \"ghost\"]",
    );
    let publish = |to: &str| {
        client()
            .post(server.url(&format!("/shop?to={to}")))
            .header("content-type", "application/json")
            .body("{\"order\":1}")
            .send()
    };
    // To a queue and to a topic: one id each, delivered to the consumer.
    for (to, prefix) in [("orders", "packed/"), ("news", "read/")] {
        let response = publish(to).await.unwrap();
        assert_eq!(response.status(), 200);
        let id = response.text().await.unwrap();
        let keys = wait_keys(&server, prefix, |k| k.len() == 1).await;
        assert_eq!(keys, [format!("{prefix}{id}")]);
    }
    // Not listed, or listed but missing: errors the guest sees.
    let response = publish("secret").await.unwrap();
    assert_eq!(response.status(), 500);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("AccessDenied(\"secret\")")
    );
    server
        .wait_for_logs("shop", &["it is not in this function's publishes"])
        .await;
    let response = publish("ghost").await.unwrap();
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("NotFound(\"ghost\")")
    );
}
