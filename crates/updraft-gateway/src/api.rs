//! The management API: deploy, list, info, delete, rollback, logs, health.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use futures::StreamExt;
use http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use updraft_core::{LogEntry, Manifest};
use updraft_scheduler::{Caller, Loaded, Platform, PlatformError};

use crate::DEPLOY_BYTES_MAX;
use crate::error::{ApiError, Query};
use crate::upload;

type Shared = State<Arc<Platform>>;

/// Default and largest number of log lines returned at once.
const LOG_TAIL_DEFAULT: usize = 100;
const LOG_TAIL_MAX: usize = 10_000;

pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub(crate) async fn health(State(platform): Shared) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "node": platform.node(),
        "functions": platform.functions().function_count(),
        "compiles": platform.functions().compiles(),
        "invocations": platform.invoker().started(),
        "in_flight": platform.invoker().in_flight(),
    }))
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such API endpoint: see docs/api.md for the /v1 endpoints",
    )
}

pub(crate) async fn list(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let functions: Vec<Value> = platform
        .functions()
        .list(&caller.tenant)
        .await?
        .into_iter()
        .map(|(record, version)| {
            json!({
                "name": record.name,
                "kind": version.kind,
                "route": version.manifest.route,
                "version": version.version,
                "versions": record.next_version.saturating_sub(1),
                "wasm_bytes": version.wasm_bytes,
                "updated_at": rfc3339(record.updated_at_ms),
            })
        })
        .collect();
    Ok(Json(json!({ "functions": functions })))
}

fn loaded_json(loaded: &Loaded) -> Value {
    let v = &loaded.version;
    json!({
        "name": &*loaded.name,
        "tenant": &*loaded.tenant,
        "kind": v.kind,
        "route": v.manifest.route,
        "auth": v.manifest.auth,
        "version": v.version,
        "digest": v.digest,
        "limits": v.limits,
        "env_keys": v.manifest.env.keys().collect::<Vec<_>>(),
        "key_value_stores": v.manifest.key_value_stores,
        "blob_containers": v.manifest.blob_containers,
        "artifact": match loaded.prepared() {
            Some(prepared) => json!({
                "loaded": true,
                "loaded_from": prepared.loaded_from,
                "compile_ms": prepared.prepare_ms,
                "compiled_bytes": prepared.compiled_bytes,
            }),
            // Scaled to zero: the code is on disk only.
            None => json!({ "loaded": false }),
        },
    })
}

async fn details_json(platform: &Platform, tenant: &str, name: &str) -> Result<Value, ApiError> {
    let details = platform.functions().details(tenant, name).await?;
    let mut out = match &details.loaded {
        Some(loaded) => loaded_json(loaded),
        None => json!({ "name": name }),
    };
    let versions: Vec<Value> = details
        .versions
        .iter()
        .rev()
        .map(|v| {
            json!({
                "version": v.version,
                "digest": v.digest,
                "kind": v.kind,
                "wasm_bytes": v.wasm_bytes,
                "route": v.manifest.route,
                "limits": v.limits,
                "created_at": rfc3339(v.created_at_ms),
            })
        })
        .collect();
    if let Value::Object(map) = &mut out {
        map.insert("aliases".into(), json!(details.record.aliases));
        map.insert("versions".into(), json!(versions));
        map.insert("usage".into(), json!(details.usage));
        map.insert(
            "created_at".into(),
            json!(rfc3339(details.record.created_at_ms)),
        );
        map.insert(
            "updated_at".into(),
            json!(rfc3339(details.record.updated_at_ms)),
        );
    }
    Ok(out)
}

pub(crate) async fn info(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(details_json(&platform, &caller.tenant, &name).await?))
}

/// `POST /v1/functions/{name}/unload`: drop the compiled code from memory now
/// (what idling does after `--idle-unload-secs`); the next request maps it back.
pub(crate) async fn unload(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let was_loaded = platform.functions().unload(&caller.tenant, &name)?;
    Ok(Json(json!({ "unloaded": name, "was_loaded": was_loaded })))
}

pub(crate) async fn delete(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    platform.delete(&caller.tenant, &name).await?;
    Ok(Json(json!({ "deleted": name })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackBody {
    version: Option<u64>,
}

pub(crate) async fn rollback(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(details_json(&platform, &caller.tenant, &name).await?))
}

/// Query of a raw (non-multipart) deploy: the body is the Wasm.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeployQuery {
    route: Option<String>,
    kind: Option<String>,
    instance_reuse_max: Option<u32>,
    /// Comma-separated store names.
    key_value_stores: Option<String>,
}

/// `PUT /v1/functions/{name}`: multipart with `manifest` (TOML) and `wasm`
/// parts, or a raw `application/wasm` body with
/// `?route=&kind=&instance_reuse_max=&key_value_stores=a,b`.
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
    let mut body = details_json(&platform, &caller.tenant, &name).await?;
    if let Value::Object(map) = &mut body {
        map.insert("compiled".into(), json!(deployed.compiled));
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsQuery {
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

#[derive(Serialize)]
struct LogLine<'a> {
    ts: String,
    invocation_id: &'a str,
    stream: updraft_core::LogStream,
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

/// `GET /v1/functions/{name}/logs?tail=N&follow=true`: NDJSON, one entry a line.
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
