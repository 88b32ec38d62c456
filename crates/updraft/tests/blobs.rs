//! Blob containers end to end: a function stores and serves uploads
//! (streaming both ways), the operator API and CLI see the same blobs, the
//! size limit refuses an upload without storing anything, and a function
//! opens only the containers it lists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;

/// Blob limit of the test server: small, so "too large" is quick to reach.
const LIMIT: usize = 1024 * 1024;

async fn get(server: &Server, path: &str) -> reqwest::Response {
    server.api().get(server.url(path)).send().await.unwrap()
}

async fn put(server: &Server, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    server
        .api()
        .put(server.url(path))
        .body(body)
        .send()
        .await
        .unwrap()
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_store_and_serve_blobs_within_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--blob-bytes-max", &LIMIT.to_string()]);
    server.deploy_guest(
        "files",
        "files-rust",
        "route = \"/files/...\"\nblob_containers = [\"uploads\"]",
    );

    // Upload through the function (streamed in chunks), exactly at the limit.
    let big = data(LIMIT, 7);
    let r = put(&server, "/files/dir/big.bin", big.clone()).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let served = get(&server, "/files/dir/big.bin").await;
    assert_eq!(served.status(), 200);
    assert_eq!(served.bytes().await.unwrap().to_vec(), big);

    // The operator sees the same blob, through the API and the CLI.
    let api = get(&server, "/v1/blobs/uploads/dir/big.bin").await;
    assert_eq!(api.bytes().await.unwrap().to_vec(), big);
    let copy = dir.path().join("copy.bin");
    server.cli_ok(&[
        "blob",
        "get",
        "uploads",
        "dir/big.bin",
        "-o",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&copy).unwrap(), big);

    // And the other way: uploaded by the CLI, served by the function.
    let small = dir.path().join("small.txt");
    std::fs::write(&small, b"hello blobs").unwrap();
    server.cli_ok(&[
        "blob",
        "put",
        "uploads",
        "small.txt",
        small.to_str().unwrap(),
    ]);
    let text = get(&server, "/files/small.txt").await.text().await.unwrap();
    assert_eq!(text, "hello blobs");
    let listed = get(&server, "/files/").await.text().await.unwrap();
    assert_eq!(listed, format!("{LIMIT} dir/big.bin\n11 small.txt\n"));
    let json: Value =
        serde_json::from_str(&server.cli_ok(&["--json", "blob", "ls", "uploads"])).unwrap();
    assert_eq!(json["blobs"].as_array().unwrap().len(), 2);

    // One byte over the limit: 413 from the function and from the API, and
    // neither stores anything (nor replaces what was there).
    let over = data(LIMIT + 1, 9);
    let r = put(&server, "/files/dir/big.bin", over.clone()).await;
    assert_eq!(r.status(), 413, "{}", r.text().await.unwrap());
    let r = put(&server, "/v1/blobs/uploads/huge.bin", over).await;
    expect_error(r, 413, "blob_too_large").await;
    let served = get(&server, "/files/dir/big.bin").await;
    assert_eq!(served.bytes().await.unwrap().to_vec(), big);
    let r = get(&server, "/files/huge.bin").await;
    assert_eq!(r.status(), 404);

    // Unicode keys are kept as written, through the API as through guests.
    let r = put(
        &server,
        "/v1/blobs/uploads/%C3%A9t%C3%A9/r%C3%A9sum%C3%A9.pdf",
        "cv",
    )
    .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let listed = server
        .get_json("/v1/blobs/uploads?prefix=%C3%A9t%C3%A9/")
        .await;
    assert_eq!(listed["blobs"][0]["key"], "été/résumé.pdf", "{listed}");
    let r = get(
        &server,
        "/v1/blobs/uploads/%C3%A9t%C3%A9/r%C3%A9sum%C3%A9.pdf",
    )
    .await;
    assert_eq!(r.text().await.unwrap(), "cv");
    let r = server
        .api()
        .delete(server.url("/v1/blobs/uploads/%C3%A9t%C3%A9/r%C3%A9sum%C3%A9.pdf"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // Bad keys and unknown containers are refused with the reason.
    let r = put(&server, "/v1/blobs/uploads/a%2F%2Fb", "x").await;
    expect_error(r, 400, "invalid_key").await;
    let r = get(&server, "/v1/blobs/nope/x").await;
    expect_error(r, 404, "container_not_found").await;

    // A container the manifest does not list does not open.
    let r = get(&server, "/files/x?container=secret").await;
    assert_eq!(r.status(), 403);
    server
        .wait_for_logs("files", &["\"secret\" refused", "blob_containers"])
        .await;

    // Delete through the function; the blob is gone everywhere.
    let r = client()
        .delete(server.url("/files/small.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(server.cli_ok(&["blob", "ls", "uploads"]).lines().count(), 1);
    let out = server.cli(&["blob", "get", "uploads", "small.txt"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}
