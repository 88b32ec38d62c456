//! A function's `max_concurrency`: past it, a request waits at most
//! `queue_timeout_ms`, then gets 429 with `Retry-After`; async work past it
//! waits its turn and completes without losing an attempt; another
//! function is not held up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn past_max_concurrency_requests_get_429_and_async_work_waits_its_turn() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    // One attempt only: an async invocation refused for want of a slot must
    // not spend it, or it would be dead-lettered.
    server.deploy_guest(
        "slow",
        "http-chaos",
        "route = \"/slow\"\nmax_concurrency = 2\nqueue_timeout_ms = 100\n\
         timeout_ms = 60000\n[retry]\nmax_attempts = 1",
    );
    server.deploy_guest("other", "http-chaos", "route = \"/other\"");
    let client = client();

    // Two long requests hold both slots.
    let holds: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/slow?ms=4000"));
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    // A third is turned away once both are running.
    let refused = refused(&client, &server.url("/slow?ms=1")).await;
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let message = expect_error(refused, 429, "concurrency_limit").await;
    assert!(message.contains("max_concurrency"), "{message}");

    // Async invocations arrive while the slots are held: they wait.
    let mut ids = Vec::new();
    for _ in 0..4 {
        let accepted = server
            .post_json("/v1/functions/slow/invoke?mode=async")
            .await;
        ids.push(accepted["id"].as_str().expect("accepted").to_string());
    }
    // Another function is served meanwhile.
    let r = client.get(server.url("/other")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    for hold in holds {
        assert_eq!(hold.await.unwrap(), 200);
    }
    for id in &ids {
        let status = server.wait_for_invocation(id, &["succeeded", "dead"]).await;
        assert_eq!(status["status"], "succeeded", "{status}");
        assert_eq!(status["attempts"], 1, "{status}");
    }
}

