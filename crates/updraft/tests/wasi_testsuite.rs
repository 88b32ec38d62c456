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

/// What a WASI 0.3 test runs with and expects: from its operations (`run`,
/// `write` to stdin, `read` of stdout, `wait`) or the legacy fields. `Err`
/// says why it is not run as a command: it is a service (run by
/// [`wasi_0_3_services_answer_as_their_specs_say`]), or needs the suite's
/// own runner (servers, connections).
struct P3Spec {
    /// `http`: wasmtime runs it with `-Shttp`.
    http: bool,
    /// `sockets`: wasmtime runs it with `-Sinherit-network`, Updraft with
    /// the loopback addresses in `allowed_outbound_hosts`.
    sockets: bool,
    args: Vec<String>,
    env: Vec<(String, String)>,
    root: Option<String>,
    stdin: String,
    stdout: Option<String>,
    exit_code: i64,
}

fn p3_spec(spec: &serde_json::Value) -> Result<P3Spec, String> {
    let proposals = &spec["proposals"];
    let needs = |name: &str| {
        proposals
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p == name))
    };
    let (http, sockets) = (needs("http"), needs("sockets"));
    if proposals
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p != "http" && p != "sockets"))
    {
        return Err(format!("needs {proposals}"));
    }
    if spec.get("world").is_some() {
        return Err("a service".into());
    }
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let env = |v: &serde_json::Value| -> Vec<(String, String)> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = P3Spec {
        http,
        sockets,
        args: strings(&spec["args"]),
        env: env(&spec["env"]),
        root: spec["root"].as_str().map(String::from),
        stdin: String::new(),
        stdout: spec["stdout"].as_str().map(String::from),
        exit_code: spec["exit_code"].as_i64().unwrap_or(0),
    };
    for op in spec["operations"].as_array().into_iter().flatten() {
        match (op["type"].as_str(), op["id"].as_str()) {
            (Some("run"), _) => {
                out.args = strings(&op["args"]);
                out.env = env(&op["env"]);
                out.root = op["root"].as_str().map(String::from);
            }
            (Some("write"), Some("stdin")) => out
                .stdin
                .push_str(op["payload"].as_str().unwrap_or_default()),
            (Some("read"), None | Some("stdout")) => out
                .stdout
                .get_or_insert_with(String::new)
                .push_str(op["payload"].as_str().unwrap_or_default()),
            // stderr goes to the function's logs.
            (Some("read"), Some("stderr")) => {}
            (Some("wait"), _) => out.exit_code = op["exit_code"].as_i64().unwrap_or(0),
            (other, _) => return Err(format!("needs the suite's runner ({other:?})")),
        }
    }
    Ok(out)
}

/// Whether `wasmtime run` 48 passes the test (exit code and stdout).
fn passes_under_wasmtime(wasm: &Path, dir: &Path, spec: &P3Spec, cache: &Path) -> bool {
    let mut cmd = std::process::Command::new(wasmtime());
    cmd.args(["run", "-Sp3", "-Wcomponent-model-async"])
        .args(if spec.http { &["-Shttp"][..] } else { &[] })
        .args(if spec.sockets {
            &["-Sinherit-network"][..]
        } else {
            &[]
        })
        .env("XDG_CACHE_HOME", cache)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    // A copy of the root: the test may write to it.
    let scratch = tempfile::tempdir().unwrap();
    if let Some(root) = &spec.root {
        copy_dir(&dir.join(root), scratch.path());
        cmd.arg("--dir")
            .arg(format!("{}::/", scratch.path().display()));
    }
    for (k, v) in &spec.env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    cmd.arg(wasm).args(&spec.args);
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(spec.stdin.as_bytes());
    }
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().map(i64::from);
    code == Some(spec.exit_code)
        && spec
            .stdout
            .as_ref()
            .is_none_or(|want| *want == String::from_utf8_lossy(&out.stdout))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            let mut perms = std::fs::metadata(&target).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&target, perms).unwrap();
        }
    }
}

