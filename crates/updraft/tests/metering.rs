//! Metering end to end: one durable usage record per invocation, billed
//! time rounded up to the millisecond, a bill that the raw records
//! reproduce to the cent, budgets that warn at 80% and refuse at 100%, and
//! the CLI's usage, bill and cost estimate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

async fn records(server: &Server, query: &str) -> Vec<Value> {
    server.usage_records(query).await
}

fn u(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

/// Each line's amount of a bill, in cents.
fn amounts(bill: &Value) -> Vec<u64> {
    bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| u(l, "amount_cents"))
        .collect()
}

fn is_storage(r: &Value) -> bool {
    r["trigger"] == "storage"
}

/// A field that invocation records always have and storage samples only
/// when it is not zero.
fn n(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or(0)
}

/// The bill's arithmetic, written again from the documented price sheet:
/// integer sums × price in picodollars, each line rounded to the cent.
/// Storage samples add byte-hours (rounded down per sample), invocations
/// the rest.
fn recompute_cents(records: &[Value], prices: &Value) -> Vec<u64> {
    let invocations: Vec<&Value> = records.iter().filter(|r| !is_storage(r)).collect();
    let sum = |field: &str| {
        invocations
            .iter()
            .map(|r| u128::from(u(r, field)))
            .sum::<u128>()
    };
    // Left out of a record when 0.
    let opt_sum = |field: &str| {
        invocations
            .iter()
            .map(|r| u128::from(n(r, field)))
            .sum::<u128>()
    };
    let mb_ms: u128 = invocations
        .iter()
        .map(|r| u128::from(u(r, "memory_mb")) * u128::from(u(r, "billed_ms")))
        .sum();
    let byte_hours = |field: &str| {
        records
            .iter()
            .filter(|r| is_storage(r))
            .map(|r| u128::from(n(r, field)) * u128::from(u(r, "stored_secs")) / 3600)
            .sum::<u128>()
    };
    let pico = |name: &str| (prices[name].as_f64().unwrap() * 1e12).round() as u128;
    let cents = |p: u128| ((p + 5_000_000_000) / 10_000_000_000) as u64;
    let gib_month = (1u128 << 30) * 730;
    vec![
        cents(invocations.len() as u128 * pico("requests_per_million") / 1_000_000),
        cents(mb_ms * pico("gb_second") / 1_024_000),
        cents(sum("kv_ops") * pico("kv_ops_per_million") / 1_000_000),
        cents(sum("blob_ops") * pico("blob_ops_per_million") / 1_000_000),
        cents(sum("bytes_out") * pico("gb_out") / (1 << 30)),
        cents(byte_hours("kv_stored_bytes") * pico("kv_gb_month") / gib_month),
        cents(byte_hours("blob_stored_bytes") * pico("blob_gb_month") / gib_month),
        cents(opt_sum("outbound_requests") * pico("outbound_requests_per_million") / 1_000_000),
        cents(opt_sum("outbound_bytes") * pico("gb_out") / (1 << 30)),
    ]
}

/// A server with `prices` as its `[prices]`; returns it and its data dir.
fn start_priced(
    dir: &std::path::Path,
    prices: &str,
) -> (Server, std::path::PathBuf, std::path::PathBuf) {
    let config = dir.join("server.toml");
    std::fs::write(&config, format!("[prices]\n{prices}")).unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start_with(&data, &["--config", config.to_str().unwrap()]);
    (server, data, config)
}

/// One cent per invocation, nothing else.
const CENT_PER_INVOCATION: &str = "requests_per_million = 10000\ngb_second = 0\n\
    kv_ops_per_million = 0\nblob_ops_per_million = 0\ngb_out = 0\n\
    kv_gb_month = 0\nblob_gb_month = 0\n";

