//! Test support: start the real `updraft` binary on a fresh data dir with a
//! port picked at run time, talk to it over real HTTP and through the CLI, and
//! stop it when the test ends.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (two levels above this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// A guest built by `cargo xtask guests`.
pub fn guest(name: &str) -> PathBuf {
    let path = target_dir().join("guests").join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the test guests with `cargo xtask guests` (the README's test command does)",
        path.display()
    );
    path
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_updraft")
}

/// `updraft up` on `dir/data` with the server config `config`, expected to
/// fail before serving: its exit and what it printed.
pub fn up_with(dir: &Path, config: &Path) -> std::process::Output {
    Command::new(bin())
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// Whether this run starts every server as a cluster node
/// (`UPDRAFT_TEST_CLUSTER=1`, which `cargo xtask test` sets for a second
/// run of the end-to-end suites): the same tests then check the JetStream
/// backends.
pub fn cluster_mode() -> bool {
    std::env::var_os("UPDRAFT_TEST_CLUSTER").is_some_and(|v| v == "1")
}

thread_local! {
    /// In cluster mode, each data dir's own nats-server: kept across
    /// restarts of its server, stopped when the test's thread ends.
    static NATS: std::cell::RefCell<std::collections::HashMap<PathBuf, updraft_state::testing::NatsServer>> =
        Default::default();
}

/// In cluster mode, the arguments that make a server on `data_dir` a node
/// of that dir's NATS (none if the test chose a cluster itself).
fn cluster_args(data_dir: &Path, extra: &[&str]) -> Vec<String> {
    if !cluster_mode() || extra.contains(&"--cluster") {
        return Vec::new();
    }
    let url = NATS.with(|servers| {
        servers
            .borrow_mut()
            .entry(data_dir.to_path_buf())
            .or_insert_with(updraft_state::testing::NatsServer::start)
            .url
            .clone()
    });
    vec!["--cluster".into(), url]
}

/// A running `updraft up`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    /// The admin key `updraft up` wrote to the data dir.
    pub admin_key: String,
}

impl Server {
    pub fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_logging(data_dir, extra, "warn", Stdio::inherit())
    }

    /// Starts with `RUST_LOG=rust_log`, the server's log going to `stderr`.
    pub fn start_logging(data_dir: &Path, extra: &[&str], rust_log: &str, stderr: Stdio) -> Server {
        Self::spawn(data_dir, extra, rust_log, stderr, &[])
    }

    /// [`Self::start_with`], with `env` set for the server.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn(data_dir, extra, "warn", Stdio::inherit(), env)
    }

    fn spawn(
        data_dir: &Path,
        extra: &[&str],
        rust_log: &str,
        stderr: Stdio,
        env: &[(&str, &str)],
    ) -> Server {
        let cluster = cluster_args(data_dir, extra);
        let mut child = Command::new(bin())
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .args(&cluster)
            .envs(env.iter().copied())
            .env("RUST_LOG", rust_log)
            .env("XDG_CACHE_HOME", data_dir.join("xdg-cache"))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start updraft");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("updraft did not print its address");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("address in the first line")
            .to_string();
        // A cluster node keeps no registry of its own: the run is really
        // testing the cluster's backends.
        assert!(
            cluster.is_empty() || !data_dir.join("registry.redb").exists(),
            "a cluster node wrote registry.redb"
        );
        let admin_key = std::fs::read_to_string(data_dir.join("admin.key"))
            .expect("updraft up writes DATA_DIR/admin.key")
            .trim()
            .to_string();
        Server {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            admin_key,
        }
    }

    /// SIGKILL: no graceful shutdown, like a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "updraft did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// Runs the CLI against this server, as its operator: the CLI finds the
    /// admin key in the data dir by itself.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--server")
            .arg(&self.url)
            .args(args)
            .env("UPDRAFT_DATA_DIR", &self.data_dir)
            .env_remove("UPDRAFT_KEY")
            .current_dir(root())
            .output()
            .expect("run updraft CLI")
    }

    /// Runs the CLI and insists on success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "updraft {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI with `key` (through `--key`), not the admin key.
    pub fn cli_as(&self, key: &str, args: &[&str]) -> Output {
        Command::new(bin())
            .args(["--server", &self.url, "--key", key])
            .args(args)
            .env_remove("UPDRAFT_DATA_DIR")
            .env_remove("UPDRAFT_KEY")
            .current_dir(&self.data_dir)
            .output()
            .expect("run updraft CLI")
    }

    /// Deploys a guest by path with a manifest written to a temp file.
    pub fn deploy_guest(&self, name: &str, guest_name: &str, extra_toml: &str) -> String {
        let manifest = self.write_manifest(name, guest_name, extra_toml);
        self.cli_ok(&["deploy", manifest.to_str().unwrap()])
    }

    /// Writes a manifest for a guest; returns its path.
    pub fn write_manifest(&self, name: &str, guest_name: &str, extra_toml: &str) -> PathBuf {
        let manifest = self.data_dir.join(format!("{name}.toml"));
        let text = format!(
            "name = \"{name}\"\nsource = \"{}\"\n{extra_toml}\n",
            guest(guest_name).display()
        );
        std::fs::write(&manifest, text).unwrap();
        manifest
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A client that sends `key` with every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .default_headers(headers)
        .build()
        .unwrap()
}

