//! The management API: deploy, list, info, delete, rollback, logs, health.
//! Each handler's body is a typed struct here, and its `#[utoipa::path]`
//! says what [`crate::openapi`] tells clients about it.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Extension;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use updraft_core::{Digest, FunctionKind, Limits, LogEntry, LogStream, Manifest, RouteAuth};
use updraft_metering::Aggregate;
use updraft_scheduler::{Caller, Platform, PlatformError};
use utoipa::{IntoParams, ToSchema};

use crate::DEPLOY_BYTES_MAX;
use crate::error::{ApiError, ErrorBody, Query};
use crate::json::SortedJson;
use crate::openapi::Binary;
use crate::upload;

type Shared = State<Arc<Platform>>;

/// Default and largest number of log lines returned at once.
const LOG_TAIL_DEFAULT: usize = 100;
const LOG_TAIL_MAX: usize = 10_000;

pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `GET /healthz`. Fields are in key order, as in every body written
/// through [`SortedJson`].
#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    /// Deploys that compiled code since this process started.
    compiles: u64,
    /// Functions deployed (every tenant's).
    functions: usize,
    /// Instances running now on this node.
    in_flight: u32,
    /// Invocations this process started.
    invocations: u64,
    /// This node's name.
    node: String,
    /// Always `ok`.
    status: &'static str,
    /// The server's version.
    version: &'static str,
}

/// Liveness: needs no key.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "health",
    tag = "health",
    security(()),
    responses((status = 200, description = "The server is up", body = Health)),
)]
pub(crate) async fn health(State(platform): Shared) -> SortedJson<Health> {
    SortedJson(Health {
        compiles: platform.functions().compiles(),
        functions: platform.functions().function_count(),
        in_flight: platform.invoker().in_flight(),
        invocations: platform.invoker().started(),
        node: platform.node().to_string(),
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// `/v1`'s fallback: 404 `not_found` for any path no endpoint serves.
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such API endpoint: see docs/api.md for the /v1 endpoints",
    )
}

/// `GET /v1/functions`.
#[derive(Serialize, ToSchema)]
pub(crate) struct FunctionList {
    functions: Vec<FunctionSummary>,
}

/// A function as listed: its latest version.
#[derive(Serialize, ToSchema)]
pub(crate) struct FunctionSummary {
    kind: FunctionKind,
    name: String,
    /// The route it serves (`null`: none, reached by the invoke API only).
    route: Option<String>,
    /// RFC 3339, milliseconds.
    updated_at: String,
    /// The number of the version `latest` points at.
    version: u64,
    /// Versions deployed so far.
    versions: u64,
    wasm_bytes: u64,
}

/// List the caller's tenant's functions.
#[utoipa::path(
    get,
    path = "/functions",
    operation_id = "listFunctions",
    tag = "functions",
    responses((status = 200, description = "The tenant's functions", body = FunctionList)),
)]
pub(crate) async fn list(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<SortedJson<FunctionList>, ApiError> {
    let functions = platform
        .functions()
        .list(&caller.tenant)
        .await?
        .into_iter()
        .map(|(record, version)| FunctionSummary {
            kind: version.kind,
            name: record.name,
            route: version.manifest.route,
            updated_at: rfc3339(record.updated_at_ms),
            version: version.version,
            versions: record.next_version.saturating_sub(1),
            wasm_bytes: version.wasm_bytes,
        })
        .collect();
    Ok(SortedJson(FunctionList { functions }))
}

/// Everything about one function (`GET`, and the answer of a deploy or a
/// rollback). The fields of the loaded version are there only while it is
/// loaded; a function scaled to zero shows its record and versions.
#[derive(Serialize, ToSchema)]
pub(crate) struct FunctionInfo {
    /// Alias → version number; `latest` is what routes and invokes use.
    aliases: std::collections::BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact: Option<Artifact>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<RouteAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    blob_containers: Option<Vec<String>>,
    /// Deploys only: whether this deploy compiled (`false`: the compiled
    /// code of the same Wasm was in the cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    compiled: Option<bool>,
    /// RFC 3339, milliseconds.
    created_at: String,
    /// The version's content address (sha256 of the Wasm and the spec),
    /// `sha256:<hex>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    digest: Option<Digest>,
    /// Names of the manifest's variables (never their values).
    #[serde(skip_serializing_if = "Option::is_none")]
    env_keys: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_value_stores: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<FunctionKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<Limits>,
    name: String,
    /// The loaded version's route: `null` when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    route: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    /// RFC 3339, milliseconds.
    updated_at: String,
    /// Everything this function has used.
    usage: Aggregate,
    /// The loaded version's number.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    /// Newest first.
    versions: Vec<VersionInfo>,
}

/// The compiled code of the loaded version.
#[derive(Serialize, ToSchema)]
pub(crate) struct Artifact {
    /// Milliseconds the compile (or the load from the cache) took.
    #[serde(skip_serializing_if = "Option::is_none")]
    compile_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compiled_bytes: Option<u64>,
    /// `false`: scaled to zero, the code is on disk only (the other fields
    /// are then absent).
    loaded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    loaded_from: Option<LoadedFrom>,
    /// Which compiler's code serves: `baseline` (Winch, while Cranelift
    /// compiles in the background) or `optimized` (Cranelift).
    #[serde(skip_serializing_if = "Option::is_none")]
    tier: Option<Tier>,
}

/// Which compiler made the code that serves (the sandbox's `Tier`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Tier {
    /// Winch: compiled at the deploy, until Cranelift's code is ready.
    Baseline,
    /// Cranelift.
    Optimized,
}

