//! The official WASI test suite (WebAssembly/wasi-testsuite, its prebuilt
//! wasm32-wasip1 tests in C, Rust and AssemblyScript), each test deployed as
//! a command function with its spec's args, env and root directory (packed
//! as the function's files, writable per invocation), and invoked: its exit
//! code and stdout must be what the spec says.
//!
//! The suite is read from `$WASI_TESTSUITE_DIR`, else `../shared/wasi-testsuite`
//! beside the checkout. Where it is absent, the test says by name which
//! tests it skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use common::*;

const SUITES: [&str; 3] = ["c", "rust", "assemblyscript"];

fn suite_dir() -> PathBuf {
    match std::env::var_os("WASI_TESTSUITE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => root().join("../shared/wasi-testsuite"),
    }
}

/// One test: its binary and its spec (legacy format: args, env, root,
/// exit_code, stdout).
struct Case {
    name: String,
    wasm: PathBuf,
    spec: serde_json::Value,
    dir: PathBuf,
}

fn cases(base: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    for suite in SUITES {
        let dir = base.join(suite).join("testsuite/wasm32-wasip1");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut wasms: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        wasms.sort();
        for wasm in wasms {
            let stem = wasm.file_stem().unwrap().to_string_lossy().into_owned();
            let spec = std::fs::read_to_string(wasm.with_extension("json"))
                .map(|text| serde_json::from_str(&text).unwrap())
                .unwrap_or_else(|_| serde_json::json!({}));
            cases.push(Case {
                name: format!("{suite}/{stem}"),
                wasm,
                spec,
                dir: dir.clone(),
            });
        }
    }
    cases
}

/// A function name for the case: lowercase letters, digits and '-'.
fn function_name(i: usize) -> String {
    format!("wasi-{i}")
}

fn manifest(case: &Case, name: &str) -> String {
    let mut table = toml::Table::new();
    table.insert("name".into(), name.into());
    table.insert("source".into(), case.wasm.to_string_lossy().as_ref().into());
    table.insert("kind".into(), "command".into());
    table.insert("timeout_ms".into(), 60_000.into());
    if let Some(args) = case.spec["args"].as_array().filter(|a| !a.is_empty()) {
        let args: Vec<toml::Value> = args.iter().map(|a| a.as_str().unwrap().into()).collect();
        table.insert("args".into(), args.into());
    }
    if let Some(env) = case.spec["env"].as_object() {
        let env: toml::Table = env
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().into()))
            .collect();
        table.insert("env".into(), env.into());
    }
    if let Some(root) = case.spec["root"].as_str() {
        let mut mount = toml::Table::new();
        mount.insert(
            "source".into(),
            case.dir.join(root).to_string_lossy().as_ref().into(),
        );
        mount.insert("destination".into(), "/".into());
        table.insert("files".into(), vec![toml::Value::from(mount)].into());
        table.insert("files_writable".into(), true.into());
    }
    toml::to_string(&table).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wasi_test_suite_passes_as_under_wasmtime_run() {
    let base = suite_dir();
    let cases = cases(&base);
    if cases.is_empty() {
        println!(
            "SKIPPED: the WASI test suite is not at {} (set WASI_TESTSUITE_DIR): \
             the_wasi_test_suite_passes_as_under_wasmtime_run",
            base.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data);
    let client = server.api();
    let mut failed = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name = function_name(i);
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, manifest(case, &name)).unwrap();
        let out = server.cli(&["deploy", path.to_str().unwrap()]);
        if !out.status.success() {
            failed.push(format!(
                "{}: deploy failed: {}",
                case.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        }
        let response = client
            .post(server.url(&format!("/v1/functions/{name}/invoke")))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let header = response
            .headers()
            .get("updraft-exit-code")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let body = response.text().await.unwrap();
        let (code, stdout) = match status {
            200 => (header, body),
            _ => {
                let error: serde_json::Value =
                    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                (
                    error["error"]["exit_code"].as_i64(),
                    error["error"]["stdout"]
                        .as_str()
                        .unwrap_or(&body)
                        .to_string(),
                )
            }
        };
        let want_code = case.spec["exit_code"].as_i64().unwrap_or(0);
        let want_stdout = case.spec["stdout"].as_str();
        if code != Some(want_code) || want_stdout.is_some_and(|w| w != stdout) {
            let logs = server.cli(&["logs", &name]);
            failed.push(format!(
                "{}: exit {code:?} (want {want_code}), status {status}, stdout {stdout:?}{}\n  logs: {}",
                case.name,
                want_stdout.map_or(String::new(), |w| format!(" (want {w:?})")),
                String::from_utf8_lossy(&logs.stdout).trim().replace('\n', "\n  ")
            ));
        }
    }
    let passed = cases.len() - failed.len();
    println!(
        "WASI test suite (wasm32-wasip1): {passed} of {} passed",
        cases.len()
    );
    assert!(failed.is_empty(), "failed:\n{}", failed.join("\n"));
}

/// The suite's WASI 0.3 tests: Updraft does not run WASI 0.3 yet, so each
/// is refused at deploy with a message that names WASI 0.3 and the
/// interface, not as invalid Wasm.
#[tokio::test(flavor = "multi_thread")]
async fn wasi_0_3_components_are_refused_naming_wasi_0_3() {
    let dir = suite_dir().join("rust/testsuite/wasm32-wasip3");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!(
            "SKIPPED: the WASI test suite is not at {} (set WASI_TESTSUITE_DIR): \
             wasi_0_3_components_are_refused_naming_wasi_0_3",
            suite_dir().display()
        );
        return;
    };
    let mut wasms: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    wasms.sort();
    assert!(!wasms.is_empty());
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    for (i, wasm) in wasms.iter().enumerate() {
        let response = server
            .api()
            .put(server.url(&format!("/v1/functions/p3-{i}")))
            .body(std::fs::read(wasm).unwrap())
            .send()
            .await
            .unwrap();
        let message = expect_error(response, 400, "unsupported_wasi").await;
        assert!(
            message.contains("WASI 0.3") && message.contains("@0.3"),
            "{}: {message}",
            wasm.display()
        );
    }
    println!(
        "WASI test suite (wasm32-wasip3): {} of {} refused, naming WASI 0.3",
        wasms.len(),
        wasms.len()
    );
}