/// The suite's WASI 0.3 tests that run as plain commands (the others need
/// its own runner: servers, connections, signals): each passes on Updraft
/// wherever it passes under `wasmtime run` 48 on this machine.
#[tokio::test(flavor = "multi_thread")]
async fn wasi_0_3_commands_pass_as_under_wasmtime_run() {
    let dir = suite_dir().join("rust/testsuite/wasm32-wasip3");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!(
            "SKIPPED: the WASI test suite is not at {} (set WASI_TESTSUITE_DIR): \
             wasi_0_3_commands_pass_as_under_wasmtime_run",
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
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data);
    let cache = work.path().join("wasmtime-cache");
    let (mut runnable, mut reference_passes, mut failed) = (0, 0, Vec::new());
    let mut skipped: std::collections::BTreeMap<String, usize> = Default::default();
    for (i, wasm) in wasms.iter().enumerate() {
        let stem = wasm.file_stem().unwrap().to_string_lossy().into_owned();
        let spec: serde_json::Value = std::fs::read_to_string(wasm.with_extension("json"))
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap_or_else(|_| serde_json::json!({}));
        let spec = match p3_spec(&spec) {
            Ok(spec) => spec,
            Err(why) => {
                *skipped.entry(why).or_default() += 1;
                continue;
            }
        };
        runnable += 1;
        if !passes_under_wasmtime(wasm, &dir, &spec, &cache) {
            println!("{stem}: fails under wasmtime run too; not required");
            continue;
        }
        reference_passes += 1;
        let name = format!("p3-{i}");
        let mut table = toml::Table::new();
        table.insert("name".into(), name.as_str().into());
        table.insert("source".into(), wasm.to_string_lossy().as_ref().into());
        table.insert("kind".into(), "command".into());
        table.insert("timeout_ms".into(), 60_000.into());
        // As `wasmtime run` names it.
        table.insert(
            "argv0".into(),
            wasm.file_name().unwrap().to_string_lossy().as_ref().into(),
        );
        if !spec.args.is_empty() {
            let args: Vec<toml::Value> = spec.args.iter().map(|a| a.as_str().into()).collect();
            table.insert("args".into(), args.into());
        }
        if !spec.env.is_empty() {
            let env: toml::Table = spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().into()))
                .collect();
            table.insert("env".into(), env.into());
        }
        if spec.sockets {
            let hosts: Vec<toml::Value> = [
                "tcp://127.0.0.1:*",
                "udp://127.0.0.1:*",
                "tcp://[::1]:*",
                "udp://[::1]:*",
            ]
            .into_iter()
            .map(toml::Value::from)
            .collect();
            table.insert("allowed_outbound_hosts".into(), hosts.into());
        }
        if let Some(root) = &spec.root {
            let mut mount = toml::Table::new();
            mount.insert(
                "source".into(),
                dir.join(root).to_string_lossy().as_ref().into(),
            );
            mount.insert("destination".into(), "/".into());
            table.insert("files".into(), vec![toml::Value::from(mount)].into());
            table.insert("files_writable".into(), true.into());
        }
        let manifest = work.path().join(format!("{name}.toml"));
        std::fs::write(&manifest, toml::to_string(&table).unwrap()).unwrap();
        let out = server.cli(&["deploy", manifest.to_str().unwrap()]);
        if !out.status.success() {
            failed.push(format!(
                "{stem}: deploy failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        }
        let response = server
            .api()
            .post(server.url(&format!("/v1/functions/{name}/invoke")))
            .body(spec.stdin.clone())
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
        if code != Some(spec.exit_code) || spec.stdout.as_ref().is_some_and(|w| *w != stdout) {
            let logs = server.cli(&["logs", &name]);
            failed.push(format!(
                "{stem}: exit {code:?} (want {}), status {status}, stdout {stdout:?} (want {:?})\n  logs: {}",
                spec.exit_code,
                spec.stdout,
                String::from_utf8_lossy(&logs.stdout).trim().replace('\n', "\n  ")
            ));
        }
    }
    println!(
        "WASI test suite (wasm32-wasip3): {runnable} run as commands; wasmtime run passes \
         {reference_passes}, Updraft passes {} of those. Not run: {skipped:?}",
        reference_passes - failed.len()
    );
    assert!(runnable > 0 && reference_passes > 0);
    // Sockets follow allowed_outbound_hosts: none listed, none open; a
    // listener on loopback is not reached when loopback is not listed.
    let connect = dir.join("sockets-tcp-connect.wasm");
    for (name, hosts, note) in [
        ("sock-none", "", None),
        (
            "sock-other",
            "allowed_outbound_hosts = [\"tcp://10.0.0.0/8:*\"]\n",
            Some("connecting to 127.0.0.1:"),
        ),
    ] {
        let manifest = work.path().join(format!("{name}.toml"));
        std::fs::write(
            &manifest,
            format!(
                "name = \"{name}\"\nsource = {:?}\n{hosts}",
                connect.to_string_lossy()
            ),
        )
        .unwrap();
        server.cli_ok(&["deploy", manifest.to_str().unwrap()]);
        let response = server
            .api()
            .post(server.url(&format!("/v1/functions/{name}/invoke")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 500, "{name}");
        if let Some(note) = note {
            let logs = server.cli_ok(&["logs", name]);
            assert!(
                logs.contains(note) && logs.contains("add \"tcp://127.0.0.1:"),
                "{logs}"
            );
        }
    }
    assert!(failed.is_empty(), "failed:\n{}", failed.join("\n"));
}

/// One `request` operation of a service test and the response it expects.
struct ServiceRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
    status: u16,
    want_headers: Vec<(String, String)>,
    want_body: Option<String>,
}

/// A service test's requests, when it needs nothing of the suite's runner
/// but requests (no servers of its own to call).
fn service_spec(spec: &serde_json::Value) -> Option<Vec<ServiceRequest>> {
    if spec["world"] != "wasi:http/service" || spec.get("servers").is_some() {
        return None;
    }
    let pairs = |v: &serde_json::Value| -> Vec<(String, String)> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut requests = Vec::new();
    for op in spec["operations"].as_array()? {
        match op["type"].as_str()? {
            // Updraft's instances start per request and stop on their own.
            "run" | "kill" | "wait" => {}
            "request" => requests.push(ServiceRequest {
                method: op["method"].as_str()?.to_string(),
                path: op["path"].as_str()?.to_string(),
                headers: pairs(&op["headers"]),
                body: op["body"].as_str().unwrap_or_default().to_string(),
                status: op["response"]["status"].as_u64()? as u16,
                want_headers: pairs(&op["response"]["headers"]),
                want_body: op["response"]["body"].as_str().map(String::from),
            }),
            _ => return None,
        }
    }
    Some(requests)
}

/// What is wrong with the answers `base` gives to a service test's requests;
/// empty when each is the response its spec names.
async fn answers(client: &reqwest::Client, base: &str, requests: &[ServiceRequest]) -> Vec<String> {
    let mut wrong = Vec::new();
    for want in requests {
        let mut request =
            client.request(want.method.parse().unwrap(), format!("{base}{}", want.path));
        for (k, v) in &want.headers {
            request = request.header(k, v);
        }
        let response = request.body(want.body.clone()).send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        let what = format!("{} {}", want.method, want.path);
        if status != want.status {
            wrong.push(format!("{what}: status {status}, want {}", want.status));
        }
        for (k, v) in &want.want_headers {
            let got = headers.get(k).and_then(|h| h.to_str().ok());
            if got != Some(v.as_str()) {
                wrong.push(format!("{what}: header {k}: {got:?}, want {v:?}"));
            }
        }
        if want.want_body.as_ref().is_some_and(|b| *b != body) {
            wrong.push(format!("{what}: body {body:?}, want {:?}", want.want_body));
        }
    }
    wrong
}

/// The suite's WASI 0.3 services (`wasi:http/service`) that need no servers
/// of the runner's: deployed as http functions on `/...`, each request of the
/// spec goes through Updraft's gateway, and through `wasmtime serve` 48 side
/// by side; each passes on Updraft wherever it passes there.
#[tokio::test(flavor = "multi_thread")]
async fn wasi_0_3_services_answer_as_their_specs_say() {
    let dir = suite_dir().join("rust/testsuite/wasm32-wasip3");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!(
            "SKIPPED: the WASI test suite is not at {} (set WASI_TESTSUITE_DIR): \
             wasi_0_3_services_answer_as_their_specs_say",
            suite_dir().display()
        );
        return;
    };
    let mut specs: Vec<(PathBuf, Vec<ServiceRequest>)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| {
            let spec: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            service_spec(&spec).map(|requests| (p.with_extension("wasm"), requests))
        })
        .collect();
    specs.sort_by(|a, b| a.0.cmp(&b.0));
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data);
    let client = common::client();
    let (mut reference_passes, mut failed) = (0, Vec::new());
    for (wasm, requests) in &specs {
        let stem = wasm.file_stem().unwrap().to_string_lossy().into_owned();
        let manifest = work.path().join(format!("{stem}.toml"));
        std::fs::write(
            &manifest,
            format!(
                "name = \"svc\"\nsource = {:?}\nroute = \"/...\"\n",
                wasm.to_string_lossy()
            ),
        )
        .unwrap();
        let out = server.cli(&["deploy", manifest.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{stem}: deploy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = answers(&client, &server.url(""), requests).await;
        let peer = Peer::serve(
            wasm,
            &["-Scli", "-Sp3", "-Shttp", "-Wcomponent-model-async"],
        )
        .await;
        let theirs = answers(&client, &peer.url, requests).await;
        drop(peer);
        if !theirs.is_empty() {
            println!("{stem}: fails under wasmtime serve too; not required");
        } else if !ours.is_empty() {
            reference_passes += 1;
            let logs = server.cli(&["logs", "svc"]);
            failed.push(format!(
                "{stem}: {}\n  logs: {}",
                ours.join("; "),
                String::from_utf8_lossy(&logs.stdout)
                    .trim()
                    .replace('\n', "\n  ")
            ));
        } else {
            reference_passes += 1;
        }
        server.cli_ok(&["rm", "svc"]);
    }
    println!(
        "WASI test suite (wasm32-wasip3): {} services; wasmtime serve passes {reference_passes}, \
         Updraft passes {} of those",
        specs.len(),
        reference_passes - failed.len()
    );
    assert!(reference_passes > 0);
    assert!(failed.is_empty(), "failed:\n{}", failed.join("\n"));
}
