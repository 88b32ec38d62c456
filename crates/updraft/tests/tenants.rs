//! Tenants and API keys end to end: every management and data call on one
//! tenant's resources is refused with another tenant's key; stores of the
//! same name never meet; keys are checked, revoked at once, and never
//! written anywhere in clear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;

use common::*;
use serde_json::Value;

/// `updraft keys create --tenant T` with the admin key: the new key.
fn create_key(server: &Server, tenant: &str) -> String {
    let key = server.cli_ok(&["keys", "create", "--tenant", tenant, "--label", "test"]);
    let key = key.trim().to_string();
    assert!(key.starts_with("upd_"), "{key}");
    key
}

/// Runs the CLI as `key`, insisting on success; returns stdout.
fn cli_as_ok(server: &Server, key: &str, args: &[&str]) -> String {
    let out = server.cli_as(key, args);
    assert!(
        out.status.success(),
        "updraft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn deploy_as(server: &Server, key: &str, name: &str, guest_name: &str, extra_toml: &str) {
    let manifest = server.write_manifest(name, guest_name, extra_toml);
    cli_as_ok(server, key, &["deploy", manifest.to_str().unwrap()]);
}

async fn text(response: reqwest::Response) -> (u16, String) {
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_never_reaches_another_tenants_resources() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let acme = create_key(&server, "acme");
    let bravo = create_key(&server, "bravo");

    // Both deploy a counter with the same name, route and store name.
    let counter = "route = \"/counter\"\nkey_value_stores = [\"default\"]";
    deploy_as(&server, &acme, "counter", "counter-rust", counter);
    deploy_as(&server, &bravo, "counter", "counter-rust", counter);
    let count = |tenant: &'static str| {
        let url = server.url(&format!("/~{tenant}/counter"));
        async move { text(client().get(url).send().await.unwrap()).await }
    };
    assert_eq!(count("acme").await.0, 200);
    assert_eq!(count("acme").await.0, 200);
    let (status, acme_third) = count("acme").await;
    let (_, bravo_first) = count("bravo").await;
    assert_eq!(status, 200);
    assert!(acme_third.contains('3'), "{acme_third}");
    assert!(bravo_first.contains('1'), "own store: {bravo_first}");
    // The local tenant has no /counter at all.
    let (status, body) = text(client().get(server.url("/counter")).send().await.unwrap()).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "route_not_found")
    );

    // Acme's private things: a function, a store and a container only it uses.
    deploy_as(
        &server,
        &acme,
        "secret",
        "files-rust",
        "route = \"/files/...\"\nkey_value_stores = [\"vault\"]\nblob_containers = [\"uploads\"]",
    );
    let as_acme = client_with_key(&acme);
    let r = as_acme
        .put(server.url("/v1/kv/vault/pin"))
        .body("1234")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let r = client()
        .put(server.url("/~acme/files/plan.txt"))
        .body("acme's plan")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Every call with bravo's key on acme's resources is refused, and says
    // nothing about them.
    let as_bravo = client_with_key(&bravo);
    let refused: [(reqwest::Method, &str, u16, &str); 12] = [
        (
            "GET".parse().unwrap(),
            "/v1/functions/secret",
            404,
            "function_not_found",
        ),
        (
            "POST".parse().unwrap(),
            "/v1/functions/secret/invoke",
            404,
            "function_not_found",
        ),
        (
            "GET".parse().unwrap(),
            "/v1/functions/secret/logs",
            404,
            "function_not_found",
        ),
        (
            "POST".parse().unwrap(),
            "/v1/functions/secret/rollback",
            404,
            "function_not_found",
        ),
        (
            "POST".parse().unwrap(),
            "/v1/functions/secret/unload",
            404,
            "function_not_found",
        ),
        (
            "DELETE".parse().unwrap(),
            "/v1/functions/secret",
            404,
            "function_not_found",
        ),
        (
            "GET".parse().unwrap(),
            "/v1/kv/vault/pin",
            404,
            "store_not_found",
        ),
        (
            "PUT".parse().unwrap(),
            "/v1/kv/vault/pin",
            404,
            "store_not_found",
        ),
        (
            "DELETE".parse().unwrap(),
            "/v1/kv/vault/pin",
            404,
            "store_not_found",
        ),
        (
            "GET".parse().unwrap(),
            "/v1/kv/vault",
            404,
            "store_not_found",
        ),
        (
            "GET".parse().unwrap(),
            "/v1/blobs/uploads/plan.txt",
            404,
            "container_not_found",
        ),
        (
            "DELETE".parse().unwrap(),
            "/v1/blobs/uploads/plan.txt",
            404,
            "container_not_found",
        ),
    ];
    for (method, path, status, code) in refused {
        let r = as_bravo
            .request(method.clone(), server.url(path))
            .body(if method == reqwest::Method::PUT {
                "x"
            } else {
                ""
            })
            .send()
            .await
            .unwrap();
        let (got, body) = text(r).await;
        assert_eq!(
            (got, error_code(&body).as_str()),
            (status, code),
            "{method} {path}: {body}"
        );
        assert!(
            !body.contains("acme"),
            "{method} {path} names the other tenant: {body}"
        );
    }
    // Listings show only the caller's own.
    let list = server.get_json_as(&bravo, "/v1/functions").await;
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["counter"]);
    let stores = server.get_json_as(&bravo, "/v1/kv").await;
    assert_eq!(stores["stores"], serde_json::json!(["default"]));
    let containers = server.get_json_as(&bravo, "/v1/blobs").await;
    assert_eq!(containers["containers"], serde_json::json!([]));
    // The same through the CLI, which bravo would use.
    let ls = cli_as_ok(&server, &bravo, &["ls"]);
    assert!(ls.contains("counter") && !ls.contains("secret"), "{ls}");
    let out = server.cli_as(&bravo, &["info", "secret"]);
    assert!(!out.status.success());
    let out = server.cli_as(&bravo, &["kv", "get", "vault", "pin"]);
    assert!(!out.status.success());
    // The admin key acts as the local tenant: it does not see acme's either.
    let out = server.cli(&["info", "secret"]);
    assert!(!out.status.success());

    // Each store of the same name is its owner's.
    let acme_count = cli_as_ok(&server, &acme, &["kv", "get", "default", "hits"]);
    let bravo_count = cli_as_ok(&server, &bravo, &["kv", "get", "default", "hits"]);
    assert_eq!((acme_count.as_str(), bravo_count.as_str()), ("3", "1"));

    // Nothing of acme's changed.
    assert_eq!(
        cli_as_ok(&server, &acme, &["kv", "get", "vault", "pin"]),
        "1234"
    );
    let info = cli_as_ok(&server, &acme, &["--json", "info", "secret"]);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        (info["tenant"].as_str(), info["version"].as_u64()),
        (Some("acme"), Some(1))
    );
    let (status, body) = text(
        client()
            .get(server.url("/~acme/files/plan.txt"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "acme's plan"));
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_checked_revoked_at_once_and_never_kept_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let data_dir = dir.path().join("data");
    let server = Server::start_logging(
        &data_dir,
        &[],
        "debug",
        Stdio::from(std::fs::File::create(&log_path).unwrap()),
    );

    // No key, a garbled key: 401, saying what to do.
    let r = client()
        .get(server.url("/v1/functions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let message = expect_error(r, 401, "missing_key").await;
    assert!(message.contains("Authorization: Bearer"), "{message}");
    let r = client_with_key("upd_0123456789ab_nope")
        .get(server.url("/v1/functions"))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "invalid_key").await;
    let out = std::process::Command::new(bin())
        .args(["--server", &server.url, "ls"])
        .env_remove("UPDRAFT_KEY")
        .env("UPDRAFT_DATA_DIR", dir.path().join("elsewhere"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no API key") && stderr.contains("UPDRAFT_KEY"),
        "{stderr}"
    );
    let out = server.cli_as("not-a-key", &["ls"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_key"));

    // A tenant's key: works; cannot make keys for others, nor admin keys.
    let acme = create_key(&server, "acme");
    cli_as_ok(&server, &acme, &["ls"]);
    for args in [
        &["keys", "create", "--tenant", "bravo"][..],
        &["keys", "create", "--admin"][..],
        &["keys", "ls", "--tenant", "local"][..],
    ] {
        let out = server.cli_as(&acme, args);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("only an admin key"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // It sees only its own keys, and cannot revoke the admin's.
    let mine: Value =
        serde_json::from_str(&cli_as_ok(&server, &acme, &["--json", "keys", "ls"])).unwrap();
    let mine = mine["keys"].as_array().unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["tenant"], "acme");
    let all: Value = server.get_json("/v1/keys").await;
    let admin_id = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["admin"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = server.cli_as(&acme, &["keys", "revoke", &admin_id]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_not_found"));
    // The last admin key cannot be revoked.
    let out = server.cli(&["keys", "revoke", &admin_id]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("last admin key"));

    // A second acme key, revoked by acme: the very next call fails.
    let second = cli_as_ok(&server, &acme, &["keys", "create", "--label", "ci"]);
    let second = second.trim().to_string();
    cli_as_ok(&server, &second, &["ls"]);
    let id = second.split('_').nth(1).unwrap();
    cli_as_ok(&server, &acme, &["keys", "revoke", id]);
    let r = client_with_key(&second)
        .get(server.url("/v1/functions"))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "invalid_key").await;

    // A route with `auth = "key"`: only acme's keys pass, and the function
    // sees neither the key nor the tenant prefix.
    deploy_as(
        &server,
        &acme,
        "private",
        "http-chaos",
        "route = \"/private/...\"\nauth = \"key\"",
    );
    let url = server.url("/~acme/private/headers");
    let r = client().get(&url).send().await.unwrap();
    expect_error(r, 401, "missing_key").await;
    let bravo = create_key(&server, "bravo");
    for key in [&bravo, &server.admin_key] {
        let r = client_with_key(key).get(&url).send().await.unwrap();
        expect_error(r, 403, "forbidden").await;
    }
    let (status, seen) = text(client_with_key(&acme).get(&url).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(seen.starts_with("path: /private/headers\n"), "{seen}");
    assert!(!seen.to_lowercase().contains("authorization"), "{seen}");

    // Restarted, the keys still hold and the revoked one stays revoked.
    drop(server);
    let server = Server::start_logging(
        &data_dir,
        &[],
        "debug",
        Stdio::from(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&log_path)
                .unwrap(),
        ),
    );
    cli_as_ok(&server, &acme, &["ls"]);
    assert!(!server.cli_as(&second, &["ls"]).status.success());

    // No secret is anywhere in the data dir (but the admin key's own file)
    // or the server's debug log.
    let secrets: Vec<String> = [&acme, &second, &bravo, &server.admin_key]
        .iter()
        .map(|k| k.rsplit('_').next().unwrap().to_string())
        .collect();
    let log_bytes = std::fs::metadata(&log_path).unwrap().len();
    assert!(
        log_bytes > 0,
        "the debug log is empty, so the check below would prove nothing"
    );
    let mut files = vec![log_path.clone()];
    let mut dirs = vec![data_dir.clone()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().unwrap() != "admin.key" {
                files.push(path);
            }
        }
    }
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for secret in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a key in clear",
                file.display()
            );
        }
    }
    let admin_file = data_dir.join("admin.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&admin_file).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "admin.key must be private to its owner"
    );
}

/// `wasm` with a custom section named `tag` appended: the same code under
/// another digest, so it is compiled again.
fn tagged(wasm: &[u8], tag: &str) -> Vec<u8> {
    let mut section = vec![tag.len() as u8];
    section.extend_from_slice(tag.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0);
    let mut size = section.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        out.push(if size == 0 { byte } else { byte | 0x80 });
        if size == 0 {
            break;
        }
    }
    out.extend_from_slice(&section);
    out
}

/// One tenant's burst of deploys waits on itself: another tenant's deploy,
/// sent while the first big compile runs, is done before the burst's second.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_compile_burst_does_not_hold_up_another_tenants_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let bravo = server.cli_ok(&["keys", "create", "--tenant", "bravo"]);
    let bravo = client_with_key(bravo.trim());
    let big = std::fs::read(guest("hello-js")).unwrap();
    let deploy = |client: reqwest::Client, name: &str, wasm: Vec<u8>| {
        let url = server.url(&format!("/v1/functions/{name}"));
        tokio::spawn(async move {
            let r = client.put(url).body(wasm).send().await.unwrap();
            assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
            std::time::Instant::now()
        })
    };
    let first = deploy(server.api(), "big-1", tagged(&big, "burst-1"));
    let second = deploy(server.api(), "big-2", tagged(&big, "burst-2"));
    // Sent while the first compiles (it takes seconds). The pause only makes
    // the test able to fail under a plain first-come queue: sent earlier,
    // bravo's deploy is ahead of the burst's second anyway.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let small = deploy(bravo, "small", std::fs::read(guest("hello-rust")).unwrap());
    let (first, second, small) = (
        first.await.unwrap(),
        second.await.unwrap(),
        small.await.unwrap(),
    );
    // Which of the burst's two compiles first is not fixed; bravo's deploy
    // is done before the later one.
    let last = first.max(second);
    assert!(
        small < last,
        "bravo's deploy waited for the whole burst (done {:?} after it)",
        small - last
    );
}