impl Server {
    /// `GET path` with `key`, parsed as JSON.
    pub async fn get_json_as(&self, key: &str, path: &str) -> serde_json::Value {
        self.send_json(client_with_key(key).get(self.url(path)))
            .await
    }

    /// A client of the management API with the admin key.
    pub fn api(&self) -> reqwest::Client {
        client_with_key(&self.admin_key)
    }

    /// `GET path` on this server with the admin key: the body as text.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self.api().get(self.url(path)).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// The usage records of `GET /v1/usage/records{query}` (NDJSON), parsed.
    pub async fn usage_records(&self, query: &str) -> Vec<serde_json::Value> {
        let text = self.get_text(&format!("/v1/usage/records{query}")).await;
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `GET path` on this server with the admin key, parsed as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.send_json(self.api().get(self.url(path))).await
    }

    /// `POST path` (empty body) on this server with the admin key, parsed as JSON.
    pub async fn post_json(&self, path: &str) -> serde_json::Value {
        self.send_json(self.api().post(self.url(path))).await
    }

    async fn send_json(&self, request: reqwest::RequestBuilder) -> serde_json::Value {
        request.send().await.unwrap().json().await.unwrap()
    }
}

/// Checks that `response` is an API error with `status` and `code`; returns its message.
pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status().as_u16(), status);
    let body = response.text().await.unwrap();
    assert_eq!(error_code(&body), code, "{body}");
    error_message(&body)
}

/// Error code of a JSON error body.
pub fn error_code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

pub fn error_message(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// How long a wait for the platform's background work may take before the
/// test fails: generous, because a loaded 2-core machine is slow, and the
/// wait ends as soon as the condition holds.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// Polls `probe` every `every` until it gives `Ok`; after `within` the test
/// fails with `what` and the probe's last `Err` (what it saw instead).
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, every: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => assert!(Instant::now() < deadline, "{what}: {seen}"),
        }
        tokio::time::sleep(every).await;
    }
}

impl Server {
    /// Waits until async invocation `id` has one of the `done` statuses.
    pub async fn wait_for_invocation(&self, id: &str, done: &[&str]) -> serde_json::Value {
        let what = format!("invocation {id} stuck");
        wait_until(&what, WAIT_MAX, Duration::from_millis(20), || async {
            let status = self.get_json(&format!("/v1/invocations/{id}")).await;
            match done.contains(&status["status"].as_str().unwrap_or_default()) {
                true => Ok(status),
                false => Err(status.to_string()),
            }
        })
        .await
    }