impl Artifact {
    fn of(prepared: &updraft_scheduler::Prepared) -> Artifact {
        Artifact {
            compile_ms: Some(prepared.prepare_ms),
            compiled_bytes: Some(prepared.compiled_bytes),
            loaded: true,
            loaded_from: Some(prepared.loaded_from.into()),
            tier: Some(prepared.tier.into()),
        }
    }
}

impl From<updraft_scheduler::Tier> for Tier {
    fn from(tier: updraft_scheduler::Tier) -> Tier {
        match tier {
            updraft_scheduler::Tier::Baseline => Tier::Baseline,
            updraft_scheduler::Tier::Optimized => Tier::Optimized,
        }
    }
}

/// Where the machine code came from (the sandbox's `LoadedFrom`, named
/// here so the gateway's description needs nothing of the sandbox).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LoadedFrom {
    /// Compiled by this process.
    Compile,
    /// Mapped from the on-disk artifact cache.
    Cache,
}

impl From<updraft_scheduler::LoadedFrom> for LoadedFrom {
    fn from(from: updraft_scheduler::LoadedFrom) -> LoadedFrom {
        match from {
            updraft_scheduler::LoadedFrom::Compile => LoadedFrom::Compile,
            updraft_scheduler::LoadedFrom::Cache => LoadedFrom::Cache,
        }
    }
}

/// One deployed version.
#[derive(Serialize, ToSchema)]
pub(crate) struct VersionInfo {
    /// RFC 3339, milliseconds.
    created_at: String,
    /// `sha256:<hex>`.
    #[schema(value_type = String)]
    digest: Digest,
    kind: FunctionKind,
    limits: Limits,
    route: Option<String>,
    version: u64,
    wasm_bytes: u64,
}

