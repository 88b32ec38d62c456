//! Who is calling. Every `/v1` request must carry `Authorization: Bearer
//! KEY`; the key names a tenant, and every handler acts only on that
//! tenant's functions, stores and containers. Function routes are public
//! unless the manifest says `auth = "key"`. Also `/v1/keys`: create, list
//! and revoke keys.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use updraft_scheduler::{Caller, KeyInfo, Platform, PlatformError};

use crate::api::rfc3339;
use crate::error::{ApiError, Query};

/// The caller named by the request's bearer key.
pub(crate) fn caller(platform: &Platform, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "missing_key",
            "this needs an API key: send `Authorization: Bearer KEY`. A new server writes \
             its admin key to DATA_DIR/admin.key (the CLI on the same machine reads it \
             by itself); `updraft keys create` makes more",
        ));
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    platform.authenticate(presented).ok_or_else(|| {
        unauthorized(
            "invalid_key",
            "the API key is not valid: it was revoked, or is mistyped. \
             `updraft keys ls` (with a valid key) shows the keys that exist",
        )
    })
}

/// Whether the request carries what looks like an Updraft API key (valid
/// or not): such a header is the platform's, never a function's to read.
/// Read as bytes and split at any blank, so a mistyped header (a tab, a
/// stray non-ASCII byte, `bearer`) that the API would refuse still counts.
pub(crate) fn carries_api_key(headers: &HeaderMap) -> bool {
    headers.get_all(header::AUTHORIZATION).iter().any(|value| {
        let value = value.as_bytes().trim_ascii();
        let Some(blank) = value.iter().position(|b| b.is_ascii_whitespace()) else {
            return false;
        };
        let (scheme, token) = value.split_at(blank);
        scheme.eq_ignore_ascii_case(b"bearer") && token.trim_ascii_start().starts_with(b"upd_")
    })
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// Middleware of `/v1`: no valid key, no entry.
pub(crate) async fn require_key(
    State(platform): State<Arc<Platform>>,
    mut request: Request,
    next: Next,
) -> Response {
    match caller(&platform, request.headers()) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => {
            let mut response = e.into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

fn key_json(key: &KeyInfo) -> Value {
    json!({
        "id": key.id,
        "tenant": key.tenant,
        "admin": key.admin,
        "label": key.label,
        "created_at": rfc3339(key.created_at_ms),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysQuery {
    tenant: Option<String>,
}

/// `GET /v1/keys[?tenant=T]`: the caller's tenant's keys; an admin key may
/// name any tenant, or none for all.
pub(crate) async fn list(
    State(platform): State<Arc<Platform>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<KeysQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = match (caller.admin, query.tenant.as_deref()) {
        (true, tenant) => tenant,
        (false, None) => Some(&*caller.tenant),
        (false, Some(t)) if t == &*caller.tenant => Some(t),
        (false, Some(_)) => return Err(admin_only("list another tenant's keys")),
    };
    let keys: Vec<Value> = platform.api_keys(tenant).iter().map(key_json).collect();
    Ok(Json(json!({ "keys": keys })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    tenant: Option<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    label: String,
}

/// `POST /v1/keys` with `{"tenant", "admin", "label"}` (all optional): a new
/// key, shown in this response only.
pub(crate) async fn create(
    State(platform): State<Arc<Platform>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: CreateKey = if body.iter().all(u8::is_ascii_whitespace) {
        CreateKey::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_request",
                format!(
                    "the body must be JSON like {{\"tenant\": \"acme\", \"label\": \"ci\"}}: {e}"
                ),
            )
        })?
    };
    let tenant = body.tenant.as_deref().unwrap_or(&caller.tenant);
    if !caller.admin && (tenant != &*caller.tenant || body.admin) {
        return Err(admin_only(
            "create a key for another tenant, or an admin key",
        ));
    }
    let (info, key) = platform
        .create_api_key(tenant, body.admin, &body.label)
        .await?;
    let mut out = key_json(&info);
    if let Value::Object(map) = &mut out {
        map.insert("key".into(), json!(key));
    }
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `DELETE /v1/keys/{id}`: revoked at once. A tenant revokes its own keys;
/// an admin key, any.
pub(crate) async fn revoke(
    State(platform): State<Arc<Platform>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let scope = (!caller.admin).then_some(&*caller.tenant);
    let info = platform.revoke_api_key(&id, scope).await?;
    Ok(Json(json!({ "revoked": key_json(&info) })))
}

fn admin_only(what: &str) -> ApiError {
    PlatformError::Forbidden(format!("only an admin key may {what}")).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_updraft_key_is_recognised_however_it_is_sent() {
        let carries = |value: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.append(
                header::AUTHORIZATION,
                HeaderValue::from_static("Basic eDp5"),
            );
            headers.append(
                header::AUTHORIZATION,
                HeaderValue::from_bytes(value).unwrap(),
            );
            carries_api_key(&headers)
        };
        for sent in [
            &b"Bearer upd_0123456789ab_secret"[..],
            b"bearer   upd_x",
            b"BEARER\tupd_x",
            b" Bearer upd_x\xff",
        ] {
            assert!(carries(sent), "{}", String::from_utf8_lossy(sent));
        }
        for sent in [
            &b"Bearer the-functions-own"[..],
            b"Basic upd_x",
            b"Bearerupd_x",
        ] {
            assert!(!carries(sent), "{}", String::from_utf8_lossy(sent));
        }
    }
}
