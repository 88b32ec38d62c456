//! HTTP client for the gateway's management API (`/v1/functions/...`).
//!
//! It owns URLs, requests, the mapping of failures to messages that say what to do
//! (server down, `{"error":{"code","message"}}` bodies), and the wire types of the
//! replies. The wire types are deliberately the CLI's own, tolerant serde structs
//! (every field defaulted) rather than `updraft-core`'s: an older or newer server
//! with extra or missing fields still gets a usable listing. `--json` bypasses them
//! and prints [`Reply::raw`].

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use reqwest::{RequestBuilder, Response, StatusCode, Url, multipart};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::cli::{DeployPlan, Header};

/// Upper bound on a management reply (listings, function details). Generous for
/// thousands of functions; it exists so a wrong `--server` cannot make us buffer
/// an endless body.
pub const REPLY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// How much of a non-JSON error body is quoted back to the user.
pub const ERROR_BODY_QUOTE_BYTES_MAX: usize = 1024;

/// Upper bound on one NDJSON log line; the server caps messages well below this.
pub const LOG_LINE_BYTES_MAX: usize = 1024 * 1024;

/// Connecting to a local or nearby server takes milliseconds; waiting longer only
/// delays the "cannot reach" message.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Management calls other than deploy are cheap registry reads or writes.
const MANAGEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Response header carrying the id under which an invocation's logs are recorded.
pub const INVOCATION_ID_HEADER: &str = "updraft-invocation-id";

/// A management API client bound to one server.
pub struct Client {
    http: reqwest::Client,
    base: Url,
}

/// A decoded reply together with the server's JSON as received, for `--json`.
#[derive(Debug)]
pub struct Reply<T> {
    pub raw: serde_json::Value,
    pub body: T,
}

/// An error the server reported (`{"error":{"code","message"}}`), or a non-2xx reply
/// that did not follow that shape.
#[derive(Debug)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl ApiError {
    /// Builds the error from a non-2xx reply's status and body.
    pub fn from_body(status: StatusCode, body: &[u8]) -> ApiError {
        if let Ok(envelope) = serde_json::from_slice::<ErrorEnvelope>(body) {
            return ApiError {
                code: envelope.error.code,
                message: envelope.error.message,
            };
        }
        let quoted = quote_body(body);
        let message = if quoted.is_empty() {
            format!("the server answered {status}")
        } else {
            format!("the server answered {status}: {quoted}")
        };
        ApiError {
            code: format!("http_{}", status.as_u16()),
            message,
        }
    }
}

fn quote_body(body: &[u8]) -> String {
    let end = body.len().min(ERROR_BODY_QUOTE_BYTES_MAX);
    let mut text = String::from_utf8_lossy(&body[..end]).trim().to_owned();
    if body.len() > end {
        text.push('…');
    }
    text
}

/// `GET /v1/keys`.
#[derive(Deserialize, Debug)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

#[derive(Debug, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: String,
    pub admin: bool,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub created_at: String,
    /// Only in the reply that created it.
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Revoked {
    pub revoked: KeyInfo,
}

/// `GET /v1/functions`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct FunctionList {
    pub functions: Vec<FunctionSummary>,
}

/// One row of the listing.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct FunctionSummary {
    pub name: String,
    pub kind: String,
    pub route: Option<String>,
    pub version: u64,
    /// How many versions are stored.
    pub versions: u64,
    pub wasm_bytes: u64,
    pub updated_at: String,
}

/// `GET /v1/functions/{name}`, and the reply to deploy and rollback.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct FunctionDetail {
    pub name: String,
    pub kind: String,
    pub route: Option<String>,
    /// Version `latest` points at.
    pub version: u64,
    pub aliases: BTreeMap<String, u64>,
    pub limits: Option<Limits>,
    pub env_keys: Vec<String>,
    pub key_value_stores: Vec<String>,
    pub blob_containers: Vec<String>,
    pub artifact: Option<Artifact>,
    pub versions: Vec<VersionInfo>,
}

impl FunctionDetail {
    /// The version `latest` points at; after a rollback that is the alias, which is
    /// why the alias wins over `version`.
    pub fn latest(&self) -> u64 {
        self.aliases.get("latest").copied().unwrap_or(self.version)
    }
}