/// A tenant's quota, set by an admin: past its concurrency a request gets
/// 429 `tenant_concurrency_limit`, past its rate `tenant_rate_limit`;
/// another tenant is served meanwhile, and a tenant cannot set its own.
#[tokio::test(flavor = "multi_thread")]
async fn tenant_quotas_turn_the_excess_away_and_spare_other_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let bravo = server.cli_ok(&["keys", "create", "--tenant", "bravo"]);
    let bravo = bravo.trim();
    let manifest = server.write_manifest(
        "slow",
        "http-chaos",
        "route = \"/slow\"\nqueue_timeout_ms = 100",
    );
    let out = server.cli_as(bravo, &["deploy", manifest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.deploy_guest("other", "http-chaos", "route = \"/other\"");
    let client = client();

    // Only an admin sets it; the tenant reads its own.
    let out = server.cli_as(bravo, &["quota", "set", "--concurrency", "5"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only an admin key"));
    // A misspelt or out-of-range quota is refused, and changes nothing.
    for (body, says) in [
        (r#"{"concurrency": 5}"#, "unknown field `concurrency`"),
        (r#"{"max_concurrency": 0}"#, "max_concurrency must be 1 to"),
    ] {
        let r = server
            .api()
            .put(server.url("/v1/quota?tenant=bravo"))
            .body(body)
            .send()
            .await
            .unwrap();
        let message = expect_error(r, 400, "bad_request").await;
        assert!(message.contains(says), "{message}");
    }
    assert_eq!(
        server.get_json("/v1/quota?tenant=bravo").await,
        serde_json::json!({})
    );
    server.cli_ok(&["quota", "set", "--tenant", "bravo", "--concurrency", "1"]);
    let out = server.cli_as(bravo, &["quota", "show"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("1 invocations at once"), "{shown}");

    // One long request holds bravo's one slot; the next is turned away.
    let hold = {
        let (client, url) = (client.clone(), server.url("/~bravo/slow?ms=3000"));
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    };
    let refused = refused(&client, &server.url("/~bravo/slow?ms=1")).await;
    assert!(refused.headers().contains_key("retry-after"));
    expect_error(refused, 429, "tenant_concurrency_limit").await;
    // The local tenant is not held up.
    let r = client.get(server.url("/other")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hold.await.unwrap(), 200);

    // A rate: of 20 requests at once, some are turned away.
    server.cli_ok(&["quota", "set", "--tenant", "bravo", "--rps", "1"]);
    let statuses = burst(&client, &server.url("/~bravo/slow?ms=1"), 20).await;
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");

    // A memory quota: an instance growing past it is refused, naming it.
    let manifest = server.write_manifest("alloc", "http-chaos", "route = \"/alloc/...\"");
    let out = server.cli_as(bravo, &["deploy", manifest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.cli_ok(&["quota", "set", "--tenant", "bravo", "--memory-mb", "64"]);
    let r = client
        .get(server.url("/~bravo/alloc/alloc?mb=100"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("retry-after"));
    let message = expect_error(r, 429, "tenant_memory_limit").await;
    assert!(message.contains("memory quota of 64 MiB"), "{message}");
    let r = client
        .get(server.url("/~bravo/alloc/alloc?mb=8"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Removed: no limits.
    server.cli_ok(&["quota", "rm", "--tenant", "bravo"]);
    let statuses = burst(&client, &server.url("/~bravo/slow?ms=1"), 20).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

/// Past saturation a function that floods the CPU is shed: the excess gets
/// 429 `overloaded` with `Retry-After` at once, another tenant's function
/// is served meanwhile, and async work refused for want of CPU is not
/// dropped. One background thread, so the flood's queue is as long on any
/// machine.
#[tokio::test(flavor = "multi_thread")]
async fn past_saturation_a_flooding_function_is_shed_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("updraft.toml");
    std::fs::write(&config, "[cpu]\nbackground_threads = 1\n").unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let bravo = server.cli_ok(&["keys", "create", "--tenant", "bravo"]);
    let bravo = bravo.trim();
    let manifest = server.write_manifest(
        "cpu",
        "http-chaos",
        "route = \"/cpu\"\ntimeout_ms = 20000\n[retry]\nmax_attempts = 1",
    );
    let out = server.cli_as(bravo, &["deploy", manifest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.deploy_guest("other", "http-chaos", "route = \"/other\"");
    let client = client();

    // One first: how much CPU it takes sets how long its queue may grow
    // (a tenth of its timeout: 2 s over its ~250 one-millisecond slices).
    let r = client
        .get(server.url("/~bravo/cpu?n=80000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A flood: each request a quarter of a second or so of CPU, all at once.
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/~bravo/cpu?n=80000000"));
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    // Their polls queue for the background thread: more are refused.
    let refused = refused(&client, &server.url("/~bravo/cpu?n=1")).await;
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let message = expect_error(refused, 429, "overloaded").await;
    assert!(message.contains("CPU keeps up with"), "{message}");
    // Another tenant's function is not shed.
    let r = client.get(server.url("/other")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Async work of the flooded function waits for capacity, not dropped.
    let accepted: serde_json::Value = client_with_key(bravo)
        .post(server.url("/v1/functions/cpu/invoke?mode=async"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().expect("accepted").to_string();
    // What was admitted runs to its end (a machine slow to send the
    // flood may see its last requests shed too).
    let mut statuses = Vec::new();
    for request in flood {
        statuses.push(request.await.unwrap().as_u16());
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [200, 429].contains(s)),
        "{statuses:?}"
    );
    let status = wait_until(
        "the async invocation to finish",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            let status = server
                .get_json_as(bravo, &format!("/v1/invocations/{id}"))
                .await;
            match status["status"].as_str() {
                Some("succeeded" | "dead") => Ok(status),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(status["attempts"], 1, "{status}");
    // Once the flood has drained, the function is served again.
    let r = client
        .get(server.url("/~bravo/cpu?n=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Six 1 GiB invocations against a 4 GiB memory budget: those past it
/// wait for memory, then get 503 `memory_busy` saying so; the server's RSS
/// stays under the budget plus the process's own, and goes back down
/// within 5 s of the end.
#[tokio::test(flavor = "multi_thread")]
async fn past_the_memory_budget_invocations_are_refused_and_rss_stays_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("updraft.toml");
    std::fs::write(&config, "[memory]\nbudget_mb = 4096\n").unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    server.deploy_guest(
        "big",
        "http-chaos",
        "route = \"/big/...\"\nmemory_mb = 1100\ntimeout_ms = 30000",
    );
    let client = client();
    let pid = server.child.id();
    let before = rss_mb(pid);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mb(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/big/alloc?mb=1024&ms=2000"));
            tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    assert!((1..=3).contains(&ok), "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(error_code(body), "memory_busy", "{body}");
        assert!(
            error_message(body).contains("memory budget of 4096 MiB"),
            "{body}"
        );
    }
    // The budget, plus the process itself (its code, caches, the pool's
    // kept pages): a margin of 256 MiB.
    assert!(
        peak < 4096 + 256 + before,
        "peak RSS {peak} MiB (before: {before} MiB)"
    );
    let ended = std::time::Instant::now();
    let after = wait_until(
        "the memory given back",
        WAIT_MAX,
        Duration::from_millis(50),
        || async {
            let now = rss_mb(pid);
            if now < before + 256 {
                Ok(now)
            } else {
                Err(format!("RSS {now} MiB, {before} MiB before"))
            }
        },
    )
    .await;
    // For BENCHMARKS.md ("Memory budget"), with --nocapture.
    eprintln!(
        "budget 4096 MiB, six 1 GiB invocations: {ok} answered 200; RSS {before} MiB before, \
         {peak} MiB at the peak, {after} MiB {} ms after the last answer",
        ended.elapsed().as_millis()
    );
}

/// The resident memory of process `pid`, in MiB.
fn rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb / 1024
}

/// Requests of the flood: on one background thread each slice waits for
/// the others' turns (~23 ms), past the ~8 ms that threatens the deadline.
const FLOOD: usize = 24;

/// `n` requests to `url` at once; their statuses.
async fn burst(client: &reqwest::Client, url: &str, n: usize) -> Vec<u16> {
    let requests =
        (0..n).map(|_| async { client.get(url).send().await.unwrap().status().as_u16() });
    futures::future::join_all(requests).await
}

/// The first answer 429 to `url`, asked until the slots it waits for are
/// taken (the requests holding them may still be on their way).
async fn refused(client: &reqwest::Client, url: &str) -> reqwest::Response {
    wait_until(
        "a request past the limit refused",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async {
            let r = client.get(url).send().await.map_err(|e| e.to_string())?;
            if r.status() == 429 {
                Ok(r)
            } else {
                Err(format!("answered {}", r.status()))
            }
        },
    )
    .await
}
