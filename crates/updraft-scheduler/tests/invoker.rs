//! The one invocation path in process: a platform on a temp dir, real
//! guests (built by `cargo xtask guests`), and every kind of input through
//! `Invoker::run` to every kind of function. What decides the executor is
//! the input and the function's exports, nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use updraft_core::{Manifest, Trigger};
use updraft_scheduler::{
    BodyError, Event, Input, Invocation, Loaded, Platform, PlatformConfig, PlatformError,
    StoredEvent, boxed,
};

fn guest(name: &str) -> Bytes {
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

struct Fixture {
    platform: Arc<Platform>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = PlatformConfig::new(dir.path().to_path_buf());
        config.metering = false;
        let platform = Platform::open(config).await.unwrap();
        Fixture {
            platform,
            _dir: dir,
        }
    }

    async fn deploy(&self, name: &str, guest_name: &str, extra: &str) -> Arc<Loaded> {
        let manifest = Manifest::from_toml(&format!("name = \"{name}\"\n{extra}")).unwrap();
        self.platform
            .deploy("local", manifest, guest(guest_name), None)
            .await
            .unwrap()
            .loaded
    }

    async fn run(
        &self,
        function: &Arc<Loaded>,
        input: Input,
    ) -> Result<(u16, Bytes), PlatformError> {
        let invocation = Invocation::new(function, input, Trigger::Api);
        let (id, outcome) = self.platform.invoker().run(invocation).await;
        assert!(!id.is_empty());
        outcome?.collect().await
    }
}

fn get(path: &str) -> Input {
    Input::Request(boxed(http::Request::get(path).body(Bytes::new()).unwrap()))
}

fn post(path: &str, body: &'static str) -> Input {
    Input::Request(boxed(
        http::Request::post(path)
            .body(Bytes::from_static(body.as_bytes()))
            .unwrap(),
    ))
}