/// `GET /v1/secrets`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct SecretList {
    pub secrets: Vec<SecretName>,
}

#[derive(Deserialize, Debug, Default)]
pub struct SecretName {
    pub name: String,
}

/// `GET /v1/blobs`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct BlobContainers {
    pub containers: Vec<String>,
}

/// One blob of a listing.
#[derive(Deserialize, serde::Serialize, Debug, Default)]
#[serde(default)]
pub struct BlobInfo {
    pub key: String,
    pub size: u64,
    pub modified_ms: i64,
}

/// One page of `GET /v1/blobs/{container}`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct BlobPage {
    pub blobs: Vec<BlobInfo>,
    pub cursor: Option<String>,
}

/// `GET /v1/kv`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct KvStores {
    pub stores: Vec<String>,
}

/// One page of `GET /v1/kv/{store}`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct KeyPage {
    pub keys: Vec<String>,
    pub cursor: Option<String>,
}

/// Per-function limits as the server applies them.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct Limits {
    pub memory_mb: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub request_body_bytes_max: Option<u64>,
    pub response_body_bytes_max: Option<u64>,
    pub instance_reuse_max: Option<u64>,
}

/// How the latest version's compiled code was obtained.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct Artifact {
    /// `compile` or `cache`.
    pub loaded_from: String,
    pub compile_ms: Option<u64>,
    pub compiled_bytes: Option<u64>,
    /// `baseline` (Winch, until Cranelift's code is ready) or `optimized`;
    /// absent from servers before tiering.
    pub tier: Option<String>,
}

/// One stored version.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct VersionInfo {
    pub version: u64,
    pub digest: String,
    pub kind: String,
    pub wasm_bytes: u64,
    /// Optional: shown when the server reports it per version.
    pub compiled_bytes: Option<u64>,
    pub created_at: String,
    pub route: Option<String>,
}

/// `DELETE /v1/functions/{name}`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct Deleted {
    pub deleted: String,
}

/// One NDJSON line of `GET /v1/functions/{name}/logs`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct LogLine {
    pub ts: String,
    pub invocation_id: String,
    /// `stdout`, `stderr` or `platform`.
    pub stream: String,
    pub message: String,
}