async fn details(platform: &Platform, tenant: &str, name: &str) -> Result<FunctionInfo, ApiError> {
    let details = platform.functions().details(tenant, name).await?;
    let versions = details
        .versions
        .iter()
        .rev()
        .map(|v| VersionInfo {
            created_at: rfc3339(v.created_at_ms),
            digest: v.digest,
            kind: v.kind,
            limits: v.limits,
            route: v.manifest.route.clone(),
            version: v.version,
            wasm_bytes: v.wasm_bytes,
        })
        .collect();
    let mut info = FunctionInfo {
        aliases: details.record.aliases.clone(),
        artifact: None,
        auth: None,
        blob_containers: None,
        compiled: None,
        created_at: rfc3339(details.record.created_at_ms),
        digest: None,
        env_keys: None,
        key_value_stores: None,
        kind: None,
        limits: None,
        name: name.to_string(),
        route: None,
        tenant: None,
        updated_at: rfc3339(details.record.updated_at_ms),
        usage: details.usage,
        version: None,
        versions,
    };
    if let Some(loaded) = &details.loaded {
        let v = &loaded.version;
        info.name = loaded.name.to_string();
        info.tenant = Some(loaded.tenant.to_string());
        info.kind = Some(v.kind);
        info.route = Some(v.manifest.route.clone());
        info.auth = Some(v.manifest.auth);
        info.version = Some(v.version);
        info.digest = Some(v.digest);
        info.limits = Some(v.limits);
        info.env_keys = Some(v.manifest.env.keys().cloned().collect());
        info.key_value_stores = Some(v.manifest.key_value_stores.clone());
        info.blob_containers = Some(v.manifest.blob_containers.clone());
        info.artifact = Some(match loaded.prepared() {
            Some(prepared) => Artifact::of(&prepared),
            // Scaled to zero: the code is on disk only.
            None => Artifact {
                compile_ms: None,
                compiled_bytes: None,
                loaded: false,
                loaded_from: None,
                tier: None,
            },
        });
    }
    Ok(info)
}

/// A function: its versions, aliases, limits, kind, sizes, artifact and usage.
#[utoipa::path(
    get,
    path = "/functions/{name}",
    operation_id = "getFunction",
    tag = "functions",
    params(("name" = String, Path, description = "The function's name")),
    responses(
        (status = 200, description = "The function", body = FunctionInfo),
        (status = 404, description = "`function_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn info(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<SortedJson<FunctionInfo>, ApiError> {
    Ok(SortedJson(details(&platform, &caller.tenant, &name).await?))
}

/// `POST /v1/functions/{name}/unload`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Unloaded {
    /// The function's name.
    unloaded: String,
    /// Whether its code was in memory.
    was_loaded: bool,
}

/// Drop the compiled code from memory now (what idling does after
/// `--idle-unload-secs`); the next request maps it back from the disk cache.
#[utoipa::path(
    post,
    path = "/functions/{name}/unload",
    operation_id = "unloadFunction",
    tag = "functions",
    params(("name" = String, Path, description = "The function's name")),
    responses(
        (status = 200, description = "Unloaded (or was not loaded)", body = Unloaded),
        (status = 404, description = "`function_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn unload(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<SortedJson<Unloaded>, ApiError> {
    let was_loaded = platform.functions().unload(&caller.tenant, &name)?;
    Ok(SortedJson(Unloaded {
        unloaded: name,
        was_loaded,
    }))
}

/// `{"deleted": name}`: what a delete of a function, queue or topic answers.
#[derive(Serialize, ToSchema)]
pub(crate) struct Deleted {
    /// The name of what was deleted.
    pub(crate) deleted: String,
}

/// Remove the function, its versions and its logs.
#[utoipa::path(
    delete,
    path = "/functions/{name}",
    operation_id = "deleteFunction",
    tag = "functions",
    params(("name" = String, Path, description = "The function's name")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 404, description = "`function_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn delete(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<SortedJson<Deleted>, ApiError> {
    platform.delete(&caller.tenant, &name).await?;
    Ok(SortedJson(Deleted { deleted: name }))
}

/// Body of a rollback (or none: the version before the current one).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackBody {
    /// The version `latest` goes back to.
    version: Option<u64>,
}

