//! A full disk, for real: the data dir on a small tmpfs, filled to the
//! last byte. Writes are refused with a message saying the disk is full,
//! reads go on, and once space is freed key-value writes, async
//! invocations, metering and deploys all work again without a restart;
//! nothing acknowledged is lost.
//!
//! Mounting needs root (CI runs as root); elsewhere the test says it was
//! skipped, by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The tmpfs: room for the server's files and some data, small enough to
/// fill in a moment.
const DISK_MB: u64 = 96;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let size = format!("size={DISK_MB}m,mode=0700");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with one file until the disk refuses a
/// byte; returns the file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    top_up(&path);
    path
}

/// Grows `filler` until the disk refuses a byte again: the server frees
/// some space by itself (a journal file synced and deleted).
fn top_up(filler: &Path) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(filler)
        .unwrap();
    for chunk in [1 << 20, 4096, 1] {
        let bytes = vec![0u8; chunk];
        while file.write_all(&bytes).is_ok() {}
    }
}

/// A manifest of `guest_name` using the store `default`.
fn manifest(dir: &Path, name: &str, guest_name: &str, route: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "name = \"{name}\"\nsource = \"{}\"\nroute = \"{route}\"\nkey_value_stores = [\"default\"]\n",
        guest(guest_name).display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Sends a sync invocation; returns its status and invocation id.
async fn call(server: &Server, path: &str) -> (u16, String) {
    let response = client().get(server.url(path)).send().await.unwrap();
    let id = response
        .headers()
        .get("updraft-invocation-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (response.status().as_u16(), id)
}

async fn usage_ids(server: &Server) -> BTreeSet<String> {
    let records = server.usage_records("").await;
    records
        .iter()
        .map(|r| r["invocation_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_everything_recovers_without_a_restart() {
    full_disk(
        "a_full_disk_refuses_writes_and_everything_recovers_without_a_restart",
        "disk",
    )
    .await;
}

/// The same with key-value writes acknowledged after a journal write: the
/// ones in memory when the disk filled are committed once it has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_no_key_value_write_acknowledged_at_process_durability() {
    full_disk(
        "a_full_disk_loses_no_key_value_write_acknowledged_at_process_durability",
        "process",
    )
    .await;
}

async fn full_disk(test: &str, durability: &str) {
    if cluster_mode() {
        eprintln!("skipped: {test}: the disk filled is the embedded backends' own");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&scratch.path().join("disk")) else {
        eprintln!("skipped: {test} (mounting a tmpfs needs root)");
        return;
    };
    let data = disk.0.join("data");
    let manifests = scratch.path();
    let config = manifests.join("server.toml");
    std::fs::write(
        &config,
        format!("[kv]\ntype = \"embedded\"\ndurability = \"{durability}\"\n"),
    )
    .unwrap();
    let server = Server::start_with(&data, &["--config", config.to_str().unwrap()]);
    server.cli_ok(&[
        "deploy",
        manifest(manifests, "counter", "counter-rust", "/counter")
            .to_str()
            .unwrap(),
    ]);
    let api = server.api();
    let put = |key: &str, value: Vec<u8>| {
        api.put(server.url(&format!("/v1/kv/default/{key}")))
            .body(value)
            .send()
    };
    assert_eq!(put("before", b"kept".to_vec()).await.unwrap().status(), 204);
    let mut served = BTreeSet::new();
    let (status, id) = call(&server, "/counter?key=sync").await;
    assert_eq!(status, 200);
    served.insert(id);

    // Full: writes are refused, saying so.
    let filler = fill(&data);
    let mut refused = None;
    for i in 0..200 {
        let r = put(&format!("big{i}"), vec![7; 256 * 1024]).await.unwrap();
        if r.status() != 204 {
            refused = Some((r.status().as_u16(), r.text().await.unwrap()));
            break;
        }
    }
    let (status, body) = refused.expect("the full disk took 50 MiB of key-value writes");
    assert_eq!(status, 507, "{body}");
    assert_eq!(error_code(&body), "storage_full", "{body}");
    assert!(error_message(&body).contains("disk is full"), "{body}");
    // Later writes too, and async invocations.
    top_up(&filler);
    let r = put("during", b"x".to_vec()).await.unwrap();
    assert_eq!(r.status(), 507, "{}", r.text().await.unwrap());
    let r = api
        .post(server.url("/v1/functions/counter/invoke?mode=async"))
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert_eq!(error_code(&body), "storage_full", "{body}");
    // Reads go on.
    assert_eq!(server.get_text("/v1/kv/default/before").await, "kept");
    // A function runs (its increment refused); its usage record waits.
    let (_, id) = call(&server, "/counter?key=full").await;
    assert!(!id.is_empty());
    served.insert(id);

    // Space freed: everything works again, with no restart.
    std::fs::remove_file(filler).unwrap();
    wait_until(
        "key-value writes did not resume",
        WAIT_MAX,
        Duration::from_millis(100),
        || async {
            let r = put("after", b"back".to_vec()).await.unwrap();
            match r.status().as_u16() {
                204 => Ok(()),
                _ => Err(r.text().await.unwrap()),
            }
        },
    )
    .await;
    assert_eq!(server.get_text("/v1/kv/default/after").await, "back");
    let r = api
        .post(server.url("/v1/functions/counter/invoke?mode=async"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "async: {}", r.text().await.unwrap());
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = server.wait_for_invocation(&id, &["succeeded"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    served.insert(id);
    for _ in 0..3 {
        let (status, id) = call(&server, "/counter?key=sync").await;
        assert_eq!(status, 200);
        served.insert(id);
    }
    let hits = server.get_text("/v1/kv/default/sync").await;
    assert_eq!(hits.trim(), "4", "every acknowledged increment counted");
    let second = manifest(manifests, "second", "hello-rust", "/second");
    server.cli_ok(&["deploy", second.to_str().unwrap()]);
    let (status, _) = call(&server, "/second?key=s").await;
    assert_eq!(status, 200);
    // Metering: every invocation's record, the one made while the disk
    // was full too, and the sums.
    wait_until(
        "usage records missing after the disk was freed",
        WAIT_MAX,
        Duration::from_millis(100),
        || async {
            let ids = usage_ids(&server).await;
            match served.is_subset(&ids) {
                true => Ok(()),
                false => Err(format!("{:?} not in {ids:?}", served.difference(&ids))),
            }
        },
    )
    .await;
    let usage = server.get_json("/v1/usage").await;
    let counted = usage["total"]["invocations"].as_u64().unwrap();
    assert!(counted >= served.len() as u64, "{usage}");

    // Durable: after a crash, what was acknowledged is all there.
    server.kill();
    let server = Server::start_with(&data, &["--config", config.to_str().unwrap()]);
    for (key, value) in [("before", "kept"), ("after", "back"), ("sync", "4")] {
        let stored = server.get_text(&format!("/v1/kv/default/{key}")).await;
        assert_eq!(stored.trim(), value, "{key}");
    }
    drop(server);
    drop(disk);
}

/// A tenant's disk quota (`updraft quota set --disk-mb`): key-value and
/// blob writes past it get 507 `tenant_disk_quota` saying what to do;
/// deletes go through, and once under it again, writes do too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_disk_quota_gets_507_until_it_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let counter = manifest(dir.path(), "counter", "counter-rust", "/counter");
    server.cli_ok(&["deploy", counter.to_str().unwrap()]);
    server.deploy_guest(
        "files",
        "files-rust",
        "route = \"/files/...\"\nblob_containers = [\"files\"]",
    );
    server.cli_ok(&["quota", "set", "--disk-mb", "1"]);
    let shown = server.cli_ok(&["quota", "show"]);
    assert!(shown.contains("1 MiB stored"), "{shown}");
    let api = server.api();
    let put = |path: String, value: Vec<u8>| api.put(server.url(&path)).body(value).send();
    // Quarter-MiB values until the quota is seen used up (it is measured
    // every few seconds, so a few more may pass first).
    let (mut written, mut refused) = (0, None);
    let deadline = std::time::Instant::now() + WAIT_MAX;
    while refused.is_none() && std::time::Instant::now() < deadline {
        let r = put(format!("/v1/kv/default/k{written}"), vec![1; 256 * 1024])
            .await
            .unwrap();
        match r.status().as_u16() {
            204 => written += 1,
            _ => refused = Some((r.status().as_u16(), r.text().await.unwrap())),
        }
    }
    let (status, body) = refused.expect("the quota never refused a write");
    assert!(
        written >= 4,
        "refused after {written} quarter-MiB values: {body}"
    );
    assert_eq!(status, 507, "{body}");
    assert_eq!(error_code(&body), "tenant_disk_quota", "{body}");
    let message = error_message(&body);
    assert!(
        message.contains("disk quota is 1 MiB") && message.contains("--disk-mb"),
        "{message}"
    );
    // Blobs count against the same quota.
    let r = put("/v1/blobs/files/a.bin".into(), vec![2; 1024])
        .await
        .unwrap();
    assert_eq!(r.status(), 507);
    // Deleting always works; under the quota again, writes do too.
    for i in 0..written {
        let r = api
            .delete(server.url(&format!("/v1/kv/default/k{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    wait_until(
        "writes stayed refused under the quota",
        WAIT_MAX,
        Duration::from_millis(200),
        || async {
            let r = put("/v1/kv/default/again".into(), b"x".to_vec())
                .await
                .unwrap();
            match r.status().as_u16() {
                204 => Ok(()),
                _ => Err(r.text().await.unwrap()),
            }
        },
    )
    .await;
}
