//! Every way into a function reaches the one invocation path,
//! `Invoker::run`: a route, the invoke API, a call from another function,
//! an async request, a queue message, a topic event, a key-value write and
//! a schedule. Each test takes one way in through the router (in process,
//! real guests) and finds the run's usage record, which only the invoker's
//! executors write, with the trigger that way stamps on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use common::*;
use http::{Method, Request};
use serde_json::Value;
use updraft_core::{Manifest, Trigger, UsageRecord};

impl Api {
    async fn deploy(&self, name: &str, guest_name: &str, extra: &str) {
        let manifest = Manifest::from_toml(&format!("name = \"{name}\"\n{extra}")).unwrap();
        self.platform
            .deploy("local", manifest, guest(guest_name), None)
            .await
            .unwrap();
    }

    async fn post(&self, uri: &str, body: &'static str) -> (u16, Value) {
        let (status, json) = self.call(Method::POST, uri, body).await;
        (status.as_u16(), json)
    }

    /// The usage record of a run of `function` started by `trigger`.
    async fn record(&self, function: &str, trigger: Trigger) -> UsageRecord {
        let metering = self.platform.usage().metering().unwrap().clone();
        wait_for(&format!("a {trigger:?} record of {function}"), || {
            let mut found = None;
            metering
                .records("local", 0, u64::MAX / 2, |r| {
                    if &*r.function == function && r.trigger == trigger {
                        found = Some(r);
                    }
                })
                .unwrap();
            found
        })
        .await
    }

    /// Waits for async invocation `id` to succeed; returns its result body.
    async fn succeeded(&self, id: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (status, json) = self.get(&format!("/v1/invocations/{id}")).await;
            assert_eq!(status, 200, "{json}");
            match json["status"].as_str() {
                Some("succeeded") => return json["result"]["body"].as_str().unwrap().into(),
                Some("failed" | "dead") => panic!("invocation {id} failed: {json}"),
                _ => {}
            }
            assert!(std::time::Instant::now() < deadline, "{id} still {json}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// An echo that takes events and calls directly: `chain` with `ECHO=1`.
const ECHO: &str = "[env]\nECHO = \"1\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_route() {
    let api = Api::new().await;
    api.deploy("hello", "hello-rust", "route = \"/hello\"")
        .await;
    let (status, body) = api.send_as(None, get("/hello?name=Ada")).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("Ada"));
    api.record("hello", Trigger::Http).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_invoke_api() {
    let api = Api::new().await;
    api.deploy("wc", "wordcount-c", "").await;
    let request = Request::post("/v1/functions/wc/invoke")
        .body(Body::from("one two three"))
        .unwrap();
    let (status, body) = api.send(request).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains('3'), "{body:?}");
    api.record("wc", Trigger::Api).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_from_another_function() {
    let api = Api::new().await;
    api.deploy("b", "chain", "[env]\nNAME = \"b\"").await;
    api.deploy(
        "a",
        "chain",
        "calls = [\"b\"]\n[env]\nNAME = \"a\"\nNEXT = \"b\"",
    )
    .await;
    let request = Request::post("/v1/functions/a/invoke")
        .body(Body::empty())
        .unwrap();
    let (status, body) = api.send(request).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"a,b"[..]));
    let call = api.record("b", Trigger::Call).await;
    let outer = api.record("a", Trigger::Api).await;
    assert_ne!(call.invocation_id, outer.invocation_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_request() {
    let api = Api::new().await;
    api.deploy("wc", "wordcount-c", "").await;
    let (status, json) = api
        .post("/v1/functions/wc/invoke?mode=async", "later on")
        .await;
    assert_eq!(status, 202, "{json}");
    let id = json["id"].as_str().unwrap();
    assert!(api.succeeded(id).await.contains('2'));
    let record = api.record("wc", Trigger::Async).await;
    assert_eq!(record.invocation_id, id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_message() {
    let api = Api::new().await;
    let (status, _) = api.call(Method::PUT, "/v1/queues/jobs", "").await;
    assert_eq!(status, 200);
    api.deploy(
        "worker",
        "chain",
        &format!("[[trigger]]\nqueue = \"jobs\"\n{ECHO}"),
    )
    .await;
    let (status, json) = api.post("/v1/publish/jobs", "job 7").await;
    assert_eq!(status, 202, "{json}");
    let id = json["ids"][0].as_str().unwrap();
    let event: Value = serde_json::from_str(&api.succeeded(id).await).unwrap();
    assert_eq!(event["data"], "job 7");
    assert_eq!(api.record("worker", Trigger::Async).await.invocation_id, id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_event() {
    let api = Api::new().await;
    let (status, _) = api.call(Method::PUT, "/v1/topics/news", "").await;
    assert_eq!(status, 200);
    for name in ["reader", "archive"] {
        api.deploy(
            name,
            "chain",
            &format!("[[trigger]]\ntopic = \"news\"\n{ECHO}"),
        )
        .await;
    }
    let (status, json) = api.post("/v1/publish/news", "extra").await;
    assert_eq!(status, 202, "{json}");
    let ids: Vec<&str> = json["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{json}");
    for id in ids {
        let event: Value = serde_json::from_str(&api.succeeded(id).await).unwrap();
        assert_eq!(event["data"], "extra");
    }
    api.record("reader", Trigger::Async).await;
    api.record("archive", Trigger::Async).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_value_write() {
    let api = Api::new().await;
    let watching = format!(
        "key_value_stores = [\"jobs\"]\n[[trigger]]\nkv = {{ store = \"jobs\", prefix = \"todo/\" }}\n{ECHO}"
    );
    api.deploy("watcher", "chain", &watching).await;
    let (status, _) = api.call(Method::PUT, "/v1/kv/jobs/todo/1", "x").await;
    assert_eq!(status, 204);
    let record = api.record("watcher", Trigger::Async).await;
    let (_, status) = api
        .get(&format!("/v1/invocations/{}", record.invocation_id))
        .await;
    assert_eq!(status["status"], "succeeded", "{status}");
    let event: Value = serde_json::from_str(status["result"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(event["type"], "dev.updraft.kv.set");
    assert_eq!(event["subject"], "todo/1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule() {
    let api = Api::new().await;
    api.deploy(
        "ticker",
        "chain",
        &format!("[[trigger]]\ncron = \"* * * * * *\"\n{ECHO}"),
    )
    .await;
    let record = api.record("ticker", Trigger::Async).await;
    let id = record.invocation_id;
    let event: Value = serde_json::from_str(&api.succeeded(&id).await).unwrap();
    assert_eq!(event["type"], "dev.updraft.cron");
}

/// An Updraft key sent to a public route is the platform's, not the
/// function's: it is taken off before the guest runs, whoever's it is.
/// A function's own credentials pass as they came.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_never_sees_an_updraft_key() {
    let api = Api::new().await;
    api.deploy("chaos", "http-chaos", "route = \"/chaos/...\"")
        .await;
    let with = |value: &str| {
        Request::get("/chaos/headers")
            .header("authorization", value)
            .body(Body::empty())
            .unwrap()
    };
    let key = format!("Bearer {}", api.key);
    for sent in [key.as_str(), "bearer upd_0123456789ab_notakey"] {
        let (status, body) = api.send_as(None, with(sent)).await;
        assert_eq!(status, 200);
        let seen = String::from_utf8_lossy(&body).to_lowercase();
        assert!(
            !seen.contains("upd_") && !seen.contains("authorization"),
            "{seen}"
        );
    }
    let (status, body) = api.send_as(None, with("Bearer the-functions-own")).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("the-functions-own"));
}