#[tokio::test(flavor = "multi_thread")]
async fn every_invocation_is_metered_and_the_bill_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    // Prices high enough that every line of the bill has cents in it.
    let (server, data, config) = start_priced(
        dir.path(),
        "requests_per_million = 1234.5\ngb_second = 0.25\nkv_ops_per_million = 999\n\
         blob_ops_per_million = 5000\ngb_out = 2000\n",
    );
    server.deploy_guest("hello", "hello-rust", "route = \"/hello\"");
    server.deploy_guest("wc", "wordcount-c", "route = \"/wc\"\nmemory_mb = 64");
    server.deploy_guest(
        "counter",
        "counter-rust",
        "route = \"/counter\"\nkey_value_stores = [\"default\"]\nmemory_mb = 256",
    );
    server.deploy_guest("chaos", "http-chaos", "route = \"/chaos/...\"");

    // A load of 400 invocations, 32 at a time, of four kinds; some fail.
    let paths = ["/hello", "/wc", "/counter", "/chaos/trap"];
    let http = client();
    let mut expected: HashMap<&str, u64> = HashMap::new();
    let mut tasks = Vec::new();
    for i in 0..400usize {
        let path = paths[i % paths.len()];
        *expected.entry(path).or_default() += 1;
        let request = if path == "/wc" {
            http.post(server.url(path)).body("one two three")
        } else {
            http.get(server.url(path))
        };
        tasks.push(request.send());
        if tasks.len() == 32 {
            for r in futures::future::join_all(tasks.drain(..)).await {
                r.unwrap();
            }
        }
    }
    for r in futures::future::join_all(tasks).await {
        r.unwrap();
    }
    // And two through the API.
    for _ in 0..2 {
        let r = server
            .api()
            .post(server.url("/v1/functions/hello/invoke"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    let with_samples = records(&server, "").await;
    // A storage sample is taken on the hour: this run may cross one.
    let all: Vec<Value> = with_samples
        .iter()
        .filter(|r| !is_storage(r))
        .cloned()
        .collect();
    assert_eq!(all.len(), 402, "one record per invocation");
    let ids: std::collections::HashSet<&str> = all
        .iter()
        .map(|r| r["invocation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 402, "no record twice");
    let by_function = |name: &'static str| all.iter().filter(move |r| r["function"] == name);
    assert_eq!(by_function("hello").count(), 102);
    assert_eq!(by_function("chaos").count() as u64, expected["/chaos/trap"]);
    assert_eq!(
        by_function("hello")
            .filter(|r| r["trigger"] == "api")
            .count(),
        2
    );
    for r in &all {
        // Billed time is the wall time rounded up to whole milliseconds.
        let wall_us = u(r, "wall_us");
        assert_eq!(u(r, "billed_ms"), wall_us.div_ceil(1000).max(1), "{r}");
        assert!(u(r, "billed_ms") * 1000 >= wall_us);
        assert_eq!(r["tenant"], "local");
    }
    for r in by_function("hello") {
        assert!(r["error"].is_null());
        assert_eq!(
            u(r, "bytes_out"),
            "Hello from Updraft (Rust)!\n".len() as u64,
            "{r}"
        );
        assert_eq!(u(r, "memory_mb"), 128);
    }
    for r in by_function("wc") {
        assert_eq!((u(r, "bytes_in"), u(r, "memory_mb")), (13, 64), "{r}");
        assert_eq!(u(r, "bytes_out"), "0 3 13\n".len() as u64, "{r}");
    }
    for r in by_function("counter") {
        assert!(u(r, "kv_ops") >= 1, "{r}");
        assert!(u(r, "cpu_us") > 0, "{r}");
    }
    for r in by_function("chaos") {
        assert_eq!(r["error"], "trap", "{r}");
    }

    // The bill, recomputed here from the raw records, matches to the cent.
    let prices = server.get_json("/v1/prices").await;
    let bill = server.get_json("/v1/bill").await;
    let lines = amounts(&bill);
    assert_eq!(lines, recompute_cents(&with_samples, &prices), "{bill}");
    assert_eq!(u(&bill, "total_cents"), lines.iter().sum::<u64>());
    assert!(lines[..5].iter().all(|&c| c > 0) || lines[3] == 0, "{bill}");
    let from_records = server.get_json("/v1/bill?source=records").await;
    assert_eq!(from_records["lines"], bill["lines"]);

    // Usage by function adds up to the same.
    let usage = server.get_json("/v1/usage?group_by=function").await;
    let rows: Vec<&Value> = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["key"] != "(storage)")
        .collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(u(&usage["total"], "invocations"), 402);
    let hourly = server.get_json("/v1/usage?group_by=hour").await;
    assert_eq!(u(&hourly["total"], "invocations"), 402);

    // Records are durable: after a restart the bill is the same.
    drop(server);
    let server = Server::start_with(&data, &["--config", config.to_str().unwrap()]);
    let again = server.get_json("/v1/bill").await;
    assert_eq!(again["lines"], bill["lines"]);

    // The CLI shows the same numbers.
    let table = server.cli_ok(&["usage"]);
    assert!(
        table.contains("counter") && table.contains("total"),
        "{table}"
    );
    let printed = server.cli_ok(&["bill"]);
    let total = u(&bill, "total_cents");
    assert!(
        printed.contains(&format!("total ${}.{:02}", total / 100, total % 100)),
        "{printed}"
    );
    let estimate = server.cli_ok(&["--json", "cost", "estimate", "--from-usage", "1"]);
    let estimate: Value = serde_json::from_str(&estimate).unwrap();
    assert!(
        estimate["monthly_usd"].as_f64().unwrap() > 0.0,
        "{estimate}"
    );

    // Records page: 100 at a time, in start order, none lost or repeated.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("?limit=100&cursor={c}"),
            None => "?limit=100".to_string(),
        };
        let request = server
            .api()
            .get(server.url(&format!("/v1/usage/records{query}")));
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 200);
        cursor = r
            .headers()
            .get("updraft-next-cursor")
            .map(|v| v.to_str().unwrap().to_string());
        let page: Vec<Value> = r
            .text()
            .await
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(page.len() <= 100);
        paged.extend(page);
        if cursor.is_none() {
            break;
        }
    }
    let ids = |rs: &[Value]| -> Vec<String> {
        rs.iter()
            .filter(|r| !is_storage(r))
            .map(|r| r["invocation_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&paged), ids(&with_samples), "pages = the whole list");

    // Bad input: clear errors, in the API's JSON shape.
    for (path, code) in [
        ("/v1/usage?group_by=minute", "bad_request"),
        ("/v1/usage?from=yesterday", "bad_request"),
        ("/v1/usage?from=2026-02-01&to=2026-01-01", "bad_request"),
        ("/v1/usage?colour=blue", "bad_request"),
        ("/v1/bill?month=2026-13", "bad_request"),
        ("/v1/usage/records?limit=0", "bad_request"),
        ("/v1/usage/records?limit=many", "bad_request"),
        ("/v1/usage/records?cursor=nonsense", "bad_request"),
        ("/v1/functions/hello/dlq?limit=abc", "bad_request"),
    ] {
        let r = server.api().get(server.url(path)).send().await.unwrap();
        let message = expect_error(r, 400, code).await;
        assert!(!message.is_empty(), "{path}");
    }
}

/// What each tenant stores is sampled (here every second) into storage
/// records; the bill charges their byte-hours per GB-month, and the raw
/// records reproduce it to the cent.
#[tokio::test(flavor = "multi_thread")]
async fn stored_bytes_are_sampled_and_billed_per_gb_month() {
    let dir = tempfile::tempdir().unwrap();
    // Storage so dear that a second of a megabyte costs cents.
    let prices = "requests_per_million = 0\ngb_second = 0\nkv_ops_per_million = 0\n\
        blob_ops_per_million = 0\ngb_out = 0\nkv_gb_month = 1e9\nblob_gb_month = 2e9\n";
    let config = dir.path().join("server.toml");
    let data = dir.path().join("data");
    let write_config = |sample_secs: u64| {
        std::fs::write(
            &config,
            format!("[metering]\nstorage_sample_secs = {sample_secs}\n[prices]\n{prices}"),
        )
        .unwrap()
    };
    write_config(1);
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start_with(&data, &["--config", config.to_str().unwrap()]);
    let stores = "key_value_stores = [\"default\"]\nblob_containers = [\"files\"]";
    server.deploy_guest("hello", "hello-rust", stores);
    let acme = server.cli_ok(&["keys", "create", "--tenant", "acme"]);
    let acme = acme.trim().to_string();
    let manifest = server.write_manifest("hello", "hello-rust", stores);
    assert!(
        server
            .cli_as(&acme, &["deploy", manifest.to_str().unwrap()])
            .status
            .success()
    );

    // local: 300 KB of values under two keys and a 1 MiB blob; acme: a
    // 2 MiB blob and nothing in key-value.
    let put = |key: &str, path: &str, body: Vec<u8>| {
        client_with_key(key).put(server.url(path)).body(body).send()
    };
    let admin = server.admin_key.clone();
    for (path, len) in [
        ("/v1/kv/default/a", 100_000),
        ("/v1/kv/default/bb", 200_000),
    ] {
        assert!(
            put(&admin, path, vec![7; len])
                .await
                .unwrap()
                .status()
                .is_success()
        );
    }
    let r = put(&admin, "/v1/blobs/files/one", vec![1; 1 << 20])
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = put(&acme, "/v1/blobs/files/two", vec![2; 2 << 20])
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let kv_bytes = 1 + 100_000 + 2 + 200_000;

    // Wait for two samples that see all of it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let full =
        |r: &&Value| n(r, "kv_stored_bytes") == kv_bytes && n(r, "blob_stored_bytes") == 1 << 20;
    while records(&server, "").await.iter().filter(full).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "no storage samples");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // No more samples from here on: restart with a daily interval.
    drop(server);
    write_config(86_400);
    let server = Server::start_with(&data, &["--config", config.to_str().unwrap()]);

    let local = records(&server, "").await;
    assert!(local.iter().all(is_storage), "no invocation ran");
    for r in &local {
        assert_eq!(
            (r["function"].as_str(), u(r, "stored_secs")),
            (Some("(storage)"), 1),
            "{r}"
        );
        assert!(n(r, "kv_stored_bytes") <= kv_bytes, "{r}");
    }
    let theirs = records(&server, "?tenant=acme").await;
    assert!(!theirs.is_empty());
    for r in &theirs {
        assert_eq!(
            (n(r, "kv_stored_bytes"), n(r, "blob_stored_bytes")),
            (0, 2 << 20),
            "{r}"
        );
    }

    // The bill's storage lines, recomputed from the samples, to the cent.
    let price_sheet = server.get_json("/v1/prices").await;
    for (tenant, samples) in [("local", &local), ("acme", &theirs)] {
        let bill = server.get_json(&format!("/v1/bill?tenant={tenant}")).await;
        let lines = amounts(&bill);
        assert_eq!(lines, recompute_cents(samples, &price_sheet), "{bill}");
        assert!(lines[6] > 0, "blob storage is charged: {bill}");
        let from_records = server
            .get_json(&format!("/v1/bill?tenant={tenant}&source=records"))
            .await;
        assert_eq!(from_records["lines"], bill["lines"]);
        let item = &bill["lines"][6];
        assert_eq!(
            (item["item"].as_str(), item["unit"].as_str()),
            (Some("blob storage"), Some("per GB-month"))
        );
    }
    let usage = server.get_json("/v1/usage").await;
    let row = &usage["rows"][0];
    assert_eq!(
        (row["key"].as_str(), u(row, "invocations")),
        (Some("(storage)"), 0),
        "{usage}"
    );
    assert!(u(&usage["total"], "kv_byte_hours") > 0, "{usage}");
    let table = server.cli_ok(&["usage"]);
    assert!(
        table.contains("(storage)") && table.contains("STORED_GB_MO"),
        "{table}"
    );

    // A bad interval is refused at start-up, naming the key.
    write_config(0);
    let out = std::process::Command::new(bin())
        .args([
            "up",
            "--data-dir",
            data.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("storage_sample_secs"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_warns_at_80_percent_and_stops_at_100() {
    let dir = tempfile::tempdir().unwrap();
    let (server, data, config) = start_priced(dir.path(), CENT_PER_INVOCATION);
    let acme = server.cli_ok(&["keys", "create", "--tenant", "acme"]);
    let acme = acme.trim();
    let manifest = server.write_manifest("hello", "hello-rust", "route = \"/hello\"");
    let out = server.cli_as(acme, &["deploy", manifest.to_str().unwrap()]);
    assert!(out.status.success());
    server.deploy_guest("hello", "hello-rust", "route = \"/hello\"");
    let out = server.cli_as(acme, &["budget", "set", "0.10"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let http = client();
    let url = server.url("/~acme/hello");
    for i in 1..=10 {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "invocation {i}");
    }
    // The tenth spent the budget. Its usage is recorded when both the
    // guest and the response body are done, which on a busy machine may
    // trail the client's read of the last byte: wait for the record.
    wait_until(
        "the tenth invocation's usage recorded",
        Duration::from_secs(30),
        Duration::from_millis(10),
        || async {
            let out = server.cli_as(acme, &["--json", "budget", "show"]);
            let status: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            match status["exceeded"].as_bool() {
                Some(true) => Ok(()),
                _ => Err(status.to_string()),
            }
        },
    )
    .await;
    // Then the very next invocation is refused.
    let r = http.get(&url).send().await.unwrap();
    let message = expect_error(r, 402, "budget_exceeded").await;
    assert!(
        message.contains("$0.10") && message.contains("budget"),
        "{message}"
    );
    let r = client_with_key(acme)
        .post(server.url("/v1/functions/hello/invoke"))
        .send()
        .await
        .unwrap();
    expect_error(r, 402, "budget_exceeded").await;
    // Refused invocations are not billed; other tenants go on.
    assert_eq!(
        http.get(server.url("/hello"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let status: Value = serde_json::from_str(
        &String::from_utf8(server.cli_as(acme, &["--json", "budget", "show"]).stdout).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (u(&status, "spent_cents"), status["exceeded"].as_bool()),
        (10, Some(true))
    );

    // The warning at 80% and the stop are in the function's logs.
    let logs = String::from_utf8(server.cli_as(acme, &["logs", "hello"]).stdout).unwrap();
    assert!(
        logs.contains("budget warning") && logs.contains("80%"),
        "{logs}"
    );
    assert!(logs.contains("budget spent"), "{logs}");

    // Tenants see only their own usage and budget.
    let r = client_with_key(acme)
        .get(server.url("/v1/usage?tenant=local"))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "forbidden").await;
    let mine = server.get_json_as(acme, "/v1/usage").await;
    assert_eq!(u(&mine["total"], "invocations"), 10);
    let local = server.get_json("/v1/usage").await;
    assert_eq!(u(&local["total"], "invocations"), 1);

    // A restart keeps the stop; raising the budget lifts it.
    drop(server);
    let server = Server::start_with(&data, &["--config", config.to_str().unwrap()]);
    let r = client()
        .get(server.url("/~acme/hello"))
        .send()
        .await
        .unwrap();
    expect_error(r, 402, "budget_exceeded").await;
    assert!(
        server
            .cli_as(acme, &["budget", "set", "1"])
            .status
            .success()
    );
    let r = client()
        .get(server.url("/~acme/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn cost_estimate_finds_the_break_even() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let estimate = |extra: &[&str]| {
        let mut args = vec![
            "cost",
            "estimate",
            "--rps",
            "10",
            "--duration-ms",
            "100",
            "--server-usd-per-hour",
            "0.10",
        ];
        args.extend_from_slice(extra);
        server.cli_ok(&args)
    };
    let out = estimate(&["--memory-mb", "128"]);
    // 26.28M requests × $0.000000408 = $10.73; $73/month ÷ that = 68 req/s.
    assert!(
        out.contains("26280000 requests a month cost $10.73 in all"),
        "{out}"
    );
    assert!(out.contains("cheaper above 68.0 req/s"), "{out}");
    // Stored data costs the same at any rate: 10 GiB of key-value data is
    // $2.50 a month, so the server wins from a lower rate.
    let out = estimate(&["--kv-stored-gb", "10"]);
    assert!(
        out.contains("cost $2.50 a month") && out.contains("cost $13.23 in all"),
        "{out}"
    );
    assert!(out.contains("cheaper above 65.7 req/s"), "{out}");
    let out = server.cli(&["cost", "estimate"]);
    assert!(!out.status.success());
}

/// With a `budget-alerts` topic, the 80% warning and the stop reach its
/// subscribers as CloudEvents.
#[tokio::test(flavor = "multi_thread")]
async fn budget_events_are_published_on_the_budget_topic() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _data, _config) = start_priced(dir.path(), CENT_PER_INVOCATION);
    server.cli_ok(&["topics", "create", "budget-alerts"]);
    // The subscriber counts each event under its id.
    server.deploy_guest(
        "alerts",
        "counter-rust",
        "key_value_stores = [\"default\"]\n[env]\nCOUNTER_PREFIX = \"alert/\"\n\
         [[trigger]]\ntopic = \"budget-alerts\"",
    );
    server.deploy_guest("hello", "hello-rust", "route = \"/hello\"");
    server.cli_ok(&["budget", "set", "0.10"]);
    let month = server.get_json("/v1/budget").await["month"]
        .as_str()
        .unwrap()
        .to_string();
    let http = client();
    // 8 cents: the warning (the subscriber's own run costs a cent too).
    for _ in 0..8 {
        assert_eq!(
            http.get(server.url("/hello"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let warning = format!("alert/budget-warning-{month}");
    server.wait_for_key(&warning).await;
    assert_eq!(server.cli_ok(&["kv", "get", "default", &warning]), "1");
    // Spend the rest: the stop is published too.
    spend_the_budget(&server).await;
    // Its delivery was refused, the budget being spent: dead-lettered at
    // once (retrying cannot help); raising the budget and redriving
    // delivers it.
    let dead = server.wait_for_dead_letter("alerts").await;
    assert!(dead["error"].as_str().unwrap().contains("budget"), "{dead}");
    server.cli_ok(&["budget", "set", "1"]);
    server.cli_ok(&["dlq", "redrive", "alerts"]);
    server
        .wait_for_key(&format!("alert/budget-exceeded-{month}"))
        .await;
}

/// A delivery that cannot succeed however often it is tried (here: the
/// tenant's budget is spent) goes to the dead letters on its first
/// attempt, with the reason; it is not retried until `max_attempts`.
#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_failure_dead_letters_on_its_first_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _data, _config) = start_priced(dir.path(), CENT_PER_INVOCATION);
    // A message waits in a queue that nobody consumes yet.
    server.cli_ok(&["queues", "create", "jobs"]);
    server.cli_ok(&["publish", "jobs", "-d", "job 1"]);
    // The budget is spent before any consumer exists.
    server.deploy_guest("hello", "hello-rust", "route = \"/hello\"");
    server.cli_ok(&["budget", "set", "0.02"]);
    spend_the_budget(&server).await;
    server.deploy_guest(
        "worker",
        "hello-rust",
        "[[trigger]]\nqueue = \"jobs\"\n[retry]\nmax_attempts = 10",
    );
    let dead = server.wait_for_dead_letter("worker").await;
    assert_eq!(dead["attempts"], 1, "{dead}");
    let error = dead["error"].as_str().unwrap();
    assert!(
        error.contains("budget") && error.contains("not retried"),
        "{error}"
    );
    let logs = server.cli_ok(&["logs", "worker"]);
    assert!(logs.contains("attempt 1 of 10"), "{logs}");
}

/// Calls `/hello` until the budget refuses it.
async fn spend_the_budget(server: &Server) {
    let http = client();
    for _ in 0..10_000 {
        let status = http
            .get(server.url("/hello"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 402 {
            return;
        }
        assert_eq!(status, 200);
    }
    panic!("the budget never ran out");
}