impl Client {
    /// Creates a client for `server` (e.g. `http://127.0.0.1:8080`).
    pub fn new(server: &str, key: Option<&str>) -> Result<Client> {
        let base = parse_server_url(server)?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = key {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .context("the API key has characters no key has: check --key or UPDRAFT_KEY")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("updraft-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client { http, base })
    }

    /// The API URL made of `segments`, each percent-encoded as one path segment.
    pub fn url(&self, segments: &[&str]) -> Url {
        api_url(&self.base, segments)
    }

    /// The public URL of an HTTP function's route.
    pub fn route_url(&self, route: &str) -> String {
        route_url(&self.base, route)
    }

    pub async fn keys(&self, tenant: Option<&str>) -> Result<Reply<KeyList>> {
        let mut url = self.url(&["v1", "keys"]);
        if let Some(tenant) = tenant {
            url.query_pairs_mut().append_pair("tenant", tenant);
        }
        self.json(self.http.get(url).timeout(MANAGEMENT_TIMEOUT))
            .await
    }

    pub async fn create_key(
        &self,
        tenant: Option<&str>,
        admin: bool,
        label: &str,
    ) -> Result<Reply<KeyInfo>> {
        let body = serde_json::json!({ "tenant": tenant, "admin": admin, "label": label });
        let req = self.http.post(self.url(&["v1", "keys"])).json(&body);
        self.json(req.timeout(MANAGEMENT_TIMEOUT)).await
    }

    pub async fn revoke_key(&self, id: &str) -> Result<Reply<Revoked>> {
        let req = self.http.delete(self.url(&["v1", "keys", id]));
        self.json(req.timeout(MANAGEMENT_TIMEOUT)).await
    }

    /// `GET /v1/{segments}?{query}` as JSON.
    pub async fn get_value(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Reply<serde_json::Value>> {
        let mut url = self.url(segments);
        for (k, v) in query {
            url.query_pairs_mut().append_pair(k, v);
        }
        self.json(self.http.get(url).timeout(MANAGEMENT_TIMEOUT))
            .await
    }

    /// `PUT` (with a JSON body) or `DELETE` (without) of `/v1/{segments}`.
    pub async fn send_value(
        &self,
        segments: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<Reply<serde_json::Value>> {
        self.send_value_with(segments, &[], body).await
    }

    /// [`Self::send_value`] to `/v1/{segments}?{query}`.
    pub async fn send_value_with(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Result<Reply<serde_json::Value>> {
        let mut url = self.url(segments);
        for (k, v) in query {
            url.query_pairs_mut().append_pair(k, v);
        }
        let req = match body {
            Some(body) => self.http.put(url).json(&body),
            None => self.http.delete(url),
        };
        self.json(req.timeout(MANAGEMENT_TIMEOUT)).await
    }

    pub async fn list_functions(&self) -> Result<Reply<FunctionList>> {
        let req = self.http.get(self.url(&["v1", "functions"]));
        self.json(req.timeout(MANAGEMENT_TIMEOUT)).await
    }

    pub async fn function(&self, name: &str) -> Result<Reply<FunctionDetail>> {
        let req = self.http.get(self.url(&["v1", "functions", name]));
        self.json(req.timeout(MANAGEMENT_TIMEOUT)).await
    }

    /// Uploads the manifest and the Wasm; the reply comes once the server compiled it,
    /// which for large guests takes a minute, hence no overall timeout.
    pub async fn deploy(&self, plan: &DeployPlan) -> Result<Reply<FunctionDetail>> {
        let form = deploy_form(plan).await?;
        let req = self
            .http
            .put(self.url(&["v1", "functions", &plan.name]))
            .multipart(form);
        self.json(req).await
    }

    pub async fn delete(&self, name: &str) -> Result<Reply<Deleted>> {
        let req = self.http.delete(self.url(&["v1", "functions", name]));
        self.json(req.timeout(MANAGEMENT_TIMEOUT)).await
    }

    pub async fn rollback(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Reply<FunctionDetail>> {
        let body = match version {
            Some(version) => serde_json::json!({ "version": version }),
            None => serde_json::json!({}),
        };
        let req = self
            .http
            .post(self.url(&["v1", "functions", name, "rollback"]))
            .json(&body);
        self.json(req.timeout(MANAGEMENT_TIMEOUT)).await
    }

    /// Invokes a function. The status is not checked here, so the caller can report
    /// the invocation id of a failed call before turning it into an error.
    pub async fn invoke(&self, name: &str, body: Vec<u8>, headers: &[Header]) -> Result<Response> {
        self.invoke_url(
            self.url(&["v1", "functions", name, "invoke"]),
            body,
            headers,
        )
        .await
    }

    /// Queues a call (`mode=async`): the reply holds its id.
    pub async fn invoke_async(
        &self,
        name: &str,
        body: Vec<u8>,
        headers: &[Header],
        idempotency_key: Option<&str>,
    ) -> Result<Reply<serde_json::Value>> {
        let mut url = self.url(&["v1", "functions", name, "invoke"]);
        url.query_pairs_mut().append_pair("mode", "async");
        let mut headers = headers.to_vec();
        if let Some(key) = idempotency_key {
            headers.push(Header {
                name: "idempotency-key".into(),
                value: key.into(),
            });
        }
        let response = check_status(self.invoke_url(url, body, &headers).await?).await?;
        let body = read_bounded(response, REPLY_BYTES_MAX).await?;
        decode_reply(&body).context("the reply to an async invoke was not understood")
    }

    /// `POST /v1/publish/{name}` with the message.
    pub async fn publish(
        &self,
        name: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> Result<Reply<serde_json::Value>> {
        let mut req = self
            .http
            .post(self.url(&["v1", "publish", name]))
            .body(body);
        if let Some(content_type) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        self.json(req.timeout(MANAGEMENT_TIMEOUT)).await
    }

    /// `POST /v1/{segments}` without a body, as JSON.
    pub async fn post_value(&self, segments: &[&str]) -> Result<Reply<serde_json::Value>> {
        let req = self.http.post(self.url(segments));
        self.json(req.timeout(MANAGEMENT_TIMEOUT)).await
    }

    async fn invoke_url(&self, url: Url, body: Vec<u8>, headers: &[Header]) -> Result<Response> {
        let mut req = self.http.post(url).body(body);
        for header in headers {
            req = req.header(&header.name, &header.value);
        }
        self.send(req).await
    }

    pub async fn kv_stores(&self) -> Result<Reply<KvStores>> {
        let req = self.http.get(self.url(&["v1", "kv"]));
        self.json(req.timeout(MANAGEMENT_TIMEOUT)).await
    }

    /// One page of keys of `store` under `prefix`.
    pub async fn kv_list(
        &self,
        store: &str,
        prefix: &str,
        cursor: Option<&str>,
    ) -> Result<Reply<KeyPage>> {
        let mut url = self.url(&["v1", "kv", store]);
        url.query_pairs_mut().append_pair("prefix", prefix);
        if let Some(cursor) = cursor {
            url.query_pairs_mut().append_pair("cursor", cursor);
        }
        self.json(self.http.get(url).timeout(MANAGEMENT_TIMEOUT))
            .await
    }

    pub async fn kv_get(&self, store: &str, key: &str) -> Result<Bytes> {
        let req = self.http.get(self.url(&["v1", "kv", store, key]));
        let response = check_status(self.send(req.timeout(MANAGEMENT_TIMEOUT)).await?).await?;
        Ok(response.bytes().await?)
    }

    pub async fn kv_set(&self, store: &str, key: &str, value: Vec<u8>) -> Result<()> {
        let req = self
            .http
            .put(self.url(&["v1", "kv", store, key]))
            .body(value);
        check_status(self.send(req.timeout(MANAGEMENT_TIMEOUT)).await?).await?;
        Ok(())
    }

    /// `GET /v1/secrets`: names only.
    pub async fn secrets(&self, tenant: Option<&str>) -> Result<Reply<SecretList>> {
        let mut url = self.url(&["v1", "secrets"]);
        if let Some(tenant) = tenant {
            url.query_pairs_mut().append_pair("tenant", tenant);
        }
        self.json(self.http.get(url).timeout(MANAGEMENT_TIMEOUT))
            .await
    }

    pub async fn secret_set(&self, name: &str, value: String, tenant: Option<&str>) -> Result<()> {
        let mut url = self.url(&["v1", "secrets", name]);
        if let Some(tenant) = tenant {
            url.query_pairs_mut().append_pair("tenant", tenant);
        }
        let req = self.http.put(url).body(value);
        check_status(self.send(req.timeout(MANAGEMENT_TIMEOUT)).await?).await?;
        Ok(())
    }

    pub async fn secret_delete(&self, name: &str, tenant: Option<&str>) -> Result<()> {
        let mut url = self.url(&["v1", "secrets", name]);
        if let Some(tenant) = tenant {
            url.query_pairs_mut().append_pair("tenant", tenant);
        }
        let req = self.http.delete(url);
        check_status(self.send(req.timeout(MANAGEMENT_TIMEOUT)).await?).await?;
        Ok(())
    }

    pub async fn kv_delete(&self, store: &str, key: &str) -> Result<()> {
        let req = self.http.delete(self.url(&["v1", "kv", store, key]));
        check_status(self.send(req.timeout(MANAGEMENT_TIMEOUT)).await?).await?;
        Ok(())
    }

    pub async fn blob_containers(&self) -> Result<Reply<BlobContainers>> {
        let req = self.http.get(self.url(&["v1", "blobs"]));
        self.json(req.timeout(MANAGEMENT_TIMEOUT)).await
    }

    /// One page of blobs of `container` under `prefix`.
    pub async fn blob_list(
        &self,
        container: &str,
        prefix: &str,
        cursor: Option<&str>,
    ) -> Result<Reply<BlobPage>> {
        let mut url = self.url(&["v1", "blobs", container]);
        url.query_pairs_mut().append_pair("prefix", prefix);
        if let Some(cursor) = cursor {
            url.query_pairs_mut().append_pair("cursor", cursor);
        }
        self.json(self.http.get(url).timeout(MANAGEMENT_TIMEOUT))
            .await
    }

    /// The blob's body as a response to stream from (no overall timeout:
    /// blobs can be large).
    pub async fn blob_get(&self, container: &str, key: &str) -> Result<Response> {
        let req = self.http.get(self.url(&["v1", "blobs", container, key]));
        check_status(self.send(req).await?).await
    }

    /// Uploads `body` (streamed) as the blob.
    pub async fn blob_put(&self, container: &str, key: &str, body: reqwest::Body) -> Result<()> {
        let req = self
            .http
            .put(self.url(&["v1", "blobs", container, key]))
            .body(body);
        check_status(self.send(req).await?).await?;
        Ok(())
    }

    pub async fn blob_delete(&self, container: &str, key: &str) -> Result<()> {
        let req = self.http.delete(self.url(&["v1", "blobs", container, key]));
        check_status(self.send(req.timeout(MANAGEMENT_TIMEOUT)).await?).await?;
        Ok(())
    }

    /// Opens the NDJSON log stream; with `follow` the body never ends by itself.
    pub async fn logs(&self, name: &str, tail: u32, follow: bool) -> Result<Response> {
        let mut url = self.url(&["v1", "functions", name, "logs"]);
        url.query_pairs_mut().append_pair("tail", &tail.to_string());
        if follow {
            url.query_pairs_mut().append_pair("follow", "true");
        }
        let response = self.send(self.http.get(url)).await?;
        check_status(response).await
    }

    /// Sends, checks the status, reads a bounded body and decodes it.
    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<Reply<T>> {
        let response = check_status(self.send(req).await?).await?;
        let url = response.url().clone();
        let body = read_bounded(response, REPLY_BYTES_MAX).await?;
        decode_reply(&body).with_context(|| {
            format!("the reply from {url} was not understood: is --server an Updraft server of a matching version?")
        })
    }

    /// Sends a request, turning connection failures into advice.
    async fn send(&self, req: RequestBuilder) -> Result<Response> {
        req.send().await.map_err(|err| {
            if err.is_connect() {
                tracing::debug!(error = ?err, "connect failed");
                anyhow!(
                    "cannot reach the Updraft server at {}: start it with `updraft up` or pass --server / UPDRAFT_SERVER",
                    self.base.as_str().trim_end_matches('/')
                )
            } else if err.is_timeout() {
                anyhow!("the Updraft server at {} did not answer in time", self.base)
            } else {
                anyhow::Error::new(err).context("the request to the Updraft server failed")
            }
        })
    }
}

/// Turns a non-2xx response into an [`ApiError`]; passes others through.
pub async fn check_status(response: Response) -> Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    // Only the start of the body is quoted, so a bounded read is enough even if the
    // server sent a huge error page.
    let body = read_bounded_lossy(response, REPLY_BYTES_MAX).await;
    Err(ApiError::from_body(status, &body).into())
}

fn decode_reply<T: DeserializeOwned>(body: &[u8]) -> Result<Reply<T>> {
    let raw: serde_json::Value = serde_json::from_slice(body).context("not JSON")?;
    let body = T::deserialize(&raw)?;
    Ok(Reply { raw, body })
}

/// Reads a whole body, failing if it exceeds `max` bytes.
async fn read_bounded(mut response: Response, max: usize) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .context("reading the server's reply")?
    {
        if buf.len() + chunk.len() > max {
            bail!("the server's reply is larger than {max} bytes");
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads up to `max` bytes of a body, keeping what arrived if the read fails: it is
/// only used to explain an error that already happened.
async fn read_bounded_lossy(mut response: Response, max: usize) -> Bytes {
    let mut buf = BytesMut::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= max {
            break;
        }
    }
    buf.freeze()
}

/// The multipart body of a deploy: part `manifest` (TOML) and part `wasm` (streamed
/// from disk, so a 100 MB guest is not held in memory).
async fn deploy_form(plan: &DeployPlan) -> Result<multipart::Form> {
    let manifest = multipart::Part::text(plan.manifest.clone())
        .file_name("updraft.toml")
        .mime_str("application/toml")?;
    let file = tokio::fs::File::open(&plan.wasm_path)
        .await
        .with_context(|| format!("cannot open {}", plan.wasm_path.display()))?;
    let file_name = plan
        .wasm_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("{}.wasm", plan.name));
    let wasm = multipart::Part::stream_with_length(file, plan.wasm_bytes)
        .file_name(file_name)
        .mime_str("application/wasm")?;
    let form = multipart::Form::new()
        .part("manifest", manifest)
        .part("wasm", wasm);
    Ok(match &plan.files {
        Some(bundle) => form.part(
            "files",
            multipart::Part::bytes(bundle.clone())
                .file_name("files.tar")
                .mime_str("application/x-tar")?,
        ),
        None => form,
    })
}

/// Validates `--server`. Only plain HTTP is compiled in (no TLS stack in the CLI), so
/// `https://` is refused up front rather than failing obscurely on first use.
pub fn parse_server_url(server: &str) -> Result<Url> {
    let url = Url::parse(server).with_context(|| {
        format!("--server `{server}` is not a URL: expected something like http://127.0.0.1:8080")
    })?;
    match url.scheme() {
        "http" => {}
        "https" => bail!(
            "--server `{server}`: this build of the CLI speaks plain HTTP only; use http:// (e.g. through a TLS-terminating proxy)"
        ),
        other => bail!("--server `{server}`: unsupported scheme `{other}`, expected http://"),
    }
    if url.cannot_be_a_base() || url.host_str().is_none() {
        bail!("--server `{server}` has no host: expected something like http://127.0.0.1:8080");
    }
    Ok(url)
}

/// Appends `segments` to the base's path. A base with a path prefix
/// (`http://h/updraft/`) keeps it, so the API can sit behind a reverse proxy.
fn api_url(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// A prefix route (`/api/...`) matches everything below it, so its URL is the prefix:
/// printing the `...` would give users a URL that is not meant literally.
fn route_url(base: &Url, route: &str) -> String {
    let route = route.strip_suffix("...").unwrap_or(route);
    format!(
        "{}/{}",
        base.as_str().trim_end_matches('/'),
        route.trim_start_matches('/')
    )
}

/// Splits a byte stream into lines, holding at most [`LOG_LINE_BYTES_MAX`] of an
/// unfinished line: NDJSON arrives in chunks that need not end at a newline.
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Adds a chunk and returns the lines it completed (without `\n` / `\r\n`;
    /// blank lines, which servers send as keep-alives, are skipped).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>> {
        self.pending.extend_from_slice(chunk);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            push_line(&mut lines, &self.pending[start..end])?;
            start = end + 1;
        }
        self.pending.drain(..start);
        if self.pending.len() > LOG_LINE_BYTES_MAX {
            bail!("the server sent a log line longer than {LOG_LINE_BYTES_MAX} bytes");
        }
        Ok(lines)
    }

    /// The last line, if the stream ended without a newline.
    pub fn finish(self) -> Result<Option<String>> {
        let mut lines = Vec::new();
        push_line(&mut lines, &self.pending)?;
        Ok(lines.pop())
    }
}

fn push_line(lines: &mut Vec<String>, line: &[u8]) -> Result<()> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > LOG_LINE_BYTES_MAX {
        bail!("the server sent a log line longer than {LOG_LINE_BYTES_MAX} bytes");
    }
    if !line.iter().all(u8::is_ascii_whitespace) {
        lines.push(String::from_utf8_lossy(line).into_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn base(s: &str) -> Url {
        parse_server_url(s).unwrap()
    }

    #[test]
    fn api_urls_join_and_encode_segments() {
        let b = base("http://127.0.0.1:8080");
        assert_eq!(
            api_url(&b, &["v1", "functions"]).as_str(),
            "http://127.0.0.1:8080/v1/functions"
        );
        assert_eq!(
            api_url(&b, &["v1", "functions", "a b/c", "invoke"]).as_str(),
            "http://127.0.0.1:8080/v1/functions/a%20b%2Fc/invoke"
        );
        let prefixed = base("http://h:1/updraft/?x=1");
        assert_eq!(
            api_url(&prefixed, &["v1", "functions"]).as_str(),
            "http://h:1/updraft/v1/functions"
        );
        let no_slash = base("http://h:1/updraft");
        assert_eq!(
            api_url(&no_slash, &["v1"]).as_str(),
            "http://h:1/updraft/v1"
        );
    }

    #[test]
    fn route_urls() {
        assert_eq!(
            route_url(&base("http://127.0.0.1:8080"), "/hello"),
            "http://127.0.0.1:8080/hello"
        );
        assert_eq!(route_url(&base("http://h/p/"), "hello"), "http://h/p/hello");
        assert_eq!(route_url(&base("http://h"), "/api/..."), "http://h/api/");
    }

    #[test]
    fn server_url_validation() {
        assert!(parse_server_url("127.0.0.1:8080").is_err());
        assert!(parse_server_url("localhost").is_err());
        let err = parse_server_url("https://example.com").unwrap_err();
        assert!(err.to_string().contains("plain HTTP only"), "{err}");
        assert!(parse_server_url("http://[::1]:8080").is_ok());
    }

    #[test]
    fn api_error_from_envelope_and_from_anything_else() {
        let err = ApiError::from_body(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":"not_found","message":"no function named x"}}"#,
        );
        assert_eq!(err.to_string(), "no function named x (not_found)");
        let err = ApiError::from_body(StatusCode::BAD_GATEWAY, b"upstream down\n");
        assert_eq!(err.code, "http_502");
        assert!(
            err.message.ends_with("502 Bad Gateway: upstream down"),
            "{}",
            err.message
        );
        let long = vec![b'a'; ERROR_BODY_QUOTE_BYTES_MAX + 10];
        let err = ApiError::from_body(StatusCode::INTERNAL_SERVER_ERROR, &long);
        assert!(err.message.ends_with('…'));
    }

    #[test]
    fn replies_tolerate_missing_and_extra_fields() {
        let reply: Reply<FunctionDetail> = decode_reply(
            br#"{"name":"f","version":3,"aliases":{"latest":2},"surprise":[1],
                "versions":[{"version":1,"digest":"sha256:ab","new_field":true}]}"#,
        )
        .unwrap();
        assert_eq!(reply.body.name, "f");
        assert_eq!(reply.body.latest(), 2);
        assert_eq!(reply.body.route, None);
        assert_eq!(reply.body.versions[0].digest, "sha256:ab");
        assert_eq!(reply.raw["surprise"][0], 1);
        assert!(decode_reply::<FunctionList>(b"<html>").is_err());
    }

    #[test]
    fn line_splitter_handles_chunks_that_cut_lines() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"{\"a\":1}\n{\"b\"").unwrap(), vec!["{\"a\":1}"]);
        assert!(s.push(b":2").unwrap().is_empty());
        assert_eq!(s.push(b"}\r\n\n  \nc").unwrap(), vec!["{\"b\":2}"]);
        assert_eq!(s.finish().unwrap(), Some("c".to_owned()));
        assert_eq!(LineSplitter::default().finish().unwrap(), None);
    }

    #[test]
    fn line_splitter_bounds_a_line() {
        let mut s = LineSplitter::default();
        assert!(s.push(&vec![b'x'; LOG_LINE_BYTES_MAX + 1]).is_err());
    }

    /// A one-shot HTTP/1.1 server: records the request, answers with `reply`, which
    /// is written in the given pieces with a pause between them (to exercise
    /// streaming). Returns the base URL and a handle yielding the raw request.
    async fn fake_server(reply: Vec<&'static [u8]>) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let request = read_request(&mut sock).await;
            for piece in reply {
                sock.write_all(piece).await.unwrap();
                sock.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            sock.shutdown().await.unwrap();
            request
        });
        (format!("http://{addr}"), handle)
    }

    async fn read_request(sock: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed before sending a whole request");
            buf.extend_from_slice(&chunk[..n]);
            let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if buf.len() >= head_end + 4 + length {
                return buf;
            }
        }
    }