/// Point `latest` at an earlier version: the one named, or the previous one.
#[utoipa::path(
    post,
    path = "/functions/{name}/rollback",
    operation_id = "rollbackFunction",
    tag = "functions",
    params(("name" = String, Path, description = "The function's name")),
    request_body(
        content = Option<RollbackBody>,
        description = "`{\"version\": N}`, or empty for the previous version",
    ),
    responses(
        (status = 200, description = "The function after the rollback", body = FunctionInfo),
        (status = 400, description = "`bad_request`: the body is not such JSON", body = ErrorBody),
        (status = 404, description = "`function_not_found`, `version_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn rollback(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<SortedJson<FunctionInfo>, ApiError> {
    let body: RollbackBody = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_request",
                format!("rollback body must be JSON like {{\"version\": 2}} or empty: {e}"),
            )
        })?
    };
    platform
        .rollback(&caller.tenant, &name, body.version)
        .await?;
    Ok(SortedJson(details(&platform, &caller.tenant, &name).await?))
}

/// Query of a raw (non-multipart) deploy: the body is the Wasm.
#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeployQuery {
    /// The route it serves, e.g. `/hello`.
    route: Option<String>,
    /// `http` or `command` (by default, what the Wasm exports decides).
    kind: Option<String>,
    /// Requests per instance; 1 is a fresh instance per request.
    instance_reuse_max: Option<u32>,
    /// Comma-separated store names.
    key_value_stores: Option<String>,
    /// Run the component's `wizer-initialize` export at deploy and deploy
    /// the snapshot of its state.
    preinitialize: Option<bool>,
}

/// The parts of a multipart deploy.
#[derive(ToSchema)]
#[allow(dead_code)] // Read part by part in `read_multipart`; here for its schema.
pub(crate) struct DeployParts {
    /// The manifest, `updraft.toml` (TOML, at most 8 MiB). Its `name`, if
    /// set, must be the URL's.
    #[schema(content_media_type = "application/toml")]
    manifest: Option<String>,
    /// The Wasm: a component or a core module.
    #[schema(value_type = String, format = Binary, content_media_type = "application/wasm")]
    wasm: Vec<u8>,
    /// The function's files, a tar archive.
    #[schema(value_type = Option<String>, format = Binary, content_media_type = "application/x-tar")]
    files: Option<Vec<u8>>,
}

