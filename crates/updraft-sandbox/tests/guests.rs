//! The sandbox alone on the project's test guests (built from source by
//! `cargo xtask guests`): the http and the handler executor, and each
//! capability granted and refused by the manifest alone. The backends are
//! the real embedded key-value and blob stores on a temp dir; the caller
//! and publisher, which the scheduler provides, are small stand-ins here
//! that record what reached them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use updraft_core::{Digest, Limits, Manifest};
use updraft_sandbox::{
    Backends, CallError, CallRequest, FunctionCaller, Grants, InvocationCtx, PrepareSpec, Prepared,
    PublishError, Publisher, Sandbox, SandboxConfig,
};
use updraft_state::blob::BlobConfig;
use updraft_state::kv::{Durability, EmbeddedKv};

fn guest(name: &str) -> Vec<u8> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("guests").join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the test guests with `cargo xtask guests`",
            path.display()
        )
    })
}

/// Answers every call with `called NAME`, and keeps who was called.
#[derive(Default)]
struct Callee {
    calls: Mutex<Vec<String>>,
}

impl FunctionCaller for Callee {
    fn call(&self, request: CallRequest) -> BoxFuture<'static, Result<(u16, Bytes), CallError>> {
        self.calls.lock().unwrap().push(request.function.clone());
        let answer = Bytes::from(format!("called {}", request.function));
        Box::pin(async move { Ok((200, answer)) })
    }
}

/// Takes every message, and keeps where it went.
#[derive(Default)]
struct Channels {
    published: Mutex<Vec<(String, Bytes)>>,
}

impl Publisher for Channels {
    fn publish(
        &self,
        _owner: String,
        channel: String,
        data: Bytes,
        _content_type: Option<String>,
        _trace: Option<updraft_core::trace::TraceParent>,
    ) -> BoxFuture<'static, Result<Vec<String>, PublishError>> {
        self.published.lock().unwrap().push((channel, data));
        Box::pin(async { Ok(vec!["m1".to_string()]) })
    }
}

/// No secrets: these guests read none.
struct NoSecrets;

impl updraft_sandbox::SecretSource for NoSecrets {
    fn get<'a>(
        &'a self,
        _tenant: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async { Ok(None) })
    }
}

