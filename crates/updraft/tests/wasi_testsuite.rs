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
        let (code, stdout) = exit_and_stdout(response).await;
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
    let mut out = P3Spec {
        http,
        sockets,
        args: strings(&spec["args"]),
        env: string_pairs(&spec["env"]),
        root: spec["root"].as_str().map(String::from),
        stdin: String::new(),
        stdout: spec["stdout"].as_str().map(String::from),
        exit_code: spec["exit_code"].as_i64().unwrap_or(0),
    };
    for op in spec["operations"].as_array().into_iter().flatten() {
        match (op["type"].as_str(), op["id"].as_str()) {
            (Some("run"), _) => {
                out.args = strings(&op["args"]);
                out.env = string_pairs(&op["env"]);
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

/// A spec's object of strings (`env`, `headers`) as pairs.
fn string_pairs(v: &serde_json::Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The suite's WASI 0.3 tests: their folder and its entries, or `None`
/// (saying that `test` skipped) when the suite is absent.
fn p3_tests(test: &str) -> Option<(PathBuf, std::fs::ReadDir)> {
    let dir = suite_dir().join("rust/testsuite/wasm32-wasip3");
    match std::fs::read_dir(&dir) {
        Ok(entries) => Some((dir, entries)),
        Err(_) => {
            println!(
                "SKIPPED: the WASI test suite is not at {} (set WASI_TESTSUITE_DIR): {test}",
                suite_dir().display()
            );
            None
        }
    }
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
    let Some((dir, entries)) = p3_tests("wasi_0_3_commands_pass_as_under_wasmtime_run") else {
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
        let (code, stdout) = exit_and_stdout(response).await;
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
            server
                .wait_for_logs(name, &[note, "add \"tcp://127.0.0.1:"])
                .await;
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

/// A service test: its requests, and the servers of the suite's runner it
/// calls (`servers` in its spec).
struct ServiceSpec {
    requests: Vec<ServiceRequest>,
    servers: serde_json::Value,
}

fn service_spec(spec: &serde_json::Value) -> Option<ServiceSpec> {
    if spec["world"] != "wasi:http/service" {
        return None;
    }
    let mut requests = Vec::new();
    for op in spec["operations"].as_array()? {
        match op["type"].as_str()? {
            // Updraft's instances start per request and stop on their own.
            "run" | "kill" | "wait" => {}
            "request" => requests.push(ServiceRequest {
                method: op["method"].as_str()?.to_string(),
                path: op["path"].as_str()?.to_string(),
                headers: string_pairs(&op["headers"]),
                body: op["body"].as_str().unwrap_or_default().to_string(),
                status: op["response"]["status"].as_u64()? as u16,
                want_headers: string_pairs(&op["response"]["headers"]),
                want_body: op["response"]["body"].as_str().map(String::from),
            }),
            _ => return None,
        }
    }
    Some(ServiceSpec {
        requests,
        servers: spec["servers"].clone(),
    })
}

/// The HTTP servers of the suite's runner a service test calls, served as
/// its `test_suite_runner.py` serves them, bytes on the wire included: each
/// on 127.0.0.1, named to the guest as `HTTP_SERVER_<NAME>=host:port`;
/// routes by exact method and request target (query included), else 404;
/// `echo-body` answers the body; `echo-headers` answers `x-request-method`,
/// `x-request-path`, `x-echo-<name>` per header value and `x-trailer-<name>`
/// per trailer; a static response has a body, or chunks and trailers; a
/// `closed` server is a port nothing listens on. One request per connection.
struct EndpointServers {
    env: Vec<(String, String)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for EndpointServers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl EndpointServers {
    async fn start(servers: &serde_json::Value) -> EndpointServers {
        let mut out = EndpointServers {
            env: Vec::new(),
            tasks: Vec::new(),
        };
        for server in servers.as_array().into_iter().flatten() {
            let name = format!(
                "HTTP_SERVER_{}",
                server["name"].as_str().unwrap().to_uppercase()
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            out.env
                .push((name, listener.local_addr().unwrap().to_string()));
            if server["kind"] == "closed" {
                // Bound, then closed: connecting is refused.
                continue;
            }
            let endpoints = std::sync::Arc::new(server["endpoints"].clone());
            out.tasks.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve_endpoint(stream, endpoints.clone()));
                }
            }));
        }
        out
    }
}

async fn serve_endpoint(
    stream: tokio::net::TcpStream,
    endpoints: std::sync::Arc<serde_json::Value>,
) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let mut line = String::new();
    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let mut request_line = line.split_whitespace();
    let method = request_line.next().unwrap_or_default().to_string();
    let target = request_line.next().unwrap_or_default().to_string();
    // Header and trailer lines: `name: value` up to a blank line.
    async fn fields(
        read: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                return out;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                return out;
            }
            if let Some((name, value)) = line.split_once(':') {
                out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    let headers = fields(&mut read).await;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut size = String::new();
            if read.read_line(&mut size).await.unwrap_or(0) == 0 {
                break;
            }
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16)
                .unwrap_or(0);
            if size == 0 {
                trailers = fields(&mut read).await;
                break;
            }
            let mut chunk = vec![0; size + 2];
            if read.read_exact(&mut chunk).await.is_err() {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body = vec![0; len];
        let _ = read.read_exact(&mut body).await;
    }
    let endpoint = endpoints
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["method"] == method.as_str() && e["path"] == target.as_str());
    let mut head: Vec<(String, String)> = Vec::new();
    let mut chunks: Option<Vec<String>> = None;
    let mut response_trailers: Vec<(String, String)> = Vec::new();
    let status = match endpoint {
        None => {
            body.clear();
            404
        }
        Some(e) if e["mode"] == "echo-body" => 200,
        Some(e) if e["mode"] == "echo-headers" => {
            head.push(("x-request-method".into(), method.clone()));
            head.push(("x-request-path".into(), target.clone()));
            let mut names: Vec<&str> = Vec::new();
            for (name, _) in &headers {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
            for name in names {
                for (_, value) in headers.iter().filter(|(n, _)| n == name) {
                    head.push((format!("x-echo-{name}"), value.clone()));
                }
            }
            for (name, value) in &trailers {
                head.push((format!("x-trailer-{name}"), value.clone()));
            }
            body.clear();
            200
        }
        Some(e) => {
            let response = &e["response"];
            for (k, v) in response["headers"].as_object().into_iter().flatten() {
                head.push((k.clone(), v.as_str().unwrap_or_default().to_string()));
            }
            body = response["body"]
                .as_str()
                .unwrap_or_default()
                .as_bytes()
                .to_vec();
            chunks = response["chunks"].as_array().map(|c| {
                c.iter()
                    .map(|x| x.as_str().unwrap_or_default().to_string())
                    .collect()
            });
            for (k, v) in response["trailers"].as_object().into_iter().flatten() {
                response_trailers.push((k.clone(), v.as_str().unwrap_or_default().to_string()));
            }
            response["status"].as_u64().unwrap_or(200) as u16
        }
    };
    let reason = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
    for (name, value) in &head {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    match &chunks {
        None => out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes()),
        Some(_) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            if !response_trailers.is_empty() {
                let names: Vec<&str> = response_trailers.iter().map(|(n, _)| n.as_str()).collect();
                out.extend_from_slice(format!("Trailer: {}\r\n", names.join(", ")).as_bytes());
            }
        }
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    if method != "HEAD" {
        match &chunks {
            None => out.extend_from_slice(&body),
            Some(chunks) => {
                for chunk in chunks {
                    out.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
                }
                out.extend_from_slice(b"0\r\n");
                for (name, value) in &response_trailers {
                    out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    let _ = write.write_all(&out).await;
    let _ = write.shutdown().await;
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

/// The suite's WASI 0.3 services (`wasi:http/service`): deployed as http
/// functions on `/...` (with `http://127.0.0.1:*` in allowed_outbound_hosts
/// and the runner's servers in env), each request of the spec goes through
/// Updraft's gateway, and through `wasmtime serve` 48 side by side; each
/// passes on Updraft wherever it passes there.
#[tokio::test(flavor = "multi_thread")]
async fn wasi_0_3_services_answer_as_their_specs_say() {
    let Some((_, entries)) = p3_tests("wasi_0_3_services_answer_as_their_specs_say") else {
        return;
    };
    let mut specs: Vec<(PathBuf, ServiceSpec)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| {
            let spec: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            service_spec(&spec).map(|service| (p.with_extension("wasm"), service))
        })
        .collect();
    specs.sort_by(|a, b| a.0.cmp(&b.0));
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data);
    let client = common::client();
    let (mut reference_passes, mut failed) = (0, Vec::new());
    for (wasm, service) in &specs {
        let stem = wasm.file_stem().unwrap().to_string_lossy().into_owned();
        let requests = &service.requests;
        let servers = EndpointServers::start(&service.servers).await;
        let env: Vec<String> = servers
            .env
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}"))
            .collect();
        let manifest = work.path().join(format!("{stem}.toml"));
        std::fs::write(
            &manifest,
            format!(
                "name = \"svc\"\nsource = {:?}\nroute = \"/...\"\n\
                 allowed_outbound_hosts = [\"http://127.0.0.1:*\"]\nenv = {{ {} }}\n",
                wasm.to_string_lossy(),
                env.join(", ")
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
        let mut options = vec!["-Scli", "-Sp3", "-Shttp", "-Wcomponent-model-async"];
        let env: Vec<String> = servers
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for pair in &env {
            options.extend(["--env", pair.as_str()]);
        }
        let peer = Peer::serve(wasm, &options).await;
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

/// A command's exit code and stdout, from its invocation's response: the
/// header and body of a 200, the error's fields otherwise.
async fn exit_and_stdout(response: reqwest::Response) -> (Option<i64>, String) {
    let header = response
        .headers()
        .get("updraft-exit-code")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let ok = response.status() == 200;
    let body = response.text().await.unwrap();
    if ok {
        return (header, body);
    }
    let error: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (
        error["error"]["exit_code"].as_i64(),
        error["error"]["stdout"]
            .as_str()
            .unwrap_or(&body)
            .to_string(),
    )
}
