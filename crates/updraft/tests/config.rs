//! The server config file: backends chosen by `type`, with unknown types
//! and keys refused by name before anything starts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

#[test]
fn unknown_backends_and_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (
            "[kv]\ntype = \"nats\"\n",
            "unknown variant `nats`, expected `embedded`",
        ),
        (
            "[blobs]\ntype = \"s3\"\n",
            "unknown variant `s3`, expected `local`",
        ),
        (
            "[blobs]\ntype = \"local\"\ndirr = \"x\"\n",
            "unknown field `dirr`",
        ),
        ("[queue]\n", "unknown field `queue`"),
    ] {
        let config = dir.path().join("server.toml");
        std::fs::write(&config, text).unwrap();
        let out = Command::new(bin())
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected) && stderr.contains("server.toml"),
            "{text}: {stderr}"
        );
    }
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
}
