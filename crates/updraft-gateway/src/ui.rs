//! The web console at `/ui`: hand-written HTML, CSS and JavaScript modules
//! (in `crates/updraft-gateway/ui/`), compiled into the binary, so a server
//! serves its console with no Node, no build step and no network. This
//! module owns only the serving: which file, its content type, and the
//! headers that lock the page down (a strict Content-Security-Policy, no
//! framing) and let browsers revalidate it cheaply. Everything the console
//! shows it fetches from the `/v1` API with the user's own key, like the
//! CLI: the files themselves are public and hold no data.

use axum::body::Body;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::error::ApiError;

/// Where the console is served; functions may not take it (see
/// `updraft_core::Route::parse`).
pub const CONSOLE_PATH: &str = "/ui";

/// Scripts, styles, images and API calls from this origin only; no inline
/// script or style, no plugins, no framing, no form posts, and DOM sinks
/// that parse HTML refused outright (Trusted Types with no policy): the
/// console builds its pages from text nodes, so a function's name or log
/// line can never become markup.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'; \
    require-trusted-types-for 'script'; trusted-types 'none'";

/// The file names are fixed (modules import each other by name, with no
/// build step to add hashes), so a browser must not keep a copy past an
/// upgrade: it revalidates each one, and an unchanged file costs a 304.
const CACHE_CONTROL: &str = "no-cache";

/// One file of the console, with its validator computed at compile time.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: u64,
}

/// FNV-1a: a stable fingerprint of a file for its `ETag`, evaluated by the
/// compiler, so serving a file computes nothing.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

macro_rules! asset {
    ($path:literal, $content_type:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!("../ui/", $path));
        Asset {
            path: $path,
            content_type: $content_type,
            body: BODY,
            etag: fnv1a(BODY),
        }
    }};
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every file of the console; the first is the page itself.
static ASSETS: [Asset; 11] = [
    asset!("index.html", HTML),
    asset!("console.css", CSS),
    asset!("icon.svg", SVG),
    asset!("js/app.js", JS),
    asset!("js/api.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/chart.js", JS),
    asset!("js/functions.js", JS),
    asset!("js/events.js", JS),
    asset!("js/storage.js", JS),
    asset!("js/usage.js", JS),
];

/// The web console: an HTML page that signs in with an API key and calls
/// `/v1` itself (docs/api.md, "Web console").
#[utoipa::path(
    get,
    path = "/ui",
    operation_id = "console",
    tag = "console",
    security(()),
    responses((status = 200, description = "The console's page", content_type = "text/html")),
)]
pub(crate) async fn page(headers: HeaderMap) -> Response {
    serve(&ASSETS[0], &headers)
}

/// The web console, at `/ui/` too.
#[utoipa::path(
    get,
    path = "/ui/",
    operation_id = "consoleSlash",
    tag = "console",
    security(()),
    responses((status = 200, description = "The console's page", content_type = "text/html")),
)]
pub(crate) async fn page_slash(headers: HeaderMap) -> Response {
    serve(&ASSETS[0], &headers)
}

/// One of the console's files (scripts, styles, icon), embedded in the binary.
#[utoipa::path(
    get,
    path = "/ui/{file}",
    operation_id = "consoleFile",
    tag = "console",
    security(()),
    params(("file" = String, Path, description = "The file's path below /ui/, e.g. js/app.js")),
    responses(
        (status = 200, description = "The file", content_type = "*/*"),
        (status = 304, description = "Unchanged since the ETag sent in If-None-Match"),
        (status = 404, description = "`not_found`: the console has no such file", body = crate::error::ErrorBody),
    ),
)]
pub(crate) async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|asset| asset.path == path) {
        Some(asset) => serve(asset, &headers),
        None => {
            let mut response = ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("the console has no file {path:?}: open /ui for the console"),
            )
            .into_response();
            lock_down(response.headers_mut());
            response
        }
    }
}

/// The headers every console response carries.
fn lock_down(headers: &mut HeaderMap) {
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        // A page that opens the console in a window gets no handle on it.
        (
            http::HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            http::HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        ),
    ];
    for (name, value) in set {
        headers.insert(name, value);
    }
}

/// Whether an `If-None-Match` header names `etag` (or `*`).
fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.etag);
    let mut response = if matches(request, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = Body::from(Bytes::from_static(asset.body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        response
    };
    let headers = response.headers_mut();
    lock_down(headers);
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use axum::Router;
    use http::Request;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        Router::<()>::new()
            .route(CONSOLE_PATH, axum::routing::get(page))
            .route("/ui/", axum::routing::get(page_slash))
            .route("/ui/{*file}", axum::routing::get(file))
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header<'a>(response: &'a Response, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn the_page_and_its_files_are_served_with_their_types() {
        for (path, content_type) in [
            ("/ui", HTML),
            ("/ui/", HTML),
            ("/ui/index.html", HTML),
            ("/ui/console.css", CSS),
            ("/ui/icon.svg", SVG),
            ("/ui/js/app.js", JS),
            ("/ui/js/usage.js", JS),
        ] {
            let response = get(path, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&response, "content-type"), content_type, "{path}");
            assert!(
                header(&response, "content-security-policy").contains("script-src 'self'"),
                "{path}"
            );
            assert_eq!(header(&response, "x-content-type-options"), "nosniff");
            assert_eq!(header(&response, "cache-control"), CACHE_CONTROL);
            assert!(header(&response, "etag").starts_with('"'), "{path}");
        }
    }

    #[tokio::test]
    async fn an_unchanged_file_is_a_304_and_a_missing_one_a_404() {
        let first = get("/ui/js/app.js", None).await;
        let etag = header(&first, "etag").to_string();
        let again = get("/ui/js/app.js", Some(&format!("\"other\", {etag}"))).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&again, "etag"), etag);
        let changed = get("/ui/js/app.js", Some("\"other\"")).await;
        assert_eq!(changed.status(), StatusCode::OK);
        let missing = get("/ui/js/nope.js", None).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(header(&missing, "content-security-policy").contains("frame-ancestors 'none'"));
        let outside = get("/ui/../Cargo.toml", None).await;
        assert_eq!(outside.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        // A file added to ui/ but not to ASSETS would be a 404 in the
        // browser: check each import and link against the list.
        let served: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        for asset in &ASSETS {
            let text = std::str::from_utf8(asset.body).unwrap();
            for quoted in text.split('"').skip(1).step_by(2) {
                let wanted = if let Some(path) = quoted.strip_prefix("/ui/") {
                    path.to_string()
                } else if let Some(module) = quoted.strip_prefix("./") {
                    format!("js/{module}")
                } else {
                    continue;
                };
                if wanted.ends_with(".js") || wanted.ends_with(".css") || wanted.ends_with(".svg") {
                    assert!(
                        served.contains(&wanted.as_str()),
                        "{} refers to {wanted}, which ASSETS does not serve",
                        asset.path
                    );
                }
            }
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/js");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = format!("js/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(served.contains(&name.as_str()), "{name} is not in ASSETS");
        }
    }
}