    fn json_reply(status: &str, body: &'static str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn deploy_sends_multipart_manifest_and_wasm() {
        let reply: &'static [u8] = json_reply(
            "200 OK",
            r#"{"name":"hello","version":3,"kind":"http","route":"/hello"}"#,
        )
        .leak();
        let (server, request) = fake_server(vec![reply]).await;
        let dir = tempfile::tempdir().unwrap();
        let wasm_path: PathBuf = dir.path().join("hello.wasm");
        std::fs::write(&wasm_path, b"\0asm\x01\0\0\0").unwrap();
        let plan = DeployPlan {
            name: "hello".into(),
            manifest: "name = \"hello\"\n".into(),
            wasm_path,
            wasm_bytes: 8,
            files: None,
        };

        let reply = Client::new(&server, None)
            .unwrap()
            .deploy(&plan)
            .await
            .unwrap();
        assert_eq!(reply.body.version, 3);

        let request = String::from_utf8_lossy(&request.await.unwrap()).into_owned();
        assert!(
            request.starts_with("PUT /v1/functions/hello HTTP/1.1"),
            "{request}"
        );
        assert!(
            request.contains("multipart/form-data; boundary="),
            "{request}"
        );
        assert!(request.contains("name=\"manifest\""), "{request}");
        assert!(
            request.contains("Content-Type: application/toml\r\n\r\nname = \"hello\"\n"),
            "{request}"
        );
        assert!(
            request.contains("name=\"wasm\"; filename=\"hello.wasm\""),
            "{request}"
        );
        assert!(
            request.contains("Content-Type: application/wasm\r\n\r\n\0asm\x01\0\0\0"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn server_errors_become_api_errors() {
        let reply: &'static [u8] = json_reply(
            "404 Not Found",
            r#"{"error":{"code":"function_not_found","message":"no function named nope"}}"#,
        )
        .leak();
        let (server, _request) = fake_server(vec![reply]).await;
        let err = Client::new(&server, None)
            .unwrap()
            .function("nope")
            .await
            .unwrap_err();
        let api = err.downcast_ref::<ApiError>().unwrap();
        assert_eq!(api.code, "function_not_found");
        assert_eq!(
            err.to_string(),
            "no function named nope (function_not_found)"
        );
    }

    #[tokio::test]
    async fn unreachable_server_gets_advice() {
        // Bind then drop, so nothing listens on the port.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = format!("http://127.0.0.1:{port}");
        let err = Client::new(&server, None)
            .unwrap()
            .list_functions()
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the Updraft server at {server}: start it with `updraft up` or pass --server / UPDRAFT_SERVER"
            )
        );
    }

    #[tokio::test]
    async fn logs_stream_arrives_line_by_line() {
        let (server, request) = fake_server(vec![
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n",
            b"{\"message\":\"one\"}\n{\"mess",
            b"age\":\"two\"}\n",
        ])
        .await;
        let mut response = Client::new(&server, None)
            .unwrap()
            .logs("f", 5, true)
            .await
            .unwrap();
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            lines.extend(splitter.push(&chunk).unwrap());
        }
        assert_eq!(lines, vec![r#"{"message":"one"}"#, r#"{"message":"two"}"#]);
        let request = String::from_utf8_lossy(&request.await.unwrap()).into_owned();
        assert!(
            request.starts_with("GET /v1/functions/f/logs?tail=5&follow=true HTTP/1.1"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn invoke_sends_body_and_headers() {
        let (server, request) = fake_server(vec![
            b"HTTP/1.1 200 OK\r\nupdraft-invocation-id: 0190-abc\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        ])
        .await;
        let headers = vec!["X-Test: yes".parse().unwrap()];
        let response = Client::new(&server, None)
            .unwrap()
            .invoke("f", b"payload".to_vec(), &headers)
            .await
            .unwrap();
        assert_eq!(response.headers()[INVOCATION_ID_HEADER], "0190-abc");
        assert_eq!(response.bytes().await.unwrap(), &b"ok"[..]);
        let request = String::from_utf8_lossy(&request.await.unwrap()).to_ascii_lowercase();
        assert!(
            request.starts_with("post /v1/functions/f/invoke http/1.1"),
            "{request}"
        );
        assert!(request.contains("x-test: yes\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\npayload"), "{request}");
    }
}