struct Fixture {
    sandbox: Arc<Sandbox>,
    backends: Backends,
    callee: Arc<Callee>,
    channels: Arc<Channels>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SandboxConfig::new(dir.path().join("compiled"));
        config.instances_max = 4;
        let callee = Arc::new(Callee::default());
        let channels = Arc::new(Channels::default());
        let backends = Backends {
            kv: Arc::new(EmbeddedKv::open(dir.path(), Durability::Disk).unwrap()),
            blobs: Arc::new(BlobConfig::default().open(dir.path(), 1 << 20).unwrap()),
            caller: callee.clone(),
            publisher: channels.clone(),
            secrets: Arc::new(NoSecrets),
        };
        Fixture {
            sandbox: Sandbox::new(config).unwrap(),
            backends,
            callee,
            channels,
            _dir: dir,
        }
    }

    /// `guest_name` prepared as the function `manifest` (TOML, without
    /// its name) of tenant `local`: its env and grants from the manifest.
    fn prepare(&self, guest_name: &str, manifest: &str) -> Prepared {
        let manifest = Manifest::from_toml(&format!("name = \"t\"\n{manifest}")).unwrap();
        let wasm = guest(guest_name);
        let source = || Ok(bytes::Bytes::from(wasm.clone()));
        self.sandbox
            .prepare(PrepareSpec {
                name: "t",
                wasm: &source,
                wasm_digest: Digest::of(&wasm),
                kind: None,
                limits: Limits::default(),
                env: manifest.env.clone().into_iter().collect(),
                args: manifest.args.clone(),
                argv0: None,
                files: None,
                files_writable: false,
                tmp_mb: 0,
                grants: Grants::for_function("local", &manifest, &self.backends),
                tiering: updraft_sandbox::Tiering::Off,
            })
            .unwrap()
    }

    async fn get(&self, prepared: &Prepared, path: &str) -> (u16, String) {
        self.send(
            prepared,
            http::Request::get(path).body(Bytes::new()).unwrap(),
        )
        .await
    }

    async fn send(&self, prepared: &Prepared, request: http::Request<Bytes>) -> (u16, String) {
        let request = request.map(http_body_util::Full::new);
        let on_done = Box::new(|_| {});
        let response = self
            .sandbox
            .invoke_http(prepared, request, ctx(), on_done)
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn handle(&self, prepared: &Prepared, payload: &'static str) -> (u16, String) {
        let payload = Bytes::from_static(payload.as_bytes());
        let output = self.sandbox.invoke_handler(prepared, payload, ctx()).await;
        let (status, body) = output.result.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

fn ctx() -> InvocationCtx {
    InvocationCtx {
        invocation_id: "inv-1".into(),
        tenant: Arc::from("tenant"),
        chain: Arc::new([Arc::from("t")]),
        deadline: None,
        inline: false,
        memory_quota: None,
        trace: None,
        tracer: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_executor_answers_a_request_without_a_host() {
    let f = Fixture::new();
    let hello = f.prepare("hello-rust", "");
    assert!(!hello.takes_calls());
    let (status, body) = f.get(&hello, "/?name=Ada").await;
    assert_eq!(status, 200);
    assert!(body.contains("Ada"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_handler_executor_hands_the_payload_over_directly() {
    let f = Fixture::new();
    let echo = f.prepare("chain", "[env]\nECHO = \"1\"");
    assert!(echo.takes_calls());
    assert_eq!(
        f.handle(&echo, "as it came").await,
        (200, "as it came".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_reaches_only_what_the_manifest_lists() {
    let f = Fixture::new();
    let env = "[env]\nNAME = \"a\"\nNEXT = \"b\"";
    let listed = f.prepare("chain", &format!("calls = [\"b\"]\n{env}"));
    assert_eq!(f.handle(&listed, "").await, (200, "a,called b".into()));
    let unlisted = f.prepare("chain", env);
    let (status, body) = f.handle(&unlisted, "").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("call to b failed"), "{body}");
    // Refused in the sandbox: the platform's caller never saw it.
    assert_eq!(*f.callee.calls.lock().unwrap(), vec!["b".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_opens_only_if_the_manifest_lists_it() {
    let f = Fixture::new();
    let counter = f.prepare("counter-rust", "key_value_stores = [\"default\"]");
    assert_eq!(f.get(&counter, "/counter?key=k").await, (200, "1\n".into()));
    assert_eq!(f.get(&counter, "/counter?key=k").await, (200, "2\n".into()));
    let (status, body) = f.get(&counter, "/counter?key=k&store=other").await;
    assert_eq!(status, 403, "{body}");
    // Without a grant, not even the default store opens.
    let ungranted = f.prepare("counter-rust", "");
    let (status, body) = f.get(&ungranted, "/counter?key=k").await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_goes_only_where_the_manifest_lists() {
    let f = Fixture::new();
    let publish = |to: &str| {
        http::Request::post(format!("/?to={to}"))
            .body(Bytes::from_static(b"news"))
            .unwrap()
    };
    let publisher = f.prepare("publisher", "publishes = [\"jobs\"]");
    let (status, body) = f.send(&publisher, publish("jobs")).await;
    assert_eq!((status, body.trim()), (200, "m1"));
    let (status, body) = f.send(&publisher, publish("elsewhere")).await;
    assert_eq!(status, 500, "{body}");
    let ungranted = f.prepare("publisher", "");
    let (status, body) = f.send(&ungranted, publish("jobs")).await;
    assert_eq!(status, 500, "{body}");
    // Only the granted one reached the platform.
    let published = f.channels.published.lock().unwrap().clone();
    assert_eq!(
        published,
        vec![("jobs".to_string(), Bytes::from_static(b"news"))]
    );
}