    /// Waits until the named queue is empty and nothing is in flight.
    pub async fn drain_queue(&self, name: &str) {
        let what = format!("queue {name} does not drain");
        wait_until(&what, WAIT_MAX, Duration::from_millis(50), || async {
            let all = self.get_json("/v1/queues").await;
            let queue = all["queues"]
                .as_array()
                .and_then(|q| q.iter().find(|q| q["name"] == name).cloned())
                .unwrap_or_default();
            match queue["depth"] == 0 && queue["in_flight"] == 0 {
                true => Ok(()),
                false => Err(queue.to_string()),
            }
        })
        .await
    }

    /// Waits until the logs of `function` hold every one of `lines`, and
    /// returns them. A guest's lines are recorded when its instance finishes,
    /// which can be after its response has reached the client.
    pub async fn wait_for_logs(&self, function: &str, lines: &[&str]) -> String {
        let what = format!("the logs of {function} never held {lines:?}");
        wait_until(&what, WAIT_MAX, Duration::from_millis(20), || async {
            let logs = self.cli_ok(&["logs", function]);
            match lines.iter().all(|line| logs.contains(line)) {
                true => Ok(logs),
                false => Err(logs),
            }
        })
        .await
    }

    /// Waits until `key` is in the store `default` (events arrive async).
    pub async fn wait_for_key(&self, key: &str) {
        let what = format!("{key} never came");
        wait_until(&what, WAIT_MAX, Duration::from_millis(50), || async {
            let keys = self.cli_ok(&["kv", "ls", "default"]);
            match keys.lines().any(|k| k == key) {
                true => Ok(()),
                false => Err(keys),
            }
        })
        .await
    }

    /// Waits for the first dead letter of `function`.
    pub async fn wait_for_dead_letter(&self, function: &str) -> serde_json::Value {
        let what = format!("{function} has no dead letter");
        wait_until(&what, WAIT_MAX, Duration::from_millis(50), || async {
            let dlq = self
                .get_json(&format!("/v1/functions/{function}/dlq"))
                .await;
            match dlq["dead_letters"].as_array().and_then(|d| d.first()) {
                Some(first) => Ok(first.clone()),
                None => Err(dlq.to_string()),
            }
        })
        .await
    }
}

/// The wasmtime CLI 48.0.8 (installed by scripts/setup.sh, or `$WASMTIME`).
#[allow(dead_code)]
pub fn wasmtime() -> String {
    let candidates = [
        std::env::var("WASMTIME").unwrap_or_default(),
        format!(
            "{}/.cargo/bin/wasmtime",
            std::env::var("HOME").unwrap_or_default()
        ),
        "wasmtime".to_string(),
    ];
    for c in candidates.into_iter().filter(|c| !c.is_empty()) {
        if let Ok(out) = Command::new(&c).arg("--version").output()
            && String::from_utf8_lossy(&out.stdout).contains("48.0.8")
        {
            return c;
        }
    }
    panic!("wasmtime-cli 48.0.8 not found: run scripts/setup.sh (or set WASMTIME)");
}

/// `wasmtime serve` of a component, on a port picked now; killed when dropped.
pub struct Peer {
    child: std::process::Child,
    pub url: String,
    _cache: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    /// Starts `wasmtime serve` with `options` (`-S …`) on `wasm`, and waits
    /// until it answers.
    pub async fn serve(wasm: &Path, options: &[&str]) -> Peer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cache = tempfile::tempdir().unwrap();
        let child = Command::new(wasmtime())
            .arg("serve")
            .args(options)
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .arg(wasm)
            .env("XDG_CACHE_HOME", cache.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let peer = Peer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _cache: cache,
        };
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.get(&peer.url).send().await.is_err() {
            assert!(Instant::now() < deadline, "wasmtime serve did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peer
    }
}