/// Deploy a new version of a function.
///
/// `multipart/form-data` with parts `manifest`
/// (TOML) and `wasm` (and `files`, a tar archive), or a raw Wasm body with
/// the manifest's few keys in the query. The Wasm streams to disk as it
/// arrives; the deploy answers once it is compiled.
#[utoipa::path(
    put,
    path = "/functions/{name}",
    operation_id = "deployFunction",
    tag = "functions",
    params(("name" = String, Path, description = "The function's name"), DeployQuery),
    request_body(content(
        (DeployParts = "multipart/form-data"),
        (Binary = "application/wasm"),
        (Binary = "application/octet-stream"),
    )),
    responses(
        (status = 201, description = "Deployed: the function, with `compiled`", body = FunctionInfo),
        (status = 400, description = "`not_wasm`, `invalid_wasm`, `wrong_world`, `link_error`, \
            `invalid_manifest`, `name_mismatch`, `missing_wasm`, `bad_multipart`, `bad_request`, \
            `invalid_trigger`, `body_read_failed`", body = ErrorBody),
        (status = 409, description = "`route_conflict`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: over 256 MiB, or a manifest over 8 MiB", body = ErrorBody),
        (status = 507, description = "`storage_full`", body = ErrorBody),
    ),
)]
pub(crate) async fn deploy(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<DeployQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let uploads = platform.uploads_dir();
    // The spooled Wasm's file is removed when this handler returns,
    // whatever the outcome (a mapping of it may outlive the name).
    let (mut manifest, (spooled, len), files) = if is_multipart {
        read_multipart(request, uploads).await?
    } else {
        // Checked before the upload, not after 200 MB of it.
        let kind = query.kind.as_deref().map(str::parse).transpose().map_err(
            |e: updraft_core::ManifestError| {
                ApiError::bad_request("invalid_manifest", e.to_string())
            },
        )?;
        if let Some(len) = content_length(&request)
            && len > DEPLOY_BYTES_MAX as u64
        {
            // Refused before a byte is read.
            return Err(upload::too_large(DEPLOY_BYTES_MAX));
        }
        let body = upload::body_chunks(request.into_body());
        let (file, len) = upload::spool(uploads, body, DEPLOY_BYTES_MAX, |e| {
            PlatformError::BodyRead(e.into()).into()
        })
        .await?;
        let manifest = Manifest {
            route: query.route,
            kind,
            instance_reuse_max: query.instance_reuse_max,
            preinitialize: query.preinitialize,
            key_value_stores: query
                .key_value_stores
                .map(|stores| stores.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            ..Manifest::default()
        };
        (manifest, (Some(file), len), None)
    };
    let wasm = match &spooled {
        Some(file) => upload::map(file, len)?,
        None => Bytes::new(),
    };
    if manifest.name.is_empty() {
        manifest.name = name.clone();
    } else if manifest.name != name {
        return Err(ApiError::bad_request(
            "name_mismatch",
            format!(
                "the manifest names the function {:?} but the URL says {name:?}: make them agree",
                manifest.name
            ),
        ));
    }
    if wasm.is_empty() {
        return Err(ApiError::bad_request(
            "missing_wasm",
            "no Wasm was uploaded: send it as the `wasm` part of a multipart body, or as the raw body",
        ));
    }
    let deployed = platform
        .deploy(&caller.tenant, manifest, wasm, files)
        .await?;
    let mut body = details(&platform, &caller.tenant, &name).await?;
    body.compiled = Some(deployed.compiled);
    // What this deploy made, even if optimized code replaced it since.
    body.artifact = Some(Artifact::of(&deployed.prepared));
    Ok((StatusCode::CREATED, SortedJson(body)).into_response())
}

/// Largest manifest part: room for 256 variables of 16 KiB each, the
/// manifest's own limits, and the rest of its keys.
const MANIFEST_BYTES_MAX: usize = 8 << 20;

/// The request's `Content-Length`, when it sends one.
fn content_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A multipart error: over the deploy limit (axum counts the whole body
/// against it), or a malformed or broken body.
fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        upload::too_large(DEPLOY_BYTES_MAX)
    } else {
        ApiError::new(e.status(), "bad_multipart", e.body_text())
    }
}

/// A spooled upload and its length (`None`: no Wasm was sent).
type Spooled = (Option<tempfile::NamedTempFile>, u64);

/// The parts of a deploy: the manifest, the Wasm (spooled to a temp file
/// in `uploads`, never whole in memory), and the files bundle.
async fn read_multipart(
    request: Request,
    uploads: &std::path::Path,
) -> Result<(Manifest, Spooled, Option<Bytes>), ApiError> {
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request("bad_multipart", e.body_text()))?;
    let mut manifest = None;
    let mut wasm = (None, 0);
    let mut files = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let field_name = field.name().unwrap_or_default().to_string();
        match field_name.as_str() {
            "manifest" => {
                let bytes = read_field(field, MANIFEST_BYTES_MAX, "manifest").await?;
                let text = std::str::from_utf8(&bytes).map_err(|_| {
                    ApiError::bad_request("invalid_manifest", "the manifest must be UTF-8 TOML")
                })?;
                manifest = Some(Manifest::from_toml(text).map_err(PlatformError::from)?);
            }
            "wasm" => {
                let (file, len) =
                    upload::spool(uploads, field, DEPLOY_BYTES_MAX, multipart_error).await?;
                wasm = (Some(file), len);
            }
            "files" => {
                let limit = updraft_core::files::BUNDLE_BYTES_MAX as usize;
                files = Some(read_field(field, limit, "files bundle").await?);
            }
            other => {
                return Err(ApiError::bad_request(
                    "bad_multipart",
                    format!(
                        "unknown part {other:?}: send `manifest`, `wasm` and, for a function with files, `files` (a tar archive)"
                    ),
                ));
            }
        }
    }
    Ok((manifest.unwrap_or_default(), wasm, files))
}

