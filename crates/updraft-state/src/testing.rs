//! Test support (feature `testing`): real servers on ports picked at run
//! time, stopped when dropped — an S3-compatible one for the blob
//! backend's tests (moto's server) and NATS with JetStream for cluster
//! mode's (Debian's `nats-server`), both installed by `scripts/setup.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::blob::S3Config;

/// A running `moto_server`, killed when dropped.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

/// Where `scripts/setup.sh` puts moto: the venv under the target dir.
fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("UPDRAFT_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("py-venv/bin/moto_server");
    assert!(
        path.is_file(),
        "{} is missing: the S3 tests need moto's server; install it with scripts/setup.sh \
         (the README's test command does), or point UPDRAFT_MOTO_SERVER at one",
        path.display()
    );
    path
}

impl S3Server {
    pub fn start() -> S3Server {
        let mut child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moto_server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("http://127.0.0.1:") {
                    let _ = tx.send(line[i..].trim().to_string());
                }
                // Keep draining: moto logs every request.
            }
        });
        let endpoint = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(endpoint) => endpoint,
            Err(_) => {
                let _ = child.kill();
                panic!("moto_server did not print its address within 60 s");
            }
        };
        S3Server { child, endpoint }
    }

    /// Creates `bucket` (moto takes unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
            "creating bucket {bucket}: {response}"
        );
    }

    /// A config for `s3://{bucket}/{prefix}` on this server.
    pub fn config(&self, url: &str) -> S3Config {
        S3Config {
            url: url.to_string(),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `nats-server` with JetStream, its store in a temp dir, killed
/// (and the store removed) when dropped.
pub struct NatsServer {
    child: Option<Child>,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    args: Vec<String>,
    jetstream: bool,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// As cluster mode needs it: JetStream on, messages up to 8 MB.
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        // Values of up to 1 MiB need more than NATS's default 1 MB message.
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, "max_payload: 8MB\n").unwrap();
        let config = config.to_str().unwrap().to_string();
        NatsServer::start_in(dir, &["-c", &config], true)
    }

    /// With `args` of its own, and JetStream only if `jetstream`.
    pub fn start_with(args: &[&str], jetstream: bool) -> NatsServer {
        NatsServer::start_in(tempfile::tempdir().unwrap(), args, jetstream)
    }

    fn start_in(dir: tempfile::TempDir, args: &[&str], jetstream: bool) -> NatsServer {
        let mut server = NatsServer {
            child: None,
            url: String::new(),
            args: args.iter().map(|a| a.to_string()).collect(),
            jetstream,
            dir,
        };
        server.spawn("-1");
        server
    }

    /// Starts the server on `port` (`-1`: any free one) and waits until it
    /// says where it listens.
    fn spawn(&mut self, port: &str) {
        let mut command = Command::new("nats-server");
        if self.jetstream {
            command
                .arg("-js")
                .arg("-sd")
                .arg(self.dir.path().join("store"));
        }
        let mut child = command
            .args(["-a", "127.0.0.1", "-p", port])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("nats-server: {e}: install it with scripts/setup.sh (the README's test command does)")
            });
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            const READY: &str = "Listening for client connections on ";
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find(READY) {
                    let _ = tx.send(format!("nats://{}", line[i + READY.len()..].trim()));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => self.url = url,
            Err(_) => {
                let _ = child.kill();
                panic!("nats-server did not say where it listens within 30 s");
            }
        }
        self.child = Some(child);
    }

    /// Kills the server (SIGKILL): an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it with SIGTERM (it writes out its buffers) and starts it
    /// again on the same port with the same store.
    pub fn restart_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let port = self.url.rsplit(':').next().unwrap().to_string();
        self.spawn(&port);
    }

    /// Starts it again on the same port with the same store: what was
    /// acknowledged before must be there.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.url.rsplit(':').next().unwrap().to_string();
        self.spawn(&port);
    }

    /// Connected to this server.
    pub async fn cluster(&self) -> crate::nats::Cluster {
        let config = crate::nats::ClusterConfig::new([self.url.clone()]);
        crate::nats::Cluster::connect(&config).await.unwrap()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
