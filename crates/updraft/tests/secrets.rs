//! Secrets: set from stdin, referenced from `[variables]` as
//! `{{ secret.NAME }}`, read by the guest through `wasi:config`, rotated
//! without a redeploy, and never shown: not in logs, the API, `info`, the
//! server's own log, nor in the clear on disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::*;

/// `updraft secrets set NAME` with `value` on stdin.
fn set_secret(server: &Server, name: &str, value: &str, key: Option<&str>) {
    let mut cmd = Command::new(bin());
    cmd.args(["--server", &server.url(""), "secrets", "set", name])
        .env("UPDRAFT_DATA_DIR", &server.data_dir)
        .env_remove("UPDRAFT_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(key) = key {
        cmd.args(["--key", key]);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "secrets set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn read(server: &Server, path: &str) -> (u16, String) {
    let response = client().get(server.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Every file under `dir`, searched for `needle` as bytes.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_variables_rotate_without_redeploy_and_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let log_path = dir.path().join("server.log");
    let server = Server::start_logging(
        &data,
        &[],
        "debug",
        Stdio::from(std::fs::File::create(&log_path).unwrap()),
    );
    let (first, second) = ("tok-first-4f1c9a", "tok-second-77b2e0");
    set_secret(&server, "api_token", first, None);
    server.deploy_guest(
        "config",
        "config-reader",
        "route = \"/config/...\"\n[variables]\n\
         token = \"Bearer {{ secret.api_token }}\"\nplain = \"visible\"",
    );
    assert_eq!(
        read(&server, "/config/get?key=token").await,
        (200, format!("Bearer {first}"))
    );
    assert_eq!(
        read(&server, "/config/get?key=plain").await,
        (200, "visible".into())
    );

    // Rotated: the next invocation reads the new value, no redeploy.
    set_secret(&server, "api_token", second, None);
    assert_eq!(
        read(&server, "/config/get?key=token").await,
        (200, format!("Bearer {second}"))
    );

    // Listed by name only.
    assert_eq!(server.cli_ok(&["secrets", "ls"]), "api_token\n");
    let listed = server.get_json("/v1/secrets").await;
    assert_eq!(
        listed,
        serde_json::json!({ "secrets": [{ "name": "api_token" }] })
    );

    // Another tenant neither sees it nor reads it.
    let bravo = server.cli_ok(&["keys", "create", "--tenant", "bravo"]);
    let bravo = bravo.trim();
    let theirs = server.get_json_as(bravo, "/v1/secrets").await;
    assert_eq!(theirs["secrets"], serde_json::json!([]));

    // Removed: the variable is an error naming the secret, not a value.
    server.cli_ok(&["secrets", "rm", "api_token"]);
    let (status, body) = read(&server, "/config/get?key=token").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("api_token") && body.contains("not set"),
        "{body}"
    );
    let out = server.cli(&["secrets", "rm", "api_token"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no secret named"));

    // Bad names say what to write.
    let out = server.cli(&["secrets", "rm", "bad name"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("letters, digits or '_'"));

    // Never shown: logs, info, the function's record, the server's log,
    // and nothing on disk holds either value in the clear.
    let logs = server.cli_ok(&["logs", "config"]);
    let info = server.cli_ok(&["info", "config"]);
    let record = server.get_json("/v1/functions/config").await.to_string();
    server.stop();
    let server_log = std::fs::read_to_string(&log_path).unwrap();
    for value in [first, second] {
        for (what, text) in [
            ("logs", &logs),
            ("info", &info),
            ("the API", &record),
            ("the server's log", &server_log),
        ] {
            assert!(!text.contains(value), "{what} shows a secret: {text}");
        }
        assert_eq!(
            files_holding(&data, value.as_bytes()),
            Vec::<std::path::PathBuf>::new(),
            "a secret is in the clear on disk"
        );
    }
}