/// A small part, whole, refused as soon as it passes `limit`.
async fn read_field(
    mut field: axum::extract::multipart::Field<'_>,
    limit: usize,
    what: &str,
) -> Result<Bytes, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the {what} is over {} MiB: make it smaller", limit >> 20),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(bytes))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogsQuery {
    /// The last N lines (default 100, at most 10,000).
    tail: Option<usize>,
    /// Keep the response open and stream new lines as they come.
    #[serde(default)]
    follow: bool,
}

/// One line of `GET /v1/functions/{name}/logs` (NDJSON).
#[derive(Serialize, ToSchema)]
pub(crate) struct LogLine<'a> {
    /// RFC 3339, milliseconds.
    ts: String,
    invocation_id: &'a str,
    stream: LogStream,
    message: &'a str,
}

fn log_line(entry: &LogEntry) -> Bytes {
    let mut line = serde_json::to_vec(&LogLine {
        ts: rfc3339(entry.ts_ms),
        invocation_id: &entry.invocation_id,
        stream: entry.stream,
        message: &entry.message,
    })
    .unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// The function's log: NDJSON, one entry a line, oldest first; with
/// `follow=true` the response stays open and new lines follow.
#[utoipa::path(
    get,
    path = "/functions/{name}/logs",
    operation_id = "getFunctionLogs",
    tag = "functions",
    params(("name" = String, Path, description = "The function's name"), LogsQuery),
    responses(
        (status = 200, description = "Log lines, one JSON object a line", body = LogLine,
            content_type = "application/x-ndjson"),
        (status = 400, description = "`bad_request`: a bad query string", body = ErrorBody),
        (status = 404, description = "`function_not_found`", body = ErrorBody),
    ),
)]
pub(crate) async fn logs(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let tail = query.tail.unwrap_or(LOG_TAIL_DEFAULT).min(LOG_TAIL_MAX);
    // Subscribe before reading the tail so no line falls in between.
    let live = query.follow.then(|| platform.logs().follow());
    let entries = platform
        .functions()
        .logs_tail(&caller.tenant, &name, tail)
        .await?;
    let head: Vec<Result<Bytes, std::io::Error>> =
        entries.iter().map(|e| Ok(log_line(e))).collect();
    let body = match live {
        None => Body::from(
            head.into_iter()
                .filter_map(Result::ok)
                .collect::<Vec<_>>()
                .concat(),
        ),
        Some(receiver) => {
            let last_ts = entries
                .last()
                .map(|e| (e.ts_ms, e.invocation_id.clone(), e.message.clone()));
            let name: Arc<str> = Arc::from(updraft_core::function_key(&caller.tenant, &name));
            let live = futures::stream::unfold(receiver, move |mut rx| {
                let name = name.clone();
                async move {
                    loop {
                        match rx.recv().await {
                            Ok((from, entry)) if from == name => return Some((entry, rx)),
                            Ok(_) => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            })
            // Lines already in the tail may also arrive live; skip those.
            .filter(move |entry| {
                let duplicate = last_ts.as_ref().is_some_and(|(ts, id, msg)| {
                    entry.ts_ms < *ts
                        || (entry.ts_ms == *ts
                            && &entry.invocation_id == id
                            && &entry.message == msg)
                });
                futures::future::ready(!duplicate)
            })
            .map(|entry| Ok::<_, std::io::Error>(log_line(&entry)));
            Body::from_stream(futures::stream::iter(head).chain(live))
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
