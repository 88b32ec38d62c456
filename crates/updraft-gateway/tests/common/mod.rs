//! What the in-process gateway tests share: a platform on a temp dir with
//! an admin key, driven through `router()` as a tower `Service` (no socket,
//! no spawned binary), and the test guests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use updraft_scheduler::{Platform, PlatformConfig};

pub struct Api {
    pub platform: Arc<Platform>,
    pub key: String,
    _dir: tempfile::TempDir,
}

impl Api {
    pub async fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let platform = Platform::open(PlatformConfig::new(dir.path().to_path_buf()))
            .await
            .unwrap();
        let (_, key) = platform
            .create_api_key("local", true, "test")
            .await
            .unwrap();
        Api {
            platform,
            key,
            _dir: dir,
        }
    }

    /// Sends a request with the admin key; returns the status and the body.
    pub async fn send(&self, request: Request<Body>) -> (StatusCode, Bytes) {
        self.send_as(Some(&self.key.clone()), request).await
    }

    pub async fn send_as(
        &self,
        key: Option<&str>,
        mut request: Request<Body>,
    ) -> (StatusCode, Bytes) {
        if let Some(key) = key {
            request.headers_mut().insert(
                header::AUTHORIZATION,
                format!("Bearer {key}").parse().unwrap(),
            );
        }
        let response = updraft_gateway::router(self.platform.clone())
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(body.into())
            .unwrap();
        let (status, body) = self.send(request).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, Body::empty()).await
    }

    /// Asserts the status and error code of a request.
    pub async fn expect(
        &self,
        method: Method,
        uri: &str,
        body: impl Into<Body>,
        status: u16,
        code: &str,
    ) {
        let (got, json) = self.call(method.clone(), uri, body).await;
        assert_eq!(got.as_u16(), status, "{method} {uri}: {json}");
        assert_eq!(json["error"]["code"], code, "{method} {uri}: {json}");
        let message = json["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty(),
            "{method} {uri}: an error says what to fix"
        );
    }
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// A guest built by `cargo xtask guests`.
pub fn guest(name: &str) -> Bytes {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("guests").join(format!("{name}.wasm"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the test guests with `cargo xtask guests`",
            path.display()
        )
    });
    Bytes::from(bytes)
}

/// Waits until `check` answers something, for at most 30 s (a condition,
/// not a sleep: it returns as soon as it holds).
pub async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