fn event(data: &str) -> Input {
    let json = format!(
        r#"{{"specversion":"1.0","id":"e1","source":"/test","type":"t","datacontenttype":"text/plain","data":"{data}"}}"#
    );
    Input::Event {
        event: StoredEvent::Json(Bytes::from(json)),
        enqueued_ms: 1_794_744_000_000,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_reaches_an_http_function_without_a_host() {
    let f = Fixture::new().await;
    let hello = f.deploy("hello", "hello-rust", "").await;
    // No authority, no Host header: the sandbox supplies one.
    let (status, body) = f.run(&hello, get("/?name=Ada")).await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"Hello, Ada!\n"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_reaches_a_command_on_stdin() {
    let f = Fixture::new().await;
    let wc = f.deploy("wc", "wordcount-c", "").await;
    let (status, body) = f.run(&wc, post("/", "one two three")).await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"0 3 13\n"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payload_reaches_an_http_function_as_post_root() {
    let f = Fixture::new().await;
    let chaos = f.deploy("chaos", "http-chaos", "").await;
    let (status, body) = f
        .run(&chaos, Input::Payload(Bytes::from_static(b"x")))
        .await
        .unwrap();
    assert_eq!((status, &body[..]), (200, &b"chaos ok"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payload_reaches_a_command_on_stdin() {
    let f = Fixture::new().await;
    let echo = f.deploy("echo", "echo", "").await;
    let (status, body) = f
        .run(&echo, Input::Payload(Bytes::from_static(b"as it came")))
        .await
        .unwrap();
    assert_eq!((status, &body[..]), (200, &b"as it came"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payload_reaches_a_handler_export_directly() {
    let f = Fixture::new().await;
    let chain = f.deploy("chain", "chain", "[env]\nECHO = \"1\"").await;
    let (status, body) = f
        .run(&chain, Input::Payload(Bytes::from_static(b"direct")))
        .await
        .unwrap();
    assert_eq!((status, &body[..]), (200, &b"direct"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_is_structured_json_for_a_command_and_a_handler() {
    let f = Fixture::new().await;
    let echo = f.deploy("echo", "echo", "").await;
    let (_, body) = f.run(&echo, event("hi")).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (json["id"].as_str(), json["data"].as_str()),
        (Some("e1"), Some("hi"))
    );
    let chain = f.deploy("chain", "chain", "[env]\nECHO = \"1\"").await;
    let (_, body) = f.run(&chain, event("hi")).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["type"], "t");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_is_binary_mode_for_an_http_function() {
    let f = Fixture::new().await;
    let chaos = f.deploy("chaos", "http-chaos", "").await;
    // `/echo` is not where an event goes: it is `POST /`, data as the body.
    let (status, body) = f.run(&chaos, event("hi")).await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"chaos ok"[..]));
    let parsed = Event::from_structured(
        br#"{"specversion":"1.0","id":"e2","source":"/s","type":"t","data":"x"}"#,
    )
    .unwrap();
    let input = Input::Event {
        event: StoredEvent::Parsed(parsed),
        enqueued_ms: 0,
    };
    let (status, _) = f.run(&chaos, input).await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_body_over_its_limit_is_too_large() {
    let f = Fixture::new().await;
    let echo = f.deploy("echo", "echo", "request_body_bytes_max = 4").await;
    let err = f.run(&echo, post("/", "too long")).await.unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::Invoke(updraft_scheduler::InvokeError::RequestTooLarge { limit: 4 })
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_body_that_breaks_off_is_a_body_read_error() {
    let f = Fixture::new().await;
    let echo = f.deploy("echo", "echo", "").await;
    let chunks: Vec<Result<http_body::Frame<Bytes>, BodyError>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"half"))),
        Err(BodyError("connection reset".into())),
    ];
    let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
    let request = http::Request::post("/")
        .body(http_body_util::BodyExt::boxed_unsync(body))
        .unwrap();
    let err = f.run(&echo, Input::Request(request)).await.unwrap_err();
    assert!(matches!(err, PlatformError::BodyRead(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_stored_event_is_invalid_not_a_crash() {
    let f = Fixture::new().await;
    let chaos = f.deploy("chaos", "http-chaos", "").await;
    let input = Input::Event {
        event: StoredEvent::Json(Bytes::from_static(b"{not json")),
        enqueued_ms: 0,
    };
    let err = f.run(&chaos, input).await.unwrap_err();
    use updraft_core::Classify;
    assert_eq!(err.kind(), updraft_core::ErrorKind::Invalid, "{err}");
}

/// An invocation's usage record is stamped by the platform's clock, the
/// one metering bills by: with the clock set to a date, the run is in that
/// month's bill, whatever day the test runs on.
#[tokio::test(flavor = "multi_thread")]
async fn usage_records_take_their_time_from_the_platform_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PlatformConfig::new(dir.path().to_path_buf());
    // 2026-11-15T12:00:00Z.
    config.clock = updraft_core::ManualClock::new(1_794_744_000_000);
    let platform = Platform::open(config).await.unwrap();
    let manifest = Manifest::from_toml("name = \"hello\"").unwrap();
    let hello = platform
        .deploy("local", manifest, guest("hello-rust"), None)
        .await
        .unwrap()
        .loaded;
    let (_, outcome) = platform
        .invoker()
        .run(Invocation::new(&hello, get("/"), Trigger::Api))
        .await;
    assert_eq!(outcome.unwrap().collect().await.unwrap().0, 200);
    let metering = platform.usage().metering().unwrap();
    // The record is handed over when the guest has finished, which may be
    // just after its response was read: wait for it, within a limit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, november) = metering.bill_from_records("local", "2026-11").unwrap();
        if november.invocations == 1 {
            break;
        }
        let mut all = Vec::new();
        metering
            .records("local", 0, u64::MAX / 2, |r| all.push(r))
            .unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "no November record: {all:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (_, sums) = metering.bill("local", "2026-11").unwrap();
    assert_eq!(sums.invocations, 1);
}
