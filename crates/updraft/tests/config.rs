//! The server config file: backends chosen by `type`, with unknown types
//! and keys refused by name before anything starts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use updraft_state::testing::S3Server;

#[test]
fn unknown_backends_and_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (
            "[kv]\ntype = \"redis\"\n",
            "unknown variant `redis`, expected `embedded` or `nats`",
        ),
        ("[kv]\ntype = \"nats\"\n", "missing field `urls`"),
        (
            "[blobs]\ntype = \"gcs\"\n",
            "unknown variant `gcs`, expected `local` or `s3`",
        ),
        ("[blobs]\ntype = \"s3\"\n", "missing field `url`"),
        (
            "[blobs]\ntype = \"local\"\ndirr = \"x\"\n",
            "unknown field `dirr`",
        ),
        ("[queue]\n", "unknown field `queue`"),
        ("[prices]\ngb_second = -1\n", "gb_second = -1"),
        ("[metering]\nenable = false\n", "unknown field `enable`"),
        (
            "[metering]\nrecords_retention_days = 0\n",
            "records_retention_days = 0",
        ),
        (
            "[http]\nheader_read_timeout_ms = 5\n",
            "header_read_timeout_ms = 5: give clients 100 to 3600000 ms",
        ),
        ("[http]\nconnections_max = 0\n", "must be at least 1"),
        (
            "[http]\nheader_timeout = 1\n",
            "unknown field `header_timeout`",
        ),
        (
            "[cpu]\nbackground_threads = 0\n",
            "background_threads = 0: give the background lane 1 to 1024 threads",
        ),
        (
            "[cpu]\nshed_load = \"yes\"\n",
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            "[memory]\nbudget_mb = 10\n",
            "budget_mb = 10: give at least 64 (MiB)",
        ),
        ("[memory]\nbudget = 4096\n", "unknown field `budget`"),
        (
            "[http]\nbase_domain = \"*.functions.example\"\n",
            "base_domain = \"*.functions.example\": give the bare domain",
        ),
        (
            "[http]\nbase_domain = \"10.0.0.1\"\n",
            "base_domain = \"10.0.0.1\": an IP address has no subdomains",
        ),
        (
            "[http]\nbase_domain = \"fn_s.example\"\n",
            "\"fn_s\" is not a DNS label",
        ),
    ] {
        let config = dir.path().join("server.toml");
        std::fs::write(&config, text).unwrap();
        let out = up_with(dir.path(), &config);
        assert!(!out.status.success(), "{text} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected) && stderr.contains("server.toml"),
            "{text}: {stderr}"
        );
    }
}

#[test]
fn an_instance_pool_past_the_address_space_is_refused_with_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--instances-max",
            "20000",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--instances-max") && stderr.contains("1..=12000"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_go_where_the_config_says() {
    let dir = tempfile::tempdir().unwrap();
    let blob_dir = dir.path().join("elsewhere");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[kv]\ntype = \"embedded\"\n[blobs]\ntype = \"local\"\ndir = {:?}\n",
            blob_dir.display().to_string()
        ),
    )
    .unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    server.deploy_guest(
        "files",
        "files-rust",
        "route = \"/files/...\"\nblob_containers = [\"uploads\"]",
    );
    let r = client()
        .put(server.url("/files/a.txt"))
        .body("here")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let stored = blob_dir.join("local").join("uploads").join("a.txt");
    assert_eq!(std::fs::read_to_string(&stored).unwrap(), "here");
    assert!(!dir.path().join("data").join("blobs").exists());
    // Both dirs hold tenants' data: nobody else may read them.
    use std::os::unix::fs::PermissionsExt as _;
    for private in [dir.path().join("data"), blob_dir] {
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", private.display());
    }
}

fn s3_config(dir: &std::path::Path, s3: &S3Server, url: &str) -> std::path::PathBuf {
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[blobs]\ntype = \"s3\"\nurl = {url:?}\nendpoint = {:?}\nregion = \"us-east-1\"\n\
             access_key_id = \"testing\"\nsecret_access_key = \"testing\"\n",
            s3.endpoint
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_on_an_s3_compatible_store() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start();
    s3.create_bucket("updraft");
    let config = s3_config(dir.path(), &s3, "s3://updraft/node-a");
    let data_dir = dir.path().join("data");
    let server = Server::start_with(&data_dir, &["--config", config.to_str().unwrap()]);
    server.deploy_guest(
        "files",
        "files-rust",
        "route = \"/files/...\"\nblob_containers = [\"uploads\"]\n\
         request_body_bytes_max = 16777216\nresponse_body_bytes_max = 16777216",
    );
    // 12 MiB: streamed by the function in 64 KiB chunks, stored as an S3
    // multipart upload of several parts.
    let big: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 251) as u8).collect();
    let r = client()
        .put(server.url("/files/video/big.bin"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let listed: serde_json::Value = server
        .api()
        .get(server.url("/v1/blobs/uploads?prefix=video/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["blobs"][0]["key"], "video/big.bin", "{listed}");
    assert_eq!(listed["blobs"][0]["size"], 12 << 20, "{listed}");
    drop(server);

    // Nothing about the blob is on the local disk; a restarted server (or
    // another node with the same config) serves it from the bucket.
    assert!(!data_dir.join("blobs").exists());
    let server = Server::start_with(&data_dir, &["--config", config.to_str().unwrap()]);
    let served = client()
        .get(server.url("/files/video/big.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert!(served.bytes().await.unwrap() == big);
}

#[test]
fn a_missing_bucket_stops_start_up_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start();
    let config = s3_config(dir.path(), &s3, "s3://never-created");
    let out = up_with(dir.path(), &config);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot be listed") && stderr.contains("NoSuchBucket"),
        "{stderr}"
    );
}

/// Everything the server writes under its data dir (stores, logs, compiled
/// code, scratch) is its user's only: files 0600, dirs 0700.
#[tokio::test(flavor = "multi_thread")]
async fn everything_in_the_data_dir_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    server.deploy_guest(
        "counter",
        "counter-rust",
        "route = \"/counter\"\nkey_value_stores = [\"default\"]",
    );
    let r = client().get(server.url("/counter")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let accepted = server
        .post_json("/v1/functions/counter/invoke?mode=async")
        .await;
    server
        .wait_for_invocation(accepted["id"].as_str().unwrap(), &["succeeded"])
        .await;
    server.stop();
    fn open_to_others(dir: &std::path::Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let mode = entry.metadata().unwrap().permissions().mode();
            if mode & 0o077 != 0 {
                found.push(format!("{:o} {}", mode & 0o777, entry.path().display()));
            }
            if entry.file_type().unwrap().is_dir() {
                open_to_others(&entry.path(), found);
            }
        }
    }
    // The manifest is the test's own file, written there by `deploy_guest`.
    std::fs::remove_file(data.join("counter.toml")).unwrap();
    let mut found = Vec::new();
    open_to_others(&data, &mut found);
    assert!(
        found.is_empty(),
        "readable by others:\n{}",
        found.join("\n")
    );
}
