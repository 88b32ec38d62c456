//! `GET /metrics` after a known workload: the counters are exactly the
//! workload (invocations, errors by code, durations, queue depth, dead
//! letters), who may scrape, and label sets that stay bounded however many
//! paths, keys and invocations there are. Also a function's summary at
//! `/v1/functions/{name}/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;

/// The samples of a Prometheus text exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse::<f64>().unwrap())
        })
        .collect()
}

/// The label names and values of a series: `a{x="1",y="2"}` → [(x, 1), (y, 2)].
fn labels(series: &str) -> Vec<(String, String)> {
    let Some((_, rest)) = series.split_once('{') else {
        return Vec::new();
    };
    rest.trim_end_matches('}')
        .split("\",")
        .map(|pair| {
            let (name, value) = pair.split_once("=\"").unwrap();
            (name.to_string(), value.trim_end_matches('"').to_string())
        })
        .collect()
}

async fn scrape(server: &Server) -> String {
    let response = server
        .api()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
    );
    response.text().await.unwrap()
}

/// The value of one series, 0 when absent.
fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn series(name: &str, function: &str, extra: &str) -> String {
    format!("{name}{{tenant=\"local\",function=\"{function}\",version=\"1\"{extra}}}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_counters_match_a_known_workload_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let token = "0123456789abcdef0123456789abcdef";
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!("[telemetry]\nmetrics_token = \"{token}\"\n"),
    )
    .unwrap();
    let server = Server::start_with(dir.path(), &["--config", config.to_str().unwrap()]);
    server.deploy_guest("hello", "hello-rust", "route = \"/hello\"");
    server.deploy_guest("chaos", "http-chaos", "route = \"/chaos/...\"");
    server.deploy_guest("doomed", "trap", "[retry]\nmax_attempts = 1");
    server.cli_ok(&["queues", "create", "orders"]);

    // 7 greetings, 3 traps of 5 chaos requests, 4 messages nobody takes,
    // one async invocation that dies.
    for _ in 0..7 {
        let response = client().get(server.url("/hello")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    for path in ["trap", "count", "trap", "count", "trap"] {
        client()
            .get(server.url(&format!("/chaos/{path}")))
            .send()
            .await
            .unwrap();
    }
    for i in 0..4 {
        server.cli_ok(&["publish", "orders", "-d", &format!("order {i}")]);
    }
    server.cli_ok(&["invoke", "doomed", "--async"]);
    server.wait_for_dead_letter("doomed").await;

    // Runs are counted when they end (an http function's after its body):
    // wait for the last, then every count must be exact.
    let chaos_errors = series("updraft_function_errors_total", "chaos", ",code=\"trap\"");
    let text = wait_until(
        "the metrics show every run",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let text = scrape(&server).await;
            let s = samples(&text);
            let hello = value(
                &s,
                &series("updraft_function_duration_seconds_count", "hello", ""),
            );
            let chaos = value(
                &s,
                &series("updraft_function_duration_seconds_count", "chaos", ""),
            );
            match (hello, chaos, value(&s, &chaos_errors)) {
                (7.0, 5.0, 3.0) => Ok(text),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let s = samples(&text);
    let invocations = |f| value(&s, &series("updraft_function_invocations_total", f, ""));
    assert_eq!(invocations("hello"), 7.0, "{text}");
    assert_eq!(invocations("chaos"), 5.0, "{text}");
    assert_eq!(invocations("doomed"), 1.0, "{text}");
    assert_eq!(value(&s, &chaos_errors), 3.0, "{text}");
    let errors_of = |f: &str| -> f64 {
        s.iter()
            .filter(|(k, _)| {
                k.starts_with("updraft_function_errors_total{")
                    && k.contains(&format!("function=\"{f}\""))
            })
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(errors_of("hello"), 0.0, "{text}");
    assert_eq!(errors_of("chaos"), 3.0, "{text}");
    assert_eq!(errors_of("doomed"), 1.0, "{text}");
    // Every invocation arrived either warm or cold.
    for f in ["hello", "chaos", "doomed"] {
        let starts = value(
            &s,
            &series("updraft_function_starts_total", f, ",start=\"cold\""),
        ) + value(
            &s,
            &series("updraft_function_starts_total", f, ",start=\"warm\""),
        );
        assert_eq!(starts, invocations(f), "{f}: {text}");
    }
    // The histogram's buckets are cumulative and end with every run.
    let inf = series(
        "updraft_function_duration_seconds_bucket",
        "hello",
        ",le=\"+Inf\"",
    );
    assert_eq!(value(&s, &inf), 7.0, "{text}");
    let queue = "{tenant=\"local\",queue=\"orders\"}";
    assert_eq!(
        value(&s, &format!("updraft_queue_depth{queue}")),
        4.0,
        "{text}"
    );
    assert!(value(&s, &format!("updraft_queue_oldest_age_seconds{queue}")) >= 0.0);
    let dead = "{tenant=\"local\",function=\"doomed\"}";
    assert_eq!(value(&s, &format!("updraft_dlq_size{dead}")), 1.0, "{text}");
    assert_eq!(value(&s, "updraft_instances_in_flight"), 0.0, "{text}");
    assert!(
        value(&s, "updraft_pool_slots{state=\"free\"}") > 0.0,
        "{text}"
    );
    assert!(value(&s, "process_resident_memory_bytes") > 0.0, "{text}");
    assert!(s.contains_key("updraft_usage_records_pending"), "{text}");

    // The tenant's own view of one function, with its percentiles.
    let summary = server.get_json("/v1/functions/hello/metrics").await;
    assert_eq!(summary["requests"], 7, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    let p50 = summary["duration_ms"]["p50"].as_f64().unwrap();
    let p99 = summary["duration_ms"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{summary}");
    let chaos = server.get_json("/v1/functions/chaos/metrics").await;
    assert_eq!(chaos["errors_by_code"]["trap"], 3, "{chaos}");
    let missing = server
        .api()
        .get(server.url("/v1/functions/nope/metrics"))
        .send()
        .await
        .unwrap();
    expect_error(missing, 404, "function_not_found").await;

    // OpenMetrics when asked for.
    let open = server
        .api()
        .get(server.url("/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(
        open.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(open.text().await.unwrap().ends_with("# EOF\n"));

    // Who may scrape: admin keys and the metrics token; not tenants.
    let anonymous = client().get(server.url("/metrics")).send().await.unwrap();
    expect_error(anonymous, 401, "missing_key").await;
    let tenant_key = server.cli_ok(&["keys", "create", "--tenant", "acme"]);
    let tenant = client_with_key(tenant_key.trim())
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    let message = expect_error(tenant, 403, "admin_only").await;
    assert!(message.contains("metrics_token"), "{message}");
    let scraper = client_with_key(token)
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scraper.status(), 200);
    let wrong = client_with_key("0123456789abcdef0123456789abcdeX")
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // A deleted function's series go with it.
    server.cli_ok(&["rm", "hello"]);
    let text = scrape(&server).await;
    assert!(!text.contains("function=\"hello\""), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_stay_bounded_whatever_the_paths_keys_and_invocations() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.deploy_guest("chaos", "http-chaos", "route = \"/chaos/...\"");
    server.deploy_guest(
        "counter",
        "counter-rust",
        "route = \"/counter\"\nkey_value_stores = [\"default\"]",
    );
    let mut ids = BTreeSet::new();
    for i in 0..40 {
        let response = client()
            .get(server.url(&format!("/chaos/count/{i}?q=x{i}")))
            .send()
            .await
            .unwrap();
        ids.insert(
            response.headers()["updraft-invocation-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        client()
            .get(server.url(&format!("/counter?key=k{i}")))
            .send()
            .await
            .unwrap();
    }
    // Redeployed: a second version, its own series.
    server.deploy_guest(
        "chaos",
        "http-chaos",
        "route = \"/chaos/...\"\ntimeout_ms = 9000",
    );
    client()
        .get(server.url("/chaos/count"))
        .send()
        .await
        .unwrap();

    let text = scrape(&server).await;
    let allowed: BTreeSet<&str> = [
        "tenant", "function", "version", "code", "start", "state", "queue", "le",
    ]
    .into();
    let mut per_family: BTreeMap<String, BTreeSet<Vec<(String, String)>>> = BTreeMap::new();
    for series in samples(&text).keys() {
        let name = series.split('{').next().unwrap().to_string();
        let labels = labels(series);
        for (label, value) in &labels {
            assert!(
                allowed.contains(label.as_str()),
                "unexpected label {label} in {series}"
            );
            assert!(
                !ids.contains(value),
                "an invocation id as a label: {series}"
            );
            assert!(
                !value.contains('/') && !value.contains("k1") && !value.contains('?'),
                "a path or key as a label: {series}"
            );
        }
        per_family.entry(name).or_default().insert(labels);
    }
    // One series per function version, however many requests.
    let invocations = &per_family["updraft_function_invocations_total"];
    let versions: BTreeSet<(String, String)> = invocations
        .iter()
        .map(|labels| {
            let get = |n: &str| labels.iter().find(|(k, _)| k == n).unwrap().1.clone();
            (get("function"), get("version"))
        })
        .collect();
    assert_eq!(
        versions,
        [("chaos", "1"), ("chaos", "2"), ("counter", "1")]
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .into(),
        "{text}"
    );
    let histogram_series = per_family["updraft_function_duration_seconds_bucket"].len();
    assert_eq!(histogram_series, 3 * 18, "3 versions × 18 buckets: {text}");
    let kv_ops = samples(&text)
        .iter()
        .filter(|(k, _)| {
            k.starts_with("updraft_function_kv_operations_total{") && k.contains("counter")
        })
        .map(|(_, v)| *v)
        .sum::<f64>();
    assert!(
        kv_ops >= 40.0,
        "the counter's key-value operations are counted: {text}"
    );
}
