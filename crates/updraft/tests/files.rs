//! A function's files, `/tmp` and args: the files are packed by `deploy`,
//! mounted read-only (or as a private copy per invocation with
//! `files_writable`), `/tmp` is fresh per invocation and capped by `tmp_mb`,
//! and nothing an invocation writes outlives it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

/// Invokes the `fs` probe with `commands` on stdin; (status, stdout or error body).
async fn probe(server: &Server, name: &str, commands: &str) -> (u16, String) {
    let response = server
        .api()
        .post(server.url(&format!("/v1/functions/{name}/invoke")))
        .body(commands.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Writes a manifest for the `fs` probe next to an `assets` directory.
fn deploy_fs(server: &Server, dir: &std::path::Path, name: &str, extra: &str) {
    let manifest = dir.join(format!("{name}.toml"));
    std::fs::write(
        &manifest,
        format!(
            "name = \"{name}\"\nsource = \"{}\"\n{extra}\n",
            guest("fs").display()
        ),
    )
    .unwrap();
    server.cli_ok(&["deploy", manifest.to_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn files_are_mounted_read_only_and_tmp_is_fresh_per_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data);
    let assets = dir.path().join("assets");
    std::fs::create_dir_all(assets.join("nested")).unwrap();
    std::fs::write(assets.join("greeting.txt"), "hello from a file").unwrap();
    std::fs::write(assets.join("nested/deep.txt"), "deep").unwrap();
    deploy_fs(
        &server,
        dir.path(),
        "reader",
        "args = [\"one\", \"two words\"]\ntmp_mb = 1\n\
         files = [{ source = \"assets\", destination = \"/static\" }]",
    );
    let (status, out) = probe(
        &server,
        "reader",
        "args\ncat /static/greeting.txt\ncat /static/nested/deep.txt\n\
         write /static/greeting.txt 3\nwrite /tmp/scratch 1000\nexists /tmp/scratch\n",
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "one two words");
    assert_eq!(lines[1], "hello from a file");
    assert_eq!(lines[2], "deep");
    assert!(
        lines[3].starts_with("error:"),
        "a read-only file was written: {out}"
    );
    assert_eq!(lines[4..], ["wrote 1000", "yes"]);

    // The next invocation sees a fresh /tmp, and the files unchanged.
    let (_, out) = probe(
        &server,
        "reader",
        "exists /tmp/scratch\ncat /static/greeting.txt\n",
    )
    .await;
    assert_eq!(out, "no\nhello from a file\n");

    // Past tmp_mb (1 MiB) the invocation fails, naming the limit.
    let (status, body) = probe(&server, "reader", "write /tmp/big 8000000\n").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(error_code(&body), "tmp_limit", "{body}");
    assert!(error_message(&body).contains("tmp_mb"), "{body}");

    // Nothing is left in the node's scratch space once invocations end.
    wait_until(
        "scratch space was not cleaned up",
        WAIT_MAX,
        std::time::Duration::from_millis(50),
        || async {
            let left: Vec<_> = std::fs::read_dir(data.join("scratch/invocations"))
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            match left.is_empty() {
                true => Ok(()),
                false => Err(format!("{left:?}")),
            }
        },
    )
    .await;

    // The same files deploy as the same version; changed files, a new one.
    let before = server.get_json("/v1/functions/reader").await;
    deploy_fs(
        &server,
        dir.path(),
        "reader",
        "args = [\"one\", \"two words\"]\ntmp_mb = 1\n\
         files = [{ source = \"assets\", destination = \"/static\" }]",
    );
    let again = server.get_json("/v1/functions/reader").await;
    assert_eq!(before["latest"], again["latest"], "{again}");
    std::fs::write(assets.join("greeting.txt"), "changed").unwrap();
    deploy_fs(
        &server,
        dir.path(),
        "reader",
        "args = [\"one\", \"two words\"]\ntmp_mb = 1\n\
         files = [{ source = \"assets\", destination = \"/static\" }]",
    );
    let (_, out) = probe(&server, "reader", "cat /static/greeting.txt\n").await;
    assert_eq!(out, "changed\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn writable_files_are_a_private_copy_per_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data);
    let assets = dir.path().join("assets");
    std::fs::create_dir_all(&assets).unwrap();
    std::fs::write(assets.join("state.txt"), "original").unwrap();
    deploy_fs(
        &server,
        dir.path(),
        "writer",
        "files = [{ source = \"assets\", destination = \"/\" }]\nfiles_writable = true",
    );
    let (status, out) = probe(&server, "writer", "write /state.txt 4\ncat /state.txt\n").await;
    assert_eq!((status, out.as_str()), (200, "wrote 4\nxxxx\n"));
    let (_, out) = probe(&server, "writer", "cat /state.txt\n").await;
    assert_eq!(out, "original\n", "a write leaked into the next invocation");

    // Removing the function removes its files: the stored bundle and the
    // node's unpacked copy (embedded mode keeps both in the data dir).
    if std::env::var_os("UPDRAFT_TEST_CLUSTER").is_none() {
        let unpacked = data.join("compiled/files");
        assert_eq!(std::fs::read_dir(&unpacked).unwrap().count(), 1);
        server.cli_ok(&["rm", "writer"]);
        assert_eq!(std::fs::read_dir(&unpacked).unwrap().count(), 0);
        let stored: Vec<_> = std::fs::read_dir(data.join("wasm"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(stored.is_empty(), "{stored:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_files_are_refused_at_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data);
    for (extra, says) in [
        (
            "files = [{ source = \"missing\", destination = \"/\" }]",
            "missing",
        ),
        (
            "files = [{ source = \"data\", destination = \"relative\" }]",
            "absolute",
        ),
        ("files_writable = true", "no files are listed"),
        ("tmp_mb = 999999", "tmp_mb"),
    ] {
        let manifest = dir.path().join("bad.toml");
        std::fs::write(
            &manifest,
            format!(
                "name = \"bad\"\nsource = \"{}\"\n{extra}\n",
                guest("fs").display()
            ),
        )
        .unwrap();
        let out = server.cli(&["deploy", manifest.to_str().unwrap()]);
        assert!(!out.status.success(), "{extra}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{extra}: {stderr}");
    }
}
