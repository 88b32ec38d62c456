//! Who is calling. Every `/v1` request must carry `Authorization: Bearer
//! KEY`; the key names a tenant, and every handler acts only on that
//! tenant's functions, stores and containers. Function routes are public
//! unless the manifest says `auth = "key"`. Also `/v1/keys`: create, list
//! and revoke keys.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use updraft_scheduler::{Caller, KeyInfo, Platform, PlatformError};
use utoipa::{IntoParams, ToSchema};

use crate::api::rfc3339;
use crate::error::{ApiError, ErrorBody, Query};
use crate::json::SortedJson;

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

/// An API key as listed: never the key itself.
#[derive(Serialize, ToSchema)]
pub(crate) struct Key {
    /// Admin keys also manage other tenants (keys, quotas, usage).
    admin: bool,
    /// RFC 3339, milliseconds.
    created_at: String,
    /// The key's id, the `{id}` of `upd_{id}_{secret}`.
    id: String,
    label: String,
    tenant: String,
}

impl From<&KeyInfo> for Key {
    fn from(key: &KeyInfo) -> Key {
        Key {
            admin: key.admin,
            created_at: rfc3339(key.created_at_ms),
            id: key.id.clone(),
            label: key.label.clone(),
            tenant: key.tenant.clone(),
        }
    }
}

/// `POST /v1/keys`: the new key, shown this once.
#[derive(Serialize, ToSchema)]
pub(crate) struct NewKey {
    #[serde(flatten)]
    info: Key,
    /// The key, `upd_{id}_{secret}`: send it as `Authorization: Bearer KEY`.
    key: String,
}

/// `GET /v1/keys`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Keys {
    keys: Vec<Key>,
}

/// `DELETE /v1/keys/{id}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Revoked {
    revoked: Key,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct KeysQuery {
    /// Another tenant's keys (admin keys only; an admin key naming none
    /// lists every tenant's).
    tenant: Option<String>,
}

/// `GET /v1/keys[?tenant=T]`: the caller's tenant's keys; an admin key may
/// name any tenant, or none for all.
#[utoipa::path(
    get,
    path = "/keys",
    operation_id = "listKeys",
    tag = "keys",
    params(KeysQuery),
    responses(
        (status = 200, description = "The keys (never the keys themselves)", body = Keys),
        (status = 403, description = "`forbidden`: another tenant without an admin key", body = ErrorBody),
    ),
)]
pub(crate) async fn list(
    State(platform): State<Arc<Platform>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<KeysQuery>,
) -> Result<SortedJson<Keys>, ApiError> {
    let tenant = match (caller.admin, query.tenant.as_deref()) {
        (true, tenant) => tenant,
        (false, None) => Some(&*caller.tenant),
        (false, Some(t)) if t == &*caller.tenant => Some(t),
        (false, Some(_)) => return Err(admin_only("list another tenant's keys")),
    };
    let keys = platform.api_keys(tenant).iter().map(Key::from).collect();
    Ok(SortedJson(Keys { keys }))
}

/// Body of `POST /v1/keys` (all optional; an empty body is `{}`).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    /// The key's tenant (default: the caller's; another needs an admin
    /// key). A key for a new tenant makes the tenant exist.
    tenant: Option<String>,
    /// An admin key (needs an admin key).
    #[serde(default)]
    admin: bool,
    /// A note for people.
    #[serde(default)]
    label: String,
}

/// Create an API key.
///
/// `POST /v1/keys` with `{"tenant", "admin", "label"}` (all optional): a new
/// key, shown in this response only.
#[utoipa::path(
    post,
    path = "/keys",
    operation_id = "createKey",
    tag = "keys",
    request_body(content = Option<CreateKey>, description = "The key's tenant, admin and label, or empty"),
    responses(
        (status = 201, description = "The new key, in this response only", body = NewKey),
        (status = 400, description = "`bad_request`: not such JSON; a bad tenant name or label", body = ErrorBody),
        (status = 403, description = "`forbidden`: another tenant's or an admin key without an admin key", body = ErrorBody),
    ),
)]
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
    let out = NewKey {
        info: Key::from(&info),
        key: key.to_string(),
    };
    Ok((StatusCode::CREATED, SortedJson(out)).into_response())
}

/// `DELETE /v1/keys/{id}`: revoked at once. A tenant revokes its own keys;
/// an admin key, any.
#[utoipa::path(
    delete,
    path = "/keys/{id}",
    operation_id = "revokeKey",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = 404, description = "`api_key_not_found`", body = ErrorBody),
        (status = 400, description = "`bad_request`: the last admin key cannot be revoked", body = ErrorBody),
    ),
)]
pub(crate) async fn revoke(
    State(platform): State<Arc<Platform>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<SortedJson<Revoked>, ApiError> {
    let scope = (!caller.admin).then_some(&*caller.tenant);
    let info = platform.revoke_api_key(&id, scope).await?;
    Ok(SortedJson(Revoked {
        revoked: Key::from(&info),
    }))
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
